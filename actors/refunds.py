"""Refunds: the money incoming transfers left owing, and the operator's path to settle it.

A refund lives in its stream ``payment-refund-<tx hash>`` (its id is the hash of the transfer
that left money owing) and moves through these states (:class:`RefundStatus`)::

    DUE ──mark refunded (operator)──> SENT ──the scans find the transaction──> REFUNDED
     │                                  └──────it does not show the refund───> DUE
     └──decline (operator)──> DECLINED

The worker never holds keys and never sends TON: the wallet's owner sends the refund (from any
wallet app), then marks it refunded with the transaction's hash (``i3lani refunds
mark-refunded``, ``POST /api/refunds/{id}/refunded``); the PaymentMonitor records the
wallet's outgoing transactions and confirms the mark when that transaction sent the refund's
address the money (``RefundConfirmed``), or says why not (``RefundUnconfirmed``: the refund is
due again). Declining records who and why. Every operator action carries who asked
(``requested_by``: ``cli:<user>@<host>``, ``api:<address>``), as operator commands do.

:func:`fold_refund` and the ``check_*`` functions are pure; :func:`list_refunds`,
:func:`mark_refunded` and :func:`decline` read and append (PostgreSQL). Bad input (an unknown
or ambiguous refund id, a malformed hash, marking twice, a hash the wallet received or that
another refund names) raises a one-line error and appends nothing.

Errors::

    I3laniError
    └── RefundError                 a refund action refused; nothing was appended
        ├── UnknownRefund           no refund (or more than one) has that id    (also ValueError)
        └── RefundRefused           the refund's state, or the transaction, rules it out
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Final, TypeVar

import msgspec

from actors.payment_monitor import payment_event_id
from events import EventMetadata, environment
from events.errors import ConcurrencyConflict, I3laniError, InvalidEvent
from events.payments import (
    RefundConfirmed,
    RefundDeclined,
    RefundDue,
    RefundSent,
    RefundUnconfirmed,
    TransferReceived,
    TransferSent,
)
from store import EventStore, RecordedEvent, views

__all__ = [
    "RefundStatus",
    "Refund",
    "RefundTotals",
    "RefundError",
    "UnknownRefund",
    "RefundRefused",
    "REFUND_EVENTS",
    "MIN_ID_PREFIX",
    "NOTE_MAX",
    "fold_refund",
    "totals",
    "owed_for",
    "parse_tx_hash",
    "check_id",
    "check_reason",
    "find",
    "check_mark",
    "check_decline",
    "list_refunds",
    "mark_refunded",
    "decline",
]

MIN_ID_PREFIX: Final = 8
"""Hex digits of a refund id an operator must type at least (the list shows 12)."""
NOTE_MAX: Final = 200
"""Characters of a note or a reason kept."""
REFUND_EVENTS: Final = (RefundDue, RefundSent, RefundConfirmed, RefundUnconfirmed, RefundDeclined)
_HASH: Final = re.compile(r"[0-9a-fA-F]{64}")
_HEX: Final = re.compile(r"[0-9a-fA-F]+")


class RefundStatus(StrEnum):
    """Where a refund stands."""

    DUE = "due"  # owed: an operator sends it from the wallet and marks it, or declines it
    SENT = "sent"  # marked refunded with a transaction; the scans have not confirmed it yet
    REFUNDED = "refunded"  # the wallet's transaction sent the refund's address the money
    DECLINED = "declined"  # an operator decided not to send it back (reason recorded)


class Refund(msgspec.Struct, kw_only=True):
    """One refund, folded from its stream (:func:`fold_refund`)."""

    refund_id: str
    stream: str
    status: RefundStatus
    wallet: str
    to: str
    amount_nanotons: int
    category: str
    payment_id: int | None
    due_at: datetime
    version: int
    position: int  # of its newest event
    tx_hash: str | None = None  # the outgoing transaction named (SENT, REFUNDED)
    marked_by: str | None = None
    marked_at: datetime | None = None
    note: str = ""
    refunded_nanotons: int | None = None
    confirmed_at: datetime | None = None
    declined_by: str | None = None
    declined_at: datetime | None = None
    reason: str = ""  # why declined
    problem: str = ""  # why the last mark was not confirmed

    @property
    def open(self) -> bool:
        return self.status in (RefundStatus.DUE, RefundStatus.SENT)


class RefundTotals(msgspec.Struct, frozen=True, kw_only=True):
    """Counts and amounts per status (amounts: what is owed, per refund)."""

    due: int = 0
    due_nanotons: int = 0
    sent: int = 0
    sent_nanotons: int = 0
    refunded: int = 0
    refunded_nanotons: int = 0  # what the confirmed transactions sent
    declined: int = 0
    declined_nanotons: int = 0


def fold_refund(events: Sequence[RecordedEvent]) -> Refund | None:
    """A ``payment-refund-<hash>`` stream's events folded; None without a ``RefundDue``. Pure."""
    refund: Refund | None = None
    for recorded in events:
        event = recorded.event
        if isinstance(event, RefundDue):
            refund = Refund(
                refund_id=event.refund_id,
                stream=recorded.stream,
                status=RefundStatus.DUE,
                wallet=event.wallet,
                to=event.to,
                amount_nanotons=event.amount_nanotons,
                category=event.category,
                payment_id=event.payment_id,
                due_at=event.due_at,
                version=recorded.version,
                position=recorded.position,
            )
            continue
        if refund is None or not isinstance(event, REFUND_EVENTS):
            continue
        refund.version, refund.position = recorded.version, recorded.position
        match event:
            case RefundSent():
                refund.status = RefundStatus.SENT
                refund.tx_hash, refund.note = event.tx_hash, event.note
                refund.marked_by, refund.marked_at = event.requested_by, event.requested_at
            case RefundConfirmed():
                refund.status = RefundStatus.REFUNDED
                refund.refunded_nanotons = event.amount_nanotons
                refund.confirmed_at = event.confirmed_at
            case RefundUnconfirmed():
                refund.status, refund.problem, refund.tx_hash = RefundStatus.DUE, event.reason, None
            case RefundDeclined():
                refund.status, refund.reason = RefundStatus.DECLINED, event.reason
                refund.declined_by, refund.declined_at = event.requested_by, event.requested_at
    return refund


def owed_for(category: str, payment_id: int | None) -> str:
    """Why the money is owed, in words: ``second payment of payment 4``. Pure."""
    payment = f"payment {payment_id}" if payment_id is not None else "a payment"
    return {
        "overpaid": f"surplus over {payment}'s price",
        "underpaid": f"underpayment of {payment} (not confirmed)",
        "second-payment": f"second payment of {payment}, already paid",
        "late": f"{payment} paid after it expired",
        "unknown-memo": "a memo naming no payment",
        "no-memo": "a transfer without a memo",
    }.get(category, category)


def totals(refunds: Sequence[Refund]) -> RefundTotals:
    """Counts and amounts per status. Pure."""
    counts: dict[str, int] = {}
    for refund in refunds:
        status = str(refund.status)
        counts[status] = counts.get(status, 0) + 1
        amount = refund.amount_nanotons
        if refund.status is RefundStatus.REFUNDED:
            amount = refund.refunded_nanotons or 0
        counts[f"{status}_nanotons"] = counts.get(f"{status}_nanotons", 0) + amount
    return RefundTotals(**counts)


# -- the operator's input, checked (pure) -------------------------------------------------------
class RefundError(I3laniError):
    """A refund action was refused: one line saying why; nothing was appended."""


class UnknownRefund(RefundError, ValueError):
    """No refund has that id, or more than one starts with it."""


class RefundRefused(RefundError):
    """The refund's state, or the transaction named, rules the action out."""


def parse_tx_hash(text: str) -> str:
    """A transaction hash as typed (64 hex digits, any case, surrounding blanks) in lowercase;
    ValueError naming what is wrong otherwise."""
    cleaned = text.strip()
    if not _HASH.fullmatch(cleaned):
        shown = cleaned[:80] + ("..." if len(cleaned) > 80 else "")
        raise ValueError(
            f"a transaction hash is 64 hexadecimal digits (as TonAPI and explorers show it), "
            f"got {shown!r} ({len(cleaned)} characters)"
        )
    return cleaned.lower()


def check_id(text: str) -> str:
    """A refund id or its first :data:`MIN_ID_PREFIX`+ hex digits, lowercase; ValueError."""
    cleaned = text.strip().lower()
    if not _HEX.fullmatch(cleaned) or not MIN_ID_PREFIX <= len(cleaned) <= 64:
        raise ValueError(
            f"a refund id is the hash of the transfer it refunds, or its first "
            f"{MIN_ID_PREFIX} or more hex digits (`i3lani refunds` lists them), got "
            f"{text.strip()[:80]!r}"
        )
    return cleaned


def check_reason(text: str, what: str = "reason") -> str:
    """A reason or note: one line, at most :data:`NOTE_MAX` characters; ValueError."""
    cleaned = " ".join(text.split())
    if len(cleaned) > NOTE_MAX:
        raise ValueError(f"the {what} has {len(cleaned)} characters; keep it to {NOTE_MAX}")
    return cleaned


def find(refunds: Sequence[Refund], prefix: str) -> Refund:
    """The one refund whose id starts with ``prefix`` (checked by :func:`check_id`)."""
    found = [r for r in refunds if r.refund_id.startswith(prefix)]
    if not found:
        raise UnknownRefund(f"no refund {prefix}: `i3lani refunds --all` lists every refund")
    if len(found) > 1:
        raise UnknownRefund(
            f"{len(found)} refunds start with {prefix}: give more of the id "
            f"({', '.join(r.refund_id[:16] for r in found[:3])}...)"
        )
    return found[0]


def _state_refusal(refund: Refund, action: str) -> RefundRefused:
    short = refund.refund_id[:12]
    match refund.status:
        case RefundStatus.SENT:
            why = (
                f"is already marked refunded with transaction {refund.tx_hash} by "
                f"{refund.marked_by}, waiting for the wallet scans to confirm it"
            )
        case RefundStatus.REFUNDED:
            why = f"was refunded already (transaction {refund.tx_hash}, confirmed on chain)"
        case _:
            why = f"was declined by {refund.declined_by}: {refund.reason}"
    return RefundRefused(f"cannot {action} refund {short}: it {why}; nothing changed")


def check_mark(
    refund: Refund,
    tx_hash: str,
    *,
    refunds: Sequence[Refund],
    received: TransferReceived | None,
    sent: TransferSent | None,
) -> None:
    """Whether ``refund`` may be marked refunded by ``tx_hash`` (RefundRefused if not). Pure.

    ``received`` / ``sent``: what the log records for that transaction, if anything."""
    if refund.status is not RefundStatus.DUE:
        raise _state_refusal(refund, "mark refunded")
    short = refund.refund_id[:12]
    if received is not None or tx_hash == refund.refund_id:
        raise RefundRefused(
            f"transaction {tx_hash} is a transfer the wallet received, not the refund it sent; "
            f"give the hash of the outgoing transfer to {refund.to}"
        )
    other = next(
        (r for r in refunds if r.refund_id != refund.refund_id and r.tx_hash == tx_hash), None
    )
    if other is not None:
        raise RefundRefused(
            f"transaction {tx_hash} already marks refund {other.refund_id[:12]} ({other.status})"
        )
    if sent is not None and not any(m.destination == refund.to for m in sent.messages):
        to = ", ".join(sorted({m.destination for m in sent.messages})) or "nobody"
        raise RefundRefused(
            f"transaction {tx_hash} sent nothing to {refund.to}, whom refund {short} is owed "
            f"(it sent to {to})"
        )


def check_decline(refund: Refund) -> None:
    """Whether ``refund`` may be declined (RefundRefused if not). Pure."""
    if refund.status is not RefundStatus.DUE:
        raise _state_refusal(refund, "decline")


# -- I/O ----------------------------------------------------------------------------------------
_TYPES: Final = tuple(cls.__struct_config__.tag for cls in REFUND_EVENTS)


async def list_refunds(store: EventStore) -> list[Refund]:
    """Every refund, oldest first."""
    found = await views.streams_with_types(store, [str(t) for t in _TYPES])
    refunds = []
    for stream in found:
        refund = fold_refund(await store.read_stream(stream.stream, skip_unknown=True))
        if refund is not None:
            refunds.append(refund)
    return refunds


E = TypeVar("E", TransferReceived, TransferSent)


def _as(recorded: RecordedEvent | None, kind: type[E]) -> E | None:
    return recorded.event if recorded is not None and isinstance(recorded.event, kind) else None


async def _append(store: EventStore, refund: Refund, event: RefundSent | RefundDeclined) -> Refund:
    try:
        await store.append(
            refund.stream,
            [event],
            expected_version=refund.version,
            metadata=EventMetadata(caused_by=event.requested_by),
        )
    except ConcurrencyConflict:
        raise RefundRefused(
            f"refund {refund.refund_id[:12]} changed while this was decided (another operator, "
            "or a wallet scan); nothing changed: look at it again with `i3lani refunds`"
        ) from None
    except InvalidEvent as exc:  # a note the log cannot hold
        raise ValueError(f"cannot record that: {exc}") from None
    after = fold_refund(await store.read_stream(refund.stream, skip_unknown=True))
    assert after is not None
    return after


async def mark_refunded(
    store: EventStore, refund_id: str, tx_hash: str, *, requested_by: str, note: str = ""
) -> Refund:
    """Mark the refund whose id starts with ``refund_id`` refunded by the wallet's transaction
    ``tx_hash``; the refund as it now stands. Raises ValueError (malformed input) or
    :class:`RefundError`, appending nothing."""
    prefix, tx, note = check_id(refund_id), parse_tx_hash(tx_hash), check_reason(note, "note")
    refunds = await list_refunds(store)
    refund = find(refunds, prefix)
    received = await store.read_event(payment_event_id("TransferReceived", tx), skip_unknown=True)
    sent = await store.read_event(payment_event_id("TransferSent", tx), skip_unknown=True)
    check_mark(
        refund,
        tx,
        refunds=refunds,
        received=_as(received, TransferReceived),
        sent=_as(sent, TransferSent),
    )
    return await _append(
        store,
        refund,
        RefundSent(
            refund_id=refund.refund_id,
            tx_hash=tx,
            requested_by=requested_by,
            requested_at=environment.now(),
            note=note,
        ),
    )


async def decline(store: EventStore, refund_id: str, reason: str, *, requested_by: str) -> Refund:
    """Decline the refund whose id starts with ``refund_id``, for ``reason`` (required); the
    refund as it now stands. ValueError or :class:`RefundError`, appending nothing."""
    prefix, why = check_id(refund_id), check_reason(reason)
    if not why:
        raise ValueError("say why the refund is declined (--reason): it is recorded with it")
    refund = find(await list_refunds(store), prefix)
    check_decline(refund)
    return await _append(
        store,
        refund,
        RefundDeclined(
            refund_id=refund.refund_id,
            reason=why,
            requested_by=requested_by,
            requested_at=environment.now(),
        ),
    )
