"""Channels: registered by users, measured by ChannelAnalytics, priced by audience.

Stream: ``channel-<channel>`` where ``channel`` is the public username without ``@``
or the numeric chat id.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from events.base import Event, Nanotons, NonEmptyStr, PositiveNanotons, TelegramId, UtcDateTime

__all__ = [
    "ChannelRef",
    "ChannelAdded",
    "ChannelStatsUpdated",
    "ChannelPriceChanged",
    "ChannelStatsFailed",
]

ChannelRef = Annotated[str, msgspec.Meta(pattern=r"^(@[A-Za-z][A-Za-z0-9_]{3,31}|-?\d{1,20})$")]
"""A channel as the Bot API takes it: ``@username`` or a numeric chat id."""

Count = Annotated[int, msgspec.Meta(ge=0)]


class ChannelAdded(Event, frozen=True, tag="ChannelAdded"):
    """A user registered a channel for advertising."""

    channel: ChannelRef
    added_by: TelegramId
    added_at: UtcDateTime


class ChannelStatsUpdated(Event, frozen=True, tag="ChannelStatsUpdated"):
    """A fresh subscriber count and the active audience derived from it.

    ``active_subscribers`` is :func:`actors.config.active_subscribers` of ``subscribers``: the
    configured share of them, exactly, rounded down to a whole subscriber. Counts and prices are
    integers in every event (no share, no float), so rows written before issue 19 decode as
    they are.
    """

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


class ChannelStatsFailed(Event, frozen=True, tag="ChannelStatsFailed"):
    """The Bot API refused or failed a channel's count; the other channels go on.

    ``kind``: ``bad_request`` (400, e.g. chat not found), ``forbidden`` (403, the bot is not a
    member or was kicked), ``rate_limited`` (429, after honouring ``retry_after``) or
    ``unavailable`` (network, 5xx, timeout).
    """

    channel: ChannelRef
    kind: Literal["bad_request", "forbidden", "rate_limited", "unavailable"]
    description: NonEmptyStr
    failed_at: UtcDateTime
    error_code: int | None = None
    retry_after: Annotated[float, msgspec.Meta(ge=0)] | None = None
