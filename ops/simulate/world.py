"""One simulated run of i3lani: nodes, users, operators and faults, all drawn from one seed.

Everything here runs on :mod:`ops.simulate.kernel` (virtual time, seeded scheduling) against
one :class:`~store.memory.MemoryLog`, which stands for the PostgreSQL database every process
shares. The production code runs unchanged:

* **nodes**: each a :class:`supervisor.Supervisor` (``i3lani run``) supervising the five
  actors (:data:`ACTORS`), with its own node name, leases and lease clocks. The
  HealthChecker checks every 15 minutes, its samples a side table of the log
  (:class:`~store.views.MemoryHealthSamples`), and alerts :data:`ADMIN` through the Bot API
  stand-in; Cleanup runs every :data:`CLEANUP_INTERVAL` (configuration, as for
  ChannelAnalytics), with :data:`OLD_SAMPLES` health samples past their retention to prune;
* **users**: the bot gateway (:class:`bot_gateway.service.Gateway`) registering users that
  arrive at random moments, alone or in bursts through one referrer's link (a
  ``RewardEarned`` each); four in
  ten subscribe and then pay exactly, too much, too little, twice, late, never, or with a
  wrong memo, on the TonAPI stand-in's chain, which the PaymentMonitor reads in-process
  (:mod:`ops.simulate.transports`). A command the database refused is delivered again later,
  as Telegram redelivers a webhook update that was answered with an error. Two in ten add a
  channel (``/addchannel``, earning a ``channel_addition`` reward) that the Bot API stand-in
  knows with a seeded member count (or, one in ten, does not know at all), half of whose
  audiences change once more; ChannelAnalytics measures them through the stand-in, in-process.
  It does so every ``ANALYTICS_INTERVAL`` (15 minutes) instead of every 6 hours: that is
  configuration (``Settings.analytics_interval``, ``I3LANI_ANALYTICS_INTERVAL``), the code
  runs unchanged, and a run then measures each channel several times;
* **operators**: random ``restart``, ``stop`` and ``start`` commands (``ops-commands``).

**Faults**, each at its own rate, during the first ``hours`` of the run (the faulty phase):
a store operation of a node or of the gateway fails (``StoreUnavailable``: the database is
unreachable for that statement; a failed ``"commit"`` rolls its transaction back); a commit's
acknowledgement is lost (the write is in, the caller sees ``StoreUnavailable``); a node is
killed (cut off from the database first, so that nothing it does on the way down reaches it,
as with SIGKILL; then restarted with a new process identity), anywhere, right before its
next write of a kind or right after its next commit; a node is stopped whole (SIGSTOP:
:meth:`~ops.simulate.kernel.SimLoop.freeze`) for 5 to 60 s, anywhere, right before a write
or while it holds a task, and resumes with its deadlines passed; a node is cut off for a
while (a partition) and comes back; TonAPI answers 500, 502, 429 with Retry-After, hangs past
the client's timeout, or garbage, for a few requests; the Bot API answers 500, hangs or
garbage for a few requests (``sendMessage`` included), or, for one channel, 429 with
``retry_after``, 400 chat not found or 403 bot kicked, a few times (one kick in four is for
good); a Telegram update is delivered twice, or ``/subscribe`` handled while ``/start`` still
is; the hosts' wall clock steps. Then the faults stop, operators start every actor, and the
run goes on quietly for ``settle`` seconds.

**Invariants** (:class:`InvariantViolated`), checked on every event as it commits and over
the whole log at the end: each reward earned once and credited once, to the user who earned
it, with a running balance that adds up; each user registered once; each payment confirmed
at most once, by a transfer of at least its amount carrying its memo, no transaction
confirming two payments; a subscription activated once and only for a confirmed payment;
every event written under a lease carries a generation no older than one already written
under it (two incarnations never interleave their writes); inside each commit, work for an
actor (its task events, its writes under a lease) only from the node holding that actor's
lease, unexpired; a task's outcome only from the node holding its latest claim, nothing after
it finished; a channel added once; each measurement a count the channel really had, with its
active count ``active_subscribers(subscribers, active_share)``; each price ``channel_price``
of the active count it names, changed only by the measurement just before it in the channel's
stream, from the price it had, and whenever that measurement moves it; every transaction
recorded as a transfer at most once, and only one the stand-in's chain has. **Liveness**, at
the end: every transfer the chain delivered to the wallet recorded within ``LIVENESS_BOUND``,
and the whole range scanned reconciled with the chain without a discrepancy
(:func:`actors.transfers.reconcile`: each transfer once, in a category the chain allows);
every reward credited, every payment paid in full inside its window confirmed within
``LIVENESS_BOUND`` of its transfer or of the end of the faults, every confirmed payment's user
told (the notifier, through the Bot API stand-in), and every channel measured (or its lasting
problem recorded) after the faults stopped, at its current count, within ``ANALYTICS_BOUND``.
Cleanup and the HealthChecker (:meth:`_World._health_live`): the log never loses or reorders
an event it committed; every health sample past its retention pruned, none of the run's
own, no more counted than there were, and no payment of the run expired as stale; a health
round within ``HEALTH_BOUND`` of the end, true of the quiet system; every alert delivered
to :data:`ADMIN` within ``LIVENESS_BOUND`` of being raised and of the end of the faults,
unless its task went to the dead letters.

Not covered (see the README): what only PostgreSQL has (sizes on disk, server sessions),
which neither actor reads, and PostgreSQL's own behaviour, which the contract suite pins the
in-memory log to.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

import anyio
import msgspec
from anyio.abc import TaskGroup

from actors.catalog import CATEGORIES, child_specs, tick_intervals
from actors.channel_analytics import ChannelAnalytics
from actors.cleanup import Cleanup
from actors.config import Settings, active_subscribers, channel_price, share_text
from actors.control import issue_command, operator_command
from actors.health import HealthChecker, HeldVerdict, alert_text, last_verdict
from actors.payment_monitor import PaymentMonitor
from actors.runtime import ChildSpec, RestartType
from actors.tasks import ADMIN_ALERT, PAYMENT_VERIFICATION, REWARD_DISTRIBUTION
from actors.telegram import TelegramClient, make_bot
from actors.ton import Address
from actors.tonapi import TonApiClient
from actors.tonapi_models import decode_transactions
from actors.transfers import fold_ledger, reconcile, reconcile_range
from bot_gateway.notifier import run_notifier
from bot_gateway.service import Gateway, TelegramUser, reward_id_for
from events import (
    AlertRaised,
    ChannelAdded,
    ChannelPriceChanged,
    ChannelStatsFailed,
    ChannelStatsUpdated,
    CleanupCompleted,
    HealthChecked,
    PaymentConfirmed,
    PaymentCreated,
    RewardCredited,
    RewardEarned,
    SubscriptionActivated,
    TaskClaimed,
    TaskDeadLettered,
    TaskEnqueued,
    TaskFailed,
    TaskSucceeded,
    UserRegistered,
    environment,
)
from events.errors import I3laniError, StoreUnavailable
from events.payments import TransferReceived, TransferSent
from events.streams import channel_stream
from ops.simulate.kernel import Frozen, current_loop, current_rng
from ops.simulate.transports import InProcessServer, InProcessSession, InProcessTransport
from ops.standins import BotApiFaultMode, BotApiStandIn, TonApiStandIn
from store import views
from store.memory import READS, MemoryLog
from store.records import RecordedEvent
from store.tasks.memory import MemoryTaskTable
from store.views import HealthSample, MemoryHealthSamples
from supervisor import Supervisor

__all__ = ["Scenario", "Report", "InvariantViolated", "simulate", "ACTORS"]

ACTORS: Final = (
    "PaymentMonitor",
    "RewardProcessor",
    "ChannelAnalytics",
    "HealthChecker",
    "Cleanup",
)
"""The actors every simulated node supervises."""
ADMIN: Final = 990_001
"""The operator whom the HealthChecker alerts (``ADMIN_IDS``): no user has this chat id."""
CLEANUP_INTERVAL: Final = 900.0
"""Cleanup's tick (``Settings.cleanup_interval``; a day by default): configuration, short
enough that a run prunes several times, and again after the faults stop."""
OLD_SAMPLES: Final = 40
"""Health samples of an earlier life of the database, past their retention when the run
starts: Cleanup must prune every one of them, and none of the run's own."""

WALLET: Final = "UQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla4QB"
"""The bot's wallet, configured in its user-friendly form (TonAPI answers with the raw one)."""
PAYER: Final = "0:" + "c" * 64
SUBSCRIBING: Final = 0.4
"""Share of users who subscribe and get a payment to make."""
BEHAVIOURS: Final = (
    ("exact", 40),
    ("over", 10),
    ("under", 10),
    ("twice", 10),
    ("never", 15),
    ("wrong memo", 10),
    ("late", 5),
)
"""How a subscribing user pays, with weights."""
ADDING: Final = 0.2
"""Share of users who add a channel after their ``/start``."""
UNKNOWN: Final = 0.1
"""Share of added channels the Bot API does not know (a typo, a private channel): never
measured, a lasting ``chat not found``."""
CHANGING: Final = 0.5
"""Share of added channels whose audience changes once more while the faults go on (most
after it was first measured)."""
ANALYTICS_INTERVAL: Final = 900.0
"""ChannelAnalytics' tick (``Settings.analytics_interval``; 6 h by default): configuration,
short enough that a run measures each channel several times."""
KICKED: Final = "Forbidden: bot was kicked from the channel chat"
"""The Bot API's description of a channel that removed the bot."""

T = TypeVar("T")

REFERRERS: Final = 5
"""Users who arrive first, without a link, and whose links the others follow."""
BURSTS: Final = (1, 1, 1, 2, 3, 5, 8)
"""How many users arrive together through one link (drawn from these, uniformly)."""
BURST_SPREAD: Final = 0.05
"""Seconds over which a burst's users arrive."""
STORE_LATENCY: Final = 0.001
"""Mean seconds each store write takes (exponential): transactions of different tasks
overlap as they do on a real database, instead of each completing in one instant."""
SAFETY_POLL: Final = 120.0
"""Seconds between the re-reads subscriptions and task processors make unwoken (see
:class:`~store.memory.MemoryLog`): a wake-up the code fails to arm costs two minutes, which
the liveness check notices, instead of the second it costs in production."""

LEASE_TTL: Final = 10.0
LIVENESS_BOUND: Final = 600.0
"""Seconds of quiet within which all due work is done: a payment paid in full inside its
window is confirmed within this long of its transfer or of the end of the faults, whichever
is later; every reward earned is credited within it of the end of the faults (the
RewardProcessor runs every 5 minutes; the PaymentMonitor every 30 s). Channels, measured
far less often, have their own bound (``ANALYTICS_BOUND``); ``settle`` covers both."""
ACQUIRE_INTERVAL: Final = LEASE_TTL / 4
"""The least time between a standing-by node's tries for a lease it does not hold
(``Supervisor``'s ``acquire_interval``; 1 s by default). It asks again when the holder's
grant can expire (about every 7.5 s here, as a live holder renews every quarter of the
lease), or at once when the lease is handed back; a dead holder's lease is taken within this
interval of its expiry, so within 1.25 TTL of the holder's last renewal."""


class InvariantViolated(I3laniError):
    """A simulated run broke one of i3lani's guarantees: the message says which, and how."""


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """What to simulate. Rates are per simulated hour (nodes, operators) or per operation."""

    users: int = 50
    hours: float = 1.0
    nodes: int = 2
    store_fault_rate: float = 0.002
    lost_ack_rate: float = 0.002
    """Share of committed writes whose acknowledgement is lost (the caller sees an error)."""
    kills_per_hour: float = 3.0
    cuts_per_hour: float = 3.0
    pauses_per_hour: float = 3.0
    """A node stopped whole (SIGSTOP, a paused VM) past its lease, then resumed."""
    commands_per_hour: float = 3.0
    tonapi_faults_per_hour: float = 4.0
    clock_jumps_per_hour: float = 2.0
    """Steps of the hosts' wall clock, forward or back (the database's clock stays right)."""
    telegram_faults_per_hour: float = 4.0
    duplicate_rate: float = 0.05
    """Share of Telegram updates delivered twice (the webhook's answer was lost)."""
    reorder_rate: float = 0.1
    """Share of subscribing users whose ``/subscribe`` is handled while their ``/start`` is."""
    tonapi_outage_rate: float = 1.0
    """Share of runs in which TonAPI is down for a long while (:data:`OUTAGE`, at most three
    quarters of the faulty phase), at a moment drawn from the seed: long enough for health
    rounds to see it, each of which must say TonAPI fails."""
    settle: float = 1800.0
    """Seconds of quiet after the faults stop within which all due work must be done."""

    def __post_init__(self) -> None:
        if self.users < REFERRERS + 1:
            raise ValueError(f"users must be at least {REFERRERS + 1}, got {self.users}")
        if self.nodes < 1:
            raise ValueError(f"nodes must be at least 1, got {self.nodes}")
        if self.hours <= 0:
            raise ValueError(f"hours must be positive, got {self.hours}")
        bound = max(LIVENESS_BOUND, ANALYTICS_BOUND, HEALTH_BOUND)
        if self.settle < bound:
            raise ValueError(
                f"settle must be at least the liveness bounds, {bound:g}s; got {self.settle}"
            )
        if not 0 <= self.tonapi_outage_rate <= 1:
            raise ValueError(f"tonapi_outage_rate must be in [0, 1], got {self.tonapi_outage_rate}")
        for rate in ("store_fault_rate", "lost_ack_rate", "duplicate_rate", "reorder_rate"):
            value = getattr(self, rate)
            if not 0 <= value < 1:
                raise ValueError(f"{rate} must be in [0, 1), got {value}")


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """What one run did, for the seed's line and for comparing two runs of one seed."""

    users: int
    rewards: int
    credited: int
    payments: int
    confirmed: int
    events: int
    store_faults: int
    lost_acks: int
    kills: int
    cuts: int
    pauses: int
    commands: int
    tonapi_faults: int
    redeliveries: int
    duplicates: int
    clock_jumps: int
    channels: int
    """Channels added (``ChannelAdded`` in the log)."""
    measurements: int
    """``ChannelStatsUpdated`` in the log."""
    price_changes: int
    measure_failures: int
    """``ChannelStatsFailed`` in the log."""
    telegram_faults: int
    verdicts: int = 0
    """``HealthChecked`` in the log: the HealthChecker's changes of verdict."""
    alerts: int = 0
    """``AlertRaised`` in the log."""
    cleanups: int = 0
    """``CleanupCompleted`` in the log."""
    samples_pruned: int = 0
    """Health samples Cleanup recorded it pruned (of ``OLD_SAMPLES`` past their retention)."""
    outage_rounds: int = 0
    """Health rounds recorded during TonAPI's long outage, each of them saying TonAPI fails."""
    log_digest: str
    """sha256 over every event's stream, version, type and payload, in reading order."""


_node: ContextVar[str | None] = ContextVar("i3lani_sim_node", default=None)


@dataclass(eq=False)
class _Faults:
    """The store's fault hook: which callers are cut off, and random failures while faulty."""

    rate: float
    lost_ack_rate: float
    # The run's current_rng(), asked for once: every store operation draws from it, and
    # asking the loop looks the running loop up (on Python 3.11, a getpid() system call).
    rng: random.Random = field(default_factory=current_rng)
    faulty: bool = True
    cut: set[str] = field(default_factory=set)
    injected: int = 0
    lost_acks: int = 0

    def __call__(self, operation: str) -> None:
        who = _node.get()
        if who is None:
            return  # the simulation's own bookkeeping
        if who in self.cut:
            raise StoreUnavailable(f"{who} is cut off from the database (simulated)")
        if self.faulty and self.rng.random() < self.rate:
            self.injected += 1
            raise StoreUnavailable(f"{operation} failed for {who} (simulated fault)")

    def lost_ack(self, operation: str) -> bool:
        """Whether the answer to this committed write is lost on its way to the caller."""
        if _node.get() is None or not self.faulty:
            return False
        if self.rng.random() < self.lost_ack_rate:
            self.lost_acks += 1
            return True
        return False


TASK_ACTORS: Final = {
    PAYMENT_VERIFICATION: "PaymentMonitor",
    REWARD_DISTRIBUTION: "RewardProcessor",
    ADMIN_ALERT: "HealthChecker",
}
"""The actor whose lease a task type's work is done under."""
_TASK_EVENTS: Final = (TaskClaimed, TaskSucceeded, TaskFailed, TaskDeadLettered)
HOLDING_A_TASK: Final = "write while it holds a task"
STOP_POINTS: Final = ("begin", "append", "commit", "save_checkpoint", "lease", HOLDING_A_TASK)
"""Where a node may be stopped or killed: right before its next store write of a kind, or
its next write while it holds a claimed task (or anywhere: ``None``)."""
AFTER_COMMIT: Final = "after its commit"
"""Killed right after its next commit, before it sees the answer."""
MAX_CLOCK_STEP: Final = 60.0
MAX_CLOCK_OFFSET: Final = 300.0
ANALYTICS_BOUND: Final = ANALYTICS_INTERVAL + 2 * MAX_CLOCK_OFFSET + 120.0
OUTAGE: Final = 1200.0
"""Seconds TonAPI is down in a run's long outage (``Scenario.tonapi_outage_rate``): more than
a health interval (15 minutes) plus :data:`OUTAGE_MARGIN`."""
OUTAGE_MARGIN: Final = 120.0
"""Seconds into an outage after which every health round recorded must have seen it: a round
that checked TonAPI just before it began may be recorded later, stopped meanwhile (a pause
of up to a minute) or held by slow checks (10 s each at most)."""
HEALTH_BOUND: Final = 900.0 + 2 * MAX_CLOCK_OFFSET + 120.0
"""Seconds within which the end of a run has seen a health round: the HealthChecker's tick
(``Settings.health_interval``, 15 minutes), plus the wall clock's offsets as for
``ANALYTICS_BOUND``, plus two minutes."""
"""Seconds within which ChannelAnalytics has measured a channel at its current count (or
recorded the problem that keeps it from being measured) after the end of the faults, the
channel's addition or its audience's last change, whichever is latest: one tick interval;
plus as much as the hosts' wall clock can have been set back meanwhile (ticks are due by the
wall clock, so a clock set back delays the next one as much); plus two minutes for a restart's
backoff, a lease to pass over and the tick's own requests."""


class _SteppedClock:
    """The simulation's environment with a wall clock that can be stepped: ``offset``
    seconds off the true time. Monotonic time, ids and random sources are the run's own."""

    def __init__(self, base: environment.Environment) -> None:
        self.base = base
        self.offset = 0.0

    def true_now(self) -> datetime:
        return self.base.now()

    def now(self) -> datetime:
        return self.base.now() + timedelta(seconds=self.offset)

    def monotonic(self) -> float:
        return self.base.monotonic()

    def new_uuid(self) -> uuid.UUID:
        return self.base.new_uuid()

    def new_rng(self) -> random.Random:
        return self.base.new_rng()


@dataclass(eq=False)
class _Node:
    name: str
    incarnation: int = 0
    scope: anyio.CancelScope | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    frozen: Frozen | None = None


@dataclass(eq=False)
class _Channel:
    """A channel a user adds, as the Bot API stand-in knows it."""

    name: str
    counts: list[int]
    """Every member count the stand-in has given it, the current one last; none: Telegram
    does not know the channel."""
    changed_at: datetime
    """When its count was last set, or the bot kicked from it (true time, the database's)."""
    gone: bool = False
    """The bot was kicked from it for good: it cannot be measured any more."""

    @property
    def failing(self) -> bool:
        """Whether every measurement of it fails from now on."""
        return self.gone or not self.counts


class _World:
    def __init__(
        self,
        scenario: Scenario,
        tonapi: TonApiStandIn,
        client: TonApiClient,
        clock: _SteppedClock,
        bot_api: BotApiStandIn,
        telegram: TelegramClient,
    ) -> None:
        self.scenario = scenario
        self.clock = clock
        self.faults = _Faults(scenario.store_fault_rate, scenario.lost_ack_rate)
        self.violation: InvariantViolated | None = None
        self.violated = anyio.Event()
        self.task_types: dict[int, str] = {}
        self.log = MemoryLog(
            on_commit=self._committed,
            clock=clock.true_now,  # PostgreSQL's now(): another machine's clock
            faults=self.faults,
            lost_ack=self._after_commit,
            yield_point=self._latency,
            safety_poll=SAFETY_POLL,
            # A fault loses the LISTEN connection of the node it hits, as an outage does.
            caller=_node.get,
        )
        self.tonapi = tonapi
        self.client = client
        self.settings = Settings(
            wallet=WALLET,
            tonapi_url="http://tonapi.invalid",
            analytics_interval=ANALYTICS_INTERVAL,
            cleanup_interval=CLEANUP_INTERVAL,
            admin_ids=(ADMIN,),
        )
        self.gateway = Gateway(self.log, self.settings)
        self.nodes = [_Node(f"node-{i}") for i in range(scenario.nodes)]
        self.rewards: dict[uuid.UUID, int] = {}  # earned: reward id -> referrer or adder
        self.payments: dict[int, PaymentCreated] = {}
        self.due: dict[int, float] = {}  # paid in full inside their window: when (sim time)
        self.foreign: set[str] = set()  # tx hashes that pay no payment (a wrong memo)
        self.transferred: dict[str, float] = {}  # every transfer to the wallet: when (sim time)
        self.kills = self.cuts = self.commands = self.redeliveries = self.tonapi_faults = 0
        self.duplicates = self.clock_jumps = self.pauses = 0
        # nodes to stop at their next store write of a kind (see pause)
        self.stop_at: dict[str, tuple[str, anyio.Event]] = {}
        self.tg: TaskGroup | None = None  # the run's task group, for deliveries made later
        self.bot_api = bot_api
        self.telegram = telegram
        self.channels: dict[str, _Channel] = {}  # by channel stream
        self.telegram_faults = 0
        self.calm_since: datetime | None = None  # when the faults stopped (true time)
        self.final: _Checker | None = None  # the end's check, for the report
        self.seen: list[uuid.UUID] = []  # every event the follower checked, in reading order
        self.outage_rounds = 0  # health rounds recorded during TonAPI's long outage

    def specs(self) -> list[ChildSpec]:
        """A node's children: the PaymentMonitor on the in-process TonAPI, the rest as built
        by ``i3lani run``; ChannelAnalytics on the in-process Bot API."""
        monitor = ChildSpec(
            "PaymentMonitor",
            # The TON stream (the fast path) is off here: TonAPI is read in-process, with no
            # socket to hold a stream on. It is only ever a hint that wakes a scan early;
            # polling alone must confirm every payment, which the liveness check holds.
            lambda: PaymentMonitor(self.settings, tonapi=self.client, stream=False),
            RestartType.PERMANENT,
        )
        analytics = ChildSpec(
            "ChannelAnalytics",
            lambda: ChannelAnalytics(self.settings, telegram=self.telegram),
            RestartType.PERMANENT,
        )
        held = HeldVerdict()  # one per process (node incarnation), as in `i3lani run`
        health = ChildSpec(
            "HealthChecker",
            lambda: HealthChecker(
                self.settings,
                actor_intervals=tick_intervals(self.settings, ACTORS),
                lagging_checkpoints={n: c for n, c in CATEGORIES.items() if n in ACTORS},
                tonapi=self.client,
                telegram=self.telegram,
                held=held,
            ),
            RestartType.PERMANENT,
        )
        cleanup = ChildSpec(
            "Cleanup", lambda: Cleanup(self.settings, tonapi=self.client), RestartType.PERMANENT
        )
        built = {spec.name: spec for spec in (monitor, analytics, health, cleanup)}
        others = child_specs([name for name in ACTORS if name not in built], self.settings)
        return [built.get(name) or others.pop(0) for name in ACTORS]

    # -- nodes ------------------------------------------------------------------------------
    def start_node(self, tg: TaskGroup, node: _Node) -> None:
        node.incarnation += 1
        node.scope = scope = anyio.CancelScope()
        node.done = done = anyio.Event()
        # The scope and event are this incarnation's, passed along: a node killed and started
        # again before this task first runs has its next incarnation's in ``node`` by then.
        tg.start_soon(self._run_node, node, scope, done, name=f"{node.name}#{node.incarnation}")

    async def _run_node(self, node: _Node, scope: anyio.CancelScope, done: anyio.Event) -> None:
        _node.set(node.name)
        supervisor = Supervisor(
            self.log,
            self.specs(),
            node=node.name,
            lease_ttl=LEASE_TTL,
            acquire_interval=ACQUIRE_INTERVAL,
        )
        try:
            with scope:
                await supervisor.run()
        finally:
            done.set()

    async def kill(self, tg: TaskGroup, node: _Node) -> None:
        """SIGKILL and restart: nothing the dying process does reaches the database."""
        self.kills += 1
        self.faults.cut.add(node.name)
        self.resume(node)  # a stopped process is killed all the same
        assert node.scope is not None
        node.scope.cancel()
        await node.done.wait()
        self.faults.cut.discard(node.name)
        self.start_node(tg, node)

    async def pause(self, node: _Node, seconds: float, *, at: str | None = None) -> None:
        """SIGSTOP for ``seconds``, then SIGCONT: none of the node's tasks runs meanwhile
        (its lease expires and is taken over), and it resumes with every deadline passed,
        in the seed's order: what it was about to write may come before it notices.

        ``at``: stop it as it is about to send its next such store write (``"begin"``,
        ``"append"``, ``"commit"``, ...), where a stop hurts most, rather than anywhere."""
        if node.frozen is not None or node.name in self.stop_at:
            return
        if at is None:
            self.freeze(node)
        elif not await self.stopped_at(node, at):
            return
        self.pauses += 1
        frozen = node.frozen
        await anyio.sleep(seconds)
        if node.frozen is frozen:  # not killed (and restarted) meanwhile
            self.resume(node)

    async def kill_at(self, tg: TaskGroup, node: _Node, at: str | None) -> None:
        """SIGKILL, anywhere or at a chosen point (see :meth:`stopped_at`)."""
        if node.name in self.stop_at:
            return
        if at is None or await self.stopped_at(node, at):
            await self.kill(tg, node)

    async def stopped_at(self, node: _Node, at: str) -> bool:
        """Stop ``node`` at its next write of kind ``at`` (see :data:`STOP_POINTS`); False
        when it made none within three lease lifetimes."""
        stopped = anyio.Event()
        self.stop_at[node.name] = (at, stopped)
        with anyio.move_on_after(3 * LEASE_TTL):
            await stopped.wait()
        if stopped.is_set():
            return True
        del self.stop_at[node.name]
        return False

    def _after_commit(self, operation: str) -> bool:
        """The store's acknowledgement hook: a node to be stopped right after its next commit
        is stopped here (its write is in, it has not seen the answer); then, perhaps, the
        answer is lost."""
        who = _node.get()
        if who is not None and who in self.stop_at and self.stop_at[who][0] == AFTER_COMMIT:
            _, stopped = self.stop_at.pop(who)
            self.freeze(next(node for node in self.nodes if node.name == who))
            stopped.set()
        return self.faults.lost_ack(operation)

    def freeze(self, node: _Node) -> Frozen:
        name = node.name
        frozen = current_loop().freeze(lambda context: context.get(_node) == name, name)
        node.frozen = frozen
        return frozen

    async def _latency(self, operation: str) -> None:
        """The store's scheduling hook: each write takes a random moment of simulated time;
        each read lets every other ready task run first, in the seed's order (half the cost
        of a timer, and reads interleave with writes all the same). A node to be stopped at
        its next write of this kind is stopped here, before the write is sent. Every store
        operation passes here, so it calls asyncio (which the kernel is) directly: anyio's
        ``checkpoint`` and ``sleep`` are these calls behind a look-up of the running library."""
        if operation in READS:
            await asyncio.sleep(0)
            return
        who = _node.get()
        if who is not None and who in self.stop_at and self._stops_here(who, operation):
            _, stopped = self.stop_at.pop(who)
            self.freeze(next(node for node in self.nodes if node.name == who))
            stopped.set()
        await asyncio.sleep(self.faults.rng.expovariate(1 / STORE_LATENCY))

    def _stops_here(self, who: str, operation: str) -> bool:
        at = self.stop_at[who][0]
        if at == HOLDING_A_TASK:
            return any(
                row.status == "running" and row.locked_by == who
                for row in MemoryTaskTable.of(self.log)._rows.values()
            )
        return at == operation

    def resume_all(self) -> None:
        """Resume every stopped node: the run is ending, and a stopped process can be neither
        cancelled nor waited for (the end of a run cancels every task)."""
        for node in self.nodes:
            self.resume(node)

    def resume(self, node: _Node) -> None:
        if node.frozen is not None:
            current_loop().thaw(node.frozen)
            node.frozen = None

    async def cut_off(self, node: _Node, seconds: float) -> None:
        self.cuts += 1
        self.faults.cut.add(node.name)
        await anyio.sleep(seconds)
        self.faults.cut.discard(node.name)

    # -- users and operators -----------------------------------------------------------------
    async def user_arrives(self, user: int, referrer: int | None) -> None:
        """``/start`` (with the referrer's link), redelivered until the gateway answers; then
        perhaps ``/subscribe`` and a payment, sometimes handled while ``/start`` still is
        (two updates of one chat, handled concurrently)."""
        rng = current_rng()
        link = None if referrer is None else f"ref_{referrer}"
        subscribing = rng.random() < SUBSCRIBING
        if subscribing and self.faults.faulty and rng.random() < self.scenario.reorder_rate:
            assert self.tg is not None
            self.tg.start_soon(self.subscribe_and_pay, user, name=f"user-{user}-subscribe")
            subscribing = False
        await self._update(lambda: self.gateway.start(TelegramUser(user), link), same=_any)
        if rng.random() < ADDING:
            assert self.tg is not None
            self.tg.start_soon(self.add_channel, user, name=f"user-{user}-channel")
        if subscribing:
            await self.subscribe_and_pay(user)

    async def _update(
        self, handle: Callable[[], Awaitable[T]], *, same: Callable[[T, T], bool]
    ) -> T:
        """One Telegram update handled by the gateway: redelivered until it is answered, and
        sometimes delivered once more later (its answer was lost on the way back), whose
        answer must be the ``same``."""
        first = await self._redelivered(handle)
        rng = current_rng()
        if self.faults.faulty and rng.random() < self.scenario.duplicate_rate:
            self.duplicates += 1

            async def again() -> None:
                await anyio.sleep(rng.uniform(0.0, 30.0))
                second = await self._redelivered(handle)
                if not same(first, second):
                    raise InvariantViolated(
                        f"an update delivered twice was answered {first!r}, then {second!r}"
                    )

            assert self.tg is not None
            self.tg.start_soon(again, name="duplicate-update")
        return first

    async def _redelivered(self, what: Callable[[], Awaitable[T]]) -> T:
        """``what`` through the gateway, redelivered until it answers (as Telegram does)."""
        token = _node.set("gateway")
        try:
            while True:
                try:
                    return await what()
                except StoreUnavailable:
                    self.redeliveries += 1
                    await anyio.sleep(current_rng().uniform(1.0, 60.0))
        finally:
            _node.reset(token)

    async def subscribe_and_pay(self, user: int) -> None:
        """``/subscribe week``, then pay as the user's behaviour says (from the seed)."""
        rng = current_rng()
        plan = self.settings.plans[0]
        created = await self._update(
            lambda: self.gateway.create_payment(user, plan, request=f"subscribe-{user}"),
            same=lambda a, b: a.payment_id == b.payment_id,
        )
        self.payments[created.payment_id] = created
        behaviour = rng.choices([b for b, _ in BEHAVIOURS], [w for _, w in BEHAVIOURS])[0]
        if behaviour == "never":
            return
        window = self.settings.payment_window
        late = behaviour == "late"
        await anyio.sleep(window + rng.uniform(60, 600) if late else rng.uniform(5, window / 2))
        price = created.amount_nanotons
        value = {"over": price + price // 3, "under": price // 2}.get(behaviour, price)
        memo = f"{created.memo}x" if behaviour == "wrong memo" else created.memo
        tx = self.tonapi.transfer(WALLET, source=PAYER, value=value, comment=memo)
        self.transferred[tx["hash"]] = anyio.current_time()
        if behaviour == "wrong memo":
            self.foreign.add(tx["hash"])
        elif behaviour != "late" and value >= price:
            self.due[created.payment_id] = anyio.current_time()
        if behaviour == "twice":
            await anyio.sleep(rng.uniform(1, 120))
            again = self.tonapi.transfer(WALLET, source=PAYER, value=value, comment=memo)
            self.transferred[again["hash"]] = anyio.current_time()

    def clock_jump(self) -> str:
        """The hosts' wall clock steps (an NTP correction, a VM resumed), at most
        :data:`MAX_CLOCK_OFFSET` off in all; monotonic clocks and the database's do not."""
        rng = current_rng()
        step = rng.uniform(-MAX_CLOCK_STEP, MAX_CLOCK_STEP)
        offset = max(-MAX_CLOCK_OFFSET, min(MAX_CLOCK_OFFSET, self.clock.offset + step))
        self.clock.offset = offset
        self.clock_jumps += 1
        return f"wall clock steps {step:+.1f}s (now {offset:+.1f}s off)"

    def tonapi_fault(self) -> str:
        rng = current_rng()
        mode = rng.choice(("500", "502", "429", "timeout", "garbage"))
        times = rng.randint(1, 6)
        self.tonapi_faults += 1
        if mode == "429":
            self.tonapi.fail("429", times, retry_after=rng.uniform(1, 20))
        elif mode == "timeout":
            self.tonapi.fail("timeout", times, hang=rng.uniform(5, 60))
        else:
            self.tonapi.fail(mode, times)  # type: ignore[arg-type]
        return f"TonAPI {mode} x{times}"

    # -- channels and the Bot API -------------------------------------------------------------
    async def add_channel(self, user: int) -> None:
        """``/addchannel @name`` a while after ``/start``: a channel the Bot API knows with a
        seeded audience (or not at all), perhaps changing later; its reward is expected."""
        rng = current_rng()
        await anyio.sleep(rng.uniform(1.0, 600.0))
        name = f"@sim_channel_{user}"
        stream = channel_stream(name)
        channel = _Channel(name, [], self.clock.true_now())
        if rng.random() >= UNKNOWN:
            channel.counts.append(_audience(rng))
            self.bot_api.set_member_count(name, channel.counts[-1])
        self.channels[stream] = channel
        self.rewards[_channel_reward_id(stream)] = user
        await self._update(
            lambda: self.gateway.add_channel(user, name),
            same=lambda first, second: _registered(name, first) and _registered(name, second),
        )
        if channel.counts and self.faults.faulty and rng.random() < CHANGING:
            await anyio.sleep(rng.uniform(ANALYTICS_INTERVAL, 3 * ANALYTICS_INTERVAL))
            if self.faults.faulty and not channel.gone:
                channel.counts.append(max(0, round(channel.counts[-1] * rng.uniform(0.7, 2.0))))
                channel.changed_at = self.clock.true_now()
                self.bot_api.set_member_count(name, channel.counts[-1])

    def telegram_fault(self) -> str:
        """Bot API trouble for a few requests, or for one channel (from the seed)."""
        rng = current_rng()
        mode = rng.choice(("500", "timeout", "garbage", "429", "not found", "kicked", "send"))
        times = rng.randint(1, 4)
        self.telegram_faults += 1
        if mode == "send":  # the notices the gateway sends users
            times = rng.randint(1, 6)
            hang = rng.uniform(5.0, 60.0) if rng.random() < 0.5 else None
            self.bot_api.fail("sendMessage", "500" if hang is None else "timeout", times, hang=hang)
            return f"Bot API sendMessage {'500' if hang is None else 'timeout'} x{times}"
        known = [c for c in self.channels.values() if c.counts and not c.gone]
        if mode in _BOT_API_ANSWERS or not known:
            answer = _BOT_API_ANSWERS.get(mode, "500")  # with no channel yet to fail, a 500
            hang = rng.uniform(5.0, 60.0) if answer == "timeout" else None
            self.bot_api.fail("getChatMemberCount", answer, times, hang=hang)
            return f"Bot API {answer} x{times}"
        channel = rng.choice(known)
        if mode == "429":
            retry_after = rng.randint(1, 90)  # beyond 60 s ChannelAnalytics gives up
            self.bot_api.fail_chat(channel.name, 429, retry_after=retry_after, times=times)
            return f"Bot API 429 (retry after {retry_after}s) for {channel.name} x{times}"
        if mode == "not found":
            self.bot_api.fail_chat(channel.name, 400, times=times)
            return f"Bot API chat not found for {channel.name} x{times}"
        if rng.random() < 0.25:
            channel.gone, channel.changed_at = True, self.clock.true_now()
            self.bot_api.fail_chat(channel.name, 403, KICKED, times=None)
            return f"Bot API: the bot is kicked from {channel.name} for good"
        self.bot_api.fail_chat(channel.name, 403, KICKED, times=times)
        return f"Bot API: the bot is kicked from {channel.name} x{times}"

    def calm_telegram(self) -> None:
        """The end of the faults for the Bot API: only the channels the bot was kicked from
        for good stay out of reach."""
        self.calm_since = self.clock.true_now()
        self.bot_api.heal()
        for channel in self.channels.values():
            if channel.gone:
                self.bot_api.fail_chat(channel.name, 403, KICKED, times=None)

    async def operator(self, action: str, actor: str) -> None:
        token = _node.set(None)
        try:
            command = operator_command(action, actor, requested_by="simulated-operator")
            await issue_command(self.log, command)
            self.commands += 1
        finally:
            _node.reset(token)

    # -- invariants -------------------------------------------------------------------------
    def _committed(self, events: list[RecordedEvent]) -> None:
        """Inside each commit, with the leases as they are at that moment: work for an actor
        (its task events, its writes under a lease) is committed only by the node that holds
        the actor's lease, unexpired. A violation ends the run at the next step."""
        who = _node.get()
        for recorded in events:
            event = recorded.event
            if isinstance(event, TaskEnqueued):
                self.task_types[event.task_id] = event.task_type
            if who is None or not who.startswith("node-") or self.violation is not None:
                continue
            lease = recorded.metadata.lease
            if lease is None and isinstance(event, _TASK_EVENTS):
                lease = TASK_ACTORS.get(self.task_types.get(event.task_id, ""))
            if lease is None:
                continue
            holder = self.log.lease_holder(lease)
            if holder is None or holder.split("/", 1)[0] != who:
                self.violation = InvariantViolated(
                    f"{who} committed {type(event).__name__} to {recorded.stream} (work of "
                    f"{lease}) while {holder or 'nobody'} held {lease}'s lease"
                )
                self.violated.set()

    async def notify(self) -> None:
        """The web service's notifier: tells users what became of their payments, through
        the Bot API stand-in, as the gateway's process (its store faults apply)."""
        _node.set("gateway")
        await run_notifier(self.log, self.telegram)

    def told(self, payment_id: int) -> int:
        """How many times the payment's user was told it is confirmed."""
        created = self.payments.get(payment_id)
        if created is None:
            return 0
        notice = f"Payment #{payment_id} is confirmed"
        return sum(
            1
            for sent in self.bot_api.sent
            if sent.chat_id == created.user_id and sent.text.startswith(notice)
        )

    async def watch(self) -> None:
        """Raise the violation the commit hook found, as soon as it is found."""
        await self.violated.wait()
        assert self.violation is not None
        self.resume_all()
        raise self.violation

    async def follow(self) -> None:
        """Check every event as it commits (in reading order): a broken guarantee stops the
        run within a step or two of the write that broke it."""
        checker = _Checker(self)
        token = _node.set(None)
        try:
            async with self.log.subscribe(skip_unknown=True) as subscription:
                async for recorded in subscription:
                    checker.feed(recorded)
                    self.seen.append(recorded.event_id)
        except InvariantViolated:
            self.resume_all()
            raise
        finally:
            _node.reset(token)

    async def tonapi_outage(self, faulty: float, say: Callable[[str], None]) -> None:
        """TonAPI down (502 to every request) for :data:`OUTAGE` seconds, at most three
        quarters of the faulty phase of ``faulty`` seconds, from a moment drawn from the seed.
        Every health round recorded from :data:`OUTAGE_MARGIN` into it to its end must say
        TonAPI fails, unless it could not reach the database (a held verdict from before)."""
        rng = current_rng()
        length = min(OUTAGE, 0.75 * faulty)
        await anyio.sleep(rng.uniform(0.0, faulty - length))
        say(f"{anyio.current_time():8.1f}s TonAPI down for {length:.0f}s")
        self.tonapi.heal()  # nothing queued before it answers for it (a short hang)
        self.tonapi.fail("502", None)
        table = MemoryHealthSamples.of(self.log)
        await anyio.sleep(OUTAGE_MARGIN)
        first = table._next_id
        await anyio.sleep(length - OUTAGE_MARGIN)
        last = table._next_id
        self.tonapi.heal()  # the faults queued behind it go too
        say(f"{anyio.current_time():8.1f}s TonAPI back")
        rounds: dict[datetime, dict[str, HealthSample]] = {}
        for row_id, row in table._rows.items():
            if first <= row_id < last:
                rounds.setdefault(row.checked_at, {})[row.name] = row
        for checked_at, checks in rounds.items():
            if not checks.get("database", _FAILED).ok:
                continue  # held while the database was out of reach: checked before
            self.outage_rounds += 1
            tonapi = checks.get("tonapi")
            if tonapi is None or tonapi.ok:
                self.violation = InvariantViolated(
                    f"the health round of {checked_at:%H:%M:%S}, recorded "
                    f"{OUTAGE_MARGIN:g}s or more into a TonAPI outage, says TonAPI "
                    f"{'passes' if tonapi is not None else 'was not checked'}"
                )
                self.violated.set()
                return

    async def seed_old_samples(self) -> None:
        """Health samples of an earlier life of the database, past their retention, for
        Cleanup to prune (:data:`OLD_SAMPLES`); written before any node starts."""
        old = self.clock.true_now() - timedelta(days=self.settings.health_retention_days + 10)
        await views.record_health_samples(
            self.log,
            [HealthSample(checked_at=old, name="database", ok=True)] * OLD_SAMPLES,
        )

    async def _health_live(self, checker: _Checker) -> None:
        """What Cleanup and the HealthChecker must have done by the end.

        Cleanup pruned every health sample past its retention and none of the run's own
        (the earlier life's are the first :data:`OLD_SAMPLES` rows), and counted no more than
        there were. The HealthChecker's latest round (what operators see) is recent, and
        tells the truth about the quiet system: every check passes but ``tasks`` when dead
        letters wait for an operator, and then that one fails saying so. Every alert due
        reached the admin, unless Telegram refused it until its task went to the dead
        letters."""
        table = MemoryHealthSamples.of(self.log)
        kept_old = [i for i in table._rows if i <= OLD_SAMPLES]
        if kept_old:
            raise InvariantViolated(
                f"{len(kept_old)} of {OLD_SAMPLES} health samples past their retention still "
                f"kept {self.scenario.settle:g}s after the faults stopped (Cleanup, liveness)"
            )
        pruned = sorted(set(range(OLD_SAMPLES + 1, table._next_id)) - set(table._rows))
        if pruned:
            raise InvariantViolated(
                f"{len(pruned)} health samples of this run pruned, well inside their "
                f"retention (the first id {pruned[0]})"
            )
        if checker.samples_pruned > OLD_SAMPLES:
            raise InvariantViolated(
                f"Cleanup recorded {checker.samples_pruned} health samples pruned; only "
                f"{OLD_SAMPLES} were ever past their retention"
            )
        now = self.clock.true_now()
        assert self.calm_since is not None
        due_by = now - timedelta(seconds=LIVENESS_BOUND)
        for alert_id, (alert, raised_at) in sorted(checker.raised.items(), key=lambda a: a[1][1]):
            if max(raised_at, self.calm_since) > due_by or alert_id in checker.undeliverable:
                continue  # not due yet, or Telegram never took it (a dead letter says so)
            text = alert_text(alert)
            if not any(m.chat_id == ADMIN and m.text == text for m in self.bot_api.sent):
                raise InvariantViolated(
                    f"alert {alert_id} ({alert.kind}: {alert.subject}) never reached the admin "
                    f"within {LIVENESS_BOUND:g}s of being raised and of the end of the faults, "
                    "nor went to the dead letters (liveness)"
                )
        latest = await last_verdict(self.log)
        if latest is None or latest.checked_at < now - timedelta(seconds=HEALTH_BOUND):
            when = "never" if latest is None else f"last at {latest.checked_at:%H:%M:%S}"
            raise InvariantViolated(
                f"no health round within {HEALTH_BOUND:g}s of the end ({when}; liveness)"
            )
        for check in latest.checks:
            dead = check.name == "tasks" and checker.dead_letters > 0
            if check.ok == dead or (dead and "dead letter" not in check.detail):
                expected = "failing, naming the dead letters" if dead else "passing"
                raise InvariantViolated(
                    f"the last health round says {check.name} "
                    f"{'passes' if check.ok else 'fails'} ({check.detail!r}) in a quiet "
                    f"system with {checker.dead_letters} dead letter(s): expected {expected}"
                )

    async def final_check(self) -> tuple[int, int]:
        """Check the whole log from the start, and liveness; the credits and confirmations
        the log holds."""
        token = _node.set(None)
        try:
            checker = _Checker(self)
            ids: list[uuid.UUID] = []
            async for batch in self.log.read_batches(skip_unknown=True):
                for recorded in batch:
                    checker.feed(recorded)
                    ids.append(recorded.event_id)
            if ids[: len(self.seen)] != self.seen:
                raise InvariantViolated(
                    "the log lost or reordered events it had committed: of the "
                    f"{len(self.seen)} checked as they committed, the log now holds "
                    f"{len(set(self.seen) & set(ids))}"
                )
            checker.live()
            await self._health_live(checker)
            self.final = checker
            return sum(checker.credited.values()), sum(checker.confirmed.values())
        finally:
            _node.reset(token)


class _Checker:
    """The invariants, checked one event at a time in reading order."""

    def __init__(self, world: _World) -> None:
        self.world = world
        self.credited: Counter[uuid.UUID] = Counter()
        self.earned: set[uuid.UUID] = set()
        self.registered: set[int] = set()
        self.balance: dict[int, int] = {}
        self.newest: dict[str, int] = {}
        self.confirmed: Counter[int] = Counter()
        self.confirmed_at: dict[int, datetime] = {}
        self.activated: Counter[int] = Counter()
        self.paid_by: dict[str, int] = {}
        self.claims: dict[int, TaskClaimed] = {}  # each task's latest claim
        self.finished: set[int] = set()  # tasks that succeeded or went to the dead letters
        # Channels, by stream: when added; the latest measurement (and its version); the
        # price; a measurement whose price change must come next; the latest outcome. Times
        # are the database's (``recorded_at``): the hosts' wall clocks may be off.
        self.added: dict[str, datetime] = {}
        self.stats: dict[str, tuple[int, ChannelStatsUpdated]] = {}
        self.price: dict[str, int] = {}
        self.unpriced: dict[str, ChannelStatsUpdated] = {}
        self.outcome: dict[str, tuple[datetime, ChannelStatsUpdated | ChannelStatsFailed]] = {}
        self.measurements = self.price_changes = self.measure_failures = 0
        self.recorded: set[str] = set()  # transactions recorded as transfers
        self.samples_pruned = 0  # health samples Cleanup recorded it pruned
        self.cleanups = 0  # CleanupCompleted
        self.verdicts = 0  # HealthChecked
        self.alerts = 0  # AlertRaised
        self.dead_letters = 0  # TaskDeadLettered
        self.raised: dict[uuid.UUID, tuple[AlertRaised, datetime]] = {}  # alert: recorded at
        self.alert_tasks: dict[int, uuid.UUID] = {}  # admin_alert task: its alert
        self.undeliverable: set[uuid.UUID] = set()  # alerts whose task went to dead letters
        self.wallet_events: list[RecordedEvent] = []  # the wallet's stream, for reconciling

    def feed(self, recorded: RecordedEvent) -> None:
        """Raise InvariantViolated when ``recorded`` breaks a guarantee."""
        event, meta = recorded.event, recorded.metadata
        if meta.lease is not None and meta.generation is not None:
            if meta.generation < self.newest.get(meta.lease, 0):
                raise InvariantViolated(
                    f"{recorded.stream} v{recorded.version} ({type(event).__name__}) was "
                    f"written under generation {meta.generation} of {meta.lease} after a "
                    f"write under generation {self.newest[meta.lease]}: two incarnations "
                    "interleaved"
                )
            self.newest[meta.lease] = meta.generation
        if isinstance(event, PaymentConfirmed):
            self._confirmation(event, recorded.recorded_at)
        elif isinstance(event, TransferReceived | TransferSent):
            self._transfer(event.tx_hash)
            self.wallet_events.append(recorded)
        elif recorded.stream.startswith("payment-scan-"):
            self.wallet_events.append(recorded)
        elif isinstance(event, SubscriptionActivated):
            self.activated[event.payment_id] += 1
            if not self.confirmed[event.payment_id]:
                raise InvariantViolated(
                    f"payment {event.payment_id}'s subscription was activated without a "
                    "confirmed payment"
                )
            if self.activated[event.payment_id] > 1:
                raise InvariantViolated(
                    f"payment {event.payment_id}'s subscription activated twice"
                )
        elif isinstance(event, RewardEarned):
            if event.reward_id in self.earned:
                raise InvariantViolated(f"reward {event.reward_id} earned twice")
            self.earned.add(event.reward_id)
        elif isinstance(event, UserRegistered):
            if event.user_id in self.registered:
                raise InvariantViolated(f"user {event.user_id} registered twice")
            self.registered.add(event.user_id)
        elif isinstance(event, RewardCredited):
            self._credit(event)
        elif isinstance(event, TaskEnqueued):
            if event.task_type == ADMIN_ALERT:
                self.alert_tasks[event.task_id] = uuid.UUID(str(event.payload["alert_id"]))
        elif isinstance(event, TaskClaimed | TaskSucceeded | TaskFailed | TaskDeadLettered):
            self._task(event)
            if isinstance(event, TaskDeadLettered):
                self.dead_letters += 1
                if event.task_id in self.alert_tasks:
                    self.undeliverable.add(self.alert_tasks[event.task_id])
        elif isinstance(event, CleanupCompleted):
            self.cleanups += 1
            self.samples_pruned += event.removed.get("health_samples", 0)
            if event.removed.get("stale_payments", 0):
                raise InvariantViolated(
                    f"Cleanup expired {event.removed['stale_payments']} stale payment(s); no "
                    "payment of the run was pending a day past its expiry"
                )
        elif isinstance(event, HealthChecked):
            self.verdicts += 1
        elif isinstance(event, AlertRaised):
            self.alerts += 1
            self.raised[event.alert_id] = (event, recorded.recorded_at)
        elif isinstance(
            event, ChannelAdded | ChannelStatsUpdated | ChannelPriceChanged | ChannelStatsFailed
        ):
            self._channel(recorded)

    def _transfer(self, tx_hash: str) -> None:
        """A transaction is recorded as a transfer once, and only one the chain has."""
        if tx_hash in self.recorded:
            raise InvariantViolated(f"transaction {tx_hash} recorded as a transfer twice")
        if tx_hash not in self.world.transferred:
            raise InvariantViolated(
                f"transaction {tx_hash} recorded as a transfer; the chain never had it"
            )
        self.recorded.add(tx_hash)

    def _books_live(self, by: float) -> None:
        """Every transfer made before ``by`` (sim time) is recorded, and the range scanned
        reconciles with the chain."""
        world = self.world
        made = world.transferred.items()
        missing = sorted(h for h, at in made if at <= by and h not in self.recorded)
        if missing:
            raise InvariantViolated(
                f"{len(missing)} of {len(world.transferred)} transfers to the wallet not "
                f"recorded {LIVENESS_BOUND:g}s after they were made (liveness): {missing[:3]}"
            )
        wallet = Address.parse(WALLET)
        ledger = fold_ledger(wallet.to_raw(), self.wallet_events)
        bounds = reconcile_range(ledger)
        if bounds is None:
            return
        chain = decode_transactions(
            msgspec.json.encode({"transactions": world.tonapi.transactions(WALLET)})
        )
        result = reconcile(wallet, chain, ledger, from_lt=bounds[0], to_lt=bounds[1])
        if not result.clean:
            first = result.discrepancies[0]
            raise InvariantViolated(
                f"the wallet's transfers do not reconcile with the chain: "
                f"{len(result.discrepancies)} discrepancies, the first {first.kind} tx "
                f"{first.tx_hash}: {first.detail}"
            )

    def _task(self, event: TaskClaimed | TaskSucceeded | TaskFailed | TaskDeadLettered) -> None:
        """A task's attempts follow one another, each recorded by the node that holds it, and
        nothing happens to a task after its success or its dead letter."""
        task = event.task_id
        if task in self.finished:
            raise InvariantViolated(
                f"task {task}: {type(event).__name__} recorded after the task had finished"
            )
        if isinstance(event, TaskClaimed):
            self.claims[task] = event
            return
        if isinstance(event, TaskDeadLettered):
            self.finished.add(task)
            return
        claim = self.claims.get(task)
        if claim is None or (claim.attempt, claim.node) != (event.attempt, event.node):
            held = "nobody" if claim is None else f"{claim.node} (attempt {claim.attempt})"
            raise InvariantViolated(
                f"task {task}: {type(event).__name__} of attempt {event.attempt} recorded "
                f"by {event.node}, while the task was held by {held}"
            )
        if isinstance(event, TaskSucceeded):
            self.finished.add(task)

    def _channel(self, recorded: RecordedEvent) -> None:
        """A channel's addition, measurements and prices, in its stream's order."""
        event, stream = recorded.event, recorded.stream
        awaited = self.unpriced.pop(stream, None)
        if awaited is not None and not isinstance(event, ChannelPriceChanged):
            price = channel_price(awaited.active_subscribers, self.world.settings)
            raise InvariantViolated(
                f"{awaited.channel} was measured with {awaited.active_subscribers} active "
                f"subscribers, priced {price} nanotons, and its price stayed "
                f"{self.price.get(stream)}"
            )
        if isinstance(event, ChannelAdded):
            if stream in self.added:
                raise InvariantViolated(f"channel {event.channel} added twice")
            self.added[stream] = recorded.recorded_at
            return
        assert isinstance(event, ChannelStatsUpdated | ChannelPriceChanged | ChannelStatsFailed)
        if stream not in self.added:
            raise InvariantViolated(
                f"{type(event).__name__} for {event.channel}, which was never added"
            )
        if isinstance(event, ChannelPriceChanged):
            self._price(recorded.version, event)
            return
        if isinstance(event, ChannelStatsFailed):
            self.measure_failures += 1
        else:
            self._measurement(recorded.version, event)
        self.outcome[stream] = (recorded.recorded_at, event)

    def _measurement(self, version: int, event: ChannelStatsUpdated) -> None:
        self.measurements += 1
        stream, settings = channel_stream(event.channel), self.world.settings
        active = active_subscribers(event.subscribers, settings.active_share)
        if event.active_subscribers != active:
            raise InvariantViolated(
                f"{event.channel} measured with {event.subscribers} subscribers, of whom "
                f"{event.active_subscribers} active; the share "
                f"{share_text(settings.active_share)} gives {active}"
            )
        channel = self.world.channels.get(stream)
        if channel is None or event.subscribers not in channel.counts:
            had = [] if channel is None else channel.counts
            raise InvariantViolated(
                f"{event.channel} measured with {event.subscribers} subscribers, a count it "
                f"never had (it had {had})"
            )
        self.stats[stream] = (version, event)
        if channel_price(active, settings) != self.price.get(stream):
            self.unpriced[stream] = event

    def _price(self, version: int, event: ChannelPriceChanged) -> None:
        self.price_changes += 1
        stream = channel_stream(event.channel)
        price = channel_price(event.active_subscribers, self.world.settings)
        if event.new_price_nanotons != price:
            raise InvariantViolated(
                f"{event.channel} priced {event.new_price_nanotons} nanotons for "
                f"{event.active_subscribers} active subscribers; channel_price gives {price}"
            )
        version_before, stats = self.stats.get(stream, (0, None))
        if (
            stats is None
            or version_before != version - 1
            or (stats.measured_at, stats.active_subscribers)
            != (event.changed_at, event.active_subscribers)
        ):
            raise InvariantViolated(
                f"{event.channel}'s price changed at {event.changed_at:%H:%M:%S} for "
                f"{event.active_subscribers} active subscribers, not by the measurement just "
                "before it in its stream"
            )
        old = self.price.get(stream)
        if event.old_price_nanotons != old or event.new_price_nanotons == old:
            raise InvariantViolated(
                f"{event.channel}'s price changed from {event.old_price_nanotons} to "
                f"{event.new_price_nanotons} nanotons; it was {old}"
            )
        self.price[stream] = event.new_price_nanotons

    def _credit(self, event: RewardCredited) -> None:
        self.credited[event.reward_id] += 1
        if self.credited[event.reward_id] > 1:
            raise InvariantViolated(f"reward {event.reward_id} credited twice")
        earner = self.world.rewards.get(event.reward_id)
        if earner != event.user_id:
            raise InvariantViolated(
                f"reward {event.reward_id} credited to user {event.user_id}, earned by {earner}"
            )
        expected = self.balance.get(event.user_id, 0) + event.amount_nanotons
        if event.balance_after_nanotons != expected:
            raise InvariantViolated(
                f"user {event.user_id}'s balance after reward {event.reward_id} is "
                f"{event.balance_after_nanotons}, the credits add up to {expected}"
            )
        self.balance[event.user_id] = expected

    def _confirmation(self, event: PaymentConfirmed, recorded_at: datetime) -> None:
        self.confirmed[event.payment_id] += 1
        self.confirmed_at[event.payment_id] = recorded_at
        if self.confirmed[event.payment_id] > 1:
            raise InvariantViolated(f"payment {event.payment_id} confirmed twice")
        if event.tx_hash in self.paid_by:
            raise InvariantViolated(
                f"transaction {event.tx_hash} confirms payments {self.paid_by[event.tx_hash]} "
                f"and {event.payment_id}"
            )
        self.paid_by[event.tx_hash] = event.payment_id
        if event.tx_hash in self.world.foreign:
            raise InvariantViolated(
                f"payment {event.payment_id} confirmed by {event.tx_hash}, a transfer with "
                "another memo"
            )
        created = self.world.payments.get(event.payment_id)
        if created is not None and event.amount_nanotons < created.amount_nanotons:
            raise InvariantViolated(
                f"payment {event.payment_id} confirmed with {event.amount_nanotons} of "
                f"{created.amount_nanotons} nanotons"
            )

    def live(self) -> None:
        """Liveness, once the faults have stopped and the run has settled."""
        world = self.world
        told_by = world.clock.true_now() - timedelta(seconds=LIVENESS_BOUND)
        untold = sorted(
            p for p, at in self.confirmed_at.items() if at <= told_by and not world.told(p)
        )
        if untold:
            raise InvariantViolated(
                f"payments {untold[:10]} are confirmed, and their users were never told "
                f"({len(untold)} of {len(self.confirmed)}; liveness)"
            )
        settle = world.scenario.settle
        by = anyio.current_time() - LIVENESS_BOUND
        self._books_live(by)
        unconfirmed = sorted(p for p, at in world.due.items() if at <= by and not self.confirmed[p])
        if unconfirmed:
            raise InvariantViolated(
                f"payments {unconfirmed[:10]} were paid in full inside their window and are "
                f"still not confirmed {LIVENESS_BOUND:g}s after the payment and the end of "
                "the faults (liveness)"
            )
        missing = self.earned - set(self.credited)
        if missing:
            raise InvariantViolated(
                f"{len(missing)} of {len(self.earned)} rewards still not credited {settle:g}s "
                "after the faults stopped (liveness: the bound is "
                f"{LIVENESS_BOUND:g}s)"
            )
        unknown = set(world.rewards) - self.earned
        if unknown:
            channels = unknown & {_channel_reward_id(stream) for stream in world.channels}
            if channels:
                raise InvariantViolated(f"{len(channels)} channel additions earned no reward")
            raise InvariantViolated(f"{len(unknown)} users' referrals earned no reward")
        self._channels_live()

    def _channels_live(self) -> None:
        """Every channel due has been measured since the faults stopped, it was added and its
        audience last changed, at its current count; one that can no longer be measured has
        that recorded instead. On the database's clock (the hosts' may have been stepped)."""
        world, now = self.world, self.world.clock.true_now()
        assert world.calm_since is not None
        if self.unpriced:
            raise InvariantViolated(f"measured and never repriced: {sorted(self.unpriced)}")
        late: list[str] = []
        for stream, channel in sorted(world.channels.items()):
            added = self.added.get(stream)
            if added is None:
                continue  # never added: the rewards' liveness says so
            due = max(world.calm_since, added, channel.changed_at)
            # Due at the end of the faults: settle >= ANALYTICS_BOUND (Scenario checks it).
            if due > world.calm_since and due + timedelta(seconds=ANALYTICS_BOUND) > now:
                continue
            recorded_at, outcome = self.outcome.get(stream, (None, None))
            if recorded_at is None or recorded_at <= due:
                ok = False
            elif channel.failing:
                ok = isinstance(outcome, ChannelStatsFailed)
            else:
                ok = (
                    isinstance(outcome, ChannelStatsUpdated)
                    and outcome.subscribers == channel.counts[-1]
                )
            if not ok:
                expected = "failing" if channel.failing else f"{channel.counts[-1]} subscribers"
                late.append(f"{channel.name} ({expected}; last {_outcome(recorded_at, outcome)})")
        if late:
            raise InvariantViolated(
                f"{len(late)} channels not measured at their current count within "
                f"{ANALYTICS_BOUND:g}s of the end of the faults, their addition or their "
                f"audience's change (liveness): {', '.join(late[:5])}"
            )


async def simulate(scenario: Scenario, trace: Callable[[str], None] | None = None) -> Report:
    """Run ``scenario`` on the current simulated loop (inside :func:`ops.simulate.run`);
    raises :class:`InvariantViolated` when a guarantee breaks."""
    say = trace or (lambda line: None)
    clock = _SteppedClock(environment.current())
    with environment.use(clock):
        return await _simulate(scenario, say, clock)


async def _simulate(scenario: Scenario, say: Callable[[str], None], clock: _SteppedClock) -> Report:
    tonapi = TonApiStandIn(hang=60.0)
    bot_api = BotApiStandIn(hang=60.0)
    async with (
        InProcessServer(tonapi.application(), host="tonapi.invalid") as server,
        TonApiClient(server.url, transport=InProcessTransport(server)) as client,
        InProcessServer(bot_api.application(), host="api.telegram.invalid") as bot_server,
        TelegramClient(make_bot(bot_api.token, session=InProcessSession(bot_server))) as telegram,
    ):
        world = _World(scenario, tonapi, client, clock, bot_api, telegram)
        credited, confirmed = await _play_checked(scenario, world, say)
    assert world.final is not None
    token = _node.set(None)
    try:
        events, digest = await _log_digest(world.log)
    finally:
        _node.reset(token)
    return Report(
        users=scenario.users,
        rewards=len(world.rewards),
        credited=credited,
        payments=len(world.payments),
        confirmed=confirmed,
        events=events,
        store_faults=world.faults.injected,
        lost_acks=world.faults.lost_acks,
        kills=world.kills,
        cuts=world.cuts,
        pauses=world.pauses,
        commands=world.commands,
        tonapi_faults=world.tonapi_faults,
        redeliveries=world.redeliveries,
        duplicates=world.duplicates,
        clock_jumps=world.clock_jumps,
        channels=len(world.final.added),
        measurements=world.final.measurements,
        price_changes=world.final.price_changes,
        measure_failures=world.final.measure_failures,
        telegram_faults=world.telegram_faults,
        verdicts=world.final.verdicts,
        alerts=world.final.alerts,
        cleanups=world.final.cleanups,
        samples_pruned=world.final.samples_pruned,
        outage_rounds=world.outage_rounds,
        log_digest=digest,
    )


async def _play_checked(
    scenario: Scenario, world: _World, say: Callable[[str], None]
) -> tuple[int, int]:
    try:
        return await _play(scenario, world, say)
    except BaseExceptionGroup as group:
        # A violation found by the checker task: raised as itself, not inside the group.
        found: BaseException | None = group.subgroup(InvariantViolated)
        while isinstance(found, BaseExceptionGroup):
            found = found.exceptions[0]
        if found is None:
            raise
        raise found from None


async def _play(scenario: Scenario, world: _World, say: Callable[[str], None]) -> tuple[int, int]:
    """The run itself; the final check's credits and confirmations."""
    rng = current_rng()
    faulty = scenario.hours * 3600.0
    await world.seed_old_samples()
    async with anyio.create_task_group() as tg:
        world.tg = tg
        for node in world.nodes:
            world.start_node(tg, node)

        async def users() -> None:
            # The referrers first, in the first minute; then the others, many in bursts
            # through one referrer's link within a second or two (a post that went round).
            arrivals: list[tuple[float, int, int | None]] = [
                (rng.uniform(0, 60), number, None) for number in range(1, REFERRERS + 1)
            ]
            number = REFERRERS
            while number < scenario.users:
                size = min(rng.choice(BURSTS), scenario.users - number)
                at, referrer = rng.uniform(120, faulty), rng.randint(1, REFERRERS)
                for _ in range(size):
                    number += 1
                    arrivals.append((at + rng.uniform(0, BURST_SPREAD), number, referrer))
            arrivals.sort()
            began = anyio.current_time()
            for at, user, link in arrivals:
                await anyio.sleep(max(began + at - anyio.current_time(), 0.0))
                if link is not None:
                    world.rewards[_reward_id(user)] = link
                tg.start_soon(world.user_arrives, user, link, name=f"user-{user}")

        async def chaos() -> None:
            rates = (
                ("kill", scenario.kills_per_hour),
                ("cut", scenario.cuts_per_hour),
                ("pause", scenario.pauses_per_hour),
                ("command", scenario.commands_per_hour),
                ("tonapi", scenario.tonapi_faults_per_hour),
                ("clock", scenario.clock_jumps_per_hour),
                ("telegram", scenario.telegram_faults_per_hour),
            )
            total = sum(rate for _, rate in rates) / 3600.0  # events per second
            if total <= 0:
                return
            ends = anyio.current_time() + faulty
            while True:
                await anyio.sleep(rng.expovariate(total))
                if anyio.current_time() >= ends:
                    return
                kind = rng.choices([k for k, _ in rates], [r for _, r in rates])[0]
                node = rng.choice(world.nodes)
                if kind == "kill":
                    at = rng.choice((None, *STOP_POINTS, AFTER_COMMIT))
                    where = "" if at is None else f" at its next {at!r}"
                    say(f"{anyio.current_time():8.1f}s kill {node.name}{where}")
                    tg.start_soon(functools.partial(world.kill_at, tg, node, at))
                elif kind == "cut":
                    seconds = rng.uniform(1.0, 3 * LEASE_TTL)
                    say(f"{anyio.current_time():8.1f}s cut {node.name} for {seconds:.1f}s")
                    tg.start_soon(world.cut_off, node, seconds)
                elif kind == "tonapi":
                    say(f"{anyio.current_time():8.1f}s {world.tonapi_fault()}")
                elif kind == "pause":
                    seconds = rng.uniform(0.5 * LEASE_TTL, 6 * LEASE_TTL)
                    at = rng.choice((None, *STOP_POINTS))
                    where = "" if at is None else f" at its next {at!r}"
                    say(f"{anyio.current_time():8.1f}s pause {node.name}{where} for {seconds:.1f}s")
                    tg.start_soon(functools.partial(world.pause, node, seconds, at=at))
                elif kind == "clock":
                    say(f"{anyio.current_time():8.1f}s {world.clock_jump()}")
                elif kind == "telegram":
                    say(f"{anyio.current_time():8.1f}s {world.telegram_fault()}")
                else:
                    action = rng.choice(("restart", "stop", "start"))
                    actor = rng.choice(ACTORS)
                    say(f"{anyio.current_time():8.1f}s operator: {action} {actor}")
                    await world.operator(action, actor)

        tg.start_soon(users, name="users")
        tg.start_soon(chaos, name="chaos")
        tg.start_soon(world.follow, name="invariants")
        tg.start_soon(world.watch, name="commit-invariants")
        tg.start_soon(world.notify, name="notifier")
        if rng.random() < scenario.tonapi_outage_rate:
            tg.start_soon(world.tonapi_outage, faulty, say, name="tonapi-outage")
        await anyio.sleep(faulty)
        world.faults.faulty = False
        world.faults.cut.clear()
        world.resume_all()
        world.tonapi.heal()
        world.calm_telegram()
        say(f"{anyio.current_time():8.1f}s faults stop; operators start every actor")
        for actor in ACTORS:
            await world.operator("start", actor)
        await anyio.sleep(scenario.settle)
        tally = await world.final_check()
        tg.cancel_scope.cancel()
    return tally


_FAILED: Final = HealthSample(
    checked_at=datetime.min.replace(tzinfo=UTC), name="database", ok=False
)
"""A check missing from a round, taken as failed."""


def _any(first: object, second: object) -> bool:
    """Any two answers will do (a second ``/start`` says "welcome back")."""
    return True


def _reward_id(user: int) -> uuid.UUID:
    return reward_id_for("referral", f"user:{user}")


_BOT_API_ANSWERS: Final[dict[str, BotApiFaultMode]] = {
    "500": "500",
    "timeout": "timeout",
    "garbage": "garbage",
}


def _outcome(
    recorded_at: datetime | None, outcome: ChannelStatsUpdated | ChannelStatsFailed | None
) -> str:
    """A channel's latest measurement, for a liveness message."""
    if recorded_at is None or outcome is None:
        return "none"
    what = outcome.kind if isinstance(outcome, ChannelStatsFailed) else outcome.subscribers
    return f"{what}, recorded at {recorded_at:%H:%M:%S}"


def _channel_reward_id(stream: str) -> uuid.UUID:
    """The ``channel_addition`` reward of the channel of ``stream`` (as the gateway names it)."""
    return reward_id_for("channel_addition", f"channel:{stream.removeprefix('channel-')}")


def _registered(channel: str, answer: str) -> bool:
    """Whether ``answer`` to ``/addchannel`` tells its user that ``channel`` is theirs: newly
    registered, or registered to them already (a duplicate delivery of the same update)."""
    return answer.startswith((f"{channel} is registered. ", f"{channel} is registered to you"))


def _audience(rng: random.Random) -> int:
    """A channel's member count: from a few dozen to a few hundred thousand, log-uniform
    (the price leaves its minimum above 2,222 members)."""
    return round(10 ** rng.uniform(1.5, 5.5))


async def _log_digest(log: MemoryLog) -> tuple[int, str]:
    """How many events the log holds, and a sha256 over all of them in reading order."""
    digest = hashlib.sha256()
    count = 0
    async for batch in log.read_batches(skip_unknown=True):
        for recorded in batch:
            count += 1
            digest.update(f"{recorded.stream}\x00{recorded.version}\x00".encode())
            digest.update(msgspec.json.encode(recorded.event))
    return count, digest.hexdigest()
