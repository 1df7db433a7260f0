"""The task queue: every transition of a task is recorded. Stream: ``task-<task id>``.

A task's stream reads, for a task that failed once and then succeeded::

    TaskEnqueued -> TaskClaimed(attempt 1) -> TaskFailed(retry_at) -> TaskClaimed(attempt 2)
    -> TaskSucceeded

and for one that ran out of attempts: ``... -> TaskFailed(retry_at=None) -> TaskDeadLettered``,
possibly followed by ``TaskRequeued`` when an operator gives it another round. A task whose node
died while running it gets a ``TaskFailed`` naming the expired lock, like any other failure.

The table ``i3lani.tasks`` is the queue's working state (what to claim next, who holds what);
these events are its record, written in the same transaction as each change of the table. The
queue writes the hot-path events (claimed, succeeded, failed) with SQL of its own, so their
shapes here and in ``store/sql/queries.sql`` change together (``tests/store/test_tasks.py``
reads every one of them back through the registry).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from events.base import Event, NonEmptyStr, UtcDateTime

__all__ = [
    "TaskId",
    "TaskTypeName",
    "TaskEnqueued",
    "TaskClaimed",
    "TaskSucceeded",
    "TaskFailed",
    "TaskDeadLettered",
    "TaskRequeued",
]

TaskId = Annotated[int, msgspec.Meta(ge=1)]
"""A task's number in ``i3lani.tasks`` (and in its stream name, ``task-<id>``)."""

TaskTypeName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")]
"""A registered task type, such as ``payment_verification``."""

Attempt = Annotated[int, msgspec.Meta(ge=1)]


class TaskEnqueued(Event, frozen=True, tag="TaskEnqueued"):
    """A task was added: it may run from ``run_at`` on, at most ``max_attempts`` times.

    ``payload`` is the task type's payload Struct as a JSON object, validated when it was added.
    """

    task_id: TaskId
    task_type: TaskTypeName
    payload: dict[str, Any]
    priority: int
    run_at: UtcDateTime
    max_attempts: Attempt
    dedupe_key: str | None = None


class TaskClaimed(Event, frozen=True, tag="TaskClaimed"):
    """``node`` took the task for attempt ``attempt``; it holds it until ``locked_until``
    unless it keeps extending the lock (heartbeats are not recorded)."""

    task_id: TaskId
    attempt: Attempt
    node: NonEmptyStr
    locked_until: UtcDateTime
    taken_over_from: str | None = None
    """Set when the task was taken over from a holder whose lease generation had been
    superseded: that holder's attempt never counted, and this claim continues it."""


class TaskSucceeded(Event, frozen=True, tag="TaskSucceeded"):
    """The handler returned; the task is finished."""

    task_id: TaskId
    attempt: Attempt
    node: NonEmptyStr
    duration_ms: Annotated[float, msgspec.Meta(ge=0)]


class TaskFailed(Event, frozen=True, tag="TaskFailed"):
    """Attempt ``attempt`` failed with ``error`` (one line). The task runs again at
    ``retry_at``; None means it will not (a ``TaskDeadLettered`` follows).

    ``node`` is where the attempt ran; for a lock that expired it is the node that stopped
    heartbeating, and ``error`` says so.
    """

    task_id: TaskId
    attempt: Attempt
    node: NonEmptyStr
    error: NonEmptyStr
    retry_at: UtcDateTime | None


class TaskDeadLettered(Event, frozen=True, tag="TaskDeadLettered"):
    """The task failed ``attempts`` times (or with an error not worth retrying) and waits
    for an operator; ``error`` is the last one."""

    task_id: TaskId
    attempts: Annotated[int, msgspec.Meta(ge=0)]
    error: NonEmptyStr


class TaskRequeued(Event, frozen=True, tag="TaskRequeued"):
    """An operator put a dead task back in the queue with a fresh set of attempts."""

    task_id: TaskId
    previous_attempts: Annotated[int, msgspec.Meta(ge=0)]
    run_at: UtcDateTime
    requested_by: NonEmptyStr
