"""Child specs: how the supervisor builds a supervised actor and when it restarts it.

They live in the runtime, below both the supervisor (which runs them) and the product actors
(:mod:`actors.catalog` lists theirs), so neither has to import the other to name a child.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actors.runtime.core import Actor

__all__ = ["ChildSpec", "RestartType"]


class RestartType(enum.Enum):
    """When a child is restarted (OTP's restart types)."""

    PERMANENT = "permanent"  # always: after a crash and after a normal return
    TRANSIENT = "transient"  # only after a crash
    TEMPORARY = "temporary"  # never


@dataclass(frozen=True)
class ChildSpec:
    """One supervised actor: how to build it and when to restart it."""

    name: str
    factory: Callable[[], Actor[Any]]
    restart: RestartType = RestartType.PERMANENT
    shutdown_timeout: float = 4.0
