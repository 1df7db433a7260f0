"""Seals, pure: the canonical bytes, the chain, the digest, and how verification names the
first position where the log differs (``store/sealing.py``)."""

from __future__ import annotations

import base64
import hashlib
import struct
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from msgspec.structs import replace

from events import LogSealed
from store import Cursor
from store.sealing import (
    MAX_EVENTS_PER_SEAL,
    ZERO_HASH,
    SealBuilder,
    SealDigest,
    SealReport,
    SealVerifier,
    canonical_bytes,
    event_hash,
)
from store.stored import StoredEvent

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def row(position: int, transaction_id: int | None = None, payload: bytes = b"") -> StoredEvent:
    return StoredEvent(
        position=position,
        transaction_id=position if transaction_id is None else transaction_id,
        event_id=uuid.UUID(int=position),
        stream=f"payment-{position}",
        version=1,
        type="PaymentExpired",
        schema_version=1,
        payload=payload or f'{{"payment_id": {position}}}'.encode(),
        metadata=b"{}",
        recorded_at=NOW + timedelta(microseconds=position),
    )


def sealed(
    rows: list[StoredEvent], *, seal: int = 1, previous: LogSealed | None = None
) -> LogSealed:
    builder = SealBuilder(
        seal,
        ZERO_HASH if previous is None else bytes.fromhex(previous.hash),
        Cursor(0, 0)
        if previous is None
        else Cursor(previous.last_transaction_id, previous.last_position),
        0 if previous is None else previous.total,
    )
    builder.add(rows)
    return builder.seal(NOW)


def stored_at(position: int) -> Cursor:
    """Where a seal's own event is: these rows stand for the log but for the seal events, so
    each seal is taken as read already (a real seal event follows its range)."""
    return Cursor(0, position)


def verify(
    seals: list[tuple[LogSealed, int]], rows: list[StoredEvent], **options: object
) -> SealReport:
    verifier = SealVerifier(**options)  # type: ignore[arg-type]
    for seal, at in seals:
        verifier.add_seal(seal, stored_at(at))
    verifier.feed(rows)
    return verifier.finish(complete=True)


# -- the bytes and the hashes -------------------------------------------------------------------
def test_canonical_bytes_are_every_stored_field_length_prefixed() -> None:
    event = row(7, transaction_id=9, payload=b'{"payment_id": 7}')
    expected = (
        struct.pack(">QQ", 7, 9)
        + uuid.UUID(int=7).bytes
        + struct.pack(">QIq", 1, 1, int(NOW.timestamp()) * 1_000_000 + 7)
        + struct.pack(">IIII", len(b"payment-7"), len(b"PaymentExpired"), 17, 2)
        + b"payment-7PaymentExpired"
        + b'{"payment_id": 7}{}'
    )
    assert canonical_bytes(event) == expected
    assert event_hash(event) == hashlib.sha256(b"\x00" + expected).digest()


@pytest.mark.parametrize(
    "change",
    [
        lambda r: replace(r, position=r.position + 1),
        lambda r: replace(r, transaction_id=r.transaction_id + 1),
        lambda r: replace(r, event_id=uuid.UUID(int=99)),
        lambda r: replace(r, stream="payment-8"),
        lambda r: replace(r, version=2),
        lambda r: replace(r, type="PaymentExpire"),
        lambda r: replace(r, schema_version=2),
        lambda r: replace(r, payload=r.payload.replace(b"7", b"8")),
        lambda r: replace(r, metadata=b'{"node": "x"}'),
        lambda r: replace(r, recorded_at=r.recorded_at + timedelta(microseconds=1)),
        # Moving bytes from one field to the next keeps the concatenation: the lengths tell.
        lambda r: replace(r, stream="payment-7P", type="aymentExpired"),
    ],
)
def test_a_change_of_any_field_changes_the_event_hash(
    change: Callable[[StoredEvent], StoredEvent],
) -> None:
    event = row(7)
    assert event_hash(change(event)) != event_hash(event)


def test_a_seal_lists_runs_of_positions_and_chains_to_the_one_before() -> None:
    rows = [row(1), row(2), row(3), row(5, transaction_id=4), row(4, transaction_id=5)]
    first = sealed(rows)
    assert first.positions == [(1, 3), (5, 1), (4, 1)]
    assert (first.count, first.total, first.previous_hash) == (5, 5, "0" * 64)
    assert base64.b64decode(first.fingerprints) == b"".join(event_hash(r)[:4] for r in rows)
    second = sealed([row(6), row(7)], seal=2, previous=first)
    assert second.previous_hash == first.hash
    assert (second.after_transaction_id, second.after_position) == (5, 4)
    assert second.total == 7
    # The same rows, sealed again, give the same seal: a retry is recognised by its content.
    assert sealed(rows) == first


def test_a_seal_holds_at_most_max_events_per_seal() -> None:
    builder = SealBuilder(1, ZERO_HASH, Cursor(0, 0), 0)
    rows = [row(n) for n in range(1, MAX_EVENTS_PER_SEAL + 3)]
    assert builder.add(rows) == MAX_EVENTS_PER_SEAL
    assert builder.full
    assert builder.add(rows[MAX_EVENTS_PER_SEAL:]) == 0
    with pytest.raises(ValueError, match="at least one event"):
        SealBuilder(1, ZERO_HASH, Cursor(0, 0), 0).seal(NOW)


def test_digests_print_and_parse() -> None:
    seal = sealed([row(1), row(2)])
    digest = SealDigest.of(seal)
    assert str(digest) == f"i3lani-seal-v1:1:2:2:{seal.hash}"
    assert SealDigest.parse(f"  {str(digest).upper()}\n") == digest
    for bad in ("", "i3lani-seal-v1:1:2:2:abc", f"i3lani-seal-v2:1:2:2:{seal.hash}", "x" * 500):
        with pytest.raises(ValueError, match="a seal digest looks like") as caught:
            SealDigest.parse(bad)
        assert "\n" not in str(caught.value)
        assert len(str(caught.value)) < 300


# -- verification -------------------------------------------------------------------------------
ROWS = [row(n) for n in range(1, 11)]
FIRST = sealed(ROWS[:6])
SECOND = sealed(ROWS[6:], seal=2, previous=FIRST)
SEALS = [(FIRST, 100), (SECOND, 101)]


def findings(report: SealReport) -> list[tuple[str, int | None, int | None]]:
    return [(f.kind, f.seal, f.position) for f in report.findings]


def test_an_untouched_log_verifies_and_leads_to_its_digest() -> None:
    report = verify(SEALS, [*ROWS, row(11)], against=SealDigest.of(SECOND))
    assert report.clean, report.findings
    assert (report.seals, report.events, report.unsealed) == (2, 10, 1)
    assert (report.last_sealed_position, report.digest_matched) == (10, True)
    assert report.first_difference is None


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (lambda rows: [*rows[:2], replace(rows[2], payload=b"{}"), *rows[3:]], ("changed", 1, 3)),
        (lambda rows: [*rows[:2], *rows[3:]], ("deleted", 1, 3)),
        (lambda rows: [*rows[:2], *rows[4:]], ("deleted", 1, 3)),  # two in a row
        (lambda rows: [*rows[:5], *rows[6:]], ("deleted", 1, 6)),  # a seal's last
        (lambda rows: rows[:9], ("deleted", 2, 10)),  # the end of the log
        (lambda rows: [*rows[:2], row(50, transaction_id=2), *rows[2:]], ("inserted", 1, 50)),
        (lambda rows: [*rows[:8], replace(row(9), stream="payment-x")], ("changed", 2, 9)),
    ],
)
def test_the_first_position_that_differs_is_named(
    tamper: Callable[[list[StoredEvent]], list[StoredEvent]],
    expected: tuple[str, int, int],
) -> None:
    report = verify(SEALS, tamper(list(ROWS)))
    assert findings(report)[0] == expected
    assert report.first_difference == expected[2]


def test_a_rewrite_with_recomputed_seals_is_consistent_but_not_the_digest() -> None:
    rewritten = [*ROWS[:3], replace(ROWS[3], payload=b'{"payment_id": 400}'), *ROWS[4:]]
    forged_first = sealed(rewritten[:6])
    forged_second = sealed(rewritten[6:], seal=2, previous=forged_first)
    forged = [(forged_first, 100), (forged_second, 101)]
    assert verify(forged, rewritten).clean
    report = verify(forged, rewritten, against=SealDigest.of(SECOND))
    assert findings(report) == [("digest", 2, None)]
    assert report.digest_matched is False
    assert "was rewritten" in report.findings[0].message
    # A digest of the first seal catches it too: the rewrite is inside it.
    assert not verify(forged, rewritten, against=SealDigest.of(FIRST)).clean


def test_seals_that_do_not_follow_one_another_are_found() -> None:
    # Seal 1 removed from the log: its rows lie in no seal, and seal 2 follows nothing.
    report = verify([(SECOND, 101)], ROWS)
    kinds = findings(report)
    assert ("chain", 2, None) in kinds
    assert ("inserted", 2, 1) in kinds
    # A seal whose own fields were altered (a total, here): its events still match.
    altered = msgspec.structs.replace(SECOND, total=99)
    report = verify([(FIRST, 100), (altered, 101)], ROWS)
    assert [k for k, _, _ in findings(report)] == ["seal", "chain"]
    # The digest names a seal the log no longer has.
    report = verify([(FIRST, 100)], ROWS[:6], against=SealDigest.of(SECOND))
    assert findings(report) == [("digest", 2, None)]
    assert "has 1 seal(s)" in report.findings[0].message


def test_a_cut_through_the_log_leaves_the_seal_it_cuts_unjudged() -> None:
    verifier = SealVerifier()
    for seal, at in SEALS:
        verifier.add_seal(seal, stored_at(at))
    verifier.feed(ROWS[:8])
    report = verifier.finish(complete=False)
    assert report.clean
    assert (report.seals, report.events, report.unsealed) == (1, 6, 2)


def test_a_seal_newer_than_the_read_is_not_judged() -> None:
    """A seal appended after the read went past the end of the log covers rows the read did
    not see: neither they nor the seal are judged (no "deleted" for a live log)."""
    verifier = SealVerifier()
    verifier.add_seal(FIRST, Cursor(6, 7))  # read: its event is among the rows
    verifier.add_seal(SECOND, Cursor(11, 11))  # appended after the read ended at #8
    verifier.feed([*ROWS[:6], row(7), row(8)])
    report = verifier.finish(complete=True)
    assert report.clean, report.findings
    assert (report.seals, report.events, report.unsealed) == (1, 6, 2)
    # The same seal, read: rows 9 and 10 are missing from under it.
    verifier = SealVerifier()
    verifier.add_seal(FIRST, Cursor(6, 7))
    verifier.add_seal(SECOND, Cursor(8, 8))
    verifier.feed([*ROWS[:6], row(7), row(8)])
    assert findings(verifier.finish(complete=True)) == [("deleted", 2, 9)]
