"""The references i3lani is measured against, other than raw asyncpg: ``pgbench`` running the
same SQL, and the ``eventsourcing`` library's PostgreSQL recorder as the Python peer."""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio
from eventsourcing.persistence import Notification, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

from store.database import pg_tool

__all__ = [
    "EventsourcingPeer",
    "PgbenchResult",
    "connection_params",
    "find_pgbench",
    "run_pgbench",
]


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
