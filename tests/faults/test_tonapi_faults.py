"""Fault scenario 3: TonAPI misbehaving, then healthy again.

A worker (``i3lani run``, the five product actors) watches payments while the TonAPI stand-in
goes through every misbehaviour it can show, one phase after the other: HTTP 500s, a storm of
429s carrying ``Retry-After``, requests that hang past the client's timeout, truncated JSON,
then valid JSON with fields of the wrong type; then it heals. Meanwhile users keep paying
(payments created and paid on the chain during the faults, one of them with a window that
closes while TonAPI is still down) and earning rewards. Verdicts:

* no crash loop: PaymentMonitor and the HealthChecker never crashed (the client turns every
  fault into a skipped scan, cursor kept), nothing was parked, the worker lived throughout;
* retries are paced: after a 429 the monitor waits the ``Retry-After`` before asking again,
  and a hung request is given up after the client's timeout, then retried;
* the HealthChecker recorded TonAPI failing, then recovered, and the admin was told both;
* rewards were credited during the outage (it concerns TonAPI only);
* after healing, every paid payment is confirmed exactly once, the one paid in time but seen
  only after its window closed included; the unpaid one expires only after TonAPI answered
  again; ``i3lani audit`` is clean.

Figures (printed; run with ``-s``): each phase's length and requests, the retry gaps, and how
soon after healing the confirmations, the expiry and the recovery came.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from actors.catalog import PRODUCT_ACTORS
from actors.config import Settings
from actors.health import HEALTH_STREAM
from bot_gateway.config import GatewayConfig
from bot_gateway.service import Gateway
from events import ActorCrashed, ActorParked, HealthChecked, PaymentExpired
from events.streams import actor_stream, payment_stream
from ops.standins import TonApiRequest
from store import EventStore
from tests.e2e.processes import running_workers, wait_for
from tests.faults.harness import (
    FAULTS,
    PAYER,
    PRODUCT,
    WALLET,
    Seeder,
    assert_audit_clean,
    assert_exactly_once,
    count_effects,
    fault_env,
    fault_seed,
    standins,
    stop,
    wait_until_done,
)
from tests.faults.stamps import Stamped, gaps, stamped

pytestmark = [*FAULTS]

ADMIN = 4242
RETRY_AFTER = 1.0
"""Seconds TonAPI's 429s ask the client to wait."""
CLIENT_TIMEOUT = 10.0
"""TonApiClient's request timeout (its default, as the worker builds it)."""
WINDOW = 8.0
"""Seconds of the short payment window: it closes while TonAPI is still failing."""


def _scan(request: TonApiRequest) -> bool:
    return request.path.endswith("/transactions")


@dataclass
class Phase:
    """One misbehaviour: when it began and ended, and where the request log stood."""

    name: str
    began: float
    mark: int
    ended: float = 0.0

    def requests(self, log: Stamped[TonApiRequest]) -> list[tuple[float, TonApiRequest]]:
        return [(at, r) for at, r in log.since(self.mark) if not self.ended or at <= self.ended]

    def summary(self, log: Stamped[TonApiRequest]) -> str:
        served = self.requests(log)
        scans = sum(_scan(r) for _, r in served)
        return (
            f"{self.name} {self.ended - self.began:.1f}s "
            f"({scans} scans, {len(served) - scans} status)"
        )


async def _verdicts(store: EventStore) -> list[tuple[int, HealthChecked]]:
    return [
        (r.position, r.event)
        for r in await store.read_stream(HEALTH_STREAM)
        if isinstance(r.event, HealthChecked)
    ]


def _tonapi_failed(verdict: HealthChecked) -> bool:
    return any(c.name == "tonapi" and not c.ok for c in verdict.checks)


@pytest.mark.timeout(180)
async def test_tonapi_misbehaving_then_healthy(
    dsn: str, store: EventStore, clean_env: dict[str, str]
) -> None:
    rng = random.Random(fault_seed())
    async with standins() as (tonapi, bot_api):
        env = fault_env(dsn, clean_env, tonapi, bot_api, ADMIN_IDS=str(ADMIN))
        log: Stamped[TonApiRequest] = stamped(tonapi, "requests")
        seeder = Seeder(store, tonapi, bot_api, rng=rng, concurrency=5)
        workload = seeder.workload
        await seeder.rewards(10)
        await seeder.payments(6, paid=3, underpaid=1)
        # The same gateway, configured with a short payment window.
        brief = Gateway(store, Settings(wallet=WALLET, payment_window=WINDOW), GatewayConfig())
        phases: list[Phase] = []

        def begin(name: str) -> Phase:
            now = time.monotonic()
            if phases:
                phases[-1].ended = now
            tonapi.heal()
            phases.append(Phase(name, now, log.mark()))
            return phases[-1]

        async def served(phase: Phase, count: int, *, scans: bool = False) -> None:
            """Wait until ``count`` requests (scans only, with ``scans``) met the phase."""

            async def enough() -> bool:
                found = [r for _, r in phase.requests(log) if _scan(r) or not scans]
                return len(found) >= count

            await wait_for(enough, 60, f"{count} requests in the {phase.name} phase")

        async with running_workers(env) as workers:
            worker = await workers.start("node-a", PRODUCT)
            await wait_until_done(store, workload, seconds=60)

            async def healthy() -> bool:
                found = await _verdicts(store)
                return bool(found) and found[-1][1].healthy

            await wait_for(healthy, 60, "a healthy verdict before the faults")

            # 1. HTTP 500s. Users pay meanwhile: one in a short window that closes during
            # the faults (paid in time), one never pays in it; three in the usual window.
            errors = begin("500s")
            tonapi.fail("500", times=None)
            in_time = await brief.create_payment(900_001, seeder.plan)
            never = await brief.create_payment(900_002, seeder.plan)
            tx = tonapi.transfer(
                WALLET, source=PAYER, value=in_time.amount_nanotons, comment=in_time.memo
            )
            workload.paid[in_time.payment_id] = tx["hash"]
            await seeder.payments(3, paid=3)

            async def tonapi_failing() -> tuple[int, HealthChecked] | None:
                failing = [(p, v) for p, v in await _verdicts(store) if _tonapi_failed(v)]
                return failing[0] if failing else None

            failed_at, failing_verdict = await wait_for(
                tonapi_failing, 60, "health: TonAPI failing"
            )
            failing_seen = time.monotonic() - errors.began
            await served(errors, 4, scans=True)

            # 2. A 429 storm, each answer asking for RETRY_AFTER seconds. Rewards go on.
            storm = begin("429 storm")
            tonapi.fail("429", times=None, retry_after=RETRY_AFTER)
            during = await seeder.rewards(5)

            async def credited_during() -> bool:
                effects = await count_effects(store)
                return all(effects.credited[r] for r in during)

            await wait_for(credited_during, 60, "rewards credited while TonAPI fails")
            await served(storm, 8, scans=True)

            # 3. Two requests hang past the client's timeout; then the JSON comes truncated.
            hanging = begin("timeouts, then truncated JSON")
            tonapi.fail("timeout", times=2, hang=CLIENT_TIMEOUT * 3)
            tonapi.fail("garbage", times=None)
            await served(hanging, 2 + 3)

            async def asked_again() -> bool:
                # The first scan's asker asked again (the monitor and the reconciliation both
                # scan; the range each asks from tells them apart: see the storm's check).
                scans = [r for _, r in hanging.requests(log) if _scan(r)]
                asker = scans[0].query.get("after_lt") if scans else None
                return sum(r.query.get("after_lt") == asker for r in scans) >= 2

            await wait_for(asked_again, 60, "the hung scan asked again")

            # 4. Valid JSON, fields of the wrong type (an lt as a string).
            spoiled = begin("wrong types")
            tonapi.fail("wrong_type", times=None)
            await served(spoiled, 3, scans=True)

            # Healthy again.
            assert datetime.now(UTC) > in_time.expires_at  # its window closed meanwhile
            begin("healed")
            healed = time.monotonic()
            healed_at = datetime.now(UTC)
            effects = await wait_until_done(store, workload, seconds=60)
            confirmed_after = time.monotonic() - healed

            async def expired() -> PaymentExpired | None:
                for recorded in await store.read_stream(payment_stream(never.payment_id)):
                    if isinstance(recorded.event, PaymentExpired):
                        return recorded.event
                return None

            expiry = await wait_for(expired, 60, "the unpaid short-window payment expired")

            async def recovered() -> HealthChecked | None:
                later = [v for p, v in await _verdicts(store) if p > failed_at and v.healthy]
                return later[0] if later else None

            recovery = await wait_for(recovered, 60, "health: recovered")
            recovered_after = (recovery.checked_at - healed_at).total_seconds()

            async def told() -> bool:
                texts = [m.text for m in bot_api.sent if m.chat_id == ADMIN]
                return any("FAILING" in t and "tonapi" in t for t in texts) and any(
                    "RECOVERED" in t for t in texts
                )

            await wait_for(told, 60, "the admin told: FAILING (tonapi), then RECOVERED")
            lifecycle = {
                name: [r.event for r in await store.read_stream(actor_stream(name))]
                for name in PRODUCT_ACTORS
            }
            assert worker.alive, worker.output()
            took = await stop(worker)
        # Counted again once the worker is gone (polled: the log is read in commit order, and
        # other tests' transactions on the server may hold its tail back a moment).
        final = await wait_until_done(store, workload, seconds=60)
        never_history = [r.event for r in await store.read_stream(payment_stream(never.payment_id))]

        # No crash loop: the faults never reached the supervisor.
        crashes = {n: sum(isinstance(e, ActorCrashed) for e in h) for n, h in lifecycle.items()}
        assert crashes["PaymentMonitor"] == 0, lifecycle["PaymentMonitor"]
        assert crashes["HealthChecker"] == 0, lifecycle["HealthChecker"]
        parked = [n for n, h in lifecycle.items() if any(isinstance(e, ActorParked) for e in h)]
        assert not parked, parked

        # Paced retries: after every 429 each asker waited RETRY_AFTER before asking again;
        # only a new scan (the next tick) may follow at once, never two in a row. Two ask for
        # the wallet's transactions: the PaymentMonitor from its cursor and Cleanup's daily
        # reconciliation from where the last one ended; neither can move during the storm,
        # so the range each asks from tells them apart.
        askers: dict[str, list[float]] = {}
        for at, r in storm.requests(log):
            if _scan(r):
                askers.setdefault(r.query.get("after_lt", ""), []).append(at)
        monitor_scans = max(askers.values(), key=len)
        storm_gaps = gaps(monitor_scans)
        waited = [g for g in storm_gaps if g >= RETRY_AFTER * 0.9]
        assert len(waited) >= 3, storm_gaps
        for scans in askers.values():
            short = [g < RETRY_AFTER * 0.9 for g in gaps(scans)]
            assert not any(a and b for a, b in itertools.pairwise(short)), gaps(scans)
        # A hung request was given up after the client's timeout, then asked again.
        hung = hanging.requests(log)
        first = next(i for i, (_, r) in enumerate(hung) if _scan(r))
        assert first < 2, "the first scan of the phase was one of the two hung requests"
        asker = hung[first][1].query.get("after_lt")  # the same asker's next scan (see above)
        retried = next(
            at for at, r in hung[first + 1 :] if _scan(r) and r.query.get("after_lt") == asker
        )
        timeout_gap = retried - hung[first][0]
        assert timeout_gap >= CLIENT_TIMEOUT * 0.95, timeout_gap

        # Health: TonAPI failing during the faults, recovered after; checked while failing.
        assert not failing_verdict.healthy
        assert recovery.healthy
        assert recovery.checked_at >= healed_at

        # Money: every paid payment confirmed exactly once (the one paid in time included,
        # though its window closed during the faults); the unpaid one expired, after healing.
        assert_exactly_once(workload, effects)
        assert_exactly_once(workload, final)
        assert [type(e).__name__ for e in never_history] == ["PaymentCreated", "PaymentExpired"]
        assert expiry.expired_at >= healed_at
        report = await assert_audit_clean(env)
        summary = report.summary
        assert summary.payments_created == len(workload.payments) + 1
        assert summary.payments_confirmed == len(workload.paid)
        assert summary.payments_expired == 1
        assert summary.rewards_credited == summary.rewards_earned == len(workload.rewards)

        others = [round(g, 2) for g in storm_gaps if g < RETRY_AFTER * 0.9]
        print(
            "tonapi faults: "
            + "; ".join(phase.summary(log) for phase in phases[:-1])
            + f"\n  health failing seen {failing_seen:.1f}s into the 500s; 429 storm: "
            f"{len(waited)} of {len(storm_gaps)} gaps >= Retry-After {RETRY_AFTER:g}s "
            f"(min {min(waited):.2f}s), the others (a new scan) {others}"
            f"; hung request retried after {timeout_gap:.1f}s\n"
            f"  after healing: payments confirmed in {confirmed_after:.1f}s, the unpaid one "
            f"expired {(expiry.expired_at - healed_at).total_seconds():.1f}s after, health "
            f"recovered {recovered_after:.1f}s after; crashes {crashes}; "
            f"{len(workload.paid)} paid payments, {len(workload.rewards)} rewards "
            f"({len(during)} credited during the faults); SIGTERM exit in {took:.1f}s"
        )
