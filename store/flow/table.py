"""Flow control's storage port: :class:`FlowTable`, the rate limits every node shares, and
the values it takes and gives (:class:`Limit`, :class:`Scope`, :class:`Grant`,
:class:`ScopeUse`), with the one rule both implementations apply (:func:`window_wait`).

Two implementations hold the same guarantees (the contract tests in ``tests/store/`` run on
both):

* :class:`store.flow.postgres.PostgresFlowTable`: ``i3lani.rate_limits`` and
  ``i3lani.rate_take`` (migrations 0008 and 0009), judged by PostgreSQL's
  ``clock_timestamp()``;
* :class:`store.flow.memory.MemoryFlowTable`: the same rows beside a
  :class:`store.memory.MemoryLog`, judged by the log's clock.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Final, Protocol

import msgspec

__all__ = [
    "Limit",
    "Scope",
    "Grant",
    "ScopeUse",
    "FlowUsage",
    "FlowTable",
    "parse_limit",
    "window_wait",
    "spacing_interval",
    "schedule_wait",
    "next_schedule",
    "MAX_SCOPES",
    "SCHEDULE_TOLERANCE",
]

MAX_SCOPES: Final = 8
"""Scopes one grant may take at once, at most (a Telegram message takes two)."""

SCHEDULE_TOLERANCE: Final = 0.5
"""How early a smoothed grant may come before its turn in its scope's schedule, in intervals
(:func:`schedule_wait`): so no two grants of a busy scope are closer than half an interval, and
a caller late for its turn by up to half an interval (a sleep, a round trip) costs the scope
none of its rate. ``i3lani.rate_take`` has the same ``/ 2``."""

_UNITS: Final = {"s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0}
_LIMIT_RE: Final = re.compile(r"(?P<count>[0-9]+)/(?P<every>[0-9]*\.?[0-9]*)(?P<unit>s|sec|min|h)")


class Limit(msgspec.Struct, frozen=True):
    """At most ``count`` grants in any window of ``per`` seconds."""

    count: int
    per: float

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not 1 <= self.count <= 1_000_000:
            raise ValueError(f"a limit's count is 1 to 1,000,000, got {self.count!r}")
        if not (math.isfinite(self.per) and 0.001 <= self.per <= 86_400):
            raise ValueError(f"a limit's window is 0.001 s to a day, got {self.per!r}")

    @property
    def rate(self) -> float:
        """Grants per second, on average."""
        return self.count / self.per

    def text(self) -> str:
        """As it is configured: ``30/s``, ``20/min``, ``1/4s``."""
        for unit, seconds in (("h", 3600.0), ("min", 60.0), ("s", 1.0)):
            if self.per == seconds:
                return f"{self.count}/{unit}"
        return f"{self.count}/{self.per:g}s"

    def share(self, fraction: float) -> Limit:
        """This limit cut to ``fraction`` of it, never above it in any window: fewer grants
        per window while that leaves one, else the same grants over a longer window (1/s at a
        quarter is 1 per 4 s, not 0 per second)."""
        if not 0 < fraction <= 1:
            raise ValueError(f"a share is in (0, 1], got {fraction}")
        fewer = math.floor(self.count * fraction)
        if fewer >= 1:
            return Limit(fewer, self.per)
        return Limit(self.count, min(self.per / fraction, 86_400.0))


def parse_limit(text: str) -> Limit | None:
    """``30/s``, ``20/min``, ``5/h`` or ``1/4s`` as a :class:`Limit`; ``off`` as None (no
    limit). ValueError saying what it should look like otherwise."""
    text = text.strip()
    if text.lower() == "off":
        return None
    match = _LIMIT_RE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"a rate looks like 30/s, 20/min, 5/h or 1/4s (or off for none), got {text!r}"
        )
    every = match["every"]
    try:
        amount = float(every) if every else 1.0
    except ValueError:
        raise ValueError(f"a rate looks like 30/s or 1/4s, got {text!r}") from None
    try:
        return Limit(int(match["count"]), amount * _UNITS[match["unit"]])
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None


class Scope(msgspec.Struct, frozen=True):
    """What a grant is counted against (``telegram``, ``telegram-chat:42``, ``tonapi``) and
    the limit this caller keeps it to. A name with a ``:`` is one of many of its kind (a
    chat's): those rows are pruned once unused."""

    name: str
    limit: Limit

    def __post_init__(self) -> None:
        if not 1 <= len(self.name) <= 200:
            raise ValueError(f"a scope's name is 1 to 200 characters, got {self.name!r}")


class Grant(msgspec.Struct, frozen=True):
    """A grant's answer: ``granted``, or the seconds to ``wait`` before asking again and the
    scope that asked for the longest wait (``refused_by``)."""

    granted: bool
    wait: float = 0.0
    refused_by: str | None = None


class ScopeUse(msgspec.Struct, frozen=True, kw_only=True):
    """A scope as operators see it: its limit (as its last caller configured it), grants in
    its last window, seconds it stays paused, and its totals since its row was made."""

    scope: str
    limit: Limit
    used: int
    paused_for: float
    granted: int
    pauses: int
    updated_at: datetime
    paused_until: datetime | None = None
    """When its pause ends, while it is paused (the table's clock)."""


class FlowUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Every shared scope, the per-chat scopes in use or paused, and how many per-chat scopes
    have a row in all."""

    scopes: list[ScopeUse]
    chat_scopes: int


def window_wait(
    grants: Sequence[float], limit: Limit, paused_until: float | None, margin: float, now: float
) -> float:
    """Seconds until a scope can grant again (0: now). Pure; ``i3lani.rate_wait`` is the same
    rule in SQL.

    ``grants`` are the times of the scope's latest grants, oldest first; a new one may go once
    the ``limit.count``-th latest is ``limit.per + margin`` seconds old, and the scope is not
    paused. So no window of ``limit.per`` seconds (``+ margin``) ever holds more than
    ``limit.count`` grants, whatever order the callers come in."""
    wait = 0.0
    if paused_until is not None:
        wait = max(wait, paused_until - now)
    if len(grants) >= limit.count:
        wait = max(wait, grants[len(grants) - limit.count] + limit.per + margin - now)
    return wait


def spacing_interval(limit: Limit, margin: float) -> float:
    """Seconds between a smoothed scope's grants when it is busy: its window (``+ margin``)
    shared evenly among its ``count`` grants (34 ms for 30/s with a 20 ms margin)."""
    return (limit.per + margin) / limit.count


def schedule_wait(next_at: float | None, limit: Limit, margin: float, now: float) -> float:
    """Seconds until a smoothed grant keeps to its scope's schedule (0: now). Pure; the
    ``smooth`` branch of ``i3lani.rate_take`` is the same rule in SQL (migration 0009).

    ``next_at`` is the scope's virtual schedule (GCRA's theoretical arrival time: None before
    its first grant); a grant may come :data:`SCHEDULE_TOLERANCE` of an interval before it.
    The schedule spreads only what :func:`window_wait` allows: a smoothed grant must pass
    both."""
    if next_at is None:
        return 0.0
    return max(0.0, next_at - SCHEDULE_TOLERANCE * spacing_interval(limit, margin) - now)


def next_schedule(next_at: float | None, limit: Limit, margin: float, now: float) -> float:
    """A scope's schedule after a grant at ``now``: one interval after the later of the two,
    so after a smoothed grant it is at most one and a half intervals ahead, and no burst is
    saved up while the scope is idle. Every grant moves it, smoothed or not (grants judged by
    the window alone push it on by an interval each). Pure."""
    start = now if next_at is None else max(next_at, now)
    return start + spacing_interval(limit, margin)


class FlowTable(Protocol):
    """The shared rate limits: one row per scope. Times are the table's own clock
    (PostgreSQL's ``clock_timestamp()``, or the memory log's ``clock``), never a node's.
    ``StoreError`` (``StoreUnavailable`` first of all) when the table cannot be reached."""

    async def take(self, scopes: Sequence[Scope], *, margin: float, smooth: bool = False) -> Grant:
        """One grant from every scope of ``scopes`` (distinct names), or none: all of them
        must allow it (see :func:`window_wait`, spaced ``margin`` seconds more than the
        limits; ``smooth``: and :func:`schedule_wait`, so a busy scope's grants come one by
        one, about :func:`spacing_interval` apart, rather than ``count`` at once). One short
        step: nothing stays locked after it."""
        ...

    async def pause(self, scopes: Sequence[Scope], seconds: float) -> float:
        """Make every scope of ``scopes`` refuse grants for ``seconds`` from now (a longer
        pause already set stays); the longest of their pauses from now, in seconds."""
        ...

    async def usage(self, limit: int = 50) -> FlowUsage:
        """What operators see (at most ``limit`` scopes)."""
        ...

    async def prune(self, idle_seconds: float) -> int:
        """Forget per-chat scopes unused and unpaused for ``idle_seconds``; how many went."""
        ...
