"""The task queue: background work shared by every node, in PostgreSQL, recorded in the log.

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

**Failures.** A handler exception is never fatal to the processor. The task type's pure
:class:`RetryPolicy` decides: retry after an exponential backoff with jitter, or dead-letter
(attempts exhausted, or an error it does not retry). Each failure is recorded with its error
(one line, truncated). Operators see counts and dead letters, and re-queue a dead task with
:meth:`TaskQueue.retry_dead`.
"""

from __future__ import annotations

import bisect
import enum
import logging
import math
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar, overload

import anyio
import asyncpg
import msgspec
from anyio.abc import TaskStatus

from events import EventMetadata
from events.errors import I3laniError, StaleGeneration, StoreError, one_line
from events.registry import unstorable_text
from store._batching import GroupCommit, ThrottledNotify
from store._wakeup import Listener, Wakeup
from store.driver import DRIVER_ERRORS, driver_errors, translate
from store.eventstore import EventStore, Fence, Transaction
from store.queries import query

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

logger = logging.getLogger(__name__)

TASKS_CHANNEL = "i3lani_tasks"
"""LISTEN channel woken when tasks are added; its payload is the seconds until they are due."""

MAX_ERROR_LENGTH = 500  # characters of a recorded error line
_MAX_BATCH = 1000  # tasks per enqueue, claim or outcome statement, at most
_MAX_PRIORITY = 2**31 - 1
_MAX_DELAY = 10 * 365 * 24 * 3600.0  # seconds: ten years
_DEDUPE_RETRIES = 5
_RETRY_MIN = 0.1  # seconds: first pause after PostgreSQL became unreachable
_RETRY_MAX = 5.0
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")

P = TypeVar("P", bound=msgspec.Struct)


# -- errors ------------------------------------------------------------------------------------
#
# In the tree of events/errors.py, beside StoreError:
#
#     I3laniError
#     └── TaskError                 the task queue refused a request or recorded a failure
#         ├── UnknownTaskType       no task type of that name is registered
#         ├── InvalidTaskPayload    a payload does not fit its task type (names the field)
#         ├── TaskNotFound          no task with that id
#         ├── TaskNotDead           retry_dead on a task that is not dead
#         ├── DuplicateTask         re-queueing would duplicate an unfinished task's dedupe key
#         ├── TaskLockExpired       (recorded) the node holding the task stopped heartbeating
#         ├── TaskTimedOut          (recorded) the handler ran past its task type's timeout
#         └── TaskInterrupted       (recorded) the processor stopped before the handler ended
#
# Connection failures raise the store's StoreUnavailable, as everywhere in store/.


class TaskError(I3laniError):
    """The task queue refused a request, or the failure recorded for an attempt."""


class UnknownTaskType(TaskError):
    """No task type of this name is registered; nothing was written."""

    def __init__(self, task_type: str, known: Iterable[str]) -> None:
        self.task_type = task_type
        names = ", ".join(sorted(known)) or "none"
        super().__init__(
            f"unknown task type {one_line(repr(task_type), 100)}: register it with "
            f"TaskTypes.register (registered: {names})"
        )


class InvalidTaskPayload(TaskError):
    """A payload does not fit its task type's Struct; nothing was written."""

    def __init__(self, task_type: str, field: str, reason: str) -> None:
        self.task_type = task_type
        self.field = field
        self.reason = reason
        super().__init__(
            f"invalid payload for task type {task_type!r}: field {one_line(repr(field), 80)}: "
            f"{one_line(reason)}"
        )


class TaskNotFound(TaskError):
    def __init__(self, task_id: int) -> None:
        self.task_id = task_id
        super().__init__(f"there is no task {task_id} (pruned, or never added)")


class TaskNotDead(TaskError):
    def __init__(self, task_id: int, status: str) -> None:
        self.task_id = task_id
        self.status = status
        super().__init__(f"task {task_id} is {status}, not dead: only dead tasks can be retried")


class DuplicateTask(TaskError):
    def __init__(self, task_id: int, dedupe_key: str | None) -> None:
        self.task_id = task_id
        self.dedupe_key = dedupe_key
        super().__init__(
            f"task {task_id} cannot be re-queued: another task with dedupe key {dedupe_key!r} "
            "is queued or running; let that one finish first"
        )


class TaskLockExpired(TaskError):
    """Recorded for an attempt whose node stopped extending its lock (it died or hung)."""

    def __init__(self, node: str, locked_until: datetime) -> None:
        self.node = node
        self.locked_until = locked_until
        super().__init__(
            f"node {node} stopped heartbeating: its lock expired at {locked_until.isoformat()}"
        )


class TaskTimedOut(TaskError):
    """Recorded for an attempt whose handler ran past its task type's timeout."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(f"the handler ran longer than {timeout:g}s and was cancelled")


class TaskInterrupted(TaskError):
    """Recorded for an attempt cut short because its processor stopped."""

    def __init__(self, node: str) -> None:
        self.node = node
        super().__init__(f"processor {node} stopped before the handler finished")


def _split_validation_error(
    error: msgspec.ValidationError | msgspec.DecodeError,
) -> tuple[str, str]:
    """('amount', 'Expected `int`, got `str`') from msgspec's message."""
    # msgspec ends its message with " - at `$.path`" (nothing for the top-level object).
    text = str(error)
    reason, marker, path = text.rpartition(" - at `$")
    if not marker:
        return "(payload)", text
    return path.removesuffix("`").removeprefix(".") or "(payload)", reason


def error_line(error: BaseException, limit: int = MAX_ERROR_LENGTH) -> str:
    """``"ValueError: bad amount"``: the type and message on one line, at most ``limit``
    characters, as failures are recorded."""
    message = " ".join(str(error).split())
    line = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


# -- retry policy (pure) -----------------------------------------------------------------------


class RandomSource(Protocol):
    """Where jitter comes from (``random.Random``; tests pass a seeded one)."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Retry:
    """Run the task again in ``delay`` seconds (by PostgreSQL's clock)."""

    delay: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Give up: the task waits, dead, for an operator."""

    reason: str


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a task type's failures are handled: at most ``max_attempts`` attempts; after failed
    attempt ``n`` the next one waits ``min_delay * factor**(n-1)`` seconds, capped at
    ``max_delay``, plus up to ``jitter`` of itself at random (so that tasks that failed
    together do not all retry in the same instant). Errors that are not instances of
    ``retry_on`` are dead-lettered at once. Pure: no clock, no I/O."""

    max_attempts: int = 3
    min_delay: float = 1.0
    max_delay: float = 300.0
    factor: float = 2.0
    jitter: float = 0.2
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("a retry policy needs max_attempts >= 1")
        if not 0 <= self.min_delay <= self.max_delay or not math.isfinite(self.max_delay):
            raise ValueError("a retry policy needs 0 <= min_delay <= max_delay (finite)")
        if self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("a retry policy needs factor >= 1 and 0 <= jitter <= 1")

    def base_delay(self, attempt: int) -> float:
        """The delay after failed attempt ``attempt`` (from 1), before jitter."""
        exponent = max(attempt - 1, 0)
        if self.factor > 1 and exponent > 64:  # capped before factor**exponent overflows
            return self.max_delay
        return float(min(self.max_delay, self.min_delay * self.factor**exponent))

    def delay(self, attempt: int, rng: RandomSource | None = None) -> float:
        """The delay after failed attempt ``attempt``, with jitter drawn from ``rng`` (none
        without one)."""
        base = self.base_delay(attempt)
        spread = base * self.jitter * rng.random() if rng is not None else 0.0
        return round(base + spread, 3)

    def decide(
        self,
        attempt: int,
        error: BaseException,
        rng: RandomSource | None = None,
        *,
        max_attempts: int | None = None,
    ) -> Retry | DeadLetter:
        """What to do after attempt ``attempt`` (from 1) failed with ``error``.
        ``max_attempts`` overrides the policy's own (a task keeps the limit it was added
        with)."""
        limit = self.max_attempts if max_attempts is None else max_attempts
        if not isinstance(error, self.retry_on):
            return DeadLetter(f"{type(error).__name__} is not retried")
        if attempt >= limit:
            return DeadLetter(f"attempt {attempt} of {limit} failed")
        return Retry(self.delay(attempt, rng))


# -- task types --------------------------------------------------------------------------------


class TaskType(Generic[P]):
    """A registered task type: its name, payload Struct, retry policy and handler timeout.
    Pass it instead of the name to get typed handlers and payloads."""

    __slots__ = ("_decoder", "_encoder", "name", "payload_type", "retry", "timeout")

    def __init__(
        self, name: str, payload_type: type[P], retry: RetryPolicy, timeout: float | None
    ) -> None:
        self.name = name
        self.payload_type = payload_type
        self.retry = retry
        self.timeout = timeout
        self._encoder = msgspec.json.Encoder()
        self._decoder: msgspec.json.Decoder[P] = msgspec.json.Decoder(payload_type)

    def __repr__(self) -> str:
        return f"TaskType({self.name!r}, {self.payload_type.__qualname__})"

    def encode(self, payload: P | Mapping[str, Any]) -> bytes:
        """Validate ``payload`` (the Struct, or a mapping of its fields) and return its JSON;
        InvalidTaskPayload names the field otherwise."""
        try:
            if isinstance(payload, self.payload_type):
                data = self._encoder.encode(payload)
                self._decoder.decode(data)  # enforce the Struct's constraints
            elif isinstance(payload, msgspec.Struct):
                raise InvalidTaskPayload(
                    self.name,
                    "(payload)",
                    f"expected {self.payload_type.__qualname__} or a mapping of its fields, "
                    f"got {type(payload).__qualname__}",
                )
            elif not isinstance(payload, Mapping):
                raise InvalidTaskPayload(
                    self.name, "(payload)", f"expected a mapping, got {type(payload).__name__}"
                )
            else:
                converted = msgspec.convert(payload, self.payload_type, strict=True)
                data = self._encoder.encode(converted)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            field_name, reason = _split_validation_error(exc)
            raise InvalidTaskPayload(self.name, field_name, reason) from exc
        except UnicodeEncodeError as exc:  # a lone surrogate: not UTF-8, so not JSON
            field_name, reason = unstorable_text(msgspec.to_builtins(payload)) or (
                "(payload)",
                str(exc),
            )
            raise InvalidTaskPayload(self.name, field_name, reason) from exc
        except (TypeError, OverflowError) as exc:  # a value msgspec cannot encode at all
            raise InvalidTaskPayload(self.name, "(payload)", str(exc)) from exc
        # jsonb refuses \u0000: refused here, before it fails the statement that enqueues it
        # (with every other task in that group commit).
        if b"\\u0000" in data:
            unstorable = unstorable_text(msgspec.json.decode(data))
            if unstorable is not None:
                raise InvalidTaskPayload(self.name, *unstorable)
        return data

    def decode(self, data: bytes) -> P:
        """The stored payload as the Struct; InvalidTaskPayload when it no longer fits."""
        try:
            return self._decoder.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            field_name, reason = _split_validation_error(exc)
            raise InvalidTaskPayload(self.name, field_name, reason) from exc


class TaskTypes:
    """The task types a queue accepts: name -> payload Struct, retry policy, timeout."""

    def __init__(self) -> None:
        self._types: dict[str, TaskType[Any]] = {}

    def register(
        self,
        name: str,
        payload_type: type[P],
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> TaskType[P]:
        """Register a task type; ``timeout`` (seconds) cancels a handler that runs longer."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"a task type name is a letter then up to 99 letters, digits, '_', '.' or '-', "
                f"got {name!r}"
            )
        if not (isinstance(payload_type, type) and issubclass(payload_type, msgspec.Struct)):
            raise TypeError(f"the payload of {name!r} must be a msgspec Struct class")
        if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError("a task type's timeout is a positive number of seconds")
        if name in self._types:
            raise ValueError(f"task type {name!r} is already registered")
        task_type = TaskType(name, payload_type, retry or RetryPolicy(), timeout)
        self._types[name] = task_type
        return task_type

    def get(self, name: str | TaskType[Any]) -> TaskType[Any]:
        """The registered type (UnknownTaskType if there is none of that name)."""
        key = name.name if isinstance(name, TaskType) else name
        found = self._types.get(key)
        if found is None or (isinstance(name, TaskType) and found is not name):
            raise UnknownTaskType(str(key), self._types)
        return found

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def names(self) -> list[str]:
        return sorted(self._types)


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
    """Queued enqueues for one combined statement, in order: at most _MAX_BATCH tasks (one
    enqueue larger than that goes alone)."""
    batch: list[_Enqueue] = []
    size = 0
    while queue and (not batch or size + len(queue[0].rows.types) <= _MAX_BATCH):
        request = queue.popleft()
        batch.append(request)
        size += len(request.rows.types)
    return batch


@asynccontextmanager
async def _translated(fence: Fence | None = None) -> AsyncIterator[None]:
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


def _metadata_for(node: str | None, fence: Fence | None) -> bytes:
    """The metadata of the task events a node writes (under ``fence``, when fenced)."""
    lease, generation = _fence_args(fence)
    return msgspec.json.encode(EventMetadata(node=node, lease=lease, generation=generation))


class TaskQueue:
    """Adding tasks and watching the queue; :class:`TaskProcessor` runs them."""

    def __init__(self, store: EventStore, types: TaskTypes, *, node: str | None = None) -> None:
        self.store = store
        self.types = types
        self.node = node if node is not None else store.node
        self._metadata = _metadata_for(self.node, None)
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
        if len(tasks) > _MAX_BATCH:
            raise ValueError(f"at most {_MAX_BATCH} tasks per add_tasks call")
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
        async with _translated(fence):
            await tx.connection.fetchval(query("check_fence"), fence.lease, fence.generation)
        return await self._add(rows, tx, _metadata_for(self.node, fence))

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
            async with _translated():
                conn: Any = tx.connection if tx is not None else self.store.pool
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
            tx.streams.update(f"task-{task_id}" for _, task_id in inserted)
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
            inserted = await self._insert(self.store.pool, rows, notify=False)
        self._committed(inserted, rows)
        return inserted

    async def _insert(
        self, conn: Any, rows: _Rows, *, notify: bool, metadata: bytes | None = None
    ) -> list[tuple[int, int]]:
        metadata = self._metadata if metadata is None else metadata
        async with _translated():
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
            self.store._touch("task-")  # the store's post-commit wake-up of event subscribers
            self._announce(min(rows.delays))

    async def _flush(self, batch: list[_Enqueue]) -> None:
        combined = _Rows()
        for request in batch:
            combined.extend(request.rows)
        try:
            with self._commit.direct():
                inserted = await self._insert(self.store.pool, combined, notify=False)
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
            await self.store.pool.execute("SELECT pg_notify($1, $2)", TASKS_CHANNEL, f"{delay:.3f}")

    # -- operators ----------------------------------------------------------------------------
    async def counts(self) -> dict[str, TypeCounts]:
        """Unfinished work per task type (types with none are absent)."""
        async with _translated():
            records = await self.store.pool.fetch(query("task_counts"))
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
        async with _translated():
            records = await self.store.pool.fetch(query("task_dead_letters"), limit)
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
        async with _translated():
            r = await self.store.pool.fetchrow(query("task_get"), task_id)
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
            async with _translated():
                record = await self.store.pool.fetchrow(
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
        self.store._touch(f"task-{task_id}")

    async def prune_finished(self, older_than: timedelta, batch_size: int = 1000) -> int:
        """Delete the rows of tasks that succeeded more than ``older_than`` ago, ``batch_size``
        rows per short transaction; return how many went. Their events stay in the log; dead,
        queued and running tasks are never pruned."""
        if older_than < timedelta(0):
            raise ValueError("older_than must not be negative")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        total = 0
        async with _translated():
            cutoff = await self.store.pool.fetchval(
                query("task_prune_cutoff"), older_than.total_seconds()
            )
            after = 0
            while True:
                record = await self.store.pool.fetchrow(
                    query("task_prune"), cutoff, after, batch_size
                )
                assert record is not None
                deleted: int = record["deleted"]
                total += deleted
                if deleted < batch_size:
                    return total
                after = record["last_id"]


# -- processing --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a handler is told besides its payload."""

    task_id: int
    task_type: str
    attempt: int  # from 1
    max_attempts: int
    node: str
    store: EventStore


Handler = Callable[[P, TaskContext], Awaitable[object]]
"""``async def handle(payload: MyPayload, ctx: TaskContext) -> None``; raising fails the attempt."""


class ProcessorState(enum.Enum):
    NEW = "new"  # built; run() not called yet
    RUNNING = "running"  # listening, claiming and running tasks
    STOPPING = "stopping"  # stop() was called: no new claims, tasks in hand finish
    STOPPED = "stopped"  # run() has returned (or was cancelled); it cannot run again


@dataclass(frozen=True, slots=True)
class ProcessorStatistics:
    """A snapshot of a processor's counters. Outcomes count once PostgreSQL has them."""

    node: str
    state: ProcessorState
    running: int  # handlers running now
    claimed: int  # tasks claimed
    succeeded: int
    failed: int  # failed attempts recorded (retried or dead-lettered)
    dead_lettered: int
    reclaimed: int  # abandoned tasks (expired locks) this processor recorded as failed
    lost: int  # tasks taken from this processor after its lock expired
    cycles: int  # record-and-claim statements sent
    notifications: int  # wake-ups by NOTIFY


@dataclass(slots=True)
class _Claimed:
    task_id: int
    task_type: str
    payload: bytes
    attempt: int
    max_attempts: int
    scope: anyio.CancelScope | None = None
    done: bool = False  # its outcome is queued: no longer lost if the lock goes


@dataclass(slots=True)
class _Outcome:
    task_id: int
    attempt: int
    node: str
    error: str | None
    retry_delay: float | None
    duration_ms: float


class TaskProcessor:
    """Claims due tasks of the types it has handlers for and runs them, ``concurrency`` at a
    time, until stopped. ``async with anyio.create_task_group() as tg: await
    tg.start(processor.run)`` returns once it is listening; :meth:`stop` makes it finish the
    tasks in hand (up to ``stop_timeout`` seconds), record them and return; cancelling it
    instead leaves its tasks to be reclaimed once their locks expire.

    One loop (the driver) talks to PostgreSQL for the processor, one statement at a time: each
    statement records the outcomes that came in since the last one and claims as many tasks as
    there are free slots (at most ``batch_size``). While it is on the wire, handlers finish and
    their outcomes pile up for the next one, so the batches grow with the load on their own.
    Heartbeats go through the same loop, so a processor never holds two statements' locks at
    once (and cannot deadlock with itself); expired locks of other nodes are reclaimed by a
    task of its own, which never waits for a lock (SKIP LOCKED).
    """

    def __init__(
        self,
        queue: TaskQueue,
        *,
        node: str,
        concurrency: int = 10,
        batch_size: int = 10,
        types: Iterable[str | TaskType[Any]] | None = None,
        poll_interval: float = 2.0,
        lock_timeout: float = 30.0,
        stop_timeout: float = 20.0,
        rng: RandomSource | None = None,
        fence: Fence | None = None,
    ) -> None:
        if not node:
            raise ValueError("a processor needs a node name")
        if concurrency < 1 or not 1 <= batch_size <= _MAX_BATCH:
            raise ValueError(f"concurrency >= 1 and 1 <= batch_size <= {_MAX_BATCH}")
        if not (poll_interval > 0 and lock_timeout > 0 and stop_timeout >= 0):
            raise ValueError("poll_interval and lock_timeout > 0, stop_timeout >= 0 (seconds)")
        self.queue = queue
        self.store = queue.store
        self.node = node
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.lock_timeout = lock_timeout
        self.stop_timeout = stop_timeout
        self._only = None if types is None else [queue.types.get(t).name for t in types]
        self._rng: RandomSource = rng if rng is not None else random.Random()
        self._handlers: dict[str, tuple[TaskType[Any], Handler[Any]]] = {}
        self.fence = fence
        self._fence_args = _fence_args(fence)
        self._metadata = _metadata_for(node, fence)
        self._state = ProcessorState.NEW
        self._claim_types: list[str] = []
        # Work in hand: claimed tasks until their outcome is recorded; the ones waiting for a
        # worker; outcomes waiting for the next statement.
        self._held: dict[int, _Claimed] = {}
        self._in_flight = 0  # claimed, handler not finished
        self._ready: deque[_Claimed] = deque()
        self._ready_closed = False  # stopping: workers end once the ready ones are done
        self._idle_workers: list[anyio.Event] = []
        self._outcomes: list[_Outcome] = []
        # The driver's wake-up. Armed in run(): wake-ups before it are not needed.
        self._poke = Wakeup()
        self._claiming = True  # False after a claim came back short, until something is due
        self._claim_at = math.inf  # when to claim again at the latest (anyio clock)
        self._listener = Listener.for_channel(
            self.store.dsn,
            TASKS_CHANNEL,
            self.store.limits,
            on_notify=self._on_notify,
            who=f"task processor {node}",
            poll_interval=poll_interval,
        )
        # counters
        self._claimed = self._succeeded = self._failed = self._dead = 0
        self._reclaimed = self._lost = self._cycles = self._notifications = 0

    # -- set-up ---------------------------------------------------------------------------------
    @overload
    def register_handler(self, task_type: TaskType[P], handler: Handler[P]) -> None: ...

    @overload
    def register_handler(self, task_type: str, handler: Handler[Any]) -> None: ...

    def register_handler(self, task_type: str | TaskType[Any], handler: Handler[Any]) -> None:
        """Run ``handler`` for tasks of ``task_type`` (a registered type: else
        UnknownTaskType). One handler per type; register before :meth:`run`."""
        registered = self.queue.types.get(task_type)
        if self._state is not ProcessorState.NEW:
            raise RuntimeError("register handlers before the processor runs")
        if registered.name in self._handlers:
            raise ValueError(f"task type {registered.name!r} already has a handler")
        self._handlers[registered.name] = (registered, handler)

    def statistics(self) -> ProcessorStatistics:
        return ProcessorStatistics(
            node=self.node,
            state=self._state,
            running=self._in_flight,
            claimed=self._claimed,
            succeeded=self._succeeded,
            failed=self._failed,
            dead_lettered=self._dead,
            reclaimed=self._reclaimed,
            lost=self._lost,
            cycles=self._cycles,
            notifications=self._notifications,
        )

    def stop(self) -> None:
        """Claim nothing more; finish the tasks in hand, record them, and return from run()."""
        if self._state is ProcessorState.RUNNING:
            self._state = ProcessorState.STOPPING
            self._wake()

    def _wake(self) -> None:
        self._poke.set()

    # -- running --------------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Process tasks until :meth:`stop`; reports started once it is listening."""
        if self._state is not ProcessorState.NEW:
            raise RuntimeError(f"a TaskProcessor runs once (this one is {self._state.value})")
        if not self._handlers:
            raise ValueError("register a handler before running the processor")
        if self._only is not None:
            missing = sorted(set(self._only) - set(self._handlers))
            if missing:
                raise ValueError(f"no handler for task types {missing}")
        self._claim_types = sorted(self._only if self._only is not None else self._handlers)
        self._state = ProcessorState.RUNNING
        self._poke.arm()
        workers_done = anyio.Event()
        try:
            await self._listener.listen()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._reaper)
                workers = anyio.CancelScope()
                tg.start_soon(self._run_workers, workers, workers_done)
                task_status.started()
                await self._drive(workers, workers_done)
                tg.cancel_scope.cancel()
        finally:
            self._state = ProcessorState.STOPPED
            await self._listener.close()
            if self._outcomes:
                # Cancelled: what finished may still be recorded, briefly; the rest is
                # reclaimed once its locks expire.
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    try:
                        while self._outcomes:
                            await self._cycle(0)
                    except StoreError as exc:
                        logger.warning(
                            "task processor %s could not record %d outcomes before stopping: "
                            "%s; those tasks run again once their locks expire",
                            self.node,
                            len(self._outcomes),
                            exc,
                            extra={"action": "task_outcomes_lost"},
                        )

    async def _drive(self, workers: anyio.CancelScope, workers_done: anyio.Event) -> None:
        """The processor's conversation with PostgreSQL; returns once stopped and all that
        ran is recorded."""
        backoff = _RETRY_MIN
        heartbeat_at = anyio.current_time() + self.lock_timeout / 3
        stop_deadline = math.inf
        while True:
            # Armed before looking: a wake-up that comes while we work is kept.
            self._poke.arm()
            now = anyio.current_time()
            if self._state is not ProcessorState.RUNNING:
                if stop_deadline == math.inf:
                    stop_deadline = now + self.stop_timeout
                    self._close_workers()
                if now >= stop_deadline and not workers_done.is_set():
                    workers.cancel()  # the handlers still running had their time
                    await workers_done.wait()
                    for claimed in [c for c in self._held.values() if not c.done]:
                        self._record_failure(claimed, TaskInterrupted(self.node), 0.0)
                if workers_done.is_set() and not self._outcomes:
                    return
            if now >= self._claim_at:
                self._claiming, self._claim_at = True, math.inf
            want = 0
            if self._state is ProcessorState.RUNNING and self._claiming:
                want = min(self.batch_size, self.concurrency - self._in_flight)
            try:
                if now >= heartbeat_at:
                    heartbeat_at = now + self.lock_timeout / 3
                    await self._heartbeat()
                    continue
                if self._outcomes or want > 0:
                    got = await self._cycle(want)
                    if want > 0 and got < want:
                        # Caught up: claim again when told, when due, or at the next poll.
                        self._claiming = False
                        due = await self._next_due()
                        wait = self.poll_interval if due is None else max(due, 0.01)
                        self._claim_at = min(self._claim_at, now + min(wait, self.poll_interval))
                        await self._listener.listen()
                    backoff = _RETRY_MIN
                    continue
            except StaleGeneration:
                # This node may no longer act for the actor it runs tasks for: stop at once,
                # recording nothing (the holder of the current generation takes the tasks).
                self._outcomes.clear()
                raise
            except StoreError as exc:
                logger.warning(
                    "task processor %s cannot reach PostgreSQL: %s; retrying in %.1fs",
                    self.node,
                    exc,
                    backoff,
                    extra={"action": "task_processor_retry"},
                )
                await self._poke.wait(backoff)
                backoff = min(backoff * 2, _RETRY_MAX)
                continue
            deadline = min(self._claim_at, heartbeat_at, stop_deadline)
            await self._poke.wait(deadline - now)

    async def _cycle(self, want: int) -> int:
        """One statement: record the outcomes in hand, claim up to ``want`` tasks and hand them
        to the workers; how many were claimed."""
        outcomes = self._outcomes[:_MAX_BATCH]
        async with _translated(self.fence):
            records = await self.store.pool.fetch(
                query("task_cycle"),
                [o.task_id for o in outcomes],
                [o.attempt for o in outcomes],
                [o.node for o in outcomes],
                [o.error for o in outcomes],
                [o.retry_delay for o in outcomes],
                [o.duration_ms for o in outcomes],
                self._metadata,
                want,
                self._claim_types,
                self.node,
                self.lock_timeout,
                *self._fence_args,
            )
        self._cycles += 1
        del self._outcomes[: len(outcomes)]
        for outcome in outcomes:
            self._held.pop(outcome.task_id, None)
        claimed = 0
        for record in records:
            if not record[0]:
                self._count(record[2])
                continue
            item = _Claimed(record[1], record[2], record[3], record[4], record[5])
            self._held[item.task_id] = item
            self._in_flight += 1
            self._ready.append(item)
            claimed += 1
        if records:
            self.store._touch("task-")  # wake event subscribers of the task category
        if claimed:
            self._claimed += claimed
            for _ in range(min(claimed, len(self._idle_workers))):
                self._idle_workers.pop().set()
        return claimed

    async def _next_due(self) -> float | None:
        async with _translated():
            due: float | None = await self.store.pool.fetchval(
                query("task_next_due"), self._claim_types
            )
        return due

    def _count(self, status: str) -> None:
        if status == "succeeded":
            self._succeeded += 1
        else:
            self._failed += 1
            if status == "dead":
                self._dead += 1

    # -- workers --------------------------------------------------------------------------------
    async def _run_workers(self, scope: anyio.CancelScope, done: anyio.Event) -> None:
        try:
            with scope:
                async with anyio.create_task_group() as workers:
                    for _ in range(self.concurrency):
                        workers.start_soon(self._worker)
        finally:
            done.set()
            self._wake()

    def _close_workers(self) -> None:
        """No more work is coming: idle workers end, busy ones after their task."""
        self._ready_closed = True
        while self._idle_workers:
            self._idle_workers.pop().set()

    async def _worker(self) -> None:
        while True:
            if self._ready:
                claimed = self._ready.popleft()
                try:
                    await self._execute(claimed)
                finally:
                    self._in_flight -= 1
                continue
            if self._ready_closed:
                return
            idle = anyio.Event()
            self._idle_workers.append(idle)
            await idle.wait()

    async def _execute(self, claimed: _Claimed) -> None:
        task_type, handler = self._handlers[claimed.task_type]
        started = time.perf_counter()
        try:
            payload = task_type.decode(claimed.payload)
        except InvalidTaskPayload as exc:
            # Stored by an older version in a shape that no longer fits: retrying cannot help.
            self._record(claimed, error_line(exc), None, 0.0)
            return
        context = TaskContext(
            claimed.task_id,
            claimed.task_type,
            claimed.attempt,
            claimed.max_attempts,
            self.node,
            self.store,
        )
        error: Exception | None = None
        scope = claimed.scope = anyio.CancelScope()
        try:
            with scope:
                if task_type.timeout is None:
                    await handler(payload, context)
                else:
                    with anyio.move_on_after(task_type.timeout) as timer:
                        await handler(payload, context)
                    if timer.cancelled_caught:
                        error = TaskTimedOut(task_type.timeout)
        except Exception as exc:
            error = exc
        elapsed = (time.perf_counter() - started) * 1000
        if scope.cancelled_caught:
            return  # the lock was lost: another node owns the task now
        if error is None:
            self._record(claimed, None, None, elapsed)
            return
        logger.info(
            "task %s (%s) attempt %d failed: %s",
            claimed.task_id,
            claimed.task_type,
            claimed.attempt,
            error_line(error),
            extra={"action": "task_failed"},
        )
        self._record_failure(claimed, error, elapsed)

    def _record_failure(self, claimed: _Claimed, error: BaseException, elapsed: float) -> None:
        task_type = self._handlers[claimed.task_type][0]
        decision = task_type.retry.decide(
            claimed.attempt, error, self._rng, max_attempts=claimed.max_attempts
        )
        delay = decision.delay if isinstance(decision, Retry) else None
        if delay is not None:
            # Our own retry: be awake to claim it when it is due.
            self._claim_at = min(self._claim_at, anyio.current_time() + delay)
        self._record(claimed, error_line(error), delay, elapsed)

    def _record(
        self, claimed: _Claimed, error: str | None, retry_delay: float | None, elapsed: float
    ) -> None:
        claimed.done = True
        self._outcomes.append(
            _Outcome(
                claimed.task_id, claimed.attempt, self.node, error, retry_delay, round(elapsed, 3)
            )
        )
        self._wake()

    # -- locks ------------------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        """Extend the locks of every task in hand; a task whose lock was taken over (it
        expired) has its handler cancelled."""
        ids = [task_id for task_id, claimed in self._held.items() if not claimed.done]
        if not ids:
            return
        async with _translated(self.fence):
            records = await self.store.pool.fetch(
                query("task_heartbeat"), ids, self.node, self.lock_timeout, *self._fence_args
            )
        alive = {record["id"] for record in records}
        for task_id in ids:
            claimed = self._held.get(task_id)
            if task_id in alive or claimed is None or claimed.done:
                continue
            logger.warning(
                "task processor %s lost task %s: its lock expired and it was reclaimed",
                self.node,
                task_id,
                extra={"action": "task_lost"},
            )
            self._lost += 1
            del self._held[task_id]
            if claimed.scope is not None:
                claimed.scope.cancel()

    async def _reaper(self) -> None:
        """Record the attempts of tasks whose node stopped heartbeating as failed, and make
        them claimable again (or dead)."""
        while True:
            try:
                reaped = await self._reap()
            except StaleGeneration:
                raise
            except StoreError as exc:
                logger.warning(
                    "task processor %s cannot reclaim expired tasks: %s",
                    self.node,
                    exc,
                    extra={"action": "task_reap_failed"},
                )
                reaped = 0
            if reaped:
                self._claiming = True
                self._wake()
            await anyio.sleep(self.lock_timeout / 3 * (0.8 + 0.4 * self._rng.random()))

    async def _reap(self) -> int:
        async with self.store.transaction() as tx, _translated(self.fence):
            tx.fenced(self.fence)
            expired = await tx.connection.fetch(
                query("task_expired"), _MAX_BATCH, self._claim_types, *self._fence_args
            )
            if not expired:
                return 0
            outcomes: list[_Outcome] = []
            for row in expired:
                task_type = self.queue.types.get(row["task_type"])
                error = TaskLockExpired(row["locked_by"], row["locked_until"])
                decision = task_type.retry.decide(
                    row["attempts"], error, self._rng, max_attempts=row["max_attempts"]
                )
                delay = decision.delay if isinstance(decision, Retry) else None
                outcomes.append(
                    _Outcome(
                        row["id"], row["attempts"], row["locked_by"], error_line(error), delay, 0.0
                    )
                )
            records = await tx.connection.fetch(
                query("task_cycle"),
                [o.task_id for o in outcomes],
                [o.attempt for o in outcomes],
                [o.node for o in outcomes],
                [o.error for o in outcomes],
                [o.retry_delay for o in outcomes],
                [o.duration_ms for o in outcomes],
                self._metadata,
                0,
                [],
                self.node,
                self.lock_timeout,
                *self._fence_args,
            )
            tx.streams.add("task-")
        for record in records:
            self._count(record[2])
        self._reclaimed += len(records)
        logger.warning(
            "task processor %s reclaimed %d tasks whose node stopped heartbeating",
            self.node,
            len(records),
            extra={"action": "task_reclaimed"},
        )
        return len(records)

    # -- notifications ----------------------------------------------------------------------------
    def _on_notify(self, payload: str) -> None:
        self._notifications += 1
        try:
            delay = float(payload)
        except ValueError:
            delay = 0.0
        if delay <= 0.001:
            self._claiming = True
        else:
            self._claim_at = min(self._claim_at, anyio.current_time() + delay)
        self._wake()
