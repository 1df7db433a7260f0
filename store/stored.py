"""The log's rows as stored, undecoded: what seals hash and what the audit checks row by row.

``read_stored`` (both logs, :mod:`store.port`) hands back :class:`StoredEvent` rows in the
log's reading order, within the same gap-free horizon as ``read_page``, with the payload and
metadata as the JSON bytes the log holds. Nothing is decoded, so a row no release can read (a
type renamed to one nobody knows, a payload that no longer fits its Struct) comes back like any
other: the Sealer seals it, and :class:`StoredDecoder` turns it into a :class:`Rejected` for
the audit instead of an exception that would end the replay.

``read_hashed`` hands back the same rows as :class:`HashedEvent`: position, stream, type and the
event hash (:func:`event_hash`; :mod:`store.sealing` defines the bytes), read in the columns
that cost least to decode: what the Sealer needs of a row.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Generic, TypeVar

import msgspec
from msgspec.structs import astuple

from events import EventMetadata, EventRegistry
from events.errors import EventError, UnknownEventType, one_line
from store.records import Cursor, RecordedEvent

__all__ = [
    "StoredEvent",
    "StoredPage",
    "HashedEvent",
    "HashedPage",
    "Rejected",
    "StoredDecoder",
    "canonical_bytes",
    "hashed_bytes",
    "event_hash",
    "hashed",
    "hash_columns",
]


class _Row(msgspec.Struct, frozen=True, gc=False):
    """Where a row stands in the log's reading order."""

    position: int
    transaction_id: int

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.transaction_id, self.position)


class StoredEvent(_Row, frozen=True, gc=False):
    """One row of the log as stored (``position`` and ``transaction_id`` first). ``payload``
    and ``metadata`` are JSON bytes: ``payload`` the text as appended (PostgreSQL's ``json``
    keeps it byte for byte; an event stored before migration 0010 holds the text its ``jsonb``
    rendered), ``metadata`` the text its ``jsonb`` renders, ``{}`` when empty.

    (``gc=False``: no reference cycles, and a verification makes hundreds of thousands of
    these; tracked, they would make every garbage collection walk them.)"""

    event_id: uuid.UUID
    stream: str
    version: int
    type: str
    schema_version: int
    payload: bytes
    metadata: bytes
    recorded_at: datetime


class HashedEvent(_Row, frozen=True, gc=False):
    """One row of the log as a seal takes it (``position`` and ``transaction_id`` first): its
    stream and type, and its event hash (:func:`event_hash`; :mod:`store.sealing` defines the
    bytes)."""

    stream: str
    type: str
    hash: bytes


_R = TypeVar("_R", StoredEvent, HashedEvent)


@dataclass(frozen=True, slots=True)
class _Page(Generic[_R]):
    """Up to ``limit`` rows after a cursor, and the cursor after the last one (unchanged when
    there were none)."""

    rows: list[_R]
    cursor: Cursor


@dataclass(frozen=True, slots=True)
class StoredPage(_Page[StoredEvent]):
    """A page of ``read_stored``."""


@dataclass(frozen=True, slots=True)
class HashedPage(_Page[HashedEvent]):
    """A page of ``read_hashed``."""


# -- event hashes (store/sealing.py defines the canonical bytes) --------------------------------
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_EVENT_HEAD: Final = struct.Struct(">cQQ16sQIqIIII")


def canonical_bytes(row: StoredEvent) -> bytes:
    """The event's canonical bytes (see :mod:`store.sealing`), without the 0x00 prefix."""
    return hashed_bytes(row)[1:]


def hashed_bytes(row: StoredEvent) -> bytes:
    """0x00 | the canonical bytes: what the event hash is the SHA-256 of."""
    stream = row.stream.encode()
    tag = row.type.encode()
    payload, metadata = row.payload, row.metadata
    head = _EVENT_HEAD.pack(
        b"\x00",
        row.position,
        row.transaction_id,
        row.event_id.bytes,
        row.version,
        row.schema_version,
        (row.recorded_at - _EPOCH) // _MICROSECOND,
        len(stream),
        len(tag),
        len(payload),
        len(metadata),
    )
    return b"".join((head, stream, tag, payload, metadata))


def hash_columns(records: Iterable[Iterable[Any]]) -> list[HashedEvent]:
    """Rows in the columns of ``read_hashed`` (``sql/seals.sql``: position, transaction id,
    stream, type, event id as 16 bytes, stream version, schema version, recorded_at in
    microseconds since 1970, payload, metadata), hashed as :func:`event_hash` hashes a stored
    row: the same canonical bytes, from columns that cost less to decode."""
    pack = _EVENT_HEAD.pack
    sha256 = hashlib.sha256
    join = b"".join
    rows: list[HashedEvent] = []
    append = rows.append
    for record in records:
        position, txid, stream, tag, event_id, version, schema, micros, payload, metadata = record
        encoded, tag_bytes = stream.encode(), tag.encode()
        head = pack(
            b"\x00",
            position,
            txid,
            event_id,
            version,
            schema,
            micros,
            len(encoded),
            len(tag_bytes),
            len(payload),
            len(metadata),
        )
        digest = sha256(join((head, encoded, tag_bytes, payload, metadata))).digest()
        append(HashedEvent(position, txid, stream, tag, digest))
    return rows


def event_hash(row: StoredEvent) -> bytes:
    """SHA-256(0x00 | canonical bytes): the event's hash, as a seal includes it."""
    return hashlib.sha256(hashed_bytes(row)).digest()


def hashed(row: StoredEvent) -> HashedEvent:
    """The row as a seal takes it (what ``read_hashed`` returns, computed here)."""
    return HashedEvent(row.position, row.transaction_id, row.stream, row.type, event_hash(row))


@dataclass(frozen=True, slots=True)
class Rejected:
    """A stored row this release cannot turn into an event, and why."""

    row: StoredEvent
    error: EventError  # UnknownEventType: no registered class has its tag

    @property
    def unknown_type(self) -> bool:
        return isinstance(self.error, UnknownEventType)

    @property
    def reason(self) -> str:
        """The error, on one line."""
        return one_line(str(self.error))


_NO_METADATA = EventMetadata()
_EMPTY = b"{}"
_SEEN_METADATA: Final = 1024  # distinct metadata values a decoder remembers


class StoredDecoder:
    """Rows to typed events: the hot path of every read of both logs. The current schema
    version of a known type goes straight to its class's own decoder; anything else takes the
    registry's slow path (upcasters, the errors that name the position)."""

    def __init__(self, registry: EventRegistry) -> None:
        self.registry = registry
        self._metadata = msgspec.json.Decoder(EventMetadata)
        # Metadata repeats: every event an actor's incarnation writes carries the same node,
        # lease, generation and cause, so most rows' metadata bytes were seen a few rows
        # before. EventMetadata is frozen, so one decoded value can stand for all of them.
        self._seen_metadata: dict[bytes, EventMetadata] = {}

    def _decode_metadata(self, meta: bytes) -> EventMetadata:
        """``meta`` decoded, from the cache of recently seen metadata when it is there."""
        seen = self._seen_metadata
        metadata = seen.get(meta)
        if metadata is None:
            metadata = self._metadata.decode(meta)
            if len(seen) >= _SEEN_METADATA:
                seen.clear()  # unique metadata (a request's ids) must not grow it for ever
            seen[meta] = metadata
        return metadata

    def decode(
        self, rows: Iterable[StoredEvent | Iterable[Any]]
    ) -> tuple[list[RecordedEvent], list[Rejected]]:
        """``(events, rejected)``, both in the rows' order: a row that is no event this release
        reads is kept apart with its error, never raised. A row is a :class:`StoredEvent` or a
        record of the same fields in the same order (metadata None or ``{}`` when empty).

        Rows of a known type at its current schema version whose payload and metadata decode
        take a tight loop; the first that does not (an upcast, an unknown type, bytes that do
        not decode) is left to :meth:`_decode_one`, and the loop goes on after it."""
        source: Sequence[Any] = rows if isinstance(rows, list) else list(rows)
        records = source
        if source and isinstance(source[0], StoredEvent):
            records = [astuple(row) for row in source]
        fast = self.registry.current_decoders()
        seen_metadata = self._seen_metadata
        decode_metadata = self._decode_metadata
        events: list[RecordedEvent] = []
        rejected: list[Rejected] = []
        append = events.append
        done, count = 0, len(records)
        while done < count:
            for position, txid, event_id, stream, version, tag, schema, payload, meta, at in (
                records[done:] if done else records
            ):
                entry = fast.get(tag)
                if entry is None or schema < entry[0]:
                    break
                try:
                    event = entry[1](payload)
                    if meta is None or meta == _EMPTY:
                        metadata = _NO_METADATA
                    else:
                        metadata = seen_metadata.get(meta) or decode_metadata(meta)
                except msgspec.MsgspecError:
                    break
                append(
                    RecordedEvent(
                        position, txid, event_id, stream, version, tag, schema, event, metadata, at
                    )
                )
            else:
                break
            # Every row before this one gave an event or a rejection: it is the next.
            irregular = len(events) + len(rejected)
            self._decode_one(records[irregular], source[irregular], events, rejected)
            done = irregular + 1
        return events, rejected

    def _decode_one(
        self,
        fields: Sequence[Any],
        row: StoredEvent | Iterable[Any],
        events: list[RecordedEvent],
        rejected: list[Rejected],
    ) -> None:
        """One row the tight loop of :meth:`decode` left: an event through the registry's slow
        path (an upcast, or the error that names the position), or a rejection."""
        position, txid, event_id, stream, version, tag, schema, payload, meta, at = fields
        try:
            event = self.registry.decode(tag, schema, payload, position=position)
            if meta is None or meta == _EMPTY:
                metadata = _NO_METADATA
            else:
                metadata = self._seen_metadata.get(meta) or self._decode_metadata(meta)
        except EventError as exc:
            rejected.append(Rejected(_stored(row), exc))
            return
        except msgspec.MsgspecError as exc:
            error = EventError(
                f"stored {tag} at global position {position}: its metadata does not decode: {exc}"
            )
            rejected.append(Rejected(_stored(row), error))
            return
        events.append(
            RecordedEvent(
                position, txid, event_id, stream, version, tag, schema, event, metadata, at
            )
        )

    def decode_or_raise(
        self, rows: Iterable[StoredEvent | Iterable[Any]], *, skip_unknown: bool
    ) -> list[RecordedEvent]:
        """The events of ``rows``; the first row that is none raises its error, except one of
        an unknown type with ``skip_unknown`` (left out)."""
        events, rejected = self.decode(rows)
        for row in rejected:
            if not (skip_unknown and row.unknown_type):
                raise row.error
        return events


def _stored(row: StoredEvent | Iterable[Any]) -> StoredEvent:
    if isinstance(row, StoredEvent):
        return row
    fields = list(row)
    if fields[8] is None:
        fields[8] = _EMPTY
    return StoredEvent(*fields)
