"""The actor runtime's figures: the mailbox (``tell`` throughput, ``ask`` round trips) beside
bare anyio memory object streams, crash-to-running-again latency under the supervisor, and the
failover of ``Heartbeat`` between two real ``i3lani run`` worker processes."""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

import anyio
import msgspec
from anyio.abc import ByteReceiveStream, Process, TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from actors.runtime import Actor, ActorRef, ActorRunner, ChildSpec, Emit
from actors.runtime.clock import SystemClock
from bench.measure import BenchContext, Contender, Sample, interleave, percentile, run_tasks
from bench.peers import dbos_database, dbos_recovery
from bench.report import Goal, Row, median
from events import ActorBackoffScheduled, ActorCrashed, ActorStarted
from events.streams import actor_stream
from store import EventStore, RecordedEvent
from store.leases import Leases
from supervisor import BackoffPolicy, Intensity, Supervisor

__all__ = ["NOTES", "run"]

TELLS = 1000  # tells per drain (one ask after them waits until the mailbox has been worked off)
MAILBOX = 256  # the actor's mailbox size, and the bare stream's buffer
BACKOFF = 0.05  # seconds: the supervisor's fixed backoff in the crash figure
HEARTBEAT_SECONDS = 0.5  # the workers' Heartbeat interval in the failover figure
POLL = 0.05  # seconds between reads of the log while waiting for a failover
FAILOVER_TIMEOUT = 60.0  # seconds to wait for the other node to take over before giving up

NOTES = [
    "actors, mailbox: an ActorRunner of an actor without a category or ticks whose decide() "
    f"returns () (no events, no database), mailbox of {MAILBOX}; the reference is a bare anyio "
    f"memory object stream with the same buffer and one consumer task calling the same actor's "
    "decide() (and reply() for requests). tell: batches of "
    f"{TELLS} tells, then one ask to drain, all counted. ask: one at a time, a fresh 1-slot "
    "reply stream per request on both sides. No goals: the ratio is the mailbox's overhead "
    "(envelope, type check, cancel scope per receive, timeout scope per ask).",
    "actors, crash restart: a Supervisor (SystemClock, fixed backoff "
    f"{BACKOFF * 1000:g} ms, no jitter) restarting an actor that raises on a Crash message; "
    "from tell(Crash) to supervisor.ref() being the new incarnation's ref, minus the backoff. "
    "The backoff counts from the crash (its exception leaving the runner), and the "
    "bookkeeping before its end runs during it: the supervisor seeing the end, reading the "
    "history, ActorCrashed with ActorBackoffScheduled in one commit, the lease re-grant in "
    "another, and, from 25 ms before the end (supervisor.PRESTART), the new incarnation made "
    "ready (built, recovered) and its start recorded (ActorRestarted with ActorStarted, one "
    "commit), the incarnation held at a gate until the end; the last 1.5 ms are waited out in "
    "turns of the event loop, whose timer wakes up to 1 ms late. Beyond the backoff are the "
    "Crash reaching the actor and its runner ending, and the gate opening and the ref handed "
    "out. Each crash is told once the previous ActorStarted is recorded. Reference, when erl "
    "and erlc are installed: an Erlang/OTP supervisor (one_for_one, a permanent gen_server "
    "child that exits on a cast, logger off) in the same run, from the cast to whereis() giving "
    "the new pid; OTP restarts at once (no backoff) and keeps its bookkeeping in memory, so the "
    "ratio is the price of a durable restart history, not a like-for-like goal. Akka is not "
    "measured: it needs a JVM project with Akka's libraries, which the bench does not set up.",
    "actors, failover: two `i3lani run --actors Heartbeat` processes (Heartbeat every "
    f"{HEARTBEAT_SECONDS:g} s); the one running Heartbeat gets SIGKILL, timed until the other "
    f"node's ActorStarted is in the log (polled every {POLL * 1000:g} ms); dominated by the "
    "lease's time to live, which the dead node can no longer renew. Hand-over: the killed node "
    "started again as standby, then SIGTERM to the running one (it stops the actor and releases "
    "the lease; the standby polls for it every second). One sample each.",
    f"actors, recovery beside DBOS {metadata.version('dbos')}: a DBOS process (its own, "
    "bench/peer_dbos.py, system database on the same server) runs a workflow whose first step "
    "is done and whose second waits; it gets SIGKILL and a new process is started at once "
    "(what a restarting container does), timed until the recovered workflow's second step "
    "runs (interpreter start-up, imports and DBOS.launch() included; median of the rounds). "
    "Not the same recovery: DBOS resumes a dead executor's workflows when a process with its "
    "executor id launches again; i3lani's other node takes the actor over without a restart, "
    "once the dead node's lease has run out (its TTL dominates). A pending i3lani task held by a "
    "killed node is taken again once its lock time (lock_timeout, 30 s by default) has passed.",
]

_MAILBOX_TELL = f"actors: tell throughput, mailbox of {MAILBOX}, {TELLS} tells then 1 ask"
_MAILBOX_ASK = f"actors: ask round trip, mailbox of {MAILBOX}, 1 asker, one ask at a time"
_CRASH = f"actors: crash -> running again, beyond the {BACKOFF * 1000:g} ms backoff"


# -- the actors -----------------------------------------------------------------------------------
class Work(msgspec.Struct, frozen=True):
    """A message that produces no events."""

    n: int = 0


class Crash(msgspec.Struct, frozen=True):
    """Makes the crasher raise."""


class BenchCrash(RuntimeError):
    """Raised by the crasher on purpose."""


class Sink(Actor[None]):
    """No state, no events: decide() returns (), reply() returns None."""

    name: ClassVar[str] = "BenchSink"
    messages: ClassVar[tuple[type[msgspec.Struct], ...]] = (Work,)
    mailbox_size: ClassVar[int] = MAILBOX

    def initial_state(self) -> None:
        return None

    def decide(self, state: None, message: msgspec.Struct) -> Sequence[Emit]:
        return ()


class Crasher(Sink):
    """A sink that raises when told Crash."""

    name: ClassVar[str] = "BenchCrasher"
    messages: ClassVar[tuple[type[msgspec.Struct], ...]] = (Work, Crash)

    def decide(self, state: None, message: msgspec.Struct) -> Sequence[Emit]:
        if isinstance(message, Crash):
            raise BenchCrash("crashing on purpose")
        return ()


WORK = Work()


# -- suite ----------------------------------------------------------------------------------------
async def run(ctx: BenchContext) -> list[Row]:
    rows: list[Row] = []
    async with EventStore.open(ctx.dsn) as store:
        rows += await _tell(ctx, store)
        rows += await _ask(ctx, store)
        rows += await _crash_restart(ctx, store)
        failover = await _failover(ctx, store)
    rows += failover
    rows.append(await _dbos_recovery(ctx, failover[0]))
    return rows


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Silence a logger (expected crashes are not news) for the duration."""
    target = logging.getLogger(name)
    level = target.level
    target.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        target.setLevel(level)


# -- the mailbox ----------------------------------------------------------------------------------
_Request: TypeAlias = tuple[msgspec.Struct, MemoryObjectSendStream[Any] | None]


async def _bare_consumer(receive: MemoryObjectReceiveStream[_Request], sink: Sink) -> None:
    """The reference: one task doing the actor's trivial work per item, replying to requests."""
    async for message, reply in receive:
        sink.decide(None, message)
        if reply is not None:
            reply.send_nowait(sink.reply(None, message))


async def _tell(ctx: BenchContext, store: EventStore) -> list[Row]:
    title = "tell"
    ctx.log(f"{title} ...")
    sink = Sink()
    runner = ActorRunner(Sink(), store, SystemClock(), node="bench")
    send, receive = anyio.create_memory_object_stream[_Request](MAILBOX)
    async with anyio.create_task_group() as tg:
        ref: ActorRef = await tg.start(runner.run)
        tg.start_soon(_bare_consumer, receive, sink)

        async def i3lani(seconds: float) -> Sample:
            async def step(_: int) -> int:
                for _ in range(TELLS):
                    await ref.tell(WORK)
                await ref.ask(WORK)
                return TELLS + 1

            return await run_tasks(seconds, 1, step)

        async def bare(seconds: float) -> Sample:
            async def step(_: int) -> int:
                for _ in range(TELLS):
                    await send.send((WORK, None))
                reply, answer = anyio.create_memory_object_stream[Any](1)
                with reply, answer:
                    await send.send((WORK, reply))
                    await answer.receive()
                return TELLS + 1

            return await run_tasks(seconds, 1, step)

        totals = await interleave(
            ctx, title, [Contender("i3lani", i3lani), Contender("bare stream", bare)]
        )
        runner.request_stop()
        send.close()
        tg.cancel_scope.cancel()
    return [
        Row(
            _MAILBOX_TELL,
            "ActorRef.tell, 1 sender",
            totals["i3lani"].rate,
            "messages/s",
            "bare anyio memory stream",
            totals["bare stream"].rate,
            details={"processed_by_actor": runner.processed},
        )
    ]


async def _ask(ctx: BenchContext, store: EventStore) -> list[Row]:
    title = "ask"
    ctx.log(f"{title} ...")
    sink = Sink()
    runner = ActorRunner(Sink(), store, SystemClock(), node="bench")
    send, receive = anyio.create_memory_object_stream[_Request](MAILBOX)
    # Per contender, the latencies (seconds) of each call of its run(); the first call is the
    # warm-up when there is one (see measure.interleave).
    runs: dict[str, list[list[float]]] = {"i3lani": [], "bare stream": []}
    async with anyio.create_task_group() as tg:
        ref: ActorRef = await tg.start(runner.run)
        tg.start_soon(_bare_consumer, receive, sink)

        def timed(name: str, once: Callable[[], Awaitable[object]]) -> Contender:
            async def contender(seconds: float) -> Sample:
                latencies: list[float] = []
                runs[name].append(latencies)

                async def step(_: int) -> int:
                    began = time.perf_counter()
                    await once()
                    latencies.append(time.perf_counter() - began)
                    return 1

                return await run_tasks(seconds, 1, step)

            return Contender(name, contender)

        async def i3lani_once() -> object:
            return await ref.ask(WORK)

        async def bare_once() -> object:
            reply, answer = anyio.create_memory_object_stream[Any](1)
            with reply, answer:
                await send.send((WORK, reply))
                return await answer.receive()

        totals = await interleave(
            ctx, title, [timed("i3lani", i3lani_once), timed("bare stream", bare_once)]
        )
        runner.request_stop()
        send.close()
        tg.cancel_scope.cancel()
    skip = 1 if ctx.warmup > 0 else 0
    micros = {
        name: [value * 1e6 for latencies in calls[skip:] for value in latencies]
        for name, calls in runs.items()
    }
    reference = "bare anyio request/reply"
    rows: list[Row] = []
    for label, fraction in (("p50", 0.50), ("p99", 0.99)):
        rows.append(
            Row(
                _MAILBOX_ASK,
                f"ActorRef.ask, {label}",
                percentile(micros["i3lani"], fraction),
                "µs",
                f"{reference}, {label}",
                percentile(micros["bare stream"], fraction),
                details={"asks": {name: len(values) for name, values in micros.items()}},
            )
        )
    rows.append(
        Row(
            _MAILBOX_ASK,
            "ActorRef.ask, throughput",
            totals["i3lani"].rate,
            "asks/s",
            reference,
            totals["bare stream"].rate,
        )
    )
    return rows


# -- crash and restart ----------------------------------------------------------------------------
async def _crash_restart(ctx: BenchContext, store: EventStore) -> list[Row]:
    crashes = 30 if ctx.quick else 100
    warmup = 2
    name = Crasher.name
    ctx.log(f"crash restart, {crashes} crashes ...")
    supervisor = Supervisor(
        store,
        [ChildSpec(name, Crasher)],
        node="bench",
        clock=SystemClock(),
        backoff=BackoffPolicy(min_delay=BACKOFF, max_delay=BACKOFF, jitter=0, reset_after=0.001),
        intensity=Intensity(max_restarts=10_000, within=1),
    )
    stream = actor_stream(name)
    measured: list[float] = []  # seconds beyond the backoff
    told: list[datetime] = []  # when each measured Crash was told, by the wall clock
    published: list[datetime] = []  # when its new incarnation's ref was handed out

    async def started_recorded(after: int) -> int:
        """Wait until the newest lifecycle event is an ActorStarted past ``after``; its
        position."""
        while True:
            last = await store.last_event(stream)
            if last is not None and last.position > after and isinstance(last.event, ActorStarted):
                return last.position
            await anyio.sleep(0.001)

    with _quiet("supervisor"), anyio.fail_after(60 + crashes * 2):
        async with anyio.create_task_group() as tg:
            await tg.start(supervisor.run)
            ref = await supervisor.wait_started(name)
            position = await started_recorded(0)
            for index in range(warmup + crashes):
                old = ref
                told_at = datetime.now(UTC)
                began = time.perf_counter()
                await old.tell(Crash())
                await supervisor.wait_ended(old)
                ref = await supervisor.wait_started(name)
                elapsed = time.perf_counter() - began
                if index >= warmup:
                    measured.append(elapsed - BACKOFF)
                    told.append(told_at)
                    published.append(datetime.now(UTC))
                position = await started_recorded(position)
            tg.cancel_scope.cancel()
    micros = [value * 1e6 for value in measured]
    stages = _restart_stages(await store.read_stream(stream), told, published)
    ctx.log(
        "  crash restart, p50 per stage (supervisor's own timestamps): "
        + ", ".join(f"{name} {value:.2f} ms" for name, value in stages.items())
    )
    otp = await _otp_restarts(ctx, crashes)
    otp_micros = [value * 1e6 for value in otp.seconds] if otp is not None else []
    details: dict[str, object] = {
        "crashes": len(micros),
        "warmup_crashes": warmup,
        "min_us": min(micros, default=math.nan),
        "max_us": max(micros, default=math.nan),
        "stages_p50_ms": stages,
        "otp_release": otp.release if otp is not None else None,
        "otp_restarts": len(otp_micros),
        "akka": "not measured",
    }
    release = f" {otp.release}" if otp is not None else ""
    reference = f"Erlang/OTP{release} supervisor"
    rows: list[Row] = []
    for label, fraction in (("p50", 0.50), ("p99", 0.99)):
        rows.append(
            Row(
                _CRASH,
                f"{label} ({len(micros)} crashes)",
                percentile(micros, fraction),
                "µs",
                f"{reference}, {label}",
                percentile(otp_micros, fraction) if otp_micros else None,
                details=details,
            )
        )
    return rows


OTP_MODULE = "i3lani_bench_otp"
OTP_SOURCE = r"""
%% The reference for i3lani's crash-restart figure: an OTP supervisor (one_for_one, permanent
%% child, no backoff: OTP restarts at once) restarting a gen_server that exits on a cast.
%% This module is both the supervisor's and the gen_server's callback module.
-module(i3lani_bench_otp).
-behaviour(supervisor).
-export([main/1, init/1, start_worker/0, handle_call/3, handle_cast/2]).

main([Count]) ->
    N = list_to_integer(Count),
    logger:set_primary_config(level, none),
    {ok, Sup} = supervisor:start_link(?MODULE, supervisor),
    unlink(Sup),
    Warmup = 2,
    Times = [crash_once() || _ <- lists:seq(1, Warmup + N)],
    Kept = [integer_to_list(T) || T <- lists:nthtail(Warmup, Times)],
    io:format("OTP ~s~nRESULT ~s~n", [erlang:system_info(otp_release), lists:join(" ", Kept)]),
    halt(0).

crash_once() ->
    Old = whereis(bench_worker),
    T0 = erlang:monotonic_time(nanosecond),
    gen_server:cast(Old, crash),
    wait_new(Old),
    T1 = erlang:monotonic_time(nanosecond),
    timer:sleep(1),
    T1 - T0.

wait_new(Old) ->
    case whereis(bench_worker) of
        Pid when is_pid(Pid), Pid =/= Old -> ok;
        _ -> erlang:yield(), wait_new(Old)
    end.

init(supervisor) ->
    {ok, {#{strategy => one_for_one, intensity => 1000000, period => 1},
          [#{id => worker, start => {?MODULE, start_worker, []}, restart => permanent}]}};
init(worker) ->
    {ok, nostate}.

start_worker() ->
    gen_server:start_link({local, bench_worker}, ?MODULE, worker, []).

handle_call(_Request, _From, State) -> {reply, ok, State}.

handle_cast(crash, _State) -> exit(crashing_on_purpose).
"""


@dataclass(frozen=True, slots=True)
class _OtpResult:
    release: str
    seconds: list[float]  # one restart each, warm-up excluded


async def _otp_restarts(ctx: BenchContext, count: int) -> _OtpResult | None:
    """Crash and restart an OTP gen_server ``count`` times under a supervisor; None when
    Erlang/OTP is not installed or the run failed (said on stderr)."""
    erl, erlc = shutil.which("erl"), shutil.which("erlc")
    if erl is None or erlc is None:
        ctx.log("  Erlang/OTP reference: erl/erlc not found, not measured")
        return None
    try:
        async with anyio.TemporaryDirectory(prefix="i3lani-otp-") as tmp:
            source = anyio.Path(tmp) / f"{OTP_MODULE}.erl"
            await source.write_text(OTP_SOURCE, encoding="utf-8")
            with anyio.fail_after(60):
                await anyio.run_process([erlc, "-o", tmp, str(source)])
                done = await anyio.run_process(
                    [erl, "-noshell", "-pa", tmp, "-run", OTP_MODULE, "main", str(count)]
                )
    except (OSError, TimeoutError, subprocess.CalledProcessError) as exc:
        ctx.log(f"  Erlang/OTP reference failed, not measured: {exc!r}")
        return None
    lines = dict(line.split(" ", 1) for line in done.stdout.decode().splitlines() if " " in line)
    if "RESULT" not in lines:
        ctx.log(f"  Erlang/OTP reference: no result in {done.stdout[-500:]!r}, not measured")
        return None
    nanoseconds = [int(value) for value in lines["RESULT"].split()]
    return _OtpResult(lines.get("OTP", "?"), [value / 1e9 for value in nanoseconds])


def _restart_stages(
    lifecycle: Sequence[RecordedEvent], told: Sequence[datetime], published: Sequence[datetime]
) -> dict[str, float]:
    """From the supervisor's own timestamps of the last restart cycles (ActorCrashed,
    ActorBackoffScheduled, ActorStarted, and when the start's commit began: its
    ``recorded_at``), one per Crash told at ``told`` and whose new incarnation was handed out
    at ``published`` (the bench's wall clock, the same as the supervisor's and the server's
    here): the p50 of each stage, in ms. The backoff itself (crashed -> until) is left out;
    the bookkeeping that runs during it shows in "crashed -> backoff scheduled" (reading the
    history) only in part, and the start's commit, made ready ahead of the backoff's end, as
    how far ahead of it that commit began."""
    stages: dict[str, list[float]] = {
        "told -> crashed": [],
        "crashed -> backoff scheduled": [],
        "start's commit began, before the backoff's end": [],
        "backoff over -> started": [],
        "started -> ref handed out": [],
    }
    crashed: ActorCrashed | None = None
    scheduled: ActorBackoffScheduled | None = None
    cycles: list[tuple[datetime, datetime, datetime, datetime, datetime]] = []
    for recorded in lifecycle:
        event = recorded.event
        if isinstance(event, ActorCrashed):
            crashed, scheduled = event, None
        elif isinstance(event, ActorBackoffScheduled):
            scheduled = event
        elif isinstance(event, ActorStarted) and crashed and scheduled:
            cycles.append(
                (
                    crashed.crashed_at,
                    scheduled.scheduled_at,
                    scheduled.until,
                    recorded.recorded_at,
                    event.started_at,
                )
            )
            crashed = None
    last = cycles[-len(told) :] if told else []
    for (crashed_at, scheduled_at, until, committed_at, started_at), told_at, out in zip(
        last, told, published, strict=True
    ):
        spans = (
            crashed_at - told_at,
            scheduled_at - crashed_at,
            until - committed_at,
            started_at - until,
            out - started_at,
        )
        for values, span in zip(stages.values(), spans, strict=True):
            values.append(span.total_seconds() * 1000)
    return {name: percentile(values, 0.50) for name, values in stages.items()}


# -- recovery beside DBOS ---------------------------------------------------------------------
async def _dbos_recovery(ctx: BenchContext, failover: Row) -> Row:
    ctx.log("DBOS: SIGKILL -> pending workflow resumed by a new process ...")
    seconds: list[float] = []
    async with dbos_database(ctx.dsn) as url:
        for round_no in range(ctx.rounds):
            seconds.append(await dbos_recovery(url))
            ctx.log(f"  DBOS recovery: {seconds[-1]:.2f} s (round {round_no + 1}/{ctx.rounds})")
    return Row(
        failover.section,
        failover.name,
        failover.value,
        "s",
        "DBOS: SIGKILL -> its workflow resumed by a new process",
        median(seconds),
        reference_rounds=tuple(seconds),
        details={"dbos_seconds": seconds},
    )


# -- failover between worker processes ------------------------------------------------------------
def _worker_command() -> list[str]:
    """``i3lani`` beside this interpreter (the console script of this venv), else the module."""
    script = Path(sys.executable).parent / "i3lani"
    if script.exists():
        return [str(script)]
    found = shutil.which("i3lani")
    return [found] if found else [sys.executable, "-m", "ops.cli"]


@dataclass(eq=False)
class _Worker:
    node: str
    process: Process
    output: bytearray = field(default_factory=bytearray)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def tail(self, chars: int = 3000) -> str:
        return self.output.decode(errors="replace")[-chars:]

    async def wait_ready(self, seconds: float = 60) -> None:
        with anyio.fail_after(seconds):
            while b"supervising" not in self.output:
                if not self.alive:
                    raise RuntimeError(f"worker {self.node} exited early:\n{self.tail()}")
                await anyio.sleep(0.05)


async def _drain(stream: ByteReceiveStream, into: bytearray) -> None:
    try:
        async for chunk in stream:
            into.extend(chunk)
            del into[:-100_000]  # keep the tail only
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass


class _Workers:
    def __init__(self, tg: TaskGroup, env: dict[str, str]) -> None:
        self.tg = tg
        self.env = env
        self.started: list[_Worker] = []

    async def start(self, node: str) -> _Worker:
        env = {**self.env, "I3LANI_NODE": node}
        process = await anyio.open_process(
            [*_worker_command(), "run", "--actors", "Heartbeat"], env=env
        )
        worker = _Worker(node, process)
        self.started.append(worker)
        for stream in (process.stdout, process.stderr):
            assert stream is not None
            self.tg.start_soon(_drain, stream, worker.output)
        return worker

    async def kill_all(self) -> None:
        for worker in self.started:
            if worker.alive:
                worker.process.kill()
            with anyio.move_on_after(10):
                await worker.process.wait()
            await worker.process.aclose()


async def _next_start(
    store: EventStore, after_version: int, node: str | None, seconds: float
) -> RecordedEvent:
    """The first ActorStarted of Heartbeat past ``after_version`` (by ``node`` if given),
    polling the log every POLL seconds."""
    with anyio.fail_after(seconds):
        while True:
            for recorded in await store.read_stream(
                actor_stream("Heartbeat"), after_version=after_version
            ):
                event = recorded.event
                if isinstance(event, ActorStarted) and (node is None or event.node == node):
                    return recorded
            await anyio.sleep(POLL)


async def _holder(store: EventStore) -> tuple[str | None, bool, float | None]:
    """Heartbeat's lease: the holding node (without its instance id), whether it is live, and
    its time to live in seconds."""
    for info in await Leases(store, "bench-observer").all():
        if info.name == "Heartbeat":
            node = info.node.rsplit("/", 1)[0] if info.node else None
            return node, info.live, (info.expires_at - info.renewed_at).total_seconds()
    return None, False, None


async def _failover(ctx: BenchContext, store: EventStore) -> list[Row]:
    ctx.log("failover between two `i3lani run` workers ...")
    env = {
        **os.environ,
        "DATABASE_URL": ctx.dsn,
        "I3LANI_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
        "I3LANI_LOG_LEVEL": "INFO",
    }
    failover = handover = math.nan
    details: dict[str, object] = {}
    ttl: float | None = None
    try:
        async with anyio.create_task_group() as tg:
            workers = _Workers(tg, env)
            try:
                nodes = {name: await workers.start(name) for name in ("node-a", "node-b")}
                for worker in nodes.values():
                    await worker.wait_ready()
                first = await _next_start(store, 0, None, 30)
                assert isinstance(first.event, ActorStarted)
                running = nodes[first.event.node]
                standby = nodes["node-b" if running.node == "node-a" else "node-a"]
                _, _, ttl = await _holder(store)
                # A few beats, so the standby has tried (and failed) to take the lease.
                await anyio.sleep(2 * HEARTBEAT_SECONDS)

                killed_at = datetime.now(UTC)
                began = time.perf_counter()
                running.process.send_signal(signal.SIGKILL)
                try:
                    taken = await _next_start(store, first.version, standby.node, FAILOVER_TIMEOUT)
                except TimeoutError:
                    ctx.log(
                        f"  failover: {standby.node} did not start Heartbeat within "
                        f"{FAILOVER_TIMEOUT:g} s\n{standby.tail()}"
                    )
                    return _failover_rows(failover, handover, ttl, details)
                failover = time.perf_counter() - began
                assert isinstance(taken.event, ActorStarted)
                details["failover_by_started_at_s"] = (
                    taken.event.started_at - killed_at
                ).total_seconds()
                ctx.log(f"  SIGKILL {running.node}: {standby.node} took over in {failover:.2f} s")
                with anyio.fail_after(10):
                    await running.process.wait()

                # Hand-over: the killed node again, as standby; then SIGTERM the running one.
                again = await workers.start(running.node)
                await again.wait_ready()
                with anyio.fail_after(30):
                    while True:
                        holder, live, _ = await _holder(store)
                        if holder == standby.node and live:
                            break
                        await anyio.sleep(POLL)
                await anyio.sleep(1.5)  # the newcomer's first acquire attempts have failed
                terminated_at = datetime.now(UTC)
                began = time.perf_counter()
                standby.process.send_signal(signal.SIGTERM)
                try:
                    handed = await _next_start(store, taken.version, again.node, FAILOVER_TIMEOUT)
                except TimeoutError:
                    ctx.log(
                        f"  hand-over: {again.node} did not start Heartbeat within "
                        f"{FAILOVER_TIMEOUT:g} s\n{again.tail()}"
                    )
                    return _failover_rows(failover, handover, ttl, details)
                handover = time.perf_counter() - began
                assert isinstance(handed.event, ActorStarted)
                details["handover_by_started_at_s"] = (
                    handed.event.started_at - terminated_at
                ).total_seconds()
                ctx.log(f"  SIGTERM {standby.node}: {again.node} took over in {handover:.2f} s")
                with anyio.fail_after(30):
                    details["sigterm_exit_code"] = await standby.process.wait()
            finally:
                with anyio.CancelScope(shield=True):
                    await workers.kill_all()
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    return _failover_rows(failover, handover, ttl, details)


def _failover_rows(
    failover: float, handover: float, ttl: float | None, details: dict[str, object]
) -> list[Row]:
    section = "actors: Heartbeat between two `i3lani run` processes" + (
        f", lease TTL {ttl:g} s" if ttl is not None else ""
    )
    return [
        Row(
            section,
            "SIGKILL -> ActorStarted on the other node",
            failover,
            "s",
            goal=Goal.below(15, "s"),
            details={**details, "lease_ttl_s": ttl},
        ),
        Row(
            section,
            "SIGTERM -> ActorStarted on the standby",
            handover,
            "s",
            details={**details, "lease_ttl_s": ttl},
        ),
    ]
