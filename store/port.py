"""The event log as the rest of the system sees it: the port both logs implement.

:class:`EventLog` names exactly the operations actors, the supervisor, the gateway and ops use
on the log (appending, reading, following, checkpoints, tick schedules, snapshots,
transactions), and :class:`LogTransaction` those they use inside
``async with log.transaction() as tx``. Two
implementations hold every guarantee of ``tests/store/`` (one contract suite runs on both):

* :class:`store.eventstore.EventStore`: PostgreSQL, the production log;
* :class:`store.memory.MemoryLog`: pure Python, for tests and deterministic simulation.

What is PostgreSQL by nature stays outside the port and on ``EventStore`` alone: the pool and
raw SQL (``execute_sql``, ``Transaction.connection``), the lease statements
(``lease_fetchval``), operator views (``oldest_writer``) and the connection settings.

The bottom of this module makes mypy check that both classes satisfy the port.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, TypeVar

import msgspec

from events import Event, EventMetadata, EventRegistry
from store.records import AppendResult, Cursor, Expected, RecordedEvent, TickRecord

if TYPE_CHECKING:
    from store.eventstore import Append, Fence, NewEvent, Page, RecordedPosition
    from store.stored import HashedPage, StoredPage
    from store.subscription import Subscription

__all__ = ["EventLog", "LogTransaction"]

S = TypeVar("S", bound=msgspec.Struct)


class LogTransaction(Protocol):
    """A unit of work on the log: its appends and checkpoints commit together, or not at all
    (an exception inside the block, or a failed commit, keeps none of them)."""

    async def append(
        self,
        stream: str,
        events: Sequence[Event | NewEvent],
        *,
        expected_version: Expected = ...,
        metadata: EventMetadata | None = None,
        fence: Fence | None = None,
    ) -> AppendResult: ...

    async def append_many(self, appends: Sequence[Append]) -> list[list[RecordedPosition]]: ...

    async def save_checkpoint(
        self, name: str, cursor: Cursor, *, expected: Cursor | None, fence: Fence | None = None
    ) -> None: ...

    async def save_tick(
        self,
        name: str,
        due_at: datetime,
        ticked_at: datetime,
        *,
        node: str | None = None,
        fence: Fence | None = None,
    ) -> None: ...

    async def stored_ids(self, event_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]: ...


class EventLog(Protocol):
    """The append-only log of typed events: the operations the rest of i3lani uses.

    Guarantees (see :mod:`store.eventstore` for the full statement, ``tests/store/`` for the
    contract suite): optimistic concurrency with ``ConcurrencyConflict``; validation before any
    write; idempotent event ids (a retry returns the original result, other content raises
    ``EventIdReused``); fenced writes refused with ``StaleGeneration`` once their lease
    generation is replaced; a gap-free reading order (transaction id, position) that never
    skips an event committing late; checkpoints as compare-and-set (``CheckpointConflict``),
    stored atomically with a transaction's appends; ``StoreUnavailable`` when the log cannot be
    reached.
    """

    registry: EventRegistry

    # -- appending --------------------------------------------------------------------------
    async def append(
        self,
        stream: str,
        events: Sequence[Event | NewEvent],
        *,
        expected_version: Expected = ...,
        metadata: EventMetadata | None = None,
        fence: Fence | None = None,
    ) -> AppendResult: ...

    def transaction(self) -> AbstractAsyncContextManager[LogTransaction]: ...

    # -- reading ----------------------------------------------------------------------------
    async def stream_version(self, stream: str) -> int: ...

    async def read_stream(
        self,
        stream: str,
        *,
        after_version: int = 0,
        limit: int | None = None,
        skip_unknown: bool = False,
    ) -> list[RecordedEvent]: ...

    async def last_event(
        self, stream: str, *, skip_unknown: bool = False
    ) -> RecordedEvent | None: ...

    async def read_event(
        self, event_id: uuid.UUID, *, skip_unknown: bool = False
    ) -> RecordedEvent | None: ...

    async def head(self) -> Cursor: ...

    async def cursor_at(self, position: int) -> Cursor: ...

    async def read_page(
        self,
        after: Cursor,
        *,
        category: str | None = None,
        limit: int = 1000,
        skip_unknown: bool = False,
    ) -> Page: ...

    async def held_back(self, after: Cursor, category: str | None = None) -> bool: ...

    async def read_stored(self, after: Cursor, *, limit: int = 1000) -> StoredPage:
        """Up to ``limit`` rows after ``after`` as stored (nothing decoded, nothing skipped), in
        reading order, within the same horizon as ``read_page``: what seals hash."""
        ...

    async def read_hashed(self, after: Cursor, *, limit: int = 1000) -> HashedPage:
        """The rows ``read_stored`` returns, each as its event hash (:mod:`store.sealing`)
        with its position, stream and type: what the Sealer needs, hashed where the rows are."""
        ...

    def read_batches(
        self,
        *,
        after: Cursor | int = ...,
        category: str | None = None,
        batch_size: int = 1000,
        limit: int | None = None,
        skip_unknown: bool = False,
    ) -> AsyncIterator[list[RecordedEvent]]: ...

    def read_all(
        self,
        *,
        after: Cursor | int = ...,
        category: str | None = None,
        batch_size: int = 1000,
        limit: int | None = None,
        skip_unknown: bool = False,
    ) -> AsyncIterator[RecordedEvent]: ...

    # -- following and checkpoints ----------------------------------------------------------
    def subscribe(
        self,
        name: str | None = None,
        *,
        category: str | None = None,
        after: Cursor | None = None,
        poll_interval: float = 1.0,
        batch_size: int = 500,
        skip_unknown: bool = False,
    ) -> Subscription: ...

    async def load_checkpoint(self, name: str) -> Cursor | None: ...

    async def save_checkpoint(
        self,
        name: str,
        cursor: Cursor,
        *,
        expected: Cursor | None,
        fence: Fence | None = None,
    ) -> None: ...

    # -- tick schedules (operational state beside the log, not events) -----------------------
    async def load_tick(self, name: str) -> TickRecord | None: ...

    async def save_tick(
        self,
        name: str,
        due_at: datetime,
        ticked_at: datetime,
        *,
        node: str | None = None,
        fence: Fence | None = None,
    ) -> None: ...

    # -- snapshots --------------------------------------------------------------------------
    async def save_snapshot(self, stream: str, version: int, state: msgspec.Struct) -> None: ...

    async def load_snapshot(self, stream: str, state_cls: type[S]) -> tuple[int, S] | None: ...
