"""``python -m ops.simulate.speed``: how many steps per second the simulation kernel runs.

A measurement to read, not a test: nothing asserts on it. Each workload runs once under
:func:`ops.simulate.run` and once under stock ``asyncio.run`` for reference, and one line is
printed per workload: steps, real seconds, steps per second, and the stock loop's time for the
same program (its callbacks are not counted, so compare the seconds).

    tasks=10      10 tasks, each passing 20,000 checkpoints: few callbacks ready at a time
    tasks=1000    1,000 tasks, each passing 200 checkpoints: a thousand ready at once, the
                  worst case of the scheduler's canonical ordering (sorted every step)
    timers        200 tasks sleeping seeded random delays 500 times each: the clock jumps
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel

from ops.simulate.kernel import run


def _checkpoints(tasks: int, rounds: int) -> Callable[[], Awaitable[None]]:
    async def main() -> None:
        async def worker() -> None:
            for _ in range(rounds):
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(worker)

    return main


def _timers(tasks: int, rounds: int) -> Callable[[], Awaitable[None]]:
    async def main() -> None:
        rng = random.Random(0)  # the same delays under both loops

        async def worker() -> None:
            for _ in range(rounds):
                await anyio.sleep(rng.random() / 1000)  # stock asyncio really waits these

        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(worker)

    return main


def main() -> None:
    workloads = {
        "tasks=10": _checkpoints(10, 20_000),
        "tasks=1000": _checkpoints(1000, 200),
        "timers": _timers(200, 500),
    }
    for name, program in workloads.items():
        started = time.perf_counter()
        result = run(program, seed=1, max_steps=100_000_000)
        simulated = time.perf_counter() - started
        started = time.perf_counter()
        asyncio.run(program())  # type: ignore[arg-type]  # main() returns a coroutine
        stock = time.perf_counter() - started
        print(
            f"{name:<11} {result.steps:>9,} steps in {simulated:6.2f} s: "
            f"{result.steps / simulated:>9,.0f} steps/s (stock asyncio: {stock:6.2f} s)"
        )


if __name__ == "__main__":
    main()
