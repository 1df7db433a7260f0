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

__all__ = ["MEMBER_CATEGORY", "UserRegistered", "member_stream"]

MEMBER_CATEGORY = "member"

Username = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


def member_stream(user_id: int) -> str:
    """``member-<telegram id>``: where a user's registration lives."""
    return f"{MEMBER_CATEGORY}-{user_id}"


class UserRegistered(Event, frozen=True, tag="UserRegistered"):
    """A Telegram user started the bot for the first time (``/start``)."""

    user_id: TelegramId
    registered_at: UtcDateTime
    referred_by: TelegramId | None = None
    username: Username | None = None
