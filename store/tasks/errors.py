"""The task queue's errors, and the one-line form failures are recorded in.

In the tree of events/errors.py, beside StoreError:

    I3laniError
    └── TaskError                 the task queue refused a request or recorded a failure
        ├── UnknownTaskType       no task type of that name is registered
        ├── InvalidTaskPayload    a payload does not fit its task type (names the field)
        ├── TaskNotFound          no task with that id
        ├── TaskNotDead           retry_dead on a task that is not dead
        ├── DuplicateTask         re-queueing would duplicate an unfinished task's dedupe key
        ├── TaskLockExpired       (recorded) the node holding the task stopped heartbeating
        ├── TaskTimedOut          (recorded) the handler ran past its task type's timeout
        └── TaskInterrupted       (recorded) the processor stopped before the handler ended

Connection failures raise the store's StoreUnavailable, as everywhere in store/.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import msgspec

from events.errors import I3laniError, one_line

__all__ = [
    "TaskError",
    "UnknownTaskType",
    "InvalidTaskPayload",
    "TaskNotFound",
    "TaskNotDead",
    "DuplicateTask",
    "TaskLockExpired",
    "TaskTimedOut",
    "TaskInterrupted",
    "error_line",
    "MAX_ERROR_LENGTH",
]

MAX_ERROR_LENGTH = 500  # characters of a recorded error line


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


def split_validation_error(
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
