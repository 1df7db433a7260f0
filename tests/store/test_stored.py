"""Rows as stored (``read_stored``), on both logs: reading order, the gap-free horizon, nothing
decoded or skipped; and :class:`StoredDecoder`, which keeps the rows that do not decode apart."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from events import DEFAULT_REGISTRY, EventMetadata, PaymentExpired
from store import START
from store.port import EventLog
from store.sealing import hashed, next_seals, verify_seals
from store.stored import StoredDecoder
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
