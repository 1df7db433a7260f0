"""A demo run from start to finish: the database, the services, the simulation, the
wind-down, the audit and the summary; and ``i3lani demo`` itself.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TextIO

import anyio
import httpx

from actors.config import Settings
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
from events.errors import I3laniError
from events.payments import TRANSFER_CATEGORIES, TransferReceived
from ops import local
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
    DemoOptions,
)
from store import EventStore, redact_dsn
from store.database import i3lani_home
from store.records import START

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
DEMO_LOG: Final = "demo.log"
"""The file under ``$I3LANI_HOME`` that ``i3lani demo`` logs to (replaced on each run)."""
DEMO_MARK: Final = "i3lani demo: dropped and recreated by every `i3lani demo` run"
"""The comment on a database the demo created: the only kind it will drop."""


async def prepare_database(server_dsn: str, name: str) -> str:
    """Drop and create the demo's database ``name`` on ``server_dsn``'s server, migrate it; its
    DSN. Only a database an earlier demo created (its comment is :data:`DEMO_MARK`) is ever
    dropped (see :func:`ops.local.prepare_database`)."""
    return await local.prepare_database(server_dsn, name, mark=DEMO_MARK, made_by="i3lani demo")


# -- logging -----------------------------------------------------------------------------------
@dataclass
class _Logged:
    """Where log records go during the run, and how many were warnings or worse."""

    path: Path | None = None
    warnings: int = 0


class _Counting(logging.Handler):
    def __init__(self, logged: _Logged) -> None:
        super().__init__(logging.WARNING)
        self.logged = logged

    def emit(self, record: logging.LogRecord) -> None:
        self.logged.warnings += 1


@contextlib.contextmanager
def _logging_to(path: Path | None) -> Iterator[_Logged]:
    """While inside, the root logger writes to ``path`` (replaced) instead of its handlers
    (the terminal's stderr): the demo tells its story on stdout as events arrive, and a log
    line would break into it. Records are counted, to say at the end how many warnings went
    to the file. ``None``: logging is left as it is."""
    logged = _Logged(path)
    if path is None:
        yield logged
        return
    root = logging.getLogger()
    saved = root.handlers[:]
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers = [handler, _Counting(logged)]
    try:
        yield logged
    finally:
        root.handlers = saved
        handler.close()


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
    payments: set[int] = field(default_factory=set)  # created
    confirmed: set[int] = field(default_factory=set)
    overpaid: int = 0
    underpaid: set[int] = field(default_factory=set)  # an underpaid transfer recorded
    late: set[int] = field(default_factory=set)  # paid after it expired
    expired: set[int] = field(default_factory=set)
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
    paid_again: set[int] = field(default_factory=set)  # payments paid a second time

    def add(self, event: Any) -> None:
        match event:
            case TransferReceived(category="second-payment") if event.payment_id is not None:
                self.paid_again.add(event.payment_id)
            case UserRegistered():
                self.users += 1
                self.referred += event.referred_by is not None
            case PaymentCreated():
                self.payments.add(event.payment_id)
            case PaymentConfirmed():
                self.confirmed.add(event.payment_id)
                self.overpaid += event.overpaid_nanotons > 0
                self.confirmations[event.payment_id] += 1
            case PaymentUnderpaid():
                self.underpaid.add(event.payment_id)
            case LatePaymentReceived():
                self.late.add(event.payment_id)
            case PaymentExpired():
                self.expired.add(event.payment_id)
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


def _summary(tally: _Tally, report: AuditReport, view: StreamView) -> list[tuple[str, str, Tone]]:
    """The summary's rows: label, text, tone. From the log: the tally's pass over it, and the
    audit's replay of it."""
    paid_twice = sum(1 for p in tally.paid_again if tally.confirmations[p] == 1)
    confirmed = [_n(tally.overpaid, "overpaid")] if tally.overpaid else []
    if tally.paid_again:
        confirmed.append(f"{paid_twice} of them paid twice and confirmed once")
    detail = f" ({', '.join(confirmed)})" if confirmed else ""
    unmeasured = len(tally.unmeasured - tally.priced)
    rows: list[tuple[str, str, Tone]] = [
        (
            "users",
            f"{tally.users} registered, {tally.referred} of them through a referral",
            "plain",
        ),
        ("payments", _payments_text(tally, detail), "plain"),
        *_money_rows(report),
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


def _payments_text(tally: _Tally, confirmed_detail: str) -> str:
    """Every payment created, in exactly one of: confirmed, expired unpaid, still open (a demo
    stopped early leaves some open); with what happened to the unconfirmed ones. Pure."""
    expired = tally.expired - tally.confirmed
    still_open = tally.payments - tally.confirmed - expired

    def of_them(ids: set[int]) -> str:
        notes = []
        if underpaid := len(ids & tally.underpaid):
            notes.append(f"{underpaid} underpaid")
        if late := len(ids & tally.late):
            notes.append(f"{late} paid after expiry, kept for review")
        return f" ({'; '.join(notes)})" if notes else ""

    return (
        f"{len(tally.payments)} created: {len(tally.confirmed)} confirmed{confirmed_detail}, "
        f"{len(expired)} expired unpaid{of_them(expired)}, "
        f"{len(still_open)} still open{of_them(still_open)}"
    )


def _money_rows(report: AuditReport) -> list[tuple[str, str, Tone]]:
    """Where the wallet's nanotons went, and the refunds, as the audit's books hold them."""
    t = report.summary.transfers
    counted = [c for c in TRANSFER_CATEGORIES if t.categories.get(c)]
    kinds = ", ".join(f"{t.categories[c]} {c.replace('-', ' ')}" for c in counted)
    open_refunds = t.refunds_due + t.refunds_sent
    return [
        (
            "wallet",
            f"{_n(t.received, 'transfers')} received, each recorded once ({kinds or 'none'}): "
            f"{ton(t.received_nanotons)} in all, {ton(t.kept_nanotons)} paid payments, "
            f"{ton(t.owed_nanotons)} owed back; {t.sent} sent",
            "plain",
        ),
        (
            "refunds",
            f"{t.refunds} owed back: {t.refunds_refunded} refunded and confirmed on chain "
            f"({ton(t.refunded_nanotons)}), {open_refunds} still open (`i3lani refunds` lists "
            f"them), {t.refunds_declined} declined",
            "plain" if not open_refunds else "warn",
        ),
    ]


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
    seals = report.seals
    if seals is not None and seals.seals_verified and not seals.findings:
        lines.append(
            (
                f"seals: verified ({seals.seals_verified} seals over {seals.events_verified} "
                "events, each digest sent to the admin by Telegram)",
                "good",
            )
        )
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
    log: Path | None,
) -> None:
    needed = scenario.end_at / options.speed
    console.say(
        f"i3lani demo: {options.users} simulated users, seed {options.seed}, "
        f"speed {options.speed:g}x, {options.duration:g} s",
        "note",
    )
    intervals = local.tick_intervals_text(settings)
    for label, text in (
        ("database", f"{options.database}, created afresh for this run on {where}"),
        ("TonAPI", f"stand-in at {tonapi}: a simulated chain; the bot's wallet {scenario.wallet}"),
        ("Bot API", f"stand-in at {bot_api}; the admin is Telegram user {ADMIN_ID}"),
        ("gateway", f"webhook at {webhook} (secret header checked)"),
        ("dashboard", dashboard),
        ("actors", f"the five product actors, ticking every: {intervals}"),
        ("payments", f"expire {settings.payment_window:g} s after they are created"),
        *([("log", f"{log} (what the code logs meanwhile)")] if log else []),
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


async def run_demo(
    server_dsn: str,
    options: DemoOptions,
    out: TextIO,
    *,
    embedded: bool = False,
    handle_signals: bool = False,
    log_path: Path | None = None,
) -> DemoOutcome:
    """Run the demo against ``server_dsn``'s server (see the module docstring).

    ``log_path``: where log records go meanwhile (the file is replaced), so that none breaks
    into the story told on ``out`` (a crash, for one, is told there from its event already);
    ``embedded`` says the server is the embedded PostgreSQL (for the wording);
    ``handle_signals`` makes SIGINT / SIGTERM stop it cleanly (the console command does; a
    test leaves it off)."""
    stopper = _Stopper()
    try:
        with _logging_to(log_path) as logged:
            async with anyio.create_task_group() as tg:
                if handle_signals:
                    tg.start_soon(stopper.watch_signals)
                try:
                    outcome = await _demo(
                        server_dsn, options, out, stopper, embedded=embedded, logged=logged
                    )
                finally:
                    tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Task groups wrap even a single error: a one-line error stays one (see ops.cli).
        cause = local.single(group)
        if isinstance(cause, I3laniError | ValueError):
            raise cause from None
        raise
    return outcome


async def _demo(
    server_dsn: str,
    options: DemoOptions,
    out: TextIO,
    stopper: _Stopper,
    *,
    embedded: bool,
    logged: _Logged,
) -> DemoOutcome:
    console = Console(out, color=out.isatty() and not os.environ.get("NO_COLOR"))
    scenario = plan_scenario(options.users, options.seed)
    bot_token = local.bot_token_for(options.seed)
    switch = FaultSwitch()
    view = StreamView()
    outcome = DemoOutcome(exit_code=EXIT_ABORTED)
    where = "the embedded PostgreSQL" if embedded else f"the server of {redact_dsn(server_dsn)}"
    with stopper.phase() as preparing:
        outcome.dsn = dsn = await prepare_database(server_dsn, options.database)
    if preparing.cancel_called:
        console.note("stopped before the demo started")
        return outcome
    async with contextlib.AsyncExitStack() as stack:
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)  # runs first on the way out
        system = await local.start_local_system(
            stack,
            tg,
            dsn,
            bot_token=bot_token,
            settings_for=lambda tonapi, bot_api: demo_settings(
                tonapi_url=tonapi.url,
                bot_api_url=bot_api.url,
                bot_token=bot_token,
                wallet=scenario.wallet,
                speed=options.speed,
            ),
            specs_for=lambda settings: demo_child_specs(settings, switch),
            node="demo",
            port=options.port,
            rng=random.Random(options.seed),
        )
        settings, supervisor, config = system.settings, system.supervisor, system.config
        tonapi, bot_api, watch_store = system.tonapi, system.bot_api, system.watch_store
        url, actors, gateway = system.url, system.actors, system.gateway
        outcome.dashboard_url = system.dashboard_url
        _header(
            console,
            options,
            scenario,
            settings,
            where=where,
            tonapi=tonapi.url,
            bot_api=bot_api.url,
            webhook=system.webhook_url,
            dashboard=outcome.dashboard_url,
            log=logged.path,
        )
        watcher = Follower(watch_store, console, view)
        follower = local.Service()
        await tg.start(follower.wrap(watcher.run))
        with stopper.phase():
            await local.wait_actors_started(
                supervisor,
                hint=f"`I3LANI_LOG_LEVEL=INFO i3lani demo` (then {logged.path or 'its log'})",
            )

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
                secret=config.webhook_secret or "",
                tonapi=tonapi,
                bot_api=bot_api,
                switch=switch,
                admin_token=config.admin_token or "",
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
            report = await run_audit(watch_store, settings, verify_seals=True)
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
    for label, text, tone in _summary(tally, report, view):
        console.say(f"  {label:<14} {text}", tone)
    console.say()
    for text, tone in _audit_lines(report):
        console.say(text, tone)
    if logged.warnings:
        console.say(
            f"{_n(logged.warnings, 'warnings')} or errors were logged meanwhile: {logged.path}",
            "warn",
        )
    console.say(
        f"The demo's log stays in database {options.database} on {where} until the next demo "
        f"replaces it: `i3lani events --database {options.database}` shows it, "
        f"`i3lani audit --database {options.database}` audits it again."
    )
    return outcome


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
    outcome = await run_demo(
        dsn,
        options,
        out,
        embedded=embedded,
        handle_signals=True,
        log_path=i3lani_home() / DEMO_LOG,
    )
    return outcome.exit_code
