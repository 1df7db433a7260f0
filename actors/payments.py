"""Payment matching, pure: which TON transaction pays which payment, and what to record.

The future PaymentMonitor fetches its wallet's transactions from TonAPI (thin I/O) and hands
each page to :func:`match_all`, which returns one decision per transaction, in ``lt`` order:

* :class:`Confirm`   paid at least the expected amount in time: the payment is confirmed;
* :class:`Underpaid` paid less than expected in time: recorded, not confirmed;
* :class:`Late`      paid after the payment expired: recorded for manual review;
* :class:`Ignore`    not a payment of ours, with an :class:`IgnoreReason` and a one-line detail.

:func:`decision_event` turns a decision into the event to append (``PaymentConfirmed``,
``PaymentUnderpaid``, ``LatePaymentReceived``). No clock is read: lateness is judged from
the transaction's own ``utime``, the time the chain accepted it, against ``expires_at``.

The rules (``DOMAIN.md``, "Payment verification rules"), in the order they are checked:

1. incoming internal message only, with a source, to our wallet (addresses compared parsed,
   never as strings, so a wallet configured as ``UQ…`` matches TonAPI's ``0:…``);
2. success only: ``success`` true, ``aborted`` false, ``in_msg.bounced`` false, no
   ``out_msgs``, and a compute phase that ran;
3. TON only: a plain text comment (``text_comment`` / op ``0x00000000``); jetton notifications
   and encrypted comments never match;
4. the memo is exactly ``i3lani_<id>`` after normalisation
   (:func:`actors.ton.payment_id_from_comment`);
5. amounts are integer nanotons: ``value >= expected`` confirms (the excess is recorded as
   ``overpaid``), less is :class:`Underpaid`;
6. a transaction hash is used at most once and a payment is confirmed at most once: the caller
   passes the hashes already recorded, and :func:`match_all` also enforces both within a page.
   Across two workers this is the event store's job: append ``PaymentConfirmed`` with the
   payment stream's expected version, so the second writer gets ``ConcurrencyConflict``;
7. a transfer after ``expires_at`` (or to a payment already marked expired) is :class:`Late`,
   never dropped;
8. a transaction TonAPI shows is final: no confirmations are counted.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final, TypeAlias

import msgspec

from actors.ton import Address, InvalidAddress, payment_id_from_comment
from actors.tonapi_models import Message, Transaction
from events.payments import LatePaymentReceived, PaymentConfirmed, PaymentUnderpaid

__all__ = [
    "PaymentStatus",
    "PendingPayment",
    "IgnoreReason",
    "Confirm",
    "Underpaid",
    "Late",
    "Ignore",
    "Decision",
    "match_transaction",
    "match_all",
    "decision_event",
]

TEXT_COMMENT_OP: Final = 0x00000000
TEXT_COMMENT_NAME: Final = "text_comment"
INTERNAL_MESSAGE: Final = "int_msg"


class PaymentStatus(StrEnum):
    """Where a payment stands, as far as matching cares."""

    PENDING = "pending"  # waiting for a transfer with its memo; the only state that confirms
    CONFIRMED = "confirmed"  # paid; any further transfer with its memo is ignored
    EXPIRED = "expired"  # its window closed unpaid; a transfer now is Late, for review


class PendingPayment(msgspec.Struct, frozen=True, kw_only=True):
    """What matching needs to know about one payment (built from its ``payment-<id>`` stream).

    ``expires_at`` must be timezone-aware; amounts are nanotons.
    """

    payment_id: int
    expected_nanotons: int
    expires_at: datetime
    status: PaymentStatus = PaymentStatus.PENDING

    def __post_init__(self) -> None:
        if self.payment_id < 1:
            raise ValueError(f"payment_id must be positive, got {self.payment_id}")
        if self.expected_nanotons < 1:
            raise ValueError(
                f"payment {self.payment_id}: expected_nanotons must be positive, "
                f"got {self.expected_nanotons}"
            )
        if self.expires_at.utcoffset() is None:
            raise ValueError(
                f"payment {self.payment_id}: expires_at must be timezone-aware, "
                f"got {self.expires_at!r}"
            )


class IgnoreReason(StrEnum):
    """Why a transaction pays nothing; the value is a stable code for logs and metrics."""

    ALREADY_USED = "already-used"  # its hash was already recorded against a payment
    DUPLICATE_IN_PAGE = "duplicate-in-page"  # the same hash twice in one page
    NOT_INCOMING_INTERNAL = "not-incoming-internal"  # no in_msg, external, or no source
    MALFORMED_ADDRESS = "malformed-address"  # TonAPI sent an address we cannot parse
    NOT_OUR_WALLET = "not-our-wallet"  # the destination (or account) is another wallet
    FAILED = "failed"  # success is false
    ABORTED = "aborted"  # aborted is true
    BOUNCED = "bounced"  # the incoming message is a bounce
    HAS_OUT_MESSAGES = "has-out-messages"  # the wallet sent something back (a bounce, a refund)
    COMPUTE_SKIPPED = "compute-skipped"  # the wallet's code never ran on it
    NOT_TEXT_COMMENT = "not-text-comment"  # jetton notification, encrypted comment, other op
    NO_COMMENT = "no-comment"  # a plain transfer without a readable comment
    MEMO_MISMATCH = "memo-mismatch"  # a comment, but not exactly i3lani_<id>
    UNKNOWN_PAYMENT = "unknown-payment"  # i3lani_<id> for an id we are not tracking
    ALREADY_CONFIRMED = "already-confirmed"  # the payment was paid before (a second transfer)


class Confirm(msgspec.Struct, frozen=True, kw_only=True):
    """Confirm ``payment_id``: ``amount`` >= expected arrived in time (``overpaid`` extra)."""

    payment_id: int
    tx_hash: str
    lt: int
    amount: int
    payer_raw: str
    overpaid: int
    paid_at: datetime


class Underpaid(msgspec.Struct, frozen=True, kw_only=True):
    """Record, do not confirm: ``amount`` < ``expected`` arrived in time."""

    payment_id: int
    tx_hash: str
    lt: int
    amount: int
    expected: int
    payer_raw: str
    paid_at: datetime


class Late(msgspec.Struct, frozen=True, kw_only=True):
    """Record for manual review: a transfer for ``payment_id`` after it expired.

    ``paid_at <= expires_at`` means the chain accepted it in time but the payment had already
    been marked expired (the monitor saw it late): the reviewer should honour it.
    """

    payment_id: int
    tx_hash: str
    lt: int
    amount: int
    expected: int
    payer_raw: str
    paid_at: datetime
    expires_at: datetime


class Ignore(msgspec.Struct, frozen=True, kw_only=True):
    """Nothing to pay for with this transaction: ``reason`` is the code, ``detail`` one line;
    ``payment_id`` the payment its memo names, when it names one (``ALREADY_CONFIRMED``,
    ``UNKNOWN_PAYMENT``)."""

    reason: IgnoreReason
    detail: str
    tx_hash: str
    lt: int
    payment_id: int | None = None


Decision: TypeAlias = Confirm | Underpaid | Late | Ignore


def _op_code(text: str) -> int | None:
    """``"0x00000000"`` -> 0; ``None`` for anything that is not ``0x`` and 1 to 8 hex digits."""
    digits = text[2:] if text[:2] in ("0x", "0X") else ""
    if not 1 <= len(digits) <= 8 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        return None
    return int(digits, 16)


def _not_text_comment(message: Message) -> str | None:
    """Why ``message`` is not a plain TON text comment, or ``None`` when it is one."""
    name = message.decoded_op_name
    if name is not None and name != TEXT_COMMENT_NAME:
        return f"decoded_op_name is {name!r}, not {TEXT_COMMENT_NAME!r}"
    if message.op_code is not None and _op_code(message.op_code) != TEXT_COMMENT_OP:
        return f"op_code is {message.op_code!r}, not '0x00000000' (text comment)"
    return None


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> Address | None:
    """``text`` parsed, or None; cached: a wallet's and its regular payers' addresses come back
    in every page."""
    try:
        return Address.parse(text)
    except InvalidAddress:
        return None


def match_transaction(
    wallet: Address,
    pending: Mapping[int, PendingPayment],
    used_hashes: AbstractSet[str],
    tx: Transaction,
) -> Decision:
    """The decision for one transaction of ``wallet``'s account (see the module's rules).

    ``pending`` maps payment ids to the payments being tracked (any status);
    ``used_hashes`` holds the transaction hashes already recorded against a payment.
    Pure: the same arguments always give the same decision.
    """

    def ignore(reason: IgnoreReason, detail: str, payment_id: int | None = None) -> Ignore:
        return Ignore(
            reason=reason, detail=detail, tx_hash=tx.hash, lt=tx.lt, payment_id=payment_id
        )

    # 6. Idempotency first: a recorded hash is never looked at again.
    if tx.hash in used_hashes:
        return ignore(IgnoreReason.ALREADY_USED, "transaction hash already recorded")

    # 1. An incoming internal message, from someone, to our wallet.
    msg = tx.in_msg
    if msg is None:
        return ignore(IgnoreReason.NOT_INCOMING_INTERNAL, "no incoming message")
    if msg.msg_type != INTERNAL_MESSAGE:
        return ignore(
            IgnoreReason.NOT_INCOMING_INTERNAL, f"incoming message is {msg.msg_type!r}, not int_msg"
        )
    if msg.source is None:
        return ignore(IgnoreReason.NOT_INCOMING_INTERNAL, "incoming message has no source")
    if msg.destination is None:
        return ignore(IgnoreReason.NOT_OUR_WALLET, "incoming message has no destination")
    destination = _parse(msg.destination.address)
    if destination is None:
        return ignore(
            IgnoreReason.MALFORMED_ADDRESS,
            f"destination {msg.destination.address!r} is not a TON address",
        )
    if destination != wallet:
        return ignore(
            IgnoreReason.NOT_OUR_WALLET,
            f"destination {destination.to_raw()} is not our wallet {wallet.to_raw()}",
        )
    if tx.account is not None and _parse(tx.account.address) != wallet:
        return ignore(IgnoreReason.NOT_OUR_WALLET, f"transaction of account {tx.account.address!r}")
    payer = _parse(msg.source.address)
    if payer is None:
        return ignore(
            IgnoreReason.MALFORMED_ADDRESS, f"source {msg.source.address!r} is not a TON address"
        )

    # 2. Success only.
    if not tx.success:
        return ignore(IgnoreReason.FAILED, "transaction success is false")
    if tx.aborted:
        return ignore(IgnoreReason.ABORTED, "transaction was aborted")
    if msg.bounced:
        return ignore(IgnoreReason.BOUNCED, "incoming message is a bounce")
    if tx.out_msgs:
        return ignore(
            IgnoreReason.HAS_OUT_MESSAGES, f"transaction sent {len(tx.out_msgs)} message(s) out"
        )
    if tx.compute_phase is not None and tx.compute_phase.skipped:
        return ignore(
            IgnoreReason.COMPUTE_SKIPPED,
            f"compute phase skipped ({tx.compute_phase.skip_reason or 'no reason given'})",
        )

    # 3. TON with a plain text comment only.
    why_not = _not_text_comment(msg)
    if why_not is not None:
        return ignore(IgnoreReason.NOT_TEXT_COMMENT, why_not)
    comment = msg.body_text
    if comment is None or (msg.decoded_op_name is None and msg.op_code is None):
        return ignore(IgnoreReason.NO_COMMENT, "no text comment")

    # 4. Exactly our memo, for a payment we track.
    payment_id = payment_id_from_comment(comment)
    if payment_id is None:
        return ignore(IgnoreReason.MEMO_MISMATCH, f"comment {comment[:64]!r} is not an i3lani memo")
    payment = pending.get(payment_id)
    if payment is None:
        return ignore(IgnoreReason.UNKNOWN_PAYMENT, f"no tracked payment {payment_id}", payment_id)
    if payment.status is PaymentStatus.CONFIRMED:
        return ignore(
            IgnoreReason.ALREADY_CONFIRMED,
            f"payment {payment_id} is already confirmed; {msg.value} nanotons from "
            f"{payer.to_raw()} are owed back (a refund is due)",
            payment_id,
        )

    # 7. In time, judged by the chain's time, not ours.
    paid_at = datetime.fromtimestamp(tx.utime, UTC)
    payer_raw = payer.to_raw()
    if payment.status is PaymentStatus.EXPIRED or paid_at > payment.expires_at:
        return Late(
            payment_id=payment_id,
            tx_hash=tx.hash,
            lt=tx.lt,
            amount=msg.value,
            expected=payment.expected_nanotons,
            payer_raw=payer_raw,
            paid_at=paid_at,
            expires_at=payment.expires_at,
        )

    # 5. Integer nanotons: at least the expected amount confirms.
    if msg.value < payment.expected_nanotons:
        return Underpaid(
            payment_id=payment_id,
            tx_hash=tx.hash,
            lt=tx.lt,
            amount=msg.value,
            expected=payment.expected_nanotons,
            payer_raw=payer_raw,
            paid_at=paid_at,
        )
    return Confirm(
        payment_id=payment_id,
        tx_hash=tx.hash,
        lt=tx.lt,
        amount=msg.value,
        payer_raw=payer_raw,
        overpaid=msg.value - payment.expected_nanotons,
        paid_at=paid_at,
    )


def match_all(
    wallet: Address,
    pending: Mapping[int, PendingPayment],
    used_hashes: AbstractSet[str],
    transactions: Iterable[Transaction],
) -> list[Decision]:
    """One decision per transaction of a page, in ``(lt, hash)`` order, whatever order it came in.

    Within the page, as if each decision had been recorded before the next is made: a hash seen
    twice is decided once (the repeat is ``DUPLICATE_IN_PAGE``), a recorded hash is used, and a
    confirmed payment is confirmed (so a second transfer for it is ``ALREADY_CONFIRMED``).
    The arguments are not modified.
    """
    state = dict(pending)
    used = set(used_hashes)
    seen: set[str] = set()
    decisions: list[Decision] = []
    for tx in sorted(transactions, key=lambda t: (t.lt, t.hash)):
        if tx.hash in seen:
            decisions.append(
                Ignore(
                    reason=IgnoreReason.DUPLICATE_IN_PAGE,
                    detail="transaction appears twice in this page",
                    tx_hash=tx.hash,
                    lt=tx.lt,
                )
            )
            continue
        seen.add(tx.hash)
        decision = match_transaction(wallet, state, used, tx)
        if not isinstance(decision, Ignore):
            used.add(decision.tx_hash)
        if isinstance(decision, Confirm):
            state[decision.payment_id] = msgspec.structs.replace(
                state[decision.payment_id], status=PaymentStatus.CONFIRMED
            )
        decisions.append(decision)
    return decisions


def decision_event(
    decision: Decision, *, detected_at: datetime
) -> PaymentConfirmed | PaymentUnderpaid | LatePaymentReceived | None:
    """The event that records ``decision`` (``None`` for :class:`Ignore`).

    ``detected_at`` is when the monitor decided (its clock); it becomes ``confirmed_at`` or
    ``detected_at`` in the event.
    """
    match decision:
        case Confirm():
            return PaymentConfirmed(
                payment_id=decision.payment_id,
                tx_hash=decision.tx_hash,
                lt=decision.lt,
                amount_nanotons=decision.amount,
                payer=decision.payer_raw,
                confirmed_at=detected_at,
                overpaid_nanotons=decision.overpaid,
            )
        case Underpaid():
            return PaymentUnderpaid(
                payment_id=decision.payment_id,
                tx_hash=decision.tx_hash,
                lt=decision.lt,
                amount_nanotons=decision.amount,
                expected_nanotons=decision.expected,
                payer=decision.payer_raw,
                detected_at=detected_at,
            )
        case Late():
            return LatePaymentReceived(
                payment_id=decision.payment_id,
                tx_hash=decision.tx_hash,
                lt=decision.lt,
                amount_nanotons=decision.amount,
                payer=decision.payer_raw,
                detected_at=detected_at,
            )
        case Ignore():
            return None
