"""run_gateway, as the CLI calls it: webhook mode on a real port, polling mode, bad settings."""

from __future__ import annotations

import aiohttp
import anyio
import pytest

from actors.config import Settings
from bot_gateway import GatewayConfig, member_stream, run_gateway
from events.errors import ConfigError
from ops.standins import BotApiStandIn
from store import EventStore
from tests.bot_gateway.conftest import SECRET, message_update
from tests.waiting import eventually


async def test_webhook_mode_serves_updates_and_registers_the_webhook(
    store: EventStore, settings: Settings, bot_api: BotApiStandIn
) -> None:
    config = GatewayConfig(webhook_secret=SECRET, webhook_url="https://i3lani.example")
    async with anyio.create_task_group() as tg:
        url = await tg.start(
            lambda task_status: run_gateway(
                settings,
                store,
                mode="webhook",
                host="127.0.0.1",
                port=0,
                config=config,
                task_status=task_status,
            )
        )
        assert isinstance(url, str)
        assert bot_api.webhook_url == "https://i3lani.example/telegram/webhook"
        assert bot_api.webhook_secret == SECRET
        async with aiohttp.ClientSession() as http:
            wrong = await http.post(
                f"{url}/telegram/webhook",
                json=message_update(5, "/start"),
                headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"},
            )
            assert wrong.status == 401
            right = await http.post(
                f"{url}/telegram/webhook",
                json=message_update(5, "/start"),
                headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
            )
            assert right.status == 200
            health = await http.get(f"{url}/healthz")
            assert health.status == 200
        assert [r.type for r in await store.read_stream(member_stream(5))] == ["UserRegistered"]
        assert [m.chat_id for m in bot_api.sent] == [5]
        tg.cancel_scope.cancel()


async def test_polling_mode_removes_the_webhook_polls_and_stops_cleanly(
    store: EventStore, settings: Settings, bot_api: BotApiStandIn
) -> None:
    bot_api.webhook_url = "https://old.example/hook"
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            started = await tg.start(
                lambda task_status: run_gateway(
                    settings,
                    store,
                    mode="polling",
                    config=GatewayConfig(),
                    task_status=task_status,
                )
            )
            assert started is None

            async def polled() -> bool:
                return any(call.method == "getUpdates" for call in bot_api.calls)

            await eventually(polled)
            assert bot_api.webhook_url == ""
            tg.cancel_scope.cancel()


async def test_webhook_mode_needs_a_valid_secret(store: EventStore, settings: Settings) -> None:
    for secret in (None, "has spaces"):
        with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
            await run_gateway(
                settings,
                store,
                mode="webhook",
                config=GatewayConfig(webhook_secret=secret),
            )


async def test_a_missing_bot_token_is_named(store: EventStore) -> None:
    with pytest.raises(ConfigError, match="BOT_TOKEN"):
        await run_gateway(Settings(), store, mode="polling", config=GatewayConfig())
