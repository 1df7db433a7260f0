"""What the store hands back: recorded events, append results, cursors, expected versions."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import msgspec

from events import Event, EventMetadata

__all__ = [
    "ExpectedVersion",
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "Expected",
    "RecordedEvent",
    "AppendResult",
    "Cursor",
    "START",
    "Page",
    "TickRecord",
]


class ExpectedVersion(enum.Enum):
    """The non-numeric expectations an append can state about its stream."""

    ANY = "any"  # no check: append at whatever the current version is
    NO_STREAM = "no stream"  # the stream must not exist yet (version 0)
    STREAM_EXISTS = "stream exists"  # the stream must have at least one event

    def __str__(self) -> str:
        return self.value


ANY: Final = ExpectedVersion.ANY
NO_STREAM: Final = ExpectedVersion.NO_STREAM
STREAM_EXISTS: Final = ExpectedVersion.STREAM_EXISTS

Expected = ExpectedVersion | int
"""An append's expectation: one of the three above, or the exact current version (0 = empty)."""


class Cursor(msgspec.Struct, frozen=True, order=True):
    """A point in the log's reading order: (transaction id, global position).

    Readers follow this pair rather than the bare position (see ``read_all`` in
    ``sql/queries.sql``); ``START`` is before every event.
    """

    transaction_id: int
    position: int

    def __str__(self) -> str:
        return f"{self.position}@tx{self.transaction_id}"


START: Final = Cursor(0, 0)


class RecordedEvent(msgspec.Struct, frozen=True, gc=False):
    """An event as stored: the decoded Struct inside its envelope.

    (``gc=False``: an envelope holds no reference cycles, and not tracking millions of them
    keeps the garbage collector out of long replays.)"""

    position: int  # global position: unique, increasing at insertion
    transaction_id: int  # with position, the reading order of the log
    event_id: uuid.UUID
    stream: str
    version: int  # the event's version within its stream, from 1
    type: str  # the stored type tag
    schema_version: int
    event: Event
    metadata: EventMetadata
    recorded_at: datetime

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.transaction_id, self.position)

    @property
    def category(self) -> str:
        return self.stream.split("-", 1)[0]


class AppendResult(msgspec.Struct, frozen=True, kw_only=True):
    """Where an append landed. An idempotent retry gets the original result back."""

    stream: str
    first_version: int
    last_version: int
    first_position: int
    last_position: int
    transaction_id: int
    recorded_at: datetime
    duplicate: bool = False  # True when every event was already stored (a retry)

    @property
    def version(self) -> int:
        """The stream's version after this append."""
        return self.last_version


@dataclass(frozen=True, slots=True)
class Page:
    """One page read from the log: the decoded events, the cursor after the last row read
    (unknown events skipped on request still move it), and how many rows were read."""

    events: list[RecordedEvent]
    cursor: Cursor
    fetched: int


class TickRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An actor's tick schedule as stored (table ``i3lani.ticks``, not the log): its last tick
    ran for the slot due at ``due_at``, at ``ticked_at``, on ``node`` under ``generation`` of
    the actor's lease (None: unfenced); the next one is scheduled from it."""

    due_at: datetime
    ticked_at: datetime
    node: str | None = None
    generation: int | None = None
