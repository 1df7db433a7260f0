"""Task-queue writes made for an actor are fenced by its lease generation (migration 0005):
a stale node's enqueue, claim, heartbeat or outcome is refused and writes nothing, is not
counted as an attempt, and its tasks are taken over by the current holder at once.

Contract tests: they run on PostgreSQL (leases granted through store.leases) and in memory
(MemoryLog.grant); see tests/store/contract.py."""

from __future__ import annotations

import anyio
import pytest

from events import environment
from events.errors import StaleGeneration
from events.tasks import TaskClaimed
from store import Fence
from store.eventstore import LeaseClock
from store.port import EventLog
from store.tasks import TaskContext, TaskProcessor, TaskQueue
from store.tasks.processor import _Claimed
from tests.store.contract import Backend, count
from tests.store.test_tasks import Ping, queue_on, running, stream, wait_for


async def grants(backend: Backend, log: EventLog) -> tuple[Fence, Fence]:
    """Two grants of one lease: ``old`` (superseded) and ``new`` (current)."""
    old = await backend.grant(log, "Rewards")
    new = await backend.grant(log, "Rewards")
    assert new.generation == old.generation + 1
    return old, new


async def test_an_enqueue_under_a_superseded_generation_writes_nothing(
    log: EventLog, backend: Backend
) -> None:
    old, new = await grants(backend, log)
    queue = queue_on(log)
    before = await count(log), await backend.count_tasks(log)
    with pytest.raises(StaleGeneration) as refused:
        await queue.add_task("ping", {"n": 1}, fence=old)
    assert (refused.value.lease, refused.value.generation) == ("Rewards", old.generation)
    assert (await count(log), await backend.count_tasks(log)) == before

    task_id = await queue.add_task("ping", {"n": 1}, fence=new)
    [enqueued] = await stream(log, task_id)
    assert (enqueued.metadata.lease, enqueued.metadata.generation) == ("Rewards", new.generation)


async def test_an_enqueue_inside_a_transaction_under_a_superseded_generation_writes_nothing(
    log: EventLog, backend: Backend
) -> None:
    old, _ = await grants(backend, log)
    queue = queue_on(log)
    with pytest.raises(StaleGeneration):
        async with log.transaction() as tx:
            await queue.add_task("ping", {"n": 1}, fence=old, tx=tx)
    assert (await count(log), await backend.count_tasks(log)) == (0, 0)


async def test_an_enqueue_whose_clock_ran_out_is_refused_before_anything_is_sent(
    log: EventLog, backend: Backend
) -> None:
    _, granted = await grants(backend, log)
    clock = LeaseClock(environment.monotonic() + 60)
    new = Fence(granted.lease, granted.generation, clock)
    clock.revoke("the test says so")
    queue = queue_on(log)
    before = await backend.count_tasks(log)
    with pytest.raises(StaleGeneration, match=r"before it was sent.*the test says so"):
        await queue.add_task("ping", {"n": 1}, fence=new)
    assert await backend.count_tasks(log) == before


async def test_a_stale_processor_claims_nothing_and_its_tasks_are_taken_over_at_no_attempt(
    log: EventLog, backend: Backend
) -> None:
    store = log
    first = await backend.grant(log, "Rewards")
    queue = queue_on(log)
    task_id = await queue.add_task("ping", {"n": 1}, fence=first)
    started = anyio.Event()

    async def hang(payload: Ping, ctx: TaskContext) -> None:
        started.set()
        await anyio.sleep(3600)

    # The first holder claims it (attempt 1) and freezes with it in hand.
    async with anyio.create_task_group() as tg:
        frozen = TaskProcessor(queue, node="node-a", lock_timeout=600, fence=first)
        frozen.register_handler("ping", hang)
        await tg.start(frozen.run)
        await started.wait()
        tg.cancel_scope.cancel()
    second = await backend.grant(log, "Rewards")  # the lease moves on

    # The stale holder can neither claim, nor heartbeat, nor record an outcome.
    stale = TaskProcessor(queue, node="node-a", fence=first)
    stale.register_handler("ping", hang)
    events_before = await count(log)
    with pytest.raises(StaleGeneration):
        await stale._cycle(1)
    with pytest.raises(StaleGeneration):
        await raw_heartbeat(stale, task_id)
    assert await count(log) == events_before
    info = await queue.get(task_id)
    assert info is not None
    assert (info.status, info.locked_by, info.attempts) == ("running", "node-a", 1)

    # The current holder takes it over at once (its lock has ten minutes left), continuing
    # attempt 1: the stale holder's attempt never counted.
    ran: list[int] = []

    async def handle(payload: Ping, ctx: TaskContext) -> None:
        ran.append(ctx.attempt)

    async with running(queue, {"ping": handle}, node="node-b", fence=second):
        await wait_for(lambda: status_is(queue, task_id, "succeeded"))
    assert ran == [1]
    recorded = await stream(store, task_id)
    assert [r.type for r in recorded] == [
        "TaskEnqueued",
        "TaskClaimed",
        "TaskClaimed",
        "TaskSucceeded",
    ]
    taken = recorded[2].event
    assert isinstance(taken, TaskClaimed)
    assert (taken.attempt, taken.node, taken.taken_over_from) == (1, "node-b", "node-a")
    assert (recorded[2].metadata.lease, recorded[2].metadata.generation) == (
        "Rewards",
        second.generation,
    )
    assert (await queue.get(task_id) or info).attempts == 1


async def test_a_processor_that_meets_a_newer_generation_stops(
    log: EventLog, backend: Backend
) -> None:
    old, _ = await grants(backend, log)
    queue = queue_on(log)

    async def handle(payload: Ping, ctx: TaskContext) -> None:
        raise AssertionError("never called")

    processor = TaskProcessor(queue, node="node-a", fence=old)
    processor.register_handler("ping", handle)
    with anyio.fail_after(10), pytest.raises(BaseExceptionGroup) as stopped:
        async with anyio.create_task_group() as tg:
            await tg.start(processor.run)
    assert stopped.group_contains(StaleGeneration)


async def raw_heartbeat(processor: TaskProcessor, task_id: int) -> None:
    """The processor's heartbeat for ``task_id``, as if it still held it."""
    processor._held[task_id] = _Claimed(task_id, "ping", b"{}", attempt=1, max_attempts=3)
    await processor._heartbeat()


async def status_is(queue: TaskQueue, task_id: int, status: str) -> bool:
    info = await queue.get(task_id)
    return info is not None and info.status == status
