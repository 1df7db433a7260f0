"""Time, injected: actor ticks, restart backoff and every timestamp in lifecycle events come
from a :class:`Clock`. (Lease renewal and the supervisor's polling use the event loop's time
on purpose: leases are timed by PostgreSQL's own clock.) ``SystemClock`` reads
:mod:`events.environment`, so a simulation's clock is the system clock of everything in it.

``SystemClock`` is the real one. ``ManualClock`` moves only when a test says so, so
schedules and backoff are tested instantly and deterministically::

    clock = ManualClock()
    ...                                   # something calls `await clock.sleep(5)`
    await clock.wait_for_sleepers(1)      # it is now waiting
    await clock.advance(5)                # and now it wakes
"""

from __future__ import annotations

import heapq
import itertools
from datetime import UTC, datetime, timedelta
from typing import Protocol

import anyio

from events import environment

__all__ = ["Clock", "SystemClock", "ManualClock"]


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for durations)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (0 or less: just yield)."""
        ...


class SystemClock:
    """The real time."""

    def now(self) -> datetime:
        return environment.now()

    def monotonic(self) -> float:
        return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(seconds, 0.0))


class ManualClock:
    """A clock that only moves when :meth:`advance` is called."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._elapsed = 0.0
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()
        self._changed = anyio.Event()

    def now(self) -> datetime:
        return self._now + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        return self._elapsed

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        woken = anyio.Event()
        heapq.heappush(self._sleepers, (self._elapsed + seconds, next(self._order), woken))
        self._notify()
        try:
            await woken.wait()
        finally:
            if not woken.is_set():  # cancelled while asleep: forget it
                self._sleepers = [s for s in self._sleepers if s[2] is not woken]
                heapq.heapify(self._sleepers)
                self._notify()

    @property
    def sleepers(self) -> int:
        return len(self._sleepers)

    def next_wake(self) -> float | None:
        """Seconds until the earliest sleeper wakes, or None when nobody sleeps."""
        return self._sleepers[0][0] - self._elapsed if self._sleepers else None

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking every sleeper that is due, in order."""
        if seconds < 0:
            raise ValueError("time does not go back")
        target = self._elapsed + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, woken = heapq.heappop(self._sleepers)
            self._elapsed = max(self._elapsed, deadline)
            woken.set()
            # Let the woken task run (and perhaps go back to sleep) before moving on.
            for _ in range(5):
                await anyio.lowlevel.checkpoint()
        self._elapsed = target
        self._notify()

    async def wait_for_sleepers(self, count: int = 1) -> None:
        """Return once at least ``count`` tasks are asleep on this clock."""
        while len(self._sleepers) < count:
            await self._changed.wait()

    def _notify(self) -> None:
        # Wake every waiter, and give later ones a fresh event to wait on.
        changed, self._changed = self._changed, anyio.Event()
        changed.set()
