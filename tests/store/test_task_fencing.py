"""Task-queue writes made for an actor are fenced by its lease generation (migration 0005):
a stale node's enqueue, claim, heartbeat or outcome is refused and writes nothing, is not
counted as an attempt, and its tasks are taken over by the current holder at once.

PostgreSQL only (not in the contract suite): the task queue and its lease checks are SQL;
fenced appends and checkpoints are in the contract suite."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from events.errors import StaleGeneration
from events.tasks import TaskClaimed
from store import EventStore
from store.leases import Lease, Leases
from store.tasks import TaskContext, TaskProcessor, TaskQueue
from store.tasks.processor import _Claimed
from tests.store.test_tasks import Ping, make_types, rows, running, stream, wait_for


async def grants(store: EventStore) -> tuple[Lease, Lease]:
    """Two grants of one lease: ``old`` (superseded) and ``new`` (current)."""
    leases = Leases(store, "vm:1", ttl=60)
    old = await leases.acquire("Rewards")
    new = await leases.acquire("Rewards")
    assert old is not None
    assert new is not None
    assert new.generation == old.generation + 1
    return old, new


async def test_an_enqueue_under_a_superseded_generation_writes_nothing(
    store: EventStore, raw: asyncpg.Connection
) -> None:
    old, new = await grants(store)
    queue = TaskQueue(store, make_types())
    before = await rows(raw, "events"), await rows(raw, "tasks")
    with pytest.raises(StaleGeneration) as refused:
        await queue.add_task("ping", {"n": 1}, fence=old.fence)
    assert (refused.value.lease, refused.value.generation) == ("Rewards", old.generation)
    assert (await rows(raw, "events"), await rows(raw, "tasks")) == before

    task_id = await queue.add_task("ping", {"n": 1}, fence=new.fence)
    [enqueued] = await stream(store, task_id)
    assert (enqueued.metadata.lease, enqueued.metadata.generation) == ("Rewards", new.generation)


async def test_an_enqueue_whose_clock_ran_out_is_refused_before_anything_is_sent(
    store: EventStore, raw: asyncpg.Connection
) -> None:
    _, new = await grants(store)
    assert new.clock is not None
    new.clock.revoke("the test says so")
    queue = TaskQueue(store, make_types())
    before = await rows(raw, "tasks")
    with pytest.raises(StaleGeneration, match=r"before it was sent.*the test says so"):
        await queue.add_task("ping", {"n": 1}, fence=new.fence)
    assert await rows(raw, "tasks") == before


async def test_a_stale_processor_claims_nothing_and_its_tasks_are_taken_over_at_no_attempt(
    store: EventStore, raw: asyncpg.Connection
) -> None:
    leases = Leases(store, "vm:1", ttl=60)
    first = await leases.acquire("Rewards")
    assert first is not None
    queue = TaskQueue(store, make_types())
    task_id = await queue.add_task("ping", {"n": 1}, fence=first.fence)
    started = anyio.Event()

    async def hang(payload: Ping, ctx: TaskContext) -> None:
        started.set()
        await anyio.sleep(3600)

    # The first holder claims it (attempt 1) and freezes with it in hand.
    async with anyio.create_task_group() as tg:
        frozen = TaskProcessor(queue, node="node-a", lock_timeout=600, fence=first.fence)
        frozen.register_handler("ping", hang)
        await tg.start(frozen.run)
        await started.wait()
        tg.cancel_scope.cancel()
    second = await leases.acquire("Rewards")  # the lease moves on
    assert second is not None

    # The stale holder can neither claim, nor heartbeat, nor record an outcome.
    stale = TaskProcessor(queue, node="node-a", fence=first.fence)
    stale.register_handler("ping", hang)
    events_before = await rows(raw, "events")
    with pytest.raises(StaleGeneration):
        await stale._cycle(1)
    with pytest.raises(StaleGeneration):
        await raw_heartbeat(stale, task_id)
    assert await rows(raw, "events") == events_before
    info = await queue.get(task_id)
    assert info is not None
    assert (info.status, info.locked_by, info.attempts) == ("running", "node-a", 1)

    # The current holder takes it over at once (its lock has ten minutes left), continuing
    # attempt 1: the stale holder's attempt never counted.
    ran: list[int] = []

    async def handle(payload: Ping, ctx: TaskContext) -> None:
        ran.append(ctx.attempt)

    async with running(queue, {"ping": handle}, node="node-b", fence=second.fence):
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


async def test_a_processor_that_meets_a_newer_generation_stops(store: EventStore) -> None:
    old, _ = await grants(store)
    queue = TaskQueue(store, make_types())

    async def handle(payload: Ping, ctx: TaskContext) -> None:
        raise AssertionError("never called")

    processor = TaskProcessor(queue, node="node-a", fence=old.fence)
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
