"""TelegramClient on a real aiogram Bot, pointed at the Bot API stand-in over real sockets.

Flood-control waits and backoff go through an injected fake sleep, so they cost nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import anyio
import pytest
from aiogram import Bot
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods import GetMe

from actors.telegram import (
    OVERALL_SCOPE,
    ChatProblem,
    TelegramClient,
    TelegramRates,
    TelegramUnavailable,
    call_scopes,
    chat_problem,
    make_bot,
    pause_scopes,
)
from events import environment
from events.errors import ConfigError, I3laniError
from ops.standins import BotApiFaultMode, BotApiStandIn, TelegramLimits
from store.flow import FlowTable, Limit, RateLimiter, Scope
from store.flow.memory import MemoryFlowTable
from store.memory import MemoryLog
from tests.waiting import FakeSleep

# Parametrized async tests need anyio_backend in their closure: otherwise anyio's plugin
# re-creates them at collection time, dropping their parameters.
pytestmark = pytest.mark.usefixtures("anyio_backend")

SECRET = "AAHk-secret-part-of-the-token_42"
TOKEN = f"7012345678:{SECRET}"
CHANNEL = -1001234567890
ADMINS = [111, 222, 333]


@pytest.fixture
async def bot_api() -> AsyncIterator[BotApiStandIn]:
    async with BotApiStandIn(token=TOKEN) as standin:
        yield standin


@pytest.fixture
def fake_sleep() -> FakeSleep:
    return FakeSleep()


@pytest.fixture
async def telegram(bot_api: BotApiStandIn, fake_sleep: FakeSleep) -> AsyncIterator[TelegramClient]:
    async with TelegramClient(make_bot(TOKEN, bot_api.url), sleep=fake_sleep, timeout=5) as client:
        yield client


@contextmanager
def no_token_in(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    assert SECRET not in caplog.text


# -- make_bot and getMe -----------------------------------------------------------------------


async def test_get_me_through_aiogram_against_the_stand_in(
    bot_api: BotApiStandIn, telegram: TelegramClient
) -> None:
    elapsed = await telegram.get_me()
    assert 0 <= elapsed < 5
    assert [call.method for call in bot_api.calls] == ["getMe"]


async def test_the_stand_in_user_parses_as_aiogram_user(bot_api: BotApiStandIn) -> None:
    bot = make_bot(TOKEN, bot_api.url)
    async with TelegramClient(bot):
        me = await bot(GetMe())
    assert me.is_bot
    assert me.id == 7012345678
    assert me.username == "i3lani_standin_bot"


async def test_a_wrong_token_is_unavailable_without_leaking_it(
    bot_api: BotApiStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    wrong_secret = "wrong-secret-value"
    with no_token_in(caplog):
        async with TelegramClient(make_bot(f"7012345678:{wrong_secret}", bot_api.url)) as client:
            with pytest.raises(TelegramUnavailable) as caught:
                await client.get_me()
    message = str(caught.value)
    assert "the bot token was refused" in message
    assert "Unauthorized" in message
    assert wrong_secret not in message
    assert caught.value.__cause__ is None
    assert isinstance(caught.value, I3laniError)
    assert bot_api.calls == []  # refused before dispatch


async def test_get_me_on_a_dead_server_is_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    async with BotApiStandIn(token=TOKEN) as gone:
        url = gone.url
    with no_token_in(caplog):
        async with TelegramClient(make_bot(TOKEN, url)) as client:
            with pytest.raises(TelegramUnavailable, match="check the network") as caught:
                await client.get_me()
    assert SECRET not in str(caught.value)


async def test_get_me_times_out(bot_api: BotApiStandIn) -> None:
    bot_api.fail("getMe", "timeout", hang=5)
    async with TelegramClient(make_bot(TOKEN, bot_api.url), timeout=0.2) as client:
        with anyio.fail_after(3), pytest.raises(TelegramUnavailable, match="timed out"):
            await client.get_me()


def test_make_bot_refuses_a_malformed_token_without_quoting_it() -> None:
    with pytest.raises(ConfigError, match="<digits>:<text>") as caught:
        make_bot("no-colon-secret-XYZ")
    assert "no-colon-secret-XYZ" not in str(caught.value)
    with pytest.raises(ConfigError, match="http"):
        make_bot(TOKEN, "127.0.0.1:8081")


def test_make_bot_targets_the_given_server() -> None:
    bot = make_bot(TOKEN, "http://127.0.0.1:9/")
    assert bot.session.api.api_url(TOKEN, "getMe") == f"http://127.0.0.1:9/bot{TOKEN}/getMe"
    default = make_bot(TOKEN)
    assert default.session.api.api_url(TOKEN, "getMe").startswith("https://api.telegram.org/")


# -- member_count -----------------------------------------------------------------------------


async def test_member_count_ok(bot_api: BotApiStandIn, telegram: TelegramClient) -> None:
    bot_api.set_member_count(CHANNEL, 1234)
    bot_api.set_member_count("@I3lani_News", 56)
    assert await telegram.member_count(CHANNEL) == 1234
    assert await telegram.member_count("@i3lani_news") == 56
    assert bot_api.calls[0].params == {"chat_id": str(CHANNEL)}


async def test_member_count_unknown_chat_is_bad_request(telegram: TelegramClient) -> None:
    assert await telegram.member_count(-100999) == ChatProblem(
        "bad_request", 400, "Bad Request: chat not found", None
    )


async def test_member_count_forbidden(bot_api: BotApiStandIn, telegram: TelegramClient) -> None:
    bot_api.set_member_count(CHANNEL, 10)
    bot_api.fail_chat(CHANNEL, 403)
    assert await telegram.member_count(CHANNEL) == ChatProblem(
        "forbidden", 403, "Forbidden: bot is not a member of the channel chat", None
    )


async def test_member_count_rate_limited_carries_retry_after(
    bot_api: BotApiStandIn, telegram: TelegramClient
) -> None:
    bot_api.set_member_count(CHANNEL, 10)
    bot_api.fail_chat(CHANNEL, 429, retry_after=7, times=1)
    problem = await telegram.member_count(CHANNEL)
    assert problem == ChatProblem("rate_limited", 429, "Too Many Requests: retry after 7", 7.0)
    assert await telegram.member_count(CHANNEL) == 10  # the fault was used up


@pytest.mark.parametrize("mode", ["500", "garbage"])
async def test_member_count_server_trouble_is_unavailable(
    bot_api: BotApiStandIn, telegram: TelegramClient, mode: BotApiFaultMode
) -> None:
    bot_api.set_member_count(CHANNEL, 10)
    bot_api.fail("getChatMemberCount", mode)
    problem = await telegram.member_count(CHANNEL)
    assert isinstance(problem, ChatProblem)
    assert problem.kind == "unavailable"
    assert problem.retry_after is None


async def test_member_count_timeout_is_unavailable(bot_api: BotApiStandIn) -> None:
    bot_api.set_member_count(CHANNEL, 10)
    bot_api.fail("getChatMemberCount", "timeout", hang=5)
    async with TelegramClient(make_bot(TOKEN, bot_api.url), timeout=0.2) as client:
        with anyio.fail_after(3):
            problem = await client.member_count(CHANNEL)
    assert problem == ChatProblem("unavailable", None, "request timed out", None)


async def test_member_count_with_a_refused_token_is_unavailable(bot_api: BotApiStandIn) -> None:
    async with TelegramClient(make_bot("7012345678:other", bot_api.url)) as client:
        problem = await client.member_count(CHANNEL)
    assert problem == ChatProblem("unavailable", 401, "Unauthorized", None)


# -- send_message and notify_all --------------------------------------------------------------


async def test_send_message_delivers(bot_api: BotApiStandIn, telegram: TelegramClient) -> None:
    assert await telegram.send_message(111, "payment 42 confirmed")
    assert bot_api.sent == [(111, "payment 42 confirmed")]


async def test_send_message_waits_out_flood_control(
    bot_api: BotApiStandIn, telegram: TelegramClient, fake_sleep: FakeSleep
) -> None:
    bot_api.fail_chat(111, 429, retry_after=3, times=1)
    assert await telegram.send_message(111, "hello")
    assert fake_sleep.delays == [3.0]
    assert bot_api.sent == [(111, "hello")]
    assert [call.method for call in bot_api.calls] == ["sendMessage", "sendMessage"]


async def test_send_message_gives_up_on_persistent_flood_control(
    bot_api: BotApiStandIn, telegram: TelegramClient, fake_sleep: FakeSleep
) -> None:
    bot_api.fail_chat(111, 429, retry_after=2)
    assert not await telegram.send_message(111, "hello")
    assert fake_sleep.delays == [2.0, 2.0]  # one send and two retries
    assert bot_api.sent == []


async def test_send_message_refuses_a_wait_longer_than_allowed(
    bot_api: BotApiStandIn, fake_sleep: FakeSleep
) -> None:
    bot_api.fail_chat(111, 429, retry_after=600, times=1)
    bot = make_bot(TOKEN, bot_api.url)
    async with TelegramClient(bot, sleep=fake_sleep, max_retry_after=60) as client:
        assert not await client.send_message(111, "hello")
    assert fake_sleep.delays == []


async def test_send_message_retries_a_server_error(
    bot_api: BotApiStandIn, telegram: TelegramClient, fake_sleep: FakeSleep
) -> None:
    bot_api.fail("sendMessage", "500")
    assert await telegram.send_message(111, "hello")
    assert fake_sleep.delays == [1.0]
    assert bot_api.sent == [(111, "hello")]


async def test_send_message_does_not_retry_a_refusal(
    bot_api: BotApiStandIn, telegram: TelegramClient, fake_sleep: FakeSleep
) -> None:
    bot_api.fail_chat(222, 403, "Forbidden: bot was blocked by the user")
    assert not await telegram.send_message(222, "hello")
    assert not await telegram.send_message(333, "")  # 400: message text is empty
    assert fake_sleep.delays == []
    assert len(bot_api.calls) == 2


async def test_notify_all_continues_past_a_blocked_admin(
    bot_api: BotApiStandIn, telegram: TelegramClient, caplog: pytest.LogCaptureFixture
) -> None:
    bot_api.fail_chat(222, 403, "Forbidden: bot was blocked by the user")
    with no_token_in(caplog):
        result = await telegram.notify_all([*ADMINS, 111], "reward paid")
    assert result == {111: True, 222: False, 333: True}
    assert bot_api.sent == [(111, "reward paid"), (333, "reward paid")]
    [failure] = [r for r in caplog.records if r.__dict__.get("action") == "telegram_send_failed"]
    assert "222" in failure.getMessage()
    assert "blocked by the user" in failure.getMessage()


async def test_the_token_never_reaches_the_logs(
    bot_api: BotApiStandIn, fake_sleep: FakeSleep, caplog: pytest.LogCaptureFixture
) -> None:
    bot_api.set_member_count(CHANNEL, 5)
    bot_api.fail_chat(CHANNEL, 429, retry_after=1, times=1)
    bot_api.fail("sendMessage", "garbage", times=None)
    with no_token_in(caplog):
        async with TelegramClient(make_bot(TOKEN, bot_api.url), sleep=fake_sleep) as client:
            await client.member_count(CHANNEL)
            assert not await client.send_message(111, "hello")
        async with BotApiStandIn(token=TOKEN) as gone:
            url = gone.url
        async with TelegramClient(make_bot(TOKEN, url), sleep=fake_sleep) as client:
            assert not await client.send_message(111, "hello")
            problem = await client.member_count(CHANNEL)
    assert isinstance(problem, ChatProblem)
    assert SECRET not in problem.description
    assert any(r.__dict__.get("action") == "telegram_send_retry" for r in caplog.records)


async def test_a_description_quoting_the_token_is_redacted(
    bot_api: BotApiStandIn, telegram: TelegramClient
) -> None:
    bot_api.fail_chat(CHANNEL, 400, f"Bad Request: wrong url /bot{TOKEN}/x")
    problem = await telegram.member_count(CHANNEL)
    assert isinstance(problem, ChatProblem)
    assert problem.description == "Bad Request: wrong url /bot<token>/x"


def test_chat_problem_keeps_telegrams_own_flood_description() -> None:
    exc = TelegramRetryAfter(GetMe(), "Too Many Requests: retry after 9", retry_after=9)
    assert chat_problem(exc) == ChatProblem(
        "rate_limited", 429, "Too Many Requests: retry after 9", 9.0
    )
    with pytest.raises(TypeError):
        chat_problem(ValueError("not telegram"))


async def test_the_client_wraps_the_bot_and_closes_idempotently(bot_api: BotApiStandIn) -> None:
    bot: Bot = make_bot(TOKEN, bot_api.url)
    async with TelegramClient(bot) as client:
        assert client.bot is bot
        await client.get_me()
    await client.aclose()  # already closed: nothing to do


# -- flow control -------------------------------------------------------------------------------

RATES = TelegramRates(overall=Limit(5, 1.0), chat=Limit(1, 0.4), group=Limit(2, 60.0))


def test_a_call_takes_from_the_bot_and_from_its_chat() -> None:
    rates = TelegramRates()
    assert call_scopes(rates) == [Scope("telegram", Limit(30, 1.0))]
    assert call_scopes(rates, 7) == [
        Scope("telegram", Limit(30, 1.0)),
        Scope("telegram-chat:7", Limit(1, 1.0)),
    ]
    assert call_scopes(rates, "-1001")[1] == Scope("telegram-group:-1001", Limit(20, 60.0))
    assert call_scopes(rates, "@Some_Channel")[1].name == "telegram-group:@some_channel"
    assert call_scopes(TelegramRates(overall=None, chat=None), 7) == []
    # A 429 about a group pauses the group; any other, the whole bot and the chat.
    assert [s.name for s in pause_scopes(rates, -5)] == ["telegram-group:-5"]
    assert [s.name for s in pause_scopes(rates, 5)] == ["telegram", "telegram-chat:5"]
    assert [s.name for s in pause_scopes(rates)] == ["telegram"]


def _flowing(bot_api: BotApiStandIn, table: FlowTable, rates: TelegramRates = RATES) -> Bot:
    """A Bot kept to ``rates`` in ``table``. The margin covers how much longer one request
    takes than another from its grant to the stand-in (more on a machine the whole suite
    loads), so that arrivals keep to the limits the grants kept to."""
    return make_bot(TOKEN, bot_api.url, limiter=RateLimiter(table, margin=0.15), rates=rates)


async def _warm(bot: Bot) -> None:
    """A first call: a new session's first request takes longer than the next ones."""
    await bot.get_me()


@pytest.mark.memory
async def test_every_call_waits_its_turn_in_the_shared_limits(bot_api: BotApiStandIn) -> None:
    table = MemoryFlowTable.of(MemoryLog())
    async with TelegramClient(_flowing(bot_api, table)) as client:
        await _warm(client.bot)
        started = environment.monotonic()
        async with anyio.create_task_group() as tg:
            for chat in range(1, 11):
                tg.start_soon(client.send_message, chat, "broadcast")
        took = environment.monotonic() - started
    assert len(bot_api.sent) == 10
    assert took >= 1.0  # ten at five a second: two windows at least
    # What the stand-in saw, second by second, is checked without a clock's noise by the
    # simulated broadcast (tests/ops/test_flow_simulated.py).


@pytest.mark.memory
async def test_a_chat_waits_for_its_own_window(bot_api: BotApiStandIn) -> None:
    async with TelegramClient(_flowing(bot_api, MemoryFlowTable.of(MemoryLog()))) as client:
        await _warm(client.bot)
        assert await client.send_message(7, "one")
        assert await client.send_message(7, "two")
    first, second = (call.at for call in bot_api.calls[1:])
    assert second - first >= 0.39


@pytest.mark.memory
async def test_the_request_timeout_does_not_count_the_wait(bot_api: BotApiStandIn) -> None:
    rates = TelegramRates(overall=None, chat=Limit(1, 0.6))
    bot = _flowing(bot_api, MemoryFlowTable.of(MemoryLog()), rates)
    async with TelegramClient(bot, timeout=0.3) as client:
        assert await client.deliver(7, "one") is None
        assert await client.deliver(7, "two") is None  # waited 0.6 s, then 0.3 s to send
    assert [m.text for m in bot_api.sent] == ["one", "two"]


@pytest.mark.memory
async def test_the_bots_own_calls_wait_too(bot_api: BotApiStandIn) -> None:
    """The dispatcher's replies (the Bot used directly, as aiogram's handlers do) go through
    the same limits as the client's calls."""
    bot = _flowing(bot_api, MemoryFlowTable.of(MemoryLog()))
    try:
        await _warm(bot)
        await bot.send_message(chat_id=9, text="reply one")
        await bot.send_message(chat_id=9, text="reply two")
    finally:
        await bot.session.close()
    first, second = (call.at for call in bot_api.calls[1:])
    assert second - first >= 0.39


@pytest.mark.memory
async def test_a_429_pauses_the_whole_bot_on_every_node(
    bot_api: BotApiStandIn, fake_sleep: FakeSleep
) -> None:
    table = MemoryFlowTable.of(MemoryLog())
    bot_api.fail_chat(111, 429, retry_after=2, times=1)
    bot_api.fail_chat(-100, 429, retry_after=30, times=1)
    bot = _flowing(bot_api, table)
    async with TelegramClient(bot, sleep=fake_sleep, max_retry_after=10) as client:
        assert not await client.send_message(-100, "to a group")  # 30 s: too long to wait
        usage = {u.scope: u for u in (await table.usage()).scopes}
        assert usage["telegram-group:-100"].paused_for > 25
        assert usage[OVERALL_SCOPE].paused_for == 0  # a group's 429 is the group's own
        delivered = await client.send_message(111, "to an admin")
    assert fake_sleep.delays == [2.0]
    assert delivered
    usage = {u.scope: u for u in (await table.usage()).scopes}
    assert usage[OVERALL_SCOPE].pauses == 1
    assert usage["telegram-chat:111"].pauses == 1
    # Another node, on the same table, waits the pause out before its own call.
    other = _flowing(bot_api, table)
    try:
        await other.send_message(chat_id=222, text="from another node")
    finally:
        await other.session.close()
    gaps = [call.at for call in bot_api.calls if call.params.get("chat_id") in ("111", "222")]
    assert gaps[-1] - gaps[0] >= 1.9


@pytest.mark.memory
async def test_the_stand_in_holds_telegrams_limits(bot_api: BotApiStandIn) -> None:
    bot_api.enforce_limits(TelegramLimits(overall=3, per_chat=1, per_group=2))
    async with TelegramClient(make_bot(TOKEN, bot_api.url), sleep=FakeSleep()) as client:
        results = [await client.deliver(chat, "x") for chat in (1, 2, 3, 4)]
    assert [r is None for r in results] == [True, True, True, False]
    assert bot_api.throttled() == 3  # the fourth, and its two retries
    assert results[3] is not None
    assert results[3].retry_after == 1
    assert [call.status for call in bot_api.calls][:3] == [200, 200, 200]
