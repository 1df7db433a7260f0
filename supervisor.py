"""The supervisor: keeps i3lani's actors running, one node at a time, and records every step.

Erlang/OTP's supervisor and Akka's backoff supervision keep their bookkeeping in memory and
lose it with the process. Here every lifecycle step is an event in the ``actor-<name>`` stream
(started, crashed, backoff scheduled, restarted, parked, stopped), so an actor's status, its
restart history and its backoff survive the process, and are queryable with SQL.

The pure parts (what to do about an exit, how long to back off, when to park, what an actor's
status is) are plain functions at the top of this module; :class:`Supervisor` does the I/O.

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
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import anyio
import asyncpg
from anyio.abc import TaskStatus

from actors.runtime import ActorRef, ActorRunner, ChildSpec, Clock, RestartType, SystemClock
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
)
from events.errors import StaleGeneration, StoreUnavailable
from events.streams import OPS, OPS_ALERTS, OPS_COMMANDS, actor_stream
from store import EventStore, NewEvent
from store.leases import Lease, Leases
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


def traceback_digest(exc: BaseException) -> str:
    """A short stable digest of where an exception was raised (file, function, line), so that
    identical crashes group together whatever their message."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = "|".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.name}:{f.lineno}" for f in frames)
    return hashlib.sha256(f"{type(exc).__qualname__}|{where}".encode()).hexdigest()[:16]


# -- children ------------------------------------------------------------------------------------
_BackoffOutcome = Literal["elapsed", "lost", "shutdown"] | OperatorCommandIssued
"""How a backoff ended: its delay passed, the lease was lost, the node is stopping, or an
operator command arrived."""


class _LeaseLost(Exception):
    """Our lease was taken over or expired: stop the actor without writing anything."""


@dataclass(eq=False)
class _Child:
    spec: ChildSpec
    wake: anyio.Event = field(default_factory=anyio.Event)
    runner: ActorRunner[Any] | None = None
    ref: ActorRef | None = None
    lease: Lease | None = None
    command: OperatorCommandIssued | None = None
    restart_command: OperatorCommandIssued | None = None
    stop_requested: bool = False
    started: anyio.Event = field(default_factory=anyio.Event)
    ended: anyio.Event = field(default_factory=anyio.Event)
    finished: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope | None = None

    def poke(self) -> None:
        self.wake.set()

    async def wait_poked(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self.wake.wait()
        self.wake = anyio.Event()


class Supervisor:
    """Keeps the given actors running on this node, when it holds their leases."""

    def __init__(
        self,
        store: EventStore,
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
        self.holder = f"{node}/{uuid.uuid4().hex[:8]}"
        self.leases = Leases(store, self.holder, ttl=lease_ttl)
        self.acquire_interval = acquire_interval
        self.rng = rng or random.Random()
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
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await self._stop_all()
                tg.cancel_scope.cancel()

    async def shutdown(self) -> None:
        """Stop every actor in reverse start order, each within its shutdown timeout."""
        await self._stop_all()

    # -- recording ---------------------------------------------------------------------------
    async def _record(self, name: str, event: Event, lease: Lease | None) -> int:
        """Append a lifecycle event, fenced by our lease; retried while PostgreSQL is away
        (with one event id, so a retry never records it twice). Returns its global position."""
        item = NewEvent(event=event)
        metadata = EventMetadata(caused_by="supervisor", node=self.node)
        delay = 0.2
        while True:
            try:
                result = await self.store.append(
                    actor_stream(name),
                    [item],
                    metadata=metadata,
                    fence=lease.fence if lease else None,
                )
                return result.last_position
            except StaleGeneration as exc:
                raise _LeaseLost(str(exc)) from exc
            except StoreUnavailable as exc:
                logger.warning(
                    "cannot record %s for %s (%s); retrying in %.1fs",
                    type(event).__name__,
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
            alert_id=uuid.uuid4(),
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
        """Hold the lease and run the actor until it should stop, or the lease is lost, or
        the database fails; those last two end the attempt and the loop tries again."""
        name = child.spec.name
        # Errors from inside the task group arrive wrapped in an ExceptionGroup (anyio 4).
        try:
            lease = await self._wait_for_lease(child)
            if lease is None:
                return
            child.lease = lease
            child.command = None  # commands seen before we held the lease are stale
            keep_going = True
            try:
                async with anyio.create_task_group() as tg:
                    lost = anyio.Event()
                    tg.start_soon(self._keep_lease, child, lost)
                    keep_going = await self._run_with_lease(child, lease, lost)
                    tg.cancel_scope.cancel()
            finally:
                held, child.lease = child.lease, None
                if not keep_going and held is not None:
                    await self._release(held)
        except* _LeaseLost as group:
            logger.warning(
                "%s: lease lost (%s); standing by",
                name,
                group.exceptions[0],
                extra={"action": "lease_lost"},
            )
        except* (StoreUnavailable, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as group:
            logger.warning(
                "%s: database unavailable (%s); retrying",
                name,
                group.exceptions[0],
                extra={"action": "supervisor_retry"},
            )
            await anyio.sleep(1.0)

    async def _wait_for_lease(self, child: _Child) -> Lease | None:
        """Wait until the actor should run and we hold its lease."""
        name = child.spec.name
        while not self._shutting_down and not child.stop_requested:
            desired = await self.desired_state(name)
            if desired == "running":
                lease = await self.leases.acquire(name)
                if lease is not None:
                    return lease
            await child.wait_poked(self.acquire_interval)
        return None

    async def _keep_lease(self, child: _Child, lost: anyio.Event) -> None:
        """Renew the child's current lease four times per time to live; when it is lost, or
        its clock runs out before a renewal gets through (a frozen database connection, a
        network cut), fence the node off at once: the clock is revoked, so every write made
        under it is refused before it is sent, and ``lost`` stops the actor.

        The clock (:class:`store.LeaseClock`) runs on this process's monotonic time from the
        last renewal the database confirmed, so the actor stops here before the lease can
        expire on the server and be granted elsewhere, whether or not a renewal ever answers.
        """
        interval = self.leases.ttl / 4
        retry = min(0.5, interval)
        wait = interval
        while True:
            lease = child.lease
            if lease is None or lease.clock is None:
                return
            clock = lease.clock
            await anyio.sleep(min(wait, clock.remaining()))
            if child.lease is not lease:
                continue  # a restart took the next generation meanwhile
            why: str | None = None
            if not clock.valid():
                why = "no renewal got through before its clock ran out"
            else:
                try:
                    with anyio.move_on_after(clock.remaining()):
                        if await self.leases.renew(lease):
                            wait = interval
                            continue
                        if child.lease is not lease:
                            continue
                        why = "it was taken over"
                    if why is None:
                        why = "the renewal did not answer before its clock ran out"
                except StoreUnavailable as exc:
                    logger.warning(
                        "%s: cannot renew lease (%s); %.1fs left",
                        lease.name,
                        exc,
                        clock.remaining(),
                        extra={"action": "lease_renew_failed"},
                    )
                    wait = retry
                    continue
            clock.revoke(f"the lease was lost: {why}")
            logger.warning(
                "%s: lease lost (%s); this node stops acting for it",
                lease.name,
                why,
                extra={"action": "lease_lost"},
            )
            lost.set()
            child.poke()
            return

    async def _release(self, lease: Lease) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(3):
            try:
                await self.leases.release(lease)
            except (StoreUnavailable, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                logger.warning("could not release lease %s", lease.name)

    async def _run_with_lease(self, child: _Child, lease: Lease, lost: anyio.Event) -> bool:
        """Start, watch and restart the actor while we hold ``lease``. Returns True when the
        loop should go on trying to run it (lease lost), False when it should stay stopped."""
        name = child.spec.name
        history = await self.history(name)
        resumed = await self._resume_backoff(child, lease, history, lost)
        if isinstance(resumed, bool):
            return resumed
        lease = resumed
        previous_node = _last_running_node(history)
        if previous_node is not None:
            # Left running, never stopped: its node died or lost the lease (this one, too).
            await self._record(
                name,
                self._restarted(name, "failover", reason=f"previously on {previous_node}"),
                lease,
            )
        while True:
            kind, _ = await self._run_once(child, lease, lost)
            if kind == "lease lost":
                return True
            if kind == "stopped":
                return False
            if kind == "restart":
                # An operator restart: a new incarnation, a new generation.
                lease = await self._regrant(child, lease)
                continue
            exit_reason = ExitReason.CRASH if kind == "crashed" else ExitReason.NORMAL
            if not should_restart(child.spec.restart, exit_reason):
                how = "crashed" if kind == "crashed" else "finished"
                reason = f"{child.spec.restart.value} actor {how}: not restarted"
                await self._record_stopped(name, lease, reason)
                await self._remember_stopped(name, reason)
                return False
            decision = decide_restart(
                await self.history(name), self.clock.now(), self.backoff, self.intensity, self.rng
            )
            if isinstance(decision, Park):
                await self._record(
                    name,
                    ActorParked(
                        actor=name,
                        reason=decision.reason,
                        restarts=decision.restarts,
                        window_seconds=self.intensity.within,
                        parked_at=self.clock.now(),
                    ),
                    lease,
                )
                await self._alert("actor_parked", name, f"{name} parked: {decision.reason}")
                return False
            now = self.clock.now()
            await self._record(
                name,
                ActorBackoffScheduled(
                    actor=name,
                    attempt=decision.attempt,
                    delay_seconds=decision.delay,
                    until=now + timedelta(seconds=decision.delay),
                    scheduled_at=now,
                ),
                lease,
            )
            outcome = await self._backoff_sleep(child, decision.delay, lost)
            after = await self._after_backoff(
                child, lease, outcome, decision.attempt, decision.delay
            )
            if isinstance(after, bool):
                return after
            lease = after

    def _restarted(
        self,
        name: str,
        cause: Literal["crash", "operator", "failover"],
        *,
        attempt: int = 0,
        delay: float = 0.0,
        requested_by: str | None = None,
        reason: str | None = None,
    ) -> ActorRestarted:
        return ActorRestarted(
            actor=name,
            cause=cause,
            attempt=attempt,
            delay_seconds=delay,
            restarted_at=self.clock.now(),
            requested_by=requested_by,
            reason=reason,
        )

    async def _record_stopped(self, name: str, lease: Lease, reason: str) -> None:
        await self._record(
            name,
            ActorStopped(
                actor=name,
                node=self.node,
                generation=lease.generation,
                reason=reason,
                stopped_at=self.clock.now(),
            ),
            lease,
        )

    async def _after_backoff(
        self,
        child: _Child,
        lease: Lease,
        outcome: _BackoffOutcome,
        attempt: int,
        delay: float,
    ) -> Lease | bool:
        """What a backoff ended in: the lease to restart under, or (as for _run_with_lease)
        True to stand by for the lease again, False to stay stopped."""
        name = child.spec.name
        if outcome == "lost":
            return True
        if outcome == "shutdown":
            return False  # nothing recorded: the backoff resumes after the deploy
        if isinstance(outcome, OperatorCommandIssued) and outcome.action == "stop":
            why = f": {outcome.reason}" if outcome.reason else ""
            await self._record_stopped(name, lease, f"stopped by {outcome.requested_by}{why}")
            return False
        lease = await self._regrant(child, lease)
        if isinstance(outcome, OperatorCommandIssued):
            restarted = self._restarted(
                name, "operator", requested_by=outcome.requested_by, reason=outcome.reason or None
            )
        else:
            restarted = self._restarted(name, "crash", attempt=attempt, delay=delay)
        await self._record(name, restarted, lease)
        return lease

    async def _regrant(self, child: _Child, lease: Lease) -> Lease:
        new = await self.leases.acquire(lease.name)
        if lease.clock is not None:
            lease.clock.revoke("a newer generation was granted")
        if new is None:
            raise _LeaseLost(f"{lease.name} was taken by another node")
        child.lease = new
        return new

    async def _resume_backoff(
        self, child: _Child, lease: Lease, history: Sequence[Event], lost: anyio.Event
    ) -> Lease | bool:
        """A backoff scheduled before a deploy is honoured after it."""
        if not history or not isinstance(history[-1], ActorBackoffScheduled):
            return lease
        pending = history[-1]
        remaining = (pending.until - self.clock.now()).total_seconds()
        outcome: _BackoffOutcome = "elapsed"
        if remaining > 0:
            outcome = await self._backoff_sleep(child, remaining, lost)
        return await self._after_backoff(
            child, lease, outcome, pending.attempt, pending.delay_seconds
        )

    async def _backoff_sleep(
        self, child: _Child, delay: float, lost: anyio.Event
    ) -> _BackoffOutcome:
        """Sleep ``delay`` on the clock, cut short by an operator command (returned), a stop
        ("shutdown") or a lost lease ("lost")."""
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while True:
                    await child.wake.wait()
                    child.wake = anyio.Event()
                    if child.command is not None or child.stop_requested or self._shutting_down:
                        tg.cancel_scope.cancel()
                        return

            async def watch_lease() -> None:
                await lost.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            tg.start_soon(watch_lease)
            await self.clock.sleep(delay)
            tg.cancel_scope.cancel()
        if lost.is_set():
            return "lost"
        if child.stop_requested or self._shutting_down:
            return "shutdown"
        command, child.command = child.command, None
        return command if command is not None else "elapsed"

    async def _run_once(
        self, child: _Child, lease: Lease, lost: anyio.Event
    ) -> tuple[Literal["crashed", "finished", "stopped", "restart", "lease lost"], str]:
        """One incarnation: start it, record it, and wait for how it ends."""
        name = child.spec.name
        started_at = self.clock.monotonic()
        result: tuple[Literal["crashed", "finished", "stopped", "restart", "lease lost"], str]
        result = ("finished", "")
        crash: BaseException | None = None
        ended = anyio.Event()
        reported = False

        async def incarnation(*, task_status: TaskStatus[ActorRef | None]) -> None:
            nonlocal crash
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
                await runner.run(task_status=task_status)
            except Exception as exc:  # one actor's crash never disturbs the others
                crash = _root_cause(exc)
                if not reported:
                    task_status.started(None)
            finally:
                ended.set()
                child.poke()

        async with anyio.create_task_group() as tg:
            ref = await tg.start(incarnation)
            reported = True
            try:
                if crash is None and ref is not None:
                    # Recorded first, published after: nobody reaches an incarnation whose
                    # start is not in the log (or whose lease was lost before it was).
                    started_position = await self._record(
                        name,
                        ActorStarted(
                            actor=name,
                            node=self.node,
                            generation=lease.generation,
                            started_at=self.clock.now(),
                        ),
                        lease,
                    )
                    child.ref = ref
                    child.started.set()
                    self._started_positions[name] = started_position
                result = await self._wait_for_end(child, ended, lost)
            finally:
                child.ref = None
                child.started = anyio.Event()
                child.ended.set()
                child.ended = anyio.Event()
                running = child.runner
                if not ended.is_set() and lost.is_set():
                    # Not ours any more: no graceful stop (its writes would be refused
                    # anyway), and nothing it is waiting on may outlive the lease.
                    tg.cancel_scope.cancel()
                elif not ended.is_set() and running is not None:
                    await self._stop_runner(child, running, ended, tg.cancel_scope)
        child.runner = None
        uptime = self.clock.monotonic() - started_at
        if crash is not None:
            await self._record(
                name,
                ActorCrashed(
                    actor=name,
                    node=self.node,
                    generation=lease.generation,
                    error_type=type(crash).__qualname__,
                    message=str(crash)[:2000],
                    traceback_digest=traceback_digest(crash),
                    uptime_seconds=max(uptime, 0.0),
                    crashed_at=self.clock.now(),
                ),
                lease,
            )
            logger.error(
                "%s crashed after %.1fs: %s: %s",
                name,
                uptime,
                type(crash).__name__,
                crash,
                extra={"action": "actor_crashed"},
            )
            return ("crashed", str(crash))
        kind, detail = result
        if kind == "stopped":
            await self._record(
                name,
                ActorStopped(
                    actor=name,
                    node=self.node,
                    generation=lease.generation,
                    reason=detail or "stopped",
                    stopped_at=self.clock.now(),
                ),
                lease,
            )
        elif kind == "restart":
            command = child.restart_command
            child.restart_command = None
            await self._record(
                name,
                self._restarted(
                    name,
                    "operator",
                    requested_by=detail,
                    reason=command.reason or None if command is not None else None,
                ),
                lease,
            )
        return result

    async def _wait_for_end(
        self, child: _Child, ended: anyio.Event, lost: anyio.Event
    ) -> tuple[Literal["crashed", "finished", "stopped", "restart", "lease lost"], str]:
        """Wait for the incarnation to end by itself, or for a reason to end it."""
        while True:
            if ended.is_set():
                return ("finished", "")
            if lost.is_set():
                return ("lease lost", "")
            if child.stop_requested:  # set child by child, in reverse start order
                return ("stopped", "shutdown")
            command, child.command = child.command, None
            if command is not None:
                if command.action == "stop":
                    why = f": {command.reason}" if command.reason else ""
                    return ("stopped", f"stopped by {command.requested_by}{why}")
                if command.action == "restart":
                    child.restart_command = command
                    return ("restart", command.requested_by)
            await child.wait_poked(1.0)

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
            command_id=uuid.uuid4(),
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


def _root_cause(exc: BaseException) -> BaseException:
    """The exception inside task-group wrappers (anyio wraps even a single error)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _last_running_node(history: Sequence[Event]) -> str | None:
    """The node an actor was left running on (no stop, park or crash recorded after)."""
    for event in reversed(history):
        if isinstance(event, ActorStarted):
            return event.node
        if isinstance(event, ActorStopped | ActorParked | ActorCrashed):
            return None
    return None
