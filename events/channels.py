"""Channels: registered by users, measured by ChannelAnalytics, priced by audience.

Stream: ``channel-<channel>`` where ``channel`` is the public username without ``@``
or the numeric chat id.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from events.base import Event, Nanotons, PositiveNanotons, TelegramId, UtcDateTime

__all__ = ["ChannelRef", "ChannelAdded", "ChannelStatsUpdated", "ChannelPriceChanged"]

ChannelRef = Annotated[str, msgspec.Meta(pattern=r"^(@[A-Za-z][A-Za-z0-9_]{3,31}|-?\d{1,20})$")]
"""A channel as the Bot API takes it: ``@username`` or a numeric chat id."""

Count = Annotated[int, msgspec.Meta(ge=0)]


class ChannelAdded(Event, frozen=True, tag="ChannelAdded"):
    """A user registered a channel for advertising."""

    channel: ChannelRef
    added_by: TelegramId
    added_at: UtcDateTime


class ChannelStatsUpdated(Event, frozen=True, tag="ChannelStatsUpdated"):
    """A fresh subscriber count and the active share derived from it."""

    channel: ChannelRef
    subscribers: Count
    active_subscribers: Count
    measured_at: UtcDateTime


class ChannelPriceChanged(Event, frozen=True, tag="ChannelPriceChanged"):
    """The advertising price moved with the audience (only emitted on an actual change)."""

    channel: ChannelRef
    new_price_nanotons: PositiveNanotons
    active_subscribers: Count
    changed_at: UtcDateTime
    old_price_nanotons: Nanotons | None = None
