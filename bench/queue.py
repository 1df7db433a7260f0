"""The task queue's figures: no-op tasks enqueued, drained (claimed, run, completed) and carried
end to end per second, beside PgQueuer (``pgqueuer`` on PyPI, its asyncpg pool driver, its own
consumer) measured in the same run, on the same database.

The two do not do the same work, and the notes say so: i3lani writes each transition of a task
as an event in its log as well (``TaskEnqueued``, ``TaskClaimed``, ``TaskSucceeded``, three rows
of ``i3lani.events`` with their six indexes), while PgQueuer writes its job row and a status row
in its ``pgqueuer_log`` table per enqueue and per completion.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import anyio
import asyncpg
import msgspec
from pgqueuer import AsyncpgPoolDriver, Queries

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
from bench.peers import DBOS_RUNNER, dbos_database, run_peer
from bench.report import Goal, Row, median
from store import EventStore, NewTask, TaskContext, TaskProcessor, TaskQueue, TaskTypes

__all__ = [
    "ENQUEUE_BATCH",
    "NOTES",
    "TYPE",
    "add_for",
    "job_payload",
    "produce_for",
    "produce_through",
    "run",
]

ENQUEUE_BATCH = 100  # tasks per enqueue call in the batched figures
PRODUCERS = 8  # concurrent callers in the many-producers figure
SETTINGS = ((20, 10), (100, 50))  # (concurrency, claim batch size) of the drain figures
END_TO_END = (100, 50)  # the same for the end-to-end figure
TYPE = "bench_noop"
DBOS_POLLS = (1.0, 0.05)  # DBOS queue polling intervals: its default, and a short one
DBOS_THROUGH = 1_000  # workflows through DBOS per round (200 with --quick): it is slow
LATENCY_SAMPLES = 10  # enqueue -> start samples per round and contender (4 with --quick)

_PGQUEUER = metadata.version("pgqueuer")  # imported above: it is installed
_PGQUEUER_RUNNER = "bench.peer_pgqueuer"
_DBOS = metadata.version("dbos")

NOTES = [
    f"task queue: PgQueuer {_PGQUEUER} (durable tables, as installed by Queries.install, in "
    "the benchmark database's public schema), run as its users run it: in a process of its "
    "own, one per round (bench/peer_pgqueuer.py, warmed up in it), through AsyncpgPoolDriver "
    "on an asyncpg pool of its own; enqueue with Queries.enqueue (a list per call for "
    "batches), consume with its QueueManager.run(batch_size=B, max_concurrent_tasks=C). "
    "i3lani: TaskQueue.add_task / add_tasks and one TaskProcessor(concurrency=C, "
    "batch_size=B) on the store's pool. Both handlers are async no-ops that count calls; "
    "payloads are a small JSON object (i3lani: a msgspec Struct, validated) or its bytes "
    "(PgQueuer).",
    "task queue, drain: N tasks queued beforehand (untimed), then the consumer is started and "
    "timed until it has run all N and returned from a graceful stop (so every outcome is "
    "recorded: i3lani's succeeded rows and events, PgQueuer's log rows). Before each round "
    "both queues are emptied, and both queue tables and both records (i3lani's log, "
    "PgQueuer's pgqueuer_log) vacuumed; the records keep growing through the run, as in use.",
    f"task queue, enqueue: {PRODUCERS} producers are {PRODUCERS} tasks of one process (the "
    "benchmark's for i3lani, its own for PgQueuer), each "
    "adding one task per call, on the store's pool (i3lani; concurrent add_task calls outside "
    "a transaction share statements, as the store's appends do) or PgQueuer's pool driver. "
    "PgQueuer NOTIFYs from a trigger inside every enqueueing transaction, which serialises "
    "concurrent commits on PostgreSQL's notify lock; i3lani notifies just after the commit, "
    "from a connection of its own.",
    "task queue, end to end: one producer adding batches of "
    f"{ENQUEUE_BATCH} and one consumer (C, B as given) running at once. The goal figure: N "
    "tasks (20,000; 5,000 with --quick) enqueued, claimed and completed, timed from the first "
    "enqueue until the consumer has run the last one. For information: the consumer's rate "
    "while the producer adds batches as fast as it can for the whole measurement time (it "
    "outruns both consumers, so the queue grows without bound and the producer's writes "
    "compete with the consumer's); the producer's rates are in the JSON.",
    f"task queue, DBOS {_DBOS}: run as its users run it, in a process of its own per round "
    "(bench/peer_dbos.py): DBOSConfig with its name and its system database on the same "
    "server (a database of its own), DBOS.launch(), a queue registered with "
    f"worker_concurrency={END_TO_END[0]}, no-op async workflows enqueued one at a time with "
    "enqueue_async (it has no batch enqueue), at its default polling interval (1 s) and at "
    f"0.05 s. End to end: {DBOS_THROUGH:,} workflows (200 with --quick) from the first "
    "enqueue until the last has run, after 50 untimed; i3lani's figure is its 20,000 tasks "
    "through, same concurrency.",
    "task queue, enqueue -> start: one task at a time, each after a random pause of up to 1 s "
    "(an enqueue falls anywhere in a poller's period, as a user's does), timed from just "
    "before add_task / enqueue_async to the handler's first line, in the same process; "
    f"i3lani: an idle TaskProcessor (C {END_TO_END[0]}, B {END_TO_END[1]}, woken by its "
    f"NOTIFY). {LATENCY_SAMPLES} samples per round (4 with --quick); each round's p50, and "
    "the median of the rounds.",
    "task queue, what each writes per task: i3lani a task row (inserted, claimed, completed) "
    "and three events in its log (TaskEnqueued, TaskClaimed, TaskSucceeded); PgQueuer a job "
    "row (inserted, picked, deleted) and two rows in pgqueuer_log (queued, successful).",
]


class Noop(msgspec.Struct, frozen=True):
    n: int


# -- suite ------------------------------------------------------------------------------------


async def run(ctx: BenchContext) -> list[Row]:
    pool = await asyncpg.create_pool(ctx.dsn, min_size=2, max_size=PRODUCERS + 2)
    assert pool is not None
    try:
        peer = Queries(AsyncpgPoolDriver(pool))
        if not await peer.schema_is_installed():
            await peer.install()
        types = TaskTypes()
        types.register(TYPE, Noop)
        rows: list[Row] = []
        async with (
            EventStore.open(ctx.dsn, node="bench") as store,
            dbos_database(ctx.dsn) as dbos_url,
        ):
            queue = TaskQueue(store, types)
            both = _Both(ctx, store, queue, pool, peer, dbos_url)
            rows += await both.enqueue_single()
            rows += await both.enqueue_concurrent()
            rows += await both.enqueue_batches()
            for concurrency, batch in SETTINGS:
                rows += await both.drain(concurrency, batch)
            rows += await both.end_to_end(*END_TO_END)
            rows += await both.start_latency(*END_TO_END)
        return rows
    finally:
        await pool.close()


@dataclass
class _Both:
    ctx: BenchContext
    store: EventStore
    queue: TaskQueue
    pool: asyncpg.Pool
    peer: Queries
    dbos_url: str  # DBOS's system database
    produced: list[float] = field(default_factory=list)  # where PgQueuer's producer rates go

    async def reset(self) -> None:
        """Empty both queues and settle both databases' state before a figure: each side's
        record (i3lani's log, PgQueuer's log table) stays and keeps growing, as in use, but is
        vacuumed now, so that autovacuum catching up with the last figure's inserts does not
        land in the middle of the next one (it would, on the log: it takes seconds there); a
        checkpoint so one figure's dirty pages are not the next one's I/O."""
        await self.peer.clear_queue()
        async with self.pool.acquire() as conn:
            await conn.execute("TRUNCATE i3lani.tasks")
            for table in ("i3lani.tasks", "i3lani.events", "pgqueuer", "pgqueuer_log"):
                await conn.execute(f"VACUUM ANALYZE {table}")
            await conn.execute("CHECKPOINT")

    # -- enqueue ------------------------------------------------------------------------------
    async def enqueue_single(self) -> list[Row]:
        title = "enqueue, 1 task per call"
        self.ctx.log(f"{title} ...")
        await self.reset()

        async def i3lani(seconds: float) -> Sample:
            return await add_for(seconds, lambda n: self._i3lani_add(n, 1))

        async def pgqueuer(seconds: float) -> Sample:
            return await self._peer_enqueue(seconds, 1, 1)

        totals = await interleave(
            self.ctx, title, [Contender("i3lani", i3lani), Contender("pgqueuer", pgqueuer)]
        )
        return [
            versus(
                _SECTION_ENQUEUE,
                "add_task, 1 per call, 1 producer",
                "tasks/s",
                totals["i3lani"],
                "PgQueuer enqueue, 1 per call, 1 producer",
                totals["pgqueuer"],
                goal=Goal.ratio_at_least(1.0),
            )
        ]

    async def enqueue_concurrent(self) -> list[Row]:
        title = f"enqueue, {PRODUCERS} producers, 1 task per call"
        self.ctx.log(f"{title} ...")
        await self.reset()

        async def i3lani(seconds: float) -> Sample:
            return await run_tasks(seconds, PRODUCERS, lambda i: self._i3lani_add(i, 1))

        async def pgqueuer(seconds: float) -> Sample:
            return await self._peer_enqueue(seconds, PRODUCERS, 1)

        totals = await interleave(
            self.ctx, title, [Contender("i3lani", i3lani), Contender("pgqueuer", pgqueuer)]
        )
        return [
            versus(
                _SECTION_ENQUEUE,
                f"add_task, 1 per call, {PRODUCERS} producers",
                "tasks/s",
                totals["i3lani"],
                f"PgQueuer enqueue, 1 per call, {PRODUCERS} producers",
                totals["pgqueuer"],
                goal=Goal.ratio_at_least(1.0),
            )
        ]

    async def enqueue_batches(self) -> list[Row]:
        title = f"enqueue, {ENQUEUE_BATCH} tasks per call"
        self.ctx.log(f"{title} ...")
        await self.reset()

        async def i3lani(seconds: float) -> Sample:
            return await add_for(seconds, lambda n: self._i3lani_add(n, ENQUEUE_BATCH))

        async def pgqueuer(seconds: float) -> Sample:
            return await self._peer_enqueue(seconds, 1, ENQUEUE_BATCH)

        totals = await interleave(
            self.ctx, title, [Contender("i3lani", i3lani), Contender("pgqueuer", pgqueuer)]
        )
        return [
            versus(
                _SECTION_ENQUEUE,
                f"add_tasks, {ENQUEUE_BATCH} per call, 1 producer",
                "tasks/s",
                totals["i3lani"],
                f"PgQueuer enqueue, {ENQUEUE_BATCH} per call, 1 producer",
                totals["pgqueuer"],
                goal=Goal.ratio_at_least(1.0),
            )
        ]

    async def _i3lani_add(self, first: int, count: int) -> int:
        if count == 1:
            await self.queue.add_task(TYPE, Noop(first))
        else:
            await self.queue.add_tasks(
                [NewTask(TYPE, Noop(n)) for n in range(first, first + count)]
            )
        return count

    async def _pgqueuer(self, command: str, **fields: object) -> Sample:
        """One round of PgQueuer, in a process of its own (bench/peer_pgqueuer.py)."""
        result = await run_peer(
            _PGQUEUER_RUNNER, {"command": command, "dsn": self.ctx.dsn, **fields}
        )
        if "produced" in result:
            self.produced.append(result["produced"] / result["seconds"])
        return Sample(result["items"], result["seconds"])

    async def _peer_enqueue(self, seconds: float, producers: int, per_call: int) -> Sample:
        return await self._pgqueuer(
            "enqueue",
            seconds=seconds,
            warmup=self.ctx.warmup,
            producers=producers,
            per_call=per_call,
        )

    # -- drain --------------------------------------------------------------------------------
    async def drain(self, concurrency: int, batch: int) -> list[Row]:
        tasks = 5_000 if self.ctx.quick else 20_000
        title = f"drain {tasks:,} tasks, concurrency {concurrency}, batches of {batch}"
        self.ctx.log(f"{title} ...")
        totals = {"i3lani": Rounds(), "pgqueuer": Rounds()}
        contenders: dict[str, Callable[[int], Awaitable[Sample]]] = {
            "i3lani": lambda n: self._i3lani_drain(n, concurrency, batch),
            "pgqueuer": lambda n: self._pgqueuer(
                "drain",
                tasks=n,
                warmup_tasks=max(200, tasks // 20) if self.ctx.warmup > 0 else 0,
                concurrency=concurrency,
                batch=batch,
            ),
        }
        for round_no in range(self.ctx.rounds):
            order = list(contenders) if round_no % 2 == 0 else list(reversed(contenders))
            for name in order:
                if round_no == 0 and self.ctx.warmup > 0 and name == "i3lani":
                    # (PgQueuer warms up in its process, every round: each is a new one.)
                    await self.reset()
                    await contenders[name](max(200, tasks // 20))
                await self.reset()
                sample = await contenders[name](tasks)
                totals[name] = totals[name].add(sample)
                self.ctx.log(
                    f"  {title}: {name}: {sample.rate:,.0f}/s (round {round_no + 1}/"
                    f"{self.ctx.rounds})"
                )
        return [
            versus(
                f"task queue: drain {tasks:,} queued no-op tasks, 1 consumer",
                f"concurrency {concurrency}, batches of {batch}",
                "tasks/s",
                totals["i3lani"],
                "PgQueuer QueueManager, same C and B",
                totals["pgqueuer"],
                goal=Goal.ratio_at_least(1.0),
            )
        ]

    async def _seed_i3lani(self, tasks: int) -> None:
        for first in range(0, tasks, ENQUEUE_BATCH):
            await self._i3lani_add(first, min(ENQUEUE_BATCH, tasks - first))

    async def _i3lani_drain(self, tasks: int, concurrency: int, batch: int) -> Sample:
        await self._seed_i3lani(tasks)
        processor = self._processor(concurrency, batch)
        done = 0

        async def handle(payload: Noop, context: TaskContext) -> None:
            nonlocal done
            done += 1
            if done == tasks:
                processor.stop()

        processor.register_handler(TYPE, handle)
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            await tg.start(processor.run)
        elapsed = time.perf_counter() - started
        stats = processor.statistics()
        assert stats.succeeded == tasks, stats
        return Sample(tasks, elapsed)

    def _processor(self, concurrency: int, batch: int) -> TaskProcessor:
        return TaskProcessor(self.queue, node="bench", concurrency=concurrency, batch_size=batch)

    # -- end to end ---------------------------------------------------------------------------
    async def end_to_end(self, concurrency: int, batch: int) -> list[Row]:
        title = f"end to end, concurrency {concurrency}, batches of {batch}"
        self.ctx.log(f"{title} ...")
        produced: dict[str, list[float]] = {"i3lani": [], "pgqueuer": []}

        async def i3lani(seconds: float) -> Sample:
            await self.reset()
            processor = self._processor(concurrency, batch)
            done = 0

            async def handle(payload: Noop, context: TaskContext) -> None:
                nonlocal done
                done += 1

            processor.register_handler(TYPE, handle)
            async with anyio.create_task_group() as tg:
                await tg.start(processor.run)
                if through is not None:
                    sample, added = await produce_through(through, lambda: done, self._i3lani_add)
                else:
                    sample, added = await produce_for(seconds, lambda: done, self._i3lani_add)
                processor.stop()
            produced["i3lani"].append(added / sample.seconds)
            return sample

        async def pgqueuer(seconds: float) -> Sample:
            await self.reset()
            self.produced = produced["pgqueuer"]
            if through is not None:
                return await self._pgqueuer(
                    "through", tasks=through, concurrency=concurrency, batch=batch
                )
            return await self._pgqueuer(
                "flood", seconds=seconds, concurrency=concurrency, batch=batch
            )

        dbos_tasks = 200 if self.ctx.quick else DBOS_THROUGH

        def dbos(poll: float) -> Contender:
            async def run(seconds: float) -> Sample:
                request = {
                    "command": "through",
                    "system_database_url": self.dbos_url,
                    "tasks": dbos_tasks,
                    "warmup": 50,
                    "concurrency": concurrency,
                    "poll": poll,
                }
                result = await run_peer(DBOS_RUNNER, request)
                return Sample(result["items"], result["seconds"])

            return Contender(f"dbos, poll {poll:g} s", run, warmup=False)

        details: dict[str, Any] = {"producer_tasks_per_s": produced}
        # The goal figure: N tasks enqueued, claimed and completed, producer and consumer at
        # once, timed until the last one has run (what a task costs the database, all told).
        through: int | None = 5_000 if self.ctx.quick else 20_000
        totals = await interleave(
            self.ctx,
            f"{title}, {through:,} tasks through",
            [
                Contender("i3lani", i3lani),
                Contender("pgqueuer", pgqueuer),
                *(dbos(poll) for poll in DBOS_POLLS),
            ],
        )
        # Information: how fast the consumer runs while a producer outruns it for the whole
        # measurement (the queue grows without bound; the producer's cost competes).
        through = None
        flooded = await interleave(
            self.ctx,
            f"{title}, producer flooding",
            [Contender("i3lani", i3lani), Contender("pgqueuer", pgqueuer)],
        )
        section = _SECTION_END_TO_END
        name = f"N tasks enqueued, claimed and completed, C {concurrency}, B {batch}"
        return [
            versus(
                section,
                name,
                "tasks/s",
                totals["i3lani"],
                "PgQueuer, same N, C and B",
                totals["pgqueuer"],
                goal=Goal.ratio_at_least(1.0),
                details=details,
            ),
            *(
                versus(
                    section,
                    name,
                    "tasks/s",
                    totals["i3lani"],
                    f"DBOS, {dbos_tasks:,} enqueued one by one, worker concurrency "
                    f"{concurrency}, poll {poll:g} s",
                    totals[f"dbos, poll {poll:g} s"],
                    goal=Goal.ratio_at_least(20.0) if poll == DBOS_POLLS[0] else None,
                )
                for poll in DBOS_POLLS
            ),
            versus(
                section,
                f"consumer rate while the producer floods, C {concurrency}, B {batch}",
                "tasks/s",
                flooded["i3lani"],
                "PgQueuer, same C and B",
                flooded["pgqueuer"],
                details=details,
            ),
        ]

    # -- enqueue -> start -----------------------------------------------------------------
    async def start_latency(self, concurrency: int, batch: int) -> list[Row]:
        """Each round: per contender, the p50 of ``samples`` enqueue -> handler start times
        (ms), one task at a time, after random pauses."""
        samples = 4 if self.ctx.quick else LATENCY_SAMPLES
        title = "enqueue -> start, one task at a time"
        self.ctx.log(f"{title} ...")
        await self.reset()
        processor = self._processor(concurrency, batch)
        started: dict[int, float] = {}
        arrived = anyio.Event()

        async def handle(payload: Noop, context: TaskContext) -> None:
            started[payload.n] = time.perf_counter()
            arrived.set()

        processor.register_handler(TYPE, handle)
        pauses = random.Random(17)
        serial = 0

        async def i3lani() -> list[float]:
            nonlocal arrived, serial
            latencies: list[float] = []
            for _ in range(samples):
                await anyio.sleep(pauses.uniform(0, 1.0))
                serial += 1
                arrived = anyio.Event()
                began = time.perf_counter()
                await self.queue.add_task(TYPE, Noop(serial))
                with anyio.fail_after(30):
                    await arrived.wait()
                latencies.append((started[serial] - began) * 1000)
            return latencies

        def dbos(poll: float) -> Callable[[], Awaitable[list[float]]]:
            async def run() -> list[float]:
                request = {
                    "command": "latency",
                    "system_database_url": self.dbos_url,
                    "samples": samples,
                    "concurrency": concurrency,
                    "poll": poll,
                    "seed": pauses.randrange(1 << 30),
                }
                result = await run_peer(DBOS_RUNNER, request)
                return list(result["latencies_ms"])

            return run

        contenders: dict[str, Callable[[], Awaitable[list[float]]]] = {
            "i3lani": i3lani,
            **{f"dbos, poll {poll:g} s": dbos(poll) for poll in DBOS_POLLS},
        }
        p50s: dict[str, list[float]] = {name: [] for name in contenders}
        everything: dict[str, list[float]] = {name: [] for name in contenders}
        async with anyio.create_task_group() as tg:
            await tg.start(processor.run)
            for round_no in range(self.ctx.rounds):
                order = list(contenders) if round_no % 2 == 0 else list(reversed(contenders))
                for name in order:
                    latencies = await contenders[name]()
                    p50s[name].append(percentile(latencies, 0.5))
                    everything[name] += latencies
                    self.ctx.log(
                        f"  {title}: {name}: p50 {p50s[name][-1]:.1f} ms (round "
                        f"{round_no + 1}/{self.ctx.rounds})"
                    )
            processor.stop()
        mine = tuple(p50s["i3lani"])
        return [
            Row(
                f"task queue: enqueue -> handler start, one task at a time, {samples} per round",
                f"add_task -> handler, p50, idle TaskProcessor C {concurrency}",
                median(mine),
                "ms",
                f"DBOS enqueue_async -> workflow, p50, poll {poll:g} s"
                + (" (its default)" if poll == DBOS_POLLS[0] else ""),
                median(p50s[f"dbos, poll {poll:g} s"]),
                goal=Goal.ratio_at_most(0.1) if poll == DBOS_POLLS[0] else None,
                rounds=mine,
                reference_rounds=tuple(p50s[f"dbos, poll {poll:g} s"]),
                details={"latencies_ms": everything},
            )
            for poll in DBOS_POLLS
        ]


_SECTION_ENQUEUE = "task queue: enqueue no-op tasks"
_SECTION_END_TO_END = (
    f"task queue: end to end, 1 producer (batches of {ENQUEUE_BATCH}) and 1 consumer at once"
)


def job_payload(n: int) -> bytes:
    """PgQueuer's job payload for task ``n``."""
    return b'{"n":%d}' % n


async def add_for(seconds: float, step: Callable[[int], Awaitable[int]]) -> Sample:
    """Call ``step(first)`` (which adds tasks numbered from ``first`` and says how many) until
    ``seconds`` have passed."""
    done = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        done += await step(done)
    return Sample(done, time.perf_counter() - started)


async def produce_through(
    tasks: int,
    completed: Callable[[], int],
    add: Callable[[int, int], Awaitable[int]],
) -> tuple[Sample, int]:
    """Produce ``tasks`` in batches while a consumer runs, and time until the consumer has run
    them all; (that sample, tasks produced)."""
    before = completed()
    started = time.perf_counter()
    added = 0
    while added < tasks:
        added += await add(added, min(ENQUEUE_BATCH, tasks - added))
    for _ in range(600_000):  # polled every millisecond, for at most ten minutes
        if completed() - before >= tasks:
            return Sample(tasks, time.perf_counter() - started), added
        await anyio.sleep(0.001)
    raise RuntimeError(f"the consumer ran {completed() - before} of {tasks} tasks in 10 minutes")


async def produce_for(
    seconds: float,
    completed: Callable[[], int],
    add: Callable[[int, int], Awaitable[int]],
) -> tuple[Sample, int]:
    """Produce batches for ``seconds`` while a consumer runs; (tasks the consumer ran in that
    time, tasks produced)."""
    added = 0
    before = completed()
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        added += await add(added, ENQUEUE_BATCH)
    elapsed = time.perf_counter() - started
    return Sample(completed() - before, elapsed), added
