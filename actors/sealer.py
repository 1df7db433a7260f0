"""Sealer: seals the log every so often, and sends each seal's digest to the admins.

Every ``I3LANI_SEAL_INTERVAL`` seconds (an hour by default) it reads the log past the last seal
up to the horizon the gap-free readers use (no open transaction can still add a row below it),
in pages of raw rows, and appends ``LogSealed`` events to ``seal-log`` (:mod:`store.sealing`
defines what a seal covers and how it is hashed). Nothing is done per append: appends stay
concurrent, and a seal costs one pass over the rows it covers.

Exactly once, whatever crashes:

* seal ``n`` is version ``n`` of ``seal-log``, appended with that exact expected version, so
  two sealers (a deploy's overlap, a node resumed after a pause) can never both write seal
  ``n``; its event id is derived from ``n`` and the end of its range, so a retry of the same
  seal after a lost acknowledgement appends nothing new;
* its appends carry the actor's lease generation (the runtime's fence): a node that lost the
  lease cannot write;
* each run starts from the last seal in the log, never from memory: a restart, or another
  node taking over, goes on where the log says.

One run seals at most ``max_events_per_run`` events (10 seals of
:data:`~store.sealing.MAX_EVENTS_PER_SEAL`); with more to seal (a large log sealed for the first
time) it goes on at once with the next run instead of waiting for the next tick.

An idle log stays idle: a run seals nothing when all the log holds past the last seal is the
Sealer's own doing (its seals, and the events of their digests' ``admin_alert`` tasks: enqueued,
claimed, delivered, retried). Those are covered by the next seal, which the first other event
calls for; until then the last seal's digest, kept outside, vouches for everything before it.

The digest (``i3lani seal --export`` prints the latest) goes to every id in ``ADMIN_IDS`` by
Telegram: an ``admin_alert`` task is enqueued in the transaction that appends the seal, and
delivered like the health alerts (by the HealthChecker's task processor: retried with backoff,
dead-lettered if Telegram never takes it). So a copy of each digest lives outside the database,
and a rewrite of the log with its seals recomputed is still found
(``i3lani audit --verify-seals --against DIGEST``).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Sequence
from typing import ClassVar, Final

import msgspec

from actors.config import Settings
from actors.runtime import Actor, ActorRunner, Emit, Message, TickSpec
from actors.runtime.core import MailboxFull
from actors.tasks import ADMIN_ALERT, AdminAlert, task_types
from events import LogSealed, TaskEnqueued
from events.errors import StoreUnavailable
from events.streams import SEAL_LOG, TASK
from store import EventLog, Fence, Transaction
from store.memory import MemoryTransaction
from store.sealing import MAX_EVENTS_PER_SEAL, SealDigest, next_seals
from store.stored import HashedEvent
from store.tasks import TaskQueue

__all__ = [
    "Sealer",
    "SealsComputed",
    "SealsOwnEvents",
    "SealBacklog",
    "SEAL_STREAM",
    "seal_event_id",
    "digest_text",
]

logger = logging.getLogger(__name__)

SEAL_STREAM: Final = SEAL_LOG
_NAMESPACE: Final = uuid.UUID("5d0c3b8e-2f4a-4c61-9a57-1e8d6f3b2a90")


_DIGEST_KEY: Final = "seal-"  # the dedupe key of seal n's digest task: seal-<n>


class SealsOwnEvents:
    """Tells, for one run, the rows the Sealer's own work wrote: seals and the events of
    their digest tasks (an :data:`~store.sealing.Incidental`). A task's stream is told by its
    ``TaskEnqueued``, its first event (read once per task stream, and only until the first row
    of other work)."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self._tasks: dict[str, bool] = {}

    async def __call__(self, row: HashedEvent) -> bool:
        if row.stream == SEAL_STREAM:
            return True
        if not row.stream.startswith(f"{TASK}-"):
            return False
        known = self._tasks.get(row.stream)
        if known is None:
            known = self._tasks[row.stream] = await self._digest_stream(row.stream)
        return known

    async def _digest_stream(self, stream: str) -> bool:
        first = await self.log.read_stream(stream, limit=1, skip_unknown=True)
        if not first or not isinstance(enqueued := first[0].event, TaskEnqueued):
            return False
        key = enqueued.dedupe_key
        return enqueued.task_type == ADMIN_ALERT and key is not None and key.startswith(_DIGEST_KEY)


class SealsComputed(msgspec.Struct, frozen=True):
    """Seals computed from the log, following version ``follows`` of the seal stream."""

    seals: list[LogSealed]
    follows: int


class SealBacklog(msgspec.Struct, frozen=True):
    """More of the log is left to seal than one run takes: go on now."""


def seal_event_id(seal: LogSealed) -> uuid.UUID:
    """The event id of a seal: the same seal (number and range) always gets the same id."""
    return uuid.uuid5(
        _NAMESPACE, f"seal/{seal.seal}/{seal.last_transaction_id}/{seal.last_position}"
    )


def digest_text(seal: LogSealed) -> str:
    """The Telegram message that carries a seal's digest to the admins. Pure."""
    digest = SealDigest.of(seal)
    stamp = seal.sealed_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"[seal] i3lani log sealed: seal {seal.seal}\n"
        f"the log up to #{seal.last_position}, {seal.total:,} events, sha256 {seal.hash}\n"
        f"Keep this digest; it shows whether the log up to there was ever rewritten:\n"
        f"{digest}\n"
        f"check: i3lani audit --verify-seals --against {digest}\n"
        f"{stamp}"
    )


class Sealer(Actor[None]):
    """Seals the log (see the module docstring). Stateless: each run reads the last seal."""

    name: ClassVar[str] = "Sealer"
    category: ClassVar[str | None] = None
    messages: ClassVar[tuple[type[msgspec.Struct], ...]] = (SealsComputed, SealBacklog)
    io_messages: ClassVar[tuple[type[msgspec.Struct], ...]] = (SealBacklog,)

    def __init__(
        self, settings: Settings, *, max_events_per_run: int = 10 * MAX_EVENTS_PER_SEAL
    ) -> None:
        if max_events_per_run < 1:
            raise ValueError("max_events_per_run must be at least 1")
        self.settings = settings
        self.max_events_per_run = max_events_per_run
        self.tick = TickSpec(interval=settings.seal_interval, missed="run_once")
        self.queue: TaskQueue | None = None
        self.fence: Fence | None = None

    def initial_state(self) -> None:
        return None

    async def setup(self, stack: contextlib.AsyncExitStack, runner: ActorRunner[None]) -> None:
        self.queue = TaskQueue(runner.store, task_types(self.settings), node=runner.node)
        self.fence = runner.fence
        if not self.settings.admin_ids:
            logger.warning(
                "Sealer: ADMIN_IDS is empty: seal digests are kept in the log only, not sent "
                "anywhere outside it",
                extra={"action": "seal_no_admins"},
            )

    # -- pure --------------------------------------------------------------------------------
    def decide(self, state: None, message: Message) -> Sequence[Emit]:
        if not isinstance(message, SealsComputed):
            return ()
        return [
            Emit(
                SEAL_STREAM,
                seal,
                expected_version=message.follows + i,
                event_id=seal_event_id(seal),
            )
            for i, seal in enumerate(message.seals)
        ]

    # -- I/O ---------------------------------------------------------------------------------
    async def on_tick(self, state: None, runner: ActorRunner[None]) -> Sequence[Message]:
        return await self.compute(runner)

    async def perform(
        self, state: None, message: Message, runner: ActorRunner[None]
    ) -> Sequence[Message]:
        try:
            return await self.compute(runner)
        except StoreUnavailable as exc:
            # Not a crash: the backlog is still in the log, and the next tick goes on with it.
            logger.warning(
                "Sealer: sealing the backlog stopped, the database is unreachable (%s); the "
                "next tick goes on",
                exc,
                extra={"action": "seal_backlog_postponed"},
            )
            return ()

    async def compute(self, runner: ActorRunner[None]) -> list[Message]:
        """The seals the log calls for now (read only: the runtime appends them)."""
        last = await runner.store.last_event(SEAL_STREAM)
        previous = None
        if last is not None:
            if not isinstance(last.event, LogSealed):
                raise TypeError(f"{SEAL_STREAM} v{last.version} is a {last.type}, not a seal")
            previous = last.event
        seals, more = await next_seals(
            runner.store,
            previous,
            sealed_at=runner.clock.now(),
            max_events=self.max_events_per_run,
            incidental=SealsOwnEvents(runner.store),
        )
        if more:
            with contextlib.suppress(MailboxFull):
                runner.ref.tell_nowait(SealBacklog())
        if not seals:
            return []
        return [SealsComputed(seals=seals, follows=0 if last is None else last.version)]

    async def on_commit(self, tx: Transaction | MemoryTransaction, emits: Sequence[Emit]) -> None:
        if not self.settings.admin_ids:
            return
        assert self.queue is not None
        for emit in emits:
            seal = emit.event
            if isinstance(seal, LogSealed):
                alert_id = uuid.uuid5(_NAMESPACE, f"digest/{seal.seal}/{seal.hash}")
                await self.queue.add_task(
                    ADMIN_ALERT,
                    AdminAlert(alert_id=alert_id, text=digest_text(seal)),
                    dedupe_key=f"{_DIGEST_KEY}{seal.seal}",
                    tx=tx,
                    fence=self.fence,
                )
