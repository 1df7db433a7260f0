"""A node standing by for a lease another node holds, on virtual time (:mod:`ops.simulate`).

It asks again when the holder's grant can expire, or as soon as the lease is handed back,
instead of every ``acquire_interval``: these tests count its tries and read the virtual clock
at which it took the lease, so the take-over bounds are checked exactly and without waiting.
"""

from __future__ import annotations

import anyio

from ops.simulate import run
from store.leases import Lease, Leases
from store.memory import MemoryLog
from supervisor import Supervisor
from tests.supervisor.test_supervisor import spec

TTL = 10.0
INTERVAL = 1.0


class CountedLeases(Leases):
    """Leases that note the virtual time of each try."""

    def __init__(self, log: MemoryLog, holder: str) -> None:
        super().__init__(log, holder, ttl=TTL)
        self.tries: list[float] = []

    async def acquire(self, name: str) -> Lease | None:
        self.tries.append(anyio.current_time())
        return await super().acquire(name)


def node(log: MemoryLog, name: str) -> tuple[Supervisor, list[float]]:
    """A supervisor of Solo, and the virtual times of its lease tries."""
    supervisor = Supervisor(
        log, [spec("Solo")], node=name, lease_ttl=TTL, acquire_interval=INTERVAL
    )
    counted = CountedLeases(log, supervisor.holder)
    supervisor.leases = counted
    return supervisor, counted.tries


def test_a_standby_asks_once_per_lease_and_takes_a_handed_back_lease_at_once() -> None:
    async def main() -> tuple[list[float], float, float]:
        log = MemoryLog()
        a, _ = node(log, "a")
        b, tries = node(log, "b")
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
        return tries, handed_back, taken

    tries, handed_back, taken = run(main, seed=1).value
    standing_by = [at for at in tries if at < handed_back]
    # Polling every second would have asked 60 times; a live holder's grant is always 7.5 to
    # 10 s ahead (renewed every TTL / 4), so b asks about once per 7.5 s.
    assert 60.0 / TTL <= len(standing_by) <= 60.0 / (TTL * 3 / 4) + 2, standing_by
    # Woken by the release, not by its next look: in the same virtual instant.
    assert taken == handed_back
    assert tries[-1] == handed_back


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
