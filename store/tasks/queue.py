"""Adding tasks and watching the queue: :class:`TaskQueue` (see the package's docstring). The
storage is a :class:`~store.tasks.table.TaskTable` chosen by the log the queue is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, overload

import msgspec

from events import EventMetadata
from events.errors import StoreError, one_line
from events.registry import unstorable_text
from store.eventstore import EventStore, Fence
from store.memory import MemoryLog
from store.tasks.errors import TaskNotDead, TaskNotFound
from store.tasks.memory import MemoryTaskTable
from store.tasks.postgres import TASKS_CHANNEL, PostgresTaskTable
from store.tasks.table import (
    MAX_BATCH,
    ConcurrencyUse,
    DeadTask,
    EnqueueRows,
    TaskInfo,
    TaskTable,
    TaskTransaction,
    TypeCounts,
)
from store.tasks.types import TaskType, TaskTypes

__all__ = [
    "TaskQueue",
    "NewTask",
    "TASKS_CHANNEL",
    "TaskInfo",
    "TypeCounts",
    "DeadTask",
    "TaskLog",
    "table_for",
]

TaskLog = EventStore | MemoryLog
"""The logs a queue runs on: PostgreSQL's, or the in-memory one."""

_MAX_PRIORITY = 2**31 - 1
_MAX_DELAY = 10 * 365 * 24 * 3600.0  # seconds: ten years
_DEDUPE_RETRIES = 5

P = TypeVar("P", bound=msgspec.Struct)


def table_for(store: TaskLog) -> TaskTable:
    """The task table on ``store``: ``i3lani.tasks`` for an EventStore (one per queue, for its
    group commit), the log's one memory table for a MemoryLog."""
    if isinstance(store, MemoryLog):
        return MemoryTaskTable.of(store)
    if isinstance(store, EventStore):
        return PostgresTaskTable(store)
    raise TypeError(f"a task queue runs on an EventStore or a MemoryLog, not {store!r}")


def metadata_for(node: str | None, fence: Fence | None) -> EventMetadata:
    """The metadata of the task events a node writes (under ``fence``, when fenced)."""
    if fence is None:
        return EventMetadata(node=node)
    return EventMetadata(node=node, lease=fence.lease, generation=fence.generation)


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task for :meth:`TaskQueue.add_tasks`; the fields mean what add_task's arguments do."""

    task_type: str | TaskType[Any]
    payload: msgspec.Struct | Mapping[str, Any]
    delay_seconds: float = 0.0
    priority: int = 0
    dedupe_key: str | None = None


class TaskQueue:
    """Adding tasks and watching the queue; :class:`TaskProcessor` runs them."""

    def __init__(self, store: TaskLog, types: TaskTypes, *, node: str | None = None) -> None:
        self.store = store
        self.types = types
        self.node = node if node is not None else store.node
        self._metadata = metadata_for(self.node, None)
        self.table = table_for(store)

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
        tx: TaskTransaction | None = None,
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
        tx: TaskTransaction | None = None,
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
        tx: TaskTransaction | None = None,
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
        tx: TaskTransaction | None = None,
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

    async def _add_fenced(self, rows: EnqueueRows, tx: TaskTransaction, fence: Fence) -> list[int]:
        await self.table.check_fence(fence, tx)
        return await self._add(rows, tx, metadata_for(self.node, fence))

    async def _add(
        self, rows: EnqueueRows, tx: TaskTransaction | None, metadata: EventMetadata
    ) -> list[int]:
        tasks = rows.types
        ids: list[int | None] = [None] * len(tasks)
        pending = list(range(len(tasks)))
        for _ in range(_DEDUPE_RETRIES):
            batch = rows.select(pending) if len(pending) != len(tasks) else rows
            for ordinal, task_id in await self.table.enqueue(batch, metadata=metadata, tx=tx):
                ids[pending[ordinal - 1]] = task_id
            skipped = [i for i in pending if ids[i] is None]
            if not skipped:
                break
            # Their dedupe keys are held by unfinished tasks: those are the answer. A holder
            # that finished meanwhile leaves its key free: then try those again.
            keys = list({key for i in skipped if (key := rows.dedupe_keys[i]) is not None})
            holders = await self.table.holding_keys(keys, tx=tx)
            for i in skipped:
                key = rows.dedupe_keys[i]
                ids[i] = holders.get(key) if key is not None else None
            pending = [i for i in skipped if ids[i] is None]
            if not pending:
                break
        else:
            raise StoreError("gave up adding tasks: their dedupe keys kept changing hands")
        return [task_id for task_id in ids if task_id is not None]

    def _validate(self, tasks: Sequence[NewTask]) -> EnqueueRows:
        rows = EnqueueRows()
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

    # -- operators ----------------------------------------------------------------------------
    async def counts(self) -> dict[str, TypeCounts]:
        """Unfinished work per task type (types with none are absent)."""
        return await self.table.counts()

    async def concurrency(self) -> dict[str, ConcurrencyUse]:
        """Each task type with a concurrency limit across nodes: the limit and its use now."""
        return await self.table.concurrency()

    async def dead_letters(self, limit: int = 100) -> list[DeadTask]:
        """Dead tasks, the most recently dead first."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        return await self.table.dead_letters(limit)

    async def get(self, task_id: int) -> TaskInfo | None:
        """The task's row, or None (never added, or pruned after it succeeded)."""
        return await self.table.get(task_id)

    async def retry_dead(self, task_id: int, *, requested_by: str = "operator") -> None:
        """Give dead task ``task_id`` a fresh set of attempts, due now (``TaskRequeued``).
        TaskNotFound / TaskNotDead / DuplicateTask say why not."""
        if not requested_by:
            raise ValueError("requested_by names who asked")
        if await self.table.requeue_dead(
            task_id, requested_by=requested_by, metadata=self._metadata
        ):
            return
        info = await self.get(task_id)
        if info is None:
            raise TaskNotFound(task_id)
        raise TaskNotDead(task_id, info.status)

    async def prune_finished(self, older_than: timedelta, batch_size: int = 1000) -> int:
        """Delete the rows of tasks that succeeded more than ``older_than`` ago, ``batch_size``
        rows per short transaction; return how many went. Their events stay in the log; dead,
        queued and running tasks are never pruned."""
        if older_than < timedelta(0):
            raise ValueError("older_than must not be negative")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        return await self.table.prune_finished(older_than, batch_size)
