"""How the store's writers share round trips: group commit, and a throttled NOTIFY.

Both the event store (appends) and the task queue (enqueues) use them, each with its own
batching rule and its own statement.

**Group commit** (:class:`GroupCommit`). While a statement of the writer is on the wire,
further requests do not go out on their own: they queue, and a background task (the flusher)
writes everything that queued meanwhile with the next statement, in batches the writer's
``take`` rule cuts (one transaction, one WAL flush for the lot). Under load the batches grow on
their own; a lone request goes straight out.

**Throttled NOTIFY** (:class:`ThrottledNotify`). Listeners are woken after commits by a NOTIFY
sent beside them, never inside the committing transaction (a NOTIFY there takes PostgreSQL's
global notify lock at every commit and serialises all writers). The first commit after a quiet
spell is announced at once; under load, notifications go out at most every ``interval``, each
covering every commit since the last, and while commits come closer together than that the
pause doubles, up to ``max_interval``: each NOTIFY is a transaction of its own that wakes
every listening session of the server, and a lone writer appending back to back spent about a
tenth of its time on them. A failed NOTIFY is logged: listeners also poll, so it only delays
them.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Generic, Protocol, TypeVar

import anyio
from anyio.abc import TaskGroup

from events.errors import StoreError
from store._wakeup import Wakeup

__all__ = [
    "GroupCommit",
    "Request",
    "ThrottledNotify",
    "NOTIFY_INTERVAL",
    "NOTIFY_MAX_INTERVAL",
    "next_pause",
]

logger = logging.getLogger(__name__)

NOTIFY_INTERVAL = 0.003
"""Seconds between two notifications on one channel, at the most often."""
NOTIFY_MAX_INTERVAL = 0.010
"""The longest pause between two notifications while commits keep coming: how much later than
at a quiet time a listener may learn of a commit under sustained load."""


class Request(Protocol):
    """A queued request: the flusher sets ``done`` once it has its outcome (or ``error``)."""

    done: anyio.Event
    error: BaseException | None


R = TypeVar("R", bound=Request)


class GroupCommit(Generic[R]):
    """Requests that queue behind the writer's statement on the wire, flushed together.

    ``take`` pops the next batch off the queue (requests it leaves keep their order);
    ``flush`` writes a batch and sets each request's outcome and ``done``. ``closed`` is the
    error of requests still queued when the flusher stops (the store closed)."""

    def __init__(
        self,
        *,
        take: Callable[[deque[R]], list[R]],
        flush: Callable[[list[R]], Awaitable[None]],
        closed: str,
    ) -> None:
        self._take = take
        self._flush = flush
        self._closed = closed
        self._queue: deque[R] = deque()
        self._ready = Wakeup()
        self.in_flight = 0
        """The writer's statements on the wire now (see :meth:`direct`)."""
        self.running = False

    @contextmanager
    def direct(self) -> Iterator[None]:
        """Count a statement of the writer's on the wire for the block: requests made
        meanwhile queue for the next one."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def start(self, tg: TaskGroup | None) -> bool:
        """Have the flusher run in ``tg`` (once); whether it runs."""
        if not self.running and tg is not None:
            self.running = True
            tg.start_soon(self.run)
        return self.running

    async def submit(self, request: R) -> None:
        """Queue ``request`` for the next combined statement; return once it has its outcome
        (the flusher must run: :meth:`start`)."""
        self._queue.append(request)
        self._ready.set()
        await request.done.wait()

    async def run(self) -> None:
        """The flusher: write what queued up, batch after batch, until cancelled."""
        self.running = True
        try:
            while True:
                await self._ready.wait()
                self._ready.arm()
                while self._queue:
                    await self._flush(self._take(self._queue))
        finally:
            self.running = False
            self.fail_queued()

    def fail_queued(self) -> None:
        """Fail every request still queued (the flusher stopped before it ran them)."""
        while self._queue:
            request = self._queue.popleft()
            request.error = StoreError(self._closed)
            request.done.set()


def next_pause(pause: float, busy: bool, interval: float, max_interval: float) -> float:
    """The pause after the next notification, given this one's (``pause``) and whether two
    commits came within ``interval`` of each other since the last look (``busy``): doubled
    while they do, up to ``max_interval``; back to ``interval`` once they did not."""
    return min(pause * 2, max_interval) if busy else interval


class ThrottledNotify:
    """Announce commits with ``send`` (which takes what is pending and sends one NOTIFY),
    beside the commits: the first at once, then at most one every ``interval`` seconds, the
    pause doubling up to ``max_interval`` (default: the larger of ``interval`` and
    :data:`NOTIFY_MAX_INTERVAL`) while commits come closer together than ``interval``
    (:func:`next_pause`).
    ``what`` names the listeners in the warning a failed NOTIFY logs."""

    def __init__(
        self,
        send: Callable[[], Awaitable[None]],
        *,
        what: str,
        interval: float = NOTIFY_INTERVAL,
        max_interval: float | None = None,
    ) -> None:
        if max_interval is not None and max_interval < interval:
            raise ValueError(f"max_interval ({max_interval}) is less than interval ({interval})")
        self._send = send
        self._what = what
        self.interval = interval
        if max_interval is None:
            max_interval = max(interval, NOTIFY_MAX_INTERVAL)
        self.max_interval = max_interval
        self._wanted = Wakeup()
        self._sending: anyio.Lock | None = None
        self._last_mark = -math.inf
        self._crowded = False  # two commits came within ``interval`` of each other
        self.running = False

    def mark(self) -> None:
        """Something committed: a notification is due."""
        now = anyio.current_time()
        if now - self._last_mark < self.interval:
            self._crowded = True
        self._last_mark = now
        self._wanted.set()

    def start(self, tg: TaskGroup | None) -> bool:
        """Have the notifier run in ``tg`` (once); whether it runs."""
        if not self.running and tg is not None:
            self.running = True
            tg.start_soon(self.run)
        return self.running

    async def run(self) -> None:
        """Send the notifications, throttled, until cancelled."""
        self.running = True
        pause = self.interval
        try:
            while True:
                await self._wanted.wait()
                await self.flush()
                # Under load, one notification covers every commit of the last moment, and
                # more of them while the load lasts. Load is commits closer together than the
                # shortest pause, whatever the pause is now: commits 5 ms apart are announced
                # one by one, however busy the moment before was.
                await anyio.sleep(pause)
                busy, self._crowded = self._crowded, False
                pause = next_pause(pause, busy, self.interval, self.max_interval)
        finally:
            self.running = False

    async def flush(self) -> None:
        """Send the notification due now, if one is (after any being sent: one at a time)."""
        if self._sending is None:
            self._sending = anyio.Lock()
        async with self._sending:
            if not self._wanted.is_set():
                return
            self._wanted.arm()
            try:
                await self._send()
            except StoreError as exc:
                logger.warning(
                    "could not notify %s: %s", self._what, exc, extra={"action": "notify_failed"}
                )
