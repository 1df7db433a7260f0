"""Migrations: idempotent, safe from two processes at once, and equal to schema.sql.

PostgreSQL only (not in the contract suite): the schema is PostgreSQL's."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import asyncpg
import pytest

from store import migrate, migrations
from store.queries import sql_file
from tests.pg import fresh_database

# Everything that makes up the schema, in a form that compares equal when two databases
# have the same tables, columns, constraints, indexes, triggers, functions and comments.
INTROSPECT = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, column_default,
               is_identity, identity_generation, is_generated, generation_expression
        FROM information_schema.columns WHERE table_schema = 'i3lani'
        ORDER BY table_name, column_name""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'i3lani'::regnamespace
        ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'i3lani' ORDER BY 1, 2""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid), tgenabled::text
        FROM pg_trigger WHERE NOT tgisinternal
          AND tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'i3lani'::regnamespace)
        ORDER BY 1, 2""",
    "functions": """
        SELECT proname, pg_get_functiondef(oid) FROM pg_proc
        WHERE pronamespace = 'i3lani'::regnamespace ORDER BY 1""",
    "comments": """
        SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c
        WHERE c.relnamespace = 'i3lani'::regnamespace ORDER BY 1""",
}


async def describe(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            name: [tuple(row) for row in await conn.fetch(sql)] for name, sql in INTROSPECT.items()
        }
    finally:
        await conn.close()


@pytest.fixture
async def empty_dsn(server_dsn: str) -> AsyncIterator[str]:
    async with fresh_database(server_dsn, prefix="i3lani_m") as created:
        yield created


async def test_migrations_produce_exactly_schema_sql(dsn: str, empty_dsn: str) -> None:
    # `dsn` was built by running the migrations; `empty_dsn` gets schema.sql applied directly.
    conn = await asyncpg.connect(empty_dsn)
    try:
        await conn.execute(sql_file("schema.sql"))
    finally:
        await conn.close()
    migrated, declared = await describe(dsn), await describe(empty_dsn)
    for part in INTROSPECT:
        assert migrated[part] == declared[part], part
    assert migrated["columns"], "introspection found nothing: the comparison would be vacuous"
    assert any("events_append_only_row" in str(row) for row in migrated["triggers"])
    # Both append-only triggers fire always, session_replication_role = replica included.
    enabled = {row[1]: row[3] for row in migrated["triggers"] if row[0] == "i3lani.events"}
    assert enabled == {"events_append_only_row": "A", "events_append_only_truncate": "A"}


async def test_migrate_is_idempotent(empty_dsn: str) -> None:
    first = await migrate(empty_dsn)
    assert [m.version for m in first] == [m.version for m in migrations()]
    assert await migrate(empty_dsn) == []
    conn = await asyncpg.connect(empty_dsn)
    try:
        versions = await conn.fetch("SELECT version FROM i3lani.schema_migrations ORDER BY 1")
    finally:
        await conn.close()
    assert [row["version"] for row in versions] == [m.version for m in migrations()]


async def test_two_processes_migrating_at_once_apply_each_migration_once(empty_dsn: str) -> None:
    applied: list[list[int]] = []

    async def run() -> None:
        applied.append([m.version for m in await migrate(empty_dsn)])

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(run)
    every = sorted(v for run_applied in applied for v in run_applied)
    assert every == [m.version for m in migrations()]


def test_migrations_are_numbered_without_gaps() -> None:
    versions = [m.version for m in migrations()]
    assert versions == list(range(1, len(versions) + 1))
