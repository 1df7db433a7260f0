"""HealthChecker: watches the system and alerts the admins when its health changes.

Every ``I3LANI_HEALTH_INTERVAL`` seconds (15 min by default), and on demand (``CheckHealth``),
it runs these checks (thin I/O, each with its own timeout so one hung service cannot hide the
others), writes every check to the ``health_samples`` table, and records a verdict that
differs from the last one recorded (healthy or not, and which checks fail) as
``HealthChecked``: a round that changed nothing adds nothing to the log.

============  ============================================================================
check         fails when
============  ============================================================================
database      a round trip to PostgreSQL fails or takes longer than 2 s
tonapi        TonAPI's ``/v2/status`` fails (after the client's retries)
telegram      the Bot API's ``getMe`` fails (or no ``BOT_TOKEN`` is configured)
actor:<name>  the actor is not running (starting again after a crash or a backoff over,
              backing off, parked, stopped), or its last tick is older than twice its
              interval plus a minute (an operator's stop is not a failure)
tasks         a due task has waited over 5 minutes, or dead letters wait for an operator
lag:<name>    an actor's checkpoint is more than 1,000 events behind its category
stream        never fails: a **warning** when the PaymentMonitor's TON stream (its fast
              path) has not been subscribed for over a minute; polling alone still confirms
              every payment. Shown when the PaymentMonitor runs in the checker's process
============  ============================================================================

A warning (:attr:`~events.HealthCheck.warning`: an ``ok`` check whose detail begins with
``warning:``) keeps the verdict healthy and raises no alert.

The database is what a verdict is recorded in, so the verdict that says it is unreachable is
held (:class:`HeldVerdict`) and recorded, with the time it was reached, as soon as the
database answers again; the next check then records the recovery. The checks that read the
database (actors, tasks, lag) are not run while it is unreachable: they would only repeat it.

Alerts are raised on *changes* only (:func:`health_transition`, pure): the first failing check,
healthy -> failing, failing -> recovered; a failure that persists is not repeated at every
check. An ``AlertRaised`` event (stream ``ops-alerts``) is appended with an ``admin_alert`` task
in the same transaction; alerts other components raise (the supervisor parking an actor) are
picked up from the log. The task sends the alert to every id in ``ADMIN_IDS`` through the Bot
API, honouring ``retry_after``, retried by the queue with backoff and dead-lettered if
Telegram never takes it.

The samples are the checker's telemetry (latencies, details, the time of every round), kept
beside the log for ``I3LANI_HEALTH_RETENTION`` days and pruned by Cleanup; the last verdict
shown to operators (:func:`last_verdict`) is the latest round of samples.

On the in-memory log (tests, ``i3lani simulate``) every check runs the same code: the
database check pings the log (which a simulation can cut off), the samples are the log's
side table, the lag is read from its checkpoints and category pages, and latencies are
measured on :mod:`events.environment`'s monotonic clock (the simulation's virtual one).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import ClassVar, Final

import anyio
import msgspec

from actors.clients import telegram_bot, tonapi_client
from actors.config import Settings
from actors.runtime import Actor, ActorRunner, Emit, Message, TickSpec
from actors.runtime.clock import Clock
from actors.runtime.status import SHUTDOWN_REASON, ActorStatus, actor_status
from actors.tasks import ADMIN_ALERT, AdminAlert, serve_tasks, task_types
from actors.telegram import TelegramClient
from actors.tonapi import TonApiClient
from actors.tonapi_stream import StreamStatus
from events import AlertRaised, HealthCheck, HealthChecked, environment
from events.errors import I3laniError, StoreUnavailable
from events.operations import WARNING_PREFIX
from events.streams import OPS, OPS_ALERTS, OPS_HEALTH, actor_stream
from store import EventStore, Fence, RecordedEvent, Transaction, views
from store.memory import MemoryLog, MemoryTransaction
from store.tasks import TaskContext, TaskQueue
from store.views import HealthSample

__all__ = [
    "HealthChecker",
    "HealthState",
    "HeldVerdict",
    "CheckHealth",
    "HealthReport",
    "health_transition",
    "alert_text",
    "ALERTS_STREAM",
    "HEALTH_STREAM",
    "LAG_LIMIT",
    "checkpoint_lag",
    "health_samples",
    "last_verdict",
    "stream_check",
    "STREAM_GRACE",
]

logger = logging.getLogger(__name__)

HEALTH_STREAM: Final = OPS_HEALTH
ALERTS_STREAM: Final = OPS_ALERTS
CHECK_TIMEOUT: Final = 10.0
SLOW_DATABASE: Final = 2.0
TASK_WAIT_LIMIT: Final = timedelta(minutes=5)
LAG_LIMIT: Final = 1000
STARTUP_GRACE: Final = 60.0
"""Seconds after the checker starts during which a sibling not running yet is "starting", not
failing: on a fresh deploy the checker may check before the supervisor has started the rest."""
STREAM_GRACE: Final = 60.0
"""Seconds the payment stream may be down or connecting (a reconnection's backoff, a 429's
minute) before the stream check warns."""
DATABASE_WAIT_MAX: Final = 2.0
"""Seconds between two tries at most, while a held verdict waits for the database."""
_NAMESPACE: Final = uuid.UUID("0b7c1d0e-61a4-4f0c-8d3e-5f2a9b1c4e77")


@dataclass(slots=True)
class HealthState:
    """The fold of the ``ops`` category, as far as health is concerned."""

    healthy: bool | None = None  # the last verdict recorded; None before the first
    failing: tuple[str, ...] = ()
    checked_at: datetime | None = None
    alerts: dict[uuid.UUID, str] = field(default_factory=dict)  # alert id -> text, recent


class CheckHealth(msgspec.Struct, frozen=True):
    """Run the checks now (on demand)."""


class QueueAlert(msgspec.Struct, frozen=True):
    """An alert raised elsewhere (the supervisor) needs its delivery task."""

    alert_id: uuid.UUID


class HealthReport(msgspec.Struct, frozen=True, kw_only=True):
    """The checks' results, handed to :meth:`HealthChecker.decide`."""

    checks: list[HealthCheck]
    checked_at: datetime

    def passed(self, name: str) -> bool:
        """Whether the check ``name`` passed (a check that did not run did not fail)."""
        return all(check.ok for check in self.checks if check.name == name)


@dataclass(slots=True)
class HeldVerdict:
    """A verdict reached while the database could not record it, kept until it can.

    One holder is shared by a process's HealthChecker incarnations (:mod:`actors.catalog`): an
    outage longer than the actor's lease ends the incarnation that saw it, and the next one,
    started once the database is back, records it first. The first verdict of an outage is
    kept: it says when the outage was seen.
    """

    report: HealthReport | None = None

    def keep(self, report: HealthReport) -> None:
        if self.report is None:
            self.report = report

    def take(self) -> HealthReport | None:
        report, self.report = self.report, None
        return report


def health_transition(
    previous: bool | None, previous_failing: Sequence[str], checks: Sequence[HealthCheck]
) -> tuple[str, str] | None:
    """``(subject, message)`` of the alert a new verdict calls for, or ``None``. Pure.

    An alert on the first failing verdict, on healthy -> failing, and on failing -> recovered.
    """
    failing = [c for c in checks if not c.ok]
    if failing and previous is not False:
        return "failing", "i3lani health FAILING: " + "; ".join(
            f"{c.name}: {c.detail or 'failed'}" for c in failing
        )
    if not failing and previous is False:
        was = ", ".join(previous_failing) or "earlier failures"
        return "recovered", f"i3lani health RECOVERED: all checks pass again (was: {was})"
    return None


def alert_text(event: AlertRaised) -> str:
    """The Telegram message an admin receives for an alert."""
    stamp = event.raised_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"[{event.kind}] {event.subject}\n{event.message}\n{stamp}"


class HealthChecker(Actor[HealthState]):
    """Checks health and alerts the admins (see the module docstring)."""

    name: ClassVar[str] = "HealthChecker"
    category: ClassVar[str | None] = OPS
    messages: ClassVar[tuple[type[msgspec.Struct], ...]] = (CheckHealth, HealthReport, QueueAlert)
    io_messages: ClassVar[tuple[type[msgspec.Struct], ...]] = (CheckHealth, QueueAlert)

    def __init__(
        self,
        settings: Settings,
        *,
        actor_intervals: Mapping[str, float],
        lagging_checkpoints: Mapping[str, str] | None = None,
        tonapi: TonApiClient | None = None,
        telegram: TelegramClient | None = None,
        startup_grace: float = STARTUP_GRACE,
        held: HeldVerdict | None = None,
        stream_status: StreamStatus | None = None,
    ) -> None:
        """``actor_intervals``: the tick interval of each actor whose liveness is checked;
        ``lagging_checkpoints``: actor name -> category, for the subscription lag checks;
        ``startup_grace``: see :data:`STARTUP_GRACE`; ``held``: shared with the other
        incarnations of the process, see :class:`HeldVerdict`; ``stream_status``: the
        PaymentMonitor's TON stream in this process, for the ``stream`` check (None: no such
        check)."""
        self.stream_status = stream_status
        self.startup_grace = startup_grace
        self.held = held if held is not None else HeldVerdict()
        self.started_at: datetime | None = None
        self.settings = settings
        self.tick = TickSpec(interval=settings.health_interval, missed="run_once")
        self.actor_intervals = dict(actor_intervals)
        self.lag_categories = dict(lagging_checkpoints or {})
        self._given = (tonapi, telegram)
        self.tonapi = tonapi
        self.telegram = telegram
        self.queue: TaskQueue | None = None
        self.fence: Fence | None = None

    def initial_state(self) -> HealthState:
        return HealthState()

    async def setup(
        self, stack: contextlib.AsyncExitStack, runner: ActorRunner[HealthState]
    ) -> None:
        self.queue = TaskQueue(runner.store, task_types(self.settings), node=runner.node)
        self.fence = runner.fence
        self.started_at = runner.clock.now()
        if self._given[0] is None:
            self.tonapi = await stack.enter_async_context(
                tonapi_client(self.settings, runner.store)
            )
        if self._given[1] is None and self.settings.bot_token:
            bot = telegram_bot(self.settings, runner.store, token=self.settings.bot_token)
            self.telegram = await stack.enter_async_context(TelegramClient(bot))

    # -- pure --------------------------------------------------------------------------------
    def evolve(self, state: HealthState, recorded: RecordedEvent) -> HealthState:
        event = recorded.event
        if isinstance(event, HealthChecked):
            state.healthy = event.healthy
            state.failing = tuple(c.name for c in event.checks if not c.ok)
            state.checked_at = event.checked_at
        elif isinstance(event, AlertRaised):
            state.alerts[event.alert_id] = alert_text(event)
            if len(state.alerts) > 1000:  # only recent ones matter (delivery of new alerts)
                del state.alerts[next(iter(state.alerts))]
        return state

    def react(self, state: HealthState, recorded: RecordedEvent) -> Sequence[Message]:
        if isinstance(recorded.event, AlertRaised):
            return [QueueAlert(alert_id=recorded.event.alert_id)]
        return ()

    def decide(self, state: HealthState, message: Message) -> Sequence[Emit]:
        if not isinstance(message, HealthReport):
            return ()
        healthy = all(c.ok for c in message.checks)
        failing = tuple(c.name for c in message.checks if not c.ok)
        emits: list[Emit] = []
        if state.healthy is None or (healthy, failing) != (state.healthy, state.failing):
            # A new verdict: recorded. The same verdict again lives only in the samples.
            emits.append(
                Emit(
                    HEALTH_STREAM,
                    HealthChecked(
                        healthy=healthy, checks=message.checks, checked_at=message.checked_at
                    ),
                )
            )
        transition = health_transition(state.healthy, state.failing, message.checks)
        if transition is not None:
            subject, text = transition
            alert_id = uuid.uuid5(_NAMESPACE, f"health/{message.checked_at.isoformat()}")
            emits.append(
                Emit(
                    ALERTS_STREAM,
                    AlertRaised(
                        alert_id=alert_id,
                        kind="health",
                        subject=subject,
                        message=text,
                        raised_at=message.checked_at,
                    ),
                    event_id=alert_id,
                )
            )
        return emits

    async def on_commit(self, tx: Transaction | MemoryTransaction, emits: Sequence[Emit]) -> None:
        assert self.queue is not None
        for emit in emits:
            event = emit.event
            if isinstance(event, AlertRaised):
                await self.queue.add_task(
                    ADMIN_ALERT,
                    AdminAlert(alert_id=event.alert_id, text=alert_text(event)),
                    dedupe_key=f"alert-{event.alert_id}",
                    tx=tx,
                    fence=self.fence,
                )

    # -- I/O ---------------------------------------------------------------------------------
    async def background(self, runner: ActorRunner[HealthState]) -> None:
        await serve_tasks(runner, self.settings, ADMIN_ALERT, self._deliver)

    async def _deliver(self, alert: AdminAlert, context: TaskContext) -> None:
        """Send one alert to every admin; fail (the queue retries) if none received it."""
        if not self.settings.admin_ids:
            logger.warning(
                "alert %s not sent: ADMIN_IDS is empty",
                alert.alert_id,
                extra={"action": "alert_no_admins"},
            )
            return
        if self.telegram is None:
            raise I3laniError("cannot deliver alerts: BOT_TOKEN is not set")
        sent = await self.telegram.notify_all(self.settings.admin_ids, alert.text)
        if not any(sent.values()):
            raise I3laniError(f"no admin received alert {alert.alert_id}")

    async def on_tick(
        self, state: HealthState, runner: ActorRunner[HealthState]
    ) -> Sequence[Message]:
        return [await self._recorded_verdict(runner.store, runner.clock)]

    async def perform(
        self, state: HealthState, message: Message, runner: ActorRunner[HealthState]
    ) -> Sequence[Message]:
        if isinstance(message, QueueAlert):
            text = state.alerts.get(message.alert_id)
            if text is not None:
                assert self.queue is not None
                await self.queue.add_task(
                    ADMIN_ALERT,
                    AdminAlert(alert_id=message.alert_id, text=text),
                    dedupe_key=f"alert-{message.alert_id}",
                    fence=runner.fence,
                )
            return ()
        return [await self._recorded_verdict(runner.store, runner.clock)]

    async def _recorded_verdict(self, store: EventStore | MemoryLog, clock: Clock) -> HealthReport:
        """The verdict to decide on (:meth:`_verdict`), its checks written to the samples
        first. If the database goes away before they are written, a verdict that says it was
        unreachable goes back to be held (recorded first once it is back); any other is
        dropped, as a round whose commit fails is (the next round checks again)."""
        report = await self._verdict(store, clock)
        try:
            await views.record_health_samples(
                store, health_samples(report.checks, report.checked_at)
            )
        except StoreUnavailable:
            if not report.passed("database"):
                self.held.keep(report)
            raise
        return report

    async def _verdict(self, store: EventStore | MemoryLog, clock: Clock) -> HealthReport:
        """The verdict to record now: this check's, unless one reached while the database was
        unreachable is held (see :class:`HeldVerdict`); that one goes first."""
        report = await self.run_checks(store, clock)
        if not report.passed("database"):
            # Recording it needs the database: hold it until the database answers again.
            self.held.keep(report)
            await self._wait_for_database(store, clock)
        held = self.held.take()
        return held if held is not None else report

    async def _wait_for_database(self, store: EventStore | MemoryLog, clock: Clock) -> None:
        """Return once a round trip to the database succeeds (at once when it is merely slow)."""
        delay = 0.1
        while not (await _timed("database", lambda: self._reachable(store))).ok:
            await clock.sleep(delay)
            delay = min(delay * 2, DATABASE_WAIT_MAX)

    async def run_checks(self, store: EventStore | MemoryLog, clock: Clock) -> HealthReport:
        """Every check, now (I/O; never raises for a failing check: it is a result)."""
        if self.queue is None:
            self.queue = TaskQueue(store, task_types(self.settings))
        database = await _timed("database", lambda: self._database(store))
        checks: list[HealthCheck] = [
            database,
            await _timed("tonapi", self._tonapi),
            await _timed("telegram", self._telegram),
        ]
        if database.ok:  # the others read the database: unreachable, they would repeat it
            checks.extend(await _timed_many("actors", lambda: self._actors(store, clock.now())))
            checks.append(await _timed("tasks", self._tasks))
            checks.extend(await _timed_many("lag", lambda: self._lag(store)))
        if self.stream_status is not None:
            checks.append(
                stream_check(self.stream_status, clock.now(), self.settings.payment_interval)
            )
        return HealthReport(checks=checks, checked_at=clock.now())

    async def _reachable(self, store: EventStore | MemoryLog) -> str:
        await views.ping(store)
        return ""

    async def _database(self, store: EventStore | MemoryLog) -> str:
        started = environment.monotonic()
        await views.ping(store)
        took = environment.monotonic() - started
        if took > SLOW_DATABASE:
            raise I3laniError(f"round trip took {took:.1f}s")
        return ""

    async def _tonapi(self) -> str:
        assert self.tonapi is not None
        await self.tonapi.status()
        return ""

    async def _telegram(self) -> str:
        if self.telegram is None:
            raise I3laniError("BOT_TOKEN is not set")
        await self.telegram.get_me()
        return ""

    async def _actors(self, store: EventStore | MemoryLog, now: datetime) -> list[HealthCheck]:
        checks: list[HealthCheck] = []
        for name, interval in sorted(self.actor_intervals.items()):
            if name == self.name:
                continue  # it is running: it is asking
            status = await actor_status(store, name, now)
            ok, detail = True, str(status.state)
            if status.desired == "stopped" and status.state in ("stopped", "never started"):
                detail = "stopped by an operator"
            elif self._handing_over(status, now):
                # A node shut down (a deploy, a scale-down): another takes the actor over within
                # moments. Alerting on it would page admins at every deploy, and the checker's
                # own node may be the one shutting down.
                assert status.since is not None
                ago = (now - status.since).total_seconds()
                detail = f"stopped at a node shutdown {ago:.0f}s ago; a node takes it over soon"
            elif status.state in ("never started", "starting") and self._starting_up(now):
                detail = f"{status.state} (this checker started moments ago)"
            elif status.state != "running":
                ok = False
                detail = status.state + (f" ({status.last_error})" if status.last_error else "")
            elif status.last_tick is not None:
                age = (now - status.last_tick).total_seconds()
                if age > 2 * interval + 60:
                    ok, detail = False, f"last tick {age:.0f}s ago (interval {interval:g}s)"
                else:
                    detail = f"running, last tick {age:.0f}s ago"
            checks.append(HealthCheck(name=f"actor:{name}", ok=ok, detail=detail[:200]))
        return checks

    def _handing_over(self, status: ActorStatus, now: datetime) -> bool:
        """``status`` is an actor its node stopped at shutdown, less than the startup grace
        ago: a hand-over, not a failure (past the grace, nobody took it over: failing)."""
        return (
            status.state == "stopped"
            and status.stop_reason == SHUTDOWN_REASON
            and status.since is not None
            and (now - status.since).total_seconds() < self.startup_grace
        )

    def _starting_up(self, now: datetime) -> bool:
        if self.started_at is None:  # checked from outside an incarnation: no grace
            return False
        return (now - self.started_at).total_seconds() < self.startup_grace

    async def _tasks(self) -> str:
        assert self.queue is not None
        counts = list((await self.queue.counts()).values())
        dead = sum(c.dead for c in counts)
        oldest = max(
            (c.oldest_due_age for c in counts if c.oldest_due_age is not None), default=None
        )
        problems = []
        if dead:
            problems.append(f"{dead} dead letter(s) wait for an operator")
        if oldest is not None and oldest > TASK_WAIT_LIMIT:
            problems.append(f"a due task has waited {oldest.total_seconds():.0f}s")
        if problems:
            raise I3laniError("; ".join(problems))
        queued = sum(c.queued for c in counts)
        return f"{queued} queued"

    async def _lag(self, store: EventStore | MemoryLog) -> list[HealthCheck]:
        checks: list[HealthCheck] = []
        for name, category in sorted(self.lag_categories.items()):
            behind = await checkpoint_lag(store, actor_stream(name), category)
            if behind is None:
                continue
            checks.append(
                HealthCheck(
                    name=f"lag:{name}",
                    ok=behind <= LAG_LIMIT,
                    detail=f"{behind if behind <= LAG_LIMIT else f'>{LAG_LIMIT}'} event(s) behind",
                )
            )
        return checks


def stream_check(status: StreamStatus, now: datetime, payment_interval: float) -> HealthCheck:
    """The ``stream`` check: always ok, with a warning when the PaymentMonitor's TON stream has
    not been subscribed for over :data:`STREAM_GRACE` seconds. Pure."""
    counts = f"{status.connects} subscription(s), {status.notices} notice(s)"
    polling = f"polling every {payment_interval:g}s confirms payments meanwhile"
    if status.state == "off":
        detail = f"off (I3LANI_TONAPI_STREAM=off): polling alone, every {payment_interval:g}s"
    elif status.state == "stopped":
        detail = "PaymentMonitor is not running in this process"
    elif status.state == "subscribed":
        detail = f"subscribed; {counts}"
    else:
        down = status.down_for(now) or 0.0
        why = f" ({status.reason})" if status.reason else ""
        if down > STREAM_GRACE:
            detail = f"{WARNING_PREFIX}not subscribed for {down:.0f}s{why}; {polling}"
        else:
            detail = f"{status.state} for {down:.0f}s{why}; {counts}"
    return HealthCheck(name="stream", ok=True, detail=detail[:200])


def health_samples(checks: Sequence[HealthCheck], checked_at: datetime) -> list[HealthSample]:
    """One round's checks as rows of the ``health_samples`` table. Pure."""
    return [
        HealthSample(
            checked_at=checked_at,
            name=c.name,
            ok=c.ok,
            latency_ms=c.latency_ms,
            detail=c.detail,
        )
        for c in checks
    ]


async def last_verdict(store: EventStore | MemoryLog) -> HealthChecked | None:
    """The last health round, as operators see it (``i3lani health``, the dashboard, the bot's
    /health): the latest samples; for a database that has none (written before the samples
    held every round, or pruned), the last ``HealthChecked`` of the log; None when neither."""
    samples = await views.latest_health_samples(store)
    if samples:
        checks = [
            HealthCheck(name=s.name, ok=s.ok, latency_ms=s.latency_ms, detail=s.detail)
            for s in samples
        ]
        return HealthChecked(
            healthy=all(c.ok for c in checks), checks=checks, checked_at=samples[0].checked_at
        )
    last = await store.last_event(HEALTH_STREAM, skip_unknown=True)
    if last is not None and isinstance(last.event, HealthChecked):
        return last.event
    return None


async def checkpoint_lag(
    store: EventStore | MemoryLog, checkpoint: str, category: str, *, limit: int = LAG_LIMIT
) -> int | None:
    """How many events of ``category`` lie past the checkpoint ``checkpoint``, counted up to
    ``limit + 1`` (more than ``limit`` is reported as ``limit + 1``: the count stays cheap however
    far behind it is); None when there is no such checkpoint yet."""
    cursor = await store.load_checkpoint(checkpoint)
    if cursor is None:
        return None
    page = await store.read_page(after=cursor, category=category, limit=limit + 1)
    return page.fetched


def _failure(name: str, exc: Exception, started: float) -> HealthCheck:
    if isinstance(exc, TimeoutError):
        return HealthCheck(name=name, ok=False, detail=f"no answer within {CHECK_TIMEOUT:g}s")
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return HealthCheck(
        name=name,
        ok=False,
        detail=message[:200],
        latency_ms=round((environment.monotonic() - started) * 1000, 2),
    )


async def _timed_many(
    name: str, probe: Callable[[], Awaitable[list[HealthCheck]]]
) -> list[HealthCheck]:
    """Run a probe that yields several checks, with a timeout; its failure (the database went
    away meanwhile) becomes one failing check ``name``, never a crash."""
    started = environment.monotonic()
    try:
        with anyio.fail_after(CHECK_TIMEOUT):
            return await probe()
    except Exception as exc:  # a failing probe is a result, not a crash
        return [_failure(name, exc, started)]


async def _timed(name: str, probe: Callable[[], Awaitable[str]]) -> HealthCheck:
    """Run one probe with a timeout; any failure becomes a failing check, never a crash."""
    started = environment.monotonic()
    try:
        with anyio.fail_after(CHECK_TIMEOUT):
            detail = await probe()
    except Exception as exc:  # a failing probe is a result, not a crash
        return _failure(name, exc, started)
    return HealthCheck(
        name=name,
        ok=True,
        detail=detail,
        latency_ms=round((environment.monotonic() - started) * 1000, 2),
    )
