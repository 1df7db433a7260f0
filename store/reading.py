"""Reading the whole log a page at a time, the same for every log built on ``read_page``.

:class:`PagedReads` gives :meth:`~PagedReads.read_batches` and :meth:`~PagedReads.read_all`
to a log that implements ``read_page`` and ``cursor_at`` (the PostgreSQL store and the
in-memory log), so that both walk the log by one piece of code: the paging, the limit and
the end of the log are decided here once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar, TypeVarTuple, Unpack

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from events.errors import StoreError
from store.records import START, Cursor, Page, RecordedEvent

__all__ = ["PagedReads", "ReadAhead"]

T = TypeVar("T")
Args = TypeVarTuple("Args")


class PagedReads(ABC):
    """``read_batches`` and ``read_all`` on top of a log's ``read_page`` and ``cursor_at``."""

    @abstractmethod
    async def read_page(
        self,
        after: Cursor,
        *,
        category: str | None = None,
        limit: int = 1000,
        skip_unknown: bool = False,
    ) -> Page:
        """Up to ``limit`` events after ``after``, in reading order, and the cursor after the
        last row read."""

    @abstractmethod
    async def cursor_at(self, position: int) -> Cursor:
        """The cursor just after the event at global position ``position``."""

    async def read_batches(
        self,
        *,
        after: Cursor | int = START,
        category: str | None = None,
        batch_size: int = 1000,
        limit: int | None = None,
        skip_unknown: bool = False,
    ) -> AsyncIterator[list[RecordedEvent]]:
        """:meth:`read_all` a page at a time: the fastest way through a long log (audits)."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        cursor = after if isinstance(after, Cursor) else await self.cursor_at(after)
        if limit is None:
            async for batch in self._read_to_end(cursor, category, batch_size, skip_unknown):
                yield batch
            return
        remaining: float = limit
        while remaining > 0:
            size = int(min(batch_size, remaining))
            page = await self.read_page(
                cursor, category=category, limit=size, skip_unknown=skip_unknown
            )
            if page.events:
                yield page.events
            remaining -= len(page.events)
            cursor = page.cursor
            if page.fetched < size:
                return

    async def _read_to_end(
        self, cursor: Cursor, category: str | None, batch_size: int, skip_unknown: bool
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Every page after ``cursor`` to the end of the log as it is now, one page after the
        other; a log whose reads can overlap its reader's work overrides it."""
        while True:
            page = await self.read_page(
                cursor, category=category, limit=batch_size, skip_unknown=skip_unknown
            )
            if page.events:
                yield page.events
            cursor = page.cursor
            if page.fetched < batch_size:
                return

    async def read_all(
        self,
        *,
        after: Cursor | int = START,
        category: str | None = None,
        batch_size: int = 1000,
        limit: int | None = None,
        skip_unknown: bool = False,
    ) -> AsyncIterator[RecordedEvent]:
        """Every event after ``after`` (a cursor, or a global position), in reading order,
        up to the present; ``category`` restricts to streams named ``<category>-...``."""
        async for batch in self.read_batches(
            after=after,
            category=category,
            batch_size=batch_size,
            limit=limit,
            skip_unknown=skip_unknown,
        ):
            for recorded in batch:
                yield recorded


class ReadAhead(Generic[T]):
    """One read of the log started before its reader needs it, in a task group that outlives
    the reader: the server reads and sends the next page on its own core while this process
    decodes and works through the page before. What the read returned or raised waits for the
    reader, and nothing escapes into the task group: a reader that goes away leaves one page
    nobody takes."""

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._value: T | None = None
        self._error: Exception | None = None

    @classmethod
    async def begin(
        cls, tg: TaskGroup, read: Callable[[*Args], Awaitable[T]], *args: *Args
    ) -> ReadAhead[T]:
        """Start ``read(*args)`` in ``tg`` and let it send its query before returning. A task
        started with ``start_soon`` runs only once the caller next gives the event loop a
        turn, and a reader that goes on to decode and hand out a page without waiting for
        anything gives it none: the query would leave only when the reader asks for its
        result, overlapping nothing. One checkpoint runs the new task up to its first real
        wait, which is the server's answer: taking an idle pooled connection and writing the
        query to its socket do not wait (when every connection is busy the read waits its
        turn, and the reader finds it later)."""
        ahead: ReadAhead[T] = cls()
        tg.start_soon(ahead._run, read, *args)
        await anyio.lowlevel.checkpoint()
        return ahead

    @classmethod
    def finished(cls, value: T) -> ReadAhead[T]:
        """A read already done (read in turn, not ahead): :meth:`result` returns ``value``."""
        ahead: ReadAhead[T] = cls()
        ahead._value = value
        ahead._done.set()
        return ahead

    async def _run(self, read: Callable[[Unpack[Args]], Awaitable[T]], *args: *Args) -> None:
        try:
            self._value = await read(*args)
        except Exception as exc:  # the reader's to raise, not the task group's
            self._error = exc
        finally:
            self._done.set()

    async def result(self) -> T:
        """What the read returned; what it raised is raised here."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        if self._value is None:
            raise StoreError(
                "a read of the log was cancelled before it finished (the store closed)"
            )
        return self._value
