"""The task queue: background work shared by every node, in PostgreSQL (or beside the in-memory
log), recorded in the log.

    types = TaskTypes()
    types.register("payment_verification", VerifyPayment, retry=RetryPolicy(max_attempts=5))

    queue = TaskQueue(store, types)
    await queue.add_task("payment_verification", {"payment_id": 42})
    await queue.add_task("reward_distribution", {...}, delay_seconds=300)

    processor = TaskProcessor(queue, node="vm:1234", concurrency=10)
    processor.register_handler("payment_verification", handle_payment_verification)
    await tg.start(processor.run)   # returns once it is listening; processor.stop() to finish

**State and record.** ``i3lani.tasks`` (migration 0003) is the queue's working state: what is
due, who holds what, until when. Every change of a row is also an event in the task's stream,
``task-<id>`` (:mod:`events.tasks`), appended by the same SQL statement, so the two can never
disagree: ``TaskEnqueued``, ``TaskClaimed``, ``TaskSucceeded``, ``TaskFailed``,
``TaskDeadLettered``, ``TaskRequeued``. Rows of succeeded tasks are pruned in batches
(:meth:`TaskQueue.prune_finished`); their events stay. The SQL, with the reasoning next to it,
is in ``sql/queries.sql`` (the ``task_*`` queries).

**Ordering.** Due tasks (``run_at <= now()``) are claimed by priority (higher first), then by
the time they became due, then by id. A delayed task or a retry simply has a later ``run_at``.
Ordering is per claim: tasks run concurrently, so a later one may finish first.

**Claiming without waiting: FOR UPDATE SKIP LOCKED.** A claim takes the first due rows in that
order, skipping rows another claimer is locking at that instant, and marks them running in the
same statement. Two processors (on one node or many) therefore never take the same task and
never block each other, and a claim of ``batch_size`` tasks is one round trip. (A plain
``FOR UPDATE`` would queue every claimer behind the first one's rows; an advisory lock per task
would cost a round trip per task.) The row locks last only for the claim's own transaction;
from then on the row says ``running``, with its holder (``locked_by``) and a lock time
(``locked_until``). The rows to claim are picked by ``i3lani.due_tasks``, a function only so
that its plan (walk the claim index in order, stop after ``batch_size`` rows) holds whatever
the table's statistics say: a queue's are always out of date. The whole record-and-claim
statement is a function (``i3lani.task_cycle``) for the same reason: as a prepared statement
its generic plan, made while the queue was empty, would read the whole table to update rows
by id for as long as the connection lives.

**Dead nodes.** A processor extends ``locked_until`` of every task it holds (a heartbeat, every
third of the lock time, one statement for all). A node that dies, hangs, or loses PostgreSQL
stops doing so; once ``locked_until`` has passed, any processor handling that task type takes
the task for abandoned. That counts as a failed attempt, recorded as ``TaskFailed`` with a
:class:`TaskLockExpired` error, and the task is retried or dead-lettered like any failure. A
late outcome from the old holder is refused (outcomes are matched on holder and attempt), so
the record stays consistent; the work itself may have run twice, as with any at-least-once
queue, and handlers make their effects idempotent (derived event ids, unique constraints).
All times are PostgreSQL's ``now()``: nodes' clocks never have to agree.

**Waking up.** Enqueueing NOTIFYs ``i3lani_tasks`` once the task is committed, with the delay
until its ``run_at``: an idle processor claims at once, or sleeps until a delayed task is due.
The NOTIFY goes out just after the commit, from a connection of its own (a NOTIFY inside the
enqueueing transaction would serialise every enqueuer's commit on PostgreSQL's notify lock),
except for a task added in the caller's transaction, which only that commit may announce.
Processors also poll (``poll_interval``), and look up when the next task is due whenever they
run out of work, so a lost notification, a retry scheduled elsewhere or a processor started
late only delay them.

**Throughput.** A processor talks to PostgreSQL in one statement at a time, each recording the
outcomes that came in since the last and claiming up to ``batch_size`` tasks for the free
slots (``task_cycle``): while one is on the wire, the next batch of outcomes accumulates, so a
busy processor spends one statement (one transaction, one WAL flush) per batch, and the
batches grow with the load. ``add_tasks`` adds many tasks in one statement. The events are
inserted by the same statements (with time-ordered ids, ``i3lani.uuid_v7``, which keep the
log's id index appending at its end).

**Concurrency across nodes.** A task type may have a limit (``i3lani.task_concurrency``,
migration 0008; set by the processors that claim it, :class:`TaskProcessor` ``limits``): at
most that many of its tasks running at once, on every node together. The claim itself keeps
to it: claims of a limited type take turns under a transaction-level advisory lock of that
type, and count its running tasks (live locks only) after taking it, so two nodes claiming at
the same instant cannot both take the last slot; types without a limit are claimed as before,
with no lock. A type at its limit is left out of the processor's "when is the next task due"
and waits for its next poll, or for one of its own tasks of the type to end.

**Failures.** A handler exception is never fatal to the processor. The task type's pure
:class:`RetryPolicy` decides: retry after an exponential backoff with jitter, or dead-letter
(attempts exhausted, or an error it does not retry). Each failure is recorded with its error
(one line, truncated). Operators see counts and dead letters, and re-queue a dead task with
:meth:`TaskQueue.retry_dead`.

**In memory.** Given a :class:`store.memory.MemoryLog` instead of an EventStore, the same
queue and processors run on :class:`~store.tasks.memory.MemoryTaskTable`, with the same
guarantees (row locks, one snapshot per cycle, fencing, the caller's transaction, wake-ups at
commit) and the log's clock for every time, for tests and deterministic simulation; what it
does not model is in its docstring. ``tests/store/test_tasks.py`` runs on both.

**Layout.** :mod:`~store.tasks.errors` (the error tree), :mod:`~store.tasks.policy` (the pure
retry decision), :mod:`~store.tasks.types` (the registry of task types and their payloads),
:mod:`~store.tasks.queue` (adding tasks, and the read side for operators),
:mod:`~store.tasks.processor` (claiming and running them), :mod:`~store.tasks.table` (the
storage port both use) with :mod:`~store.tasks.postgres` (the SQL, group commit and NOTIFY)
and :mod:`~store.tasks.memory` (beside a MemoryLog). Import from ``store.tasks``.
"""

from __future__ import annotations

from store.tasks.errors import (
    DuplicateTask,
    InvalidTaskPayload,
    TaskError,
    TaskInterrupted,
    TaskLockExpired,
    TaskNotDead,
    TaskNotFound,
    TaskTimedOut,
    UnknownTaskType,
    error_line,
)
from store.tasks.policy import DeadLetter, Retry, RetryPolicy
from store.tasks.processor import (
    Handler,
    ProcessorState,
    ProcessorStatistics,
    TaskContext,
    TaskProcessor,
)
from store.tasks.queue import TASKS_CHANNEL, DeadTask, NewTask, TaskInfo, TaskQueue, TypeCounts
from store.tasks.table import ConcurrencyUse
from store.tasks.types import TaskType, TaskTypes

__all__ = [
    # the queue
    "TaskQueue",
    "NewTask",
    "TaskTypes",
    "TaskType",
    "TASKS_CHANNEL",
    # decisions
    "RetryPolicy",
    "Retry",
    "DeadLetter",
    "error_line",
    # processing
    "TaskProcessor",
    "TaskContext",
    "Handler",
    "ProcessorState",
    "ProcessorStatistics",
    # read side
    "TaskInfo",
    "TypeCounts",
    "DeadTask",
    "ConcurrencyUse",
    # errors
    "TaskError",
    "UnknownTaskType",
    "InvalidTaskPayload",
    "TaskNotFound",
    "TaskNotDead",
    "DuplicateTask",
    "TaskLockExpired",
    "TaskTimedOut",
    "TaskInterrupted",
]
