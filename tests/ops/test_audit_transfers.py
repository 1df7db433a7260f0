"""The audit's books of the wallet (ops/audit_transfers.py, inside ``i3lani audit``): a clean
log of transfers and refunds, then each way a log can break them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import pytest

from events import Event
from events.payments import (
    PaymentConfirmed,
    RefundConfirmed,
    RefundDeclined,
    RefundDue,
    RefundSent,
    SentMessage,
    TransferReceived,
    TransferSent,
)
from ops.audit import Replay, render
from tests.ops.test_audit import NOW, SETTINGS, TON, WALLET, confirmed, created, recorded, tx

PAYER = "0:" + "1" * 64
SCAN = "payment-scan-0_408d"


def received(n: int, category: str, amount: int = TON, **parts: Any) -> TransferReceived:
    fields: dict[str, Any] = {
        "confirmed": {"kept_nanotons": amount, "payment_id": 1},
        "overpaid": {"kept_nanotons": TON, "refund_nanotons": amount - TON, "payment_id": 1},
        "second-payment": {"refund_nanotons": amount, "payment_id": 1},
        "unknown-memo": {"refund_nanotons": amount},
        "ignored": {"reason": "bounced"},
    }[category]
    return TransferReceived(
        wallet=WALLET,
        tx_hash=tx(n),
        lt=n,
        received_at=NOW,
        amount_nanotons=amount,
        payer=PAYER,
        category=category,  # type: ignore[arg-type]
        detected_at=NOW,
        **{**fields, **parts},
    )


def due(n: int, amount: int, category: str = "second-payment") -> RefundDue:
    return RefundDue(
        refund_id=tx(n),
        wallet=WALLET,
        to=PAYER,
        amount_nanotons=amount,
        category=category,  # type: ignore[arg-type]
        payment_id=1,
        due_at=NOW,
    )


def marked(n: int, out: int) -> RefundSent:
    return RefundSent(refund_id=tx(n), tx_hash=tx(out), requested_by="cli:op", requested_at=NOW)


def refunded(n: int, out: int, amount: int = TON) -> RefundConfirmed:
    return RefundConfirmed(
        refund_id=tx(n), tx_hash=tx(out), lt=out, amount_nanotons=amount, confirmed_at=NOW
    )


def sent(out: int, amount: int = TON) -> TransferSent:
    return TransferSent(
        wallet=WALLET,
        tx_hash=tx(out),
        lt=out,
        sent_at=NOW,
        messages=[SentMessage(destination=PAYER, amount_nanotons=amount)],
        detected_at=NOW,
    )


def stream_of(event: Event) -> str:
    refund_id = getattr(event, "refund_id", None)
    if refund_id is not None:
        return f"payment-refund-{refund_id}"
    if isinstance(event, TransferReceived | TransferSent):
        return SCAN
    return f"payment-{getattr(event, 'payment_id', 0)}"


CLEAN: list[Event] = [
    created(1, amount=TON),
    received(10, "overpaid", amount=3 * TON // 2),
    confirmed(1, tx(10), amount=3 * TON // 2),
    due(10, TON // 2, "overpaid"),
    received(11, "second-payment"),
    due(11, TON),
    received(12, "unknown-memo", amount=2 * TON),
    due(12, 2 * TON, "unknown-memo"),
    received(13, "ignored"),
    sent(20),
    marked(11, 20),
    refunded(11, 20),
    RefundDeclined(refund_id=tx(12), reason="kept", requested_by="api:1", requested_at=NOW),
]


def replay(events: Sequence[Event]) -> Replay:
    books = Replay(SETTINGS)
    books.apply(recorded(i + 1, stream_of(e), e) for i, e in enumerate(events))
    books.finish()
    return books


def flagged(events: Sequence[Event]) -> list[tuple[str, str]]:
    return [(d.check, d.message) for d in replay(events).discrepancies()]


def test_a_faithful_log_balances_every_nanoton() -> None:
    report = replay(CLEAN).report()
    assert report.clean, report.discrepancies
    books = report.summary.transfers
    assert (books.received, books.received_nanotons) == (4, 11 * TON // 2)
    assert (books.kept_nanotons, books.owed_nanotons, books.ignored_nanotons) == (
        TON,
        7 * TON // 2,
        TON,
    )
    assert books.categories == {
        "overpaid": 1,
        "second-payment": 1,
        "unknown-memo": 1,
        "ignored": 1,
    }
    assert (books.refunds, books.refunds_nanotons) == (3, books.owed_nanotons)
    assert (books.refunds_due, books.refunds_refunded, books.refunds_declined) == (1, 1, 1)
    assert (books.refunded_nanotons, books.refunds_declined_nanotons) == (TON, 2 * TON)
    assert (books.sent, books.sent_nanotons) == (1, TON)
    table = render(report, "table")
    assert (
        "transfers received       4 (1 overpaid, 1 second-payment, 1 unknown-memo, 1 ignored)"
        in table
    )
    assert "refunds                  3 (3.5 TON): 1 due, 0 awaiting the chain, 1 refunded" in table


@pytest.mark.parametrize(
    ("change", "check", "message"),
    [
        (
            lambda log: [*log, received(11, "second-payment")],
            "transfer-recorded-twice",
            f"transaction {tx(11)} recorded at #5 and again at #14",
        ),
        (lambda log: [*log, sent(20)], "transfer-recorded-twice", "recorded at #10"),
        (
            lambda log: [*log, received(30, "confirmed", refund_nanotons=5)],
            "transfer-mismatch",
            "all of it should be kept",
        ),
        (
            lambda log: [*log, received(31, "ignored", kept_nanotons=1)],
            "transfer-mismatch",
            "nothing should be",
        ),
        (
            lambda log: [*log, received(32, "unknown-memo", refund_nanotons=1)],
            "transfer-mismatch",
            "all of it is owed back",
        ),
        (
            lambda log: [
                x
                if not isinstance(x, PaymentConfirmed)
                else msgspec.structs.replace(x, amount_nanotons=TON)
                for x in log
            ],
            "transfer-mismatch",
            "but its payment event says confirmed of payment 1 for 1 TON",
        ),
        (
            lambda log: [
                x
                for x in log
                if not (isinstance(x, RefundDue) and x.refund_id == tx(12))
                and not isinstance(x, RefundDeclined)
            ],
            "refund-mismatch",
            "no refund is due for it",
        ),
        (lambda log: [*log, due(40, TON)], "refund-mismatch", "owes nothing"),
        (
            lambda log: [
                msgspec.structs.replace(x, amount_nanotons=TON)
                if isinstance(x, RefundDue) and x.refund_id == tx(10)
                else x
                for x in log
            ],
            "refund-mismatch",
            "its refund is 1 TON",
        ),
        (lambda log: [*log, marked(12, 21)], "refund-mismatch", "which was declined"),
        (lambda log: [*log, refunded(12, 21)], "refund-mismatch", "not sent"),
        (
            lambda log: [
                x if not isinstance(x, RefundConfirmed) else refunded(11, 22) for x in log
            ],
            "refund-mismatch",
            f"but it was marked with {tx(20)}",
        ),
        (lambda log: [*log, marked(50, 21)], "refund-mismatch", "which was never due"),
    ],
)
def test_each_break_of_the_books_is_a_discrepancy(change: Any, check: str, message: str) -> None:
    found = flagged(change(CLEAN))
    assert any(c == check and message in m for c, m in found), found
