"""Transaction.append_many: many streams in one statement, with every check of append."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from events import PaymentExpired
from events.errors import ConcurrencyConflict, EventIdReused, StaleGeneration
from store import ANY, NO_STREAM, Append, EventStore, Fence, NewEvent

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def expired(payment_id: int) -> PaymentExpired:
    return PaymentExpired(payment_id=payment_id, expired_at=NOW)


async def test_many_streams_in_one_call_report_each_event(store: EventStore) -> None:
    await store.append("payment-1", [expired(1)])
    async with store.transaction() as tx:
        landed = await tx.append_many(
            [
                Append("payment-1", [expired(1), expired(1)], expected_version=1),
                Append("payment-2", [expired(2)], expected_version=NO_STREAM),
                Append("payment-3", [expired(3)]),
            ]
        )
    assert [[p.version for p in events] for events in landed] == [[2, 3], [1], [1]]
    stored = {r.event_id: r for r in await store.read_stream("payment-1")}
    for where, recorded in zip(landed[0], list(stored.values())[1:], strict=True):
        assert where.position == recorded.position
        assert where.transaction_id == recorded.transaction_id
    assert len({p.transaction_id for events in landed for p in events}) == 1


async def test_a_failed_expectation_raises_and_nothing_is_kept(
    store: EventStore, raw: asyncpg.Connection
) -> None:
    await store.append("payment-1", [expired(1)])
    with pytest.raises(ConcurrencyConflict) as caught:
        async with store.transaction() as tx:
            await tx.append_many(
                [
                    Append("payment-2", [expired(2)]),
                    Append("payment-1", [expired(1)], expected_version=NO_STREAM),
                ]
            )
    assert caught.value.stream == "payment-1"
    assert await raw.fetchval("SELECT count(*) FROM i3lani.events") == 1


async def test_a_stale_fence_is_refused(store: EventStore) -> None:
    with pytest.raises(StaleGeneration):
        async with store.transaction() as tx:
            await tx.append_many([Append("payment-1", [expired(1)], fence=Fence("NoLease", 1))])


async def test_a_stored_event_id_is_refused_inside_the_transaction(store: EventStore) -> None:
    event_id = uuid.uuid4()
    await store.append("payment-1", [NewEvent(event=expired(1), event_id=event_id)])
    with pytest.raises(EventIdReused):
        async with store.transaction() as tx:
            await tx.append_many(
                [Append("payment-9", [NewEvent(event=expired(9), event_id=event_id)])]
            )


async def test_one_append_per_stream(store: EventStore) -> None:
    async with store.transaction() as tx:
        with pytest.raises(ValueError, match="one append per stream"):
            await tx.append_many(
                [Append("payment-1", [expired(1)]), Append("payment-1", [expired(1)], ANY)]
            )
