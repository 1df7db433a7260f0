"""The task table in PostgreSQL: :class:`PostgresTaskTable`, the ``task_*`` queries of
``sql/queries.sql`` on ``i3lani.tasks``, with group commit of enqueues and the NOTIFY that
wakes processors (see the package's docstring for the reasoning, and the SQL for the locking).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
import asyncpg
import msgspec

from events import EventMetadata
from events.errors import StoreError
from events.streams import TASK, task_stream
from store._batching import GroupCommit, ThrottledNotify
from store.driver import DRIVER_ERRORS, driver_errors, translate
from store.eventstore import EventStore, Fence, Transaction
from store.queries import query
from store.tasks.errors import DuplicateTask
from store.tasks.table import (
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

__all__ = ["PostgresTaskTable", "TASKS_CHANNEL"]

TASKS_CHANNEL = "i3lani_tasks"
"""LISTEN channel woken when tasks are added; its payload is the seconds until they are due."""


@dataclass(slots=True)
class _Enqueue:
    """An enqueue waiting for the next combined statement."""

    rows: EnqueueRows
    metadata: bytes
    done: anyio.Event = field(default_factory=anyio.Event)
    inserted: list[tuple[int, int]] = field(default_factory=list)
    error: BaseException | None = None


def _take_batch(queue: deque[_Enqueue]) -> list[_Enqueue]:
    """Queued enqueues for one combined statement, in order: at most MAX_BATCH tasks (one
    enqueue larger than that goes alone), all with the same event metadata (a queue's own)."""
    batch: list[_Enqueue] = []
    size = 0
    while queue and (
        not batch
        or (size + len(queue[0].rows) <= MAX_BATCH and queue[0].metadata == batch[0].metadata)
    ):
        request = queue.popleft()
        batch.append(request)
        size += len(request.rows)
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


def _fence_args(fence: Fence | None) -> tuple[str | None, int | None]:
    return (fence.lease, fence.generation) if fence is not None else (None, None)


def _outcome_arrays(outcomes: Sequence[Outcome]) -> tuple[list[Any], ...]:
    """Outcomes as the arrays ``task_cycle`` takes: ids, attempts, nodes, errors, retry delays,
    durations."""
    return (
        [o.task_id for o in outcomes],
        [o.attempt for o in outcomes],
        [o.node for o in outcomes],
        [o.error for o in outcomes],
        [o.retry_delay for o in outcomes],
        [o.duration_ms for o in outcomes],
    )


def _own(tx: TaskTransaction) -> Transaction:
    if not isinstance(tx, Transaction):
        raise TypeError(f"a task queue on PostgreSQL joins an EventStore transaction, not {tx!r}")
    return tx


class PostgresTaskTable:
    """:class:`~store.tasks.table.TaskTable` on ``i3lani.tasks``: one per queue (its group
    commit and its NOTIFYs are the queue's)."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._encode = msgspec.json.Encoder().encode
        # Group commit of enqueues made outside a caller's transaction (see enqueue).
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
    async def enqueue(
        self, rows: EnqueueRows, *, metadata: EventMetadata, tx: TaskTransaction | None
    ) -> list[tuple[int, int]]:
        encoded = self._encode(metadata)
        if tx is not None:
            # Inside the caller's transaction only its commit may announce the tasks.
            own = _own(tx)
            inserted = await self._insert(own.connection, rows, notify=True, metadata=encoded)
            own.streams.update(task_stream(task_id) for _, task_id in inserted)
            return inserted
        if self._commit.in_flight > 0 and self._commit.start(self.store._tg):
            # Group commit: a statement of ours is on the wire; wait for the next one, which
            # carries every enqueue that queued up meanwhile (one transaction, one WAL flush).
            request = _Enqueue(rows, encoded)
            await self._commit.submit(request)
            if request.error is not None:
                raise request.error
            return request.inserted
        with self._commit.direct():
            inserted = await self._insert(self.store._pool, rows, notify=False, metadata=encoded)
        self._committed(inserted, rows)
        return inserted

    async def holding_keys(
        self, keys: Sequence[str], *, tx: TaskTransaction | None
    ) -> dict[str, int]:
        async with translated():
            conn: Any = _own(tx).connection if tx is not None else self.store._pool
            return {
                r["dedupe_key"]: r["id"] for r in await conn.fetch(query("task_holding_keys"), keys)
            }

    async def check_fence(self, fence: Fence, tx: TaskTransaction) -> None:
        own = _own(tx)
        own.fenced(fence)
        async with translated(fence):
            await own.connection.fetchval(query("check_fence"), fence.lease, fence.generation)

    async def _insert(
        self, conn: Any, rows: EnqueueRows, *, notify: bool, metadata: bytes
    ) -> list[tuple[int, int]]:
        async with translated():
            if len(rows) == 1:
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

    def _committed(self, inserted: Sequence[tuple[int, int]], rows: EnqueueRows) -> None:
        if inserted:
            self.store._touch(f"{TASK}-")  # the store's post-commit wake-up of event subscribers
            self._announce(min(rows.delays))

    async def _flush(self, batch: list[_Enqueue]) -> None:
        combined = EnqueueRows()
        for request in batch:
            combined.extend(request.rows)
        try:
            with self._commit.direct():
                inserted = await self._insert(
                    self.store._pool, combined, notify=False, metadata=batch[0].metadata
                )
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
            start += len(request.rows)
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

    # -- concurrency limits ---------------------------------------------------------------------
    async def set_concurrency(self, limits: Mapping[str, int | None], *, node: str) -> None:
        limited = {t: n for t, n in limits.items() if n is not None}
        cleared = [t for t, n in limits.items() if n is None]
        async with translated():
            if limited:
                await self.store._pool.execute(
                    query("task_concurrency_set"), list(limited), list(limited.values()), node
                )
            if cleared:
                await self.store._pool.execute(query("task_concurrency_clear"), cleared)

    async def concurrency(self) -> dict[str, ConcurrencyUse]:
        async with translated():
            records = await self.store._pool.fetch(query("task_concurrency"))
        return {
            r["task_type"]: ConcurrencyUse(
                task_type=r["task_type"],
                max_running=r["max_running"],
                running=r["running"],
                set_by=r["set_by"],
                updated_at=r["updated_at"],
            )
            for r in records
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
        async with translated(fence):
            records = await self.store._pool.fetch(
                query("task_cycle"),
                *_outcome_arrays(outcomes),
                self._encode(metadata),
                want,
                list(task_types),
                node,
                lock_seconds,
                *_fence_args(fence),
            )
        if records:
            self.store._touch(f"{TASK}-")  # wake event subscribers of the task category
        # Rows: the recorded outcomes (claimed = false, their new status in task_type), then
        # the claimed tasks in claim order.
        return Cycle(
            recorded=[r[2] for r in records if not r[0]],
            claimed=[ClaimedTask(r[1], r[2], r[3], r[4], r[5]) for r in records if r[0]],
        )

    async def heartbeat(
        self, task_ids: Sequence[int], *, node: str, lock_seconds: float, fence: Fence | None
    ) -> set[int]:
        async with translated(fence):
            records = await self.store._pool.fetch(
                query("task_heartbeat"), list(task_ids), node, lock_seconds, *_fence_args(fence)
            )
        return {record["id"] for record in records}

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
        async with self.store.transaction() as tx, translated(fence):
            tx.fenced(fence)
            expired = await tx.connection.fetch(
                query("task_expired"), MAX_BATCH, list(task_types), *_fence_args(fence)
            )
            if not expired:
                return []
            outcomes = [
                decide(
                    ExpiredTask(
                        row["id"],
                        row["task_type"],
                        row["attempts"],
                        row["max_attempts"],
                        row["locked_by"],
                        row["locked_until"],
                    )
                )
                for row in expired
            ]
            records = await tx.connection.fetch(
                query("task_cycle"),
                *_outcome_arrays(outcomes),
                self._encode(metadata),
                0,
                [],
                node,
                lock_seconds,
                *_fence_args(fence),
            )
            tx.streams.add(f"{TASK}-")
        return [record[2] for record in records]

    async def next_due(self, task_types: Sequence[str]) -> float | None:
        async with translated():
            due: float | None = await self.store._pool.fetchval(
                query("task_next_due"), list(task_types)
            )
        return due

    async def next_lock_expiry(self, task_types: Sequence[str]) -> float | None:
        async with translated():
            expiry: float | None = await self.store._pool.fetchval(
                query("task_next_lock_expiry"), list(task_types)
            )
        return expiry

    def listener(
        self, *, on_notify: Callable[[str], None], who: str, poll_interval: float
    ) -> TaskListener:
        return self.store.listener(
            TASKS_CHANNEL, on_notify=on_notify, who=who, poll_interval=poll_interval
        )

    # -- operators ----------------------------------------------------------------------------
    async def counts(self) -> dict[str, TypeCounts]:
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

    async def dead_letters(self, limit: int) -> list[DeadTask]:
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

    async def requeue_dead(
        self, task_id: int, *, requested_by: str, metadata: EventMetadata
    ) -> bool:
        try:
            async with translated():
                record = await self.store._pool.fetchrow(
                    query("task_requeue_dead"), task_id, requested_by, self._encode(metadata)
                )
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, asyncpg.UniqueViolationError):
                info = await self.get(task_id)
                raise DuplicateTask(task_id, info.dedupe_key if info else None) from cause
            raise
        if record is None:
            return False
        self.store._touch(task_stream(task_id))
        return True

    async def prune_finished(self, older_than: timedelta, batch_size: int) -> int:
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
