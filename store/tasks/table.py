"""The task queue's storage port: :class:`TaskTable`, the named operations on the queue's
working state that :class:`~store.tasks.queue.TaskQueue` and
:class:`~store.tasks.processor.TaskProcessor` make, and the rows they exchange.

Two implementations hold the same guarantees (the contract tests in ``tests/store/`` run the
queue on both):

* :class:`store.tasks.postgres.PostgresTaskTable`: the table ``i3lani.tasks`` and the
  ``task_*`` queries of ``sql/queries.sql``, with group commit of enqueues and the NOTIFY that
  wakes processors;
* :class:`store.tasks.memory.MemoryTaskTable`: the same rows in memory beside a
  :class:`store.memory.MemoryLog`, its writes committed or rolled back with the log's
  transactions.

What stays above the port, the same for both: validating tasks, the dedupe retry loop, the
retry decisions (pure, :mod:`store.tasks.policy`), and everything a processor keeps in hand.
Every operation that changes a task also appends that change's event to ``task-<id>`` in the
same transaction; the events' shapes are :mod:`events.tasks`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import msgspec

from events import EventMetadata
from store.eventstore import Fence, Transaction
from store.memory import MemoryTransaction

__all__ = [
    "TaskTable",
    "TaskListener",
    "TaskTransaction",
    "EnqueueRows",
    "Outcome",
    "ClaimedTask",
    "Cycle",
    "ExpiredTask",
    "TaskInfo",
    "TypeCounts",
    "DeadTask",
    "ConcurrencyUse",
    "LIVE",
    "MAX_BATCH",
]

TaskTransaction = Transaction | MemoryTransaction
"""A caller's log transaction an enqueue joins (each table takes its own log's kind)."""

MAX_BATCH = 1000
"""Tasks per enqueue, claim or outcome statement, at most."""

LIVE = ("queued", "running")
"""The statuses in which a task holds its dedupe key."""


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


class ConcurrencyUse(msgspec.Struct, frozen=True, kw_only=True):
    """A task type's concurrency limit: at most ``max_running`` of its tasks running at once on
    every node together (set by ``set_by``, a node, at ``updated_at``), and how many run now
    (live ones: a task whose node stopped heartbeating does not count)."""

    task_type: str
    max_running: int
    running: int
    set_by: str | None
    updated_at: datetime


# -- what goes in and out ------------------------------------------------------------------------


@dataclass(slots=True)
class EnqueueRows:
    """Validated tasks to insert, one element per task (the enqueue statement's arrays)."""

    types: list[str] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    priorities: list[int] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    max_attempts: list[int] = field(default_factory=list)
    dedupe_keys: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.types)

    def extend(self, other: EnqueueRows) -> None:
        self.types += other.types
        self.payloads += other.payloads
        self.priorities += other.priorities
        self.delays += other.delays
        self.max_attempts += other.max_attempts
        self.dedupe_keys += other.dedupe_keys

    def select(self, indexes: Sequence[int]) -> EnqueueRows:
        return EnqueueRows(
            [self.types[i] for i in indexes],
            [self.payloads[i] for i in indexes],
            [self.priorities[i] for i in indexes],
            [self.delays[i] for i in indexes],
            [self.max_attempts[i] for i in indexes],
            [self.dedupe_keys[i] for i in indexes],
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """How attempt ``attempt`` of task ``task_id``, run by ``node``, ended: ``error`` None for
    success; with an error, ``retry_delay`` seconds until the retry, None to dead-letter it."""

    task_id: int
    attempt: int
    node: str
    error: str | None
    retry_delay: float | None
    duration_ms: float


@dataclass(frozen=True, slots=True)
class ClaimedTask:
    """A task a cycle claimed: its attempt is ``attempt`` (from 1)."""

    task_id: int
    task_type: str
    payload: bytes
    attempt: int
    max_attempts: int


@dataclass(frozen=True, slots=True)
class Cycle:
    """What one cycle did: the new status of each outcome it recorded (``succeeded``,
    ``queued`` for a retry, ``dead``; refused late outcomes are absent), and the tasks it
    claimed, in claim order."""

    recorded: list[str]
    claimed: list[ClaimedTask]


@dataclass(frozen=True, slots=True)
class ExpiredTask:
    """A running task whose holder stopped heartbeating (its lock ran out)."""

    id: int
    task_type: str
    attempts: int
    max_attempts: int
    locked_by: str
    locked_until: datetime


class TaskListener(Protocol):
    """Wakes a processor when tasks are added (``on_notify`` with the seconds until they
    are due), kept when it can be had; the processor polls in any case."""

    @property
    def poll_interval(self) -> float:
        """Seconds until the processor's next look when nothing wakes it: the interval it
        asked for (on PostgreSQL give or take a quarter, see :class:`store._wakeup.Listener`),
        or longer where the table loses no wake-up (:meth:`store.memory.MemoryLog.stretched`)."""
        ...

    async def listen(self) -> bool:
        """Start listening unless listening already; whether it started now."""
        ...

    async def close(self) -> None: ...


class TaskTable(Protocol):
    """The task queue's working state, one row per task, each change also an event.

    Fenced operations (``fence`` not None) are refused with ``StaleGeneration``, writing
    nothing, unless that lease generation is current (checked on this node's clock first).
    Times (due times, locks, finishing times) are the table's own clock: PostgreSQL's
    ``now()``, or the memory log's ``clock``. ``StoreError`` when the table cannot be reached.
    """

    # -- adding -------------------------------------------------------------------------------
    async def enqueue(
        self, rows: EnqueueRows, *, metadata: EventMetadata, tx: TaskTransaction | None
    ) -> list[tuple[int, int]]:
        """Insert ``rows`` (with ``TaskEnqueued`` each), in the caller's ``tx`` or committed
        on their own; (ordinal from 1, task id) of each one inserted. A row whose dedupe key
        an unfinished task holds is skipped and absent. Committed tasks wake processors."""
        ...

    async def holding_keys(
        self, keys: Sequence[str], *, tx: TaskTransaction | None
    ) -> dict[str, int]:
        """The unfinished tasks that hold these dedupe keys (as ``tx`` sees them)."""
        ...

    async def check_fence(self, fence: Fence, tx: TaskTransaction) -> None:
        """Refuse (StaleGeneration) unless ``fence`` is current, and keep it current until
        ``tx`` ends: fenced enqueues start with it."""
        ...

    # -- concurrency limits ---------------------------------------------------------------------
    async def set_concurrency(self, limits: Mapping[str, int | None], *, node: str) -> None:
        """Set each task type's concurrency limit (None: no limit), as ``node`` configured it;
        the last one set holds for every node. Claims keep to them from then on."""
        ...

    async def concurrency(self) -> dict[str, ConcurrencyUse]:
        """Every task type with a concurrency limit, and its use now."""
        ...

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
        """Record ``outcomes`` (refusing any whose task is no longer running that attempt
        under that holder), then claim up to ``want`` due tasks of ``task_types`` for
        ``node``, locked for ``lock_seconds``: one transaction. Under ``fence``, tasks claimed
        under an older generation of its lease are taken over first, at no new attempt. A
        type with a concurrency limit is claimed only while fewer of its tasks run (live)
        than the limit, on every node together: such claims take turns, type by type."""
        ...

    async def heartbeat(
        self, task_ids: Sequence[int], *, node: str, lock_seconds: float, fence: Fence | None
    ) -> set[int]:
        """Extend ``node``'s locks on these tasks; the ids still held by ``node``."""
        ...

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
        """Record the attempts of tasks of ``task_types`` whose lock expired as failed
        (``decide`` says how, under the holder they had), never waiting for a task another
        transaction holds: one transaction; the new statuses."""
        ...

    async def next_due(self, task_types: Sequence[str]) -> float | None:
        """Seconds until the earliest queued task of these types is due (negative when one
        is due), leaving out types at their concurrency limit; None when none is queued."""
        ...

    async def next_lock_expiry(self, task_types: Sequence[str]) -> float | None:
        """Seconds until the earliest lock of a running task of these types expires (negative
        when one has), by the table's clock; None when none runs."""
        ...

    def listener(
        self, *, on_notify: Callable[[str], None], who: str, poll_interval: float
    ) -> TaskListener:
        """A wake-up for a processor (``who``) that polls every ``poll_interval``."""
        ...

    # -- operators ----------------------------------------------------------------------------
    async def counts(self) -> dict[str, TypeCounts]: ...

    async def dead_letters(self, limit: int) -> list[DeadTask]: ...

    async def get(self, task_id: int) -> TaskInfo | None: ...

    async def requeue_dead(
        self, task_id: int, *, requested_by: str, metadata: EventMetadata
    ) -> bool:
        """Give dead task ``task_id`` a fresh set of attempts, due now (``TaskRequeued``);
        False when there is no such dead task. DuplicateTask when an unfinished task holds
        its dedupe key."""
        ...

    async def prune_finished(self, older_than: timedelta, batch_size: int) -> int:
        """Delete rows of tasks that succeeded more than ``older_than`` ago, ``batch_size``
        per short transaction; how many went. Their events stay."""
        ...
