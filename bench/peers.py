"""The references i3lani is measured against, other than raw asyncpg: ``pgbench`` running the
same SQL, and the Python peers (the ``eventsourcing`` library's PostgreSQL recorder, PgQueuer,
DBOS), each run as its users run it: in a process of its own, started once per round with this
interpreter (``python -m bench.peer_<name> '<request JSON>'``), its figures one JSON object on
its stdout (:func:`run_peer`; the runner's side: :func:`read_request`, :func:`answer`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio
import asyncpg
from anyio.abc import Process
from eventsourcing.persistence import Notification, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

from store.database import pg_tool, with_database

__all__ = [
    "DBOS_DATABASE",
    "DBOS_RUNNER",
    "EventsourcingPeer",
    "PeerFailed",
    "PgbenchResult",
    "answer",
    "connection_params",
    "dbos_database",
    "dbos_recovery",
    "find_pgbench",
    "peer_command",
    "read_request",
    "run_peer",
    "run_pgbench",
]

DBOS_RUNNER = "bench.peer_dbos"
DBOS_DATABASE = "i3lani_bench_dbos"
"""DBOS's system database, beside the benchmark's on the same server (created by DBOS at its
first launch, as its users' is; dropped by :func:`dbos_database`)."""


# -- peers in processes of their own ----------------------------------------------------------


class PeerFailed(RuntimeError):
    """A peer's process exited with an error, or printed no figures."""


def peer_command(module: str, request: Mapping[str, Any]) -> list[str]:
    """The command line running ``module``'s peer with ``request``: this interpreter (the
    venv's), ``-m module``, the request as JSON."""
    return [sys.executable, "-m", module, json.dumps(request)]


def peer_environment() -> dict[str, str]:
    """This process's environment, with the repository first on the path (the runners import
    ``bench`` and ``events``, as the benchmark itself does)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


async def run_peer(module: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """Run the peer ``module`` (``bench.peer_<name>``) once with ``request`` and return the JSON
    object it printed last on stdout; :class:`PeerFailed` with its stderr's tail otherwise."""
    result = await anyio.run_process(
        peer_command(module, request), check=False, env=peer_environment()
    )
    lines = result.stdout.decode("utf-8", "replace").strip().splitlines()
    if result.returncode != 0 or not lines:
        stderr = result.stderr.decode("utf-8", "replace").strip()
        raise PeerFailed(
            f"{module} {request.get('command')}: exit {result.returncode}: {stderr[-2000:]}"
        )
    answer_: dict[str, Any] = json.loads(lines[-1])
    return answer_


@asynccontextmanager
async def dbos_database(dsn: str) -> AsyncIterator[str]:
    """DBOS's system database URL on ``dsn``'s server, dropped before and after use (DBOS
    creates it when it first launches)."""
    url = with_database(dsn, DBOS_DATABASE)
    drop = f"DROP DATABASE IF EXISTS {DBOS_DATABASE} WITH (FORCE)"

    async def dropped() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(drop)
        finally:
            await conn.close()

    await dropped()
    try:
        yield url
    finally:
        with anyio.CancelScope(shield=True):
            await dropped()


async def _read_until(process: Process, marker: bytes, output: bytearray, seconds: float) -> None:
    assert process.stdout is not None
    with anyio.fail_after(seconds):
        async for chunk in process.stdout:
            output.extend(chunk)
            if marker in output:
                return
    raise PeerFailed(f"the peer exited before printing {marker.decode()}: {output[-2000:]!r}")


async def dbos_recovery(system_database_url: str) -> float:
    """Seconds from SIGKILL of a DBOS process holding a workflow between its two steps until a
    new process, started right after the kill, has run that workflow's next step."""
    request = {"command": "recovery", "system_database_url": system_database_url}
    env = peer_environment()
    output = bytearray()

    async def start(phase: str) -> Process:
        return await anyio.open_process(
            peer_command(DBOS_RUNNER, {**request, "phase": phase}),
            env=env,
            stderr=subprocess.DEVNULL,
        )

    first = await start("start")
    async with first:
        try:
            await _read_until(first, b"READY", output, 60)
        finally:
            first.kill()
        killed = time.perf_counter()
        await first.wait()
    output.clear()
    second = await start("resume")
    async with second:
        try:
            await _read_until(second, b"RESUMED", output, 60)
            resumed = time.perf_counter() - killed
            with anyio.fail_after(60):
                await second.wait()
        finally:
            if second.returncode is None:
                second.kill()
    if second.returncode != 0:
        raise PeerFailed(f"the recovering DBOS process exited {second.returncode}")
    return resumed


def read_request() -> dict[str, Any]:
    """The runner's side: its request, the JSON object of its first argument."""
    request: dict[str, Any] = json.loads(sys.argv[1])
    return request


def answer(result: Mapping[str, Any]) -> None:
    """The runner's side: its figures, one JSON object on one line of stdout."""
    print(json.dumps(result), flush=True)


# -- pgbench --------------------------------------------------------------------------------


def find_pgbench(*, embedded: bool) -> str | None:
    """The pgbench to use: the one shipped with the embedded server (same major version),
    else the one on PATH; None when there is none."""
    program = pg_tool("pgbench") if embedded else "pgbench"
    return program if shutil.which(program) else None


@dataclass(frozen=True, slots=True)
class PgbenchResult:
    tps: float  # transactions per second, without the initial connection time
    transactions: int
    seconds: int
    clients: int
    command: list[str]


_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


async def run_pgbench(
    program: str,
    dsn: str,
    script: str,
    *,
    seconds: int,
    clients: int,
    variables: Mapping[str, str] | None = None,
) -> PgbenchResult:
    """Run ``script`` (a pgbench custom script) for ``seconds`` with ``clients`` connections,
    prepared statements and no vacuum; the DSN goes last, as the database name (libpq expands
    a URI there, Unix-socket ones with ``?host=/dir`` included)."""
    async with anyio.TemporaryDirectory(prefix="i3lani-pgbench-") as tmp:
        path = anyio.Path(tmp) / "script.sql"
        await path.write_text(script, encoding="utf-8")
        command = [
            program,
            "-n",
            "-M",
            "prepared",
            "-f",
            str(path),
            "-T",
            str(seconds),
            "-c",
            str(clients),
            "-j",
            str(min(2, clients)),
            *[f"-D{name}={value}" for name, value in (variables or {}).items()],
            dsn,
        ]
        result = await anyio.run_process(command, check=False)
    stdout = result.stdout.decode("utf-8", "replace")
    stderr = result.stderr.decode("utf-8", "replace")
    tps, processed, failed = _TPS.search(stdout), _PROCESSED.search(stdout), _FAILED.search(stdout)
    if result.returncode != 0 or tps is None or processed is None:
        raise RuntimeError(
            f"pgbench failed (exit {result.returncode}): {stderr.strip()[-2000:] or stdout[-2000:]}"
        )
    if failed is not None and int(failed.group(1)) > 0:
        raise RuntimeError(f"pgbench: {failed.group(1)} transactions failed: {stderr[-2000:]}")
    return PgbenchResult(
        tps=float(tps.group(1)),
        transactions=int(processed.group(1)),
        seconds=seconds,
        clients=clients,
        command=[*command[:-1], "<dsn>"],
    )


# -- the eventsourcing peer -----------------------------------------------------------------


def connection_params(dsn: str) -> dict[str, str]:
    """dbname, host, port, user and password of a ``postgresql://`` URI, Unix-socket URIs
    (``postgresql://user:@/db?host=/dir``) included: what ``PostgresDatastore`` takes."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    user = unquote(parts.username or "") or query.get("user", "postgres")
    return {
        "dbname": unquote(parts.path.lstrip("/")) or query.get("dbname", user),
        "host": query.get("host") or unquote(parts.hostname or "") or "localhost",
        "port": query.get("port") or (str(parts.port) if parts.port else "5432"),
        "user": user,
        "password": unquote(parts.password or "") or query.get("password", ""),
    }


class EventsourcingPeer:
    """``eventsourcing``'s ``PostgresApplicationRecorder`` in its own schema: the recorder an
    eventsourcing application uses, with a notification log that can be read in order (the
    same capability as i3lani's ``read_all``). It is synchronous (psycopg 3 and a connection
    pool); callers run it in worker threads. Every method blocks."""

    def __init__(self, dsn: str, *, schema: str, pool_size: int) -> None:
        params = connection_params(dsn)
        self.datastore = PostgresDatastore(
            dbname=params["dbname"],
            host=params["host"],
            port=params["port"],
            user=params["user"],
            password=params["password"],
            pool_size=pool_size,
            schema=schema,
            originator_id_type="uuid",
        )
        self.recorder = PostgresApplicationRecorder(self.datastore, events_table_name="events")
        self.recorder.create_table()

    def insert(self, events: Sequence[StoredEvent]) -> None:
        """Append: one transaction; the (originator_id, originator_version) primary key is
        the optimistic-concurrency check."""
        self.recorder.insert_events(events)

    def append_one(self, originator_id: uuid.UUID, version: int, topic: str, state: bytes) -> None:
        self.recorder.insert_events([StoredEvent(originator_id, version, topic, state)])

    def read_page(self, after: int, limit: int) -> list[Notification]:
        """Up to ``limit`` notifications with id > ``after``, in order."""
        page = self.recorder.select_notifications(
            start=after, limit=limit, inclusive_of_start=False
        )
        return list(cast(Sequence[Notification], page))

    def count(self) -> int:
        return int(cast(int | None, self.recorder.max_notification_id()) or 0)

    def close(self) -> None:
        self.datastore.close()
