"""Typed events of i3lani: frozen, explicitly tagged msgspec Structs, and their registry.

``DEFAULT_REGISTRY`` knows every event the project defines. An application adds its own
event type the same way the project does::

    from events import DEFAULT_REGISTRY, Event

    @DEFAULT_REGISTRY.register
    class CouponRedeemed(Event, frozen=True, tag="CouponRedeemed"):
        code: str

This package does no I/O.
"""

from __future__ import annotations

from events import channels, lifecycle, operations, payments, rewards, seals, tasks, users
from events.base import (
    NANOTONS_PER_TON,
    Event,
    EventMetadata,
    Nanotons,
    PositiveNanotons,
    UtcDateTime,
    utcnow,
)
from events.channels import (
    ChannelAdded,
    ChannelPriceChanged,
    ChannelStatsFailed,
    ChannelStatsUpdated,
)
from events.lifecycle import (
    ActorBackoffScheduled,
    ActorCrashed,
    ActorParked,
    ActorRestarted,
    ActorStarted,
    ActorStopped,
    ActorTicked,
)
from events.operations import (
    AlertRaised,
    CleanupCompleted,
    HealthCheck,
    HealthChecked,
    OperatorCommandIssued,
)
from events.payments import (
    LatePaymentReceived,
    PaymentConfirmed,
    PaymentCreated,
    PaymentExpired,
    PaymentUnderpaid,
    SubscriptionActivated,
    WalletScanned,
)
from events.registry import EventRegistry, Upcaster
from events.rewards import RewardCredited, RewardEarned, RewardFailed
from events.seals import LogSealed
from events.tasks import (
    TaskClaimed,
    TaskDeadLettered,
    TaskEnqueued,
    TaskFailed,
    TaskRequeued,
    TaskSucceeded,
)
from events.users import UserRegistered

__all__ = [
    "NANOTONS_PER_TON",
    "Event",
    "EventMetadata",
    "EventRegistry",
    "Upcaster",
    "Nanotons",
    "PositiveNanotons",
    "UtcDateTime",
    "utcnow",
    "DEFAULT_REGISTRY",
    "BUILTIN_EVENTS",
    # payments
    "PaymentCreated",
    "PaymentConfirmed",
    "PaymentUnderpaid",
    "PaymentExpired",
    "LatePaymentReceived",
    "SubscriptionActivated",
    "WalletScanned",
    # users
    "UserRegistered",
    # rewards
    "RewardEarned",
    "RewardCredited",
    "RewardFailed",
    # channels
    "ChannelAdded",
    "ChannelStatsUpdated",
    "ChannelPriceChanged",
    "ChannelStatsFailed",
    # operations
    "CleanupCompleted",
    "HealthCheck",
    "HealthChecked",
    "OperatorCommandIssued",
    "AlertRaised",
    # actor lifecycle
    "ActorStarted",
    "ActorCrashed",
    "ActorRestarted",
    "ActorParked",
    "ActorStopped",
    "ActorBackoffScheduled",
    "ActorTicked",
    # seals
    "LogSealed",
    # task queue
    "TaskEnqueued",
    "TaskClaimed",
    "TaskSucceeded",
    "TaskFailed",
    "TaskDeadLettered",
    "TaskRequeued",
]


def _builtin_events() -> tuple[type[Event], ...]:
    found: list[type[Event]] = []
    for module in (payments, rewards, channels, operations, lifecycle, tasks, users, seals):
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, Event) and obj is not Event:
                found.append(obj)
    return tuple(found)


BUILTIN_EVENTS: tuple[type[Event], ...] = _builtin_events()
"""Every event class the project defines; a new one is picked up from its module's __all__."""

DEFAULT_REGISTRY = EventRegistry(BUILTIN_EVENTS)
"""The registry the store uses unless it is given another one."""
