"""Cleanup: prunes derived and ephemeral data daily; never the event log.

Every ``I3LANI_CLEANUP_INTERVAL`` seconds (a day by default):

* finished tasks: rows of tasks that succeeded more than ``I3LANI_TASK_RETENTION`` days ago are
  deleted from the queue's working table, 1,000 at a time (their events stay in the log; dead
  letters stay until an operator deals with them);
* old health samples: ``health_samples`` rows older than ``I3LANI_HEALTH_RETENTION`` days, in
  batches (the ``HealthChecked`` events that recorded each change of verdict stay);
* stale pending payments: a payment still pending a day after it expired (the PaymentMonitor
  expires payments after a successful scan; this catches what a long TonAPI outage left behind)
  gets ``PaymentExpired``, with the same event id the monitor would use and the payment
  stream's expected version, so it can never be expired twice or after a confirmation.

A pass that removed something ends with ``CleanupCompleted`` (stream ``ops-cleanup``) holding
the counts; one that found nothing to remove leaves nothing in the log (its tick is recorded in
the actor's tick schedule all the same). The event log itself is append-only: PostgreSQL
triggers refuse DELETE on it, whoever asks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import ClassVar, Final

import msgspec

from actors.config import Settings
from actors.payment_monitor import payment_event_id
from actors.runtime import Actor, ActorRunner, Emit, Message, TickSpec
from actors.tasks import task_types
from events import (
    CleanupCompleted,
    PaymentConfirmed,
    PaymentCreated,
    PaymentExpired,
    SubscriptionActivated,
)
from events.errors import I3laniError
from events.payments import LatePaymentReceived, PaymentUnderpaid
from events.streams import OPS_CLEANUP, PAYMENT, payment_stream
from store import EventStore, RecordedEvent, views
from store.tasks import TaskQueue

__all__ = ["Cleanup", "CleanupState", "CleanupDone", "STALE_AFTER", "CLEANUP_STREAM"]

CLEANUP_STREAM: Final = OPS_CLEANUP
STALE_AFTER: Final = timedelta(days=1)
BATCH: Final = 1000


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


class Cleanup(Actor[CleanupState]):
    """Prunes derived data (see the module docstring)."""

    name: ClassVar[str] = "Cleanup"
    category: ClassVar[str | None] = PAYMENT
    messages: ClassVar[tuple[type[msgspec.Struct], ...]] = (CleanupDone,)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tick = TickSpec(interval=settings.cleanup_interval, missed="run_once")
        self.queue: TaskQueue | None = None

    def initial_state(self) -> CleanupState:
        return CleanupState()

    async def setup(
        self, stack: contextlib.AsyncExitStack, runner: ActorRunner[CleanupState]
    ) -> None:
        self.queue = TaskQueue(runner.store, task_types(self.settings), node=runner.node)

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

    # -- I/O ---------------------------------------------------------------------------------
    async def on_tick(
        self, state: CleanupState, runner: ActorRunner[CleanupState]
    ) -> Sequence[Message]:
        assert self.queue is not None
        started = runner.clock.now()
        tasks = await self.queue.prune_finished(
            older_than=timedelta(days=self.settings.task_retention_days), batch_size=BATCH
        )
        samples = await self._prune_samples(
            runner, started - timedelta(days=self.settings.health_retention_days)
        )
        return [
            CleanupDone(
                removed={"finished_tasks": tasks, "health_samples": samples},
                started_at=started,
                finished_at=runner.clock.now(),
            )
        ]

    async def _prune_samples(self, runner: ActorRunner[CleanupState], before: datetime) -> int:
        """Delete health samples older than ``before``, ``BATCH`` rows per statement."""
        if not isinstance(runner.store, EventStore):
            raise I3laniError(
                "Cleanup prunes PostgreSQL's derived tables: it does not run on the in-memory log"
            )
        return await views.prune_health_samples(runner.store, before, batch_size=BATCH)
