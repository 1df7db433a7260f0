"""Throwaway databases for tests: created on the test server, dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from store.database import with_database


@asynccontextmanager
async def fresh_database(
    server_dsn: str, *, template: str | None = None, prefix: str = "i3lani_t"
) -> AsyncIterator[str]:
    """Yield the DSN of a new database (a copy of ``template`` if given), dropped on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(with_database(server_dsn, "postgres"))
    try:
        clause = f" TEMPLATE {template}" if template else ""
        await admin.execute(f"CREATE DATABASE {name}{clause}")
        yield with_database(server_dsn, name)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
