"""Fault scenario 2: PostgreSQL is stopped for 10 s mid-run and started again.

The worker (``i3lani run``, the five product actors) runs against a private PostgreSQL server
(:mod:`tests.faults.pgcontrol`: the shared server on 5432 serves other tests and is never
touched). Work is in flight when the server stops (fast shutdown: every connection cut): rewards
queued, payments created and paid *during* the outage on the TonAPI stand-in's chain; more work
arrives the moment the server is back, while the actors are still reconnecting. Then:

* the worker process is the same one, alive throughout, and exits 0 on SIGTERM at the end;
* every actor runs again (``i3lani status --json``), none parked;
* the HealthChecker recorded a verdict with the ``database`` check failing, then a healthy one,
  and the admin was told both (FAILING, RECOVERED);
* every payment is confirmed and every reward credited exactly once; ``i3lani audit`` is clean.

Figures (printed; run with ``-s``): how long stopping and starting took; how far into the
outage the HealthChecker saw it and how soon after the restart it recorded the recovery; how
soon after the restart the worker wrote again, each actor started again and all the work was
done; the crashes and restarts each actor went through.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import anyio
import asyncpg
import msgspec
import pytest

from actors.catalog import PRODUCT_ACTORS
from actors.health import ALERTS_STREAM, HEALTH_STREAM
from actors.ton import memo_for
from events import (
    ActorCrashed,
    ActorParked,
    ActorRestarted,
    ActorStarted,
    AlertRaised,
    HealthChecked,
)
from events.streams import actor_stream
from store import EventStore, migrate
from tests.e2e.processes import Worker, i3lani, running_workers, wait_for
from tests.faults.harness import (
    FAULTS,
    PAYER,
    PRODUCT,
    WALLET,
    Seeder,
    assert_audit_clean,
    assert_exactly_once,
    count_effects,
    fault_env,
    fault_seed,
    standins,
    wait_until_done,
)
from tests.faults.pgcontrol import PrivatePostgres, private_postgres

pytestmark = [*FAULTS]

OUTAGE = 10.0
"""Seconds PostgreSQL stays down (the issue's figure)."""
ADMIN = 4242
DATABASE = "i3lani_faults"


async def _database(server: PrivatePostgres) -> str:
    """A migrated database of our own on ``server``; its DSN."""
    admin = await asyncpg.connect(server.dsn("postgres"))
    try:
        await admin.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await admin.close()
    dsn = server.dsn(DATABASE)
    await migrate(dsn)
    return dsn


async def _statuses(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``i3lani status --json``: each actor's status, by name."""
    result = await i3lani(env, "status", "--json")
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    report = msgspec.json.decode(result.stdout)
    return {status["actor"]: status for status in report["actors"]}


async def _verdicts(store: EventStore) -> list[tuple[int, HealthChecked]]:
    return [
        (r.position, r.event)
        for r in await store.read_stream(HEALTH_STREAM)
        if isinstance(r.event, HealthChecked)
    ]


def _database_failed(verdict: HealthChecked) -> bool:
    return any(c.name == "database" and not c.ok for c in verdict.checks)


async def _stay_alive(worker: Worker, seconds: float) -> None:
    """Wait ``seconds`` (the outage itself), checking all along that the worker lives."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        assert worker.alive, f"the worker died while PostgreSQL was down\n{worker.output()}"
        await anyio.sleep(min(left, 0.25))
    assert worker.alive, worker.output()


@pytest.mark.timeout(180)
async def test_the_worker_rides_out_a_database_restart(clean_env: dict[str, str]) -> None:
    rng = random.Random(fault_seed())
    async with private_postgres() as server, standins() as (tonapi, bot_api):
        dsn = await _database(server)
        env = fault_env(
            dsn,
            clean_env,
            tonapi,
            bot_api,
            ADMIN_IDS=str(ADMIN),
            I3LANI_LEASE_TTL="8",  # the product's default: the outage outlasts every lease
        )
        # One store for the test's side (the gateway's, as it were) all along: it is left
        # alone while PostgreSQL is down and must work again once it is back.
        async with EventStore.open(dsn, node="test") as store:
            seeder = Seeder(store, tonapi, bot_api, rng=rng, concurrency=5)
            await seeder.rewards(15)
            await seeder.channels(2)
            await seeder.payments(8, paid=5, underpaid=1)
            workload = seeder.workload

            async with running_workers(env) as workers:
                worker = await workers.start("node-a", PRODUCT)
                await wait_until_done(store, workload, seconds=60)

                async def healthy() -> bool:
                    found = await _verdicts(store)
                    return bool(found) and found[-1][1].healthy

                await wait_for(healthy, 60, "a healthy verdict before the outage")
                # In flight when the server stops: rewards just earned, payments just created
                # (paid on the chain while PostgreSQL is down).
                await seeder.rewards(10)
                in_flight = await seeder.payments(4, paid=0)
                before = (await store.head()).position

                stop_started = time.monotonic()
                stopping_at = datetime.now(UTC)
                await server.stop("fast")
                stopped = time.monotonic()
                for payment_id in in_flight:
                    tx = tonapi.transfer(
                        WALLET,
                        source=PAYER,
                        value=seeder.plan.price_nanotons,
                        comment=memo_for(payment_id),
                    )
                    workload.unpaid.discard(payment_id)
                    workload.paid[payment_id] = tx["hash"]
                await _stay_alive(worker, OUTAGE - (time.monotonic() - stopped))
                start_started = time.monotonic()
                await server.start()
                back = time.monotonic()
                back_at = datetime.now(UTC)

                # More work the moment the server is back, while the actors reconnect.
                await seeder.rewards(5)
                await seeder.payments(3, paid=3)

                async def wrote_again() -> float | None:
                    head = (await store.head()).position
                    return time.monotonic() - back if head > before else None

                first_write = await wait_for(wrote_again, 60, "the worker writing again")
                effects = await wait_until_done(store, workload, seconds=90)
                done_after = time.monotonic() - back

                async def all_running() -> bool:
                    statuses = await _statuses(env)
                    return all(statuses[name]["state"] == "running" for name in PRODUCT_ACTORS)

                await wait_for(all_running, 60, "i3lani status: every actor running again")

                async def recovered() -> tuple[HealthChecked, HealthChecked] | None:
                    found = await _verdicts(store)
                    failing = [(p, v) for p, v in found if _database_failed(v)]
                    if not failing:
                        return None
                    position, outage = failing[0]
                    later = [v for p, v in found if p > position and v.healthy]
                    return (outage, later[0]) if later else None

                outage_verdict, recovery = await wait_for(
                    recovered, 60, "health: database failing, then healthy"
                )

                async def told() -> bool:
                    texts = [m.text for m in bot_api.sent if m.chat_id == ADMIN]
                    return any("FAILING" in t and "database" in t for t in texts) and any(
                        "RECOVERED" in t for t in texts
                    )

                await wait_for(told, 60, "the admin told: FAILING (database), then RECOVERED")
                lifecycle = {
                    name: [r.event for r in await store.read_stream(actor_stream(name))]
                    for name in PRODUCT_ACTORS
                }
                alerts = [
                    r.event
                    for r in await store.read_stream(ALERTS_STREAM)
                    if isinstance(r.event, AlertRaised)
                ]

                assert worker.alive, worker.output()
                assert workers.started == [worker]  # the one process, never replaced
                code, took = await worker.terminate()
                assert code == 0, worker.output()
            final = await count_effects(store)

        # Health: the outage was recorded as seen during it, then the recovery, both alerted.
        checks = {c.name: c for c in outage_verdict.checks}
        assert not outage_verdict.healthy
        assert not checks["database"].ok
        assert checks["database"].detail
        assert stopping_at <= outage_verdict.checked_at <= back_at
        assert recovery.healthy
        assert recovery.checked_at > back_at
        subjects = [a.subject for a in alerts if a.kind == "health"]
        assert "failing" in subjects
        assert "recovered" in subjects[subjects.index("failing") :]

        # Actors: each started again after the restart (their leases lapsed during the
        # outage), the same process; no crash (a tick that meets the outage is tried again),
        # nothing parked.
        crashes = {
            n: [f"{e.error_type}: {e.message[:50]}" for e in h if isinstance(e, ActorCrashed)]
            for n, h in lifecycle.items()
        }
        again = {
            n: max(
                (e.started_at - back_at).total_seconds() for e in h if isinstance(e, ActorStarted)
            )
            for n, h in lifecycle.items()
        }
        restarts = {
            n: Counter(e.cause for e in h if isinstance(e, ActorRestarted))
            for n, h in lifecycle.items()
        }
        attempts = [
            e.attempt
            for h in lifecycle.values()
            for e in h
            if isinstance(e, ActorRestarted) and e.cause == "crash"
        ]
        parked = [n for n, h in lifecycle.items() if any(isinstance(e, ActorParked) for e in h)]
        assert not parked, lifecycle
        assert not any(crashes.values()), crashes
        assert not attempts, restarts
        assert all(seconds > 0 for seconds in again.values()), again

        # Money: exactly once, and the audit agrees.
        assert_exactly_once(workload, effects)
        assert_exactly_once(workload, final)
        await assert_audit_clean(env, workload)

        seen = (outage_verdict.checked_at - stopping_at).total_seconds()
        healthy_again = (recovery.checked_at - back_at).total_seconds()
        print(
            f"database restart: stop took {stopped - stop_started:.2f}s, down "
            f"{start_started - stopped:.1f}s, start took {back - start_started:.2f}s\n"
            f"  health: outage seen {seen:.1f}s into it, healthy again {healthy_again:.1f}s "
            f"after the restart ({checks['database'].detail})\n"
            f"  worker wrote again {first_write:.2f}s after the restart; actors started again "
            f"after (s): { {n: round(t, 1) for n, t in again.items()} }\n"
            f"  work done {done_after:.1f}s after the restart: {len(workload.rewards)} rewards, "
            f"{len(workload.paid)} paid payments ({len(in_flight)} paid during the outage)\n"
            f"  crashes {crashes}\n"
            f"  restarts { {n: dict(c) for n, c in restarts.items()} }; "
            f"SIGTERM exit in {took:.1f}s"
        )
