"""The task table in memory: :class:`MemoryTaskTable`, ``i3lani.tasks`` beside a
:class:`store.memory.MemoryLog`, for tests and deterministic simulation.

One table per log (:meth:`MemoryLog.side_table`), shared by every queue and processor on it,
as the database's table is. It keeps the guarantees of the PostgreSQL table
(:class:`store.tasks.postgres.PostgresTaskTable`), which the contract tests in ``tests/store/``
run on both:

* **One transaction per change, with its events.** Every operation that changes tasks runs in
  a log transaction (the caller's, for an enqueue made inside one) and appends each change's
  event to ``task-<id>`` in it; the rows are that transaction's side writes
  (:meth:`MemoryTransaction.side_writes`), applied in the same step as its events at the
  commit and dropped at a rollback. Others read committed rows only.
* **Row locks.** A change takes the row's lock (the log's claims) until its transaction ends:
  outcomes, heartbeats and re-queues wait for a row another transaction holds (``FOR
  UPDATE``); claims, the reaper and pruning pass over it (``SKIP LOCKED``). A dedupe key being
  inserted is locked too, so a second enqueue of the key waits for the first to commit (then
  skips) or roll back (then inserts), as PostgreSQL's unique index makes it.
* **One snapshot per cycle.** A task re-queued by a cycle's outcomes is claimable from the next
  cycle on; due tasks are claimed by priority (higher first), then due time, then id.
* **Fencing.** Fenced operations check the lease generation (:meth:`MemoryLog.grant`) on this
  node's clock, then in the log, and again at the commit: a stale one writes nothing.
* **Time** is the log's ``clock`` (``now()`` of a transaction is its start, as in
  PostgreSQL): due times, locks, finishing times and the ages operators see.
* **Wake-ups.** A committed enqueue (or re-queue) calls the processors' listeners at once, with
  the seconds until the earliest of its tasks is due, as the NOTIFY does; they also poll.

Not modelled: group commit of enqueues (each ``add_tasks`` is a transaction of its own, with
the same results), lost notifications, the query plans and statistics the SQL comments worry
about, ids drawn for tasks a rolled-back transaction inserted being reused (they are not, as
with a sequence), and the driver errors PostgreSQL's table translates. Reads of the table pass
the log's ``yield_point`` and ``faults`` hooks as ``"task_read"``; writes as the log's
transactions do (``"begin"``, ``"append_many"``, ``"commit"``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from events import Event, EventMetadata
from events.streams import task_stream
from events.tasks import (
    TaskClaimed,
    TaskDeadLettered,
    TaskEnqueued,
    TaskFailed,
    TaskRequeued,
    TaskSucceeded,
)
from store.eventstore import Append, Fence
from store.memory import MemoryLog, MemoryTransaction
from store.records import NO_STREAM
from store.tasks.errors import DuplicateTask
from store.tasks.table import (
    LIVE,
    MAX_BATCH,
    ClaimedTask,
    ConcurrencyUse,
    Cycle,
    DeadTask,
    EnqueueRows,
    ExpiredTask,
    Outcome,
    TaskInfo,
    TaskListener,
    TaskTransaction,
    TypeCounts,
)

__all__ = ["MemoryTaskTable"]


@dataclass(frozen=True, slots=True)
class _Task:
    """One row of ``i3lani.tasks``, as PostgreSQL holds it (the payload as JSON)."""

    id: int
    task_type: str
    payload: bytes
    priority: int
    run_at: datetime
    status: str
    attempts: int
    max_attempts: int
    last_error: str | None
    locked_by: str | None
    locked_until: datetime | None
    dedupe_key: str | None
    stream_version: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    fence_lease: str | None = None
    fence_generation: int | None = None

    @property
    def claim_order(self) -> tuple[int, datetime, int]:
        return (-self.priority, self.run_at, self.id)


def _row_lock(task_id: int) -> tuple[str, int]:
    return ("task", task_id)


def _key_lock(key: str) -> tuple[str, str]:
    return ("task-key", key)


def _type_lock(task_type: str) -> tuple[str, str]:
    """The lock a claim of a task type with a concurrency limit holds until its transaction
    ends (PostgreSQL's transaction-level advisory lock in ``i3lani.claimable_tasks``)."""
    return ("task-concurrency", task_type)


@dataclass(frozen=True, slots=True)
class _Limit:
    """A row of ``i3lani.task_concurrency``."""

    max_running: int
    set_by: str | None
    updated_at: datetime


class _Writes:
    """One transaction's writes to the table (None: deleted), and the wake-up its commit
    sends."""

    def __init__(self, table: MemoryTaskTable) -> None:
        self.table = table
        self.rows: dict[int, _Task | None] = {}
        self.announce: float | None = None  # seconds until the earliest task it made due

    def due_in(self, delay: float) -> None:
        self.announce = delay if self.announce is None else min(self.announce, delay)

    def commit(self) -> None:
        rows = self.table._rows
        for task_id, row in self.rows.items():
            if row is None:
                rows.pop(task_id, None)
            else:
                rows[task_id] = row
        if self.announce is not None:
            self.table._announce(self.announce)

    def discard(self) -> None:
        self.rows.clear()
        self.announce = None


class _Listener:
    """A processor's wake-up: called by the table at the commit of new due work."""

    def __init__(
        self, table: MemoryTaskTable, on_notify: Callable[[str], None], poll_interval: float
    ) -> None:
        self.table = table
        self.on_notify = on_notify
        self.poll_interval = table.log.stretched(poll_interval)
        self.owner: Hashable = None  # whose LISTEN connection it listens on

    async def listen(self) -> bool:
        if self in self.table._listeners:
            return False
        self.owner = self.table.log.listening_owner()
        self.table._listeners.add(self)
        return True

    async def close(self) -> None:
        self.table._listeners.discard(self)


def _memory(tx: TaskTransaction) -> MemoryTransaction:
    if not isinstance(tx, MemoryTransaction):
        raise TypeError(f"a task queue on a MemoryLog joins a MemoryLog transaction, not {tx!r}")
    return tx


class MemoryTaskTable:
    """:class:`~store.tasks.table.TaskTable` in memory, beside a :class:`MemoryLog` (see the
    module docstring); get a log's one table with :meth:`of`."""

    def __init__(self, log: MemoryLog) -> None:
        self.log = log
        self._rows: dict[int, _Task] = {}  # committed rows
        self._next_id = 1
        self._listeners: set[_Listener] = set()
        log.on_listen_lost(self._lose_listening)
        self._limits: dict[str, _Limit] = {}  # i3lani.task_concurrency

    @classmethod
    def of(cls, log: MemoryLog) -> MemoryTaskTable:
        """The task table of ``log``."""
        return log.side_table(cls, lambda: cls(log))

    def _lose_listening(self, owner: Hashable) -> None:
        """``owner``'s LISTEN connection is gone: its processors hear no new task until they
        listen again (:meth:`MemoryLog.lose_listening`)."""
        for listener in [f for f in self._listeners if f.owner == owner]:
            self._listeners.discard(listener)

    # -- rows as a transaction sees them -----------------------------------------------------
    def _writes(self, tx: MemoryTransaction) -> _Writes:
        return tx.side_writes(self, lambda: _Writes(self))

    def _row(self, tx: MemoryTransaction | None, task_id: int) -> _Task | None:
        if tx is not None:
            writes = self._writes(tx)
            if task_id in writes.rows:
                return writes.rows[task_id]
        return self._rows.get(task_id)

    def _all(self, tx: MemoryTransaction | None) -> Iterator[_Task]:
        """Every row ``tx`` sees (committed ones only, without it), in id order."""
        if tx is None:
            yield from sorted(self._rows.values(), key=lambda row: row.id)
            return
        # What _row(tx, id) answers for each id, without its two method calls per row (every
        # reap, claim and dedupe check walks the whole table). Looked up as each row is
        # yielded, not before: a caller may write rows of the table while it walks it.
        writes = self._writes(tx).rows
        committed = self._rows
        for task_id in sorted(committed.keys() | writes.keys()):
            row = writes[task_id] if task_id in writes else committed.get(task_id)
            if row is not None:
                yield row

    def _holder(self, tx: MemoryTransaction | None, key: str) -> _Task | None:
        """The unfinished task holding dedupe key ``key``, as ``tx`` sees it."""
        return next(
            (row for row in self._all(tx) if row.dedupe_key == key and row.status in LIVE), None
        )

    async def _wait_for_key(self, tx: MemoryTransaction, key: str) -> _Task | None:
        """The holder of ``key`` once no other transaction is inserting it or changing its
        holder (PostgreSQL's unique index waits for those, then looks again)."""
        while True:
            if tx.locked_elsewhere(_key_lock(key)):
                await tx.wait_unlocked(_key_lock(key))
                continue
            holder = self._holder(tx, key)
            if holder is not None and tx.locked_elsewhere(_row_lock(holder.id)):
                await tx.wait_unlocked(_row_lock(holder.id))
                continue
            return holder

    def _announce(self, delay: float) -> None:
        payload = f"{max(delay, 0.0):.3f}"
        for listener in list(self._listeners):
            listener.on_notify(payload)

    # -- adding -------------------------------------------------------------------------------
    async def enqueue(
        self, rows: EnqueueRows, *, metadata: EventMetadata, tx: TaskTransaction | None
    ) -> list[tuple[int, int]]:
        if tx is not None:
            return await self._enqueue(rows, metadata, _memory(tx))
        async with self.log.transaction() as own:
            return await self._enqueue(rows, metadata, own)

    async def _enqueue(
        self, rows: EnqueueRows, metadata: EventMetadata, tx: MemoryTransaction
    ) -> list[tuple[int, int]]:
        now = tx.started_at
        inserted: list[tuple[int, int]] = []
        appends: list[Append] = []
        delays: list[float] = []
        for index in range(len(rows)):
            task_id = self._next_id  # drawn whether or not it is inserted, as in task_enqueue
            self._next_id += 1
            key = rows.dedupe_keys[index]
            if key is not None:
                if await self._wait_for_key(tx, key) is not None:
                    continue  # ON CONFLICT DO NOTHING: the caller looks up the holder
                tx.lock_now(_key_lock(key))
            row = _Task(
                id=task_id,
                task_type=rows.types[index],
                payload=rows.payloads[index],
                priority=rows.priorities[index],
                run_at=now + timedelta(seconds=rows.delays[index]),
                status="queued",
                attempts=0,
                max_attempts=rows.max_attempts[index],
                last_error=None,
                locked_by=None,
                locked_until=None,
                dedupe_key=key,
                stream_version=1,
                created_at=now,
                updated_at=now,
                finished_at=None,
            )
            self._writes(tx).rows[task_id] = row
            tx.lock_now(_row_lock(task_id))
            inserted.append((index + 1, task_id))
            delays.append(rows.delays[index])
            enqueued = TaskEnqueued(
                task_id=task_id,
                task_type=row.task_type,
                payload=msgspec.json.decode(row.payload),
                priority=row.priority,
                run_at=row.run_at,
                max_attempts=row.max_attempts,
                dedupe_key=key,
            )
            appends.append(_append(task_id, [enqueued], 0, metadata))
        if appends:
            await tx.append_many(appends)
            self._writes(tx).due_in(min(delays))
        return inserted

    async def holding_keys(
        self, keys: Sequence[str], *, tx: TaskTransaction | None
    ) -> dict[str, int]:
        if tx is None:
            await self.log.enter("task_read")
        view = None if tx is None else _memory(tx)
        wanted = set(keys)
        return {
            row.dedupe_key: row.id
            for row in self._all(view)
            if row.dedupe_key in wanted and row.status in LIVE
        }

    async def check_fence(self, fence: Fence, tx: TaskTransaction) -> None:
        _memory(tx).fenced(fence)

    # -- concurrency limits ---------------------------------------------------------------------
    def _running(self, task_type: str, now: datetime) -> int:
        """Committed running tasks of ``task_type`` whose lock is live (what a claim of a
        limited type counts, after its type's lock)."""
        return sum(
            1
            for row in self._rows.values()
            if row.task_type == task_type
            and row.status == "running"
            and row.locked_until is not None
            and row.locked_until >= now
        )

    async def set_concurrency(self, limits: Mapping[str, int | None], *, node: str) -> None:
        await self.log.enter("task_limits")
        now = self.log.clock()
        for task_type, max_running in limits.items():
            if max_running is None:
                self._limits.pop(task_type, None)
            elif max_running < 1:
                raise ValueError(f"a concurrency limit is 1 or more, got {max_running}")
            else:
                self._limits[task_type] = _Limit(max_running, node, now)

    async def concurrency(self) -> dict[str, ConcurrencyUse]:
        await self.log.enter("task_read")
        now = self.log.clock()
        return {
            task_type: ConcurrencyUse(
                task_type=task_type,
                max_running=limit.max_running,
                running=self._running(task_type, now),
                set_by=limit.set_by,
                updated_at=limit.updated_at,
            )
            for task_type, limit in sorted(self._limits.items())
        }

    # -- processing ---------------------------------------------------------------------------
    async def cycle(
        self,
        outcomes: Sequence[Outcome],
        *,
        metadata: EventMetadata,
        want: int,
        task_types: Sequence[str],
        node: str,
        lock_seconds: float,
        fence: Fence | None,
    ) -> Cycle:
        if fence is not None:
            fence.check()  # this node's own clock first, before anything is sent
        async with self.log.transaction() as tx:
            tx.fenced(fence)
            events: dict[int, tuple[int, list[Event]]] = {}
            recorded = await self._record(tx, outcomes, events)
            free: dict[str, int] = {}
            if want > 0:
                # A type with a concurrency limit: its lock, then its running tasks counted
                # as committed (i3lani.claimable_tasks; an outcome this cycle records is not
                # counted yet, as there).
                for task_type in sorted(set(task_types) & self._limits.keys()):
                    await tx.lock(_type_lock(task_type))
                    limit = self._limits.get(task_type)
                    if limit is not None:
                        free[task_type] = limit.max_running - self._running(
                            task_type, tx.started_at
                        )
            claimed = self._claim(tx, want, task_types, node, lock_seconds, fence, events, free)
            await self._append(tx, events, metadata)
        return Cycle(recorded, claimed)

    async def _record(
        self,
        tx: MemoryTransaction,
        outcomes: Sequence[Outcome],
        events: dict[int, tuple[int, list[Event]]],
    ) -> list[str]:
        """The first half of a cycle: record how attempts ended, each only while its task is
        still running that attempt under that holder; the new statuses."""
        now = tx.started_at
        writes = self._writes(tx)
        recorded: list[str] = []
        for outcome in sorted(outcomes, key=lambda o: o.task_id):  # locks in one order
            await tx.lock(_row_lock(outcome.task_id))
            row = self._row(tx, outcome.task_id)
            if (
                row is None
                or row.id in events  # the same outcome twice: recorded once
                or row.locked_by != outcome.node
                or row.attempts != outcome.attempt
            ):
                continue  # a late outcome of an attempt that is no longer this holder's
            if outcome.error is None:
                status, run_at, finished_at = "succeeded", row.run_at, now
            elif outcome.retry_delay is None:
                status, run_at, finished_at = "dead", row.run_at, now
            else:
                status = "queued"
                run_at, finished_at = now + timedelta(seconds=outcome.retry_delay), None
            new: list[Event]
            if outcome.error is None:
                new = [
                    TaskSucceeded(
                        task_id=row.id,
                        attempt=outcome.attempt,
                        node=outcome.node,
                        duration_ms=outcome.duration_ms,
                    )
                ]
            else:
                new = [
                    TaskFailed(
                        task_id=row.id,
                        attempt=outcome.attempt,
                        node=outcome.node,
                        error=outcome.error,
                        retry_at=run_at if status == "queued" else None,
                    )
                ]
                if status == "dead":
                    new.append(
                        TaskDeadLettered(
                            task_id=row.id, attempts=outcome.attempt, error=outcome.error
                        )
                    )
            writes.rows[row.id] = dataclasses.replace(
                row,
                status=status,
                run_at=run_at,
                last_error=outcome.error if outcome.error is not None else row.last_error,
                locked_by=None,
                locked_until=None,
                fence_lease=None,
                fence_generation=None,
                updated_at=now,
                finished_at=finished_at,
                stream_version=row.stream_version + len(new),
            )
            events[row.id] = (row.stream_version, new)
            recorded.append(status)
        return recorded

    def _claim(
        self,
        tx: MemoryTransaction,
        want: int,
        task_types: Sequence[str],
        node: str,
        lock_seconds: float,
        fence: Fence | None,
        events: dict[int, tuple[int, list[Event]]],
        free: Mapping[str, int],
    ) -> list[ClaimedTask]:
        """The second half of a cycle: take over the running tasks of an older generation of
        ``fence``'s lease, then claim due tasks, up to ``want`` in all, passing over rows
        another transaction holds, and at most ``free[type]`` of a type with a concurrency
        limit. Rows the first half changed are not looked at (one snapshot)."""
        if want <= 0:
            return []
        now = tx.started_at
        types = set(task_types)
        candidates = [
            row for row in self._all(tx) if row.task_type in types and row.id not in events
        ]
        picked: list[tuple[_Task, str | None]] = []
        if fence is not None:
            for row in candidates:
                if len(picked) >= want:
                    break
                if (
                    row.status == "running"
                    and row.fence_lease == fence.lease
                    and row.fence_generation is not None
                    and row.fence_generation < fence.generation
                    and tx.lock_now(_row_lock(row.id))
                ):
                    picked.append((row, row.locked_by))
        due = sorted(
            (row for row in candidates if row.status == "queued" and row.run_at <= now),
            key=lambda row: row.claim_order,
        )
        room = dict(free)
        for row in due:
            if len(picked) >= want:
                break
            if row.task_type in room and room[row.task_type] <= 0:
                continue  # at its concurrency limit
            if tx.lock_now(_row_lock(row.id)):
                picked.append((row, None))
                if row.task_type in room:
                    room[row.task_type] -= 1
        writes = self._writes(tx)
        locked_until = now + timedelta(seconds=lock_seconds)
        claimed: list[ClaimedTask] = []
        for row, taken_over_from in sorted(picked, key=lambda pick: pick[0].claim_order):
            # A take-over continues the superseded holder's attempt, which never counted.
            attempt = row.attempts if row.status == "running" else row.attempts + 1
            writes.rows[row.id] = dataclasses.replace(
                row,
                status="running",
                attempts=attempt,
                locked_by=node,
                locked_until=locked_until,
                fence_lease=fence.lease if fence is not None else None,
                fence_generation=fence.generation if fence is not None else None,
                updated_at=now,
                stream_version=row.stream_version + 1,
            )
            claim = TaskClaimed(
                task_id=row.id,
                attempt=attempt,
                node=node,
                locked_until=locked_until,
                taken_over_from=taken_over_from,
            )
            events[row.id] = (row.stream_version, [claim])
            claimed.append(
                ClaimedTask(row.id, row.task_type, row.payload, attempt, row.max_attempts)
            )
        return claimed

    async def _append(
        self,
        tx: MemoryTransaction,
        events: dict[int, tuple[int, list[Event]]],
        metadata: EventMetadata,
    ) -> None:
        if events:
            await tx.append_many(
                [
                    _append(task_id, new, version, metadata)
                    for task_id, (version, new) in sorted(events.items())
                ]
            )

    async def heartbeat(
        self, task_ids: Sequence[int], *, node: str, lock_seconds: float, fence: Fence | None
    ) -> set[int]:
        if fence is not None:
            fence.check()
        alive: set[int] = set()
        async with self.log.transaction() as tx:
            tx.fenced(fence)
            locked_until = tx.started_at + timedelta(seconds=lock_seconds)
            for task_id in sorted(set(task_ids)):
                await tx.lock(_row_lock(task_id))
                row = self._row(tx, task_id)
                if row is not None and row.locked_by == node:  # a holder implies running
                    self._writes(tx).rows[task_id] = dataclasses.replace(
                        row, locked_until=locked_until
                    )
                    alive.add(task_id)
        return alive

    async def reap(
        self,
        *,
        task_types: Sequence[str],
        node: str,
        lock_seconds: float,
        metadata: EventMetadata,
        fence: Fence | None,
        decide: Callable[[ExpiredTask], Outcome],
    ) -> list[str]:
        if fence is not None:
            fence.check()
        async with self.log.transaction() as tx:
            tx.fenced(fence)
            now = tx.started_at
            types = set(task_types)
            expired: list[ExpiredTask] = []
            for row in sorted(
                (
                    row
                    for row in self._all(tx)
                    if row.status == "running"
                    and row.task_type in types
                    and row.locked_until is not None
                    and row.locked_until < now
                    # An older grant of our own lease: taken over by our next claim instead.
                    and not (
                        fence is not None
                        and row.fence_lease == fence.lease
                        and row.fence_generation is not None
                        and row.fence_generation < fence.generation
                    )
                ),
                key=lambda row: (row.locked_until, row.id),
            ):
                if len(expired) >= MAX_BATCH:
                    break
                if row.locked_by is None or row.locked_until is None:
                    continue  # a holder implies running: never
                if tx.lock_now(_row_lock(row.id)):
                    expired.append(
                        ExpiredTask(
                            row.id,
                            row.task_type,
                            row.attempts,
                            row.max_attempts,
                            row.locked_by,
                            row.locked_until,
                        )
                    )
            if not expired:
                return []
            events: dict[int, tuple[int, list[Event]]] = {}
            recorded = await self._record(tx, [decide(row) for row in expired], events)
            await self._append(tx, events, metadata)
        return recorded

    async def next_lock_expiry(self, task_types: Sequence[str]) -> float | None:
        await self.log.enter("task_read")
        types = set(task_types)
        earliest = min(
            (
                row.locked_until
                for row in self._rows.values()
                if row.status == "running" and row.task_type in types and row.locked_until
            ),
            default=None,
        )
        if earliest is None:
            return None
        return (earliest - self.log.clock()).total_seconds()

    async def next_due(self, task_types: Sequence[str]) -> float | None:
        await self.log.enter("task_read")
        now = self.log.clock()
        types = {
            task_type
            for task_type in task_types
            if task_type not in self._limits
            or self._running(task_type, now) < self._limits[task_type].max_running
        }
        earliest = min(
            (
                row.run_at
                for row in self._rows.values()
                if row.status == "queued" and row.task_type in types
            ),
            default=None,
        )
        if earliest is None:
            return None
        return (earliest - now).total_seconds()

    def listener(
        self, *, on_notify: Callable[[str], None], who: str, poll_interval: float
    ) -> TaskListener:
        return _Listener(self, on_notify, poll_interval)

    # -- operators ----------------------------------------------------------------------------
    async def counts(self) -> dict[str, TypeCounts]:
        await self.log.enter("task_read")
        now = self.log.clock()
        by_type: dict[str, list[_Task]] = {}
        for row in self._rows.values():
            if row.status in ("queued", "running", "dead"):
                by_type.setdefault(row.task_type, []).append(row)
        counts: dict[str, TypeCounts] = {}
        for task_type in sorted(by_type):
            rows = by_type[task_type]
            due = [r.run_at for r in rows if r.status == "queued" and r.run_at <= now]
            counts[task_type] = TypeCounts(
                task_type=task_type,
                queued=sum(r.status == "queued" for r in rows),
                due=len(due),
                running=sum(r.status == "running" for r in rows),
                expired=sum(
                    r.status == "running" and r.locked_until is not None and r.locked_until < now
                    for r in rows
                ),
                dead=sum(r.status == "dead" for r in rows),
                oldest_due_age=now - min(due) if due else None,
            )
        return counts

    async def dead_letters(self, limit: int) -> list[DeadTask]:
        await self.log.enter("task_read")
        dead = [row for row in self._rows.values() if row.status == "dead"]
        dead.sort(key=lambda row: (row.finished_at or row.updated_at, row.id), reverse=True)
        return [
            DeadTask(
                id=row.id,
                task_type=row.task_type,
                attempts=row.attempts,
                last_error=row.last_error,
                finished_at=row.finished_at or row.updated_at,
            )
            for row in dead[:limit]
        ]

    async def get(self, task_id: int) -> TaskInfo | None:
        await self.log.enter("task_read")
        row = self._rows.get(task_id)
        if row is None:
            return None
        return TaskInfo(
            id=row.id,
            task_type=row.task_type,
            payload=msgspec.json.decode(row.payload),
            priority=row.priority,
            run_at=row.run_at,
            status=row.status,
            attempts=row.attempts,
            max_attempts=row.max_attempts,
            last_error=row.last_error,
            locked_by=row.locked_by,
            locked_until=row.locked_until,
            dedupe_key=row.dedupe_key,
            created_at=row.created_at,
            updated_at=row.updated_at,
            finished_at=row.finished_at,
        )

    async def requeue_dead(
        self, task_id: int, *, requested_by: str, metadata: EventMetadata
    ) -> bool:
        async with self.log.transaction() as tx:
            await tx.lock(_row_lock(task_id))
            row = self._row(tx, task_id)
            if row is None or row.status != "dead":
                return False
            key = row.dedupe_key
            if key is not None:
                if await self._wait_for_key(tx, key) is not None:
                    raise DuplicateTask(task_id, key)  # its unique index refuses the UPDATE
                tx.lock_now(_key_lock(key))
            now = tx.started_at
            writes = self._writes(tx)
            writes.rows[task_id] = dataclasses.replace(
                row,
                status="queued",
                attempts=0,
                run_at=now,
                finished_at=None,
                updated_at=now,
                stream_version=row.stream_version + 1,
            )
            requeued = TaskRequeued(
                task_id=task_id,
                previous_attempts=row.attempts,
                run_at=now,
                requested_by=requested_by,
            )
            await tx.append_many([_append(task_id, [requeued], row.stream_version, metadata)])
            writes.due_in(0.0)
        return True

    async def prune_finished(self, older_than: timedelta, batch_size: int) -> int:
        await self.log.enter("task_read")
        cutoff = self.log.clock() - older_than
        total, after = 0, 0
        while True:
            async with self.log.transaction() as tx:
                doomed: list[int] = []
                for row in self._all(tx):
                    if len(doomed) >= batch_size:
                        break
                    if (
                        row.id > after
                        and row.status == "succeeded"
                        and row.finished_at is not None
                        and row.finished_at < cutoff
                        and tx.lock_now(_row_lock(row.id))
                    ):
                        doomed.append(row.id)
                writes = self._writes(tx)
                for task_id in doomed:
                    writes.rows[task_id] = None
            total += len(doomed)
            if len(doomed) < batch_size:
                return total
            after = doomed[-1]


def _append(task_id: int, events: list[Event], version: int, metadata: EventMetadata) -> Append:
    """The append of a task's events, after version ``version`` of its stream."""
    return Append(
        task_stream(task_id),
        events,
        expected_version=NO_STREAM if version == 0 else version,
        metadata=metadata,
    )
