"""The injected clocks: ManualClock moves only when told, SystemClock is the real time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from actors.runtime.clock import Clock, ManualClock, SystemClock

T0 = datetime(2026, 5, 1, 8, 30, tzinfo=UTC)


async def sleep_and_note(clock: ManualClock, seconds: float, name: str, woken: list[str]) -> None:
    await clock.sleep(seconds)
    woken.append(name)


async def test_manual_clock_starts_where_told_and_moves_only_on_advance() -> None:
    default = ManualClock()
    assert default.now() == datetime(2026, 1, 1, tzinfo=UTC)
    clock = ManualClock(T0)
    assert clock.now() == T0
    assert clock.now().tzinfo is not None
    assert clock.monotonic() == 0.0
    await anyio.sleep(0.02)  # real time passing does not move it
    assert clock.now() == T0
    await clock.advance(90)
    assert clock.now() == T0 + timedelta(seconds=90)
    assert clock.monotonic() == 90.0
    await clock.advance(0)
    assert clock.now() == T0 + timedelta(seconds=90)
    with pytest.raises(ValueError, match="does not go back"):
        await clock.advance(-1)
    assert clock.now() == T0 + timedelta(seconds=90)


async def test_sleepers_wake_in_deadline_order_on_advance() -> None:
    clock = ManualClock(T0)
    woken: list[str] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleep_and_note, clock, 3.0, "three", woken)
            tg.start_soon(sleep_and_note, clock, 1.0, "one", woken)
            tg.start_soon(sleep_and_note, clock, 2.0, "two", woken)
            tg.start_soon(sleep_and_note, clock, 2.0, "two again", woken)  # same deadline: FIFO
            await clock.wait_for_sleepers(4)
            assert clock.sleepers == 4
            assert clock.next_wake() == 1.0
            await clock.advance(0.5)
            assert woken == []
            assert clock.next_wake() == 0.5
            await clock.advance(0.5)
            assert woken == ["one"]
            await clock.advance(10)
    assert woken == ["one", "two", "two again", "three"]
    assert clock.sleepers == 0
    assert clock.next_wake() is None
    assert clock.monotonic() == 11.0


async def test_a_sleeper_sees_its_own_deadline_as_now_when_it_wakes() -> None:
    clock = ManualClock(T0)
    seen: list[datetime] = []

    async def periodic() -> None:
        for _ in range(3):
            await clock.sleep(10)
            seen.append(clock.now())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(periodic)
            await clock.wait_for_sleepers(1)
            # One advance covers three periods: the task wakes, sleeps again, wakes again.
            await clock.advance(35)
    assert seen == [T0 + timedelta(seconds=s) for s in (10, 20, 30)]
    assert clock.now() == T0 + timedelta(seconds=35)


async def test_zero_and_negative_sleeps_return_at_once() -> None:
    clock = ManualClock(T0)
    with anyio.fail_after(1):
        await clock.sleep(0)
        await clock.sleep(-5)
    assert clock.sleepers == 0
    assert clock.now() == T0


async def test_wait_for_sleepers_waits_until_enough_tasks_sleep() -> None:
    clock = ManualClock(T0)
    reached = anyio.Event()
    woken: list[str] = []

    async def waiter() -> None:
        await clock.wait_for_sleepers(2)
        reached.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            tg.start_soon(sleep_and_note, clock, 5, "a", woken)
            await anyio.sleep(0.05)
            assert not reached.is_set()  # only one sleeper so far
            tg.start_soon(sleep_and_note, clock, 5, "b", woken)
            await reached.wait()
            await clock.advance(5)
    assert sorted(woken) == ["a", "b"]


async def test_two_tasks_can_wait_for_sleepers_at_once() -> None:
    clock = ManualClock(T0)
    woken: list[str] = []
    for_two, for_one = anyio.Event(), anyio.Event()

    async def waiter(count: int, done: anyio.Event) -> None:
        await clock.wait_for_sleepers(count)
        done.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, 2, for_two)
            await anyio.sleep(0.01)
            tg.start_soon(waiter, 1, for_one)
            await anyio.sleep(0.01)
            tg.start_soon(sleep_and_note, clock, 1, "a", woken)
            tg.start_soon(sleep_and_note, clock, 1, "b", woken)
            with anyio.move_on_after(1):
                await for_one.wait()
                await for_two.wait()
            assert clock.sleepers == 2
            assert for_one.is_set()
            assert for_two.is_set(), "two tasks sleep, but the waiter for two never woke up"
            await clock.advance(1)
    assert sorted(woken) == ["a", "b"]


async def test_a_cancelled_sleeper_is_forgotten() -> None:
    clock = ManualClock(T0)
    woken: list[str] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleep_and_note, clock, 10, "stays", woken)
            async with anyio.create_task_group() as doomed:
                doomed.start_soon(sleep_and_note, clock, 5, "cancelled", woken)
                await clock.wait_for_sleepers(2)
                assert clock.next_wake() == 5
                doomed.cancel_scope.cancel()
            assert clock.sleepers == 1
            assert clock.next_wake() == 10
            await clock.advance(10)
    assert woken == ["stays"]
    assert clock.sleepers == 0


async def test_system_clock_is_the_real_time() -> None:
    clock: Clock = SystemClock()
    before = datetime.now(UTC)
    now = clock.now()
    after = datetime.now(UTC)
    assert now.tzinfo is not None
    assert now.utcoffset() == timedelta(0)
    assert before <= now <= after
    start = clock.monotonic()
    await clock.sleep(0.05)
    elapsed = clock.monotonic() - start
    assert 0.045 <= elapsed < 2.0
    assert clock.now() > now
    with anyio.fail_after(1):
        await clock.sleep(0)
        await clock.sleep(-3)  # never an error: just a checkpoint
