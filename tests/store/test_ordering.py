"""Gap-free reading: a reader tailing the log never skips an event that commits late.

The contract tests (taking ``log`` or ``backend``) hold transactions of the log's own open,
and race writers with slow commits against a tailing reader, on PostgreSQL and in memory. The
PostgreSQL-only ones hold a transaction open on a plain connection: another client's insert,
or a transaction that takes its id before it writes."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import anyio
import asyncpg
import pytest

from events import DEFAULT_REGISTRY, PaymentExpired
from store import START, AppendResult, Cursor, EventStore
from store.port import EventLog
from tests.store.contract import Backend

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def expired(payment_id: int) -> PaymentExpired:
    return PaymentExpired(payment_id=payment_id, expired_at=NOW)


async def insert(conn: asyncpg.Connection, stream: str, payment_id: int) -> int:
    tag, version, payload = DEFAULT_REGISTRY.encode(expired(payment_id))
    position: int = await conn.fetchval(
        "INSERT INTO i3lani.events (event_id, stream, stream_version, type, schema_version, "
        "payload) VALUES ($1, $2, 1, $3, $4, $5::jsonb) RETURNING global_position",
        uuid.uuid4(),
        stream,
        tag,
        version,
        payload.decode(),
    )
    return position


async def tail(store: EventLog, cursor: Cursor) -> tuple[list[int], Cursor]:
    page = await store.read_page(cursor, limit=1000)
    return [r.event.payment_id for r in page.events if isinstance(r.event, PaymentExpired)], (
        page.cursor
    )


async def test_an_event_of_a_transaction_still_open_holds_later_ones_back(log: EventLog) -> None:
    async with log.transaction() as tx:
        early = await tx.append("payment-1", [expired(1)])  # position taken, not committed
        later = await log.append("payment-2", [expired(2), expired(3)])
        assert later.first_position > early.first_position
        seen, cursor = await tail(log, START)
        assert seen == []  # held back behind the open transaction, not skipped
        assert await log.held_back(cursor)
        assert await log.head() == START
    seen, cursor = await tail(log, cursor)
    assert seen == [1, 2, 3]
    assert not await log.held_back(cursor)
    assert await log.head() == cursor


async def test_events_behind_a_rolled_back_transaction_are_read(log: EventLog) -> None:
    class Abandoned(Exception):
        pass

    later: list[AppendResult] = []

    async def abandon() -> None:
        async with log.transaction() as tx:
            await tx.append("payment-1", [expired(1)])
            later.append(await log.append("payment-2", [expired(2)]))
            assert (await tail(log, START))[0] == []
            raise Abandoned

    with pytest.raises(Abandoned):
        await abandon()
    seen, cursor = await tail(log, START)
    assert seen == [2]
    assert cursor.position == later[0].last_position
    assert await log.read_stream("payment-1") == []


async def test_writers_with_slow_transactions_and_a_tailing_reader(backend: Backend) -> None:
    # Writers on two clients of the log (two stores, two pools on PostgreSQL) take positions
    # in transactions that dawdle before their commit, among plain appends, while a reader on
    # a third client tails the log: it must read every event once.
    rng = random.Random(7)
    expected: set[int] = set()
    counter = iter(range(1, 1_000_000))
    done = anyio.Event()
    collected: list[int] = []

    async def writer(log: EventLog, n: int) -> None:
        for _ in range(n):
            payment_id = next(counter)
            expected.add(payment_id)
            if rng.random() < 0.3:
                async with log.transaction() as tx:
                    await tx.append(f"payment-{payment_id}", [expired(payment_id)])
                    await anyio.sleep(rng.random() / 20)
            else:
                await log.append(f"payment-{payment_id}", [expired(payment_id)])

    async def reader() -> None:
        cursor = START
        async with backend.open() as log:
            while True:
                finished = done.is_set()
                seen, cursor = await tail(log, cursor)
                collected.extend(seen)
                if finished and not seen and not await log.held_back(cursor):
                    return
                await anyio.sleep(0.001)

    async with backend.open() as writer_a, backend.open() as writer_b:
        async with anyio.create_task_group() as outer:
            outer.start_soon(reader)
            async with anyio.create_task_group() as writers:
                for log in (writer_a, writer_a, writer_b, writer_b, writer_b):
                    writers.start_soon(writer, log, 40)
            done.set()
        in_log = [r.event_id async for r in writer_a.read_all()]
    assert len(collected) == len(set(collected)), "an event was read twice"
    assert set(collected) == expected, "an event was skipped"
    assert len(in_log) == 200


async def test_an_earlier_position_committing_late_is_not_skipped(
    store: EventStore, dsn: str
) -> None:
    slow = await asyncpg.connect(dsn)
    try:
        tx = slow.transaction()
        await tx.start()
        early = await insert(slow, "payment-1", 1)  # position taken, not committed
        later = await store.append("payment-2", [expired(2), expired(3)])
        assert later.first_position > early
        # A reader ordering by position alone would now see 2 and 3 and move past `early`:
        naive = await store._pool.fetchval("SELECT max(global_position) FROM i3lani.events")
        assert naive == later.last_position

        seen, cursor = await tail(store, START)
        assert seen == []  # held back behind the open transaction, not skipped
        assert await store.held_back(cursor)
        await tx.commit()
        seen, cursor = await tail(store, cursor)
        assert seen == [1, 2, 3]
        assert not await store.held_back(cursor)
    finally:
        await slow.close()


async def test_a_transaction_that_began_first_but_wrote_last_is_read_first(
    store: EventStore, dsn: str
) -> None:
    slow = await asyncpg.connect(dsn)
    try:
        tx = slow.transaction()
        await tx.start()
        await slow.fetchval("SELECT pg_current_xact_id()")  # takes a transaction id now
        first = await store.append("payment-2", [expired(2)])
        seen, cursor = await tail(store, START)
        assert seen == []  # the older transaction may still write: wait for it
        late = await insert(slow, "payment-1", 1)
        assert late > first.last_position
        await tx.commit()
        seen, cursor = await tail(store, cursor)
        assert seen == [1, 2]  # reading order is (transaction id, position)
    finally:
        await slow.close()
