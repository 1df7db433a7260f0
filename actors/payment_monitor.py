"""PaymentMonitor: verifies pending TON payments against the wallet's incoming transactions.

Every ``I3LANI_PAYMENT_INTERVAL`` seconds (30 by default), and at once when a
``PaymentCreated`` arrives (bursts are coalesced into one check), the monitor:

1. asks TonAPI for each watched wallet's transactions after its ``lt`` cursor
   (:class:`~actors.tonapi.TonApiClient`, paging until a short page) — thin I/O;
2. hands them to :func:`actors.payments.match_all`, which applies every rule of DOMAIN.md —
   pure;
3. records the outcome (:meth:`PaymentMonitor.decide`, pure): ``PaymentConfirmed`` then
   ``SubscriptionActivated``; ``PaymentUnderpaid``; ``LatePaymentReceived`` for a transfer after
   expiry (kept for review); ``PaymentExpired`` for payments whose window closed; and the new
   cursor as ``WalletScanned``, all in one transaction.

Exactly once, concretely: each payment event is appended with the payment stream's exact
expected version *and* an event id derived from what it records (``PaymentConfirmed`` from the
payment id, the others from the transaction hash), so a second writer — a second node during a
deploy overlap, a retry after a crash — gets a conflict or appends nothing; the database's
unique event id is the last word. The supervisor's lease fences a stale node's appends.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Final

import msgspec

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
from actors.runtime import Actor, ActorRunner, Emit, Message, TickSpec
from actors.tasks import (
    PAYMENT_VERIFICATION,
    PaymentVerification,
    serve_tasks,
)
from actors.ton import Address, InvalidAddress
from actors.tonapi import MAX_PAGE_SIZE, TonApiClient, TonApiError, TonApiUnavailable
from actors.tonapi_models import TonApiFormatError, Transaction
from events import (
    Event,
    PaymentConfirmed,
    PaymentCreated,
    PaymentExpired,
    PaymentUnderpaid,
    SubscriptionActivated,
    WalletScanned,
)
from events.payments import LatePaymentReceived
from events.streams import PAYMENT, payment_scan_stream, payment_stream
from store import RecordedEvent
from store.tasks import TaskContext

__all__ = [
    "PaymentMonitor",
    "MonitorState",
    "PaymentView",
    "CheckPayments",
    "ScanResult",
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


def payment_event_id(*parts: object) -> uuid.UUID:
    """The deterministic id of a payment effect, e.g. ``("PaymentConfirmed", 42)``."""
    return uuid.uuid5(_NAMESPACE, "/".join(str(p) for p in parts))


def scan_stream(wallet: Address) -> str:
    """The stream holding a wallet's scan cursor: ``payment-scan-<wc>_<hash hex>``."""
    return payment_scan_stream(f"{wallet.workchain}_{wallet.hash.hex()}")


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
class MonitorState:
    """The fold of the ``payment`` category.

    :meth:`PaymentMonitor.evolve` updates it in place (O(1) per event, whatever the number of
    payments) and returns it: the runner owns the state and applies an event only after it
    was committed, so nothing else ever sees a half-applied state.
    """

    payments: dict[int, PaymentView] = field(default_factory=dict)
    used_hashes: set[str] = field(default_factory=set)
    cursors: dict[str, int] = field(default_factory=dict)  # wallet (raw) -> last lt scanned
    pending_ids: set[int] = field(default_factory=set)


class CheckPayments(msgspec.Struct, frozen=True):
    """Check the pending payments now (sent on ``PaymentCreated`` and by operators)."""


class ScanResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one wallet's scan found: the decisions, the new cursor, and the scan time."""

    wallet: str  # raw form
    decisions: list[Decision]
    last_lt: int | None
    transactions: int
    scanned_at: datetime


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
    messages: ClassVar[tuple[type[msgspec.Struct], ...]] = (CheckPayments, ScanResult)
    io_messages: ClassVar[tuple[type[msgspec.Struct], ...]] = (CheckPayments,)

    def __init__(self, settings: Settings, *, tonapi: TonApiClient | None = None) -> None:
        self.settings = settings
        self.wallet = settings.wallet_address()
        self.tick = TickSpec(interval=settings.payment_interval, missed="run_once")
        self._given_client = tonapi
        self.client: TonApiClient | None = tonapi
        self.last_error: str | None = None
        self.consecutive_failures = 0

    def initial_state(self) -> MonitorState:
        return MonitorState()

    async def setup(
        self, stack: contextlib.AsyncExitStack, runner: ActorRunner[MonitorState]
    ) -> None:
        if self._given_client is None:
            self.client = await stack.enter_async_context(
                TonApiClient(self.settings.tonapi_url, api_key=self.settings.tonapi_key)
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
        return state

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
        if isinstance(recorded.event, PaymentCreated):
            return [CheckPayments()]
        return ()

    def decide(self, state: MonitorState, message: Message) -> Sequence[Emit]:
        if not isinstance(message, ScanResult):
            return ()
        emits: list[Emit] = []
        versions: dict[int, int] = {}
        settled: set[int] = set()

        def emit(payment_id: int, event: Event, event_id: uuid.UUID) -> None:
            view = state.payments[payment_id]
            version = versions.get(payment_id, view.version)
            emits.append(
                Emit(payment_stream(payment_id), event, expected_version=version, event_id=event_id)
            )
            versions[payment_id] = version + 1

        now = message.scanned_at
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
        if message.last_lt is not None and message.last_lt > state.cursors.get(message.wallet, 0):
            wallet = Address.parse(message.wallet)
            emits.append(
                Emit(
                    scan_stream(wallet),
                    WalletScanned(
                        wallet=message.wallet,
                        last_lt=message.last_lt,
                        transactions=message.transactions,
                        scanned_at=now,
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
        """Runs ``payment_verification`` tasks: each is a check now, retried by the queue
        while TonAPI is unavailable."""

        async def verify(task: PaymentVerification, context: TaskContext) -> None:
            await runner.ref.ask(CheckPayments(), timeout=VERIFY_TIMEOUT)
            if self.consecutive_failures:
                raise TonApiUnavailable(
                    f"payment {task.payment_id} not verified: {self.last_error}"
                )

        await serve_tasks(runner, self.settings, PAYMENT_VERIFICATION, verify)

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
            results.append(
                ScanResult(
                    wallet=raw,
                    decisions=decisions,
                    last_lt=last_lt,
                    transactions=len(transactions),
                    scanned_at=scanned_at.astimezone(UTC),
                )
            )
        return results
