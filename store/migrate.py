"""Schema migrations: ordered ``.sql`` files applied once each, safe from many processes.

``migrate(dsn)`` takes a PostgreSQL advisory lock for the whole run, so two processes
starting together (a deploy's old and new worker, say) apply each migration exactly once:
the second waits, then finds nothing left to do. Each migration runs in its own transaction
together with the row that records it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from events.errors import MigrationError, StoreUnavailable
from store.database import redact_dsn
from store.driver import driver_errors, translate
from store.limits import SessionLimits
from store.queries import sql_file

__all__ = ["Migration", "migrations", "migrate", "MIGRATION_LOCK_KEY"]

logger = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x6933_6C61_6E69  # "i3lani": the advisory lock every migrator takes

_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with the package, in order."""
    folder = resources.files("store").joinpath("sql", "migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match is None:
            continue
        found.append(
            Migration(int(match.group("version")), match.group("name"), entry.read_text("utf-8"))
        )
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


async def migrate(dsn: str, limits: SessionLimits | None = None) -> list[Migration]:
    """Apply the migrations this database lacks; return the ones applied (empty if none).

    The connection carries the maintenance limits (:mod:`store.limits`): no statement bound
    (an index on a large table takes its time), but a migration left open by a frozen client
    is still ended by the idle-transaction bound."""
    limits = limits if limits is not None else SessionLimits.from_env()
    with driver_errors(connecting_to=f"{redact_dsn(dsn)} to migrate"):
        conn = await asyncpg.connect(dsn, **limits.connect_kwargs("maintenance"))
    try:
        with driver_errors(what="migrating"):
            return await _migrate_on(conn)
    finally:
        with driver_errors(what="migrating"):
            await conn.close()


async def _migrate_on(conn: asyncpg.Connection) -> list[Migration]:
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(sql_file("bootstrap.sql"))
        applied = {
            row["version"]
            for row in await conn.fetch("SELECT version FROM i3lani.schema_migrations")
        }
        done: list[Migration] = []
        for migration in migrations():
            if migration.version in applied:
                continue
            logger.info(
                "applying migration %04d_%s",
                migration.version,
                migration.name,
                extra={"action": "migrate"},
            )
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO i3lani.schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
            except asyncpg.PostgresError as exc:
                if isinstance(translate(exc), StoreUnavailable):
                    raise  # an outage, not a migration that cannot be applied
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} failed: {exc}"
                ) from exc
            done.append(migration)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
