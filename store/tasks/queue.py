"""Adding tasks and watching the queue: :class:`TaskQueue`, with group commit of enqueues and
the NOTIFY that wakes processors (see the package's docstring).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

import anyio
import asyncpg
import msgspec

from events import EventMetadata
from events.errors import StoreError, one_line
from events.registry import unstorable_text
from events.streams import TASK, task_stream
from store._batching import GroupCommit, ThrottledNotify
from store.driver import DRIVER_ERRORS, driver_errors, translate
from store.eventstore import EventStore, Fence, Transaction
from store.queries import query
from store.tasks.errors import DuplicateTask, TaskNotDead, TaskNotFound
from store.tasks.types import TaskType, TaskTypes

__all__ = ["TaskQueue", "NewTask", "TASKS_CHANNEL", "TaskInfo", "TypeCounts", "DeadTask"]

TASKS_CHANNEL = "i3lani_tasks"
"""LISTEN channel woken when tasks are added; its payload is the seconds until they are due."""

MAX_BATCH = 1000  # tasks per enqueue, claim or outcome statement, at most
_MAX_PRIORITY = 2**31 - 1
_MAX_DELAY = 10 * 365 * 24 * 3600.0  # seconds: ten years
_DEDUPE_RETRIES = 5

P = TypeVar("P", bound=msgspec.Struct)


# -- read side ---------------------------------------------------------------------------------


class TypeCounts(msgspec.Struct, frozen=True, kw_only=True):
    """One task type's unfinished work: ``queued`` (due or not), ``due``, ``running``,
    ``expired`` (running, but its node stopped heartbeating), ``dead``, and how long the
    oldest due task has waited (None when none is due)."""

    task_type: str
    queued: int
    due: int
    running: int
    expired: int
    dead: int
    oldest_due_age: timedelta | None


class DeadTask(msgspec.Struct, frozen=True, kw_only=True):
    """A dead-lettered task, for operators."""

    id: int
    task_type: str
    attempts: int
    last_error: str | None
    finished_at: datetime


class TaskInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A task's row as it stands (``payload`` as plain JSON)."""

    id: int
    task_type: str
    payload: dict[str, Any]
    priority: int
    run_at: datetime
    status: str
    attempts: int
    max_attempts: int
    last_error: str | None
    locked_by: str | None
    locked_until: datetime | None
    dedupe_key: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


# -- the queue ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task for :meth:`TaskQueue.add_tasks`; the fields mean what add_task's arguments do."""

    task_type: str | TaskType[Any]
    payload: msgspec.Struct | Mapping[str, Any]
    delay_seconds: float = 0.0
    priority: int = 0
    dedupe_key: str | None = None


@dataclass(slots=True)
class _Rows:
    """Validated tasks, as the enqueue statement's arrays."""

    types: list[str] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    priorities: list[int] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    max_attempts: list[int] = field(default_factory=list)
    dedupe_keys: list[str | None] = field(default_factory=list)

    def extend(self, other: _Rows) -> None:
        self.types += other.types
        self.payloads += other.payloads
        self.priorities += other.priorities
        self.delays += other.delays
        self.max_attempts += other.max_attempts
        self.dedupe_keys += other.dedupe_keys

    def select(self, indexes: Sequence[int]) -> _Rows:
        return _Rows(
            [self.types[i] for i in indexes],
            [self.payloads[i] for i in indexes],
            [self.priorities[i] for i in indexes],
            [self.delays[i] for i in indexes],
            [self.max_attempts[i] for i in indexes],
            [self.dedupe_keys[i] for i in indexes],
        )


@dataclass(slots=True)
class _Enqueue:
    """An enqueue waiting for the next combined statement."""

    rows: _Rows
    done: anyio.Event = field(default_factory=anyio.Event)
    inserted: list[tuple[int, int]] = field(default_factory=list)
    error: BaseException | None = None


def _take_batch(queue: deque[_Enqueue]) -> list[_Enqueue]:
    """Queued enqueues for one combined statement, in order: at most MAX_BATCH tasks (one
    enqueue larger than that goes alone)."""
    batch: list[_Enqueue] = []
    size = 0
    while queue and (not batch or size + len(queue[0].rows.types) <= MAX_BATCH):
        request = queue.popleft()
        batch.append(request)
        size += len(request.rows.types)
    return batch


@asynccontextmanager
async def translated(fence: Fence | None = None) -> AsyncIterator[None]:
    """asyncpg errors to the project's, once, at the boundary; a fenced write is first checked
    against this node's own lease clock, before anything is sent."""
    if fence is not None:
        fence.check()
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise translate(exc, what="the task queue's SQL", fence=fence) from exc


def fence_args(fence: Fence | None) -> tuple[str | None, int | None]:
    return (fence.lease, fence.generation) if fence is not None else (None, None)


def metadata_for(node: str | None, fence: Fence | None) -> bytes:
    """The metadata of the task events a node writes (under ``fence``, when fenced)."""
    lease, generation = fence_args(fence)
    return msgspec.json.encode(EventMetadata(node=node, lease=lease, generation=generation))


class TaskQueue:
    """Adding tasks and watching the queue; :class:`TaskProcessor` runs them."""

    def __init__(self, store: EventStore, types: TaskTypes, *, node: str | None = None) -> None:
        self.store = store
        self.types = types
        self.node = node if node is not None else store.node
        self._metadata = metadata_for(self.node, None)
        # Group commit of enqueues made outside a caller's transaction (see _enqueue).
        self._commit: GroupCommit[_Enqueue] = GroupCommit(
            take=_take_batch,
            flush=self._flush,
            closed="the event store closed before this task was added",
        )
        # NOTIFY after commits, from a task of the store's (see _announce).
        self._announce_pending = False
        self._announce_delay = 0.0
        self._notify = ThrottledNotify(self._send_announcement, what="task processors")

    # -- adding -------------------------------------------------------------------------------
    @overload
    async def add_task(
        self,
        task_type: TaskType[P],
        payload: P | Mapping[str, Any],
        *,
        delay_seconds: float = 0,
        priority: int = 0,
        dedupe_key: str | None = None,
        tx: Transaction | None = None,
        fence: Fence | None = None,
    ) -> int: ...

    @overload
    async def add_task(
        self,
        task_type: str,
        payload: msgspec.Struct | Mapping[str, Any],
        *,
        delay_seconds: float = 0,
        priority: int = 0,
        dedupe_key: str | None = None,
        tx: Transaction | None = None,
        fence: Fence | None = None,
    ) -> int: ...

    async def add_task(
        self,
        task_type: str | TaskType[Any],
        payload: msgspec.Struct | Mapping[str, Any],
        *,
        delay_seconds: float = 0,
        priority: int = 0,
        dedupe_key: str | None = None,
        tx: Transaction | None = None,
        fence: Fence | None = None,
    ) -> int:
        """Add a task; return its id. It runs from ``delay_seconds`` on, before tasks of lower
        ``priority``. With ``dedupe_key``, adding the same logical work again while the first
        is queued or running adds nothing and returns the first one's id. With ``tx``, the task
        and its ``TaskEnqueued`` event commit (or roll back) with the caller's transaction.

        An unknown ``task_type`` raises UnknownTaskType, a payload that does not fit its type
        InvalidTaskPayload naming the field; nothing is written then.

        Outside a transaction, calls made while another is on the wire are written together by
        the next statement (group commit, as the store does for appends): a busy bot's
        concurrent handlers share transactions and WAL flushes instead of queueing for them."""
        [task_id] = await self.add_tasks(
            [NewTask(task_type, payload, delay_seconds, priority, dedupe_key)], tx=tx, fence=fence
        )
        return task_id

    async def add_tasks(
        self,
        tasks: Sequence[NewTask],
        *,
        tx: Transaction | None = None,
        fence: Fence | None = None,
    ) -> list[int]:
        """Add several tasks with one statement; their ids, in order. Every task is validated
        before anything is written.

        With ``fence`` (an actor adding tasks on its own behalf, from a tick), the tasks are
        added only while that lease generation is current: checked on this node's clock first,
        then in the database, in one transaction with the insert (the caller's ``tx``, or one
        of its own), with the lease row locked FOR SHARE as fenced appends do; otherwise
        StaleGeneration, and nothing is written."""
        if not tasks:
            return []
        if len(tasks) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} tasks per add_tasks call")
        rows = self._validate(tasks)
        if fence is not None:
            fence.check()
            if tx is None:
                async with self.store.transaction() as own:
                    return await self._add_fenced(rows, own, fence)
            return await self._add_fenced(rows, tx, fence)
        return await self._add(rows, tx, self._metadata)

    async def _add_fenced(self, rows: _Rows, tx: Transaction, fence: Fence) -> list[int]:
        tx.fenced(fence)
        async with translated(fence):
            await tx.connection.fetchval(query("check_fence"), fence.lease, fence.generation)
        return await self._add(rows, tx, metadata_for(self.node, fence))

    async def _add(self, rows: _Rows, tx: Transaction | None, metadata: bytes) -> list[int]:
        tasks = rows.types
        ids: list[int | None] = [None] * len(tasks)
        pending = list(range(len(tasks)))
        for _ in range(_DEDUPE_RETRIES):
            batch = rows.select(pending) if len(pending) != len(tasks) else rows
            for ordinal, task_id in await self._enqueue(batch, tx, metadata):
                ids[pending[ordinal - 1]] = task_id
            skipped = [i for i in pending if ids[i] is None]
            if not skipped:
                break
            # Their dedupe keys are held by unfinished tasks: those are the answer. A holder
            # that finished meanwhile leaves its key free: then try those again.
            keys = list({rows.dedupe_keys[i] for i in skipped})
            async with translated():
                conn: Any = tx.connection if tx is not None else self.store._pool
                holders = {
                    r["dedupe_key"]: r["id"]
                    for r in await conn.fetch(query("task_holding_keys"), keys)
                }
            for i in skipped:
                ids[i] = holders.get(rows.dedupe_keys[i])
            pending = [i for i in skipped if ids[i] is None]
            if not pending:
                break
        else:
            raise StoreError("gave up adding tasks: their dedupe keys kept changing hands")
        return [task_id for task_id in ids if task_id is not None]

    def _validate(self, tasks: Sequence[NewTask]) -> _Rows:
        rows = _Rows()
        for task in tasks:
            task_type = self.types.get(task.task_type)
            delay = task.delay_seconds
            if isinstance(delay, bool) or not isinstance(delay, int | float):
                raise TypeError(f"delay_seconds is a number of seconds, got {delay!r}")
            if not 0 <= delay <= _MAX_DELAY:
                raise ValueError(
                    f"delay_seconds is a number of seconds from 0 to {_MAX_DELAY:g}, got {delay!r}"
                )
            priority = task.priority
            if isinstance(priority, bool) or not isinstance(priority, int):
                raise TypeError(f"priority is an integer, got {priority!r}")
            if not -_MAX_PRIORITY <= priority <= _MAX_PRIORITY:
                raise ValueError(f"priority is at most {_MAX_PRIORITY} either way")
            key = task.dedupe_key
            if key is not None and not (isinstance(key, str) and 1 <= len(key) <= 200):
                raise ValueError(
                    f"a dedupe key is 1 to 200 characters, got {one_line(repr(key), 80)}"
                )
            unstorable = unstorable_text(key) if key is not None else None
            if unstorable is not None:
                raise ValueError(f"a dedupe key cannot be stored: {unstorable[1]}")
            rows.types.append(task_type.name)
            rows.payloads.append(task_type.encode(task.payload))
            rows.priorities.append(priority)
            rows.delays.append(float(delay))
            rows.max_attempts.append(task_type.retry.max_attempts)
            rows.dedupe_keys.append(key)
        return rows

    async def _enqueue(
        self, rows: _Rows, tx: Transaction | None, metadata: bytes
    ) -> list[tuple[int, int]]:
        """Insert ``rows``: (ordinal from 1, task id) of each one inserted, skipped ones (their
        dedupe key is held) absent."""
        if tx is not None:
            # Inside the caller's transaction only its commit may announce the tasks.
            inserted = await self._insert(tx.connection, rows, notify=True, metadata=metadata)
            tx.streams.update(task_stream(task_id) for _, task_id in inserted)
            return inserted
        if self._commit.in_flight > 0 and self._commit.start(self.store._tg):
            # Group commit: a statement of ours is on the wire; wait for the next one, which
            # carries every enqueue that queued up meanwhile (one transaction, one WAL flush).
            request = _Enqueue(rows)
            await self._commit.submit(request)
            if request.error is not None:
                raise request.error
            return request.inserted
        with self._commit.direct():
            inserted = await self._insert(self.store._pool, rows, notify=False)
        self._committed(inserted, rows)
        return inserted

    async def _insert(
        self, conn: Any, rows: _Rows, *, notify: bool, metadata: bytes | None = None
    ) -> list[tuple[int, int]]:
        metadata = self._metadata if metadata is None else metadata
        async with translated():
            if len(rows.types) == 1:
                records = await conn.fetch(
                    query("task_enqueue_one"),
                    rows.types[0],
                    rows.payloads[0],
                    rows.priorities[0],
                    rows.delays[0],
                    rows.max_attempts[0],
                    rows.dedupe_keys[0],
                    metadata,
                    notify,
                )
            else:
                records = await conn.fetch(
                    query("task_enqueue"),
                    rows.types,
                    rows.payloads,
                    rows.priorities,
                    rows.delays,
                    rows.max_attempts,
                    rows.dedupe_keys,
                    metadata,
                    notify,
                )
        return [(record[0], record[1]) for record in records]

    def _committed(self, inserted: Sequence[tuple[int, int]], rows: _Rows) -> None:
        if inserted:
            self.store._touch(f"{TASK}-")  # the store's post-commit wake-up of event subscribers
            self._announce(min(rows.delays))

    async def _flush(self, batch: list[_Enqueue]) -> None:
        combined = _Rows()
        for request in batch:
            combined.extend(request.rows)
        try:
            with self._commit.direct():
                inserted = await self._insert(self.store._pool, combined, notify=False)
        except BaseException as exc:
            for request in batch:
                request.error = (
                    exc
                    if isinstance(exc, Exception)
                    else StoreError(f"adding the task was aborted: {type(exc).__name__}")
                )
                request.done.set()
            if not isinstance(exc, Exception):
                raise
            return
        self._committed(inserted, combined)
        # Back to each request's own ordinals.
        offsets: list[int] = []
        start = 0
        for request in batch:
            offsets.append(start)
            start += len(request.rows.types)
        for ordinal, task_id in inserted:
            index = bisect.bisect_right(offsets, ordinal - 1) - 1
            batch[index].inserted.append((ordinal - offsets[index], task_id))
        for request in batch:
            request.done.set()

    def _announce(self, delay: float) -> None:
        """Have processors notified that tasks due in ``delay`` seconds were committed. The
        NOTIFY goes out from a task in the store's task group, outside any transaction and
        without the caller waiting for it, throttled as the store's own notifications are
        (:class:`store._batching.ThrottledNotify`), with the earliest delay asked for."""
        self._announce_delay = min(self._announce_delay, delay) if self._announce_pending else delay
        self._announce_pending = True
        self._notify.mark()
        self._notify.start(self.store._tg)

    async def _send_announcement(self) -> None:
        if not self._announce_pending:
            return
        delay, self._announce_pending = self._announce_delay, False
        with driver_errors(what="a notification"):
            await self.store._pool.execute(
                "SELECT pg_notify($1, $2)", TASKS_CHANNEL, f"{delay:.3f}"
            )

    # -- operators ----------------------------------------------------------------------------
    async def counts(self) -> dict[str, TypeCounts]:
        """Unfinished work per task type (types with none are absent)."""
        async with translated():
            records = await self.store._pool.fetch(query("task_counts"))
        return {
            r["task_type"]: TypeCounts(
                task_type=r["task_type"],
                queued=r["queued"],
                due=r["due"],
                running=r["running"],
                expired=r["expired"],
                dead=r["dead"],
                oldest_due_age=r["oldest_due_age"],
            )
            for r in records
        }

    async def dead_letters(self, limit: int = 100) -> list[DeadTask]:
        """Dead tasks, the most recently dead first."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        async with translated():
            records = await self.store._pool.fetch(query("task_dead_letters"), limit)
        return [
            DeadTask(
                id=r["id"],
                task_type=r["task_type"],
                attempts=r["attempts"],
                last_error=r["last_error"],
                finished_at=r["finished_at"],
            )
            for r in records
        ]

    async def get(self, task_id: int) -> TaskInfo | None:
        """The task's row, or None (never added, or pruned after it succeeded)."""
        async with translated():
            r = await self.store._pool.fetchrow(query("task_get"), task_id)
        if r is None:
            return None
        return TaskInfo(
            id=r["id"],
            task_type=r["task_type"],
            payload=msgspec.json.decode(r["payload"]),
            priority=r["priority"],
            run_at=r["run_at"],
            status=r["status"],
            attempts=r["attempts"],
            max_attempts=r["max_attempts"],
            last_error=r["last_error"],
            locked_by=r["locked_by"],
            locked_until=r["locked_until"],
            dedupe_key=r["dedupe_key"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            finished_at=r["finished_at"],
        )

    async def retry_dead(self, task_id: int, *, requested_by: str = "operator") -> None:
        """Give dead task ``task_id`` a fresh set of attempts, due now (``TaskRequeued``).
        TaskNotFound / TaskNotDead / DuplicateTask say why not."""
        if not requested_by:
            raise ValueError("requested_by names who asked")
        try:
            async with translated():
                record = await self.store._pool.fetchrow(
                    query("task_requeue_dead"), task_id, requested_by, self._metadata
                )
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, asyncpg.UniqueViolationError):
                info = await self.get(task_id)
                raise DuplicateTask(task_id, info.dedupe_key if info else None) from cause
            raise
        if record is None:
            info = await self.get(task_id)
            if info is None:
                raise TaskNotFound(task_id)
            raise TaskNotDead(task_id, info.status)
        self.store._touch(task_stream(task_id))

    async def prune_finished(self, older_than: timedelta, batch_size: int = 1000) -> int:
        """Delete the rows of tasks that succeeded more than ``older_than`` ago, ``batch_size``
        rows per short transaction; return how many went. Their events stay in the log; dead,
        queued and running tasks are never pruned."""
        if older_than < timedelta(0):
            raise ValueError("older_than must not be negative")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        total = 0
        async with translated():
            cutoff = await self.store._pool.fetchval(
                query("task_prune_cutoff"), older_than.total_seconds()
            )
            after = 0
            while True:
                record = await self.store._pool.fetchrow(
                    query("task_prune"), cutoff, after, batch_size
                )
                assert record is not None
                deleted: int = record["deleted"]
                total += deleted
                if deleted < batch_size:
                    return total
                after = record["last_id"]
