"""Leases: which node runs which actor, with a fencing generation and a clock of its own.

A node runs an actor only while it holds the actor's lease; it renews the lease well before
it expires and hands it back when it stops. A node that dies simply stops renewing, and
another node takes the lease once it has expired. Every grant bumps the generation, and
writes made under a lease carry it (:class:`store.Fence`), so a node that lost its lease
without noticing (a long pause, a partition) cannot write: the store refuses the write with
:class:`events.errors.StaleGeneration`. Expiry is judged by PostgreSQL's ``now()``.

**Self-fencing.** A node must also stop acting *before* its lease can be granted elsewhere,
even when it cannot reach the database to learn that it lost it (a network cut), and a node
resumed after a pause must never write first and check later. So each grant comes with a
:class:`~store.eventstore.LeaseClock`: a deadline on this process's monotonic clock, set to
the moment the grant (or the last confirmed renewal) was *sent*, plus the time to live, less
a safety margin (:func:`safety_margin`). The server counts the lease's expiry from when it
*received* that statement, which is later, so the local deadline always comes first. Every
fenced write checks the clock right before it is sent (and a transaction again right before
its COMMIT); the supervisor stops the actor when the clock runs out.

**Standing by.** A node that wants a lease another node holds does not ask again every
second: :meth:`Leases.expires_in` tells it when the holder's grant can expire at the earliest
(by the database's clock, as seconds from now, so no clock of the nodes is trusted), and it
asks again then, or as soon as the lease is handed back: :meth:`Leases.release_listener`
follows the releases (NOTIFY ``i3lani_leases`` on PostgreSQL, sent by ``lease_release``; a
callback on the in-memory log). A live holder renews four times per time to live, so its
grant is always most of a time to live ahead and a standby asks about once per time to live;
a dead holder's lease is taken within the standby's minimum interval of its expiry, the same
bound as polling gave (the try before the expiry saw the expiry, or one earlier than it, and
the next is due then). A notification lost with its connection is made up for: the listener
says so (``on_lost``), and a node that cannot listen polls as before. When its wait runs out
the holder has usually renewed, so the standby asks :meth:`Leases.expires_in` again first
and tries only once the grant has expired.

**Renewing.** A holder renews every lease it holds in one statement,
:meth:`Leases.renew_all` (the supervisor's lease keeper, four times per time to live): the
names it answers were renewed, and their clocks moved on; a lease missing from the answer
was lost (taken over, expired, released).

**Bounded waits.** Lease statements run on the store's lease connection (never starved by a
busy pool) whose ``lock_timeout`` is short (:mod:`store.limits`): a take-over that meets a row lock
held by a frozen node's open transaction gives up at once and tries again on the next round,
instead of queueing behind it; that transaction is itself ended by the idle-transaction bound,
which is shorter than the lease.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Final, Protocol

import asyncpg
import msgspec

from events import environment
from events.errors import StoreUnavailable
from store.driver import driver_errors
from store.eventstore import EventStore, Fence, LeaseClock
from store.memory import MemoryLog
from store.queries import query

__all__ = [
    "LEASES_CHANNEL",
    "Lease",
    "LeaseInfo",
    "Leases",
    "ReleaseListener",
    "safety_margin",
]

LEASES_CHANNEL: Final = "i3lani_leases"
"""The NOTIFY channel ``lease_release`` announces a handed-back lease's name on."""


class ReleaseListener(Protocol):
    """A follower of lease releases (:meth:`Leases.release_listener`): ``listen()`` before
    each look (it starts listening, or tries again after a refusal; False when it was
    listening already or cannot), ``listening`` whether a release would reach it now."""

    @property
    def listening(self) -> bool: ...

    async def listen(self) -> bool: ...

    async def close(self) -> None: ...


def safety_margin(ttl: float) -> float:
    """Seconds before its lease could expire on the server at which a node stops acting under
    it: a tenth of the time to live, and at least 0.2 s (scheduling delays, clock rate) for a
    lease long enough to spare it (a quarter of it at most)."""
    return max(min(0.2, ttl / 4), ttl / 10)


class Lease(msgspec.Struct, frozen=True):
    """A lease this node was granted."""

    name: str
    node: str
    generation: int
    clock: LeaseClock | None = None

    @property
    def fence(self) -> Fence:
        return Fence(self.name, self.generation, self.clock)


class LeaseInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A lease as stored, for status displays."""

    name: str
    node: str | None
    generation: int
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime
    live: bool
    suspect: bool = False
    """Held and not expired, but not renewed for over half its time to live: its holder renews
    four times per time to live, so it missed renewals. A frozen node, or one cut off from the
    database, looks like this until its lease expires."""
    renewed_seconds_ago: float = 0.0
    """By the database's clock, like every lease time."""


class Leases:
    """Lease operations on the store's database, for one holder."""

    def __init__(self, store: EventStore | MemoryLog, node: str, ttl: float = 10.0) -> None:
        if ttl <= 0:
            raise ValueError("a lease's time to live must be positive")
        self.store = store
        self.node = node
        self.ttl = ttl
        self.margin = safety_margin(ttl)

    async def _fetchval(self, name: str, *args: object) -> object:
        return await self.store.lease_fetchval(name, *args)

    def _clock_from(self, sent: float) -> LeaseClock:
        return LeaseClock(sent + self.ttl - self.margin)

    async def acquire(self, name: str) -> Lease | None:
        """Take ``name`` if it is free or already ours (bumping the generation); None if
        another node holds it, or a lock on it is held (a frozen node's open transaction:
        try again later)."""
        sent = environment.monotonic()
        try:
            generation = await self._fetchval("lease_acquire", name, self.node, self.ttl)
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, asyncpg.exceptions.LockNotAvailableError):
                return None
            raise
        if generation is None:
            return None
        assert isinstance(generation, int)
        return Lease(name, self.node, generation, self._clock_from(sent))

    async def renew(self, lease: Lease) -> bool:
        """Extend our grant (and its clock); False when it was lost (expired, taken over, or
        released)."""
        sent = environment.monotonic()
        renewed = await self._fetchval(
            "lease_renew", lease.name, lease.node, lease.generation, self.ttl
        )
        if renewed is None:
            return False
        if lease.clock is not None:
            lease.clock.extend(sent + self.ttl - self.margin)
        return True

    async def renew_all(self, leases: Sequence[Lease]) -> set[str]:
        """Extend every grant in ``leases`` (all ours) in one statement, and their clocks:
        the names renewed. A name missing was lost (expired, taken over, or released)."""
        if not leases:
            return set()
        if any(lease.node != self.node for lease in leases):
            raise ValueError("renew_all renews this holder's own leases only")
        if len({lease.name for lease in leases}) != len(leases):
            raise ValueError("renew_all takes one generation of each lease")
        sent = environment.monotonic()
        renewed = await self._fetchval(
            "lease_renew_many",
            self.node,
            [lease.name for lease in leases],
            [lease.generation for lease in leases],
            self.ttl,
        )
        assert isinstance(renewed, list)
        names = {str(name) for name in renewed}
        for lease in leases:
            if lease.name in names and lease.clock is not None:
                lease.clock.extend(sent + self.ttl - self.margin)
        return names

    async def expires_in(self, name: str) -> float | None:
        """Seconds until the current grant of ``name`` can expire, by the database's clock (0
        once it has); None when nobody holds it. Asked after :meth:`acquire` was refused: the
        earliest moment another try can succeed, unless the holder hands the lease back."""
        remaining = await self._fetchval("lease_expires_in", name)
        if remaining is None:
            return None
        assert isinstance(remaining, float)
        return remaining

    def release_listener(
        self,
        on_release: Callable[[str], None],
        *,
        on_lost: Callable[[], None],
        who: str,
        poll_interval: float,
    ) -> ReleaseListener:
        """Follow lease releases: ``on_release(name)`` for each lease handed back, by any node,
        once :meth:`ReleaseListener.listen` was called; ``on_lost()`` when releases may have
        been missed (the LISTEN connection dropped). ``who`` and ``poll_interval`` (how often
        the follower asks while it cannot listen) are for the log line a refusal writes."""
        if isinstance(self.store, MemoryLog):
            return self.store.lease_listener(on_release)
        return self.store.listener(
            LEASES_CHANNEL,
            on_notify=on_release,
            on_lost=on_lost,
            who=who,
            poll_interval=poll_interval,
        )

    async def release(self, lease: Lease) -> bool:
        """Hand the lease back so another node can take it at once."""
        if lease.clock is not None:
            lease.clock.revoke("the lease was handed back")
        released = await self._fetchval("lease_release", lease.name, lease.node, lease.generation)
        return released is not None

    async def all(self) -> list[LeaseInfo]:
        if isinstance(self.store, MemoryLog):
            return [LeaseInfo(**info) for info in await self.store.lease_infos()]  # type: ignore[arg-type]
        with driver_errors(what="reading the leases"):
            records = await self.store._pool.fetch(query("leases"))
        return [LeaseInfo(**dict(record)) for record in records]
