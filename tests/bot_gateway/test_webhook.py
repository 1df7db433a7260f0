"""The gateway driven through its webhook: real Update JSON in, Bot API calls and events out."""

from __future__ import annotations

import functools
import re
import uuid
from datetime import UTC, datetime, timedelta

import anyio
import httpx
from aiogram import Bot
from aiohttp.test_utils import TestClient, TestServer

from actors.config import Settings
from actors.ton import Address
from bot_gateway import Gateway, UserRegistered, build_app, member_stream, run_webhook
from events import (
    ChannelAdded,
    HealthCheck,
    HealthChecked,
    OperatorCommandIssued,
    PaymentCreated,
    RewardCredited,
    RewardEarned,
)
from ops.standins import BotApiStandIn
from store import EventStore
from store.leases import Leases
from tests.bot_gateway.conftest import (
    ADMIN,
    PATH,
    SECRET,
    WALLET,
    Telegram,
    message_update,
    photo_update,
)
from tests.faults.pgcontrol import free_port

TON = 1_000_000_000


async def types(store: EventStore, stream: str) -> list[str]:
    return [r.type for r in await store.read_stream(stream)]


async def reward_sources(store: EventStore, user_id: int) -> list[str]:
    return [
        r.event.source
        for r in await store.read_stream(f"user-{user_id}")
        if isinstance(r.event, RewardEarned)
    ]


async def log_size(store: EventStore) -> int:
    return sum([1 async for _ in store.read_all()])


# -- the webhook itself ---------------------------------------------------------------------


async def test_a_wrong_or_missing_secret_gets_401_and_nothing_happens(
    telegram: Telegram, store: EventStore, bot_api: BotApiStandIn
) -> None:
    update = message_update(5, "/start")
    assert await telegram.post(update, secret="not-the-secret") == 401
    assert await telegram.post(update, secret=None) == 401
    assert bot_api.sent == []
    assert await log_size(store) == 0
    assert await telegram.post(update) == 200
    assert await types(store, member_stream(5)) == ["UserRegistered"]


async def test_health_route(telegram: Telegram) -> None:
    response = await telegram.client.get("/healthz")
    assert response.status == 200
    assert await response.text() == "ok"


async def test_health_answers_503_until_the_webhook_is_registered(
    gateway: Gateway, bot: Bot, bot_api: BotApiStandIn
) -> None:
    """Render moves traffic to an instance once its health check passes: only after Telegram
    has been told where to deliver (regression: the deploy rehearsal read no ``setWebhook``
    from an instance already healthy)."""
    bot_api.fail("setWebhook", "timeout", hang=2.0)  # Telegram slow to answer
    port = free_port()
    health = f"http://127.0.0.1:{port}/healthz"
    seen: list[tuple[int, str, str]] = []  # status, text, the webhook then registered
    async with anyio.create_task_group() as tg, httpx.AsyncClient(timeout=5) as client:
        tg.start_soon(
            functools.partial(
                run_webhook,
                gateway,
                bot,
                host="127.0.0.1",
                port=port,
                secret=SECRET,
                path=PATH,
                public_url="https://bot.example.test",
            )
        )
        with anyio.fail_after(10):
            while not seen or seen[-1][0] != 200:
                try:
                    response = await client.get(health)
                except httpx.TransportError:
                    await anyio.sleep(0.02)  # not listening yet
                    continue
                seen.append((response.status_code, response.text, bot_api.webhook_url))
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    hook = f"https://bot.example.test{PATH}"
    assert seen[0] == (503, "starting: the webhook is not registered yet", "")
    assert seen[-1] == (200, "ok", hook)
    assert {entry[2] for entry in seen if entry[0] == 200} == {hook}


# -- /start and referrals ---------------------------------------------------------------------


async def test_start_registers_once(telegram: Telegram, store: EventStore) -> None:
    reply = await telegram.say(5, "/start", username="alice")
    assert "You are registered" in reply
    [recorded] = await store.read_stream(member_stream(5))
    assert isinstance(recorded.event, UserRegistered)
    assert recorded.event.user_id == 5
    assert recorded.event.username == "alice"
    assert recorded.event.referred_by is None
    assert recorded.metadata.caused_by == "user:5"
    assert "Welcome back" in await telegram.say(5, "/start")
    assert await types(store, member_stream(5)) == ["UserRegistered"]


async def test_a_referral_rewards_the_referrer_once_per_referred_user(
    telegram: Telegram, store: EventStore
) -> None:
    await telegram.say(10, "/start")
    reply = await telegram.say(20, "/start ref_10")
    assert "user 10's link" in reply
    assert "0.1 TON" in reply
    [earned] = await store.read_stream("user-10")
    assert isinstance(earned.event, RewardEarned)
    assert earned.event.reason == "referral"
    assert earned.event.source == "user:20"
    assert earned.event.user_id == 10
    assert earned.event.amount_nanotons == TON // 10
    registration = (await store.read_stream(member_stream(20)))[0].event
    assert isinstance(registration, UserRegistered)
    assert registration.referred_by == 10

    size = await log_size(store)
    repeat = await telegram.say(20, "/start ref_10")
    assert "already registered" in repeat
    assert "referrals count for new users only" in repeat
    assert await log_size(store) == size

    await telegram.say(30, "/start ref_10")  # another new user: another reward
    assert await reward_sources(store, 10) == ["user:20", "user:30"]


async def test_self_referral_and_unknown_referrers_earn_nothing(
    telegram: Telegram, store: EventStore
) -> None:
    reply = await telegram.say(40, "/start ref_40")
    assert "cannot refer yourself" in reply
    assert await types(store, member_stream(40)) == ["UserRegistered"]
    assert await types(store, "user-40") == []

    reply = await telegram.say(41, "/start ref_777")
    assert "names no registered user" in reply
    assert await types(store, "user-777") == []

    reply = await telegram.say(42, "/start promo_summer")
    assert "not one I know" in reply
    assert "registered anyway" in reply
    assert await log_size(store) == 3  # the three registrations, nothing else


# -- /subscribe -------------------------------------------------------------------------------


async def test_subscribe_creates_a_payment_and_explains_how_to_pay(
    telegram: Telegram, store: EventStore
) -> None:
    before = datetime.now(UTC)
    reply = await telegram.say(5, "/subscribe week")
    [recorded] = await store.read_stream("payment-1")
    created = recorded.event
    assert isinstance(created, PaymentCreated)
    assert created.payment_id == 1
    assert created.user_id == 5
    assert created.plan == "week"
    assert created.amount_nanotons == TON
    assert created.wallet == WALLET
    assert created.memo == "i3lani_1"
    assert before <= created.created_at <= datetime.now(UTC)
    assert created.expires_at - created.created_at == timedelta(hours=1)
    friendly = Address.parse(WALLET).to_friendly(url_safe=True)
    assert "Send exactly 1 TON" in reply
    assert friendly in reply
    assert "i3lani_1" in reply
    assert f"ton://transfer/{friendly}?amount={TON}&text=i3lani_1" in reply

    await telegram.say(6, "/subscribe MONTH")
    second = (await store.read_stream("payment-2"))[0].event
    assert isinstance(second, PaymentCreated)
    assert second.amount_nanotons == 3 * TON
    assert second.memo == "i3lani_2"


async def test_payment_ids_continue_after_the_largest_in_the_log(
    telegram: Telegram, store: EventStore
) -> None:
    now = datetime.now(UTC)
    await store.append(
        "payment-41",
        [
            PaymentCreated(
                payment_id=41,
                user_id=1,
                plan="week",
                amount_nanotons=TON,
                wallet=WALLET,
                memo="i3lani_41",
                created_at=now,
                expires_at=now + timedelta(hours=1),
            )
        ],
    )
    reply = await telegram.say(5, "/subscribe week")
    assert "i3lani_42" in reply
    assert await types(store, "payment-42") == ["PaymentCreated"]


async def test_a_payment_id_taken_meanwhile_is_skipped(
    telegram: Telegram, store: EventStore
) -> None:
    await telegram.say(5, "/subscribe week")  # the gateway now expects id 2 next
    now = datetime.now(UTC)
    # Another gateway takes id 2 first.
    await store.append(
        "payment-2",
        [
            PaymentCreated(
                payment_id=2,
                user_id=1,
                plan="week",
                amount_nanotons=TON,
                wallet=WALLET,
                memo="i3lani_2",
                created_at=now,
                expires_at=now + timedelta(hours=1),
            )
        ],
    )
    reply = await telegram.say(5, "/subscribe week")
    assert "i3lani_3" in reply
    assert await types(store, "payment-2") == ["PaymentCreated"]
    assert await types(store, "payment-3") == ["PaymentCreated"]


async def test_a_redelivered_subscribe_gets_the_same_payment_not_a_second(
    telegram: Telegram, store: EventStore, bot_api: BotApiStandIn
) -> None:
    # Telegram sends an update again when the webhook's answer did not reach it; the
    # redelivery has a new update_id (sometimes the same) but the same message.
    update = message_update(5, "/subscribe week")
    assert await telegram.post(update) == 200
    again = dict(update, update_id=update["update_id"] + 1000)
    assert await telegram.post(again) == 200
    assert await telegram.post(update) == 200
    replies = [m.text for m in telegram.sent_to(5)]
    assert len(replies) == 3
    assert replies[0].startswith("Payment #1 for the week plan")
    assert replies[1] == replies[0]
    assert replies[2] == replies[0]
    assert await types(store, "payment-1") == ["PaymentCreated"]
    assert await types(store, "payment-2") == []
    # A new message asks for a new payment.
    reply = await telegram.say(5, "/subscribe week")
    assert reply.startswith("Payment #2 for the week plan")
    assert await types(store, "payment-2") == ["PaymentCreated"]


async def test_the_same_message_number_in_another_chat_is_another_request(
    telegram: Telegram, store: EventStore
) -> None:
    update = message_update(5, "/subscribe week")
    other = message_update(6, "/subscribe week")
    other["message"]["message_id"] = update["message"]["message_id"]
    assert await telegram.post(update) == 200
    assert await telegram.post(other) == 200
    assert await types(store, "payment-1") == ["PaymentCreated"]
    assert await types(store, "payment-2") == ["PaymentCreated"]
    second = (await store.read_stream("payment-2"))[0].event
    assert isinstance(second, PaymentCreated)
    assert second.user_id == 6


# -- /addchannel and /balance -----------------------------------------------------------------


async def test_addchannel_registers_a_channel_once_and_rewards_it(
    telegram: Telegram, store: EventStore
) -> None:
    reply = await telegram.say(5, "/addchannel @Ton_News")
    assert "@Ton_News is registered" in reply
    [added] = await store.read_stream("channel-ton_news")
    assert isinstance(added.event, ChannelAdded)
    assert added.event.channel == "@Ton_News"
    assert added.event.added_by == 5
    [earned] = await store.read_stream("user-5")
    assert isinstance(earned.event, RewardEarned)
    assert earned.event.reason == "channel_addition"
    assert earned.event.amount_nanotons == TON // 10

    size = await log_size(store)
    assert "already registered" in await telegram.say(6, "/addchannel @ton_news")
    # The user who added it, again (or the same update redelivered): told it is theirs.
    assert "registered to you already" in await telegram.say(5, "/addchannel https://t.me/ton_news")
    assert await log_size(store) == size


async def test_balance_sums_the_credited_rewards(telegram: Telegram, store: EventStore) -> None:
    assert await telegram.say(5, "/balance") == "Your balance: 0 TON."
    now = datetime.now(UTC)
    ids = [uuid.uuid4() for _ in range(3)]
    await store.append(
        "user-5",
        [
            RewardEarned(
                reward_id=reward_id,
                user_id=5,
                amount_nanotons=TON // 10,
                reason="referral",
                source=f"user:{n}",
                earned_at=now,
            )
            for n, reward_id in enumerate(ids, start=100)
        ],
    )
    await store.append(
        "user-5",
        [
            RewardCredited(
                reward_id=reward_id,
                user_id=5,
                amount_nanotons=TON // 10,
                balance_after_nanotons=TON // 10 * n,
                credited_at=now,
            )
            for n, reward_id in enumerate(ids[:2], start=1)
        ],
    )
    assert await telegram.say(5, "/balance") == ("Your balance: 0.2 TON. Pending credit: 0.1 TON.")


# -- bad input --------------------------------------------------------------------------------


async def test_bad_input_gets_a_clear_reply_and_appends_nothing(
    telegram: Telegram, store: EventStore
) -> None:
    cases = {
        "/subscribe": "Which plan?",
        "/subscribe yearly": "There is no plan 'yearly'. Plans: week (7 days, 1 TON)",
        "/addchannel": "Give the channel's public username",
        "/addchannel my channel!": "'my channel!' is not a channel username",
        "/addchannel @ab": "is not a channel username",
        "/subscribe " + "w" * 300: "That message is too long (311 characters; at most 256)",
        "/frobnicate now": "Unknown command /frobnicate. See /help",
        "hello there": "I answer commands only",
    }
    for text, expected in cases.items():
        reply = await telegram.say(5, text)
        assert expected in reply, (text, reply)
    assert await log_size(store) == 0

    before = len(telegram.bot_api.sent)
    assert await telegram.post(photo_update(5)) == 200
    assert [m.text for m in telegram.bot_api.sent[before:]] == [
        "I only understand text commands. See /help."
    ]
    assert await log_size(store) == 0


async def test_help_lists_admin_commands_for_admins_only(telegram: Telegram) -> None:
    user_help = await telegram.say(5, "/help")
    assert "/subscribe <plan>" in user_help
    assert "/restart" not in user_help
    assert "/restart <actor>" in await telegram.say(ADMIN, "/help")


# -- admins -----------------------------------------------------------------------------------


async def test_admin_commands_refuse_everyone_else(telegram: Telegram, store: EventStore) -> None:
    for text in ("/actors", "/restart PaymentMonitor", "/health"):
        reply = await telegram.say(5, text)
        assert reply == "Sorry, that command is for administrators only. See /help for yours."
    assert await log_size(store) == 0


async def test_restart_appends_an_operator_command(telegram: Telegram, store: EventStore) -> None:
    # No node runs PaymentMonitor: nothing would act on a restart, so nothing is recorded.
    reply = await telegram.say(ADMIN, "/restart PaymentMonitor")
    assert reply.startswith("no node runs PaymentMonitor (never started): nothing to restart")
    assert await store.read_stream("ops-commands") == []

    leases = Leases(store, "vm:1", ttl=60)
    assert await leases.acquire("PaymentMonitor") is not None
    assert await leases.acquire("RewardProcessor") is not None
    reply = await telegram.say(ADMIN, "/restart paymentmonitor stuck since noon")
    assert reply.startswith("restart PaymentMonitor: requested (command #1)")
    [recorded] = await store.read_stream("ops-commands")
    command = recorded.event
    assert isinstance(command, OperatorCommandIssued)
    assert command.action == "restart"
    assert command.actor == "PaymentMonitor"
    assert command.requested_by == f"telegram:{ADMIN}"
    assert command.reason == "stuck since noon"

    # The same message delivered again: the same command, not a second restart.
    update = message_update(ADMIN, "/restart RewardProcessor")
    assert await telegram.post(update) == 200
    assert await telegram.post(dict(update, update_id=update["update_id"] + 1000)) == 200
    first, second = (m.text for m in telegram.sent_to(ADMIN)[-2:])
    assert first.startswith("restart RewardProcessor: requested (command #2)"), first
    assert second == first
    assert await types(store, "ops-commands") == ["OperatorCommandIssued"] * 2

    reply = await telegram.say(ADMIN, "/restart Nobody")
    assert "There is no actor 'Nobody'" in reply
    assert "PaymentMonitor, RewardProcessor" in reply
    assert await types(store, "ops-commands") == ["OperatorCommandIssued"] * 2


async def test_actors_and_health_for_admins(telegram: Telegram, store: EventStore) -> None:
    actors = await telegram.say(ADMIN, "/actors")
    for name in ("PaymentMonitor", "RewardProcessor", "ChannelAnalytics", "Cleanup"):
        assert f"{name}: never started" in actors
    assert "No health check recorded yet" in await telegram.say(ADMIN, "/health")

    await store.append(
        "ops-health",
        [
            HealthChecked(
                healthy=False,
                checks=[
                    HealthCheck(name="database", ok=True, latency_ms=1.5),
                    HealthCheck(name="tonapi", ok=False, detail="HTTP 502"),
                ],
                checked_at=datetime.now(UTC) - timedelta(seconds=30),
            )
        ],
    )
    health = await telegram.say(ADMIN, "/health")
    assert re.match(r"FAILING \(checked 3\ds ago\)\n", health), health
    assert "ok   database" in health
    assert "FAIL tonapi HTTP 502" in health


async def test_a_failure_inside_a_handler_is_answered_not_redelivered(
    dsn: str, settings: Settings, bot: Bot, bot_api: BotApiStandIn
) -> None:
    unopened = EventStore(dsn)  # every read or append fails: as if PostgreSQL were gone
    app = build_app(Gateway(unopened, settings), bot, secret=SECRET, path=PATH)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        telegram = Telegram(client, bot_api)
        reply = await telegram.say(5, "/balance")  # asserts the 200: Telegram won't resend
    assert reply == "Sorry, something went wrong on our side. Please try again in a minute."
