"""The supervisor: keeps i3lani's actors running, one node at a time, and records every step.

Erlang/OTP's supervisor and Akka's backoff supervision keep their bookkeeping in memory and
lose it with the process. Here every lifecycle step is an event in the ``actor-<name>`` stream
(started, crashed, backoff scheduled, restarted, parked, stopped), so an actor's status, its
restart history and its backoff survive the process, and are queryable with SQL. A crash
restart writes its four events in two commits (the crash with its backoff; the restart with
the new incarnation's start); all three of its commits (those two and the next generation's
lease grant) are made during the backoff, the restart's by an incarnation made ready just ahead
of the backoff's end and let begin at it (see :meth:`Supervisor._back_off`).

The pure parts (what to do about an exit, how long to back off, when to park) are plain
functions at the top of this module; each child's lifecycle on this node is an explicit state
machine (:data:`ChildState`: StandingBy -> Starting -> Running -> BackingOff / Stopped / Fenced,
the moves allowed listed in one table), and how an incarnation ended is a tagged :data:`Exit`
(Crashed, Finished, LeaseLost, Cancelled, RestartAsked); :class:`Supervisor` does the I/O. An
actor's status, as operators see it, is a read model in :mod:`actors.runtime.status`.

One supervisor runs per node (``i3lani run``). Strategy one-for-one: each child has its own
loop, and one actor's crash never disturbs the others. A child runs only while its node holds
the actor's lease (:mod:`store.leases`); every grant bumps the generation, and the actor's
appends are fenced with it, so two nodes never run the same actor at once and a node that lost
its lease cannot write.

Operators steer actors with commands appended to ``ops-commands`` (``i3lani restart|stop|start``);
the node running the actor acts on them as soon as the notification arrives.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import random
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import anyio
import msgspec
from anyio.abc import TaskStatus

from actors.runtime import ActorRef, ActorRunner, ChildSpec, Clock, RestartType, SystemClock
from actors.runtime.status import SHUTDOWN_REASON
from events import (
    ActorBackoffScheduled,
    ActorCrashed,
    ActorParked,
    ActorRestarted,
    ActorStarted,
    ActorStopped,
    AlertRaised,
    Event,
    EventMetadata,
    OperatorCommandIssued,
    environment,
)
from events.errors import StaleGeneration, StoreError, StoreUnavailable
from events.streams import OPS, OPS_ALERTS, OPS_COMMANDS, actor_stream
from store import EventStore, LeaseClock, NewEvent
from store.leases import Lease, Leases
from store.memory import MemoryLog
from store.views import DesiredState, desired_state

__all__ = [
    "BackoffPolicy",
    "ChildSpec",
    "ExitReason",
    "Intensity",
    "Park",
    "Restart",
    "RestartType",
    "Supervisor",
    "decide_restart",
    "should_restart",
    # a child's lifecycle
    "ChildState",
    "StandingBy",
    "Starting",
    "Running",
    "BackingOff",
    "Stopped",
    "Fenced",
    "IllegalTransition",
    "transition",
    # how an incarnation or a backoff ended
    "Exit",
    "Crashed",
    "Finished",
    "LeaseLost",
    "Cancelled",
    "RestartAsked",
    "BackoffEnd",
    "Elapsed",
    "Commanded",
    "exit_reason",
]

logger = logging.getLogger("supervisor")


# -- pure policy ---------------------------------------------------------------------------------
class ExitReason(enum.Enum):
    """How an actor incarnation ended."""

    NORMAL = "normal"  # its run returned
    CRASH = "crash"  # it raised
    SHUTDOWN = "shutdown"  # the supervisor stopped it (node shutdown, operator, lease lost)


def should_restart(restart: RestartType, reason: ExitReason) -> bool:
    """OTP's matrix: permanent restarts on any exit, transient on a crash, temporary never; a
    shutdown the supervisor asked for is never followed by a restart."""
    if reason is ExitReason.SHUTDOWN or restart is RestartType.TEMPORARY:
        return False
    return restart is RestartType.PERMANENT or reason is ExitReason.CRASH


@dataclass(frozen=True)
class BackoffPolicy:
    """Delay before restart number ``n`` after consecutive crashes: ``min * factor**(n-1)``,
    capped at ``max``, plus up to ``jitter`` of itself at random. Crashes after the actor had
    run for ``reset_after`` seconds or more start the count again."""

    min_delay: float = 0.5
    max_delay: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2
    reset_after: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_delay <= self.max_delay:
            raise ValueError("backoff needs 0 <= min_delay <= max_delay")
        if self.factor < 1 or not 0 <= self.jitter <= 1 or self.reset_after <= 0:
            raise ValueError("backoff needs factor >= 1, 0 <= jitter <= 1, reset_after > 0")

    def base_delay(self, attempt: int) -> float:
        exponent = max(attempt - 1, 0)
        # Capped before it can overflow: factor**exponent grows fast.
        if self.factor > 1 and exponent > 64:
            return self.max_delay
        return float(min(self.max_delay, self.min_delay * self.factor**exponent))

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = self.base_delay(attempt)
        return round(base + base * self.jitter * rng.random(), 3)


@dataclass(frozen=True)
class Intensity:
    """At most ``max_restarts`` crash restarts within ``within`` seconds; one more parks the
    actor (OTP's MaxR / MaxT, per child)."""

    max_restarts: int = 5
    within: float = 60.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.within <= 0:
            raise ValueError("intensity needs max_restarts >= 0 and within > 0")


@dataclass(frozen=True)
class Restart:
    attempt: int
    delay: float


@dataclass(frozen=True)
class Park:
    reason: str
    restarts: int


def _since_reset(history: Sequence[Event]) -> list[Event]:
    """Lifecycle events after the last operator intervention or parking: an operator's restart,
    or unparking, starts the intensity window and the backoff count afresh."""
    for index in range(len(history) - 1, -1, -1):
        event = history[index]
        if isinstance(event, ActorParked) or (
            isinstance(event, ActorRestarted) and event.cause == "operator"
        ):
            return list(history[index + 1 :])
    return list(history)


def decide_restart(
    history: Sequence[Event],
    now: datetime,
    backoff: BackoffPolicy,
    intensity: Intensity,
    rng: random.Random,
) -> Restart | Park:
    """After the crash that ends ``history`` (the actor's lifecycle events, oldest first): how
    long to back off before restarting, or to park the actor. Pure."""
    recent = _since_reset(history)
    window_start = now - timedelta(seconds=intensity.within)
    restarts = sum(
        1
        for event in recent
        if isinstance(event, ActorRestarted)
        and event.cause == "crash"
        and event.restarted_at > window_start
    )
    if restarts + 1 > intensity.max_restarts:
        return Park(
            reason=(
                f"restart intensity exceeded: {restarts + 1} crash restarts within "
                f"{intensity.within:g}s (limit {intensity.max_restarts})"
            ),
            restarts=restarts,
        )
    # Consecutive crashes, back to and including the first one after a stable run.
    attempt = 0
    for event in reversed(recent):
        if isinstance(event, ActorCrashed):
            attempt += 1
            if event.uptime_seconds >= backoff.reset_after:
                break
    attempt = max(attempt, 1)
    return Restart(attempt=attempt, delay=backoff.delay(attempt, rng))


# -- a child's lifecycle on this node ------------------------------------------------------------
# Each child is in exactly one of these states; Supervisor moves it along _TRANSITIONS only, and
# a move the table does not allow raises IllegalTransition (a bug in the supervisor, never in an
# actor). The log records the same story as lifecycle events; these states are this node's view.
@dataclass(frozen=True)
class StandingBy:
    """Waiting until the actor should run (not stopped or parked) and this node holds its lease."""


@dataclass(frozen=True)
class Starting:
    """The lease of ``generation`` is held; an incarnation is about to start, or starting."""

    generation: int


@dataclass(frozen=True)
class Running:
    """An incarnation runs here, under the lease of ``generation``, its start recorded."""

    generation: int


@dataclass(frozen=True)
class BackingOff:
    """After exit number ``attempt`` in a row, waiting ``delay`` s, until ``until``, to restart."""

    until: datetime
    attempt: int
    delay: float


@dataclass(frozen=True)
class Stopped:
    """Not to run until an operator says so (stopped, parked, not restarted), or the node is
    shutting down: its lease is handed back."""

    reason: str


@dataclass(frozen=True)
class Fenced:
    """The lease was lost (taken over, expired, or its clock ran out): this node has stopped
    acting for the actor and writes nothing more under that lease; it stands by again."""

    why: str


ChildState = StandingBy | Starting | Running | BackingOff | Stopped | Fenced

TIMER_GRAIN = 0.0015
"""Seconds before a backoff's end that the supervisor stops sleeping on the event loop's timer
and waits out the rest in turns of the loop (real time only, see
:meth:`Supervisor._backoff_sleep`): the loop's selector waits in whole milliseconds,
rounded up, so its timer wakes up to a millisecond late, plus the loop's own turn."""

PRESTART = 0.025
"""Seconds before a backoff's end, at least, that the next incarnation starts getting ready
(real time only, see :meth:`Supervisor._back_off`): more when the last one took longer to get
ready, never more than half the backoff."""

WATCH_SAFETY = 60.0
"""Seconds between looks at a running incarnation when nothing pokes it. Everything that ends
one (its exit, a lost lease, a command, shutdown) pokes the child as it happens; this look is
only a safety net, and an idle node spends no wake-ups on it in between."""

_TRANSITIONS: dict[type[ChildState], tuple[type[ChildState], ...]] = {
    # the lease granted; a backoff from before a deploy resumed; the node stopping meanwhile
    StandingBy: (Starting, BackingOff, Stopped),
    # started; crashed while starting; restarted by an operator; lease lost; database away
    Starting: (Running, BackingOff, Starting, Stopped, Fenced, StandingBy),
    # an operator restart (a new generation); an exit and its backoff; stopped; lease lost;
    # database away
    Running: (Starting, BackingOff, Stopped, Fenced, StandingBy),
    # the restart; stopped by an operator or the node stopping; lease lost; database away
    BackingOff: (Starting, Stopped, Fenced, StandingBy),
    # operators want it running again (a start command, unparking); a database error meanwhile
    # leaves it Stopped
    Stopped: (StandingBy,),
    Fenced: (StandingBy,),
}


class IllegalTransition(RuntimeError):
    """The supervisor tried a move its state machine does not allow: a bug, raised loudly."""


def transition(current: ChildState, new: ChildState) -> ChildState:
    """``new``, if a child may move there from ``current``; IllegalTransition otherwise. Pure."""
    if type(new) not in _TRANSITIONS[type(current)]:
        raise IllegalTransition(
            f"a child cannot go from {type(current).__name__} to {type(new).__name__}"
        )
    return new


# -- how an incarnation, or a backoff, ended ------------------------------------------------------
@dataclass(frozen=True)
class Crashed:
    """The incarnation raised ``error`` after running ``uptime`` seconds, at ``at``."""

    error: BaseException
    uptime: float
    at: datetime


@dataclass(frozen=True)
class Finished:
    """The incarnation's run returned by itself."""


@dataclass(frozen=True)
class LeaseLost:
    """The lease was lost under it: it was ended without a graceful stop or a word written."""

    why: str


@dataclass(frozen=True)
class Cancelled:
    """The supervisor ended it gracefully: the node is shutting down or an operator said stop."""

    reason: str


@dataclass(frozen=True)
class RestartAsked:
    """An operator asked for a restart: a new incarnation under a new generation."""

    command: OperatorCommandIssued


Exit = Crashed | Finished | LeaseLost | Cancelled | RestartAsked
"""How an incarnation ended."""


@dataclass(frozen=True)
class Elapsed:
    """The backoff's delay passed."""


@dataclass(frozen=True)
class Commanded:
    """An operator command cut the backoff short."""

    command: OperatorCommandIssued


BackoffEnd = Elapsed | Commanded | LeaseLost | Cancelled
"""How a backoff ended (Cancelled: the node is stopping; nothing is recorded, so the backoff
resumes after the deploy)."""


def exit_reason(outcome: Crashed | Finished) -> ExitReason:
    """The OTP exit reason of an incarnation that ended by itself."""
    return ExitReason.CRASH if isinstance(outcome, Crashed) else ExitReason.NORMAL


def traceback_digest(exc: BaseException) -> str:
    """A short stable digest of where an exception was raised (file, function, line), so that
    identical crashes group together whatever their message."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = "|".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.name}:{f.lineno}" for f in frames)
    return hashlib.sha256(f"{type(exc).__qualname__}|{where}".encode()).hexdigest()[:16]


# -- children ------------------------------------------------------------------------------------
class _LeaseLost(Exception):
    """Our lease was taken over or expired: stop the actor without writing anything."""


@dataclass(eq=False)
class _Child:
    """One child on this node: its state (moved only by :meth:`move`), the handles of its
    current incarnation, and its inbox (an operator command, a stop request, a wake-up)."""

    spec: ChildSpec
    state: ChildState = field(default_factory=StandingBy)
    # the current incarnation and lease
    runner: ActorRunner[Any] | None = None
    ref: ActorRef | None = None
    lease: Lease | None = None
    start_at: tuple[float, datetime] | None = None
    """When the incarnation about to start may begin, on the clock's monotonic time and by its
    wall clock: the end of its backoff, which it gets ready ahead of (see
    :meth:`Supervisor._back_off`); None: at once."""
    ready_seconds: float = 0.0
    """How long the last incarnation took to get ready (built, recovered, its start recorded):
    how far ahead of a backoff's end the next one starts getting ready."""
    restart_unrecorded: ActorRestarted | None = None
    """The restart that leads to the incarnation about to start, decided but not in the log
    yet: :meth:`Supervisor._record` appends it with this child's next lifecycle record (the
    incarnation's ActorStarted, or its ActorCrashed if it fails to start), in one commit. Never
    kept across leases: see :meth:`Supervisor._child_attempt`."""
    # inbox
    command: OperatorCommandIssued | None = None
    stop_requested: bool = False
    wake: anyio.Event = field(default_factory=anyio.Event)
    poked: bool = False  # poke() since the last wait: a wake-up, not a wait's time limit
    # what others wait on
    started: anyio.Event = field(default_factory=anyio.Event)
    ended: anyio.Event = field(default_factory=anyio.Event)
    finished: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope | None = None

    def move(self, new: ChildState) -> None:
        """Go to ``new``: IllegalTransition if the state machine does not allow it."""
        self.state = transition(self.state, new)
        logger.debug(
            "%s: %s",
            self.spec.name,
            type(new).__name__,
            extra={"action": "child_state", "state": type(new).__name__},
        )

    def poke(self) -> None:
        self.poked = True
        self.wake.set()

    async def wait_poked(self, seconds: float) -> bool:
        """Wait ``seconds`` or until poked: whether it was poked. (The time limit sets the
        event too, on a timer rather than through a cancel scope: the flag tells them apart.)"""
        await environment.set_after(self.wake, seconds)
        poked, self.poked = self.poked, False
        self.wake = anyio.Event()
        return poked


class Supervisor:
    """Keeps the given actors running on this node, when it holds their leases."""

    def __init__(
        self,
        store: EventStore | MemoryLog,
        specs: Sequence[ChildSpec],
        *,
        node: str,
        clock: Clock | None = None,
        backoff: BackoffPolicy | None = None,
        intensity: Intensity | None = None,
        lease_ttl: float = 8.0,
        acquire_interval: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique: {names}")
        self.store = store
        self.node = node
        self.clock = clock or SystemClock()
        self.backoff = backoff or BackoffPolicy()
        self.intensity = intensity or Intensity()
        # The lease holder is this process, not just the node name: two processes given the
        # same I3LANI_NODE must still never share a lease.
        self.holder = f"{node}/{environment.new_uuid().hex[:8]}"
        self.leases = Leases(store, self.holder, ttl=lease_ttl)
        self.acquire_interval = acquire_interval
        # Standing by for a lease held elsewhere: woken when it is handed back, asleep until
        # it can expire meanwhile (see _wait_for_lease and store.leases, "Standing by").
        self._releases = self.leases.release_listener(
            self._lease_released,
            on_lost=self._releases_missed,
            who=f"supervisor {self.holder}",
            poll_interval=acquire_interval,
        )
        self.rng = rng or environment.new_rng()
        # The holds whose leases the keeper renews (_keep_leases), by child name; the keeper
        # sleeps on _keeper_wake while there are none.
        self._kept: dict[str, tuple[_Child, anyio.Event]] = {}
        self._keeper_wake = anyio.Event()
        self._children = {spec.name: _Child(spec) for spec in specs}
        # Where each child's latest ActorStarted landed in the log: shutdown goes in reverse of
        # that order, the order the log itself shows (children start concurrently).
        self._started_positions: dict[str, int] = {}
        self._shutting_down = False

    # -- public ------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._children)

    def ref(self, name: str) -> ActorRef | None:
        """The running actor's mailbox on this node, if it runs here."""
        return self._children[name].ref

    def state(self, name: str) -> ChildState:
        """Where ``name`` is in its lifecycle on this node."""
        return self._children[name].state

    def running_here(self) -> list[str]:
        return [name for name, child in self._children.items() if child.ref is not None]

    async def wait_started(self, name: str) -> ActorRef:
        """Wait until ``name`` runs on this node and return its ref."""
        child = self._children[name]
        while child.ref is None:
            await child.started.wait()
        return child.ref

    async def wait_ended(self, ref: ActorRef) -> None:
        """Wait until the incarnation behind ``ref`` no longer runs on this node."""
        child = self._children[ref.name]
        while child.ref is ref:
            await child.ended.wait()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Supervise until cancelled; then stop every actor gracefully, in reverse start order.

        Child loops are shielded from the cancellation that ends ``run``: they are stopped one
        by one by :meth:`shutdown`, each within its shutdown timeout, and only cancelled after.
        """
        async with anyio.create_task_group() as tg:
            for child in self._children.values():
                tg.start_soon(self._child_loop, child)
            tg.start_soon(self._follow_commands)
            tg.start_soon(self._keep_leases)
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    try:
                        await self._stop_all()
                    finally:
                        await self._releases.close()
                tg.cancel_scope.cancel()

    async def shutdown(self) -> None:
        """Stop every actor in reverse start order, each within its shutdown timeout."""
        await self._stop_all()

    # -- recording ---------------------------------------------------------------------------
    async def _record(self, child: _Child, events: Sequence[Event], lease: Lease | None) -> int:
        """Append lifecycle ``events`` of ``child`` in one append (one commit), preceded by the
        restart it still owes the log (:attr:`_Child.restart_unrecorded`), fenced by our lease;
        retried while PostgreSQL is away (with the same event ids, so a retry never records
        anything twice). Returns the global position of the last one.

        Why several at once: each commit costs a round trip and a WAL flush (1 to 4 ms on the
        benchmark's machine), and the steps of one restart used to be one commit each.
        Grouping keeps every event and their order in the log; it only decides which of them
        become durable together."""
        name = child.spec.name
        owed = [child.restart_unrecorded] if child.restart_unrecorded is not None else []
        items = [NewEvent(event=event) for event in (*owed, *events)]
        metadata = EventMetadata(caused_by="supervisor", node=self.node)
        delay = 0.2
        while True:
            try:
                result = await self.store.append(
                    actor_stream(name),
                    items,
                    metadata=metadata,
                    fence=lease.fence if lease else None,
                )
                child.restart_unrecorded = None
                return result.last_position
            except StaleGeneration as exc:
                raise _LeaseLost(str(exc)) from exc
            except StoreUnavailable as exc:
                logger.warning(
                    "cannot record %s for %s (%s); retrying in %.1fs",
                    ", ".join(type(item.event).__name__ for item in items),
                    name,
                    exc,
                    delay,
                    extra={"action": "record_retry"},
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _alert(self, kind: str, subject: str, message: str) -> None:
        logger.error("%s: %s", subject, message, extra={"action": "alert"})
        alert = AlertRaised(
            alert_id=environment.new_uuid(),
            kind=kind,
            subject=subject,
            message=message,
            raised_at=self.clock.now(),
        )
        try:
            await self.store.append(
                OPS_ALERTS, [alert], metadata=EventMetadata(caused_by="supervisor", node=self.node)
            )
        except StoreUnavailable:
            logger.exception("could not record alert", extra={"action": "alert_failed"})

    async def history(self, name: str) -> list[Event]:
        return [
            r.event for r in await self.store.read_stream(actor_stream(name), skip_unknown=True)
        ]

    async def desired_state(self, name: str) -> DesiredState:
        return await desired_state(self.store, name)

    # -- one child ---------------------------------------------------------------------------
    async def _child_loop(self, child: _Child) -> None:
        # Shielded: the end of `run` must not cancel an actor mid-message; _stop_all stops it
        # gracefully and cancels this scope only after the shutdown timeout.
        try:
            with anyio.CancelScope(shield=True) as child.scope:
                while not self._shutting_down and not child.stop_requested:
                    await self._child_attempt(child)
        finally:
            child.finished.set()

    async def _child_attempt(self, child: _Child) -> None:
        """Hold the lease and run the actor until it is Stopped (the lease is handed back) or
        Fenced (lease lost), or the database fails; after those last two the loop tries again."""
        name = child.spec.name
        if isinstance(child.state, Fenced):
            child.move(StandingBy())
        # Errors from inside the task group arrive wrapped in an ExceptionGroup (anyio 4).
        try:
            lease = await self._wait_for_lease(child)
            if lease is None:
                if not isinstance(child.state, Stopped):
                    child.move(Stopped(SHUTDOWN_REASON))
                return
            child.lease = lease
            child.command = None  # commands seen before we held the lease are stale
            # A restart decided under a lease since lost never made it into the log: the log
            # still ends with the backoff (or the incarnation) before it, which the history
            # read below resumes, and that restart is recorded again, by whoever performs it.
            child.restart_unrecorded = None
            child.move(Starting(lease.generation))
            try:
                async with anyio.create_task_group() as tg:
                    lost = anyio.Event()
                    tg.start_soon(self._keep_lease, child, lost)
                    await self._run_with_lease(child, lease, lost)
                    tg.cancel_scope.cancel()
            finally:
                held, child.lease = child.lease, None
                if isinstance(child.state, Stopped) and held is not None:
                    await self._release(held)
        except* _LeaseLost as group:
            logger.warning(
                "%s: lease lost (%s); standing by",
                name,
                group.exceptions[0],
                extra={"action": "lease_lost"},
            )
            child.move(Fenced(str(group.exceptions[0])))
        except* StoreError as group:
            logger.warning(
                "%s: database unavailable (%s); retrying",
                name,
                group.exceptions[0],
                extra={"action": "supervisor_retry"},
            )
            if not isinstance(child.state, StandingBy | Stopped):
                child.move(StandingBy())
            await anyio.sleep(1.0)

    async def _wait_for_lease(self, child: _Child) -> Lease | None:
        """Wait until the actor should run and we hold its lease; a Stopped child stays so
        until operators want it running again (StandingBy).

        While another node holds the lease, the next try is when that node's grant can expire
        (at least ``acquire_interval`` after this one), or as soon as it is handed back: a
        live holder keeps its grant most of a lease ahead, so this asks about once per lease
        instead of every ``acquire_interval``. A dead holder's lease is still taken within
        ``acquire_interval`` of its expiry (``store.leases``, "Standing by"). Without a
        working LISTEN (refused, or a connection lost) it asks every ``acquire_interval``,
        as a handed-back lease would otherwise wait out its old expiry.

        When such a wait runs out, the grant it waited for has usually been renewed: a live
        holder renews four times per time to live. So the look after it asks for the expiry
        first, one statement, and sleeps again while the lease is still held; only a grant
        that has expired (or a lease nobody holds) is tried for, after the desired state
        (which matters only to a try: an operator's command pokes the child, which then
        tries at once)."""
        name = child.spec.name
        held_elsewhere = False  # refused, and the wait for the holder's expiry ran out
        while not self._shutting_down and not child.stop_requested:
            wait = self.acquire_interval
            if held_elsewhere and self._releases.listening:
                remaining = await self.leases.expires_in(name)
                if remaining:  # still held (None: nobody holds it; 0: its grant expired)
                    held_elsewhere = not await child.wait_poked(max(wait, remaining))
                    continue
            refused = False
            desired = await self.desired_state(name)
            if desired == "running":
                if isinstance(child.state, Stopped):
                    child.move(StandingBy())  # an operator's start
                # Listening before the try: a release from now on pokes the wait below.
                await self._releases.listen()
                lease = await self.leases.acquire(name)
                if lease is not None:
                    return lease
                if self._releases.listening:
                    wait = max(wait, await self.leases.expires_in(name) or 0.0)
                    refused = True
            held_elsewhere = not await child.wait_poked(wait) and refused
        return None

    def _lease_released(self, name: str) -> None:
        """A node handed lease ``name`` back: its child, standing by for it, tries at once."""
        child = self._children.get(name)
        if child is not None and isinstance(child.state, StandingBy):
            child.poke()

    def _releases_missed(self) -> None:
        """Releases may have been missed (the LISTEN connection dropped): every child standing
        by tries again at once, and polls until listening again."""
        for child in self._children.values():
            if isinstance(child.state, StandingBy):
                child.poke()

    async def _keep_lease(self, child: _Child, lost: anyio.Event) -> None:
        """Keep the child's lease while this hold lasts: the node's lease keeper
        (:meth:`_keep_leases`) renews it together with the node's others; this registers the
        hold with it, for as long as it lasts."""
        name = child.spec.name
        kept = (child, lost)
        self._kept[name] = kept
        self._keeper_wake.set()
        try:
            await anyio.sleep_forever()
        finally:
            if self._kept.get(name) is kept:
                del self._kept[name]

    async def _keep_leases(self) -> None:
        """Renew every lease this node holds four times per time to live, all in one
        statement (:meth:`store.leases.Leases.renew_all`); when one is lost, or its clock runs
        out before a renewal gets through (a frozen database connection, a network cut), fence
        the node off for it at once: the clock is revoked, so every write made under it is
        refused before it is sent, and the hold's ``lost`` event stops the actor.

        Each clock (:class:`store.LeaseClock`) runs on this process's monotonic time from the
        last renewal the database confirmed, so the actor stops here before its lease can
        expire on the server and be granted elsewhere, whether or not a renewal ever answers.

        One statement for all: a node holding five leases used to send five renewals every
        quarter of the time to live, each on its own timer; the database's work and the
        node's wake-ups are now one per round, whatever the number of actors. A lease granted
        between two rounds is renewed at the next one, within a quarter of its time to live,
        which is when its own timer would have renewed it."""
        interval = self.leases.ttl / 4
        retry = min(0.5, interval)
        wait = interval
        while True:
            held = self._holds()
            if not held:
                self._keeper_wake = anyio.Event()
                await self._keeper_wake.wait()
                wait = interval  # a fresh grant: its clock has most of a time to live left
                continue
            soonest = min(clock.remaining() for *_, clock in held)
            await anyio.sleep(min(wait, soonest))
            live: list[tuple[_Child, anyio.Event, Lease, LeaseClock]] = []
            for child, lost, lease, clock in self._holds():
                if clock.valid():
                    live.append((child, lost, lease, clock))
                else:
                    self._lose(
                        child, lost, clock, lease, "no renewal got through before its clock ran out"
                    )
            if not live:
                continue
            try:
                renewed: set[str] | None = None
                with anyio.move_on_after(min(clock.remaining() for *_, clock in live)):
                    renewed = await self.leases.renew_all([lease for _, _, lease, _ in live])
            except StoreUnavailable as exc:
                logger.warning(
                    "cannot renew leases %s (%s); %.1fs left",
                    ", ".join(lease.name for _, _, lease, _ in live),
                    exc,
                    min(clock.remaining() for *_, clock in live),
                    extra={"action": "lease_renew_failed"},
                )
                wait = retry
                continue
            if renewed is None:
                wait = 0.0  # the soonest clock ran out meanwhile: lost on the next look
                continue
            wait = interval
            for child, lost, lease, clock in live:
                if lease.name in renewed or not self._holding(child, lost, lease):
                    # Renewed; or a restart took the next generation (or the hold ended)
                    # while this renewal was on its way: a verdict on a superseded grant says
                    # nothing about the current one.
                    continue
                self._lose(child, lost, clock, lease, "it was taken over")

    def _holds(self) -> list[tuple[_Child, anyio.Event, Lease, LeaseClock]]:
        """The holds the keeper renews: each registered child's current lease and clock."""
        held = []
        for child, lost in self._kept.values():
            lease = child.lease
            if lease is not None and lease.clock is not None and not lost.is_set():
                held.append((child, lost, lease, lease.clock))
        return held

    def _holding(self, child: _Child, lost: anyio.Event, lease: Lease) -> bool:
        kept = self._kept.get(child.spec.name)
        return kept is not None and kept[1] is lost and child.lease is lease

    def _lose(
        self, child: _Child, lost: anyio.Event, clock: LeaseClock, lease: Lease, why: str
    ) -> None:
        clock.revoke(f"the lease was lost: {why}")
        logger.warning(
            "%s: lease lost (%s); this node stops acting for it",
            lease.name,
            why,
            extra={"action": "lease_lost"},
        )
        lost.set()
        child.poke()

    async def _release(self, lease: Lease) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(3):
            try:
                await self.leases.release(lease)
            except StoreError:
                logger.warning("could not release lease %s", lease.name)

    async def _run_with_lease(self, child: _Child, lease: Lease, lost: anyio.Event) -> None:
        """Start, watch and restart the actor while we hold ``lease``; returns once the child
        is Fenced (lease lost: stand by for it again) or Stopped (stay stopped)."""
        name = child.spec.name
        history = await self.history(name)
        if history and isinstance(history[-1], ActorBackoffScheduled):
            # A backoff scheduled before a deploy is honoured after it.
            pending = history[-1]
            backing_off = BackingOff(pending.until, pending.attempt, pending.delay_seconds)
            resumed = await self._back_off(child, lease, lost, backing_off)
            if resumed is None:
                return
            lease = resumed
        previous_node = _last_running_node(history)
        if previous_node is not None:
            # Left running, never stopped: its node died or lost the lease (this one, too).
            # Recorded with the start of the incarnation it leads to.
            child.restart_unrecorded = self._restarted(
                name, "failover", reason=f"previously on {previous_node}"
            )
        next_lease: Lease | None = lease
        while next_lease is not None:
            outcome = await self._run_once(child, next_lease, lost)
            next_lease = await self._after_exit(child, next_lease, outcome, lost)

    async def _after_exit(
        self, child: _Child, lease: Lease, outcome: Exit, lost: anyio.Event
    ) -> Lease | None:
        """Record how an incarnation ended and move the child on: the lease to start the next
        incarnation under (Starting), or None once it is Stopped or Fenced.

        Every outcome is recorded in one append: the crash together with what was decided
        about it (the backoff, the parking, or the stop), since the decision needs nothing
        from the log that the crash record would add (it is folded in here, in memory)."""
        name = child.spec.name
        if isinstance(outcome, LeaseLost):
            child.move(Fenced(outcome.why))
            return None
        if isinstance(outcome, Cancelled):
            await self._record_stopped(child, lease, outcome.reason)
            child.move(Stopped(outcome.reason))
            return None
        if isinstance(outcome, RestartAsked):
            # An operator restart: a new incarnation, a new generation; the restart is
            # recorded with that incarnation's start (see _Child.restart_unrecorded).
            command = outcome.command
            restarted = self._restarted(
                name, "operator", requested_by=command.requested_by, reason=command.reason or None
            )
            lease = await self._regrant(child, lease)
            child.restart_unrecorded = restarted
            child.move(Starting(lease.generation))
            return lease
        # The backoff counts from the crash (the moment its exception left the actor's
        # runner), or from here for the other ends: the supervisor's bookkeeping after it
        # (seeing the end, reading the history, the records, the next grant) runs during it.
        ended_at = outcome.at if isinstance(outcome, Crashed) else self.clock.now()
        ended: list[Event] = []
        if isinstance(outcome, Crashed):
            crash = outcome.error
            logger.error(
                "%s crashed after %.1fs: %s: %s",
                name,
                outcome.uptime,
                type(crash).__name__,
                crash,
                extra={"action": "actor_crashed"},
            )
            ended.append(
                ActorCrashed(
                    actor=name,
                    node=self.node,
                    generation=lease.generation,
                    error_type=type(crash).__qualname__,
                    message=str(crash)[:2000],
                    traceback_digest=traceback_digest(crash),
                    uptime_seconds=max(outcome.uptime, 0.0),
                    crashed_at=ended_at,
                )
            )
        if not should_restart(child.spec.restart, exit_reason(outcome)):
            how = "crashed" if isinstance(outcome, Crashed) else "finished"
            reason = f"{child.spec.restart.value} actor {how}: not restarted"
            await self._record(child, [*ended, self._stopped(lease, name, reason)], lease)
            await self._remember_stopped(name, reason)
            child.move(Stopped(reason))
            return None
        # The history as it will stand once this exit is recorded: what the log holds, the
        # restart still owed to it (an incarnation that failed to start), and this crash.
        owed = [child.restart_unrecorded] if child.restart_unrecorded is not None else []
        history = [*await self.history(name), *owed, *ended]
        decision = decide_restart(history, ended_at, self.backoff, self.intensity, self.rng)
        if isinstance(decision, Park):
            parked = ActorParked(
                actor=name,
                reason=decision.reason,
                restarts=decision.restarts,
                window_seconds=self.intensity.within,
                parked_at=self.clock.now(),
            )
            await self._record(child, [*ended, parked], lease)
            await self._alert("actor_parked", name, f"{name} parked: {decision.reason}")
            child.move(Stopped(f"parked: {decision.reason}"))
            return None
        backing_off = BackingOff(
            until=ended_at + timedelta(seconds=decision.delay),
            attempt=decision.attempt,
            delay=decision.delay,
        )
        scheduled = ActorBackoffScheduled(
            actor=name,
            attempt=backing_off.attempt,
            delay_seconds=backing_off.delay,
            until=backing_off.until,
            scheduled_at=self.clock.now(),
        )
        await self._record(child, [*ended, scheduled], lease)
        return await self._back_off(child, lease, lost, backing_off)

    def _restarted(
        self,
        name: str,
        cause: Literal["crash", "operator", "failover"],
        *,
        attempt: int = 0,
        delay: float = 0.0,
        requested_by: str | None = None,
        reason: str | None = None,
        at: datetime | None = None,
    ) -> ActorRestarted:
        return ActorRestarted(
            actor=name,
            cause=cause,
            attempt=attempt,
            delay_seconds=delay,
            restarted_at=self.clock.now() if at is None else at,
            requested_by=requested_by,
            reason=reason,
        )

    def _stopped(self, lease: Lease, name: str, reason: str) -> ActorStopped:
        return ActorStopped(
            actor=name,
            node=self.node,
            generation=lease.generation,
            reason=reason,
            stopped_at=self.clock.now(),
        )

    async def _record_stopped(self, child: _Child, lease: Lease, reason: str) -> None:
        await self._record(child, [self._stopped(lease, child.spec.name, reason)], lease)

    async def _back_off(
        self, child: _Child, lease: Lease, lost: anyio.Event, backing_off: BackingOff
    ) -> Lease | None:
        """Take the next incarnation's lease, then wait BackingOff until ``backing_off.until``
        (at once if that has passed) and restart: the lease to start the next incarnation under
        (Starting), or None once the child is Stopped or Fenced.

        The grant comes first, while the backoff runs, and not after it: it is a commit of its
        own (a durable generation bump, which fencing rests on) and would otherwise stand
        between the end of the backoff and the restart. Taking it early is as sound: no
        incarnation runs here meanwhile (the last one has ended, and the supervisor's own
        records of its end are in), the new generation is durable before anything is written
        under it, and it only fences off the old one sooner. The restart itself goes into the
        log with the next incarnation's first record (see _Child.restart_unrecorded).

        On the real clock, the wait ends a little ahead of the backoff's end (:data:`PRESTART`,
        or half again as long as the last incarnation took to get ready; at most half the
        backoff), and the next incarnation gets ready in that time: built, its state
        recovered, its start recorded, with ``started_at`` and ``restarted_at`` the backoff's
        end. It is held at a gate until that end (:meth:`_run_once`): nothing of its own
        runs before it (no reaction, tick or message), and so the restart takes no commit
        past the backoff. A command that comes in that last moment is taken once it has
        begun (a stop stops it, a restart restarts it again)."""
        name = child.spec.name
        child.move(backing_off)
        lease = await self._regrant(child, lease)
        remaining = (backing_off.until - self.clock.now()).total_seconds()
        end: BackoffEnd = Elapsed()
        start_at: tuple[float, datetime] | None = None
        if remaining > 0:
            lead = 0.0
            if self._real_time():
                lead = min(
                    remaining, max(PRESTART, 1.5 * child.ready_seconds), backing_off.delay / 2
                )
            start_at = (self.clock.monotonic() + remaining, backing_off.until)
            end = await self._backoff_sleep(child, remaining - lead, lost, exact=lead == 0.0)
        if isinstance(end, LeaseLost):
            child.move(Fenced(end.why))
            return None
        if isinstance(end, Cancelled):
            child.move(Stopped(end.reason))  # nothing recorded: the backoff resumes after it
            return None
        if isinstance(end, Commanded) and end.command.action == "stop":
            command = end.command
            why = f": {command.reason}" if command.reason else ""
            reason = f"stopped by {command.requested_by}{why}"
            await self._record_stopped(child, lease, reason)
            child.move(Stopped(reason))
            return None
        if isinstance(end, Commanded):
            child.restart_unrecorded = self._restarted(
                name,
                "operator",
                requested_by=end.command.requested_by,
                reason=end.command.reason or None,
            )
        else:
            # Made ready ahead, it restarts at the backoff's end: so its records say.
            child.restart_unrecorded = self._restarted(
                name,
                "crash",
                attempt=backing_off.attempt,
                delay=backing_off.delay,
                at=backing_off.until if start_at is not None else None,
            )
            child.start_at = start_at
        child.move(Starting(lease.generation))
        return lease

    def _real_time(self) -> bool:
        """Whether this supervisor runs on the real clock (no simulation, no manual clock)."""
        return isinstance(self.clock, SystemClock) and environment.current() is environment.SYSTEM

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` on the real clock's monotonic time, the last
        :data:`TIMER_GRAIN` in turns of the loop (see :meth:`_backoff_sleep`)."""
        clock = self.clock
        early = deadline - TIMER_GRAIN - clock.monotonic()
        if early > 0:
            await clock.sleep(early)
        while clock.monotonic() < deadline:
            await anyio.lowlevel.checkpoint()

    async def _regrant(self, child: _Child, lease: Lease) -> Lease:
        new = await self.leases.acquire(lease.name)
        if lease.clock is not None:
            lease.clock.revoke("a newer generation was granted")
        if new is None:
            raise _LeaseLost(f"{lease.name} was taken by another node")
        child.lease = new
        return new

    async def _backoff_sleep(
        self, child: _Child, delay: float, lost: anyio.Event, *, exact: bool = True
    ) -> BackoffEnd:
        """Sleep ``delay`` on the clock, cut short by an operator command, a stop or a lost
        lease.

        On the real clock the event loop's timer wakes up to a millisecond late (the
        selector's wait is rounded up to whole milliseconds), and a backoff's end is on a
        restart's critical path: the timer is set :data:`TIMER_GRAIN` early, the watchers
        are put away then, and the rest is waited out in turns of the loop (other tasks run
        between them: at most about that much CPU, once per restart), then the command, stop
        or lost lease that came meanwhile is honoured as during the sleep. A simulated or
        manual clock sleeps exactly already, and there turns of the loop would not move time:
        it just sleeps. So does a wait that is not ``exact``: one that ends ahead of the
        backoff's end, the rest of which :meth:`_run_once` waits out (see :meth:`_back_off`)."""
        clock = self.clock
        deadline = clock.monotonic() + delay
        tail = min(delay, TIMER_GRAIN) if exact and self._real_time() else 0.0
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while True:
                    await child.wake.wait()
                    child.wake, child.poked = anyio.Event(), False
                    if child.command is not None or child.stop_requested or self._shutting_down:
                        tg.cancel_scope.cancel()
                        return

            async def watch_lease() -> None:
                await lost.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            tg.start_soon(watch_lease)
            await clock.sleep(delay - tail)
            tg.cancel_scope.cancel()
        interrupted = self._backoff_interrupted(child, lost)
        if interrupted is None and tail > 0.0:
            while clock.monotonic() < deadline:
                await anyio.lowlevel.checkpoint()
            interrupted = self._backoff_interrupted(child, lost)
        return interrupted if interrupted is not None else Elapsed()

    def _backoff_interrupted(self, child: _Child, lost: anyio.Event) -> BackoffEnd | None:
        """What cut a backoff short (taking the command), or None: nothing did."""
        if lost.is_set():
            return LeaseLost(_lost_why(child))
        if child.stop_requested or self._shutting_down:
            return Cancelled(SHUTDOWN_REASON)
        command, child.command = child.command, None
        return Commanded(command) if command is not None else None

    async def _run_once(self, child: _Child, lease: Lease, lost: anyio.Event) -> Exit:
        """One incarnation: start it (Running once its start is recorded) and wait for how it
        ends. Only the start is recorded here; :meth:`_after_exit` records the end. After a
        backoff (``child.start_at``), it is made ready and its start recorded ahead of the
        backoff's end, and let begin at that end (see :meth:`_back_off`)."""
        name = child.spec.name
        started_at = self.clock.monotonic()
        start_at, child.start_at = child.start_at, None
        # Ahead of the backoff's end: the incarnation gets ready, its start is recorded, and
        # the gate lets it begin at the end (see _back_off).
        gate = anyio.Event() if start_at is not None else None
        outcome: Exit = Finished()
        crash: BaseException | None = None
        crashed_at = self.clock.now()
        crash_uptime = 0.0
        ended = anyio.Event()

        async def incarnation(*, task_status: TaskStatus[ActorRef | None]) -> None:
            nonlocal crash, crashed_at, crash_uptime
            # Whether the runner has reported its start, known here: the parent resumes from
            # tg.start() only when the scheduler runs it, which may be after a crash that
            # follows the report at once (its background work failing straight away).
            report = _StartReport(task_status)
            try:
                # Built here: an actor whose constructor or initial_state() raises crashes
                # like any other, alone.
                runner = ActorRunner(
                    child.spec.factory(),
                    self.store,
                    self.clock,
                    node=self.node,
                    fence=lease.fence,
                    rng=self.rng,
                )
                child.runner = runner
                await runner.run(task_status=report, gate=gate)
            except Exception as exc:  # one actor's crash never disturbs the others
                crash = _root_cause(exc)
                crashed_at, crash_uptime = self.clock.now(), self.clock.monotonic() - started_at
                if not report.reported:
                    task_status.started(None)
            finally:
                ended.set()
                child.poke()

        async with anyio.create_task_group() as tg:
            ref = await tg.start(incarnation)
            try:
                if crash is None and ref is not None:
                    # Recorded first, published after: nobody reaches an incarnation whose
                    # start is not in the log (or whose lease was lost before it was). The
                    # restart that led to it, if any, goes in with it, in one commit.
                    begins = self.clock.now()
                    if start_at is not None and start_at[1] > begins:
                        begins = start_at[1]  # ready ahead: it begins at the backoff's end
                    elif start_at is not None and child.restart_unrecorded is not None:
                        # Ready only after the backoff's end: the restart is as late.
                        child.restart_unrecorded = msgspec.structs.replace(
                            child.restart_unrecorded, restarted_at=begins
                        )
                    started = ActorStarted(
                        actor=name,
                        node=self.node,
                        generation=lease.generation,
                        started_at=begins,
                    )
                    started_position = await self._record(child, [started], lease)
                    child.ready_seconds = self.clock.monotonic() - started_at
                    if gate is not None and start_at is not None:
                        await self._sleep_until(start_at[0])
                        gate.set()
                    child.move(Running(lease.generation))
                    child.ref = ref
                    child.started.set()
                    self._started_positions[name] = started_position
                outcome = await self._wait_for_end(child, ended, lost)
            finally:
                child.ref = None
                child.started = anyio.Event()
                child.ended.set()
                child.ended = anyio.Event()
                running = child.runner
                if not ended.is_set() and gate is not None and not gate.is_set():
                    tg.cancel_scope.cancel()  # ready but never let begin: nothing of its own ran
                elif not ended.is_set() and lost.is_set():
                    # Not ours any more: no graceful stop (its writes would be refused
                    # anyway), and nothing it is waiting on may outlive the lease.
                    tg.cancel_scope.cancel()
                elif not ended.is_set() and running is not None:
                    await self._stop_runner(child, running, ended, tg.cancel_scope)
        child.runner = None
        if crash is not None:
            return Crashed(crash, crash_uptime, crashed_at)
        return outcome

    async def _wait_for_end(self, child: _Child, ended: anyio.Event, lost: anyio.Event) -> Exit:
        """Wait for the incarnation to end by itself, or for a reason to end it."""
        while True:
            if ended.is_set():
                return Finished()
            if lost.is_set():
                return LeaseLost(_lost_why(child))
            if child.stop_requested:  # set child by child, in reverse start order
                return Cancelled(SHUTDOWN_REASON)
            command, child.command = child.command, None
            if command is not None:
                if command.action == "stop":
                    why = f": {command.reason}" if command.reason else ""
                    return Cancelled(f"stopped by {command.requested_by}{why}")
                if command.action == "restart":
                    return RestartAsked(command)
            await child.wait_poked(WATCH_SAFETY)

    async def _stop_runner(
        self,
        child: _Child,
        runner: ActorRunner[Any],
        ended: anyio.Event,
        scope: anyio.CancelScope,
    ) -> None:
        """Ask the runner to finish the message in hand; cancel it after the timeout."""
        runner.request_stop()
        with anyio.move_on_after(child.spec.shutdown_timeout):
            await ended.wait()
        if not ended.is_set():
            logger.warning(
                "%s did not stop within %.1fs: cancelled",
                child.spec.name,
                child.spec.shutdown_timeout,
                extra={"action": "actor_killed"},
            )
            scope.cancel()

    async def _remember_stopped(self, name: str, reason: str) -> None:
        """Remember, in the log, that an actor is to stay stopped (temporary/transient exits)."""
        command = OperatorCommandIssued(
            command_id=environment.new_uuid(),
            action="stop",
            actor=name,
            requested_by=f"supervisor@{self.node}",
            requested_at=self.clock.now(),
            reason=reason,
        )
        await self.store.append(OPS_COMMANDS, [command])

    # -- operator commands -------------------------------------------------------------------
    async def _follow_commands(self) -> None:
        while True:
            try:
                start = await self.store.head()
                async with self.store.subscribe(category=OPS, after=start) as subscription:
                    async for recorded in subscription:
                        event = recorded.event
                        if isinstance(event, OperatorCommandIssued):
                            child = self._children.get(event.actor)
                            if child is not None:
                                child.command = event
                                child.poke()
            except StoreUnavailable:
                await anyio.sleep(1.0)

    # -- shutdown ----------------------------------------------------------------------------
    async def _stop_all(self) -> None:
        if self._shutting_down:
            return
        self._shutting_down = True
        running = sorted(
            (n for n, child in self._children.items() if child.runner is not None),
            key=lambda n: self._started_positions.get(n, 0),
            reverse=True,
        )
        others = [n for n in self._children if n not in running]
        for name in [*running, *others]:
            child = self._children[name]
            child.stop_requested = True
            child.poke()
            with anyio.move_on_after(child.spec.shutdown_timeout + 1.0):
                await child.finished.wait()
            if not child.finished.is_set() and child.scope is not None:
                child.scope.cancel()


class _StartReport:
    """The task status of an incarnation, passed on to its runner: remembers whether the
    runner reported its start (``started`` may be called once only)."""

    def __init__(self, status: TaskStatus[ActorRef | None]) -> None:
        self._status = status
        self.reported = False

    def started(self, value: ActorRef | None = None) -> None:
        self.reported = True
        self._status.started(value)


def _root_cause(exc: BaseException) -> BaseException:
    """The exception inside task-group wrappers (anyio wraps even a single error)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _lost_why(child: _Child) -> str:
    """Why ``child``'s lease was lost, as its clock was told."""
    lease = child.lease
    if lease is not None and lease.clock is not None:
        return lease.clock.why()
    return "the lease was lost"


def _last_running_node(history: Sequence[Event]) -> str | None:
    """The node an actor was left running on (no stop, park or crash recorded after)."""
    for event in reversed(history):
        if isinstance(event, ActorStarted):
            return event.node
        if isinstance(event, ActorStopped | ActorParked | ActorCrashed):
            return None
    return None
