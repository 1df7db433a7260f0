"""The runtime's own actors, run by ``i3lani run`` until the product's actors arrive.

* ``Heartbeat`` ticks every ``I3LANI_HEARTBEAT_SECONDS`` (default 5) and records each tick:
  a visible sign that a node runs, and which one (``i3lani status``).
* ``Flaky`` ticks every second and crashes on every ``I3LANI_FLAKY_CRASH_EVERY``-th tick
  (default 3), to show restarts with backoff and, when it crashes too often, parking.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import ClassVar

import msgspec

from actors.runtime import Actor, ActorRunner, TickSpec

__all__ = ["Heartbeat", "Flaky", "FlakyCrash"]


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class Heartbeat(Actor[None]):
    """Ticks on schedule; it has no state of its own."""

    name: ClassVar[str] = "Heartbeat"
    tick: TickSpec | None = TickSpec(
        interval=_env_float("I3LANI_HEARTBEAT_SECONDS", 5.0), missed="skip"
    )

    def initial_state(self) -> None:
        return None

    async def on_tick(self, state: None, runner: ActorRunner[None]) -> Sequence[msgspec.Struct]:
        return ()


class FlakyCrash(RuntimeError):
    """Raised by Flaky on purpose."""


class Flaky(Actor[None]):
    """Crashes on every N-th tick, on purpose."""

    name: ClassVar[str] = "Flaky"
    tick: TickSpec | None = TickSpec(interval=1.0, missed="run_once")

    def __init__(self) -> None:
        self.ticks = 0
        self.crash_every = max(int(_env_float("I3LANI_FLAKY_CRASH_EVERY", 3)), 1)

    def initial_state(self) -> None:
        return None

    async def on_tick(self, state: None, runner: ActorRunner[None]) -> Sequence[msgspec.Struct]:
        self.ticks += 1
        if self.ticks % self.crash_every == 0:
            raise FlakyCrash(f"tick {self.ticks} of this incarnation: crashing on purpose")
        return ()
