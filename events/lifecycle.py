"""Actor lifecycle: every step the supervisor takes is recorded. Stream: ``actor-<name>``."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from events.base import Event, NonEmptyStr, UtcDateTime

__all__ = [
    "ActorName",
    "RestartCause",
    "ActorStarted",
    "ActorCrashed",
    "ActorRestarted",
    "ActorParked",
    "ActorStopped",
    "ActorBackoffScheduled",
    "ActorTicked",
]

ActorName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")]
Generation = Annotated[int, msgspec.Meta(ge=1)]
RestartCause = Literal["crash", "operator", "failover"]


class ActorStarted(Event, frozen=True, tag="ActorStarted"):
    """The actor recovered its state, caught up, and runs on ``node``."""

    actor: ActorName
    node: NonEmptyStr
    generation: Generation
    started_at: UtcDateTime


class ActorCrashed(Event, frozen=True, tag="ActorCrashed"):
    """The actor raised; ``traceback_digest`` groups identical crashes."""

    actor: ActorName
    node: NonEmptyStr
    generation: Generation
    error_type: NonEmptyStr
    message: str
    traceback_digest: NonEmptyStr
    uptime_seconds: Annotated[float, msgspec.Meta(ge=0)]
    crashed_at: UtcDateTime


class ActorRestarted(Event, frozen=True, tag="ActorRestarted"):
    """The actor is being started again, after ``delay_seconds`` of backoff."""

    actor: ActorName
    cause: RestartCause
    attempt: Annotated[int, msgspec.Meta(ge=0)]
    delay_seconds: Annotated[float, msgspec.Meta(ge=0)]
    restarted_at: UtcDateTime
    requested_by: str | None = None
    reason: str | None = None


class ActorParked(Event, frozen=True, tag="ActorParked"):
    """Restart intensity was exceeded: the actor stays stopped until an operator starts it."""

    actor: ActorName
    reason: NonEmptyStr
    restarts: Annotated[int, msgspec.Meta(ge=0)]
    window_seconds: Annotated[float, msgspec.Meta(gt=0)]
    parked_at: UtcDateTime


class ActorStopped(Event, frozen=True, tag="ActorStopped"):
    """The actor stopped (shutdown, operator stop, or hand-over to another node)."""

    actor: ActorName
    node: NonEmptyStr
    generation: Generation
    reason: NonEmptyStr
    stopped_at: UtcDateTime


class ActorBackoffScheduled(Event, frozen=True, tag="ActorBackoffScheduled"):
    """After a crash the actor waits ``delay_seconds`` (attempt ``attempt``) before restarting."""

    actor: ActorName
    attempt: Annotated[int, msgspec.Meta(ge=1)]
    delay_seconds: Annotated[float, msgspec.Meta(ge=0)]
    until: UtcDateTime
    scheduled_at: UtcDateTime


class ActorTicked(Event, frozen=True, tag="ActorTicked"):
    """A periodic tick ran (stream ``tick-<actor>``): the schedule resumes from ``due_at``.

    No longer appended by the runtime: a tick's schedule is kept beside the log
    (``i3lani.ticks``, migration 0007), so a tick that changed nothing adds nothing to it.
    Kept so that logs written before still decode (the runtime resumes a schedule from the
    last one of them), and for the ``Heartbeat`` demonstration actor, whose beats are its
    work."""

    actor: ActorName
    due_at: UtcDateTime
    ticked_at: UtcDateTime
