"""Every nanoton a watched wallet sees, for the books: each transfer recorded once, and the
record compared with the chain.

Recording (pure, :func:`transfer_records`)
    After each scan the PaymentMonitor records every transaction of the wallet that moved
    TON, once, in the wallet's stream ``payment-scan-<wallet>``, with an event id derived from
    the transaction hash:

    * an incoming internal message (``in_msg.msg_type == "int_msg"``) is a
      ``TransferReceived`` whatever it matched, in one category (``events.payments.
      TransferCategory``): what paid a payment (``kept_nanotons``), what is owed back
      (``refund_nanotons``, and a ``RefundDue``), or, for an ``ignored`` transfer (bounced,
      aborted, failed, not TON...), neither, with the matching rule's reason code;
    * an outgoing transaction (an external message that made the wallet send internal
      messages: the owner sending TON, a refund) is a ``TransferSent`` with each message's
      destination and amount;
    * anything else (no incoming message, an external message that sent nothing) moved no TON
      and is not recorded.

    A transfer whose memo names a payment the monitor does not know yet is not recorded while
    it holds the scan cursor back (:func:`actors.payment_monitor.scan_cursor`): it is decided
    again once the payment is known, or recorded as ``unknown-memo`` once the cursor passes it.
    Transactions already recorded come back from matching as ``ALREADY_USED`` and are skipped.

Reconciliation (pure :func:`reconcile`, thin :func:`fetch_range`)
    For a range of ``lt`` already scanned, ``(from_lt, to_lt]``, the wallet's transactions as
    TonAPI lists them are compared with the records of that range (:func:`fold_ledger` reads
    them from the wallet's stream). Each is a discrepancy naming its transaction hash:

    * ``missing-from-log``: on chain, a transfer, not recorded;
    * ``not-on-chain``: recorded, but TonAPI does not list it in the range;
    * ``mismatch``: recorded with another ``lt``, amount or direction than the chain shows, or
      in a category the chain rules out (the chain alone decides whether a transfer was
      ignored and why, whether it had no comment, an unknown memo, or a memo naming payment N;
      only a payment's state, which the log holds, tells confirmed from late or second);
    * ``recorded-twice``: one transaction hash recorded by two events.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal, TypeAlias

import msgspec

from actors.payments import (
    INTERNAL_MESSAGE,
    Confirm,
    Decision,
    Ignore,
    IgnoreReason,
    Late,
    Underpaid,
    match_transaction,
)
from actors.ton import Address, InvalidAddress, format_ton
from actors.tonapi import MAX_PAGE_SIZE, TonApiClient
from actors.tonapi_models import Transaction
from events.payments import (
    TRANSFER_CATEGORIES,
    SentMessage,
    TransferCategory,
    TransferReceived,
    TransferSent,
    TransfersReconciled,
    WalletScanned,
)
from events.streams import payment_scan_stream
from store import EventStore, RecordedEvent
from store.memory import MemoryLog

__all__ = [
    "TransferRecord",
    "MEMO_LIMIT",
    "printable",
    "transfer_record",
    "transfer_records",
    "outgoing_messages",
    "LedgerEntry",
    "WalletLedger",
    "fold_ledger",
    "ChainTransfer",
    "chain_transfer",
    "CategoryLine",
    "Discrepancy",
    "Reconciliation",
    "reconcile",
    "fetch_range",
    "scan_stream",
    "read_ledger",
    "reconcile_range",
    "reconcile_wallet",
]

TransferRecord: TypeAlias = TransferReceived | TransferSent
MEMO_LIMIT: Final = 120
"""Characters of a comment kept in a ``TransferReceived``."""

_NOT_RECORDED: Final = frozenset({IgnoreReason.ALREADY_USED, IgnoreReason.DUPLICATE_IN_PAGE})
_OWED_WHOLE: Final[dict[IgnoreReason, TransferCategory]] = {
    IgnoreReason.ALREADY_CONFIRMED: "second-payment",
    IgnoreReason.UNKNOWN_PAYMENT: "unknown-memo",
    IgnoreReason.MEMO_MISMATCH: "unknown-memo",
    IgnoreReason.NO_COMMENT: "no-memo",
}
_MATCHED: Final[frozenset[TransferCategory]] = frozenset(
    {"confirmed", "overpaid", "underpaid", "second-payment", "late"}
)


def printable(text: str, limit: int = MEMO_LIMIT) -> str:
    """``text`` as a log may hold and a terminal may show it: control, format and unpaired
    surrogate characters replaced by U+FFFD, cut to ``limit`` characters. Pure."""
    kept = []
    for char in text[:limit]:
        category = unicodedata.category(char)
        kept.append("\ufffd" if category in ("Cc", "Cf", "Cs", "Co", "Cn") else char)
    return "".join(kept)


def _raw(text: str | None) -> str:
    if text is None:
        return ""
    try:
        return Address.parse(text).to_raw()
    except InvalidAddress:
        return ""


def outgoing_messages(tx: Transaction) -> list[SentMessage] | None:
    """The internal messages an outgoing transaction of the wallet sent (the owner's external
    message made it send them); None when ``tx`` is not such a transaction. Pure."""
    msg = tx.in_msg
    if msg is None or msg.msg_type == INTERNAL_MESSAGE:
        return None
    sent = [
        SentMessage(destination=destination, amount_nanotons=out.value)
        for out in tx.out_msgs
        if out.msg_type == INTERNAL_MESSAGE
        and out.destination is not None
        and (destination := _raw(out.destination.address))
    ]
    return sent or None


def transfer_record(
    wallet: Address, tx: Transaction, decision: Decision, *, detected_at: datetime
) -> TransferRecord | None:
    """The record of ``tx`` given its matching ``decision`` (None: nothing to record). Pure.

    ``decision`` must be :func:`actors.payments.match_transaction`'s for ``tx``.
    """
    received_at = datetime.fromtimestamp(tx.utime, UTC)
    if isinstance(decision, Ignore) and decision.reason in _NOT_RECORDED:
        return None
    msg = tx.in_msg
    if msg is None or msg.msg_type != INTERNAL_MESSAGE:
        messages = outgoing_messages(tx)
        if messages is None:
            return None
        return TransferSent(
            wallet=wallet.to_raw(),
            tx_hash=tx.hash,
            lt=tx.lt,
            sent_at=received_at,
            messages=messages,
            success=tx.success and not tx.aborted,
            detected_at=detected_at,
        )
    amount = msg.value
    kept = refund = 0
    payment_id: int | None = None
    reason = ""
    match decision:
        case Confirm():
            category: TransferCategory = "overpaid" if decision.overpaid else "confirmed"
            kept, refund = amount - decision.overpaid, decision.overpaid
            payment_id = decision.payment_id
        case Underpaid() | Late():
            category = "underpaid" if isinstance(decision, Underpaid) else "late"
            refund, payment_id = amount, decision.payment_id
        case Ignore():
            reason = str(decision.reason)
            owed = _OWED_WHOLE.get(decision.reason)
            if owed is None:
                category = "ignored"
            else:
                category, refund = owed, amount
                if decision.reason is IgnoreReason.ALREADY_CONFIRMED:
                    payment_id = decision.payment_id
    comment = msg.body_text
    return TransferReceived(
        wallet=wallet.to_raw(),
        tx_hash=tx.hash,
        lt=tx.lt,
        received_at=received_at,
        amount_nanotons=amount,
        payer=_raw(msg.source.address if msg.source is not None else None),
        category=category,
        payment_id=payment_id,
        kept_nanotons=kept,
        refund_nanotons=refund,
        reason=reason,
        memo="" if comment is None else printable(comment),
        detected_at=detected_at,
    )


def transfer_records(
    wallet: Address,
    transactions: Sequence[Transaction],
    decisions: Sequence[Decision],
    *,
    detected_at: datetime,
    cursor: int | None,
) -> list[TransferRecord]:
    """What a scan records: one record per transaction that moved TON, in ``lt`` order. Pure.

    ``decisions`` are :func:`actors.payments.match_all`'s for ``transactions``; ``cursor`` is
    where the scan leaves the wallet's cursor (None: nowhere yet). A transfer for a payment not
    known yet above it waits (see the module docstring).
    """
    by_hash = {tx.hash: tx for tx in transactions}
    records: list[TransferRecord] = []
    for decision in decisions:
        tx = by_hash.get(decision.tx_hash)
        if tx is None:
            continue
        if (
            isinstance(decision, Ignore)
            and decision.reason is IgnoreReason.UNKNOWN_PAYMENT
            and (cursor is None or decision.lt > cursor)
        ):
            continue
        record = transfer_record(wallet, tx, decision, detected_at=detected_at)
        if record is not None:
            records.append(record)
    return records


def scan_stream(wallet: Address) -> str:
    """The wallet's stream: ``payment-scan-<wc>_<hash hex>``, its transfers and cursor."""
    return payment_scan_stream(f"{wallet.workchain}_{wallet.hash.hex()}")


# -- the ledger: what the log holds for one wallet --------------------------------------------
Kind = Literal["received", "sent"]


class LedgerEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded transfer, as the reconciliation compares it."""

    tx_hash: str
    lt: int
    kind: Kind
    category: str  # a TransferCategory, or "sent"
    amount_nanotons: int
    payment_id: int | None = None
    reason: str = ""
    position: int = 0


@dataclass(slots=True)
class WalletLedger:
    """A wallet's stream folded: its transfers by hash, its scans and reconciliations."""

    wallet: str
    entries: dict[str, LedgerEntry] = field(default_factory=dict)
    twice: list[tuple[LedgerEntry, LedgerEntry]] = field(default_factory=list)
    scans: list[tuple[int, int, datetime]] = field(default_factory=list)  # (from, to, when)
    cursor: int | None = None
    reconciled_to: int | None = None

    @property
    def start(self) -> int | None:
        """The lower end of the range scanned since transfers were recorded (None: none)."""
        return self.scans[0][0] if self.scans else None

    def cursor_at(self, moment: datetime) -> int | None:
        """Where the cursor stood at ``moment`` (the ledger's start before the first scan)."""
        if not self.scans:
            return None
        before = [to for _, to, when in self.scans if when <= moment]
        return before[-1] if before else self.scans[0][0]

    def entries_in(self, from_lt: int, to_lt: int) -> list[LedgerEntry]:
        return sorted(
            (e for e in self.entries.values() if from_lt < e.lt <= to_lt),
            key=lambda e: (e.lt, e.tx_hash),
        )


def _entry(recorded: RecordedEvent) -> LedgerEntry | None:
    event = recorded.event
    if isinstance(event, TransferReceived):
        return LedgerEntry(
            tx_hash=event.tx_hash,
            lt=event.lt,
            kind="received",
            category=event.category,
            amount_nanotons=event.amount_nanotons,
            payment_id=event.payment_id,
            reason=event.reason,
            position=recorded.position,
        )
    if isinstance(event, TransferSent):
        return LedgerEntry(
            tx_hash=event.tx_hash,
            lt=event.lt,
            kind="sent",
            category="sent",
            amount_nanotons=sum(m.amount_nanotons for m in event.messages),
            position=recorded.position,
        )
    return None


def fold_ledger(wallet: str, events: Iterable[RecordedEvent]) -> WalletLedger:
    """The ledger of ``wallet`` (raw form) from its stream's events, in order. Pure."""
    ledger = WalletLedger(wallet)
    for recorded in events:
        event = recorded.event
        entry = _entry(recorded)
        if entry is not None:
            first = ledger.entries.get(entry.tx_hash)
            if first is None:
                ledger.entries[entry.tx_hash] = entry
            else:
                ledger.twice.append((first, entry))
        elif isinstance(event, WalletScanned):
            ledger.cursor = max(ledger.cursor or 0, event.last_lt)
            if event.from_lt is not None:
                ledger.scans.append((event.from_lt, event.last_lt, event.scanned_at))
        elif isinstance(event, TransfersReconciled):
            ledger.reconciled_to = max(ledger.reconciled_to or 0, event.to_lt)
    return ledger


# -- the chain's side ----------------------------------------------------------------------------
class ChainTransfer(msgspec.Struct, frozen=True, kw_only=True):
    """What the chain alone says of a transaction of the wallet."""

    tx_hash: str
    lt: int
    kind: Kind
    amount_nanotons: int
    reason: IgnoreReason | None = None  # received: the rule a payment-less match stops at
    payment_id: int | None = None  # received: the payment its memo names
    payer: str = ""
    memo: str = ""


def chain_transfer(wallet: Address, tx: Transaction) -> ChainTransfer | None:
    """``tx`` as the reconciliation sees it; None when it moved no TON. Pure.

    An incoming transfer is matched against no payment at all: the rule it stops at is what
    the chain alone decides (``UNKNOWN_PAYMENT`` means a well-formed memo naming a payment).
    """
    msg = tx.in_msg
    if msg is not None and msg.msg_type == INTERNAL_MESSAGE:
        decision = match_transaction(wallet, {}, frozenset(), tx)
        assert isinstance(decision, Ignore)  # with no payment, nothing else can come out
        return ChainTransfer(
            tx_hash=tx.hash,
            lt=tx.lt,
            kind="received",
            amount_nanotons=msg.value,
            reason=decision.reason,
            payment_id=decision.payment_id,
            payer=_raw(msg.source.address if msg.source is not None else None),
            memo=printable(msg.body_text or "", 40),
        )
    messages = outgoing_messages(tx)
    if messages is None:
        return None
    return ChainTransfer(
        tx_hash=tx.hash,
        lt=tx.lt,
        kind="sent",
        amount_nanotons=sum(m.amount_nanotons for m in messages),
    )


def _disagreement(entry: LedgerEntry, chain: ChainTransfer) -> str | None:
    """Why ``entry`` cannot be the record of ``chain``; None when it can."""
    if entry.kind != chain.kind:
        return f"recorded as {entry.kind}, the chain shows it {chain.kind}"
    if entry.lt != chain.lt:
        return f"recorded at lt {entry.lt}, the chain has it at lt {chain.lt}"
    if entry.amount_nanotons != chain.amount_nanotons:
        return (
            f"recorded as {format_ton(entry.amount_nanotons)} TON, the chain shows "
            f"{format_ton(chain.amount_nanotons)} TON"
        )
    if chain.kind == "sent":
        return None
    reason = chain.reason
    if reason is IgnoreReason.UNKNOWN_PAYMENT:
        allowed = entry.category == "unknown-memo" or (
            entry.category in _MATCHED and entry.payment_id == chain.payment_id
        )
        should = f"payment {chain.payment_id}'s or unknown-memo"
    elif reason is IgnoreReason.MEMO_MISMATCH:
        allowed, should = entry.category == "unknown-memo", "unknown-memo"
    elif reason is IgnoreReason.NO_COMMENT:
        allowed, should = entry.category == "no-memo", "no-memo"
    else:
        allowed = entry.category == "ignored" and entry.reason == str(reason)
        should = f"ignored ({reason})"
    if allowed:
        return None
    what = entry.category + (f" (payment {entry.payment_id})" if entry.payment_id else "")
    if entry.category == "ignored":
        what += f" ({entry.reason})"
    return f"recorded as {what}; the chain allows only {should}"


class CategoryLine(msgspec.Struct, frozen=True, kw_only=True):
    """One category of the range: what the log records, and how much of it the chain shows."""

    category: str
    recorded: int
    recorded_nanotons: int
    on_chain: int


class Discrepancy(msgspec.Struct, frozen=True, kw_only=True):
    kind: Literal["missing-from-log", "not-on-chain", "mismatch", "recorded-twice"]
    tx_hash: str
    lt: int
    detail: str


class Reconciliation(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of comparing ``(from_lt, to_lt]`` of ``wallet`` with the chain."""

    wallet: str
    from_lt: int
    to_lt: int
    chain_transactions: int  # every transaction TonAPI listed in the range
    chain_transfers: int  # of which moved TON
    recorded: int
    categories: list[CategoryLine]
    discrepancies: list[Discrepancy]

    @property
    def clean(self) -> bool:
        return not self.discrepancies

    def tx_hashes(self) -> list[str]:
        """The transactions the discrepancies name, each once, in ``lt`` order."""
        return list(dict.fromkeys(d.tx_hash for d in self.discrepancies))


def _chain_text(chain: ChainTransfer) -> str:
    if chain.kind == "sent":
        return f"{format_ton(chain.amount_nanotons)} TON sent"
    memo = f" with memo {chain.memo!r}" if chain.memo else " without a comment"
    return f"{format_ton(chain.amount_nanotons)} TON from {chain.payer or '?'}{memo}"


def reconcile(
    wallet: Address,
    chain: Sequence[Transaction],
    ledger: WalletLedger,
    *,
    from_lt: int,
    to_lt: int,
) -> Reconciliation:
    """Compare ``chain`` (the wallet's transactions TonAPI lists in ``(from_lt, to_lt]``) with
    ``ledger``'s records of that range (see the module docstring). Pure."""
    views = {}
    listed = 0
    for tx in chain:
        if not from_lt < tx.lt <= to_lt or tx.hash in views:
            continue
        listed += 1
        view = chain_transfer(wallet, tx)
        if view is not None:
            views[tx.hash] = view
    entries = ledger.entries_in(from_lt, to_lt)
    found: list[Discrepancy] = []
    matched: dict[str, int] = {}
    for entry in entries:
        view = views.get(entry.tx_hash)
        if view is None:
            found.append(
                Discrepancy(
                    kind="not-on-chain",
                    tx_hash=entry.tx_hash,
                    lt=entry.lt,
                    detail=f"recorded at #{entry.position} as {entry.category}, "
                    f"{format_ton(entry.amount_nanotons)} TON; TonAPI does not list it",
                )
            )
            continue
        why = _disagreement(entry, view)
        if why is not None:
            found.append(
                Discrepancy(
                    kind="mismatch",
                    tx_hash=entry.tx_hash,
                    lt=entry.lt,
                    detail=f"{why} (#{entry.position})",
                )
            )
            continue
        matched[entry.category] = matched.get(entry.category, 0) + 1
    recorded = {e.tx_hash for e in entries}
    found += [
        Discrepancy(
            kind="missing-from-log",
            tx_hash=view.tx_hash,
            lt=view.lt,
            detail=f"{_chain_text(view)}: on chain, not in the log",
        )
        for view in views.values()
        if view.tx_hash not in recorded
    ]
    found += [
        Discrepancy(
            kind="recorded-twice",
            tx_hash=second.tx_hash,
            lt=second.lt,
            detail=f"recorded at #{first.position} and again at #{second.position}",
        )
        for first, second in ledger.twice
        if from_lt < second.lt <= to_lt
    ]
    found.sort(key=lambda d: (d.lt, d.tx_hash, d.kind))
    lines = []
    for category in (*TRANSFER_CATEGORIES, "sent"):
        mine = [e for e in entries if e.category == category]
        if mine or matched.get(category):
            lines.append(
                CategoryLine(
                    category=category,
                    recorded=len(mine),
                    recorded_nanotons=sum(e.amount_nanotons for e in mine),
                    on_chain=matched.get(category, 0),
                )
            )
    return Reconciliation(
        wallet=wallet.to_raw(),
        from_lt=from_lt,
        to_lt=to_lt,
        chain_transactions=listed,
        chain_transfers=len(views),
        recorded=len(entries),
        categories=lines,
        discrepancies=found,
    )


async def fetch_range(
    client: TonApiClient, wallet: str, from_lt: int, to_lt: int
) -> list[Transaction]:
    """The wallet's transactions in ``(from_lt, to_lt]``, as TonAPI lists them (thin I/O).

    Reads ascending pages from ``from_lt`` until past ``to_lt`` or the end of the list; raises
    the client's errors (:class:`~actors.tonapi.TonApiError`, ``TonApiFormatError``).
    """
    found: dict[str, Transaction] = {}
    after = from_lt
    while after < to_lt:
        page = await client.transactions_since(wallet, after, page_size=MAX_PAGE_SIZE)
        if not page:
            break
        for tx in page:
            if tx.lt <= to_lt:
                found.setdefault(tx.hash, tx)
        highest = page[-1].lt
        if highest <= after:
            break
        after = highest
    return sorted(found.values(), key=lambda tx: (tx.lt, tx.hash))


def reconcile_range(
    ledger: WalletLedger, *, since: datetime | None = None, incremental: bool = False
) -> tuple[int, int] | None:
    """The ``(from_lt, to_lt]`` to reconcile, None when nothing was scanned there. Pure.

    Everything scanned since transfers are recorded; with ``since``, what was scanned after
    that moment; ``incremental``: what no reconciliation has covered yet.
    """
    start, cursor = ledger.start, ledger.cursor
    if start is None or cursor is None:
        return None
    low = start
    if incremental and ledger.reconciled_to is not None:
        low = max(low, ledger.reconciled_to)
    elif since is not None:
        low = max(low, ledger.cursor_at(since) or low)
    return (low, cursor) if cursor > low else None


async def read_ledger(store: EventStore | MemoryLog, wallet: Address) -> WalletLedger:
    """The wallet's stream, read a page at a time and folded."""
    stream = scan_stream(wallet)
    events: list[RecordedEvent] = []
    while True:
        page = await store.read_stream(
            stream, after_version=len(events), limit=1000, skip_unknown=True
        )
        events += page
        if len(page) < 1000:
            return fold_ledger(wallet.to_raw(), events)


async def reconcile_wallet(
    store: EventStore | MemoryLog,
    client: TonApiClient,
    wallet: Address,
    *,
    since: datetime | None = None,
    incremental: bool = False,
) -> Reconciliation | None:
    """Reconcile the wallet's scanned range (see :func:`reconcile_range`) with TonAPI; None
    when there is nothing to reconcile. Raises the TonAPI client's errors."""
    ledger = await read_ledger(store, wallet)
    bounds = reconcile_range(ledger, since=since, incremental=incremental)
    if bounds is None:
        return None
    low, high = bounds
    chain = await fetch_range(client, wallet.to_raw(), low, high)
    return reconcile(wallet, chain, ledger, from_lt=low, to_lt=high)
