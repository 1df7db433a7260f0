"""Read models and queries outside the event log's own API, as named functions of the store.

The CLI's summary, the admin API's metrics and dashboard, the gateway's payment ids, the
health probe and the health samples (every health round, beside the log) all read or write
here, so that no module outside ``store/`` runs SQL or meets the driver. The SQL is in
``store/sql/views.sql``; each function returns typed values, never driver records, and raises
the store's errors (:class:`StoreUnavailable` for an outage, :class:`StoreError` for any other
refusal), never the driver's.

What the HealthChecker and Cleanup need (:func:`ping`, the health samples) works on the
in-memory log too, so that both run in the deterministic simulation: the samples are a side
table of the log there (:class:`MemoryHealthSamples`), and the contract tests
(``tests/store/test_health_samples.py``) run each function on both. The operator views
(the summary's sizes, the server's sessions) stay PostgreSQL's: the in-memory log has no
disk and no sessions to count, and would only make numbers up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal, TypeVar

import msgspec

from events import ActorParked, OperatorCommandIssued
from events.base import Event
from events.streams import OPS_COMMANDS, actor_stream
from store.driver import driver_errors
from store.eventstore import EventStore, Transaction
from store.memory import MemoryLog, MemoryTransaction
from store.queries import query

__all__ = [
    "DesiredState",
    "desired_state",
    "Summary",
    "TypeSummary",
    "CheckpointSummary",
    "MinuteCount",
    "RecentStream",
    "HealthSample",
    "MemoryHealthSamples",
    "ConnectionUse",
    "NodeConnections",
    "connection_use",
    "summary",
    "events_by_type",
    "events_per_stream",
    "event_rate",
    "recent_streams",
    "streams_with_types",
    "max_payload_int",
    "ping",
    "record_health_samples",
    "latest_health_samples",
    "prune_health_samples",
]


class TypeSummary(msgspec.Struct, frozen=True, kw_only=True):
    """Events of one type in one category."""

    category: str
    type: str
    events: int
    last_recorded_at: datetime


class CheckpointSummary(msgspec.Struct, frozen=True, kw_only=True):
    """Where a subscriber's checkpoint is, and how many events it has still to read."""

    name: str
    global_position: int
    behind: int
    updated_at: datetime


class Summary(msgspec.Struct, frozen=True, kw_only=True):
    """The whole log at a glance (``i3lani summary``); the times are None when it is empty.

    Sizes are on disk: ``log_bytes`` the table with its TOAST and every index (what a
    database plan's storage counts), ``table_bytes`` and ``index_bytes`` its parts,
    ``database_bytes`` the whole database (the log, the task queue, health samples, the
    catalog)."""

    events: int
    streams: int
    last_position: int
    first_recorded_at: datetime | None
    last_recorded_at: datetime | None
    by_type: list[TypeSummary]
    checkpoints: list[CheckpointSummary]
    events_last_day: int = 0
    events_last_week: int = 0
    log_bytes: int = 0
    table_bytes: int = 0
    index_bytes: int = 0
    database_bytes: int = 0

    @property
    def bytes_per_event(self) -> float | None:
        """The log's size over its events (indexes included), None when it is empty."""
        return self.log_bytes / self.events if self.events else None

    def growth_days(self, now: datetime) -> float:
        """The days :meth:`growth_per_day` is taken over: the last week, or the log's life
        when it is younger (a minute at least)."""
        if self.first_recorded_at is None:
            return 0.0
        return min(7.0, max((now - self.first_recorded_at).total_seconds() / 86400, 1 / 1440))

    def growth_per_day(self, now: datetime) -> float | None:
        """Bytes a day the log has grown by lately: the events of the last week (or of its
        life, when younger) at its bytes per event, per day; None when it is empty."""
        per_event = self.bytes_per_event
        days = self.growth_days(now)
        if per_event is None or not days:
            return None
        return self.events_last_week * per_event / days


class MinuteCount(msgspec.Struct, frozen=True):
    """Events recorded in the minute starting at ``minute``."""

    minute: datetime
    events: int


class RecentStream(msgspec.Struct, frozen=True):
    """A stream written to lately, and the position of its newest event."""

    stream: str
    last_position: int


class NodeConnections(msgspec.Struct, frozen=True, kw_only=True):
    """The connections one i3lani process holds, by what they are for (``application_name``
    ``i3lani:<node>:<purpose>``); ``node`` None for processes without a node name (operator
    commands)."""

    node: str | None
    listen: int = 0
    lease: int = 0
    work: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        return self.listen + self.lease + self.work + self.other


class ConnectionUse(msgspec.Struct, frozen=True, kw_only=True):
    """Connections now: the server's limit and its client sessions (all databases), and this
    database's i3lani sessions per process."""

    server_max: int
    server_in_use: int
    nodes: list[NodeConnections]


class HealthSample(msgspec.Struct, frozen=True, kw_only=True):
    """One check of one health round (a row of ``i3lani.health_samples``)."""

    checked_at: datetime
    name: str
    ok: bool
    latency_ms: float | None = None
    detail: str = ""


def _translated(what: str) -> contextlib.AbstractContextManager[None]:
    """Driver errors as the store's (:mod:`store.driver`): an outage or a statement out of
    time is StoreUnavailable, any other refusal of PostgreSQL a StoreError naming ``what``."""
    return driver_errors(what=what)


async def summary(store: EventStore) -> Summary:
    """Totals of the log, events per category and type, and every subscriber's checkpoint."""
    with _translated("reading the summary"):
        totals = await store._pool.fetchrow(query("summary_totals"))
        sizes = await store._pool.fetchrow(query("summary_sizes"))
        by_type = await store._pool.fetch(query("summary_by_type"))
        checkpoints = await store._pool.fetch(query("checkpoints"))
    assert totals is not None  # an aggregate without GROUP BY always has its row
    assert sizes is not None
    return msgspec.convert(
        {
            **dict(totals),
            **dict(sizes),
            "by_type": [dict(row) for row in by_type],
            "checkpoints": [dict(row) for row in checkpoints],
        },
        Summary,
    )


async def events_by_type(store: EventStore) -> dict[str, int]:
    """How many events of each type the log holds, by type name in order."""
    with _translated("counting events by type"):
        rows = await store._pool.fetch(query("admin_events_by_type"))
    return {row["type"]: row["events"] for row in rows}


async def events_per_stream(store: EventStore, event_type: str) -> dict[str, int]:
    """How many events of ``event_type`` each stream holding any has, by stream."""
    with _translated(f"counting {event_type} events"):
        rows = await store._pool.fetch(query("admin_events_per_stream"), event_type)
    return {row["stream"]: row["events"] for row in rows}


async def event_rate(store: EventStore, minutes: int, scan_limit: int) -> list[MinuteCount]:
    """Events per minute over the last ``minutes`` minutes, oldest first, the current (partial)
    minute last, every minute present; only the newest ``scan_limit`` events are counted, so a
    total of ``scan_limit`` is a lower bound."""
    with _translated("reading the event rate"):
        rows = await store._pool.fetch(query("admin_event_rate"), minutes, scan_limit)
    return [MinuteCount(row["minute"], row["events"]) for row in rows]


async def recent_streams(
    store: EventStore, category: str, types: Sequence[str], *, shown: int, scan_limit: int
) -> list[RecentStream]:
    """The ``shown`` streams of ``category`` holding events of ``types`` written to last, newest
    first, found among the newest ``scan_limit`` events of that category."""
    with _translated(f"reading recent {category} streams"):
        rows = await store._pool.fetch(
            query("admin_recent_streams"), shown, scan_limit, list(types), category
        )
    return [RecentStream(row["stream"], row["last_position"]) for row in rows]


async def streams_with_types(store: EventStore, types: Sequence[str]) -> list[RecentStream]:
    """Every stream holding events of ``types``, oldest first, each with the position of its
    newest such event (the refunds' streams, for the refund list)."""
    with _translated("reading streams by event type"):
        rows = await store._pool.fetch(query("streams_with_types"), list(types))
    return [RecentStream(row["stream"], row["last_position"]) for row in rows]


async def max_payload_int(store: EventStore | MemoryLog, event_type: str, field: str) -> int:
    """The largest integer ``field`` of the payloads of ``event_type`` events (the largest
    payment id: ``"PaymentCreated", "payment_id"``); 0 when there is none."""
    if isinstance(store, MemoryLog):
        return store.max_payload_int(event_type, field)
    with _translated(f"reading the largest {field}"):
        largest: int = await store._pool.fetchval(query("max_payload_int"), event_type, field)
    return largest


async def connection_use(store: EventStore) -> ConnectionUse:
    """Who holds connections to the server now (``i3lani status``, ``/metrics``)."""
    with _translated("counting connections"):
        records = await store._pool.fetch(query("connection_use"))
    nodes: dict[str | None, dict[str, int]] = {}
    for record in records:
        name = record["application_name"]
        if name is None:
            continue  # no i3lani session but this one
        _, _, rest = name.partition(":")
        node, _, purpose = rest.rpartition(":")
        counts = nodes.setdefault(node or None, {})
        key = purpose if purpose in ("listen", "lease", "work") else "other"
        counts[key] = counts.get(key, 0) + record["sessions"]
    first = records[0]
    return ConnectionUse(
        server_max=first["server_max"],
        server_in_use=first["server_in_use"],
        nodes=[
            NodeConnections(node=node, **counts)
            for node, counts in sorted(nodes.items(), key=lambda item: item[0] or "")
        ],
    )


async def ping(store: EventStore | MemoryLog) -> None:
    """One round trip to PostgreSQL: returns when it answered, raises StoreUnavailable when it
    cannot be reached. On the in-memory log, :meth:`MemoryLog.ping` (unreachable only when a
    simulation's fault hook says so)."""
    if isinstance(store, MemoryLog):
        await store.ping()
        return
    with _translated("ping"):
        await store._pool.fetchval(query("ping"))


async def record_health_samples(
    where: EventStore | Transaction | MemoryLog | MemoryTransaction,
    samples: Sequence[HealthSample],
) -> None:
    """Write ``samples``: on the store's pool, or in a transaction of its (then they are kept
    only if it commits)."""
    if not samples:
        return
    if isinstance(where, MemoryTransaction):
        await MemoryHealthSamples.of(where.log).insert(samples, tx=where)
        return
    if isinstance(where, MemoryLog):
        await MemoryHealthSamples.of(where).insert(samples)
        return
    rows = [(s.checked_at, s.name, s.ok, s.latency_ms, s.detail) for s in samples]
    with _translated("recording health samples"):
        if isinstance(where, Transaction):
            await where.connection.executemany(query("health_samples_insert"), rows)
        else:
            await where._pool.executemany(query("health_samples_insert"), rows)


async def latest_health_samples(store: EventStore | MemoryLog) -> list[HealthSample]:
    """The last health round recorded: every sample checked at the latest time, in the order
    they were written (empty when there is none)."""
    if isinstance(store, MemoryLog):
        return await MemoryHealthSamples.of(store).latest()
    with _translated("reading the latest health samples"):
        records = await store._pool.fetch(query("health_samples_latest"))
    return [
        HealthSample(
            checked_at=r["checked_at"],
            name=r["name"],
            ok=r["ok"],
            latency_ms=r["latency_ms"],
            detail=r["detail"],
        )
        for r in records
    ]


async def prune_health_samples(
    store: EventStore | MemoryLog, before: datetime, *, batch_size: int
) -> int:
    """Delete the health samples checked before ``before``, ``batch_size`` rows per statement
    (each its own short transaction); how many went."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(store, MemoryLog):
        return await MemoryHealthSamples.of(store).prune(before, batch_size=batch_size)
    removed = 0
    while True:
        with _translated("pruning health samples"):
            status: str = await store._pool.execute(
                query("health_samples_prune"), before, batch_size
            )
        count = int(status.split()[-1])
        removed += count
        if count < batch_size:
            return removed


@dataclass(eq=False, slots=True)
class _SampleWrites:
    """One transaction's writes to :class:`MemoryHealthSamples` (a side table's writes:
    applied at its commit, dropped at its rollback)."""

    table: MemoryHealthSamples
    inserted: list[HealthSample] = field(default_factory=list)
    deleted: set[int] = field(default_factory=set)

    def commit(self) -> None:
        self.table._apply(self.inserted, self.deleted)

    def discard(self) -> None:
        self.inserted.clear()
        self.deleted.clear()


class MemoryHealthSamples:
    """``i3lani.health_samples`` beside a :class:`MemoryLog`, for tests and deterministic
    simulation; a log's one table is :meth:`of` it (:meth:`MemoryLog.side_table`).

    Rows are numbered as the table's identity column numbers them, and read in that order.
    Writes go through the log's transactions, as the task table's do: an insert joins the
    caller's transaction or makes one of its own, and each pruning batch is one; so they pass
    the log's ``"begin"`` and ``"commit"`` hooks (a simulation may fail them, or lose a
    commit's acknowledgement after the rows are in), and a rolled-back write leaves nothing.
    A deletion holds the row's lock (the log's claims) until its transaction ends, so two
    prunings at once remove each row once. Reads pass the hooks as ``"samples_read"``. Not
    modelled: rows inserted by two
    transactions open at once are numbered in the order of their commits here, of their
    inserts in PostgreSQL (one round's samples are always one insert); and the driver errors
    PostgreSQL's table translates.
    """

    def __init__(self, log: MemoryLog) -> None:
        self.log = log
        self._rows: dict[int, HealthSample] = {}  # by id, in id order
        self._next_id = 1

    @classmethod
    def of(cls, log: MemoryLog) -> MemoryHealthSamples:
        """The health samples of ``log``."""
        return log.side_table(cls, lambda: cls(log))

    def _writes(self, tx: MemoryTransaction) -> _SampleWrites:
        return tx.side_writes(MemoryHealthSamples, lambda: _SampleWrites(self))

    def _apply(self, inserted: Sequence[HealthSample], deleted: set[int]) -> None:
        for row_id in deleted:
            self._rows.pop(row_id, None)
        for sample in inserted:
            self._rows[self._next_id] = sample
            self._next_id += 1

    async def insert(
        self, samples: Sequence[HealthSample], *, tx: MemoryTransaction | None = None
    ) -> None:
        """Insert ``samples`` in ``tx`` (kept if it commits), or in a transaction of their own."""
        if tx is not None:
            self._writes(tx).inserted.extend(samples)
            return
        async with self.log.transaction() as own:
            self._writes(own).inserted.extend(samples)

    async def latest(self) -> list[HealthSample]:
        """Every sample checked at the latest time, in id order (``health_samples_latest``)."""
        await self.log.enter("samples_read")
        if not self._rows:
            return []
        newest = max(row.checked_at for row in self._rows.values())
        return [row for row in self._rows.values() if row.checked_at == newest]

    async def prune(self, before: datetime, *, batch_size: int) -> int:
        """Delete samples checked before ``before``, the oldest ids first, ``batch_size`` per
        transaction, until a batch finds fewer; how many went (``health_samples_prune``)."""
        removed = 0
        while True:
            async with self.log.transaction() as tx:
                chosen = [i for i, row in self._rows.items() if row.checked_at < before]
                deleted = self._writes(tx).deleted
                for row_id in chosen[:batch_size]:
                    # As the DELETE does: wait for a transaction deleting the row too, then
                    # count it only if it is still there.
                    await tx.lock(("health_sample", row_id))
                    if row_id in self._rows:
                        deleted.add(row_id)
                count = len(deleted)
            removed += count
            if count < batch_size:
                return removed


# -- streams ---------------------------------------------------------------------------------
E = TypeVar("E", bound=Event)


async def first_event(store: EventStore | MemoryLog, stream: str, kind: type[E]) -> E | None:
    """The first event of ``stream`` when it is a ``kind`` (a stream's opening event: the
    payment's ``PaymentCreated``, the channel's ``ChannelAdded``); None otherwise."""
    first = await store.read_stream(stream, limit=1, skip_unknown=True)
    if first and isinstance(first[0].event, kind):
        return first[0].event
    return None


# -- actor status ------------------------------------------------------------------------------
DesiredState = Literal["running", "stopped", "parked"]
"""What operators (or parking) last asked of an actor."""


async def desired_state(store: EventStore | MemoryLog, name: str) -> DesiredState:
    """What operators last asked of actor ``name`` (or parking imposed): running unless
    stopped. StoreUnavailable when PostgreSQL cannot be reached, StoreError when it refuses.

    The newest, in reading order, of the actor's commands in ``ops-commands`` and of its
    ``ActorParked`` events. On the in-memory log the same rule is read from its streams."""
    if isinstance(store, MemoryLog):
        return await _desired_state_in_memory(store, name)
    with _translated(f"reading the desired state of {name}"):
        record = await store._pool.fetchrow(query("desired_state"), name)
    if record is None:
        return "running"
    if record["type"] == "ActorParked":
        return "parked"
    return "stopped" if record["action"] == "stop" else "running"


_DESIRED_STATE_TYPES: Final = frozenset({"OperatorCommandIssued", "ActorParked"})
"""The stored types ``desired_state`` reads (the query's filter on the ``type`` column)."""


async def _desired_state_in_memory(log: MemoryLog, name: str) -> DesiredState:
    newest: tuple[tuple[int, int], DesiredState] | None = None
    for stream in (OPS_COMMANDS, actor_stream(name)):
        for recorded in await log.read_stream_of_types(
            stream, _DESIRED_STATE_TYPES, skip_unknown=True
        ):
            event = recorded.event
            if isinstance(event, OperatorCommandIssued) and event.actor == name:
                state: DesiredState = "stopped" if event.action == "stop" else "running"
            elif isinstance(event, ActorParked):
                state = "parked"
            else:
                continue
            key = (recorded.transaction_id, recorded.position)
            if newest is None or key > newest[0]:
                newest = (key, state)
    return "running" if newest is None else newest[1]
