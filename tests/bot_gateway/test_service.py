"""The gateway's store operations under concurrency: requests that append to the same user's
stream at once (a referral link shared in a group, channels added in a burst) all count."""

from __future__ import annotations

import anyio

from actors.config import Settings
from bot_gateway import Gateway
from bot_gateway.events import member_stream
from bot_gateway.service import TelegramUser
from events import PaymentCreated, RewardEarned
from events.streams import user_stream
from store import EventStore

WALLET = "EQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla9nE"
REFERRER = 7


async def test_new_users_joining_through_one_link_at_once_are_all_registered(
    store: EventStore,
) -> None:
    gateway = Gateway(store, Settings(wallet=WALLET))
    await gateway.start(TelegramUser(REFERRER), None)
    newcomers = range(100, 130)
    replies: dict[int, str] = {}

    async def join(user: int) -> None:
        replies[user] = await gateway.start(TelegramUser(user), f"ref_{REFERRER}")

    async with anyio.create_task_group() as tg:
        for user in newcomers:
            tg.start_soon(join, user)

    for user in newcomers:
        assert "You are registered" in replies[user], replies[user]
        assert f"through user {REFERRER}'s link" in replies[user], replies[user]
        assert await store.stream_version(member_stream(user)) == 1
    earned = [
        r.event
        for r in await store.read_stream(user_stream(REFERRER))
        if isinstance(r.event, RewardEarned)
    ]
    assert sorted(e.source for e in earned) == sorted(f"user:{u}" for u in newcomers)

    # a repeated /start of a registered user still earns nothing
    again = await gateway.start(TelegramUser(100), f"ref_{REFERRER}")
    assert again.startswith("Welcome back"), again
    assert await store.stream_version(user_stream(REFERRER)) == len(earned)


async def test_channels_added_by_one_user_at_once_are_all_registered(store: EventStore) -> None:
    gateway = Gateway(store, Settings(wallet=WALLET))
    channels = [f"@burst_channel_{n}" for n in range(20)]
    replies: dict[str, str] = {}

    async def add(channel: str) -> None:
        replies[channel] = await gateway.add_channel(REFERRER, channel)

    async with anyio.create_task_group() as tg:
        for channel in channels:
            tg.start_soon(add, channel)

    for channel in channels:
        assert replies[channel].startswith(f"{channel} is registered"), replies[channel]
    earned = [
        r.event
        for r in await store.read_stream(user_stream(REFERRER))
        if isinstance(r.event, RewardEarned)
    ]
    assert len(earned) == len(channels)
    assert {e.reason for e in earned} == {"channel_addition"}
    again = await gateway.add_channel(REFERRER, channels[0])
    assert "is registered to you already" in again, again
    other = await gateway.add_channel(REFERRER + 1, channels[0])
    assert "already registered; each channel can be added once" in other, other


async def test_one_message_delivered_twice_at_once_creates_one_payment(store: EventStore) -> None:
    # Two gateways (a deploy overlap) handle the same redelivered message concurrently.
    first, second = Gateway(store, Settings(wallet=WALLET)), Gateway(store, Settings(wallet=WALLET))
    plan = Settings(wallet=WALLET).plans[0]
    made: list[PaymentCreated] = []

    async def deliver(gateway: Gateway) -> None:
        made.append(await gateway.create_payment(REFERRER, plan, request=f"{REFERRER}/77"))

    async with anyio.create_task_group() as tg:
        for gateway in (first, second, first, second):
            tg.start_soon(deliver, gateway)

    assert len({created.payment_id for created in made}) == 1
    created = [
        r.event
        async for r in store.read_all(category="payment")
        if isinstance(r.event, PaymentCreated)
    ]
    assert created == [made[0]]
    assert made[0].user_id == REFERRER
    assert made[0].plan == plan.name
