"""Task concurrency limits that hold across nodes: at most N tasks of a type running at once on
every processor together (``i3lani.task_concurrency``, migration 0008).

Contract tests: each runs on PostgreSQL and in memory (see tests/store/contract.py)."""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest

from events import EventMetadata
from store.port import EventLog
from store.tasks import TaskContext, TaskProcessor, TaskQueue, UnknownTaskType
from store.tasks.table import Outcome
from tests.store.contract import Backend
from tests.store.test_tasks import Ping, queue_on, running, wait_for

META = EventMetadata()


async def test_a_limited_type_never_runs_more_than_its_limit_on_every_node(
    log: EventLog,
) -> None:
    queue = queue_on(log)
    running_now = 0
    most = 0
    release = anyio.Event()

    async def handle(payload: Ping, ctx: TaskContext) -> None:
        nonlocal running_now, most
        running_now += 1
        most = max(most, running_now)
        try:
            await release.wait()
        finally:
            running_now -= 1

    async def free(payload: Ping, ctx: TaskContext) -> None:
        return None

    for n in range(6):
        await queue.add_task("ping", {"n": n})
    for n in range(4):
        await queue.add_task("pong", {"n": n})
    limits = {"ping": 2, "pong": None}
    async with (
        running(queue, {"ping": handle, "pong": free}, node="a", limits=limits, poll_interval=0.1),
        running(queue, {"ping": handle, "pong": free}, node="b", limits=limits, poll_interval=0.1),
    ):
        # The unlimited type runs through; the limited one holds at two across both nodes.
        await wait_for(lambda: _counted(queue, "pong", 0))
        await wait_for(lambda: _running(queue, "ping", 2))
        await anyio.sleep(0.3)
        assert most == 2
        use = (await queue.concurrency())["ping"]
        assert (use.max_running, use.running) == (2, 2)
        assert use.set_by in ("a", "b")
        assert "pong" not in await queue.concurrency()
        release.set()
        await wait_for(lambda: _counted(queue, "ping", 0))
    assert most == 2


async def _counted(queue: TaskQueue, task_type: str, unfinished: int) -> bool:
    counts = (await queue.counts()).get(task_type)
    return (0 if counts is None else counts.queued + counts.running) == unfinished


async def _running(queue: TaskQueue, task_type: str, n: int) -> bool:
    counts = (await queue.counts()).get(task_type)
    return counts is not None and counts.running == n


async def test_claims_keep_to_the_limit_and_next_due_waits_for_a_slot(log: EventLog) -> None:
    queue = queue_on(log)
    table = queue.table
    await table.set_concurrency({"ping": 1}, node="test")
    for n in range(3):
        await queue.add_task("ping", {"n": n})
    await queue.add_task("pong", {"n": 9})
    kw = {"metadata": META, "lock_seconds": 30.0, "fence": None}
    first = await table.cycle([], want=10, task_types=["ping", "pong"], node="a", **kw)
    assert sorted(c.task_type for c in first.claimed) == ["ping", "pong"]
    # At its limit: another node claims nothing of it, and is not told a task of it is due.
    second = await table.cycle([], want=10, task_types=["ping"], node="b", **kw)
    assert second.claimed == []
    assert await table.next_due(["ping"]) is None
    # The running one ends: a slot is free.
    (ping,) = [c for c in first.claimed if c.task_type == "ping"]
    done = Outcome(ping.task_id, ping.attempt, "a", None, None, 1.0)
    await table.cycle([done], want=0, task_types=["ping"], node="a", **kw)
    due = await table.next_due(["ping"])
    assert due is not None
    assert due <= 0
    third = await table.cycle([], want=10, task_types=["ping"], node="b", **kw)
    assert len(third.claimed) == 1


async def test_a_dead_nodes_task_does_not_hold_its_slot(log: EventLog, backend: Backend) -> None:
    queue = queue_on(log)
    table = queue.table
    await table.set_concurrency({"ping": 1}, node="test")
    stuck = await queue.add_task("ping", {"n": 1})
    await queue.add_task("ping", {"n": 2})
    kw = {"metadata": META, "fence": None}
    claimed = await table.cycle([], want=1, task_types=["ping"], node="a", lock_seconds=30, **kw)
    assert [c.task_id for c in claimed.claimed] == [stuck]
    assert (await queue.concurrency())["ping"].running == 1
    # Its node stopped heartbeating: the lock ran out.
    info = await queue.get(stuck)
    assert info is not None
    assert info.locked_until is not None
    await backend.update_task(log, stuck, locked_until=info.locked_until - timedelta(hours=1))
    assert (await queue.concurrency())["ping"].running == 0
    again = await table.cycle([], want=1, task_types=["ping"], node="b", lock_seconds=30, **kw)
    assert len(again.claimed) == 1


async def test_limits_are_set_changed_and_removed(log: EventLog) -> None:
    queue = queue_on(log)
    await queue.table.set_concurrency({"ping": 3, "pong": 1}, node="a")
    assert {t: u.max_running for t, u in (await queue.concurrency()).items()} == {
        "ping": 3,
        "pong": 1,
    }
    await queue.table.set_concurrency({"ping": 5, "pong": None}, node="b")
    (ping,) = (await queue.concurrency()).values()
    assert (ping.task_type, ping.max_running, ping.set_by, ping.running) == ("ping", 5, "b", 0)


async def test_a_processor_sets_the_limits_of_its_types(log: EventLog) -> None:
    queue = queue_on(log)
    await queue.table.set_concurrency({"pong": 4}, node="elsewhere")

    async def handle(payload: Ping, ctx: TaskContext) -> None:
        return None

    async with running(queue, {"ping": handle}, limits={"ping": 2}):
        await wait_for(lambda: _has_limit(queue, "ping"))
    limits = await queue.concurrency()
    assert limits["ping"].max_running == 2
    assert limits["pong"].max_running == 4  # not its type: left alone
    # A processor of the type configured without a limit removes it; limits=None leaves it.
    async with running(queue, {"pong": handle}):
        await anyio.sleep(0.1)
    assert "pong" in await queue.concurrency()
    async with running(queue, {"pong": handle}, limits={}):
        await wait_for(lambda: _no_limit(queue, "pong"))


async def _has_limit(queue: TaskQueue, task_type: str) -> bool:
    return task_type in await queue.concurrency()


async def _no_limit(queue: TaskQueue, task_type: str) -> bool:
    return task_type not in await queue.concurrency()


async def test_limits_of_unknown_types_or_below_one_are_refused(log: EventLog) -> None:
    queue = queue_on(log)
    with pytest.raises(UnknownTaskType):
        TaskProcessor(queue, node="a", limits={"nope": 1})
    with pytest.raises(ValueError, match="1 or more"):
        TaskProcessor(queue, node="a", limits={"ping": 0})


async def test_claims_at_once_from_two_nodes_share_the_last_slot(log: EventLog) -> None:
    """Many claims of a limited type at the same instant, each from its own node: the
    type's turn-taking lets exactly its limit through."""
    queue = queue_on(log)
    table = queue.table
    await table.set_concurrency({"ping": 3}, node="test")
    for n in range(20):
        await queue.add_task("ping", {"n": n})
    claimed: list[int] = []

    async def claimer(node: str) -> None:
        cycle = await table.cycle(
            [],
            metadata=META,
            want=2,
            task_types=["ping"],
            node=node,
            lock_seconds=30.0,
            fence=None,
        )
        claimed.extend(c.task_id for c in cycle.claimed)

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(claimer, f"node-{i}")
    assert len(claimed) == 3
    assert len(set(claimed)) == 3
