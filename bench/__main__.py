"""``python -m bench``: run the benchmarks on a fresh database and print the table.

    python -m bench                  # the full run, about 5 s per measurement
    python -m bench --quick          # a smoke run, about a minute
    python -m bench --seconds 10 --json results.json
    python -m bench --suite scale    # one suite (repeatable): eventstore, actors, queue,
                                     # payments, confirm, scale, seals, cost, broadcast,
                                     # simulate, hangs (hangs only when named)

The server is ``DATABASE_URL`` when set, else the embedded PostgreSQL. A database named
``i3lani_bench`` is dropped if it exists, created, migrated, used for every figure, and dropped
at the end (``--keep-database`` keeps it for a look). The ``scale`` suite (a log of 1,000,000
events, 100,000 with ``--quick``: ``read_all`` and ``i3lani audit`` on it; an idle worker's
memory, CPU and wake-ups) builds its log in databases of its own beside it, always dropped.
The ``simulate`` suite (the deterministic simulator's seeds per minute, simulated hours per
minute and replay, each in processes of its own) needs no database: when it is the only suite
named, no server is started and no database created. Progress goes to stderr, the table to
stdout; the exit status is 1 when a row FAILs (a measured run broke a guarantee), else 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import shutil
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import anyio
import asyncpg

from bench import (
    actors,
    broadcast,
    confirm,
    cost,
    eventstore,
    hangs,
    payments,
    queue,
    scale,
    seals,
    simulate,
)
from bench.measure import BenchContext, run_suite
from bench.peers import find_pgbench
from bench.report import MIN_ROUNDS, UNSTABLE_FACTOR, Row, Verdict, render_table, row_to_json
from store.database import database_url, redact_dsn, with_database
from store.migrate import migrate


@dataclass(frozen=True, slots=True)
class Suite:
    """A group of figures: ``run`` measures them, ``notes`` say what the references are."""

    run: Callable[[BenchContext], Awaitable[list[Row]]]
    notes: Sequence[str] = ()
    database: bool = True  # False: it never touches ctx.dsn, so alone it needs no server


SUITES: dict[str, Suite] = {
    "eventstore": Suite(eventstore.run, eventstore.NOTES),
    "actors": Suite(actors.run, actors.NOTES),
    "queue": Suite(queue.run, queue.NOTES),
    "payments": Suite(payments.run, payments.NOTES),
    "confirm": Suite(confirm.run, confirm.NOTES),
    "scale": Suite(scale.run, scale.NOTES),
    "seals": Suite(seals.run, seals.NOTES),
    "cost": Suite(cost.run, cost.NOTES),
    "hangs": Suite(hangs.run, hangs.NOTES),
    "broadcast": Suite(broadcast.run, broadcast.NOTES),
    "simulate": Suite(simulate.run, simulate.NOTES, database=False),
}
OPT_IN = frozenset({"hangs"})
"""Suites run only when named: ``hangs`` takes about ten minutes (15 runs of a two-worker
scenario at the default lease)."""

DATABASE = "i3lani_bench"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark i3lani against raw asyncpg, pgbench, the eventsourcing peer and "
        "bare anyio streams; time actor restarts and worker failover.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run (about a minute in all)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        metavar="N",
        help="seconds per measurement of each contender (default 5, --quick 1.5)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")
    parser.add_argument(
        "--read-events",
        type=int,
        default=None,
        metavar="N",
        help="log size for the read figures (default 200000, --quick 100000)",
    )
    parser.add_argument(
        "--suite",
        action="append",
        choices=sorted(SUITES),
        help="run only this suite (repeatable; default: all). scale: a log of 1,000,000 events "
        "(--quick: 100,000), read_all and `i3lani audit` on it, and an idle worker. confirm "
        "(about 2 minutes): transfer -> PaymentConfirmed -> the user's Telegram notice, with "
        "the TON stream and with polling alone at the default 30 s. seals: appends "
        "with the Sealer running vs without it, seal verification speed. hangs (run "
        "only when named, about 10 minutes): take-over and reader stall when a worker is frozen "
        "or cut off. simulate (no database): the deterministic simulator's seeds/minute, simulated "
        "hours/minute and replay. broadcast: 1,000 notices from three worker processes through a "
        "Bot API stand-in holding Telegram's 30/s, with the rate limits shared vs each node on "
        "its own",
    )
    parser.add_argument(
        "--keep-database",
        action="store_true",
        help=f"do not drop {DATABASE} (nor the suites' own databases) at the end",
    )
    args = parser.parse_args(argv)
    if args.seconds is not None and args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.read_events is not None and args.read_events < 1:
        parser.error("--read-events must be at least 1")
    return args


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _server_info(dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        names = ("server_version", "fsync", "synchronous_commit", "shared_buffers")
        return {name: str(await conn.fetchval(f"SHOW {name}")) for name in names}
    finally:
        await conn.close()


# PostgreSQL 18 lists a connection still starting up (no database yet) as state 'starting':
# not work, and the bench's own new connections (pgbench, worker processes) would count. The
# scale suite's own databases (i3lani_bench_scale, i3lani_bench_idle) are the bench's too.
_OTHERS = """
SELECT count(*) FROM pg_stat_activity
WHERE backend_type = 'client backend' AND state NOT IN ('idle', 'starting')
  AND datname IS DISTINCT FROM $1 AND datname NOT LIKE $1 || '\\_%'
"""


async def _watch_others(dsn: str, samples: list[int]) -> None:
    """Once a second, how many client sessions of other databases are busy on the server: a
    benchmark sharing the server (or the machine's two cores) with a test suite is noise."""
    conn = await asyncpg.connect(dsn)
    try:
        while True:
            samples.append(int(await conn.fetchval(_OTHERS, DATABASE)))
            await anyio.sleep(1)
    finally:
        with anyio.CancelScope(shield=True):
            await conn.close()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


class BenchBusy(Exception):
    """Another benchmark holds the bench's databases on this server."""


_BUSY = """
SELECT pid, datname, coalesce(application_name, '') AS application
FROM pg_stat_activity
WHERE (datname = $1 OR datname LIKE $1 || '\\_%') AND pid <> pg_backend_pid()
ORDER BY pid
"""


async def refuse_if_busy(server_dsn: str, database: str = DATABASE) -> None:
    """Refuse, in one line, to start while sessions are open on ``database`` or the suites'
    own ``database_*``: another benchmark run against the same server, whose databases the
    ``DROP ... WITH (FORCE)`` below would pull from under it (two runs from one checkout
    share its embedded server: both then died with "connection is closed")."""
    conn = await asyncpg.connect(server_dsn)
    try:
        rows = await conn.fetch(_BUSY, database)
    finally:
        await conn.close()
    if rows:
        sessions = ", ".join(f"pid {r['pid']} on {r['datname']}" for r in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        raise BenchBusy(
            f"another benchmark is using {database} on this server ({sessions}{more}): "
            "wait for it to end, or run this one against another server (DATABASE_URL, or "
            "another checkout's embedded one)"
        )


@asynccontextmanager
async def _bench_database(keep: bool) -> AsyncIterator[str]:
    """:data:`DATABASE` on the server, dropped if it exists, created and migrated; dropped
    again at the end unless ``keep``. Yields its DSN. Refuses to start while another run uses
    them (:func:`refuse_if_busy`)."""
    async with database_url() as server_dsn:
        dsn = with_database(server_dsn, DATABASE)
        await refuse_if_busy(server_dsn)
        await _admin(server_dsn, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        await _admin(server_dsn, f"CREATE DATABASE {DATABASE}")
        try:
            await migrate(dsn)
            yield dsn
        finally:
            if not keep:
                with anyio.CancelScope(shield=True):
                    await _admin(server_dsn, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    quick: bool = args.quick
    seconds: float = args.seconds if args.seconds is not None else (1.5 if quick else 5.0)
    read_events: int = args.read_events or (100_000 if quick else 200_000)
    suites: list[str] = args.suite or [name for name in SUITES if name not in OPT_IN]
    embedded = not os.environ.get("DATABASE_URL", "").strip()
    started = time.perf_counter()
    dsn: str | None = None
    server: dict[str, str] = {}
    pgbench: str | None = None
    async with AsyncExitStack() as stack:
        if any(SUITES[name].database for name in suites):
            dsn = await stack.enter_async_context(_bench_database(args.keep_database))
            server = await _server_info(dsn)
            pgbench = find_pgbench(embedded=embedded)
        ctx = BenchContext(
            dsn=dsn or "",
            seconds=seconds,
            warmup=0.3 if quick else 1.0,
            rounds=MIN_ROUNDS,
            quick=quick,
            read_events=read_events,
            pgbench=pgbench,
            keep_databases=args.keep_database,
        )
        rows: list[Row] = []
        others: list[int] = []
        load_start = os.getloadavg()[0]
        async with anyio.create_task_group() as tg:
            if dsn is not None:
                tg.start_soon(_watch_others, dsn, others)
            for name in suites:
                ctx.log(f"suite {name}")
                rows += await run_suite(SUITES[name].run, name, ctx)
            tg.cancel_scope.cancel()
        load_end = os.getloadavg()[0]
    return {
        "command": shlex.join(["python", "-m", "bench", *sys.argv[1:]]),
        "database": (
            "none (the suites run need no database)"
            if dsn is None
            else redact_dsn(dsn) + (" (embedded)" if embedded else " (DATABASE_URL)")
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
            "python": platform.python_version(),
            "postgresql": server.get("server_version"),
            "fsync": server.get("fsync"),
            "synchronous_commit": server.get("synchronous_commit"),
            "shared_buffers": server.get("shared_buffers"),
            "asyncpg": _version("asyncpg"),
            "eventsourcing": _version("eventsourcing"),
            "pgqueuer": _version("pgqueuer"),
            "dbos": _version("dbos"),
            "pgbench": (shutil.which(pgbench) or pgbench) if pgbench else "not found",
        },
        "settings": {
            "seconds_per_measurement": ctx.seconds,
            "warmup_seconds": ctx.warmup,
            "rounds": ctx.rounds,
            "read_events": ctx.read_events,
            "suites": suites,
        },
        "elapsed_seconds": round(time.perf_counter() - started, 1),
        "background": {
            "load_average_start": round(load_start, 2),
            "load_average_end": round(load_end, 2),
            "busy_sessions_of_other_databases_max": max(others, default=0),
            "seconds_with_busy_sessions_of_other_databases": sum(1 for n in others if n),
            "samples": len(others),
        },
        "rows": rows,
        "notes": [note for name in suites for note in SUITES[name].notes],
    }


def render(result: dict[str, Any]) -> str:
    machine, settings, background = result["machine"], result["settings"], result["background"]
    rows: list[Row] = result["rows"]
    verdicts = [row.verdict for row in rows]
    postgresql = (
        "no PostgreSQL"
        if machine["postgresql"] is None
        else f"PostgreSQL {machine['postgresql']} (fsync={machine['fsync']}, "
        f"synchronous_commit={machine['synchronous_commit']}, "
        f"shared_buffers={machine['shared_buffers']})"
    )
    load = (
        f"load:     load average {background['load_average_start']:g} at the start, "
        f"{background['load_average_end']:g} at the end"
    )
    if background["samples"]:
        load += (
            f"; busy sessions of other databases on the server in "
            f"{background['seconds_with_busy_sessions_of_other_databases']} of "
            f"{background['samples']} one-second samples (at most "
            f"{background['busy_sessions_of_other_databases_max']})"
        )
    lines = [
        f"command:  {result['command']}",
        f"machine:  {machine['cpus']} CPUs, {machine['platform']}, Python {machine['python']}, "
        + postgresql,
        f"software: asyncpg {machine['asyncpg']}, eventsourcing {machine['eventsourcing']}, "
        f"PgQueuer {machine['pgqueuer']}, DBOS {machine['dbos']}, pgbench {machine['pgbench']}",
        f"database: {result['database']}",
        f"timing:   {settings['seconds_per_measurement']:g} s per measurement in "
        f"{settings['rounds']} interleaved round(s) after {settings['warmup_seconds']:g} s "
        f"warm-up; whole run {result['elapsed_seconds']:g} s",
        "rounds:   each compared figure is the median of its rounds, their spread (min-max, "
        f"i3lani / reference) beside it; rounds more than {UNSTABLE_FACTOR:g}x apart on either "
        "side: UNSTABLE, no verdict",
        load,
    ]
    if background["seconds_with_busy_sessions_of_other_databases"]:
        lines.append(
            "WARNING:  other work shared the server during this run: its figures are noisy, and "
            "open transactions elsewhere on the server delay read_all and subscribers"
        )
    lines += [
        "",
        render_table(rows),
        "",
        f"{verdicts.count(Verdict.PASS)} PASS, {verdicts.count(Verdict.MISS)} MISS"
        + (f", {verdicts.count(Verdict.FAIL)} FAIL" if Verdict.FAIL in verdicts else "")
        + (f", {verdicts.count(Verdict.UNSTABLE)} UNSTABLE" if Verdict.UNSTABLE in verdicts else "")
        + (
            f", {verdicts.count(Verdict.NOT_MEASURED)} not measured"
            if Verdict.NOT_MEASURED in verdicts
            else ""
        )
        + ". Ratios are i3lani / reference, "
        + (
            "all measured in this run on the same database."
            if machine["postgresql"] is not None
            else "all measured in this run."
        )
        + (
            " The simulate suite's reference is its goal."
            if "simulate" in settings["suites"]
            else ""
        ),
    ]
    lines += [f"FAIL:     {row.name}: {row.failure}" for row in rows if row.failure is not None]
    if result["notes"]:
        lines += ["", "notes:"]
        lines += [
            textwrap.fill(note, 100, initial_indent="  - ", subsequent_indent="    ")
            for note in result["notes"]
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = anyio.run(run, args)
    except BenchBusy as exc:
        print(f"python -m bench: {exc}", file=sys.stderr)
        return 2
    if args.json:  # first: a run of half an hour is not lost to a fault in printing it
        document = {**result, "rows": [row_to_json(row) for row in result["rows"]]}
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(document, out, indent=2, default=str)
            out.write("\n")
    print(render(result), flush=True)
    return 1 if any(row.verdict is Verdict.FAIL for row in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
