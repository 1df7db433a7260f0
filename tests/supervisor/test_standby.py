"""A node standing by for a lease another node holds, on virtual time (:mod:`ops.simulate`).

It asks again when the holder's grant can expire, or as soon as the lease is handed back,
instead of every ``acquire_interval``: these tests count its tries and read the virtual clock
at which it took the lease, so the take-over bounds are checked exactly and without waiting.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import anyio
import pytest

from ops.simulate import run
from store.leases import Lease, Leases
from store.memory import MemoryLog
from supervisor import Supervisor
from tests.supervisor.test_supervisor import spec

TTL = 10.0
INTERVAL = 1.0


class CountedLeases(Leases):
    """Leases that note the virtual time of each look: a try (``acquire``) or a question for
    the holder's expiry alone (``expires_in`` after a wait that ran out: "E" in ``looks``)."""

    def __init__(self, log: MemoryLog, holder: str) -> None:
        super().__init__(log, holder, ttl=TTL)
        self.tries: list[float] = []
        self.looks: list[tuple[str, float]] = []

    async def acquire(self, name: str) -> Lease | None:
        self.tries.append(anyio.current_time())
        self.looks.append(("A", anyio.current_time()))
        return await super().acquire(name)

    async def expires_in(self, name: str) -> float | None:
        self.looks.append(("E", anyio.current_time()))
        return await super().expires_in(name)


def counted_node(log: MemoryLog, name: str) -> tuple[Supervisor, CountedLeases]:
    """A supervisor of Solo, and its leases, which note its looks."""
    supervisor = Supervisor(
        log, [spec("Solo")], node=name, lease_ttl=TTL, acquire_interval=INTERVAL
    )
    counted = CountedLeases(log, supervisor.holder)
    supervisor.leases = counted
    return supervisor, counted


def node(log: MemoryLog, name: str) -> tuple[Supervisor, list[float]]:
    """A supervisor of Solo, and the virtual times of its lease tries."""
    supervisor, counted = counted_node(log, name)
    return supervisor, counted.tries


def test_a_standby_asks_once_per_lease_and_takes_a_handed_back_lease_at_once() -> None:
    async def main() -> tuple[list[tuple[str, float]], float, float]:
        log = MemoryLog()
        a, _ = node(log, "a")
        b, counted = counted_node(log, "b")
        async with anyio.create_task_group() as tg:
            a_scope = anyio.CancelScope()

            async def run_a() -> None:
                with a_scope:
                    await a.run()

            tg.start_soon(run_a)
            await a.wait_started("Solo")
            tg.start_soon(b.run)
            await anyio.sleep(60.0)  # a renews four times per lease meanwhile
            assert b.ref("Solo") is None
            handed_back = anyio.current_time()
            a_scope.cancel()  # SIGTERM: a stops Solo and hands its lease back
            await b.wait_started("Solo")
            taken = anyio.current_time()
            tg.cancel_scope.cancel()
        return counted.looks, handed_back, taken

    looks, handed_back, taken = run(main, seed=1).value
    standing_by = [(kind, at) for kind, at in looks if at < handed_back]
    # Polling every second would have asked 60 times; a live holder's grant is always 7.5 to
    # 10 s ahead (renewed every TTL / 4), so b looks about once per 7.5 s.
    assert 60.0 / TTL <= len(standing_by) <= 60.0 / (TTL * 3 / 4) + 3, standing_by
    # One try, refused (and the expiry asked after it); from then on, each wait that ran out
    # is followed by a question for the expiry alone, the holder having renewed meanwhile.
    assert [kind for kind, _ in standing_by[:2]] == ["A", "E"], standing_by
    later = standing_by[2:]
    assert later, standing_by
    assert all(kind == "E" for kind, _ in later), standing_by
    # Woken by the release, not by its next look: in the same virtual instant.
    assert taken == handed_back
    assert looks[-1] == ("A", handed_back)


def test_a_dead_holders_lease_is_taken_within_the_interval_of_its_expiry() -> None:
    async def main() -> tuple[list[float], float, float]:
        log = MemoryLog()
        ghost = Leases(log, "ghost", ttl=TTL)  # takes the lease once, never renews: dead
        b, tries = node(log, "b")
        async with anyio.create_task_group() as tg:
            await anyio.sleep(3.0)
            taken_by_ghost = anyio.current_time()
            assert await ghost.acquire("Solo") is not None
            tg.start_soon(b.run)
            await b.wait_started("Solo")
            taken = anyio.current_time()
            tg.cancel_scope.cancel()
        return tries, taken_by_ghost, taken

    # The log's clock is the run's virtual one: the lease expires TTL after the grant.
    tries, granted, taken = run(main, seed=2).value
    expiry = granted + TTL
    assert expiry <= taken <= expiry + INTERVAL, (granted, taken)
    assert len(tries) <= 3, tries  # the refused try, then the one at its expiry (or next)


def test_a_node_renews_all_its_leases_in_one_statement_a_round() -> None:
    """Three actors on one node: one renewal statement every quarter of the time to live for
    all three (not one each), and every lease is still live and held at the end."""

    class Renewals(Leases):
        def __init__(self, log: MemoryLog, holder: str) -> None:
            super().__init__(log, holder, ttl=TTL)
            self.rounds: list[tuple[float, tuple[str, ...]]] = []

        async def renew(self, lease: Lease) -> bool:
            raise AssertionError("a node renews its leases all at once")

        async def renew_all(self, leases: Sequence[Lease]) -> set[str]:
            self.rounds.append((anyio.current_time(), tuple(sorted(x.name for x in leases))))
            return await super().renew_all(leases)

    async def main() -> tuple[list[tuple[float, tuple[str, ...]]], list[str | None]]:
        log = MemoryLog()
        names = ("One", "Two", "Three")
        supervisor = Supervisor(
            log, [spec(n) for n in names], node="a", lease_ttl=TTL, acquire_interval=INTERVAL
        )
        renewals = Renewals(log, supervisor.holder)
        supervisor.leases = renewals
        async with anyio.create_task_group() as tg:
            tg.start_soon(supervisor.run)
            for name in names:
                await supervisor.wait_started(name)
            await anyio.sleep(60.0)
            holders = [log.lease_holder(name) for name in names]
            tg.cancel_scope.cancel()
        return renewals.rounds, holders

    rounds, holders = run(main, seed=3).value
    assert holders == [holders[0]] * 3
    assert holders[0] is not None
    assert 60.0 / (TTL / 4) - 1 <= len(rounds) <= 60.0 / (TTL / 4) + 1, rounds
    assert all(names == ("One", "Three", "Two") for _, names in rounds), rounds
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(rounds)]
    assert all(gap == pytest.approx(TTL / 4, abs=0.1) for gap in gaps), gaps
