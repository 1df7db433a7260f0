"""Fault scenario: the TON Streaming API misbehaving under a real worker; then healthy again.

A worker (``i3lani run``, the product actors, the stream on by default) polls every
:data:`POLL` seconds, slowly enough that a payment confirmed within moments of its transfer
was woken by the stream. Users pay in phases, each against another misbehaviour of the
stand-in's streaming endpoint:

1. **healthy**: each transfer is confirmed before the next poll could have run;
2. **dropped**, TonAPI refusing reconnections with 429 for a while (the old connection still
   counted): the transfers made while no stream is open are found by the scan after the
   reconnection, or by polling;
3. **stalled**: the connection stays open but silent, not even keepalives: taken for dead
   after ``I3LANI_TONAPI_STREAM_SILENCE``, reconnected, scanned;
4. **garbage** between the messages: ignored, the notices still wake scans at once;
5. **refused** outright (429 to every connection): polling alone confirms.

Verdicts: no crash, no parking, the worker lived throughout; every paid payment confirmed
exactly once by its own transfer and activated once, nothing else confirmed; never more than
one stream open at a time; the reconnections backed off (no two attempts within the minimum
backoff); health never failed for the stream (its check is at most a warning); ``i3lani
audit`` is clean.

Figures (printed; run with ``-s``): each phase's confirmation delays and the reconnections.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Sequence
from datetime import datetime

import anyio
import pytest

from actors.health import HEALTH_STREAM
from events import ActorCrashed, ActorParked, HealthChecked, PaymentConfirmed
from events.streams import actor_stream, payment_stream
from ops.standins import TonApiStandIn
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

pytestmark = [*FAULTS]

POLL = 6.0
"""Seconds between the worker's scans when nothing wakes it."""
SILENCE = 1.5
"""I3LANI_TONAPI_STREAM_SILENCE: seconds of silence that end a connection."""
KEEPALIVE = 0.3
"""The stand-in's keepalive interval (TonAPI's is 15 s; the silence allowed is 3 of them)."""


async def _confirmed_at(store: EventStore, payment_id: int) -> datetime | None:
    for recorded in await store.read_stream(payment_stream(payment_id)):
        if isinstance(recorded.event, PaymentConfirmed):
            return recorded.recorded_at
    return None


async def _pay(tonapi: TonApiStandIn, seeder: Seeder, count: int) -> list[tuple[int, float]]:
    """``count`` payments created (and the scan each creation asks for let pass), then paid
    on the chain: ``(payment id, wall-clock time of its transfer)`` for each."""
    created = await seeder.payments(count, paid=0)
    await anyio.sleep(2.0)  # the scan the creations asked for (within a second) has run
    paid: list[tuple[int, float]] = []
    for payment_id in created:
        memo = f"i3lani_{payment_id}"
        at = time.time()
        tx = tonapi.transfer(WALLET, source=PAYER, value=seeder.plan.price_nanotons, comment=memo)
        seeder.workload.unpaid.discard(payment_id)
        seeder.workload.paid[payment_id] = tx["hash"]
        paid.append((payment_id, at))
    return paid


async def _delays(
    store: EventStore, paid: Sequence[tuple[int, float]], seconds: float
) -> list[float]:
    """Seconds from each transfer to its PaymentConfirmed (waits for all of them)."""

    async def all_confirmed() -> list[float] | None:
        delays = []
        for payment_id, at in paid:
            confirmed = await _confirmed_at(store, payment_id)
            if confirmed is None:
                return None
            delays.append(confirmed.timestamp() - at)
        return delays

    return await wait_for(all_confirmed, seconds, f"{len(paid)} payments confirmed")


@pytest.mark.timeout(240)
async def test_the_stream_misbehaving_then_healthy(
    dsn: str, store: EventStore, clean_env: dict[str, str]
) -> None:
    rng = random.Random(fault_seed())
    async with standins() as (tonapi, bot_api):
        tonapi.stream.keepalive = KEEPALIVE
        env = fault_env(
            dsn,
            clean_env,
            tonapi,
            bot_api,
            I3LANI_PAYMENT_INTERVAL=str(POLL),
            I3LANI_TONAPI_STREAM_SILENCE=str(SILENCE),
        )
        seeder = Seeder(store, tonapi, bot_api, rng=rng, concurrency=5)
        workload = seeder.workload
        await seeder.rewards(5)
        figures: dict[str, list[float]] = {}
        async with running_workers(env) as workers:
            worker = await workers.start("node-a", PRODUCT)
            await wait_for(
                lambda: _true(bool(tonapi.stream.connections)), 60, "the worker's stream open"
            )

            # 1. Healthy: confirmed before the next poll could have run.
            figures["healthy"] = await _delays(store, await _pay(tonapi, seeder, 4), 30)
            assert max(figures["healthy"]) < POLL / 2, figures["healthy"]

            # 2. Dropped; reconnections refused with 429 for 3 s (Retry-After 1).
            tonapi.stream.drop(cooldown=3.0, retry_after=1.0)
            figures["dropped"] = await _delays(store, await _pay(tonapi, seeder, 3), 60)
            await wait_for(
                lambda: _true(bool(tonapi.stream.connections)), 60, "the stream open again"
            )

            # 3. Stalled: open, silent. Taken for dead after SILENCE; heal once it was.
            opened = len(tonapi.stream.requests)
            tonapi.stream.stall()
            stalled = await _pay(tonapi, seeder, 3)
            await wait_for(
                lambda: _true(len(tonapi.stream.requests) > opened), 60, "a reconnection"
            )
            tonapi.stream.heal()
            figures["stalled"] = await _delays(store, stalled, 60)

            # 4. Garbage around every message: the notices still wake a scan at once.
            await wait_for(
                lambda: _true(bool(tonapi.stream.connections)), 60, "the stream open again"
            )
            await anyio.sleep(0.5)  # subscribed, and the scan after it done
            tonapi.stream.garbage()
            figures["garbage"] = await _delays(store, await _pay(tonapi, seeder, 3), 30)
            assert max(figures["garbage"]) < POLL / 2, figures["garbage"]
            tonapi.stream.heal()

            # 5. Refused outright: polling alone, until the worker has been refused again
            # (its backoff, grown by the faults above, can outlast the payments' confirmation).
            refusals = _refusals(tonapi)
            tonapi.stream.refuse(None, retry_after=0.5)
            tonapi.stream.drop()
            figures["refused"] = await _delays(store, await _pay(tonapi, seeder, 3), 60)
            await wait_for(
                lambda: _true(_refusals(tonapi) > refusals), 60, "a refused reconnection"
            )
            assert tonapi.stream.connections == set()
            tonapi.stream.heal()

            effects = await wait_until_done(store, workload, seconds=60)
            health = [
                r.event
                for r in await store.read_stream(HEALTH_STREAM)
                if isinstance(r.event, HealthChecked)
            ]
            lifecycle = {
                name: [r.event for r in await store.read_stream(actor_stream(name))]
                for name in PRODUCT.split(",")
            }
            assert worker.alive, worker.output()
            await stop(worker)
        final = await wait_until_done(store, workload, seconds=60)

        crashed = [e for h in lifecycle.values() for e in h if isinstance(e, ActorCrashed)]
        assert not crashed, crashed
        parked = [e for h in lifecycle.values() for e in h if isinstance(e, ActorParked)]
        assert not parked, parked
        assert_exactly_once(workload, effects)
        assert_exactly_once(workload, final)
        # The stream is never a failing check: a warning at most.
        stream_checks = [c for v in health for c in v.checks if c.name == "stream"]
        assert all(c.ok for c in stream_checks), stream_checks
        # One stream at a time; reconnections refused among them, and backed off (the
        # worker's backoff starts at 1 s, jittered up from there).
        assert tonapi.stream.most_open == 1
        answered = [r.answered for r in tonapi.stream.requests]
        assert answered.count(429) >= 2, answered
        assert answered.count(200) >= 3, answered
        attempts = [r.at for r in tonapi.stream.requests]
        between = [later - earlier for earlier, later in itertools.pairwise(attempts)]
        assert min(between) >= 0.9, between
        assert (await count_effects(store)).confirmed == final.confirmed
        await assert_audit_clean(env, workload)
        print(
            "stream faults: confirmation delays (s) "
            + "; ".join(
                f"{name} " + ", ".join(f"{d:.2f}" for d in delays)
                for name, delays in figures.items()
            )
            + f"\n  {len(answered)} subscriptions asked, {answered.count(429)} refused (429); "
            f"poll interval {POLL:g}s"
        )


async def _true(value: bool) -> bool:
    return value


def _refusals(tonapi: TonApiStandIn) -> int:
    return sum(r.answered == 429 for r in tonapi.stream.requests)
