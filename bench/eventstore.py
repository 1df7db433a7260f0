"""The event store's figures: appends, batched appends, reads and subscriber wake-up latency,
each beside raw asyncpg, pgbench and/or the ``eventsourcing`` peer, measured in one run."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg

from bench.measure import (
    BenchContext,
    Contender,
    Rounds,
    Sample,
    interleave,
    percentile,
    run_tasks,
    versus,
)
from bench.peers import run_peer, run_pgbench
from bench.report import Goal, Row, median
from events import DEFAULT_REGISTRY, PaymentCreated
from store import NO_STREAM, EventStore, NewEvent
from store.eventstore import init_connection
from store.queries import query

__all__ = ["NOTES", "run", "sample_event"]

NOTES = [
    "raw asyncpg: a prepared single-row INSERT of the same row into i3lani.events, no version "
    "check; reads: the store's own read_all query and page size, rows left undecoded. "
    "read_batches (a page of typed events at a time, as audits read) carries the read goal; "
    "read_all (one event at a time, an async generator over the same pages) is shown beside it "
    "for information.",
    "pgbench: -n -M prepared -j 2, the same INSERT with the same JSON payload; each client "
    "appends to its own stream, versions 1, 2, ...; batched: INSERT ... SELECT FROM "
    "generate_series, one new stream per transaction, each row's payload made distinct (memo "
    "replaced) and parsed by the server, as i3lani's 100 distinct events are.",
    "eventsourcing: PostgresApplicationRecorder (the recorder with an ordered notification log, "
    "as i3lani has), its own schema, psycopg pool, run as its users run it: in a process of its "
    "own (bench/peer_eventsourcing.py, one per round, warmed up in it), its writers threads of "
    "that process. Its appends encode the event with the same registry; its reads decode each "
    "state with the same msgspec decoder. Its read is split: fetch (select_notifications: the "
    "query, psycopg's dict rows and its Notification objects) and decode, each timed on its "
    "own; its raw read is the same SELECT on a plain psycopg connection, tuples undecoded.",
    "latency: from just before append() to the subscriber (store.subscribe, same process) "
    "yielding the event; warm-up excluded; the window cut into as many consecutive periods as "
    "there are rounds, the figure the median of the periods' percentiles.",
]

PEER_SCHEMA = "es_peer"
PAGE = 1000  # read page size, for i3lani, raw asyncpg and the peer alike
BATCH = 100  # events per batched append
WAKE_INTERVAL = 0.005  # seconds between appends in the latency figure

_APPENDS = "event store: append 1 event, exact expected version, each writer its own stream"
_BATCHED = f"event store: batched appends, {BATCH} events per call, one new stream per call"
_LATENCY = f"event store: append -> subscriber wake-up, 1 event every {WAKE_INTERVAL * 1000:g} ms"

_INSERT_ONE = (
    "INSERT INTO i3lani.events"
    " (event_id, stream, stream_version, type, schema_version, payload, metadata)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7)"
)


def sample_event(payment_id: int = 42) -> PaymentCreated:
    """A realistic event (about 260 bytes of JSON): what every figure writes."""
    created = datetime(2025, 1, 1, 12, 0, tzinfo=UTC) + timedelta(seconds=payment_id)
    return PaymentCreated(
        payment_id=payment_id,
        user_id=5_000_000_000 + payment_id,
        plan="monthly",
        amount_nanotons=2_500_000_000,
        wallet="UQBvW8Z5huBkMJYdnfAEM5JqTNkuWX3diqYENkWsIL0XggGG",
        memo=f"i3lani_{payment_id}",
        created_at=created,
        expires_at=created + timedelta(minutes=15),
    )


EVENT = sample_event()


async def raw_connection(dsn: str) -> asyncpg.Connection:
    """A plain connection with the store's JSON codecs: payloads stay bytes, undecoded."""
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    return conn


async def _settle(dsn: str) -> None:
    """A checkpoint before each figure, so one figure's dirty pages are not another's I/O."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def _stream(category: str) -> str:
    return f"{category}-{uuid.uuid4().hex}"


# -- suite --------------------------------------------------------------------------------------


async def run(ctx: BenchContext) -> list[Row]:
    conn = await asyncpg.connect(ctx.dsn)
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {PEER_SCHEMA}")
    finally:
        await conn.close()
    rows: list[Row] = []
    async with EventStore.open(ctx.dsn) as store:
        rows += await _reads(ctx, store)
        rows += await _appends(ctx, store, writers=1)
        rows += await _appends(ctx, store, writers=8)
        rows += await _batched(ctx, store)
        rows += await _latency(ctx, store)
    return rows


_PEER = "bench.peer_eventsourcing"


def _peer_request(ctx: BenchContext, command: str, **fields: object) -> dict[str, object]:
    return {"command": command, "dsn": ctx.dsn, "schema": PEER_SCHEMA, **fields}


# -- single-event appends -----------------------------------------------------------------------


async def _appends(ctx: BenchContext, store: EventStore, *, writers: int) -> list[Row]:
    title = f"append, {writers} writer{'s' if writers > 1 else ''}"
    ctx.log(f"{title} ...")
    await _settle(ctx.dsn)
    tag, schema_version, payload = DEFAULT_REGISTRY.encode(EVENT)

    async def i3lani(seconds: float) -> Sample:
        streams = [_stream("append") for _ in range(writers)]
        versions = [0] * writers

        async def step(i: int) -> int:
            await store.append(streams[i], [EVENT], expected_version=versions[i])
            versions[i] += 1
            return 1

        return await run_tasks(seconds, writers, step)

    conns = [await raw_connection(ctx.dsn) for _ in range(writers)]
    statements = [await conn.prepare(_INSERT_ONE) for conn in conns]

    async def raw(seconds: float) -> Sample:
        streams = [_stream("raw") for _ in range(writers)]
        versions = [0] * writers

        async def step(i: int) -> int:
            versions[i] += 1
            await statements[i].fetchval(
                uuid.uuid4(), streams[i], versions[i], tag, schema_version, payload, b"{}"
            )
            return 1

        return await run_tasks(seconds, writers, step)

    # Each client appends to its own stream, versions 1, 2, ... (pgbench keeps a client's
    # variables from one transaction to the next).
    script = (
        "\\set n :n + 1\n"
        "INSERT INTO i3lani.events"
        " (event_id, stream, stream_version, type, schema_version, payload, metadata)"
        " VALUES (gen_random_uuid(), 'pgb-' || :run || '-' || :client_id, :n,"
        f" '{tag}', {schema_version}, :payload::json, '{{}}'::json);\n"
    )
    pgbench_runs: list[dict[str, object]] = []

    async def pgbench(seconds: float) -> Sample:
        assert ctx.pgbench is not None
        result = await run_pgbench(
            ctx.pgbench,
            ctx.dsn,
            script,
            seconds=max(1, round(seconds)),
            clients=writers,
            variables={"n": "0", "run": uuid.uuid4().hex, "payload": payload.decode()},
        )
        pgbench_runs.append({"tps": result.tps, "command": result.command})
        return Sample(result.tps * result.seconds, result.seconds)

    async def eventsourcing(seconds: float) -> Sample:
        request = _peer_request(ctx, "append", writers=writers, seconds=seconds, warmup=ctx.warmup)
        result = await run_peer(_PEER, request)
        return Sample(result["items"], result["seconds"])

    contenders = [
        Contender("i3lani", i3lani),
        Contender("raw asyncpg", raw),
        Contender("eventsourcing", eventsourcing, warmup=False),  # warms up in its process
    ]
    if ctx.pgbench is not None:
        contenders.append(Contender("pgbench", pgbench, warmup=False))
    try:
        totals = await interleave(ctx, title, contenders)
    finally:
        for conn in conns:
            await conn.close()

    mine = totals["i3lani"]
    many = writers > 1
    name = f"{writers} writers (group commit)" if many else "1 writer"
    unit = "appends/s"
    return [
        versus(
            _APPENDS,
            name,
            unit,
            mine,
            f"raw asyncpg INSERT, {writers} conn{'s' if many else ''}",
            totals["raw asyncpg"],
            goal=None if many else Goal.ratio_at_least(0.85),
        ),
        versus(
            _APPENDS,
            name,
            unit,
            mine,
            f"pgbench INSERT, {writers} client{'s' if many else ''}",
            totals.get("pgbench"),
            reference_unit="tx/s",
            goal=Goal.ratio_at_least(0.60) if many else None,
            details={"runs": pgbench_runs},
        ),
        versus(
            _APPENDS,
            name,
            unit,
            mine,
            f"eventsourcing, own process, {writers} thread{'s' if many else ''}",
            totals["eventsourcing"],
            goal=Goal.ratio_at_least(3.0),
        ),
    ]


# -- batched appends ----------------------------------------------------------------------------


async def _batched(ctx: BenchContext, store: EventStore) -> list[Row]:
    title = f"append {BATCH} per call"
    ctx.log(f"{title} ...")
    await _settle(ctx.dsn)
    events = [sample_event(i) for i in range(1, BATCH + 1)]
    tag, schema_version, payload = DEFAULT_REGISTRY.encode(EVENT)
    memo = f'"{EVENT.memo}"'
    assert memo in payload.decode()

    async def i3lani(seconds: float) -> Sample:
        async def step(_: int) -> int:
            await store.append(_stream("batch"), events, expected_version=NO_STREAM)
            return BATCH

        return await run_tasks(seconds, 1, step)

    def script(payload_sql: str) -> str:
        return (
            "INSERT INTO i3lani.events"
            " (event_id, stream, stream_version, type, schema_version, payload, metadata)"
            f" SELECT gen_random_uuid(), s.stream, g, '{tag}', {schema_version}, {payload_sql},"
            " '{}'::json"
            " FROM (SELECT 'pgbb-' || gen_random_uuid()::text AS stream) AS s,"
            f" generate_series(1, {BATCH}) AS g;\n"
        )

    # Like i3lani's 100 distinct events: a distinct payload per row, each parsed by the server.
    # (Casting one payload per statement and copying it into every row measured the same.)
    distinct = script(f"replace(:payload, '{memo}', '\"i3lani_' || g || '\"')::json")

    def pgbench(text: str) -> Callable[[float], Awaitable[Sample]]:
        async def run(seconds: float) -> Sample:
            assert ctx.pgbench is not None
            result = await run_pgbench(
                ctx.pgbench,
                ctx.dsn,
                text,
                seconds=max(1, round(seconds)),
                clients=1,
                variables={"payload": payload.decode()},
            )
            return Sample(result.tps * BATCH * result.seconds, result.seconds)

        return run

    contenders = [Contender("i3lani", i3lani)]
    if ctx.pgbench is not None:
        contenders.append(Contender("pgbench", pgbench(distinct), warmup=False))
    totals = await interleave(ctx, title, contenders)
    return [
        versus(
            _BATCHED,
            "1 writer",
            "events/s",
            totals["i3lani"],
            f"pgbench {BATCH}-row INSERT, 1 client",
            totals.get("pgbench"),
            reference_unit="rows/s",
            goal=Goal.ratio_at_least(0.50),
        ),
    ]


# -- reads --------------------------------------------------------------------------------------


async def _seed(ctx: BenchContext, store: EventStore) -> int:
    """``ctx.read_events`` events in streams of PAGE events, in i3lani and in the peer."""
    events = [sample_event(i) for i in range(1, PAGE + 1)]
    streams = -(-ctx.read_events // PAGE)
    ctx.log(f"seeding {streams * PAGE:,} events in i3lani and in the peer ...")
    next_stream = iter(range(streams))

    async def i3lani_writer() -> None:
        for _ in next_stream:
            await store.append(_stream("seed"), events, expected_version=NO_STREAM)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(i3lani_writer)

    seeded = await run_peer(_PEER, _peer_request(ctx, "seed", streams=streams, page=PAGE))
    return int(seeded["events"])


async def _reads(ctx: BenchContext, store: EventStore) -> list[Row]:
    peer_total = await _seed(ctx, store)
    conn = await raw_connection(ctx.dsn)
    try:
        total: int = await conn.fetchval("SELECT count(*) FROM i3lani.events")
        await _settle(ctx.dsn)
        title = "read"
        ctx.log(f"{title} of {total:,} events ...")

        async def i3lani_batches(seconds: float) -> Sample:
            done = 0
            start = time.perf_counter()
            deadline = start + seconds
            while time.perf_counter() < deadline:
                batches = store.read_batches(batch_size=PAGE)
                assert isinstance(batches, AsyncGenerator)
                async with aclosing(batches):
                    async for batch in batches:
                        done += len(batch)
                        if time.perf_counter() >= deadline:
                            break
            return Sample(done, time.perf_counter() - start)

        async def i3lani(seconds: float) -> Sample:
            done = 0
            start = time.perf_counter()
            deadline = start + seconds
            while time.perf_counter() < deadline:
                events = store.read_all(batch_size=PAGE)
                assert isinstance(events, AsyncGenerator)
                async with aclosing(events):
                    async for _ in events:
                        done += 1
                        if done % PAGE == 0 and time.perf_counter() >= deadline:
                            break
            return Sample(done, time.perf_counter() - start)

        sql = query("read_all")

        async def raw(seconds: float) -> Sample:
            done = 0
            start = time.perf_counter()
            deadline = start + seconds
            transaction_id, position = 0, 0
            while time.perf_counter() < deadline:
                records = await conn.fetch(sql, transaction_id, position, PAGE)
                done += len(records)
                if len(records) < PAGE:
                    transaction_id, position = 0, 0  # the end: from the start again
                else:
                    position, transaction_id = records[-1][0], records[-1][1]
            return Sample(done, time.perf_counter() - start)

        # The peer's cost split, per round: fetch, decode, and its raw read.
        split: dict[str, Rounds] = {"fetch": Rounds(), "decode": Rounds(), "raw": Rounds()}

        async def eventsourcing(seconds: float) -> Sample:
            request = _peer_request(ctx, "read", page=PAGE, seconds=seconds, warmup=ctx.warmup)
            result = await run_peer(_PEER, request)
            for part in split:
                split[part] = split[part].add(Sample(**result[part]))
            fetch, decode = result["fetch"], result["decode"]
            return Sample(decode["items"], fetch["seconds"] + decode["seconds"])

        totals = await interleave(
            ctx,
            title,
            [
                Contender("i3lani read_batches", i3lani_batches),
                Contender("i3lani read_all", i3lani),
                Contender("raw asyncpg", raw),
                Contender("eventsourcing", eventsourcing, warmup=False),
            ],
        )
    finally:
        await conn.close()
    section = f"event store: read from the start, {total:,} events, pages of {PAGE}"
    batches, value = totals["i3lani read_batches"], totals["i3lani read_all"]
    fetched = totals["raw asyncpg"]
    peer = "eventsourcing, own process"
    return [
        versus(
            section,
            "read_batches, typed events",
            "events/s",
            batches,
            "raw asyncpg fetch, undecoded",
            fetched,
            reference_unit="rows/s",
            goal=Goal.ratio_at_least(0.70),
        ),
        versus(
            section,
            "read_all, typed events",
            "events/s",
            value,
            "raw asyncpg fetch, undecoded",
            fetched,
            reference_unit="rows/s",
        ),
        versus(
            section,
            "read_all, typed events",
            "events/s",
            value,
            f"{peer}: fetch + same decode",
            totals["eventsourcing"],
            goal=Goal.ratio_at_least(1.2),
            details={"peer_events": peer_total},
        ),
        versus(
            section,
            "read_batches, typed events",
            "events/s",
            batches,
            f"{peer}: fetch only (its decode alone: {split['decode'].rate:,.0f}/s)",
            split["fetch"],
        ),
        versus(
            section,
            "raw asyncpg fetch, undecoded",
            "rows/s",
            fetched,
            f"{peer}: raw psycopg SELECT, undecoded",
            split["raw"],
        ),
    ]


# -- wake-up latency ----------------------------------------------------------------------------


async def _latency(ctx: BenchContext, store: EventStore) -> list[Row]:
    ctx.log("append -> subscriber latency ...")
    await _settle(ctx.dsn)
    category = f"latency{uuid.uuid4().hex[:8]}"
    stream = f"{category}-1"
    sent: dict[uuid.UUID, float] = {}
    measured: list[float] = []  # seconds, after the warm-up
    lost = 0
    measuring_from = 0.0
    producing = True
    all_delivered = anyio.Event()

    async with store.subscribe(category=category) as subscription:

        async def consume() -> None:
            async for recorded in subscription:
                now = time.perf_counter()
                began = sent.pop(recorded.event_id, None)
                if began is not None and began >= measuring_from:
                    measured.append(now - began)
                if not producing and not sent:
                    all_delivered.set()

        async def produce() -> None:
            nonlocal measuring_from
            start = time.perf_counter()
            measuring_from = start + ctx.warmup
            until = measuring_from + ctx.seconds
            tick = start
            version = 0
            while time.perf_counter() < until:
                event_id = uuid.uuid4()
                sent[event_id] = time.perf_counter()
                await store.append(
                    stream, [NewEvent(event=EVENT, event_id=event_id)], expected_version=version
                )
                version += 1
                tick += WAKE_INTERVAL
                await anyio.sleep(max(0.0, tick - time.perf_counter()))

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await produce()
            producing = False
            if not sent:
                all_delivered.set()
            with anyio.move_on_after(5):
                await all_delivered.wait()
            lost = len(sent)
            tg.cancel_scope.cancel()
        notifications = subscription.notifications

    ms = [value * 1000 for value in measured]
    details: dict[str, object] = {
        "samples": len(ms),
        "not_delivered_within_5s": lost,
        "max_ms": max(ms, default=float("nan")),
        "notifications": notifications,
    }
    # The window in ctx.rounds consecutive periods, each a round: the figure is the median of
    # the periods' percentiles, and their spread shows whether the window was steady.
    size = -(-len(ms) // ctx.rounds) if ms else 1
    periods = [ms[i : i + size] for i in range(0, len(ms), size)]
    p50s = tuple(percentile(period, 0.50) for period in periods)
    p99s = tuple(percentile(period, 0.99) for period in periods)
    details["pooled_p50_ms"] = percentile(ms, 0.50)
    details["pooled_p99_ms"] = percentile(ms, 0.99)
    rows = [
        Row(
            _LATENCY,
            f"p50 ({len(ms)} events in {len(periods)} periods)",
            median(p50s),
            "ms",
            details=details,
            rounds=p50s,
        ),
        Row(
            _LATENCY,
            f"p99 ({len(ms)} events in {len(periods)} periods)",
            median(p99s),
            "ms",
            goal=Goal.below(20, "ms"),
            details=details,
            rounds=p99s,
        ),
    ]
    if lost:
        ctx.log(f"  {lost} events were not delivered to the subscriber within 5 s")
    return rows
