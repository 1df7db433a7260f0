"""The project's exceptions, under a single root.

Every error i3lani raises on purpose derives from :class:`I3laniError`, so a caller
(the CLI, the supervisor, a test) can catch "ours" without catching bugs. Driver
errors (asyncpg, httpx) are translated once, at the boundary that meets them, with
``raise ... from``.

    I3laniError
    ├── ConfigError                 the environment is missing or malformed
    ├── actors.ton.InvalidAddress   a TON address that does not parse (also a ValueError)
    ├── actors.ton.InvalidAmount    a TON amount that is not exact nanotons (also a ValueError)
    ├── actors.tonapi_models.TonApiFormatError  a TonAPI body of the wrong shape (ValueError)
    ├── EventError                  an event cannot be built, encoded or decoded
    │   ├── InvalidEvent            a payload fails validation (names type and field)
    │   ├── UnknownEventType        a stored type tag no registered class claims
    │   ├── UpcastError             an old stored version cannot be brought up to date
    │   └── EventRegistrationError  a class cannot be registered (no explicit tag, clash)
    ├── store.tasks.TaskError       the task queue refused a request or recorded a failure
    │   ├── UnknownTaskType         no task type of that name is registered
    │   ├── InvalidTaskPayload      a payload does not fit its task type (names the field)
    │   ├── TaskNotFound / TaskNotDead / DuplicateTask   operator requests that cannot be done
    │   └── TaskLockExpired / TaskTimedOut / TaskInterrupted   recorded reasons a task failed
    ├── actors.tonapi.TonApiError   TonAPI refused a request (TonApiUnavailable: retry later)
    ├── actors.telegram.TelegramUnavailable   the Bot API cannot be reached
    ├── actors.reward_processor.RewardRefused   a credit the rules refuse (balance cap)
    ├── actors.control.CommandRefused   an operator command nothing would act on (not recorded)
    ├── ops.export.ExportError      an export that cannot be made or does not match the log
    └── StoreError                  the event store refused or failed an operation
        ├── ConcurrencyConflict     expected stream version did not hold
        ├── EventIdReused           an event id was appended before with other content
        ├── AppendOnlyViolation     something tried to change or delete stored events
        ├── CheckpointConflict      a subscriber's checkpoint moved under it
        ├── StaleGeneration         a fenced append from a lease generation since replaced
        ├── StoreUnavailable        PostgreSQL cannot be reached (retry later)
        ├── store.admin.DatabaseRefused   PostgreSQL refused to create or drop a database
        └── MigrationError          the schema cannot be brought up to date
"""

from __future__ import annotations

__all__ = [
    "I3laniError",
    "ConfigError",
    "EventError",
    "InvalidEvent",
    "UnknownEventType",
    "UpcastError",
    "EventRegistrationError",
    "StoreError",
    "ConcurrencyConflict",
    "EventIdReused",
    "AppendOnlyViolation",
    "CheckpointConflict",
    "StaleGeneration",
    "StoreUnavailable",
    "MigrationError",
    "one_line",
]


def one_line(text: str, limit: int = 200) -> str:
    """``text`` fit for a one-line error message: line breaks and other unprintable characters
    escaped as ``repr`` writes them (``\\n``, ``\\x00``), cut to ``limit`` characters.

    For outside text quoted in a message (a stored value, a name someone typed), so that the
    message stays one short line whatever the text holds."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class I3laniError(Exception):
    """Root of every error i3lani raises on purpose."""


class ConfigError(I3laniError):
    """The environment is missing a setting or holds a malformed one.

    One problem per line: ``problems`` holds each (``ConfigError(a, b)`` reports both, so an
    operator fixes every variable in one go instead of one per attempt)."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems: tuple[str, ...] = problems


class EventError(I3laniError):
    """An event cannot be built, encoded or decoded."""


class InvalidEvent(EventError):
    """A payload failed validation; nothing was written."""

    def __init__(self, event_type: str, field: str, reason: str) -> None:
        self.event_type = event_type
        self.field = field
        self.reason = reason
        super().__init__(
            f"invalid {event_type}: field {one_line(repr(field), 80)}: {one_line(reason)}"
        )


class UnknownEventType(EventError):
    """A stored event carries a type tag that no registered class claims."""

    def __init__(self, tag: str, position: int | None = None) -> None:
        self.tag = tag
        self.position = position
        where = f" at global position {position}" if position is not None else ""
        super().__init__(
            f"unknown event type {one_line(repr(tag), 100)}{where}: written by a newer version "
            "of i3lani, or its class is not registered; upgrade, register it, or read with "
            "skip_unknown=True"
        )


class UpcastError(EventError):
    """An older stored schema version cannot be brought up to the current one."""


class EventRegistrationError(EventError):
    """An event class cannot be registered."""


class StoreError(I3laniError):
    """The event store refused or failed an operation."""


class ConcurrencyConflict(StoreError):
    """The stream was not at the version the writer expected; nothing was written."""

    def __init__(self, stream: str, expected: object, actual: int | None) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        now = (
            f"actual version {actual}"
            if actual is not None
            else "another writer appended first inside this transaction"
        )
        super().__init__(f"concurrency conflict on stream {stream!r}: expected {expected}, {now}")


class EventIdReused(StoreError):
    """An event id was appended before with different content (or to another stream)."""

    def __init__(self, event_id: object, detail: str) -> None:
        self.event_id = event_id
        super().__init__(f"event id {event_id} was already used for different content: {detail}")


class AppendOnlyViolation(StoreError):
    """PostgreSQL refused an UPDATE, DELETE or TRUNCATE of the event log."""


class CheckpointConflict(StoreError):
    """A subscriber's stored checkpoint is not the one it read: another consumer moved it."""

    def __init__(self, name: str, expected: object, actual: object) -> None:
        self.name = name
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"checkpoint {name!r} moved under this subscriber: expected {expected}, found {actual}"
        )


class StaleGeneration(StoreError):
    """A fenced append carried a lease generation that is no longer current; nothing written.

    The writer was running an actor whose lease another node (or a newer incarnation on this
    node) has since been granted: it must stop.
    """

    def __init__(self, lease: str, generation: int, *, reason: str | None = None) -> None:
        self.lease = lease
        self.generation = generation
        self.reason = reason
        """Set when this node refused the write itself, before sending it (its own clock)."""
        if reason is None:
            message = (
                f"append refused: lease {lease!r} is no longer held at generation {generation}"
            )
        else:
            message = (
                f"write refused before it was sent: lease {lease!r} generation {generation}: "
                f"{reason}"
            )
        super().__init__(message)


class StoreUnavailable(StoreError):
    """PostgreSQL cannot be reached right now; the operation may be retried."""


class MigrationError(StoreError):
    """The database schema cannot be brought up to date."""
