"""Shared helpers of the fault-injection scenarios (``tests/faults/``).

A scenario runs real ``i3lani run`` workers (:mod:`tests.e2e.processes`) against the test's
own PostgreSQL database and the TonAPI and Bot API stand-ins, which live in the test process
so that their state (the simulated chain, the messages sent) survives every worker kill. It
seeds realistic work, injects its fault, waits for the work to be done, and ends with the same
verdicts: every effect exactly once, and ``i3lani audit`` clean. The API, in the order a
scenario uses it::

    async with standins() as (tonapi, bot_api):
        env = fault_env(dsn, clean_env, tonapi, bot_api, I3LANI_LEASE_TTL="2")
        seeder = Seeder(store, tonapi, bot_api, rng=random.Random(seed))
        await seeder.rewards(500)                   # users referring users: RewardEarned
        await seeder.channels(3)                    # channels added: RewardEarned + pricing
        await seeder.payments(100, paid=60, underpaid=5, twice=5)
        async with running_workers(env) as workers:
            worker = await workers.start("node-a", PRODUCT)
            ...                                     # the fault
            effects = await wait_until_done(store, seeder.workload, seconds=60)
            await stop(worker)                      # SIGTERM, exit 0
        assert_exactly_once(seeder.workload, await count_effects(store))
        await assert_audit_clean(env, seeder.workload)

* :class:`Seeder` appends the work **through the product's own gateway**
  (:class:`bot_gateway.service.Gateway`): a referral ``/start`` registers the new user and
  earns the referrer a ``RewardEarned`` in one transaction, ``/addchannel`` does the same for
  a channel, ``create_payment`` appends ``PaymentCreated`` under a fresh payment id; and it
  puts the matching transfers on the TonAPI stand-in's chain. What it seeded is its
  :class:`Workload`.
* :func:`count_effects` reads the log and counts, per reward and per payment, the effects the
  workers recorded (:class:`Effects`); :func:`assert_exactly_once` holds them against the
  workload; :func:`wait_until_done` polls until the work is done.
* :func:`run_audit` / :func:`assert_audit_clean` run ``i3lani audit --format json`` as a
  subprocess and decode its report.

Every wait is condition-based with a generous bound: these tests share two cores with others.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import anyio
import msgspec
import pytest

from actors.catalog import PRODUCT_ACTORS
from actors.channel_analytics import channel_stream
from actors.config import Plan, Settings
from bot_gateway.config import GatewayConfig
from bot_gateway.service import Gateway, TelegramUser, reward_id_for
from events import (
    ActorCrashed,
    PaymentConfirmed,
    PaymentCreated,
    PaymentExpired,
    PaymentUnderpaid,
    RewardCredited,
    RewardEarned,
    RewardFailed,
    SubscriptionActivated,
)
from ops.audit import AuditReport
from ops.standins import BotApiStandIn, TonApiStandIn
from store import EventStore
from tests.e2e.processes import (
    Worker,
    i3lani,
    lease_of,
    lifecycle,
    wait_for,
    wait_started,
)

__all__ = [
    "FAULTS",
    "PRODUCT",
    "WALLET",
    "PAYER",
    "fault_seed",
    "fault_env",
    "standins",
    "Workload",
    "Seeder",
    "Effects",
    "count_effects",
    "wait_until_done",
    "assert_exactly_once",
    "run_audit",
    "assert_audit_clean",
    "holder_node",
    "holder_of",
    "wait_started",
    "assert_no_crashes",
    "stop",
]

FAULTS: Final = (pytest.mark.slow, pytest.mark.faults)
"""The marks of every fault scenario: ``pytestmark = [*FAULTS]``."""

PRODUCT: Final = ",".join(PRODUCT_ACTORS)
"""``--actors`` for the five product actors."""

WALLET: Final = "UQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla4QB"
"""Our wallet, configured in its user-friendly form (TonAPI answers with the raw one)."""

PAYER: Final = "0:ef59caea6ebbee8542839162aa654b76f416e712ce22752da647d7e22cf1097f"
"""The wallet every simulated user pays from."""

_FAST: Final = {
    "I3LANI_PAYMENT_INTERVAL": "0.5",
    "I3LANI_REWARD_INTERVAL": "0.5",
    "I3LANI_ANALYTICS_INTERVAL": "2",
    "I3LANI_CLEANUP_INTERVAL": "5",
    "I3LANI_HEALTH_INTERVAL": "1",
    "I3LANI_TASK_RETRY_DELAY": "0.2",
    "I3LANI_TASK_LOCK_TIMEOUT": "2",
    "I3LANI_LEASE_TTL": "2",
}


def fault_seed() -> int:
    """The scenario's random seed: ``$I3LANI_FAULT_SEED`` to replay a run, else a new one.
    Printed, so that a failing run (``pytest -s``) can be replayed."""
    text = os.environ.get("I3LANI_FAULT_SEED", "").strip()
    seed = int(text) if text else random.SystemRandom().randrange(2**32)
    print(f"\nfault seed: {seed} (replay with I3LANI_FAULT_SEED={seed})")
    return seed


def fault_env(
    dsn: str,
    clean_env: Mapping[str, str],
    tonapi: TonApiStandIn,
    bot_api: BotApiStandIn,
    **overrides: str,
) -> dict[str, str]:
    """The workers' environment: this test's database, the stand-ins, our wallet, and short
    intervals (payments and rewards every 0.5 s, task locks 2 s, leases 2 s); ``overrides``
    last."""
    return {
        **clean_env,
        "DATABASE_URL": dsn,
        "WALLET_ADDRESS": WALLET,
        "TONAPI_URL": tonapi.url,
        "TELEGRAM_API_URL": bot_api.url,
        "BOT_TOKEN": bot_api.token,
        **_FAST,
        **overrides,
    }


@asynccontextmanager
async def standins() -> AsyncIterator[tuple[TonApiStandIn, BotApiStandIn]]:
    """Both stand-ins, in this process (their state outlives any worker)."""
    async with TonApiStandIn() as tonapi, BotApiStandIn() as bot_api:
        yield tonapi, bot_api


# -- seeding ---------------------------------------------------------------------------------
_Job: TypeAlias = Callable[[int], Coroutine[Any, Any, None]]


@dataclass
class Workload:
    """What a scenario seeded, and so what the workers must do with it."""

    rewards: dict[uuid.UUID, int] = field(default_factory=dict)
    """Reward id -> the user it is to be credited to."""
    paid: dict[int, str] = field(default_factory=dict)
    """Payment id -> the hash of the (first) transfer paying it in full."""
    second_transfers: dict[int, str] = field(default_factory=dict)
    """Payment id -> the hash of a second full transfer for an already paid payment (the
    user paid twice: it must not be confirmed again)."""
    underpaid: dict[int, str] = field(default_factory=dict)
    """Payment id -> the hash of a transfer short of the price: recorded, never confirmed."""
    unpaid: set[int] = field(default_factory=set)
    """Payments nobody paid (their window stays open during the scenario)."""

    @property
    def payments(self) -> set[int]:
        return {*self.paid, *self.underpaid, *self.unpaid}

    def done(self, effects: Effects) -> bool:
        """Every reward credited, every paid payment confirmed and activated, every underpaid
        transfer recorded (duplicates are not judged here: see assert_exactly_once)."""
        return self.pending(effects) == 0

    def pending(self, effects: Effects) -> int:
        """How much of the work is not done yet: rewards not credited, paid payments not
        confirmed and activated, underpaid transfers not recorded."""
        return (
            sum(1 for r in self.rewards if not effects.credited[r])
            + sum(1 for p in self.paid if not (effects.confirmed[p] and effects.activated[p]))
            + sum(1 for p in self.underpaid if not effects.underpaid[p])
        )

    def progress(self, effects: Effects) -> str:
        """One line: how far the work has got."""
        credited = sum(1 for r in self.rewards if effects.credited[r])
        confirmed = sum(1 for p in self.paid if effects.confirmed[p])
        return (
            f"rewards {credited}/{len(self.rewards)} credited, "
            f"payments {confirmed}/{len(self.paid)} confirmed"
        )


class Seeder:
    """Appends work the way the product does (through :class:`Gateway`), and pays on the
    TonAPI stand-in's chain. Call its methods any number of times, also while workers run;
    each call seeds new users and payments, recorded in :attr:`workload`.

    ``rng`` decides the order in which users act and which referrer each new user names, so
    a scenario's seed reproduces its workload (payment ids and hashes aside)."""

    def __init__(
        self,
        store: EventStore,
        tonapi: TonApiStandIn,
        bot_api: BotApiStandIn,
        *,
        rng: random.Random,
        referrers: int = 40,
        first_user_id: int = 100_000,
        concurrency: int = 20,
    ) -> None:
        # A window far beyond any scenario: unpaid payments stay pending, never expire.
        self.settings = Settings(wallet=WALLET, payment_window=6 * 3600.0)
        self.gateway = Gateway(store, self.settings, GatewayConfig())
        self.tonapi = tonapi
        self.bot_api = bot_api
        self.rng = rng
        self.workload = Workload()
        self.concurrency = concurrency
        self._referrer_ids = list(range(first_user_id, first_user_id + referrers))
        self._registered = False
        self._next_user = first_user_id + referrers
        self._next_channel = 1

    @property
    def plan(self) -> Plan:
        return self.settings.plans[-1]

    def _users(self, count: int) -> list[int]:
        users = list(range(self._next_user, self._next_user + count))
        self._next_user += count
        return users

    async def _each(self, items: Iterable[int], job: _Job) -> None:
        """``job(item)`` for every item, ``concurrency`` at a time (as a busy bot would)."""
        pending = list(items)
        while pending:
            batch, pending = pending[: self.concurrency], pending[self.concurrency :]
            async with anyio.create_task_group() as tg:
                for item in batch:
                    tg.start_soon(job, item)

    async def rewards(self, count: int) -> list[uuid.UUID]:
        """``count`` new users each ``/start`` with a referral link of a random referrer:
        ``count`` ``RewardEarned`` (one per new user, to the referrer)."""
        if not self._registered:
            for referrer in self._referrer_ids:
                await self.gateway.start(TelegramUser(referrer), None)
            self._registered = True
        users = self._users(count)
        self.rng.shuffle(users)
        referred_by = {user: self.rng.choice(self._referrer_ids) for user in users}
        earned: list[uuid.UUID] = []

        async def join(user: int) -> None:
            referrer = referred_by[user]
            reply = await self.gateway.start(TelegramUser(user), f"ref_{referrer}")
            assert f"through user {referrer}'s link" in reply, reply
            reward_id = reward_id_for("referral", f"user:{user}")
            self.workload.rewards[reward_id] = referrer
            earned.append(reward_id)

        await self._each(users, join)
        return earned

    async def channels(self, count: int, *, members: int = 25_000) -> list[uuid.UUID]:
        """``count`` channels added by referrers (``/addchannel``), each known to the Bot API
        stand-in with about ``members`` members: a ``RewardEarned`` each, and ChannelAnalytics
        work."""
        earned: list[uuid.UUID] = []
        for _ in range(count):
            channel = f"@fault_channel_{self._next_channel}"
            self._next_channel += 1
            self.bot_api.set_member_count(channel, members + self.rng.randrange(10_000))
            user = self.rng.choice(self._referrer_ids)
            reply = await self.gateway.add_channel(user, channel)
            assert "is registered" in reply, reply
            source = f"channel:{channel_stream(channel).removeprefix('channel-')}"
            reward_id = reward_id_for("channel_addition", source)
            self.workload.rewards[reward_id] = user
            earned.append(reward_id)
        return earned

    async def payments(
        self, count: int, *, paid: int, underpaid: int = 0, twice: int = 0
    ) -> list[int]:
        """``count`` payments created by new users (``PaymentCreated``); ``paid`` of them get
        a full transfer on the chain, ``underpaid`` a short one, the rest nothing; ``twice``
        of the paid ones get a second full transfer (a user paying twice). Which payment gets
        what is random; the transfers reach the chain in a random order."""
        if paid + underpaid > count or twice > paid:
            raise ValueError("paid + underpaid <= count and twice <= paid")
        plan = self.plan
        created: list[PaymentCreated] = []

        async def create(user: int) -> None:
            created.append(await self.gateway.create_payment(user, plan))

        await self._each(self._users(count), create)
        created.sort(key=lambda p: p.payment_id)  # as created, whatever order they finished in
        self.rng.shuffle(created)
        full = created[:paid]
        short = created[paid : paid + underpaid]
        transfers = [(p, p.amount_nanotons) for p in full]
        transfers += [(p, p.amount_nanotons // 2) for p in short]
        self.rng.shuffle(transfers)
        for payment, value in transfers:
            tx = self.tonapi.transfer(WALLET, source=PAYER, value=value, comment=payment.memo)
            target = self.workload.paid if value >= plan.price_nanotons else self.workload.underpaid
            target[payment.payment_id] = tx["hash"]
        for payment in full[:twice]:
            tx = self.tonapi.transfer(
                WALLET, source=PAYER, value=payment.amount_nanotons, comment=payment.memo
            )
            self.workload.second_transfers[payment.payment_id] = tx["hash"]
        self.workload.unpaid.update(p.payment_id for p in created[paid + underpaid :])
        return [p.payment_id for p in created]


# -- effects ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Effects:
    """What the workers recorded, counted from the log (``user`` and ``payment`` streams)."""

    earned: Counter[uuid.UUID]
    credited: Counter[uuid.UUID]
    failed: Counter[uuid.UUID]
    credited_to: dict[uuid.UUID, set[int]]
    """Reward id -> the users its credits went to."""
    confirmed: Counter[int]
    activated: Counter[int]
    underpaid: Counter[int]
    expired: Counter[int]
    confirmed_by: dict[str, list[int]]
    """Tx hash -> the payments it confirmed (one each time it did)."""
    confirmations: list[tuple[int, str]]
    """(payment id, tx hash) of every PaymentConfirmed, in log order."""
    events: int
    """How many events were read."""


async def count_effects(store: EventStore) -> Effects:
    """Every reward's and payment's effects in the log, counted."""
    earned: Counter[uuid.UUID] = Counter()
    credited: Counter[uuid.UUID] = Counter()
    failed: Counter[uuid.UUID] = Counter()
    credited_to: dict[uuid.UUID, set[int]] = {}
    confirmed: Counter[int] = Counter()
    activated: Counter[int] = Counter()
    underpaid: Counter[int] = Counter()
    expired: Counter[int] = Counter()
    confirmed_by: dict[str, list[int]] = {}
    confirmations: list[tuple[int, str]] = []
    events = 0
    for category in ("user", "payment"):
        async for batch in store.read_batches(category=category, skip_unknown=True):
            events += len(batch)
            for recorded in batch:
                event = recorded.event
                match event:
                    case RewardEarned():
                        earned[event.reward_id] += 1
                    case RewardCredited():
                        credited[event.reward_id] += 1
                        credited_to.setdefault(event.reward_id, set()).add(event.user_id)
                    case RewardFailed():
                        failed[event.reward_id] += 1
                    case PaymentConfirmed():
                        confirmed[event.payment_id] += 1
                        confirmed_by.setdefault(event.tx_hash, []).append(event.payment_id)
                        confirmations.append((event.payment_id, event.tx_hash))
                    case SubscriptionActivated():
                        activated[event.payment_id] += 1
                    case PaymentUnderpaid():
                        underpaid[event.payment_id] += 1
                    case PaymentExpired():
                        expired[event.payment_id] += 1
    return Effects(
        earned=earned,
        credited=credited,
        failed=failed,
        credited_to=credited_to,
        confirmed=confirmed,
        activated=activated,
        underpaid=underpaid,
        expired=expired,
        confirmed_by=confirmed_by,
        confirmations=confirmations,
        events=events,
    )


async def wait_until_done(
    store: EventStore, workload: Workload, seconds: float, *, interval: float = 0.5
) -> Effects:
    """Poll the log until ``workload`` is done (:meth:`Workload.done`); fail after
    ``seconds`` with how far it got."""
    last: list[Effects] = []

    async def probe() -> Effects | None:
        effects = await count_effects(store)
        last[:] = [effects]
        return effects if workload.done(effects) else None

    try:
        return await wait_for(probe, seconds, "all the work done", interval=interval)
    except AssertionError as exc:
        got = workload.progress(last[0]) if last else "nothing read"
        raise AssertionError(f"{exc}; got {got}") from None


def _listed(items: Iterable[object], limit: int = 5) -> str:
    shown = list(items)
    more = f" and {len(shown) - limit} more" if len(shown) > limit else ""
    return ", ".join(str(item) for item in shown[:limit]) + more


def assert_exactly_once(workload: Workload, effects: Effects) -> None:
    """The scenario's verdict on effects:

    * every seeded reward earned once and credited exactly once, to its user, never failed;
      no credit for a reward nobody earned;
    * every paid payment confirmed exactly once, by its own transfer, and its subscription
      activated exactly once (a second transfer changes nothing); underpaid ones recorded
      once and never confirmed; unpaid ones never confirmed, never expired;
    * no tx hash confirms two payments (or one payment twice).
    """
    rewards = workload.rewards
    wrong = {r: n for r in rewards if (n := effects.earned[r]) != 1}
    assert not wrong, f"rewards not earned exactly once: {_listed(wrong.items())}"
    wrong = {r: n for r in rewards if (n := effects.credited[r]) != 1}
    assert not wrong, f"rewards not credited exactly once: {_listed(wrong.items())}"
    failed = [r for r in rewards if effects.failed[r]]
    assert not failed, f"rewards failed: {_listed(failed)}"
    misdirected = {
        r: to for r, user in rewards.items() if (to := effects.credited_to.get(r, set())) != {user}
    }
    assert not misdirected, f"rewards credited to the wrong user: {_listed(misdirected.items())}"
    unknown = set(effects.credited) - set(effects.earned)
    assert not unknown, f"credits of rewards never earned: {_listed(unknown)}"

    wrong_pay = {p: n for p in workload.paid if (n := effects.confirmed[p]) != 1}
    assert not wrong_pay, f"paid payments not confirmed exactly once: {_listed(wrong_pay.items())}"
    wrong_pay = {p: n for p in workload.paid if (n := effects.activated[p]) != 1}
    assert not wrong_pay, f"paid payments not activated exactly once: {_listed(wrong_pay.items())}"
    confirming = dict(effects.confirmations)
    wrong_tx = {p: confirming[p] for p in workload.paid if confirming[p] != workload.paid[p]}
    assert not wrong_tx, f"payments confirmed by another transfer: {_listed(wrong_tx.items())}"
    never_paid = workload.unpaid | set(workload.underpaid)
    wrongly = [p for p in never_paid if effects.confirmed[p] or effects.activated[p]]
    assert not wrongly, f"payments confirmed without a full transfer: {_listed(wrongly)}"
    wrong_pay = {p: n for p in workload.underpaid if (n := effects.underpaid[p]) != 1}
    assert not wrong_pay, f"underpaid transfers not recorded once: {_listed(wrong_pay.items())}"
    expired = [p for p in workload.payments if effects.expired[p]]
    assert not expired, f"payments expired inside their window: {_listed(expired)}"
    unknown_pay = set(effects.confirmed) - workload.payments
    assert not unknown_pay, f"confirmations of payments never created: {_listed(unknown_pay)}"
    reused = {tx: ids for tx, ids in effects.confirmed_by.items() if len(ids) != 1}
    assert not reused, f"tx hashes confirming more than once: {_listed(reused.items())}"


# -- the audit -------------------------------------------------------------------------------
async def run_audit(env: Mapping[str, str], *, seconds: float = 120) -> tuple[int, AuditReport]:
    """``i3lani audit --format json`` as a subprocess: its exit code and its report."""
    result = await i3lani(env, "audit", "--format", "json", seconds=seconds)
    assert result.returncode in (0, 1), (
        f"i3lani audit exited {result.returncode}: {result.stderr.decode(errors='replace')}"
    )
    report = msgspec.json.decode(result.stdout, type=AuditReport)
    return result.returncode, report


async def assert_audit_clean(
    env: Mapping[str, str], workload: Workload | None = None
) -> AuditReport:
    """The audit exits 0 with a clean report and no note; with ``workload`` (when every
    payment and reward in the log came from the :class:`Seeder`), its replay also counts
    exactly what was seeded: every reward credited, every paid payment confirmed, no other."""
    started = time.monotonic()
    code, report = await run_audit(env)
    took = time.monotonic() - started
    problems = [f"{d.check}: {d.message} (#{d.positions})" for d in report.discrepancies[:20]]
    assert code == 0, f"audit found {report.discrepancy_counts}: {problems}"
    assert report.clean, report.discrepancy_counts
    assert not report.notes, report.notes
    summary = report.summary
    print(
        f"audit: clean ({summary.events_replayed} events replayed in {took:.1f}s, "
        f"{summary.rewards_credited} rewards credited, "
        f"{summary.payments_confirmed} payments confirmed)"
    )
    if workload is not None:
        assert summary.rewards_earned >= len(workload.rewards), summary
        assert summary.rewards_credited == summary.rewards_earned, summary
        assert summary.rewards_failed == 0, summary
        assert summary.payments_created == len(workload.payments), summary
        assert summary.payments_confirmed == len(workload.paid), summary
        assert summary.subscriptions_activated == len(workload.paid), summary
        assert summary.payments_underpaid == len(workload.underpaid), summary
        assert summary.payments_expired == 0, summary
    return report


# -- workers ---------------------------------------------------------------------------------
def holder_node(holder: str | None) -> str | None:
    """The node name of a lease holder (``<node>/<instance>``)."""
    return None if holder is None else holder.rsplit("/", 1)[0]


async def holder_of(store: EventStore, actor: str) -> str | None:
    """The node whose live lease runs ``actor`` now, if any."""
    lease = await lease_of(store, actor)
    if lease is None or not lease.live:
        return None
    return holder_node(lease.node)


async def assert_no_crashes(store: EventStore, actors: Iterable[str] = PRODUCT_ACTORS) -> None:
    """No actor crashed: killing, stopping or losing a node is never a reason to."""
    crashes = [
        f"{event.actor} on {event.node}: {event.error_type}: {event.message}"
        for actor in actors
        for recorded in await lifecycle(store, actor)
        if isinstance(event := recorded.event, ActorCrashed)
    ]
    assert not crashes, crashes


async def stop(worker: Worker, seconds: float = 30) -> float:
    """SIGTERM ``worker`` (as Render does); assert it exits 0 within ``seconds``, without a
    traceback. Returns how long the exit took."""
    code, took = await worker.terminate(seconds)
    assert code == 0, worker.output()
    assert b"Traceback" not in worker.stderr, worker.output()
    return took
