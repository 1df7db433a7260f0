"""The ``i3lani`` command line.

    i3lani migrate                  bring the database schema up to date
    i3lani summary                  what the event log holds
    i3lani events [--stream S | --category C] [--after N] [--follow] [--json]

``DATABASE_URL`` selects the database; unset, an embedded PostgreSQL is started under
``$I3LANI_HOME`` (default ``./.i3lani``). Errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TextIO

import anyio

from events.errors import I3laniError
from ops.format import event_json, event_line, format_time
from store import EventStore, RecordedEvent, database_url, migrate, migrations, redact_dsn
from store.queries import query

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="i3lani",
        description="i3lani background work: event store, actors and operator tools.",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("I3LANI_LOG_LEVEL", "WARNING"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
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
    return parser


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
    async with EventStore.open(dsn, min_connections=1, max_connections=2) as store:
        totals = await store.pool.fetchrow(query("summary_totals"))
        by_type = await store.pool.fetch(query("summary_by_type"))
        checkpoints = await store.pool.fetch(query("checkpoints"))
    assert totals is not None
    print(f"i3lani event log at {redact_dsn(dsn)}", file=out)
    if totals["events"] == 0:
        print("  empty: 0 events (the gateway and the actors will write here)", file=out)
    else:
        print(
            f"  {totals['events']} events in {totals['streams']} streams, "
            f"last global position {totals['last_position']}",
            file=out,
        )
        print(
            f"  from {format_time(totals['first_recorded_at'])} "
            f"to {format_time(totals['last_recorded_at'])}",
            file=out,
        )
        print("", file=out)
        print(f"  {'category':<12} {'type':<24} {'events':>9}  last recorded", file=out)
        for row in by_type:
            print(
                f"  {row['category']:<12} {row['type']:<24} {row['events']:>9}  "
                f"{format_time(row['last_recorded_at'])}",
                file=out,
            )
    print("", file=out)
    if checkpoints:
        print(f"  {'subscriber':<28} {'at position':>11} {'behind':>8}  updated", file=out)
        for row in checkpoints:
            print(
                f"  {row['name']:<28} {row['global_position']:>11} {row['behind']:>8}  "
                f"{format_time(row['updated_at'])}",
                file=out,
            )
    else:
        print("  no subscriber has stored a checkpoint yet", file=out)
    return EXIT_OK


async def cmd_events(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    def show(recorded: RecordedEvent) -> None:
        print(event_json(recorded).decode() if args.json else event_line(recorded), file=out)

    category = args.category or (args.stream.split("-", 1)[0] if args.stream else None)

    def wanted(recorded: RecordedEvent) -> bool:
        return args.stream is None or recorded.stream == args.stream

    async with EventStore.open(dsn, min_connections=1, max_connections=3) as store:
        start = await store.cursor_at(args.after)
        if not args.follow:
            printed = 0
            async for recorded in store.read_all(after=start, category=category):
                if wanted(recorded):
                    show(recorded)
                    printed += 1
                    if args.limit is not None and printed >= args.limit:
                        break
            if printed == 0 and not args.json:
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


COMMANDS: dict[str, Callable[[str, argparse.Namespace, TextIO], Awaitable[int]]] = {
    "migrate": cmd_migrate,
    "summary": cmd_summary,
    "events": cmd_events,
}


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    async with database_url() as dsn:
        return await COMMANDS[args.command](dsn, args, out)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of the ``i3lani`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return anyio.run(_run, args, out or sys.stdout, backend="asyncio")
    except I3laniError as exc:
        print(f"i3lani {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as exc:
        print(f"i3lani {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
