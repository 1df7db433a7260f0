"""Seals: tamper evidence for the log, without chaining anything per append.

Appends stay as they are (concurrent, no lock, no hash). Every so often the Sealer
(:mod:`actors.sealer`) reads the log past the last seal, up to the horizon the gap-free
readers use (rows of transactions older than every transaction still open: no row can ever
appear behind it), and appends a ``LogSealed`` event (stream ``seal-log``) that commits to
every event of that range and to the seal before it. The seals form a chain, like the blocks
of Amazon QLDB's journal; the latest seal's digest (:class:`SealDigest`: seal number, position,
events sealed, hash) plays the part of a QLDB digest or a Certificate Transparency signed tree
head: kept outside the database (exported, sent to the admins by Telegram), it lets anyone
check later that the log up to it was not rewritten, even by someone who recomputed every seal
(immudb's point: the client keeps the state it trusts, not the server).

Canonical bytes of an event (version 1), every integer big-endian::

    u64 global position | u64 transaction id | event id (16 bytes, RFC 4122 order)
    | u64 stream version | u32 schema version | i64 recorded_at (microseconds since
    1970-01-01T00:00:00Z) | u32 length of stream | u32 length of type | u32 length of payload
    | u32 length of metadata | stream (UTF-8) | type (UTF-8) | payload | metadata

``payload`` and ``metadata`` are the JSON bytes the log stores: the payload as appended, which
PostgreSQL's ``json`` keeps byte for byte (an event stored before migration 0010 holds the text
its ``jsonb`` rendered, the bytes its seal hashed); the metadata as its ``jsonb`` renders it
(one canonical form: keys sorted, one space after ``:`` and ``,``), ``{}`` when empty. Every stored
column is in it but ``category``, which PostgreSQL derives from ``stream``: a change of any
stored byte changes the event's bytes.

Hashes (SHA-256; the 0x00 / 0x01 prefixes keep an event's hash and a seal's apart, as RFC 6962
does for leaves and nodes)::

    event hash = SHA-256(0x00 | canonical bytes)
    seal hash  = SHA-256(0x01 | u64 seal number | previous seal's hash (32 zero bytes for
                 seal 1) | u64 after transaction id | u64 after position
                 | event hash of each event of the range, in reading order
                 | u64 last transaction id | u64 last position | u64 count | u64 total)

The range is every event after cursor ``after`` up to and including cursor ``last``, in the
log's reading order (transaction id, global position): the order every reader sees, and the
only one in which a range, once read below the horizon, can never gain a row.

A seal also lists its events' positions (as runs) and the first 4 bytes of each event hash
(``fingerprints``): not needed to detect a change (the hash does), but to *name* the first
position where the log differs: a changed byte (same position, other fingerprint), a deleted
row (a position the seal lists and the log lacks), an inserted row (the reverse). That costs
about 5.3 bytes of seal per event sealed. A seal holds at most :data:`MAX_EVENTS_PER_SEAL`
events.

What seals cannot show: an event appended after the last seal is not covered yet (the next
seal covers it); and a rewrite of the whole log with every seal recomputed is consistent in
itself: only a digest kept outside (``i3lani seal --export``, the Sealer's Telegram message)
shows it (``i3lani audit --verify-seals --against DIGEST``). Seals rest on PostgreSQL returning
a stored ``json`` value as the text it was given, which its documentation promises ("an exact
copy of the input text"), and on it rendering a stored ``jsonb`` value (metadata) as the same
text, as it has since jsonb came (9.4); a release that changed that would make every sealed
event with metadata read as changed, and would need a seal format v2.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import re
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream

from events import LogSealed
from events.errors import EventError, one_line
from events.streams import SEAL_LOG
from store.port import EventLog
from store.records import START, Cursor
from store.stored import (
    HashedEvent,
    StoredEvent,
    canonical_bytes,
    event_hash,
    hash_columns,
    hashed,
    hashed_bytes,
)

__all__ = [
    "MAX_EVENTS_PER_SEAL",
    "PAGE_SIZE",
    "ZERO_HASH",
    "canonical_bytes",
    "event_hash",
    "hashed",
    "hash_columns",
    "SealBuilder",
    "SealDigest",
    "SealFinding",
    "SealReport",
    "SealVerifier",
    "next_seals",
    "Incidental",
    "verify_seals",
    "stored_pages",
    "SealFeeder",
    "seals_after",
]

MAX_EVENTS_PER_SEAL: Final = 10_000
"""Events per seal at most: bounds a seal's size (about 53 kB of fingerprints)."""
ZERO_HASH: Final = bytes(32)
"""The previous hash of seal 1."""
FINGERPRINT: Final = 4
"""Bytes of each event hash a seal keeps to name the first event that differs."""
PAGE_SIZE: Final = 2000
"""Rows per read when sealing or verifying. Measured: pages of 5,000 rows verify half as fast
as pages of 2,000 (a page's rows outlive the young generations and make the garbage collector
walk the whole heap); 1,000 pays more round trips."""

Incidental = Callable[[HashedEvent], Awaitable[bool]]
"""Whether a row alone does not call for a seal (see :func:`next_seals`)."""

_RUN: Final = 200  # rows hashed between two turns of the event loop when sealing
_SEAL_HEAD: Final = struct.Struct(">cQ32sQQ")
_SEAL_TAIL: Final = struct.Struct(">QQQQ")


def _seal_hasher(seal: int, previous: bytes, after: Cursor) -> hashlib._Hash:
    return hashlib.sha256(
        _SEAL_HEAD.pack(b"\x01", seal, previous, after.transaction_id, after.position)
    )


def _seal_tail(last: Cursor, count: int, total: int) -> bytes:
    return _SEAL_TAIL.pack(last.transaction_id, last.position, count, total)


# -- building ---------------------------------------------------------------------------------
class SealBuilder:
    """The next seal, an event at a time: ``add`` rows in reading order, then ``seal()``."""

    def __init__(self, seal: int, previous_hash: bytes, after: Cursor, total_before: int) -> None:
        if seal < 1 or len(previous_hash) != 32 or total_before < 0:
            raise ValueError("a seal is numbered from 1 and follows a 32-byte hash")
        self.number = seal
        self.previous_hash = previous_hash
        self.after = after
        self.total_before = total_before
        self.last = after
        self.count = 0
        self._hasher = _seal_hasher(seal, previous_hash, after)
        self._fingerprints = bytearray()
        self._runs: list[tuple[int, int]] = []
        self._run_start = 0
        self._run_length = 0

    @property
    def full(self) -> bool:
        return self.count >= MAX_EVENTS_PER_SEAL

    def add(self, rows: Sequence[StoredEvent]) -> int:
        """Add rows (in reading order, after the last one added) until the seal is full; how
        many were taken."""
        room = MAX_EVENTS_PER_SEAL - self.count
        return self.add_hashed([hashed(row) for row in rows[:room]])

    def add_hashed(self, rows: Sequence[HashedEvent]) -> int:
        """:meth:`add` for rows already hashed (``read_hashed``)."""
        room = MAX_EVENTS_PER_SEAL - self.count
        taken = rows[:room]
        if not taken:
            return 0
        update = self._hasher.update
        fingerprints = self._fingerprints
        start, length = self._run_start, self._run_length
        runs = self._runs
        for row in taken:
            digest = row.hash
            update(digest)
            fingerprints += digest[:FINGERPRINT]
            position = row.position
            if length and position == start + length:
                length += 1
            else:
                if length:
                    runs.append((start, length))
                start, length = position, 1
        self._run_start, self._run_length = start, length
        last = taken[-1]
        self.last = Cursor(last.transaction_id, last.position)
        self.count += len(taken)
        return len(taken)

    def seal(self, sealed_at: datetime) -> LogSealed:
        """The ``LogSealed`` event of what was added (at least one event)."""
        if self.count == 0:
            raise ValueError("a seal covers at least one event")
        total = self.total_before + self.count
        hasher = self._hasher.copy()
        hasher.update(_seal_tail(self.last, self.count, total))
        return LogSealed(
            seal=self.number,
            after_transaction_id=self.after.transaction_id,
            after_position=self.after.position,
            last_transaction_id=self.last.transaction_id,
            last_position=self.last.position,
            count=self.count,
            total=total,
            hash=hasher.hexdigest(),
            previous_hash=self.previous_hash.hex(),
            positions=[*self._runs, (self._run_start, self._run_length)],
            fingerprints=base64.b64encode(self._fingerprints).decode("ascii"),
            sealed_at=sealed_at,
        )


def _last_cursor(seal: LogSealed) -> Cursor:
    return Cursor(seal.last_transaction_id, seal.last_position)


def _after_cursor(seal: LogSealed) -> Cursor:
    return Cursor(seal.after_transaction_id, seal.after_position)


async def next_seals(
    log: EventLog,
    previous: LogSealed | None,
    *,
    sealed_at: datetime,
    max_events: int = 10 * MAX_EVENTS_PER_SEAL,
    page_size: int = PAGE_SIZE,
    incidental: Incidental | None = None,
) -> tuple[list[LogSealed], bool]:
    """The seals that follow ``previous`` (None: the log has none yet) over what the log holds
    now, up to the gap-free horizon, at most ``max_events`` events in all; and whether more
    is left to seal. Reads only (batched pages of raw rows); the caller appends the seals.

    ``incidental`` tells the rows that do not call for a seal on their own (the Sealer's: its
    seals and what their digests' delivery records): a range of such rows only is left for
    the next seal, which covers them with the first other event, so that an idle log stays
    idle. A range of ``max_events`` or more is sealed whatever it holds."""
    number = 1 if previous is None else previous.seal + 1
    digest = ZERO_HASH if previous is None else bytes.fromhex(previous.hash)
    after = START if previous is None else _last_cursor(previous)
    total = 0 if previous is None else previous.total
    builder = SealBuilder(number, digest, after, total)
    seals: list[LogSealed] = []
    cursor = after
    sealed = 0
    wanted = incidental is None
    while sealed < max_events:
        limit = min(page_size, max_events - sealed)
        page = await log.read_hashed(cursor, limit=limit)
        rows = page.rows
        if not wanted:
            wanted = await _calls_for_seal(rows, incidental)
        while rows:
            # A run of rows at a time, letting other tasks in between: a Sealer sharing its
            # event loop (a worker's other actors) holds it for a fraction of a millisecond.
            taken = builder.add_hashed(rows[:_RUN])
            rows = rows[taken:]
            await anyio.lowlevel.checkpoint()
            if builder.full:
                done = builder.seal(sealed_at)
                seals.append(done)
                builder = SealBuilder(
                    done.seal + 1, bytes.fromhex(done.hash), builder.last, done.total
                )
        sealed += len(page.rows)
        cursor = page.cursor
        if len(page.rows) < limit:
            if builder.count and (wanted or seals):
                seals.append(builder.seal(sealed_at))
            return seals, False
    if builder.count:
        seals.append(builder.seal(sealed_at))
    return seals, True


async def _calls_for_seal(rows: Sequence[HashedEvent], incidental: Incidental | None) -> bool:
    """Whether a row of ``rows`` is not incidental (stops at the first one)."""
    if incidental is None:
        return True
    for row in rows:
        if not await incidental(row):
            return True
    return False


# -- digests ----------------------------------------------------------------------------------
_DIGEST = re.compile(r"^i3lani-seal-v1:(\d{1,18}):(\d{1,18}):(\d{1,18}):([0-9a-f]{64})$")


@dataclass(frozen=True, slots=True)
class SealDigest:
    """What an operator keeps of a seal: enough to check the whole log up to it later."""

    seal: int
    position: int  # the global position of the seal's last event
    total: int  # events sealed up to there
    hash: str

    def __str__(self) -> str:
        return f"i3lani-seal-v1:{self.seal}:{self.position}:{self.total}:{self.hash}"

    @classmethod
    def of(cls, seal: LogSealed) -> SealDigest:
        return cls(seal.seal, seal.last_position, seal.total, seal.hash)

    @classmethod
    def parse(cls, text: str) -> SealDigest:
        """A digest as ``i3lani seal --export`` prints it; ValueError (one line) otherwise."""
        match = _DIGEST.match(text.strip().lower())
        if match is None or int(match.group(1)) < 1:
            raise ValueError(
                "a seal digest looks like i3lani-seal-v1:<seal>:<position>:<events>:<64 hex "
                f"digits> (as `i3lani seal --export` prints it), got {one_line(repr(text), 120)}"
            )
        seal, position, total = (int(match.group(n)) for n in (1, 2, 3))
        return cls(seal, position, total, match.group(4))


# -- verifying --------------------------------------------------------------------------------
FindingKind = Literal["changed", "deleted", "inserted", "seal", "chain", "digest"]


@dataclass(frozen=True, slots=True)
class SealFinding:
    """Where the log and its seals part ways.

    ``changed`` / ``deleted`` / ``inserted``: the event at ``position`` (the first of its seal
    that differs); ``seal``: a seal event does not match its own range (it was altered);
    ``chain``: the seals do not follow one another; ``digest``: the log does not lead to the
    digest kept outside."""

    kind: FindingKind
    message: str
    seal: int | None = None
    position: int | None = None
    seal_position: int | None = None  # where the LogSealed event itself is stored


@dataclass(slots=True)
class SealReport:
    """The outcome of a verification."""

    seals: int = 0  # seals checked
    events: int = 0  # events checked against them
    last_sealed_position: int | None = None
    unsealed: int = 0  # events read after the last seal (not covered yet)
    findings: list[SealFinding] = field(default_factory=list)
    against: str | None = None  # the digest checked against, if any
    digest_matched: bool | None = None

    @property
    def clean(self) -> bool:
        return not self.findings

    @property
    def first_difference(self) -> int | None:
        """The first global position (in reading order) where the log differs from its seals."""
        return next((f.position for f in self.findings if f.position is not None), None)


@dataclass(slots=True)
class _Checking:
    """The seal whose range the rows being fed are checked against."""

    seal: LogSealed
    seal_position: int
    seal_cursor: Cursor  # where the LogSealed event itself is, in reading order
    after: Cursor
    last: Cursor
    after_key: tuple[int, int]  # (transaction id, position): rows compare as plain tuples
    last_key: tuple[int, int]
    positions: list[int]
    fingerprints: bytes
    hasher: hashlib._Hash  # over the stored header (and, when equal, the recomputed one)
    chained: hashlib._Hash | None  # over the recomputed previous hash, when it differs
    index: int = 0
    differs: bool = False
    gap_reported: bool = False


def _reading_key(row: StoredEvent) -> tuple[int, int]:
    return (row.transaction_id, row.position)


def _expand(runs: Sequence[tuple[int, int]]) -> list[int]:
    positions: list[int] = []
    for start, length in runs:
        positions.extend(range(start, start + length))
    return positions


class SealVerifier:
    """Recompute every seal from the rows, fed in reading order from the start of the log.

    Pure: ``add_seal`` the seals in order (each before the rows of its range), ``feed`` rows,
    then ``finish``. Each seal is checked twice: against its own stored fields (do its events
    still hash to its hash? the first one that does not is named by its fingerprints), and as
    a link of the chain recomputed from the log alone (what a digest kept outside is compared
    with). Findings are recorded in reading order.
    """

    def __init__(self, against: SealDigest | None = None) -> None:
        self.against = against
        self.report = SealReport(against=None if against is None else str(against))
        self._pending: deque[tuple[LogSealed, Cursor]] = deque()
        self._current: _Checking | None = None
        self._expected_number = 1
        self._stored_hash = ZERO_HASH  # the hash the last seal closed stores
        self._stored_total = 0  # and its total
        self._chained_hash = ZERO_HASH  # its hash recomputed from the log
        self._chained_total = 0
        self._previous_last = START
        self.seals_known = 0
        self.last_seal_cursor: Cursor | None = None  # the end of the last seal added
        self.read_up_to = START  # the cursor of the last row fed

    # -- feeding ----------------------------------------------------------------------------
    def add_seal(self, seal: LogSealed, stored_at: Cursor) -> None:
        """The next seal (in order), and where its own event is stored."""
        self._pending.append((seal, stored_at))
        self.seals_known += 1
        self.last_seal_cursor = _last_cursor(seal)

    def seal_stream_unreadable(self, reason: str) -> None:
        """The seal stream cannot be read past the seals added: later ones are not checked."""
        version = self.seals_known + 1
        self._find(
            "chain",
            f"seal {version} cannot be read ({reason}): the seals from it on are not checked",
            seal=version,
        )

    def feed(self, rows: Sequence[StoredEvent]) -> None:
        """Rows in reading order, following the last ones fed. The rows of one seal are
        checked a run at a time: hashed, then compared with its positions and fingerprints in
        one go; only a run that differs is walked row by row to name the first difference."""
        current = self._current
        start, end = 0, len(rows)
        if rows:
            self.read_up_to = rows[-1].cursor
        while start < end:
            row = rows[start]
            key = (row.transaction_id, row.position)
            if current is None or key > current.last_key:
                if current is not None:
                    self._close(current)
                current = self._open_next()
                if current is None:
                    self.report.unsealed += end - start  # after the last seal: not covered yet
                    break
                continue
            if key <= current.after_key:
                self._outside(current, row)
                start += 1
                continue
            stop = bisect.bisect_right(rows, current.last_key, start, end, key=_reading_key)
            self._check_run(current, rows[start:stop])
            start = stop
        self._current = current

    def _outside(self, current: _Checking, row: StoredEvent) -> None:
        """A row between the end of the seal before and the start of this one: in no seal."""
        if not current.gap_reported:
            current.gap_reported = True
            self._find(
                "inserted",
                f"the event at #{row.position} ({row.stream} v{row.version}, {row.type}) lies "
                f"in no seal, between seal {current.seal.seal - 1} and seal {current.seal.seal}",
                seal=current.seal.seal,
                position=row.position,
            )

    def _check_run(self, current: _Checking, rows: Sequence[StoredEvent]) -> None:
        sha256 = hashlib.sha256
        digests = [sha256(hashed_bytes(row)).digest() for row in rows]
        joined = b"".join(digests)
        current.hasher.update(joined)
        if current.chained is not None:
            current.chained.update(joined)
        index = current.index
        count = len(rows)
        current.index = index + count
        self.report.events += count
        if current.differs:
            return
        at = index * FINGERPRINT
        if [row.position for row in rows] == current.positions[index : index + count] and (
            b"".join(digest[:FINGERPRINT] for digest in digests)
            == current.fingerprints[at : at + count * FINGERPRINT]
        ):
            return
        for offset, (row, digest) in enumerate(zip(rows, digests, strict=True)):
            if self._differs_at(current, index + offset, row, digest):
                return

    def _differs_at(self, current: _Checking, index: int, row: StoredEvent, digest: bytes) -> bool:
        """Whether the row at ``index`` of the seal's range is not the one it sealed (the
        difference is then recorded)."""
        expected = current.positions
        if index < len(expected) and row.position == expected[index]:
            at = index * FINGERPRINT
            if digest[:FINGERPRINT] == current.fingerprints[at : at + FINGERPRINT]:
                return False
            self._differs(
                current,
                "changed",
                row.position,
                f"the event at #{row.position} ({row.stream} v{row.version}, {row.type}) "
                f"is not what seal {current.seal.seal} sealed: a stored byte changed",
            )
            return True
        if index < len(expected) and row.position in expected[index + 1 :]:
            self._deleted(current, expected[index])
            return True
        self._differs(
            current,
            "inserted",
            row.position,
            f"the event at #{row.position} ({row.stream} v{row.version}, {row.type}) was not "
            f"in the log when seal {current.seal.seal} sealed its range (inserted)",
        )
        return True

    def _deleted(self, current: _Checking, position: int) -> None:
        self._differs(
            current,
            "deleted",
            position,
            f"the event at #{position} sealed by seal {current.seal.seal} is gone from the "
            "log (deleted)",
        )

    def _differs(self, current: _Checking, kind: FindingKind, position: int, text: str) -> None:
        current.differs = True
        self._find(
            kind, text, seal=current.seal.seal, position=position, seal_at=current.seal_position
        )

    def _open_next(self) -> _Checking | None:
        if not self._pending:
            return None
        seal, seal_cursor = self._pending.popleft()
        stored_at = seal_cursor.position
        self.report.seals += 1
        if seal.seal != self._expected_number:
            self._find(
                "chain",
                f"seal {self._expected_number} is missing: the seal stream goes on with seal "
                f"{seal.seal} (#{stored_at})",
                seal=seal.seal,
                seal_at=stored_at,
            )
        self._expected_number = seal.seal + 1
        after = _after_cursor(seal)
        if after != self._previous_last:
            self._find(
                "chain",
                f"seal {seal.seal} (#{stored_at}) starts after #{seal.after_position}, but the "
                f"seal before it ended at #{self._previous_last.position}",
                seal=seal.seal,
                seal_at=stored_at,
            )
        previous = _hex(seal.previous_hash)
        if previous != self._stored_hash:
            self._find(
                "chain",
                f"seal {seal.seal} (#{stored_at}) does not follow the seal before it: its "
                f"previous hash is {seal.previous_hash[:12]}…, that seal's "
                f"{self._stored_hash.hex()[:12]}…",
                seal=seal.seal,
                seal_at=stored_at,
            )
        try:
            fingerprints = base64.b64decode(seal.fingerprints, validate=True)
        except binascii.Error:
            fingerprints = b""
        return _Checking(
            seal=seal,
            seal_position=stored_at,
            seal_cursor=seal_cursor,
            after=after,
            last=_last_cursor(seal),
            after_key=(after.transaction_id, after.position),
            last_key=(seal.last_transaction_id, seal.last_position),
            positions=_expand(seal.positions),
            fingerprints=fingerprints,
            hasher=_seal_hasher(seal.seal, previous, after),
            chained=(
                None
                if previous == self._chained_hash
                else _seal_hasher(seal.seal, self._chained_hash, after)
            ),
        )

    def _close(self, current: _Checking) -> None:
        """The rows of ``current``'s range are all in: compare what was recomputed."""
        seal = current.seal
        count = current.index
        if not current.differs and count < len(current.positions):
            self._deleted(current, current.positions[count])
        # Against its own stored fields: do its events still lead to its hash?
        own = current.hasher.copy()
        own.update(_seal_tail(current.last, seal.count, seal.total))
        stored_hash = _hex(seal.hash)
        if not current.differs and (
            own.digest() != stored_hash
            or count != seal.count
            or len(current.fingerprints) != FINGERPRINT * count
        ):
            self._find(
                "seal",
                f"seal {seal.seal} (stored at #{current.seal_position}) does not match the "
                "events it covers, which are as it listed them: the seal event itself was "
                "altered",
                seal=seal.seal,
                seal_at=current.seal_position,
            )
        if seal.total != self._stored_total + seal.count:
            self._find(
                "chain",
                f"seal {seal.seal} (#{current.seal_position}) counts {seal.total:,} events "
                f"sealed in all: the seals before it {self._stored_total:,} plus its "
                f"{seal.count:,}",
                seal=seal.seal,
                seal_at=current.seal_position,
            )
        # As a link of the chain recomputed from the log alone.
        chained_total = self._chained_total + count
        chain = (current.chained or current.hasher).copy()
        chain.update(_seal_tail(current.last, count, chained_total))
        self._stored_hash, self._stored_total = stored_hash, seal.total
        self._chained_hash, self._chained_total = chain.digest(), chained_total
        self._previous_last = current.last
        self.report.last_sealed_position = seal.last_position
        self._check_digest(seal)

    def _check_digest(self, seal: LogSealed) -> None:
        against = self.against
        if against is None or seal.seal != against.seal:
            return
        matched = (
            self._chained_hash.hex() == against.hash
            and seal.last_position == against.position
            and self._chained_total == against.total
        )
        self.report.digest_matched = matched
        if not matched:
            self._find(
                "digest",
                f"the log up to seal {seal.seal} (#{seal.last_position}, "
                f"{self._chained_total:,} events) does not lead to the digest kept outside "
                f"(#{against.position}, {against.total:,} events, hash {against.hash[:12]}…): "
                f"the log up to #{against.position} was rewritten, its seals recomputed",
                seal=seal.seal,
            )

    def finish(self, *, complete: bool) -> SealReport:
        """No more rows. ``complete``: they reached the end of the log, so a seal whose range
        was not read to its end lost rows; otherwise (a cut, ``--as-of``) it is not judged.
        Either way a seal whose own event lies beyond the last row read is not judged: it was
        appended after the read went past (its range was not readable yet then)."""
        current = self._current
        if complete:
            while True:
                if current is not None:
                    if current.seal_cursor > self.read_up_to:
                        self._not_judged(current)
                        break
                    self._close(current)
                current = self._open_next()
                if current is None:
                    break
        elif current is not None:
            self._not_judged(current)
        self._current = None
        against = self.against
        if against is not None and self.report.digest_matched is None:
            self.report.digest_matched = False
            known = self.seals_known
            self._find(
                "digest",
                f"the digest kept outside names seal {against.seal} (#{against.position}), "
                + (
                    f"but the log has {known} seal(s): seals were removed, or the digest is "
                    "of another log"
                    if known < against.seal
                    else "which this verification did not read to its end"
                ),
                seal=against.seal,
            )
        return self.report

    def _not_judged(self, current: _Checking) -> None:
        """``current`` (and every seal after it) is newer than the read: left out."""
        self.report.seals -= 1
        self.report.events -= current.index
        self.report.unsealed += current.index
        self._pending.clear()

    def _find(
        self,
        kind: FindingKind,
        message: str,
        *,
        seal: int | None = None,
        position: int | None = None,
        seal_at: int | None = None,
    ) -> None:
        self.report.findings.append(SealFinding(kind, message, seal, position, seal_at))


def _hex(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        return b""
    return value


# -- reading the seals ------------------------------------------------------------------------
async def seals_after(
    log: EventLog, version: int = 0, *, page: int = 100
) -> AsyncIterator[tuple[LogSealed, Cursor] | EventError]:
    """Each seal after ``version`` with the cursor of its own event, in order; an EventError
    (then nothing more) where the seal stream stops decoding."""
    while True:
        try:
            batch = await log.read_stream(SEAL_LOG, after_version=version, limit=page)
        except EventError as exc:
            yield exc
            return
        for recorded in batch:
            version = recorded.version
            if not isinstance(recorded.event, LogSealed):
                yield EventError(f"seal-log v{version} is a {recorded.type}, not a LogSealed")
                return
            yield recorded.event, recorded.cursor
        if len(batch) < page:
            return


async def verify_seals(
    log: EventLog, *, against: SealDigest | None = None, page_size: int = PAGE_SIZE
) -> SealReport:
    """Recompute every seal of ``log`` from its rows (see :class:`SealVerifier`)."""
    verifier = SealVerifier(against)
    feeder = SealFeeder(log, verifier)
    async with stored_pages(log, page_size=page_size) as pages:
        async for rows in pages:
            await feeder.feed(rows)
    return await feeder.finish(complete=True)


@asynccontextmanager
async def stored_pages(
    log: EventLog, *, page_size: int = PAGE_SIZE
) -> AsyncIterator[MemoryObjectReceiveStream[list[StoredEvent]]]:
    """The whole readable log as stored, a page at a time, the next page read while the
    caller works on this one (the database's side of a read overlaps the caller's hashing)."""
    send, receive = anyio.create_memory_object_stream[list[StoredEvent]](1)

    async def read() -> None:
        async with send:
            cursor = START
            while True:
                page = await log.read_stored(cursor, limit=page_size)
                await send.send(page.rows)
                cursor = page.cursor
                if len(page.rows) < page_size:
                    return

    async with anyio.create_task_group() as tg, receive:
        tg.start_soon(read)
        yield receive
        tg.cancel_scope.cancel()


class SealFeeder:
    """Hands a :class:`SealVerifier` the seals each page of rows needs, read as it goes."""

    def __init__(self, log: EventLog, verifier: SealVerifier) -> None:
        self.verifier = verifier
        self._seals = seals_after(log)
        self._exhausted = False

    async def _load_until(self, cursor: Cursor | None) -> None:
        """Read seals until one ends at or after ``cursor`` (None: all of them)."""
        while not self._exhausted:
            known = self.verifier.last_seal_cursor
            if cursor is not None and known is not None and known >= cursor:
                return
            item = await anext(self._seals, None)
            if item is None:
                self._exhausted = True
            elif isinstance(item, EventError):
                self.verifier.seal_stream_unreadable(str(item))
                self._exhausted = True
            else:
                self.verifier.add_seal(*item)

    async def feed(self, rows: Sequence[StoredEvent]) -> None:
        if rows:
            await self._load_until(rows[-1].cursor)
            self.verifier.feed(rows)

    async def finish(self, *, complete: bool) -> SealReport:
        if complete:
            await self._load_until(None)
        return self.verifier.finish(complete=complete)
