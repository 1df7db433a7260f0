"""Every transfer recorded once, pure: the record of each matching outcome, and the
reconciliation of a wallet's records with the chain (actors/transfers.py).

Transactions are the real TonAPI fixtures and variants of them (as in test_payment_matching).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from actors.payments import Ignore, IgnoreReason, PaymentStatus, match_all
from actors.tonapi_models import Transaction
from actors.transfers import (
    TransferRecord,
    WalletLedger,
    fold_ledger,
    printable,
    reconcile,
    reconcile_range,
    transfer_record,
    transfer_records,
)
from events import EventMetadata
from events.base import Event
from events.payments import (
    SentMessage,
    TransferReceived,
    TransferSent,
    TransfersReconciled,
    WalletScanned,
)
from store import RecordedEvent
from tests.actors.test_payment_matching import (
    NOW,
    PAID_AT,
    PAYER_RAW,
    PRICE,
    WALLET,
    WALLET_RAW,
    decode_one,
    fixture_tx,
    incoming,
    payment,
)

OTHER_RAW = "0:ca6e321c7cce9ecedf0a8ca2492ec8592494aa5fb5ce0387dff96ef6af982a3e"


def tx(n: int, text: str | None = "i3lani_12", *, value: int = PRICE, **msg: Any) -> Transaction:
    """A variant of the incoming fixture with its own hash and lt (``n``)."""
    return incoming(text, tx={"hash": f"{n:064x}", "lt": 1000 + n}, value=value, **msg)


def outgoing(n: int, to: str = PAYER_RAW, value: int = 3 * 10**9) -> Transaction:
    """An outgoing transaction of the wallet: its owner's external message, one transfer out."""
    data = fixture_tx("transactions_incoming_comment.json")
    out = {**data["in_msg"], "source": {"address": WALLET_RAW}, "destination": {"address": to}}
    out["value"] = value
    data["in_msg"] = {
        "msg_type": "ext_in_msg",
        "bounce": False,
        "bounced": False,
        "value": 0,
        "destination": {"address": WALLET_RAW},
    }
    data["out_msgs"] = [out]
    data["hash"], data["lt"] = f"{n:064x}", 1000 + n
    return decode_one(data)


def record(
    transaction: Transaction, pending: dict[int, Any] | None = None
) -> TransferRecord | None:
    (decision,) = match_all(WALLET, pending or {}, set(), [transaction])
    recorded = transfer_record(WALLET, transaction, decision, detected_at=NOW)
    assert recorded is not None
    return recorded


def nothing_recorded(transaction: Transaction) -> bool:
    (decision,) = match_all(WALLET, {}, set(), [transaction])
    return transfer_record(WALLET, transaction, decision, detected_at=NOW) is None


def received(transaction: Transaction, pending: dict[int, Any] | None = None) -> TransferReceived:
    recorded = record(transaction, pending)
    assert isinstance(recorded, TransferReceived)
    return recorded


# -- what each transfer is recorded as ------------------------------------------------------
@pytest.mark.parametrize(
    ("transaction", "pending", "category", "kept", "refund", "reason"),
    [
        (tx(1), {12: payment()}, "confirmed", PRICE, 0, ""),
        (tx(2, value=PRICE + 7), {12: payment()}, "overpaid", PRICE, 7, ""),
        (tx(3, value=PRICE - 1), {12: payment()}, "underpaid", 0, PRICE - 1, ""),
        (
            tx(4),
            {12: payment(status=PaymentStatus.CONFIRMED)},
            "second-payment",
            0,
            PRICE,
            "already-confirmed",
        ),
        (tx(5), {12: payment(expires_at=PAID_AT - timedelta(seconds=1))}, "late", 0, PRICE, ""),
        (tx(6, "hello"), {}, "unknown-memo", 0, PRICE, "memo-mismatch"),
        (
            tx(7, None, decoded_body=None, op_code=None, decoded_op_name=None),
            {},
            "no-memo",
            0,
            PRICE,
            "no-comment",
        ),
        (tx(8, bounced=True), {12: payment()}, "ignored", 0, 0, "bounced"),
        (
            tx(9, decoded_op_name="jetton_notify", op_code="0x7362d09c"),
            {},
            "ignored",
            0,
            0,
            "not-text-comment",
        ),
    ],
)
def test_each_transfer_is_recorded_in_its_category_with_where_its_nanotons_went(
    transaction: Transaction,
    pending: dict[int, Any],
    category: str,
    kept: int,
    refund: int,
    reason: str,
) -> None:
    recorded = received(transaction, pending)
    assert (recorded.category, recorded.kept_nanotons, recorded.refund_nanotons) == (
        category,
        kept,
        refund,
    )
    assert recorded.reason == reason
    assert recorded.tx_hash == transaction.hash
    assert recorded.lt == transaction.lt
    assert transaction.in_msg is not None
    assert recorded.amount_nanotons == transaction.in_msg.value
    assert recorded.payer == PAYER_RAW
    assert recorded.received_at == PAID_AT
    assert recorded.wallet == WALLET_RAW
    if category in ("confirmed", "overpaid", "underpaid", "second-payment", "late"):
        assert recorded.payment_id == 12
    else:
        assert recorded.payment_id is None


def test_aborted_and_failed_transfers_are_ignored_with_their_reason() -> None:
    # The aborted fixture is a transaction of another account: to the scan of our wallet it
    # is not ours; made ours (same shape), it is an aborted transfer.
    aborted_json = fixture_tx("transaction_aborted_comment.json")
    (decision,) = match_all(WALLET, {}, set(), [decode_one(aborted_json)])
    assert isinstance(decision, Ignore)
    assert decision.reason is IgnoreReason.NOT_OUR_WALLET
    ours = {"address": WALLET_RAW}
    aborted_json["account"] = aborted_json["in_msg"]["destination"] = ours
    aborted = received(decode_one(aborted_json))
    assert (aborted.category, aborted.reason) == ("ignored", "failed")  # success is false
    assert aborted.amount_nanotons == aborted_json["in_msg"]["value"]
    assert aborted.memo.startswith("data:application/json")
    skipped = received(incoming("i3lani_12", tx={"aborted": True}))
    assert (skipped.category, skipped.reason) == ("ignored", "aborted")
    assert (skipped.kept_nanotons, skipped.refund_nanotons) == (0, 0)


def test_an_outgoing_transfer_is_recorded_as_sent_and_a_no_transfer_not_at_all() -> None:
    sent = record(outgoing(20, value=123))
    assert isinstance(sent, TransferSent)
    assert sent.messages == [SentMessage(destination=PAYER_RAW, amount_nanotons=123)]
    no_message = fixture_tx("transactions_incoming_comment.json")
    del no_message["in_msg"]
    assert nothing_recorded(decode_one(no_message))
    sent_nothing = fixture_tx("transactions_incoming_comment.json")
    sent_nothing["in_msg"] = {**sent_nothing["in_msg"], "msg_type": "ext_in_msg", "value": 0}
    assert nothing_recorded(decode_one(sent_nothing))


def test_a_scan_records_everything_once_but_an_unknown_payment_above_the_cursor() -> None:
    transactions = [tx(1), tx(2, "i3lani_77"), tx(3), tx(4, "i3lani_12"), outgoing(5)]
    pending = {12: payment()}
    decisions = match_all(WALLET, pending, set(), transactions)
    # Held: the cursor stays before the transfer for payment 77, not known yet.
    held = transfer_records(WALLET, transactions, decisions, detected_at=NOW, cursor=1001)
    assert [r.tx_hash[-1] for r in held] == ["1", "3", "4", "5"]
    assert [type(r).__name__ for r in held][-1] == "TransferSent"
    categories = [r.category for r in held if isinstance(r, TransferReceived)]
    assert categories == ["confirmed", "second-payment", "second-payment"]
    # The cursor passed it (it is old): recorded as an unknown memo.
    passed = transfer_records(WALLET, transactions, decisions, detected_at=NOW, cursor=1005)
    assert [r.tx_hash[-1] for r in passed] == ["1", "2", "3", "4", "5"]
    assert isinstance(passed[1], TransferReceived)
    assert passed[1].category == "unknown-memo"
    # Recorded transactions come back ALREADY_USED from matching: nothing again.
    again = match_all(WALLET, pending, {t.hash for t in transactions}, transactions)
    assert transfer_records(WALLET, transactions, again, detected_at=NOW, cursor=1005) == []


def test_printable_keeps_a_comment_storable_and_short() -> None:
    assert printable("i3lani_7 \x00\u200b\ud800 ok") == "i3lani_7 \ufffd\ufffd\ufffd ok"
    assert len(printable("x" * 500)) == 120


# -- reconciliation ---------------------------------------------------------------------------
def _recorded(event: Event, position: int) -> RecordedEvent:
    return RecordedEvent(
        position=position,
        transaction_id=position,
        event_id=uuid.uuid4(),
        stream="payment-scan-0_408d",
        version=position,
        type=type(event).__name__,
        schema_version=1,
        event=event,
        metadata=EventMetadata(),
        recorded_at=NOW,
    )


def ledger_of(chain: list[Transaction], extra: Sequence[Event] = ()) -> WalletLedger:
    decisions = match_all(WALLET, {12: payment()}, set(), chain)
    records: list[Event] = list(
        transfer_records(WALLET, chain, decisions, detected_at=NOW, cursor=2000)
    )
    scan = WalletScanned(
        wallet=WALLET_RAW, last_lt=2000, transactions=len(chain), scanned_at=NOW, from_lt=0
    )
    events = [*records, *extra, scan]
    return fold_ledger(WALLET_RAW, [_recorded(e, i + 1) for i, e in enumerate(events)])


CHAIN = [tx(1), tx(2, "hello"), tx(3), tx(4, bounced=True), outgoing(5)]


def test_a_faithful_log_reconciles_clean_by_category() -> None:
    ledger = ledger_of(CHAIN)
    result = reconcile(WALLET, CHAIN, ledger, from_lt=0, to_lt=2000)
    assert result.clean, result.discrepancies
    assert (result.chain_transactions, result.chain_transfers, result.recorded) == (5, 5, 5)
    assert {line.category: (line.recorded, line.on_chain) for line in result.categories} == {
        "confirmed": (1, 1),
        "second-payment": (1, 1),
        "unknown-memo": (1, 1),
        "ignored": (1, 1),
        "sent": (1, 1),
    }


def test_a_transfer_missing_from_the_log_and_one_the_chain_never_had_are_named() -> None:
    ledger = ledger_of(CHAIN)
    stranger = tx(9, "i3lani_12", value=10**9)
    invented = TransferReceived(
        wallet=WALLET_RAW,
        tx_hash="f" * 64,
        lt=1500,
        received_at=PAID_AT,
        amount_nanotons=PRICE,
        payer=PAYER_RAW,
        category="confirmed",
        payment_id=44,
        kept_nanotons=PRICE,
        detected_at=NOW,
    )
    tampered = ledger_of(CHAIN, [invented])
    result = reconcile(WALLET, [*CHAIN, stranger], tampered, from_lt=0, to_lt=2000)
    found = {(d.kind, d.tx_hash) for d in result.discrepancies}
    assert found == {("missing-from-log", stranger.hash), ("not-on-chain", "f" * 64)}
    assert result.tx_hashes() == [stranger.hash, "f" * 64]  # in lt order
    missing = next(d for d in result.discrepancies if d.kind == "missing-from-log")
    assert "1 TON from 0:ef59" in missing.detail
    assert "'i3lani_12'" in missing.detail
    # Outside the range, neither counts.
    assert reconcile(WALLET, [*CHAIN, stranger], ledger, from_lt=0, to_lt=1005).clean


def test_a_category_or_amount_the_chain_rules_out_is_a_mismatch() -> None:
    ledger = ledger_of(CHAIN)
    entries = ledger.entries
    bounced = CHAIN[3].hash
    entries[bounced] = msgspec.structs.replace(
        entries[bounced], category="confirmed", payment_id=12, reason=""
    )
    first = CHAIN[0].hash
    entries[first] = msgspec.structs.replace(entries[first], amount_nanotons=1)
    result = reconcile(WALLET, CHAIN, ledger, from_lt=0, to_lt=2000)
    details = {d.tx_hash: d.detail for d in result.discrepancies if d.kind == "mismatch"}
    assert "allows only ignored (bounced)" in details[bounced]
    assert "recorded as 0.000000001 TON, the chain shows 5.44 TON" in details[first]


def test_a_transaction_recorded_twice_is_named() -> None:
    duplicate = received(CHAIN[0], {12: payment()})
    ledger = ledger_of(CHAIN, [duplicate])
    result = reconcile(WALLET, CHAIN, ledger, from_lt=0, to_lt=2000)
    assert [(d.kind, d.tx_hash) for d in result.discrepancies] == [
        ("recorded-twice", CHAIN[0].hash)
    ]


def test_the_range_is_what_was_scanned_since_transfers_are_recorded() -> None:
    def scanned(low: int, high: int, minutes: int) -> WalletScanned:
        return WalletScanned(
            wallet=WALLET_RAW,
            last_lt=high,
            transactions=1,
            scanned_at=NOW + timedelta(minutes=minutes),
            from_lt=low,
        )

    legacy = WalletScanned(wallet=WALLET_RAW, last_lt=100, transactions=1, scanned_at=NOW)
    events: list[Event] = [legacy, scanned(100, 200, 1), scanned(200, 300, 2)]
    ledger = fold_ledger(WALLET_RAW, [_recorded(e, i + 1) for i, e in enumerate(events)])
    assert reconcile_range(ledger) == (100, 300)
    assert reconcile_range(ledger, since=NOW + timedelta(minutes=1, seconds=30)) == (200, 300)
    assert reconcile_range(ledger, since=NOW + timedelta(hours=1)) is None  # nothing new
    done = TransfersReconciled(
        wallet=WALLET_RAW,
        from_lt=100,
        to_lt=200,
        transactions=1,
        recorded=1,
        discrepancies=0,
        reconciled_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    ledger = fold_ledger(WALLET_RAW, [_recorded(e, i + 1) for i, e in enumerate([*events, done])])
    assert reconcile_range(ledger, incremental=True) == (200, 300)
    assert reconcile_range(fold_ledger(WALLET_RAW, [_recorded(legacy, 1)])) is None
