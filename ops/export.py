"""``i3lani export``: a range of the log, in reading order, to a compressed file that can be
checked against the log: step 2 of the retention path (README, *Retention*).

    i3lani export --out 2026-q1.jsonl.gz [--after N] [--upto N]
    i3lani export --verify 2026-q1.jsonl.gz

The file holds one JSON object per line, each event as stored: its envelope, and its payload
and metadata as the very JSON the log holds (no decoding, no upcasting, so an event type this
release does not know is exported like any other), gzip-compressed. Beside it,
``<file>.manifest.json`` says which range it holds (the reading-order cursors after which it
starts and up to which it goes), how many events, and the SHA-256 of the uncompressed lines.

The range ends at an event that readers can already see (by default the newest): no event can
ever appear behind it (see ``read_all`` in ``store/sql/queries.sql``), so an exported range is
final. ``--verify`` reads the file back, checks it against its manifest, and reads the same
range from the log again: the lines must be the same, byte for byte. Exporting removes nothing
from the log, and never overwrites a file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import anyio.to_thread
import msgspec

from events.errors import I3laniError
from store import Cursor, EventStore
from store.stored import StoredEvent

__all__ = [
    "FORMAT",
    "Manifest",
    "ExportError",
    "Verified",
    "export_range",
    "verify_export",
    "manifest_path",
]

FORMAT: Final = "i3lani-events-jsonl/1"
PAGE: Final = 1000
COMPRESS_LEVEL: Final = 6


class ExportError(I3laniError):
    """An export that cannot be made or does not check out: one line, for a person."""


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """What an export file holds (``<file>.manifest.json``)."""

    format: str
    after: Cursor
    upto: Cursor
    events: int
    first_position: int | None
    last_position: int | None
    sha256: str
    """Of the uncompressed lines, newline included."""
    compressed_bytes: int
    exported_at: datetime


@dataclass(frozen=True, slots=True)
class Verified:
    """A file that checked out: its events, the same as the log's."""

    events: int
    sha256: str
    first_position: int | None
    last_position: int | None


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".manifest.json")


def line(row: StoredEvent) -> bytes:
    """One event as stored, as one JSON line: payload and metadata are the log's own JSON."""
    return (
        msgspec.json.encode(
            {
                "position": row.position,
                "transaction_id": row.transaction_id,
                "event_id": row.event_id,
                "stream": row.stream,
                "version": row.version,
                "type": row.type,
                "schema_version": row.schema_version,
                "payload": msgspec.Raw(row.payload),
                "metadata": msgspec.Raw(row.metadata),
                "recorded_at": row.recorded_at,
            }
        )
        + b"\n"
    )


async def _pages(
    store: EventStore, after: Cursor, upto: Cursor
) -> AsyncIterator[list[StoredEvent]]:
    """The log's events after ``after`` up to ``upto`` (included), in reading order, a page
    at a time."""
    cursor = after
    while True:
        rows = (await store.read_stored(cursor, limit=PAGE)).rows  # what seals hash, as stored
        inside = [row for row in rows if row.cursor <= upto]
        if inside:
            yield inside
        if len(inside) < len(rows) or len(rows) < PAGE:
            return
        cursor = rows[-1].cursor


def _refuse_existing(path: Path) -> None:
    for existing in (path, manifest_path(path)):
        if existing.exists():
            raise ExportError(f"{existing} exists already: exports never overwrite a file")


async def export_range(
    store: EventStore, path: Path, *, after: Cursor, upto: Cursor | None = None
) -> Manifest:
    """Write the events after ``after`` up to ``upto`` (default: the newest readable one) to
    ``path`` and its manifest; written to ``*.partial`` files first, renamed when complete."""
    _refuse_existing(path)
    end = upto if upto is not None else await store.head()
    if end < after:
        raise ExportError(f"nothing to export: the range ends ({end}) before it starts ({after})")
    partial = path.with_name(path.name + ".partial")
    digest = hashlib.sha256()
    events = 0
    first: int | None = None
    last: int | None = None
    try:
        file = await anyio.to_thread.run_sync(_open_for_writing, partial)
    except OSError as exc:
        raise ExportError(f"cannot write {partial}: {exc.strerror or exc}") from None
    try:
        async for page in _pages(store, after, end):
            chunk = b"".join(line(row) for row in page)
            digest.update(chunk)
            await anyio.to_thread.run_sync(file.write, chunk)
            events += len(page)
            first = page[0].position if first is None else first
            last = page[-1].position
    except BaseException:
        await anyio.to_thread.run_sync(file.close)
        await anyio.to_thread.run_sync(lambda: partial.unlink(missing_ok=True))
        raise
    await anyio.to_thread.run_sync(file.close)
    manifest = Manifest(
        format=FORMAT,
        after=after,
        upto=end,
        events=events,
        first_position=first,
        last_position=last,
        sha256=digest.hexdigest(),
        compressed_bytes=partial.stat().st_size,
        exported_at=datetime.now(UTC),
    )
    await anyio.to_thread.run_sync(_publish, partial, path, manifest)
    return manifest


def _open_for_writing(path: Path) -> gzip.GzipFile:
    """A new gzip file (blocking); the caller closes it."""
    return gzip.GzipFile(path, "wb", compresslevel=COMPRESS_LEVEL)


def _publish(partial: Path, path: Path, manifest: Manifest) -> None:
    """Rename the finished file into place, then write its manifest beside it (blocking)."""
    os.replace(partial, path)
    target = manifest_path(path)
    temporary = target.with_name(target.name + ".partial")
    temporary.write_bytes(msgspec.json.format(msgspec.json.encode(manifest)) + b"\n")
    os.replace(temporary, target)


def _file_digest(path: Path) -> tuple[int, str]:
    """(lines, SHA-256 of the uncompressed content) of an export file (blocking)."""
    digest = hashlib.sha256()
    lines = 0
    with gzip.open(path, "rb") as file:
        for text in file:
            digest.update(text)
            lines += 1
    return lines, digest.hexdigest()


async def verify_export(store: EventStore, path: Path) -> Verified:
    """Check ``path`` against its manifest and against the log; ExportError says what
    differs."""
    try:
        raw = await anyio.to_thread.run_sync(manifest_path(path).read_bytes)
        manifest = msgspec.json.decode(raw, type=Manifest)
    except FileNotFoundError:
        raise ExportError(f"{manifest_path(path)} is missing: it says what {path} holds") from None
    except msgspec.DecodeError as exc:
        raise ExportError(f"{manifest_path(path)} is not an export manifest: {exc}") from None
    if manifest.format != FORMAT:
        raise ExportError(f"{path} is in format {manifest.format!r}, this release reads {FORMAT}")
    try:
        lines, sha = await anyio.to_thread.run_sync(_file_digest, path)
    except (OSError, EOFError) as exc:
        raise ExportError(f"{path} cannot be read: {exc}") from None
    if (lines, sha) != (manifest.events, manifest.sha256):
        raise ExportError(
            f"{path} does not match its manifest: {lines} events with SHA-256 {sha[:16]}..., "
            f"the manifest says {manifest.events} with {manifest.sha256[:16]}..."
        )
    log = hashlib.sha256()
    events = 0
    async for page in _pages(store, manifest.after, manifest.upto):
        log.update(b"".join(line(row) for row in page))
        events += len(page)
    if (events, log.hexdigest()) != (manifest.events, manifest.sha256):
        raise ExportError(
            f"{path} does not match the log: the log holds {events} events in its range "
            f"({manifest.after} to {manifest.upto}), with SHA-256 {log.hexdigest()[:16]}..."
        )
    return Verified(
        events=events,
        sha256=sha,
        first_position=manifest.first_position,
        last_position=manifest.last_position,
    )
