"""An in-memory event log with the PostgreSQL store's semantics, for tests and simulation.

    async with MemoryLog() as log:
        result = await log.append("payment-42", [PaymentCreated(...)], expected_version=NO_STREAM)
        async for recorded in log.read_all():
            ...

:class:`MemoryLog` implements the :class:`store.port.EventLog` port, and the contract suite in
``tests/store/`` runs every guarantee of :class:`store.eventstore.EventStore` against both:
expected versions and :class:`ConcurrencyConflict`; validation first; idempotent event ids
(a retry returns the original result, other content raises :class:`EventIdReused`); fenced
writes (:class:`StaleGeneration`); checkpoints as compare-and-set (:class:`CheckpointConflict`)
committed with a transaction's appends; snapshots. Events go through the same registry and
msgspec encoding as in PostgreSQL, so they round-trip identically.

It models PostgreSQL's concurrency rather than serialising everything:

* **Reading order.** Every write gets a global position when it is made and a transaction id
  when its transaction makes its first write, as in PostgreSQL; readers follow
  (transaction id, position) and see only committed events whose transaction id is below that
  of the oldest transaction still open (PostgreSQL's snapshot ``xmin``). So an event whose
  transaction commits late is held back, never skipped (``held_back`` says so), and a rolled
  back transaction leaves a gap in positions, never in the reading order.
* **Waiting on another writer.** A write that needs what an open transaction has claimed (the
  next version of a stream, an event id, a checkpoint) waits for that transaction to end, like
  an insert waiting on a unique index, then looks again: an ``ANY`` append lands after the
  other's events; an exact expectation, or a write inside a transaction, fails as it would in
  PostgreSQL. Two transactions waiting on each other are refused (PostgreSQL's deadlock).

Not modelled: connections and their limits, lost notifications (a commit always wakes the
log's subscriptions; they still poll), group commit (each append is atomic on its own, with
the same results), and the positions PostgreSQL spends on inserts a unique index refused.
``tests/store/test_differential.py`` runs one random history on both logs and compares every
outcome.

**Side tables.** State PostgreSQL keeps in tables beside the log (the task queue's
``i3lani.tasks``, the shared rate limits of ``i3lani.rate_limits``:
:class:`store.flow.memory.MemoryFlowTable`, the health samples of ``i3lani.health_samples``:
:class:`store.views.MemoryHealthSamples`) lives in objects of its own, one per log
(:meth:`MemoryLog.side_table`). Their
writes join a transaction (:meth:`MemoryTransaction.side_writes`): applied in the same step as
its events at the commit, dropped at a rollback, so a reader never sees one without the other.
Row locks are the log's own claims (:meth:`MemoryTransaction.lock`,
:meth:`MemoryTransaction.lock_now` for ``SKIP LOCKED``), held until the transaction ends, with
the same waiting and deadlock refusal as its writes.

Leases: PostgreSQL keeps lease generations in a table; here :meth:`MemoryLog.grant` bumps a
lease's generation (a take-over), and fenced writes are checked against it, and again at the
commit of a transaction that made them.

**Hooks for deterministic simulation** (issue 13), all given to the constructor:

``clock``
    ``() -> datetime`` (tz-aware UTC): ``recorded_at`` of appends (the transaction's start,
    like PostgreSQL's ``now()``). Default: the wall clock.
``yield_point``
    ``async (operation) -> None``, awaited at the start of every operation (``"append"``,
    ``"read_page"``, ``"commit"``, ...; the names are :data:`OPERATIONS`). Default:
    ``anyio.lowlevel.checkpoint()``. A simulator replaces it to choose which task runs next.
``faults``
    ``(operation) -> None``, called after the yield point, before the operation touches the
    log. Raise :class:`StoreUnavailable` (or any error) to make the store "down" or fail a
    commit; an operation that raises there has done nothing (a failed ``"commit"`` rolls the
    transaction back). Default: no faults.
``on_commit``
    ``(events) -> None``, called inside each commit, as it makes ``events`` (decoded, unknown
    types left out) visible, in the committing task: a simulation checks its invariants there,
    with the state of the leases at that very moment. It must not raise. Default: none.
``lost_ack``
    ``(operation) -> bool``, called after a write has committed (``"append"``, ``"commit"``,
    ``"save_checkpoint"``, ``"save_tick"``, ``"lease"``): True makes the caller see
    :class:`StoreUnavailable` although the write is done, as when the connection drops
    between PostgreSQL's commit and its answer. Default: never.
"""

from __future__ import annotations

import bisect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Hashable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Final, Protocol, Self, TypeVar, cast

import anyio
import anyio.lowlevel
import msgspec

from events import DEFAULT_REGISTRY, Event, EventMetadata, EventRegistry, environment
from events.errors import (
    CheckpointConflict,
    ConcurrencyConflict,
    EventIdReused,
    StaleGeneration,
    StoreError,
    StoreUnavailable,
)
from events.registry import same_payload
from store.eventstore import (
    Append,
    Fence,
    NewEvent,
    Page,
    RecordedPosition,
    _check_stream,
    _encode_rows,
    _expectation,
    _Row,
    _state_type,
)
from store.reading import PagedReads
from store.records import ANY, START, AppendResult, Cursor, Expected, RecordedEvent, TickRecord
from store.stored import HashedPage, StoredDecoder, StoredEvent, StoredPage, hashed
from store.subscription import Subscription

if TYPE_CHECKING:
    pass

__all__ = [
    "OPERATIONS",
    "READS",
    "MemoryLeaseListener",
    "MemoryLog",
    "MemorySubscription",
    "MemoryTransaction",
    "SideWrites",
]

logger = logging.getLogger(__name__)

S = TypeVar("S", bound=msgspec.Struct)
T = TypeVar("T")
W = TypeVar("W", bound="SideWrites")

READS: Final = frozenset(
    {
        "load_checkpoint",
        "load_tick",
        "load_snapshot",
        "stream_version",
        "read_stream",
        "read_event",
        "last_event",
        "head",
        "cursor_at",
        "read_page",
        "read_stored",
        "read_hashed",
        "held_back",
        "stored_ids",
        "task_read",
        "flow_read",
        "ping",
        "samples_read",
    }
)
"""The operations that only read."""
OPERATIONS: Final = READS | {
    "append",
    "append_many",
    "begin",
    "commit",
    "save_checkpoint",
    "save_tick",
    "save_snapshot",
    "lease",
    "flow_take",
    "flow_pause",
    "task_limits",
}
"""The names the ``yield_point`` and ``faults`` hooks are called with."""

_NO_METADATA = EventMetadata()
_EMPTY_METADATA = b"{}"


def _check_tick_name(name: str) -> None:
    # PostgreSQL's CHECK refuses it too (ticks_name_check).
    if not isinstance(name, str) or not 1 <= len(name) <= 200:
        raise ValueError(f"a tick schedule's name is 1 to 200 characters, got {name!r}")


def _check_checkpoint_name(name: str) -> None:
    # PostgreSQL's CHECK refuses it too (checkpoints_name_check).
    if not 1 <= len(name) <= 200:
        raise ValueError(f"a checkpoint name is 1 to 200 characters, got {name!r}")


def _reused_in_transaction(event_id: uuid.UUID) -> EventIdReused:
    # EventStore's words: inside a transaction, PostgreSQL's refusal aborts it.
    return EventIdReused(
        event_id,
        "an event id of this append is already stored; inside a transaction the "
        "store cannot tell a retry from a reuse (append outside it to find out)",
    )


def _wall_clock() -> datetime:
    return environment.now()


async def _checkpoint(operation: str) -> None:
    await anyio.lowlevel.checkpoint()


def _no_faults(operation: str) -> None:
    return None


def _never(operation: str) -> bool:
    return False


class SideWrites(Protocol):
    """A transaction's writes to a side table (see the module docstring): kept apart until
    the transaction ends, then applied (``commit``) or dropped (``discard``), exactly once.
    Neither may fail or wait: they run inside the log's own commit and rollback."""

    def commit(self) -> None: ...

    def discard(self) -> None: ...


_Stored = StoredEvent
"""One row of the log, as PostgreSQL would hold it (payload and metadata as JSON)."""


def _key(row: StoredEvent) -> tuple[int, int]:
    """Where a row sorts in the log's reading order."""
    return (row.transaction_id, row.position)


@dataclass(slots=True)
class _Request:
    stream: str
    expected: Expected
    exact: int | None
    must_exist: bool
    rows: list[_Row]
    fence: Fence | None


class _Blocked(Exception):
    """Internal: the write needs something an open transaction has claimed; wait for it."""

    def __init__(self, holder: _Tx) -> None:
        self.holder = holder


@dataclass(slots=True)
class _LeaseRow:
    """A lease's holder and times (its generation is in ``MemoryLog._leases``)."""

    node: str | None
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a str, got {value!r}")
    return value


def _seconds(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"expected seconds as a number, got {value!r}")
    return float(value)


@dataclass(eq=False, slots=True)
class _Tx:
    """A transaction's state: what it wrote, not yet visible to anyone else."""

    started_at: datetime
    transaction_id: int | None = None
    rows: list[_Stored] = field(default_factory=list)
    checkpoints: dict[str, Cursor] = field(default_factory=dict)
    ticks: dict[str, TickRecord] = field(default_factory=dict)
    claims: set[Hashable] = field(default_factory=set)
    fences: set[Fence] = field(default_factory=set)
    side: dict[Hashable, SideWrites] = field(default_factory=dict)
    ended: anyio.Event = field(default_factory=anyio.Event)
    committed: bool = False
    waiting_on: _Tx | None = None

    def version(self, stream: str) -> int:
        mine = [row.version for row in self.rows if row.stream == stream]
        return max(mine, default=0)


class MemoryLeaseListener:
    """A follower of the log's lease releases (:meth:`MemoryLog.lease_listener`); the same
    ``listen``/``listening``/``close`` as a PostgreSQL :class:`store._wakeup.Listener`."""

    def __init__(self, log: MemoryLog, on_release: Callable[[str], None]) -> None:
        self._log = log
        self.on_release = on_release
        self.owner: Hashable = None  # whose LISTEN connection it listens on

    @property
    def listening(self) -> bool:
        return self in self._log._lease_listeners

    async def listen(self) -> bool:
        """Follow the releases from now on: whether it started following now."""
        if self.listening:
            return False
        self.owner = self._log.listening_owner()
        self._log._lease_listeners[self] = None
        return True

    async def close(self) -> None:
        self._log._lease_listeners.pop(self, None)


class MemoryLog(PagedReads):
    """The event log in memory: the :class:`store.port.EventLog` port without PostgreSQL.

    Hooks for simulation (``clock``, ``yield_point``, ``faults``): see the module docstring.

    ``safety_poll``: the least number of seconds between the re-reads that subscriptions and
    task processors on this log make without being woken. They poll because PostgreSQL's
    notifications can be lost with their connection; this log wakes them at every commit and
    loses no wake-up, so a simulation stretches their polls: it runs faster, and a wake-up
    that the code itself fails to arm shows up as work left undone instead of as a second's
    delay. None keeps every caller's own interval.

    ``caller``: who is calling (a simulation's node), for the loss of LISTEN connections. On
    PostgreSQL a process's followers listen on one connection, lost when the database goes
    away: notifications sent meanwhile are not heard, and each follower hears again only once
    it listens again. With ``caller`` set, a fault (``faults`` raising
    :class:`StoreUnavailable`) makes this log forget the listening of that caller's followers
    (subscriptions, task processors, lease followers, each tagged with its caller when it
    listens) as that connection would, and wakes the subscriptions as their ``on_lost`` does
    there. None: listening is never lost.
    """

    def __init__(
        self,
        *,
        registry: EventRegistry = DEFAULT_REGISTRY,
        node: str | None = None,
        clock: Callable[[], datetime] = _wall_clock,
        yield_point: Callable[[str], Awaitable[None]] = _checkpoint,
        faults: Callable[[str], None] = _no_faults,
        lost_ack: Callable[[str], bool] = _never,
        on_commit: Callable[[list[RecordedEvent]], None] | None = None,
        safety_poll: float | None = None,
        caller: Callable[[], Hashable] | None = None,
    ) -> None:
        if safety_poll is not None and not safety_poll > 0:
            raise ValueError(f"safety_poll must be a positive number of seconds, got {safety_poll}")
        self.registry = registry
        self.safety_poll = safety_poll
        self.node = node
        self.clock = clock
        self.yield_point = yield_point
        self.faults = faults
        self.lost_ack = lost_ack
        self.on_commit = on_commit
        self.caller = caller
        # What each caller's LISTEN connection is lost with (lose_listening), side tables' too.
        self._on_listen_lost: list[Callable[[Hashable], None]] = []
        self._metadata_encoder = msgspec.json.Encoder()
        self._decoder = StoredDecoder(registry)
        # The log, in reading order (transaction id, position), with its indexes.
        self._rows: list[_Stored] = []
        self._keys: list[tuple[int, int]] = []
        # Each category's rows and keys in the same order (PostgreSQL's reading-order index
        # holds the category): a category's reader skips no other category's rows.
        self._by_category: dict[str, tuple[list[tuple[int, int]], list[_Stored]]] = {}
        self._by_stream: dict[str, list[_Stored]] = {}
        self._by_id: dict[uuid.UUID, _Stored] = {}
        self._by_position: dict[int, _Stored] = {}
        self._next_position = 1
        self._next_transaction_id = 1
        self._open: dict[int, _Tx] = {}  # transactions that have written, by transaction id
        self._claims: dict[Hashable, _Tx] = {}
        self._checkpoints: dict[str, Cursor] = {}
        self._ticks: dict[str, TickRecord] = {}
        self._snapshots: dict[str, tuple[int, str, bytes]] = {}
        self._leases: dict[str, int] = {}  # generation, by lease: what fences are checked on
        self._lease_rows: dict[str, _LeaseRow] = {}  # holder and times, for lease_fetchval
        # Told of each release, in the order they began to listen (a dict: no id() order).
        self._lease_listeners: dict[MemoryLeaseListener, None] = {}
        self._subscriptions: set[MemorySubscription] = set()
        self._side_tables: dict[type[object], object] = {}
        self._closed = False

    def stretched(self, poll_interval: float) -> float:
        """A subscription's or task processor's poll interval on this log (``safety_poll``)."""
        return poll_interval if self.safety_poll is None else max(poll_interval, self.safety_poll)

    # -- lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True

    async def _enter(self, operation: str) -> None:
        """Every operation starts here: the scheduling hook, then the fault hook."""
        await self.yield_point(operation)
        if self._closed:
            raise StoreError("the memory log is closed")
        try:
            self.faults(operation)
        except StoreUnavailable:
            if self.caller is not None:
                self.lose_listening(self.caller())
            raise

    def listening_owner(self) -> Hashable:
        """Whose LISTEN connection a follower that starts listening now uses (``caller``)."""
        return None if self.caller is None else self.caller()

    def on_listen_lost(self, lose: Callable[[Hashable], None]) -> None:
        """Have ``lose(owner)`` called when ``owner``'s LISTEN connection is lost (a side
        table's followers: see :meth:`lose_listening`)."""
        self._on_listen_lost.append(lose)

    def lose_listening(self, owner: Hashable) -> None:
        """``owner``'s LISTEN connection is gone: its followers hear nothing until they
        listen again; its subscriptions are woken, as PostgreSQL's ``on_lost`` wakes them."""
        for listener in [f for f in self._lease_listeners if f.owner == owner]:
            del self._lease_listeners[listener]
        for subscription in [s for s in self._subscriptions if s.owner == owner]:
            self._subscriptions.discard(subscription)
            subscription._wake.set()
        for lose in self._on_listen_lost:
            lose(owner)

    def _acknowledge(self, operation: str) -> None:
        """After a commit: the ``lost_ack`` hook may make the caller believe it failed."""
        if self.lost_ack(operation):
            raise StoreUnavailable(
                f"{operation}: the connection was lost before the commit was acknowledged "
                "(it may have committed)"
            )

    async def ping(self) -> None:
        """One round trip to the log and nothing else (``store.views.ping``'s ``SELECT 1``):
        it passes the ``"ping"`` hooks, so a simulation can make the log unreachable for it
        (:class:`StoreUnavailable`) or slow, as a database is; otherwise it answers."""
        await self._enter("ping")

    async def enter(self, operation: str) -> None:
        """Where an operation of a side table starts (one of :data:`OPERATIONS`): the
        scheduling hook, then the fault hook, as for the log's own."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}: see OPERATIONS")
        await self._enter(operation)

    # -- side tables ------------------------------------------------------------------------
    def side_table(self, kind: type[T], make: Callable[[], T]) -> T:
        """This log's one ``kind`` of side table, made by ``make`` on first use: shared by
        every client of the log, as a database's tables are."""
        table = self._side_tables.get(kind)
        if table is None:
            table = self._side_tables[kind] = make()
        assert isinstance(table, kind)
        return table

    def max_payload_int(self, event_type: str, field: str) -> int:
        """The largest integer ``field`` of committed ``event_type`` payloads; 0 when none
        (``store.views.max_payload_int``'s rule)."""
        largest = 0
        for row in self._rows:
            if row.type == event_type:
                value = msgspec.json.decode(row.payload).get(field)
                if isinstance(value, int) and not isinstance(value, bool):
                    largest = max(largest, value)
        return largest

    # -- leases -----------------------------------------------------------------------------
    def grant(self, lease: str) -> int:
        """Grant ``lease`` anew (a take-over): its generation goes up by one and is returned;
        writes fenced with an older generation are refused from now on."""
        generation = self._leases.get(lease, 0) + 1
        self._leases[lease] = generation
        return generation

    def lease_generation(self, lease: str) -> int | None:
        return self._leases.get(lease)

    async def lease_fetchval(self, name: str, *args: object) -> object:
        """The lease statements of :mod:`store.leases`, by the names of their SQL
        (``store/sql/queries.sql``), with the same arguments and answers, judged by the log's
        ``clock`` as PostgreSQL judges them by its ``now()``:

        ``lease_acquire(name, node, ttl)``
            take the lease if it is free (never granted, released or expired) or already
            ``node``'s; every grant bumps the generation (the one fences are checked
            against). The generation, or None when another holder has it.
        ``lease_renew(name, node, generation, ttl)``
            extend our live grant of that generation: its new expiry, or None.
        ``lease_renew_many(node, names, generations, ttl)``
            ``lease_renew`` of each name with the generation beside it, in one operation:
            the names renewed, sorted.
        ``lease_release(name, node, generation)``
            hand it back at once: the name, or None when it was not ours. Every
            :meth:`lease_listener` is told the name, as PostgreSQL NOTIFYs ``i3lani_leases``.
        ``lease_expires_in(name)``
            seconds until the current grant expires (0 once it has), or None when nobody
            holds it (never granted, or handed back).
        ``lease_generation(name)``
            the current generation, or None.

        The ``"lease"`` operation's hooks run first (a simulator may fail it as the database
        would: :class:`StoreUnavailable`)."""
        await self._enter("lease")
        now = self.clock()
        if name == "lease_acquire":
            lease, node, ttl = _str(args[0]), _str(args[1]), _seconds(args[2])
            row = self._lease_rows.get(lease)
            if row is not None and not (
                row.node is None or row.expires_at < now or row.node == node
            ):
                return None
            generation = self.grant(lease)
            self._lease_rows[lease] = _LeaseRow(node, now, now, now + timedelta(seconds=ttl))
            self._acknowledge("lease")
            return generation
        if name == "lease_renew":
            lease, node, wanted, ttl = _str(args[0]), _str(args[1]), args[2], _seconds(args[3])
            row = self._live_grant(lease, node, wanted, now)
            if row is None:
                return None
            row.renewed_at, row.expires_at = now, now + timedelta(seconds=ttl)
            self._acknowledge("lease")
            return row.expires_at
        if name == "lease_renew_many":
            node, ttl = _str(args[0]), _seconds(args[3])
            names, generations = args[1], args[2]
            assert isinstance(names, list)
            assert isinstance(generations, list)
            expires_at = now + timedelta(seconds=ttl)
            renewed: list[str] = []
            for lease, wanted in zip(names, generations, strict=True):
                row = self._live_grant(lease, node, wanted, now)
                if row is None:
                    continue
                row.renewed_at, row.expires_at = now, expires_at
                renewed.append(lease)
            self._acknowledge("lease")
            return sorted(renewed)
        if name == "lease_release":
            lease, node, wanted = _str(args[0]), _str(args[1]), args[2]
            row = self._lease_rows.get(lease)
            if row is None or row.node != node or self._leases.get(lease) != wanted:
                return None
            row.node, row.expires_at = None, now
            for listener in list(self._lease_listeners):  # committed: NOTIFY goes out
                listener.on_release(lease)
            self._acknowledge("lease")
            return lease
        if name == "lease_expires_in":
            row = self._lease_rows.get(_str(args[0]))
            if row is None or row.node is None:
                return None
            return max((row.expires_at - now).total_seconds(), 0.0)
        if name == "lease_generation":
            return self._leases.get(_str(args[0]))
        raise ValueError(f"unknown lease statement {name!r}")

    def _live_grant(
        self, lease: str, node: str, generation: object, now: datetime
    ) -> _LeaseRow | None:
        """``node``'s grant of ``lease`` at ``generation``, if it is the current one and has
        not expired by ``now`` (what a renewal may extend); None otherwise."""
        row = self._lease_rows.get(lease)
        if (
            row is None
            or row.node != node
            or self._leases.get(lease) != generation
            or row.expires_at < now
        ):
            return None
        return row

    def lease_listener(self, on_release: Callable[[str], None]) -> MemoryLeaseListener:
        """A follower of lease releases (``lease_release``), told each released lease's name:
        the in-memory counterpart of LISTEN ``i3lani_leases`` (:mod:`store.leases`), never
        lost, so it always listens once :meth:`MemoryLeaseListener.listen` was called."""
        return MemoryLeaseListener(self, on_release)

    def lease_holder(self, name: str) -> str | None:
        """Who holds lease ``name`` now, by the log's clock (None: free, released or
        expired). Synchronous: for a simulation's checks inside :attr:`on_commit`."""
        row = self._lease_rows.get(name)
        if row is None or row.node is None or row.expires_at < self.clock():
            return None
        return row.node

    async def lease_infos(self) -> list[dict[str, object]]:
        """Every lease as ``store.leases.LeaseInfo`` fields (the ``leases`` query's columns),
        judged by the log's clock."""
        await self._enter("lease")
        now = self.clock()
        infos: list[dict[str, object]] = []
        for lease in sorted(self._lease_rows):
            row = self._lease_rows[lease]
            live = row.expires_at >= now
            infos.append(
                {
                    "name": lease,
                    "node": row.node,
                    "generation": self._leases[lease],
                    "acquired_at": row.acquired_at,
                    "renewed_at": row.renewed_at,
                    "expires_at": row.expires_at,
                    "live": live,
                    "suspect": row.node is not None
                    and live
                    and now - row.renewed_at > (row.expires_at - row.renewed_at) / 2,
                    "renewed_seconds_ago": (now - row.renewed_at).total_seconds(),
                }
            )
        return infos

    def _check_fence(self, fence: Fence | None) -> None:
        if fence is None:
            return
        fence.check()  # this node's own clock first, as before anything is sent
        if self._leases.get(fence.lease) != fence.generation:
            raise StaleGeneration(fence.lease, fence.generation)

    # -- encoding ---------------------------------------------------------------------------
    def _prepare(
        self,
        stream: str,
        events: Sequence[Event | NewEvent],
        expected: Expected,
        metadata: EventMetadata | None,
        fence: Fence | None,
    ) -> _Request:
        """Validate and encode everything before touching the log (as EventStore does)."""
        _check_stream(stream)
        exact, must_exist = _expectation(expected)
        rows = _encode_rows(self.registry, self._encode_metadata, events, metadata, fence)
        return _Request(stream, expected, exact, must_exist, rows, fence)

    def _encode_metadata(self, meta: EventMetadata | None) -> bytes:
        if meta is None:
            if self.node is None:
                return _EMPTY_METADATA
            meta = EventMetadata(node=self.node)
        elif meta.node is None and self.node is not None:
            meta = msgspec.structs.replace(meta, node=self.node)
        return self._metadata_encoder.encode(meta)

    def _decode(self, rows: Sequence[_Stored], skip_unknown: bool) -> list[RecordedEvent]:
        if not rows:  # most polls find nothing new
            return []
        return self._decoder.decode_or_raise(rows, skip_unknown=skip_unknown)

    # -- the visible log --------------------------------------------------------------------
    def _horizon(self) -> int:
        """Transaction ids below this are finished (PostgreSQL's snapshot xmin)."""
        return min(self._open, default=self._next_transaction_id)

    def _version(self, stream: str) -> int:
        rows = self._by_stream.get(stream)
        return rows[-1].version if rows else 0

    def _claim(self, tx: _Tx, key: Hashable) -> None:
        holder = self._claims.get(key)
        if holder is not None and holder is not tx:
            raise _Blocked(holder)

    async def _wait_for(self, blocked: _Blocked, tx: _Tx | None) -> bool:
        """Wait until the transaction holding a claim ends; whether it committed. Two
        transactions waiting on each other is a deadlock, refused as PostgreSQL would."""
        holder: _Tx | None = blocked.holder
        while holder is not None:
            if holder is tx:
                raise StoreError("deadlock: two transactions wait on each other's writes")
            holder = holder.waiting_on
        if tx is not None:
            tx.waiting_on = blocked.holder
        try:
            await blocked.holder.ended.wait()
        finally:
            if tx is not None:
                tx.waiting_on = None
        return blocked.holder.committed

    def _begin_writing(self, tx: _Tx) -> int:
        if tx.transaction_id is None:
            tx.transaction_id = self._next_transaction_id
            self._next_transaction_id += 1
            self._open[tx.transaction_id] = tx
        return tx.transaction_id

    def _commit(self, tx: _Tx) -> None:
        """Make the transaction's writes visible, all at once."""
        for row in tx.rows:
            key = _key(row)
            index = bisect.bisect(self._keys, key)
            self._keys.insert(index, key)
            self._rows.insert(index, row)
            keys, rows = self._by_category.setdefault(row.stream.split("-", 1)[0], ([], []))
            index = bisect.bisect(keys, key)
            keys.insert(index, key)
            rows.insert(index, row)
            self._by_stream.setdefault(row.stream, []).append(row)
            self._by_id[row.event_id] = row
            self._by_position[row.position] = row
        self._checkpoints.update(tx.checkpoints)
        self._ticks.update(tx.ticks)
        for writes in tx.side.values():
            writes.commit()  # with the events, before anyone waiting on tx looks again
        tx.committed = True
        self._end(tx)
        if self.on_commit is not None and tx.rows:
            self.on_commit(self._decode(tx.rows, skip_unknown=True))
        categories = {row.stream.split("-", 1)[0] for row in tx.rows}
        if categories:
            for subscription in list(self._subscriptions):
                subscription._on_notify(",".join(sorted(categories)))

    def _end(self, tx: _Tx) -> None:
        if not tx.committed:
            for writes in tx.side.values():
                writes.discard()
            tx.side.clear()
        for key in tx.claims:
            if self._claims.get(key) is tx:
                del self._claims[key]
        tx.ended.set()
        if tx.transaction_id is not None:
            self._open.pop(tx.transaction_id, None)
            for subscription in list(self._subscriptions):
                if subscription.waiting_behind:
                    subscription._wake.set()  # what it held back may be readable now

    # -- appending --------------------------------------------------------------------------
    async def append(
        self,
        stream: str,
        events: Sequence[Event | NewEvent],
        *,
        expected_version: Expected = ANY,
        metadata: EventMetadata | None = None,
        fence: Fence | None = None,
    ) -> AppendResult:
        """Append ``events`` to ``stream`` atomically, if ``expected_version`` holds (and,
        with ``fence``, only while that lease generation is current)."""
        request = self._prepare(stream, events, expected_version, metadata, fence)
        if fence is not None:
            fence.check()
        await self._enter("append")
        while True:
            tx = _Tx(started_at=self.clock())
            try:
                result = self._append_in(tx, request, in_transaction=False)
            except _Blocked as blocked:
                await self._wait_for(blocked, None)
                continue
            except BaseException:
                self._end(tx)
                raise
            self._commit(tx)
            self._acknowledge("append")
            return result

    def _append_in(self, tx: _Tx, request: _Request, *, in_transaction: bool) -> AppendResult:
        """One append as ``tx``'s next write, or its refusal; nothing written when it raises.
        The order of checks is EventStore's: fence, expected version (a failed one may be a
        retry of a stored append), then event ids."""
        self._check_fence(request.fence)
        stream = request.stream
        actual = max(self._version(stream), tx.version(stream))
        exact = request.exact
        if (
            in_transaction
            and exact is not None
            and len(request.rows) == 1
            and request.fence is None
            and exact < actual
        ):
            # PostgreSQL's one-event path (append_exact) tries the insert, and the unique
            # indexes refuse it (event id first): inside a transaction, which that aborts,
            # the store cannot look further, and reports what it knows.
            event_id = request.rows[0].event_id
            self._claim(tx, ("id", event_id))
            if self._lookup(tx, event_id) is not None:
                raise _reused_in_transaction(event_id)
            raise ConcurrencyConflict(stream, request.expected, None)
        if (exact is not None and actual != exact) or (request.must_exist and actual == 0):
            original = self._original_append(request, tx)
            if original is not None:
                return original
            raise ConcurrencyConflict(stream, request.expected, actual)
        ids = [row.event_id for row in request.rows]
        for event_id in ids:
            self._claim(tx, ("id", event_id))
        if any(event_id in self._by_id or self._in_tx(tx, event_id) for event_id in ids):
            if in_transaction:
                raise _reused_in_transaction(ids[0])
            original = self._original_append(request, tx)
            if original is not None:
                return original
            raise EventIdReused(ids[0], "the stored event differs")
        for n in range(1, len(request.rows) + 1):
            self._claim(tx, ("version", stream, actual + n))
        # Every check held: write.
        transaction_id = self._begin_writing(tx)
        landed: list[_Stored] = []
        for n, row in enumerate(request.rows, start=1):
            stored = _Stored(
                position=self._next_position,
                transaction_id=transaction_id,
                event_id=row.event_id,
                stream=stream,
                version=actual + n,
                type=row.type,
                schema_version=row.schema_version,
                payload=row.payload,
                metadata=row.metadata,
                recorded_at=tx.started_at,
            )
            self._next_position += 1
            landed.append(stored)
            for key in (("id", row.event_id), ("version", stream, actual + n)):
                self._claims[key] = tx
                tx.claims.add(key)
        tx.rows.extend(landed)
        if request.fence is not None:
            tx.fences.add(request.fence)
        return AppendResult(
            stream=stream,
            first_version=landed[0].version,
            last_version=landed[-1].version,
            first_position=landed[0].position,
            last_position=landed[-1].position,
            transaction_id=transaction_id,
            recorded_at=tx.started_at,
        )

    @staticmethod
    def _in_tx(tx: _Tx, event_id: uuid.UUID) -> bool:
        return any(row.event_id == event_id for row in tx.rows)

    def _lookup(self, tx: _Tx, event_id: uuid.UUID) -> _Stored | None:
        found = self._by_id.get(event_id)
        if found is None:
            found = next((row for row in tx.rows if row.event_id == event_id), None)
        return found

    def _original_append(self, request: _Request, tx: _Tx) -> AppendResult | None:
        """If every event of ``request`` is already stored, identically and in order, the
        result of that earlier append; None if none is stored; EventIdReused otherwise."""
        ids = [row.event_id for row in request.rows]
        found = {i: hit for i in ids if (hit := self._lookup(tx, i)) is not None}
        if not found:
            return None
        if len(found) != len(ids):
            raise EventIdReused(
                next(i for i in ids if i in found),
                f"only {len(found)} of the {len(ids)} events of this append are stored",
            )
        records = [found[event_id] for event_id in ids]
        for row, record in zip(request.rows, records, strict=True):
            if record.stream != request.stream:
                raise EventIdReused(row.event_id, f"it is stored in stream {record.stream!r}")
            if record.type != row.type or not same_payload(record.payload, row.payload, row.type):
                raise EventIdReused(row.event_id, f"stored as another {record.type}")
        versions = [record.version for record in records]
        if versions != list(range(versions[0], versions[0] + len(versions))):
            raise EventIdReused(records[0].event_id, "stored in another order")
        return AppendResult(
            stream=request.stream,
            first_version=versions[0],
            last_version=versions[-1],
            first_position=records[0].position,
            last_position=records[-1].position,
            transaction_id=records[0].transaction_id,
            recorded_at=records[0].recorded_at,
            duplicate=True,
        )

    def insert_encoded(
        self,
        stream: str,
        version: int,
        tag: str,
        schema_version: int,
        payload: bytes,
        *,
        event_id: uuid.UUID | None = None,
        metadata: bytes = _EMPTY_METADATA,
    ) -> int:
        """Store a row as another client or release would have, bypassing the registry and
        every check but the unique ones (a type this release does not know, an old schema
        version); its global position. For tests and simulations."""
        _check_stream(stream)
        if version < 1 or schema_version < 1:
            raise ValueError("stream and schema versions start at 1")
        event_id = event_id if event_id is not None else environment.new_uuid()
        if event_id in self._by_id or ("id", event_id) in self._claims:
            raise EventIdReused(event_id, "already stored")
        if any(row.version == version for row in self._by_stream.get(stream, [])):
            raise ConcurrencyConflict(stream, version - 1, self._version(stream))
        tx = _Tx(started_at=self.clock())
        transaction_id = self._begin_writing(tx)
        tx.rows.append(
            _Stored(
                self._next_position,
                transaction_id,
                event_id,
                stream,
                version,
                tag,
                schema_version,
                payload,
                metadata,
                tx.started_at,
            )
        )
        self._next_position += 1
        self._commit(tx)
        return tx.rows[0].position

    # -- transactions -----------------------------------------------------------------------
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[MemoryTransaction]:
        """A unit of work: its appends and checkpoints commit together, or not at all."""
        await self._enter("begin")
        state = _Tx(started_at=self.clock())
        tx = MemoryTransaction(self, state)
        try:
            yield tx
            await self._enter("commit")
            # Last look before the commit: a node paused past its lease rolls back, and so
            # does a write whose lease was granted elsewhere meanwhile.
            for fence in state.fences:
                self._check_fence(fence)
        except BaseException:
            self._end(state)
            raise
        self._commit(state)
        self._acknowledge("commit")

    # -- checkpoints ------------------------------------------------------------------------
    async def load_checkpoint(self, name: str) -> Cursor | None:
        await self._enter("load_checkpoint")
        return self._checkpoints.get(name)

    async def save_checkpoint(
        self,
        name: str,
        cursor: Cursor,
        *,
        expected: Cursor | None,
        fence: Fence | None = None,
    ) -> None:
        """Move checkpoint ``name`` from ``expected`` (None: it must not exist) to ``cursor``;
        CheckpointConflict if someone else moved it; with ``fence``, StaleGeneration unless
        that lease generation is current."""
        _check_checkpoint_name(name)
        if fence is not None:
            fence.check()
        await self._write_alone(
            "save_checkpoint",
            lambda tx: self._save_checkpoint_in(tx, name, cursor, expected, fence),
        )

    async def _write_alone(self, operation: str, write: Callable[[_Tx], None]) -> None:
        """One write in a transaction of its own (PostgreSQL's single statement): waits for
        a transaction holding what it needs, then commits."""
        await self._enter(operation)
        while True:
            tx = _Tx(started_at=self.clock())
            try:
                write(tx)
            except _Blocked as blocked:
                await self._wait_for(blocked, None)
                continue
            except BaseException:
                self._end(tx)
                raise
            self._commit(tx)
            self._acknowledge(operation)
            return

    def _save_checkpoint_in(
        self, tx: _Tx, name: str, cursor: Cursor, expected: Cursor | None, fence: Fence | None
    ) -> None:
        self._claim(tx, ("checkpoint", name))
        self._check_fence(fence)
        actual = tx.checkpoints.get(name, self._checkpoints.get(name))
        if actual != expected:
            raise CheckpointConflict(name, expected, actual)
        self._claims[("checkpoint", name)] = tx
        tx.claims.add(("checkpoint", name))
        tx.checkpoints[name] = cursor
        if fence is not None:
            tx.fences.add(fence)

    # -- tick schedules ---------------------------------------------------------------------
    async def load_tick(self, name: str) -> TickRecord | None:
        """Actor ``name``'s tick schedule as last saved, or None."""
        await self._enter("load_tick")
        return self._ticks.get(name)

    async def save_tick(
        self,
        name: str,
        due_at: datetime,
        ticked_at: datetime,
        *,
        node: str | None = None,
        fence: Fence | None = None,
    ) -> None:
        """Record actor ``name``'s last tick (overwritten in place), run on ``node`` (default:
        the log's); with ``fence``, StaleGeneration unless that lease generation is current."""
        _check_tick_name(name)
        if fence is not None:
            fence.check()
        tick = self._tick(due_at, ticked_at, node, fence)
        await self._write_alone("save_tick", lambda tx: self._save_tick_in(tx, name, tick, fence))

    def _tick(
        self, due_at: datetime, ticked_at: datetime, node: str | None, fence: Fence | None
    ) -> TickRecord:
        return TickRecord(
            due_at=due_at,
            ticked_at=ticked_at,
            node=node if node is not None else self.node,
            generation=fence.generation if fence is not None else None,
        )

    def _save_tick_in(self, tx: _Tx, name: str, tick: TickRecord, fence: Fence | None) -> None:
        self._claim(tx, ("tick", name))
        self._check_fence(fence)
        self._claims[("tick", name)] = tx
        tx.claims.add(("tick", name))
        tx.ticks[name] = tick
        if fence is not None:
            tx.fences.add(fence)

    # -- snapshots --------------------------------------------------------------------------
    async def save_snapshot(self, stream: str, version: int, state: msgspec.Struct) -> None:
        """Keep ``state`` as of ``version`` of ``stream`` (an older one never replaces it)."""
        if version < 1:
            # PostgreSQL's CHECK refuses it too (snapshots_stream_version_check).
            raise ValueError(f"a snapshot is of version 1 or later, got {version}")
        state_type = _state_type(type(state))
        encoded = msgspec.json.encode(state)
        await self._enter("save_snapshot")
        stored = self._snapshots.get(stream)
        if stored is None or stored[0] <= version:
            self._snapshots[stream] = (version, state_type, encoded)

    async def load_snapshot(self, stream: str, state_cls: type[S]) -> tuple[int, S] | None:
        """(version, state) if a snapshot of ``stream`` of this exact type exists."""
        await self._enter("load_snapshot")
        stored = self._snapshots.get(stream)
        if stored is None or stored[1] != _state_type(state_cls):
            return None
        try:
            state = msgspec.json.decode(stored[2], type=state_cls)
        except msgspec.ValidationError:
            logger.warning(
                "ignoring snapshot of %s that no longer decodes",
                stream,
                extra={"action": "snapshot_ignored"},
            )
            return None
        return stored[0], state

    # -- reading ----------------------------------------------------------------------------
    async def stream_version(self, stream: str) -> int:
        """The stream's current version (0 for a stream with no events)."""
        await self._enter("stream_version")
        return self._version(stream)

    async def read_stream(
        self,
        stream: str,
        *,
        after_version: int = 0,
        limit: int | None = None,
        skip_unknown: bool = False,
    ) -> list[RecordedEvent]:
        """The stream's events with version > ``after_version``, in version order."""
        _check_stream(stream)
        await self._enter("read_stream")
        rows = [row for row in self._by_stream.get(stream, []) if row.version > after_version]
        return self._decode(rows if limit is None else rows[:limit], skip_unknown)

    async def read_stream_of_types(
        self, stream: str, types: Collection[str], *, skip_unknown: bool = False
    ) -> list[RecordedEvent]:
        """The stream's events whose stored type is one of ``types``, in version order: a
        query that filters on the ``type`` column (``store.views.desired_state``'s), which
        decodes none of the stream's other rows. The hooks run as for :meth:`read_stream`."""
        _check_stream(stream)
        await self._enter("read_stream")
        rows = [row for row in self._by_stream.get(stream, []) if row.type in types]
        return self._decode(rows, skip_unknown)

    async def last_event(self, stream: str, *, skip_unknown: bool = False) -> RecordedEvent | None:
        """The newest event of ``stream``, or None for an empty stream."""
        _check_stream(stream)
        await self._enter("last_event")
        rows = self._by_stream.get(stream)
        decoded = self._decode(rows[-1:] if rows else [], skip_unknown)
        return decoded[0] if decoded else None

    async def read_event(
        self, event_id: uuid.UUID, *, skip_unknown: bool = False
    ) -> RecordedEvent | None:
        """The event stored under ``event_id``, or None (also, with ``skip_unknown``, for an
        event of a type this release does not know)."""
        await self._enter("read_event")
        row = self._by_id.get(event_id)
        decoded = self._decode([row] if row is not None else [], skip_unknown)
        return decoded[0] if decoded else None

    def _in_order(self, category: str | None) -> tuple[list[tuple[int, int]], list[_Stored]]:
        """The keys and rows of ``category`` (of the whole log for None), in reading order."""
        if category is None:
            return self._keys, self._rows
        return self._by_category.get(category, ([], []))

    async def head(self) -> Cursor:
        """The cursor of the newest readable event (START for an empty log)."""
        await self._enter("head")
        end = bisect.bisect_left(self._keys, (self._horizon(), 0))
        if end == 0:
            return START
        row = self._rows[end - 1]
        return Cursor(row.transaction_id, row.position)

    async def cursor_at(self, position: int) -> Cursor:
        """The reading cursor just after the event at global ``position`` (0: the start)."""
        if position == 0:
            return START
        await self._enter("cursor_at")
        row = self._by_position.get(position)
        if row is None:
            raise ValueError(f"no event at global position {position}")
        return Cursor(row.transaction_id, row.position)

    async def read_page(
        self,
        after: Cursor,
        *,
        category: str | None = None,
        limit: int = 1000,
        skip_unknown: bool = False,
    ) -> Page:
        """One page of the log after ``after``, in reading order, up to the present."""
        await self._enter("read_page")
        rows = self._readable(after, limit, category)
        if not rows:
            return Page([], after, 0)
        return Page(self._decode(rows, skip_unknown), rows[-1].cursor, len(rows))

    async def read_stored(self, after: Cursor, *, limit: int = 1000) -> StoredPage:
        """Up to ``limit`` rows after ``after`` as stored, in reading order, within the same
        horizon as ``read_page``: nothing decoded, nothing skipped."""
        await self._enter("read_stored")
        rows = self._readable(after, limit, None)
        return StoredPage(rows, rows[-1].cursor if rows else after)

    async def read_hashed(self, after: Cursor, *, limit: int = 1000) -> HashedPage:
        """The rows of ``read_stored``, each with its event hash: the Sealer's read."""
        await self._enter("read_hashed")
        rows = self._readable(after, limit, None)
        return HashedPage([hashed(row) for row in rows], rows[-1].cursor if rows else after)

    def _readable(self, after: Cursor, limit: int, category: str | None) -> list[_Stored]:
        """Up to ``limit`` committed rows past ``after`` (of ``category``), in reading order,
        below the horizon."""
        keys, rows = self._in_order(category)
        start = bisect.bisect(keys, (after.transaction_id, after.position))
        end = bisect.bisect_left(keys, (self._horizon(), 0), start)
        return rows[start : min(end, start + limit)]

    async def held_back(self, after: Cursor, category: str | None = None) -> bool:
        """Whether committed events past ``after`` exist that a read has not returned."""
        await self._enter("held_back")
        keys, _ = self._in_order(category)
        return bisect.bisect(keys, (after.transaction_id, after.position)) < len(keys)

    # -- following --------------------------------------------------------------------------
    def subscribe(
        self,
        name: str | None = None,
        *,
        category: str | None = None,
        after: Cursor | None = None,
        poll_interval: float = 1.0,
        batch_size: int = 500,
        skip_unknown: bool = False,
    ) -> MemorySubscription:
        """Follow the log: catch up from ``after`` (or checkpoint ``name``, or the start),
        then follow live, woken by every commit."""
        return MemorySubscription(
            self,
            name,
            category=category,
            after=after,
            poll_interval=poll_interval,
            batch_size=batch_size,
            skip_unknown=skip_unknown,
        )


class MemoryTransaction:
    """Appends and checkpoints of one :meth:`MemoryLog.transaction`, committed together."""

    def __init__(self, log: MemoryLog, state: _Tx) -> None:
        self.log = log
        self._state = state

    @property
    def streams(self) -> set[str]:
        return {row.stream for row in self._state.rows}

    @property
    def started_at(self) -> datetime:
        """When it began, by the log's clock: PostgreSQL's ``now()`` inside it."""
        return self._state.started_at

    def fenced(self, fence: Fence | None) -> None:
        """Note that a write under ``fence`` is part of this transaction: refused now unless
        that generation is current, and checked again at the commit (as
        :meth:`store.eventstore.Transaction.fenced` does)."""
        if fence is not None:
            self._check_open()
            self.log._check_fence(fence)
            self._state.fences.add(fence)

    # -- side tables (see the module docstring) -----------------------------------------------
    def side_writes(self, key: Hashable, make: Callable[[], W]) -> W:
        """This transaction's writes to the side table ``key``, made by ``make`` on first
        use; committed or discarded when the transaction ends."""
        self._check_open()
        writes = self._state.side.get(key)
        if writes is None:
            writes = self._state.side[key] = make()
        return cast(W, writes)  # one kind of writes per key: made by ``make``

    def lock_now(self, key: Hashable) -> bool:
        """Take the row lock ``key`` for the rest of the transaction if no other open
        transaction holds it (``FOR UPDATE SKIP LOCKED``); whether it is ours now."""
        self._check_open()
        holder = self.log._claims.get(key)
        if holder is not None and holder is not self._state:
            return False
        self.log._claims[key] = self._state
        self._state.claims.add(key)
        return True

    def locked_elsewhere(self, key: Hashable) -> bool:
        """Whether another open transaction holds the row lock ``key``."""
        holder = self.log._claims.get(key)
        return holder is not None and holder is not self._state

    async def wait_unlocked(self, key: Hashable) -> None:
        """Wait until no other transaction holds ``key`` (without taking it); two
        transactions waiting on each other are refused, as the log's writes are."""
        holder = self.log._claims.get(key)
        if holder is not None and holder is not self._state:
            await self.log._wait_for(_Blocked(holder), self._state)

    async def lock(self, key: Hashable) -> None:
        """Take the row lock ``key``, waiting for a transaction that holds it to end
        (``FOR UPDATE``). Read the row after this returns: the holder may have changed it."""
        while not self.lock_now(key):
            await self.wait_unlocked(key)

    def _check_open(self) -> None:
        if self._state.ended.is_set():
            raise StoreError("this transaction is over: use it only inside its `async with`")

    async def _enter(self, operation: str) -> None:
        if self._state.ended.is_set():
            raise StoreError("this transaction is over: use it only inside its `async with`")
        await self.log._enter(operation)

    async def append(
        self,
        stream: str,
        events: Sequence[Event | NewEvent],
        *,
        expected_version: Expected = ANY,
        metadata: EventMetadata | None = None,
        fence: Fence | None = None,
    ) -> AppendResult:
        request = self.log._prepare(stream, events, expected_version, metadata, fence)
        if fence is not None:
            fence.check()
        await self._enter("append")
        while True:
            try:
                return self.log._append_in(self._state, request, in_transaction=True)
            except _Blocked as blocked:
                if await self.log._wait_for(blocked, self._state):
                    # As in PostgreSQL: the other writer took the version (or the id) first.
                    raise ConcurrencyConflict(stream, expected_version, None) from None

    async def append_many(self, appends: Sequence[Append]) -> list[list[RecordedPosition]]:
        """Several appends, each to its own stream: every check of :meth:`append`; the first
        that fails raises, and none of this call's appends is kept."""
        requests = [
            self.log._prepare(a.stream, a.events, a.expected_version, a.metadata, a.fence)
            for a in appends
        ]
        if len({r.stream for r in requests}) != len(requests):
            raise ValueError("append_many takes at most one append per stream")
        for request in requests:
            if request.fence is not None:
                request.fence.check()
        await self._enter("append_many")
        state = self._state
        while True:
            rows_before, claims_before = len(state.rows), set(state.claims)
            fences_before = set(state.fences)
            try:
                self._check_many(requests)
                results = [self.log._append_in(state, r, in_transaction=True) for r in requests]
            except _Blocked as blocked:
                self._undo(rows_before, claims_before, fences_before)
                if await self.log._wait_for(blocked, state):
                    raise ConcurrencyConflict(requests[0].stream, ANY, None) from None
                continue
            except BaseException:
                self._undo(rows_before, claims_before, fences_before)
                raise
            break
        by_id = {row.event_id: row for row in state.rows[rows_before:]}
        return [
            [
                RecordedPosition(
                    position=by_id[row.event_id].position,
                    transaction_id=result.transaction_id,
                    version=by_id[row.event_id].version,
                    recorded_at=result.recorded_at,
                )
                for row in request.rows
            ]
            for request, result in zip(requests, results, strict=True)
        ]

    def _check_many(self, requests: Sequence[_Request]) -> None:
        """append_many's checks, in the order its one statement meets them in PostgreSQL: the
        requests whose fence and expectation hold are inserted, so an event id already stored
        (or given twice) fails the statement first, naming the first request's event as
        EventStore does (which one met it is unknown there); then the first request whose
        fence or expectation failed raises (a failed expectation is a conflict, never looked
        up as a retry)."""
        refusals: list[StoreError] = []
        ids: list[uuid.UUID] = []
        for request in requests:
            try:
                self.log._check_fence(request.fence)
            except StaleGeneration as exc:
                refusals.append(exc)
                continue
            actual = max(self.log._version(request.stream), self._state.version(request.stream))
            if (request.exact is not None and actual != request.exact) or (
                request.must_exist and actual == 0
            ):
                refusals.append(ConcurrencyConflict(request.stream, request.expected, actual))
                continue
            ids.extend(row.event_id for row in request.rows)
        for event_id in ids:
            self.log._claim(self._state, ("id", event_id))
        if len(set(ids)) != len(ids) or any(
            self.log._lookup(self._state, event_id) is not None for event_id in ids
        ):
            raise _reused_in_transaction(requests[0].rows[0].event_id)
        if refusals:
            raise refusals[0]

    def _undo(self, rows: int, claims: set[Hashable], fences: set[Fence]) -> None:
        state = self._state
        del state.rows[rows:]
        for key in state.claims - claims:
            if self.log._claims.get(key) is state:
                del self.log._claims[key]
        state.claims = claims
        state.fences = fences

    async def save_checkpoint(
        self, name: str, cursor: Cursor, *, expected: Cursor | None, fence: Fence | None = None
    ) -> None:
        _check_checkpoint_name(name)
        if fence is not None:
            fence.check()
        await self._enter("save_checkpoint")
        while True:
            try:
                self.log._save_checkpoint_in(self._state, name, cursor, expected, fence)
                return
            except _Blocked as blocked:
                await self.log._wait_for(blocked, self._state)

    async def save_tick(
        self,
        name: str,
        due_at: datetime,
        ticked_at: datetime,
        *,
        node: str | None = None,
        fence: Fence | None = None,
    ) -> None:
        _check_tick_name(name)
        if fence is not None:
            fence.check()
        await self._enter("save_tick")
        while True:
            try:
                tick = self.log._tick(due_at, ticked_at, node, fence)
                self.log._save_tick_in(self._state, name, tick, fence)
                return
            except _Blocked as blocked:
                await self.log._wait_for(blocked, self._state)

    async def stored_ids(self, event_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these event ids are already in the log (as seen by this transaction)."""
        await self._enter("stored_ids")
        return {i for i in event_ids if self.log._lookup(self._state, i) is not None}


class MemorySubscription(Subscription):
    """A :class:`Subscription` on a :class:`MemoryLog`: woken by the log's commits instead of
    PostgreSQL's ``LISTEN``; everything else (reading, checkpoints) is the same code."""

    def __init__(
        self,
        log: MemoryLog,
        name: str | None,
        *,
        category: str | None,
        after: Cursor | None,
        poll_interval: float,
        batch_size: int,
        skip_unknown: bool,
    ) -> None:
        super().__init__(
            log,
            name,
            category=category,
            after=after,
            poll_interval=log.stretched(poll_interval),
            batch_size=batch_size,
            skip_unknown=skip_unknown,
        )
        self._log = log
        self.owner: Hashable = None  # whose LISTEN connection it listens on

    async def _listen(self) -> None:
        if self not in self._log._subscriptions:
            self.owner = self._log.listening_owner()
            self._log._subscriptions.add(self)

    async def _close_listener(self) -> None:
        self._log._subscriptions.discard(self)
