"""Fault scenario 1, the kill -9 storm: while 1,000 rewards and 300 payments are in flight, the
worker is killed with SIGKILL at random moments at least ten times, and restarted each time.
Afterwards every reward is credited exactly once, every paid payment confirmed exactly once
(its subscription activated once; unpaid and underpaid ones never), no tx hash confirms two
payments, and ``i3lani audit`` is clean.

40 % of the work is there before the first worker starts; the rest arrives in ten waves, one
at each kill (users keep coming: a wave's rewards are the last thing committed before the
SIGKILL, so every kill lands with work in flight). The moments are random (seeded: the seed is
printed, ``I3LANI_FAULT_SEED`` replays it) and of two kinds, alternating: any moment after the
process was spawned (starting up, standing by for the dead node's leases, or running), and a
moment shortly after the worker took reward credits in hand (mid-work). Each kill is printed
with its phase: ``pytest -s``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from functools import partial
from typing import Final

import anyio
import pytest

from actors.catalog import PRODUCT_ACTORS
from store import EventStore
from tests.e2e.processes import (
    Worker,
    Workers,
    assert_one_at_a_time,
    lifecycle,
    running_workers,
    wait_for,
)
from tests.faults.harness import (
    FAULTS,
    PRODUCT,
    Seeder,
    Workload,
    assert_audit_clean,
    assert_exactly_once,
    assert_no_crashes,
    count_effects,
    fault_env,
    fault_seed,
    holder_of,
    standins,
    stop,
    wait_until_done,
)

pytestmark = [*FAULTS]

KILLS: Final = 10
CHANNELS: Final = 5
REWARDS: Final = 1000  # the channels' rewards included
PAYMENTS: Final = 300
PAID: Final = 200
UNDERPAID: Final = 20
TWICE: Final = 20
UPFRONT: Final = 0.4
"""Share of the work seeded before the first worker starts; the rest comes in one wave per kill."""


@dataclass(frozen=True)
class Kill:
    number: int
    node: str
    after_spawn: float
    phase: str
    work: str
    pending: int


async def phase_of(worker: Worker, store: EventStore) -> str:
    """What ``worker`` was doing: starting up, standing by, taking over, or running (with the
    tasks it held)."""
    if b"supervising" not in worker.stdout:
        return "starting up (not supervising yet)"
    held = [a for a in PRODUCT_ACTORS if await holder_of(store, a) == worker.node]
    if not held:
        return "standing by (the dead node's leases not expired yet)"
    tasks = await tasks_in_hand(worker, store)
    state = "running" if len(held) == len(PRODUCT_ACTORS) else "taking over"
    return f"{state} ({len(held)}/{len(PRODUCT_ACTORS)} actors, {tasks} tasks in hand)"


async def tasks_in_hand(worker: Worker, store: EventStore) -> int:
    held: int = await store._pool.fetchval(
        "SELECT count(*) FROM i3lani.tasks WHERE status = 'running' AND locked_by = $1",
        worker.node,
    )
    return held


async def busy(worker: Worker, store: EventStore, workload: Workload) -> bool:
    """Whether ``worker`` holds reward credits in hand, or runs every actor with nothing left
    to credit: a fast worker can drain a wave between two looks, and then the moment to kill
    it mid-work has passed (the next wave, seeded just before the kill, is work in flight)."""
    if await tasks_in_hand(worker, store) > 0:
        return True
    if not (await phase_of(worker, store)).startswith("running"):
        return False
    return workload.pending(await count_effects(store)) == 0


async def wave(seeder: Seeder, number: int) -> None:
    """Wave ``number`` (from 0) of the work not seeded upfront: payments first, then rewards,
    so that the rewards are committed last, just before the kill."""
    work = seeder.workload
    left = KILLS - number
    paid = PAID - len(work.paid)
    twice = TWICE - len(work.second_transfers)
    underpaid = UNDERPAID - len(work.underpaid)
    payments = PAYMENTS - len(work.payments)
    rewards = REWARDS - len(work.rewards)
    await seeder.payments(
        payments // left, paid=paid // left, underpaid=underpaid // left, twice=twice // left
    )
    await seeder.rewards(rewards // left)


async def storm(workers: Workers, store: EventStore, seeder: Seeder, seed: int) -> Worker:
    """Start a worker, then kill and restart it ``KILLS`` times, a wave of users arriving at
    each kill; returns the last worker."""
    rng = random.Random(f"{seed}/storm")
    workload = seeder.workload
    kills: list[Kill] = []
    worker = await workers.start("storm-0", PRODUCT, ready=False)
    for number in range(1, KILLS + 1):
        if number % 2:  # any moment: starting up, standing by or running
            moment = worker.spawned_at + rng.uniform(0.3, 5.0)
        else:  # mid-work: shortly after this worker took credits in hand
            await wait_for(
                partial(busy, worker, store, workload), 60, f"{worker.node} crediting rewards"
            )
            moment = time.monotonic() + rng.uniform(0.0, 0.5)
        await anyio.sleep(max(moment - time.monotonic(), 0))
        assert worker.alive, f"the worker died by itself\n{worker.output()}"
        phase = await phase_of(worker, store)
        await wave(seeder, number - 1)
        after_spawn = time.monotonic() - worker.spawned_at
        await worker.kill()
        effects = await count_effects(store)
        work = workload.progress(effects)
        kills.append(Kill(number, worker.node, after_spawn, phase, work, workload.pending(effects)))
        print(f"kill {number:2d}: {worker.node} {after_spawn:5.2f}s after spawn, {phase}; {work}")
        worker = await workers.start(f"storm-{number}", PRODUCT, ready=False)
    assert len(kills) >= KILLS
    mid_work = [k for k in kills if k.phase.startswith(("running", "taking over"))]
    print(f"{len(kills)} kills, {len(mid_work)} of them while the worker ran actors")
    assert len(mid_work) >= KILLS // 2, kills
    idle = [k.number for k in kills if not k.pending]
    assert not idle, f"kills {idle} came with no work in flight"
    return worker


@pytest.mark.timeout(240)
async def test_a_kill_storm_leaves_every_effect_exactly_once(
    dsn: str, clean_env: dict[str, str], store: EventStore
) -> None:
    began = time.monotonic()
    seed = fault_seed()
    async with standins() as (tonapi, bot_api):
        env = fault_env(dsn, clean_env, tonapi, bot_api)
        seeder = Seeder(store, tonapi, bot_api, rng=random.Random(f"{seed}/work"))
        await seeder.channels(CHANNELS)
        await seeder.rewards(int(REWARDS * UPFRONT) - CHANNELS)
        await seeder.payments(
            int(PAYMENTS * UPFRONT),
            paid=int(PAID * UPFRONT),
            underpaid=int(UNDERPAID * UPFRONT),
            twice=int(TWICE * UPFRONT),
        )
        async with running_workers(env) as workers:
            worker = await storm(workers, store, seeder, seed)
            storm_over = time.monotonic()
            workload = seeder.workload
            assert (len(workload.rewards), len(workload.payments)) == (REWARDS, PAYMENTS)

            async def took_over() -> bool:
                holders = {await holder_of(store, actor) for actor in PRODUCT_ACTORS}
                return holders == {worker.node}

            await wait_for(took_over, 60, f"{worker.node} running every actor")
            await wait_until_done(store, workload, 90)
            drained = time.monotonic()
            print(
                f"storm over after {storm_over - began:.1f}s; the work done "
                f"{drained - storm_over:.1f}s later"
            )
            await stop(worker)

        effects = await count_effects(store)
        assert_exactly_once(workload, effects)
        reaped = await store._pool.fetchval(
            "SELECT count(*) FROM i3lani.events WHERE type = 'TaskFailed' "
            "AND payload->>'error' LIKE 'TaskLockExpired%'"
        )
        print(f"{reaped} task attempts taken back from killed workers")
        for actor in PRODUCT_ACTORS:
            assert_one_at_a_time(await lifecycle(store, actor))
        await assert_no_crashes(store)
        await assert_audit_clean(env, workload)
    print(f"wall time {time.monotonic() - began:.1f}s")
