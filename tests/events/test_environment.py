"""The environment port: the system's clocks and generators, or a simulation's, per task tree."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import anyio

from events import environment
from events.base import utcnow


class Fixed:
    """A simulation's environment in miniature: a set time, counted ids, a seeded source."""

    def __init__(self) -> None:
        self.at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
        self.ids = 0

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return 42.0

    def new_uuid(self) -> uuid.UUID:
        self.ids += 1
        return uuid.UUID(int=self.ids, version=4)

    def new_rng(self) -> random.Random:
        return random.Random(7)


def test_outside_any_simulation_the_answers_are_the_systems() -> None:
    before = datetime.now(UTC)
    assert before <= environment.now() <= datetime.now(UTC)
    assert environment.now().tzinfo is UTC
    assert abs(environment.monotonic() - time.monotonic()) < 1.0
    assert environment.new_uuid().version == 4
    assert environment.new_uuid() != environment.new_uuid()
    assert environment.current() is environment.SYSTEM


async def test_inside_an_event_loop_monotonic_is_the_loops_own_clock() -> None:
    assert abs(environment.monotonic() - anyio.current_time()) < 0.05


async def test_a_simulation_environment_reaches_every_task_started_under_it_and_nothing_else() -> (
    None
):
    fixed = Fixed()
    seen: dict[str, datetime] = {}

    async def look(name: str) -> None:
        seen[name] = utcnow()

    with environment.use(fixed):
        async with anyio.create_task_group() as tg:
            tg.start_soon(look, "child")
        assert environment.new_uuid() == uuid.UUID(int=1, version=4)
        assert environment.new_rng().random() == random.Random(7).random()
        assert environment.monotonic() == 42.0
    async with anyio.create_task_group() as tg:
        tg.start_soon(look, "after")
    assert seen["child"] == fixed.at
    assert abs(seen["after"] - datetime.now(UTC)) < timedelta(seconds=5)
    assert environment.current() is environment.SYSTEM
