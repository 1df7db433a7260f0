"""The connection budget (store/budget.py): a process holds at most I3LANI_MAX_CONNECTIONS
connections, one of them its only LISTEN connection, and waits (logged) when they are all
busy, never failing for it.

PostgreSQL only (not in the contract suite): real connections, counted by PostgreSQL."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

import anyio
import asyncpg
import msgspec
import pytest

from events import ActorTicked
from events.errors import ConfigError
from store import EventStore, NewTask, TaskProcessor, TaskQueue, TaskTypes, budget
from store.budget import (
    COMMAND_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS,
    GATEWAY_MAX_CONNECTIONS,
    max_connections_from_env,
    pool_size,
)
from store.eventstore import LINGER
from store.leases import Leases
from store.tasks import TaskContext
from tests.waiting import eventually

T0 = datetime(2026, 6, 1, tzinfo=UTC)


class Noop(msgspec.Struct, frozen=True):
    n: int


def tick(n: int) -> ActorTicked:
    return ActorTicked(actor="Budget", due_at=T0, ticked_at=T0.replace(second=n % 60))


async def held_by(raw: asyncpg.Connection, node: str) -> dict[str, int]:
    """The connections PostgreSQL holds for ``node``'s store, by purpose."""
    rows = await raw.fetch(
        "SELECT split_part(application_name, ':', 3) AS purpose, count(*) AS n "
        "FROM pg_stat_activity WHERE application_name LIKE $1 GROUP BY 1",
        f"i3lani:{node}:%",
    )
    return {row["purpose"]: row["n"] for row in rows}


def test_the_budget_comes_from_the_environment_and_leaves_the_pool_one_at_least() -> None:
    assert max_connections_from_env(DEFAULT_MAX_CONNECTIONS, {}) == 8
    assert max_connections_from_env(GATEWAY_MAX_CONNECTIONS, {}) == 4
    assert max_connections_from_env(8, {"I3LANI_MAX_CONNECTIONS": " 12 "}) == 12
    assert pool_size(DEFAULT_MAX_CONNECTIONS) == 6
    assert pool_size(COMMAND_MAX_CONNECTIONS) == 1
    # Two workers overlapping in a deploy and the web service, twice over, fit in 25.
    assert 2 * DEFAULT_MAX_CONNECTIONS + 2 * GATEWAY_MAX_CONNECTIONS <= 25


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("many", "I3LANI_MAX_CONNECTIONS must be a whole number of connections, got 'many'"),
        ("2", "I3LANI_MAX_CONNECTIONS must be between 3 and 1000"),
        ("1001", "I3LANI_MAX_CONNECTIONS must be between 3 and 1000"),
    ],
)
def test_a_budget_that_cannot_work_is_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        max_connections_from_env(8, {"I3LANI_MAX_CONNECTIONS": text})
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


async def test_under_load_a_process_keeps_to_its_budget_and_waits_instead_of_failing(
    dsn: str, raw: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="store.budget")
    node = f"budget-{uuid.uuid4().hex[:6]}"
    seen: list[dict[str, int]] = []
    async with EventStore.open(dsn, node=node, max_connections=4) as store:
        # A worker's shape: leases, followers of the log and of the queue, many writers.
        lease = await Leases(store, node, ttl=30).acquire("Budget")
        assert lease is not None
        types = TaskTypes()
        types.register("noop", Noop)
        queue = TaskQueue(store, types)
        processor = TaskProcessor(queue, node=node, concurrency=4)
        done: list[int] = []

        async def handle(payload: Noop, context: TaskContext) -> None:
            await store.append(f"budget-{payload.n}", [tick(payload.n)])
            done.append(payload.n)

        processor.register_handler("noop", handle)

        async def follow(category: str) -> None:
            async with store.subscribe(category=category) as sub:
                async for _ in sub:
                    pass

        async def transact(n: int) -> None:
            async with store.transaction() as tx:
                await tx.append(f"load-{n}", [tick(n)])
                await anyio.sleep(0.05)  # hold the connection a moment: the pool runs dry
                await tx.append(f"load-{n}", [tick(n + 1)])

        async def sample() -> None:
            while True:
                seen.append(await held_by(raw, node))
                await anyio.sleep(0.02)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sample)
            for category in ("load", "budget", "task", "other", "more"):
                tg.start_soon(follow, category)
            await tg.start(processor.run)
            await queue.add_tasks([NewTask("noop", Noop(n=n)) for n in range(40)])
            async with anyio.create_task_group() as load:
                for n in range(40):
                    load.start_soon(transact, n)

            async def all_done() -> bool:
                return len(done) == 40

            await eventually(all_done, within=30)
            statistics = store.connection_statistics()
            listen = store.listen_statistics()
            processor.stop()
            tg.cancel_scope.cancel()
    assert len(await raw.fetch("SELECT 1 FROM i3lani.events WHERE stream LIKE 'load-%'")) == 80
    # Never more than the budget, and every follower on one LISTEN connection.
    assert max(sum(counts.values()) for counts in seen) <= 4
    assert max(counts.get("listen", 0) for counts in seen) == 1
    assert max(counts.get("work", 0) for counts in seen) <= pool_size(4)
    assert listen.followers == {"i3lani_events": 5, "i3lani_tasks": 1}
    # The pool ran dry and callers waited, said so, and nothing failed.
    assert statistics.pool.waits > 0
    assert statistics.budget == 4
    assert "pooled database connections of this process are in use" in caplog.text
    assert "I3LANI_MAX_CONNECTIONS=4" in caplog.text


async def test_an_idle_store_gives_its_borrowed_connections_back(dsn: str) -> None:
    node = f"idle-{uuid.uuid4().hex[:6]}"
    async with EventStore.open(dsn, node=node) as store:
        for n in range(20):  # the lone writer keeps one connection between appends...
            await store.append("idle-1", [tick(n)])
        assert store.connection_statistics().pool.in_use >= 1

        async def given_back() -> bool:
            return store.connection_statistics().pool.in_use == 0

        # ...and gives it back once it has sat unused (the pool closes it after a minute).
        await eventually(given_back, within=LINGER * 3)


async def test_the_pool_opens_another_connection_only_for_a_wait_that_lasts(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The timers of an idle worker's followers and ticks meet now and then: a caller that
    # finds the one open connection busy for a moment gets it when it comes back, and the
    # pool stays one connection; a wait that lasts past GROW_AFTER opens another. (GROW_AFTER
    # is stretched here so that a loaded machine cannot make a moment last.)
    monkeypatch.setattr(budget, "GROW_AFTER", 1.0)
    async with EventStore.open(dsn, node=f"grow-{uuid.uuid4().hex[:6]}") as store:
        pool = store._pool
        async with pool.acquire() as first:
            await first.fetchval("SELECT 1")
        assert pool.statistics().size == 1

        async def hold(seconds: float, held: anyio.Event) -> None:
            async with pool.acquire() as conn:
                held.set()
                await conn.execute("SELECT pg_sleep($1)", seconds)

        async def waited_for_one() -> float:
            began = anyio.current_time()
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
            return anyio.current_time() - began

        async with anyio.create_task_group() as tg:
            held = anyio.Event()
            tg.start_soon(hold, 0.01, held)
            await held.wait()
            waited = await waited_for_one()
        assert waited < 1.0
        assert pool.statistics().size == 1  # served by the connection that came back
        assert pool.growth_waits == 1

        monkeypatch.setattr(budget, "GROW_AFTER", 0.05)
        async with anyio.create_task_group() as tg:
            held = anyio.Event()
            tg.start_soon(hold, 2.0, held)
            await held.wait()
            waited = await waited_for_one()
        assert 0.05 <= waited < 2.0  # grown after GROW_AFTER, not once the holder was done
        assert pool.statistics().size == 2


async def test_a_connection_held_unused_by_the_lone_writer_is_taken_back_before_the_pool_grows(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(budget, "GROW_AFTER", 5.0)  # waiting it out would show
    async with EventStore.open(dsn, node=f"reclaim-{uuid.uuid4().hex[:6]}") as store:
        await store.append("reclaim-1", [tick(1)])  # the lone writer keeps its connection
        pool = store._pool
        assert pool.statistics().size == 1
        assert pool.in_use() == 1
        began = anyio.current_time()
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
        assert anyio.current_time() - began < 2.0  # it was taken back, not waited for
        assert pool.statistics().size == 1
        assert pool.in_use() == 0
        await store.append("reclaim-1", [tick(2)])  # and the writer borrows it again
        assert await store.stream_version("reclaim-1") == 2
