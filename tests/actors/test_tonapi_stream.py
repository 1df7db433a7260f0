"""The TON Streaming API client, without a network: the event-stream format, the messages,
the reconnection schedule, its settings and its health check."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import anyio
import anyio.lowlevel
import httpx
import pytest

from actors.config import load_settings
from actors.health import STREAM_GRACE, stream_check
from actors.tonapi import TONAPI_SCOPE, TonApiClient
from actors.tonapi_stream import (
    SseParser,
    StreamNotice,
    StreamStatus,
    TonApiStream,
    decode_message,
    split_lines,
)
from events import HealthCheck
from events.errors import ConfigError
from store.flow import Limit, RateLimiter
from store.flow.memory import MemoryFlowTable
from store.memory import MemoryLog

WALLET = "EQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla9nE"
RAW = "0:408da3b28b6c065a593e10391269baaa9c5f8caebc0c69d9f0aabbab2a99256b"
UPPER = "0:" + RAW[2:].upper()


def _notice(finality: str, lt: object = "47587000000001", account: str = UPPER) -> str:
    return json.dumps(
        {
            "type": "transactions",
            "finality": finality,
            "trace_external_hash_norm": "t1",
            "transactions": [{"account": account, "hash": "q83vASNFZ4k=", "lt": lt}],
            "address_book": {},
        }
    )


# -- the format ----------------------------------------------------------------------------------


def test_the_parser_follows_the_event_stream_rules() -> None:
    parser = SseParser()
    lines = [
        ": keepalive",
        "",  # a blank line after a comment: no event
        "event: message",
        "id: 7",
        "data: {",
        'data:"a": 1}',  # no space after the colon: the value as is
        "retry: 100",
        "a line of garbage with no field",
        "",
    ]
    events = [data for line in lines if (data := parser.feed(line)) is not None]
    assert events == ['{\n"a": 1}']


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _lines(*parts: bytes, limit: int = 1 << 20) -> list[str]:
    return [line async for line in split_lines(_chunks(*parts), limit=limit)]


async def test_lines_end_at_any_line_break_even_across_chunks() -> None:
    assert await _lines(b"data: a\r", b"\ndata: b\rdata: c\n\n: k", b"eep\n") == [
        "data: a",
        "data: b",
        "data: c",
        "",
        ": keep",
    ]


async def test_a_line_too_long_is_skipped_whole_and_bad_bytes_replaced() -> None:
    lines = await _lines(b"data: " + b"x" * 40, b"y" * 40 + b"\n", b"\xff\xfeok\n", limit=50)
    assert lines == ["\ufffd\ufffdok"]


# -- the messages --------------------------------------------------------------------------------


def test_the_status_message_says_subscribed() -> None:
    assert decode_message('{"status": "subscribed"}', "finalized") == "subscribed"


def test_a_finalized_notice_is_a_hint_with_its_transactions_in_raw_form() -> None:
    notice = decode_message(_notice("finalized"), "finalized")
    assert notice == StreamNotice(
        finality="finalized", trace="t1", transactions=((RAW, 47_587_000_000_001),)
    )
    # lt as a number, the account user-friendly: read the same
    same = decode_message(_notice("finalized", lt=47_587_000_000_001, account=WALLET), "finalized")
    assert isinstance(same, StreamNotice)
    assert same.transactions == ((RAW, 47_587_000_000_001),)


@pytest.mark.parametrize(
    ("finality", "asked", "hint"),
    [
        ("pending", "confirmed", False),  # never, whatever was asked
        ("pending", "finalized", False),
        ("confirmed", "finalized", False),
        ("confirmed", "confirmed", True),
        ("finalized", "confirmed", True),
        ("finalized", "finalized", True),
    ],
)
def test_only_the_finality_asked_for_or_above_is_a_hint(
    finality: str, asked: str, hint: bool
) -> None:
    decoded = decode_message(_notice(finality), asked)  # type: ignore[arg-type]
    assert isinstance(decoded, StreamNotice) is hint
    if not hint:
        assert decoded == "ignored"


@pytest.mark.parametrize(
    ("data", "what"),
    [
        ('{"type": "trace_invalidated", "trace_external_hash_norm": "t1"}', "invalidated"),
        ('{"type": "actions", "finality": "finalized"}', "ignored"),
        ('{"status": "closing"}', "ignored"),
        ("{not json", "garbage"),
        ("[1, 2, 3]", "garbage"),
        ('{"type": "transactions", "finality": "finalized", "transactions": "nope"}', "garbage"),
        ('{"type": "transactions", "finality": "final-ish", "transactions": []}', "garbage"),
        ('{"type": "transactions", "transactions": []}', "garbage"),
        ('{"hello": "world"}', "garbage"),
    ],
)
def test_anything_else_is_no_hint(data: str, what: str) -> None:
    assert decode_message(data, "finalized") == what


def test_unreadable_transactions_of_a_notice_are_left_out() -> None:
    data = json.dumps(
        {
            "type": "transactions",
            "finality": "finalized",
            "transactions": [
                {"account": "not an address", "lt": "5"},
                {"account": UPPER, "lt": "x"},
                {"account": UPPER, "lt": "6"},
            ],
        }
    )
    notice = decode_message(data, "finalized")
    assert isinstance(notice, StreamNotice)
    assert notice.transactions == ((RAW, 6),)


# -- reconnecting ----------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised by the test's sleep to end the client's loop."""


def _client(
    handler: Callable[[httpx.Request], httpx.Response],
    delays: list[float],
    *,
    attempts: int,
    now: list[float],
) -> TonApiStream:
    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        now[0] += seconds
        if len(delays) >= attempts:
            raise _Stop
        await anyio.lowlevel.checkpoint()

    return TonApiStream(
        "http://tonapi.test",
        lambda: [WALLET],
        api_key="secret-key",
        backoff_min=1.0,
        backoff_max=16.0,
        stable_after=60.0,
        transport=httpx.MockTransport(handler),
        sleep=sleep,
        rng=random.Random(7),
        clock=lambda: now[0],
    )


async def test_it_reconnects_with_backoff_believing_a_retry_after() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if len(requests) == 1:
            return httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "slow down"})
        if len(requests) in (2, 3):
            return httpx.Response(503, text="<html>busy</html>")
        body = (
            b': keepalive\n\ndata: {"status": "subscribed"}\n\n'
            + f"data: {_notice('finalized')}\n\n".encode()
        )
        return httpx.Response(200, content=body, headers={"Content-Type": "text/event-stream"})

    delays: list[float] = []
    now = [0.0]
    stream = _client(handler, delays, attempts=5, now=now)
    subscribed: list[int] = []
    notices: list[StreamNotice] = []
    with pytest.raises(_Stop):
        await stream.run(lambda: subscribed.append(len(requests)), notices.append)
    assert delays[0] == 7.0  # the 429's Retry-After
    # Then full jitter under a doubling ceiling: 1..4, 1..8, and after the connection that
    # held no time at all, 1..16 (attempts go on counting).
    for delay, ceiling in zip(delays[1:], (4.0, 8.0, 16.0, 16.0), strict=True):
        assert 1.0 <= delay <= ceiling
    assert subscribed == [4, 5]  # each successful connection, and only those
    assert len(notices) == 2
    assert stream.status.refusals == 1
    assert stream.status.drops == 5
    assert stream.status.state == "stopped"
    request = requests[0]
    assert request.method == "POST"
    assert request.url.path == "/streaming/v2/sse"
    assert request.headers["Accept"] == "text/event-stream"
    assert request.headers["Authorization"] == "Bearer secret-key"
    assert request.read() == (
        b'{"types":["transactions"],"addresses":["%s"],"min_finality":"finalized"}'
        % WALLET.encode()
    )


async def test_a_connection_that_held_starts_the_backoff_over() -> None:
    now = [0.0]

    async def body() -> AsyncIterator[bytes]:
        yield b'data: {"status": "subscribed"}\n\n'
        now[0] += 100.0  # each connection lives 100 s (past stable_after) before it ends

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body())

    delays: list[float] = []
    stream = _client(handler, delays, attempts=4, now=now)
    with pytest.raises(_Stop):
        await stream.run(lambda: None, lambda notice: None)
    assert all(1.0 <= delay <= 2.0 for delay in delays)  # always the first step


async def test_a_refusal_repeating_will_not_fix_waits_the_longest() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "invalid token"})

    delays: list[float] = []
    stream = _client(handler, delays, attempts=3, now=[0.0])
    with pytest.raises(_Stop):
        await stream.run(lambda: None, lambda notice: None)
    assert all(8.0 <= delay <= 16.0 for delay in delays)
    assert stream.status.reason is not None
    assert "HTTP 401: invalid token" in stream.status.reason
    assert "check the API key" in stream.status.reason
    assert "secret-key" not in stream.status.reason


def test_pending_cannot_be_asked_for() -> None:
    with pytest.raises(ValueError, match="confirmed or finalized"):
        TonApiStream("http://x", list, min_finality="pending")  # type: ignore[arg-type]


# -- settings ------------------------------------------------------------------------------------


def test_the_stream_is_on_and_waits_for_finalized_by_default() -> None:
    settings = load_settings({})
    assert settings.tonapi_stream is True
    assert settings.min_finality == "finalized"
    assert settings.stream_silence == 45.0
    off = load_settings(
        {
            "I3LANI_TONAPI_STREAM": "off",
            "I3LANI_MIN_FINALITY": "Confirmed",
            "I3LANI_TONAPI_STREAM_SILENCE": "2",
        }
    )
    assert (off.tonapi_stream, off.min_finality, off.stream_silence) == (False, "confirmed", 2.0)


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"I3LANI_MIN_FINALITY": "pending"},
            "I3LANI_MIN_FINALITY must be confirmed or finalized, not pending: a pending "
            "transfer is speculative and can vanish, so money decisions never wait on it",
        ),
        (
            {"I3LANI_MIN_FINALITY": "final"},
            "I3LANI_MIN_FINALITY must be confirmed or finalized, got 'final'",
        ),
        ({"I3LANI_TONAPI_STREAM": "maybe"}, "I3LANI_TONAPI_STREAM must be on or off, got 'maybe'"),
    ],
)
def test_a_bad_stream_setting_is_one_line(env: dict[str, str], line: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(env)
    assert str(raised.value) == line


# -- health --------------------------------------------------------------------------------------


def test_a_stream_down_is_a_warning_after_a_grace_never_a_failure() -> None:
    status = StreamStatus()
    status.set("down", "HTTP 429: too many connections")
    assert status.since is not None
    soon = status.since + timedelta(seconds=5)
    later = status.since + timedelta(seconds=STREAM_GRACE + 30)
    early = stream_check(status, soon, 30.0)
    assert early.ok
    assert not early.warning
    assert early.detail.startswith("down for 5s (HTTP 429")
    warned = stream_check(status, later, 30.0)
    assert warned.ok
    assert warned.warning
    assert warned.detail == (
        "warning: not subscribed for 90s (HTTP 429: too many connections); polling every 30s "
        "confirms payments meanwhile"
    )
    status.set("subscribed")
    assert not stream_check(status, later, 30.0).warning
    status.set("off")
    assert "polling alone" in stream_check(status, later, 30.0).detail


def test_a_warning_is_an_ok_check_whose_detail_says_so() -> None:
    assert HealthCheck(name="stream", ok=True, detail="warning: down").warning
    assert not HealthCheck(name="stream", ok=False, detail="warning: down").warning
    assert not HealthCheck(name="stream", ok=True, detail="subscribed").warning


def test_status_times_are_utc() -> None:
    status = StreamStatus()
    status.set("connecting")
    assert status.since is not None
    assert status.since.tzinfo is UTC
    assert status.down_for(datetime.now(UTC)) is not None


async def test_every_subscription_attempt_first_waits_its_turn_in_the_shared_rate() -> None:
    """A (re)connection is a request to the key: it takes its turn in the ``tonapi`` scope
    every node shares, as the REST client's requests do (issue 15, point 4)."""
    order: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        order.append("request")
        return httpx.Response(503, text="busy")

    async def turn() -> None:
        order.append("turn")

    delays: list[float] = []
    now = [0.0]

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) >= 3:
            raise _Stop
        await anyio.lowlevel.checkpoint()

    stream = TonApiStream(
        "http://tonapi.test",
        lambda: [WALLET],
        transport=httpx.MockTransport(handler),
        sleep=sleep,
        rng=random.Random(7),
        clock=lambda: now[0],
        turn=turn,
    )
    with pytest.raises(_Stop):
        await stream.run(lambda: None, lambda notice: None)
    assert order == ["turn", "request"] * 3


@pytest.mark.memory
async def test_the_rest_clients_turn_is_a_grant_of_the_shared_tonapi_scope() -> None:
    log = MemoryLog()
    limiter = RateLimiter(MemoryFlowTable.of(log), margin=0.0)
    client = TonApiClient("http://tonapi.test", limiter=limiter, rate=Limit(10, 1.0))
    await client.turn()
    await client.turn()
    usage = {s.scope: s for s in (await MemoryFlowTable.of(log).usage()).scopes}
    assert usage[TONAPI_SCOPE].used == 2
    assert limiter.statistics().grants == 2
    unlimited = TonApiClient("http://tonapi.test", limiter=limiter, rate=None)
    await unlimited.turn()  # no shared rate configured: at once, no grant
    assert limiter.statistics().grants == 2
