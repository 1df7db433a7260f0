"""A processor's reaper on virtual time (:mod:`ops.simulate`), on the in-memory log: it sleeps
until the earliest lock can have expired and reaps only then; idle, it asks once per lock
time and reaps nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from ops.simulate import run
from store.memory import MemoryLog
from store.tasks import TaskContext, TaskProcessor, TaskQueue
from store.tasks.memory import MemoryTaskTable
from tests.store.test_tasks import Ping, make_types

pytestmark = pytest.mark.memory

LOCK = 30.0


def counting(table: Any) -> tuple[list[float], list[float]]:
    """Note the virtual times of the table's lock-expiry questions and of its reaps."""
    questions: list[float] = []
    reaps: list[float] = []
    ask, reap = table.next_lock_expiry, table.reap

    async def asked(task_types: Sequence[str]) -> float | None:
        questions.append(anyio.current_time())
        answer: float | None = await ask(task_types)
        return answer

    async def reaped(**options: Any) -> list[str]:
        reaps.append(anyio.current_time())
        statuses: list[str] = await reap(**options)
        return statuses

    table.next_lock_expiry, table.reap = asked, reaped
    return questions, reaps


def test_an_idle_reaper_asks_once_per_lock_time_and_a_dead_nodes_task_is_reaped_at_expiry() -> None:
    async def main() -> tuple[list[float], list[float], float, float, int]:
        log = MemoryLog()
        queue = TaskQueue(log, make_types())
        assert isinstance(queue.table, MemoryTaskTable)
        questions, reaps = counting(queue.table)
        started, done = anyio.Event(), anyio.Event()
        attempts: list[int] = []

        async def hang(payload: Ping, ctx: TaskContext) -> None:
            started.set()
            await anyio.sleep(10_000)

        async def ok(payload: Ping, ctx: TaskContext) -> None:
            attempts.append(ctx.attempt)
            done.set()

        # Idle: nothing runs for five minutes.
        async with anyio.create_task_group() as tg:
            idle = TaskProcessor(queue, node="node-idle", lock_timeout=LOCK)
            idle.register_handler("ping", ok)
            await tg.start(idle.run)
            await anyio.sleep(300.0)
            tg.cancel_scope.cancel()
        idle_questions, idle_reaps = list(questions), list(reaps)
        # A node takes a task and dies with it (cancelled: it stops heartbeating).
        async with anyio.create_task_group() as tg:
            doomed = TaskProcessor(queue, node="node-dead", lock_timeout=LOCK)
            doomed.register_handler("ping", hang)
            await tg.start(doomed.run)
            await queue.add_task("ping", {"n": 1})
            await started.wait()
            died = anyio.current_time()
            tg.cancel_scope.cancel()
        # Another node, up since, reaps it once its lock has expired, and runs it again.
        async with anyio.create_task_group() as tg:
            live = TaskProcessor(queue, node="node-live", lock_timeout=LOCK)
            live.register_handler("ping", ok)
            await tg.start(live.run)
            await done.wait()
            reclaimed = anyio.current_time()
            tg.cancel_scope.cancel()
        return idle_questions, idle_reaps, died, reclaimed, attempts[0]

    questions, reaps, died, reclaimed, attempt = run(main, seed=1).value
    assert reaps == []  # nothing ran: no reaping
    # One question at the start, then one per 0.8 to 1 lock time (it was a reap every third).
    assert 300.0 / LOCK <= len(questions) <= 1 + 300.0 / (0.8 * LOCK), questions
    # The lock, taken when the task started, expires a lock time later; the reaper wakes
    # within a tenth of the time that was left then (and the claim follows at once).
    assert died + LOCK <= reclaimed <= died + 1.1 * LOCK + 1.0, (died, reclaimed)
    assert attempt == 2
