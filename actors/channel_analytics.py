"""ChannelAnalytics: measures each registered channel's audience and reprices it.

Every ``I3LANI_ANALYTICS_INTERVAL`` seconds (6 h by default), for each channel registered with
``ChannelAdded``:

1. ``getChatMemberCount`` through the Bot API (:class:`~actors.telegram.TelegramClient`);
2. active subscribers = :func:`actors.config.active_subscribers` — ``floor(subscribers x
   I3LANI_ACTIVE_SHARE)`` (45 % by default), exact, rounded down to a whole subscriber;
3. price = :func:`actors.config.channel_price` — ``max(min price, active x price per 1,000 /
   1,000)`` rounded up to 0.01 TON, in integer nanotons;
4. ``ChannelStatsUpdated`` always, ``ChannelPriceChanged`` only when the price moved.

:mod:`actors.config` says why each is rounded the way it is; the audit calls the same two
functions, so it cannot disagree with this actor on a price.

A 400 (chat not found), 403 (not a member, kicked) or 429 on one channel is recorded for that
channel as ``ChannelStatsFailed`` and never stops the others. A 429 is honoured: the actor waits
``retry_after`` (up to :attr:`ChannelAnalytics.max_retry_after` seconds) and asks once more
before recording it. Requests are paced to stay under the Bot API's ~30 requests/s.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Final

import msgspec

from actors.clients import telegram_bot
from actors.config import Settings, active_subscribers, channel_price
from actors.runtime import Actor, ActorRunner, Emit, Message, TickSpec
from actors.telegram import ChatProblem, TelegramClient
from events import ChannelAdded, ChannelPriceChanged, ChannelStatsFailed, ChannelStatsUpdated
from events.streams import CHANNEL, channel_stream
from store import RecordedEvent

__all__ = [
    "ChannelAnalytics",
    "AnalyticsState",
    "ChannelView",
    "ChannelMeasured",
    "channel_stream",
    "active_subscribers",
]

logger = logging.getLogger(__name__)

PACING: Final = 0.05
"""Seconds between two Bot API calls: 20 requests/s, under Telegram's ~30/s."""


@dataclass(slots=True)
class ChannelView:
    channel: str
    price_nanotons: int | None = None
    subscribers: int | None = None
    measured_at: datetime | None = None
    last_problem: str | None = None


@dataclass(slots=True)
class AnalyticsState:
    """The fold of the ``channel`` category (updated in place; see PaymentMonitor's note)."""

    channels: dict[str, ChannelView] = field(default_factory=dict)  # by stream name


class ChannelMeasured(msgspec.Struct, frozen=True, kw_only=True):
    """One channel's measurement: a count, or the problem that prevented it."""

    channel: str
    subscribers: int | None
    problem: ChatProblem | None
    measured_at: datetime


class ChannelAnalytics(Actor[AnalyticsState]):
    """Prices channels by their audience (see the module docstring)."""

    name: ClassVar[str] = "ChannelAnalytics"
    category: ClassVar[str | None] = CHANNEL
    messages: ClassVar[tuple[type[msgspec.Struct], ...]] = (ChannelMeasured,)
    max_retry_after: float = 60.0

    def __init__(self, settings: Settings, *, telegram: TelegramClient | None = None) -> None:
        self.settings = settings
        self.tick = TickSpec(interval=settings.analytics_interval, missed="run_once")
        self._given_client = telegram
        self.telegram: TelegramClient | None = telegram

    def initial_state(self) -> AnalyticsState:
        return AnalyticsState()

    async def setup(
        self, stack: contextlib.AsyncExitStack, runner: ActorRunner[AnalyticsState]
    ) -> None:
        if self._given_client is None:
            bot = telegram_bot(self.settings, runner.store)
            self.telegram = await stack.enter_async_context(TelegramClient(bot))

    # -- pure --------------------------------------------------------------------------------
    def evolve(self, state: AnalyticsState, recorded: RecordedEvent) -> AnalyticsState:
        event = recorded.event
        view = state.channels.get(recorded.stream)
        match event:
            case ChannelAdded():
                if view is None:
                    state.channels[recorded.stream] = ChannelView(channel=event.channel)
            case ChannelStatsUpdated() if view is not None:
                view.subscribers, view.measured_at = event.subscribers, event.measured_at
                view.last_problem = None
            case ChannelPriceChanged() if view is not None:
                view.price_nanotons = event.new_price_nanotons
            case ChannelStatsFailed() if view is not None:
                view.last_problem = f"{event.kind}: {event.description}"
        return state

    def decide(self, state: AnalyticsState, message: Message) -> Sequence[Emit]:
        if not isinstance(message, ChannelMeasured):
            return ()
        stream = channel_stream(message.channel)
        view = state.channels.get(stream)
        if view is None:
            return ()
        if message.problem is not None or message.subscribers is None:
            problem = message.problem or ChatProblem(
                kind="unavailable", error_code=None, description="no count", retry_after=None
            )
            return [
                Emit(
                    stream,
                    ChannelStatsFailed(
                        channel=view.channel,
                        kind=problem.kind,
                        description=problem.description or problem.kind,
                        failed_at=message.measured_at,
                        error_code=problem.error_code,
                        retry_after=problem.retry_after,
                    ),
                )
            ]
        active = active_subscribers(message.subscribers, self.settings.active_share)
        emits = [
            Emit(
                stream,
                ChannelStatsUpdated(
                    channel=view.channel,
                    subscribers=message.subscribers,
                    active_subscribers=active,
                    measured_at=message.measured_at,
                ),
            )
        ]
        price = channel_price(active, self.settings)
        if price != view.price_nanotons:
            emits.append(
                Emit(
                    stream,
                    ChannelPriceChanged(
                        channel=view.channel,
                        new_price_nanotons=price,
                        active_subscribers=active,
                        changed_at=message.measured_at,
                        old_price_nanotons=view.price_nanotons,
                    ),
                )
            )
        return emits

    # -- I/O ---------------------------------------------------------------------------------
    async def on_tick(
        self, state: AnalyticsState, runner: ActorRunner[AnalyticsState]
    ) -> Sequence[Message]:
        assert self.telegram is not None, "setup() opens the Telegram client"
        results: list[Message] = []
        for index, view in enumerate(list(state.channels.values())):
            if index:
                await runner.clock.sleep(PACING)
            results.append(await self.measure(view.channel, runner))
        return results

    async def measure(self, channel: str, runner: ActorRunner[AnalyticsState]) -> ChannelMeasured:
        """One channel's count; a 429 is waited out once (within ``max_retry_after``)."""
        assert self.telegram is not None
        result = await self.telegram.member_count(channel)
        if (
            isinstance(result, ChatProblem)
            and result.kind == "rate_limited"
            and result.retry_after is not None
            and result.retry_after <= self.max_retry_after
        ):
            logger.info(
                "%s: %s rate limited, retrying after %ss",
                self.name,
                channel,
                result.retry_after,
                extra={"action": "analytics_retry_after"},
            )
            await runner.clock.sleep(result.retry_after)
            result = await self.telegram.member_count(channel)
        now = runner.clock.now()
        if isinstance(result, ChatProblem):
            logger.warning(
                "%s: %s not measured: %s %s",
                self.name,
                channel,
                result.kind,
                result.description,
                extra={"action": "analytics_channel_failed"},
            )
            return ChannelMeasured(
                channel=channel, subscribers=None, problem=result, measured_at=now
            )
        return ChannelMeasured(channel=channel, subscribers=result, problem=None, measured_at=now)
