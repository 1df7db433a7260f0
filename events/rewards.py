"""Rewards: earned (referral, channel addition, ...), credited exactly once, or failed.

Stream: ``user-<telegram id>``; the user's TON balance is the sum of its credits.
"""

from __future__ import annotations

import uuid
from typing import Annotated

import msgspec

from events.base import Event, Nanotons, NonEmptyStr, PositiveNanotons, TelegramId, UtcDateTime

__all__ = ["RewardReason", "RewardEarned", "RewardCredited", "RewardFailed"]

RewardReason = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
"""Why a reward was earned, e.g. ``referral`` or ``channel_addition``."""


class RewardEarned(Event, frozen=True, tag="RewardEarned"):
    """A user earned a reward; it waits for the RewardProcessor to credit it."""

    reward_id: uuid.UUID
    user_id: TelegramId
    amount_nanotons: PositiveNanotons
    reason: RewardReason
    source: NonEmptyStr
    earned_at: UtcDateTime


class RewardCredited(Event, frozen=True, tag="RewardCredited"):
    """A reward was added to the user's TON balance. At most one per ``reward_id``."""

    reward_id: uuid.UUID
    user_id: TelegramId
    amount_nanotons: PositiveNanotons
    balance_after_nanotons: Nanotons
    credited_at: UtcDateTime


class RewardFailed(Event, frozen=True, tag="RewardFailed"):
    """Crediting failed after every retry; left for an operator."""

    reward_id: uuid.UUID
    user_id: TelegramId
    error: NonEmptyStr
    attempts: Annotated[int, msgspec.Meta(ge=1)]
    failed_at: UtcDateTime
