"""Users of the bot: registered by the gateway on ``/start``.

Stream ``member-<telegram id>``: one :class:`UserRegistered` per user, appended with
``NO_STREAM``, so that a user registers (and earns their referrer a reward) exactly once. The
category is ``member``, not ``user``: ``user-<id>`` holds rewards and balances, the
RewardProcessor's category, which has no use for registrations.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from events.base import Event, TelegramId, UtcDateTime
from events.streams import MEMBER, member_stream

__all__ = ["MEMBER_CATEGORY", "UserRegistered", "member_stream"]

MEMBER_CATEGORY = MEMBER

Username = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class UserRegistered(Event, frozen=True, tag="UserRegistered"):
    """A Telegram user started the bot for the first time (``/start``)."""

    user_id: TelegramId
    registered_at: UtcDateTime
    referred_by: TelegramId | None = None
    username: Username | None = None
