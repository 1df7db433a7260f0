"""Migrations: idempotent, safe from two processes at once, and equal to schema.sql.

PostgreSQL only (not in the contract suite): the schema is PostgreSQL's."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import anyio
import asyncpg
import msgspec
import pytest

from events import DEFAULT_REGISTRY, EventMetadata, HealthCheck, HealthChecked, UserRegistered
from events.streams import SEAL_LOG
from store import START, Append, EventStore, NewEvent, TaskQueue, migrate, migrations
from store.queries import sql_file
from store.sealing import SealDigest, next_seals, verify_seals
from store.tasks import TaskContext
from tests.pg import fresh_database
from tests.store.test_tasks import Ping, make_types, running, status_of, wait_for

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


async def migrated_up_to(dsn: str, last: int) -> None:
    """``dsn`` with the migrations up to ``last`` applied, as a release that had no others."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql_file("bootstrap.sql"))
        for migration in migrations():
            if migration.version > last:
                break
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO i3lani.schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
    finally:
        await conn.close()


async def test_seals_made_over_jsonb_verify_after_the_log_becomes_json(empty_dsn: str) -> None:
    # Migration 0010 turns the payload from jsonb into json: each stored event keeps the text
    # jsonb rendered for it, so a seal made before verifies after; a new event is stored as
    # the exact text appended (msgspec's compact JSON), and sealed as such.
    await migrated_up_to(empty_dsn, 9)
    when = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    # What jsonb changes: key order, numbers' form (4.10 is written 4.1 by msgspec, 1e3 stays
    # as jsonb renders it), spacing, and non-ASCII text.
    check = HealthCheck(name="tonapi", ok=True, detail="latency ↑ ünïcode", latency_ms=4.1)
    before = [
        UserRegistered(user_id=42, registered_at=when, username="مستخدم"),
        HealthChecked(
            healthy=True, checks=[check, HealthCheck(name="db", ok=False)], checked_at=when
        ),
    ]
    async with EventStore.open(empty_dsn) as store:
        await store.append("user-42", before, metadata=EventMetadata(caused_by="user:42"))
        seals, more = await next_seals(store, None, sealed_at=when)
        assert len(seals) == 1
        assert not more
        await store.append(SEAL_LOG, seals)
        jsonb_era = [(r.payload, r.metadata) for r in (await store.read_stored(START)).rows]
        assert b'": ' in jsonb_era[0][0], "jsonb's rendering (a space after each colon)"

    applied = await migrate(empty_dsn)
    assert [m.version for m in applied] == [10]

    async with EventStore.open(empty_dsn) as store:
        rows = (await store.read_stored(START)).rows
        assert [(r.payload, r.metadata) for r in rows] == jsonb_era  # byte for byte
        report = await verify_seals(store, against=SealDigest.of(seals[-1]))
        assert report.clean, report.findings
        assert (report.seals, report.events, report.digest_matched) == (1, 2, True)

        after = UserRegistered(user_id=43, registered_at=when, username="ثاني")
        await store.append("user-43", [after])
        newest = (await store.read_stored(START)).rows[-1]
        # The text as appended: msgspec's compact JSON of the event, its tag aside (the type
        # column holds it), in the field order of the Struct.
        fields = msgspec.json.decode(msgspec.json.encode(after))
        del fields["type"]
        assert newest.payload == msgspec.json.encode(fields)
        assert [e.event for e in await store.read_stream("user-43")] == [after]
        more_seals, _ = await next_seals(store, seals[-1], sealed_at=when)
        await store.append(SEAL_LOG, more_seals)
        report = await verify_seals(store, against=SealDigest.of(more_seals[-1]))
        assert report.clean, report.findings
        assert (report.seals, report.digest_matched) == (2, True)


# The statements of the release before 0010 that touch the payload: its read_all (metadata
# through nullif against jsonb) and its appends (payloads sent as jsonb), on a connection with
# its codecs (jsonb only).
PREVIOUS_READ_ALL = """
SELECT global_position, transaction_id, event_id, stream, stream_version, type, schema_version,
       payload, nullif(metadata, '{}'::jsonb), recorded_at
FROM i3lani.events
WHERE (transaction_id, global_position) > ($1::xid8, $2::bigint)
  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY transaction_id, global_position
LIMIT $3"""
PREVIOUS_APPEND = """
INSERT INTO i3lani.events (event_id, stream, stream_version, type, schema_version, payload,
                           metadata)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::integer[],
                     $6::jsonb[], $7::jsonb[])"""


async def test_workers_of_the_previous_release_read_and_append_after_0010(empty_dsn: str) -> None:
    # During a deploy's overlap the previous release's workers go on against the migrated
    # log: what they append and what they read must still work.
    await migrated_up_to(empty_dsn, 9)
    await migrate(empty_dsn)
    when = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    ours = UserRegistered(user_id=42, registered_at=when, username="مستخدم")
    theirs = UserRegistered(user_id=43, registered_at=when)
    async with EventStore.open(empty_dsn) as store:
        await store.append("user-42", [ours], metadata=EventMetadata(caused_by="user:42"))
    previous = await asyncpg.connect(empty_dsn)
    try:
        await previous.set_type_codec(
            "jsonb",
            schema="pg_catalog",
            encoder=lambda data: b"\x01" + data,
            decoder=lambda data: data[1:],
            format="binary",
        )
        tag, version, payload = DEFAULT_REGISTRY.encode(theirs)
        await previous.execute(
            PREVIOUS_APPEND,
            [uuid.uuid4()],
            ["user-43"],
            [1],
            [tag],
            [version],
            [payload],
            [b'{"caused_by": "user:43"}'],
        )
        rows = await previous.fetch(PREVIOUS_READ_ALL, 0, 0, 10)
    finally:
        await previous.close()
    # Its decoder takes the payload as text (json has no codec of its own there).
    assert [row["type"] for row in rows] == ["UserRegistered", "UserRegistered"]
    assert [DEFAULT_REGISTRY.decode(r["type"], 1, r["payload"]) for r in rows] == [ours, theirs]
    assert [row[8] for row in rows] == [b'{"caused_by": "user:42"}', b'{"caused_by": "user:43"}']
    async with EventStore.open(empty_dsn) as store:
        assert [e.event for e in await store.read_stream("user-43")] == [theirs]
        assert [e.metadata.caused_by for e in await store.read_batches().__anext__()] == [
            "user:42",
            "user:43",
        ]


# The migration a later release may run to store the metadata as appended too, as 0010 did
# for the payload. This release's statements must work on either column type: they will be
# the previous release during that deploy's overlap.
NEXT_METADATA_AS_JSON = """
ALTER TABLE i3lani.events
    ALTER COLUMN metadata DROP DEFAULT,
    DROP CONSTRAINT events_metadata_check,
    ALTER COLUMN metadata TYPE json USING metadata::json,
    ALTER COLUMN metadata SET DEFAULT '{}'::json,
    ADD CONSTRAINT events_metadata_check CHECK (json_typeof(metadata) = 'object')"""


async def test_this_release_reads_and_writes_the_log_once_its_metadata_is_json(
    empty_dsn: str,
) -> None:
    await migrate(empty_dsn)
    when = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)
    first = UserRegistered(user_id=42, registered_at=when)
    bare = UserRegistered(user_id=44, registered_at=when)
    async with EventStore.open(empty_dsn) as store:
        await store.append("user-42", [first], metadata=EventMetadata(caused_by="user:42"))
        await store.append("member-44", [bare])  # no metadata: stored as {}
        seals, _ = await next_seals(store, None, sealed_at=when)
        await store.append(SEAL_LOG, seals)
    conn = await asyncpg.connect(empty_dsn)
    try:
        await conn.execute(NEXT_METADATA_AS_JSON)
        kinds = await conn.fetchval("SELECT pg_typeof(metadata)::text FROM i3lani.events LIMIT 1")
    finally:
        await conn.close()
    assert kinds == "json"

    later = UserRegistered(user_id=43, registered_at=when, username="ثالث")
    retried = NewEvent(event=later, metadata=EventMetadata(caused_by="user:43"))
    async with EventStore.open(empty_dsn) as store:
        # Appends: the exact-version path and a retry with the same ids (the stored row is
        # compared with the retried one), any version, a batch in a transaction.
        done = await store.append("user-43", [retried], expected_version=0)
        again = await store.append("user-43", [retried], expected_version=0)
        assert (again.duplicate, again.first_position) == (True, done.first_position)
        await store.append(
            "user-47",
            [UserRegistered(user_id=47, registered_at=when)],
            metadata=EventMetadata(caused_by="user:47"),
        )
        async with store.transaction() as tx:
            await tx.append_many(
                [
                    Append("user-45", [UserRegistered(user_id=45, registered_at=when)]),
                    Append("user-46", [UserRegistered(user_id=46, registered_at=when)]),
                ]
            )
        # Every read: the whole log, a category, a stream, one event.
        everything = [e async for e in store.read_all()]
        assert [e.metadata.caused_by for e in everything if e.stream.startswith("user-")] == [
            "user:42",
            "user:43",
            "user:47",
            None,
            None,
        ]
        assert [e.event for e in everything if e.stream == "member-44"] == [bare]
        users = [e.stream async for e in store.read_all(category="user")]
        assert users == ["user-42", "user-43", "user-47", "user-45", "user-46"]
        [stored] = await store.read_stream("user-43")
        assert (stored.event, stored.metadata.caused_by) == (later, "user:43")
        one = await store.read_event(retried.event_id)
        assert one is not None
        assert one.event == later

        # The task queue writes its events in SQL, with jsonb metadata parameters.
        queue = TaskQueue(store, make_types())
        task_id = await queue.add_task("ping", Ping(n=1))
        seen: list[int] = []

        async def ping(task: Ping, _: TaskContext) -> None:
            seen.append(task.n)

        async def succeeded() -> bool:
            return await status_of(queue, task_id) == "succeeded"

        async with running(queue, {"ping": ping}):
            await wait_for(succeeded)
        assert seen == [1]
        kinds_of_task = [type(e.event).__name__ for e in await store.read_stream(f"task-{task_id}")]
        assert kinds_of_task == ["TaskEnqueued", "TaskClaimed", "TaskSucceeded"]

        # Seals made over jsonb verify, and sealing goes on over json.
        report = await verify_seals(store, against=SealDigest.of(seals[-1]))
        assert report.clean, report.findings
        more, _ = await next_seals(store, seals[-1], sealed_at=when)
        await store.append(SEAL_LOG, more)
        report = await verify_seals(store, against=SealDigest.of(more[-1]))
        assert report.clean, report.findings
        assert report.digest_matched
