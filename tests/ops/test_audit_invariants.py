"""The audit's invariants 8 to 11 on the pure replay (issue 14): a confirmation needs its
payment created and its price paid; a stored row no event of this release reads is a
discrepancy, never a skip."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from actors.config import Settings
from events import Event, PaymentConfirmed
from events.errors import UnknownEventType, UpcastError
from ops.audit import AuditReport, Replay, render
from store.stored import Rejected, StoredEvent
from tests.ops.test_audit import recorded
from tests.ops.test_tampering import confirmed, created

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
TON = 1_000_000_000


def replay(log: list[tuple[str, Event]], rejected: Sequence[Rejected] = ()) -> AuditReport:
    audit = Replay(Settings())
    audit.apply(recorded(i, stream, event) for i, (stream, event) in enumerate(log, start=1))
    audit.reject(rejected)
    audit.finish()
    return audit.report()


def found(report: AuditReport) -> list[tuple[str, list[int]]]:
    return [(d.check, d.positions) for d in report.discrepancies]


def test_8_a_confirmation_needs_its_payment_created_first() -> None:
    report = replay([("payment-9", confirmed(9)), ("payment-9", created(9))])
    assert found(report) == [("confirmed-without-payment", [1])]
    assert report.discrepancies[0].message == (
        "payment 9 confirmed at #1 was never created (no PaymentCreated before it)"
    )


def test_9_a_confirmation_carries_at_least_the_price() -> None:
    exact = replay([("payment-1", created(1, amount=3 * TON)), ("payment-1", confirmed(1))])
    assert exact.clean
    more = replay([("payment-1", created(1)), ("payment-1", confirmed(1, amount=4 * TON))])
    assert more.clean
    short = PaymentConfirmed(**{**_fields(confirmed(1)), "amount_nanotons": 3 * TON - 1})
    report = replay([("payment-1", created(1)), ("payment-1", short)])
    assert found(report) == [("confirmed-below-price", [1, 2])]
    assert "for 2.999999999 TON, below its price of 3 TON (#1)" in report.discrepancies[0].message


def _fields(event: Event) -> dict[str, object]:
    return {name: getattr(event, name) for name in event.__struct_fields__}


def stored(position: int, tag: str) -> StoredEvent:
    return StoredEvent(position, position, uuid.uuid4(), "payment-1", 2, tag, 1, b"{}", b"{}", NOW)


def test_10_and_11_unreadable_rows_are_discrepancies_not_skips() -> None:
    rejected = [
        Rejected(stored(3, "PaymentRefundedX"), UnknownEventType("PaymentRefundedX", 3)),
        Rejected(stored(4, "PaymentExpired"), UpcastError("field 'payment_id': expected int")),
    ]
    report = replay([("payment-1", created(1))], rejected)
    assert found(report) == [("unknown-event-type", [3]), ("undecodable-event", [4])]
    assert "'PaymentRefundedX'" in report.discrepancies[0].message
    assert "payment-1 v2" in report.discrepancies[1].message
    assert report.summary.events_unreadable == 2
    assert "events unreadable 2" in " ".join(render(report, "table").split())
