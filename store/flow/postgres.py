"""The rate limits in PostgreSQL: :class:`PostgresFlowTable`, ``i3lani.rate_limits`` and the
``rate_*`` queries of ``sql/queries.sql`` (the locking is explained beside
``i3lani.rate_take`` in migrations 0008 and 0009)."""

from __future__ import annotations

from collections.abc import Sequence

from store.driver import driver_errors
from store.eventstore import EventStore
from store.flow.table import MAX_SCOPES, FlowUsage, Grant, Limit, Scope, ScopeUse
from store.queries import query

__all__ = ["PostgresFlowTable"]


def _arrays(scopes: Sequence[Scope]) -> tuple[list[str], list[int], list[float]]:
    if not 1 <= len(scopes) <= MAX_SCOPES:
        raise ValueError(f"a grant takes 1 to {MAX_SCOPES} scopes, got {len(scopes)}")
    if len({s.name for s in scopes}) != len(scopes):
        raise ValueError(f"a grant takes each scope once, got {[s.name for s in scopes]}")
    return (
        [s.name for s in scopes],
        [s.limit.count for s in scopes],
        [s.limit.per for s in scopes],
    )


class PostgresFlowTable:
    """:class:`~store.flow.table.FlowTable` on ``i3lani.rate_limits``: each call is one
    statement on a pooled connection."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def take(self, scopes: Sequence[Scope], *, margin: float, smooth: bool = False) -> Grant:
        names, counts, windows = _arrays(scopes)
        with driver_errors(what="taking a grant of the shared rate limits"):
            row = await self.store._pool.fetchrow(
                query("rate_take"), names, counts, windows, float(margin), bool(smooth)
            )
        assert row is not None
        return Grant(row[0], max(0.0, row[1]), row[2])

    async def pause(self, scopes: Sequence[Scope], seconds: float) -> float:
        names, counts, windows = _arrays(scopes)
        with driver_errors(what="pausing a rate limit"):
            rows = await self.store._pool.fetch(
                query("rate_pause"), names, counts, windows, max(0.0, float(seconds))
            )
        return max((row["paused_for"] for row in rows), default=0.0)

    async def usage(self, limit: int = 50) -> FlowUsage:
        with driver_errors(what="reading the rate limits"):
            rows = await self.store._pool.fetch(query("rate_usage"), limit)
            chats = await self.store._pool.fetchval(query("rate_scope_count"))
        return FlowUsage(
            scopes=[
                ScopeUse(
                    scope=r["scope"],
                    limit=Limit(r["max_count"], r["window_seconds"]),
                    used=r["used"],
                    paused_for=r["paused_for"],
                    granted=r["granted"],
                    pauses=r["pauses"],
                    updated_at=r["updated_at"],
                    paused_until=r["paused_until"] if r["paused_for"] > 0 else None,
                )
                for r in rows
            ],
            chat_scopes=chats or 0,
        )

    async def prune(self, idle_seconds: float) -> int:
        with driver_errors(what="pruning the rate limits"):
            gone: int = await self.store._pool.fetchval(query("rate_prune"), float(idle_seconds))
        return gone
