"""The log is append-only, and PostgreSQL itself enforces it, whatever the client.

PostgreSQL only (not in the contract suite): the guarantee is its triggers refusing UPDATE,
DELETE and TRUNCATE from any client; the in-memory log offers no way to change a row."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from events import PaymentExpired
from events.errors import AppendOnlyViolation
from store import EventStore

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


@pytest.fixture
async def stored(store: EventStore) -> EventStore:
    await store.append("payment-1", [PaymentExpired(payment_id=1, expired_at=NOW)])
    return store


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE i3lani.events SET payload = '{}'::jsonb",
        "UPDATE i3lani.events SET stream = 'payment-2' WHERE stream = 'payment-1'",
        "DELETE FROM i3lani.events",
        "DELETE FROM i3lani.events WHERE stream = 'payment-1'",
        "TRUNCATE i3lani.events",
        "TRUNCATE i3lani.events CASCADE",
    ],
)
async def test_changing_or_deleting_events_is_refused_by_postgresql(
    stored: EventStore, raw: asyncpg.Connection, statement: str
) -> None:
    # A plain connection, not the store: the refusal comes from the database.
    with pytest.raises(asyncpg.PostgresError) as caught:
        await raw.execute(statement)
    assert caught.value.sqlstate == "I3AO1"
    assert "append-only" in str(caught.value)
    assert await raw.fetchval("SELECT count(*) FROM i3lani.events") == 1
    assert await raw.fetchval("SELECT payload->>'payment_id' FROM i3lani.events") == "1"


async def test_the_store_translates_the_refusal(stored: EventStore) -> None:
    with pytest.raises(AppendOnlyViolation, match="DELETE refused"):
        await stored.execute_sql("DELETE FROM i3lani.events")


async def test_derived_tables_are_not_append_only(
    stored: EventStore, raw: asyncpg.Connection
) -> None:
    # Snapshots and checkpoints are derived data that cleanup may prune.
    await raw.execute(
        "INSERT INTO i3lani.snapshots (stream, stream_version, state_type, state) "
        "VALUES ('payment-1', 1, 'x', '{}')"
    )
    assert await raw.execute("DELETE FROM i3lani.snapshots") == "DELETE 1"


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE i3lani.events SET payload = '{}'::jsonb",
        "DELETE FROM i3lani.events",
        "TRUNCATE i3lani.events",
    ],
)
async def test_a_superuser_in_replica_role_is_refused_too(
    stored: EventStore, raw: asyncpg.Connection, statement: str
) -> None:
    """session_replication_role = replica skips ordinary triggers, not ENABLE ALWAYS ones
    (migration 0006): a superuser cannot change events quietly that way."""
    if not await raw.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        pytest.skip("needs a superuser (the embedded test server's user is one)")
    await raw.execute("SET session_replication_role = replica")
    with pytest.raises(asyncpg.PostgresError) as caught:
        await raw.execute(statement)
    assert caught.value.sqlstate == "I3AO1"
    assert await raw.fetchval("SELECT count(*) FROM i3lani.events") == 1
    assert await raw.fetchval("SELECT payload->>'payment_id' FROM i3lani.events") == "1"
