"""The cost figures (issue 17): what the log and the connections cost as the work grows.

1. **An idle worker.** ``i3lani run`` with the six product actors on a fresh database against
   the TonAPI and Bot API stand-ins (served by this process), with short tick intervals
   (2 to 7 s instead of 30 s to a day, so that a few minutes hold hundreds of ticks), and an
   admin (``ADMIN_IDS``) to whom each seal's digest goes as a task, as deployed. Once every
   actor has started and :data:`SETTLE` seconds have passed (the pool closes its start-up
   connections after a minute unused), for the window: the log's events, by who caused them;
   every actor's ticks, counted from its tick schedule (``i3lani.ticks``, polled twice a
   second: no interval is shorter than 2 s, so no tick is missed); and the worker's database
   connections, counted in ``pg_stat_activity`` by ``application_name`` (``i3lani:<node>:...``)
   every half second. **Extrapolation to a day**: each actor's events per tick, times the
   ticks it makes in a day at its default interval (30 s, 5 min, 6 h, a day, 15 min, 1 h); events
   no actor's tick caused (none is expected) count at their rate over the window. Reference:
   one ``ActorTicked`` per tick at the default intervals, what every tick appended before.

2. **A realistic mix, measured per business action.** The same worker (short intervals) and,
   in this process, the bot gateway's command handlers (``bot_gateway.service.Gateway``, the
   code behind ``/start``, ``/subscribe``, ``/addchannel``) on a store of their own, as the web
   service runs them; users pay on the TonAPI stand-in's chain. Four phases, each waited out
   until the worker has done everything it calls for (rewards credited, payments confirmed,
   channels measured), the log's size (``pg_total_relation_size`` of ``i3lani.events``:
   table, TOAST and every index) taken before and after:

   * **joins**: new users ``/start``, 60 % of them through an earlier user's referral link
     (the referrer earns a reward: a task credits it);
   * **payments**: 40 % of them ``/subscribe`` to the week plan and pay it exactly;
   * **channel additions**: 20 % of them add a channel (the adder earns a reward; the
     channel is measured and priced at the next analytics tick);
   * **channel re-measurements**: every channel measured three times more (what each channel
     costs four times a day at the default interval), divided by the measurements made.

   Bytes per action = the phase's growth / its actions. Bytes per stored event = the log's
   growth over the four phases / the events they appended (the whole log's size over its
   events at the end is in the details: a small log's indexes start with a few fixed pages
   each, which a growing log no longer pays for).
   The worker's connections are sampled every 0.1 s during the phases (the goal: at most 12
   under load; its budget is 8).

The databases (``i3lani_bench_cost_idle``, ``i3lani_bench_cost_mix``) are created on the same
server as the others and dropped at the end.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import anyio.lowlevel
import asyncpg
from anyio.abc import Process

from actors.catalog import PRODUCT_ACTORS
from actors.config import Settings
from bench.measure import BenchContext
from bench.report import Goal, Row
from bench.scale import (
    _drain,
    _wait_started,
    fresh_database,
    i3lani_command,
    stop_process,
    worker_environment,
)
from bot_gateway.service import Gateway, TelegramUser
from ops.standins import BotApiStandIn, TonApiStandIn
from store import EventStore
from store.budget import DEFAULT_MAX_CONNECTIONS, GATEWAY_MAX_CONNECTIONS
from store.database import with_database

__all__ = ["NOTES", "run", "DEFAULT_INTERVALS", "PROFILE", "days_until"]

IDLE_DATABASE: Final = "i3lani_bench_cost_idle"
MIX_DATABASE: Final = "i3lani_bench_cost_mix"
WALLET: Final = "0:408da3b28b6c065a593e10391269baaa9c5f8caebc0c69d9f0aabbab2a99256b"
SETTLE: Final = 70.0
"""Seconds after every actor started before the idle window: past the pool's idle lifetime
(60 s), so that the start-up's connections (every actor recovering at once) are gone."""
WINDOW: Final = 180.0  # seconds of idle sampling (--quick: 30)
USERS: Final = 400  # joins of the mix (--quick: 120)
CONCURRENCY: Final = 8  # users acting at once
REFERRED: Final = 0.6
PAYING: Final = 0.4
CHANNELS: Final = 0.2
REMEASURED: Final = 3  # rounds of channel re-measurement
IDLE_INTERVALS: Final = {
    "PaymentMonitor": ("I3LANI_PAYMENT_INTERVAL", 2.0),
    "RewardProcessor": ("I3LANI_REWARD_INTERVAL", 3.0),
    "ChannelAnalytics": ("I3LANI_ANALYTICS_INTERVAL", 5.0),
    "Cleanup": ("I3LANI_CLEANUP_INTERVAL", 7.0),
    "HealthChecker": ("I3LANI_HEALTH_INTERVAL", 4.0),
    "Sealer": ("I3LANI_SEAL_INTERVAL", 6.0),
}
DEFAULT_INTERVALS: Final = {
    "PaymentMonitor": 30.0,
    "RewardProcessor": 300.0,
    "ChannelAnalytics": 21600.0,
    "Cleanup": 86400.0,
    "HealthChecker": 900.0,
    "Sealer": 3600.0,
}
MIX_ENV: Final = {
    "I3LANI_PAYMENT_INTERVAL": "1",
    "I3LANI_REWARD_INTERVAL": "1",
    "I3LANI_ANALYTICS_INTERVAL": "8",
    "I3LANI_CLEANUP_INTERVAL": "86400",
    "I3LANI_HEALTH_INTERVAL": "60",
}
GB: Final = 1024**3
DAY: Final = 86400.0

PROFILE: Final = {"joins": 1.0, "payments": PAYING, "channels": CHANNELS}
"""What one daily active user writes in a day, for the capacity table: a pessimistic profile,
the mix's own proportions, as if every daily user were new: joins (60 % referred), 0.4 paid
subscriptions, 0.2 channel additions; and every channel ever added is measured four times a
day (the default analytics interval). With no users, the log grows by one deploy a day (the
lifecycle events of a worker's stop and start) and the idle worker's extrapolated events."""

NOTES = [
    "cost, idle worker: `i3lani run` (the six product actors, tick intervals 2 to 7 s, "
    "ADMIN_IDS=1 so that each seal sends its digest by a task) on a fresh database against the "
    "stand-ins; after every actor started and a 70 s settling "
    "pause (past the pool's 60 s idle lifetime), over the window: events appended (by "
    "metadata caused_by), ticks run (each actor's tick schedule row, polled every 0.5 s), and "
    "the worker's connections (pg_stat_activity by application_name, every 0.5 s). Events per "
    "day = each actor's events per tick x its ticks per day at the default interval (30 s, "
    "5 min, 6 h, 1 day, 15 min, 1 h), plus any other event at its rate over the window. "
    "Reference: one ActorTicked per tick at the default intervals (what every tick appended "
    "before), computed from those intervals.",
    "cost, a realistic mix: the same worker (intervals 1 s, analytics 8 s) and, in the bench "
    "process, the gateway's command handlers (bot_gateway.service.Gateway) on a store of their "
    "own: users /start (60% through a referral link), 40% /subscribe to the week plan and pay "
    "it on the TonAPI stand-in's chain, 20% /addchannel; then every channel is measured three "
    "times more. Each phase waits until the worker has done all it calls for; bytes per action are "
    "its growth of pg_total_relation_size('i3lani.events') (table, TOAST, every index) divided "
    "by its actions. Bytes per stored event: the log's growth over the phases divided by the "
    "events they appended (the size over the events at the end is in the JSON details). "
    "Reference: the table alone (pg_relation_size), i.e. the rows without their indexes. The "
    "worker's connections are sampled every 0.1 s during the phases.",
]


# -- sampling -------------------------------------------------------------------------------------
async def _connections(conn: asyncpg.Connection, node: str) -> list[str]:
    """The node's connections now, each as ``purpose state: query`` (its last statement): what
    a peak is made of, in the JSON details."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = await conn.fetch(
        "SELECT split_part(application_name, ':', 3) AS purpose, state, left(query, 60) AS query"
        " FROM pg_stat_activity WHERE application_name LIKE $1 ORDER BY 1, 2, 3",
        f"i3lani:{node}:%",
    )
    return [f"{r['purpose']} {r['state']}: {r['query']}" for r in rows]


@dataclass(slots=True)
class _Peak:
    """The most connections a node held at one sample, and the samples taken."""

    node: str
    most: int = 0
    samples: int = 0
    at_most: list[str] = field(default_factory=list)

    def see(self, connections: list[str]) -> None:
        """One sample: ``connections`` as :func:`_connections` lists them."""
        if len(connections) > self.most:
            self.most, self.at_most = len(connections), connections
        self.samples += 1

    async def watch(self, dsn: str, every: float) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            while True:
                self.see(await _connections(conn, self.node))
                await anyio.sleep(every)
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()


async def _log_size(conn: asyncpg.Connection) -> tuple[int, int, int]:
    """(events, bytes with indexes, bytes of the table alone) of the log now."""
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM i3lani.events) AS events,"
        " pg_total_relation_size('i3lani.events') AS total,"
        " pg_relation_size('i3lani.events') AS heap"
    )
    assert row is not None
    return int(row["events"]), int(row["total"]), int(row["heap"])


async def _wait_until(
    check: Callable[[], Awaitable[bool]], what: str, seconds: float, output: bytearray
) -> None:
    deadline = time.perf_counter() + seconds
    while not await check():
        if time.perf_counter() > deadline:
            tail = output.decode(errors="replace")[-3000:]
            raise RuntimeError(f"cost: gave up waiting for {what} after {seconds:g}s\n{tail}")
        await anyio.sleep(0.2)


@dataclass(slots=True)
class _Worker:
    """An ``i3lani run`` process against the stand-ins, started by :func:`_running`."""

    process: Process
    tonapi: TonApiStandIn
    bot_api: BotApiStandIn
    output: bytearray


@asynccontextmanager
async def _running(dsn: str, node: str, env: Mapping[str, str]) -> AsyncIterator[_Worker]:
    """The stand-ins, and a worker on ``dsn`` named ``node`` with ``env``, started and every
    product actor running; stopped (SIGTERM) on the way out."""
    output = bytearray()
    async with (
        TonApiStandIn() as tonapi,
        BotApiStandIn() as bot_api,
        EventStore.open(dsn, max_connections=3) as watcher,
        anyio.create_task_group() as tg,
    ):
        environment = worker_environment(
            dsn,
            WALLET_ADDRESS=WALLET,
            BOT_TOKEN=bot_api.token,
            TONAPI_URL=tonapi.url,
            TELEGRAM_API_URL=bot_api.url,
            I3LANI_NODE=node,
            **env,
        )
        process = await anyio.open_process([*i3lani_command(), "run"], env=environment)
        for stream in (process.stdout, process.stderr):
            assert stream is not None
            tg.start_soon(_drain, stream, output)
        try:
            await _wait_started(watcher, process, output)
            yield _Worker(process, tonapi, bot_api, output)
        finally:
            with anyio.CancelScope(shield=True):
                await stop_process(process)
            tg.cancel_scope.cancel()


# -- the idle worker ------------------------------------------------------------------------------
@dataclass(slots=True)
class _Idle:
    window: float
    ticks: dict[str, int]
    events: dict[str, int]  # by caused_by ("" when none)
    connections: int
    samples: int
    per_day: float
    reference_per_day: float
    deploy_events: int  # lifecycle events of one start and stop of the worker
    details: dict[str, Any] = field(default_factory=dict)


def events_per_day(
    ticks: Mapping[str, int], events: Mapping[str, int], window: float
) -> tuple[float, dict[str, float]]:
    """Extrapolate an idle window to a day at the default intervals (see the module
    docstring): each actor's events per tick times its ticks a day, plus the rest at their
    rate. Pure."""
    per_actor: dict[str, float] = {}
    for actor, interval in DEFAULT_INTERVALS.items():
        caused = events.get(f"actor:{actor}", 0)
        ran = ticks.get(actor, 0)
        per_tick = caused / ran if ran else float(caused)
        per_actor[actor] = per_tick * DAY / interval
    rest = sum(n for who, n in events.items() if who.removeprefix("actor:") not in per_actor)
    per_actor["(no actor's tick)"] = rest / window * DAY
    return sum(per_actor.values()), per_actor


async def _idle(ctx: BenchContext) -> _Idle:
    window = 30.0 if ctx.quick else WINDOW
    dsn = await fresh_database(ctx, IDLE_DATABASE)
    node = "bench-cost-idle"
    intervals = {name: f"{seconds:g}" for name, seconds in IDLE_INTERVALS.values()}
    intervals["ADMIN_IDS"] = "1"  # each seal's digest goes out by a task, as deployed
    async with _running(dsn, node, intervals) as worker:
        ctx.log(f"  cost: idle worker started; settling {SETTLE:g} s")
        await anyio.sleep(SETTLE)
        stats = await asyncpg.connect(dsn)
        try:
            first = await stats.fetchval(
                "SELECT coalesce(max(global_position), 0) FROM i3lani.events"
            )
            seen: dict[str, Any] = {}
            ticks = dict.fromkeys(PRODUCT_ACTORS, 0)
            peak = _Peak(node)
            began = time.perf_counter()
            while time.perf_counter() < began + window:
                for record in await stats.fetch("SELECT name, due_at FROM i3lani.ticks"):
                    name, due = record["name"], record["due_at"]
                    if name in seen and seen[name] != due and name in ticks:
                        ticks[name] += 1
                    seen[name] = due
                peak.see(await _connections(stats, node))
                if worker.process.returncode is not None:
                    raise RuntimeError("the idle worker exited during the window")
                await anyio.sleep(0.5)
            elapsed = time.perf_counter() - began
            rows = await stats.fetch(
                "SELECT coalesce(metadata->>'caused_by', '') AS who, count(*) AS n "
                "FROM i3lani.events WHERE global_position > $1 GROUP BY 1",
                first,
            )
            types = await stats.fetch(
                "SELECT type, count(*) AS n FROM i3lani.events "
                "WHERE global_position > $1 GROUP BY 1",
                first,
            )
        finally:
            await stats.close()
    after = await asyncpg.connect(dsn)
    try:
        total_events = int(await after.fetchval("SELECT count(*) FROM i3lani.events"))
    finally:
        await after.close()
    events = {row["who"]: int(row["n"]) for row in rows}
    deploy_events = total_events - sum(events.values())
    per_day, per_actor = events_per_day(ticks, events, elapsed)
    reference = sum(DAY / interval for interval in DEFAULT_INTERVALS.values())
    ctx.log(
        f"  cost: idle: {sum(events.values())} events, {sum(ticks.values())} ticks in "
        f"{elapsed:.0f} s, at most {peak.most} connections"
    )
    return _Idle(
        window=elapsed,
        ticks=ticks,
        events=events,
        connections=peak.most,
        samples=peak.samples,
        per_day=per_day,
        reference_per_day=reference,
        deploy_events=deploy_events,
        details={
            "ticks_in_window": ticks,
            "events_in_window_by_caused_by": events,
            "events_in_window_by_type": {row["type"]: int(row["n"]) for row in types},
            "events_per_day_by_actor": {k: round(v, 2) for k, v in per_actor.items()},
            "window_s": round(elapsed, 1),
            "short_intervals_s": {a: s for a, (_, s) in IDLE_INTERVALS.items()},
            "connection_samples": peak.samples,
            "connections_at_the_most": peak.at_most,
            "lifecycle_events_of_a_start_and_stop": deploy_events,
        },
    )


# -- the mix --------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Phase:
    name: str
    actions: int
    events: int
    bytes: int

    @property
    def per_action(self) -> float:
        return self.bytes / self.actions if self.actions else math.nan


@dataclass(slots=True)
class _Mix:
    phases: list[_Phase]
    events: int
    total: int
    heap: int
    connections: int
    web_connections: int
    samples: int
    details: dict[str, Any] = field(default_factory=dict)

    def phase(self, name: str) -> _Phase:
        return next(p for p in self.phases if p.name == name)


async def _count(conn: asyncpg.Connection, event_type: str) -> int:
    value: int = await conn.fetchval(
        "SELECT count(*) FROM i3lani.events WHERE type = $1", event_type
    )
    return value


async def _mix(ctx: BenchContext) -> _Mix:
    users = 120 if ctx.quick else USERS
    dsn = await fresh_database(ctx, MIX_DATABASE)
    node = "bench-cost"
    rng = random.Random(17)
    settings = Settings(wallet=WALLET)
    async with (
        _running(dsn, node, MIX_ENV) as worker,
        EventStore.open(dsn, node="bench-web", max_connections=GATEWAY_MAX_CONNECTIONS) as web,
        anyio.create_task_group() as tg,
    ):
        gateway = Gateway(web, settings)
        tonapi, bot_api, output = worker.tonapi, worker.bot_api, worker.output
        stats = await asyncpg.connect(dsn)
        worker_peak, web_peak = _Peak(node), _Peak("bench-web")
        phases: list[_Phase] = []
        try:
            tg.start_soon(worker_peak.watch, dsn, 0.1)
            tg.start_soon(web_peak.watch, dsn, 0.1)

            async def phase(
                name: str,
                actions: int,
                act: Callable[[int], Awaitable[None]],
                done: Callable[[], Awaitable[bool]],
                performed: Callable[[], Awaitable[int]] | None = None,
            ) -> None:
                """``actions`` calls of ``act`` (in turns, CONCURRENCY at once), then wait for
                ``done``; ``performed`` (default: ``actions``) counts the actions the phase
                holds in the end, for phases the worker's ticks act out."""
                events_before, before, _ = await _log_size(stats)
                began = time.perf_counter()
                limiter = anyio.CapacityLimiter(CONCURRENCY)

                async def one(index: int) -> None:
                    async with limiter:
                        await act(index)

                async with anyio.create_task_group() as acting:
                    for index in range(actions):
                        acting.start_soon(one, index)
                await _wait_until(done, f"the worker to finish the {name}", 180, output)
                if performed is not None:
                    actions = await performed()
                events_after, after, _ = await _log_size(stats)
                phases.append(_Phase(name, actions, events_after - events_before, after - before))
                ctx.log(
                    f"  cost: {name}: {actions} in {time.perf_counter() - began:.1f} s, "
                    f"{(after - before) / max(actions, 1):,.0f} bytes each"
                )

            # 1. joins, 60 % referred by an earlier user
            first_user = 7_000_000
            referrers: list[int | None] = [
                None if i == 0 or rng.random() >= REFERRED else first_user + rng.randrange(i)
                for i in range(users)
            ]

            async def join(index: int) -> None:
                referrer = referrers[index]
                payload = None if referrer is None else f"ref_{referrer}"
                reply = await gateway.start(TelegramUser(first_user + index), payload)
                assert "registered" in reply, reply

            async def rewards_credited() -> bool:
                return await _count(stats, "RewardCredited") == await _count(stats, "RewardEarned")

            await phase("joins", users, join, rewards_credited)

            # 2. payments
            payers = sorted(rng.sample(range(users), round(users * PAYING)))
            plan = settings.plan("week")
            assert plan is not None

            async def pay(index: int) -> None:
                user = first_user + payers[index]
                created = await gateway.create_payment(user, plan)
                tonapi.transfer(
                    created.wallet,
                    source=f"0:{user:064x}",
                    value=created.amount_nanotons,
                    comment=created.memo,
                )

            async def confirmed() -> bool:
                return await _count(stats, "PaymentConfirmed") == len(payers)

            await phase("payments", len(payers), pay, confirmed)

            # 3. channel additions, measured and priced at the next analytics tick
            adders = sorted(rng.sample(range(users), round(users * CHANNELS)))
            for n, _ in enumerate(adders):
                bot_api.set_member_count(f"@bench_channel_{n:05d}", 1_000 + 37 * n)

            async def add(index: int) -> None:
                reply = await gateway.add_channel(
                    first_user + adders[index], f"@bench_channel_{index:05d}"
                )
                assert "is registered" in reply, reply

            async def measured() -> bool:
                return await _count(stats, "ChannelStatsUpdated") >= len(adders) and (
                    await rewards_credited()
                )

            await phase("channel additions", len(adders), add, measured)

            # 4. every channel measured again, REMEASURED times (a page of 8 kB is a tenth of
            # a round's growth: several rounds make the figure finer)
            for n, _ in enumerate(adders):
                bot_api.set_member_count(f"@bench_channel_{n:05d}", 1_003 + 37 * n)
            measured_before = await _count(stats, "ChannelStatsUpdated")

            async def nothing(index: int) -> None:
                await anyio.lowlevel.checkpoint()

            async def measured_again() -> bool:
                wanted = measured_before + REMEASURED * len(adders)
                return await _count(stats, "ChannelStatsUpdated") >= wanted

            async def measurements() -> int:
                return await _count(stats, "ChannelStatsUpdated") - measured_before

            await phase("channel re-measurements", 0, nothing, measured_again, measurements)
            events, total, heap = await _log_size(stats)
            types = await stats.fetch(
                "SELECT type, count(*) AS n, round(avg(pg_column_size(e.*))) AS row_bytes "
                "FROM i3lani.events e GROUP BY 1 ORDER BY 2 DESC"
            )
            indexes = await stats.fetch(
                "SELECT indexrelid::regclass::text AS name, pg_relation_size(indexrelid) AS size "
                "FROM pg_index WHERE indrelid = 'i3lani.events'::regclass ORDER BY 1"
            )
        finally:
            await stats.close()
            tg.cancel_scope.cancel()
    return _Mix(
        phases=phases,
        events=events,
        total=total,
        heap=heap,
        connections=worker_peak.most,
        web_connections=web_peak.most,
        samples=worker_peak.samples,
        details={
            "users": users,
            "worker_connections_at_the_most": worker_peak.at_most,
            "by_type": {
                r["type"]: {"events": r["n"], "row_bytes": int(r["row_bytes"])} for r in types
            },
            "index_bytes_per_event": {r["name"]: round(r["size"] / events, 1) for r in indexes},
            "phases": [
                {"phase": p.name, "actions": p.actions, "events": p.events, "bytes": p.bytes}
                for p in phases
            ],
        },
    )


# -- capacity -------------------------------------------------------------------------------------
def bytes_per_day(users: int, per_join: float, per_payment: float, per_channel: float) -> float:
    """What ``users`` daily active users add to the log a day, channel measurements aside."""
    return users * (
        PROFILE["joins"] * per_join
        + PROFILE["payments"] * per_payment
        + PROFILE["channels"] * per_channel
    )


def days_until(
    limit: float,
    *,
    users: int,
    idle_per_day: float,
    per_join: float,
    per_payment: float,
    per_channel: float,
    per_measurement: float,
) -> float:
    """Days until the log reaches ``limit`` bytes, from empty. Pure.

    Each day adds ``idle_per_day`` plus the users' actions (:data:`PROFILE`), and every
    channel added so far is measured four times (the default analytics interval): on day
    ``d`` that is ``4 * users * PROFILE["channels"] * d`` measurements, so the log grows
    quadratically: after ``d`` days, ``a*d + b*d*(d+1)/2``."""
    a = idle_per_day + bytes_per_day(users, per_join, per_payment, per_channel)
    b = 4 * users * PROFILE["channels"] * per_measurement
    if a <= 0 and b <= 0:
        return math.inf
    if b == 0:
        return limit / a
    # b/2 d^2 + (a + b/2) d - limit = 0
    half = b / 2
    return (-(a + half) + math.sqrt((a + half) ** 2 + 4 * half * limit)) / (2 * half)


# -- suite ----------------------------------------------------------------------------------------
async def run(ctx: BenchContext) -> list[Row]:
    try:
        ctx.log("cost: an idle `i3lani run` worker ...")
        idle = await _idle(ctx)
        ctx.log("cost: a realistic mix through the gateway's handlers and a worker ...")
        mix = await _mix(ctx)
    finally:
        if ctx.keep_databases:
            ctx.log(f"cost: kept {IDLE_DATABASE} and {MIX_DATABASE} (--keep-database)")
        else:
            with anyio.CancelScope(shield=True):
                server = with_database(ctx.dsn, "postgres")
                conn = await asyncpg.connect(server)
                try:
                    for name in (IDLE_DATABASE, MIX_DATABASE):
                        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                finally:
                    await conn.close()
    return _idle_rows(idle) + _mix_rows(mix, idle)


def _idle_rows(idle: _Idle) -> list[Row]:
    section = (
        f"cost: an idle `i3lani run` (six actors, short intervals), {idle.window:.0f} s window"
    )
    return [
        Row(
            section,
            "log events a day, extrapolated to the default intervals",
            idle.per_day,
            "events/day",
            "one ActorTicked per tick (before)",
            idle.reference_per_day,
            goal=Goal.at_most(50, "events/day"),
            details=idle.details,
        ),
        Row(
            section,
            "database connections of the worker (most at one sample)",
            idle.connections,
            "conns",
            "its budget (I3LANI_MAX_CONNECTIONS default)",
            DEFAULT_MAX_CONNECTIONS,
            goal=Goal.at_most(5, "conns"),
            details={
                "samples": idle.samples,
                "at_the_most": idle.details["connections_at_the_most"],
            },
        ),
    ]


def _mix_rows(mix: _Mix, idle: _Idle) -> list[Row]:
    section = (
        f"cost: a realistic mix ({mix.phase('joins').actions} joins, "
        f"{mix.phase('payments').actions} payments, {mix.phase('channel additions').actions} "
        "channels), through the gateway's handlers and a worker"
    )
    # The log's growth per event appended during the mix: what each further event costs,
    # without the fixed pages a small log's indexes start with (both are in the details).
    grown = sum(p.bytes for p in mix.phases)
    appended = sum(p.events for p in mix.phases)
    per_event = grown / appended
    rows = [
        Row(
            section,
            "bytes per stored event, every index included (growth per event)",
            per_event,
            "B",
            "the table alone (no index), at the end",
            mix.heap / mix.events,
            goal=Goal.at_most(500, "B"),
            details={
                **mix.details,
                "log_bytes_at_end": mix.total,
                "events_at_end": mix.events,
                "bytes_per_event_at_end": round(mix.total / mix.events, 1),
            },
        ),
    ]
    for phase in mix.phases:
        rows.append(
            Row(
                section,
                f"log bytes per {phase.name.removesuffix('s')} ({phase.events / phase.actions:.1f} "
                "events each)",
                phase.per_action,
                "B",
            )
        )
    rows.append(
        Row(
            section,
            "database connections of the worker under this load (most at one sample)",
            mix.connections,
            "conns",
            "its budget (I3LANI_MAX_CONNECTIONS default)",
            DEFAULT_MAX_CONNECTIONS,
            goal=Goal.at_most(12, "conns"),
            details={"samples": mix.samples, "web_service_most": mix.web_connections},
        )
    )
    measured = {
        "per_join": mix.phase("joins").per_action,
        "per_payment": mix.phase("payments").per_action,
        "per_channel": mix.phase("channel additions").per_action,
        "per_measurement": mix.phase("channel re-measurements").per_action,
    }
    # Idle, the log grows only by the worker's lifecycle: one deploy a day (a start and a stop
    # of every actor), plus whatever the idle window extrapolates to.
    idle_bytes = (idle.per_day + idle.deploy_events) * per_event
    for users in (0, 100, 1_000, 10_000):
        days = days_until(GB, users=users, idle_per_day=idle_bytes, **measured)
        rows.append(
            Row(
                "cost: capacity of a 1 GB log (profile: bench/cost.py PROFILE)",
                f"days until 1 GB at {users:,} daily active users",
                days,
                "days",
                details={
                    "bytes_first_day": round(
                        idle_bytes
                        + bytes_per_day(
                            users,
                            measured["per_join"],
                            measured["per_payment"],
                            measured["per_channel"],
                        )
                    ),
                    **{k: round(v) for k, v in measured.items()},
                },
            )
        )
    return rows
