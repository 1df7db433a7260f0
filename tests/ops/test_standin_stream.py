"""The TonAPI stand-in's TON Streaming API, on the wire: its shapes, its finality levels, its
faults and their control routes, read with a plain httpx stream as any client would."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from ops.standins import TonApiStandIn

pytestmark = pytest.mark.usefixtures("anyio_backend")

WALLET = "EQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla9nE"
WALLET_RAW = "0:408da3b28b6c065a593e10391269baaa9c5f8caebc0c69d9f0aabbab2a99256b"
OTHER = "EQDKbjIcfM6ezt8KjKJJLshZJJSqX7XOA4ff-W72r5gqPrHF"
PAYER = "0:ef59caea6ebbee8542839162aa654b76f416e712ce22752da647d7e22cf1097f"
PATH = "/streaming/v2/sse"


def body(min_finality: str = "finalized", addresses: list[str] | None = None) -> dict[str, Any]:
    return {
        "types": ["transactions"],
        "addresses": addresses or [WALLET],
        "min_finality": min_finality,
    }


class Reader:
    """The lines of one open stream, read in the background."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines: list[str] = []

    async def read(self) -> None:
        async for line in self.response.aiter_lines():
            self.lines.append(line)

    @property
    def messages(self) -> list[Any]:
        return [json.loads(line[6:]) for line in self.lines if line.startswith("data: ")]

    async def wait(self, count: int, seconds: float = 5.0) -> list[Any]:
        """The first ``count`` messages, once they came."""
        for _ in range(int(seconds / 0.01)):
            if len(self.messages) >= count:
                return self.messages[:count]
            await anyio.sleep(0.01)
        raise AssertionError(f"{len(self.messages)} of {count} messages: {self.lines}")


@asynccontextmanager
async def stream(
    tonapi: TonApiStandIn, payload: dict[str, Any], **headers: str
) -> AsyncIterator[Reader]:
    async with (
        httpx.AsyncClient(base_url=tonapi.url, timeout=10) as client,
        client.stream(
            "POST",
            PATH,
            json=payload,
            headers={"Accept": "text/event-stream", **headers},
        ) as response,
        anyio.create_task_group() as tg,
    ):
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        reader = Reader(response)
        tg.start_soon(reader.read)
        await reader.wait(1)
        yield reader
        tg.cancel_scope.cancel()


async def test_a_subscription_says_subscribed_then_keeps_alive() -> None:
    async with (
        TonApiStandIn(keepalive=0.05) as tonapi,
        stream(tonapi, body(), Authorization="Bearer k") as reader,
    ):
        assert reader.messages[0] == {"status": "subscribed"}
        await anyio.sleep(0.2)
        assert ": keepalive" in reader.lines
    [request] = tonapi.stream.requests
    assert (request.addresses, request.min_finality, request.types) == (
        [WALLET],
        "finalized",
        ["transactions"],
    )
    assert request.authorization == "Bearer k"


async def test_a_trace_is_notified_as_its_finality_rises() -> None:
    async with (
        TonApiStandIn(finality_delay=0.05) as tonapi,
        stream(tonapi, body("pending")) as everything,
        stream(tonapi, body("confirmed")) as confirmed,
        stream(tonapi, body("finalized", [OTHER])) as elsewhere,
        stream(tonapi, body()) as finalized,
    ):
        tx = tonapi.transfer(WALLET, source=PAYER, value=7, comment="i3lani_1")
        levels = [m["finality"] for m in (await everything.wait(4))[1:]]
        assert levels == ["pending", "confirmed", "finalized"]
        assert [m["finality"] for m in (await confirmed.wait(3))[1:]] == ["confirmed", "finalized"]
        [_, notice] = await finalized.wait(2)
        await anyio.sleep(0.2)
        assert len(finalized.messages) == 2
        assert elsewhere.messages == [{"status": "subscribed"}]
    assert notice["type"] == "transactions"
    assert notice["finality"] == "finalized"
    assert notice["trace_external_hash_norm"]
    [sent] = notice["transactions"]
    assert sent["account"] == "0:" + WALLET_RAW[2:].upper()
    assert sent["lt"] == str(tx["lt"])
    assert base64.b64decode(sent["hash"]).hex() == tx["hash"]
    assert sent["in_msg"]["value"] == "7"
    assert sent["in_msg"]["message_content"]["decoded"]["comment"] == "i3lani_1"
    assert sent["account"] in notice["address_book"]
    # The transaction was on the chain (the REST endpoint) before its first notice.
    assert tonapi.transactions(WALLET)[-1]["hash"] == tx["hash"]


async def test_a_phantom_pending_trace_is_withdrawn_and_never_on_the_chain() -> None:
    async with TonApiStandIn() as tonapi, stream(tonapi, body("pending")) as reader:
        tx_hash = tonapi.stream.phantom(WALLET, source=PAYER, value=5, comment="i3lani_1")
        [_, pending, withdrawn] = await reader.wait(3)
    assert pending["finality"] == "pending"
    assert withdrawn == {
        "type": "trace_invalidated",
        "trace_external_hash_norm": pending["trace_external_hash_norm"],
    }
    assert base64.b64decode(pending["transactions"][0]["hash"]).hex() == tx_hash
    assert tonapi.transactions(WALLET) == []


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"types": ["transactions"], "addresses": ["EQ-oops"]}, "can't decode address"),
        ({"types": ["transactions"], "addresses": []}, "at least one account"),
        ({"types": ["blocks"], "addresses": [WALLET]}, "types must be some of"),
        (body("final"), "min_finality must be one of pending, confirmed, finalized"),
    ],
)
async def test_a_bad_subscription_is_refused(payload: dict[str, Any], error: str) -> None:
    async with TonApiStandIn() as tonapi, httpx.AsyncClient(base_url=tonapi.url) as client:
        answer = await client.post(PATH, json=payload)
        assert answer.status_code == 400
        assert error in answer.json()["error"]
        assert (await client.get(PATH)).status_code == 405


async def test_refusals_and_a_drop_with_its_cooldown() -> None:
    async with TonApiStandIn() as tonapi, httpx.AsyncClient(base_url=tonapi.url) as client:
        tonapi.stream.refuse(2, retry_after=3)
        for _ in range(2):
            refused = await client.post(PATH, json=body())
            assert refused.status_code == 429
            assert refused.headers["Retry-After"] == "3"
        async with stream(tonapi, body()) as reader:
            assert tonapi.stream.drop(cooldown=0.3) == 1
            for _ in range(200):
                if not tonapi.stream.connections:
                    break
                await anyio.sleep(0.01)
            assert not tonapi.stream.connections
            assert reader.messages == [{"status": "subscribed"}]
        assert (await client.post(PATH, json=body())).status_code == 429  # too soon
        await anyio.sleep(0.35)
        async with stream(tonapi, body()):
            pass
    assert [r.answered for r in tonapi.stream.requests] == [429, 429, 200, 429, 200]


async def test_a_stall_is_silence_and_garbage_is_garbage() -> None:
    async with TonApiStandIn(keepalive=0.05) as tonapi:
        async with stream(tonapi, body()) as reader:
            tonapi.stream.stall()
            await anyio.sleep(0.1)
            seen = len(reader.lines)
            tonapi.transfer(WALLET, source=PAYER, value=5, comment="lost")
            await anyio.sleep(0.3)
            assert len(reader.lines) == seen  # nothing at all: no keepalive, no notice
            tonapi.stream.heal()
            tonapi.stream.garbage()
            tonapi.transfer(WALLET, source=PAYER, value=6, comment="found")
            await anyio.sleep(0.3)
        garbage = [line for line in reader.lines[seen:] if line and not line.startswith(":")]
        assert "this line has no field name at all" in garbage
        assert "data: {not json at all" in garbage
        notices = [m for m in _json_lines(garbage) if m.get("finality") == "finalized"]
        assert [n["transactions"][0]["in_msg"]["value"] for n in notices] == ["6"]


def _json_lines(lines: list[str]) -> list[dict[str, Any]]:
    found = []
    for line in lines:
        if line.startswith("data: "):
            try:
                value = json.loads(line[6:])
            except ValueError:
                continue
            if isinstance(value, dict) and isinstance(value.get("transactions"), list):
                found.append(value)
    return found


async def test_the_faults_are_driven_over_http_too() -> None:
    async with TonApiStandIn() as tonapi, httpx.AsyncClient(base_url=tonapi.url) as client:

        async def control(route: str, payload: dict[str, Any]) -> Any:
            answer = await client.post(f"/_standin/stream/{route}", json=payload)
            assert answer.status_code == 200, answer.text
            return answer.json()

        await control("refuse", {"times": 1, "retry_after": 2})
        assert (await client.post(PATH, json=body())).status_code == 429
        assert await control("settings", {"keepalive": 0.5, "finality_delay": 0.1}) == {
            "keepalive": 0.5,
            "finality_delay": 0.1,
        }
        await control("stall", {"on": True})
        await control("garbage", {"on": True})
        await control("leak_levels", {"on": True})
        await control("heal", {})
        assert (await control("drop", {"cooldown": 0}))["closed"] == 0
        phantom = await control("phantom", {"wallet": WALLET, "source": PAYER, "value": 1})
        assert len(phantom["hash"]) == 64
        listed = (await client.get("/_standin/stream/requests")).json()
        assert [r["answered"] for r in listed["requests"]] == [429]
        assert listed["open"] == 0
        bad = await client.post("/_standin/stream/settings", json={"keepalive": 0})
        assert bad.status_code == 400
