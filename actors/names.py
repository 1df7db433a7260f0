"""The actors this build knows, by name: importable without importing the actors.

Commands that only name actors (``i3lani status``, ``restart``, the admin API) need these and
nothing of the actors' clients (aiogram alone takes seconds to import). :mod:`actors.catalog`
builds the actors themselves.
"""

from __future__ import annotations

from events.errors import one_line

__all__ = [
    "PRODUCT_ACTORS",
    "ACTOR_NAMES",
    "DEFAULT_ACTORS",
    "CATEGORIES",
    "TASK_TYPES",
    "UnknownActor",
]

PRODUCT_ACTORS: tuple[str, ...] = (
    "PaymentMonitor",
    "RewardProcessor",
    "ChannelAnalytics",
    "Cleanup",
    "HealthChecker",
    "Sealer",
)
ACTOR_NAMES: tuple[str, ...] = (*PRODUCT_ACTORS, "Heartbeat", "Flaky")
"""Every actor this build knows (the valid names for status, restart, stop and start)."""

DEFAULT_ACTORS: tuple[str, ...] = PRODUCT_ACTORS
"""What ``i3lani run`` starts without ``--actors``."""

CATEGORIES: dict[str, str] = {
    "PaymentMonitor": "payment",
    "RewardProcessor": "user",
    "ChannelAnalytics": "channel",
    "Cleanup": "payment",
}
"""The category each actor follows (for the HealthChecker's subscription lag check)."""

TASK_TYPES: tuple[str, ...] = ("payment_verification", "reward_distribution", "admin_alert")
"""The product's task types (:mod:`actors.tasks` registers them): what
``I3LANI_TASK_CONCURRENCY`` may name."""


class UnknownActor(ValueError):
    """An actor name this build does not know."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"unknown actor {one_line(repr(name), 80)}; valid names: {', '.join(ACTOR_NAMES)}"
        )
