"""Appending: expected versions, validation first, idempotent retries, group commit.

Contract tests (taking ``log``) run on PostgreSQL and in memory; the PostgreSQL-only ones
look at the stored jsonb with SQL, or race two stores (two processes) on one database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import anyio
import asyncpg
import msgspec
import pytest

from events import EventMetadata, PaymentCreated, PaymentExpired, RewardEarned
from events.errors import ConcurrencyConflict, EventIdReused, InvalidEvent
from store import ANY, NO_STREAM, STREAM_EXISTS, EventStore, Expected, NewEvent, derived_id
from store.port import EventLog
from tests.store.contract import Backend, count

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def reward(user_id: int = 1, amount: int = 1_000) -> RewardEarned:
    return RewardEarned(
        reward_id=uuid.uuid4(),
        user_id=user_id,
        amount_nanotons=amount,
        reason="referral",
        source="user-99",
        earned_at=NOW,
    )


def expired(payment_id: int = 1) -> PaymentExpired:
    return PaymentExpired(payment_id=payment_id, expired_at=NOW)


async def test_append_returns_where_the_events_landed(log: EventLog) -> None:
    first = await log.append("user-1", [reward()], expected_version=NO_STREAM)
    assert (first.first_version, first.last_version, first.duplicate) == (1, 1, False)
    batch = await log.append("user-1", [reward(), reward(), reward()], expected_version=1)
    assert (batch.first_version, batch.last_version) == (2, 4)
    assert batch.last_position - batch.first_position == 2
    assert batch.first_position > first.first_position
    assert await log.stream_version("user-1") == 4
    assert await log.stream_version("user-2") == 0


async def test_envelope_is_stored_with_metadata(log: EventLog) -> None:
    correlation = uuid.uuid4()
    event_id = uuid.uuid4()
    meta = EventMetadata(correlation_id=correlation, caused_by="user:42")
    await log.append("payment-7", [NewEvent(event=expired(7), event_id=event_id)], metadata=meta)
    [recorded] = await log.read_stream("payment-7")
    assert recorded.event_id == event_id
    assert recorded.stream == "payment-7"
    assert recorded.category == "payment"
    assert recorded.version == 1
    assert recorded.type == "PaymentExpired"
    assert recorded.schema_version == 1
    assert recorded.event == expired(7)
    assert recorded.metadata.correlation_id == correlation
    assert recorded.metadata.caused_by == "user:42"
    assert recorded.metadata.node == "test-node"  # filled in from the store
    assert recorded.recorded_at.tzinfo is not None


async def test_auditors_can_query_payloads_with_sql(
    store: EventStore, raw: asyncpg.Connection
) -> None:
    # PostgreSQL only: the payload and metadata are json, which SQL reads by key.
    meta = EventMetadata(caused_by="user:42")
    await store.append("payment-7", [expired(7)], metadata=meta)
    row = await raw.fetchrow(
        "SELECT payload->>'payment_id' AS pid, category, metadata->>'caused_by' AS who "
        "FROM i3lani.events"
    )
    assert row is not None
    assert (row["pid"], row["category"], row["who"]) == ("7", "payment", "user:42")


@pytest.mark.parametrize(
    ("existing", "expected", "ok"),
    [
        (0, ANY, True),
        (2, ANY, True),
        (0, NO_STREAM, True),
        (2, NO_STREAM, False),
        (0, STREAM_EXISTS, False),
        (2, STREAM_EXISTS, True),
        (0, 0, True),
        (2, 2, True),
        (2, 1, False),
        (2, 3, False),
        (0, 1, False),
    ],
)
async def test_expected_version_matrix(
    log: EventLog, existing: int, expected: Expected, ok: bool
) -> None:
    if existing:
        await log.append("user-5", [reward(5) for _ in range(existing)])
    before = await count(log)
    if ok:
        result = await log.append("user-5", [reward(5)], expected_version=expected)
        assert result.last_version == existing + 1
        assert await count(log) == before + 1
    else:
        with pytest.raises(ConcurrencyConflict) as caught:
            await log.append("user-5", [reward(5)], expected_version=expected)
        assert caught.value.stream == "user-5"
        assert caught.value.expected == expected
        assert caught.value.actual == existing
        message = str(caught.value)
        assert "user-5" in message
        assert f"actual version {existing}" in message
        assert await count(log) == before


async def test_batched_append_with_conflict_writes_none_of_the_batch(
    log: EventLog,
) -> None:
    await log.append("user-3", [reward(3)])
    with pytest.raises(ConcurrencyConflict):
        await log.append("user-3", [reward(3), reward(3)], expected_version=NO_STREAM)
    assert await count(log) == 1


async def test_invalid_event_is_rejected_before_anything_is_written(
    log: EventLog,
) -> None:
    good = reward()
    bad = reward(amount=0)
    with pytest.raises(InvalidEvent, match=r"RewardEarned.*amount_nanotons"):
        await log.append("user-1", [good, bad])
    assert await count(log) == 0


async def test_bad_arguments_are_refused_with_a_clear_error(log: EventLog) -> None:
    with pytest.raises(ValueError, match="at least one event"):
        await log.append("user-1", [])
    with pytest.raises(ValueError, match="stream name"):
        await log.append("", [reward()])
    with pytest.raises(ValueError, match="expected_version"):
        await log.append("user-1", [reward()], expected_version=-3)
    same = NewEvent(event=reward())
    with pytest.raises(ValueError, match="appears twice"):
        await log.append("user-1", [same, same])


async def test_retrying_an_append_returns_the_original_result_and_writes_nothing(
    log: EventLog,
) -> None:
    # A retry after a lost connection: the first attempt committed, the caller never heard.
    cause = uuid.uuid4()
    events = [
        NewEvent(event=reward(8), event_id=derived_id(cause, "a")),
        NewEvent(event=reward(8), event_id=derived_id(cause, "b")),
    ]
    first = await log.append("user-8", events, expected_version=NO_STREAM)
    again = await log.append("user-8", events, expected_version=NO_STREAM)
    assert again.duplicate
    assert (again.first_position, again.last_position) == (
        first.first_position,
        first.last_position,
    )
    assert (again.first_version, again.last_version) == (1, 2)
    # With ANY (no version check) the ids alone make it a retry.
    third = await log.append("user-8", events)
    assert third.duplicate
    assert third.first_position == first.first_position
    assert await count(log) == 2


async def test_single_event_retry_with_exact_version_is_idempotent(
    log: EventLog,
) -> None:
    await log.append("payment-1", [expired()])
    item = NewEvent(event=expired())
    first = await log.append("payment-1", [item], expected_version=1)
    retry = await log.append("payment-1", [item], expected_version=1)
    assert retry.duplicate
    assert retry.first_position == first.first_position
    assert await count(log) == 2


async def test_a_retry_of_an_event_an_earlier_release_stored_with_its_tag_is_a_retry(
    log: EventLog, backend: Backend
) -> None:
    # Earlier releases stored the tag inside the payload too ({"type": "PaymentExpired", ...});
    # this one stores it in the type column only. The same event, retried under its id by
    # this release (a deploy's overlap), is the same event.
    event_id = uuid.uuid4()
    event = expired(7)
    tagged = msgspec.json.encode(event)
    assert tagged.startswith(b'{"type":"PaymentExpired",')
    await backend.insert_raw(log, "payment-7", 1, "PaymentExpired", 1, tagged, event_id=event_id)
    retry = await log.append("payment-7", [NewEvent(event=event, event_id=event_id)])
    assert retry.duplicate
    [stored] = await log.read_stream("payment-7")
    assert stored.event == event
    assert await count(log) == 1


async def test_reusing_an_event_id_for_other_content_is_an_error(
    log: EventLog,
) -> None:
    event_id = uuid.uuid4()
    await log.append("payment-1", [NewEvent(event=expired(1), event_id=event_id)])
    with pytest.raises(EventIdReused, match=str(event_id)):
        await log.append("payment-1", [NewEvent(event=expired(2), event_id=event_id)])
    with pytest.raises(EventIdReused, match="payment-1"):
        await log.append("payment-2", [NewEvent(event=expired(1), event_id=event_id)])
    assert await count(log) == 1


async def test_a_partly_stored_batch_is_not_mistaken_for_a_retry(
    log: EventLog,
) -> None:
    stored = NewEvent(event=expired(1))
    await log.append("payment-1", [stored])
    with pytest.raises(EventIdReused, match="only 1 of the 2"):
        await log.append("payment-1", [stored, NewEvent(event=expired(1))])
    assert await count(log) == 1


async def test_concurrent_writers_to_one_stream_conflict_cleanly(log: EventLog) -> None:
    await log.append("payment-9", [expired(9)])
    outcomes: list[str] = []

    async def writer() -> None:
        try:
            await log.append("payment-9", [expired(9)], expected_version=1)
            outcomes.append("ok")
        except ConcurrencyConflict as exc:
            outcomes.append(f"conflict at {exc.actual}")

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(writer)
    assert sorted(outcomes) == ["conflict at 2"] * 7 + ["ok"]
    assert await log.stream_version("payment-9") == 2


async def test_concurrent_any_appends_all_land_with_contiguous_versions(backend: Backend) -> None:
    # Two clients (two processes, say, on PostgreSQL) racing on one stream with ANY: nobody
    # loses.
    async with backend.open() as a, backend.open() as b:

        async def writer(store: EventLog) -> None:
            for _ in range(40):
                await store.append("user-77", [reward(77)])

        async with anyio.create_task_group() as tg:
            for s in (a, a, a, b, b, b):
                tg.start_soon(writer, s)
        events = await a.read_stream("user-77")
    assert [e.version for e in events] == list(range(1, 241))


async def test_group_commit_keeps_every_writers_checks(log: EventLog) -> None:
    # Many tasks appending at once are combined into shared statements; each append still
    # gets its own version check and result.
    results: dict[int, list[int]] = {}

    async def writer(user: int) -> None:
        versions = []
        for version in range(30):
            result = await log.append(f"user-{user}", [reward(user)], expected_version=version)
            versions.append(result.last_version)
        results[user] = versions

    async with anyio.create_task_group() as tg:
        for user in range(1, 9):
            tg.start_soon(writer, user)
    assert results == {user: list(range(1, 31)) for user in range(1, 9)}
    positions = [e.position async for e in log.read_all()]
    assert len(positions) == len(set(positions)) == 240


async def test_group_commit_reports_one_conflict_without_failing_the_others(
    log: EventLog,
) -> None:
    for user in range(1, 9):
        await log.append(f"user-{user}", [reward(user)])
    outcomes: dict[int, str] = {}

    async def writer(user: int) -> None:
        # user-4 states a wrong version; the rest are right.
        expected = 5 if user == 4 else 1
        try:
            await log.append(f"user-{user}", [reward(user)], expected_version=expected)
            outcomes[user] = "ok"
        except ConcurrencyConflict:
            outcomes[user] = "conflict"

    async with anyio.create_task_group() as tg:
        for user in range(1, 9):
            tg.start_soon(writer, user)
    assert outcomes == {user: ("conflict" if user == 4 else "ok") for user in range(1, 9)}


async def test_transaction_commits_appends_together_or_not_at_all(
    log: EventLog,
) -> None:
    async with log.transaction() as tx:
        await tx.append("payment-1", [expired(1)], expected_version=NO_STREAM)
        await tx.append("payment-2", [expired(2)], expected_version=NO_STREAM)
    assert await count(log) == 2

    class Boom(Exception):
        pass

    async def fail_after_append() -> None:
        async with log.transaction() as tx:
            await tx.append("payment-3", [expired(3)])
            raise Boom

    async def conflict_after_append() -> None:
        async with log.transaction() as tx:
            await tx.append("payment-4", [expired(4)])
            await tx.append("payment-1", [expired(1)], expected_version=NO_STREAM)

    with pytest.raises(Boom):
        await fail_after_append()
    assert await count(log) == 2
    with pytest.raises(ConcurrencyConflict):
        await conflict_after_append()
    assert await count(log) == 2


async def test_a_payment_created_event_round_trips_exactly(log: EventLog) -> None:
    event = PaymentCreated(
        payment_id=12,
        user_id=4242,
        plan="pro",
        amount_nanotons=5_440_000_001,
        wallet="EQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla9nE",
        memo="i3lani_12",
        created_at=NOW,
        expires_at=NOW,
    )
    await log.append("payment-12", [event])
    [recorded] = await log.read_stream("payment-12")
    assert recorded.event == event
    assert isinstance(recorded.event, PaymentCreated)
    assert recorded.event.amount_nanotons == 5_440_000_001  # integer nanotons, no float
