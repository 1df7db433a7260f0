"""The audit's books of the wallet: each transfer recorded once, its nanotons accounted for,
and every amount owed back followed to its end (part of ``i3lani audit``, :mod:`ops.audit`).

Pure, like the replay it is part of: :class:`TransferBooks` is fed the events of the log in
reading order through its handlers, flags what breaks its checks through the replay's
``flag(check, message, *positions)``, and sums up what it saw (:class:`TransferSummary`).

Checks
------
* ``transfer-recorded-twice``: one ``TransferReceived`` or ``TransferSent`` per transaction
  hash (their ids derive from the hash, so a second one means the log was written around the
  store, or a bug).
* ``transfer-mismatch``: a transfer's parts add up as its category says (``confirmed``: all
  kept; ``overpaid``: kept plus a surplus owed back; ``underpaid``, ``second-payment``,
  ``late``, ``unknown-memo``, ``no-memo``: all owed back; ``ignored``: neither), and the payment
  event of the same transaction (``PaymentConfirmed``, ``PaymentUnderpaid``,
  ``LatePaymentReceived``) names the same payment, amount and category.
* ``refund-mismatch``: each amount owed back has exactly one ``RefundDue`` of that amount, to
  the transfer's sender, and each ``RefundDue`` such a transfer; a refund is marked sent only
  while due, settled (confirmed or not) only for the transaction it was marked with, declined
  only while due; at the end, what was owed equals what is due, awaiting the chain, refunded
  and declined, refund by refund.

Logs written before transfers were recorded hold payment events without transfers: those are
not flagged (there is nothing to compare them with).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec

from actors.ton import format_ton
from events.base import Event
from events.payments import (
    TRANSFER_CATEGORIES,
    LatePaymentReceived,
    PaymentConfirmed,
    PaymentUnderpaid,
    RefundConfirmed,
    RefundDeclined,
    RefundDue,
    RefundSent,
    RefundUnconfirmed,
    TransferReceived,
    TransferSent,
)
from store import RecordedEvent

__all__ = ["TRANSFER_CHECKS", "TransferSummary", "TransferBooks", "summary_rows"]

TRANSFER_CHECKS: Final = {
    "transfer-recorded-twice": "transfers: each transaction recorded once",
    "transfer-mismatch": "transfers: parts add up by category, and agree with the payment's event",
    "refund-mismatch": "transfers: each amount owed back has one refund, followed to its end",
}

Flag = Callable[..., None]
Handler = Callable[[RecordedEvent, int], None]

_PAID: Final = {PaymentConfirmed: "confirmed", PaymentUnderpaid: "underpaid"}
_OWED_WHOLE: Final = frozenset({"underpaid", "second-payment", "late", "unknown-memo", "no-memo"})
_WITH_PAYMENT: Final = frozenset({"confirmed", "overpaid", "underpaid", "second-payment", "late"})


class TransferSummary(msgspec.Struct, kw_only=True):
    """What the books hold: transfers in and out, where their nanotons went, the refunds."""

    received: int = 0
    received_nanotons: int = 0
    kept_nanotons: int = 0  # paid payments
    owed_nanotons: int = 0  # owed back (refunds due, whatever became of them)
    ignored_nanotons: int = 0  # neither: bounced, aborted, not TON...
    categories: dict[str, int] = msgspec.field(default_factory=dict)
    sent: int = 0
    sent_nanotons: int = 0
    refunds: int = 0
    refunds_nanotons: int = 0  # owed by every RefundDue (equals owed_nanotons when clean)
    refunds_due: int = 0  # still due
    refunds_sent: int = 0  # marked, awaiting the chain
    refunds_refunded: int = 0
    refunded_nanotons: int = 0  # what the confirmed transactions sent
    refunds_declined: int = 0
    refunds_declined_nanotons: int = 0


class _Refund(msgspec.Struct, gc=False):
    amount: int
    to: str
    status: str  # due, sent, refunded, declined
    position: int
    tx_hash: str = ""  # the transaction it was marked with
    matched: bool = False  # its transfer was seen


class _Transfer(msgspec.Struct, gc=False):
    """A transfer owing money, or a payment event, seen first; the other side checks it."""

    category: str
    payment_id: int
    amount: int
    position: int


class TransferBooks:
    """The audit's fold of transfers and refunds (see the module docstring)."""

    def __init__(self, flag: Flag) -> None:
        self.flag = flag
        self.recorded: dict[str, int] = {}  # tx hash -> position of its record
        self.transfers: dict[str, _Transfer] = {}  # tx hash -> recorded transfer (paid ones)
        self.payment_events: dict[str, _Transfer] = {}  # tx hash -> payment event, unmatched
        self.owed: dict[str, tuple[int, str, int]] = {}  # hash -> (amount, to, position)
        self.refunds: dict[str, _Refund] = {}
        self.totals = TransferSummary()

    def handlers(self) -> dict[type[Event], Handler]:
        return {
            TransferReceived: self._received,
            TransferSent: self._sent,
            PaymentConfirmed: self._payment_event,
            PaymentUnderpaid: self._payment_event,
            LatePaymentReceived: self._payment_event,
            RefundDue: self._refund_due,
            RefundSent: self._refund_step,
            RefundConfirmed: self._refund_step,
            RefundUnconfirmed: self._refund_step,
            RefundDeclined: self._refund_step,
        }

    # -- transfers ------------------------------------------------------------------------------
    def _once(self, tx_hash: str, position: int) -> bool:
        first = self.recorded.get(tx_hash)
        if first is not None:
            self.flag(
                "transfer-recorded-twice",
                f"transaction {tx_hash} recorded at #{first} and again at #{position}",
                first,
                position,
            )
            return False
        self.recorded[tx_hash] = position
        return True

    def _received(self, recorded: RecordedEvent, position: int) -> None:
        event = recorded.event
        assert isinstance(event, TransferReceived)
        if not self._once(event.tx_hash, position):
            return
        t = self.totals
        t.received += 1
        t.received_nanotons += event.amount_nanotons
        t.kept_nanotons += event.kept_nanotons
        t.owed_nanotons += event.refund_nanotons
        t.ignored_nanotons += event.amount_nanotons - event.kept_nanotons - event.refund_nanotons
        t.categories[event.category] = t.categories.get(event.category, 0) + 1
        problem = _parts_problem(event)
        if problem is not None:
            self.flag(
                "transfer-mismatch",
                f"transaction {event.tx_hash} ({event.category}, "
                f"{format_ton(event.amount_nanotons)} TON) at #{position}: {problem}",
                position,
            )
        if event.refund_nanotons:
            self.owed[event.tx_hash] = (event.refund_nanotons, event.payer, position)
            self._match_refund(event.tx_hash)
        if event.category in ("confirmed", "overpaid", "underpaid", "late"):
            mine = _Transfer(
                "confirmed" if event.category == "overpaid" else event.category,
                event.payment_id or 0,
                event.amount_nanotons,
                position,
            )
            other = self.payment_events.pop(event.tx_hash, None)
            if other is None:
                self.transfers[event.tx_hash] = mine
            else:
                self._compare(event.tx_hash, mine, other)

    def _sent(self, recorded: RecordedEvent, position: int) -> None:
        event = recorded.event
        assert isinstance(event, TransferSent)
        if self._once(event.tx_hash, position):
            self.totals.sent += 1
            self.totals.sent_nanotons += sum(m.amount_nanotons for m in event.messages)

    def _payment_event(self, recorded: RecordedEvent, position: int) -> None:
        event = recorded.event
        assert isinstance(event, PaymentConfirmed | PaymentUnderpaid | LatePaymentReceived)
        category = _PAID.get(type(event), "late")
        theirs = _Transfer(category, event.payment_id, event.amount_nanotons, position)
        mine = self.transfers.pop(event.tx_hash, None)
        if mine is None:
            self.payment_events[event.tx_hash] = theirs  # a legacy log, or the transfer follows
        else:
            self._compare(event.tx_hash, mine, theirs)

    def _compare(self, tx_hash: str, transfer: _Transfer, payment: _Transfer) -> None:
        if (transfer.category, transfer.payment_id, transfer.amount) == (
            payment.category,
            payment.payment_id,
            payment.amount,
        ):
            return
        self.flag(
            "transfer-mismatch",
            f"transaction {tx_hash}: recorded as {transfer.category} of payment "
            f"{transfer.payment_id} for {format_ton(transfer.amount)} TON (#{transfer.position}), "
            f"but its payment event says {payment.category} of payment {payment.payment_id} for "
            f"{format_ton(payment.amount)} TON (#{payment.position})",
            transfer.position,
            payment.position,
        )

    # -- refunds --------------------------------------------------------------------------------
    def _refund_due(self, recorded: RecordedEvent, position: int) -> None:
        event = recorded.event
        assert isinstance(event, RefundDue)
        if event.refund_id in self.refunds:
            first = self.refunds[event.refund_id].position
            self.flag(
                "refund-mismatch",
                f"refund {event.refund_id} due at #{first} and again at #{position}",
                first,
                position,
            )
            return
        self.refunds[event.refund_id] = _Refund(event.amount_nanotons, event.to, "due", position)
        self.totals.refunds += 1
        self.totals.refunds_nanotons += event.amount_nanotons
        self._match_refund(event.refund_id)

    def _match_refund(self, tx_hash: str) -> None:
        """A transfer owing money and its refund, once both are seen: the same amount, to
        the transfer's sender. What stays unmatched is flagged by :meth:`finish`."""
        refund = self.refunds.get(tx_hash)
        if tx_hash not in self.owed or refund is None:
            return
        amount, payer, at = self.owed.pop(tx_hash)
        refund.matched = True
        if (amount, payer) != (refund.amount, refund.to):
            self.flag(
                "refund-mismatch",
                f"transfer {tx_hash} owes {format_ton(amount)} TON to {payer} (#{at}); its "
                f"refund is {format_ton(refund.amount)} TON to {refund.to} (#{refund.position})",
                at,
                refund.position,
            )

    def _refund_step(self, recorded: RecordedEvent, position: int) -> None:
        event = recorded.event
        assert isinstance(event, RefundSent | RefundConfirmed | RefundUnconfirmed | RefundDeclined)
        refund = self.refunds.get(event.refund_id)
        kind = type(event).__name__
        if refund is None:
            self.flag(
                "refund-mismatch",
                f"{kind} at #{position} for refund {event.refund_id}, which was never due",
                position,
            )
            return
        allowed = {
            RefundSent: ("due", "sent"),
            RefundConfirmed: ("sent", "refunded"),
            RefundUnconfirmed: ("sent", "due"),
            RefundDeclined: ("due", "declined"),
        }[type(event)]
        if refund.status != allowed[0]:
            self.flag(
                "refund-mismatch",
                f"{kind} at #{position} for refund {event.refund_id}, which was {refund.status} "
                f"(#{refund.position}), not {allowed[0]}",
                refund.position,
                position,
            )
            return
        if (
            isinstance(event, RefundConfirmed | RefundUnconfirmed)
            and event.tx_hash != refund.tx_hash
        ):
            self.flag(
                "refund-mismatch",
                f"{kind} at #{position} settles refund {event.refund_id} with transaction "
                f"{event.tx_hash}, but it was marked with {refund.tx_hash} (#{refund.position})",
                refund.position,
                position,
            )
            return
        refund.status, refund.position = allowed[1], position
        if isinstance(event, RefundSent):
            refund.tx_hash = event.tx_hash
        elif isinstance(event, RefundConfirmed):
            self.totals.refunded_nanotons += event.amount_nanotons

    def finish(self) -> None:
        """The log ended: what is owed has its refund and each refund its transfer."""
        for tx_hash, (amount, payer, at) in self.owed.items():
            if tx_hash not in self.refunds:
                self.flag(
                    "refund-mismatch",
                    f"transfer {tx_hash} owes {format_ton(amount)} TON to {payer} (#{at}) and no "
                    "refund is due for it",
                    at,
                )
        for refund_id, refund in self.refunds.items():
            if not refund.matched:
                self.flag(
                    "refund-mismatch",
                    f"refund {refund_id} (#{refund.position}) is due for a transfer that owes "
                    "nothing",
                    refund.position,
                )

    def summary(self) -> TransferSummary:
        t = msgspec.structs.replace(self.totals, categories=dict(self.totals.categories))
        for refund in self.refunds.values():
            match refund.status:
                case "due":
                    t.refunds_due += 1
                case "sent":
                    t.refunds_sent += 1
                case "refunded":
                    t.refunds_refunded += 1
                case _:
                    t.refunds_declined += 1
                    t.refunds_declined_nanotons += refund.amount
        return t


def _parts_problem(event: TransferReceived) -> str | None:
    """Why a transfer's parts do not add up as its category says; None when they do."""
    amount, kept, refund = event.amount_nanotons, event.kept_nanotons, event.refund_nanotons
    category = event.category
    if category in _WITH_PAYMENT and event.payment_id is None:
        return "names no payment"
    if category == "confirmed" and (kept, refund) != (amount, 0):
        return f"kept {format_ton(kept)} and owed {format_ton(refund)}: all of it should be kept"
    if category == "overpaid" and (refund == 0 or kept + refund != amount):
        return f"kept {format_ton(kept)} plus owed {format_ton(refund)} is not the whole amount"
    if category in _OWED_WHOLE and (kept, refund) != (0, amount):
        return f"kept {format_ton(kept)} and owed {format_ton(refund)}: all of it is owed back"
    if category == "ignored" and (kept or refund):
        return f"kept {format_ton(kept)} and owed {format_ton(refund)}: nothing should be"
    return None


def summary_rows(t: TransferSummary) -> list[tuple[str, str]]:
    """The books in the audit's summary table."""
    by_category = ", ".join(
        f"{t.categories[c]} {c}" for c in TRANSFER_CATEGORIES if t.categories.get(c)
    )
    return [
        ("transfers received", f"{t.received} ({by_category or 'none'})"),
        ("  in all", f"{format_ton(t.received_nanotons)} TON"),
        ("  paid payments", f"{format_ton(t.kept_nanotons)} TON"),
        ("  owed back", f"{format_ton(t.owed_nanotons)} TON"),
        ("  ignored (bounced...)", f"{format_ton(t.ignored_nanotons)} TON"),
        ("transfers sent", f"{t.sent} ({format_ton(t.sent_nanotons)} TON)"),
        (
            "refunds",
            f"{t.refunds} ({format_ton(t.refunds_nanotons)} TON): {t.refunds_due} due, "
            f"{t.refunds_sent} awaiting the chain, {t.refunds_refunded} refunded "
            f"({format_ton(t.refunded_nanotons)} TON sent), {t.refunds_declined} declined "
            f"({format_ton(t.refunds_declined_nanotons)} TON)",
        ),
    ]
