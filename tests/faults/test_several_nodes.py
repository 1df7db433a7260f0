"""Fault scenario 5, several nodes: three workers on one database; the node running the
PaymentMonitor is killed (SIGKILL); the actor resumes on another node within 15 s, and at no
moment do two nodes run it: checked from its lifecycle events (one incarnation at a time,
strictly increasing generations), from the lease table, from who wrote the payment effects,
and by the store refusing an append fenced with the dead node's generation. Payments created
before, around and after the kill are all confirmed exactly once, and ``i3lani audit`` is
clean. The failover time is printed: ``pytest -s``.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime
from typing import Final

import pytest

from actors.catalog import PRODUCT_ACTORS
from events import ActorRestarted, ActorStarted, AlertRaised, PaymentConfirmed
from events.errors import StaleGeneration
from store import EventStore, Fence
from tests.e2e.processes import (
    assert_one_at_a_time,
    assert_schedule_by_a_holder,
    assert_ticks_follow_starts,
    lease_of,
    lifecycle,
    running_workers,
    wait_for,
)
from tests.faults.harness import (
    FAULTS,
    PRODUCT,
    Seeder,
    assert_audit_clean,
    assert_exactly_once,
    assert_no_crashes,
    count_effects,
    fault_env,
    fault_seed,
    holder_node,
    holder_of,
    standins,
    stop,
    wait_started,
    wait_until_done,
)

pytestmark = [*FAULTS]

MONITOR: Final = "PaymentMonitor"
LEASE_TTL: Final = "4"
FAILOVER_LIMIT: Final = 15.0
PAYMENT_EFFECTS: Final = ("PaymentConfirmed", "SubscriptionActivated", "PaymentUnderpaid")


@pytest.mark.timeout(180)
async def test_the_payment_monitor_resumes_on_another_node_and_never_runs_twice(
    dsn: str, clean_env: dict[str, str], store: EventStore
) -> None:
    began = time.monotonic()
    seed = fault_seed()
    async with standins() as (tonapi, bot_api):
        env = fault_env(dsn, clean_env, tonapi, bot_api, I3LANI_LEASE_TTL=LEASE_TTL)
        seeder = Seeder(store, tonapi, bot_api, rng=random.Random(seed))
        await seeder.channels(2)
        await seeder.rewards(200)
        await seeder.payments(60, paid=40, underpaid=4, twice=4)

        async with running_workers(env) as workers:
            nodes = [await workers.start(f"node-{n}", PRODUCT, ready=False) for n in (1, 2, 3)]
            for worker in nodes:
                await worker.wait_ready(60)
            _, first = await wait_started(store, MONITOR, seconds=30)
            await wait_until_done(store, seeder.workload, 60)

            # Three nodes up, one PaymentMonitor: the other two stand by.
            holder = await holder_of(store, MONITOR)
            assert holder == first.node
            runner = next(w for w in nodes if w.node == holder)
            survivors = [w for w in nodes if w is not runner]
            history = await lifecycle(store, MONITOR)
            assert assert_one_at_a_time(history) == [first]

            # Payments in flight at the kill, and more while the monitor has no node.
            around = await seeder.payments(40, paid=30, underpaid=2, twice=3)
            await seeder.rewards(100)
            killed_at = datetime.now(UTC)
            await runner.kill()
            during = await seeder.payments(40, paid=30, underpaid=2, twice=3)
            await seeder.rewards(100)

            taken_recorded, taken = await wait_started(
                store, MONITOR, after_version=len(history), seconds=30
            )
            failover = (taken_recorded.recorded_at - killed_at).total_seconds()
            print(
                f"failover after kill -9: {failover:.2f}s ({runner.node} -> {taken.node}, "
                f"generation {first.generation} -> {taken.generation}, lease TTL {LEASE_TTL}s)"
            )
            assert failover < FAILOVER_LIMIT
            assert taken.node in {w.node for w in survivors}
            assert taken.generation > first.generation
            between = (await lifecycle(store, MONITOR))[len(history) : taken_recorded.version]
            assert [type(r.event) for r in between] == [ActorRestarted, ActorStarted], between
            restarted = between[0].event
            assert isinstance(restarted, ActorRestarted)
            assert (restarted.cause, restarted.reason) == (
                "failover",
                f"previously on {runner.node}",
            )

            # The dead node's generation can write nothing any more.
            with pytest.raises(StaleGeneration):
                await store.append(
                    "faultprobe-fence",
                    [
                        AlertRaised(
                            alert_id=uuid.uuid4(),
                            kind="probe",
                            subject=MONITOR,
                            message="written under the dead node's lease generation",
                            raised_at=datetime.now(UTC),
                        )
                    ],
                    fence=Fence(MONITOR, first.generation),
                )
            assert await store.stream_version("faultprobe-fence") == 0

            # Every actor the dead node ran resumes on a survivor; the work all gets done.
            async def resumed() -> bool:
                holders = [await holder_of(store, actor) for actor in PRODUCT_ACTORS]
                return all(h in {w.node for w in survivors} for h in holders)

            await wait_for(resumed, 30, "every actor running on a surviving node")
            await wait_until_done(store, seeder.workload, 60)

            lease = await lease_of(store, MONITOR)
            assert lease is not None
            history = await lifecycle(store, MONITOR)
            starts = assert_one_at_a_time(history)
            assert [(s.node, s.generation) for s in starts] == [
                (first.node, first.generation),
                (taken.node, taken.generation),
            ]
            generations = [s.generation for s in starts]
            assert generations == sorted(set(generations))
            assert (holder_node(lease.node), lease.generation) == (taken.node, taken.generation)

            # Who wrote what: the tick schedule and payment effects only ever by the node
            # running the monitor at the time; the payments created after the kill by the new
            # node.
            assert_schedule_by_a_holder(history, await store.load_tick(MONITOR))
            written = [
                recorded
                async for recorded in store.read_all(category="payment")
                if recorded.type in PAYMENT_EFFECTS
            ]
            assert_ticks_follow_starts(history, written)
            after_kill = [
                r
                for r in written
                if isinstance(r.event, PaymentConfirmed) and r.event.payment_id in during
            ]
            assert len(after_kill) == 30
            assert {r.metadata.node for r in after_kill} == {taken.node}
            assert {p for p in around if p in seeder.workload.paid} <= {
                p for p, _ in (await count_effects(store)).confirmations
            }

            for actor in PRODUCT_ACTORS:
                assert_one_at_a_time(await lifecycle(store, actor))
            for worker in survivors:
                await stop(worker)

        assert_exactly_once(seeder.workload, await count_effects(store))
        await assert_no_crashes(store)
        await assert_audit_clean(env, seeder.workload)
    print(f"wall time {time.monotonic() - began:.1f}s")
