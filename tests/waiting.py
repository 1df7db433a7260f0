"""Waiting, in tests, for something another task or process does: bounded polling."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float = 10.0, interval: float = 0.05
) -> None:
    """Return once ``check()`` is true; fail the test after ``within`` seconds."""
    attempts = max(int(within / interval), 1)
    for _ in range(attempts):
        if await check():
            return
        await anyio.sleep(interval)
    if not await check():
        raise AssertionError(f"condition still false after {within:g}s")


class FakeSleep:
    """A ``sleep`` for clients that take one: records each requested delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await anyio.lowlevel.checkpoint()
