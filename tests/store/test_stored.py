"""Rows as stored (``read_stored``), on both logs: reading order, the gap-free horizon, nothing
decoded or skipped; and :class:`StoredDecoder`, which keeps the rows that do not decode apart."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

import msgspec

from events import DEFAULT_REGISTRY, Event, EventMetadata, EventRegistry, PaymentExpired
from store import START
from store.port import EventLog
from store.sealing import hashed, next_seals, verify_seals
from store.stored import StoredDecoder, StoredEvent
from tests.store.contract import Backend

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def expired(payment_id: int) -> PaymentExpired:
    return PaymentExpired(payment_id=payment_id, expired_at=NOW)


async def insert_raw(
    backend: Backend, log: EventLog, stream: str, version: int, tag: str, payload: Any
) -> int:
    return await backend.insert_raw(log, stream, version, tag, 1, msgspec.json.encode(payload))


async def test_rows_come_back_as_stored_in_reading_order(log: EventLog, backend: Backend) -> None:
    first = await log.append("payment-1", [expired(1)])
    unknown = await insert_raw(backend, log, "payment-1", 2, "PaymentRefunded", {"payment_id": 1})
    broken = await insert_raw(backend, log, "payment-2", 1, "PaymentExpired", {"payment_id": "x"})
    meta = EventMetadata(caused_by="user:7")
    last = await log.append("payment-3", [expired(3)], metadata=meta)
    page = await log.read_stored(START, limit=10)
    rows = page.rows
    assert [r.position for r in rows] == [first.last_position, unknown, broken, last.last_position]
    assert [r.type for r in rows] == [
        "PaymentExpired",
        "PaymentRefunded",
        "PaymentExpired",
        "PaymentExpired",
    ]
    assert page.cursor == rows[-1].cursor
    # The payload as stored: the event's fields, without its tag (the type has its own column).
    payload = msgspec.to_builtins(expired(1))
    assert payload.pop("type") == "PaymentExpired"
    assert msgspec.json.decode(rows[0].payload) == payload
    assert msgspec.json.decode(rows[-1].metadata)["caused_by"] == "user:7"
    assert rows[1].metadata == b"{}"  # empty metadata is stored as {}
    # Paged: the cursor goes on after the last row read.
    second = await log.read_stored(rows[1].cursor, limit=2)
    assert [r.position for r in second.rows] == [broken, last.last_position]
    assert (await log.read_stored(page.cursor)).rows == []
    assert (await log.read_stored(page.cursor)).cursor == page.cursor
    # The decoder keeps what does not decode apart, and says why.
    events, rejected = StoredDecoder(DEFAULT_REGISTRY).decode(rows)
    assert [e.position for e in events] == [first.last_position, last.last_position]
    assert events[1].metadata.caused_by == "user:7"
    assert [(r.row.position, r.unknown_type) for r in rejected] == [
        (unknown, True),
        (broken, False),
    ]
    assert "PaymentRefunded" in rejected[0].reason
    assert "payment_id" in rejected[1].reason


async def test_rows_behind_an_open_transaction_are_held_back(log: EventLog) -> None:
    async with log.transaction() as tx:
        await tx.append("payment-1", [expired(1)])
        await log.append("payment-2", [expired(2)])
        assert (await log.read_stored(START)).rows == []  # not skipped: held back
    page = await log.read_stored(START)
    assert [msgspec.json.decode(r.payload)["payment_id"] for r in page.rows] == [1, 2]


async def test_seals_of_either_log_verify_against_it(log: EventLog, backend: Backend) -> None:
    for n in range(1, 8):
        await log.append(f"payment-{n}", [expired(n)])
    await insert_raw(backend, log, "payment-1", 2, "PaymentRefunded", {"payment_id": 1})
    seals, more = await next_seals(log, None, sealed_at=NOW, page_size=3)
    assert not more
    [seal] = seals
    assert (seal.count, seal.total) == (8, 8)
    await log.append("seal-log", seals, expected_version=0)
    report = await verify_seals(log, page_size=2)
    assert report.clean, report.findings
    assert (report.seals, report.events, report.unsealed) == (1, 8, 1)


async def test_hashed_rows_are_the_stored_rows_hashed_as_seals_define(
    log: EventLog, backend: Backend
) -> None:
    # What PostgreSQL hashes (read_hashed) must be byte for byte what the verifier hashes.
    meta = EventMetadata(caused_by="user:7", node="nœud-ü", correlation_id=None)
    await log.append("payment-1", [expired(1)], metadata=meta)
    await log.append("channel-ünïcödé_€", [expired(2)])
    await insert_raw(backend, log, "payment-1", 2, "PaymentRefunded", {"note": 'ß ✓ "q"'})
    await insert_raw(backend, log, "payment-9", 1, "PaymentExpired", {"payment_id": "x"})
    stored = (await log.read_stored(START, limit=10)).rows
    page = await log.read_hashed(START, limit=10)
    assert len(page.rows) == len(stored) == 4
    assert page.rows == [hashed(row) for row in stored]
    assert [len(row.hash) for row in page.rows] == [32] * 4
    assert page.cursor == stored[-1].cursor
    assert [r.position for r in (await log.read_hashed(stored[1].cursor, limit=1)).rows] == [
        stored[2].position
    ]
    assert (await log.read_hashed(page.cursor)).rows == []
    assert (await log.read_hashed(page.cursor)).cursor == page.cursor


def test_the_decoder_shares_repeated_metadata_and_stays_right_past_its_memory() -> None:
    """Metadata bytes seen before decode to the value decoded then (frozen, so shareable);
    past the decoder's memory of distinct values every row still gets its own metadata."""
    decoder = StoredDecoder(DEFAULT_REGISTRY)
    payload = msgspec.json.encode(expired(1))
    metas = [EventMetadata(caused_by=f"user:{n % 1500}", node="n1") for n in range(3000)]
    rows = [
        (
            n + 1,
            1,
            None,
            "payment-1",
            n + 1,
            "PaymentExpired",
            1,
            payload,
            msgspec.json.encode(m),
            NOW,
        )
        for n, m in enumerate(metas)
    ]
    events, rejected = decoder.decode(rows)
    assert rejected == []
    assert [e.metadata for e in events] == metas
    again, _ = decoder.decode(rows[:2])
    assert again[0].metadata is events[0].metadata or again[0].metadata == metas[0]
    assert [e.metadata for e in again] == metas[:2]


class Renamed(Event, frozen=True, tag="Renamed"):
    """v1 named the field ``n``."""

    schema_version: ClassVar[int] = 2
    number: int


def test_a_page_of_irregular_rows_keeps_its_order_and_decodes_every_regular_row() -> None:
    # The tight loop stops at each row it cannot take (an upcast, an unknown type, a payload
    # or metadata that does not decode), the slow path takes that one row, and the loop goes
    # on: every row comes out once, as an event or a rejection, in the page's order.
    registry = EventRegistry([PaymentExpired, Renamed])

    @registry.upcaster("Renamed", from_version=1)
    def rename(raw: dict[str, Any]) -> dict[str, Any]:
        return {"number": raw["n"]}

    good = msgspec.json.encode(expired(1))
    meta = msgspec.json.encode(EventMetadata(caused_by="user:1"))
    kinds = [
        ("PaymentExpired", 1, good, meta),  # 1 regular
        ("Vanished", 1, b"{}", None),  # 2 unknown type
        ("PaymentExpired", 1, good, None),  # 3 regular
        ("Renamed", 1, b'{"n": 7}', meta),  # 4 upcast from v1
        ("Renamed", 2, b'{"number": 8}', b"{}"),  # 5 regular, empty metadata
        ("PaymentExpired", 1, b'{"payment_id": "x"}', None),  # 6 payload does not decode
        ("PaymentExpired", 1, good, b'{"generation": "x"}'),  # 7 metadata does not decode
        ("Renamed", 1, b'{"n": 9}', None),  # 8 upcast again, last row
    ]
    rows = [
        (n, 1, None, "s-1", n, tag, schema, payload, meta, NOW)
        for n, (tag, schema, payload, meta) in enumerate(kinds, start=1)
    ]
    decoder = StoredDecoder(registry)
    for page in (rows, iter(rows), [as_stored(r) for r in rows]):
        events, rejected = decoder.decode(page)
        assert [e.position for e in events] == [1, 3, 4, 5, 8]
        assert [e.event for e in events] == [
            expired(1),
            expired(1),
            Renamed(number=7),
            Renamed(number=8),
            Renamed(number=9),
        ]
        assert [e.metadata.caused_by for e in events] == ["user:1", None, "user:1", None, None]
        assert [r.row.position for r in rejected] == [2, 6, 7]
        assert rejected[0].unknown_type
        assert "metadata does not decode" in rejected[2].reason


def as_stored(fields: tuple[Any, ...]) -> StoredEvent:
    """A record as :class:`StoredEvent` (what ``read_stored`` returns), metadata ``{}`` when
    empty."""
    values = list(fields)
    values[8] = values[8] if values[8] is not None else b"{}"
    return StoredEvent(*values)
