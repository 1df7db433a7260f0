"""This process's way through the shared rate limits: :class:`RateLimiter`.

    limiter = RateLimiter.of(store)                 # one per store, so one per process
    await limiter.acquire([Scope("telegram", Limit(30, 1.0)), Scope("telegram-chat:7", ...)])
    ...                                             # the request itself
    await limiter.pause([Scope("telegram", ...)], retry_after)   # after a 429

**Waiting, never failing.** :meth:`RateLimiter.acquire` returns once every scope granted one
call, however long that takes: a refusal comes with the seconds to wait (computed by the table
from its window, by the database's clock), and the caller sleeps exactly that long and asks
again. Nothing is raised for a busy scope and nothing is retried in a loop.

**Spaced, not in bursts.** Grants are smoothed (``smooth=True``, the default): each scope's
grants keep to its schedule in the table (migration 0009), one about every
``(per + margin) / count`` seconds while the scope is busy, instead of ``count`` at once at a
window's edge. Requests let go together queue on their way to Telegram and arrive tens of
milliseconds apart, more than :data:`DEFAULT_MARGIN`; spaced, each arrives about as long after
its grant as any other, so the margin covers the difference.

**One asker per process and scope.** Callers of a process queue up (first come, first served)
behind the first scope they name (``telegram``, ``tonapi``): only the head of that line asks the
table, so a process with fifty messages to send makes one request per grant, not fifty, and
three nodes waiting for one busy scope make about three statements per grant between them. A
caller refused by a narrower scope (a chat's one message per second) leaves the line while it
waits, so one chat never holds up the others.

**PostgreSQL unreachable.** A grant that fails (``StoreError``) or takes longer than
:data:`GRANT_TIMEOUT` seconds makes the node keep to :data:`FALLBACK_SHARE` of each limit on its
own (a window in this process, on its monotonic clock) and ask the table again every
:data:`RETRY_SHARED` seconds. A quarter because four processes share one bot at most in the
deployment this project describes (two workers and two web instances while a deploy
overlaps): together they stay within each limit even when none of them can reach the table.
The first failure is logged once, as a warning, and the recovery once. A pause (429) is always
kept here as well as in the table, so a node honours the 429s it met itself whatever happens
to the table.

``RateLimiter(None)`` keeps to the full limits in this process alone; with ``smooth=False``,
what every node did before flow control was shared (the benchmark's reference).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Final

import anyio
import msgspec

from events import environment
from events.errors import StoreError
from store.eventstore import EventStore
from store.flow.memory import MemoryFlowTable
from store.flow.postgres import PostgresFlowTable
from store.flow.table import (
    FlowTable,
    Grant,
    Scope,
    next_schedule,
    schedule_wait,
    window_wait,
)
from store.memory import MemoryLog

__all__ = [
    "RateLimiter",
    "flow_table",
    "LimiterStatistics",
    "DEFAULT_MARGIN",
    "DEFAULT_SMOOTH",
    "FALLBACK_SHARE",
    "GRANT_TIMEOUT",
    "RETRY_SHARED",
]

logger = logging.getLogger(__name__)

DEFAULT_MARGIN: Final = 0.02
"""Seconds by which grants of a scope are spread more than its limit asks (a window of
``per + margin``): the time from a grant to its request reaching Telegram varies by a few
milliseconds between calls and nodes (measured by ``python -m bench --suite broadcast``), and
the margin keeps a late request and an early one out of one of Telegram's windows. It costs
2 % of a 1-second limit's throughput."""
DEFAULT_SMOOTH: Final = True
"""Whether grants keep to each scope's schedule (:func:`store.flow.table.schedule_wait`): a
busy 30/s scope then grants one call about every 34 ms rather than 30 within a few
milliseconds and none for the rest of the second. An idle scope still grants at once."""
FALLBACK_SHARE: Final = 0.25
"""The share of each limit a node keeps to on its own while the shared table is unreachable."""
GRANT_TIMEOUT: Final = 2.0
"""Seconds a grant may take before this node stops waiting for the table (a network cut)."""
RETRY_SHARED: Final = 5.0
"""Seconds a node keeps to its local share before asking the table again."""


class LimiterStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of a limiter's counters since it was made."""

    grants: int
    """Calls let through, by the table or locally."""
    local_grants: int
    """Of those, the ones let through by this process alone (the fallback, or no table)."""
    refusals: int
    """Answers to wait (each followed by one wait)."""
    waited: float
    """Seconds callers spent in :meth:`RateLimiter.acquire`, in all."""
    pauses: int
    """429s reported (:meth:`RateLimiter.pause`)."""
    shared: bool
    """Whether the table is being used (False while falling back, or without a table)."""


class _Windows:
    """The fallback: each scope's latest grants and pause in this process (monotonic
    seconds), with the table's own rule."""

    def __init__(self) -> None:
        self._grants: dict[str, list[float]] = {}
        self._next_at: dict[str, float] = {}
        self._paused: dict[str, float] = {}

    def pause(self, scopes: Sequence[Scope], until: float) -> None:
        for scope in scopes:
            self._paused[scope.name] = max(self._paused.get(scope.name, until), until)

    def paused(self, scopes: Sequence[Scope], now: float) -> Grant | None:
        """A refusal for a pause this process knows of, or None."""
        wait, refused_by = 0.0, None
        for scope in sorted(scopes, key=lambda s: s.name):
            until = self._paused.get(scope.name)
            if until is not None and until - now > wait:
                wait, refused_by = until - now, scope.name
        return Grant(False, wait, refused_by) if refused_by is not None else None

    def take(
        self, scopes: Sequence[Scope], share: float, margin: float, smooth: bool, now: float
    ) -> Grant:
        limits = [(s.name, s.limit if share >= 1 else s.limit.share(share)) for s in scopes]
        wait, refused_by = 0.0, None
        for name, limit in sorted(limits, key=lambda pair: pair[0]):
            seconds = window_wait(self._grants.get(name, ()), limit, None, margin, now)
            if smooth:
                seconds = max(seconds, schedule_wait(self._next_at.get(name), limit, margin, now))
            if seconds > wait:
                wait, refused_by = seconds, name
        if refused_by is not None:
            return Grant(False, wait, refused_by)
        for name, limit in limits:
            self._grants[name] = [*self._grants.get(name, ()), now][-limit.count :]
            self._next_at[name] = next_schedule(self._next_at.get(name), limit, margin, now)
        return Grant(True)

    def forget(self) -> None:
        """Back to the table: the local windows start afresh at the next fallback."""
        self._grants.clear()
        self._next_at.clear()


def flow_table(log: EventStore | MemoryLog) -> FlowTable:
    """The rate limits of ``log``: ``i3lani.rate_limits``, or the memory log's."""
    return MemoryFlowTable.of(log) if isinstance(log, MemoryLog) else PostgresFlowTable(log)


_LIMITERS: weakref.WeakKeyDictionary[EventStore | MemoryLog, RateLimiter] = (
    weakref.WeakKeyDictionary()
)


class RateLimiter:
    """Waits for the shared rate limits (see the module docstring). ``table`` None: this
    process alone, at the full limits."""

    def __init__(
        self,
        table: FlowTable | None,
        *,
        margin: float = DEFAULT_MARGIN,
        smooth: bool = DEFAULT_SMOOTH,
        fallback_share: float = FALLBACK_SHARE,
        grant_timeout: float = GRANT_TIMEOUT,
        retry_shared: float = RETRY_SHARED,
    ) -> None:
        if not 0 <= margin < 1:
            raise ValueError(f"margin is in [0, 1) seconds, got {margin}")
        if not 0 < fallback_share <= 1:
            raise ValueError(f"fallback_share is in (0, 1], got {fallback_share}")
        if not (grant_timeout > 0 and retry_shared > 0):
            raise ValueError("grant_timeout and retry_shared are positive numbers of seconds")
        self.table = table
        self.margin = margin
        self.smooth = smooth
        self.fallback_share = fallback_share
        self.grant_timeout = grant_timeout
        self.retry_shared = retry_shared
        self._lines: dict[str, anyio.Lock] = {}
        self._local = _Windows()
        self._shared_again_at = 0.0  # monotonic: falling back until then
        self._outage: str | None = None  # why the table failed, while it does
        self._grants = self._local_grants = self._refusals = self._pauses = 0
        self._waited = 0.0

    @classmethod
    def of(cls, log: EventStore | MemoryLog) -> RateLimiter:
        """The one limiter of ``log`` in this process (made on first use), on its table:
        ``i3lani.rate_limits``, or the memory log's."""
        limiter = _LIMITERS.get(log)
        if limiter is None:
            limiter = _LIMITERS[log] = cls(flow_table(log))
        return limiter

    def statistics(self) -> LimiterStatistics:
        return LimiterStatistics(
            grants=self._grants,
            local_grants=self._local_grants,
            refusals=self._refusals,
            waited=self._waited,
            pauses=self._pauses,
            shared=self.table is not None and self._outage is None,
        )

    # -- waiting for a grant ----------------------------------------------------------------
    async def acquire(self, scopes: Sequence[Scope]) -> float:
        """Wait until every scope of ``scopes`` (distinct names; the first one is the line
        this process queues in) grants one call; the seconds it took."""
        if not scopes:
            return 0.0
        started = environment.monotonic()
        head = scopes[0].name
        line = self._lines.get(head)
        if line is None:
            line = self._lines[head] = anyio.Lock()
        while True:
            async with line:
                while True:
                    grant = await self._grant(scopes)
                    if grant.granted:
                        waited = environment.monotonic() - started
                        self._grants += 1
                        self._waited += waited
                        return waited
                    self._refusals += 1
                    if grant.refused_by != head:
                        break  # a narrower scope is busy: wait out of the line
                    await anyio.sleep(grant.wait)
            await anyio.sleep(grant.wait)

    async def _grant(self, scopes: Sequence[Scope]) -> Grant:
        now = environment.monotonic()
        paused = self._local.paused(scopes, now)
        if paused is not None:
            return paused
        if self.table is None:
            return self._take_locally(scopes, 1.0, now)
        if now < self._shared_again_at:
            return self._take_locally(scopes, self.fallback_share, now)
        try:
            with anyio.fail_after(self.grant_timeout):
                grant = await self.table.take(scopes, margin=self.margin, smooth=self.smooth)
        except (StoreError, TimeoutError) as exc:
            self._fall_back(exc)
            return self._take_locally(scopes, self.fallback_share, environment.monotonic())
        self._recovered()
        return grant

    def _take_locally(self, scopes: Sequence[Scope], share: float, now: float) -> Grant:
        grant = self._local.take(scopes, share, self.margin, self.smooth, now)
        if grant.granted:
            self._local_grants += 1
        return grant

    # -- 429s -------------------------------------------------------------------------------
    async def pause(self, scopes: Sequence[Scope], seconds: float) -> None:
        """Make every node leave ``scopes`` alone for ``seconds`` (a 429's ``retry_after``):
        kept in this process at once, and in the table (unless it cannot be reached)."""
        if not scopes or seconds <= 0:
            return
        self._pauses += 1
        self._local.pause(scopes, environment.monotonic() + seconds)
        if self.table is None or environment.monotonic() < self._shared_again_at:
            return
        try:
            with anyio.fail_after(self.grant_timeout):
                await self.table.pause(scopes, seconds)
        except (StoreError, TimeoutError) as exc:
            self._fall_back(exc)
            return
        logger.info(
            "flow control: %s paused for %.1f s on every node (a 429)",
            ", ".join(s.name for s in scopes),
            seconds,
            extra={"action": "flow_paused"},
        )

    # -- the table's outages ----------------------------------------------------------------
    def _fall_back(self, exc: BaseException) -> None:
        self._shared_again_at = environment.monotonic() + self.retry_shared
        if self._outage is None:
            self._outage = (
                f"no answer within {self.grant_timeout:g} s"
                if isinstance(exc, TimeoutError)
                else str(exc) or type(exc).__name__
            )
            logger.warning(
                "flow control: the shared rate limits cannot be reached (%s): this node keeps "
                "to %d %% of each limit on its own, and asks PostgreSQL again every %g s",
                self._outage,
                round(self.fallback_share * 100),
                self.retry_shared,
                extra={"action": "flow_fallback"},
            )

    def _recovered(self) -> None:
        if self._outage is not None:
            logger.warning(
                "flow control: the shared rate limits answer again (after: %s)",
                self._outage,
                extra={"action": "flow_recovered"},
            )
            self._outage = None
            self._local.forget()
