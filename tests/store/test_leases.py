"""Leases, on both logs: who may run an actor, with a generation that fences the others.

PostgreSQL judges a lease's expiry by its own ``now()``; the in-memory log by its ``clock``
(the wall clock here), so the expiry tests wait out a short time to live in real time.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import anyio
import pytest

from events import RewardEarned
from events.errors import StaleGeneration
from store import EventStore
from store.leases import Leases
from store.memory import MemoryLog
from store.port import EventLog

TTL = 0.4


def leases(log: EventLog, node: str, ttl: float = 30.0) -> Leases:
    assert isinstance(log, EventStore | MemoryLog)
    return Leases(log, node, ttl=ttl)


def reward() -> RewardEarned:
    return RewardEarned(
        reward_id=uuid.uuid4(),
        user_id=1,
        amount_nanotons=5,
        reason="referral",
        source="user-2",
        earned_at=datetime.now(UTC),
    )


async def test_a_free_lease_goes_to_the_first_node_and_not_to_another_while_it_lives(
    log: EventLog,
) -> None:
    a, b = leases(log, "a"), leases(log, "b")
    first = await a.acquire("Solo")
    assert first is not None
    assert (first.node, first.generation) == ("a", 1)
    assert await b.acquire("Solo") is None
    again = await a.acquire("Solo")  # a new incarnation on the same node: a new generation
    assert again is not None
    assert again.generation == 2
    [info] = await a.all()
    assert (info.name, info.node, info.generation, info.live) == ("Solo", "a", 2, True)


async def test_renewal_keeps_only_the_current_generation(log: EventLog) -> None:
    a = leases(log, "a")
    old = await a.acquire("Solo")
    new = await a.acquire("Solo")
    assert old is not None
    assert new is not None
    assert await a.renew(new)
    assert not await a.renew(old)


async def test_one_statement_renews_every_live_grant_of_ours_and_names_them(
    log: EventLog,
) -> None:
    """``renew_all``: what each ``renew`` would have said, for all of a node's leases at once:
    the current generations of ours are renewed (and their clocks moved on); a superseded
    generation, a lease taken over after it expired and a released one are not."""
    a, b = leases(log, "a", ttl=TTL), leases(log, "b", ttl=TTL)
    kept = await a.acquire("Kept")
    old = await a.acquire("Again")
    new = await a.acquire("Again")
    released = await a.acquire("Released")
    expiring = await a.acquire("Expiring")
    assert kept is not None
    assert old is not None
    assert new is not None
    assert released is not None
    assert expiring is not None
    assert await a.release(released)
    assert await a.renew_all([]) == set()
    assert await a.renew_all([kept, old, released, expiring]) == {"Kept", "Expiring"}
    assert await a.renew_all([kept, new, released, expiring]) == {"Kept", "Again", "Expiring"}
    with pytest.raises(ValueError, match="one generation"):
        await a.renew_all([old, new])
    await anyio.sleep(TTL * 0.75)
    assert await a.renew_all([kept, new]) == {"Kept", "Again"}  # Expiring is left to expire
    await anyio.sleep(TTL * 0.5)
    assert kept.clock is not None
    assert kept.clock.valid()  # moved on by the renewals
    taken = await b.acquire("Expiring")
    assert taken is not None
    assert await a.renew_all([kept, new, expiring]) == {"Kept", "Again"}
    assert await a.renew(kept)  # and each alone says the same
    assert not await a.renew(expiring)
    with pytest.raises(ValueError, match="own leases"):
        await a.renew_all([taken])


async def test_a_released_lease_is_free_at_once_and_fences_its_old_holder(
    log: EventLog,
) -> None:
    a, b = leases(log, "a"), leases(log, "b")
    held = await a.acquire("Solo")
    assert held is not None
    assert await a.release(held)
    assert not await a.release(held)  # handed back already
    taken = await b.acquire("Solo")
    assert taken is not None
    assert taken.generation == held.generation + 1
    with pytest.raises(StaleGeneration):
        await log.append("reward-1", [reward()], fence=held.fence)
    await log.append("reward-1", [reward()], fence=taken.fence)
    assert await log.stream_version("reward-1") == 1


async def test_an_expired_lease_can_be_taken_over_and_cannot_be_renewed(log: EventLog) -> None:
    a, b = leases(log, "a", ttl=TTL), leases(log, "b", ttl=TTL)
    held = await a.acquire("Solo")
    assert held is not None
    assert held.clock is not None
    assert held.clock.valid()
    await anyio.sleep(TTL + 0.2)
    assert not held.clock.valid()  # the holder stopped itself before the server let go
    [info] = await b.all()
    assert not info.live
    taken = await b.acquire("Solo")
    assert taken is not None
    assert taken.node == "b"
    assert not await a.renew(held)


async def test_expires_in_says_when_a_held_lease_can_expire_and_none_once_it_is_free(
    log: EventLog,
) -> None:
    a, b = leases(log, "a"), leases(log, "b")
    assert await b.expires_in("Solo") is None  # never granted
    held = await a.acquire("Solo")
    assert held is not None
    remaining = await b.expires_in("Solo")
    assert remaining is not None
    assert 0 < remaining <= 30.0  # the time to live, by the database's clock
    assert await a.release(held)
    assert await b.expires_in("Solo") is None  # handed back: free at once


async def test_a_release_is_announced_to_listeners_and_a_refused_one_is_not(log: EventLog) -> None:
    a, b = leases(log, "a"), leases(log, "b")
    heard: list[str] = []
    duo_heard = anyio.Event()

    def on_release(name: str) -> None:
        heard.append(name)
        if name == "Duo":
            duo_heard.set()

    listener = b.release_listener(
        on_release, on_lost=lambda: None, who="test standby", poll_interval=1.0
    )
    assert await listener.listen()
    assert listener.listening
    assert not await listener.listen()  # listening already
    try:
        solo, duo = await a.acquire("Solo"), await a.acquire("Duo")
        assert solo is not None
        assert duo is not None
        assert await a.renew(solo)  # a renewal announces nothing
        assert await a.release(solo)
        assert not await a.release(solo)  # refused: not ours any more, nothing announced
        assert await a.release(duo)
        with anyio.fail_after(10):  # a bound on a hang, not a timing: NOTIFY is asynchronous
            await duo_heard.wait()
    finally:
        await listener.close()
    assert heard == ["Solo", "Duo"]  # in commit order, once each
    assert not listener.listening
