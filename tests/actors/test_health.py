"""HealthChecker against the stand-ins: checks recorded, admins alerted on changes only."""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from actors.config import Settings
from actors.health import (
    ALERTS_STREAM,
    HEALTH_STREAM,
    CheckHealth,
    HealthChecker,
    HealthReport,
    HealthState,
    health_transition,
    last_verdict,
)
from actors.runtime import ActorRef, ActorRunner
from actors.runtime.clock import SystemClock
from actors.runtime.status import SHUTDOWN_REASON
from actors.telegram import TelegramClient, make_bot
from actors.tonapi import TonApiClient
from events import ActorStarted, ActorStopped, AlertRaised, HealthCheck, HealthChecked
from events.errors import StoreUnavailable
from events.streams import actor_stream
from ops.standins import BotApiStandIn, TonApiStandIn
from ops.standins.telegram import SentMessage
from store import EventStore
from store.memory import MemoryLog
from tests.waiting import eventually

ADMINS = (111, 222)


async def no_sleep(seconds: float) -> None:
    await anyio.lowlevel.checkpoint()


@contextlib.asynccontextmanager
async def checker(
    store: EventStore | MemoryLog,
    tonapi: TonApiStandIn,
    bot_api: BotApiStandIn,
    *,
    intervals: dict[str, float] | None = None,
    startup_grace: float = 0.0,
) -> AsyncIterator[tuple[ActorRef, ActorRunner[HealthState]]]:
    settings = Settings(
        admin_ids=ADMINS, health_interval=3600, task_retry_delay=0.05, task_lock_timeout=2
    )
    async with (
        TonApiClient(tonapi.url, retries=0, timeout=2, sleep=no_sleep) as ton_client,
        TelegramClient(make_bot(bot_api.token, bot_api.url), sleep=no_sleep) as telegram,
        anyio.create_task_group() as tg,
    ):
        actor = HealthChecker(
            settings,
            actor_intervals=intervals or {},
            lagging_checkpoints={},
            tonapi=ton_client,
            telegram=telegram,
            startup_grace=startup_grace,
        )
        runner = ActorRunner(actor, store, SystemClock(), node="node-a")
        ref: ActorRef = await tg.start(runner.run)
        yield ref, runner
        tg.cancel_scope.cancel()


async def verdicts(store: EventStore | MemoryLog) -> list[HealthChecked]:
    return [
        r.event
        for r in await store.read_stream(HEALTH_STREAM)
        if isinstance(r.event, HealthChecked)
    ]


async def alerts(store: EventStore | MemoryLog) -> list[AlertRaised]:
    return [
        r.event for r in await store.read_stream(ALERTS_STREAM) if isinstance(r.event, AlertRaised)
    ]


def test_alerts_only_on_changes() -> None:
    ok = [HealthCheck(name="database", ok=True)]
    bad = [HealthCheck(name="tonapi", ok=False, detail="HTTP 500")]
    assert health_transition(None, (), ok) is None  # first verdict healthy: nothing to say
    first = health_transition(None, (), bad)
    assert first is not None
    assert first[0] == "failing"
    assert "tonapi: HTTP 500" in first[1]
    assert health_transition(True, (), bad) is not None
    assert health_transition(False, ("tonapi",), bad) is None  # still failing: no repeat
    recovered = health_transition(False, ("tonapi",), ok)
    assert recovered is not None
    assert recovered[0] == "recovered"
    assert "tonapi" in recovered[1]
    assert health_transition(True, (), ok) is None


async def test_healthy_checks_are_recorded_without_an_alert(store: EventStore) -> None:
    async with TonApiStandIn() as tonapi, BotApiStandIn() as bot_api:
        async with checker(store, tonapi, bot_api) as (ref, _):
            await ref.ask(CheckHealth(), timeout=20)
            await ref.ask(CheckHealth(), timeout=20)
        # The first verdict is recorded; the same verdict again is not (the log keeps
        # changes), but every round's checks are in the samples.
        [found] = await verdicts(store)
        assert found.healthy
        assert {c.name for c in found.checks} == {"database", "tonapi", "telegram", "tasks"}
        assert all(c.latency_ms is not None for c in found.checks)
        assert await alerts(store) == []
        assert bot_api.sent == []
        rounds = await store._pool.fetchval(
            "SELECT count(DISTINCT checked_at) FROM i3lani.health_samples"
        )
        samples = await store._pool.fetchval("SELECT count(*) FROM i3lani.health_samples")
        assert rounds >= 2  # the two asked for, and perhaps the start-up tick
        assert samples == 4 * rounds
        # What operators see is the latest round, not the last change recorded.
        latest = await last_verdict(store)
        assert latest is not None
        assert latest.healthy
        assert latest.checked_at > found.checked_at
        assert [c.name for c in latest.checks] == [c.name for c in found.checks]


def test_only_a_changed_verdict_is_recorded() -> None:
    actor = HealthChecker(Settings(), actor_intervals={})
    now = datetime.now(UTC)
    ok = [HealthCheck(name="database", ok=True), HealthCheck(name="tonapi", ok=True)]
    slow = [HealthCheck(name="database", ok=True), HealthCheck(name="tonapi", ok=False)]
    worse = [HealthCheck(name="database", ok=False), HealthCheck(name="tonapi", ok=False)]

    def recorded(state: HealthState, checks: list[HealthCheck]) -> list[str]:
        return [
            type(e.event).__name__
            for e in actor.decide(state, HealthReport(checks=checks, checked_at=now))
        ]

    assert recorded(HealthState(), ok) == ["HealthChecked"]  # the first verdict
    healthy = HealthState(healthy=True, failing=())
    assert recorded(healthy, ok) == []  # the same again: the samples have it
    assert recorded(healthy, slow) == ["HealthChecked", "AlertRaised"]
    failing = HealthState(healthy=False, failing=("tonapi",))
    assert recorded(failing, slow) == []  # still failing the same way
    assert recorded(failing, worse) == ["HealthChecked"]  # failing otherwise: recorded
    assert recorded(failing, ok) == ["HealthChecked", "AlertRaised"]  # recovered


async def test_failing_then_recovered_alerts_the_admins_twice(store: EventStore) -> None:
    async with TonApiStandIn() as tonapi, BotApiStandIn() as bot_api:
        async with checker(store, tonapi, bot_api) as (ref, _):
            await ref.ask(CheckHealth(), timeout=20)  # healthy
            tonapi.fail("500", times=None)
            await ref.ask(CheckHealth(), timeout=20)  # failing: alert
            await ref.ask(CheckHealth(), timeout=20)  # still failing: no new alert
            tonapi.heal()
            await ref.ask(CheckHealth(), timeout=20)  # recovered: alert

            async def both_delivered() -> bool:
                return len(bot_api.sent) >= 2 * len(ADMINS)

            await eventually(both_delivered)
        raised = await alerts(store)
        assert [a.subject for a in raised] == ["failing", "recovered"]
        assert "tonapi" in raised[0].message
        assert sorted(m.chat_id for m in bot_api.sent) == sorted(ADMINS * 2)
        texts = [m.text for m in bot_api.sent]
        assert sum("FAILING" in t for t in texts) == 2
        assert sum("RECOVERED" in t for t in texts) == 2
        # The start-up tick checks too, so count the verdicts' changes, not the verdicts.
        seen = [v.healthy for v in await verdicts(store)]
        changes = [h for i, h in enumerate(seen) if i == 0 or seen[i - 1] != h]
        assert changes == [True, False, True]


@pytest.mark.memory
async def test_on_the_memory_log_an_unreachable_log_is_recorded_once_it_answers_again() -> None:
    # The same checker on the in-memory log (as in `i3lani simulate`): while its ping fails,
    # the verdict that says so is held; it is recorded, with its alert, once the log answers,
    # and a later round records the recovery. The samples are the log's side table.
    unreachable = anyio.Event()
    down = False

    def faults(operation: str) -> None:
        if down and operation == "ping":
            unreachable.set()
            raise StoreUnavailable("the database cannot be reached (simulated)")

    log = MemoryLog(faults=faults)
    async with TonApiStandIn() as tonapi, BotApiStandIn() as bot_api:
        async with checker(log, tonapi, bot_api) as (ref, _), anyio.create_task_group() as tg:
            await ref.ask(CheckHealth(), timeout=20)  # healthy
            down = True
            tg.start_soon(functools.partial(ref.ask, CheckHealth(), timeout=20))
            await unreachable.wait()
            await anyio.sleep(0.3)  # it waits for the database, a try or two
            assert all(v.healthy for v in await verdicts(log))
            down = False

            async def held_one_recorded() -> bool:
                return any(not v.healthy for v in await verdicts(log))

            await eventually(held_one_recorded)
            await ref.ask(CheckHealth(), timeout=20)  # recovered

            async def both_delivered() -> bool:
                return len(bot_api.sent) >= 2 * len(ADMINS)

            await eventually(both_delivered)
        seen = await verdicts(log)
        changes = [
            v.healthy for i, v in enumerate(seen) if i == 0 or seen[i - 1].healthy != v.healthy
        ]
        assert changes == [True, False, True]  # the start-up tick may check too
        [failing] = [v for v in seen if not v.healthy]
        assert [c.name for c in failing.checks if not c.ok] == ["database"]
        assert [a.subject for a in await alerts(log)] == ["failing", "recovered"]
        latest = await last_verdict(log)
        assert latest is not None
        assert latest.healthy
        assert {c.name for c in latest.checks} == {"database", "tonapi", "telegram", "tasks"}


async def test_one_blocked_admin_does_not_stop_the_others(store: EventStore) -> None:
    async with TonApiStandIn() as tonapi, BotApiStandIn() as bot_api:
        bot_api.fail_chat(ADMINS[0], 403, "Forbidden: bot was blocked by the user")
        alert = AlertRaised(
            alert_id=uuid.uuid4(),
            kind="actor",
            subject="PaymentMonitor parked",
            message="crashed 5 times in 60 s",
            raised_at=datetime.now(UTC),
        )
        async with checker(store, tonapi, bot_api):
            # An alert raised elsewhere (the supervisor parking an actor) is delivered too.
            await store.append(ALERTS_STREAM, [alert])

            async def delivered() -> bool:
                return bool(bot_api.sent)

            await eventually(delivered)
        assert [m.chat_id for m in bot_api.sent] == [ADMINS[1]]
        assert "PaymentMonitor parked" in bot_api.sent[0].text


async def liveness_check(
    store: EventStore, name: str, interval: float, *, startup_grace: float = 0.0
) -> tuple[HealthChecked, HealthCheck, list[SentMessage]]:
    """One health check of ``name`` by a checker that started just now: the verdict, the
    actor's liveness check in it, and the messages sent to admins by the time it is checked."""
    async with TonApiStandIn() as tonapi, BotApiStandIn() as bot_api:
        async with checker(
            store, tonapi, bot_api, intervals={name: interval}, startup_grace=startup_grace
        ) as (ref, _):
            await ref.ask(CheckHealth(), timeout=20)
        last = (await verdicts(store))[-1]
        [liveness] = [c for c in last.checks if c.name == f"actor:{name}"]
        return last, liveness, list(bot_api.sent)


async def test_a_dead_actor_fails_its_liveness_check(store: EventStore) -> None:
    last, liveness, _ = await liveness_check(store, "PaymentMonitor", 30)
    assert not last.healthy
    assert not liveness.ok
    assert "never started" in liveness.detail


async def test_a_sibling_not_started_yet_is_not_failing_while_the_checker_starts_up(
    store: EventStore,
) -> None:
    _, liveness, sent = await liveness_check(store, "PaymentMonitor", 30, startup_grace=60)
    assert liveness.ok
    assert liveness.detail.startswith("never started (this checker started")
    assert not sent  # no "failing" alert on a fresh deploy


async def _stopped_at_shutdown(store: EventStore, name: str, ago: float) -> None:
    stopped_at = datetime.now(UTC) - timedelta(seconds=ago)
    await store.append(
        actor_stream(name),
        [
            ActorStarted(actor=name, node="node-b", generation=1, started_at=stopped_at),
            ActorStopped(
                actor=name,
                node="node-b",
                generation=1,
                reason=SHUTDOWN_REASON,
                stopped_at=stopped_at,
            ),
        ],
    )


@pytest.mark.parametrize(
    ("ago", "ok", "detail"),
    [
        # A deploy: the old node stopped the actor moments ago and the new one has not started
        # it yet (or this checker's own node is the one shutting down): nobody is paged.
        (5, True, "stopped at a node shutdown {}s ago; a node takes it over soon"),
        # Past the grace nobody took it over: failing.
        (120, False, "stopped"),
    ],
    ids=["handed-over", "not-taken-over"],
)
async def test_an_actor_its_node_stopped_at_shutdown_fails_only_when_nobody_takes_it_over(
    store: EventStore, ago: float, ok: bool, detail: str
) -> None:
    await _stopped_at_shutdown(store, "RewardProcessor", ago=ago)
    last, liveness, sent = await liveness_check(store, "RewardProcessor", 300, startup_grace=60)
    assert liveness.ok is ok
    # The check runs a moment after the stop was written: its age reads 5 s or a little more.
    prefix, _, suffix = detail.partition("{}")
    age = liveness.detail.removeprefix(prefix).removesuffix(suffix)
    assert liveness.detail == detail.format(age), liveness
    assert not suffix or 5 <= int(age) < 60, liveness
    assert last.healthy is ok
    if ok:
        assert not sent  # nobody paged at a deploy
