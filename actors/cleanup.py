"""Cleanup: prunes derived and ephemeral data daily; never the event log.

Every ``I3LANI_CLEANUP_INTERVAL`` seconds (a day by default):

* finished tasks: rows of tasks that succeeded more than ``I3LANI_TASK_RETENTION`` days ago are
  deleted from the queue's working table, 1,000 at a time (their events stay in the log; dead
  letters stay until an operator deals with them);
* old health samples: ``health_samples`` rows older than ``I3LANI_HEALTH_RETENTION`` days, in
  batches (the ``HealthChecked`` events that recorded each change of verdict stay);
* idle chats' rate limits: a chat's or group's row of the shared rate limits
  (``i3lani.rate_limits``, :mod:`store.flow`) unused and unpaused for a day (one row per chat
  ever messaged would only grow; a chat without a row starts afresh, as a day-old window says
  anyway);
* stale pending payments: a payment still pending a day after it expired (the PaymentMonitor
  expires payments after a successful scan; this catches what a long TonAPI outage left behind)
  gets ``PaymentExpired``, with the same event id the monitor would use and the payment
  stream's expected version, so it can never be expired twice or after a confirmation.

A pass that removed something ends with ``CleanupCompleted`` (stream ``ops-cleanup``) holding
the counts; one that found nothing to remove leaves nothing in the log (its tick is recorded in
the actor's tick schedule all the same). The event log itself is append-only: PostgreSQL
triggers refuse DELETE on it, whoever asks.

The same daily pass reconciles the wallet (``WALLET_ADDRESS``) with the chain
(:func:`actors.transfers.reconcile_wallet`): the range of ``lt`` scanned since the last
reconciliation, as TonAPI lists it, against the transfers the PaymentMonitor recorded for it.
The outcome is a ``TransfersReconciled`` in the wallet's stream (so the next pass starts where
this one ended) and, when anything differs, an ``AlertRaised`` naming the transactions, which
the HealthChecker delivers to the admins as it does every alert. It runs here rather than in
the HealthChecker because its cadence is this actor's (daily, where the HealthChecker runs
every 15 minutes) and it reads the ``payment`` category this actor already follows; a TonAPI
outage skips it for the day (logged; the HealthChecker reports TonAPI failing) and the next
pass covers both days.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import ClassVar, Final

import msgspec

from actors.clients import tonapi_client
from actors.config import Settings
from actors.payment_monitor import payment_event_id
from actors.runtime import Actor, ActorRunner, Emit, Message, TickSpec
from actors.tasks import task_types
from actors.ton import Address
from actors.tonapi import TonApiClient, TonApiError
from actors.tonapi_models import TonApiFormatError
from actors.transfers import Reconciliation, reconcile_wallet, scan_stream
from events import (
    AlertRaised,
    CleanupCompleted,
    PaymentConfirmed,
    PaymentCreated,
    PaymentExpired,
    SubscriptionActivated,
)
from events.payments import LatePaymentReceived, PaymentUnderpaid, TransfersReconciled
from events.streams import OPS_ALERTS, OPS_CLEANUP, PAYMENT, payment_stream
from store import RecordedEvent, views
from store.flow import flow_table
from store.tasks import TaskQueue

__all__ = [
    "Cleanup",
    "CleanupState",
    "CleanupDone",
    "WalletReconciled",
    "STALE_AFTER",
    "CLEANUP_STREAM",
    "reconciliation_alert",
]

logger = logging.getLogger(__name__)

CLEANUP_STREAM: Final = OPS_CLEANUP
STALE_AFTER: Final = timedelta(days=1)
BATCH: Final = 1000
SCOPE_RETENTION: Final = timedelta(days=1)
"""How long a chat's rate-limit row is kept unused (its window is a minute at most)."""
ALERT_HASHES: Final = 10
"""Transactions an alert names at most (``i3lani reconcile`` lists every one)."""
_NAMESPACE: Final = uuid.UUID("3f1d2c4b-8a7e-4e55-b0c9-2d6f1a8e9b31")


@dataclass(slots=True)
class _Pending:
    expires_at: datetime
    version: int


@dataclass(slots=True)
class CleanupState:
    """Pending payments (for stale expiry), folded from the ``payment`` category."""

    pending: dict[int, _Pending] = field(default_factory=dict)


class CleanupDone(msgspec.Struct, frozen=True, kw_only=True):
    """What the pruning removed; :meth:`Cleanup.decide` adds the stale payments and the record."""

    removed: dict[str, int]
    started_at: datetime
    finished_at: datetime


class WalletReconciled(msgspec.Struct, frozen=True, kw_only=True):
    """What the daily reconciliation of the wallet found, to record."""

    reconciliation: Reconciliation
    at: datetime


def reconciliation_alert(result: Reconciliation) -> tuple[str, str]:
    """``(subject, message)`` of the alert for a reconciliation with discrepancies. Pure."""
    found = result.discrepancies
    listed = "; ".join(f"{d.kind} tx {d.tx_hash} (lt {d.lt})" for d in found[:ALERT_HASHES])
    more = f"; and {len(found) - ALERT_HASHES} more" if len(found) > ALERT_HASHES else ""
    subject = f"{len(found)} transfer discrepanc{'y' if len(found) == 1 else 'ies'}"
    return subject, (
        f"wallet {result.wallet}, lt {result.from_lt} to {result.to_lt}: the chain and the "
        f"log differ: {listed}{more}. `i3lani reconcile` shows each one."
    )


class Cleanup(Actor[CleanupState]):
    """Prunes derived data and reconciles the wallet (see the module docstring)."""

    name: ClassVar[str] = "Cleanup"
    category: ClassVar[str | None] = PAYMENT
    messages: ClassVar[tuple[type[msgspec.Struct], ...]] = (CleanupDone, WalletReconciled)

    def __init__(self, settings: Settings, *, tonapi: TonApiClient | None = None) -> None:
        self.settings = settings
        self.tick = TickSpec(interval=settings.cleanup_interval, missed="run_once")
        self.queue: TaskQueue | None = None
        self._given_client = tonapi
        self.tonapi: TonApiClient | None = tonapi

    def initial_state(self) -> CleanupState:
        return CleanupState()

    async def setup(
        self, stack: contextlib.AsyncExitStack, runner: ActorRunner[CleanupState]
    ) -> None:
        self.queue = TaskQueue(runner.store, task_types(self.settings), node=runner.node)
        if self._given_client is None and self.settings.wallet:
            self.tonapi = await stack.enter_async_context(
                tonapi_client(self.settings, runner.store)
            )

    # -- pure --------------------------------------------------------------------------------
    def evolve(self, state: CleanupState, recorded: RecordedEvent) -> CleanupState:
        event = recorded.event
        match event:
            case PaymentCreated():
                state.pending[event.payment_id] = _Pending(event.expires_at, recorded.version)
            case PaymentConfirmed() | PaymentExpired():
                state.pending.pop(event.payment_id, None)
            case PaymentUnderpaid() | LatePaymentReceived() | SubscriptionActivated():
                pending = state.pending.get(event.payment_id)
                if pending is not None:
                    pending.version = recorded.version
        return state

    def decide(self, state: CleanupState, message: Message) -> Sequence[Emit]:
        if isinstance(message, WalletReconciled):
            return self._reconciled(message)
        if not isinstance(message, CleanupDone):
            return ()
        emits: list[Emit] = []
        for payment_id, pending in sorted(state.pending.items()):
            if pending.expires_at + STALE_AFTER > message.finished_at:
                continue
            emits.append(
                Emit(
                    payment_stream(payment_id),
                    PaymentExpired(payment_id=payment_id, expired_at=message.finished_at),
                    expected_version=pending.version,
                    event_id=payment_event_id("PaymentExpired", payment_id),
                )
            )
        removed = {**message.removed, "stale_payments": len(emits)}
        if not any(removed.values()):
            return emits  # a pass that removed nothing leaves nothing in the log
        emits.append(
            Emit(
                CLEANUP_STREAM,
                CleanupCompleted(
                    removed=removed,
                    started_at=message.started_at,
                    finished_at=message.finished_at,
                ),
            )
        )
        return emits

    @staticmethod
    def _reconciled(message: WalletReconciled) -> list[Emit]:
        """The reconciliation recorded in the wallet's stream; an alert when it found any
        discrepancy. Both ids derive from the range, so a retried pass records it once."""
        result = message.reconciliation
        key = f"reconciled/{result.wallet}/{result.from_lt}/{result.to_lt}"
        emits = [
            Emit(
                scan_stream(Address.parse(result.wallet)),
                TransfersReconciled(
                    wallet=result.wallet,
                    from_lt=result.from_lt,
                    to_lt=result.to_lt,
                    transactions=result.chain_transactions,
                    recorded=result.recorded,
                    discrepancies=len(result.discrepancies),
                    reconciled_at=message.at,
                    tx_hashes=result.tx_hashes()[:50],
                ),
                event_id=uuid.uuid5(_NAMESPACE, key),
            )
        ]
        if not result.clean:
            alert_id = uuid.uuid5(_NAMESPACE, f"alert/{key}")
            subject, text = reconciliation_alert(result)
            emits.append(
                Emit(
                    OPS_ALERTS,
                    AlertRaised(
                        alert_id=alert_id,
                        kind="reconciliation",
                        subject=subject,
                        message=text,
                        raised_at=message.at,
                    ),
                    event_id=alert_id,
                )
            )
        return emits

    # -- I/O ---------------------------------------------------------------------------------
    async def on_tick(
        self, state: CleanupState, runner: ActorRunner[CleanupState]
    ) -> Sequence[Message]:
        reconciled = await self._reconcile(runner)
        return [await self._prune(runner), *reconciled]

    async def _reconcile(self, runner: ActorRunner[CleanupState]) -> list[Message]:
        """The wallet's range scanned since the last reconciliation, compared with TonAPI's
        list; nothing when no wallet is configured, nothing new was scanned, or TonAPI
        failed (logged: the next pass covers the range)."""
        if self.tonapi is None or not self.settings.wallet:
            return []
        wallet = self.settings.wallet_address()
        try:
            result = await reconcile_wallet(runner.store, self.tonapi, wallet, incremental=True)
        except (TonApiError, TonApiFormatError) as exc:
            logger.warning(
                "%s: reconciliation of %s skipped, TonAPI failed: %s",
                self.name,
                wallet.to_raw(),
                exc,
                extra={"action": "reconciliation_skipped"},
            )
            return []
        if result is None:
            return []
        if not result.clean:
            logger.warning(
                "%s: %d transfer discrepancies in %s (lt %s to %s)",
                self.name,
                len(result.discrepancies),
                result.wallet,
                result.from_lt,
                result.to_lt,
                extra={"action": "reconciliation_discrepancies"},
            )
        return [WalletReconciled(reconciliation=result, at=runner.clock.now())]

    async def _prune(self, runner: ActorRunner[CleanupState]) -> CleanupDone:
        assert self.queue is not None
        started = runner.clock.now()
        tasks = await self.queue.prune_finished(
            older_than=timedelta(days=self.settings.task_retention_days), batch_size=BATCH
        )
        samples = await self._prune_samples(
            runner, started - timedelta(days=self.settings.health_retention_days)
        )
        scopes = await flow_table(runner.store).prune(SCOPE_RETENTION.total_seconds())
        return CleanupDone(
            removed={
                "finished_tasks": tasks,
                "health_samples": samples,
                "rate_limit_scopes": scopes,
            },
            started_at=started,
            finished_at=runner.clock.now(),
        )

    async def _prune_samples(self, runner: ActorRunner[CleanupState], before: datetime) -> int:
        """Delete health samples older than ``before``, ``BATCH`` rows per statement (in
        PostgreSQL, or in the in-memory log's side table)."""
        return await views.prune_health_samples(runner.store, before, batch_size=BATCH)
