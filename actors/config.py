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
``I3LANI_TONAPI_STREAM``        ``on``                      PaymentMonitor's fast path: TON
                                                            Streaming API wake-ups (``off``:
                                                            polling alone)
``I3LANI_MIN_FINALITY``         ``finalized``               the finality a stream notice needs
                                                            to wake a scan: ``confirmed`` or
                                                            ``finalized`` (never ``pending``)
``I3LANI_TONAPI_STREAM_SILENCE`` 45                         seconds without a byte (keepalives
                                                            come every 15) before the stream is
                                                            taken for dead and reconnected
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
``I3LANI_TELEGRAM_RATE``        ``30/s``                    Bot API calls of every node together
``I3LANI_TELEGRAM_CHAT_RATE``   ``1/s``                     calls about one private chat
``I3LANI_TELEGRAM_GROUP_RATE``  ``20/min``                  calls about one group or channel
``I3LANI_TONAPI_RATE``          ``10/s``                    TonAPI requests of every node
``I3LANI_TASK_CONCURRENCY``     none                        ``type:N,...``: at most N tasks of a
                                                            type running on every node together
==============================  ==========================  =====================================

Rates are ``N/s``, ``N/min``, ``N/h`` or ``N/<seconds>s`` (``1/4s``), or ``off``; they are
kept by every node together (:mod:`store.flow`), see :class:`~actors.telegram.TelegramRates`.

Exact amounts, and how each one is rounded
------------------------------------------
No float stands between a configured number and money or an audience; floats hold durations
only. The rules, mirrored by numbered comments in the code:

1. **Read as written.** TON amounts (``I3LANI_PRICE_PER_1000``, ``I3LANI_MIN_PRICE``,
   ``I3LANI_PLANS``' prices, ``I3LANI_MAX_BALANCE``, the gateway's rewards) become integer
   nanotons digit by digit (:func:`actors.ton.parse_ton`): a plain decimal, at most 9
   decimals (a nanoton is the smallest unit), no sign, no exponent. ``I3LANI_ACTIVE_SHARE``
   becomes a :class:`~fractions.Fraction` from its digits: a decimal from 0 to 1 with at most
   :data:`SHARE_DECIMALS` decimals (0.0001 is a hundredth of a percent; a finer share is not
   something anyone measures). ``I3LANI_MIN_PRICE`` must be a whole number of
   :data:`PRICE_STEP` (0.01 TON), because every channel price is. Anything else (``nan``,
   ``inf``, ``4.5e-1``, ``-1``, a tenth decimal of TON, a fifth of a share, a minimum of
   0.005 TON) is refused with one line naming the variable, before anything runs.
2. **Active audience, rounded down** (:func:`active_subscribers`): ``floor(subscribers x
   share)``, so 45 % of 2,223 (1,000.35) is 1,000 and 29 % of 2,900 is exactly 841. The
   active count is what advertisers are sold: rounding down never counts a subscriber the
   share does not give, and costs a channel's owner less than one subscriber's worth
   (price per 1,000 / 1,000, 0.001 TON by default). It is also the rule every existing log
   was written with, so the stats recorded under the default share (0.45, which floats
   happened to compute exactly) stay what the audit expects.
3. **Price, rounded up to 0.01 TON** (:func:`channel_price`): ``max(min price, active x
   price per 1,000 / 1,000)``, the second term rounded up to the next multiple of 0.01 TON
   (841 active at 2 TON per 1,000 is 1.682 TON: the price is 1.69 TON). Prices are quoted in
   hundredths of a TON; rounding up means a channel is never priced below the configured
   rate for the audience counted (the under-charge rounding down would make), and an
   advertiser pays less than 0.01 TON over the exact figure, the same bound for everyone.
4. **Nothing else is fractional.** Plan prices and rewards are charged and credited to the
   nanoton as configured; an overpayment's surplus is the amount received minus the amount
   asked, in nanotons; a balance is the sum of its credits; no amount is ever split. None of
   these is rounded.

The audit (:mod:`ops.audit`), the simulation's checker and the benchmarks call these same
functions, so none of them can disagree with ChannelAnalytics on what a price should be.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Final, Literal, TypeVar, cast, get_args

import msgspec

from actors.names import TASK_TYPES
from actors.ton import Address, InvalidAddress, InvalidAmount, format_ton, parse_ton
from events.base import TELEGRAM_ID_LIMIT
from events.errors import ConfigError
from store.flow import Limit, parse_limit

__all__ = [
    "Plan",
    "Settings",
    "load_settings",
    "ConfigCheck",
    "active_subscribers",
    "channel_price",
    "share_text",
    "PRICE_STEP",
    "SHARE_DECIMALS",
    "MinFinality",
    "MIN_FINALITIES",
]

NANOTONS_PER_TON: Final = 1_000_000_000
PRICE_STEP: Final = 10_000_000
"""Channel prices are whole multiples of 0.01 TON (rule 3): the price is rounded up to one,
and ``I3LANI_MIN_PRICE`` must be one."""
SHARE_DECIMALS: Final = 4
"""``I3LANI_ACTIVE_SHARE`` has at most this many decimals (rule 1)."""
DEFAULT_SHARE: Final = Fraction(45, 100)
_SHARE_RE: Final = re.compile(r"[0-9]+(?:\.(?P<fraction>[0-9]+))?", re.ASCII)
_DAYS_RE: Final = re.compile(r"[0-9]+", re.ASCII)
_ID_RE: Final = re.compile(r"-?[0-9]+", re.ASCII)
_T = TypeVar("_T")
MinFinality = Literal["confirmed", "finalized"]
MIN_FINALITIES: Final[tuple[str, ...]] = get_args(MinFinality)
_ON: Final = frozenset({"1", "on", "true", "yes"})
_OFF: Final = frozenset({"0", "off", "false", "no"})


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
    tonapi_stream: bool = True
    """The PaymentMonitor's fast path: a TON Streaming API subscription whose notices wake a
    scan at once (:mod:`actors.tonapi_stream`); polling goes on either way."""
    min_finality: MinFinality = "finalized"
    """The finality a notice needs to wake a scan: ``confirmed`` or ``finalized``."""
    stream_silence: float = 45.0
    """Seconds without a byte from the stream (3 keepalives missed) before reconnecting."""
    active_share: Fraction = DEFAULT_SHARE
    """Exact, from the digits configured (rule 1); never a float."""
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
    telegram_rate: Limit | None = Limit(30, 1.0)
    """Bot API calls of every node together (Telegram's about 30 messages a second)."""
    telegram_chat_rate: Limit | None = Limit(1, 1.0)
    """Calls about one private chat (Telegram's one message a second per chat)."""
    telegram_group_rate: Limit | None = Limit(20, 60.0)
    """Calls about one group or channel, a chat with a negative id or an @username
    (Telegram's 20 messages a minute per group)."""
    tonapi_rate: Limit | None = Limit(10, 1.0)
    """TonAPI requests of every node together (the key's tier; 1/4s without a key)."""
    task_concurrency: tuple[tuple[str, int], ...] = ()
    """(task type, N): at most N of its tasks running at once on every node together."""

    def __repr__(self) -> str:
        shown = {
            name: ("<set>" if getattr(self, name) else None)
            if name in ("tonapi_key", "bot_token")
            else share_text(self.active_share)
            if name == "active_share"
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

    def concurrency_limit(self, task_type: str) -> int | None:
        """How many tasks of ``task_type`` may run at once on every node (None: no limit)."""
        return dict(self.task_concurrency).get(task_type)


def active_subscribers(subscribers: int, share: Fraction) -> int:
    """The active audience: ``floor(subscribers x share)``, exactly (rule 2). Pure.

    Rounded **down** to a whole subscriber: 45 % of 2,223 (1,000.35) is 1,000. ``share`` is
    the exact :class:`~fractions.Fraction` :func:`load_settings` reads (an ``int`` 0 or 1 does
    too); a float has no ``numerator`` and fails, as it should: 0.29 as a float is not 0.29,
    and 29 % of 2,900 came out as 840 through one.
    """
    if subscribers < 0:
        raise ValueError(f"subscribers must not be negative, got {subscribers}")
    # Rule 2: integer floor division of the exact product, no rounding before it.
    return subscribers * share.numerator // share.denominator


def channel_price(active_subscribers: int, settings: Settings) -> int:
    """A channel's advertising price in nanotons, from its active subscribers (rule 3). Pure.

    ``price = max(min_price, active x price_per_1000 / 1000)``, the second term rounded **up**
    to the next multiple of :data:`PRICE_STEP` (0.01 TON), in integer arithmetic: 841 active
    at 2 TON per 1,000 is 1.682 TON, priced 1.69 TON. ``min_price`` is itself a multiple of
    0.01 TON (:func:`load_settings` refuses any other), so every price is.
    """
    if active_subscribers < 0:
        raise ValueError(f"active subscribers must not be negative, got {active_subscribers}")
    # Rule 3: one ceiling division of the exact product, to the step of 0.01 TON.
    steps = -(-active_subscribers * settings.price_per_1000_nanotons // (1000 * PRICE_STEP))
    return max(settings.min_price_nanotons, steps * PRICE_STEP)


def share_text(share: Fraction) -> str:
    """A share as the decimal it was configured as: ``Fraction(29, 100)`` -> ``"0.29"``.

    Exact for every share :func:`load_settings` accepts (their denominators divide 10**4);
    any other is written as ``numerator/denominator``.
    """
    share = Fraction(share)
    scale = 10**SHARE_DECIMALS
    if (share * scale).denominator != 1:
        return str(share)
    whole, fraction = divmod(int(share * scale), scale)
    if not fraction:
        return str(whole)
    return f"{whole}.{fraction:0{SHARE_DECIMALS}d}".rstrip("0")


def _number(env: Mapping[str, str], name: str, default: float, *, low: float, high: float) -> float:
    """A duration (seconds or days): the only settings kept as floats (rule 1)."""
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


def _share(env: Mapping[str, str], name: str, default: Fraction) -> Fraction:
    """A share from 0 to 1 as the exact Fraction of its digits (rule 1)."""
    text = env.get(name)
    if text is None or text.strip() == "":
        return default
    text = text.strip()
    match = _SHARE_RE.fullmatch(text)
    if match is None:
        raise ConfigError(
            f"{name} must be a decimal from 0 to 1 such as 0.45 (a dot, no sign, no "
            f"exponent), got {text!r}"
        )
    decimals = len(match["fraction"] or "")
    if decimals > SHARE_DECIMALS:
        raise ConfigError(
            f"{name} has {decimals} decimals; a share takes at most {SHARE_DECIMALS} "
            f"(0.0001 is 0.01 %), got {text!r}"
        )
    value = Fraction(text)  # exact: Fraction reads a decimal's digits, never through a float
    if value > 1:
        raise ConfigError(f"{name} must be between 0 and 1, got {text!r}")
    return value


def _ton(env: Mapping[str, str], name: str, default: int, *, step: int = 1) -> int:
    """A positive TON amount as exact nanotons (rule 1), a whole number of ``step`` of them."""
    text = env.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = parse_ton(text.strip())
    except InvalidAmount as exc:
        raise ConfigError(f"{name}: {exc}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be a positive amount of TON, got {text!r}")
    if value % step:
        raise ConfigError(
            f"{name} must be a whole number of {format_ton(step)} TON, as every channel price "
            f"is, got {text!r}"
        )
    return value


def _admin_ids(text: str) -> tuple[int, ...]:
    ids: list[int] = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if not _ID_RE.fullmatch(part):
            raise ConfigError(
                f"ADMIN_IDS must be Telegram user ids separated by commas, got {part!r}"
            )
        if not -TELEGRAM_ID_LIMIT < int(part) < TELEGRAM_ID_LIMIT:
            raise ConfigError(f"ADMIN_IDS holds {part[:24]!r}: Telegram ids fit in 52 bits")
        ids.append(int(part))
    return tuple(dict.fromkeys(ids))


def _plans(text: str) -> tuple[Plan, ...]:
    plans: list[Plan] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        pieces = part.split(":")
        if len(pieces) != 3 or not pieces[0] or not _DAYS_RE.fullmatch(pieces[1]):
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


class ConfigCheck:
    """Reads settings one by one and keeps every problem, for one report of them all.

    An operator who sets five variables wrong hears of all five at once, one line each,
    instead of one per attempt: each reader's :class:`ConfigError` is kept and its fallback
    used, so the readers after it still run; :meth:`done` raises them together.
    """

    def __init__(self) -> None:
        self.problems: list[str] = []

    def read(self, reader: Callable[[], _T], fallback: _T) -> _T:
        """``reader()``, or ``fallback`` with its problems kept."""
        try:
            return reader()
        except ConfigError as exc:
            self.problems.extend(exc.problems)
            return fallback

    def done(self) -> None:
        """ConfigError with every problem kept, one per line; nothing when there is none."""
        if self.problems:
            raise ConfigError(*self.problems)


def load_settings(env: Mapping[str, str] = os.environ) -> Settings:
    """Settings from ``env``; ConfigError naming every malformed variable, one line each."""
    check = ConfigCheck()
    day = 24 * 3600.0
    d = Settings()

    def number(name: str, default: float, *, low: float, high: float) -> float:
        return check.read(lambda: _number(env, name, default, low=low, high=high), default)

    def ton(name: str, default: int, *, step: int = 1) -> int:
        return check.read(lambda: _ton(env, name, default, step=step), default)

    def rate(name: str, default: Limit | None) -> Limit | None:
        return check.read(lambda: _rate(env, name, default), default)

    settings = Settings(
        tonapi_url=(env.get("TONAPI_URL") or d.tonapi_url).rstrip("/"),
        tonapi_key=env.get("TONAPI_KEY") or None,
        telegram_api_url=(env.get("TELEGRAM_API_URL") or "").rstrip("/") or None,
        bot_token=env.get("BOT_TOKEN") or None,
        wallet=check.read(lambda: _wallet(env), None),
        admin_ids=check.read(lambda: _admin_ids(env.get("ADMIN_IDS", "")), ()),
        payment_interval=number("I3LANI_PAYMENT_INTERVAL", 30.0, low=0.05, high=day),
        reward_interval=number("I3LANI_REWARD_INTERVAL", 300.0, low=0.05, high=day),
        analytics_interval=number("I3LANI_ANALYTICS_INTERVAL", 6 * 3600.0, low=0.05, high=7 * day),
        cleanup_interval=number("I3LANI_CLEANUP_INTERVAL", day, low=0.05, high=7 * day),
        health_interval=number("I3LANI_HEALTH_INTERVAL", 900.0, low=0.05, high=day),
        seal_interval=number("I3LANI_SEAL_INTERVAL", 3600.0, low=0.05, high=day),
        payment_window=number("I3LANI_PAYMENT_WINDOW", 3600.0, low=1.0, high=30 * day),
        tonapi_stream=check.read(lambda: _switch(env, "I3LANI_TONAPI_STREAM", True), True),
        min_finality=check.read(lambda: _min_finality(env), d.min_finality),
        stream_silence=number("I3LANI_TONAPI_STREAM_SILENCE", 45.0, low=0.1, high=3600.0),
        active_share=check.read(
            lambda: _share(env, "I3LANI_ACTIVE_SHARE", d.active_share), d.active_share
        ),
        price_per_1000_nanotons=ton("I3LANI_PRICE_PER_1000", d.price_per_1000_nanotons),
        min_price_nanotons=ton("I3LANI_MIN_PRICE", d.min_price_nanotons, step=PRICE_STEP),
        plans=check.read(
            lambda: _plans(env["I3LANI_PLANS"]) if env.get("I3LANI_PLANS") else d.plans, d.plans
        ),
        max_balance_nanotons=ton("I3LANI_MAX_BALANCE", d.max_balance_nanotons),
        task_retention_days=number("I3LANI_TASK_RETENTION", 7.0, low=0.0, high=3650.0),
        health_retention_days=number("I3LANI_HEALTH_RETENTION", 30.0, low=0.0, high=3650.0),
        task_retry_delay=number("I3LANI_TASK_RETRY_DELAY", 30.0, low=0.0, high=day),
        task_lock_timeout=number("I3LANI_TASK_LOCK_TIMEOUT", 30.0, low=1.0, high=day),
        telegram_rate=rate("I3LANI_TELEGRAM_RATE", d.telegram_rate),
        telegram_chat_rate=rate("I3LANI_TELEGRAM_CHAT_RATE", d.telegram_chat_rate),
        telegram_group_rate=rate("I3LANI_TELEGRAM_GROUP_RATE", d.telegram_group_rate),
        tonapi_rate=rate("I3LANI_TONAPI_RATE", d.tonapi_rate),
        task_concurrency=check.read(
            lambda: _task_concurrency(env.get("I3LANI_TASK_CONCURRENCY", "")), ()
        ),
    )
    check.done()
    return settings


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    """An on/off setting: ``on``/``off`` (also ``1``/``0``, ``true``/``false``, ``yes``/``no``)."""
    text = (env.get(name) or "").strip().lower()
    if not text:
        return default
    if text in _ON or text in _OFF:
        return text in _ON
    raise ConfigError(f"{name} must be on or off, got {env[name]!r}")


def _min_finality(env: Mapping[str, str]) -> MinFinality:
    """``I3LANI_MIN_FINALITY``: ``confirmed`` or ``finalized``; ``pending`` is refused, since a
    pending transfer is speculative and money decisions never wait on it."""
    text = (env.get("I3LANI_MIN_FINALITY") or "").strip().lower()
    if not text:
        return "finalized"
    if text == "pending":
        raise ConfigError(
            "I3LANI_MIN_FINALITY must be confirmed or finalized, not pending: a pending "
            "transfer is speculative and can vanish, so money decisions never wait on it"
        )
    if text not in MIN_FINALITIES:
        raise ConfigError(
            "I3LANI_MIN_FINALITY must be confirmed or finalized, "
            f"got {env['I3LANI_MIN_FINALITY']!r}"
        )
    return cast(MinFinality, text)


def _rate(env: Mapping[str, str], name: str, default: Limit | None) -> Limit | None:
    """A rate such as ``30/s`` or ``20/min`` (``off``: none)."""
    text = env.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        return parse_limit(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _task_concurrency(text: str) -> tuple[tuple[str, int], ...]:
    limits: dict[str, int] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        task_type, colon, number = part.partition(":")
        task_type, number = task_type.strip(), number.strip()
        if not colon or not _DAYS_RE.fullmatch(number):
            raise ConfigError(
                f"I3LANI_TASK_CONCURRENCY entries look like type:N (admin_alert:2), got {part!r}"
            )
        if task_type not in TASK_TYPES:
            raise ConfigError(
                f"I3LANI_TASK_CONCURRENCY names {task_type!r}, not a task type; the task "
                f"types are {', '.join(TASK_TYPES)}"
            )
        if task_type in limits:
            raise ConfigError(f"I3LANI_TASK_CONCURRENCY names {task_type!r} twice")
        if not 1 <= int(number) <= 10_000:
            raise ConfigError(
                f"I3LANI_TASK_CONCURRENCY {task_type!r}: a limit is 1 to 10000, got {number}"
            )
        limits[task_type] = int(number)
    return tuple(limits.items())


def _wallet(env: Mapping[str, str]) -> str | None:
    wallet = env.get("WALLET_ADDRESS") or None
    if wallet is not None:
        try:
            Address.parse(wallet)
        except InvalidAddress as exc:
            raise ConfigError(f"WALLET_ADDRESS: {exc}") from None
    return wallet
