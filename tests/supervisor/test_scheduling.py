"""The supervisor under many orders of ready tasks: :mod:`ops.simulate`'s seeded scheduler
runs whichever ready task its seed picks, not the first one scheduled, so these tests hold
for every order the seeds reach, not only for the one asyncio happens to use."""

from __future__ import annotations

from typing import ClassVar

import anyio

from actors.runtime import ActorRunner
from events import ActorCrashed
from events.streams import actor_stream
from ops.simulate import run
from store.memory import MemoryLog
from supervisor import ChildSpec, RestartType, Supervisor
from tests.supervisor.test_supervisor import LENIENT, Worker


class FailsAtOnce(Worker):
    """Starts, then its background work fails straight away."""

    name: ClassVar[str] = "FailsAtOnce"

    async def background(self, runner: ActorRunner[None]) -> None:
        raise RuntimeError("background work failed at once")


def test_a_crash_right_after_the_start_is_reported_whatever_runs_first() -> None:
    # Regression: whether the runner had reported its start was noted by the supervisor once
    # tg.start() returned. When the scheduler ran the failing background work before the
    # supervisor, the crash handler reported a start a second time ("called 'started' twice"),
    # which took the whole supervisor down (found by the simulator with frequent store faults).
    async def main() -> int:
        log = MemoryLog()
        supervisor = Supervisor(
            log,
            [ChildSpec("FailsAtOnce", FailsAtOnce, RestartType.PERMANENT, 4.0)],
            node="a",
            intensity=LENIENT,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(supervisor.run)
            await anyio.sleep(10.0)
            tg.cancel_scope.cancel()
        stream = await log.read_stream(actor_stream("FailsAtOnce"))
        return sum(isinstance(r.event, ActorCrashed) for r in stream)

    for seed in range(1, 21):
        crashes = run(main, seed=seed).value
        assert crashes >= 2, (seed, crashes)  # crashed, restarted with backoff, crashed again
