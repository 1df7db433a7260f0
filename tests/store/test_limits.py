"""Session limits (store/limits.py): derived from the lease, refused when they would outlast
it, and really set on every connection the store opens.

PostgreSQL only (not in the contract suite): session settings and timeouts of real
connections; the in-memory log has no sessions."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

import anyio
import asyncpg
import pytest

from events import AlertRaised
from events.errors import ConfigError, StaleGeneration
from store import EventStore, SessionLimits
from store.leases import Leases, safety_margin
from tests.faults.pgproxy import PgProxy
from tests.faults.test_pgproxy import query, until_ready
from tests.waiting import eventually


def test_the_defaults_are_derived_from_the_lease() -> None:
    limits = SessionLimits.from_env({})
    assert limits.lease_ttl == 8
    assert (limits.idle_in_transaction_seconds, limits.statement_seconds) == (2, 4)
    assert limits.lock_seconds == 1
    settings = limits.server_settings("work")
    assert settings["idle_in_transaction_session_timeout"] == "2000"
    assert settings["statement_timeout"] == "4000"
    assert "lock_timeout" not in settings
    assert limits.server_settings("lease")["lock_timeout"] == "1000"
    assert limits.server_settings("maintenance")["statement_timeout"] == "0"
    assert settings["tcp_keepalives_idle"] == "2"
    assert settings["tcp_user_timeout"] == "4000"
    short = SessionLimits.from_env({"I3LANI_LEASE_TTL": "2"})
    assert (short.idle_in_transaction_seconds, short.statement_seconds) == (0.5, 1)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"I3LANI_IDLE_TX_TIMEOUT": "8"}, "I3LANI_IDLE_TX_TIMEOUT (8s) must be shorter than"),
        ({"I3LANI_STATEMENT_TIMEOUT": "9"}, "I3LANI_STATEMENT_TIMEOUT (9s) must be shorter"),
        ({"I3LANI_LOCK_TIMEOUT": "5"}, "I3LANI_LOCK_TIMEOUT (5s) must be shorter than half"),
        ({"I3LANI_LEASE_TTL": "4", "I3LANI_IDLE_TX_TIMEOUT": "4.5"}, "than I3LANI_LEASE_TTL (4s)"),
        ({"I3LANI_IDLE_TX_TIMEOUT": "soon"}, "must be a number of seconds, got 'soon'"),
        ({"I3LANI_STATEMENT_TIMEOUT": "-1"}, "must be a positive number of seconds"),
        ({"I3LANI_LEASE_TTL": "0.5"}, "between 1 and 300 seconds"),
    ],
)
def test_limits_that_would_outlast_the_lease_are_refused_in_one_line(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        SessionLimits.from_env(env)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


async def test_every_connection_of_the_store_carries_the_limits(dsn: str) -> None:
    limits = SessionLimits(lease_ttl=4.0)
    async with EventStore.open(dsn, node="vm:3", limits=limits) as store:
        pooled = await store._pool.fetchrow(
            "SELECT current_setting('idle_in_transaction_session_timeout') AS idle,"
            " current_setting('statement_timeout') AS statement,"
            " current_setting('application_name') AS app"
        )
        assert dict(pooled) == {"idle": "1s", "statement": "2s", "app": "i3lani:vm:3:work"}
        assert await store.lease_fetchval("lease_generation", "nothing") is None
        conn = await store.connect("lease")
        try:
            assert await conn.fetchval("SELECT current_setting('lock_timeout')") == "500ms"
        finally:
            await conn.close()


async def test_a_fenced_append_is_refused_before_it_is_sent_once_the_clock_ran_out(
    store: EventStore,
) -> None:
    lease = await Leases(store, "vm:1", ttl=60).acquire("Solo")
    assert lease is not None
    assert lease.clock is not None
    # The deadline falls before the server's expiry, by the safety margin at least.
    assert lease.clock.remaining() <= 60 - safety_margin(60) + 0.01
    await store.append("probe-1", [probe()], fence=lease.fence)
    lease.clock.deadline = time.monotonic() - 0.001  # as after a pause longer than the lease
    with pytest.raises(StaleGeneration, match="before it was sent"):
        await store.append("probe-1", [probe()], fence=lease.fence)
    assert await store.stream_version("probe-1") == 1
    [written] = await store.read_stream("probe-1")
    assert (written.metadata.lease, written.metadata.generation) == ("Solo", lease.generation)


async def test_a_transaction_whose_clock_runs_out_before_commit_rolls_back(
    store: EventStore,
) -> None:
    lease = await Leases(store, "vm:1", ttl=60).acquire("Solo")
    assert lease is not None
    assert lease.clock is not None
    clock = lease.clock

    async def paused_before_commit() -> None:
        async with store.transaction() as tx:
            await tx.append("probe-2", [probe()], fence=lease.fence)
            await tx.append("probe-3", [probe()])
            clock.revoke("paused past the lease with this transaction open")

    with pytest.raises(StaleGeneration):
        await paused_before_commit()
    assert await store.stream_version("probe-2") == 0
    assert await store.stream_version("probe-3") == 0


def probe() -> AlertRaised:
    return AlertRaised(
        alert_id=uuid.uuid4(),
        kind="probe",
        subject="Solo",
        message="written under a lease",
        raised_at=datetime.now(UTC),
    )


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + (len(body) + 4).to_bytes(4, "big") + body


async def test_the_session_guard_ends_a_session_frozen_mid_statement(
    dsn: str, raw: asyncpg.Connection
) -> None:
    # A client that wrote in a transaction, then sent the first half of a statement (Parse,
    # Describe, Flush: what asyncpg sends before Bind/Execute/Sync) and froze. Its backend is
    # 'active', reading from the client: no server-side bound applies (before PostgreSQL 17).
    await raw.execute("CREATE TABLE guard_probe (n int)")
    limits = SessionLimits(lease_ttl=2.0)  # idle-transaction bound 0.5 s
    parts = urlsplit(dsn)
    idle = limits.server_settings()["idle_in_transaction_session_timeout"]
    params = (
        f"user\0{parts.username or 'postgres'}\0database\0{parts.path[1:]}\0"
        f"application_name\0i3lani:frozen:work\0idle_in_transaction_session_timeout\0{idle}\0\0"
    ).encode()
    startup = (len(params) + 8).to_bytes(4, "big") + (196608).to_bytes(4, "big") + params

    async def frozen_session() -> int | None:
        return await raw.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'i3lani:frozen:work'"
            " AND state = 'active' AND wait_event = 'ClientRead' AND backend_xid IS NOT NULL"
        )

    with anyio.fail_after(20):
        async with PgProxy.for_dsn(dsn) as proxy:  # a TCP front, whatever the server listens on
            stream = await anyio.connect_tcp("127.0.0.1", proxy.port)
            async with stream:
                buffer = bytearray()
                await stream.send(startup)
                await until_ready(stream, buffer)
                for sql in ("BEGIN", "INSERT INTO guard_probe VALUES (1)"):
                    await stream.send(query(sql))
                    await until_ready(stream, buffer)
                await stream.send(
                    _message(b"P", b"\0SELECT 1\0\0\0")
                    + _message(b"D", b"S\0")
                    + _message(b"H", b"")
                )

                async def frozen() -> bool:
                    return await frozen_session() is not None

                await eventually(frozen)
                pid = await frozen_session()
                await anyio.sleep(3 * limits.idle_in_transaction_seconds)
                assert await frozen_session() == pid  # the server's own bounds do not apply
                async with EventStore.open(dsn, limits=limits, guard_sessions=True) as store:

                    async def ended() -> bool:
                        # Counted once the guard has its answer, which may come a moment after
                        # the session is gone from pg_stat_activity.
                        gone = await frozen_session() is None
                        return gone and store.stuck_sessions_ended == 1

                    await eventually(ended)
    assert await raw.fetchval("SELECT count(*) FROM guard_probe") == 0  # rolled back
