"""Which actors ``i3lani run`` supervises, by name."""

from __future__ import annotations

from collections.abc import Sequence

from actors.demo import Flaky, Heartbeat
from supervisor import ChildSpec, RestartType

__all__ = ["ACTOR_NAMES", "DEFAULT_ACTORS", "child_specs", "UnknownActor"]

_SPECS: dict[str, ChildSpec] = {
    "Heartbeat": ChildSpec("Heartbeat", Heartbeat, RestartType.PERMANENT),
    "Flaky": ChildSpec("Flaky", Flaky, RestartType.PERMANENT),
}

ACTOR_NAMES: tuple[str, ...] = tuple(_SPECS)
"""Every actor this build knows (the valid names for status, restart, stop and start)."""

DEFAULT_ACTORS: tuple[str, ...] = ("Heartbeat",)
"""What ``i3lani run`` starts without ``--actors``."""


class UnknownActor(ValueError):
    """An actor name this build does not know."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown actor {name!r}; valid names: {', '.join(ACTOR_NAMES)}")


def child_specs(names: Sequence[str] | None = None) -> list[ChildSpec]:
    """The child specs for ``names`` (default: DEFAULT_ACTORS), in that order."""
    chosen = DEFAULT_ACTORS if names is None else tuple(names)
    for name in chosen:
        if name not in _SPECS:
            raise UnknownActor(name)
    return [_SPECS[name] for name in chosen]
