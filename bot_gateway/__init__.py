"""The bot gateway: Telegram updates in, events out; payment notices back to users.

Public API (what ``i3lani`` calls)::

    from bot_gateway import run_gateway, load_gateway_config

    await run_gateway(settings, store, mode="webhook", host="0.0.0.0", port=port)
    await run_gateway(settings, store, mode="polling")

Layout, one room each:

* :mod:`bot_gateway.events`    ``UserRegistered`` (defined in :mod:`events.users`, where every
  process knows it), re-exported
* :mod:`bot_gateway.config`    ``WEBHOOK_SECRET`` and the reward amounts (:class:`GatewayConfig`)
* :mod:`bot_gateway.commands`  parsing what users type and the fixed texts (pure)
* :mod:`bot_gateway.service`   :class:`Gateway`: each command as appends and reads of the log
* :mod:`bot_gateway.notifier`  the ``payment`` follower telling users about their payments
* :mod:`bot_gateway.app`       aiogram routing, the webhook app, polling, :func:`run_gateway`

The gateway only appends events and reads the log; it never calls an actor.
"""

from __future__ import annotations

from bot_gateway.app import (
    HEALTH_PATH,
    Mode,
    build_app,
    build_dispatcher,
    build_router,
    run_gateway,
    run_polling,
    run_webhook,
)
from bot_gateway.config import GatewayConfig, check_webhook_secret, load_gateway_config
from bot_gateway.events import UserRegistered, member_stream
from bot_gateway.notifier import NOTIFIER_CHECKPOINT, payment_notice, run_notifier
from bot_gateway.service import Gateway, TelegramUser

__all__ = [
    "run_gateway",
    "Mode",
    "GatewayConfig",
    "load_gateway_config",
    "check_webhook_secret",
    "Gateway",
    "TelegramUser",
    "UserRegistered",
    "member_stream",
    "build_app",
    "build_dispatcher",
    "build_router",
    "run_webhook",
    "run_polling",
    "HEALTH_PATH",
    "NOTIFIER_CHECKPOINT",
    "payment_notice",
    "run_notifier",
]
