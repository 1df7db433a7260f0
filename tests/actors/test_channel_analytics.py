"""ChannelAnalytics, pure part: stats, prices only on change, problems recorded per channel."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from fractions import Fraction

import anyio

from actors.channel_analytics import (
    AnalyticsState,
    ChannelAnalytics,
    ChannelMeasured,
    active_subscribers,
    channel_stream,
)
from actors.config import Settings
from actors.runtime import ActorRunner
from actors.runtime.clock import ManualClock
from actors.telegram import ChatProblem, TelegramClient, make_bot
from events import ChannelAdded, ChannelPriceChanged, ChannelStatsFailed, ChannelStatsUpdated
from events.base import Event, EventMetadata
from ops.standins import BotApiStandIn
from store import EventStore, RecordedEvent
from tests.waiting import eventually

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)
TON = 1_000_000_000


def recorded(stream: str, event: Event, version: int = 1) -> RecordedEvent:
    return RecordedEvent(
        position=version,
        transaction_id=version,
        event_id=uuid.uuid4(),
        stream=stream,
        version=version,
        type=type(event).__name__,
        schema_version=1,
        event=event,
        metadata=EventMetadata(),
        recorded_at=NOW,
    )


def state_with(actor: ChannelAnalytics, *channels: str) -> AnalyticsState:
    state = actor.initial_state()
    for channel in channels:
        added = ChannelAdded(channel=channel, added_by=7, added_at=NOW)
        state = actor.evolve(state, recorded(channel_stream(channel), added))
    return state


def test_active_subscribers_is_the_floor_of_the_share() -> None:
    share = Fraction(45, 100)
    assert active_subscribers(1000, share) == 450
    assert active_subscribers(3, share) == 1
    assert active_subscribers(0, share) == 0


def test_stream_names() -> None:
    assert channel_stream("@Crypto_News") == "channel-crypto_news"
    assert channel_stream("-1001234") == "channel--1001234"


def test_first_measurement_sets_stats_and_price() -> None:
    actor = ChannelAnalytics(Settings(), telegram=None)
    state = state_with(actor, "@news_channel")
    emits = actor.decide(
        state,
        ChannelMeasured(channel="@news_channel", subscribers=10_000, problem=None, measured_at=NOW),
    )
    assert [type(e.event) for e in emits] == [ChannelStatsUpdated, ChannelPriceChanged]
    stats, price = emits[0].event, emits[1].event
    assert isinstance(stats, ChannelStatsUpdated)
    assert isinstance(price, ChannelPriceChanged)
    assert (stats.subscribers, stats.active_subscribers) == (10_000, 4_500)
    assert price.new_price_nanotons == 4_500_000_000
    assert price.old_price_nanotons is None
    assert {e.stream for e in emits} == {"channel-news_channel"}


def test_price_changed_only_when_the_price_moves() -> None:
    actor = ChannelAnalytics(Settings(), telegram=None)
    state = state_with(actor, "@news_channel")
    first = ChannelMeasured(
        channel="@news_channel", subscribers=10_000, problem=None, measured_at=NOW
    )
    for version, emit in enumerate(actor.decide(state, first), start=2):
        state = actor.evolve(state, recorded(emit.stream, emit.event, version))
    # 10,010 subscribers: 4,504 active, 4.504 TON rounds up to 4.51: the price moves.
    moved = actor.decide(
        state,
        ChannelMeasured(channel="@news_channel", subscribers=10_010, problem=None, measured_at=NOW),
    )
    assert [type(e.event) for e in moved] == [ChannelStatsUpdated, ChannelPriceChanged]
    same = actor.decide(
        state,
        ChannelMeasured(channel="@news_channel", subscribers=10_001, problem=None, measured_at=NOW),
    )
    assert [type(e.event) for e in same] == [ChannelStatsUpdated]


def test_a_problem_is_recorded_for_that_channel_only() -> None:
    actor = ChannelAnalytics(Settings(), telegram=None)
    state = state_with(actor, "@news_channel", "@other_channel")
    problem = ChatProblem(
        kind="forbidden",
        error_code=403,
        description="Forbidden: bot is not a member of the channel chat",
        retry_after=None,
    )
    emits = actor.decide(
        state,
        ChannelMeasured(
            channel="@news_channel", subscribers=None, problem=problem, measured_at=NOW
        ),
    )
    assert len(emits) == 1
    failed = emits[0].event
    assert isinstance(failed, ChannelStatsFailed)
    assert (failed.kind, failed.error_code) == ("forbidden", 403)
    assert emits[0].stream == "channel-news_channel"


def test_an_unregistered_channel_is_ignored() -> None:
    actor = ChannelAnalytics(Settings(), telegram=None)
    emits = actor.decide(
        actor.initial_state(),
        ChannelMeasured(channel="@nobody_here", subscribers=5, problem=None, measured_at=NOW),
    )
    assert emits == ()


# -- against the Bot API stand-in ------------------------------------------------------------


@contextlib.asynccontextmanager
async def analytics(
    store: EventStore, bot_api: BotApiStandIn
) -> AsyncIterator[tuple[ActorRunner[AnalyticsState], ManualClock]]:
    """The actor on a manual clock that runs short waits (pacing, retry_after) at once and
    never reaches the next 6-hourly tick."""
    clock = ManualClock(NOW)

    async def run_short_waits() -> None:
        for _ in range(100_000):
            await anyio.sleep(0.005)
            wake = clock.next_wake()
            if wake is not None and wake <= 60:
                await clock.advance(wake)

    async with (
        TelegramClient(make_bot(bot_api.token, bot_api.url)) as telegram,
        anyio.create_task_group() as tg,
    ):
        actor = ChannelAnalytics(Settings(analytics_interval=6 * 3600), telegram=telegram)
        runner = ActorRunner(actor, store, clock, node="node-a")
        await tg.start(runner.run)
        tg.start_soon(run_short_waits)
        yield runner, clock
        tg.cancel_scope.cancel()


async def add(store: EventStore, *channels: str) -> None:
    for channel in channels:
        await store.append(
            channel_stream(channel), [ChannelAdded(channel=channel, added_by=7, added_at=NOW)]
        )


async def stream_types(store: EventStore, channel: str) -> list[str]:
    return [r.type for r in await store.read_stream(channel_stream(channel))]


async def test_each_channel_is_measured_and_one_failure_stops_nothing(store: EventStore) -> None:
    async with BotApiStandIn() as bot_api:
        bot_api.set_member_count("@news_channel", 10_000)
        bot_api.set_member_count("@kicked_channel", 50)
        bot_api.set_member_count("@busy_channel", 2_000)
        bot_api.set_member_count("@last_channel", 100)
        bot_api.fail_chat("@kicked_channel", 403, "Forbidden: bot was kicked from the channel chat")
        bot_api.fail_chat("@busy_channel", 429, retry_after=3, times=1)  # once, then fine
        await add(store, "@news_channel", "@missing_channel", "@kicked_channel", "@busy_channel")
        await add(store, "@last_channel")
        async with analytics(store, bot_api) as (_, clock):
            # The first tick is due at once (none recorded yet).
            async def measured() -> bool:
                return "ChannelStatsUpdated" in await stream_types(store, "@last_channel")

            await eventually(measured)
            waited = clock.monotonic()
        assert await stream_types(store, "@news_channel") == [
            "ChannelAdded",
            "ChannelStatsUpdated",
            "ChannelPriceChanged",
        ]
        missing = await store.read_stream(channel_stream("@missing_channel"))
        assert isinstance(missing[-1].event, ChannelStatsFailed)
        assert (missing[-1].event.kind, missing[-1].event.error_code) == ("bad_request", 400)
        assert "chat not found" in missing[-1].event.description
        kicked = await store.read_stream(channel_stream("@kicked_channel"))
        assert isinstance(kicked[-1].event, ChannelStatsFailed)
        assert kicked[-1].event.kind == "forbidden"
        # The 429 was waited out (retry_after 3 s, on the actor's clock) and asked again.
        busy = await store.read_stream(channel_stream("@busy_channel"))
        assert isinstance(busy[1].event, ChannelStatsUpdated)
        assert busy[1].event.active_subscribers == 900
        assert waited >= 3


async def test_a_persistent_429_is_recorded_with_retry_after(store: EventStore) -> None:
    async with BotApiStandIn() as bot_api:
        bot_api.set_member_count("@busy_channel", 2_000)
        bot_api.fail_chat("@busy_channel", 429, retry_after=5)  # until healed
        await add(store, "@busy_channel")
        async with analytics(store, bot_api):

            async def recorded() -> bool:
                return "ChannelStatsFailed" in await stream_types(store, "@busy_channel")

            await eventually(recorded)
        busy = await store.read_stream(channel_stream("@busy_channel"))
        failed = busy[-1].event
        assert isinstance(failed, ChannelStatsFailed)
        assert (failed.kind, failed.error_code, failed.retry_after) == ("rate_limited", 429, 5)
