"""Local stand-ins for TonAPI and the Telegram Bot API, speaking their real wire formats.

Tests, the demo and separate processes reach TonAPI and Telegram through these instead of the
internet: small aiohttp servers on ``127.0.0.1`` (a free port unless told otherwise)::

    async with TonApiStandIn() as tonapi, BotApiStandIn(token=TOKEN) as bot_api:
        tonapi.transfer(WALLET, source=PAYER, value=5_440_000_000, comment="i3lani_42")
        tonapi.fail("429", times=2, retry_after=1)      # the next two requests are throttled
        bot_api.set_member_count("@channel", 1234)
        bot_api.fail_chat(ADMIN, 403)                   # this admin blocked the bot
        ...  # point TonApiClient at tonapi.url and make_bot(TOKEN, bot_api.url) at bot_api.url

:class:`TonApiStandIn` holds a simulated chain (per account, transactions shaped exactly like
``fixtures/tonapi/*.json``) and serves ``GET /v2/blockchain/accounts/{id}/transactions`` and
``GET /v2/status``, and the TON Streaming API that notifies the chain's transactions as their
finality rises (``POST /streaming/v2/sse``, with faults of its own: ``tonapi.stream``, see
:mod:`~ops.standins.tonapi_stream`). :class:`BotApiStandIn` serves ``/bot{token}/{method}``
for ``getMe``, ``getChatMemberCount``, ``sendMessage`` and the update plumbing (``getUpdates``,
``setWebhook``, ``deleteWebhook``, ``getWebhookInfo``), reading aiogram's form bodies as well
as JSON.

Faults are queued and consumed first in, first out, one per API request: ``times=1`` by
default, ``times=None`` for every request until :meth:`heal`. A ``"timeout"`` fault holds the
request for ``hang`` seconds (or until the stand-in closes) before answering normally.

Other processes drive them over HTTP, under ``/_standin/`` (JSON bodies, the same arguments
as the Python methods)::

    TonAPI:   POST transfer, add_raw, fail, heal, rest_online;  GET requests, transactions
              stream/: POST refuse, drop, stall, garbage, leak_levels, heal, phantom, settings;
                       GET requests
    Bot API:  POST member_count, fail_chat, fail, heal;          GET sent, calls

``python -m ops.standins`` runs both until interrupted and prints their URLs as one JSON line.

The package: :mod:`~ops.standins.server` the shared plumbing (the server, queued faults, control
routes), :mod:`~ops.standins.tonapi` the TonAPI stand-in, :mod:`~ops.standins.telegram` the Bot
API stand-in, :mod:`~ops.standins.cli` the process. Import from ``ops.standins``.
"""

from __future__ import annotations

from ops.standins.cli import main, serve_standins
from ops.standins.server import DEFAULT_HANG
from ops.standins.telegram import (
    DEFAULT_BOT_TOKEN,
    BotApiCall,
    BotApiFaultMode,
    BotApiStandIn,
    SentMessage,
    TelegramLimits,
)
from ops.standins.tonapi import TonApiFaultMode, TonApiRequest, TonApiStandIn, TransferOp

__all__ = [
    "TonApiFaultMode",
    "BotApiFaultMode",
    "TransferOp",
    "TonApiRequest",
    "BotApiCall",
    "SentMessage",
    "TelegramLimits",
    "TonApiStandIn",
    "BotApiStandIn",
    "DEFAULT_BOT_TOKEN",
    "DEFAULT_HANG",
    "serve_standins",
    "main",
]
