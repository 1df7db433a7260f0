"""A demo run from start to finish: the database, the services, the simulation, the
wind-down, the audit and the summary; and ``i3lani demo`` itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import signal
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TextIO
from urllib.parse import unquote, urlsplit

import anyio
import httpx
from anyio.abc import TaskGroup, TaskStatus

from actors.config import Settings
from bot_gateway import GatewayConfig, run_gateway
from events import (
    ActorCrashed,
    ActorRestarted,
    ChannelAdded,
    ChannelPriceChanged,
    ChannelStatsFailed,
    LatePaymentReceived,
    PaymentConfirmed,
    PaymentCreated,
    PaymentExpired,
    PaymentUnderpaid,
    RewardCredited,
    RewardEarned,
    RewardFailed,
    SubscriptionActivated,
    UserRegistered,
)
from events.errors import ConfigError, I3laniError
from ops.admin import admin_routes
from ops.audit import AuditReport, run_audit
from ops.demo.narration import Console, Follower, StreamView, Tone, clock_time, ton
from ops.demo.scenario import (
    ADMIN_ID,
    FaultSwitch,
    Scenario,
    demo_child_specs,
    demo_settings,
    plan_scenario,
)
from ops.demo.simulation import DoublePayment, Simulation
from ops.demo_options import (
    RESERVED_DATABASES,
    DemoOptions,
    check_database_name,
)
from ops.standins import BotApiStandIn, TonApiStandIn
from store import EventStore, migrate, redact_dsn
from store.admin import DatabaseRefused, create_database, database_exists, drop_database
from store.budget import COMMAND_MAX_CONNECTIONS
from store.database import with_database
from store.records import START
from supervisor import Supervisor

EXIT_OK: Final = 0
EXIT_DISCREPANCIES: Final = 1
EXIT_ABORTED: Final = 130
_STARTUP_LIMIT: Final = 60.0


# -- signals ------------------------------------------------------------------------------------
class _Stopper:
    """SIGINT / SIGTERM cancel the current phase: waiting for the actors to start, or the
    simulation (the wind-down, audit and summary follow), or the wind-down (no audit then).
    A signal between phases cancels the next one as soon as it begins."""

    def __init__(self) -> None:
        self.requests = 0
        self._pending = 0
        self._scope: anyio.CancelScope | None = None

    @contextlib.contextmanager
    def phase(self) -> Iterator[anyio.CancelScope]:
        with anyio.CancelScope() as scope:
            if self._pending:
                self._pending -= 1
                scope.cancel()
            self._scope = scope
            try:
                yield scope
            finally:
                self._scope = None

    def request(self) -> None:
        self.requests += 1
        if self._scope is not None and not self._scope.cancel_called:
            self._scope.cancel()
        else:
            self._pending += 1

    async def watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                self.request()


# -- the database -------------------------------------------------------------------------------
DEMO_MARK: Final = "i3lani demo: dropped and recreated by every `i3lani demo` run"
"""The comment on a database the demo created: the only kind it will drop."""


def _database_name(dsn: str) -> str:
    return unquote(urlsplit(dsn).path.removeprefix("/"))


async def prepare_database(server_dsn: str, name: str) -> str:
    """Drop and create ``name`` on ``server_dsn``'s server, migrate it; its DSN.

    Only a database an earlier demo created (its comment is :data:`DEMO_MARK`) is ever
    dropped: an existing database without that mark is refused (ConfigError), and so are the
    very database ``server_dsn`` names and PostgreSQL's own (ValueError).
    """
    if not check_database_name(name):
        raise ValueError(
            f"--database {name!r}: give a plain lower-case name other than "
            f"{', '.join(RESERVED_DATABASES)}"
        )
    if name == _database_name(server_dsn):
        raise ValueError(
            f"--database {name!r} is the database DATABASE_URL names: the demo drops and "
            "recreates its database, so it never uses that one; pick another name"
        )
    exists, mark = await database_exists(server_dsn, name)
    if exists and mark != DEMO_MARK:
        raise ConfigError(
            f"database {name!r} already exists on {redact_dsn(server_dsn)} and was not "
            "created by i3lani demo: the demo never drops it; give another --database name"
        )
    try:
        await drop_database(server_dsn, name)
        await create_database(server_dsn, name, comment=DEMO_MARK)
    except DatabaseRefused as exc:
        if not exc.permission:
            raise
        raise ConfigError(
            f"cannot create the demo database {name!r} on {redact_dsn(server_dsn)}: "
            f"{exc.__cause__}; give a DATABASE_URL whose user may CREATE DATABASE, or unset it "
            "to use the embedded PostgreSQL"
        ) from exc
    dsn = with_database(server_dsn, name)
    await migrate(dsn)
    return dsn


# -- the run ------------------------------------------------------------------------------------
@dataclass
class DemoOutcome:
    """How a demo run ended; ``audit`` is ``None`` when it was stopped before the audit."""

    exit_code: int
    dsn: str | None = None
    dashboard_url: str | None = None
    interrupted: bool = False
    simulation_done: bool = False
    audit: AuditReport | None = None
    doubles: list[DoublePayment] = field(default_factory=list)


@dataclass
class _Tally:
    """The facts the summary states, from one pass over the log."""

    users: int = 0
    referred: int = 0
    payments: int = 0
    confirmed: int = 0
    overpaid: int = 0
    underpaid: int = 0
    late: int = 0
    expired: int = 0
    subscriptions: int = 0
    earned: Counter[str] = field(default_factory=Counter)
    credited: int = 0
    credited_nanotons: int = 0
    failed: int = 0
    channels: int = 0
    priced: set[str] = field(default_factory=set)
    unmeasured: set[str] = field(default_factory=set)
    crashes: list[str] = field(default_factory=list)
    restarts: list[str] = field(default_factory=list)
    confirmations: Counter[int] = field(default_factory=Counter)

    def add(self, event: Any) -> None:
        match event:
            case UserRegistered():
                self.users += 1
                self.referred += event.referred_by is not None
            case PaymentCreated():
                self.payments += 1
            case PaymentConfirmed():
                self.confirmed += 1
                self.overpaid += event.overpaid_nanotons > 0
                self.confirmations[event.payment_id] += 1
            case PaymentUnderpaid():
                self.underpaid += 1
            case LatePaymentReceived():
                self.late += 1
            case PaymentExpired():
                self.expired += 1
            case SubscriptionActivated():
                self.subscriptions += 1
            case RewardEarned():
                self.earned[event.reason] += 1
            case RewardCredited():
                self.credited += 1
                self.credited_nanotons += event.amount_nanotons
            case RewardFailed():
                self.failed += 1
            case ChannelAdded():
                self.channels += 1
            case ChannelPriceChanged():
                self.priced.add(event.channel)
            case ChannelStatsFailed():
                self.unmeasured.add(event.channel)
            case ActorCrashed():
                self.crashes.append(f"{event.actor} ({event.error_type})")
            case ActorRestarted() if event.cause == "crash":
                self.restarts.append(event.actor)


async def _tally(store: EventStore, *, patience: float = 5.0) -> _Tally:
    """The summary's facts from the whole log. Events committed behind a transaction still
    open elsewhere on the server (transaction ids are server-wide) are waited for, as the
    audit does, for ``patience`` seconds."""
    tally = _Tally()
    cursor = START
    deadline = anyio.current_time() + patience
    while True:
        page = await store.read_page(cursor, limit=1000, skip_unknown=True)
        for recorded in page.events:
            tally.add(recorded.event)
        cursor = page.cursor
        if page.fetched == 1000:
            continue
        if anyio.current_time() > deadline or not await store.held_back(cursor):
            return tally
        await anyio.sleep(0.05)


def _n(count: int, plural: str) -> str:
    """``3 wallet scans``, ``1 wallet scan``, ``1 cleanup pass``."""
    if count == 1:
        plural = plural[:-2] if plural.endswith("sses") else plural.removesuffix("s")
    return f"{count} {plural}"


def _summary(
    tally: _Tally, report: AuditReport, doubles: Sequence[DoublePayment], view: StreamView
) -> list[tuple[str, str, Tone]]:
    """The summary's rows: label, text, tone."""
    paid_twice = sum(1 for d in doubles if tally.confirmations[d.payment_id] == 1)
    confirmed = [_n(tally.overpaid, "overpaid")] if tally.overpaid else []
    if doubles:
        confirmed.append(f"{paid_twice} of them paid twice and confirmed once")
    detail = f" ({', '.join(confirmed)})" if confirmed else ""
    unmeasured = len(tally.unmeasured - tally.priced)
    rows: list[tuple[str, str, Tone]] = [
        (
            "users",
            f"{tally.users} registered, {tally.referred} of them through a referral",
            "plain",
        ),
        (
            "payments",
            f"{tally.payments} created: {tally.confirmed} confirmed{detail}, "
            f"{tally.underpaid} underpaid, {tally.late} paid late (kept for review), "
            f"{tally.expired} expired",
            "plain",
        ),
        ("subscriptions", f"{tally.subscriptions} activated", "plain"),
        (
            "rewards",
            f"{_n(sum(tally.earned.values()), 'earned')} "
            f"({tally.earned.get('referral', 0)} for referrals, "
            f"{tally.earned.get('channel_addition', 0)} for channels); "
            f"{tally.credited} credited, {ton(tally.credited_nanotons)} in all; "
            f"{tally.failed} failed; {report.summary.rewards_pending} pending",
            "plain",
        ),
        (
            "channels",
            f"{tally.channels} added, {len(tally.priced)} priced"
            + (f", {unmeasured} not measurable" if unmeasured else ""),
            "plain",
        ),
    ]
    crashes = ", ".join(tally.crashes) or "none"
    restarts = ", ".join(tally.restarts) or "none"
    tone: Tone = "plain" if len(tally.crashes) == len(tally.restarts) else "warn"
    rows.append(("actors", f"crashed: {crashes}; restarted by the supervisor: {restarts}", tone))
    if view.skipped:
        hidden = ", ".join(_n(n, what) for what, n in view.skipped.most_common())
        rows.append(("not shown", hidden, "plain"))
    return rows


def _audit_lines(report: AuditReport) -> list[tuple[str, Tone]]:
    """``audit: clean (N events, 0 discrepancies)``, or each discrepancy (ten at most)."""
    events = report.summary.events_replayed
    if report.clean:
        lines: list[tuple[str, Tone]] = [
            (f"audit: clean ({events} events, 0 discrepancies)", "good")
        ]
    else:
        total = sum(report.discrepancy_counts.values())
        lines = [(f"audit: {total} DISCREPANCIES in {events} events", "bad")]
        lines += [(f"  {d.check}: {d.message}", "bad") for d in report.discrepancies[:10]]
    lines += [(f"  note: {note}", "warn") for note in report.notes]
    return lines


def _header(
    console: Console,
    options: DemoOptions,
    scenario: Scenario,
    settings: Settings,
    *,
    where: str,
    tonapi: str,
    bot_api: str,
    webhook: str,
    dashboard: str,
) -> None:
    needed = scenario.end_at / options.speed
    console.say(
        f"i3lani demo: {options.users} simulated users, seed {options.seed}, "
        f"speed {options.speed:g}x, {options.duration:g} s",
        "note",
    )
    intervals = ", ".join(
        f"{name} {seconds:g} s"
        for name, seconds in (
            ("payments", settings.payment_interval),
            ("rewards", settings.reward_interval),
            ("channels", settings.analytics_interval),
            ("cleanup", settings.cleanup_interval),
            ("health", settings.health_interval),
        )
    )
    for label, text in (
        ("database", f"{options.database}, created afresh for this run on {where}"),
        ("TonAPI", f"stand-in at {tonapi}: a simulated chain; the bot's wallet {scenario.wallet}"),
        ("Bot API", f"stand-in at {bot_api}; the admin is Telegram user {ADMIN_ID}"),
        ("gateway", f"webhook at {webhook} (secret header checked)"),
        ("dashboard", dashboard),
        ("actors", f"the five product actors, ticking every: {intervals}"),
        ("payments", f"expire {settings.payment_window:g} s after they are created"),
    ):
        console.say(f"  {label:<10} {text}")
    console.say(
        f"The simulated users need about {needed:.0f} s at this speed"
        + (
            "."
            if needed <= options.duration
            else f": --duration {options.duration:g} stops them before they are done "
            "(raise --duration or --speed to see everything)."
        )
    )
    console.say(
        "Lines with > are what the simulated users (and the demo) do; the others are events "
        "as they are appended to the log. Times are UTC. Ctrl-C stops the demo cleanly."
    )
    console.say()


async def _await_actors(supervisor: Supervisor) -> None:
    try:
        with anyio.fail_after(_STARTUP_LIMIT):
            for name in supervisor.names:
                await supervisor.wait_started(name)
    except TimeoutError:
        missing = [n for n in supervisor.names if n not in supervisor.running_here()]
        raise I3laniError(
            f"{', '.join(missing)} did not start within {_STARTUP_LIMIT:g} s; "
            "`I3LANI_LOG_LEVEL=INFO i3lani demo` shows why"
        ) from None


@dataclass
class _Service:
    """A long-running task the wind-down stops on its own: its scope and its end."""

    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    ended: anyio.Event = field(default_factory=anyio.Event)

    async def stop(self) -> None:
        self.scope.cancel()
        await self.ended.wait()


def _as_service(service: _Service, run: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapped(*, task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            with service.scope:
                await run(task_status=task_status)
        finally:
            service.ended.set()

    return wrapped


async def run_demo(
    server_dsn: str,
    options: DemoOptions,
    out: TextIO,
    *,
    embedded: bool = False,
    handle_signals: bool = False,
) -> DemoOutcome:
    """Run the demo against ``server_dsn``'s server (see the module docstring).

    ``embedded`` says the server is the embedded PostgreSQL (for the wording);
    ``handle_signals`` makes SIGINT / SIGTERM stop it cleanly (the console command does; a
    test leaves it off)."""
    stopper = _Stopper()
    try:
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(stopper.watch_signals)
            try:
                outcome = await _demo(server_dsn, options, out, stopper, embedded=embedded)
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Task groups wrap even a single error: a one-line error stays one (see ops.cli).
        cause = _single(group)
        if isinstance(cause, I3laniError | ValueError):
            raise cause from None
        raise
    return outcome


def _single(exc: BaseException) -> BaseException:
    """The one exception inside task-group wrappers, or ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _bot_token(seed: int) -> str:
    """A token made up for the run, shaped as @BotFather's: ``<digits>:<text>``."""
    bot_id = random.Random(seed).randrange(10**9, 10**10)
    return f"{bot_id}:demo-{secrets.token_urlsafe(24)}"


async def _demo(
    server_dsn: str, options: DemoOptions, out: TextIO, stopper: _Stopper, *, embedded: bool
) -> DemoOutcome:
    console = Console(out, color=out.isatty() and not os.environ.get("NO_COLOR"))
    scenario = plan_scenario(options.users, options.seed)
    secret = secrets.token_urlsafe(32)
    admin_token = secrets.token_urlsafe(32)
    bot_token = _bot_token(options.seed)
    switch = FaultSwitch()
    view = StreamView()
    outcome = DemoOutcome(exit_code=EXIT_ABORTED)
    shown = redact_dsn(with_database(server_dsn, options.database))
    where = "the embedded PostgreSQL" if embedded else f"the server of {redact_dsn(server_dsn)}"
    kept = (
        "replaces it"
        if embedded
        else f"replaces it; `DATABASE_URL={shown} i3lani audit` reads it again"
    )
    with stopper.phase() as preparing:
        outcome.dsn = dsn = await prepare_database(server_dsn, options.database)
    if preparing.cancel_called:
        console.note("stopped before the demo started")
        return outcome
    async with contextlib.AsyncExitStack() as stack:
        tonapi = await stack.enter_async_context(TonApiStandIn())
        bot_api = await stack.enter_async_context(BotApiStandIn(bot_token))
        settings = demo_settings(
            tonapi_url=tonapi.url,
            bot_api_url=bot_api.url,
            bot_token=bot_token,
            wallet=scenario.wallet,
            speed=options.speed,
        )
        # Two stores, as the worker and the web service would have, and one for watching.
        worker_store = await stack.enter_async_context(EventStore.open(dsn, node="demo"))
        gateway_store = await stack.enter_async_context(EventStore.open(dsn, node="demo"))
        watch_store = await stack.enter_async_context(
            EventStore.open(dsn, max_connections=COMMAND_MAX_CONNECTIONS)
        )
        supervisor = Supervisor(
            worker_store,
            demo_child_specs(settings, switch),
            node="demo",
            rng=random.Random(options.seed),
        )
        config = GatewayConfig(webhook_secret=secret, admin_token=admin_token)
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)  # runs first on the way out
        actors, gateway, follower = _Service(), _Service(), _Service()
        await tg.start(_as_service(actors, supervisor.run))
        url = await _start_gateway(tg, gateway, settings, gateway_store, config, options.port)
        outcome.dashboard_url = f"{url}/dashboard?token={admin_token}"
        _header(
            console,
            options,
            scenario,
            settings,
            where=where,
            tonapi=tonapi.url,
            bot_api=bot_api.url,
            webhook=f"{url}{config.webhook_path}",
            dashboard=outcome.dashboard_url,
        )
        watcher = Follower(watch_store, console, view)
        await tg.start(_as_service(follower, watcher.run))
        with stopper.phase():
            await _await_actors(supervisor)

        deadline = datetime.now(UTC) + timedelta(seconds=options.duration)
        async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
            simulation = Simulation(
                scenario,
                speed=options.speed,
                settings=settings,
                console=console,
                view=view,
                client=client,
                webhook_path=config.webhook_path,
                secret=secret,
                tonapi=tonapi,
                bot_api=bot_api,
                switch=switch,
            )
            # Skipped when a signal came while the actors were starting.
            with stopper.phase(), anyio.move_on_after(options.duration):
                if not stopper.requests:
                    await simulation.run()
                    console.note(
                        "the simulated users are done; everything keeps running until "
                        f"{clock_time(deadline)} for a look at the dashboard:"
                    )
                    console.note(f"  {outcome.dashboard_url}", "plain")
                    await anyio.sleep_forever()
        outcome.doubles = list(simulation.doubles)
        outcome.simulation_done = simulation.done
        outcome.interrupted = stopper.requests > 0

        with stopper.phase() as wind_down:
            why = "stopped by a signal" if outcome.interrupted else "time is up"
            console.note(
                f"{why}: stopping the simulation, then the gateway, then the actors "
                "(each finishes what it holds)"
            )
            await gateway.stop()
            await actors.stop()
            await watcher.wait_caught_up(5.0)
            await follower.stop()
            report = await run_audit(watch_store, settings)
            tally = await _tally(watch_store)
        if wind_down.cancel_called:
            console.note("stopped at once on the second signal: no audit", "warn")
            return outcome
    outcome.audit = report
    outcome.exit_code = EXIT_OK if report.clean else EXIT_DISCREPANCIES
    console.say()
    console.say("Summary", "note")
    if not outcome.simulation_done:
        console.say(
            "  the simulation was stopped before every user had acted: "
            "the figures are what happened until then",
            "warn",
        )
    for label, text, tone in _summary(tally, report, outcome.doubles, view):
        console.say(f"  {label:<14} {text}", tone)
    console.say()
    for text, tone in _audit_lines(report):
        console.say(text, tone)
    console.say(
        f"The demo's log stays in {options.database} on {where} until the next demo {kept}."
    )
    return outcome


async def _start_gateway(
    tg: TaskGroup,
    service: _Service,
    settings: Settings,
    store: EventStore,
    config: GatewayConfig,
    port: int,
) -> str:
    """Start the gateway in webhook mode on 127.0.0.1; its URL."""

    async def serve(*, task_status: TaskStatus[str | None]) -> None:
        await run_gateway(
            settings,
            store,
            mode="webhook",
            host="127.0.0.1",
            port=port,
            config=config,
            add_routes=admin_routes(store, config.admin_token),
            task_status=task_status,
        )

    try:
        url = await tg.start(_as_service(service, serve))
    except (OSError, BaseExceptionGroup) as exc:
        cause = _single(exc)
        if not isinstance(cause, OSError):
            raise
        raise ValueError(
            f"--port {port}: cannot listen on 127.0.0.1 ({cause.strerror or cause}); "
            "give another port, or 0 for a free one"
        ) from None
    if not isinstance(url, str):
        raise TypeError("the gateway in webhook mode starts with its URL")
    return url


# -- the command --------------------------------------------------------------------------------
async def demo_command(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    """``i3lani demo``: 0 when the audit is clean, 1 with discrepancies, 130 when stopped
    before the audit."""
    options = DemoOptions(
        duration=args.duration,
        speed=args.speed,
        users=args.users,
        port=args.port,
        seed=args.seed,
        database=args.database,
    )
    embedded = not os.environ.get("DATABASE_URL", "").strip()  # as store.database_url() decides
    outcome = await run_demo(dsn, options, out, embedded=embedded, handle_signals=True)
    return outcome.exit_code
