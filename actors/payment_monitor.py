"""PaymentMonitor: verifies pending TON payments against the wallet's incoming transactions.

Every ``I3LANI_PAYMENT_INTERVAL`` seconds (30 by default), and at once when a
``PaymentCreated`` arrives (bursts are coalesced into one check), the monitor:

1. asks TonAPI for each watched wallet's transactions after its ``lt`` cursor
   (:class:`~actors.tonapi.TonApiClient`, paging until a short page) — thin I/O;
2. hands them to :func:`actors.payments.match_all`, which applies every rule of DOMAIN.md —
   pure;
3. records the outcome (:meth:`PaymentMonitor.decide`, pure): every transfer the scan passed,
   once, whatever it matched (``TransferReceived``, ``TransferSent``: :mod:`actors.transfers`),
   with a ``RefundDue`` for any money owed back; ``PaymentConfirmed`` then
   ``SubscriptionActivated``; ``PaymentUnderpaid``; ``LatePaymentReceived`` for a transfer after
   expiry (kept for review); ``PaymentExpired`` for payments whose window closed; the outcome of
   refunds an operator marked sent, once the wallet's outgoing transaction shows on chain
   (``RefundConfirmed``, or ``RefundUnconfirmed`` when it does not show the refund); and the new
   cursor as ``WalletScanned``, all in one transaction.

Exactly once, concretely: each payment event is appended with the payment stream's exact
expected version *and* an event id derived from what it records (``PaymentConfirmed`` from the
payment id, the others from the transaction hash), so a second writer — a second node during a
deploy overlap, a retry after a crash — gets a conflict or appends nothing; the database's
unique event id is the last word. Transfer records take their id from the transaction hash, a
refund due from the transfer's (with an empty stream expected), a refund's outcome from the
operator's mark it settles. The supervisor's lease fences a stale node's appends. The worker
holds no key and never sends TON: refunds are sent by the wallet's owner.

The fast path: beside its ticks, the monitor holds a TON Streaming API subscription for the
wallets it watches (:mod:`actors.tonapi_stream`, ``I3LANI_TONAPI_STREAM``, on by default). A
notice at the finality configured (``I3LANI_MIN_FINALITY``: ``finalized`` by default,
``confirmed`` if asked, never ``pending``) is only a wake-up: it asks the monitor for a
``CheckPayments``, the same scan from the stored cursor a tick runs, so the REST scan stays the
only source of truth and every decision is made, and made once, the way a tick makes it. The
stream's listener lives and dies with the incarnation (:meth:`PaymentMonitor.background`),
writes nothing itself, and coalesces hints: however many come while a scan runs, one more scan
follows. After every (re)connection it scans once (the stream recovers nothing it missed); a
drop, a stall (silence past ``I3LANI_TONAPI_STREAM_SILENCE``), garbage or a 429 only delay
the hints, with backoff and jitter, while polling goes on at its interval. A notice whose
transaction the scan does not show yet (TonAPI's index a moment behind its stream) is scanned
for again a few times, shortly (:data:`FOLLOW_UPS`).

A TonAPI outage (429, 5xx, timeouts, garbage) is logged and leaves the cursor where it was:
the next tick tries again, the HealthChecker reports TonAPI failing, and nothing crash-loops.
Payments are only expired after a scan that succeeded, so an outage never expires a payment
whose transfer arrived in time. A recent transfer whose memo names a payment the monitor has not
folded yet holds the cursor back for a few minutes (:func:`scan_cursor`), so a payment created
a moment before its transfer is scanned is never skipped.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final

import anyio
import msgspec

from actors.clients import tonapi_client
from actors.config import Settings
from actors.payments import (
    Confirm,
    Decision,
    Ignore,
    IgnoreReason,
    Late,
    PaymentStatus,
    PendingPayment,
    Underpaid,
    decision_event,
    match_all,
)
from actors.runtime import Actor, ActorNotRunning, ActorRunner, Emit, Message, TickSpec
from actors.tasks import (
    PAYMENT_VERIFICATION,
    PaymentVerification,
    serve_tasks,
)
from actors.ton import Address, InvalidAddress
from actors.tonapi import MAX_PAGE_SIZE, TonApiClient, TonApiError, TonApiUnavailable
from actors.tonapi_models import TonApiFormatError, Transaction
from actors.tonapi_stream import StreamNotice, StreamStatus, TonApiStream
from actors.transfers import TransferRecord, scan_stream, transfer_records
from events import (
    Event,
    PaymentConfirmed,
    PaymentCreated,
    PaymentExpired,
    PaymentUnderpaid,
    SubscriptionActivated,
    WalletScanned,
)
from events.payments import (
    LatePaymentReceived,
    RefundConfirmed,
    RefundDeclined,
    RefundDue,
    RefundSent,
    RefundUnconfirmed,
    TransferReceived,
    TransferSent,
)
from events.streams import PAYMENT, payment_refund_stream, payment_stream
from store import NO_STREAM, RecordedEvent
from store.tasks import TaskContext

__all__ = [
    "PaymentMonitor",
    "MonitorState",
    "PaymentView",
    "CheckPayments",
    "ScanResult",
    "SettleRefund",
    "OpenRefund",
    "REFUND_SEARCH_GRACE",
    "payment_event_id",
    "scan_stream",
    "scan_cursor",
]

logger = logging.getLogger(__name__)

_NAMESPACE: Final = uuid.UUID("5b0a6f5e-3c1e-4d5f-9a51-8e2f0c7d6a11")
DEFAULT_PLAN_DAYS: Final = 30
VERIFY_TIMEOUT: Final = 90.0
"""Seconds a payment_verification task waits for its check (the task type allows 120)."""
UNKNOWN_MEMO_GRACE: Final = timedelta(minutes=10)
"""How long a transfer for a payment not known yet holds the scan cursor back."""
REFUND_SEARCH_GRACE: Final = timedelta(minutes=10)
"""A refund marked sent whose transaction the scans have not met once they passed a
transaction this much younger than the mark (chain time against our clock) is unconfirmed."""
FOLLOW_UPS: Final = (0.25, 0.5, 1.0, 2.0)
"""Seconds before each scan again after a stream hint whose transaction the scan did not show
yet (TonAPI's REST index can be a moment behind its stream); then the ticks take over."""


def payment_event_id(*parts: object) -> uuid.UUID:
    """The deterministic id of a payment effect, e.g. ``("PaymentConfirmed", 42)``."""
    return uuid.uuid5(_NAMESPACE, "/".join(str(p) for p in parts))


@dataclass(slots=True)
class PaymentView:
    """One payment as the monitor tracks it."""

    payment_id: int
    user_id: int
    plan: str
    expected_nanotons: int
    wallet: str  # raw form
    expires_at: datetime
    status: PaymentStatus
    version: int  # the payment stream's version, for the next append's expectation

    def pending(self) -> PendingPayment:
        return PendingPayment(
            payment_id=self.payment_id,
            expected_nanotons=self.expected_nanotons,
            expires_at=self.expires_at,
            status=self.status,
        )


@dataclass(slots=True)
class OpenRefund:
    """A refund still due, or marked sent and awaiting its transaction on chain."""

    refund_id: str
    wallet: str  # raw form: the wallet that received the transfer, and sends the refund
    to: str  # raw form
    version: int  # the refund stream's version
    out_tx: str | None = None  # the transaction an operator named, while awaiting it
    marked_at: datetime | None = None


@dataclass(slots=True)
class MonitorState:
    """The fold of the ``payment`` category.

    :meth:`PaymentMonitor.evolve` updates it in place (O(1) per event, whatever the number of
    payments) and returns it: the runner owns the state and applies an event only after it
    was committed, so nothing else ever sees a half-applied state.
    """

    payments: dict[int, PaymentView] = field(default_factory=dict)
    used_hashes: set[str] = field(default_factory=set)  # every transaction already recorded
    cursors: dict[str, int] = field(default_factory=dict)  # wallet (raw) -> last lt scanned
    pending_ids: set[int] = field(default_factory=set)
    sent: dict[str, TransferSent] = field(default_factory=dict)  # outgoing, by tx hash
    refunds: dict[str, OpenRefund] = field(default_factory=dict)  # open ones, by refund id
    awaiting: dict[str, str] = field(default_factory=dict)  # named tx hash -> refund id


class CheckPayments(msgspec.Struct, frozen=True):
    """Check the pending payments now (sent on ``PaymentCreated`` and by operators)."""


class ScanResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one wallet's scan found: the decisions, the transfers to record, the new cursor,
    the scan time, and the chain's time of the newest transaction read (None: none read)."""

    wallet: str  # raw form
    decisions: list[Decision]
    last_lt: int | None
    transactions: int
    scanned_at: datetime
    records: list[TransferRecord] = msgspec.field(default_factory=list)
    chain_time: datetime | None = None


class SettleRefund(msgspec.Struct, frozen=True):
    """A refund was marked sent (at ``at``) with a transaction already recorded: settle it."""

    refund_id: str
    at: datetime


def scan_cursor(
    transactions: Sequence[Transaction], decisions: Sequence[Decision], now: datetime
) -> int | None:
    """The ``lt`` the cursor may move to after a scan (``None``: stay). Pure.

    Normally the last transaction's. But a recent transfer whose memo names a payment the
    monitor does not know yet (its ``PaymentCreated`` may be committed and still on its way to
    the monitor) holds the cursor just before it for :data:`UNKNOWN_MEMO_GRACE`, so that the
    next scan sees it again once the payment is known. Older ones are left behind: no payment
    created later can be paid by an earlier transfer.
    """
    utime = {tx.hash: tx.utime for tx in transactions}
    horizon = (now - UNKNOWN_MEMO_GRACE).timestamp()
    held = [
        d.lt
        for d in decisions
        if isinstance(d, Ignore)
        and d.reason is IgnoreReason.UNKNOWN_PAYMENT
        and utime.get(d.tx_hash, 0) >= horizon
    ]
    limit = min(held) if held else None
    eligible = [tx.lt for tx in transactions if limit is None or tx.lt < limit]
    return max(eligible, default=None)


def _address(text: str) -> Address | None:
    try:
        return Address.parse(text)
    except InvalidAddress:
        return None


class PaymentMonitor(Actor[MonitorState]):
    """Verifies payments through TonAPI (see the module docstring)."""

    name: ClassVar[str] = "PaymentMonitor"
    category: ClassVar[str | None] = PAYMENT
    messages: ClassVar[tuple[type[msgspec.Struct], ...]] = (
        CheckPayments,
        ScanResult,
        SettleRefund,
    )
    io_messages: ClassVar[tuple[type[msgspec.Struct], ...]] = (CheckPayments,)

    def __init__(
        self,
        settings: Settings,
        *,
        tonapi: TonApiClient | None = None,
        stream: bool | None = None,
        stream_status: StreamStatus | None = None,
        stream_options: Mapping[str, Any] | None = None,
    ) -> None:
        """``tonapi``: a client to use instead of one opened from the settings. ``stream``:
        hold the TON Streaming API subscription (at ``settings.tonapi_url``); ``None`` (the
        default) follows ``settings.tonapi_stream`` when the monitor opens its own client and
        is off when a client is given (a test's or a simulation's transport). ``stream_status``
        is shared with the HealthChecker of the process (:mod:`actors.catalog`);
        ``stream_options`` go to :class:`~actors.tonapi_stream.TonApiStream` (backoff...)."""
        self.settings = settings
        self.wallet = settings.wallet_address()
        self.tick = TickSpec(interval=settings.payment_interval, missed="run_once")
        self._given_client = tonapi
        self.client: TonApiClient | None = tonapi
        self.last_error: str | None = None
        self.consecutive_failures = 0
        self.stream_enabled = (
            settings.tonapi_stream if stream is None and tonapi is None else bool(stream)
        )
        self.stream_status = stream_status if stream_status is not None else StreamStatus()
        self._stream_options = dict(stream_options or {})
        self.hints = 0
        """Scans the stream asked for (hints coalesced while a scan ran count once)."""

    def initial_state(self) -> MonitorState:
        return MonitorState()

    async def setup(
        self, stack: contextlib.AsyncExitStack, runner: ActorRunner[MonitorState]
    ) -> None:
        if self._given_client is None:
            self.client = await stack.enter_async_context(
                tonapi_client(self.settings, runner.store)
            )

    # -- pure --------------------------------------------------------------------------------
    def evolve(self, state: MonitorState, recorded: RecordedEvent) -> MonitorState:
        event = recorded.event
        match event:
            case PaymentCreated():
                wallet = _address(event.wallet)
                state.payments[event.payment_id] = PaymentView(
                    payment_id=event.payment_id,
                    user_id=event.user_id,
                    plan=event.plan,
                    expected_nanotons=event.amount_nanotons,
                    wallet=wallet.to_raw() if wallet is not None else event.wallet,
                    expires_at=event.expires_at,
                    status=PaymentStatus.PENDING,
                    version=recorded.version,
                )
                state.pending_ids.add(event.payment_id)
            case PaymentConfirmed():
                state.used_hashes.add(event.tx_hash)
                self._set(state, event.payment_id, recorded.version, PaymentStatus.CONFIRMED)
            case PaymentExpired():
                self._set(state, event.payment_id, recorded.version, PaymentStatus.EXPIRED)
            case PaymentUnderpaid() | LatePaymentReceived():
                state.used_hashes.add(event.tx_hash)
                self._set(state, event.payment_id, recorded.version, None)
            case SubscriptionActivated():
                self._set(state, event.payment_id, recorded.version, None)
            case WalletScanned():
                state.cursors[event.wallet] = max(state.cursors.get(event.wallet, 0), event.last_lt)
            case TransferReceived():
                state.used_hashes.add(event.tx_hash)
            case TransferSent():
                state.used_hashes.add(event.tx_hash)
                state.sent[event.tx_hash] = event
            case _:
                self._evolve_refund(state, recorded)
        return state

    @staticmethod
    def _evolve_refund(state: MonitorState, recorded: RecordedEvent) -> None:
        event = recorded.event
        if isinstance(event, RefundDue):
            state.refunds[event.refund_id] = OpenRefund(
                refund_id=event.refund_id,
                wallet=event.wallet,
                to=event.to,
                version=recorded.version,
            )
            return
        if not isinstance(event, RefundSent | RefundConfirmed | RefundUnconfirmed | RefundDeclined):
            return
        refund = state.refunds.get(event.refund_id)
        if refund is None:
            return
        refund.version = recorded.version
        if refund.out_tx is not None:
            state.awaiting.pop(refund.out_tx, None)
        refund.out_tx = refund.marked_at = None
        if isinstance(event, RefundSent):
            refund.out_tx, refund.marked_at = event.tx_hash, event.requested_at
            state.awaiting[event.tx_hash] = event.refund_id
        elif isinstance(event, RefundConfirmed | RefundDeclined):
            del state.refunds[event.refund_id]  # settled for good: nothing more to watch

    @staticmethod
    def _set(
        state: MonitorState, payment_id: int, version: int, status: PaymentStatus | None
    ) -> None:
        view = state.payments.get(payment_id)
        if view is None:
            return
        view.version = version
        if status is not None:
            view.status = status
            state.pending_ids.discard(payment_id)

    def react(self, state: MonitorState, recorded: RecordedEvent) -> Sequence[Message]:
        event = recorded.event
        if isinstance(event, PaymentCreated):
            return [CheckPayments()]
        if isinstance(event, RefundSent) and event.tx_hash in state.used_hashes:
            return [SettleRefund(event.refund_id, recorded.recorded_at)]
        return ()

    def decide(self, state: MonitorState, message: Message) -> Sequence[Emit]:
        if isinstance(message, SettleRefund):
            refund = state.refunds.get(message.refund_id)
            outcome = None if refund is None else _settle(state, refund, {}, message.at)
            if refund is None or outcome is None:
                return ()
            return [_refund_emit(refund, outcome)]
        if not isinstance(message, ScanResult):
            return ()
        emits: list[Emit] = []
        versions: dict[int, int] = {}
        settled: set[int] = set()
        now = message.scanned_at
        # Every transfer the scan passed, once (a rescan finds them in used_hashes).
        fresh: dict[str, TransferRecord] = {}
        for record in message.records:
            if record.tx_hash in state.used_hashes or record.tx_hash in fresh:
                continue
            fresh[record.tx_hash] = record
            emits.append(
                Emit(
                    scan_stream(Address.parse(record.wallet)),
                    record,
                    event_id=payment_event_id(type(record).__name__, record.tx_hash),
                )
            )

        def emit(payment_id: int, event: Event, event_id: uuid.UUID) -> None:
            view = state.payments[payment_id]
            version = versions.get(payment_id, view.version)
            emits.append(
                Emit(payment_stream(payment_id), event, expected_version=version, event_id=event_id)
            )
            versions[payment_id] = version + 1

        for decision in message.decisions:
            if isinstance(decision, Ignore) or decision.payment_id not in state.payments:
                continue
            recorded = decision_event(decision, detected_at=now)
            if recorded is None:
                continue
            view = state.payments[decision.payment_id]
            if isinstance(decision, Confirm):
                emit(
                    view.payment_id, recorded, payment_event_id("PaymentConfirmed", view.payment_id)
                )
                plan = self.settings.plan(view.plan)
                days = plan.days if plan is not None else DEFAULT_PLAN_DAYS
                emit(
                    view.payment_id,
                    SubscriptionActivated(
                        payment_id=view.payment_id,
                        user_id=view.user_id,
                        plan=view.plan,
                        starts_at=now,
                        ends_at=now + timedelta(days=days),
                    ),
                    payment_event_id("SubscriptionActivated", view.payment_id),
                )
                settled.add(view.payment_id)
            elif isinstance(decision, Underpaid | Late):
                kind = type(recorded).__name__
                emit(view.payment_id, recorded, payment_event_id(kind, decision.tx_hash))
        # Windows that closed: only payments of the wallet just scanned (its transfers up to
        # now are known), never one this scan confirmed.
        for payment_id in sorted(state.pending_ids):
            view = state.payments[payment_id]
            if view.wallet != message.wallet or payment_id in settled or view.expires_at > now:
                continue
            emit(
                payment_id,
                PaymentExpired(payment_id=payment_id, expired_at=now),
                payment_event_id("PaymentExpired", payment_id),
            )
        emits += _refunds_due(fresh.values(), now)
        emits += _refunds_settled(state, message, fresh)
        cursor = state.cursors.get(message.wallet, 0)
        if message.last_lt is not None and message.last_lt > cursor:
            wallet = Address.parse(message.wallet)
            emits.append(
                Emit(
                    scan_stream(wallet),
                    WalletScanned(
                        wallet=message.wallet,
                        last_lt=message.last_lt,
                        transactions=message.transactions,
                        scanned_at=now,
                        from_lt=cursor,
                    ),
                )
            )
        return emits

    # -- I/O ---------------------------------------------------------------------------------
    async def on_tick(
        self, state: MonitorState, runner: ActorRunner[MonitorState]
    ) -> Sequence[Message]:
        return await self._scan(state, runner)

    async def perform(
        self, state: MonitorState, message: Message, runner: ActorRunner[MonitorState]
    ) -> Sequence[Message]:
        return await self._scan(state, runner)

    async def background(self, runner: ActorRunner[MonitorState]) -> None:
        """Runs ``payment_verification`` tasks (each is a check now, retried by the queue
        while TonAPI is unavailable) and, when on, the stream's listener (:meth:`fast_path`):
        both end with the incarnation."""

        async def verify(task: PaymentVerification, context: TaskContext) -> None:
            await runner.ref.ask(CheckPayments(), timeout=VERIFY_TIMEOUT)
            if self.consecutive_failures:
                raise TonApiUnavailable(
                    f"payment {task.payment_id} not verified: {self.last_error}"
                )

        if not self.stream_enabled:
            self.stream_status.set("off")
            await serve_tasks(runner, self.settings, PAYMENT_VERIFICATION, verify)
            return
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.fast_path, runner)
                await serve_tasks(runner, self.settings, PAYMENT_VERIFICATION, verify)
                tg.cancel_scope.cancel()
        finally:
            self.stream_status.set("stopped")

    async def fast_path(self, runner: ActorRunner[MonitorState]) -> None:
        """The stream's listener and the scans it asks for, until cancelled.

        The listener only notes hints (:class:`_Hints`); a second task asks the monitor for a
        ``CheckPayments`` through its mailbox, one at a time, so a burst of notices makes one
        scan (and one more for those that came during it). The jitter and the waits come from
        the runner's RNG and clock."""
        hints = _Hints()
        watched = {self.wallet.to_raw()}

        def addresses() -> list[str]:
            watched.clear()
            watched.update(self.watched_wallets(runner.state))
            return sorted(watched)

        def on_subscribed() -> None:
            hints.ask()  # the stream recovers nothing it missed: scan from the cursor

        def on_notice(notice: StreamNotice) -> None:
            hints.ask({(a, lt) for a, lt in notice.transactions if a in watched})

        options: dict[str, Any] = {
            "api_key": self.settings.tonapi_key,
            "min_finality": self.settings.min_finality,
            "silence": self.settings.stream_silence,
            "status": self.stream_status,
            "sleep": runner.clock.sleep,
            "rng": runner.rng,
            "clock": runner.clock.monotonic,
            **({} if self.client is None else {"turn": self.client.turn}),
            **self._stream_options,
        }
        stream = TonApiStream(self.settings.tonapi_url, addresses, **options)
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.run, on_subscribed, on_notice)
            await self._scan_on_hints(runner, hints)

    async def _scan_on_hints(self, runner: ActorRunner[MonitorState], hints: _Hints) -> None:
        while True:
            awaited = await hints.take()
            for delay in (*FOLLOW_UPS, None):
                self.hints += 1
                try:
                    await runner.ref.ask(CheckPayments(), timeout=VERIFY_TIMEOUT)
                except ActorNotRunning:
                    return
                except Exception as exc:  # the scan's own failure is the tick's to report
                    logger.info(
                        "%s: a scan asked by the stream did not complete: %s",
                        self.name,
                        exc,
                        extra={"action": "payment_stream_scan_failed"},
                    )
                if self.consecutive_failures:
                    break  # TonAPI is failing: the ticks retry, not a burst of follow-ups
                cursors = runner.state.cursors
                awaited = {(a, lt) for a, lt in awaited if cursors.get(a, 0) < lt}
                if not awaited or delay is None or hints.pending:
                    break  # seen (or the ticks take over); new hints get a scan of their own
                await runner.clock.sleep(delay)

    def watched_wallets(self, state: MonitorState) -> list[str]:
        """Our wallet, and any other wallet a pending payment names (raw forms)."""
        named = {state.payments[payment_id].wallet for payment_id in state.pending_ids}
        wallets = {self.wallet.to_raw()}
        wallets.update(w for w in named if _address(w) is not None)  # each distinct one once
        return sorted(wallets)

    async def _scan(
        self, state: MonitorState, runner: ActorRunner[MonitorState]
    ) -> list[ScanResult]:
        assert self.client is not None, "setup() opens the TonAPI client"
        results: list[ScanResult] = []
        for raw in self.watched_wallets(state):
            wallet = Address.parse(raw)
            cursor = state.cursors.get(raw)
            try:
                transactions = await self.client.transactions_since(
                    raw, cursor, page_size=MAX_PAGE_SIZE
                )
            except (TonApiError, TonApiFormatError) as exc:
                self.consecutive_failures += 1
                self.last_error = str(exc)
                logger.warning(
                    "%s: TonAPI failed for %s (%d in a row), cursor kept at %s: %s",
                    self.name,
                    raw,
                    self.consecutive_failures,
                    cursor,
                    exc,
                    extra={"action": "payment_scan_failed"},
                )
                continue
            self.consecutive_failures = 0
            self.last_error = None
            scanned_at = runner.clock.now()
            # Every payment to this wallet, not only pending ones: a second transfer for a
            # confirmed payment is reported, a late one for an expired payment kept for review.
            pending = {
                pid: view.pending() for pid, view in state.payments.items() if view.wallet == raw
            }
            decisions = match_all(wallet, pending, state.used_hashes, transactions)
            last_lt = scan_cursor(transactions, decisions, scanned_at)
            records = transfer_records(
                wallet,
                transactions,
                decisions,
                detected_at=scanned_at.astimezone(UTC),
                cursor=last_lt if last_lt is not None else cursor,
            )
            newest = max((tx.utime for tx in transactions), default=None)
            results.append(
                ScanResult(
                    wallet=raw,
                    decisions=decisions,
                    last_lt=last_lt,
                    transactions=len(transactions),
                    scanned_at=scanned_at.astimezone(UTC),
                    records=records,
                    chain_time=None if newest is None else datetime.fromtimestamp(newest, UTC),
                )
            )
        return results


class _Hints:
    """Scans the stream asked for, coalesced: :meth:`ask` never blocks (the listener calls
    it), :meth:`take` waits for one and returns the transactions the hints named."""

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._awaited: set[tuple[str, int]] = set()

    @property
    def pending(self) -> bool:
        return self._event.is_set()

    def ask(self, transactions: Iterable[tuple[str, int]] = ()) -> None:
        self._awaited.update(transactions)
        self._event.set()

    async def take(self) -> set[tuple[str, int]]:
        await self._event.wait()
        self._event = anyio.Event()
        awaited, self._awaited = self._awaited, set()
        return awaited


def _refunds_due(records: Iterable[TransferRecord], now: datetime) -> list[Emit]:
    """A ``RefundDue`` for each newly recorded transfer that left money owing."""
    return [
        Emit(
            payment_refund_stream(record.tx_hash),
            RefundDue(
                refund_id=record.tx_hash,
                wallet=record.wallet,
                to=record.payer,
                amount_nanotons=record.refund_nanotons,
                category=record.category,
                payment_id=record.payment_id,
                due_at=now,
            ),
            expected_version=NO_STREAM,
            event_id=payment_event_id("RefundDue", record.tx_hash),
        )
        for record in records
        if isinstance(record, TransferReceived) and record.refund_nanotons and record.payer
    ]


def _settle(
    state: MonitorState,
    refund: OpenRefund,
    fresh: Mapping[str, TransferRecord],
    now: datetime,
) -> RefundConfirmed | RefundUnconfirmed | None:
    """The outcome of the mark ``refund`` awaits, if the log or the records a scan is adding
    (``fresh``) settle it: the wallet sent to the refund's address in that transaction, or did
    not, or the transaction is one the wallet received. None: not met yet."""
    out_tx = refund.out_tx
    if out_tx is None:
        return None
    record = fresh.get(out_tx) or state.sent.get(out_tx)
    if isinstance(record, TransferReceived) or (record is None and out_tx in state.used_hashes):
        return RefundUnconfirmed(
            refund_id=refund.refund_id,
            tx_hash=out_tx,
            reason=f"transaction {out_tx} is a transfer the wallet received, not one it sent",
            detected_at=now,
        )
    if record is None:
        return None
    paid = sum(m.amount_nanotons for m in record.messages if m.destination == refund.to)
    if record.success and paid:
        return RefundConfirmed(
            refund_id=refund.refund_id,
            tx_hash=out_tx,
            lt=record.lt,
            amount_nanotons=paid,
            confirmed_at=now,
        )
    why = "failed on chain" if not record.success else f"sent nothing to {refund.to}"
    return RefundUnconfirmed(
        refund_id=refund.refund_id,
        tx_hash=out_tx,
        reason=f"transaction {out_tx} {why}",
        detected_at=now,
    )


def _refund_emit(refund: OpenRefund, outcome: RefundConfirmed | RefundUnconfirmed) -> Emit:
    """The outcome of one mark: one event per mark (its id from the mark's version)."""
    return Emit(
        payment_refund_stream(refund.refund_id),
        outcome,
        expected_version=refund.version,
        event_id=payment_event_id("RefundSettled", refund.refund_id, refund.version),
    )


def _refunds_settled(
    state: MonitorState, message: ScanResult, fresh: Mapping[str, TransferRecord]
) -> list[Emit]:
    """Refunds marked sent that this scan settles: their transaction is recorded (now or
    before), or was not met although the scan passed a transaction younger than the mark by
    :data:`REFUND_SEARCH_GRACE` (chain time)."""
    emits = []
    for out_tx, refund_id in sorted(state.awaiting.items()):
        refund = state.refunds.get(refund_id)
        if refund is None:
            continue
        outcome = _settle(state, refund, fresh, message.scanned_at)
        if (
            outcome is None
            and refund.wallet == message.wallet
            and refund.marked_at is not None
            and message.chain_time is not None
            and message.chain_time > refund.marked_at + REFUND_SEARCH_GRACE
        ):
            outcome = RefundUnconfirmed(
                refund_id=refund_id,
                tx_hash=out_tx,
                reason=f"no transaction {out_tx} in the wallet's transactions up to "
                f"{message.chain_time:%Y-%m-%d %H:%M:%S}Z",
                detected_at=message.scanned_at,
            )
        if outcome is not None:
            emits.append(_refund_emit(refund, outcome))
    return emits
