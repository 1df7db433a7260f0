"""The ``i3lani`` command line.

    i3lani migrate                  bring the database schema up to date
    i3lani summary                  what the event log holds
    i3lani events [--stream S | --category C] [--after N] [--follow] [--json]
    i3lani run [--actors A,B]       supervise the actors on this node until SIGTERM/SIGINT
    i3lani status [--json]          each actor's state, node, generation, restarts, errors;
                                    readers held back, each process's connections, the task
                                    queue's backlog and dead letters
    i3lani health [--now] [--json]  the last health verdict (or run the checks now)
    i3lani retry-task TASK_ID       re-queue a dead-lettered task
    i3lani restart|stop|start ACTOR [--reason TEXT]
    i3lani gateway [--mode webhook|polling] [--host H] [--port P]
                                    the Telegram bot: commands in, events appended
    i3lani export --out FILE [--after N] [--upto N] | --verify FILE
                                    a range of the log, as stored, to a compressed file;
                                    or check one against its manifest and the log
    i3lani audit [--as-of POS|TIME] [--user ID] [--stream S] [--format table|json|csv] [--out F]
                 [--verify-seals] [--against DIGEST]
                                    replay the log, check invariants (exit 1 on discrepancies)
    i3lani seal [--export] [--json] the latest seal of the log and its digest (to keep outside)
    i3lani refunds [--all] [--format table|json] | mark-refunded ID TX_HASH | decline ID --reason T
                                    the money owed back, and the operator's actions on it
    i3lani reconcile [--since TIME|AGE] [--wallet A] [--format table|json]
                                    the wallet's transfers on chain against the log (exit 1 on
                                    discrepancies)
    i3lani demo [--duration S] [--speed F] [--users N] [--port P] [--seed S] [--database NAME]
                                    everything at once with simulated users, in its own
                                    database (recreated each run), shown live, then audited
    i3lani dev [--port P] [--database NAME]
                                    the stand-ins, a worker and the gateway with its dashboard
                                    on this machine until Ctrl-C, in its own database

Every command that opens the log takes ``--database NAME``: another database of the same
server (the demo's ``i3lani_demo``, dev's ``i3lani_dev``). Every variable a command reads is
checked before anything starts, and every problem reported at once, one line each.

``DATABASE_URL`` selects the database; unset, an embedded PostgreSQL is started under
``$I3LANI_HOME`` (default ``./.i3lani``). Errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn, TextIO

import anyio
import msgspec

from actors.config import ConfigCheck, Settings, load_settings
from actors.control import CommandRefused, command_outlook, issue_command, operator_command
from actors.names import ACTOR_NAMES, CATEGORIES, DEFAULT_ACTORS
from actors.runtime import tracing
from actors.runtime.status import ActorStatus, actor_status
from actors.tasks import task_types
from events import HealthChecked
from events.errors import ConfigError, I3laniError, one_line
from events.streams import ACTOR, actor_stream
from ops import audit, demo_options, dev_options, reconcile, refunds, seals
from ops.format import event_json, event_line, format_bytes, format_time
from ops.simulate import cli as simulate_cli
from store import (
    EventStore,
    OpenTransaction,
    RecordedEvent,
    database_url,
    migrate,
    migrations,
    redact_dsn,
    views,
)
from store.budget import (
    COMMAND_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS,
    GATEWAY_MAX_CONNECTIONS,
    max_connections_from_env,
)
from store.database import configured_database_url, with_database
from store.flow import FlowUsage, Limit, flow_table
from store.limits import SessionLimits
from store.tasks import ConcurrencyUse, DeadTask, TaskQueue, TypeCounts
from supervisor import Supervisor

if TYPE_CHECKING:
    from actors.health import HealthReport

# The actors' clients, the gateway and the demo are imported by the commands that use them:
# aiogram alone takes seconds and a hundred megabytes, which `status` or `audit` never need.

__all__ = ["main", "build_parser"]

logger = logging.getLogger("i3lani")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def node_name() -> str:
    """This process's name in event metadata: ``$I3LANI_NODE`` or ``<host>:<pid>``."""
    return os.environ.get("I3LANI_NODE") or f"{socket.gethostname()}:{os.getpid()}"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, with each usage error on one line: argparse quotes some arguments as typed
    (``unrecognized arguments: ...``), line breaks included. Subcommands' parsers are made with
    the parser's own class, so they are covered too."""

    def error(self, message: str) -> NoReturn:
        super().error(one_line(message, 300))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="i3lani",
        description="i3lani background work: event store, actors and operator tools.",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=LOG_LEVELS,
        help="log verbosity on stderr (default WARNING, or $I3LANI_LOG_LEVEL)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("migrate", help="apply pending database migrations (idempotent)")
    commands.add_parser("summary", help="summarise the event log: totals, types, subscribers")

    events = commands.add_parser("events", help="print the event log")
    scope = events.add_mutually_exclusive_group()
    scope.add_argument("--stream", help="only this stream, e.g. payment-42")
    scope.add_argument("--category", help="only streams of this category, e.g. payment")
    events.add_argument(
        "--after",
        type=_positive_int,
        default=0,
        metavar="N",
        help="start after global position N (default: from the start)",
    )
    events.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help="print at most N events (without --follow)",
    )
    events.add_argument("--follow", action="store_true", help="keep printing new events")
    events.add_argument("--json", action="store_true", help="one JSON object per line")

    export = commands.add_parser(
        "export",
        help="copy a range of the log, as stored, to a compressed file; or check one",
    )
    what = export.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", type=Path, metavar="FILE", help="write the range to FILE (.gz)")
    what.add_argument(
        "--verify", type=Path, metavar="FILE", help="check FILE against its manifest and the log"
    )
    export.add_argument(
        "--after",
        type=_positive_int,
        default=0,
        metavar="N",
        help="start after global position N, in reading order (default: from the start)",
    )
    export.add_argument(
        "--upto",
        type=_positive_int,
        default=None,
        metavar="N",
        help="end with the event at global position N, in reading order (default: the newest)",
    )

    run = commands.add_parser("run", help="run the supervisor and its actors on this node")
    run.add_argument(
        "--actors",
        type=_actor_list,
        default=None,
        metavar="A,B",
        help=f"actors to supervise (default: {','.join(DEFAULT_ACTORS)}; "
        f"known: {','.join(ACTOR_NAMES)})",
    )

    status = commands.add_parser("status", help="show each actor's status")
    status.add_argument("--json", action="store_true", help="one JSON document")

    retry = commands.add_parser(
        "retry-task", help="re-queue a dead-lettered task (after fixing its cause)"
    )
    retry.add_argument("task_id", type=_task_id, help="the task's id, as `i3lani status` shows it")

    health = commands.add_parser(
        "health", help="the last recorded health verdict (exit 1 when failing)"
    )
    health.add_argument(
        "--now", action="store_true", help="run every check here and now (nothing is recorded)"
    )
    health.add_argument("--json", action="store_true", help="one JSON document")

    for action, text in (
        ("restart", "restart an actor (does not count toward its restart intensity)"),
        ("stop", "stop an actor; it stays stopped, across restarts, until started"),
        ("start", "start a stopped or parked actor"),
    ):
        command = commands.add_parser(action, help=text)
        command.add_argument("actor", help=f"one of {', '.join(ACTOR_NAMES)}")
        command.add_argument("--reason", default="", help="why (recorded with the command)")
        command.add_argument(
            "--no-wait", action="store_true", help="do not wait to see a node act on it"
        )
    audit.add_arguments(
        commands.add_parser("audit", help="replay the log, check its invariants (exit 1: found)")
    )
    seals.add_arguments(
        commands.add_parser("seal", help="the latest seal of the log, and its digest to keep")
    )
    refunds.add_arguments(
        commands.add_parser("refunds", help="money owed back: list, mark refunded, or decline")
    )
    reconcile.add_arguments(
        commands.add_parser(
            "reconcile", help="the wallet's transfers on chain against the log (exit 1: differ)"
        )
    )
    demo_options.add_arguments(
        commands.add_parser(
            "demo", help="the whole system with simulated users, in its own database, then audited"
        )
    )

    simulate_cli.add_arguments(
        commands.add_parser(
            "simulate",
            help="seeded simulations of the whole system under faults (exit 1: one failed)",
        )
    )

    gateway = commands.add_parser(
        "gateway", help="serve the Telegram bot (webhook or polling) until SIGTERM/SIGINT"
    )
    gateway.add_argument(
        "--mode",
        choices=["webhook", "polling"],
        default=os.environ.get("I3LANI_GATEWAY_MODE", "webhook"),
        help="webhook (needs WEBHOOK_SECRET; Render's web service) or polling (default webhook, "
        "or $I3LANI_GATEWAY_MODE)",
    )
    gateway.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    gateway.add_argument(
        "--port",
        type=_positive_int,
        default=None,
        help="port to bind (default $PORT, else 8080)",
    )
    dev_options.add_arguments(
        commands.add_parser(
            "dev", help="stand-ins, a worker and the gateway with its dashboard, on this machine"
        )
    )

    # Every command that reads or writes a log can be pointed at another database of the same
    # server: the demo's or the dev worker's, kept after they end.
    for name, command in commands.choices.items():
        if name not in _OWN_DATABASE:
            command.add_argument(
                "--database",
                type=_database_name,
                default=None,
                metavar="NAME",
                help="another database on the same server as DATABASE_URL (or the embedded "
                "one), e.g. i3lani_demo",
            )
    return parser


_OWN_DATABASE: Final = frozenset({"demo", "dev", "simulate"})
"""Commands whose ``--database`` means their own database (or that have none)."""
_READS_SETTINGS: Final = frozenset({"run", "gateway", "dev", "audit", "reconcile"})
"""Commands that read the actors' settings (``health`` too, with ``--now``)."""
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


def _database_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", text):
        raise argparse.ArgumentTypeError(
            f"expected a plain database name (letters, digits, _), got {one_line(text, 80)!r}"
        )
    return text


def _actor_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected actor names separated by commas")
    for name in names:
        if name not in ACTOR_NAMES:
            raise argparse.ArgumentTypeError(
                f"unknown actor {name!r}; valid names: {', '.join(ACTOR_NAMES)}"
            )
    return names


async def cmd_migrate(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    applied = await migrate(dsn)
    known = migrations()
    if applied:
        for migration in applied:
            print(f"applied {migration.version:04d}_{migration.name}", file=out)
    print(f"schema is up to date ({len(known)} migrations)", file=out)
    return EXIT_OK


async def cmd_summary(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    await migrate(dsn)
    async with EventStore.open(dsn, max_connections=COMMAND_MAX_CONNECTIONS) as store:
        totals = await views.summary(store)
    print(f"i3lani event log at {redact_dsn(dsn)}", file=out)
    if totals.events == 0:
        print("  empty: 0 events (the gateway and the actors will write here)", file=out)
    else:
        assert totals.first_recorded_at is not None
        assert totals.last_recorded_at is not None
        print(
            f"  {totals.events} events in {totals.streams} streams, "
            f"last global position {totals.last_position}",
            file=out,
        )
        print(
            f"  from {format_time(totals.first_recorded_at)} "
            f"to {format_time(totals.last_recorded_at)}",
            file=out,
        )
        _print_size(totals, out)
        print("", file=out)
        print(f"  {'category':<12} {'type':<24} {'events':>9}  last recorded", file=out)
        for row in totals.by_type:
            print(
                f"  {row.category:<12} {row.type:<24} {row.events:>9}  "
                f"{format_time(row.last_recorded_at)}",
                file=out,
            )
    print("", file=out)
    if totals.checkpoints:
        print(f"  {'subscriber':<28} {'at position':>11} {'behind':>8}  updated", file=out)
        for checkpoint in totals.checkpoints:
            print(
                f"  {checkpoint.name:<28} {checkpoint.global_position:>11} "
                f"{checkpoint.behind:>8}  {format_time(checkpoint.updated_at)}",
                file=out,
            )
    else:
        print("  no subscriber has stored a checkpoint yet", file=out)
    return EXIT_OK


LOG_LIMIT = 1024**3
"""The storage a log is measured against in `i3lani summary`: the original deployment's whole
Render database."""


def _print_size(totals: views.Summary, out: TextIO) -> None:
    """The log on disk and how fast it grows (``i3lani summary``)."""
    per_event = totals.bytes_per_event or 0.0
    print(
        f"  size         {format_bytes(totals.log_bytes)} on disk (table "
        f"{format_bytes(totals.table_bytes)}, indexes {format_bytes(totals.index_bytes)}): "
        f"{per_event:,.0f} bytes per event; the database {format_bytes(totals.database_bytes)} "
        "in all",
        file=out,
    )
    now = datetime.now(UTC)
    growth = totals.growth_per_day(now) or 0.0
    recent = (
        f"{totals.events_last_day:,} events in the last 24 h, "
        f"{totals.events_last_week:,} in the last 7 days"
    )
    days = totals.growth_days(now)
    basis = "" if days >= 7 else f", from the {_span(days * 86400)} the log has lived"
    if growth <= 0:
        print(f"  growth       none lately ({recent})", file=out)
        return
    left = max(LOG_LIMIT - totals.log_bytes, 0) / growth
    when = "within a day" if left < 1.5 else f"in {left:,.0f} days"
    print(
        f"  growth       about {format_bytes(growth)} a day ({recent}{basis}); at this rate "
        f"the log reaches 1 GB {when}",
        file=out,
    )


async def cmd_events(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    def show(recorded: RecordedEvent) -> None:
        print(event_json(recorded).decode() if args.json else event_line(recorded), file=out)

    category = args.category or (args.stream.split("-", 1)[0] if args.stream else None)

    def wanted(recorded: RecordedEvent) -> bool:
        return args.stream is None or recorded.stream == args.stream

    async with EventStore.open(dsn, max_connections=COMMAND_MAX_CONNECTIONS) as store:
        start = await store.cursor_at(args.after)
        if not args.follow:
            printed = 0
            cursor = start
            patience = anyio.current_time() + 2.0  # for events held back by an open writer
            while args.limit != 0:
                async for recorded in store.read_all(after=cursor, category=category):
                    cursor = recorded.cursor
                    if wanted(recorded):
                        show(recorded)
                        printed += 1
                        if args.limit is not None and printed >= args.limit:
                            break
                limited = args.limit is not None and printed >= args.limit
                if limited or anyio.current_time() > patience:
                    break
                if not await store.held_back(cursor, category):
                    break
                await anyio.sleep(0.05)
            limited = args.limit is not None and printed >= args.limit
            if not limited and await store.held_back(cursor, category):
                print(
                    "note: more events are committed but held back behind a write transaction "
                    "that is still open; run again (or use --follow) once it ends",
                    file=sys.stderr,
                )
            elif printed == 0 and not args.json:
                print("no events", file=sys.stderr)
            return EXIT_OK

        async def follow() -> None:
            async with store.subscribe(category=category, after=start) as subscription:
                async for recorded in subscription:
                    if wanted(recorded):
                        show(recorded)
                        out.flush()

        await run_until_signalled(follow)
    return EXIT_OK


async def run_until_signalled(job: Callable[[], Awaitable[None]]) -> None:
    """Run ``job`` until it returns or SIGINT/SIGTERM arrives; then stop it cleanly."""
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        async def run_job() -> None:
            await job()
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        tg.start_soon(run_job)


async def cmd_run(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    from actors.catalog import child_specs

    specs = child_specs(args.actors, load_settings())
    budget = max_connections_from_env(DEFAULT_MAX_CONNECTIONS)
    await migrate(dsn)
    node = node_name()
    async with EventStore.open(
        dsn, node=node, guard_sessions=True, max_connections=budget
    ) as store:
        supervisor = Supervisor(store, specs, node=node, lease_ttl=store.limits.lease_ttl)
        print(
            f"i3lani worker {node}: supervising {', '.join(s.name for s in specs)} "
            f"(SIGTERM or Ctrl-C stops it)",
            file=out,
            flush=True,
        )

        async def supervise() -> None:
            await supervisor.run()

        await run_until_signalled(supervise)
    print(f"i3lani worker {node}: stopped", file=out, flush=True)
    return EXIT_OK


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    seconds = (now - moment).total_seconds()
    if seconds < 0:
        return f"in {_span(-seconds)}"
    return f"{_span(seconds)} ago"


def _span(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f}m"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


async def cmd_status(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    await migrate(dsn)
    now = datetime.now(UTC)
    async with EventStore.open(dsn, max_connections=COMMAND_MAX_CONNECTIONS) as store:
        statuses = [await actor_status(store, name, now) for name in ACTOR_NAMES]
        # The demonstration actors are shown once they have run somewhere.
        statuses = [s for s in statuses if s.actor in DEFAULT_ACTORS or s.state != "never started"]
        queue = TaskQueue(store, task_types())
        counts = await queue.counts()
        dead = await queue.dead_letters(limit=10)
        writer = await store.oldest_writer()
        connections = await views.connection_use(store)
        flow = await flow_table(store).usage()
        concurrency = await queue.concurrency()
    if args.json:
        report = {
            "actors": statuses,
            "tasks": list(counts.values()),
            "dead_letters": dead,
            "oldest_writer": writer,
            "readers_held_back": writer is not None and writer.holds_back_readers,
            "connections": connections,
            "flow": flow,
            "task_concurrency": list(concurrency.values()),
        }
        print(msgspec.json.encode(report).decode(), file=out)
        return EXIT_OK
    _print_actors(statuses, now, out)
    _print_readers(writer, out)
    _print_connections(connections, out)
    _print_tasks(list(counts.values()), dead, now, out)
    _print_flow(flow, list(concurrency.values()), out)
    return EXIT_OK


def _configured_here() -> Settings | None:
    """This shell's settings when they read cleanly (status never needs them: a worker that
    refuses its settings must still be looked into)."""
    try:
        return load_settings()
    except ConfigError:
        return None


def _limit_text(limit: Limit | None) -> str:
    return "off" if limit is None else limit.text()


def _print_flow(flow: FlowUsage, concurrency: Sequence[ConcurrencyUse], out: TextIO) -> None:
    """The rate limits every node shares, each with its use in its last window and its
    pause, and the task types' concurrency limits with their running tasks."""
    print(file=out)
    if not flow.scopes:
        settings = _configured_here()
        configured = (
            ""
            if settings is None
            else f" (configured here: telegram {_limit_text(settings.telegram_rate)}, per chat "
            f"{_limit_text(settings.telegram_chat_rate)}, per group "
            f"{_limit_text(settings.telegram_group_rate)}, tonapi "
            f"{_limit_text(settings.tonapi_rate)})"
        )
        print(f"FLOW CONTROL: no call has taken a grant yet{configured}", file=out)
    else:
        print("FLOW CONTROL (limits every node shares; use in each scope's last window)", file=out)
        print(
            f"{'SCOPE':<30} {'LIMIT':>8} {'USED':>5}  {'PAUSED':<14} {'GRANTED':>9} {'429s':>5}",
            file=out,
        )
        for use in flow.scopes:
            paused = f"{use.paused_for:.1f}s more" if use.paused_for > 0 else "-"
            print(
                f"{use.scope:<30} {use.limit.text():>8} {use.used:>5}  {paused:<14} "
                f"{use.granted:>9,} {use.pauses:>5}",
                file=out,
            )
        shown = sum(1 for use in flow.scopes if ":" in use.scope)
        if flow.chat_scopes:
            print(
                f"  {flow.chat_scopes} chat(s) and group(s) with a limit of their own on "
                f"record, {shown} in use or paused (shown)",
                file=out,
            )
    if concurrency:
        print(file=out)
        print(f"{'TASK CONCURRENCY':<22} {'RUNNING':>8} {'LIMIT':>6}  SET BY", file=out)
        for c in concurrency:
            print(
                f"{c.task_type:<22} {c.running:>8} {c.max_running:>6}  {c.set_by or '-'}",
                file=out,
            )


def _print_connections(use: views.ConnectionUse, out: TextIO) -> None:
    """Who holds database connections: each i3lani process (by node), within its budget of
    I3LANI_MAX_CONNECTIONS, and the server as a whole against its limit."""
    print(file=out)
    print(
        f"CONNECTIONS: {use.server_in_use} of the server's {use.server_max} in use "
        f"(every database and client); i3lani's, per process:",
        file=out,
    )
    if not use.nodes:
        print("  none but this command's", file=out)
        return
    for node in use.nodes:
        parts = [
            f"{count} {purpose}"
            for purpose, count in (
                ("LISTEN", node.listen),
                ("lease", node.lease),
                ("pooled", node.work),
                ("other", node.other),
            )
            if count
        ]
        name = node.node or "(no node name: commands like this one)"
        print(f"  {name:<36} {node.total:>3}  ({', '.join(parts)})", file=out)


def _print_readers(writer: OpenTransaction | None, out: TextIO) -> None:
    """Whether readers of the log (subscriptions, the audit, the dashboard) are held back by
    an open write transaction, and whose: a frozen client's, typically."""
    print(file=out)
    if writer is None or not writer.holds_back_readers:
        print("READERS: not held back (no write transaction is keeping events from them)", file=out)
        return
    who = writer.application or "another client"
    where = f" on database {writer.database}" if writer.database else ""
    print(
        f"READERS: held back: {writer.events_waiting} committed event(s) wait behind an open "
        f"write transaction, pid {writer.pid}{where} ({who}), {writer.state or 'state unknown'} "
        f"for {writer.state_seconds:.1f}s, open {writer.open_seconds:.1f}s",
        file=out,
    )


def _print_tasks(
    counts: Sequence[TypeCounts], dead: Sequence[DeadTask], now: datetime, out: TextIO
) -> None:
    print(file=out)
    if not counts:
        print("TASKS: none queued, running or dead", file=out)
        return
    print(
        f"{'TASK TYPE':<22} {'QUEUED':>7} {'DUE':>6} {'RUNNING':>8} {'DEAD':>6}  OLDEST DUE",
        file=out,
    )
    for c in counts:
        oldest = "-" if c.oldest_due_age is None else _span(c.oldest_due_age.total_seconds())
        print(
            f"{c.task_type:<22} {c.queued:>7} {c.due:>6} {c.running:>8} {c.dead:>6}  {oldest}",
            file=out,
        )
    if dead:
        print(file=out)
        print("DEAD LETTERS (an operator decides: fix the cause, then retry)", file=out)
        for task in dead:
            error = (task.last_error or "-")[:80]
            print(
                f"  task {task.id} {task.task_type}, {task.attempts} attempt(s), "
                f"{_ago(task.finished_at, now)}: {error}",
                file=out,
            )


def _print_actors(statuses: Sequence[ActorStatus], now: datetime, out: TextIO) -> None:
    header = f"{'ACTOR':<17} {'STATE':<26} {'NODE':<24} {'GEN':>4} {'RESTARTS/1h':>11}  "
    print(header + f"{'LAST TICK':<10} LAST ERROR", file=out)
    for status in statuses:
        state: str = status.state
        if status.state == "backing off" and status.backing_off_until is not None:
            # Never past: a backoff whose time has come reads "starting" (project_status).
            state = f"backing off ({_ago(status.backing_off_until, now)})"
        elif status.state == "running" and status.lease_live is False:
            state = "running? (lease expired)"
        elif status.state == "running" and status.lease_suspect:
            state = f"suspect ({status.lease_renewed_seconds_ago:.0f}s unrenewed)"
        elif status.state == "stopped" and status.desired == "running":
            state = "stopped (will start)"
        error = "-"
        if status.last_error:
            error = f"{status.last_error[:60]} ({_ago(status.last_error_at, now)})"
        print(
            f"{status.actor:<17} {state:<26} {status.node or '-':<24} "
            f"{status.generation or '-':>4} {status.restarts_last_hour:>11}  "
            f"{_ago(status.last_tick, now):<10} {error}",
            file=out,
        )
        if status.state in ("parked", "stopped") and status.stop_reason:
            print(f"{'':<17} why: {status.stop_reason}", file=out)


async def cmd_retry_task(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    await migrate(dsn)
    async with EventStore.open(dsn, max_connections=COMMAND_MAX_CONNECTIONS) as store:
        queue = TaskQueue(store, task_types())
        who = f"cli:{getpass.getuser()}@{socket.gethostname()}"
        await queue.retry_dead(args.task_id, requested_by=who)
        info = await queue.get(args.task_id)
    assert info is not None
    print(
        f"task {info.id} ({info.task_type}) re-queued with {info.max_attempts} fresh "
        "attempt(s); `i3lani status` shows how it goes",
        file=out,
    )
    return EXIT_OK


def _task_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a task id is a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a task id is positive, got {value}")
    return value


async def cmd_health(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    from actors.health import last_verdict

    await migrate(dsn)
    async with EventStore.open(dsn, max_connections=COMMAND_MAX_CONNECTIONS) as store:
        if args.now:
            report = await _check_now(store)
            verdict = HealthChecked(
                healthy=all(c.ok for c in report.checks),
                checks=report.checks,
                checked_at=report.checked_at,
            )
        else:
            last = await last_verdict(store)
            if last is None:
                print(
                    "no health check recorded yet (the HealthChecker records one every "
                    "I3LANI_HEALTH_INTERVAL seconds); `i3lani health --now` runs them here",
                    file=out,
                )
                return EXIT_ERROR
            verdict = last
    if args.json:
        print(msgspec.json.encode(verdict).decode(), file=out)
        return EXIT_OK if verdict.healthy else EXIT_ERROR
    now = datetime.now(UTC)
    word = "healthy" if verdict.healthy else "FAILING"
    warnings = sum(c.warning for c in verdict.checks)
    if warnings:
        word += f", {warnings} warning{'s' if warnings > 1 else ''}"
    source = "checked just now" if args.now else f"checked {_ago(verdict.checked_at, now)}"
    print(f"{word} ({source}, {format_time(verdict.checked_at)})", file=out)
    width = max((len(c.name) for c in verdict.checks), default=5)
    for check in verdict.checks:
        mark = "warn" if check.warning else "ok  " if check.ok else "FAIL"
        latency = "" if check.latency_ms is None else f"{check.latency_ms:8.1f} ms  "
        print(f"  {mark} {check.name:<{width}}  {latency or ' ' * 13}{check.detail}", file=out)
    return EXIT_OK if verdict.healthy else EXIT_ERROR


async def _check_now(store: EventStore) -> HealthReport:
    from actors.catalog import tick_intervals
    from actors.clients import telegram_bot, tonapi_client
    from actors.health import HealthChecker
    from actors.runtime.clock import SystemClock
    from actors.telegram import TelegramClient

    settings = load_settings()
    async with contextlib.AsyncExitStack() as stack:
        tonapi = await stack.enter_async_context(tonapi_client(settings, store, retries=1))
        telegram = None
        if settings.bot_token:
            bot = telegram_bot(settings, store, token=settings.bot_token)
            telegram = await stack.enter_async_context(TelegramClient(bot))
        checker = HealthChecker(
            settings,
            actor_intervals=tick_intervals(settings),
            lagging_checkpoints=CATEGORIES,
            tonapi=tonapi,
            telegram=telegram,
        )
        return await checker.run_checks(store, SystemClock())


async def cmd_control(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    """``restart|stop|start ACTOR``: says what will happen before anything is recorded, records
    the command only when something will act on it, and (when a node holds the actor) waits to
    show what it did (:func:`actors.control.command_outlook`)."""
    who = f"cli:{getpass.getuser()}@{socket.gethostname()}"
    command = operator_command(args.command, args.actor, requested_by=who, reason=args.reason)
    await migrate(dsn)
    async with EventStore.open(dsn, max_connections=COMMAND_MAX_CONNECTIONS) as store:
        status = await actor_status(store, args.actor, datetime.now(UTC))
        outlook = command_outlook(command.action, status)
        if outlook.refused:
            raise CommandRefused(outlook.message)
        if not outlook.record:
            print(outlook.message, file=out)
            return EXIT_OK
        result = await issue_command(store, command)
        print(f"{args.command} {args.actor}: requested (command #{result.last_position})", file=out)
        if outlook.message:
            print(outlook.message, file=out)
        if args.no_wait or not outlook.wait:
            return EXIT_OK
        acted = await _wait_for_lifecycle(store, args.actor, after=result.last_position)
    if acted is not None:
        print(f"{args.actor}: {acted}", file=out)
    elif status.lease_live:
        print(
            f"{args.actor}: its node ({status.node}) did not act within 5 s; it acts on the "
            "command when it sees it, unless it loses the lease first (a node that takes it "
            "over starts it afresh): `i3lani status` shows which",
            file=out,
        )
    else:
        print(
            f"{args.actor}: no node started it within 5 s; the next worker started with it "
            "(`i3lani run`) does",
            file=out,
        )
    return EXIT_OK


async def _wait_for_lifecycle(store: EventStore, actor: str, *, after: int) -> str | None:
    """The first lifecycle step recorded for ``actor`` after position ``after`` (5 s at most)."""
    cursor = await store.cursor_at(after)
    with anyio.move_on_after(5):
        async with store.subscribe(category=ACTOR, after=cursor, poll_interval=0.5) as sub:
            async for recorded in sub:
                if recorded.stream == actor_stream(actor):
                    return event_line(recorded).split("  ", 3)[-1]
    return None


async def cmd_gateway(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    from bot_gateway import load_gateway_config, run_gateway
    from bot_gateway.config import check_webhook_secret
    from ops.admin import admin_routes

    # Every setting is checked before anything starts: a one-line error, not a traceback.
    settings = load_settings()
    settings.require_bot_token()
    config = load_gateway_config()
    if args.mode == "webhook":
        check_webhook_secret(config.webhook_secret)
    port = args.port if args.port is not None else _port_from_env()
    budget = max_connections_from_env(GATEWAY_MAX_CONNECTIONS)
    await migrate(dsn)
    async with EventStore.open(dsn, node=node_name(), max_connections=budget) as store:

        async def serve() -> None:
            await run_gateway(
                settings,
                store,
                mode=args.mode,
                host=args.host,
                port=port,
                config=config,
                add_routes=admin_routes(store, config.admin_token),
            )

        print(
            f"i3lani gateway ({args.mode}"
            + (f" on {args.host}:{port}" if args.mode == "webhook" else "")
            + "): SIGTERM or Ctrl-C stops it",
            file=out,
            flush=True,
        )
        await run_until_signalled(serve)
    print("i3lani gateway: stopped", file=out, flush=True)
    return EXIT_OK


def _port_from_env(env: Mapping[str, str] = os.environ) -> int:
    text = env.get("PORT", "8080")
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(f"PORT must be a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"PORT must be between 0 and 65535, got {port}")
    return port


async def cmd_export(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    from ops.export import export_range, verify_export

    await migrate(dsn)
    async with EventStore.open(dsn, max_connections=COMMAND_MAX_CONNECTIONS) as store:
        if args.verify is not None:
            verified = await verify_export(store, args.verify)
            print(
                f"verified {args.verify}: {verified.events:,} events, the same as the log's"
                + (
                    f" (positions {verified.first_position} to {verified.last_position})"
                    if verified.events
                    else ""
                ),
                file=out,
            )
            return EXIT_OK
        after = await store.cursor_at(args.after)
        upto = None if args.upto is None else await store.cursor_at(args.upto)
        manifest = await export_range(store, args.out, after=after, upto=upto)
        totals = await views.summary(store)
    per_event = manifest.compressed_bytes / manifest.events if manifest.events else 0.0
    stored = totals.bytes_per_event or 0.0
    print(
        f"exported {manifest.events:,} events (positions {manifest.first_position} to "
        f"{manifest.last_position}) to {args.out}: {format_bytes(manifest.compressed_bytes)}, "
        f"{per_event:,.0f} bytes per event compressed, {stored:,.0f} in the log",
        file=out,
    )
    return EXIT_OK


async def cmd_audit(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    return await audit.audit_command(dsn, args, out)


async def cmd_seal(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    return await seals.seal_command(dsn, args, out)


async def cmd_refunds(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    return await refunds.refunds_command(dsn, args, out)


async def cmd_reconcile(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    return await reconcile.reconcile_command(dsn, args, out)


async def cmd_demo(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    from ops import demo

    return await demo.demo_command(dsn, args, out)


async def cmd_dev(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    from ops import dev

    return await dev.dev_command(dsn, args, out, node=node_name())


COMMANDS: dict[str, Callable[[str, argparse.Namespace, TextIO], Awaitable[int]]] = {
    "migrate": cmd_migrate,
    "summary": cmd_summary,
    "events": cmd_events,
    "run": cmd_run,
    "status": cmd_status,
    "health": cmd_health,
    "retry-task": cmd_retry_task,
    "restart": cmd_control,
    "stop": cmd_control,
    "start": cmd_control,
    "audit": cmd_audit,
    "seal": cmd_seal,
    "refunds": cmd_refunds,
    "reconcile": cmd_reconcile,
    "export": cmd_export,
    "demo": cmd_demo,
    "dev": cmd_dev,
    "gateway": cmd_gateway,
}


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    database = None if args.command in _OWN_DATABASE else args.database
    async with database_url() as dsn:
        if database is not None:
            await _check_exists(dsn, database)
            dsn = with_database(dsn, database)
        return await COMMANDS[args.command](dsn, args, out)


async def _check_exists(server_dsn: str, database: str) -> None:
    """ConfigError (one line) when ``--database`` names no database of ``server_dsn``'s
    server (asked through the database ``server_dsn`` names, which the user can reach)."""
    from store.admin import database_exists

    exists, _ = await database_exists(server_dsn, database)
    if not exists:
        raise ConfigError(
            f"--database {database}: the server has no such database "
            "(`i3lani demo` and `i3lani dev` make theirs: i3lani_demo, i3lani_dev)"
        )


def check_environment(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> None:
    """Every variable ``args.command`` reads, checked before anything starts (the embedded
    server included): ConfigError naming each problem, one line each.

    The database's (``DATABASE_URL``, the lease and the session bounds) for every command that
    opens the log; the actors' settings for the commands that read them (not ``status`` or
    ``restart``: an operator looking into a worker that refuses its settings must still be
    able to look); the gateway's for ``gateway``; and what ``run`` and ``gateway`` cannot
    start without (the wallet, the bot's token, the webhook's secret, the port)."""
    from actors.catalog import missing_settings

    check = ConfigCheck()
    level = env.get("I3LANI_LOG_LEVEL", "").strip()
    if level and level not in LOG_LEVELS:
        check.problems.append(
            f"I3LANI_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {one_line(level)!r}"
        )
    if args.command == "simulate":  # no database, no outside service: the seed is all
        check.done()
        return
    check.read(lambda: configured_database_url(env), None)
    check.read(lambda: SessionLimits.from_env(env), None)
    if args.command in _READS_SETTINGS or (args.command == "health" and args.now):
        check.read(lambda: load_settings(env), None)
    if args.command == "run":  # what is missing, whether or not the rest is well-formed
        check.problems += missing_settings(
            args.actors or DEFAULT_ACTORS,
            wallet=bool(env.get("WALLET_ADDRESS")),
            bot_token=bool(env.get("BOT_TOKEN")),
        )
    if args.command == "gateway":
        from bot_gateway.config import check_webhook_secret, load_gateway_config

        mode = args.mode
        if mode not in ("webhook", "polling"):
            check.problems.append(
                f"I3LANI_GATEWAY_MODE must be webhook or polling, got {one_line(mode)!r}"
            )
        if not env.get("BOT_TOKEN"):
            check.read(Settings().require_bot_token, None)
        config = check.read(lambda: load_gateway_config(env), None)
        if mode == "webhook" and config is not None and config.webhook_secret is None:
            check.read(lambda: check_webhook_secret(None), None)
        if args.port is None:
            check.read(lambda: _port_from_env(env), None)
    check.done()


def _report(command: str, error: I3laniError) -> None:
    """An error on stderr, one line per problem, each naming the command."""
    lines = error.problems if isinstance(error, ConfigError) else (str(error),)
    for line in lines:
        print(f"i3lani {command}: {line}", file=sys.stderr)


TRACED_COMMANDS: Final = frozenset({"run", "gateway", "dev"})
"""The commands that record traces when the OTEL_* variables ask for them."""


def _untraced() -> None:
    return None


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of the ``i3lani`` console script; returns the exit code."""
    parser = build_parser()
    given = list(sys.argv[1:] if argv is None else argv)
    if any("\x00" in value for value in given):
        # A process's argv cannot hold one, but a caller of main() can pass one, and no
        # option means anything with it (PostgreSQL refuses it in text).
        parser.error("an argument holds a NUL character; arguments are text without NUL")
    args = parser.parse_args(given)
    try:
        check_environment(args)
    except ConfigError as exc:
        _report(args.command, exc)
        return EXIT_ERROR
    level = args.log_level or os.environ.get("I3LANI_LOG_LEVEL", "").strip()
    if not level:
        level = "INFO" if args.command == "run" else "WARNING"  # a worker says what it does
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level != "DEBUG":
        # httpx logs every request at INFO: a TonAPI poll every 30 s would drown what the
        # worker itself says. Its warnings and errors still show.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        if args.command == "simulate":
            # Its own event loop (the simulation kernel's) and no database: not under anyio.run.
            return simulate_cli.main(args, out or sys.stdout)
        # The long-running processes trace when OTEL_* asks (actors/runtime/tracing.py).
        stop_tracing = (
            tracing.configure(os.environ, service=f"i3lani-{args.command}")
            if args.command in TRACED_COMMANDS
            else _untraced
        )
        try:
            return anyio.run(_run, args, out or sys.stdout, backend="asyncio")
        finally:
            stop_tracing()
    except I3laniError as exc:
        _report(args.command, exc)
        return EXIT_ERROR
    except ValueError as exc:
        print(f"i3lani {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
