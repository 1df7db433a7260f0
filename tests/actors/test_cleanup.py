"""Cleanup on a real database: derived data pruned in batches, stale payments expired once,
the event log untouched."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import msgspec
import pytest

from actors.cleanup import BATCH, CLEANUP_STREAM, Cleanup, CleanupDone, CleanupState
from actors.config import Settings
from actors.payment_monitor import payment_event_id
from actors.runtime import ActorRunner
from actors.runtime.clock import SystemClock
from actors.ton import memo_for
from events import CleanupCompleted, PaymentConfirmed, PaymentCreated, PaymentExpired
from events.streams import payment_stream
from store import EventStore, views
from store.memory import MemoryLog
from store.tasks import TaskContext, TaskProcessor, TaskQueue, TaskTypes
from store.views import HealthSample
from tests.waiting import eventually

WALLET = "EQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla9nE"


class Noop(msgspec.Struct, frozen=True):
    n: int


async def create(store: EventStore | MemoryLog, payment_id: int, expires_at: datetime) -> None:
    await store.append(
        payment_stream(payment_id),
        [
            PaymentCreated(
                payment_id=payment_id,
                user_id=5,
                plan="week",
                amount_nanotons=10**9,
                wallet=WALLET,
                memo=memo_for(payment_id),
                created_at=expires_at - timedelta(hours=1),
                expires_at=expires_at,
            )
        ],
    )


async def finished_tasks(store: EventStore, count: int) -> None:
    """``count`` succeeded tasks, aged past the retention period."""
    types = TaskTypes()
    types.register("noop", Noop)
    queue = TaskQueue(store, types)
    for n in range(count):
        await queue.add_task("noop", Noop(n))
    processor = TaskProcessor(queue, node="worker", types=["noop"], batch_size=100)

    async def handle(payload: Noop, context: TaskContext) -> None:
        await anyio.lowlevel.checkpoint()

    processor.register_handler("noop", handle)
    async with anyio.create_task_group() as tg:
        await tg.start(processor.run)

        async def all_done() -> bool:
            done: int = await store._pool.fetchval(
                "SELECT count(*) FROM i3lani.tasks WHERE status = 'succeeded'"
            )
            return done == count

        await eventually(all_done)
        tg.cancel_scope.cancel()
    await store.execute_sql("UPDATE i3lani.tasks SET finished_at = now() - interval '8 days'")


@contextlib.asynccontextmanager
async def cleanup(store: EventStore | MemoryLog) -> AsyncIterator[ActorRunner[CleanupState]]:
    async with anyio.create_task_group() as tg:
        runner = ActorRunner(Cleanup(Settings()), store, SystemClock(), node="node-a")
        await tg.start(runner.run)
        yield runner
        tg.cancel_scope.cancel()


async def completed(store: EventStore | MemoryLog) -> list[CleanupCompleted]:
    return [
        r.event
        for r in await store.read_stream(CLEANUP_STREAM)
        if isinstance(r.event, CleanupCompleted)
    ]


async def test_prunes_derived_data_and_expires_stale_payments_only(
    store: EventStore, raw: asyncpg.Connection
) -> None:
    now = datetime.now(UTC)
    await finished_tasks(store, 1500)  # more than one batch
    await raw.executemany(
        "INSERT INTO i3lani.health_samples (checked_at, name, ok) VALUES ($1, $2, true)",
        [(now - timedelta(days=40), "database")] * 1200 + [(now, "database")] * 3,
    )
    await create(store, 1, now - timedelta(days=2))  # stale: expired two days ago
    await create(store, 2, now - timedelta(hours=1))  # expired, but the monitor's to handle
    await create(store, 3, now + timedelta(hours=1))  # still open
    await create(store, 4, now - timedelta(days=3))  # stale, but paid
    await store.append(
        "payment-4",
        [
            PaymentConfirmed(
                payment_id=4,
                tx_hash="ab" * 32,
                lt=1,
                amount_nanotons=10**9,
                payer="0:" + "cd" * 32,
                confirmed_at=now - timedelta(days=3),
            )
        ],
    )
    await raw.executemany(
        "INSERT INTO i3lani.rate_limits (scope, max_count, window_seconds, updated_at) "
        "VALUES ($1, 1, 1, now() - make_interval(hours => $2))",
        [("telegram", 48), ("telegram-chat:7", 30), ("telegram-chat:8", 1)],
    )
    events_before: int = await raw.fetchval("SELECT count(*) FROM i3lani.events")
    async with cleanup(store):  # the first tick is due at once

        async def done() -> bool:
            return bool(await completed(store))

        await eventually(done, within=20)
    [record] = await completed(store)
    assert record.removed == {
        "finished_tasks": 1500,
        "health_samples": 1200,
        "rate_limit_scopes": 1,  # chat 7's, idle for 30 hours; not chat 8's, nor the bot's
        "stale_payments": 1,
    }
    assert await raw.fetchval("SELECT count(*) FROM i3lani.rate_limits") == 2
    assert await raw.fetchval("SELECT count(*) FROM i3lani.tasks") == 0
    assert await raw.fetchval("SELECT count(*) FROM i3lani.health_samples") == 3
    one = await store.read_stream("payment-1")
    assert isinstance(one[-1].event, PaymentExpired)
    assert one[-1].event_id == payment_event_id("PaymentExpired", 1)  # the monitor's id
    for untouched in (2, 3):
        assert [r.type for r in await store.read_stream(payment_stream(untouched))] == [
            "PaymentCreated"
        ]
    assert [r.type for r in await store.read_stream("payment-4")][-1] == "PaymentConfirmed"
    # The log only grew: the tasks' events are all still there.
    events_after: int = await raw.fetchval("SELECT count(*) FROM i3lani.events")
    assert events_after >= events_before + 2
    task_events: int = await raw.fetchval(
        "SELECT count(*) FROM i3lani.events WHERE type = 'TaskSucceeded'"
    )
    assert task_events == 1500


async def test_a_second_pass_finds_nothing_more(store: EventStore) -> None:
    now = datetime.now(UTC)
    await create(store, 1, now - timedelta(days=2))
    async with cleanup(store) as runner:

        async def first() -> bool:
            return bool(await completed(store))

        await eventually(first)
        # What a later pass reports (a tick's pruning found nothing), asked so that its
        # decision is applied before the answer comes back.
        later = CleanupDone(removed={}, started_at=now, finished_at=now + timedelta(days=1))
        await runner.ref.ask(later)
    # Nothing to remove, no payment to expire again: nothing more in the log.
    assert len(await completed(store)) == 1
    assert [r.type for r in await store.read_stream("payment-1")].count("PaymentExpired") == 1


def test_a_pass_that_removed_nothing_records_nothing() -> None:
    actor = Cleanup(Settings())
    now = datetime.now(UTC)
    idle = CleanupDone(
        removed={"finished_tasks": 0, "health_samples": 0}, started_at=now, finished_at=now
    )
    assert actor.decide(CleanupState(), idle) == []
    busy = CleanupDone(
        removed={"finished_tasks": 3, "health_samples": 0}, started_at=now, finished_at=now
    )
    [record] = actor.decide(CleanupState(), busy)
    assert isinstance(record.event, CleanupCompleted)
    assert record.event.removed == {"finished_tasks": 3, "health_samples": 0, "stale_payments": 0}


@pytest.mark.memory
async def test_on_the_memory_log_old_samples_are_pruned_and_no_event_goes() -> None:
    # The same actor on the in-memory log (as in `i3lani simulate`): the health samples are
    # the log's side table, pruned in batches; the log itself only grows.
    log = MemoryLog()
    now = datetime.now(UTC)
    old = HealthSample(checked_at=now - timedelta(days=40), name="database", ok=True)
    await views.record_health_samples(log, [old] * (BATCH + 5))
    kept = [HealthSample(checked_at=now, name="database", ok=True)]
    await views.record_health_samples(log, kept)
    await create(log, 1, now - timedelta(days=2))  # stale
    before = [r.event_id async for r in log.read_all()]
    async with cleanup(log):

        async def done() -> bool:
            return bool(await completed(log))

        await eventually(done, within=20)
    [record] = await completed(log)
    assert record.removed["health_samples"] == BATCH + 5
    assert record.removed["stale_payments"] == 1
    assert await views.latest_health_samples(log) == kept
    after = [r.event_id async for r in log.read_all()]
    assert after[: len(before)] == before
