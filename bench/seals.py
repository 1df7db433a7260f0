"""Seals (issue 14): what sealing costs appends, and how fast a log's seals are verified.

In a database of its own (``i3lani_bench_seals``, dropped at the end), on a log of the scale
suite's story (payments, rewards, channels, ticks, with metadata):

* appends per second with the Sealer running against without it, the sides in turns (ABBA),
  the Sealer sealing every second (3,600 times its default rate) with a digest task per
  seal: as deployed, in a worker process of its own (``i3lani run --actors Sealer``: the
  writers stand for the gateway and the other actors), and, for information, in the
  writers' own process and event loop;
* ``verify_seals`` over the whole sealed log, beside a raw asyncpg fetch of the same rows (the
  Sealer's own query and page size, rows left undecoded) and that fetch plus a SHA-256 of each
  row's canonical bytes (the hashing with none of the verifier's bookkeeping).
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Final

import anyio
from anyio.abc import Process

from actors.config import Settings
from actors.control import issue_command, operator_command
from actors.runtime import ActorRunner
from actors.runtime.clock import SystemClock
from actors.sealer import SEAL_STREAM, Sealer
from bench.eventstore import raw_connection, sample_event
from bench.measure import (
    ZERO,
    BenchContext,
    Contender,
    Rounds,
    Sample,
    interleave,
    run_tasks,
    versus,
)
from bench.report import Goal, Row
from bench.scale import (
    fresh_database,
    i3lani_command,
    load_story,
    stop_process,
    worker_environment,
)
from events import ActorStarted, ActorStopped, Event, LogSealed
from events.streams import actor_stream
from ops.audit import run_audit
from store import EventStore, NewEvent, views
from store.queries import query
from store.sealing import PAGE_SIZE, canonical_bytes, next_seals, verify_seals
from store.stored import StoredEvent

__all__ = ["NOTES", "run"]

DATABASE: Final = "i3lani_bench_seals"
SECTION_APPENDS: Final = "seals: appends with the Sealer running (every 1 s) vs without it"
SECTION_VERIFY: Final = "seals: verification of a sealed log"
SEAL_EVERY: Final = 1.0
TURN: Final = 1.0  # seconds of one side's turn at appending
WITHOUT: Final = "without the Sealer"
WORKER: Final = "the Sealer in a worker"
IN_PROCESS: Final = "the Sealer in-process"
VERIFY_GOAL: Final = 100_000.0  # events per second
PAGE: Final = PAGE_SIZE  # the verifier's page, for raw asyncpg alike

NOTES: Final = (
    "seals: in a database of its own holding the scale suite's story (read_events events, "
    "sealed before anything is timed). Appends: single events with an exact expected version, "
    "each writer its own stream, as in the event store figures. 'In a worker process': "
    f"`i3lani run --actors Sealer` (I3LANI_SEAL_INTERVAL={SEAL_EVERY:g}, ADMIN_IDS=1 so each "
    "seal also enqueues its digest task), as deployed, up for the whole figure, its Sealer "
    "started (by an operator command, then its first tick) before each of its turns and "
    "stopped after; goal: >= 0.95x the appends without it. 'In the writers' event loop': the "
    "same actor in the writers' own process (for information: it shares their one core). "
    "Before each turn with a Sealer the log is sealed up to date, untimed, so it seals only "
    f"what its own turn appends. The sides take {TURN:g} s turns, 2 x --seconds rounds of "
    "the three in ABBA order (a noisy moment falls on every side); each side's figure is the "
    "median of its turns, their spread printed (turns more than 2x apart: UNSTABLE, no "
    "verdict), as in every suite; each pair's ratio, their median and the ratio of the "
    "totals are in the JSON. Verification: "
    "store.sealing.verify_seals over the "
    "whole log (every seal recomputed, the first difference located), in whole passes; "
    "references: the read_stored query on a raw asyncpg connection with the store's JSON "
    "codec, rows left undecoded, same page size; and that fetch plus hashlib.sha256 of each "
    "row's canonical bytes. Goal: 100,000 events/s (the reference column is the goal: 1.00x "
    "meets it).",
)


async def run(ctx: BenchContext) -> list[Row]:
    count = ctx.read_events
    try:
        dsn = await fresh_database(ctx, DATABASE)
        ctx.log(f"seals: building a log of {count:,} events with COPY ...")
        await load_story(ctx, dsn, count)
        async with EventStore.open(dsn, node="bench-seals") as store:
            ctx.log("seals: sealing it (untimed) ...")
            seal_rate = await _seal_all(store)
            rows = await _appends(ctx, store, dsn, writers=8)
            rows += await _appends(ctx, store, dsn, writers=1)
            await _seal_all(store)
            rows += await _verification(ctx, store, dsn, seal_rate)
    finally:
        with anyio.CancelScope(shield=True):
            conn = await raw_connection(ctx.dsn)
            try:
                await conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
            finally:
                await conn.close()
    return rows


async def _seal_all(store: EventStore) -> float:
    """Seal the whole log as the Sealer does; the events sealed per second."""
    started = time.perf_counter()
    sealed = 0
    while True:
        last = await store.last_event(SEAL_STREAM)
        previous = None if last is None else last.event
        assert previous is None or isinstance(previous, LogSealed)
        made, more = await next_seals(store, previous, sealed_at=datetime.now(UTC))
        if made:
            await store.append(
                SEAL_STREAM,
                [NewEvent(event=s, event_id=uuid.uuid4()) for s in made],
                expected_version=0 if last is None else last.version,
            )
            sealed += sum(s.count for s in made)
        if not more:
            return sealed / (time.perf_counter() - started)


class _Worker:
    """``i3lani run --actors Sealer`` in a process of its own, as deployed, whose Sealer is
    stopped and started between turns by operator commands (the process stays up)."""

    def __init__(self, store: EventStore, dsn: str) -> None:
        self.store = store
        self.dsn = dsn
        self.process: Process | None = None

    async def __aenter__(self) -> _Worker:
        env = worker_environment(
            self.dsn,
            I3LANI_SEAL_INTERVAL=f"{SEAL_EVERY:g}",
            ADMIN_IDS="1",
            I3LANI_NODE="bench-sealer",
            I3LANI_LOG_LEVEL="WARNING",
        )
        stopped = await views.desired_state(self.store, Sealer.name) == "stopped"
        head = (await self.store.head()).position
        self.process = await anyio.open_process(
            [*i3lani_command(), "run", "--actors", Sealer.name],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if stopped:  # left so by the figure before: the worker waits for an operator
            await self.command("start")
        else:
            await self._lifecycle(ActorStarted, after=head)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.process is not None:
            await stop_process(self.process)

    async def _lifecycle(self, kind: type[Event], *, after: int) -> None:
        """Wait until the Sealer's lifecycle records ``kind`` after position ``after`` (and,
        once started, its first tick)."""
        ticked = await self.store.load_tick(Sealer.name)  # the schedule beside the log
        with anyio.fail_after(60):
            while True:
                assert self.process is not None
                if self.process.returncode is not None:
                    raise RuntimeError("the Sealer's worker process exited")
                last = await self.store.last_event(actor_stream(Sealer.name))
                if last is not None and last.position > after and isinstance(last.event, kind):
                    break
                await anyio.sleep(0.05)
            while kind is ActorStarted:
                if await self.store.load_tick(Sealer.name) != ticked:
                    return
                await anyio.sleep(0.05)

    def cpu_seconds(self) -> float:
        """CPU time the worker process has used so far (user and system), from /proc."""
        assert self.process is not None
        with open(f"/proc/{self.process.pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def command(self, action: str) -> None:
        issued = await issue_command(
            self.store, operator_command(action, Sealer.name, requested_by="bench", reason="")
        )
        await self._lifecycle(
            ActorStarted if action == "start" else ActorStopped, after=issued.last_position
        )


async def _appends(ctx: BenchContext, store: EventStore, dsn: str, *, writers: int) -> list[Row]:
    title = f"appends, {writers} writer{'s' if writers > 1 else ''}"
    ctx.log(f"seals: {title} ...")
    event = sample_event()
    pairs = max(3, round(2 * ctx.seconds))
    sealed: dict[str, int] = {WORKER: 0, IN_PROCESS: 0}
    worker_cpu, writers_cpu = [0.0], [0.0]  # CPU seconds: the worker's, the writers' process

    async def write(seconds: float) -> Sample:
        streams = [f"append-{uuid.uuid4().hex}" for _ in range(writers)]
        versions = [0] * writers

        async def step(i: int) -> int:
            await store.append(streams[i], [event], expected_version=versions[i])
            versions[i] += 1
            return 1

        return await run_tasks(seconds, writers, step)

    async def in_worker(worker: _Worker) -> Sample:
        await _seal_all(store)  # what the other sides wrote is not this side's work
        before = await _sealed(store)
        await worker.command("start")
        cpu = worker.cpu_seconds()
        sample = await write(TURN)
        worker_cpu[0] += worker.cpu_seconds() - cpu
        await worker.command("stop")
        sealed[WORKER] += await _sealed(store) - before
        return sample

    async def alone() -> Sample:
        cpu = time.process_time()
        sample = await write(TURN)
        writers_cpu[0] += time.process_time() - cpu
        return sample

    async def in_process() -> Sample:
        settings = Settings(seal_interval=SEAL_EVERY, admin_ids=(1,))
        runner = ActorRunner(Sealer(settings), store, SystemClock(), node="bench-seals")
        await _seal_all(store)
        before = await _sealed(store)
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            sample = await write(TURN)
            tg.cancel_scope.cancel()
        sealed[IN_PROCESS] += await _sealed(store) - before
        return sample

    totals = {WITHOUT: ZERO, WORKER: ZERO, IN_PROCESS: ZERO}
    rounds = {WITHOUT: Rounds(), WORKER: Rounds(), IN_PROCESS: Rounds()}
    ratios: dict[str, list[float]] = {WORKER: [], IN_PROCESS: []}
    async with _Worker(store, dsn) as worker:
        await worker.command("stop")
        await write(ctx.warmup)
        for pair in range(pairs):
            turns: dict[str, Sample] = {}
            order = [WITHOUT, WORKER, IN_PROCESS]
            for side in order if pair % 2 == 0 else reversed(order):
                if side == WITHOUT:
                    turns[side] = await alone()
                elif side == WORKER:
                    turns[side] = await in_worker(worker)
                else:
                    turns[side] = await in_process()
                totals[side] += turns[side]
                rounds[side] = rounds[side].add(turns[side])
            for side in (WORKER, IN_PROCESS):
                ratios[side].append(turns[side].rate / max(turns[WITHOUT].rate, 1e-9))
            ctx.log(
                f"  {title}: pair {pair + 1}/{pairs}: "
                + ", ".join(f"{side} {turns[side].rate:,.0f}/s" for side in order)
            )
    name = f"{writers} writer{'s (group commit)' if writers > 1 else ''}"

    def details(side: str) -> dict[str, object]:
        return {
            "turn_seconds": TURN,
            "pairs": pairs,
            "median_ratio_of_pairs": statistics.median(ratios[side]),
            "ratios_of_pairs": [round(r, 3) for r in ratios[side]],
            "ratio_of_totals": totals[side].rate / max(totals[WITHOUT].rate, 1e-9),
            "events_sealed_during_the_timed_turns": sealed[side],
        }

    cpu_per_event = worker_cpu[0] / max(sealed[WORKER], 1) * 1e6
    cpu_per_append = writers_cpu[0] / max(totals[WITHOUT].items, 1) * 1e6
    return [
        versus(
            SECTION_APPENDS,
            f"{name}, the Sealer in a worker process",
            "appends/s",
            rounds[WORKER],
            "the same without it",
            rounds[WITHOUT],
            goal=Goal.ratio_at_least(0.95),
            details=details(WORKER),
        ),
        versus(
            SECTION_APPENDS,
            f"{name}, the Sealer in the writers' event loop",
            "appends/s",
            rounds[IN_PROCESS],
            "the same without it",
            rounds[WITHOUT],
            details=details(IN_PROCESS),
        ),
        Row(
            SECTION_APPENDS,
            f"{name}: CPU of the Sealer's worker process per event sealed",
            cpu_per_event,
            "µs",
            "the writers' process, per append",
            cpu_per_append,
            details={"worker_cpu_seconds": worker_cpu[0], "events_sealed": sealed[WORKER]},
        ),
    ]


async def _sealed(store: EventStore) -> int:
    last = await store.last_event(SEAL_STREAM)
    return 0 if last is None or not isinstance(last.event, LogSealed) else last.event.total


async def _verification(
    ctx: BenchContext, store: EventStore, dsn: str, seal_rate: float
) -> list[Row]:
    ctx.log("seals: verification ...")
    findings: list[str] = []
    conn = await raw_connection(dsn)
    sql = query("read_stored")

    async def passes(seconds: float, one: Callable[[], Awaitable[int]]) -> Sample:
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            done += await one()
        return Sample(done, time.perf_counter() - start)

    async def verify_pass() -> int:
        report = await verify_seals(store, page_size=PAGE)
        findings.extend(f.message for f in report.findings)
        return report.events + report.unsealed

    async def raw_pass(hashing: bool) -> int:
        done = 0
        transaction_id, position = 0, 0
        while True:
            records = await conn.fetch(sql, transaction_id, position, PAGE)
            if hashing:
                for record in records:
                    hashlib.sha256(canonical_bytes(StoredEvent(*record))).digest()
            done += len(records)
            if len(records) < PAGE:
                return done
            position, transaction_id = records[-1][0], records[-1][1]

    async def i3lani(seconds: float) -> Sample:
        return await passes(seconds, verify_pass)

    async def raw(seconds: float) -> Sample:
        return await passes(seconds, lambda: raw_pass(False))

    async def raw_hashed(seconds: float) -> Sample:
        return await passes(seconds, lambda: raw_pass(True))

    try:
        totals = await interleave(
            ctx,
            "verification",
            [
                Contender("verify_seals", i3lani),
                Contender("raw fetch", raw),
                Contender("raw fetch + sha256", raw_hashed),
            ],
        )
    finally:
        await conn.close()
    value = totals["verify_seals"].rate
    failure = f"a clean log did not verify: {findings[0]}" if findings else None
    name = f"verify_seals, {ctx.read_events:,}-event log"
    return [
        Row(
            SECTION_VERIFY,
            name,
            value,
            "events/s",
            reference_name="goal",
            reference=VERIFY_GOAL,
            goal=Goal.ratio_at_least(1.0),
            failure=failure,
        ),
        Row(SECTION_VERIFY, name, value, "events/s", "raw asyncpg fetch", totals["raw fetch"].rate),
        Row(
            SECTION_VERIFY,
            name,
            value,
            "events/s",
            "raw fetch + sha256 of each row",
            totals["raw fetch + sha256"].rate,
        ),
        Row(SECTION_VERIFY, "sealing it (next_seals, one pass)", seal_rate, "events/s"),
        await _audit_row(ctx, store),
    ]


async def _audit_row(ctx: BenchContext, store: EventStore) -> Row:
    """What an operator's ``i3lani audit --verify-seals`` costs: the replay, every invariant
    and every seal, one pass in this process."""
    ctx.log("seals: the audit with --verify-seals, one pass ...")
    started = time.perf_counter()
    report = await run_audit(store, Settings(), verify_seals=True)
    seconds = time.perf_counter() - started
    checked = report.summary.events_replayed + report.summary.events_unreadable
    assert report.seals is not None
    failure = None
    if report.seals.findings:
        failure = f"a clean log's seals did not verify: {report.discrepancies[0].message}"
    return Row(
        SECTION_VERIFY,
        "run_audit(verify_seals=True), one pass: replay, invariants and seals",
        checked / seconds,
        "events/s",
        details={"seconds": seconds, "events": checked, "seals": report.seals.seals_verified},
        failure=failure,
    )
