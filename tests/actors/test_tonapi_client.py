"""TonApiClient against the TonAPI stand-in over real sockets, and httpx.MockTransport units.

Backoff sleeps go through an injected fake, so retries are asserted without waiting.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from actors.tonapi import (
    TonApiClient,
    TonApiError,
    TonApiStatistics,
    TonApiUnavailable,
    retry_delay,
)
from actors.tonapi_models import TonApiFormatError, decode_transactions
from events.errors import I3laniError
from ops.standins import TonApiFaultMode, TonApiStandIn
from store.flow import Limit, RateLimiter, Scope
from store.flow.memory import MemoryFlowTable
from store.memory import MemoryLog
from tests.waiting import FakeSleep

# Parametrized async tests need anyio_backend in their closure: otherwise anyio's plugin
# re-creates them at collection time, dropping their parameters.
pytestmark = pytest.mark.usefixtures("anyio_backend")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tonapi"

# DOMAIN.md vectors: one account in raw and user-friendly forms.
WALLET_RAW = "0:408da3b28b6c065a593e10391269baaa9c5f8caebc0c69d9f0aabbab2a99256b"
WALLET_BOUNCEABLE = "EQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla9nE"
WALLET_NON_BOUNCEABLE = "UQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla4QB"
OTHER_RAW = "0:ca6e321c7cce9ecedf0a8ca2492ec8592494aa5fb5ce0387dff96ef6af982a3e"
OTHER_STANDARD_BASE64 = "EQDKbjIcfM6ezt8KjKJJLshZJJSqX7XOA4ff+W72r5gqPrHF"  # has "+"
PAYER_RAW = "0:ef59caea6ebbee8542839162aa654b76f416e712ce22752da647d7e22cf1097f"
API_KEY = "AE-test-key-0123456789"


@pytest.fixture
async def tonapi() -> AsyncIterator[TonApiStandIn]:
    async with TonApiStandIn() as standin:
        yield standin


@pytest.fixture
def fake_sleep() -> FakeSleep:
    return FakeSleep()


def client_for(tonapi: TonApiStandIn, sleep: FakeSleep, **kwargs: Any) -> TonApiClient:
    return TonApiClient(tonapi.url, sleep=sleep, rng=random.Random(7), **kwargs)


def fill(tonapi: TonApiStandIn, count: int, wallet: str = WALLET_RAW) -> list[dict[str, Any]]:
    return [
        tonapi.transfer(wallet, source=PAYER_RAW, value=1_000_000_000 + n, comment=f"i3lani_{n}")
        for n in range(1, count + 1)
    ]


def fixture_json(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_bytes())
    return data


# -- decoding real responses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "success"),
    [("transactions_incoming_comment.json", True), ("transaction_aborted_comment.json", False)],
)
async def test_shared_fixtures_decode_through_the_client(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep, name: str, success: bool
) -> None:
    raw_tx = fixture_json(name)["transactions"][0]
    assert decode_transactions((FIXTURES / name).read_bytes())[0].hash == raw_tx["hash"]
    wallet = raw_tx["account"]["address"]
    tonapi.add_raw(wallet, raw_tx)

    async with client_for(tonapi, fake_sleep) as client:
        [tx] = await client.transactions_since(wallet, None)

    assert (tx.hash, tx.lt, tx.utime) == (raw_tx["hash"], raw_tx["lt"], raw_tx["utime"])
    assert tx.success is success
    assert tx.aborted is (not success)
    assert tx.in_msg is not None
    assert tx.in_msg.value == raw_tx["in_msg"]["value"]
    assert tx.in_msg.body_text == raw_tx["in_msg"]["decoded_body"]["text"]


async def test_stand_in_transfers_decode_with_their_fields(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep
) -> None:
    sent = tonapi.transfer(
        WALLET_RAW, source=PAYER_RAW, value=5_440_000_000, comment="  i3lani_42\n", out_msgs=1
    )
    async with client_for(tonapi, fake_sleep) as client:
        [tx] = await client.transactions_page(WALLET_RAW)

    assert tx.hash == sent["hash"]
    assert tx.lt == sent["lt"]
    assert tx.in_msg is not None
    assert tx.in_msg.value == 5_440_000_000
    assert tx.in_msg.decoded_op_name == "text_comment"
    assert tx.in_msg.op_code == "0x00000000"
    assert tx.in_msg.body_text == "  i3lani_42\n"
    assert tx.in_msg.source is not None
    assert tx.in_msg.source.address == PAYER_RAW
    assert len(tx.out_msgs) == 1


# -- paging and the cursor --------------------------------------------------------------------


async def test_pages_until_a_short_page(tonapi: TonApiStandIn, fake_sleep: FakeSleep) -> None:
    made = fill(tonapi, 250)

    async with client_for(tonapi, fake_sleep) as client:
        txs = await client.transactions_since(WALLET_RAW, None, page_size=100)

    assert [tx.hash for tx in txs] == [tx["hash"] for tx in made]
    assert [tx.lt for tx in txs] == sorted(tx["lt"] for tx in made)
    queries = [request.query for request in tonapi.requests]
    assert len(queries) == 3
    assert "after_lt" not in queries[0]
    assert queries[1]["after_lt"] == str(made[99]["lt"])
    assert queries[2]["after_lt"] == str(made[199]["lt"])
    assert all(q["sort_order"] == "asc" and q["limit"] == "100" for q in queries)


async def test_an_exact_multiple_costs_one_empty_page(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep
) -> None:
    fill(tonapi, 200)
    async with client_for(tonapi, fake_sleep) as client:
        txs = await client.transactions_since(WALLET_RAW, None, page_size=100)
    assert len(txs) == 200
    assert len(tonapi.requests) == 3


async def test_max_pages_returns_a_gap_free_prefix(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep
) -> None:
    made = fill(tonapi, 25)
    async with client_for(tonapi, fake_sleep) as client:
        first = await client.transactions_since(WALLET_RAW, None, page_size=10, max_pages=2)
        rest = await client.transactions_since(WALLET_RAW, first[-1].lt, page_size=10)
    assert [tx.hash for tx in first] == [tx["hash"] for tx in made[:20]]
    assert [tx.hash for tx in rest] == [tx["hash"] for tx in made[20:]]


async def test_after_lt_is_exclusive(tonapi: TonApiStandIn, fake_sleep: FakeSleep) -> None:
    made = fill(tonapi, 5)
    cursor = made[1]["lt"]
    async with client_for(tonapi, fake_sleep) as client:
        txs = await client.transactions_since(WALLET_RAW, cursor)
    assert [tx.hash for tx in txs] == [tx["hash"] for tx in made[2:]]
    assert tonapi.requests[0].query["after_lt"] == str(cursor)


async def test_duplicates_and_old_transactions_are_dropped(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep
) -> None:
    made = fill(tonapi, 3)
    tonapi.add_raw(WALLET_RAW, made[2])  # TonAPI sending one transaction twice
    async with client_for(tonapi, fake_sleep) as client:
        txs = await client.transactions_since(WALLET_RAW, made[0]["lt"])
    assert [tx.hash for tx in txs] == [made[1]["hash"], made[2]["hash"]]


async def test_an_inclusive_server_is_deduplicated_and_still_advances() -> None:
    """A TonAPI that treated after_lt as inclusive: every page repeats the cursor's tx."""
    source = json.loads((FIXTURES / "transactions_incoming_comment.json").read_bytes())
    template = source["transactions"][0]
    chain = []
    for n in range(1, 8):
        tx = dict(template, lt=1000 + n, hash=f"{n:064x}")
        chain.append(tx)
    seen_after: list[int | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after_lt")
        limit = int(request.url.params["limit"])
        seen_after.append(int(after) if after else None)
        page = [tx for tx in chain if after is None or tx["lt"] >= int(after)][:limit]
        return httpx.Response(200, json={"transactions": page})

    async with TonApiClient("https://tonapi.test", transport=httpx.MockTransport(handler)) as c:
        txs = await c.transactions_since(WALLET_RAW, 1002, page_size=3)

    assert [tx.lt for tx in txs] == [1003, 1004, 1005, 1006, 1007]
    assert seen_after == [1002, 1004, 1006]


async def test_sorted_by_lt_then_hash_whatever_the_page_order() -> None:
    source = json.loads((FIXTURES / "transactions_incoming_comment.json").read_bytes())
    template = source["transactions"][0]
    page = [
        dict(template, lt=7, hash="b" * 64),
        dict(template, lt=5, hash="c" * 64),
        dict(template, lt=7, hash="a" * 64),
    ]
    transport = httpx.MockTransport(lambda _: httpx.Response(200, json={"transactions": page}))
    async with TonApiClient("https://tonapi.test", transport=transport) as client:
        txs = await client.transactions_since(WALLET_RAW, None, page_size=10)
    assert [(tx.lt, tx.hash[0]) for tx in txs] == [(5, "c"), (7, "a"), (7, "b")]


async def test_a_failing_later_page_returns_nothing(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep
) -> None:
    fill(tonapi, 15)
    async with client_for(tonapi, fake_sleep, retries=0) as client:
        first = await client.transactions_page(WALLET_RAW, limit=10)
        assert len(first) == 10
        tonapi.fail("500")
        with pytest.raises(TonApiUnavailable):
            await client.transactions_since(WALLET_RAW, first[-1].lt - 1, page_size=1)


# -- retries ----------------------------------------------------------------------------------


async def test_429_then_success_retries_with_backoff(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep
) -> None:
    made = fill(tonapi, 2)
    tonapi.fail("429", times=2)
    async with client_for(tonapi, fake_sleep, backoff_min=0.5, backoff_max=8.0) as client:
        txs = await client.transactions_since(WALLET_RAW, None)
        stats = client.statistics()

    assert [tx.hash for tx in txs] == [tx["hash"] for tx in made]
    assert stats == TonApiStatistics(requests=3, retries=2)
    assert len(fake_sleep.delays) == 2
    assert 0.5 <= fake_sleep.delays[0] <= 1.0
    assert 0.5 <= fake_sleep.delays[1] <= 2.0


async def test_retry_after_is_honoured_and_capped(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep
) -> None:
    fill(tonapi, 1)
    tonapi.fail("429", retry_after=3)
    tonapi.fail("429", retry_after=1000)
    async with client_for(tonapi, fake_sleep, backoff_max=8.0) as client:
        assert len(await client.transactions_page(WALLET_RAW)) == 1
    assert fake_sleep.delays == [3.0, 32.0]


async def test_500_storm_raises_unavailable_after_the_retries(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep
) -> None:
    tonapi.fail("500", times=None, error="database is on fire")
    async with client_for(tonapi, fake_sleep, retries=3) as client:
        with pytest.raises(TonApiUnavailable) as caught:
            await client.transactions_since(WALLET_RAW, 10)
        stats = client.statistics()

    assert stats == TonApiStatistics(requests=4, retries=3)
    assert len(fake_sleep.delays) == 3
    message = str(caught.value)
    assert "HTTP 500" in message
    assert "database is on fire" in message
    assert "\n" not in message
    assert isinstance(caught.value, TonApiError)
    assert isinstance(caught.value, I3laniError)


async def test_502_with_an_html_body_is_transient(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep
) -> None:
    fill(tonapi, 1)
    tonapi.fail("502")
    async with client_for(tonapi, fake_sleep) as client:
        assert len(await client.transactions_page(WALLET_RAW)) == 1
        assert client.statistics().retries == 1
    tonapi.fail("502", times=None)
    async with client_for(tonapi, fake_sleep, retries=1) as client:
        with pytest.raises(TonApiUnavailable, match=r"HTTP 502; try again later"):
            await client.transactions_page(WALLET_RAW)


async def test_timeout_raises_unavailable(tonapi: TonApiStandIn, fake_sleep: FakeSleep) -> None:
    tonapi.fail("timeout", times=None, hang=5)
    async with client_for(tonapi, fake_sleep, timeout=0.2, retries=1) as client:
        with anyio.fail_after(4):
            with pytest.raises(TonApiUnavailable, match=r"timed out after 0\.2 s"):
                await client.transactions_page(WALLET_RAW)
        assert client.statistics() == TonApiStatistics(requests=2, retries=1)


async def test_a_slow_answer_within_the_timeout_is_fine(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep
) -> None:
    fill(tonapi, 1)
    tonapi.fail("timeout", hang=0.05)
    async with client_for(tonapi, fake_sleep, timeout=5) as client:
        assert len(await client.transactions_page(WALLET_RAW)) == 1
        assert client.statistics().retries == 0


async def test_connection_refused_raises_unavailable(fake_sleep: FakeSleep) -> None:
    async with TonApiStandIn() as gone:
        url = gone.url  # the port is free again once the stand-in has stopped
    async with TonApiClient(url, sleep=fake_sleep, retries=2) as client:
        with pytest.raises(TonApiUnavailable, match="connection failed"):
            await client.transactions_page(WALLET_RAW)
        assert client.statistics().requests == 3


async def test_a_4xx_is_not_retried(tonapi: TonApiStandIn, fake_sleep: FakeSleep) -> None:
    tonapi.fail("error_body", status=400, error="invalid account: deleted")
    async with client_for(tonapi, fake_sleep) as client:
        with pytest.raises(TonApiError) as caught:
            await client.transactions_page(WALLET_RAW)
        assert client.statistics() == TonApiStatistics(requests=1, retries=0)
    assert not isinstance(caught.value, TonApiUnavailable)
    assert "HTTP 400: invalid account: deleted" in str(caught.value)
    assert fake_sleep.delays == []


async def test_a_bad_address_is_refused_without_retry(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep
) -> None:
    async with client_for(tonapi, fake_sleep) as client:
        with pytest.raises(TonApiError, match=r"HTTP 400: can't decode address not-an-address"):
            await client.transactions_page("not-an-address")
        assert client.statistics().requests == 1


# -- malformed answers ------------------------------------------------------------------------


async def test_garbage_raises_format_error(tonapi: TonApiStandIn, fake_sleep: FakeSleep) -> None:
    fill(tonapi, 3)
    tonapi.fail("garbage")
    async with client_for(tonapi, fake_sleep) as client:
        with pytest.raises(TonApiFormatError, match="not valid JSON"):
            await client.transactions_since(WALLET_RAW, None)
        assert client.statistics().retries == 0


async def test_wrong_type_names_the_path(tonapi: TonApiStandIn, fake_sleep: FakeSleep) -> None:
    fill(tonapi, 3)
    tonapi.fail("wrong_type")
    async with client_for(tonapi, fake_sleep) as client:
        with pytest.raises(TonApiFormatError) as caught:
            await client.transactions_since(WALLET_RAW, None)
    assert caught.value.path == "$.transactions[0].lt"
    assert "$.transactions[0].lt" in str(caught.value)


# -- authentication ---------------------------------------------------------------------------


async def test_api_key_is_sent_as_bearer(tonapi: TonApiStandIn, fake_sleep: FakeSleep) -> None:
    async with client_for(tonapi, fake_sleep, api_key=API_KEY) as client:
        await client.transactions_page(WALLET_RAW)
        await client.status()
    assert [r.authorization for r in tonapi.requests] == [f"Bearer {API_KEY}"] * 2


async def test_no_authorization_header_without_a_key(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep
) -> None:
    async with client_for(tonapi, fake_sleep) as client:
        await client.transactions_page(WALLET_RAW)
    assert tonapi.requests[0].authorization is None


async def test_the_key_never_reaches_messages_or_logs(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tonapi.fail("429", times=None, error=f"slow down, {API_KEY[:4]}")
    async with client_for(tonapi, fake_sleep, api_key=API_KEY, retries=2) as client:
        with pytest.raises(TonApiUnavailable) as caught:
            await client.transactions_page(WALLET_RAW)
    assert API_KEY not in str(caught.value)
    assert API_KEY not in caplog.text
    assert any(r.__dict__.get("action") == "tonapi_retry" for r in caplog.records)


# -- addresses --------------------------------------------------------------------------------


@pytest.mark.parametrize("form", [WALLET_RAW, WALLET_BOUNCEABLE, WALLET_NON_BOUNCEABLE])
async def test_raw_and_friendly_forms_name_the_same_account(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep, form: str
) -> None:
    made = fill(tonapi, 2, wallet=WALLET_BOUNCEABLE)
    fill(tonapi, 1, wallet=OTHER_RAW)
    async with client_for(tonapi, fake_sleep) as client:
        txs = await client.transactions_since(form, None)
    assert [tx.hash for tx in txs] == [tx["hash"] for tx in made]
    assert all(tx.account is not None and tx.account.address == WALLET_RAW for tx in txs)


async def test_standard_base64_address_is_url_quoted(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep
) -> None:
    made = fill(tonapi, 1, wallet=OTHER_RAW)
    async with client_for(tonapi, fake_sleep) as client:
        txs = await client.transactions_page(OTHER_STANDARD_BASE64)
    assert [tx.hash for tx in txs] == [made[0]["hash"]]


async def test_request_shape_on_the_wire() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"transactions": []})

    transport = httpx.MockTransport(handler)
    async with TonApiClient("https://tonapi.test/", transport=transport) as client:
        await client.transactions_page(WALLET_RAW, after_lt=5, limit=7, sort_order="desc")

    [request] = requests
    assert request.method == "GET"
    assert request.url.raw_path.startswith(
        b"/v2/blockchain/accounts/0%3A408da3b28b6c065a593e10391269baaa9c5f8caebc0c69d9f0aabbab2a99256b"
        b"/transactions?"
    )
    assert dict(request.url.params) == {"limit": "7", "sort_order": "desc", "after_lt": "5"}
    assert "authorization" not in request.headers


# -- status -----------------------------------------------------------------------------------


async def test_status_returns_the_round_trip(tonapi: TonApiStandIn, fake_sleep: FakeSleep) -> None:
    async with client_for(tonapi, fake_sleep) as client:
        elapsed = await client.status()
    assert 0 <= elapsed < 5
    assert tonapi.requests[0].path == "/v2/status"


async def test_status_offline_is_unavailable(tonapi: TonApiStandIn, fake_sleep: FakeSleep) -> None:
    tonapi.rest_online = False
    async with client_for(tonapi, fake_sleep) as client:
        with pytest.raises(TonApiUnavailable, match="rest_online=false"):
            await client.status()


async def test_status_retries_then_reports_the_successful_round_trip(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep
) -> None:
    tonapi.fail("429", retry_after=1)
    tonapi.fail("timeout", hang=0.2)  # slow, but well within the client's timeout
    async with client_for(tonapi, fake_sleep, timeout=5) as client:
        elapsed = await client.status()
        assert client.statistics() == TonApiStatistics(requests=2, retries=1)
    assert 0.19 <= elapsed < 5  # the slow attempt that succeeded, not the whole call
    assert fake_sleep.delays[0] == 1.0


@pytest.mark.parametrize("mode", ["500", "429"])
async def test_status_unavailable_after_the_retries(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep, mode: TonApiFaultMode
) -> None:
    tonapi.fail(mode, times=None)
    async with client_for(tonapi, fake_sleep, retries=2) as client:
        with pytest.raises(TonApiUnavailable, match=f"failed 3 time\\(s\\), last with HTTP {mode}"):
            await client.status()
        assert client.statistics().requests == 3


async def test_status_wrong_type_is_a_format_error(
    tonapi: TonApiStandIn, fake_sleep: FakeSleep
) -> None:
    tonapi.fail("wrong_type")
    async with client_for(tonapi, fake_sleep) as client:
        with pytest.raises(TonApiFormatError) as caught:
            await client.status()
    assert caught.value.path == "$.rest_online"


# -- the pure parts and misuse ----------------------------------------------------------------


def test_retry_delay_is_full_jitter_between_floor_and_capped_ceiling() -> None:
    rng = random.Random(1)
    for retry, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (50, 8.0)]:
        delays = [retry_delay(retry, backoff_min=0.5, backoff_max=8.0, rng=rng) for _ in range(200)]
        assert all(0.5 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.9  # the whole range is used
        assert min(delays) < 0.5 + (ceiling - 0.5) * 0.1


def test_retry_delay_believes_retry_after_up_to_four_times_the_cap() -> None:
    rng = random.Random(1)
    assert retry_delay(1, backoff_min=0.5, backoff_max=8, rng=rng, retry_after=2.5) == 2.5
    assert retry_delay(1, backoff_min=0.5, backoff_max=8, rng=rng, retry_after=999) == 32
    assert retry_delay(1, backoff_min=0.5, backoff_max=8, rng=rng, retry_after=0) == 0
    with pytest.raises(ValueError, match="start at 1"):
        retry_delay(0, backoff_min=0.5, backoff_max=8, rng=rng)


async def test_retry_after_that_is_a_date_falls_back_to_backoff(fake_sleep: FakeSleep) -> None:
    answers = [
        httpx.Response(
            429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, json={"error": "slow"}
        ),
        httpx.Response(200, json={"transactions": []}),
    ]
    transport = httpx.MockTransport(lambda _: answers.pop(0))
    async with TonApiClient("https://tonapi.test", transport=transport, sleep=fake_sleep) as c:
        assert await c.transactions_page(WALLET_RAW) == []
    assert len(fake_sleep.delays) == 1
    assert 0.5 <= fake_sleep.delays[0] <= 1.0


async def test_a_401_asks_to_check_the_key() -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(401, json={"error": "bad token"}))
    async with TonApiClient("https://tonapi.test", api_key="wrong", transport=transport) as c:
        with pytest.raises(TonApiError, match=r"HTTP 401: bad token; check the API key"):
            await c.status()


@pytest.mark.parametrize(
    "misuse",
    [
        lambda c: c.transactions_page(WALLET_RAW, limit=0),
        lambda c: c.transactions_page(WALLET_RAW, limit=1001),
        lambda c: c.transactions_page(WALLET_RAW, after_lt=-1),
        lambda c: c.transactions_since(WALLET_RAW, None, max_pages=0),
    ],
)
async def test_bad_arguments_are_refused(misuse: Callable[[TonApiClient], Any]) -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(200, json={"transactions": []}))
    async with TonApiClient("https://tonapi.test", transport=transport) as client:
        with pytest.raises(ValueError):
            await misuse(client)


async def test_the_client_must_be_entered_and_only_once() -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(200, json={"transactions": []}))
    client = TonApiClient("https://tonapi.test", transport=transport)
    with pytest.raises(RuntimeError, match="async with"):
        await client.transactions_page(WALLET_RAW)
    async with client:
        assert await client.transactions_page(WALLET_RAW) == []
    with pytest.raises(RuntimeError, match="closed"):
        await client.transactions_page(WALLET_RAW)
    with pytest.raises(RuntimeError, match="entered once"):
        await client.__aenter__()


def test_construction_checks_its_settings() -> None:
    with pytest.raises(ValueError, match="timeout"):
        TonApiClient("https://tonapi.test", timeout=0)
    with pytest.raises(ValueError, match="retries"):
        TonApiClient("https://tonapi.test", retries=-1)
    with pytest.raises(ValueError, match="backoff"):
        TonApiClient("https://tonapi.test", backoff_min=2, backoff_max=1)


# -- flow control -----------------------------------------------------------------------------


def _mock(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.MockTransport:
    return httpx.MockTransport(handler)


@pytest.mark.memory
async def test_every_request_waits_its_turn_in_the_shared_rate() -> None:
    table = MemoryFlowTable.of(MemoryLog())
    limiter = RateLimiter(table, margin=0.1)  # room for a request's own way to the transport
    seen: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(anyio.current_time())
        return httpx.Response(200, json={"rest_online": True})

    async with TonApiClient(
        "http://tonapi.test", transport=_mock(answer), limiter=limiter, rate=Limit(2, 0.3)
    ) as client:
        for _ in range(5):
            await client.status()
    assert seen[2] - seen[0] >= 0.29
    assert seen[4] - seen[2] >= 0.29
    assert limiter.statistics().grants == 5


@pytest.mark.memory
async def test_a_429_pauses_tonapi_for_every_node(fake_sleep: FakeSleep) -> None:
    table = MemoryFlowTable.of(MemoryLog())
    answers = iter([httpx.Response(429, headers={"Retry-After": "0.4"})])

    def answer(request: httpx.Request) -> httpx.Response:
        return next(answers, httpx.Response(200, json={"rest_online": True}))

    node_a = RateLimiter(table, margin=0.0)
    async with TonApiClient(
        "http://tonapi.test",
        transport=_mock(answer),
        sleep=fake_sleep,
        limiter=node_a,
        rate=Limit(10, 1.0),
    ) as client:
        await client.status()  # 429, then (after the shared pause) 200
    assert fake_sleep.delays == [0.4]
    (use,) = (await table.usage()).scopes
    assert (use.scope, use.pauses) == ("tonapi", 1)
    # Another node on the same table waits out what is left of the pause.
    node_b = RateLimiter(table, margin=0.0)
    await node_b.pause([Scope("tonapi", Limit(10, 1.0))], 0.3)
    started = anyio.current_time()
    await node_b.acquire([Scope("tonapi", Limit(10, 1.0))])
    assert anyio.current_time() - started >= 0.28


async def test_without_a_rate_the_client_keeps_to_its_own_backoff() -> None:
    limiter = RateLimiter(None)

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"rest_online": True})

    async with TonApiClient("http://tonapi.test", transport=_mock(answer), limiter=limiter) as c:
        await c.status()
    assert limiter.statistics().grants == 0
