"""Databases, not the log: create, mark, drop; and backdating events in a scratch database.

What ``i3lani demo`` and the dashboard's screenshots do to a server. Each function takes the DSN
of a database on that server to connect through (the server's own ``postgres`` database, say),
and raises the store's errors: :class:`StoreUnavailable` when the server cannot be reached,
:class:`DatabaseRefused` when it refused (no permission to create a database, say), never the
driver's. The SQL is in ``store/sql/views.sql``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

import anyio
import asyncpg

from events.errors import StoreError, StoreUnavailable
from store.database import redact_dsn
from store.driver import DRIVER_ERRORS, translate
from store.queries import query

__all__ = [
    "DatabaseRefused",
    "database_exists",
    "create_database",
    "drop_database",
    "backdate_events",
]

_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class DatabaseRefused(StoreError):
    """PostgreSQL refused to create, comment or drop a database (``permission`` says whether
    for want of a privilege)."""

    def __init__(self, message: str, *, permission: bool) -> None:
        self.permission = permission
        super().__init__(message)


def _identifier(name: str) -> str:
    if not _PLAIN_NAME.fullmatch(name):
        raise ValueError(f"not a plain database name: {name!r}")
    return '"' + name + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@asynccontextmanager
async def _connected(dsn: str, doing: str) -> AsyncIterator[asyncpg.Connection]:
    try:
        connection = await asyncpg.connect(dsn)
    except DRIVER_ERRORS as exc:
        raise translate(exc, connecting_to=redact_dsn(dsn)) from exc
    try:
        yield connection
    except DRIVER_ERRORS as exc:
        error = translate(exc, what=f"{doing} on {redact_dsn(dsn)}")
        if isinstance(error, StoreUnavailable):
            raise error from exc
        raise DatabaseRefused(
            f"{doing} refused by {redact_dsn(dsn)}: {exc}",
            permission=isinstance(exc, asyncpg.InsufficientPrivilegeError),
        ) from exc
    finally:
        with anyio.CancelScope(shield=True):
            await connection.close()


async def database_exists(dsn: str, name: str) -> tuple[bool, str | None]:
    """Whether database ``name`` exists on ``dsn``'s server, and its comment (None: none)."""
    async with _connected(dsn, f"looking up database {name!r}") as connection:
        row = await connection.fetchrow(query("database_mark"), name)
    return (False, None) if row is None else (True, row["comment"])


async def create_database(dsn: str, name: str, *, comment: str | None = None) -> None:
    """Create database ``name`` (a plain name) on ``dsn``'s server, with ``comment`` if given."""
    database = _identifier(name)
    async with _connected(dsn, f"creating database {name!r}") as connection:
        await connection.execute(query("database_create").format(database=database))
        if comment is not None:
            await connection.execute(
                query("database_comment").format(database=database, comment=_literal(comment))
            )


async def drop_database(dsn: str, name: str) -> None:
    """Drop database ``name`` from ``dsn``'s server if it exists, ending its sessions."""
    database = _identifier(name)
    async with _connected(dsn, f"dropping database {name!r}") as connection:
        await connection.execute(query("database_drop").format(database=database))


async def backdate_events(dsn: str, positions: Sequence[int], moments: Sequence[datetime]) -> None:
    """Set the ``recorded_at`` of the event at ``positions[i]`` to ``moments[i]``, in the
    database ``dsn`` names. For scratch databases only (the dashboard's screenshots): it
    switches the append-only trigger off for the one statement, in one transaction, which
    needs the table's owner."""
    async with (
        _connected(dsn, "backdating events") as connection,
        connection.transaction(),
    ):
        await connection.execute(query("events_trigger_disable"))
        await connection.execute(query("events_backdate"), list(positions), list(moments))
        await connection.execute(query("events_trigger_enable"))
