"""HealthChecker when PostgreSQL goes away: the verdict that says so is held, recorded once the
database answers again, and followed by the recovery; the checker itself never crashes.

Regression: the checks that read the database (actors, lag) raised ``StoreUnavailable`` out of
``run_checks``, so the checker crashed at its first check of an outage and no verdict (nor
alert) ever said the database had been unreachable. The outage here is real: a private
PostgreSQL server (:mod:`tests.faults.pgcontrol`) is stopped and started again.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import anyio
import asyncpg
import pytest

from actors.config import Settings
from actors.health import (
    ALERTS_STREAM,
    CheckHealth,
    HealthChecker,
    HealthReport,
    HealthState,
    HeldVerdict,
)
from actors.runtime import ActorRef, ActorRunner
from actors.runtime.clock import SystemClock
from actors.telegram import TelegramClient, make_bot
from actors.tonapi import TonApiClient
from events import AlertRaised, HealthCheck
from ops.standins import BotApiStandIn, TonApiStandIn
from store import EventStore, migrate
from tests.actors.test_health import verdicts
from tests.faults.pgcontrol import private_postgres
from tests.waiting import eventually

ADMINS = (111,)


async def no_sleep(seconds: float) -> None:
    await anyio.lowlevel.checkpoint()


@contextlib.asynccontextmanager
async def checker(
    store: EventStore, held: HeldVerdict
) -> AsyncIterator[tuple[ActorRef, BotApiStandIn]]:
    settings = Settings(
        admin_ids=ADMINS, health_interval=3600, task_retry_delay=0.05, task_lock_timeout=2
    )
    async with (
        TonApiStandIn() as tonapi,
        BotApiStandIn() as bot_api,
        TonApiClient(tonapi.url, retries=0, timeout=2, sleep=no_sleep) as ton_client,
        TelegramClient(make_bot(bot_api.token, bot_api.url), sleep=no_sleep) as telegram,
        anyio.create_task_group() as tg,
    ):
        actor = HealthChecker(
            settings,
            actor_intervals={"PaymentMonitor": 30},
            lagging_checkpoints={},
            tonapi=ton_client,
            telegram=telegram,
            startup_grace=60,
            held=held,
        )
        runner: ActorRunner[HealthState] = ActorRunner(actor, store, SystemClock(), node="n")
        ref: ActorRef = await tg.start(runner.run)
        yield ref, bot_api
        tg.cancel_scope.cancel()


async def alerts(store: EventStore) -> list[AlertRaised]:
    return [
        r.event for r in await store.read_stream(ALERTS_STREAM) if isinstance(r.event, AlertRaised)
    ]


async def _delivery_state(store: EventStore, bot: BotApiStandIn) -> str:
    """The alert tasks and what the Bot API was sent: for a delivery that did not come."""
    rows = await store._pool.fetch(
        "SELECT id, status, attempts, run_at, locked_by, locked_until, last_error, finished_at"
        " FROM i3lani.tasks ORDER BY id"
    )
    tasks = "\n".join(f"  task {dict(row)}" for row in rows)
    sent = "\n".join(f"  sent {m.text!r}" for m in bot.sent)
    return f"now {datetime.now(UTC)}\ntasks:\n{tasks}\nBot API:\n{sent}"


@pytest.mark.process  # a private PostgreSQL server, stopped and started
@pytest.mark.slow
async def test_an_unreachable_database_is_recorded_once_it_is_back() -> None:
    async with private_postgres() as server:
        admin = await asyncpg.connect(server.dsn())
        try:
            await admin.execute("CREATE DATABASE health_outage")
        finally:
            await admin.close()
        dsn = server.dsn("health_outage")
        await migrate(dsn)
        held = HeldVerdict()
        async with EventStore.open(dsn, node="n") as store, checker(store, held) as (ref, bot):
            await ref.ask(CheckHealth(), timeout=20)  # healthy
            await server.stop()
            answer: list[object] = []

            async def ask_during_the_outage() -> None:
                answer.append(await ref.ask(CheckHealth(), timeout=60))

            async with anyio.create_task_group() as tg:
                tg.start_soon(ask_during_the_outage)

                async def holding() -> bool:
                    return held.report is not None

                await eventually(holding, within=20)
                assert not answer, "the verdict was answered while the database was down"
                await server.start()
            assert answer == [None]  # answered, not crashed
            await ref.ask(CheckHealth(), timeout=20)  # recovered

            async def delivered() -> bool:
                return sum("RECOVERED" in m.text for m in bot.sent) == len(ADMINS)

            try:
                await eventually(delivered, within=20)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{await _delivery_state(store, bot)}") from None
            found = await verdicts(store)
            raised = await alerts(store)
        # The start-up tick checks too, so count the verdicts' changes, not the verdicts.
        changes = [v for i, v in enumerate(found) if i == 0 or found[i - 1].healthy != v.healthy]
        assert [v.healthy for v in changes] == [True, False, True]
        outage = changes[1]
        # Only what does not need the database was checked besides it.
        assert [c.name for c in outage.checks] == ["database", "tonapi", "telegram"]
        assert not outage.checks[0].ok
        assert outage.checks[0].detail
        assert all(c.ok for c in outage.checks[1:])
        assert outage.checked_at < changes[2].checked_at
        assert [a.subject for a in raised] == ["failing", "recovered"]
        assert "database" in raised[0].message
        assert "database" in raised[1].message  # "was: database"
        assert held.report is None


async def test_a_verdict_held_by_an_ended_incarnation_is_recorded_first(
    store: EventStore,
) -> None:
    seen_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    down = HealthCheck(name="database", ok=False, detail="PostgreSQL is unreachable")
    held = HeldVerdict(HealthReport(checks=[down], checked_at=seen_at))
    async with checker(store, held) as (ref, _):
        await ref.ask(CheckHealth(), timeout=20)  # records the held verdict, not this one
        assert held.report is None
        await ref.ask(CheckHealth(), timeout=20)  # this one: recovered
    found = await verdicts(store)
    assert (found[0].healthy, found[0].checked_at) == (False, seen_at)
    assert len(found) >= 2
    assert all(v.healthy for v in found[1:])
    assert [a.subject for a in await alerts(store)] == ["failing", "recovered"]
