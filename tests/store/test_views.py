"""The store's named read models and queries (store/views.py) and database operations
(store/admin.py), against a real PostgreSQL."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from events import ActorRestarted, PaymentCreated, PaymentExpired, WalletScanned
from events.errors import StoreError, StoreUnavailable
from store import EventStore, views
from store.admin import (
    DatabaseRefused,
    backdate_events,
    create_database,
    database_exists,
    drop_database,
)
from store.database import with_database
from store.views import HealthSample

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def created(payment_id: int) -> PaymentCreated:
    return PaymentCreated(
        payment_id=payment_id,
        user_id=7,
        plan="month",
        amount_nanotons=5_440_000_000,
        wallet="0:" + "ab" * 32,
        memo=f"i3lani_{payment_id}",
        created_at=NOW,
        expires_at=NOW + timedelta(hours=1),
    )


def restarted(actor: str) -> ActorRestarted:
    return ActorRestarted(
        actor=actor, cause="crash", attempt=1, delay_seconds=0.5, restarted_at=NOW
    )


async def test_summary_of_an_empty_log(store: EventStore) -> None:
    summary = await views.summary(store)
    assert (summary.events, summary.streams, summary.last_position) == (0, 0, 0)
    assert summary.first_recorded_at is None
    assert summary.last_recorded_at is None
    assert summary.by_type == []
    assert summary.checkpoints == []


async def test_summary_counts_types_and_checkpoints(store: EventStore) -> None:
    await store.append("payment-1", [created(1)])
    expired = PaymentExpired(payment_id=2, expired_at=NOW)
    second = await store.append("payment-2", [created(2), expired])
    await store.append("actor-PaymentMonitor", [restarted("PaymentMonitor")])
    await store.save_checkpoint(
        "reader", await store.cursor_at(second.last_position), expected=None
    )
    summary = await views.summary(store)
    assert (summary.events, summary.streams) == (4, 3)
    assert summary.last_position == (await store.head()).position
    assert summary.first_recorded_at is not None
    assert summary.last_recorded_at is not None
    assert summary.first_recorded_at <= summary.last_recorded_at
    assert [(t.category, t.type, t.events) for t in summary.by_type] == [
        ("actor", "ActorRestarted", 1),
        ("payment", "PaymentCreated", 2),
        ("payment", "PaymentExpired", 1),
    ]
    # Sizes on disk: the table and its indexes, within the whole database.
    assert summary.log_bytes >= summary.table_bytes + summary.index_bytes > 0
    assert summary.database_bytes > summary.log_bytes
    assert summary.bytes_per_event == summary.log_bytes / 4
    assert (summary.events_last_day, summary.events_last_week) == (4, 4)
    growth = summary.growth_per_day(summary.last_recorded_at + timedelta(hours=12))
    assert growth == pytest.approx(summary.log_bytes / 0.5, rel=0.01)  # four events, half a day
    [checkpoint] = summary.checkpoints
    assert checkpoint.name == "reader"
    assert checkpoint.global_position == second.last_position
    assert checkpoint.behind == 1  # the restart, appended after it


async def test_events_by_type_and_per_stream(store: EventStore) -> None:
    assert await views.events_by_type(store) == {}
    assert await views.events_per_stream(store, "ActorRestarted") == {}
    await store.append("actor-PaymentMonitor", [restarted("PaymentMonitor")] * 2)
    await store.append("actor-Health", [restarted("Health")])
    await store.append("payment-1", [created(1)])
    assert await views.events_by_type(store) == {"ActorRestarted": 3, "PaymentCreated": 1}
    assert await views.events_per_stream(store, "ActorRestarted") == {
        "actor-PaymentMonitor": 2,
        "actor-Health": 1,
    }
    assert await views.events_per_stream(store, "PaymentCreated") == {"payment-1": 1}


async def test_event_rate_has_every_minute_and_counts_the_newest(store: EventStore) -> None:
    for n in range(1, 4):
        await store.append(f"payment-{n}", [created(n)])
    minutes = await views.event_rate(store, 5, 100)
    assert len(minutes) == 5
    assert [m.minute for m in minutes] == sorted(m.minute for m in minutes)
    assert all(b.minute - a.minute == timedelta(minutes=1) for a, b in itertools.pairwise(minutes))
    assert sum(m.events for m in minutes) == 3
    capped = await views.event_rate(store, 5, 2)  # only the newest two are looked at
    assert sum(m.events for m in capped) == 2


async def test_recent_streams_newest_first_of_the_types_asked(store: EventStore) -> None:
    await store.append("payment-1", [created(1)])
    await store.append("payment-2", [created(2)])
    scan = WalletScanned(wallet="0:" + "ab" * 32, last_lt=5, transactions=1, scanned_at=NOW)
    await store.append("payment-scan-0_ab", [scan])
    await store.append("payment-1", [PaymentExpired(payment_id=1, expired_at=NOW)])
    last = (await store.head()).position
    found = await views.recent_streams(
        store, "payment", ["PaymentCreated", "PaymentExpired"], shown=10, scan_limit=100
    )
    assert [(r.stream, r.last_position) for r in found] == [
        ("payment-1", last),
        ("payment-2", last - 2),
    ]
    assert [
        r.stream
        for r in await views.recent_streams(
            store, "payment", ["PaymentCreated"], shown=1, scan_limit=100
        )
    ] == ["payment-2"]
    assert (
        await views.recent_streams(store, "user", ["PaymentCreated"], shown=10, scan_limit=100)
        == []
    )


async def test_max_payload_int(store: EventStore) -> None:
    assert await views.max_payload_int(store, "PaymentCreated", "payment_id") == 0
    for n in (3, 41, 7):
        await store.append(f"payment-{n}", [created(n)])
    await store.append("payment-99", [PaymentExpired(payment_id=99, expired_at=NOW)])
    assert await views.max_payload_int(store, "PaymentCreated", "payment_id") == 41
    assert await views.max_payload_int(store, "PaymentExpired", "payment_id") == 99
    assert await views.max_payload_int(store, "PaymentCreated", "no_such_field") == 0


async def test_ping_answers_and_a_lost_database_is_a_store_error(server_dsn: str) -> None:
    server = with_database(server_dsn, "postgres")
    name = f"i3lani_ping_{uuid.uuid4().hex[:10]}"
    await create_database(server, name)
    try:
        async with EventStore.open(with_database(server_dsn, name), max_connections=3) as store:
            await views.ping(store)
            await drop_database(server, name)  # ends the store's session too
            with pytest.raises(StoreError) as caught:
                await views.ping(store)
            assert isinstance(caught.value.__cause__, asyncpg.PostgresError | OSError)
    finally:
        await drop_database(server, name)


async def test_health_samples_are_recorded_and_pruned(store: EventStore, raw: Any) -> None:
    old, new = NOW - timedelta(days=40), NOW
    async with store.transaction() as tx:
        await views.record_health_samples(tx, [])  # nothing to write: no statement
        await views.record_health_samples(
            tx,
            [HealthSample(checked_at=old, name="database", ok=True, latency_ms=1.5)] * 5
            + [HealthSample(checked_at=new, name="tonapi", ok=False, detail="502")],
        )
    rows = await raw.fetch(
        "SELECT checked_at, name, ok, latency_ms, detail FROM i3lani.health_samples ORDER BY id"
    )
    assert len(rows) == 6
    assert tuple(rows[-1]) == (new, "tonapi", False, None, "502")
    assert tuple(rows[0]) == (old, "database", True, 1.5, "")
    assert await views.prune_health_samples(store, NOW - timedelta(days=1), batch_size=2) == 5
    assert await raw.fetchval("SELECT count(*) FROM i3lani.health_samples") == 1
    assert await views.prune_health_samples(store, NOW - timedelta(days=1), batch_size=2) == 0


async def test_databases_are_created_marked_and_dropped(server_dsn: str) -> None:
    server = with_database(server_dsn, "postgres")
    name = f"i3lani_views_{uuid.uuid4().hex[:10]}"
    assert await database_exists(server, name) == (False, None)
    await create_database(server, name, comment="it's a test")
    try:
        assert await database_exists(server, name) == (True, "it's a test")
        with pytest.raises(DatabaseRefused) as caught:
            await create_database(server, name)
        assert not caught.value.permission
        assert isinstance(caught.value.__cause__, asyncpg.DuplicateDatabaseError)
    finally:
        await drop_database(server, name)
    assert await database_exists(server, name) == (False, None)
    await drop_database(server, name)  # gone already: nothing to do
    with pytest.raises(ValueError, match="plain database name"):
        await create_database(server, 'x"; DROP DATABASE postgres; --')


async def test_an_unreachable_server_is_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match="cannot connect"):
        await database_exists("postgresql://nobody@127.0.0.1:9/postgres", "x")


async def test_backdate_events_sets_recorded_at_and_keeps_the_log_append_only(
    store: EventStore, dsn: str, raw: Any
) -> None:
    first = await store.append("payment-1", [created(1)])
    second = await store.append("payment-2", [created(2)])
    earlier = NOW - timedelta(hours=1)
    await backdate_events(dsn, [first.last_position, second.last_position], [earlier, NOW])
    stored = await raw.fetch("SELECT recorded_at FROM i3lani.events ORDER BY global_position")
    assert [row["recorded_at"] for row in stored] == [earlier, NOW]
    with pytest.raises(asyncpg.PostgresError):  # the trigger is back on
        await raw.execute("UPDATE i3lani.events SET recorded_at = now()")
