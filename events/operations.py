"""Operations: housekeeping and health. Stream: ``ops-<name>``."""

from __future__ import annotations

from typing import Annotated

import msgspec

from events.base import Event, NonEmptyStr, UtcDateTime

__all__ = ["CleanupCompleted", "HealthCheck", "HealthChecked"]


class CleanupCompleted(Event, frozen=True, tag="CleanupCompleted"):
    """A cleanup pass finished; ``removed`` counts pruned rows per kind of derived data."""

    removed: dict[str, Annotated[int, msgspec.Meta(ge=0)]]
    started_at: UtcDateTime
    finished_at: UtcDateTime


class HealthCheck(msgspec.Struct, frozen=True, kw_only=True):
    """One probe's outcome inside a HealthChecked event."""

    name: NonEmptyStr
    ok: bool
    detail: str = ""
    latency_ms: Annotated[float, msgspec.Meta(ge=0)] | None = None


class HealthChecked(Event, frozen=True, tag="HealthChecked"):
    """The HealthChecker's verdict and each check behind it."""

    healthy: bool
    checks: list[HealthCheck]
    checked_at: UtcDateTime
