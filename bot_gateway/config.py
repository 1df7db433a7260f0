"""The gateway's settings (beyond :class:`actors.config.Settings`), read from the environment.

==============================  ==========================  =====================================
variable                        default                     meaning
==============================  ==========================  =====================================
``WEBHOOK_SECRET``              unset                       secret Telegram echoes in
                                                            ``X-Telegram-Bot-Api-Secret-Token``
                                                            (1-256 of ``A-Za-z0-9_-``); required
                                                            in webhook mode
``WEBHOOK_URL``                 ``$RENDER_EXTERNAL_URL``    public base URL; when set, the
                                                            gateway calls ``setWebhook`` on start
``I3LANI_WEBHOOK_PATH``         ``/telegram/webhook``       the path Telegram posts updates to
``I3LANI_REFERRAL_REWARD``      0.1                         TON earned per referred new user
``I3LANI_CHANNEL_REWARD``       0.1                         TON earned per channel added
``ADMIN_TOKEN``                 unset                       bearer token of the admin API and
                                                            the dashboard (at least 16 of
                                                            ``A-Za-z0-9_-.~``); unset: neither
                                                            is served
==============================  ==========================  =====================================

A malformed value is a :class:`~events.errors.ConfigError` with a one-line message; the secret
never appears in a message or a ``repr``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Final

import msgspec

from actors.config import ConfigCheck
from actors.ton import InvalidAmount, parse_ton
from events import NANOTONS_PER_TON
from events.errors import ConfigError

__all__ = ["GatewayConfig", "load_gateway_config", "check_webhook_secret", "check_admin_token"]

DEFAULT_REWARD: Final = NANOTONS_PER_TON // 10
_SECRET_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,256}")
_ADMIN_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_.~-]{16,512}")


class GatewayConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How the gateway is reached and what it rewards (see the module docstring)."""

    webhook_secret: str | None = None
    webhook_url: str | None = None
    webhook_path: str = "/telegram/webhook"
    referral_reward_nanotons: int = DEFAULT_REWARD
    channel_reward_nanotons: int = DEFAULT_REWARD
    max_text_length: int = 256
    """Longer messages are refused: every command fits in far less."""
    admin_token: str | None = None
    """Bearer token of the admin API and dashboard; ``None``: they are not served."""

    def __repr__(self) -> str:
        shown = {
            name: ("<set>" if getattr(self, name) else None)
            if name in ("webhook_secret", "admin_token")
            else getattr(self, name)
            for name in self.__struct_fields__
        }
        return f"GatewayConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


def check_webhook_secret(secret: str | None) -> str:
    """``secret`` if Telegram accepts it as a ``secret_token``; ConfigError otherwise."""
    if not secret:
        raise ConfigError(
            "WEBHOOK_SECRET is not set: webhook mode needs a secret of 1-256 characters "
            "A-Z, a-z, 0-9, _ or -"
        )
    if _SECRET_RE.fullmatch(secret) is None:
        raise ConfigError(
            "WEBHOOK_SECRET must be 1-256 characters A-Z, a-z, 0-9, _ or - "
            "(Telegram refuses others; a base64 value with + / = will not do)"
        )
    return secret


def check_admin_token(token: str) -> str:
    """``token`` if it is long and plain enough to be a bearer token; ConfigError otherwise
    (the message never contains the token)."""
    if _ADMIN_TOKEN_RE.fullmatch(token) is None:
        raise ConfigError(
            f"ADMIN_TOKEN must be 16-512 characters A-Z, a-z, 0-9, _, -, . or ~ "
            f"(it has {len(token)}); `python -c 'import secrets; print(secrets.token_urlsafe())'`"
            " makes one"
        )
    return token


def _reward(env: Mapping[str, str], name: str) -> int:
    text = env.get(name, "").strip()
    if not text:
        return DEFAULT_REWARD
    try:
        value = parse_ton(text)
    except InvalidAmount as exc:
        raise ConfigError(f"{name}: {exc}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be a positive amount of TON, got {text!r}")
    return value


def load_gateway_config(env: Mapping[str, str] = os.environ) -> GatewayConfig:
    """The gateway's settings from ``env``; ConfigError naming every malformed variable, one
    line each."""
    check = ConfigCheck()
    secret = env.get("WEBHOOK_SECRET") or None
    if secret is not None:
        check.read(lambda: check_webhook_secret(secret), secret)
    url = (env.get("WEBHOOK_URL") or env.get("RENDER_EXTERNAL_URL") or "").rstrip("/") or None
    if url is not None and not url.startswith("https://"):
        check.problems.append(
            f"WEBHOOK_URL must be an https:// URL (Telegram requires it), got {url!r}"
        )
    path = env.get("I3LANI_WEBHOOK_PATH") or "/telegram/webhook"
    if not path.startswith("/"):
        check.problems.append(f"I3LANI_WEBHOOK_PATH must start with /, got {path!r}")
    admin_token = env.get("ADMIN_TOKEN") or None
    if admin_token is not None:
        check.read(lambda: check_admin_token(admin_token), admin_token)
    config = GatewayConfig(
        admin_token=admin_token,
        webhook_secret=secret,
        webhook_url=url,
        webhook_path=path,
        referral_reward_nanotons=check.read(
            lambda: _reward(env, "I3LANI_REFERRAL_REWARD"), DEFAULT_REWARD
        ),
        channel_reward_nanotons=check.read(
            lambda: _reward(env, "I3LANI_CHANNEL_REWARD"), DEFAULT_REWARD
        ),
    )
    check.done()
    return config
