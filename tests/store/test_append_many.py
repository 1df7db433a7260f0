"""Transaction.append_many: many streams in one statement, with every check of append.

Every test here is a contract test: it runs on PostgreSQL and in memory."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from events import PaymentExpired
from events.errors import ConcurrencyConflict, EventIdReused, StaleGeneration
from store import ANY, NO_STREAM, Append, Fence, NewEvent
from store.port import EventLog
from tests.store.contract import Backend, count

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def expired(payment_id: int) -> PaymentExpired:
    return PaymentExpired(payment_id=payment_id, expired_at=NOW)


async def test_many_streams_in_one_call_report_each_event(log: EventLog) -> None:
    await log.append("payment-1", [expired(1)])
    async with log.transaction() as tx:
        landed = await tx.append_many(
            [
                Append("payment-1", [expired(1), expired(1)], expected_version=1),
                Append("payment-2", [expired(2)], expected_version=NO_STREAM),
                Append("payment-3", [expired(3)]),
            ]
        )
    assert [[p.version for p in events] for events in landed] == [[2, 3], [1], [1]]
    stored = {r.event_id: r for r in await log.read_stream("payment-1")}
    for where, recorded in zip(landed[0], list(stored.values())[1:], strict=True):
        assert where.position == recorded.position
        assert where.transaction_id == recorded.transaction_id
    assert len({p.transaction_id for events in landed for p in events}) == 1


async def test_a_failed_expectation_raises_and_nothing_is_kept(
    log: EventLog,
) -> None:
    await log.append("payment-1", [expired(1)])
    with pytest.raises(ConcurrencyConflict) as caught:
        async with log.transaction() as tx:
            await tx.append_many(
                [
                    Append("payment-2", [expired(2)]),
                    Append("payment-1", [expired(1)], expected_version=NO_STREAM),
                ]
            )
    assert caught.value.stream == "payment-1"
    assert await count(log) == 1


async def test_a_stale_fence_is_refused(log: EventLog) -> None:
    with pytest.raises(StaleGeneration):
        async with log.transaction() as tx:
            await tx.append_many([Append("payment-1", [expired(1)], fence=Fence("NoLease", 1))])


async def test_a_stored_event_id_is_refused_inside_the_transaction(log: EventLog) -> None:
    event_id = uuid.uuid4()
    await log.append("payment-1", [NewEvent(event=expired(1), event_id=event_id)])
    with pytest.raises(EventIdReused):
        async with log.transaction() as tx:
            await tx.append_many(
                [Append("payment-9", [NewEvent(event=expired(9), event_id=event_id)])]
            )


async def test_one_append_per_stream(log: EventLog) -> None:
    async with log.transaction() as tx:
        with pytest.raises(ValueError, match="one append per stream"):
            await tx.append_many(
                [Append("payment-1", [expired(1)]), Append("payment-1", [expired(1)], ANY)]
            )


async def test_a_fence_of_a_replaced_generation_is_refused(log: EventLog, backend: Backend) -> None:
    old = await backend.grant(log, "Rewards")
    new = await backend.grant(log, "Rewards")
    assert new.generation == old.generation + 1
    with pytest.raises(StaleGeneration):
        async with log.transaction() as tx:
            await tx.append_many([Append("payment-1", [expired(1)], fence=old)])
    with pytest.raises(StaleGeneration):
        await log.append("payment-1", [expired(1)], fence=old)
    async with log.transaction() as tx:
        [[landed]] = await tx.append_many([Append("payment-1", [expired(1)], fence=new)])
    [recorded] = await log.read_stream("payment-1")
    assert recorded.position == landed.position
    assert (recorded.metadata.lease, recorded.metadata.generation) == ("Rewards", new.generation)
