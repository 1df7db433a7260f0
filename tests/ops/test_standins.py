"""The TonAPI and Bot API stand-ins, on the wire: what they serve, their faults, their control API.

Everything here talks HTTP to a real socket with httpx, so what is asserted is what a client
in another process would see.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.streams.text import TextReceiveStream

from actors.ton import InvalidAddress
from actors.tonapi_models import decode_transactions
from ops.standins import DEFAULT_BOT_TOKEN, BotApiStandIn, TonApiStandIn

# Parametrized async tests need anyio_backend in their closure: otherwise anyio's plugin
# re-creates them at collection time, dropping their parameters.
pytestmark = pytest.mark.usefixtures("anyio_backend")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tonapi"
WALLET_RAW = "0:408da3b28b6c065a593e10391269baaa9c5f8caebc0c69d9f0aabbab2a99256b"
WALLET_FRIENDLY = "UQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla4QB"
PAYER_RAW = "0:ef59caea6ebbee8542839162aa654b76f416e712ce22752da647d7e22cf1097f"
PAYER_FRIENDLY = "EQDvWcrqbrvuhUKDkWKqZUt29BbnEs4idS2mR9fiLPEJf3nb"
TOKEN = "42:stand-in-test-token"
TX_PATH = f"/v2/blockchain/accounts/{WALLET_RAW}/transactions"


@pytest.fixture
async def tonapi() -> AsyncIterator[TonApiStandIn]:
    async with TonApiStandIn() as standin:
        yield standin


@pytest.fixture
async def bot_api() -> AsyncIterator[BotApiStandIn]:
    async with BotApiStandIn(token=TOKEN) as standin:
        yield standin


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


def fixture_tx(name: str) -> dict[str, Any]:
    tx: dict[str, Any] = json.loads((FIXTURES / name).read_bytes())["transactions"][0]
    return tx


def pay(tonapi: TonApiStandIn, n: int, **changes: Any) -> dict[str, Any]:
    return tonapi.transfer(
        WALLET_RAW,
        **{"source": PAYER_RAW, "value": 1_000_000 * n, "comment": f"i3lani_{n}", **changes},
    )


# -- TonAPI: the chain ------------------------------------------------------------------------


def test_a_transfer_has_every_field_of_the_real_fixture() -> None:
    standin = TonApiStandIn()
    tx = standin.transfer(
        WALLET_FRIENDLY, source=PAYER_FRIENDLY, value=5_440_000_000, comment="i3lani_42"
    )
    real = fixture_tx("transactions_incoming_comment.json")
    assert set(real) <= set(tx)
    assert set(real["in_msg"]) <= set(tx["in_msg"])
    assert set(real["compute_phase"]) <= set(tx["compute_phase"])
    assert set(real["account"]) == set(tx["account"])
    for key in ("msg_type", "bounce", "bounced", "op_code", "decoded_op_name"):
        assert type(tx["in_msg"][key]) is type(real["in_msg"][key])
    assert tx["account"]["address"] == WALLET_RAW  # always the raw form, like TonAPI
    assert tx["in_msg"]["source"]["address"] == PAYER_RAW
    assert tx["in_msg"]["destination"]["address"] == WALLET_RAW
    assert tx["in_msg"]["op_code"] == "0x00000000"
    assert tx["in_msg"]["decoded_op_name"] == "text_comment"
    assert tx["in_msg"]["decoded_body"] == {"text": "i3lani_42"}
    assert len(tx["hash"]) == 64
    assert tx["hash"] == tx["hash"].lower()
    [decoded] = decode_transactions(json.dumps({"transactions": [tx]}).encode())
    assert decoded.in_msg is not None
    assert decoded.in_msg.value == 5_440_000_000


def test_transfer_variants() -> None:
    standin = TonApiStandIn()
    aborted = standin.transfer(
        WALLET_RAW, source=PAYER_RAW, value=1, comment="x", success=False, aborted=True
    )
    real_aborted = fixture_tx("transaction_aborted_comment.json")
    assert aborted["compute_phase"] == real_aborted["compute_phase"]
    assert (aborted["success"], aborted["aborted"]) == (False, True)

    jetton = standin.transfer(
        WALLET_RAW, source=PAYER_RAW, value=1, comment="i3lani_1", op="jetton_notify"
    )
    assert jetton["in_msg"]["op_code"] == "0x7362d09c"
    assert jetton["in_msg"]["decoded_op_name"] == "jetton_notify"
    assert "text" not in jetton["in_msg"]["decoded_body"]

    encrypted = standin.transfer(
        WALLET_RAW, source=PAYER_RAW, value=1, comment="i3lani_1", op="encrypted_comment"
    )
    assert encrypted["in_msg"]["op_code"] == "0x2167da4b"
    assert "i3lani_1" not in json.dumps(encrypted)

    for plain in (
        standin.transfer(WALLET_RAW, source=PAYER_RAW, value=1, comment=None),
        standin.transfer(WALLET_RAW, source=PAYER_RAW, value=1, comment="x", op="none"),
    ):
        assert not {"op_code", "decoded_op_name", "decoded_body"} & set(plain["in_msg"])

    bounced = standin.transfer(
        WALLET_RAW, source=PAYER_RAW, value=9, comment="x", bounced=True, out_msgs=2
    )
    assert bounced["in_msg"]["bounced"] is True
    assert [m["destination"]["address"] for m in bounced["out_msgs"]] == [PAYER_RAW] * 2

    decode_transactions(
        json.dumps({"transactions": standin.transactions(WALLET_RAW)}).encode()
    )  # every variant still has the documented shape


def test_lts_increase_and_chain_to_the_previous_transaction() -> None:
    standin = TonApiStandIn()
    first = pay(standin, 1)
    second = pay(standin, 2)
    early = pay(standin, 3, lt=first["lt"] - 10, tx_hash="ab" * 32, utime=1_700_000_000)
    assert second["lt"] > first["lt"]
    assert second["prev_trans_lt"] == first["lt"]
    assert second["prev_trans_hash"] == first["hash"]
    assert early["hash"] == "ab" * 32
    assert early["utime"] == 1_700_000_000
    assert [tx["lt"] for tx in standin.transactions(WALLET_FRIENDLY)] == [
        early["lt"],
        first["lt"],
        second["lt"],
    ]
    assert abs(first["utime"] - time.time()) < 60


def test_transfer_refuses_nonsense() -> None:
    standin = TonApiStandIn()
    with pytest.raises(InvalidAddress):
        standin.transfer("nope", source=PAYER_RAW, value=1, comment="x")
    with pytest.raises(ValueError, match="nanotons"):
        standin.transfer(WALLET_RAW, source=PAYER_RAW, value=-1, comment="x")
    with pytest.raises(ValueError, match="tx_hash"):
        standin.transfer(WALLET_RAW, source=PAYER_RAW, value=1, comment="x", tx_hash="AB" * 32)
    with pytest.raises(TypeError, match="lt"):
        standin.add_raw(WALLET_RAW, {"lt": "12"})


# -- TonAPI: the endpoint ---------------------------------------------------------------------


async def test_transactions_default_to_newest_first_100(
    tonapi: TonApiStandIn, http: httpx.AsyncClient
) -> None:
    made = [pay(tonapi, n) for n in range(1, 121)]
    response = await http.get(tonapi.url + TX_PATH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    lts = [tx["lt"] for tx in response.json()["transactions"]]
    assert lts == [tx["lt"] for tx in reversed(made)][:100]


async def test_after_and_before_lt_are_exclusive(
    tonapi: TonApiStandIn, http: httpx.AsyncClient
) -> None:
    made = [pay(tonapi, n) for n in range(1, 6)]
    params = {"after_lt": made[0]["lt"], "before_lt": made[4]["lt"], "sort_order": "asc"}
    response = await http.get(tonapi.url + TX_PATH, params=params)
    assert [tx["hash"] for tx in response.json()["transactions"]] == [
        tx["hash"] for tx in made[1:4]
    ]
    limited = await http.get(tonapi.url + TX_PATH, params={"limit": 2, "sort_order": "asc"})
    assert [tx["hash"] for tx in limited.json()["transactions"]] == [m["hash"] for m in made[:2]]


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"after_lt": -1}, "after_lt"),
        ({"sort_order": "up"}, "sort_order"),
    ],
)
async def test_bad_parameters_get_a_400_error_body(
    tonapi: TonApiStandIn, http: httpx.AsyncClient, params: dict[str, Any], needle: str
) -> None:
    response = await http.get(tonapi.url + TX_PATH, params=params)
    assert response.status_code == 400
    assert needle in response.json()["error"]


async def test_accounts_match_by_parsed_address(
    tonapi: TonApiStandIn, http: httpx.AsyncClient
) -> None:
    made = pay(tonapi, 1)
    for form in (WALLET_RAW, WALLET_FRIENDLY, "0:" + WALLET_RAW[2:].upper()):
        response = await http.get(f"{tonapi.url}/v2/blockchain/accounts/{form}/transactions")
        assert [tx["hash"] for tx in response.json()["transactions"]] == [made["hash"]], form
    other = await http.get(f"{tonapi.url}/v2/blockchain/accounts/{PAYER_RAW}/transactions")
    assert other.json() == {"transactions": []}
    bad = await http.get(f"{tonapi.url}/v2/blockchain/accounts/EQnope/transactions")
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("can't decode address EQnope")


async def test_status_endpoint(tonapi: TonApiStandIn, http: httpx.AsyncClient) -> None:
    body = (await http.get(tonapi.url + "/v2/status")).json()
    assert body["rest_online"] is True
    assert body["indexing_latency"] == 0
    tonapi.rest_online = False
    assert (await http.get(tonapi.url + "/v2/status")).json()["rest_online"] is False


async def test_requests_are_recorded(tonapi: TonApiStandIn, http: httpx.AsyncClient) -> None:
    await http.get(tonapi.url + TX_PATH, params={"limit": 5}, headers={"Authorization": "Bearer k"})
    await http.get(tonapi.url + "/v2/status")
    await http.post(tonapi.url + "/_standin/heal")  # control calls are not recorded
    assert [(r.method, r.path, r.query, r.authorization) for r in tonapi.requests] == [
        ("GET", TX_PATH, {"limit": "5"}, "Bearer k"),
        ("GET", "/v2/status", {}, None),
    ]


# -- TonAPI: faults ---------------------------------------------------------------------------


async def test_faults_are_consumed_first_in_first_out(
    tonapi: TonApiStandIn, http: httpx.AsyncClient
) -> None:
    tonapi.fail("500")
    tonapi.fail("429", retry_after=2)
    tonapi.fail("429", times=2)
    first, second, third, fourth, fifth = [await http.get(tonapi.url + TX_PATH) for _ in range(5)]
    assert (first.status_code, first.json()) == (500, {"error": "internal server error"})
    assert second.status_code == 429
    assert second.headers["Retry-After"] == "2"
    assert "error" in second.json()
    assert third.status_code == fourth.status_code == 429
    assert "Retry-After" not in third.headers
    assert fifth.status_code == 200


async def test_a_fault_without_times_lasts_until_healed(
    tonapi: TonApiStandIn, http: httpx.AsyncClient
) -> None:
    tonapi.fail("502", times=None)
    for _ in range(3):
        response = await http.get(tonapi.url + "/v2/status")
        assert response.status_code == 502
        assert response.headers["content-type"].startswith("text/html")
    tonapi.heal()
    assert (await http.get(tonapi.url + "/v2/status")).status_code == 200


async def test_garbage_and_wrong_type(tonapi: TonApiStandIn, http: httpx.AsyncClient) -> None:
    made = pay(tonapi, 1)
    tonapi.fail("garbage")
    tonapi.fail("wrong_type")
    garbage = await http.get(tonapi.url + TX_PATH)
    assert garbage.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(garbage.content)
    wrong = await http.get(tonapi.url + TX_PATH)
    assert wrong.json()["transactions"][0]["lt"] == str(made["lt"])
    assert made["lt"] == tonapi.transactions(WALLET_RAW)[0]["lt"]  # the chain is untouched


async def test_error_body_fault(tonapi: TonApiStandIn, http: httpx.AsyncClient) -> None:
    tonapi.fail("error_body", status=404, error="account not found")
    tonapi.fail("error_body")
    first = await http.get(tonapi.url + TX_PATH)
    second = await http.get(tonapi.url + TX_PATH)
    assert (first.status_code, first.json()) == (404, {"error": "account not found"})
    assert (second.status_code, second.json()) == (400, {"error": "invalid request"})


async def test_timeout_fault_holds_then_answers(
    tonapi: TonApiStandIn, http: httpx.AsyncClient
) -> None:
    tonapi.fail("timeout", hang=0.3)
    started = anyio.current_time()
    response = await http.get(tonapi.url + "/v2/status")
    assert response.status_code == 200
    assert anyio.current_time() - started >= 0.29


async def test_a_long_hang_does_not_delay_closing(http: httpx.AsyncClient) -> None:
    with anyio.fail_after(10):
        async with TonApiStandIn(hang=60) as standin:
            standin.fail("timeout", times=None)
            with pytest.raises(httpx.ReadTimeout):
                await http.get(standin.url + "/v2/status", timeout=0.2)
            started = anyio.current_time()
        assert anyio.current_time() - started < 3


def test_fault_arguments_are_checked() -> None:
    standin = TonApiStandIn()
    not_a_mode: Any = "418"
    with pytest.raises(ValueError, match="mode"):
        standin.fail(not_a_mode)
    with pytest.raises(ValueError, match="times"):
        standin.fail("500", times=0)
    with pytest.raises(RuntimeError, match="not running"):
        _ = standin.url


# -- TonAPI: control API ----------------------------------------------------------------------


async def test_tonapi_control_api(tonapi: TonApiStandIn, http: httpx.AsyncClient) -> None:
    control = tonapi.url + "/_standin"
    made = (
        await http.post(
            control + "/transfer",
            json={"wallet": WALLET_FRIENDLY, "source": PAYER_RAW, "value": 7, "comment": "hi"},
        )
    ).json()
    raw = fixture_tx("transactions_incoming_comment.json")
    assert (
        await http.post(control + "/add_raw", json={"wallet": WALLET_RAW, "tx": raw})
    ).is_success
    listed = (await http.get(control + "/transactions", params={"wallet": WALLET_RAW})).json()
    assert [tx["hash"] for tx in listed] == [raw["hash"], made["hash"]]

    assert (await http.post(control + "/fail", json={"mode": "500", "times": None})).is_success
    assert (await http.get(tonapi.url + TX_PATH)).status_code == 500
    assert (await http.get(tonapi.url + TX_PATH)).status_code == 500
    assert (await http.post(control + "/heal")).is_success
    assert (await http.get(tonapi.url + TX_PATH)).status_code == 200

    await http.post(control + "/rest_online", json={"online": False})
    assert (await http.get(tonapi.url + "/v2/status")).json()["rest_online"] is False

    recorded = (await http.get(control + "/requests")).json()
    assert [r["path"] for r in recorded] == [TX_PATH] * 3 + ["/v2/status"]
    assert recorded[0] == {"method": "GET", "path": TX_PATH, "query": {}, "authorization": None}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/transfer", {"wallet": WALLET_RAW}),
        ("/transfer", {"wallet": "bad", "source": PAYER_RAW, "value": 1, "comment": None}),
        ("/fail", {"mode": "teapot"}),
        ("/fail", {"mode": "500", "times": 0}),
        ("/add_raw", {"wallet": WALLET_RAW, "tx": {"lt": "1"}}),
    ],
)
async def test_tonapi_control_api_refuses_bad_bodies(
    tonapi: TonApiStandIn, http: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> None:
    response = await http.post(tonapi.url + "/_standin" + path, json=body)
    assert response.status_code == 400
    assert response.json()["error"]


# -- Bot API ----------------------------------------------------------------------------------


def api(bot_api: BotApiStandIn, method: str, token: str = TOKEN) -> str:
    return f"{bot_api.url}/bot{token}/{method}"


async def test_wrong_token_and_unknown_method(
    bot_api: BotApiStandIn, http: httpx.AsyncClient
) -> None:
    wrong = await http.post(api(bot_api, "getMe", token="42:wrong"))
    assert (wrong.status_code, wrong.json()) == (
        401,
        {"ok": False, "error_code": 401, "description": "Unauthorized"},
    )
    unknown = await http.post(api(bot_api, "sendDice"))
    assert (unknown.status_code, unknown.json()) == (
        404,
        {"ok": False, "error_code": 404, "description": "Not Found: method not found"},
    )
    assert [call.method for call in bot_api.calls] == ["sendDice"]


async def test_get_me_is_a_bot_user(bot_api: BotApiStandIn, http: httpx.AsyncClient) -> None:
    body = (await http.get(api(bot_api, "getme"))).json()  # names are case-insensitive
    assert body["ok"] is True
    assert body["result"]["id"] == 42
    assert body["result"]["is_bot"] is True
    assert bot_api.calls[0].method == "getMe"


async def test_params_from_form_json_and_query(
    bot_api: BotApiStandIn, http: httpx.AsyncClient
) -> None:
    bot_api.set_member_count(-1001, 10)
    bot_api.set_member_count("@Chan", 20)
    form = await http.post(api(bot_api, "getChatMemberCount"), data={"chat_id": "-1001"})
    as_json = await http.post(api(bot_api, "getChatMemberCount"), json={"chat_id": -1001})
    query = await http.get(api(bot_api, "getChatMemberCount"), params={"chat_id": "@chan"})
    multipart = await http.post(
        api(bot_api, "getChatMemberCount"), files={"chat_id": (None, "@CHAN")}
    )
    assert [r.json()["result"] for r in (form, as_json, query, multipart)] == [10, 10, 20, 20]
    assert bot_api.calls[1].params == {"chat_id": -1001}


async def test_unknown_chat_and_missing_chat(
    bot_api: BotApiStandIn, http: httpx.AsyncClient
) -> None:
    unknown = await http.post(api(bot_api, "getChatMemberCount"), data={"chat_id": "-5"})
    assert (unknown.status_code, unknown.json()) == (
        400,
        {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"},
    )
    missing = await http.post(api(bot_api, "getChatMemberCount"))
    assert missing.json()["description"] == "Bad Request: chat_id is empty"


async def test_send_message_returns_a_message(
    bot_api: BotApiStandIn, http: httpx.AsyncClient
) -> None:
    markup = json.dumps({"inline_keyboard": [[{"text": "Pay", "url": "ton://transfer/x"}]]})
    first = (
        await http.post(
            api(bot_api, "sendMessage"), data={"chat_id": "7", "text": "hi", "reply_markup": markup}
        )
    ).json()["result"]
    second = (
        await http.post(api(bot_api, "sendMessage"), json={"chat_id": "@news", "text": "post"})
    ).json()["result"]
    assert first["message_id"] == 1
    assert first["chat"] == {"id": 7, "first_name": "Admin", "type": "private"}
    assert first["from"]["is_bot"] is True
    assert first["text"] == "hi"
    assert abs(first["date"] - time.time()) < 60
    assert second["chat"]["type"] == "channel"
    assert second["chat"]["username"] == "news"
    assert bot_api.sent == [(7, "hi"), ("@news", "post")]
    assert bot_api.calls[0].params["reply_markup"]["inline_keyboard"][0][0]["text"] == "Pay"
    empty = await http.post(api(bot_api, "sendMessage"), data={"chat_id": "7", "text": " "})
    assert empty.json()["description"] == "Bad Request: message text is empty"


async def test_update_plumbing(bot_api: BotApiStandIn, http: httpx.AsyncClient) -> None:
    assert (await http.post(api(bot_api, "getUpdates"))).json() == {"ok": True, "result": []}
    set_hook = await http.post(
        api(bot_api, "setWebhook"), data={"url": "https://x.test/hook", "secret_token": "s3"}
    )
    assert set_hook.json() == {"ok": True, "result": True, "description": "Webhook was set"}
    assert (bot_api.webhook_url, bot_api.webhook_secret) == ("https://x.test/hook", "s3")
    info = (await http.get(api(bot_api, "getWebhookInfo"))).json()["result"]
    assert info["url"] == "https://x.test/hook"
    conflict = await http.post(api(bot_api, "getUpdates"))
    assert conflict.status_code == 409
    deleted = await http.post(api(bot_api, "deleteWebhook"))
    assert deleted.json() == {"ok": True, "result": True, "description": "Webhook was deleted"}
    assert bot_api.webhook_url == ""
    started = anyio.current_time()
    polled = await http.post(api(bot_api, "getUpdates"), data={"timeout": "0.2"})
    assert polled.json()["result"] == []
    assert anyio.current_time() - started >= 0.19  # long polling holds the request


async def test_chat_faults(bot_api: BotApiStandIn, http: httpx.AsyncClient) -> None:
    bot_api.set_member_count(-1001, 10)
    bot_api.fail_chat(-1001, 429, retry_after=5, times=1)
    bot_api.fail_chat(-1001, 403, times=1)
    limited = await http.post(api(bot_api, "getChatMemberCount"), data={"chat_id": "-1001"})
    assert (limited.status_code, limited.json()) == (
        429,
        {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 5",
            "parameters": {"retry_after": 5},
        },
    )
    forbidden = await http.post(api(bot_api, "sendMessage"), data={"chat_id": "-1001", "text": "x"})
    assert forbidden.status_code == 403
    assert forbidden.json()["description"] == "Forbidden: bot is not a member of the channel chat"
    ok = await http.post(api(bot_api, "getChatMemberCount"), data={"chat_id": "-1001"})
    assert ok.json()["result"] == 10
    bot_api.fail_chat(-1001, 400, "Bad Request: chat not found")  # until healed
    for _ in range(2):
        response = await http.post(api(bot_api, "getChatMemberCount"), data={"chat_id": "-1001"})
        assert response.status_code == 400
    bot_api.heal()
    assert (
        await http.post(api(bot_api, "getChatMemberCount"), data={"chat_id": "-1001"})
    ).is_success


async def test_method_faults(bot_api: BotApiStandIn, http: httpx.AsyncClient) -> None:
    bot_api.fail("getMe", "500")
    bot_api.fail("*", "garbage")
    failed = await http.post(api(bot_api, "getMe"))
    assert (failed.status_code, failed.json()["description"]) == (500, "Internal Server Error")
    garbage = await http.post(api(bot_api, "getWebhookInfo"))
    assert garbage.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(garbage.content)
    assert (await http.post(api(bot_api, "getMe"))).json()["ok"] is True
    bot_api.fail("getme", "timeout", hang=0.2)
    started = anyio.current_time()
    assert (await http.post(api(bot_api, "getMe"))).is_success
    assert anyio.current_time() - started >= 0.19


async def test_bot_api_control_api(bot_api: BotApiStandIn, http: httpx.AsyncClient) -> None:
    control = bot_api.url + "/_standin"
    await http.post(control + "/member_count", json={"chat": "@chan", "count": 3})
    await http.post(control + "/fail_chat", json={"chat": 9, "error_code": 403, "times": 1})
    await http.post(control + "/fail", json={"method": "getMe", "mode": "500"})
    assert (await http.post(api(bot_api, "getChatMemberCount"), data={"chat_id": "@chan"})).json()[
        "result"
    ] == 3
    assert (
        await http.post(api(bot_api, "sendMessage"), data={"chat_id": "9", "text": "a"})
    ).status_code == 403
    assert (
        await http.post(api(bot_api, "sendMessage"), data={"chat_id": "9", "text": "b"})
    ).is_success
    assert (await http.post(api(bot_api, "getMe"))).status_code == 500
    await http.post(control + "/fail", json={"method": "getMe", "mode": "500", "times": None})
    await http.post(control + "/heal")
    assert (await http.post(api(bot_api, "getMe"))).is_success
    assert (await http.get(control + "/sent")).json() == [{"chat_id": 9, "text": "b"}]
    calls = (await http.get(control + "/calls")).json()
    assert [c["method"] for c in calls] == [
        "getChatMemberCount",
        "sendMessage",
        "sendMessage",
        "getMe",
        "getMe",
    ]
    assert calls[0]["params"] == {"chat_id": "@chan"}
    bad = await http.post(control + "/fail", json={"method": "getMe", "mode": "402"})
    assert bad.status_code == 400


def test_bot_api_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="<digits>:<text>"):
        BotApiStandIn(token="not a token")
    standin = BotApiStandIn()
    not_a_mode: Any = "429"
    assert standin.token == DEFAULT_BOT_TOKEN
    with pytest.raises(ValueError, match="error_code"):
        standin.fail_chat(1, 200)
    with pytest.raises(ValueError, match="mode"):
        standin.fail("getMe", not_a_mode)
    with pytest.raises(ValueError, match="count"):
        standin.set_member_count(1, -1)


# -- as a process -----------------------------------------------------------------------------


@pytest.mark.process
async def test_python_m_ops_standins_serves_until_sigterm(http: httpx.AsyncClient) -> None:
    command = [sys.executable, "-m", "ops.standins", "--token", TOKEN]
    async with await anyio.open_process(command) as process:
        assert process.stdout is not None
        try:
            with anyio.fail_after(20):
                line = ""
                async for chunk in TextReceiveStream(process.stdout):
                    line += chunk
                    if "\n" in line:
                        break
            urls = json.loads(line)
            status = await http.get(urls["tonapi_url"] + "/v2/status")
            assert status.json()["rest_online"] is True
            me = await http.post(f"{urls['bot_api_url']}/bot{TOKEN}/getMe")
            assert me.json()["result"]["id"] == 42
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                returncode = await process.wait()
    assert returncode == 0
