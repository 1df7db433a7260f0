"""Leases: which node runs which actor, with a fencing generation.

A node runs an actor only while it holds the actor's lease; it renews the lease well before
it expires and hands it back when it stops. A node that dies simply stops renewing, and
another node takes the lease once it has expired. Every grant bumps the generation, and
appends made under a lease carry it (:class:`store.Fence`), so a node that lost its lease
without noticing (a long pause, a partition) cannot write: the store refuses the append with
:class:`events.errors.StaleGeneration`. All times are PostgreSQL's ``now()``.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from store.eventstore import EventStore, Fence
from store.queries import query

__all__ = ["Lease", "LeaseInfo", "Leases"]


class Lease(msgspec.Struct, frozen=True):
    """A lease this node was granted."""

    name: str
    node: str
    generation: int

    @property
    def fence(self) -> Fence:
        return Fence(self.name, self.generation)


class LeaseInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A lease as stored, for status displays."""

    name: str
    node: str | None
    generation: int
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime
    live: bool


class Leases:
    """Lease operations on the store's database."""

    def __init__(self, store: EventStore, node: str, ttl: float = 10.0) -> None:
        if ttl <= 0:
            raise ValueError("a lease's time to live must be positive")
        self.store = store
        self.node = node
        self.ttl = ttl

    async def acquire(self, name: str) -> Lease | None:
        """Take ``name`` if it is free or already ours (bumping the generation); None if
        another node holds it."""
        generation = await self.store.pool.fetchval(
            query("lease_acquire"), name, self.node, self.ttl
        )
        return None if generation is None else Lease(name, self.node, generation)

    async def renew(self, lease: Lease) -> bool:
        """Extend our grant; False when it was lost (expired, taken over, or released)."""
        renewed = await self.store.pool.fetchval(
            query("lease_renew"), lease.name, lease.node, lease.generation, self.ttl
        )
        return renewed is not None

    async def release(self, lease: Lease) -> bool:
        """Hand the lease back so another node can take it at once."""
        released = await self.store.pool.fetchval(
            query("lease_release"), lease.name, lease.node, lease.generation
        )
        return released is not None

    async def all(self) -> list[LeaseInfo]:
        records = await self.store.pool.fetch(query("leases"))
        return [LeaseInfo(**dict(record)) for record in records]
