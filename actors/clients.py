"""The outside services' clients as the settings configure them, each kept to the rate limits
every node shares (:mod:`store.flow`): one place for what every actor, the gateway and the
operator commands would otherwise each spell out.

    tonapi = tonapi_client(settings, store)          # TonAPI, at I3LANI_TONAPI_RATE
    bot = telegram_bot(settings, store)              # the Bot API, at I3LANI_TELEGRAM_*_RATE

Without a ``log`` (a unit test, a one-off command with no database), a client keeps to nothing
but its own backoff, as before flow control was shared.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from actors.config import Settings
from actors.tonapi import TonApiClient
from store import EventStore
from store.flow import RateLimiter
from store.memory import MemoryLog

if TYPE_CHECKING:  # aiogram's import builds every Bot API model: only workers that talk to it pay
    from aiogram import Bot

    from actors.telegram import TelegramRates

__all__ = ["telegram_rates", "telegram_bot", "tonapi_client"]


def telegram_rates(settings: Settings) -> TelegramRates:
    """The Bot API's limits as ``settings`` configure them."""
    from actors.telegram import TelegramRates

    return TelegramRates(
        overall=settings.telegram_rate,
        chat=settings.telegram_chat_rate,
        group=settings.telegram_group_rate,
    )


def telegram_bot(
    settings: Settings, log: EventStore | MemoryLog | None = None, *, token: str | None = None
) -> Bot:
    """A Bot for ``token`` (default: the configured one, which must be set) on the configured
    Bot API server, every call waiting its turn in ``log``'s shared rate limits."""
    from actors.telegram import make_bot

    return make_bot(
        token if token is not None else settings.require_bot_token(),
        settings.telegram_api_url,
        limiter=None if log is None else RateLimiter.of(log),
        rates=telegram_rates(settings),
    )


def tonapi_client(
    settings: Settings, log: EventStore | MemoryLog | None = None, **options: Any
) -> TonApiClient:
    """A TonAPI client on the configured URL and key, every request waiting its turn in
    ``log``'s shared rate limit; ``options`` go to :class:`TonApiClient` (``retries``...)."""
    return TonApiClient(
        settings.tonapi_url,
        api_key=settings.tonapi_key,
        limiter=None if log is None or settings.tonapi_rate is None else RateLimiter.of(log),
        rate=settings.tonapi_rate,
        **options,
    )
