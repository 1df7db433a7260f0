"""The peers in processes of their own (bench/peer_*.py), each run once, briefly, against the
test server: what they print is what the suites read."""

from __future__ import annotations

import asyncpg
import pytest
from pgqueuer import AsyncpgPoolDriver, Queries

from bench.peers import DBOS_RUNNER, PeerFailed, dbos_database, dbos_recovery, run_peer

pytestmark = pytest.mark.process  # each starts a peer's process


async def test_the_eventsourcing_peer_appends_and_reads_with_its_cost_split(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE SCHEMA es_peer")
    finally:
        await conn.close()
    request = {"dsn": dsn, "schema": "es_peer", "warmup": 0}
    seeded = await run_peer(
        "bench.peer_eventsourcing", {**request, "command": "seed", "streams": 3, "page": 40}
    )
    assert seeded["events"] == 120
    appended = await run_peer(
        "bench.peer_eventsourcing",
        {**request, "command": "append", "writers": 2, "seconds": 0.3},
    )
    assert appended["items"] >= 2
    assert appended["seconds"] >= 0.3
    read = await run_peer(
        "bench.peer_eventsourcing", {**request, "command": "read", "page": 40, "seconds": 0.3}
    )
    # Every page fetched was decoded, and each part of the cost was timed on its own.
    assert read["fetch"]["items"] == read["decode"]["items"] >= 120
    assert read["fetch"]["seconds"] > 0
    assert read["decode"]["seconds"] > 0
    assert read["fetch"]["seconds"] + read["decode"]["seconds"] <= 0.3 + 1.0
    assert read["raw"]["items"] >= 120


async def test_a_peer_that_fails_says_how() -> None:
    with pytest.raises(PeerFailed, match="KeyError: 'nothing'"):
        await run_peer(DBOS_RUNNER, {"command": "nothing"})


async def test_dbos_runs_its_queue_and_recovers_a_killed_workflow(dsn: str) -> None:
    async with dbos_database(dsn) as url:
        through = await run_peer(
            DBOS_RUNNER,
            {
                "command": "through",
                "system_database_url": url,
                "tasks": 20,
                "concurrency": 10,
                "poll": 0.05,
            },
        )
        assert through["items"] == 20
        assert through["seconds"] > 0
        latency = await run_peer(
            DBOS_RUNNER,
            {
                "command": "latency",
                "system_database_url": url,
                "samples": 2,
                "concurrency": 10,
                "poll": 0.05,
            },
        )
        assert len(latency["latencies_ms"]) == 2
        assert all(value > 0 for value in latency["latencies_ms"])
        resumed = await dbos_recovery(url)
        assert 0 < resumed < 60
        conn = await asyncpg.connect(url)
        try:
            statuses = await conn.fetch(
                "SELECT status, count(*) FROM dbos.workflow_status WHERE name = 'pending' "
                "GROUP BY status"
            )
        finally:
            await conn.close()
        # The killed workflow finished once, in the second process; nothing is left pending.
        assert [(row["status"], row["count"]) for row in statuses] == [("SUCCESS", 1)]


async def test_pgqueuer_enqueues_drains_and_carries_tasks_in_its_own_process(dsn: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        queries = Queries(AsyncpgPoolDriver(pool))
        await queries.install()
        request = {"dsn": dsn, "concurrency": 10, "batch": 5}
        enqueued = await run_peer(
            "bench.peer_pgqueuer",
            {**request, "command": "enqueue", "seconds": 0.2, "warmup": 0}
            | {"producers": 2, "per_call": 3},
        )
        assert enqueued["items"] >= 3
        assert enqueued["items"] % 3 == 0
        assert await pool.fetchval("SELECT count(*) FROM pgqueuer") == enqueued["items"]
        await queries.clear_queue()  # as the suite empties both queues before each round
        drained = await run_peer(
            "bench.peer_pgqueuer", {**request, "command": "drain", "tasks": 50, "warmup_tasks": 10}
        )
        assert drained["items"] == 50
        through = await run_peer(
            "bench.peer_pgqueuer", {**request, "command": "through", "tasks": 40}
        )
        assert through["items"] == 40
        assert through["produced"] == 40
        assert await pool.fetchval("SELECT count(*) FROM pgqueuer") == 0
    finally:
        await pool.close()
