"""The demo's world, planned up front: the simulated users and what each will do
(:func:`plan_scenario`, pure and seeded), the settings that run the actors at ``--speed``
(:func:`demo_settings`), and the one crash (:class:`CrashOncePaymentMonitor`).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from actors.catalog import DEFAULT_ACTORS, child_specs
from actors.config import Settings
from actors.payment_monitor import MonitorState, PaymentMonitor
from actors.runtime import ActorRunner, ChildSpec, Message
from actors.ton import Address
from actors.tonapi_stream import StreamStatus

ADMIN_ID: Final = 42
"""The Telegram id of the demo's one administrator (ADMIN_IDS): health alerts go there."""
FIRST_USER_ID: Final = 1001

# The simulated world's clock, in demo seconds (divided by --speed for wall seconds).
PAYMENT_EVERY: Final = 2.0
REWARD_EVERY: Final = 3.0
ANALYTICS_EVERY: Final = 5.0
CLEANUP_EVERY: Final = 10.0
HEALTH_EVERY: Final = 4.0
SEAL_EVERY: Final = 15.0
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
REFUND_AFTER: Final = 3.0
"""Demo seconds after a second payment at which the operator refunds it (after a scan)."""

_MIN_INTERVAL: Final = 0.05
_PLANS: Final = ("week", "week", "week", "month", "month")
_NAMES: Final = (
    "amira", "bilal", "chen", "dana", "emeka", "farah", "goran", "hana", "ivan", "jamila",
    "kofi", "lena", "malik", "nour", "oskar", "priya", "quinn", "rania", "sami", "tariq",
    "uma", "vera", "wen", "yusuf", "zara",
)  # fmt: skip

Role = Literal["exact", "overpay", "underpay", "double", "late", "abandon"]
"""How a simulated user pays: the amount asked, more, less, the amount twice, the amount after
the payment expired, or not at all."""


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
        if role == "double":  # the operator refunds it; a scan confirms it
            done += REFUND_AFTER + PAYMENT_EVERY
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
        seal_interval=every(SEAL_EVERY),
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

    def __init__(
        self, settings: Settings, switch: FaultSwitch, stream_status: StreamStatus | None = None
    ) -> None:
        super().__init__(settings, stream_status=stream_status)
        self.switch = switch

    async def on_tick(
        self, state: MonitorState, runner: ActorRunner[MonitorState]
    ) -> Sequence[Message]:
        if self.switch.take():
            raise DemoFault("injected by the demo: this tick raises, as a bug in it would")
        return await super().on_tick(state, runner)


def demo_child_specs(settings: Settings, switch: FaultSwitch) -> list[ChildSpec]:
    """The five product actors as ``i3lani run`` supervises them, the PaymentMonitor built as
    :class:`CrashOncePaymentMonitor` (reporting its TON stream where the HealthChecker of the
    process looks)."""
    specs = child_specs(DEFAULT_ACTORS, settings)
    monitor = next(spec for spec in specs if spec.name == PaymentMonitor.name).factory()
    assert isinstance(monitor, PaymentMonitor)
    status = monitor.stream_status
    return [
        dataclasses.replace(spec, factory=lambda: CrashOncePaymentMonitor(settings, switch, status))
        if spec.name == PaymentMonitor.name
        else spec
        for spec in specs
    ]
