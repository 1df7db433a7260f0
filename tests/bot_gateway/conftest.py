"""The gateway under test: its aiohttp webhook app on 127.0.0.1, aiogram's Bot pointed at the
Bot API stand-in, and real Telegram Update JSON posted with the secret header."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiogram import Bot
from aiohttp.test_utils import TestClient, TestServer

from actors.config import Settings
from actors.telegram import make_bot
from bot_gateway import Gateway, GatewayConfig, build_app
from ops.standins import BotApiStandIn, SentMessage
from store import EventStore

WALLET = "EQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla9nE"
ADMIN = 9001
SECRET = "test-secret_123"
PATH = "/telegram/webhook"

_update_ids = itertools.count(1)


def message_update(user_id: int, text: str, *, username: str | None = None) -> dict[str, Any]:
    """A Telegram Update carrying a private message, shaped as Telegram sends it."""
    update_id = next(_update_ids)
    sender: dict[str, Any] = {
        "id": user_id,
        "is_bot": False,
        "first_name": f"User{user_id}",
        "language_code": "en",
    }
    if username is not None:
        sender["username"] = username
    message: dict[str, Any] = {
        "message_id": update_id,
        "from": sender,
        "chat": {"id": user_id, "first_name": f"User{user_id}", "type": "private"},
        "date": int(time.time()),
        "text": text,
    }
    if text.startswith("/"):
        command = text.split(maxsplit=1)[0]
        message["entities"] = [{"offset": 0, "length": len(command), "type": "bot_command"}]
    return {"update_id": update_id, "message": message}


def photo_update(user_id: int) -> dict[str, Any]:
    update = message_update(user_id, "x")
    del update["message"]["text"]
    update["message"]["photo"] = [
        {"file_id": "AgAD", "file_unique_id": "AQAD", "width": 90, "height": 90}
    ]
    return update


@pytest.fixture
def settings(bot_api: BotApiStandIn) -> Settings:
    return Settings(
        wallet=WALLET,
        admin_ids=(ADMIN,),
        bot_token=bot_api.token,
        telegram_api_url=bot_api.url,
        payment_window=3600.0,
    )


@pytest.fixture
async def bot_api() -> AsyncIterator[BotApiStandIn]:
    async with BotApiStandIn() as standin:
        yield standin


@pytest.fixture
async def bot(bot_api: BotApiStandIn) -> AsyncIterator[Bot]:
    made = make_bot(bot_api.token, bot_api.url)
    try:
        yield made
    finally:
        await made.session.close()


@pytest.fixture
def gateway(store: EventStore, settings: Settings) -> Gateway:
    return Gateway(store, settings, GatewayConfig(webhook_secret=SECRET))


class Telegram:
    """Posts updates to the gateway's webhook as Telegram would, and reads the replies."""

    def __init__(self, client: TestClient[Any, Any], bot_api: BotApiStandIn) -> None:
        self.client = client
        self.bot_api = bot_api

    async def post(self, update: dict[str, Any], *, secret: str | None = SECRET) -> int:
        headers = {} if secret is None else {"X-Telegram-Bot-Api-Secret-Token": secret}
        response = await self.client.post(PATH, json=update, headers=headers)
        await response.read()
        return response.status

    async def say(self, user_id: int, text: str, **kwargs: Any) -> str:
        """Send ``text`` from ``user_id``; the one reply the bot sent to that chat."""
        before = len(self.bot_api.sent)
        status = await self.post(message_update(user_id, text, **kwargs))
        assert status == 200
        replies = [m for m in self.bot_api.sent[before:] if m.chat_id == user_id]
        assert len(replies) == 1, replies
        return replies[0].text

    def sent_to(self, chat_id: int) -> list[SentMessage]:
        return [m for m in self.bot_api.sent if m.chat_id == chat_id]


@pytest.fixture
async def telegram(gateway: Gateway, bot: Bot, bot_api: BotApiStandIn) -> AsyncIterator[Telegram]:
    app = build_app(gateway, bot, secret=SECRET, path=PATH)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield Telegram(client, bot_api)
