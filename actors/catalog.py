"""Which actors ``i3lani run`` supervises, by name, and what each needs to start.

The product's five actors run by default; ``Heartbeat`` and ``Flaky`` are the runtime's own
demonstration actors (a visible tick; a deliberate crash loop), started only when named.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from actors.channel_analytics import ChannelAnalytics
from actors.cleanup import Cleanup
from actors.config import Settings
from actors.demo import Flaky, Heartbeat
from actors.health import HealthChecker, HeldVerdict
from actors.names import (
    ACTOR_NAMES,
    CATEGORIES,
    DEFAULT_ACTORS,
    PRODUCT_ACTORS,
    UnknownActor,
)
from actors.payment_monitor import PaymentMonitor
from actors.reward_processor import RewardProcessor
from actors.runtime import Actor, ChildSpec, RestartType
from events.errors import ConfigError

__all__ = [
    "ACTOR_NAMES",
    "CATEGORIES",
    "DEFAULT_ACTORS",
    "PRODUCT_ACTORS",
    "child_specs",
    "tick_intervals",
    "UnknownActor",
    "check_requirements",
]


def tick_intervals(settings: Settings, names: Sequence[str] = PRODUCT_ACTORS) -> dict[str, float]:
    """Each product actor's tick interval, from the settings."""
    intervals = {
        "PaymentMonitor": settings.payment_interval,
        "RewardProcessor": settings.reward_interval,
        "ChannelAnalytics": settings.analytics_interval,
        "Cleanup": settings.cleanup_interval,
        "HealthChecker": settings.health_interval,
    }
    return {name: intervals[name] for name in names if name in intervals}


def check_requirements(names: Sequence[str], settings: Settings) -> None:
    """ConfigError (one line) when a chosen actor lacks a setting it cannot run without."""
    if "PaymentMonitor" in names:
        settings.wallet_address()
    if "ChannelAnalytics" in names and not settings.bot_token:
        raise ConfigError(
            "BOT_TOKEN is not set: ChannelAnalytics needs the bot's token "
            "(or leave it out with --actors)"
        )


def _factories(settings: Settings, chosen: Sequence[str]) -> dict[str, Callable[[], Actor[Any]]]:
    watched = [name for name in chosen if name in PRODUCT_ACTORS]
    held = HeldVerdict()  # one per process: see HeldVerdict
    return {
        "PaymentMonitor": lambda: PaymentMonitor(settings),
        "RewardProcessor": lambda: RewardProcessor(settings),
        "ChannelAnalytics": lambda: ChannelAnalytics(settings),
        "Cleanup": lambda: Cleanup(settings),
        "HealthChecker": lambda: HealthChecker(
            settings,
            actor_intervals=tick_intervals(settings, watched),
            lagging_checkpoints={n: c for n, c in CATEGORIES.items() if n in watched},
            held=held,
        ),
        "Heartbeat": Heartbeat,
        "Flaky": Flaky,
    }


def child_specs(
    names: Sequence[str] | None = None, settings: Settings | None = None
) -> list[ChildSpec]:
    """The child specs for ``names`` (default: DEFAULT_ACTORS), in that order.

    Raises UnknownActor for a name this build does not know, ConfigError when a chosen actor
    lacks a required setting.
    """
    chosen = DEFAULT_ACTORS if names is None else tuple(names)
    for name in chosen:
        if name not in ACTOR_NAMES:
            raise UnknownActor(name)
    settings = settings or Settings()
    check_requirements(chosen, settings)
    factories = _factories(settings, chosen)
    return [ChildSpec(name, factories[name], RestartType.PERMANENT) for name in chosen]
