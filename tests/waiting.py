"""Waiting, in tests, for something another task or process does: bounded polling."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio


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
