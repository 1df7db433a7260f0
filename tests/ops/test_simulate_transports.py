"""The product's TonAPI and Telegram clients reaching the stand-ins in-process, with no socket.

Every test here runs with sockets and threads refused (``no_sockets``). The expectations are
those the wire suites (``tests/actors/test_tonapi_client.py``, ``test_telegram_client.py``)
assert over real sockets, and the recorded TonAPI sample in ``fixtures/tonapi/``: the same
stand-in state must give the same client-level result either way.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from aiogram.exceptions import TelegramNetworkError, TelegramRetryAfter
from aiogram.methods import GetMe
from aiohttp import web

from actors.telegram import ChatProblem, TelegramClient, TelegramUnavailable, make_bot
from actors.tonapi import TonApiClient, TonApiError, TonApiStatistics, TonApiUnavailable
from actors.tonapi_models import TonApiFormatError, decode_transactions
from events import environment
from ops.simulate.transports import (
    InProcessServer,
    InProcessSession,
    InProcessTransport,
)
from ops.standins import BotApiFaultMode, BotApiStandIn, TonApiFaultMode, TonApiStandIn
from tests.waiting import FakeSleep

# Parametrized async tests need anyio_backend in their closure: otherwise anyio's plugin
# re-creates them at collection time, dropping their parameters.
pytestmark = pytest.mark.usefixtures("anyio_backend", "no_sockets")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tonapi"
WALLET_RAW = "0:408da3b28b6c065a593e10391269baaa9c5f8caebc0c69d9f0aabbab2a99256b"
WALLET_FRIENDLY = "UQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla4QB"
PAYER_RAW = "0:ef59caea6ebbee8542839162aa654b76f416e712ce22752da647d7e22cf1097f"
API_KEY = "AE-test-key-0123456789"
SECRET = "AAHk-secret-part-of-the-token_42"
TOKEN = f"7012345678:{SECRET}"
CHANNEL = -1001234567890
ADMIN = 111


@pytest.fixture
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse every connect, bind and thread start while the test runs."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an in-process test opened a socket or started a thread")

    for name in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(threading.Thread, "start", refuse)


@pytest.fixture
def fake_sleep() -> FakeSleep:
    return FakeSleep()


@pytest.fixture
def tonapi() -> TonApiStandIn:
    return TonApiStandIn()


@pytest.fixture
async def tonapi_server(tonapi: TonApiStandIn) -> AsyncIterator[InProcessServer]:
    async with InProcessServer(tonapi.application(), host="tonapi.invalid") as server:
        yield server


def client_for(server: InProcessServer, sleep: FakeSleep, **kwargs: Any) -> TonApiClient:
    return TonApiClient(
        server.url,
        transport=InProcessTransport(server),
        sleep=sleep,
        rng=random.Random(7),
        **kwargs,
    )


def fill(tonapi: TonApiStandIn, count: int) -> list[dict[str, Any]]:
    return [
        tonapi.transfer(WALLET_RAW, source=PAYER_RAW, value=n + 1, comment=f"i3lani_{n}")
        for n in range(count)
    ]


# -- TonAPI: the same transactions as on the wire ---------------------------------------------


@pytest.mark.parametrize(
    "name", ["transactions_incoming_comment.json", "transaction_aborted_comment.json"]
)
async def test_recorded_transactions_decode_as_recorded(
    tonapi: TonApiStandIn, tonapi_server: InProcessServer, fake_sleep: FakeSleep, name: str
) -> None:
    recorded = (FIXTURES / name).read_bytes()
    for tx in json.loads(recorded)["transactions"]:
        tonapi.add_raw(WALLET_RAW, tx)
    async with client_for(tonapi_server, fake_sleep) as client:
        txs = await client.transactions_page(WALLET_RAW)
    assert txs == decode_transactions(recorded)


async def test_paging_gives_what_the_chain_holds(
    tonapi: TonApiStandIn, tonapi_server: InProcessServer, fake_sleep: FakeSleep
) -> None:
    fill(tonapi, 7)
    async with client_for(tonapi_server, fake_sleep, api_key=API_KEY) as client:
        txs = await client.transactions_since(WALLET_FRIENDLY, None, page_size=3)
        assert client.statistics() == TonApiStatistics(requests=3, retries=0)
    held = json.dumps({"transactions": tonapi.transactions(WALLET_RAW)}).encode()
    assert txs == decode_transactions(held)
    # The request as the stand-in saw it: the path decoded, the query, the key in the header.
    first, second, _ = tonapi.requests
    assert first.path == f"/v2/blockchain/accounts/{WALLET_FRIENDLY}/transactions"
    assert first.query == {"limit": "3", "sort_order": "asc"}
    assert second.query["after_lt"] == str(txs[2].lt)
    assert first.authorization == f"Bearer {API_KEY}"


async def test_the_answer_carries_the_wire_headers(
    tonapi: TonApiStandIn, tonapi_server: InProcessServer
) -> None:
    fill(tonapi, 1)
    transport = InProcessTransport(tonapi_server)
    async with httpx.AsyncClient(base_url=tonapi_server.url, transport=transport) as http:
        response = await http.get("/v2/status")
        missing = await http.get("/v2/nothing-here")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.headers["server"].startswith("Python/")
    assert response.headers["date"].endswith(" GMT")
    assert response.json()["rest_online"] is True
    assert response.reason_phrase == "OK"
    assert (missing.status_code, missing.text) == (404, "404: Not Found")


class SeededEnvironment:
    """A fixed clock and seeded randomness, as a simulation's environment gives."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def now(self) -> datetime:
        return datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)

    def monotonic(self) -> float:
        return 0.0

    def new_uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self._rng.getrandbits(128), version=4)

    def new_rng(self) -> random.Random:
        return random.Random(self._rng.getrandbits(64))


async def test_one_seed_one_chain_and_one_answer(fake_sleep: FakeSleep) -> None:
    bodies = []
    for _ in range(2):
        with environment.use(SeededEnvironment(42)):
            standin = TonApiStandIn()
            fill(standin, 3)
            async with (
                InProcessServer(standin.application(), host="tonapi.invalid") as server,
                httpx.AsyncClient(
                    base_url=server.url, transport=InProcessTransport(server)
                ) as http,
            ):
                response = await http.get(f"/v2/blockchain/accounts/{WALLET_RAW}/transactions")
        bodies.append((response.content, response.headers["date"]))
    assert bodies[0] == bodies[1]
    assert bodies[0][1] == "Thu, 02 Jan 2025 03:04:05 GMT"
    [first, *_] = decode_transactions(bodies[0][0])
    assert first.utime == int(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp())


# -- TonAPI: each fault, the same client-level outcome ------------------------------------------


async def test_429_with_retry_after_is_waited_then_succeeds(
    tonapi: TonApiStandIn, tonapi_server: InProcessServer, fake_sleep: FakeSleep
) -> None:
    fill(tonapi, 1)
    tonapi.fail("429", retry_after=3)
    tonapi.fail("429", retry_after=1000)
    async with client_for(tonapi_server, fake_sleep, backoff_max=8.0) as client:
        assert len(await client.transactions_page(WALLET_RAW)) == 1
    assert fake_sleep.delays == [3.0, 32.0]


async def test_5xx_storm_raises_unavailable_after_the_retries(
    tonapi: TonApiStandIn, tonapi_server: InProcessServer, fake_sleep: FakeSleep
) -> None:
    tonapi.fail("500", times=None, error="database is on fire")
    async with client_for(tonapi_server, fake_sleep, retries=3) as client:
        with pytest.raises(TonApiUnavailable, match="HTTP 500: database is on fire") as caught:
            await client.transactions_since(WALLET_RAW, 10)
        assert client.statistics() == TonApiStatistics(requests=4, retries=3)
    assert "\n" not in str(caught.value)
    tonapi.heal()
    tonapi.fail("502", times=None)
    async with client_for(tonapi_server, fake_sleep, retries=1) as client:
        with pytest.raises(TonApiUnavailable, match=r"HTTP 502; try again later"):
            await client.transactions_page(WALLET_RAW)


async def test_a_hang_longer_than_the_timeout_times_out(
    tonapi: TonApiStandIn, tonapi_server: InProcessServer, fake_sleep: FakeSleep
) -> None:
    tonapi.fail("timeout", times=None, hang=30)
    async with client_for(tonapi_server, fake_sleep, timeout=0.05, retries=1) as client:
        with anyio.fail_after(5):
            with pytest.raises(TonApiUnavailable, match=r"timed out after 0\.05 s") as caught:
                await client.transactions_page(WALLET_RAW)
        assert client.statistics() == TonApiStatistics(requests=2, retries=1)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)


async def test_a_hang_within_the_timeout_is_only_slow(
    tonapi: TonApiStandIn, tonapi_server: InProcessServer, fake_sleep: FakeSleep
) -> None:
    fill(tonapi, 1)
    tonapi.fail("timeout", hang=0.05)
    async with client_for(tonapi_server, fake_sleep, timeout=5) as client:
        started = anyio.current_time()
        assert len(await client.transactions_page(WALLET_RAW)) == 1
        assert anyio.current_time() - started >= 0.05
        assert client.statistics().retries == 0


async def test_closing_the_server_releases_a_held_request(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep
) -> None:
    fill(tonapi, 1)
    tonapi.fail("timeout", hang=30)
    got: list[int] = []
    server = InProcessServer(tonapi.application(), host="tonapi.invalid")
    async with client_for(server, fake_sleep, timeout=60) as client:

        async def fetch() -> None:
            got.append(len(await client.transactions_page(WALLET_RAW)))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg, server:
                tg.start_soon(fetch)
                await anyio.wait_all_tasks_blocked()
                assert len(tonapi.requests) == 1
                assert not got  # held
                # Leaving the block shut the server down, which let the request go.
    assert got == [1]


@pytest.mark.parametrize(
    ("mode", "match"), [("garbage", "not valid JSON"), ("wrong_type", r"\$.transactions\[0\].lt")]
)
async def test_a_body_of_the_wrong_shape_is_a_format_error(
    tonapi: TonApiStandIn,
    tonapi_server: InProcessServer,
    fake_sleep: FakeSleep,
    mode: TonApiFaultMode,
    match: str,
) -> None:
    fill(tonapi, 3)
    tonapi.fail(mode)
    async with client_for(tonapi_server, fake_sleep) as client:
        with pytest.raises(TonApiFormatError, match=match):
            await client.transactions_since(WALLET_RAW, None)
        assert client.statistics().retries == 0


async def test_a_4xx_is_refused_without_retry(
    tonapi: TonApiStandIn, tonapi_server: InProcessServer, fake_sleep: FakeSleep
) -> None:
    tonapi.fail("error_body", status=400, error="invalid account: deleted")
    async with client_for(tonapi_server, fake_sleep) as client:
        with pytest.raises(TonApiError, match="HTTP 400: invalid account: deleted") as caught:
            await client.transactions_page(WALLET_RAW)
        with pytest.raises(TonApiError, match="HTTP 400: can't decode address not-an-address"):
            await client.transactions_page("not-an-address")
    assert not isinstance(caught.value, TonApiUnavailable)
    assert fake_sleep.delays == []


async def test_no_server_is_connection_refused(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep
) -> None:
    server = InProcessServer(tonapi.application(), host="tonapi.invalid")
    async with server:
        pass  # closed: as a port nobody listens on
    async with client_for(server, fake_sleep, retries=2) as client:
        with pytest.raises(TonApiUnavailable, match=r"connection failed \(ConnectError") as caught:
            await client.transactions_page(WALLET_RAW)
        assert client.statistics().requests == 3
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert not tonapi.requests


async def test_another_host_is_not_reached(tonapi_server: InProcessServer) -> None:
    transport = InProcessTransport(tonapi_server)
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(httpx.ConnectError, match=r"https://tonapi\.io"):
            await http.get("https://tonapi.io/v2/status")


# -- the server itself ------------------------------------------------------------------------


async def test_middlewares_run_and_a_crash_is_a_500(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    @web.middleware
    async def note(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(request.path)
        response: web.StreamResponse = await handler(request)
        response.headers["X-Noted"] = "yes"
        return response

    async def crash(request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "body": await request.text()})

    app = web.Application(middlewares=[note])
    app.router.add_get("/crash", crash)
    app.router.add_post("/echo/{id}", echo)
    async with (
        InProcessServer(app, host="app.invalid") as server,
        httpx.AsyncClient(base_url=server.url, transport=InProcessTransport(server)) as http,
    ):
        echoed = await http.post("/echo/a%20b", content=b"hello")
        crashed = await http.get("/crash")
        wrong_method = await http.get("/echo/1")
    assert echoed.json() == {"id": "a b", "body": "hello"}
    assert echoed.headers["x-noted"] == "yes"
    assert crashed.status_code == 500
    assert crashed.text.startswith("500 Internal Server Error")
    assert wrong_method.status_code == 405
    assert seen == ["/echo/a b", "/crash", "/echo/1"]
    assert "boom" in caplog.text


async def test_the_handler_sees_the_request_aiohttps_server_would_build() -> None:
    seen: dict[str, Any] = {}
    order: list[str] = []

    def noting(name: str) -> Any:
        @web.middleware
        async def note(request: web.Request, handler: Any) -> web.StreamResponse:
            order.append(name)
            response: web.StreamResponse = await handler(request)
            return response

        return note

    async def look(request: web.Request) -> web.Response:
        seen.update(
            method=request.method,
            path=request.path,
            raw_path=request.raw_path,
            query=list(request.query.items()),
            many=request.headers.getall("X-Many"),
            content_type=request.content_type,
            host=request.host,
            remote=request.remote,
            scheme=request.scheme,
            secure=request.secure,
            url=str(request.url.with_query(None)),
            app=request.app,
            name=request.match_info["name"],
            body=await request.read(),
        )
        return web.Response(text="ok")

    sub = web.Application(middlewares=[noting("sub")])
    sub.router.add_put("/look/{name}", look)
    app = web.Application(middlewares=[noting("root")])
    app.add_subapp("/sub", sub)
    async with (
        InProcessServer(app, host="app.invalid") as server,
        httpx.AsyncClient(base_url=server.url, transport=InProcessTransport(server)) as http,
    ):
        response = await http.put(
            "/sub/look/n%C3%A9?q=a+b&q=%2F&empty=",
            headers=[("X-Many", "1"), ("X-Many", "2"), ("Content-Type", "text/plain")],
            content=b"body",
        )
    assert response.text == "ok"
    assert seen == {
        "method": "PUT",
        "path": "/sub/look/né",
        "raw_path": "/sub/look/n%C3%A9?q=a+b&q=%2F&empty=",
        "query": [("q", "a b"), ("q", "/"), ("empty", "")],
        "many": ["1", "2"],
        "content_type": "text/plain",
        "host": "app.invalid",
        "remote": None,  # no peer address, as the connection reports none
        "scheme": "http",
        "secure": False,
        "url": "http://app.invalid/sub/look/n%C3%A9",
        "app": app,  # the root, for a sub-application's handler too
        "name": "né",
        "body": b"body",
    }
    assert order == ["root", "sub"]  # as aiohttp's server runs them


async def test_a_streamed_answer_is_refused() -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        assert request.get_extra_info("sockname") == ("127.0.0.1", 80)
        assert request.transport is not None
        assert not request.transport.is_closing()
        response = web.StreamResponse()
        await response.prepare(request)  # written to the connection, which discards it
        await response.write(b"chunk")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/stream", stream)
    async with InProcessServer(app, host="app.invalid") as server:
        with pytest.raises(TypeError, match="StreamResponse"):
            await server.handle("GET", "/stream", [("Host", "app.invalid")], b"")


# -- Telegram ---------------------------------------------------------------------------------


@pytest.fixture
def bot_api() -> BotApiStandIn:
    return BotApiStandIn(token=TOKEN)


@pytest.fixture
async def bot_server(bot_api: BotApiStandIn) -> AsyncIterator[InProcessServer]:
    async with InProcessServer(bot_api.application(), host="bot-api.invalid") as server:
        yield server


@pytest.fixture
async def telegram(
    bot_server: InProcessServer, fake_sleep: FakeSleep
) -> AsyncIterator[TelegramClient]:
    bot = make_bot(TOKEN, session=InProcessSession(bot_server))
    async with TelegramClient(bot, sleep=fake_sleep, timeout=5) as client:
        yield client


@pytest.fixture
def no_token_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    assert SECRET not in caplog.text


async def test_get_me(bot_api: BotApiStandIn, telegram: TelegramClient) -> None:
    elapsed = await telegram.get_me()
    assert 0 <= elapsed < 5
    assert bot_api.calls[0].method == "getMe"
    me = await telegram.bot.get_me()
    assert (me.id, me.username) == (7012345678, "i3lani_standin_bot")


@pytest.mark.usefixtures("no_token_in_logs")
async def test_a_refused_token_is_unavailable(
    bot_server: InProcessServer, fake_sleep: FakeSleep
) -> None:
    other = "7012345678:" + "x" * len(SECRET)
    async with TelegramClient(make_bot(other, session=InProcessSession(bot_server))) as client:
        with pytest.raises(TelegramUnavailable, match="token was refused") as caught:
            await client.get_me()
    assert "x" * len(SECRET) not in str(caught.value)


async def test_make_bot_takes_a_session_or_a_url_not_both(bot_server: InProcessServer) -> None:
    with pytest.raises(ValueError, match="not both"):
        make_bot(TOKEN, "http://127.0.0.1:1", session=InProcessSession(bot_server))


async def test_member_count_and_each_chat_problem(
    bot_api: BotApiStandIn, telegram: TelegramClient, no_token_in_logs: None
) -> None:
    bot_api.set_member_count(CHANNEL, 1234)
    bot_api.set_member_count("@i3lani_channel", 56)
    assert await telegram.member_count(CHANNEL) == 1234
    assert await telegram.member_count("@I3lani_Channel") == 56
    assert await telegram.member_count(-100999) == ChatProblem(
        "bad_request", 400, "Bad Request: chat not found"
    )
    bot_api.fail_chat(CHANNEL, 403, times=1)
    problem = await telegram.member_count(CHANNEL)
    assert isinstance(problem, ChatProblem)
    assert (problem.kind, problem.error_code) == ("forbidden", 403)
    bot_api.fail_chat(CHANNEL, 429, retry_after=17, times=1)
    problem = await telegram.member_count(CHANNEL)
    assert isinstance(problem, ChatProblem)
    assert (problem.kind, problem.retry_after) == ("rate_limited", 17.0)
    assert problem.description == "Too Many Requests: retry after 17"
    faults: list[tuple[BotApiFaultMode, str]] = [
        ("500", "Internal Server Error"),
        ("garbage", "unreadable answer"),
    ]
    for mode, said in faults:
        bot_api.fail("getChatMemberCount", mode)
        problem = await telegram.member_count(CHANNEL)
        assert isinstance(problem, ChatProblem)
        assert problem.kind == "unavailable"
        assert said in problem.description
    assert await telegram.member_count(CHANNEL) == 1234


async def test_a_hang_is_a_timeout_for_the_client_and_for_aiogram(
    bot_api: BotApiStandIn, bot_server: InProcessServer, fake_sleep: FakeSleep
) -> None:
    bot_api.set_member_count(CHANNEL, 3)
    bot_api.fail("getChatMemberCount", "timeout", times=2, hang=30)
    # The client's own bound fires first...
    bot = make_bot(TOKEN, session=InProcessSession(bot_server))
    async with TelegramClient(bot, sleep=fake_sleep, timeout=0.05) as client:
        with anyio.fail_after(5):
            assert await client.member_count(CHANNEL) == ChatProblem(
                "unavailable", None, "request timed out"
            )
    # ... or aiogram's session timeout, as aiohttp's would on the wire.
    bot = make_bot(TOKEN, session=InProcessSession(bot_server, timeout=0.05))
    async with TelegramClient(bot, sleep=fake_sleep, timeout=5) as client:
        with anyio.fail_after(5):
            problem = await client.member_count(CHANNEL)
        assert problem == ChatProblem("unavailable", None, "Request timeout error")
        assert await client.member_count(CHANNEL) == 3


async def test_no_server_is_a_network_error(
    bot_api: BotApiStandIn, fake_sleep: FakeSleep, no_token_in_logs: None
) -> None:
    server = InProcessServer(bot_api.application(), host="bot-api.invalid")
    async with server:
        pass
    bot = make_bot(TOKEN, session=InProcessSession(server))
    with pytest.raises(TelegramNetworkError, match="ClientConnectorError") as caught:
        await bot.get_me()
    assert SECRET not in str(caught.value)
    async with TelegramClient(bot, sleep=fake_sleep) as client:
        with pytest.raises(TelegramUnavailable, match="connection refused") as unavailable:
            await client.get_me()
    assert SECRET not in str(unavailable.value)


async def test_send_message_waits_out_flood_control(
    bot_api: BotApiStandIn,
    telegram: TelegramClient,
    fake_sleep: FakeSleep,
    no_token_in_logs: None,
) -> None:
    bot_api.fail_chat(ADMIN, 429, retry_after=3, times=1)
    assert await telegram.send_message(ADMIN, "Payment 42 confirmed: 5.44 TON, é ✓") is True
    assert fake_sleep.delays == [3.0]
    [sent] = bot_api.sent
    assert sent == (ADMIN, "Payment 42 confirmed: 5.44 TON, é ✓")
    # The form aiogram built, as the stand-in read it off the (in-process) wire.
    assert bot_api.calls[-1].params == {
        "chat_id": str(ADMIN),
        "text": "Payment 42 confirmed: 5.44 TON, é ✓",
    }
    bot_api.fail_chat(ADMIN, 403, times=1)
    assert await telegram.send_message(ADMIN, "again") is False


async def test_flood_control_is_aiograms_own_exception(
    bot_api: BotApiStandIn, bot_server: InProcessServer
) -> None:
    bot_api.fail_chat(ADMIN, 429, retry_after=9, times=1)
    bot = make_bot(TOKEN, session=InProcessSession(bot_server))
    with pytest.raises(TelegramRetryAfter) as caught:
        await bot.send_message(chat_id=ADMIN, text="hi")
    assert caught.value.retry_after == 9
    assert SECRET not in str(caught.value)
    assert (await bot(GetMe())).is_bot
