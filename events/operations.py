"""Operations: housekeeping and health. Stream: ``ops-<name>``."""

from __future__ import annotations

import uuid
from typing import Annotated, Final, Literal

import msgspec

from events.base import Event, NonEmptyStr, UtcDateTime

__all__ = [
    "CleanupCompleted",
    "HealthCheck",
    "WARNING_PREFIX",
    "HealthChecked",
    "OperatorCommandIssued",
    "AlertRaised",
]


class CleanupCompleted(Event, frozen=True, tag="CleanupCompleted"):
    """A cleanup pass finished; ``removed`` counts pruned rows per kind of derived data."""

    removed: dict[str, Annotated[int, msgspec.Meta(ge=0)]]
    started_at: UtcDateTime
    finished_at: UtcDateTime


WARNING_PREFIX: Final = "warning: "
"""How a check that passed with a warning begins its detail (see :attr:`HealthCheck.warning`)."""


class HealthCheck(msgspec.Struct, frozen=True, kw_only=True):
    """One probe's outcome inside a HealthChecked event.

    A check is ``ok`` or failing; an ``ok`` one may carry a **warning** (something degraded
    that the system copes with, such as the payment stream being down while polling goes on):
    its detail then begins with :data:`WARNING_PREFIX`. A warning never makes a verdict
    unhealthy and raises no alert; it is shown wherever checks are (``i3lani health``, the
    dashboard). Kept in the detail, it needs no new field in the log nor column in the samples.
    """

    name: NonEmptyStr
    ok: bool
    detail: str = ""
    latency_ms: Annotated[float, msgspec.Meta(ge=0)] | None = None

    @property
    def warning(self) -> bool:
        """It passed, with a warning."""
        return self.ok and self.detail.startswith(WARNING_PREFIX)


class HealthChecked(Event, frozen=True, tag="HealthChecked"):
    """The HealthChecker's verdict and each check behind it."""

    healthy: bool
    checks: list[HealthCheck]
    checked_at: UtcDateTime


class OperatorCommandIssued(Event, frozen=True, tag="OperatorCommandIssued"):
    """An operator asked for an actor to be restarted, stopped or started (``ops-commands``)."""

    command_id: uuid.UUID
    action: Literal["restart", "stop", "start"]
    actor: NonEmptyStr
    requested_by: NonEmptyStr
    requested_at: UtcDateTime
    reason: str = ""


class AlertRaised(Event, frozen=True, tag="AlertRaised"):
    """Something needs an administrator (stream ``ops-alerts``): delivered to ``ADMIN_IDS``."""

    alert_id: uuid.UUID
    kind: NonEmptyStr
    subject: NonEmptyStr
    message: NonEmptyStr
    raised_at: UtcDateTime
