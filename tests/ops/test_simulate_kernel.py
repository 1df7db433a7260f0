"""The simulation kernel (ops/simulate/kernel.py): seeded order, virtual time, no outside world.

Every test is synchronous: :func:`ops.simulate.run` runs its own loop, and nothing here waits
for real time, a database, a process or a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import TaskStatus

from events import environment
from ops.simulate import (
    BudgetExceeded,
    Deadlock,
    RealWorldAccess,
    SimEnvironment,
    SimLoop,
    UnsupportedAsyncio,
    check_asyncio_assumptions,
    current_loop,
    current_rng,
    run,
)

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


# -- a racy program -------------------------------------------------------------------------
async def racy() -> list[str]:
    """Tasks interleave around checkpoints and seeded sleeps; one is cancelled midway."""
    log: list[str] = []
    rng = current_rng()

    async def worker(name: str) -> None:
        for round_ in range(4):
            log.append(f"{name}{round_}")
            await anyio.lowlevel.checkpoint()
            if rng.random() < 0.5:
                await anyio.sleep(rng.choice((0.0, 0.5, 1.0)))

    async def doomed() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            log.append("doomed-cancelled")

    async with anyio.create_task_group() as tg:
        for name in "abcd":
            tg.start_soon(worker, name)
        async with anyio.create_task_group() as inner:
            inner.start_soon(doomed)
            await anyio.sleep(0.5)
            inner.cancel_scope.cancel()
    log.append(f"ids {environment.new_uuid()}")
    return log


def test_the_same_seed_replays_the_same_run() -> None:
    first = run(racy, seed=7, start=START)
    second = run(racy, seed=7, start=START)
    assert first.value == second.value
    assert first.digest == second.digest
    assert (first.steps, first.elapsed) == (second.steps, second.elapsed)
    assert first.trace_tail == second.trace_tail
    assert len(first.digest) == 64


def test_other_seeds_explore_other_interleavings() -> None:
    results = [run(racy, seed=seed, start=START) for seed in range(8)]
    assert len({tuple(result.value[:-1]) for result in results}) >= 2
    assert len({result.digest for result in results}) >= 2


def test_mass_cancellation_does_not_depend_on_addresses() -> None:
    """anyio cancels a task group's tasks by iterating a set hashed by address: the order the
    wake-ups arrive in differs between runs, the order they run in must not."""

    async def main() -> list[int]:
        finished: list[int] = []

        async def waiter(number: int) -> None:
            try:
                await anyio.sleep_forever()
            finally:
                finished.append(number)

        async with anyio.create_task_group() as tg:
            for number in range(40):
                tg.start_soon(waiter, number)
            await anyio.sleep(1)
            tg.cancel_scope.cancel()
        return finished

    first = run(main, seed=12)
    ballast = [object() for _ in range(10_000)]  # other addresses for the second run's tasks
    second = run(main, seed=12)
    assert ballast
    assert first.value == second.value
    assert first.digest == second.digest
    assert sorted(first.value) == list(range(40))
    assert first.value != sorted(first.value)


def test_timers_due_at_one_instant_run_in_a_seeded_order() -> None:
    async def main() -> list[int]:
        order: list[int] = []
        loop = asyncio.get_running_loop()
        for index in range(6):
            loop.call_at(loop.time() + 1.0, order.append, index)
        await anyio.sleep(2)
        return order

    assert run(main, seed=3).value == run(main, seed=3).value
    assert len({tuple(run(main, seed=seed).value) for seed in range(8)}) >= 2


def test_a_sleep_is_one_step_and_sleepers_due_at_once_wake_in_a_seeded_order() -> None:
    def sleeping(times: int) -> Callable[[], Awaitable[None]]:
        async def main() -> None:
            for _ in range(times):
                await anyio.sleep(1.0)

        return main

    # The timer ending a sleep is not drawn as a step of its own: the sleeper's wake-up is.
    assert run(sleeping(100), seed=0).steps - run(sleeping(0), seed=0).steps == 100

    async def woken() -> list[int]:
        order: list[int] = []

        async def sleeper(index: int) -> None:
            await anyio.sleep(1.0)
            order.append(index)

        async with anyio.create_task_group() as tg:
            for index in range(6):
                tg.start_soon(sleeper, index)
        return order

    assert run(woken, seed=3).value == run(woken, seed=3).value
    assert len({tuple(run(woken, seed=seed).value) for seed in range(8)}) >= 2


def test_the_trace_is_bounded_and_names_what_ran() -> None:
    result = run(racy, seed=1, trace_size=5)
    assert len(result.trace_tail) == 5
    assert result.trace_tail[-1].step == result.steps
    assert all("0x" not in step.label for step in result.trace_tail)
    labels = {step.label for step in run(racy, seed=1).trace_tail}
    assert any(
        label.startswith("tests.ops.test_simulate_kernel.racy.<locals>.worker#") for label in labels
    )


# -- virtual time ---------------------------------------------------------------------------
def test_an_hour_of_sleep_takes_no_real_time() -> None:
    async def main() -> float:
        before = anyio.current_time()
        await anyio.sleep(3600)
        return anyio.current_time() - before

    started = time.perf_counter()
    result = run(main, seed=0)
    assert time.perf_counter() - started < 0.5
    assert result.value == 3600.0
    assert result.elapsed == 3600.0


def test_deadlines_fire_at_their_virtual_instant() -> None:
    async def main() -> list[float]:
        fired: list[float] = []
        with pytest.raises(TimeoutError):
            with anyio.fail_after(5):
                await anyio.sleep(10)
        fired.append(anyio.current_time())
        with anyio.move_on_after(2.5) as scope:
            await anyio.Event().wait()
        assert scope.cancelled_caught
        fired.append(anyio.current_time())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(60), timeout=1.25)
        fired.append(anyio.current_time())
        return fired

    assert run(main, seed=4).value == [5.0, 7.5, 8.75]


# -- anyio works on it ----------------------------------------------------------------------
def test_anyio_primitives_work() -> None:
    async def main() -> dict[str, object]:
        seen: dict[str, object] = {}
        send, receive = anyio.create_memory_object_stream[int](1)
        lock = anyio.Lock()
        ready = anyio.Event()
        held: list[str] = []

        async def producer() -> None:
            async with send:
                for number in range(5):
                    await send.send(number)

        async def consumer() -> None:
            async with receive:
                seen["received"] = [number async for number in receive]

        async def critical(name: str) -> None:
            async with lock:
                held.append(f"{name}+")
                await anyio.sleep(1)
                held.append(f"{name}-")

        async def starts(*, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
            task_status.started("up")
            await ready.wait()
            seen["released"] = anyio.current_time()

        async with anyio.create_task_group() as tg:
            seen["started"] = await tg.start(starts)
            tg.start_soon(producer)
            tg.start_soon(consumer)
            for name in "xyz":
                tg.start_soon(critical, name)
            await anyio.sleep(10)
            ready.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep_forever)
            await anyio.sleep(1)
            tg.cancel_scope.cancel()

        with anyio.CancelScope() as scope:
            scope.cancel()
            await anyio.sleep(1)
        seen["cancelled"] = scope.cancelled_caught
        seen["held"] = held
        return seen

    seen = run(main, seed=11).value
    assert seen["started"] == "up"
    assert seen["received"] == [0, 1, 2, 3, 4]
    assert seen["released"] == 10.0
    assert seen["cancelled"] is True
    held = seen["held"]
    assert isinstance(held, list)
    assert [entry[-1] for entry in held] == ["+", "-"] * 3  # the lock excluded


# -- failures -------------------------------------------------------------------------------
def test_a_deadlock_names_the_waiting_tasks_and_where() -> None:
    async def stuck_child(event: anyio.Event) -> None:
        await event.wait()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stuck_child, anyio.Event(), name="child that waits")
            await anyio.sleep(2)
            await anyio.Event().wait()

    with pytest.raises(Deadlock) as caught:
        run(main, seed=2)
    message = str(caught.value)
    assert message.startswith("deadlock at virtual time 2.000 s after")
    assert "main: " in message
    assert "child that waits#" not in message  # names as given
    assert "child that waits: " in message
    assert "test_simulate_kernel.py:" in message
    assert any("seed=2" in note for note in caught.value.__notes__)


def test_budgets_end_runaway_runs() -> None:
    async def busy() -> None:
        while True:  # the runaway loop the budget is for
            await anyio.lowlevel.checkpoint()

    async def long_sleep() -> None:
        await anyio.sleep(10_000)

    with pytest.raises(BudgetExceeded, match="step budget exceeded: 1000 steps"):
        run(busy, seed=0, max_steps=1000)
    with pytest.raises(BudgetExceeded, match="virtual time budget exceeded"):
        run(long_sleep, seed=0, max_time=100)


def test_a_step_budget_hit_at_any_step_fails_cleanly() -> None:
    """Even when the budget runs out on the step that would end the run. (No task group
    here: a child cancelled before its first step warns "never awaited", as in stock
    asyncio.)"""

    async def main() -> str:
        for _ in range(3):
            await anyio.sleep(1)
        return "done"

    outcomes: set[str] = set()
    for max_steps in range(1, 12):
        try:
            outcomes.add(run(main, seed=0, max_steps=max_steps).value)
        except BudgetExceeded:
            outcomes.add("budget")
    assert outcomes == {"budget", "done"}


def test_a_failure_of_the_program_carries_its_seed() -> None:
    async def main() -> None:
        await anyio.sleep(3)
        raise ValueError("broken")

    with pytest.raises(ValueError, match="broken") as caught:
        run(main, seed=99)
    (note,) = caught.value.__notes__
    assert "seed=99" in note
    assert "virtual time=3.000 s" in note


async def _connect() -> None:
    await anyio.connect_tcp("example.org", 80)


async def _connect_by_address() -> None:
    await asyncio.get_running_loop().create_connection(asyncio.Protocol, "127.0.0.1", 9)


async def _serve() -> None:
    await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)


async def _anyio_thread() -> None:
    await anyio.to_thread.run_sync(time.sleep, 0)


async def _asyncio_thread() -> None:
    await asyncio.to_thread(time.sleep, 0)


async def _subprocess() -> None:
    await anyio.run_process(["true"])


async def _reader() -> None:
    asyncio.get_running_loop().add_reader(0, print)


@pytest.mark.parametrize(
    ("main", "attempted"),
    [
        (_connect, "getaddrinfo('example.org', 80)"),
        (_connect_by_address, "create_connection('127.0.0.1', 9)"),
        (_serve, "create_server"),
        (_anyio_thread, "starting thread 'AnyIO worker thread'"),
        (_asyncio_thread, "run_in_executor(sleep)"),
        (_subprocess, "subprocess_exec"),
        (_reader, "add_reader(0)"),
    ],
)
def test_the_outside_world_is_refused_at_once(main: object, attempted: str) -> None:
    assert callable(main)
    with pytest.raises(RealWorldAccess) as caught:
        run(main, seed=0)
    message = str(caught.value)
    assert message.startswith(attempted)
    assert "\n" not in message
    assert threading.Thread.start.__name__ == "start"  # the thread guard is gone


def test_a_swallowed_refusal_still_fails_the_run() -> None:
    async def main() -> str:
        with contextlib.suppress(Exception):  # as an actor's restart guard would
            await _connect()
        await anyio.sleep(1)
        return "carried on"

    with pytest.raises(RealWorldAccess, match="getaddrinfo"):
        run(main, seed=0)


def test_signals_run_only_when_the_simulation_delivers_them() -> None:
    async def main() -> list[int]:
        received: list[int] = []
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            await anyio.sleep(5)
            assert current_loop().deliver_signal(signal.SIGTERM)
            async for signum in signals:
                received.append(signum)
                break
        assert not current_loop().deliver_signal(signal.SIGTERM)
        return received

    assert run(main, seed=0).value == [signal.SIGTERM]


def test_the_loop_is_closed_after_success_and_failure() -> None:
    loops: list[SimLoop] = []

    async def fine() -> None:
        loops.append(current_loop())

    async def failing() -> None:
        loops.append(current_loop())
        await anyio.Event().wait()

    run(fine, seed=0)
    with pytest.raises(Deadlock):
        run(failing, seed=0)
    assert [loop.is_closed() for loop in loops] == [True, True]


# -- the environment ------------------------------------------------------------------------
def test_the_environment_follows_virtual_time_and_the_seed() -> None:
    async def main() -> tuple[list[datetime], float, list[uuid.UUID], list[float]]:
        assert isinstance(environment.current(), SimEnvironment)
        times = [environment.now()]
        await anyio.sleep(90)
        times.append(environment.now())
        ids = [environment.new_uuid() for _ in range(3)]
        draws = [environment.new_rng().random() for _ in range(2)]
        return times, environment.monotonic(), ids, draws

    times, monotonic, ids, draws = run(main, seed=5, start=START).value
    assert times == [START, START + timedelta(seconds=90)]
    assert monotonic == 90.0
    assert all(value.version == 4 for value in ids)
    assert len(set(ids)) == 3
    again = run(main, seed=5, start=START).value
    assert (again[2], again[3]) == (ids, draws)
    other = run(main, seed=6, start=START).value
    assert other[2] != ids


def test_the_environment_outside_the_run_is_untouched() -> None:
    async def main() -> None:
        await anyio.sleep(1000)

    run(main, seed=0)
    assert environment.current() is environment.SYSTEM
    assert abs((environment.now() - datetime.now(UTC)).total_seconds()) < 5
    with pytest.raises(RuntimeError, match="not inside a simulated run"):
        current_rng()


def test_a_naive_start_is_refused() -> None:
    async def main() -> None:
        pass

    with pytest.raises(ValueError, match="timezone-aware"):
        run(main, seed=0, start=datetime(2026, 1, 1))


# -- the private asyncio details the kernel relies on ---------------------------------------
def test_this_pythons_asyncio_matches_the_kernels_assumptions() -> None:
    check_asyncio_assumptions()


def test_a_broken_assumption_is_reported_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    def run_forever(self: asyncio.BaseEventLoop) -> None:
        pass

    monkeypatch.setattr(asyncio.BaseEventLoop, "run_forever", run_forever)
    with pytest.raises(UnsupportedAsyncio, match=r"no longer calls self\._run_once\(\)"):
        check_asyncio_assumptions()


# -- frozen processes -----------------------------------------------------------------------
_process: contextvars.ContextVar[str] = contextvars.ContextVar("process", default="")


def test_a_frozen_process_runs_nothing_until_thawed_then_finds_its_deadlines_passed() -> None:
    ticks: list[tuple[str, float]] = []

    async def ticking(name: str) -> None:
        _process.set(name)
        while True:
            ticks.append((name, anyio.current_time()))
            await anyio.sleep(1.0)

    async def main() -> int:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticking, "a")
            tg.start_soon(ticking, "b")
            await anyio.sleep(2.5)
            frozen = current_loop().freeze(lambda context: context.get(_process) == "a", "a")
            await anyio.sleep(3.0)
            held = current_loop().thaw(frozen)
            await anyio.sleep(1.0)
            tg.cancel_scope.cancel()
        return held

    result = run(main, seed=7)
    a = [at for name, at in ticks if name == "a"]
    b = [at for name, at in ticks if name == "b"]
    assert a == [0.0, 1.0, 2.0, 5.5, 6.5]  # the tick due at 3.0 ran at the thaw
    assert b == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert result.value == 1  # its one timer's callback, held since 3.0


def test_a_process_frozen_for_ever_is_reported_in_the_deadlock() -> None:
    async def main() -> None:
        async def frozen_worker() -> None:
            _process.set("stuck")
            await anyio.sleep(1.0)

        async with anyio.create_task_group() as tg:
            current_loop().freeze(lambda context: context.get(_process) == "stuck", "node-x")
            tg.start_soon(frozen_worker)

    with pytest.raises(Deadlock, match="node-x: frozen, holding 1 callback"):
        run(main, seed=1)


def test_thawing_what_is_not_frozen_is_refused() -> None:
    async def main() -> None:
        loop = current_loop()
        frozen = loop.freeze(lambda context: False, "n")
        loop.thaw(frozen)
        loop.thaw(frozen)

    with pytest.raises(ValueError, match="n is not frozen"):
        run(main, seed=1)
