"""The event store: an append-only log of typed events in PostgreSQL.

    async with EventStore.open(dsn) as store:
        result = await store.append("payment-42", [PaymentCreated(...)], expected_version=NO_STREAM)
        async for recorded in store.read_all(after=START):
            ...

Guarantees (each one tested in ``tests/store/``):

* **Optimistic concurrency.** ``expected_version`` is ``ANY``, ``NO_STREAM``, ``STREAM_EXISTS`` or
  an exact version; a failed check raises :class:`ConcurrencyConflict` naming the stream, the
  expectation and the actual version, and writes nothing.
* **Validation first.** Every event is validated against its Struct before any I/O; a bad
  payload raises :class:`InvalidEvent` naming the type and the field.
* **Idempotent appends.** Appending the same event ids again (a retry after a lost connection)
  returns the original result and writes nothing; the same id with other content raises
  :class:`EventIdReused`.
* **Append-only**, enforced by triggers in PostgreSQL itself.
* **Gap-free reading order** without serialising writers: see ``read_all`` in
  ``sql/queries.sql``.
* **Group commit.** While one append is on the wire, concurrent appends from other tasks are
  queued and written together in one statement (one transaction, one WAL flush), each with its
  own version check, so eight writers are not eight times the round trips.

The store knows nothing of payments or actors; it stores whatever the registry can encode.
"""

from __future__ import annotations

import contextlib
import logging
import random
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeAlias, TypeVar

import anyio
import asyncpg
import msgspec
from anyio.abc import TaskGroup
from asyncpg.pool import PoolConnectionProxy

from events import DEFAULT_REGISTRY, Event, EventMetadata, EventRegistry, environment
from events.errors import (
    CheckpointConflict,
    ConcurrencyConflict,
    EventIdReused,
    StaleGeneration,
    StoreError,
)
from events.registry import same_payload
from store._batching import GroupCommit, ThrottledNotify
from store._wakeup import Listener, ListenHub, ListenStatistics
from store.budget import (
    DEFAULT_MAX_CONNECTIONS,
    IDLE_LIFETIME,
    BudgetedPool,
    PoolStatistics,
    check_budget,
    max_connections_from_env,
    pool_size,
)
from store.database import redact_dsn
from store.driver import DRIVER_ERRORS, driver_errors, translate
from store.limits import Purpose, SessionLimits, apply_socket_limits
from store.listener import NOTIFY_CHANNEL
from store.queries import query
from store.reading import PagedReads, ReadAhead
from store.records import (
    ANY,
    NO_STREAM,
    START,
    STREAM_EXISTS,
    AppendResult,
    Cursor,
    Expected,
    Page,
    RecordedEvent,
    TickRecord,
)
from store.stored import HashedPage, StoredDecoder, StoredEvent, StoredPage, hash_columns
from store.subscription import Subscription

__all__ = [
    "EventStore",
    "Fence",
    "Page",
    "NewEvent",
    "Append",
    "RecordedPosition",
    "Transaction",
    "derived_id",
    "NOTIFY_CHANNEL",
]

logger = logging.getLogger(__name__)

MAX_EVENTS_PER_APPEND = 10_000
MAX_STREAMS_PER_STATEMENT = 1000
"""Appends (distinct streams) per statement in :meth:`Transaction.append_many`."""
_MAX_COMBINED_EVENTS = 1_000  # group commit: events per combined statement, at most
_ANY_RETRIES = 20  # an ANY append that keeps losing races this often gives up loudly
LINGER = 2.0
"""Seconds a borrowed connection (the lone writer's, ...) stays unused before it goes back."""

S = TypeVar("S", bound=msgspec.Struct)


Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
"""A connection of our own or one lent by the pool: the store's SQL runs on either."""


_NO_METADATA = EventMetadata()


def derived_id(cause: uuid.UUID, purpose: str) -> uuid.UUID:
    """A deterministic event id for an effect of ``cause``: the same cause gives the same id,
    so re-running the handler after a crash appends nothing new."""
    return uuid.uuid5(cause, purpose)


@dataclass(frozen=True, slots=True)
class Append:
    """One append of :meth:`Transaction.append_many`."""

    stream: str
    events: Sequence[Event | NewEvent]
    expected_version: Expected = ANY
    metadata: EventMetadata | None = None
    fence: Fence | None = None


@dataclass(frozen=True, slots=True)
class RecordedPosition:
    """Where one appended event landed."""

    position: int
    transaction_id: int
    version: int
    recorded_at: datetime


class LeaseClock:
    """How long this process may still act under one lease generation, on its own monotonic
    clock: the local half of a fence.

    The database refuses a write whose generation is no longer current, but only once it
    reaches the database. A node that was paused (or cut off) and resumes must not send a
    write first and learn later: every fenced write checks its clock right before it goes
    out, and a transaction checks again right before its COMMIT. The lease keeper
    (:class:`store.leases.Leases`) moves the deadline on after each renewal the database
    confirmed, to the moment the renewal was *sent* plus the time to live, less a safety
    margin, so the deadline always falls before the lease can expire on the server (whose
    expiry counts from when it received the renewal). ``time.monotonic`` keeps counting while
    the process is stopped, so a pause longer than the lease leaves the clock expired.
    """

    __slots__ = ("deadline", "revoked")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.revoked: str | None = None

    def remaining(self) -> float:
        """Seconds left (0 when expired or revoked)."""
        if self.revoked is not None:
            return 0.0
        return max(0.0, self.deadline - environment.monotonic())

    def valid(self) -> bool:
        return self.revoked is None and environment.monotonic() < self.deadline

    def extend(self, deadline: float) -> None:
        if self.revoked is None:
            self.deadline = max(self.deadline, deadline)

    def revoke(self, why: str) -> None:
        """Stop acting under this generation for good (the lease was lost or handed back)."""
        if self.revoked is None:
            self.revoked = why

    def why(self) -> str:
        return self.revoked or "its lease ran out on this node's clock before a renewal"


class Fence(msgspec.Struct, frozen=True):
    """The lease an append is made under: refused once ``generation`` is no longer current.

    With a ``clock`` (:class:`LeaseClock`, set by the lease keeper), the write is also refused
    locally, before anything is sent, once the clock has run out."""

    lease: str
    generation: int
    clock: LeaseClock | None = None

    def clock_valid(self) -> bool:
        """Whether this node's own clock still lets it act under the lease (True unclocked)."""
        return self.clock is None or self.clock.valid()

    def why(self) -> str:
        return self.clock.why() if self.clock is not None else "a newer generation was granted"

    def check(self) -> None:
        """Raise StaleGeneration, before any I/O, if this node may no longer act under it."""
        if not self.clock_valid():
            raise StaleGeneration(self.lease, self.generation, reason=self.why())


class OpenTransaction(msgspec.Struct, frozen=True, kw_only=True):
    """The oldest write transaction open on the server, as :meth:`EventStore.oldest_writer`
    finds it: who (``pid``, ``database``, ``application``: ours are ``i3lani:<node>:...``),
    in which state (``idle in transaction`` is a client that went quiet), for how long, and
    how many committed events of ours readers cannot see until it ends."""

    pid: int
    database: str | None
    application: str | None
    state: str | None
    open_seconds: float
    state_seconds: float
    events_waiting: int

    @property
    def holds_back_readers(self) -> bool:
        return self.events_waiting > 0


class ConnectionStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A store's connections at one moment (:meth:`EventStore.connection_statistics`): its
    budget, its pool, and whether its LISTEN and lease connections are open. At most
    ``budget`` in all: ``pool.size`` + 1 + 1."""

    budget: int
    pool: PoolStatistics
    listening: bool
    lease: bool

    @property
    def open(self) -> int:
        return self.pool.size + int(self.listening) + int(self.lease)


class NewEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event to append with a chosen id (for idempotent retries) and/or its own metadata."""

    event: Event
    event_id: uuid.UUID = msgspec.field(default_factory=environment.new_uuid)
    metadata: EventMetadata | None = None


def _check_tick_name(name: str) -> None:
    # PostgreSQL's CHECK refuses it too (ticks_name_check).
    if not isinstance(name, str) or not 1 <= len(name) <= 200:
        raise ValueError(f"a tick schedule's name is 1 to 200 characters, got {name!r}")


def _check_stream(stream: str) -> None:
    if not isinstance(stream, str) or not 1 <= len(stream) <= 200:
        raise ValueError(f"a stream name is 1 to 200 characters, got {stream!r}")


def _expectation(expected: Expected) -> tuple[int | None, bool]:
    """(exact version or None, must exist) for the SQL."""
    if expected is ANY:
        return None, False
    if expected is NO_STREAM:
        return 0, False
    if expected is STREAM_EXISTS:
        return None, True
    if isinstance(expected, int) and not isinstance(expected, bool) and expected >= 0:
        return expected, False
    raise ValueError(
        f"expected_version must be ANY, NO_STREAM, STREAM_EXISTS or a version >= 0, "
        f"got {expected!r}"
    )


def _encode_rows(
    registry: EventRegistry,
    encode_metadata: Callable[[EventMetadata | None], bytes],
    events: Sequence[Event | NewEvent],
    metadata: EventMetadata | None,
    fence: Fence | None,
) -> list[_Row]:
    """Validate and encode an append's events before any I/O (shared by every log)."""
    if not events:
        raise ValueError("append needs at least one event")
    if len(events) > MAX_EVENTS_PER_APPEND:
        raise ValueError(f"at most {MAX_EVENTS_PER_APPEND} events per append")
    rows: list[_Row] = []
    seen: set[uuid.UUID] = set()
    for item in events:
        if isinstance(item, NewEvent):
            event, event_id, meta = item.event, item.event_id, item.metadata or metadata
        else:
            event, event_id, meta = item, environment.new_uuid(), metadata
        if event_id in seen:
            raise ValueError(f"event id {event_id} appears twice in one append")
        seen.add(event_id)
        if fence is not None:
            # Who wrote it under which grant, for audits: a stale generation's events
            # never land after a newer one's.
            meta = msgspec.structs.replace(
                meta or _NO_METADATA, lease=fence.lease, generation=fence.generation
            )
        tag, version, payload = registry.encode(event)
        rows.append(_Row(event_id, tag, version, payload, encode_metadata(meta)))
    return rows


@dataclass(slots=True)
class _Row:
    event_id: uuid.UUID
    type: str
    schema_version: int
    payload: bytes
    metadata: bytes


@dataclass(slots=True)
class _Request:
    stream: str
    expected: Expected
    exact: int | None
    must_exist: bool
    rows: list[_Row]
    fence: Fence | None
    done: anyio.Event = field(default_factory=anyio.Event)
    result: AppendResult | None = None
    error: BaseException | None = None

    def outcome(self) -> AppendResult:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Pool connections go back without asyncpg's reset query (one more round trip per use):
    the store's own statements change no session state, and asyncpg still rolls back any open
    transaction. Code given ``Transaction.connection`` must not change session state either."""


class _Borrowed:
    """A pooled connection kept by one job that runs one statement after another (the lone
    writer's appends, the group commit's flushes): taken from the pool at its first use, kept
    while uses follow closely (no pool round trip each time), given back once it has sat
    unused for :data:`LINGER` seconds (:meth:`EventStore._give_back_idle`), so that an idle
    process holds no connection for it, and at once after a use while others wait for a
    connection. One use at a time."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._cm: contextlib.AbstractAsyncContextManager[Connection] | None = None
        self._conn: Connection | None = None
        self._busy = False
        self.used_at = 0.0

    @property
    def held(self) -> bool:
        return self._conn is not None

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def idle(self) -> bool:
        return not self._busy and anyio.current_time() - self.used_at >= LINGER

    async def take(self) -> Connection:
        """The connection for one use (waiting for one within the budget, if none is held);
        :meth:`put` after the use. The lone writer's path: no context manager per append."""
        conn = self._conn
        if conn is None or conn.is_closed():
            self._drop()
            cm = self.store._pool.acquire()
            conn = await cm.__aenter__()
            self._conn, self._cm = conn, cm
            self.store._borrowed.set()
        self._busy = True
        return conn

    def put(self, error: BaseException | None) -> bool:
        """After a use that ended with ``error`` (None: it went well): a failure other than
        PostgreSQL's answer (a lost connection, a cancellation mid-statement) drops the
        connection, its protocol state not to be trusted. Whether it must go back now: others
        wait for a connection, and it is never kept idle while they do."""
        self._busy = False
        self.used_at = anyio.current_time()
        if error is not None and not isinstance(
            error, StoreError | _RetryAppendError | asyncpg.PostgresError
        ):
            self._drop()
            return False
        return bool(self.store._pool.waiting)

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[Connection]:
        """:meth:`take` and :meth:`put` around a block."""
        conn = await self.take()
        error: BaseException | None = None
        try:
            yield conn
        except BaseException as exc:
            error = exc
            raise
        finally:
            if self.put(error):
                await self.give_back()

    def _drop(self) -> None:
        """Terminate the connection (the pool takes its place back at once)."""
        conn, self._conn, self._cm = self._conn, None, None
        if conn is not None:
            conn.terminate()

    async def give_back(self) -> None:
        cm, self._conn, self._cm = self._cm, None, None
        if cm is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await cm.__aexit__(None, None, None)


class _Dedicated:
    """A connection of the store's own, outside the pool, for lease statements: never
    starved by a busy pool. Reconnects on next use after a failure."""

    def __init__(self, store: EventStore, purpose: Purpose = "work") -> None:
        self.store = store
        self.purpose: Purpose = purpose
        self._conn: asyncpg.Connection | None = None

    async def get(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            self._conn = await self.store.connect(self.purpose)
        return self._conn

    @property
    def held(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    def discard(self) -> None:
        """Drop the connection (after an error or a cancellation mid-statement)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with anyio.move_on_after(2):
                await conn.close()
            if not conn.is_closed():
                conn.terminate()


async def init_connection(conn: asyncpg.Connection) -> None:
    """Set the store's JSON codecs on ``conn`` (its pool does it on every connection): json in
    binary format is the JSON text itself, jsonb a version byte followed by it, so msgspec's
    bytes go straight through in both directions, with no str round trip. The log's payloads
    are json (migration 0010), its metadata and the tasks' payloads jsonb. Benchmarks use it for
    raw reads of the same rows."""
    await conn.set_type_codec(
        "json",
        schema="pg_catalog",
        encoder=_same,
        decoder=_same,
        format="binary",
    )
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda data: b"\x01" + data,
        decoder=lambda data: data[1:],
        format="binary",
    )


def _same(data: bytes) -> bytes:
    return data


async def setup_connection(
    conn: asyncpg.Connection, limits: SessionLimits, purpose: Purpose = "work"
) -> None:
    """Everything a new connection of the store's gets: the JSON codecs, the client side of
    the session limits (TCP keepalive, user timeout) and, where the server has it, the
    transaction bound. The server side of the limits comes with the connect itself
    (:meth:`SessionLimits.server_settings`)."""
    apply_socket_limits(conn, limits)
    bound = limits.transaction_timeout_sql(conn.get_server_version().major * 10000, purpose)
    if bound is not None:
        await conn.execute(bound)
    await init_connection(conn)


class EventStore(PagedReads):
    """The event log. Open with ``async with EventStore.open(dsn) as store``.

    Every connection it opens carries ``limits`` (default: from the environment, see
    :mod:`store.limits`), so that no client of ours, frozen or cut off, holds locks or readers
    back for longer than the lease."""

    def __init__(
        self,
        dsn: str,
        *,
        registry: EventRegistry = DEFAULT_REGISTRY,
        node: str | None = None,
        min_connections: int = 1,
        max_connections: int | None = None,
        group_commit: bool = True,
        limits: SessionLimits | None = None,
        guard_sessions: bool = False,
    ) -> None:
        self.dsn = dsn
        limits = limits if limits is not None else SessionLimits.from_env()
        if node is not None and limits.application == "i3lani":
            # In pg_stat_activity: which node a session (a stuck transaction, say) belongs to.
            limits = limits.for_application(f"i3lani:{node}")
        limits.check()
        self.limits = limits
        self.registry = registry
        self.node = node
        budget = (
            max_connections
            if max_connections is not None
            else max_connections_from_env(DEFAULT_MAX_CONNECTIONS)
        )
        check_budget(budget)
        self.max_connections = budget
        """The most connections this store holds at once (see :mod:`store.budget`)."""
        self._min = max(1, min(min_connections, pool_size(budget)))
        self._group_commit = group_commit
        self._opened: BudgetedPool | None = None
        self._tg: TaskGroup | None = None
        self._metadata_encoder = msgspec.json.Encoder()
        self._decoder = StoredDecoder(registry)
        self._empty_metadata = b"{}"
        self._commit: GroupCommit[_Request] = GroupCommit(
            take=_take_batch,
            flush=self._flush,
            closed="the event store was closed before this append ran",
        )
        # Subscribers are woken after commits (see store/_batching.py).
        self._dirty_categories: set[str] = set()
        self._notify = ThrottledNotify(self._send_notifications, what="subscribers")
        self._closed = False
        self._writer = _Borrowed(self)
        self._batcher = _Borrowed(self)
        self._borrowed = anyio.Event()  # set when one of them takes a connection
        # Lease statements: a connection of their own (never starved by a busy pool) with a
        # short lock_timeout (store/limits.py), one statement at a time.
        self._lease_conn = _Dedicated(self, "lease")
        self._lease_lock: anyio.Lock | None = None
        # Every subscription and task processor of this store listens on one connection.
        self._hub = ListenHub.for_database(dsn, limits)
        self._guard_sessions = guard_sessions
        self.stuck_sessions_ended = 0
        """Sessions the session guard ended (see :meth:`_session_guard`)."""

    @classmethod
    def open(cls, dsn: str, **options: Any) -> Self:
        """An unopened store for ``async with``: ``async with EventStore.open(dsn) as store``."""
        return cls(dsn, **options)

    # -- lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        with driver_errors(connecting_to=redact_dsn(self.dsn)):
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min,
                max_size=pool_size(self.max_connections),
                max_inactive_connection_lifetime=IDLE_LIFETIME,
                init=self._setup_pooled,
                reset=_no_reset,
                **self.limits.connect_kwargs("work"),
            )
        self._opened = BudgetedPool(pool, budget=self.max_connections, reclaim=self._reclaim)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._give_back_idle)
        self._notify.start(self._tg)
        if self._group_commit:
            self._commit.start(self._tg)
        if self._guard_sessions:
            self._tg.start_soon(self._session_guard)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._tg is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._notify.flush()  # the last commits' wake-up goes out
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self._commit.fail_queued()  # appends still queued when the store closes never ran
        with anyio.CancelScope(shield=True):
            await self._hub.close()
            for borrowed in (self._writer, self._batcher):
                await borrowed.give_back()
            await self._lease_conn.close()
        if self._opened is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5) as scope:
                await self._opened.close()
            if scope.cancelled_caught:
                self._opened.terminate()

    async def _setup_pooled(self, conn: asyncpg.Connection) -> None:
        await setup_connection(conn, self.limits, "work")

    async def connect(self, purpose: Purpose = "work") -> asyncpg.Connection:
        """A new connection of the store's own (outside the pool), set up like the pool's,
        with the limits for ``purpose``. Connection failures raise StoreUnavailable. The
        caller closes it."""
        with driver_errors(connecting_to=redact_dsn(self.dsn)):
            conn: asyncpg.Connection = await asyncpg.connect(
                self.dsn, **self.limits.connect_kwargs(purpose)
            )
            try:
                await setup_connection(conn, self.limits, purpose)
            except BaseException:
                conn.terminate()
                raise
        return conn

    async def _session_guard(self) -> None:
        """End i3lani sessions frozen mid-statement with a transaction open (the one case the
        idle-transaction bound does not cover; see ``end_stuck_sessions`` in queries.sql),
        every half idle-transaction bound (at most every 0.5 s), so that a frozen or cut-off
        node holds no lock and no reader back for longer than that bound plus the interval. It
        runs on the lease connection, outside the pool: a pool kept busy to its budget never
        holds it up.
        On PostgreSQL 17+ ``transaction_timeout`` ends them too, but only after the statement
        bound, which is longer. Run by the processes that keep the system going
        (``i3lani run``), so that any one of them frees the others; a failure to look (no
        permission, an outage) is logged and tried again."""
        bound = self.limits.idle_in_transaction_seconds
        interval = min(bound / 2, 0.5)
        while True:
            await anyio.sleep(interval)
            try:
                ended = await self._on_lease_connection("fetch", "end_stuck_sessions", bound)
            except StoreError as exc:
                logger.warning(
                    "cannot look for stuck sessions: %s", exc, extra={"action": "guard_failed"}
                )
                await anyio.sleep(5.0)
                continue
            for row in ended:
                self.stuck_sessions_ended += int(bool(row["ended"]))
                logger.warning(
                    "ended session %s (%s): frozen mid-statement with a transaction open for "
                    "%.1fs, holding locks and readers back",
                    row["pid"],
                    row["application_name"],
                    row["stuck_seconds"],
                    extra={"action": "stuck_session_ended"},
                )

    async def lease_fetchval(self, name: str, *args: object) -> object:
        """Run named query ``name`` on the store's lease connection (see
        :mod:`store.leases`): StoreUnavailable when PostgreSQL is unreachable or the statement
        ran out of time (a lock held elsewhere: ``__cause__`` says which)."""
        return await self._on_lease_connection("fetchval", name, *args)

    async def _on_lease_connection(self, method: str, name: str, *args: object) -> Any:
        """Named query ``name`` on the connection outside the pool that lease statements and
        the session guard share: the work that keeps nodes apart is never starved by a busy
        pool, whatever the budget. One statement at a time."""
        if self._lease_lock is None:
            self._lease_lock = anyio.Lock()
        async with self._lease_lock:
            with driver_errors(what="a lease statement"):
                conn = await self._lease_conn.get()
                try:
                    return await getattr(conn, method)(query(name), *args)
                except asyncpg.PostgresError:
                    raise  # the connection itself is fine
                except BaseException:
                    # Lost, or cancelled mid-statement: do not trust its protocol state.
                    self._lease_conn.discard()
                    raise

    async def _give_back_idle(self) -> None:
        """Give the borrowed connections back to the pool once unused for LINGER seconds;
        asleep while none is held."""
        borrowers = (self._writer, self._batcher)
        while True:
            await self._borrowed.wait()
            await anyio.sleep(LINGER)
            for borrowed in borrowers:
                if borrowed.held and borrowed.idle:
                    await borrowed.give_back()
            if not any(borrowed.held for borrowed in borrowers):
                self._borrowed = anyio.Event()

    async def _reclaim(self) -> None:
        """Give back the borrowed connections not in use this moment: a caller that finds
        the pool's open connections all taken gets one of those before the pool grows."""
        for borrowed in (self._writer, self._batcher):
            if borrowed.held and not borrowed.busy:
                await borrowed.give_back()

    def connection_statistics(self) -> ConnectionStatistics:
        """This store's connections at this moment, within its budget."""
        return ConnectionStatistics(
            budget=self.max_connections,
            pool=self._pool.statistics(),
            listening=self._hub.connected,
            lease=self._lease_conn.held,
        )

    @property
    def _pool(self) -> BudgetedPool:
        """The store's connection pool: for store/ and its tests only (StoreError when the
        store is not open). Everything else goes through the store's methods."""
        if self._opened is None:
            raise StoreError("the event store is not open: use `async with EventStore.open(dsn)`")
        return self._opened

    # -- appending ----------------------------------------------------------------------------
    def _prepare(
        self,
        stream: str,
        events: Sequence[Event | NewEvent],
        expected: Expected,
        metadata: EventMetadata | None,
        fence: Fence | None = None,
    ) -> _Request:
        """Validate and encode everything before any I/O."""
        _check_stream(stream)
        exact, must_exist = _expectation(expected)
        rows = _encode_rows(self.registry, self._encode_metadata, events, metadata, fence)
        return _Request(stream, expected, exact, must_exist, rows, fence)

    def _encode_metadata(self, meta: EventMetadata | None) -> bytes:
        if meta is None:
            if self.node is None:
                return self._empty_metadata
            meta = EventMetadata(node=self.node)
        elif meta.node is None and self.node is not None:
            meta = msgspec.structs.replace(meta, node=self.node)
        return self._metadata_encoder.encode(meta)

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
            fence.check()  # before anything is queued or sent
        if self._opened is None:
            raise StoreError("the event store is not open: use `async with EventStore.open(dsn)`")
        if self._group_commit and self._commit.in_flight > 0:
            # Someone is on the wire: queue up and go out with the next combined statement.
            await self._commit.submit(request)
            return request.outcome()
        # The only append on the wire uses the store's own writer connection; further ones
        # (group commit off) borrow from the pool.
        dedicated = self._writer if self._commit.in_flight == 0 else None
        with self._commit.direct():
            result = await self._append_with_retries(request, dedicated)
        self._touch(stream)
        return result

    async def _append_with_retries(
        self, request: _Request, dedicated: _Borrowed | None
    ) -> AppendResult:
        for attempt in range(_ANY_RETRIES):
            try:
                if dedicated is None:
                    async with self._pool.acquire() as conn:
                        return await self._append_on(conn, request, in_transaction=False)
                return await self._on_dedicated(dedicated, request)
            except _RetryAppendError:
                # Lost a race for the next version of a busy stream. Retrying at once lets the
                # same writers collide again in lockstep; a short random pause breaks it up.
                await anyio.sleep(random.uniform(0, 0.001 * min(attempt + 1, 10)))
                continue
            except DRIVER_ERRORS as exc:
                raise translate(exc, stream=request.stream, expected=request.expected) from exc
        raise StoreError(
            f"gave up appending to {request.stream!r}: lost {_ANY_RETRIES} races in a row"
        )

    async def _on_dedicated(self, dedicated: _Borrowed, request: _Request) -> AppendResult:
        conn = await dedicated.take()
        error: BaseException | None = None
        try:
            return await self._append_on(conn, request, in_transaction=False)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if dedicated.put(error):
                await dedicated.give_back()

    async def _append_on(
        self, conn: Connection, request: _Request, *, in_transaction: bool
    ) -> AppendResult:
        """One attempt on ``conn``; raises _RetryAppendError when an ANY-append lost a race."""
        if request.fence is not None:
            request.fence.check()  # never write first and check later
        rows = request.rows
        try:
            if len(rows) == 1 and request.exact is not None and request.fence is None:
                row = rows[0]
                exact = await conn.fetchrow(
                    query("append_exact"),
                    request.stream,
                    request.exact,
                    row.event_id,
                    row.type,
                    row.schema_version,
                    row.payload,
                    row.metadata,
                )
                if exact is None:
                    actual = await conn.fetchval(query("stream_version"), request.stream)
                    return await self._check_failed(conn, request, actual)
                position, txid, recorded_at = exact
                return AppendResult(
                    stream=request.stream,
                    first_version=request.exact + 1,
                    last_version=request.exact + 1,
                    first_position=position,
                    last_position=position,
                    transaction_id=txid,
                    recorded_at=recorded_at,
                )
            if len(rows) == 1:
                row = rows[0]
                record = await conn.fetchrow(
                    query("append_one"),
                    request.stream,
                    request.exact,
                    request.must_exist,
                    row.event_id,
                    row.type,
                    row.schema_version,
                    row.payload,
                    row.metadata,
                    request.fence.lease if request.fence else None,
                    request.fence.generation if request.fence else None,
                )
                assert record is not None
                version, position, txid, recorded_at, fence_ok = record
                if not fence_ok:
                    assert request.fence is not None
                    raise StaleGeneration(request.fence.lease, request.fence.generation)
                if position is None:
                    return await self._check_failed(conn, request, version)
                return AppendResult(
                    stream=request.stream,
                    first_version=version + 1,
                    last_version=version + 1,
                    first_position=position,
                    last_position=position,
                    transaction_id=txid,
                    recorded_at=recorded_at,
                )
            results = await self._append_many_on(conn, [request])
            outcome = results[0]
            if isinstance(outcome, StaleGeneration):
                raise outcome
            if isinstance(outcome, int):
                return await self._check_failed(conn, request, outcome)
            return outcome
        except asyncpg.UniqueViolationError as exc:
            return await self._on_unique_violation(conn, request, exc, in_transaction)

    async def _append_many_on(
        self, conn: Connection, requests: Sequence[_Request]
    ) -> list[AppendResult | int | StaleGeneration]:
        """Requests to distinct streams in one statement: a result, the current version where
        the request's version check failed, or the refusal where its fence did not hold."""
        for request in requests:
            if request.fence is not None:
                request.fence.check()  # never write first and check later
        streams, exacts, musts = [], [], []
        fence_names: list[str | None] = []
        fence_generations: list[int | None] = []
        req_idx, numbers, ids, types, versions, payloads, metas = [], [], [], [], [], [], []
        for i, request in enumerate(requests, start=1):
            streams.append(request.stream)
            exacts.append(request.exact)
            musts.append(request.must_exist)
            fence_names.append(request.fence.lease if request.fence else None)
            fence_generations.append(request.fence.generation if request.fence else None)
            for n, row in enumerate(request.rows, start=1):
                req_idx.append(i)
                numbers.append(n)
                ids.append(row.event_id)
                types.append(row.type)
                versions.append(row.schema_version)
                payloads.append(row.payload)
                metas.append(row.metadata)
        records = await conn.fetch(
            query("append_many"),
            streams,
            exacts,
            musts,
            req_idx,
            numbers,
            ids,
            types,
            versions,
            payloads,
            metas,
            fence_names,
            fence_generations,
        )
        out: list[AppendResult | int | StaleGeneration] = []
        for request, record in zip(requests, records, strict=True):
            _, version, first, last, txid, recorded_at, fence_ok = record
            if not fence_ok:
                assert request.fence is not None
                out.append(StaleGeneration(request.fence.lease, request.fence.generation))
                continue
            if first is None:
                out.append(version)
                continue
            out.append(
                AppendResult(
                    stream=request.stream,
                    first_version=version + 1,
                    last_version=version + len(request.rows),
                    first_position=first,
                    last_position=last,
                    transaction_id=txid,
                    recorded_at=recorded_at,
                )
            )
        return out

    async def _check_failed(self, conn: Connection, request: _Request, actual: int) -> AppendResult:
        """The version check refused the append: a retry of a stored append, or a conflict."""
        original = await self._original_append(conn, request)
        if original is not None:
            return original
        raise ConcurrencyConflict(request.stream, request.expected, actual)

    async def _on_unique_violation(
        self,
        conn: Connection,
        request: _Request,
        exc: asyncpg.UniqueViolationError,
        in_transaction: bool,
    ) -> AppendResult:
        constraint = getattr(exc, "constraint_name", None)
        if in_transaction:
            # The transaction is aborted: nothing more can be asked on it.
            if constraint == "events_event_id_key":
                raise EventIdReused(
                    request.rows[0].event_id,
                    "an event id of this append is already stored; inside a transaction the "
                    "store cannot tell a retry from a reuse (append outside it to find out)",
                ) from exc
            raise ConcurrencyConflict(request.stream, request.expected, None) from exc
        if constraint == "events_event_id_key":
            original = await self._original_append(conn, request)
            if original is not None:
                return original
            raise EventIdReused(request.rows[0].event_id, "the stored event differs") from exc
        # events_stream_version_key: another writer took the version between our check and
        # our insert. An exact expectation has failed; ANY / STREAM_EXISTS simply retry.
        if request.exact is None:
            raise _RetryAppendError from exc
        actual = await conn.fetchval(query("stream_version"), request.stream)
        original = await self._original_append(conn, request)
        if original is not None:
            return original
        raise ConcurrencyConflict(request.stream, request.expected, actual) from exc

    async def _original_append(self, conn: Connection, request: _Request) -> AppendResult | None:
        """If every event of ``request`` is already stored, identically and in order, the
        result of that earlier append; None if none is stored; EventIdReused otherwise."""
        ids = [row.event_id for row in request.rows]
        stored = await conn.fetch(query("events_by_id"), ids)
        if not stored:
            return None
        by_id = {record["event_id"]: record for record in stored}
        if len(by_id) != len(ids):
            raise EventIdReused(
                next(i for i in ids if i in by_id),
                f"only {len(by_id)} of the {len(ids)} events of this append are stored",
            )
        records = [by_id[event_id] for event_id in ids]
        for row, record in zip(request.rows, records, strict=True):
            if record["stream"] != request.stream:
                raise EventIdReused(row.event_id, f"it is stored in stream {record['stream']!r}")
            if record["type"] != row.type or not same_payload(
                record["payload"], row.payload, row.type
            ):
                raise EventIdReused(row.event_id, f"stored as another {record['type']}")
        versions = [record["stream_version"] for record in records]
        if versions != list(range(versions[0], versions[0] + len(versions))):
            raise EventIdReused(records[0]["event_id"], "stored in another order")
        return AppendResult(
            stream=request.stream,
            first_version=versions[0],
            last_version=versions[-1],
            first_position=records[0]["global_position"],
            last_position=records[-1]["global_position"],
            transaction_id=records[0]["transaction_id"],
            recorded_at=records[0]["recorded_at"],
            duplicate=True,
        )

    # -- group commit -------------------------------------------------------------------------
    async def _flush(self, batch: list[_Request]) -> None:
        dedicated = self._batcher
        for request in batch:
            if request.fence is not None and not request.fence.clock_valid():
                # Its node may no longer act under that lease: refused here, nothing sent.
                request.error = StaleGeneration(
                    request.fence.lease, request.fence.generation, reason=request.fence.why()
                )
                request.done.set()
        batch = [request for request in batch if request.error is None]
        if not batch:
            return
        try:
            if len(batch) == 1:
                batch[0].result = await self._append_with_retries(batch[0], dedicated)
            else:
                try:
                    async with dedicated.use() as conn:
                        outcomes = await self._append_many_on(conn, batch)
                        for request, outcome in zip(batch, outcomes, strict=True):
                            try:
                                if isinstance(outcome, StaleGeneration):
                                    request.error = outcome
                                elif isinstance(outcome, int):
                                    request.result = await self._check_failed(
                                        conn, request, outcome
                                    )
                                else:
                                    request.result = outcome
                            except StoreError as exc:
                                request.error = exc
                except asyncpg.UniqueViolationError:
                    # A race with another process, or a retried event id: the statement wrote
                    # nothing. Let each request sort itself out on its own.
                    for request in batch:
                        try:
                            request.result = await self._append_with_retries(request, dedicated)
                        except StoreError as exc:
                            request.error = exc
        except DRIVER_ERRORS as exc:
            for request in batch:
                if request.result is None and request.error is None:
                    error = translate(exc, stream=request.stream, expected=request.expected)
                    error.__cause__ = exc
                    request.error = error
        except StoreError as exc:
            for request in batch:
                if request.result is None and request.error is None:
                    request.error = exc
        except BaseException as exc:
            for request in batch:
                if request.result is None and request.error is None:
                    request.error = StoreError(f"append aborted: {type(exc).__name__}")
            raise
        finally:
            for request in batch:
                if request.result is not None:
                    self._touch(request.stream)
                request.done.set()

    # -- notifications ------------------------------------------------------------------------
    def _touch(self, stream: str) -> None:
        self._dirty_categories.add(stream.split("-", 1)[0])
        self._notify.mark()

    async def _send_notifications(self) -> None:
        """One NOTIFY naming the categories written since the last, from a connection of its
        own (see store/_batching.py for when)."""
        if not self._dirty_categories:
            return
        categories = ",".join(sorted(self._dirty_categories))[:7000]
        self._dirty_categories = set()
        with driver_errors(what="a notification"):
            await self._pool.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, categories)

    # -- reading ------------------------------------------------------------------------------
    def _decode_all(
        self, records: Sequence[asyncpg.Record], skip_unknown: bool
    ) -> list[RecordedEvent]:
        """Rows to typed events (the hot path of every read: :class:`StoredDecoder`)."""
        return self._decoder.decode_or_raise(records, skip_unknown=skip_unknown)

    async def stream_version(self, stream: str) -> int:
        """The stream's current version (0 for a stream with no events)."""
        with driver_errors():
            version: int = await self._pool.fetchval(query("stream_version"), stream)
        return version

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
        with driver_errors():
            records = await self._pool.fetch(
                query("read_stream"), stream, after_version, limit if limit is not None else None
            )
        return self._decode_all(records, skip_unknown)

    async def last_event(self, stream: str, *, skip_unknown: bool = False) -> RecordedEvent | None:
        """The newest event of ``stream``, or None for an empty stream."""
        _check_stream(stream)
        return await self._read_one("last_event", stream, skip_unknown=skip_unknown)

    async def read_event(
        self, event_id: uuid.UUID, *, skip_unknown: bool = False
    ) -> RecordedEvent | None:
        """The event stored under ``event_id``, or None. With ``skip_unknown``, None too for an
        event of a type this version does not know."""
        return await self._read_one("read_event", event_id, skip_unknown=skip_unknown)

    async def _read_one(
        self, name: str, argument: object, *, skip_unknown: bool
    ) -> RecordedEvent | None:
        """The event of query ``name`` (at most one row), decoded, or None."""
        with driver_errors():
            records = await self._pool.fetch(query(name), argument)
        decoded = self._decode_all(records, skip_unknown)
        return decoded[0] if decoded else None

    async def head(self) -> Cursor:
        """The cursor of the newest readable event (START for an empty log): subscribing
        ``after=await store.head()`` follows only what is appended from now on."""
        with driver_errors():
            record = await self._pool.fetchrow(query("head"))
        return START if record is None else Cursor(record[0], record[1])

    async def cursor_at(self, position: int) -> Cursor:
        """The reading cursor just after the event at global ``position`` (0: the start)."""
        if position == 0:
            return START
        with driver_errors():
            record = await self._pool.fetchrow(query("position_cursor"), position)
        if record is None:
            raise ValueError(f"no event at global position {position}")
        return Cursor(record["transaction_id"], record["global_position"])

    async def read_page(
        self,
        after: Cursor,
        *,
        category: str | None = None,
        limit: int = 1000,
        skip_unknown: bool = False,
    ) -> Page:
        """One page of the log after ``after``, in reading order, up to the present."""
        records = await self._page_rows(after, category, limit)
        if not records:
            return Page([], after, 0)
        last = records[-1]
        return Page(self._decode_all(records, skip_unknown), Cursor(last[1], last[0]), len(records))

    async def _page_rows(
        self, after: Cursor, category: str | None, limit: int
    ) -> list[asyncpg.Record]:
        """The rows of ``read_page``, undecoded."""
        with driver_errors():
            if category is None:
                return await self._pool.fetch(
                    query("read_all"), after.transaction_id, after.position, limit
                )
            return await self._pool.fetch(
                query("read_category"), after.transaction_id, after.position, limit, category
            )

    async def _read_to_end(
        self, cursor: Cursor, category: str | None, batch_size: int, skip_unknown: bool
    ) -> AsyncIterator[list[RecordedEvent]]:
        """The pages of a read without a limit (``read_batches``, ``read_all``), the next one
        asked for before this one is decoded: the server reads and sends it (on its own core)
        while this process decodes and the caller works, so a long read (an audit, a replay)
        waits for the server only once. At most one page is read ahead; a caller that stops
        early leaves it unread. (With a ``limit`` the next page's size depends on how many
        events this one held, so such reads go a page after the other.)"""
        if self._tg is None:  # not open: the read fails as any other would
            async for batch in super()._read_to_end(cursor, category, batch_size, skip_unknown):
                yield batch
            return
        ahead: ReadAhead[list[asyncpg.Record]] | None = await self._read_ahead(
            cursor, category, batch_size
        )
        while ahead is not None:
            records = await ahead.result()
            if len(records) < batch_size:
                ahead = None  # the end of the log, as it is now
            else:
                last = records[-1]
                ahead = await self._read_ahead(Cursor(last[1], last[0]), category, batch_size)
            events = self._decode_all(records, skip_unknown)
            if events:
                yield events

    async def _read_ahead(
        self, after: Cursor, category: str | None, limit: int
    ) -> ReadAhead[list[asyncpg.Record]]:
        """The rows of the page after ``after``, asked for now in the store's task group, unless
        others wait for a pooled connection: then it is read now, in turn. A read ahead never
        holds two connections (the page before has been fetched when it starts); it only keeps
        one busy while this process decodes, which must not keep the writers and actors that
        share the budget waiting (:mod:`store.budget`)."""
        if self._closed or self._tg is None:
            raise StoreError("the store was closed while the log was being read")
        if self._pool.waiting:
            return ReadAhead.finished(await self._page_rows(after, category, limit))
        return await ReadAhead.begin(self._tg, self._page_rows, after, category, limit)

    async def read_stored(self, after: Cursor, *, limit: int = 1000) -> StoredPage:
        """Up to ``limit`` rows after ``after`` as stored, in reading order (see
        ``read_stored`` in ``sql/seals.sql``): nothing decoded, nothing skipped."""
        with driver_errors():
            records = await self._pool.fetch(
                query("read_stored"), after.transaction_id, after.position, limit
            )
        if not records:
            return StoredPage([], after)
        rows = [StoredEvent(*record) for record in records]  # untracked by the GC: see there
        last = rows[-1]
        return StoredPage(rows, Cursor(last.transaction_id, last.position))

    async def read_hashed(self, after: Cursor, *, limit: int = 1000) -> HashedPage:
        """The rows of ``read_stored``, each with its event hash: the Sealer's read, in the
        columns that cost least to decode (``read_hashed`` in ``sql/seals.sql``)."""
        with driver_errors():
            records = await self._pool.fetch(
                query("read_hashed"), after.transaction_id, after.position, limit
            )
        if not records:
            return HashedPage([], after)
        rows = hash_columns(records)
        last = rows[-1]
        return HashedPage(rows, Cursor(last.transaction_id, last.position))

    async def oldest_writer(self) -> OpenTransaction | None:
        """The oldest open write transaction on the server, if any (for operators: a reader
        waiting on it, and why)."""
        with driver_errors():
            record = await self._pool.fetchrow(query("oldest_writer"))
        return None if record is None else OpenTransaction(**dict(record))

    async def held_back(self, after: Cursor, category: str | None = None) -> bool:
        """Whether committed events past ``after`` exist that a read has not returned: held
        back by an older open transaction (readable when it ends), or committed since."""
        with driver_errors():
            if category is None:
                held: bool = await self._pool.fetchval(
                    query("held_back"), after.transaction_id, after.position
                )
            else:
                held = await self._pool.fetchval(
                    query("held_back_category"), after.transaction_id, after.position, category
                )
        return held

    def listener(
        self,
        channel: str,
        *,
        on_notify: Callable[[str], None],
        on_lost: Callable[[], None] | None = None,
        who: str,
        poll_interval: float,
    ) -> Listener:
        """A follower of NOTIFY ``channel`` on this store's LISTEN connection, the one this
        process opens for all its subscriptions and task processors (:mod:`store._wakeup`)."""
        return self._hub.listener(
            channel, on_notify=on_notify, on_lost=on_lost, who=who, poll_interval=poll_interval
        )

    def listen_statistics(self) -> ListenStatistics:
        """The LISTEN connection at this moment: open or not, and its followers per channel."""
        return self._hub.statistics()

    def subscribe(
        self,
        name: str | None = None,
        *,
        category: str | None = None,
        after: Cursor | None = None,
        poll_interval: float = 1.0,
        batch_size: int = 500,
        skip_unknown: bool = False,
    ) -> Subscription:
        """Follow the log: catch up from ``after`` (or checkpoint ``name``, or the start),
        then follow live. Use as ``async with store.subscribe(...) as sub: async for e in sub``."""
        return Subscription(
            self,
            name,
            category=category,
            after=after,
            poll_interval=poll_interval,
            batch_size=batch_size,
            skip_unknown=skip_unknown,
        )

    # -- transactions and checkpoints ---------------------------------------------------------
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A unit of work: appends, the caller's own SQL and checkpoints commit together."""
        with driver_errors():
            conn_cm = self._pool.acquire()
            conn = await conn_cm.__aenter__()
        try:
            tx = Transaction(self, conn)
            try:
                async with conn.transaction():
                    yield tx
                    # Last look before the COMMIT goes out: a node that was paused with this
                    # transaction open, and resumed past its lease, rolls back instead.
                    for fence in tx.fences:
                        fence.check()
            except DRIVER_ERRORS as exc:
                # A deadlock or serialization failure is blamed on the streams written.
                raise translate(exc, stream=", ".join(sorted(tx.streams)) or None) from exc
            for stream in tx.streams:
                self._touch(stream)
        finally:
            with driver_errors():
                await conn_cm.__aexit__(None, None, None)

    async def load_checkpoint(self, name: str) -> Cursor | None:
        with driver_errors():
            record = await self._pool.fetchrow(query("load_checkpoint"), name)
        return None if record is None else Cursor(record[0], record[1])

    async def save_checkpoint(
        self,
        name: str,
        cursor: Cursor,
        *,
        expected: Cursor | None,
        connection: Connection | None = None,
        fence: Fence | None = None,
    ) -> None:
        """Move checkpoint ``name`` from ``expected`` (None: it must not exist) to ``cursor``;
        CheckpointConflict if someone else moved it; with ``fence`` (an actor's checkpoint),
        StaleGeneration unless that lease generation is current."""
        if fence is not None:
            fence.check()
        conn: Any = connection if connection is not None else self._pool
        with driver_errors(fence=fence):
            stored = await conn.fetchval(
                query("save_checkpoint"),
                name,
                cursor.transaction_id,
                cursor.position,
                None if expected is None else expected.transaction_id,
                None if expected is None else expected.position,
                fence.lease if fence is not None else None,
                fence.generation if fence is not None else None,
            )
            if stored is not None:
                return
            if fence is not None:
                current = await conn.fetchval(query("lease_generation"), fence.lease)
                if current != fence.generation:
                    raise StaleGeneration(fence.lease, fence.generation)
            actual = await conn.fetchrow(query("load_checkpoint"), name)
            raise CheckpointConflict(
                name, expected, None if actual is None else Cursor(actual[0], actual[1])
            )

    # -- tick schedules -----------------------------------------------------------------------
    async def load_tick(self, name: str) -> TickRecord | None:
        """Actor ``name``'s tick schedule as last saved, or None (table ``i3lani.ticks``)."""
        with driver_errors(what="reading a tick schedule"):
            record = await self._pool.fetchrow(query("load_tick"), name)
        if record is None:
            return None
        return TickRecord(
            due_at=record[0], ticked_at=record[1], node=record[2], generation=record[3]
        )

    async def save_tick(
        self,
        name: str,
        due_at: datetime,
        ticked_at: datetime,
        *,
        node: str | None = None,
        fence: Fence | None = None,
        connection: Connection | None = None,
    ) -> None:
        """Record that actor ``name``'s tick due at ``due_at`` ran at ``ticked_at`` on
        ``node`` (default: the store's): the schedule resumes from it after a restart, a
        deploy or on another node. Overwritten in place; with ``fence``, StaleGeneration unless
        that lease generation is current."""
        _check_tick_name(name)
        if fence is not None:
            fence.check()
        conn: Any = connection if connection is not None else self._pool
        with driver_errors(fence=fence, what="saving a tick schedule"):
            stored = await conn.fetchval(
                query("save_tick"),
                name,
                due_at,
                ticked_at,
                fence.lease if fence is not None else None,
                fence.generation if fence is not None else None,
                node if node is not None else self.node,
            )
        if stored is None:
            assert fence is not None  # only a fence refuses it
            raise StaleGeneration(fence.lease, fence.generation)

    # -- snapshots ----------------------------------------------------------------------------
    async def save_snapshot(self, stream: str, version: int, state: msgspec.Struct) -> None:
        """Keep ``state`` as of ``version`` of ``stream`` (derived data: safe to lose)."""
        state_type = _state_type(type(state))
        with driver_errors(what="saving a snapshot"):
            await self._pool.execute(
                query("save_snapshot"), stream, version, state_type, msgspec.json.encode(state)
            )

    async def load_snapshot(self, stream: str, state_cls: type[S]) -> tuple[int, S] | None:
        """(version, state) if a snapshot of ``stream`` of this exact type exists."""
        with driver_errors(what="loading a snapshot"):
            record = await self._pool.fetchrow(query("load_snapshot"), stream)
        if record is None or record["state_type"] != _state_type(state_cls):
            return None
        try:
            state = msgspec.json.decode(record["state"], type=state_cls)
        except msgspec.ValidationError:
            logger.warning(
                "ignoring snapshot of %s that no longer decodes",
                stream,
                extra={"action": "snapshot_ignored"},
            )
            return None
        return record["stream_version"], state

    # -- maintenance guard --------------------------------------------------------------------
    async def execute_sql(self, sql: str, *args: Any) -> str:
        """Run raw SQL (operators, tests); refusals of the append-only rule are translated."""
        with driver_errors(what="the SQL given"):
            result: str = await self._pool.execute(sql, *args)
        return result


def _take_batch(queue: deque[_Request]) -> list[_Request]:
    """Queued requests for one combined statement: one per stream (the rest keep their order
    and wait for the next batch), at most _MAX_COMBINED_EVENTS events."""
    batch: list[_Request] = []
    streams: set[str] = set()
    later: list[_Request] = []
    events = 0
    while queue:
        request = queue.popleft()
        if request.stream in streams or (
            batch and events + len(request.rows) > _MAX_COMBINED_EVENTS
        ):
            later.append(request)
            continue
        batch.append(request)
        streams.add(request.stream)
        events += len(request.rows)
    queue.extend(later)
    return batch


class _RetryAppendError(Exception):
    """Internal: an ANY / STREAM_EXISTS append lost a race for a version; try again."""


def _state_type(cls: type[msgspec.Struct]) -> str:
    version = getattr(cls, "schema_version", 1)
    return f"{cls.__module__}.{cls.__qualname__}@v{version}"


class Transaction:
    """Appends and checkpoints on one connection, committed together (or not at all)."""

    def __init__(self, store: EventStore, connection: Connection) -> None:
        self.store = store
        self.connection = connection
        self.streams: set[str] = set()
        self.fences: set[Fence] = set()
        """Fences of the writes made in it: checked again right before the COMMIT."""

    def fenced(self, fence: Fence | None) -> None:
        """Note that a write under ``fence`` is part of this transaction (checked now, and
        again before the COMMIT)."""
        if fence is not None:
            fence.check()
            self.fences.add(fence)

    async def append(
        self,
        stream: str,
        events: Sequence[Event | NewEvent],
        *,
        expected_version: Expected = ANY,
        metadata: EventMetadata | None = None,
        fence: Fence | None = None,
    ) -> AppendResult:
        request = self.store._prepare(stream, events, expected_version, metadata, fence)
        self.fenced(fence)
        try:
            with driver_errors(stream=stream, expected=expected_version):
                result = await self.store._append_on(self.connection, request, in_transaction=True)
        except _RetryAppendError as exc:
            raise ConcurrencyConflict(stream, expected_version, None) from exc
        self.streams.add(stream)
        return result

    async def append_many(self, appends: Sequence[Append]) -> list[list[RecordedPosition]]:
        """Several appends, each to its own stream, in as few statements as possible: one per
        ``MAX_STREAMS_PER_STATEMENT`` distinct streams (plus one query for the positions), where
        :meth:`append` spends a statement on each. For each append, where each of its events
        landed, in order.

        Every check (expected version, fence) applies as in :meth:`append`; the first that
        fails raises ConcurrencyConflict or StaleGeneration, and the transaction must then be
        abandoned, as after any failed statement. Two appends to one stream are refused
        (ValueError): merge their events into one.
        """
        requests = [
            self.store._prepare(a.stream, a.events, a.expected_version, a.metadata, a.fence)
            for a in appends
        ]
        if len({r.stream for r in requests}) != len(requests):
            raise ValueError("append_many takes at most one append per stream")
        for request in requests:
            self.fenced(request.fence)
        for start in range(0, len(requests), MAX_STREAMS_PER_STATEMENT):
            chunk = requests[start : start + MAX_STREAMS_PER_STATEMENT]
            with driver_errors(stream=chunk[0].stream, expected=chunk[0].expected):
                try:
                    outcomes = await self.store._append_many_on(self.connection, chunk)
                except asyncpg.UniqueViolationError as exc:
                    # Which request met the stored id is not known: name the first one.
                    await self.store._on_unique_violation(
                        self.connection, chunk[0], exc, in_transaction=True
                    )
                    raise  # _on_unique_violation always raises inside a transaction
            for request, outcome in zip(chunk, outcomes, strict=True):
                if isinstance(outcome, StaleGeneration):
                    raise outcome
                if isinstance(outcome, int):
                    raise ConcurrencyConflict(request.stream, request.expected, outcome)
                self.streams.add(request.stream)
        # Positions inside one statement need not be consecutive (other writers draw from
        # the same sequence): ask where each event landed.
        ids = [row.event_id for request in requests for row in request.rows]
        with driver_errors():
            records = await self.connection.fetch(query("events_by_id"), ids)
        landed = {
            record["event_id"]: RecordedPosition(
                position=record["global_position"],
                transaction_id=record["transaction_id"],
                version=record["stream_version"],
                recorded_at=record["recorded_at"],
            )
            for record in records
        }
        return [[landed[row.event_id] for row in request.rows] for request in requests]

    async def save_checkpoint(
        self, name: str, cursor: Cursor, *, expected: Cursor | None, fence: Fence | None = None
    ) -> None:
        self.fenced(fence)
        await self.store.save_checkpoint(
            name, cursor, expected=expected, connection=self.connection, fence=fence
        )

    async def save_tick(
        self,
        name: str,
        due_at: datetime,
        ticked_at: datetime,
        *,
        node: str | None = None,
        fence: Fence | None = None,
    ) -> None:
        """:meth:`EventStore.save_tick`, committed with this transaction's appends."""
        self.fenced(fence)
        await self.store.save_tick(
            name, due_at, ticked_at, node=node, fence=fence, connection=self.connection
        )

    async def stored_ids(self, event_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these event ids are already in the log (as seen by this transaction)."""
        with driver_errors():
            records = await self.connection.fetch(query("events_by_id"), list(event_ids))
        return {record["event_id"] for record in records}
