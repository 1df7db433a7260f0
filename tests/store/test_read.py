"""Reading: streams, the whole log, categories, unknown types, upcasting, snapshots.

Every test here is a contract test: it runs on PostgreSQL and in memory (rows written the way
another release would have go in through ``backend.insert_raw``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

import msgspec
import pytest

from events import BUILTIN_EVENTS, Event, EventRegistry, PaymentExpired, RewardEarned
from events.errors import UnknownEventType
from store import START, NewEvent
from store.port import EventLog
from tests.store.contract import Backend

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def expired(payment_id: int) -> PaymentExpired:
    return PaymentExpired(payment_id=payment_id, expired_at=NOW)


async def insert_raw(
    backend: Backend,
    log: EventLog,
    stream: str,
    version: int,
    tag: str,
    schema: int,
    payload: Any,
    *,
    event_id: uuid.UUID | None = None,
) -> int:
    """Write a row the way an older or newer release would have, bypassing the log."""
    return await backend.insert_raw(
        log, stream, version, tag, schema, msgspec.json.encode(payload), event_id=event_id
    )


async def test_read_stream_pages_by_version(log: EventLog) -> None:
    for n in range(1, 6):
        await log.append("payment-1", [expired(n)])
    await log.append("payment-2", [expired(99)])
    everything = await log.read_stream("payment-1")
    assert [r.version for r in everything] == [1, 2, 3, 4, 5]
    assert [r.event for r in everything] == [expired(n) for n in range(1, 6)]
    page = await log.read_stream("payment-1", after_version=2, limit=2)
    assert [r.version for r in page] == [3, 4]
    assert await log.read_stream("payment-404") == []


async def test_read_all_from_start_after_position_and_by_category(log: EventLog) -> None:
    await log.append("payment-1", [expired(1)])
    await log.append("user-1", [expired(2)])
    third = await log.append("payment-2", [expired(3)])
    await log.append("paymentx-1", [expired(4)])  # another category, same prefix
    everything = [r async for r in log.read_all(batch_size=2)]
    assert [r.event for r in everything] == [expired(n) for n in (1, 2, 3, 4)]
    after_first = [r.event async for r in log.read_all(after=everything[0].position)]
    assert after_first == [expired(n) for n in (2, 3, 4)]
    payments = [r async for r in log.read_all(category="payment")]
    assert [r.stream for r in payments] == ["payment-1", "payment-2"]
    assert [r.event async for r in log.read_all(after=third.last_position)] == [expired(4)]
    assert len([r async for r in log.read_all(limit=3)]) == 3
    with pytest.raises(ValueError, match="no event at global position 999"):
        _ = [r async for r in log.read_all(after=999)]


async def test_a_long_read_comes_page_by_page_in_order_and_may_stop_anywhere(
    log: EventLog,
) -> None:
    """The PostgreSQL log reads a page ahead of its reader: whatever the page size, every
    event comes once and in order, a reader that stops early leaves the log as it was, and
    readers side by side each get the whole log."""
    for first in range(1, 41, 4):
        await log.append(f"payment-{first}", [expired(n) for n in range(first, first + 4)])
    wanted = [expired(n) for n in range(1, 41)]
    for size in (1, 3, 4, 39, 40, 41):
        batches = [batch async for batch in log.read_batches(batch_size=size)]
        assert [r.event for batch in batches for r in batch] == wanted
        assert all(len(batch) <= size for batch in batches)
    stopped = []
    async for recorded in log.read_all(batch_size=5):
        stopped.append(recorded.event)
        if len(stopped) == 7:
            break
    assert stopped == wanted[:7]
    payments = [r.event async for r in log.read_all(category="payment", batch_size=6)]
    assert payments == wanted
    side_by_side = [[r.event async for r in log.read_all(batch_size=3)] for _ in range(3)]
    assert side_by_side == [wanted] * 3


async def test_an_error_in_a_later_page_reaches_the_reader_after_the_earlier_pages(
    log: EventLog, backend: Backend
) -> None:
    await log.append("payment-1", [expired(n) for n in range(1, 4)])
    position = await insert_raw(backend, log, "payment-1", 4, "PaymentRefunded", 1, {"x": 1})
    read: list[Event] = []

    async def read_until_it_raises() -> None:
        async for recorded in log.read_all(batch_size=2):
            read.append(recorded.event)

    with pytest.raises(UnknownEventType) as caught:
        await read_until_it_raises()
    assert read == [expired(1), expired(2)]  # the page before the bad one, whole
    assert caught.value.position == position
    assert [r.event async for r in log.read_all(batch_size=2, skip_unknown=True)] == [
        expired(n) for n in range(1, 4)
    ]


async def test_unknown_type_raises_a_clear_error_naming_tag_and_position(
    log: EventLog, backend: Backend
) -> None:
    await log.append("payment-1", [expired(1)])
    position = await insert_raw(
        backend, log, "payment-1", 2, "PaymentRefunded", 1, {"payment_id": 1}
    )
    await log.append("payment-1", [expired(3)])
    with pytest.raises(UnknownEventType) as caught:
        _ = [r async for r in log.read_all()]
    assert caught.value.tag == "PaymentRefunded"
    assert caught.value.position == position
    assert f"'PaymentRefunded' at global position {position}" in str(caught.value)


async def test_unknown_types_can_be_skipped_on_request(log: EventLog, backend: Backend) -> None:
    await log.append("payment-1", [expired(1)])
    await insert_raw(backend, log, "payment-1", 2, "PaymentRefunded", 1, {"payment_id": 1})
    await insert_raw(backend, log, "payment-1", 3, "PaymentRefunded", 1, {"payment_id": 1})
    await log.append("payment-1", [expired(4)])
    # A page made only of unknown events must not end the read early.
    read = [r.event async for r in log.read_all(batch_size=1, skip_unknown=True)]
    assert read == [expired(1), expired(4)]
    in_stream = await log.read_stream("payment-1", skip_unknown=True)
    assert [r.version for r in in_stream] == [1, 4]


async def test_read_event_finds_one_event_by_its_id(log: EventLog, backend: Backend) -> None:
    await log.append("payment-1", [expired(1)])
    wanted = uuid.uuid4()
    second = await log.append("payment-1", [NewEvent(event=expired(2), event_id=wanted)])
    found = await log.read_event(wanted)
    assert found is not None
    assert (found.event, found.stream, found.version) == (expired(2), "payment-1", 2)
    assert found.position == second.last_position
    assert await log.read_event(uuid.uuid4()) is None
    unknown = uuid.uuid4()
    await insert_raw(
        backend, log, "payment-1", 3, "PaymentRefunded", 1, {"payment_id": 1}, event_id=unknown
    )
    with pytest.raises(UnknownEventType):
        await log.read_event(unknown)
    assert await log.read_event(unknown, skip_unknown=True) is None


class RewardEarnedV2(Event, frozen=True, tag="RewardEarned"):
    """A later RewardEarned: `source` split into `source_kind` and `source_id`."""

    schema_version: ClassVar[int] = 2
    reward_id: uuid.UUID
    user_id: int
    amount_nanotons: int
    reason: str
    source_kind: str
    source_id: str
    earned_at: datetime


async def test_a_v1_payload_written_as_raw_json_is_upcast_on_read(backend: Backend) -> None:
    reward_id = uuid.uuid4()
    # Exactly what release 1 stored, typed in by hand.
    release_1 = (
        f'{{"reward_id": "{reward_id}", "user_id": 5, "amount_nanotons": 250000000, '
        '"reason": "referral", "source": "user:77", "earned_at": "2026-01-02T03:04:05Z"}'
    )
    registry = EventRegistry([c for c in BUILTIN_EVENTS if c is not RewardEarned])
    registry.register(RewardEarnedV2)

    @registry.upcaster("RewardEarned", from_version=1)
    def split_source(payload: dict[str, Any]) -> dict[str, Any]:
        kind, _, ident = payload.pop("source").partition(":")
        return {**payload, "source_kind": kind, "source_id": ident}

    async with backend.open(registry) as store:
        await backend.insert_raw(store, "user-5", 1, "RewardEarned", 1, release_1.encode())
        [recorded] = await store.read_stream("user-5")
        assert recorded.schema_version == 1
        assert recorded.event == RewardEarnedV2(
            reward_id=reward_id,
            user_id=5,
            amount_nanotons=250_000_000,
            reason="referral",
            source_kind="user",
            source_id="77",
            earned_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        )
        # New appends are stored at the current version.
        await store.append("user-5", [msgspec.structs.replace(recorded.event)])
        assert [r.schema_version for r in await store.read_stream("user-5")] == [1, 2]


class Tally(msgspec.Struct, frozen=True):
    count: int
    last: int


async def test_snapshots_save_and_load(log: EventLog) -> None:
    assert await log.load_snapshot("payment-1", Tally) is None
    await log.save_snapshot("payment-1", 10, Tally(count=10, last=10))
    assert await log.load_snapshot("payment-1", Tally) == (10, Tally(count=10, last=10))
    await log.save_snapshot("payment-1", 20, Tally(count=20, last=20))
    await log.save_snapshot("payment-1", 15, Tally(count=15, last=15))  # older: ignored
    assert await log.load_snapshot("payment-1", Tally) == (20, Tally(count=20, last=20))


async def test_a_snapshot_of_another_shape_is_ignored(log: EventLog) -> None:
    class Other(msgspec.Struct, frozen=True):
        text: str

    await log.save_snapshot("payment-1", 3, Other(text="x"))
    assert await log.load_snapshot("payment-1", Tally) is None


async def test_read_page_reports_the_cursor_past_what_it_read(log: EventLog) -> None:
    await log.append("payment-1", [expired(1), expired(2)])
    page = await log.read_page(START, limit=1)
    assert page.fetched == 1
    assert page.cursor == page.events[0].cursor
    rest = await log.read_page(page.cursor, limit=10)
    assert [r.event for r in rest.events] == [expired(2)]
    assert (await log.read_page(rest.cursor)).events == []
