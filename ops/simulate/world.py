"""One simulated run of i3lani: nodes, users, operators and faults, all drawn from one seed.

Everything here runs on :mod:`ops.simulate.kernel` (virtual time, seeded scheduling) against
one :class:`~store.memory.MemoryLog`, which stands for the PostgreSQL database every process
shares. The production code runs unchanged:

* **nodes**: each a :class:`supervisor.Supervisor` (``i3lani run``) supervising the
  RewardProcessor, with its own node name, leases and lease clocks;
* **users**: the bot gateway (:class:`bot_gateway.service.Gateway`) registering users that
  arrive at random moments, most through a referrer's link (a ``RewardEarned`` each); a
  command the database refused is delivered again later, as Telegram redelivers a webhook
  update that was answered with an error;
* **operators**: random ``restart``, ``stop`` and ``start`` commands (``ops-commands``).

**Faults**, each at its own rate, during the first ``hours`` of the run (the faulty phase):
a store operation of a node or of the gateway fails (``StoreUnavailable``: the database is
unreachable for that statement; a failed ``"commit"`` rolls its transaction back); a node
is killed (cut off from the database first, so that nothing it does on the way down reaches
it, as with SIGKILL; then restarted with a new process identity); a node is cut off for a
while (a partition or a pause past its lease) and comes back. Then the faults stop, operators
start every actor, and the run goes on quietly for ``settle`` seconds: the liveness bound.

**Invariants**, checked every simulated minute and at the end (:class:`InvariantViolated`):
each reward credited at most once, to the user who earned it, with a running balance that
adds up; every event written under a lease carries a generation no older than one already
written under it (two incarnations never interleave their writes); and at the end (liveness)
every reward earned is credited exactly once.

Not covered here yet (see the README): payments through TonAPI, ChannelAnalytics through the
Bot API, the HealthChecker and Cleanup (they read PostgreSQL's own views), and faults a
store hook cannot express (an acknowledgement lost after a commit took effect).
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Final

import anyio
import msgspec
from anyio.abc import TaskGroup

from actors.catalog import child_specs
from actors.config import Settings
from actors.control import issue_command, operator_command
from bot_gateway.service import Gateway, TelegramUser, reward_id_for
from events import RewardCredited, RewardEarned
from events.errors import I3laniError, StoreUnavailable
from ops.simulate.kernel import current_rng
from store.memory import MemoryLog
from supervisor import Supervisor

__all__ = ["Scenario", "Report", "InvariantViolated", "simulate", "ACTORS"]

ACTORS: Final = ("RewardProcessor",)
"""The actors every simulated node supervises."""

REFERRERS: Final = 5
"""Users who arrive first, without a link, and whose links the others follow."""

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
    events: int
    store_faults: int
    kills: int
    cuts: int
    commands: int
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
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.faults = _Faults(scenario.store_fault_rate)
        self.log = MemoryLog(faults=self.faults)
        self.settings = Settings()
        self.gateway = Gateway(self.log, self.settings)
        self.nodes = [_Node(f"node-{i}") for i in range(scenario.nodes)]
        self.rewards: dict[uuid.UUID, int] = {}  # earned: reward id -> referrer
        self.kills = self.cuts = self.commands = self.redeliveries = 0

    # -- nodes ------------------------------------------------------------------------------
    def start_node(self, tg: TaskGroup, node: _Node) -> None:
        node.incarnation += 1
        node.scope = anyio.CancelScope()
        node.done = anyio.Event()
        tg.start_soon(self._run_node, node, name=f"{node.name}#{node.incarnation}")

    async def _run_node(self, node: _Node) -> None:
        _node.set(node.name)
        supervisor = Supervisor(
            self.log, child_specs(ACTORS, self.settings), node=node.name, lease_ttl=LEASE_TTL
        )
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
        """``/start`` (with the referrer's link): redelivered until the gateway answers."""
        token = _node.set("gateway")
        try:
            while True:
                try:
                    await self.gateway.start(
                        TelegramUser(user), None if referrer is None else f"ref_{referrer}"
                    )
                    return
                except StoreUnavailable:
                    self.redeliveries += 1
                    await anyio.sleep(current_rng().uniform(1.0, 60.0))
        finally:
            _node.reset(token)

    async def operator(self, action: str, actor: str) -> None:
        token = _node.set(None)
        try:
            command = operator_command(action, actor, requested_by="simulated-operator")
            await issue_command(self.log, command)
            self.commands += 1
        finally:
            _node.reset(token)

    # -- invariants -------------------------------------------------------------------------
    async def check(self, *, final: bool) -> Counter[uuid.UUID]:
        token = _node.set(None)
        try:
            return await self._check(final=final)
        finally:
            _node.reset(token)

    async def _check(self, *, final: bool) -> Counter[uuid.UUID]:
        credited: Counter[uuid.UUID] = Counter()
        earned: set[uuid.UUID] = set()
        balance: dict[int, int] = {}
        newest: dict[str, int] = {}
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
                if isinstance(event, RewardEarned):
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
            missing = earned - set(credited)
            if missing:
                raise InvariantViolated(
                    f"{len(missing)} of {len(earned)} rewards still not credited "
                    f"{self.scenario.settle:g}s after the faults stopped (liveness)"
                )
            unknown = set(self.rewards) - earned
            if unknown:
                raise InvariantViolated(f"{len(unknown)} users' referrals earned no reward")
        return credited


async def simulate(scenario: Scenario, trace: Callable[[str], None] | None = None) -> Report:
    """Run ``scenario`` on the current simulated loop (inside :func:`ops.simulate.run`);
    raises :class:`InvariantViolated` when a guarantee breaks."""
    say = trace or (lambda line: None)
    world = _World(scenario)
    try:
        await _play(scenario, world, say)
    except BaseExceptionGroup as group:
        # A violation found by the checker task: raised as itself, not inside the group.
        found: BaseException | None = group.subgroup(InvariantViolated)
        while isinstance(found, BaseExceptionGroup):
            found = found.exceptions[0]
        if found is None:
            raise
        raise found from None
    token = _node.set(None)
    try:
        events, digest = await _log_digest(world.log)
    finally:
        _node.reset(token)
    return Report(
        users=scenario.users,
        rewards=len(world.rewards),
        credited=len(world.rewards),
        events=events,
        store_faults=world.faults.injected,
        kills=world.kills,
        cuts=world.cuts,
        commands=world.commands,
        redeliveries=world.redeliveries,
        log_digest=digest,
    )


async def _play(scenario: Scenario, world: _World, say: Callable[[str], None]) -> None:
    rng = current_rng()
    faulty = scenario.hours * 3600.0
    async with anyio.create_task_group() as tg:
        for node in world.nodes:
            world.start_node(tg, node)

        async def users() -> None:
            arrivals = sorted(rng.uniform(0, faulty) for _ in range(scenario.users))
            began = anyio.current_time()
            for number, at in enumerate(arrivals, start=1):
                await anyio.sleep(max(began + at - anyio.current_time(), 0.0))
                referrer = None if number <= REFERRERS else rng.randint(1, REFERRERS)
                if referrer is not None:
                    world.rewards[_reward_id(number)] = referrer
                tg.start_soon(world.user_arrives, number, referrer, name=f"user-{number}")

        async def chaos() -> None:
            rates = (
                ("kill", scenario.kills_per_hour),
                ("cut", scenario.cuts_per_hour),
                ("command", scenario.commands_per_hour),
            )
            total = sum(rate for _, rate in rates) / 3600.0
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
        say(f"{anyio.current_time():8.1f}s faults stop; operators start every actor")
        for actor in ACTORS:
            await world.operator("start", actor)
        await anyio.sleep(scenario.settle)
        await world.check(final=True)
        tg.cancel_scope.cancel()


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
