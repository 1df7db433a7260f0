"""``i3lani demo``: the whole system on one machine, with simulated users, told as it happens.

What runs, all in this process, all of it the product's real code except the two outside
services:

* PostgreSQL: the demo's **own database** (``i3lani_demo`` unless ``--database`` says
  otherwise), dropped and created afresh on every run, on the embedded server when
  ``DATABASE_URL`` is unset, else on ``DATABASE_URL``'s server. Never the database
  ``DATABASE_URL`` names: a deployment's data is not touched.
* TonAPI and the Bot API: the stand-ins of :mod:`ops.standins` (a simulated chain; a bot token
  made up for the run).
* The real supervisor with the five product actors, their intervals and the payment window
  divided by ``--speed`` (:func:`demo_settings`).
* The real gateway in webhook mode on 127.0.0.1, with a random webhook secret, serving the
  admin API and the dashboard behind a random admin token (printed to stdout only).
* Simulated users (:func:`plan_scenario`, pure and seeded by ``--seed``). They post real
  Telegram ``Update`` JSON to the webhook with the secret header: ``/start`` (some through a
  friend's referral link), ``/addchannel``, ``/subscribe``, ``/balance``; and they pay on the
  simulated chain with the wallet, amount and memo of the ``ton://transfer`` link in the bot's
  reply: most exactly, one too little, one after the payment expired, one twice, one not at all.

**The crash.** Outside services cannot crash an actor in this runtime: the actors turn TonAPI
and Bot API failures into data (a scan skipped with its cursor kept, a failing health check,
``ChannelStatsFailed``). What crashes an actor is an exception escaping its own code, a bug.
So the demo runs the PaymentMonitor as :class:`CrashOncePaymentMonitor`, the real actor whose
tick raises :class:`DemoFault` once, when the demo arms it midway; the real supervisor records
``ActorCrashed``, backs off (``ActorBackoffScheduled``), restarts it (``ActorRestarted``,
``ActorStarted``) and the actor catches up from the log.

The log is followed with a subscription and shown one line per event (:class:`StreamView`:
ticks, task steps, health samples and wallet scans are counted, not shown). At the end (after
``--duration``, or on SIGINT / SIGTERM) the simulation stops, then the gateway, then the actors,
gracefully; :func:`ops.audit.run_audit` replays the log and checks its invariants, and a short
summary is printed. Exit 0 when the audit is clean, 1 when it found discrepancies; a second
Ctrl-C during the wind-down stops at once, without the audit (exit 130).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import os
import random
import re
import secrets
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, TextIO
from urllib.parse import parse_qs, unquote, urlsplit

import anyio
import asyncpg
import httpx
from anyio.abc import TaskGroup, TaskStatus

from actors.catalog import DEFAULT_ACTORS, child_specs
from actors.config import Settings
from actors.payment_monitor import MonitorState, PaymentMonitor
from actors.runtime import ActorRunner, ChildSpec, Message
from actors.ton import Address, format_ton, payment_id_from_comment
from bot_gateway import GatewayConfig, run_gateway
from events import (
    ActorBackoffScheduled,
    ActorCrashed,
    ActorParked,
    ActorRestarted,
    ActorStarted,
    ActorStopped,
    ActorTicked,
    AlertRaised,
    ChannelAdded,
    ChannelPriceChanged,
    ChannelStatsFailed,
    ChannelStatsUpdated,
    CleanupCompleted,
    HealthChecked,
    LatePaymentReceived,
    OperatorCommandIssued,
    PaymentConfirmed,
    PaymentCreated,
    PaymentExpired,
    PaymentUnderpaid,
    RewardCredited,
    RewardEarned,
    RewardFailed,
    SubscriptionActivated,
    UserRegistered,
    WalletScanned,
)
from events.errors import ConfigError, I3laniError, StoreUnavailable
from events.tasks import TaskDeadLettered, TaskFailed
from ops.admin import admin_routes
from ops.audit import AuditReport, run_audit
from ops.demo_options import (
    DEMO_DATABASE,
    RESERVED_DATABASES,
    DemoOptions,
    add_arguments,
    check_database_name,
)
from ops.standins import BotApiStandIn, TonApiStandIn
from store import EventStore, RecordedEvent, migrate, redact_dsn
from store.database import with_database
from store.records import START, Cursor
from supervisor import Supervisor

__all__ = [
    "DEMO_DATABASE",
    "DEMO_MARK",
    "ADMIN_ID",
    "DemoOptions",
    "Role",
    "SimUser",
    "Scenario",
    "plan_scenario",
    "demo_settings",
    "DemoFault",
    "FaultSwitch",
    "CrashOncePaymentMonitor",
    "demo_child_specs",
    "StreamLine",
    "StreamView",
    "DoublePayment",
    "DemoOutcome",
    "prepare_database",
    "run_demo",
    "add_arguments",
    "demo_command",
]

ADMIN_ID: Final = 42
"""The Telegram id of the demo's one administrator (ADMIN_IDS): health alerts go there."""
FIRST_USER_ID: Final = 1001
EXIT_OK: Final = 0
EXIT_DISCREPANCIES: Final = 1
EXIT_ABORTED: Final = 130

# The simulated world's clock, in demo seconds (divided by --speed for wall seconds).
PAYMENT_EVERY: Final = 2.0
REWARD_EVERY: Final = 3.0
ANALYTICS_EVERY: Final = 5.0
CLEANUP_EVERY: Final = 10.0
HEALTH_EVERY: Final = 4.0
PAYMENT_WINDOW: Final = 20.0
TASK_RETRY_DELAY: Final = 2.0
TASK_LOCK_TIMEOUT: Final = 10.0
LATE_MARGIN: Final = 2.0
"""Demo seconds after the expiry at which the late payer pays (at least 1.5 wall seconds:
the chain's ``utime`` is whole seconds)."""
ARRIVALS_SPAN: Final = 22.0
"""Demo seconds over which the users arrive (at most 2.5 s apart)."""
SETTLE: Final = 5.0
"""Demo seconds between the last payment and the users checking their balances."""

_MIN_INTERVAL: Final = 0.05
_STARTUP_LIMIT: Final = 60.0
_PLANS: Final = ("week", "week", "week", "month", "month")
_NAMES: Final = (
    "amira", "bilal", "chen", "dana", "emeka", "farah", "goran", "hana", "ivan", "jamila",
    "kofi", "lena", "malik", "nour", "oskar", "priya", "quinn", "rania", "sami", "tariq",
    "uma", "vera", "wen", "yusuf", "zara",
)  # fmt: skip
_SECRET_HEADER: Final = "X-Telegram-Bot-Api-Secret-Token"

Role = Literal["exact", "overpay", "underpay", "double", "late", "abandon"]
"""How a simulated user pays: the amount asked, more, less, the amount twice, the amount after
the payment expired, or not at all."""


# -- options ------------------------------------------------------------------------------------
# -- the scenario (pure) ------------------------------------------------------------------------
@dataclass(frozen=True)
class SimUser:
    """One simulated user and what they will do, at which demo second."""

    user_id: int
    username: str
    wallet: str  # raw form: the payer's own account on the simulated chain
    referrer: int | None
    arrive_at: float
    channel: str | None
    channel_members: int  # what the Bot API stand-in reports, once the bot can see it
    channel_at: float
    channel_public_at: float | None  # a private channel the owner makes public later
    plan: str
    subscribe_at: float
    role: Role
    pay_after: float  # demo seconds after the payment link arrives (late: window + margin)
    amount_percent: int  # of the amount asked
    second_pay_after: float | None  # "double": the second transfer, after the first
    balance_at: float
    tx_hashes: tuple[str, str]


@dataclass(frozen=True)
class Scenario:
    """Everything the simulated users do, planned up front from the seed."""

    wallet: str  # the bot's receiving wallet, user-friendly form
    users: tuple[SimUser, ...]
    crash_at: float
    end_at: float
    """Demo seconds until the last user has acted and everything settled."""


def _username(index: int) -> str:
    base = _NAMES[index % len(_NAMES)]
    return base if index < len(_NAMES) else f"{base}{index // len(_NAMES) + 1}"


def _roles(count: int, rng: random.Random) -> list[Role]:
    """One of each kind that tells a story, the rest pay exactly. The late payer and the one
    who never pays are among the first three users (their payments need the whole window);
    the founder (index 0) pays."""
    late_first = rng.random() < 0.5
    early: list[Role] = ["late", "abandon"] if late_first else ["abandon", "late"]
    others: list[Role] = ["exact", "double", "underpay"]
    if count >= 6:
        others.append("overpay")
    others += ["exact"] * (count - 2 - len(others))
    founder = others.pop(0)  # "exact": the founder's payment opens the story
    rng.shuffle(others)
    return [founder, *early, *others]


def plan_scenario(users: int, seed: int) -> Scenario:
    """What ``users`` simulated users do, reproducibly from ``seed``. Pure.

    Arrivals are spread over :data:`ARRIVALS_SPAN` demo seconds; each user starts the bot
    (after the first, most through an earlier user's referral link), maybe adds a channel,
    subscribes to a plan and pays according to their :data:`Role`; the crash is armed halfway
    through the arrivals; everyone checks their balance once the payments have settled.
    """
    if users < 5:
        raise ValueError(f"the demo needs at least 5 users to show every case, got {users}")
    rng = random.Random(seed)
    wallet = Address(0, rng.randbytes(32)).to_friendly()
    roles = _roles(users, rng)
    gap = min(2.5, ARRIVALS_SPAN / (users - 1))
    channel_owners = {i for i in range(users) if rng.random() < 0.35} or {0}
    hidden_channel = rng.choice(sorted(channel_owners)) if len(channel_owners) > 1 else None
    planned: list[SimUser] = []
    last_payment = 0.0
    for index, role in enumerate(roles):
        arrive = 1.0 + gap * index
        subscribe = arrive + 1.4
        referrer: int | None = None
        if index == 1 or (index > 1 and rng.random() < 0.7):
            referrer = FIRST_USER_ID + rng.randrange(index)
        name = _username(index)
        channel = public_at = None
        if index in channel_owners:
            hidden = index == hidden_channel
            channel = f"@{name}_{'club' if hidden else 'news'}"
            if hidden:  # the bot cannot see it at first; the owner makes it public later
                public_at = arrive + 0.7 + 2 * ANALYTICS_EVERY + 0.5
                last_payment = max(last_payment, public_at + ANALYTICS_EVERY)
        members = round(10 ** rng.uniform(3.0, 5.0))
        pay_after = PAYMENT_WINDOW + LATE_MARGIN if role == "late" else rng.uniform(1.5, 4.0)
        percent = {"overpay": rng.choice((125, 150)), "underpay": rng.choice((50, 70, 90))}
        second = 4.0 if role == "double" else None
        done = subscribe + pay_after + (second or 0.0)
        if role in ("abandon", "underpay"):
            done = max(done, subscribe + PAYMENT_WINDOW)  # until the payment expires
        last_payment = max(last_payment, done)
        planned.append(
            SimUser(
                user_id=FIRST_USER_ID + index,
                username=name,
                wallet=Address(0, rng.randbytes(32)).to_raw(),
                referrer=referrer,
                arrive_at=arrive,
                channel=channel,
                channel_members=members,
                channel_at=arrive + 0.7,
                channel_public_at=public_at,
                plan=rng.choice(_PLANS),
                subscribe_at=subscribe,
                role=role,
                pay_after=pay_after,
                amount_percent=percent.get(role, 100),
                second_pay_after=second,
                balance_at=0.0,
                tx_hashes=(rng.randbytes(32).hex(), rng.randbytes(32).hex()),
            )
        )
    balance_at = last_payment + SETTLE
    spread = min(0.3, 6.0 / users)
    planned = [
        dataclasses.replace(user, balance_at=balance_at + spread * i)
        for i, user in enumerate(planned)
    ]
    crash_at = planned[users // 2].arrive_at + 0.5
    return Scenario(
        wallet=wallet,
        users=tuple(planned),
        crash_at=crash_at,
        end_at=balance_at + spread * users + 3.0,
    )


def demo_settings(
    *, tonapi_url: str, bot_api_url: str, bot_token: str, wallet: str, speed: float
) -> Settings:
    """The actors' and the gateway's settings for the demo: the stand-ins, one admin, and every
    interval and the payment window divided by ``speed``. Pure."""

    def every(seconds: float) -> float:
        return max(seconds / speed, _MIN_INTERVAL)

    return Settings(
        tonapi_url=tonapi_url,
        telegram_api_url=bot_api_url,
        bot_token=bot_token,
        wallet=wallet,
        admin_ids=(ADMIN_ID,),
        payment_interval=every(PAYMENT_EVERY),
        reward_interval=every(REWARD_EVERY),
        analytics_interval=every(ANALYTICS_EVERY),
        cleanup_interval=every(CLEANUP_EVERY),
        health_interval=every(HEALTH_EVERY),
        payment_window=max(PAYMENT_WINDOW / speed, 1.0),
        task_retry_delay=every(TASK_RETRY_DELAY),
        task_lock_timeout=max(TASK_LOCK_TIMEOUT / speed, 1.0),
    )


# -- the crash ----------------------------------------------------------------------------------
class DemoFault(RuntimeError):
    """Raised once by the demo's PaymentMonitor, on purpose, as a bug in its code would."""


class FaultSwitch:
    """Armed by the demo; taken by the first tick after that, once across incarnations."""

    def __init__(self) -> None:
        self.armed = False
        self.fired = False

    def arm(self) -> None:
        self.armed = True

    def take(self) -> bool:
        if self.armed and not self.fired:
            self.fired = True
            return True
        return False


class CrashOncePaymentMonitor(PaymentMonitor):
    """The real PaymentMonitor (same name, same events), whose tick raises once when armed."""

    def __init__(self, settings: Settings, switch: FaultSwitch) -> None:
        super().__init__(settings)
        self.switch = switch

    async def on_tick(
        self, state: MonitorState, runner: ActorRunner[MonitorState]
    ) -> Sequence[Message]:
        if self.switch.take():
            raise DemoFault("injected by the demo: this tick raises, as a bug in it would")
        return await super().on_tick(state, runner)


def demo_child_specs(settings: Settings, switch: FaultSwitch) -> list[ChildSpec]:
    """The five product actors as ``i3lani run`` supervises them, the PaymentMonitor built as
    :class:`CrashOncePaymentMonitor`."""
    return [
        dataclasses.replace(spec, factory=lambda: CrashOncePaymentMonitor(settings, switch))
        if spec.name == PaymentMonitor.name
        else spec
        for spec in child_specs(DEFAULT_ACTORS, settings)
    ]


# -- showing the log ----------------------------------------------------------------------------
Tone = Literal["plain", "good", "warn", "bad", "action", "note"]


@dataclass(frozen=True)
class StreamLine:
    """One line of the live stream: who it is about, what happened, and how it should look."""

    label: str
    text: str
    tone: Tone = "plain"


@dataclass
class _Transfer:
    payment_id: int
    tx_hash: str
    lt: int
    value: int


def _short(text: str, keep: int = 6) -> str:
    return text if len(text) <= keep + 3 else f"{text[:keep]}..."


def _wallet(text: str) -> str:
    return text if len(text) <= 14 else f"{text[:6]}...{text[-5:]}"


def _ton(nanotons: int) -> str:
    return f"{format_ton(nanotons)} TON"


def _clock(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%H:%M:%S")


def _source(source: str) -> str:
    kind, _, rest = source.partition(":")
    if kind == "user":
        return f"user {rest} joined through their link"
    if kind == "channel":
        return f"channel @{rest} added"
    return source


_NOISE: Final[dict[type[Any], str]] = {
    ActorTicked: "actor ticks",
    WalletScanned: "wallet scans",
    HealthChecked: "health checks",
    CleanupCompleted: "cleanup passes",
}


@dataclass
class StreamView:
    """Turns recorded events into stream lines (``None``: not shown, counted in
    :attr:`skipped`). Remembers what it needs to word later events: payments' expiry, channels'
    last counts, the last health verdict, and the demo's own transfers, so that a transfer the
    PaymentMonitor scanned and deliberately left alone (a second payment) is said so."""

    skipped: Counter[str] = field(default_factory=Counter)
    _expires: dict[int, datetime] = field(default_factory=dict)
    _channels: dict[str, str] = field(default_factory=dict)  # the last measurement, worded
    _healthy: bool | None = None
    _cleanup_shown: bool = False
    _transfers: dict[str, _Transfer] = field(default_factory=dict)  # by tx hash
    _recorded_hashes: set[str] = field(default_factory=set)

    def expect_transfer(self, payment_id: int, tx_hash: str, lt: int, value: int) -> None:
        """A transfer the demo made: reported once a wallet scan has passed it."""
        self._transfers[tx_hash] = _Transfer(payment_id, tx_hash, lt, value)

    def describe(self, recorded: RecordedEvent) -> list[StreamLine]:
        event = recorded.event
        kind = type(event)
        if isinstance(event, WalletScanned):
            self.skipped[_NOISE[kind]] += 1
            return self._scanned(event.last_lt)
        if isinstance(event, HealthChecked):
            return self._health(event)
        if isinstance(event, CleanupCompleted):
            self.skipped[_NOISE[kind]] += 1
            if self._cleanup_shown and not any(event.removed.values()):
                return []
            self._cleanup_shown = True
            removed = ", ".join(
                f"{n} {what.replace('_', ' ')}" for what, n in event.removed.items()
            )
            return [StreamLine("Cleanup", f"pass done: removed {removed}")]
        if isinstance(event, ActorTicked):
            self.skipped[_NOISE[kind]] += 1
            return []
        if recorded.category == "task":
            return self._task(event)
        if isinstance(event, ChannelStatsUpdated | ChannelStatsFailed) and self._repeated(event):
            return []
        line = (
            self._payment(event)
            or self._reward(event)
            or self._channel(event)
            or self._actor(event)
            or self._operations(event)
        )
        if line is None:
            self.skipped["other events"] += 1
            return []
        return [line]

    # -- by domain ---------------------------------------------------------------------------
    def _payment(self, event: Any) -> StreamLine | None:
        match event:
            case UserRegistered():
                via = f", referred by user {event.referred_by}" if event.referred_by else ""
                name = f" as @{event.username}" if event.username else ""
                return StreamLine(f"user {event.user_id}", f"registered{name}{via}")
            case PaymentCreated():
                self._expires[event.payment_id] = event.expires_at
                return StreamLine(
                    f"payment {event.payment_id}",
                    f"created for user {event.user_id}: {event.plan} plan, "
                    f"{_ton(event.amount_nanotons)}, memo {event.memo}, "
                    f"pay by {_clock(event.expires_at)}",
                )
            case PaymentConfirmed():
                self._recorded_hashes.add(event.tx_hash)
                extra = (
                    f", {_ton(event.overpaid_nanotons)} more than asked"
                    if event.overpaid_nanotons
                    else ""
                )
                return StreamLine(
                    f"payment {event.payment_id}",
                    f"CONFIRMED  {_ton(event.amount_nanotons)}  tx {_short(event.tx_hash)}{extra}",
                    "good",
                )
            case SubscriptionActivated():
                return StreamLine(
                    f"payment {event.payment_id}",
                    f"{event.plan} plan active for user {event.user_id} until "
                    f"{event.ends_at:%Y-%m-%d}",
                    "good",
                )
            case PaymentUnderpaid():
                self._recorded_hashes.add(event.tx_hash)
                return StreamLine(
                    f"payment {event.payment_id}",
                    f"UNDERPAID  {_ton(event.amount_nanotons)} of "
                    f"{_ton(event.expected_nanotons)}  tx {_short(event.tx_hash)}: not confirmed",
                    "warn",
                )
            case LatePaymentReceived():
                self._recorded_hashes.add(event.tx_hash)
                return StreamLine(
                    f"payment {event.payment_id}",
                    f"LATE  {_ton(event.amount_nanotons)} arrived after it expired  "
                    f"tx {_short(event.tx_hash)}: kept for manual review",
                    "warn",
                )
            case PaymentExpired():
                due = self._expires.get(event.payment_id)
                when = f" (due by {_clock(due)})" if due else ""
                return StreamLine(
                    f"payment {event.payment_id}", f"EXPIRED without a full payment{when}", "warn"
                )
        return None

    def _reward(self, event: Any) -> StreamLine | None:
        match event:
            case RewardEarned():
                return StreamLine(
                    f"user {event.user_id}",
                    f"earned {_ton(event.amount_nanotons)}: {_source(event.source)}",
                )
            case RewardCredited():
                return StreamLine(
                    f"user {event.user_id}",
                    f"credited {_ton(event.amount_nanotons)}, balance now "
                    f"{_ton(event.balance_after_nanotons)}",
                    "good",
                )
            case RewardFailed():
                return StreamLine(
                    f"user {event.user_id}",
                    f"reward FAILED after {event.attempts} attempts: {event.error}",
                    "bad",
                )
        return None

    def _channel(self, event: Any) -> StreamLine | None:
        match event:
            case ChannelAdded():
                return StreamLine(event.channel, f"added by user {event.added_by}")
            case ChannelStatsUpdated():
                return StreamLine(
                    event.channel,
                    f"{event.subscribers:,} subscribers, {event.active_subscribers:,} active",
                )
            case ChannelPriceChanged():
                was = (
                    f" (was {_ton(event.old_price_nanotons)})"
                    if event.old_price_nanotons is not None
                    else ""
                )
                return StreamLine(
                    event.channel, f"priced {_ton(event.new_price_nanotons)}{was}", "good"
                )
            case ChannelStatsFailed():
                return StreamLine(
                    event.channel, f"not measured: {event.kind}, {event.description}", "warn"
                )
        return None

    def _actor(self, event: Any) -> StreamLine | None:
        match event:
            case ActorStarted():
                return StreamLine(
                    event.actor, f"started on {event.node} (generation {event.generation})"
                )
            case ActorCrashed():
                return StreamLine(
                    event.actor,
                    f"CRASHED after {event.uptime_seconds:.1f} s: {event.error_type}: "
                    f"{event.message}",
                    "bad",
                )
            case ActorBackoffScheduled():
                return StreamLine(
                    event.actor,
                    f"supervisor: restart in {event.delay_seconds:.2f} s (attempt {event.attempt})",
                    "warn",
                )
            case ActorRestarted():
                why = {"crash": "after the crash", "operator": "by an operator"}.get(
                    event.cause, f"({event.cause})"
                )
                who = f" {event.requested_by}" if event.requested_by else ""
                return StreamLine(event.actor, f"restarted {why}{who}", "good")
            case ActorStopped():
                return StreamLine(event.actor, f"stopped: {event.reason}")
            case ActorParked():
                return StreamLine(event.actor, f"PARKED: {event.reason}", "bad")
        return None

    def _operations(self, event: Any) -> StreamLine | None:
        match event:
            case AlertRaised():
                tone: Tone = "good" if event.subject == "recovered" else "bad"
                what = (
                    f"health {event.subject}"
                    if event.kind == "health"
                    else f"{event.subject}: {event.message}"
                )
                return StreamLine("alert", f"sent to the admins by Telegram: {what}", tone)
            case OperatorCommandIssued():
                why = f" ({event.reason})" if event.reason else ""
                return StreamLine(
                    "operator", f"{event.action} {event.actor} by {event.requested_by}{why}"
                )
        return None

    def _repeated(self, event: ChannelStatsUpdated | ChannelStatsFailed) -> bool:
        """Whether a channel's measurement says what the last one said (not shown again)."""
        if isinstance(event, ChannelStatsUpdated):
            said = f"{event.subscribers} subscribers"
        else:
            said = f"{event.kind}: {event.description}"
        if self._channels.get(event.channel) == said:
            self.skipped["repeated channel measurements"] += 1
            return True
        self._channels[event.channel] = said
        return False

    def _task(self, event: Any) -> list[StreamLine]:
        if isinstance(event, TaskFailed):
            return [
                StreamLine(f"task {event.task_id}", f"failed: {_short(event.error, 100)}", "warn")
            ]
        if isinstance(event, TaskDeadLettered):
            return [
                StreamLine(
                    f"task {event.task_id}",
                    f"DEAD-LETTERED after {event.attempts} attempts: {_short(event.error, 100)}",
                    "bad",
                )
            ]
        self.skipped["task steps"] += 1
        return []

    def _health(self, event: HealthChecked) -> list[StreamLine]:
        self.skipped[_NOISE[HealthChecked]] += 1
        if event.healthy is self._healthy:
            return []
        self._healthy = event.healthy
        if event.healthy:
            return [StreamLine("health", f"healthy: all {len(event.checks)} checks pass", "good")]
        failing = "; ".join(f"{c.name}: {c.detail or 'failed'}" for c in event.checks if not c.ok)
        return [StreamLine("health", f"FAILING: {_short(failing, 140)}", "warn")]

    def _scanned(self, last_lt: int) -> list[StreamLine]:
        lines = []
        for tx_hash, transfer in list(self._transfers.items()):
            if transfer.lt > last_lt:
                continue
            del self._transfers[tx_hash]
            if tx_hash not in self._recorded_hashes:
                lines.append(
                    StreamLine(
                        f"payment {transfer.payment_id}",
                        f"another {_ton(transfer.value)} (tx {_short(tx_hash)}) scanned and "
                        "NOT confirmed again: the payment is already paid (a refund case)",
                        "good",
                    )
                )
        return lines


_COLOURS: Final[dict[Tone, str]] = {
    "plain": "",
    "good": "\x1b[32m",
    "warn": "\x1b[33m",
    "bad": "\x1b[1;31m",
    "action": "\x1b[36m",
    "note": "\x1b[1m",
}
_DIM: Final = "\x1b[2m"
_RESET: Final = "\x1b[0m"


class Console:
    """Where the story is told: ``HH:MM:SS  label  > text`` for what the simulated users (and
    the demo) do, ``HH:MM:SS  label    text`` for events. Colours only on a terminal."""

    def __init__(self, out: TextIO, *, color: bool) -> None:
        self.out = out
        self.color = color

    def _paint(self, tone: Tone, text: str) -> str:
        code = _COLOURS[tone]
        return f"{code}{text}{_RESET}" if self.color and code else text

    def line(self, at: datetime, label: str, text: str, tone: Tone = "plain") -> None:
        stamp = _clock(at)
        if self.color:
            stamp = f"{_DIM}{stamp}{_RESET}"
        mark = "> " if tone == "action" else "  "
        print(f"{stamp}  {label:<17}{mark}{self._paint(tone, text)}", file=self.out, flush=True)

    def act(self, label: str, text: str) -> None:
        self.line(datetime.now(UTC), label, text, "action")

    def note(self, text: str, tone: Tone = "note") -> None:
        self.line(datetime.now(UTC), "demo", text, tone)

    def say(self, text: str = "", tone: Tone = "plain") -> None:
        print(self._paint(tone, text), file=self.out, flush=True)


class _Follower:
    """Follows the whole log with a subscription and tells it on the console."""

    def __init__(self, store: EventStore, console: Console, view: StreamView) -> None:
        self.store = store
        self.console = console
        self.view = view
        self.cursor: Cursor = START
        self._moved = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with self.store.subscribe(after=START, poll_interval=0.5, skip_unknown=True) as sub:
            task_status.started()
            async for recorded in sub:
                for line in self.view.describe(recorded):
                    self.console.line(recorded.recorded_at, line.label, line.text, line.tone)
                self.cursor = recorded.cursor
                self._moved.set()
                self._moved = anyio.Event()

    async def wait_caught_up(self, seconds: float) -> None:
        """Wait (``seconds`` at most) until everything in the log now has been shown,
        including events held back behind a transaction still open elsewhere."""
        with anyio.move_on_after(seconds):
            while self.cursor < await self.store.head() or await self.store.held_back(self.cursor):
                with anyio.move_on_after(0.1):
                    await self._moved.wait()


# -- the simulated users ------------------------------------------------------------------------
@dataclass(frozen=True)
class DoublePayment:
    """A payment the demo paid twice: which transfer came first, which second."""

    payment_id: int
    user_id: int
    first_tx: str
    second_tx: str
    second_lt: int


@dataclass(frozen=True)
class _Link:
    wallet: str
    amount: int
    memo: str
    payment_id: int


def _payment_link(reply: str) -> _Link | None:
    """The ``ton://transfer/<address>?amount=<nanotons>&text=<memo>`` link in a reply."""
    match = re.search(r"ton://transfer/(\S+)", reply)
    if match is None:
        return None
    parts = urlsplit(f"ton://transfer/{match[1]}")
    query = parse_qs(parts.query)
    try:
        address = unquote(parts.path.removeprefix("/"))
        amount = int(query["amount"][0])
        memo = query["text"][0]
    except (KeyError, IndexError, ValueError):
        return None
    payment_id = payment_id_from_comment(memo)
    if payment_id is None:
        return None
    return _Link(address, amount, memo, payment_id)


class _Simulation:
    """The simulated users: Telegram updates to the webhook, transfers on the chain."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        speed: float,
        settings: Settings,
        console: Console,
        view: StreamView,
        client: httpx.AsyncClient,
        webhook_path: str,
        secret: str,
        tonapi: TonApiStandIn,
        bot_api: BotApiStandIn,
        switch: FaultSwitch,
    ) -> None:
        self.scenario = scenario
        self.speed = speed
        self.settings = settings
        self.console = console
        self.view = view
        self.client = client
        self.webhook_path = webhook_path
        self.secret = secret
        self.tonapi = tonapi
        self.bot_api = bot_api
        self.switch = switch
        self.started_at = anyio.current_time()
        self.registered = {user.user_id: anyio.Event() for user in scenario.users}
        self.doubles: list[DoublePayment] = []
        self.done = False
        self._update_ids = itertools.count(1)

    async def run(self) -> None:
        self.started_at = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._fault)
            for user in self.scenario.users:
                tg.start_soon(self._user, user)
                if user.channel is not None and user.channel_public_at is not None:
                    tg.start_soon(self._publish, user, user.channel, user.channel_public_at)
        await self._at(self.scenario.end_at)
        self.done = True

    async def _at(self, demo_seconds: float) -> None:
        await anyio.sleep_until(self.started_at + demo_seconds / self.speed)

    async def _fault(self) -> None:
        await self._at(self.scenario.crash_at)
        self.console.act(
            "demo",
            "arming a fault: PaymentMonitor's next tick raises an exception, as a bug would",
        )
        self.switch.arm()

    async def _user(self, user: SimUser) -> None:
        await self._at(user.arrive_at)
        start = "/start"
        if user.referrer is not None:
            await self.registered[user.referrer].wait()  # a friend shares their link once in
            start = f"/start ref_{user.referrer}"
        await self._say(user, start, expect="")
        self.registered[user.user_id].set()
        if user.channel is not None:
            await self._at(user.channel_at)
            if user.channel_public_at is None:
                self.bot_api.set_member_count(user.channel, user.channel_members)
            await self._say(user, f"/addchannel {user.channel}", expect="")
        await self._at(user.subscribe_at)
        reply = await self._say(user, f"/subscribe {user.plan}", expect="ton://transfer/")
        link = _payment_link(reply)
        if link is None:
            self.console.note(f"user {user.user_id} got no payment link: {reply[:80]!r}", "warn")
        else:
            await self._pay(user, link)
        await self._at(user.balance_at)
        balance = await self._say(user, "/balance", expect="balance")
        if balance:
            self.console.line(datetime.now(UTC), f"user {user.user_id}", f"bot: {balance}")

    async def _publish(self, user: SimUser, channel: str, at: float) -> None:
        await self._at(at)
        self.console.act(
            f"user {user.user_id}", f"makes {channel} public: the bot can count it now"
        )
        self.bot_api.set_member_count(channel, user.channel_members)

    async def _pay(self, user: SimUser, link: _Link) -> None:
        if user.role == "abandon":
            self.console.act(
                f"user {user.user_id}", f"will not pay payment {link.payment_id}: it will expire"
            )
            return
        if user.role == "late":
            # The window, from the reply, plus a margin the chain's whole-second utime needs.
            wait = self.settings.payment_window + max(LATE_MARGIN / self.speed, 1.5)
        else:
            wait = user.pay_after / self.speed
        await anyio.sleep(wait)
        value = link.amount * user.amount_percent // 100
        what = {
            "late": f"pays {_ton(value)} for payment {link.payment_id}, after it expired",
            "underpay": f"pays {_ton(value)} of {_ton(link.amount)} for payment {link.payment_id}",
            "overpay": f"pays {_ton(value)} for payment {link.payment_id} ({_ton(link.amount)} "
            "asked)",
        }.get(user.role, f"pays {_ton(value)} to {_wallet(link.wallet)} with memo {link.memo}")
        self._transfer(user, link, value, user.tx_hashes[0], what)
        if user.second_pay_after is None:
            return
        await anyio.sleep(user.second_pay_after / self.speed)
        second = self._transfer(
            user,
            link,
            value,
            user.tx_hashes[1],
            f"pays payment {link.payment_id} AGAIN: {_ton(value)}, same memo",
        )
        self.doubles.append(
            DoublePayment(
                payment_id=link.payment_id,
                user_id=user.user_id,
                first_tx=user.tx_hashes[0],
                second_tx=user.tx_hashes[1],
                second_lt=second,
            )
        )

    def _transfer(self, user: SimUser, link: _Link, value: int, tx_hash: str, what: str) -> int:
        self.console.act(f"user {user.user_id}", f"{what} (tx {_short(tx_hash)})")
        tx = self.tonapi.transfer(
            link.wallet, source=user.wallet, value=value, comment=link.memo, tx_hash=tx_hash
        )
        lt = int(tx["lt"])
        self.view.expect_transfer(link.payment_id, tx_hash, lt, value)
        return lt

    async def _say(self, user: SimUser, text: str, *, expect: str) -> str:
        """Post ``text`` from ``user`` as Telegram would; the bot's reply containing ``expect``
        (the bot replies before the webhook answers)."""
        self.console.act(f"user {user.user_id}", text)
        before = len(self.bot_api.sent)
        try:
            response = await self.client.post(
                self.webhook_path,
                json=self._update(user, text),
                headers={_SECRET_HEADER: self.secret},
            )
        except httpx.HTTPError as exc:
            self.console.note(f"the webhook did not answer user {user.user_id}: {exc}", "warn")
            return ""
        if response.status_code != 200:
            self.console.note(
                f"the webhook answered {response.status_code} to user {user.user_id}", "warn"
            )
            return ""
        replies = [
            m.text
            for m in self.bot_api.sent[before:]
            if m.chat_id == user.user_id and expect in m.text
        ]
        return replies[0] if replies else ""

    def _update(self, user: SimUser, text: str) -> dict[str, Any]:
        """A Telegram Update carrying a private message, shaped as Telegram sends it."""
        update_id = next(self._update_ids)
        sender = {
            "id": user.user_id,
            "is_bot": False,
            "first_name": user.username.capitalize(),
            "username": user.username,
            "language_code": "en",
        }
        message: dict[str, Any] = {
            "message_id": update_id,
            "from": sender,
            "chat": {"id": user.user_id, "first_name": sender["first_name"], "type": "private"},
            "date": int(time.time()),
            "text": text,
        }
        command = text.split(maxsplit=1)[0]
        message["entities"] = [{"offset": 0, "length": len(command), "type": "bot_command"}]
        return {"update_id": update_id, "message": message}


# -- signals ------------------------------------------------------------------------------------
class _Stopper:
    """SIGINT / SIGTERM cancel the current phase: waiting for the actors to start, or the
    simulation (the wind-down, audit and summary follow), or the wind-down (no audit then).
    A signal between phases cancels the next one as soon as it begins."""

    def __init__(self) -> None:
        self.requests = 0
        self._pending = 0
        self._scope: anyio.CancelScope | None = None

    @contextlib.contextmanager
    def phase(self) -> Iterator[anyio.CancelScope]:
        with anyio.CancelScope() as scope:
            if self._pending:
                self._pending -= 1
                scope.cancel()
            self._scope = scope
            try:
                yield scope
            finally:
                self._scope = None

    def request(self) -> None:
        self.requests += 1
        if self._scope is not None and not self._scope.cancel_called:
            self._scope.cancel()
        else:
            self._pending += 1

    async def watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                self.request()


# -- the database -------------------------------------------------------------------------------
DEMO_MARK: Final = "i3lani demo: dropped and recreated by every `i3lani demo` run"
"""The comment on a database the demo created: the only kind it will drop."""
_DEMO_DATABASE_SQL: Final = """
SELECT true, shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1
"""


def _database_name(dsn: str) -> str:
    return unquote(urlsplit(dsn).path.removeprefix("/"))


async def prepare_database(server_dsn: str, name: str) -> str:
    """Drop and create ``name`` on ``server_dsn``'s server, migrate it; its DSN.

    Only a database an earlier demo created (its comment is :data:`DEMO_MARK`) is ever
    dropped: an existing database without that mark is refused (ConfigError), and so are the
    very database ``server_dsn`` names and PostgreSQL's own (ValueError).
    """
    if not check_database_name(name):
        raise ValueError(
            f"--database {name!r}: give a plain lower-case name other than "
            f"{', '.join(RESERVED_DATABASES)}"
        )
    if name == _database_name(server_dsn):
        raise ValueError(
            f"--database {name!r} is the database DATABASE_URL names: the demo drops and "
            "recreates its database, so it never uses that one; pick another name"
        )
    try:
        admin = await asyncpg.connect(server_dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(
            f"cannot connect to {redact_dsn(server_dsn)}: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        exists, mark = await admin.fetchrow(_DEMO_DATABASE_SQL, name) or (False, None)
        if exists and mark != DEMO_MARK:
            raise ConfigError(
                f"database {name!r} already exists on {redact_dsn(server_dsn)} and was not "
                "created by i3lani demo: the demo never drops it; give another --database name"
            )
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.execute(f"COMMENT ON DATABASE \"{name}\" IS '{DEMO_MARK}'")
    except asyncpg.InsufficientPrivilegeError as exc:
        raise ConfigError(
            f"cannot create the demo database {name!r} on {redact_dsn(server_dsn)}: {exc}; "
            "give a DATABASE_URL whose user may CREATE DATABASE, or unset it to use the "
            "embedded PostgreSQL"
        ) from exc
    finally:
        await admin.close()
    dsn = with_database(server_dsn, name)
    await migrate(dsn)
    return dsn


# -- the run ------------------------------------------------------------------------------------
@dataclass
class DemoOutcome:
    """How a demo run ended; ``audit`` is ``None`` when it was stopped before the audit."""

    exit_code: int
    dsn: str | None = None
    dashboard_url: str | None = None
    interrupted: bool = False
    simulation_done: bool = False
    audit: AuditReport | None = None
    doubles: list[DoublePayment] = field(default_factory=list)


@dataclass
class _Tally:
    """The facts the summary states, from one pass over the log."""

    users: int = 0
    referred: int = 0
    payments: int = 0
    confirmed: int = 0
    overpaid: int = 0
    underpaid: int = 0
    late: int = 0
    expired: int = 0
    subscriptions: int = 0
    earned: Counter[str] = field(default_factory=Counter)
    credited: int = 0
    credited_nanotons: int = 0
    failed: int = 0
    channels: int = 0
    priced: set[str] = field(default_factory=set)
    unmeasured: set[str] = field(default_factory=set)
    crashes: list[str] = field(default_factory=list)
    restarts: list[str] = field(default_factory=list)
    confirmations: Counter[int] = field(default_factory=Counter)

    def add(self, event: Any) -> None:
        match event:
            case UserRegistered():
                self.users += 1
                self.referred += event.referred_by is not None
            case PaymentCreated():
                self.payments += 1
            case PaymentConfirmed():
                self.confirmed += 1
                self.overpaid += event.overpaid_nanotons > 0
                self.confirmations[event.payment_id] += 1
            case PaymentUnderpaid():
                self.underpaid += 1
            case LatePaymentReceived():
                self.late += 1
            case PaymentExpired():
                self.expired += 1
            case SubscriptionActivated():
                self.subscriptions += 1
            case RewardEarned():
                self.earned[event.reason] += 1
            case RewardCredited():
                self.credited += 1
                self.credited_nanotons += event.amount_nanotons
            case RewardFailed():
                self.failed += 1
            case ChannelAdded():
                self.channels += 1
            case ChannelPriceChanged():
                self.priced.add(event.channel)
            case ChannelStatsFailed():
                self.unmeasured.add(event.channel)
            case ActorCrashed():
                self.crashes.append(f"{event.actor} ({event.error_type})")
            case ActorRestarted() if event.cause == "crash":
                self.restarts.append(event.actor)


async def _tally(store: EventStore, *, patience: float = 5.0) -> _Tally:
    """The summary's facts from the whole log. Events committed behind a transaction still
    open elsewhere on the server (transaction ids are server-wide) are waited for, as the
    audit does, for ``patience`` seconds."""
    tally = _Tally()
    cursor = START
    deadline = anyio.current_time() + patience
    while True:
        page = await store.read_page(cursor, limit=1000, skip_unknown=True)
        for recorded in page.events:
            tally.add(recorded.event)
        cursor = page.cursor
        if page.fetched == 1000:
            continue
        if anyio.current_time() > deadline or not await store.held_back(cursor):
            return tally
        await anyio.sleep(0.05)


def _n(count: int, plural: str) -> str:
    """``3 wallet scans``, ``1 wallet scan``, ``1 cleanup pass``."""
    if count == 1:
        plural = plural[:-2] if plural.endswith("sses") else plural.removesuffix("s")
    return f"{count} {plural}"


def _summary(
    tally: _Tally, report: AuditReport, doubles: Sequence[DoublePayment], view: StreamView
) -> list[tuple[str, str, Tone]]:
    """The summary's rows: label, text, tone."""
    paid_twice = sum(1 for d in doubles if tally.confirmations[d.payment_id] == 1)
    confirmed = [_n(tally.overpaid, "overpaid")] if tally.overpaid else []
    if doubles:
        confirmed.append(f"{paid_twice} of them paid twice and confirmed once")
    detail = f" ({', '.join(confirmed)})" if confirmed else ""
    unmeasured = len(tally.unmeasured - tally.priced)
    rows: list[tuple[str, str, Tone]] = [
        (
            "users",
            f"{tally.users} registered, {tally.referred} of them through a referral",
            "plain",
        ),
        (
            "payments",
            f"{tally.payments} created: {tally.confirmed} confirmed{detail}, "
            f"{tally.underpaid} underpaid, {tally.late} paid late (kept for review), "
            f"{tally.expired} expired",
            "plain",
        ),
        ("subscriptions", f"{tally.subscriptions} activated", "plain"),
        (
            "rewards",
            f"{_n(sum(tally.earned.values()), 'earned')} "
            f"({tally.earned.get('referral', 0)} for referrals, "
            f"{tally.earned.get('channel_addition', 0)} for channels); "
            f"{tally.credited} credited, {_ton(tally.credited_nanotons)} in all; "
            f"{tally.failed} failed; {report.summary.rewards_pending} pending",
            "plain",
        ),
        (
            "channels",
            f"{tally.channels} added, {len(tally.priced)} priced"
            + (f", {unmeasured} not measurable" if unmeasured else ""),
            "plain",
        ),
    ]
    crashes = ", ".join(tally.crashes) or "none"
    restarts = ", ".join(tally.restarts) or "none"
    tone: Tone = "plain" if len(tally.crashes) == len(tally.restarts) else "warn"
    rows.append(("actors", f"crashed: {crashes}; restarted by the supervisor: {restarts}", tone))
    if view.skipped:
        hidden = ", ".join(_n(n, what) for what, n in view.skipped.most_common())
        rows.append(("not shown", hidden, "plain"))
    return rows


def _audit_lines(report: AuditReport) -> list[tuple[str, Tone]]:
    """``audit: clean (N events, 0 discrepancies)``, or each discrepancy (ten at most)."""
    events = report.summary.events_replayed
    if report.clean:
        lines: list[tuple[str, Tone]] = [
            (f"audit: clean ({events} events, 0 discrepancies)", "good")
        ]
    else:
        total = sum(report.discrepancy_counts.values())
        lines = [(f"audit: {total} DISCREPANCIES in {events} events", "bad")]
        lines += [(f"  {d.check}: {d.message}", "bad") for d in report.discrepancies[:10]]
    lines += [(f"  note: {note}", "warn") for note in report.notes]
    return lines


def _header(
    console: Console,
    options: DemoOptions,
    scenario: Scenario,
    settings: Settings,
    *,
    where: str,
    tonapi: str,
    bot_api: str,
    webhook: str,
    dashboard: str,
) -> None:
    needed = scenario.end_at / options.speed
    console.say(
        f"i3lani demo: {options.users} simulated users, seed {options.seed}, "
        f"speed {options.speed:g}x, {options.duration:g} s",
        "note",
    )
    intervals = ", ".join(
        f"{name} {seconds:g} s"
        for name, seconds in (
            ("payments", settings.payment_interval),
            ("rewards", settings.reward_interval),
            ("channels", settings.analytics_interval),
            ("cleanup", settings.cleanup_interval),
            ("health", settings.health_interval),
        )
    )
    for label, text in (
        ("database", f"{options.database}, created afresh for this run on {where}"),
        ("TonAPI", f"stand-in at {tonapi}: a simulated chain; the bot's wallet {scenario.wallet}"),
        ("Bot API", f"stand-in at {bot_api}; the admin is Telegram user {ADMIN_ID}"),
        ("gateway", f"webhook at {webhook} (secret header checked)"),
        ("dashboard", dashboard),
        ("actors", f"the five product actors, ticking every: {intervals}"),
        ("payments", f"expire {settings.payment_window:g} s after they are created"),
    ):
        console.say(f"  {label:<10} {text}")
    console.say(
        f"The simulated users need about {needed:.0f} s at this speed"
        + (
            "."
            if needed <= options.duration
            else f": --duration {options.duration:g} stops them before they are done "
            "(raise --duration or --speed to see everything)."
        )
    )
    console.say(
        "Lines with > are what the simulated users (and the demo) do; the others are events "
        "as they are appended to the log. Times are UTC. Ctrl-C stops the demo cleanly."
    )
    console.say()


async def _await_actors(supervisor: Supervisor) -> None:
    try:
        with anyio.fail_after(_STARTUP_LIMIT):
            for name in supervisor.names:
                await supervisor.wait_started(name)
    except TimeoutError:
        missing = [n for n in supervisor.names if n not in supervisor.running_here()]
        raise I3laniError(
            f"{', '.join(missing)} did not start within {_STARTUP_LIMIT:g} s; "
            "`I3LANI_LOG_LEVEL=INFO i3lani demo` shows why"
        ) from None


@dataclass
class _Service:
    """A long-running task the wind-down stops on its own: its scope and its end."""

    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    ended: anyio.Event = field(default_factory=anyio.Event)

    async def stop(self) -> None:
        self.scope.cancel()
        await self.ended.wait()


def _as_service(service: _Service, run: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapped(*, task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            with service.scope:
                await run(task_status=task_status)
        finally:
            service.ended.set()

    return wrapped


async def run_demo(
    server_dsn: str,
    options: DemoOptions,
    out: TextIO,
    *,
    embedded: bool = False,
    handle_signals: bool = False,
) -> DemoOutcome:
    """Run the demo against ``server_dsn``'s server (see the module docstring).

    ``embedded`` says the server is the embedded PostgreSQL (for the wording);
    ``handle_signals`` makes SIGINT / SIGTERM stop it cleanly (the console command does; a
    test leaves it off)."""
    stopper = _Stopper()
    try:
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(stopper.watch_signals)
            try:
                outcome = await _demo(server_dsn, options, out, stopper, embedded=embedded)
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Task groups wrap even a single error: a one-line error stays one (see ops.cli).
        cause = _single(group)
        if isinstance(cause, I3laniError | ValueError):
            raise cause from None
        raise
    return outcome


def _single(exc: BaseException) -> BaseException:
    """The one exception inside task-group wrappers, or ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _bot_token(seed: int) -> str:
    """A token made up for the run, shaped as @BotFather's: ``<digits>:<text>``."""
    bot_id = random.Random(seed).randrange(10**9, 10**10)
    return f"{bot_id}:demo-{secrets.token_urlsafe(24)}"


async def _demo(
    server_dsn: str, options: DemoOptions, out: TextIO, stopper: _Stopper, *, embedded: bool
) -> DemoOutcome:
    console = Console(out, color=out.isatty() and not os.environ.get("NO_COLOR"))
    scenario = plan_scenario(options.users, options.seed)
    secret = secrets.token_urlsafe(32)
    admin_token = secrets.token_urlsafe(32)
    bot_token = _bot_token(options.seed)
    switch = FaultSwitch()
    view = StreamView()
    outcome = DemoOutcome(exit_code=EXIT_ABORTED)
    shown = redact_dsn(with_database(server_dsn, options.database))
    where = "the embedded PostgreSQL" if embedded else f"the server of {redact_dsn(server_dsn)}"
    kept = (
        "replaces it"
        if embedded
        else f"replaces it; `DATABASE_URL={shown} i3lani audit` reads it again"
    )
    with stopper.phase() as preparing:
        outcome.dsn = dsn = await prepare_database(server_dsn, options.database)
    if preparing.cancel_called:
        console.note("stopped before the demo started")
        return outcome
    async with contextlib.AsyncExitStack() as stack:
        tonapi = await stack.enter_async_context(TonApiStandIn())
        bot_api = await stack.enter_async_context(BotApiStandIn(bot_token))
        settings = demo_settings(
            tonapi_url=tonapi.url,
            bot_api_url=bot_api.url,
            bot_token=bot_token,
            wallet=scenario.wallet,
            speed=options.speed,
        )
        # Two stores, as the worker and the web service would have, and one for watching.
        worker_store = await stack.enter_async_context(EventStore.open(dsn, node="demo"))
        gateway_store = await stack.enter_async_context(EventStore.open(dsn, node="demo"))
        watch_store = await stack.enter_async_context(
            EventStore.open(dsn, min_connections=1, max_connections=3)
        )
        supervisor = Supervisor(
            worker_store,
            demo_child_specs(settings, switch),
            node="demo",
            rng=random.Random(options.seed),
        )
        config = GatewayConfig(webhook_secret=secret, admin_token=admin_token)
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)  # runs first on the way out
        actors, gateway, follower = _Service(), _Service(), _Service()
        await tg.start(_as_service(actors, supervisor.run))
        url = await _start_gateway(tg, gateway, settings, gateway_store, config, options.port)
        outcome.dashboard_url = f"{url}/dashboard?token={admin_token}"
        _header(
            console,
            options,
            scenario,
            settings,
            where=where,
            tonapi=tonapi.url,
            bot_api=bot_api.url,
            webhook=f"{url}{config.webhook_path}",
            dashboard=outcome.dashboard_url,
        )
        watcher = _Follower(watch_store, console, view)
        await tg.start(_as_service(follower, watcher.run))
        with stopper.phase():
            await _await_actors(supervisor)

        deadline = datetime.now(UTC) + timedelta(seconds=options.duration)
        async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
            simulation = _Simulation(
                scenario,
                speed=options.speed,
                settings=settings,
                console=console,
                view=view,
                client=client,
                webhook_path=config.webhook_path,
                secret=secret,
                tonapi=tonapi,
                bot_api=bot_api,
                switch=switch,
            )
            # Skipped when a signal came while the actors were starting.
            with stopper.phase(), anyio.move_on_after(options.duration):
                if not stopper.requests:
                    await simulation.run()
                    console.note(
                        "the simulated users are done; everything keeps running until "
                        f"{_clock(deadline)} for a look at the dashboard:"
                    )
                    console.note(f"  {outcome.dashboard_url}", "plain")
                    await anyio.sleep_forever()
        outcome.doubles = list(simulation.doubles)
        outcome.simulation_done = simulation.done
        outcome.interrupted = stopper.requests > 0

        with stopper.phase() as wind_down:
            why = "stopped by a signal" if outcome.interrupted else "time is up"
            console.note(
                f"{why}: stopping the simulation, then the gateway, then the actors "
                "(each finishes what it holds)"
            )
            await gateway.stop()
            await actors.stop()
            await watcher.wait_caught_up(5.0)
            await follower.stop()
            report = await run_audit(watch_store, settings)
            tally = await _tally(watch_store)
        if wind_down.cancel_called:
            console.note("stopped at once on the second signal: no audit", "warn")
            return outcome
    outcome.audit = report
    outcome.exit_code = EXIT_OK if report.clean else EXIT_DISCREPANCIES
    console.say()
    console.say("Summary", "note")
    if not outcome.simulation_done:
        console.say(
            "  the simulation was stopped before every user had acted: "
            "the figures are what happened until then",
            "warn",
        )
    for label, text, tone in _summary(tally, report, outcome.doubles, view):
        console.say(f"  {label:<14} {text}", tone)
    console.say()
    for text, tone in _audit_lines(report):
        console.say(text, tone)
    console.say(
        f"The demo's log stays in {options.database} on {where} until the next demo {kept}."
    )
    return outcome


async def _start_gateway(
    tg: TaskGroup,
    service: _Service,
    settings: Settings,
    store: EventStore,
    config: GatewayConfig,
    port: int,
) -> str:
    """Start the gateway in webhook mode on 127.0.0.1; its URL."""

    async def serve(*, task_status: TaskStatus[str | None]) -> None:
        await run_gateway(
            settings,
            store,
            mode="webhook",
            host="127.0.0.1",
            port=port,
            config=config,
            add_routes=admin_routes(store, config.admin_token),
            task_status=task_status,
        )

    try:
        url = await tg.start(_as_service(service, serve))
    except (OSError, BaseExceptionGroup) as exc:
        cause = _single(exc)
        if not isinstance(cause, OSError):
            raise
        raise ValueError(
            f"--port {port}: cannot listen on 127.0.0.1 ({cause.strerror or cause}); "
            "give another port, or 0 for a free one"
        ) from None
    if not isinstance(url, str):
        raise TypeError("the gateway in webhook mode starts with its URL")
    return url


# -- the command --------------------------------------------------------------------------------
async def demo_command(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    """``i3lani demo``: 0 when the audit is clean, 1 with discrepancies, 130 when stopped
    before the audit."""
    options = DemoOptions(
        duration=args.duration,
        speed=args.speed,
        users=args.users,
        port=args.port,
        seed=args.seed,
        database=args.database,
    )
    embedded = not os.environ.get("DATABASE_URL", "").strip()  # as store.database_url() decides
    outcome = await run_demo(dsn, options, out, embedded=embedded, handle_signals=True)
    return outcome.exit_code
