"""A tick that PostgreSQL cannot take (the server is restarting) changes nothing and crashes
nothing: the actor ticks on, and records its ticks again once the server is back.

Regression: the ``StoreUnavailable`` of a tick's commit (and later: of the tick's own reads)
crashed the actor, so a database
restart crashed every ticking actor, and the HealthChecker, crashed by the outage's first tick,
never recorded the verdict saying the database was unreachable. The outage here is real: a
private PostgreSQL server (:mod:`tests.faults.pgcontrol`) is stopped and started again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import ClassVar

import anyio
import asyncpg
import msgspec
import pytest

from actors.runtime import Actor, ActorRunner, TickSpec
from actors.runtime.clock import SystemClock
from store import EventStore, migrate
from tests.faults.pgcontrol import private_postgres
from tests.waiting import eventually


class Ticker(Actor[None]):
    """Ticks every 0.1 s, reading the log in each tick (as the RewardProcessor's and the
    Cleanup's ticks do), and counts the ticks it ran (recorded in its schedule or not)."""

    name: ClassVar[str] = "Ticker"
    tick: TickSpec | None = TickSpec(interval=0.1)

    def __init__(self) -> None:
        self.ran = 0

    def initial_state(self) -> None:
        return None

    async def on_tick(self, state: None, runner: ActorRunner[None]) -> Sequence[msgspec.Struct]:
        self.ran += 1
        await runner.store.stream_version(runner.tick_stream)  # StoreUnavailable in an outage
        return ()


@pytest.mark.process  # a private PostgreSQL server, stopped and started
@pytest.mark.slow
async def test_ticks_during_a_database_outage_are_dropped_not_crashes() -> None:
    async with private_postgres() as server:
        admin = await asyncpg.connect(server.dsn())
        try:
            await admin.execute("CREATE DATABASE tick_outage")
        finally:
            await admin.close()
        dsn = server.dsn("tick_outage")
        await migrate(dsn)
        actor = Ticker()
        async with EventStore.open(dsn, node="n") as store, anyio.create_task_group() as tg:
            runner = ActorRunner(actor, store, SystemClock(), node="n")
            await tg.start(runner.run)

            first = None

            async def ticked() -> bool:
                nonlocal first
                tick = await store.load_tick("Ticker")
                if first is None and tick is not None:
                    first = tick.due_at
                return tick is not None and first is not None and tick.due_at > first

            await eventually(ticked, within=20)
            await server.stop()
            ran_before = actor.ran

            async def ticking_on() -> bool:
                return actor.ran >= ran_before + 3

            await eventually(ticking_on, within=20)  # ticks run, and fail to be recorded
            await server.start()
            back = datetime.now(UTC)
            started = time.monotonic()

            async def recorded_again() -> bool:
                tick = await store.load_tick("Ticker")
                return tick is not None and tick.ticked_at >= back

            await eventually(recorded_again, within=20)
            assert time.monotonic() - started < 20
            tg.cancel_scope.cancel()
        # The runner ran through the outage: had a tick crashed it, the task group above
        # would have raised StoreUnavailable.
        assert actor.ran >= ran_before + 3
