"""One simulated run of i3lani: nodes, users, operators and faults, all drawn from one seed.

Everything here runs on :mod:`ops.simulate.kernel` (virtual time, seeded scheduling) against
one :class:`~store.memory.MemoryLog`, which stands for the PostgreSQL database every process
shares. The production code runs unchanged:

* **nodes**: each a :class:`supervisor.Supervisor` (``i3lani run``) supervising the
  PaymentMonitor and the RewardProcessor, with its own node name, leases and lease clocks;
* **users**: the bot gateway (:class:`bot_gateway.service.Gateway`) registering users that
  arrive at random moments, alone or in bursts through one referrer's link (a
  ``RewardEarned`` each); four in
  ten subscribe and then pay exactly, too much, too little, twice, late, never, or with a
  wrong memo, on the TonAPI stand-in's chain, which the PaymentMonitor reads in-process
  (:mod:`ops.simulate.transports`). A command the database refused is delivered again later,
  as Telegram redelivers a webhook update that was answered with an error;
* **operators**: random ``restart``, ``stop`` and ``start`` commands (``ops-commands``).

**Faults**, each at its own rate, during the first ``hours`` of the run (the faulty phase):
a store operation of a node or of the gateway fails (``StoreUnavailable``: the database is
unreachable for that statement; a failed ``"commit"`` rolls its transaction back); a node
is killed (cut off from the database first, so that nothing it does on the way down reaches
it, as with SIGKILL; then restarted with a new process identity); a node is cut off for a
while (a partition) and comes back; TonAPI answers 500, 502, 429 with Retry-After, hangs
past the client's timeout, or garbage, for a few requests. Then the faults stop, operators
start every actor, and the run goes on quietly for ``settle`` seconds: the liveness bound.

**Invariants**, checked every simulated minute and at the end (:class:`InvariantViolated`):
each reward credited at most once, to the user who earned it, with a running balance that
adds up; each payment confirmed at most once, by a transfer of at least its amount carrying
its memo, no transaction confirming two payments; a subscription activated once and only for
a confirmed payment; every event written under a lease carries a generation no older than
one already written under it (two incarnations never interleave their writes); and at the
end (liveness) every reward credited and every payment paid in full inside its window
confirmed.

Not covered yet (see the README): ChannelAnalytics and the notifier through the Bot API,
the HealthChecker and Cleanup (they read PostgreSQL's own views), a node paused with its
timers (rather than cut off), a commit whose acknowledgement is lost, duplicate and reordered
Telegram updates, and clock jumps.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Final, TypeVar

import anyio
import msgspec
from anyio.abc import TaskGroup

from actors.catalog import child_specs
from actors.config import Settings
from actors.control import issue_command, operator_command
from actors.payment_monitor import PaymentMonitor
from actors.runtime import ChildSpec, RestartType
from actors.tonapi import TonApiClient
from bot_gateway.service import Gateway, TelegramUser, reward_id_for
from events import (
    PaymentConfirmed,
    PaymentCreated,
    RewardCredited,
    RewardEarned,
    SubscriptionActivated,
)
from events.errors import I3laniError, StoreUnavailable
from ops.simulate.kernel import current_rng
from ops.simulate.transports import InProcessServer, InProcessTransport
from ops.standins import TonApiStandIn
from store.memory import MemoryLog
from supervisor import Supervisor

__all__ = ["Scenario", "Report", "InvariantViolated", "simulate", "ACTORS"]

ACTORS: Final = ("PaymentMonitor", "RewardProcessor")
"""The actors every simulated node supervises."""

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

T = TypeVar("T")

REFERRERS: Final = 5
"""Users who arrive first, without a link, and whose links the others follow."""
BURSTS: Final = (1, 1, 1, 2, 3, 5, 8)
"""How many users arrive together through one link (drawn from these, uniformly)."""
BURST_SPREAD: Final = 0.05
"""Seconds over which a burst's users arrive."""
STORE_LATENCY: Final = 0.001
"""Mean seconds each store operation takes (exponential): transactions of different tasks
overlap as they do on a real database, instead of each completing in one instant."""

LEASE_TTL: Final = 10.0
CHECK_EVERY: Final = 60.0  # seconds of simulated time between invariant checks


class InvariantViolated(I3laniError):
    """A simulated run broke one of i3lani's guarantees: the message says which, and how."""


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """What to simulate. Rates are per simulated hour (nodes, operators) or per operation."""

    users: int = 50
    hours: float = 1.0
    nodes: int = 2
    store_fault_rate: float = 0.002
    kills_per_hour: float = 3.0
    cuts_per_hour: float = 3.0
    commands_per_hour: float = 3.0
    tonapi_faults_per_hour: float = 4.0
    settle: float = 1800.0
    """Seconds of quiet after the faults stop within which all due work must be done."""

    def __post_init__(self) -> None:
        if self.users < REFERRERS + 1:
            raise ValueError(f"users must be at least {REFERRERS + 1}, got {self.users}")
        if self.nodes < 1:
            raise ValueError(f"nodes must be at least 1, got {self.nodes}")
        if self.hours <= 0 or self.settle <= 0:
            raise ValueError("hours and settle must be positive")
        if not 0 <= self.store_fault_rate < 1:
            raise ValueError(f"store_fault_rate must be in [0, 1), got {self.store_fault_rate}")


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """What one run did, for the seed's line and for comparing two runs of one seed."""

    users: int
    rewards: int
    credited: int
    payments: int
    confirmed: int
    events: int
    store_faults: int
    kills: int
    cuts: int
    commands: int
    tonapi_faults: int
    redeliveries: int
    log_digest: str
    """sha256 over every event's stream, version, type and payload, in reading order."""


_node: ContextVar[str | None] = ContextVar("i3lani_sim_node", default=None)


@dataclass(eq=False)
class _Faults:
    """The store's fault hook: which callers are cut off, and random failures while faulty."""

    rate: float
    faulty: bool = True
    cut: set[str] = field(default_factory=set)
    injected: int = 0

    def __call__(self, operation: str) -> None:
        who = _node.get()
        if who is None:
            return  # the simulation's own bookkeeping
        if who in self.cut:
            raise StoreUnavailable(f"{who} is cut off from the database (simulated)")
        if self.faulty and current_rng().random() < self.rate:
            self.injected += 1
            raise StoreUnavailable(f"{operation} failed for {who} (simulated fault)")


@dataclass(eq=False)
class _Node:
    name: str
    incarnation: int = 0
    scope: anyio.CancelScope | None = None
    done: anyio.Event = field(default_factory=anyio.Event)


class _World:
    def __init__(self, scenario: Scenario, tonapi: TonApiStandIn, client: TonApiClient) -> None:
        self.scenario = scenario
        self.faults = _Faults(scenario.store_fault_rate)
        self.log = MemoryLog(faults=self.faults, yield_point=_latency)
        self.tonapi = tonapi
        self.client = client
        self.settings = Settings(wallet=WALLET, tonapi_url="http://tonapi.invalid")
        self.gateway = Gateway(self.log, self.settings)
        self.nodes = [_Node(f"node-{i}") for i in range(scenario.nodes)]
        self.rewards: dict[uuid.UUID, int] = {}  # earned: reward id -> referrer
        self.payments: dict[int, PaymentCreated] = {}
        self.due: set[int] = set()  # paid in full inside their window: must be confirmed
        self.foreign: set[str] = set()  # tx hashes that pay no payment (a wrong memo)
        self.kills = self.cuts = self.commands = self.redeliveries = self.tonapi_faults = 0

    def specs(self) -> list[ChildSpec]:
        """A node's children: the PaymentMonitor on the in-process TonAPI, the rest as built
        by ``i3lani run``."""
        monitor = ChildSpec(
            "PaymentMonitor",
            lambda: PaymentMonitor(self.settings, tonapi=self.client),
            RestartType.PERMANENT,
        )
        others = [name for name in ACTORS if name != "PaymentMonitor"]
        return [monitor, *child_specs(others, self.settings)]

    # -- nodes ------------------------------------------------------------------------------
    def start_node(self, tg: TaskGroup, node: _Node) -> None:
        node.incarnation += 1
        node.scope = anyio.CancelScope()
        node.done = anyio.Event()
        tg.start_soon(self._run_node, node, name=f"{node.name}#{node.incarnation}")

    async def _run_node(self, node: _Node) -> None:
        _node.set(node.name)
        supervisor = Supervisor(self.log, self.specs(), node=node.name, lease_ttl=LEASE_TTL)
        assert node.scope is not None
        try:
            with node.scope:
                await supervisor.run()
        finally:
            node.done.set()

    async def kill(self, tg: TaskGroup, node: _Node) -> None:
        """SIGKILL and restart: nothing the dying process does reaches the database."""
        self.kills += 1
        self.faults.cut.add(node.name)
        assert node.scope is not None
        node.scope.cancel()
        await node.done.wait()
        self.faults.cut.discard(node.name)
        self.start_node(tg, node)

    async def cut_off(self, node: _Node, seconds: float) -> None:
        self.cuts += 1
        self.faults.cut.add(node.name)
        await anyio.sleep(seconds)
        self.faults.cut.discard(node.name)

    # -- users and operators -----------------------------------------------------------------
    async def user_arrives(self, user: int, referrer: int | None) -> None:
        """``/start`` (with the referrer's link), redelivered until the gateway answers; then
        perhaps ``/subscribe`` and a payment."""
        link = None if referrer is None else f"ref_{referrer}"
        await self._redelivered(lambda: self.gateway.start(TelegramUser(user), link))
        if current_rng().random() < SUBSCRIBING:
            await self.subscribe_and_pay(user)

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
        created = await self._redelivered(
            lambda: self.gateway.create_payment(user, plan, request=f"subscribe-{user}")
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
        if behaviour == "wrong memo":
            self.foreign.add(tx["hash"])
        elif behaviour != "late" and value >= price:
            self.due.add(created.payment_id)
        if behaviour == "twice":
            await anyio.sleep(rng.uniform(1, 120))
            self.tonapi.transfer(WALLET, source=PAYER, value=value, comment=memo)

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

    async def operator(self, action: str, actor: str) -> None:
        token = _node.set(None)
        try:
            command = operator_command(action, actor, requested_by="simulated-operator")
            await issue_command(self.log, command)
            self.commands += 1
        finally:
            _node.reset(token)

    # -- invariants -------------------------------------------------------------------------
    def _check_confirmation(
        self, event: PaymentConfirmed, confirmed: Counter[int], paid_by: dict[str, int]
    ) -> None:
        confirmed[event.payment_id] += 1
        if confirmed[event.payment_id] > 1:
            raise InvariantViolated(f"payment {event.payment_id} confirmed twice")
        if event.tx_hash in paid_by:
            raise InvariantViolated(
                f"transaction {event.tx_hash} confirms payments {paid_by[event.tx_hash]} "
                f"and {event.payment_id}"
            )
        paid_by[event.tx_hash] = event.payment_id
        if event.tx_hash in self.foreign:
            raise InvariantViolated(
                f"payment {event.payment_id} confirmed by {event.tx_hash}, a transfer with "
                "another memo"
            )
        created = self.payments.get(event.payment_id)
        if created is not None and event.amount_nanotons < created.amount_nanotons:
            raise InvariantViolated(
                f"payment {event.payment_id} confirmed with {event.amount_nanotons} of "
                f"{created.amount_nanotons} nanotons"
            )

    async def check(self, *, final: bool) -> tuple[int, int]:
        token = _node.set(None)
        try:
            return await self._check(final=final)
        finally:
            _node.reset(token)

    async def _check(self, *, final: bool) -> tuple[int, int]:
        """Raise InvariantViolated on a broken guarantee; else the credits and confirmations
        the log holds."""
        credited: Counter[uuid.UUID] = Counter()
        earned: set[uuid.UUID] = set()
        balance: dict[int, int] = {}
        newest: dict[str, int] = {}
        confirmed: Counter[int] = Counter()
        activated: Counter[int] = Counter()
        paid_by: dict[str, int] = {}
        async for batch in self.log.read_batches(skip_unknown=True):
            for recorded in batch:
                event, meta = recorded.event, recorded.metadata
                if meta.lease is not None and meta.generation is not None:
                    if meta.generation < newest.get(meta.lease, 0):
                        raise InvariantViolated(
                            f"{recorded.stream} v{recorded.version} ({type(event).__name__}) "
                            f"was written under generation {meta.generation} of {meta.lease} "
                            f"after a write under generation {newest[meta.lease]}: two "
                            "incarnations interleaved"
                        )
                    newest[meta.lease] = meta.generation
                if isinstance(event, PaymentConfirmed):
                    self._check_confirmation(event, confirmed, paid_by)
                elif isinstance(event, SubscriptionActivated):
                    activated[event.payment_id] += 1
                    if not confirmed[event.payment_id]:
                        raise InvariantViolated(
                            f"payment {event.payment_id}'s subscription was activated without "
                            "a confirmed payment"
                        )
                    if activated[event.payment_id] > 1:
                        raise InvariantViolated(
                            f"payment {event.payment_id}'s subscription activated twice"
                        )
                elif isinstance(event, RewardEarned):
                    earned.add(event.reward_id)
                elif isinstance(event, RewardCredited):
                    credited[event.reward_id] += 1
                    if credited[event.reward_id] > 1:
                        raise InvariantViolated(f"reward {event.reward_id} credited twice")
                    if self.rewards.get(event.reward_id) != event.user_id:
                        raise InvariantViolated(
                            f"reward {event.reward_id} credited to user {event.user_id}, "
                            f"earned by {self.rewards.get(event.reward_id)}"
                        )
                    expected = balance.get(event.user_id, 0) + event.amount_nanotons
                    if event.balance_after_nanotons != expected:
                        raise InvariantViolated(
                            f"user {event.user_id}'s balance after reward {event.reward_id} "
                            f"is {event.balance_after_nanotons}, the credits add up to {expected}"
                        )
                    balance[event.user_id] = expected
        if final:
            unconfirmed = sorted(p for p in self.due if not confirmed[p])
            if unconfirmed:
                raise InvariantViolated(
                    f"payments {unconfirmed[:10]} were paid in full inside their window and "
                    f"are still not confirmed {self.scenario.settle:g}s after the faults "
                    "stopped (liveness)"
                )
            missing = earned - set(credited)
            if missing:
                raise InvariantViolated(
                    f"{len(missing)} of {len(earned)} rewards still not credited "
                    f"{self.scenario.settle:g}s after the faults stopped (liveness)"
                )
            unknown = set(self.rewards) - earned
            if unknown:
                raise InvariantViolated(f"{len(unknown)} users' referrals earned no reward")
        return sum(credited.values()), sum(confirmed.values())


async def simulate(scenario: Scenario, trace: Callable[[str], None] | None = None) -> Report:
    """Run ``scenario`` on the current simulated loop (inside :func:`ops.simulate.run`);
    raises :class:`InvariantViolated` when a guarantee breaks."""
    say = trace or (lambda line: None)
    tonapi = TonApiStandIn(hang=60.0)
    async with (
        InProcessServer(tonapi.application(), host="tonapi.invalid") as server,
        TonApiClient(server.url, transport=InProcessTransport(server)) as client,
    ):
        world = _World(scenario, tonapi, client)
        credited, confirmed = await _play_checked(scenario, world, say)
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
        kills=world.kills,
        cuts=world.cuts,
        commands=world.commands,
        tonapi_faults=world.tonapi_faults,
        redeliveries=world.redeliveries,
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
    async with anyio.create_task_group() as tg:
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
                ("command", scenario.commands_per_hour),
                ("tonapi", scenario.tonapi_faults_per_hour),
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
                    say(f"{anyio.current_time():8.1f}s kill {node.name}")
                    await world.kill(tg, node)
                elif kind == "cut":
                    seconds = rng.uniform(1.0, 3 * LEASE_TTL)
                    say(f"{anyio.current_time():8.1f}s cut {node.name} for {seconds:.1f}s")
                    tg.start_soon(world.cut_off, node, seconds)
                elif kind == "tonapi":
                    say(f"{anyio.current_time():8.1f}s {world.tonapi_fault()}")
                else:
                    action = rng.choice(("restart", "stop", "start"))
                    actor = rng.choice(ACTORS)
                    say(f"{anyio.current_time():8.1f}s operator: {action} {actor}")
                    await world.operator(action, actor)

        async def invariants() -> None:
            while True:
                await anyio.sleep(CHECK_EVERY)
                await world.check(final=False)

        tg.start_soon(users, name="users")
        tg.start_soon(chaos, name="chaos")
        tg.start_soon(invariants, name="invariants")
        await anyio.sleep(faulty)
        world.faults.faulty = False
        world.faults.cut.clear()
        world.tonapi.heal()
        say(f"{anyio.current_time():8.1f}s faults stop; operators start every actor")
        for actor in ACTORS:
            await world.operator("start", actor)
        await anyio.sleep(scenario.settle)
        tally = await world.check(final=True)
        tg.cancel_scope.cancel()
    return tally


async def _latency(operation: str) -> None:
    """The store's scheduling hook: each operation takes a random moment of simulated time."""
    await anyio.sleep(current_rng().expovariate(1 / STORE_LATENCY))


def _reward_id(user: int) -> uuid.UUID:
    return reward_id_for("referral", f"user:{user}")


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
