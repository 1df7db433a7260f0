"""Running tasks: :class:`TaskProcessor` claims due tasks, runs their handlers, records the
outcomes and heartbeats its locks (see the package's docstring).
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar, overload

import anyio
import msgspec
from anyio.abc import TaskStatus

from events import environment
from events.errors import StaleGeneration, StoreError
from store._wakeup import Wakeup
from store.eventstore import Fence
from store.tasks.errors import (
    InvalidTaskPayload,
    TaskInterrupted,
    TaskLockExpired,
    TaskTimedOut,
    error_line,
)
from store.tasks.policy import RandomSource, Retry
from store.tasks.queue import TaskLog, TaskQueue, metadata_for
from store.tasks.table import MAX_BATCH, ExpiredTask, Outcome
from store.tasks.types import TaskType

__all__ = ["TaskProcessor", "TaskContext", "Handler", "ProcessorState", "ProcessorStatistics"]

logger = logging.getLogger(__name__)

_RETRY_MIN = 0.1  # seconds: first pause after PostgreSQL became unreachable
_RETRY_MAX = 5.0

P = TypeVar("P", bound=msgspec.Struct)


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a handler is told besides its payload."""

    task_id: int
    task_type: str
    attempt: int  # from 1
    max_attempts: int
    node: str
    store: TaskLog


Handler = Callable[[P, TaskContext], Awaitable[object]]
"""``async def handle(payload: MyPayload, ctx: TaskContext) -> None``; raising fails the attempt."""


class ProcessorState(enum.Enum):
    NEW = "new"  # built; run() not called yet
    RUNNING = "running"  # listening, claiming and running tasks
    STOPPING = "stopping"  # stop() was called: no new claims, tasks in hand finish
    STOPPED = "stopped"  # run() has returned (or was cancelled); it cannot run again


@dataclass(frozen=True, slots=True)
class ProcessorStatistics:
    """A snapshot of a processor's counters. Outcomes count once the table has them."""

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


EXPIRY_MARGIN: Final = 0.01
"""Seconds a reaper waits past the earliest lock's expiry: a lock has expired once its time
has passed, and the table's clock and this process's may be a moment apart."""


class TaskProcessor:
    """Claims due tasks of the types it has handlers for and runs them, ``concurrency`` at a
    time (on this node), until stopped. ``async with anyio.create_task_group() as tg: await
    tg.start(processor.run)`` returns once it is listening; :meth:`stop` makes it finish the
    tasks in hand (up to ``stop_timeout`` seconds), record them and return; cancelling it
    instead leaves its tasks to be reclaimed once their locks expire.

    One loop (the driver) talks to the task table for the processor, one statement at a time: each
    statement records the outcomes that came in since the last one and claims as many tasks as
    there are free slots (at most ``batch_size``). While it is on the wire, handlers finish and
    their outcomes pile up for the next one, so the batches grow with the load on their own.
    Heartbeats go through the same loop, so a processor never holds two statements' locks at
    once (and cannot deadlock with itself); expired locks of other nodes are reclaimed by a
    task of its own, which never waits for a lock (SKIP LOCKED).

    ``limits`` sets how many tasks of a type may run at once on every node together (None for
    a type: no limit), for each type this processor claims, once it starts: the last processor
    to start says what holds (:meth:`~store.tasks.table.TaskTable.set_concurrency`). A type
    this processor claims and ``limits`` leaves out has its limit removed; ``limits=None``
    (the default) leaves the stored limits as they are. A type at its limit waits for one of
    its tasks to end: at once when the task was this processor's, else until its next poll.
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
        limits: Mapping[str, int | None] | None = None,
    ) -> None:
        if not node:
            raise ValueError("a processor needs a node name")
        if concurrency < 1 or not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"concurrency >= 1 and 1 <= batch_size <= {MAX_BATCH}")
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
        if limits is not None:
            for name, limit in limits.items():
                queue.types.get(name)  # UnknownTaskType for a type nobody registered
                if limit is not None and (isinstance(limit, bool) or limit < 1):
                    raise ValueError(f"a concurrency limit is 1 or more, got {limit!r}")
        self._limits = None if limits is None else dict(limits)
        self._limits_pending = True  # set them (or read them) once the driver runs
        self._limited: set[str] = set()  # claimed types with a concurrency limit
        self._rng: RandomSource = rng if rng is not None else environment.new_rng()
        self._handlers: dict[str, tuple[TaskType[Any], Handler[Any]]] = {}
        self.fence = fence
        self._metadata = metadata_for(node, fence)
        self._table = queue.table
        self._state = ProcessorState.NEW
        self._claim_types: list[str] = []
        # Work in hand: claimed tasks until their outcome is recorded; the ones waiting for a
        # worker; outcomes waiting for the next statement.
        self._held: dict[int, _Claimed] = {}
        self._in_flight = 0  # claimed, handler not finished
        self._ready: deque[_Claimed] = deque()
        self._ready_closed = False  # stopping: workers end once the ready ones are done
        self._idle_workers: list[anyio.Event] = []
        self._outcomes: list[Outcome] = []
        # The driver's wake-up. Armed in run(): wake-ups before it are not needed.
        self._poke = Wakeup()
        self._claiming = True  # False after a claim came back short, until something is due
        self._claim_at = math.inf  # when to claim again at the latest (anyio clock)
        self._listener = self._table.listener(
            on_notify=self._on_notify, who=f"task processor {node}", poll_interval=poll_interval
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
        """The processor's conversation with the task table; returns once stopped and all that
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
                if self._limits_pending:
                    await self._sync_limits()
                    continue
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
                        poll = self._listener.poll_interval
                        wait = poll if due is None else max(due, 0.01)
                        self._claim_at = min(self._claim_at, now + min(wait, poll))
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
                self._claim_after_error()
                await self._poke.wait(backoff)
                backoff = min(backoff * 2, _RETRY_MAX)
                continue
            deadline = min(self._claim_at, heartbeat_at, stop_deadline)
            await self._poke.wait(deadline - now)

    def _claim_after_error(self) -> None:
        """Claim again once PostgreSQL answers. The failed statement may have come between a
        claim that came back short and the look for the next due task (caught up, but no poll
        set yet), and notifications sent while it was away were lost with the LISTEN
        connection: without this the processor would wait for a wake-up that never comes."""
        self._claiming = True

    async def _cycle(self, want: int) -> int:
        """One statement: record the outcomes in hand, claim up to ``want`` tasks and hand them
        to the workers; how many were claimed."""
        outcomes = self._outcomes[:MAX_BATCH]
        cycle = await self._table.cycle(
            outcomes,
            metadata=self._metadata,
            want=want,
            task_types=self._claim_types,
            node=self.node,
            lock_seconds=self.lock_timeout,
            fence=self.fence,
        )
        self._cycles += 1
        del self._outcomes[: len(outcomes)]
        for outcome in outcomes:
            self._held.pop(outcome.task_id, None)
        for status in cycle.recorded:
            self._count(status)
        for task in cycle.claimed:
            item = _Claimed(
                task.task_id, task.task_type, task.payload, task.attempt, task.max_attempts
            )
            self._held[item.task_id] = item
            self._in_flight += 1
            self._ready.append(item)
        claimed = len(cycle.claimed)
        if claimed:
            self._claimed += claimed
            for _ in range(min(claimed, len(self._idle_workers))):
                self._idle_workers.pop().set()
        return claimed

    async def _next_due(self) -> float | None:
        return await self._table.next_due(self._claim_types)

    async def _sync_limits(self) -> None:
        """Set this processor's concurrency limits (when it was given some), then note which
        of its types have one."""
        if self._limits is not None:
            await self._table.set_concurrency(
                {t: self._limits.get(t) for t in self._claim_types}, node=self.node
            )
        stored = await self._table.concurrency()
        self._limited = set(stored) & set(self._claim_types)
        self._limits_pending = False

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
        started = environment.monotonic()
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
        elapsed = (environment.monotonic() - started) * 1000
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
        if claimed.task_type in self._limited:
            self._claiming = True  # a slot of a limited type is free once this is recorded
        self._outcomes.append(
            Outcome(
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
        alive = await self._table.heartbeat(
            ids, node=self.node, lock_seconds=self.lock_timeout, fence=self.fence
        )
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
        them claimable again (or dead).

        It sleeps until the earliest lock of a running task can have expired, by the table's
        clock, and reaps only then: with no task running it asks again after a lock time
        (a task claimed from now on holds its lock at least that long), so an idle processor
        asks one cheap question per lock time instead of reaping in a transaction every third
        of one. A lock that expired but stays (another node reaping it, or a task of an older
        grant of this processor's lease, left to its take-over) is looked at again every third
        of a lock time, as before."""
        period = self.lock_timeout / 3
        while True:
            wait = period * (0.8 + 0.4 * self._rng.random())
            try:
                expiry = await self._table.next_lock_expiry(self._claim_types)
                if expiry is None:
                    wait = self.lock_timeout * (0.8 + 0.2 * self._rng.random())
                elif expiry >= 0:  # a lock expires once its time has passed, not at it
                    later = expiry * (1.0 + 0.1 * self._rng.random()) + EXPIRY_MARGIN
                    wait = min(later, self.lock_timeout)
                elif await self._reap():
                    self._claiming = True
                    self._wake()
            except StaleGeneration:
                raise
            except StoreError as exc:
                logger.warning(
                    "task processor %s cannot reclaim expired tasks: %s",
                    self.node,
                    exc,
                    extra={"action": "task_reap_failed"},
                )
            await anyio.sleep(wait)

    async def _reap(self) -> int:
        statuses = await self._table.reap(
            task_types=self._claim_types,
            node=self.node,
            lock_seconds=self.lock_timeout,
            metadata=self._metadata,
            fence=self.fence,
            decide=self._expired_outcome,
        )
        if not statuses:
            return 0
        for status in statuses:
            self._count(status)
        self._reclaimed += len(statuses)
        logger.warning(
            "task processor %s reclaimed %d tasks whose node stopped heartbeating",
            self.node,
            len(statuses),
            extra={"action": "task_reclaimed"},
        )
        return len(statuses)

    def _expired_outcome(self, row: ExpiredTask) -> Outcome:
        """The failed attempt of a task whose holder stopped heartbeating, under that holder."""
        task_type = self.queue.types.get(row.task_type)
        error = TaskLockExpired(row.locked_by, row.locked_until)
        decision = task_type.retry.decide(
            row.attempts, error, self._rng, max_attempts=row.max_attempts
        )
        delay = decision.delay if isinstance(decision, Retry) else None
        return Outcome(row.id, row.attempts, row.locked_by, error_line(error), delay, 0.0)

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
