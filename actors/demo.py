"""The runtime's own actors, run by ``i3lani run`` until the product's actors arrive.

* ``Heartbeat`` ticks every ``I3LANI_HEARTBEAT_SECONDS`` (default 5) and records each beat in
  the log as ``ActorTicked`` (stream ``tick-Heartbeat``, with the node in its metadata): a
  visible sign that a node runs, and which one. (The runtime itself records ticks in the
  actors' tick schedules, not the log; the Heartbeat's beats are its work.)
* ``Flaky`` ticks every second and crashes on every ``I3LANI_FLAKY_CRASH_EVERY``-th tick
  (default 3), to show restarts with backoff and, when it crashes too often, parking.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from typing import ClassVar

import msgspec

from actors.runtime import Actor, ActorRunner, Emit, TickSpec
from events import ActorTicked
from events.streams import tick_stream

__all__ = ["Heartbeat", "Flaky", "FlakyCrash"]


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class Beat(msgspec.Struct, frozen=True):
    """A beat to record, at ``at``."""

    at: datetime


class Heartbeat(Actor[None]):
    """Ticks on schedule and records each beat; it has no state of its own."""

    name: ClassVar[str] = "Heartbeat"
    tick: TickSpec | None = TickSpec(
        interval=_env_float("I3LANI_HEARTBEAT_SECONDS", 5.0), missed="skip"
    )

    def initial_state(self) -> None:
        return None

    async def on_tick(self, state: None, runner: ActorRunner[None]) -> Sequence[msgspec.Struct]:
        return [Beat(at=runner.clock.now())]

    def decide(self, state: None, message: msgspec.Struct) -> Sequence[Emit]:
        if not isinstance(message, Beat):
            return ()
        beat = ActorTicked(actor=self.name, due_at=message.at, ticked_at=message.at)
        return [Emit(tick_stream(self.name), beat)]


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
