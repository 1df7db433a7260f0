"""Gap-free reading: a reader tailing the log never skips an event that commits late."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import anyio
import asyncpg

from events import DEFAULT_REGISTRY, PaymentExpired
from store import START, Cursor, EventStore

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


async def tail(store: EventStore, cursor: Cursor) -> tuple[list[int], Cursor]:
    page = await store.read_page(cursor, limit=1000)
    return [r.event.payment_id for r in page.events if isinstance(r.event, PaymentExpired)], (
        page.cursor
    )


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


async def test_concurrent_writers_with_slow_transactions_and_a_tailing_reader(
    dsn: str,
) -> None:
    rng = random.Random(7)
    expected: set[int] = set()
    counter = iter(range(1, 1_000_000))
    done = anyio.Event()
    collected: list[int] = []

    async with EventStore.open(dsn) as writer_a, EventStore.open(dsn) as writer_b:

        async def writer(store: EventStore, n: int) -> None:
            for _ in range(n):
                payment_id = next(counter)
                expected.add(payment_id)
                if rng.random() < 0.3:
                    # Take a position, then dawdle before committing.
                    async with store.transaction() as tx:
                        await tx.append(f"payment-{payment_id}", [expired(payment_id)])
                        await tx.connection.execute("SELECT pg_sleep($1)", rng.random() / 20)
                else:
                    await store.append(f"payment-{payment_id}", [expired(payment_id)])

        async def reader() -> None:
            cursor = START
            async with EventStore.open(dsn, group_commit=False) as store:
                while True:
                    finished = done.is_set()
                    seen, cursor = await tail(store, cursor)
                    collected.extend(seen)
                    if finished and not seen and not await store.held_back(cursor):
                        return
                    await anyio.sleep(0.001)

        async with anyio.create_task_group() as outer:
            outer.start_soon(reader)
            async with anyio.create_task_group() as writers:
                for store in (writer_a, writer_a, writer_b, writer_b, writer_b):
                    writers.start_soon(writer, store, 40)
            done.set()

        in_log = await writer_a._pool.fetch(
            "SELECT global_position FROM i3lani.events ORDER BY transaction_id, global_position"
        )
    assert len(collected) == len(set(collected)), "an event was read twice"
    assert set(collected) == expected, "an event was skipped"
    assert len(in_log) == 200
