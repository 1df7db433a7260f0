"""Tick schedules: one row per actor beside the log, overwritten in place, fenced like a
checkpoint, committed with a transaction's appends or not at all.

Contract tests (``log``): each runs on PostgreSQL and in memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from events import ActorTicked
from events.errors import StaleGeneration
from store import TickRecord
from store.port import EventLog
from tests.store.contract import Backend

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def log_size(log: EventLog) -> int:
    return len([r async for r in log.read_all()])


async def test_a_schedule_is_overwritten_in_place_and_never_touches_the_log(
    log: EventLog,
) -> None:
    assert await log.load_tick("Monitor") is None
    for seconds in (0, 30, 60):
        await log.save_tick("Monitor", at(seconds), at(seconds + 1), node="n1")
    assert await log.load_tick("Monitor") == TickRecord(
        due_at=at(60), ticked_at=at(61), node="n1", generation=None
    )
    assert await log.load_tick("Other") is None
    assert await log_size(log) == 0


async def test_a_schedule_in_a_transaction_commits_with_its_appends_or_not_at_all(
    log: EventLog,
) -> None:
    tick = ActorTicked(actor="Monitor", due_at=T0, ticked_at=T0)

    class Abandon(Exception):
        pass

    async def abandoned() -> None:
        async with log.transaction() as tx:
            await tx.append("stamp-1", [tick])
            await tx.save_tick("Monitor", at(0), at(1), node="n1")
            raise Abandon

    with pytest.raises(Abandon):
        await abandoned()
    assert await log.load_tick("Monitor") is None
    assert await log.read_stream("stamp-1") == []

    async with log.transaction() as tx:
        await tx.append("stamp-1", [tick])
        await tx.save_tick("Monitor", at(0), at(1), node="n1")
    assert await log.load_tick("Monitor") == TickRecord(due_at=at(0), ticked_at=at(1), node="n1")
    assert len(await log.read_stream("stamp-1")) == 1


async def test_a_schedule_under_a_replaced_lease_generation_is_refused(
    log: EventLog, backend: Backend
) -> None:
    old = await backend.grant(log, "Monitor")
    new = await backend.grant(log, "Monitor")
    with pytest.raises(StaleGeneration):
        await log.save_tick("Monitor", at(0), at(0), node="old", fence=old)

    async def effects_and_tick() -> None:
        async with log.transaction() as tx:
            await tx.append("stamp-1", [ActorTicked(actor="Monitor", due_at=T0, ticked_at=T0)])
            await tx.save_tick("Monitor", at(0), at(0), node="old", fence=old)

    with pytest.raises(StaleGeneration):
        await effects_and_tick()
    assert await log.load_tick("Monitor") is None
    assert await log.read_stream("stamp-1") == []
    await log.save_tick("Monitor", at(30), at(31), node="new", fence=new)
    assert await log.load_tick("Monitor") == TickRecord(
        due_at=at(30), ticked_at=at(31), node="new", generation=new.generation
    )


async def test_a_schedule_name_is_one_to_200_characters(log: EventLog) -> None:
    for name in ("", "x" * 201):
        with pytest.raises(ValueError, match="1 to 200 characters"):
            await log.save_tick(name, T0, T0)
