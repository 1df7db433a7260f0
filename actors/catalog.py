"""Which actors ``i3lani run`` supervises, by name, and what each needs to start.

The product's actors run by default; ``Heartbeat`` and ``Flaky`` are the runtime's own
demonstration actors (a visible tick; a deliberate crash loop), started only when named.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from actors.config import Settings
from actors.names import (
    ACTOR_NAMES,
    CATEGORIES,
    DEFAULT_ACTORS,
    PRODUCT_ACTORS,
    UnknownActor,
)
from actors.runtime import Actor, ChildSpec, RestartType
from actors.tonapi_stream import StreamStatus
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
    "missing_settings",
]


def tick_intervals(settings: Settings, names: Sequence[str] = PRODUCT_ACTORS) -> dict[str, float]:
    """Each product actor's tick interval, from the settings."""
    intervals = {
        "PaymentMonitor": settings.payment_interval,
        "RewardProcessor": settings.reward_interval,
        "ChannelAnalytics": settings.analytics_interval,
        "Cleanup": settings.cleanup_interval,
        "HealthChecker": settings.health_interval,
        "Sealer": settings.seal_interval,
    }
    return {name: intervals[name] for name in names if name in intervals}


def missing_settings(names: Sequence[str], *, wallet: bool, bot_token: bool) -> list[str]:
    """A line for each setting the chosen actors cannot run without and do not have. Pure."""
    missing = []
    if "PaymentMonitor" in names and not wallet:
        missing.append(
            "WALLET_ADDRESS is not set: PaymentMonitor needs the TON wallet that receives "
            "payments (raw 0:<hex> or user-friendly EQ.../UQ...), or leave it out with --actors"
        )
    if "ChannelAnalytics" in names and not bot_token:
        missing.append(
            "BOT_TOKEN is not set: ChannelAnalytics needs the bot's token "
            "(or leave it out with --actors)"
        )
    return missing


def check_requirements(names: Sequence[str], settings: Settings) -> None:
    """ConfigError (a line per setting) when chosen actors lack settings they cannot run
    without."""
    missing = missing_settings(
        names, wallet=bool(settings.wallet), bot_token=bool(settings.bot_token)
    )
    if missing:
        raise ConfigError(*missing)


def _factory(
    name: str, settings: Settings, watched: Sequence[str], stream: StreamStatus
) -> Callable[[], Actor[Any]]:
    """How to make a fresh ``name``. Each actor's module is imported only when it is chosen:
    ChannelAnalytics and HealthChecker bring in aiogram, whose import builds the whole Bot
    API's models (about 3 s of CPU), which a worker running other actors need not pay.
    ``stream`` is the PaymentMonitor's stream status, shown by the HealthChecker when both run
    in this process."""
    if name == "PaymentMonitor":
        from actors.payment_monitor import PaymentMonitor

        return lambda: PaymentMonitor(settings, stream_status=stream)
    if name == "RewardProcessor":
        from actors.reward_processor import RewardProcessor

        return lambda: RewardProcessor(settings)
    if name == "ChannelAnalytics":
        from actors.channel_analytics import ChannelAnalytics

        return lambda: ChannelAnalytics(settings)
    if name == "Cleanup":
        from actors.cleanup import Cleanup

        return lambda: Cleanup(settings)
    if name == "HealthChecker":
        from actors.health import HealthChecker, HeldVerdict

        held = HeldVerdict()  # one per process, shared by its incarnations: see HeldVerdict
        return lambda: HealthChecker(
            settings,
            actor_intervals=tick_intervals(settings, watched),
            lagging_checkpoints={n: c for n, c in CATEGORIES.items() if n in watched},
            held=held,
            stream_status=stream if "PaymentMonitor" in watched else None,
        )
    if name == "Sealer":
        from actors.sealer import Sealer

        return lambda: Sealer(settings)
    from actors.demo import Flaky, Heartbeat

    if name == "Heartbeat":
        return Heartbeat
    if name == "Flaky":
        return Flaky
    raise UnknownActor(name)


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
    watched = [name for name in chosen if name in PRODUCT_ACTORS]
    stream = StreamStatus()  # one per process: the monitor reports, the checker shows
    return [
        ChildSpec(name, _factory(name, settings, watched, stream), RestartType.PERMANENT)
        for name in chosen
    ]
