"""Subscriptions: catch up from a checkpoint, then follow the log live.

A subscription reads pages in the log's reading order (see ``read_all`` in
``sql/queries.sql``), so it never skips an event. It is woken by ``LISTEN``/``NOTIFY``
after appends commit, and polls every ``poll_interval`` seconds anyway, so a lost
notification, a dropped listener connection or an append from another client only delays
it. When PostgreSQL restarts, it backs off, reconnects, and continues from the last event
it handed out: nothing is lost or repeated.

Exactly once: a named subscriber stores its checkpoint in the same transaction as its own
writes::

    async with store.subscribe("reward-processor", category="user") as sub:
        async for recorded in sub:
            async with store.transaction() as tx:
                await tx.append(...)                       # the subscriber's effects
                await sub.save_checkpoint(recorded, transaction=tx)

If the process dies before the commit, neither the effects nor the checkpoint are stored,
and the event is delivered again after the restart. The checkpoint is a compare-and-set, so
two consumers under one name cannot both process the same event.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, Self, cast

import anyio

from events.errors import StoreUnavailable
from store._wakeup import Listener, Wakeup
from store.listener import NOTIFY_CHANNEL
from store.records import START, Cursor, Page, RecordedEvent

__all__ = ["Subscription", "CheckpointWriter", "Log"]

logger = logging.getLogger(__name__)

_RETRY_MIN = 0.1  # seconds: first wait after PostgreSQL became unreachable
_RETRY_MAX = 5.0
_HELD_BACK_MIN = 0.002  # seconds: first re-read while an older transaction holds events back


class CheckpointWriter(Protocol):
    """Where a checkpoint is saved: the store itself, or one of its transactions."""

    async def save_checkpoint(
        self, name: str, cursor: Cursor, *, expected: Cursor | None
    ) -> None: ...


class Log(CheckpointWriter, Protocol):
    """What a subscription needs of the event store (:class:`store.EventStore`): this module
    depends on it only through this, so that the store can hand out subscriptions."""

    async def load_checkpoint(self, name: str) -> Cursor | None: ...

    async def read_page(
        self, after: Cursor, *, category: str | None, limit: int, skip_unknown: bool
    ) -> Page: ...

    async def held_back(self, after: Cursor, category: str | None = None) -> bool: ...


class _Listenable(Protocol):
    """What LISTEN needs of the PostgreSQL store: its process's LISTEN connection (one, shared
    by every follower). A log without LISTEN (:class:`store.memory.MemoryLog`) overrides
    :meth:`Subscription._listen` and :meth:`Subscription._close_listener` instead."""

    def listener(
        self,
        channel: str,
        *,
        on_notify: Callable[[str], None],
        on_lost: Callable[[], None] | None = None,
        who: str,
        poll_interval: float,
    ) -> Listener: ...


class Subscription:
    """An async iterator over the log, from a checkpoint onwards, forever."""

    def __init__(
        self,
        store: Log,
        name: str | None,
        *,
        category: str | None,
        after: Cursor | None,
        poll_interval: float,
        batch_size: int,
        skip_unknown: bool,
    ) -> None:
        if poll_interval <= 0 or not math.isfinite(poll_interval):
            raise ValueError("poll_interval must be a positive number of seconds")
        if name is not None and not 1 <= len(name) <= 200:
            raise ValueError("a subscription name is 1 to 200 characters")
        self.store = store
        self.name = name
        self.category = category
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.skip_unknown = skip_unknown
        self._start = after
        self._buffer: deque[RecordedEvent] = deque()
        self._fetch_cursor: Cursor = after or START
        self.checkpoint: Cursor | None = None  # as stored (for named subscriptions)
        self.position: Cursor = self._fetch_cursor  # after the last event handed out
        self._wake = Wakeup()
        self.waiting_behind = False
        """Whether it waits for events an older open transaction holds back: a log that knows
        when a transaction ends (the in-memory one) wakes such readers, and only them."""
        self._listener: Listener | None = None  # made at the first LISTEN (see _listen)
        self._retry_delay = _RETRY_MIN
        self.notifications = 0  # how many wake-ups came by NOTIFY (for tests and statistics)
        self.reconnects = 0

    # -- lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        if self.name is not None:
            self.checkpoint = await self.store.load_checkpoint(self.name)
            if self._start is None and self.checkpoint is not None:
                self._fetch_cursor = self.position = self.checkpoint
        await self._listen()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close_listener()

    # -- iteration --------------------------------------------------------------------------
    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> RecordedEvent:
        held_back_delay = _HELD_BACK_MIN
        while not self._buffer:
            # Armed before reading: a notification that arrives while we read is not lost,
            # it makes the wait below return at once.
            self._wake.arm()
            try:
                page = await self.store.read_page(
                    self._fetch_cursor,
                    category=self.category,
                    limit=self.batch_size,
                    skip_unknown=self.skip_unknown,
                )
                self._fetch_cursor = page.cursor
                self._buffer.extend(page.events)
                if page.fetched:
                    self._retry_delay = _RETRY_MIN
                    continue
                held = await self.store.held_back(self._fetch_cursor, self.category)
            except StoreUnavailable as exc:
                await self._back_off(exc)
                continue
            if held:
                # Committed events wait behind an older open transaction: look again soon, or
                # as soon as a wake-up comes (a log that knows when that transaction ends
                # wakes the readers it holds back: see ``waiting_behind``).
                self.waiting_behind = True
                try:
                    await self._wake.wait(held_back_delay)
                finally:
                    self.waiting_behind = False
                held_back_delay = min(held_back_delay * 2, self.poll_interval)
                continue
            self._retry_delay = _RETRY_MIN
            await self._listen()
            await self._wake.wait(
                self.poll_interval if self._listener is None else self._listener.poll_interval
            )
        recorded = self._buffer.popleft()
        self.position = recorded.cursor
        return recorded

    async def _back_off(self, exc: BaseException) -> None:
        logger.warning(
            "subscription %s: %s; retrying in %.1fs",
            self.name or "(anonymous)",
            exc,
            self._retry_delay,
            extra={"action": "subscription_retry"},
        )
        await self._close_listener()
        await anyio.sleep(self._retry_delay)
        self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX)
        self.reconnects += 1

    # -- checkpoints ------------------------------------------------------------------------
    async def save_checkpoint(
        self,
        upto: RecordedEvent | Cursor | None = None,
        *,
        transaction: CheckpointWriter | None = None,
    ) -> None:
        """Store that this subscriber has processed everything up to ``upto`` (default: the
        last event handed out). Inside ``transaction`` it commits with the subscriber's own
        writes. A compare-and-set against the checkpoint this subscriber last stored."""
        if self.name is None:
            raise ValueError("an anonymous subscription has no checkpoint: give it a name")
        cursor = (
            self.position
            if upto is None
            else (upto.cursor if isinstance(upto, RecordedEvent) else upto)
        )
        if transaction is not None:
            await transaction.save_checkpoint(self.name, cursor, expected=self.checkpoint)
        else:
            await self.store.save_checkpoint(self.name, cursor, expected=self.checkpoint)
        self.checkpoint = cursor
        # If the caller's transaction rolls back, the CAS on the next save reports it.

    # -- notifications ----------------------------------------------------------------------
    def _on_notify(self, payload: str) -> None:
        if self.category is None or self.category in payload.split(","):
            self.notifications += 1
            self._wake.set()

    async def _listen(self) -> None:
        if self._listener is None:
            store = cast("_Listenable", self.store)
            self._listener = store.listener(
                NOTIFY_CHANNEL,
                on_notify=self._on_notify,
                on_lost=self._wake.set,
                who=f"subscription {self.name or '(anonymous)'}",
                poll_interval=self.poll_interval,
            )
        if await self._listener.listen():
            # Anything appended while we were not listening is picked up by the next read.
            self._wake.set()

    async def _close_listener(self) -> None:
        if self._listener is not None:
            await self._listener.close()
