"""The rate limits in memory: :class:`MemoryFlowTable`, ``i3lani.rate_limits`` beside a
:class:`store.memory.MemoryLog`, for tests and deterministic simulation.

One table per log (:meth:`MemoryLog.side_table`), shared by every client of the log as the
database's table is. Each operation is one atomic step, as ``i3lani.rate_take`` is one
statement, judged by the log's ``clock`` (the database's ``clock_timestamp()``) with the same
rules (:func:`store.flow.table.window_wait`, and :func:`~store.flow.table.schedule_wait` for
a smoothed grant). Each passes the log's ``yield_point`` and
``faults`` hooks first, as ``"flow_take"``, ``"flow_pause"`` or ``"flow_read"``, so a
simulation can make the table unreachable. Not modelled: row locks (nothing waits: a step is
atomic), and the driver errors PostgreSQL's table translates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from store.flow.table import (
    MAX_SCOPES,
    FlowUsage,
    Grant,
    Limit,
    Scope,
    ScopeUse,
    next_schedule,
    schedule_wait,
    window_wait,
)
from store.memory import MemoryLog

__all__ = ["MemoryFlowTable"]


@dataclass(slots=True)
class _Row:
    """One row of ``i3lani.rate_limits`` (times in epoch seconds)."""

    limit: Limit
    updated_at: float
    grants: list[float] = field(default_factory=list)
    paused_until: float | None = None
    next_at: float | None = None
    granted: int = 0
    pauses: int = 0


def _check(scopes: Sequence[Scope]) -> None:
    if not 1 <= len(scopes) <= MAX_SCOPES:
        raise ValueError(f"a grant takes 1 to {MAX_SCOPES} scopes, got {len(scopes)}")
    if len({s.name for s in scopes}) != len(scopes):
        raise ValueError(f"a grant takes each scope once, got {[s.name for s in scopes]}")


class MemoryFlowTable:
    """:class:`~store.flow.table.FlowTable` in memory, beside a :class:`MemoryLog`; get a
    log's one table with :meth:`of`."""

    def __init__(self, log: MemoryLog) -> None:
        self.log = log
        self._rows: dict[str, _Row] = {}

    @classmethod
    def of(cls, log: MemoryLog) -> MemoryFlowTable:
        """The rate limits of ``log``."""
        return log.side_table(cls, lambda: cls(log))

    def _now(self) -> float:
        return self.log.clock().timestamp()

    def _row(self, scope: Scope, now: float) -> _Row:
        row = self._rows.get(scope.name)
        if row is None:
            row = self._rows[scope.name] = _Row(scope.limit, now)
        return row

    async def take(self, scopes: Sequence[Scope], *, margin: float, smooth: bool = False) -> Grant:
        _check(scopes)
        await self.log.enter("flow_take")
        now = self._now()
        ordered = sorted(scopes, key=lambda s: s.name)
        rows = [self._row(scope, now) for scope in ordered]
        # The longest wait, the first scope in name order among equals (rate_take's ORDER BY).
        wait, refused_by = 0.0, ordered[0].name
        for scope, row in zip(ordered, rows, strict=True):
            seconds = window_wait(row.grants, scope.limit, row.paused_until, margin, now)
            if smooth:
                seconds = max(seconds, schedule_wait(row.next_at, scope.limit, margin, now))
            if seconds > wait:
                wait, refused_by = seconds, scope.name
        if wait > 0:
            return Grant(False, wait, refused_by)
        for scope, row in zip(ordered, rows, strict=True):
            row.grants = [*row.grants, now][-scope.limit.count :]
            row.next_at = next_schedule(row.next_at, scope.limit, margin, now)
            row.limit = scope.limit
            row.granted += 1
            row.updated_at = now
        return Grant(True)

    async def pause(self, scopes: Sequence[Scope], seconds: float) -> float:
        _check(scopes)
        await self.log.enter("flow_pause")
        now = self._now()
        until = now + max(0.0, seconds)
        longest = 0.0
        for scope in sorted(scopes, key=lambda s: s.name):
            row = self._row(scope, now)
            row.paused_until = until if row.paused_until is None else max(row.paused_until, until)
            row.pauses += 1
            row.updated_at = now
            longest = max(longest, row.paused_until - now)
        return longest

    async def usage(self, limit: int = 50) -> FlowUsage:
        await self.log.enter("flow_read")
        now = self._now()
        shown: list[ScopeUse] = []
        for name in sorted(self._rows, key=lambda n: (":" in n, n)):
            row = self._rows[name]
            paused_for = 0.0 if row.paused_until is None else max(0.0, row.paused_until - now)
            recent = bool(row.grants) and row.grants[-1] > now - row.limit.per
            if ":" in name and not (paused_for > 0 or recent):
                continue
            shown.append(
                ScopeUse(
                    scope=name,
                    limit=row.limit,
                    used=sum(1 for at in row.grants if at > now - row.limit.per),
                    paused_for=paused_for,
                    granted=row.granted,
                    pauses=row.pauses,
                    updated_at=datetime.fromtimestamp(row.updated_at, UTC),
                    paused_until=(
                        datetime.fromtimestamp(row.paused_until, UTC)
                        if row.paused_until is not None and paused_for > 0
                        else None
                    ),
                )
            )
        return FlowUsage(
            scopes=shown[:limit], chat_scopes=sum(1 for name in self._rows if ":" in name)
        )

    async def prune(self, idle_seconds: float) -> int:
        await self.log.enter("flow_pause")
        now = self._now()
        gone = [
            name
            for name, row in self._rows.items()
            if ":" in name
            and row.updated_at < now - idle_seconds
            and (row.paused_until is None or row.paused_until < now)
        ]
        for name in gone:
            del self._rows[name]
        return len(gone)
