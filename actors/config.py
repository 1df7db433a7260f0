"""The actors' settings, read once from the environment and validated.

Every setting has a product default except the ones only the operator can know (the bot
token, the wallet). A malformed value is a :class:`~events.errors.ConfigError` with a one-line
message naming the variable and what it should look like; secrets never appear in a message
or a ``repr``.

==============================  ==========================  =====================================
variable                        default                     meaning
==============================  ==========================  =====================================
``TONAPI_URL``                  ``https://tonapi.io``       TonAPI base URL (a stand-in in tests)
``TONAPI_KEY``                  unset                       TonAPI bearer key (secret)
``TELEGRAM_API_URL``            unset (api.telegram.org)    Bot API server base URL
``BOT_TOKEN``                   unset                       the bot's token (secret)
``WALLET_ADDRESS``              unset                       our TON wallet, raw or user-friendly
``ADMIN_IDS``                   empty                       Telegram ids alerted, comma-separated
``I3LANI_PAYMENT_INTERVAL``     30                          PaymentMonitor tick, seconds
``I3LANI_REWARD_INTERVAL``      300                         RewardProcessor tick, seconds
``I3LANI_ANALYTICS_INTERVAL``   21600                       ChannelAnalytics tick, seconds
``I3LANI_CLEANUP_INTERVAL``     86400                       Cleanup tick, seconds
``I3LANI_HEALTH_INTERVAL``      900                         HealthChecker tick, seconds
``I3LANI_SEAL_INTERVAL``        3600                        Sealer tick, seconds
``I3LANI_PAYMENT_WINDOW``       3600                        seconds before a payment expires
``I3LANI_ACTIVE_SHARE``         0.45                        active share of subscribers
``I3LANI_PRICE_PER_1000``       1                           TON per 1,000 active subscribers
``I3LANI_MIN_PRICE``            1                           TON, the lowest channel price
``I3LANI_PLANS``                ``week:7:1,month:30:3``     ``name:days:TON`` plans
``I3LANI_MAX_BALANCE``          1000                        TON; a credit beyond it fails
``I3LANI_TASK_RETENTION``       7                           days finished tasks are kept
``I3LANI_HEALTH_RETENTION``     30                          days health samples are kept
``I3LANI_TASK_RETRY_DELAY``     30                          seconds before a task's first retry
``I3LANI_TASK_LOCK_TIMEOUT``    30                          seconds before a dead node's task
                                                            is taken back
==============================  ==========================  =====================================
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Final

import msgspec

from actors.ton import Address, InvalidAddress, InvalidAmount, parse_ton
from events.errors import ConfigError

__all__ = ["Plan", "Settings", "load_settings", "active_subscribers", "channel_price"]

NANOTONS_PER_TON: Final = 1_000_000_000
PRICE_STEP: Final = 10_000_000
"""Channel prices are rounded up to 0.01 TON."""


class Plan(msgspec.Struct, frozen=True):
    """A subscription plan: how long it lasts and what it costs."""

    name: str
    days: int
    price_nanotons: int


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the product actors are configured by (see the module docstring)."""

    tonapi_url: str = "https://tonapi.io"
    tonapi_key: str | None = None
    telegram_api_url: str | None = None
    bot_token: str | None = None
    wallet: str | None = None
    admin_ids: tuple[int, ...] = ()
    payment_interval: float = 30.0
    reward_interval: float = 300.0
    analytics_interval: float = 6 * 3600.0
    cleanup_interval: float = 24 * 3600.0
    health_interval: float = 15 * 60.0
    seal_interval: float = 3600.0
    payment_window: float = 3600.0
    active_share: float = 0.45
    price_per_1000_nanotons: int = NANOTONS_PER_TON
    min_price_nanotons: int = NANOTONS_PER_TON
    plans: tuple[Plan, ...] = (
        Plan("week", 7, NANOTONS_PER_TON),
        Plan("month", 30, 3 * NANOTONS_PER_TON),
    )
    max_balance_nanotons: int = 1000 * NANOTONS_PER_TON
    task_retention_days: float = 7.0
    health_retention_days: float = 30.0
    task_retry_delay: float = 30.0
    task_lock_timeout: float = 30.0

    def __repr__(self) -> str:
        shown = {
            name: ("<set>" if getattr(self, name) else None)
            if name in ("tonapi_key", "bot_token")
            else getattr(self, name)
            for name in self.__struct_fields__
        }
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def wallet_address(self) -> Address:
        """Our wallet, parsed; ConfigError when it is not configured."""
        if not self.wallet:
            raise ConfigError(
                "WALLET_ADDRESS is not set: give the TON wallet that receives payments "
                "(raw 0:<hex> or user-friendly EQ.../UQ...)"
            )
        return Address.parse(self.wallet)

    def require_bot_token(self) -> str:
        if not self.bot_token:
            raise ConfigError("BOT_TOKEN is not set: give the bot's token from @BotFather")
        return self.bot_token

    def plan(self, name: str) -> Plan | None:
        return next((p for p in self.plans if p.name == name), None)


def active_subscribers(subscribers: int, share: float) -> int:
    """The active audience: ``floor(subscribers * share)``. Pure."""
    return math.floor(subscribers * share)


def channel_price(active_subscribers: int, settings: Settings) -> int:
    """A channel's advertising price in nanotons, from its active subscribers. Pure.

    ``price = max(min_price, active * price_per_1000 / 1000)``, rounded **up** to 0.01 TON,
    in integer arithmetic (never a float on money).
    """
    raw = -(-active_subscribers * settings.price_per_1000_nanotons // 1000)
    stepped = -(-raw // PRICE_STEP) * PRICE_STEP
    return max(settings.min_price_nanotons, stepped)


def _number(env: Mapping[str, str], name: str, default: float, *, low: float, high: float) -> float:
    text = env.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {text!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    return value


def _ton(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = parse_ton(text.strip())
    except InvalidAmount as exc:
        raise ConfigError(f"{name}: {exc}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be a positive amount of TON, got {text!r}")
    return value


def _admin_ids(text: str) -> tuple[int, ...]:
    ids: list[int] = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if not part.lstrip("-").isdigit():
            raise ConfigError(
                f"ADMIN_IDS must be Telegram user ids separated by commas, got {part!r}"
            )
        ids.append(int(part))
    return tuple(dict.fromkeys(ids))


def _plans(text: str) -> tuple[Plan, ...]:
    plans: list[Plan] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        pieces = part.split(":")
        if len(pieces) != 3 or not pieces[0] or not pieces[1].isdigit():
            raise ConfigError(f"I3LANI_PLANS entries look like name:days:TON, got {part!r}")
        try:
            price = parse_ton(pieces[2])
        except InvalidAmount as exc:
            raise ConfigError(f"I3LANI_PLANS {pieces[0]!r}: {exc}") from None
        if int(pieces[1]) < 1 or price <= 0:
            raise ConfigError(f"I3LANI_PLANS {pieces[0]!r}: days and price must be positive")
        plans.append(Plan(pieces[0], int(pieces[1]), price))
    if not plans:
        raise ConfigError("I3LANI_PLANS is set but names no plan (name:days:TON,...)")
    return tuple(plans)


def load_settings(env: Mapping[str, str] = os.environ) -> Settings:
    """Settings from ``env``; ConfigError (one line) on the first malformed variable."""
    wallet = env.get("WALLET_ADDRESS") or None
    if wallet is not None:
        try:
            Address.parse(wallet)
        except InvalidAddress as exc:
            raise ConfigError(f"WALLET_ADDRESS: {exc}") from None
    day = 24 * 3600.0
    defaults = Settings()
    return Settings(
        tonapi_url=(env.get("TONAPI_URL") or defaults.tonapi_url).rstrip("/"),
        tonapi_key=env.get("TONAPI_KEY") or None,
        telegram_api_url=(env.get("TELEGRAM_API_URL") or "").rstrip("/") or None,
        bot_token=env.get("BOT_TOKEN") or None,
        wallet=wallet,
        admin_ids=_admin_ids(env.get("ADMIN_IDS", "")),
        payment_interval=_number(env, "I3LANI_PAYMENT_INTERVAL", 30.0, low=0.05, high=day),
        reward_interval=_number(env, "I3LANI_REWARD_INTERVAL", 300.0, low=0.05, high=day),
        analytics_interval=_number(
            env, "I3LANI_ANALYTICS_INTERVAL", 6 * 3600.0, low=0.05, high=7 * day
        ),
        cleanup_interval=_number(env, "I3LANI_CLEANUP_INTERVAL", day, low=0.05, high=7 * day),
        health_interval=_number(env, "I3LANI_HEALTH_INTERVAL", 900.0, low=0.05, high=day),
        seal_interval=_number(env, "I3LANI_SEAL_INTERVAL", 3600.0, low=0.05, high=day),
        payment_window=_number(env, "I3LANI_PAYMENT_WINDOW", 3600.0, low=1.0, high=30 * day),
        active_share=_number(env, "I3LANI_ACTIVE_SHARE", 0.45, low=0.0, high=1.0),
        price_per_1000_nanotons=_ton(
            env, "I3LANI_PRICE_PER_1000", defaults.price_per_1000_nanotons
        ),
        min_price_nanotons=_ton(env, "I3LANI_MIN_PRICE", defaults.min_price_nanotons),
        plans=_plans(env["I3LANI_PLANS"]) if env.get("I3LANI_PLANS") else defaults.plans,
        max_balance_nanotons=_ton(env, "I3LANI_MAX_BALANCE", defaults.max_balance_nanotons),
        task_retention_days=_number(env, "I3LANI_TASK_RETENTION", 7.0, low=0.0, high=3650.0),
        health_retention_days=_number(env, "I3LANI_HEALTH_RETENTION", 30.0, low=0.0, high=3650.0),
        task_retry_delay=_number(env, "I3LANI_TASK_RETRY_DELAY", 30.0, low=0.0, high=day),
        task_lock_timeout=_number(env, "I3LANI_TASK_LOCK_TIMEOUT", 30.0, low=1.0, high=day),
    )
