"""Reading the whole log a page at a time, the same for every log built on ``read_page``.

:class:`PagedReads` gives :meth:`~PagedReads.read_batches` and :meth:`~PagedReads.read_all`
to a log that implements ``read_page`` and ``cursor_at`` (the PostgreSQL store and the
in-memory log), so that both walk the log by one piece of code: the paging, the limit and
the end of the log are decided here once.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

from store.records import START, Cursor, Page, RecordedEvent

__all__ = ["PagedReads"]


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
        remaining = math.inf if limit is None else limit
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
