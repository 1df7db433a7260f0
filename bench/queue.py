"""The task queue's figures: no-op tasks enqueued, drained (claimed, run, completed) and carried
end to end per second, beside PgQueuer (``pgqueuer`` on PyPI, its asyncpg pool driver, its own
consumer) measured in the same run, on the same database.

The two do not do the same work, and the notes say so: i3lani writes each transition of a task
as an event in its log as well (``TaskEnqueued``, ``TaskClaimed``, ``TaskSucceeded``, three rows
of ``i3lani.events`` with their six indexes), while PgQueuer writes its job row and a status row
in its ``pgqueuer_log`` table per enqueue and per completion.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from importlib import metadata
from typing import Any

import anyio
import asyncpg
import msgspec
from pgqueuer import AsyncpgPoolDriver, Job, Queries, QueueManager

from bench.measure import BenchContext, Contender, Sample, interleave, run_tasks
from bench.report import Goal, Row
from store import EventStore, NewTask, TaskContext, TaskProcessor, TaskQueue, TaskTypes

__all__ = ["NOTES", "run"]

ENQUEUE_BATCH = 100  # tasks per enqueue call in the batched figures
PRODUCERS = 8  # concurrent callers in the many-producers figure
SETTINGS = ((20, 10), (100, 50))  # (concurrency, claim batch size) of the drain figures
END_TO_END = (100, 50)  # the same for the end-to-end figure
TYPE = "bench_noop"

_PGQUEUER = metadata.version("pgqueuer")  # imported above: it is installed

NOTES = [
    f"task queue: PgQueuer {_PGQUEUER} (durable tables, as installed by Queries.install, in the "
    "benchmark database's public schema), driven through AsyncpgPoolDriver on an asyncpg pool "
    "of its own; enqueue with Queries.enqueue (a list per call for batches), consume with its "
    "QueueManager.run(batch_size=B, max_concurrent_tasks=C). i3lani: TaskQueue.add_task / "
    "add_tasks and one TaskProcessor(concurrency=C, batch_size=B) on the store's pool. Both "
    "handlers are async no-ops that count calls; payloads are a small JSON object (i3lani: a "
    "msgspec Struct, validated) or its bytes (PgQueuer).",
    "task queue, drain: N tasks queued beforehand (untimed), then the consumer is started and "
    "timed until it has run all N and returned from a graceful stop (so every outcome is "
    "recorded: i3lani's succeeded rows and events, PgQueuer's log rows). Before each figure "
    "both queues are emptied, and both queue tables and both records (i3lani's log, "
    "PgQueuer's pgqueuer_log) vacuumed; the records keep growing through the run, as in use.",
    f"task queue, enqueue: {PRODUCERS} producers are {PRODUCERS} tasks of one process, each "
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
        async with EventStore.open(ctx.dsn, node="bench") as store:
            queue = TaskQueue(store, types)
            both = _Both(ctx, store, queue, pool, peer)
            rows += await both.enqueue_single()
            rows += await both.enqueue_concurrent()
            rows += await both.enqueue_batches()
            for concurrency, batch in SETTINGS:
                rows += await both.drain(concurrency, batch)
            rows += await both.end_to_end(*END_TO_END)
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
            return await _for(seconds, lambda n: self._i3lani_add(n, 1))

        async def pgqueuer(seconds: float) -> Sample:
            return await _for(seconds, lambda n: self._peer_add(n, 1))

        totals = await interleave(
            self.ctx, title, [Contender("i3lani", i3lani), Contender("pgqueuer", pgqueuer)]
        )
        return [
            Row(
                _SECTION_ENQUEUE,
                "add_task, 1 per call, 1 producer",
                totals["i3lani"].rate,
                "tasks/s",
                "PgQueuer enqueue, 1 per call, 1 producer",
                totals["pgqueuer"].rate,
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
            return await run_tasks(seconds, PRODUCERS, lambda i: self._peer_add(i, 1))

        totals = await interleave(
            self.ctx, title, [Contender("i3lani", i3lani), Contender("pgqueuer", pgqueuer)]
        )
        return [
            Row(
                _SECTION_ENQUEUE,
                f"add_task, 1 per call, {PRODUCERS} producers",
                totals["i3lani"].rate,
                "tasks/s",
                f"PgQueuer enqueue, 1 per call, {PRODUCERS} producers",
                totals["pgqueuer"].rate,
                goal=Goal.ratio_at_least(1.0),
            )
        ]

    async def enqueue_batches(self) -> list[Row]:
        title = f"enqueue, {ENQUEUE_BATCH} tasks per call"
        self.ctx.log(f"{title} ...")
        await self.reset()

        async def i3lani(seconds: float) -> Sample:
            return await _for(seconds, lambda n: self._i3lani_add(n, ENQUEUE_BATCH))

        async def pgqueuer(seconds: float) -> Sample:
            return await _for(seconds, lambda n: self._peer_add(n, ENQUEUE_BATCH))

        totals = await interleave(
            self.ctx, title, [Contender("i3lani", i3lani), Contender("pgqueuer", pgqueuer)]
        )
        return [
            Row(
                _SECTION_ENQUEUE,
                f"add_tasks, {ENQUEUE_BATCH} per call, 1 producer",
                totals["i3lani"].rate,
                "tasks/s",
                f"PgQueuer enqueue, {ENQUEUE_BATCH} per call, 1 producer",
                totals["pgqueuer"].rate,
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

    async def _peer_add(self, first: int, count: int) -> int:
        if count == 1:
            await self.peer.enqueue(TYPE, _payload(first), 0)
        else:
            await self.peer.enqueue(
                [TYPE] * count,
                [_payload(n) for n in range(first, first + count)],
                [0] * count,
            )
        return count

    # -- drain --------------------------------------------------------------------------------
    async def drain(self, concurrency: int, batch: int) -> list[Row]:
        tasks = 5_000 if self.ctx.quick else 20_000
        title = f"drain {tasks:,} tasks, concurrency {concurrency}, batches of {batch}"
        self.ctx.log(f"{title} ...")
        totals = {"i3lani": Sample(0, 0), "pgqueuer": Sample(0, 0)}
        contenders: dict[str, Callable[[int], Awaitable[Sample]]] = {
            "i3lani": lambda n: self._i3lani_drain(n, concurrency, batch),
            "pgqueuer": lambda n: self._peer_drain(n, concurrency, batch),
        }
        for round_no in range(self.ctx.rounds):
            order = list(contenders) if round_no % 2 == 0 else list(reversed(contenders))
            for name in order:
                if round_no == 0 and self.ctx.warmup > 0:
                    await self.reset()
                    await contenders[name](max(200, tasks // 20))
                await self.reset()
                sample = await contenders[name](tasks)
                totals[name] += sample
                self.ctx.log(
                    f"  {title}: {name}: {sample.rate:,.0f}/s (round {round_no + 1}/"
                    f"{self.ctx.rounds})"
                )
        return [
            Row(
                f"task queue: drain {tasks:,} queued no-op tasks, 1 consumer",
                f"concurrency {concurrency}, batches of {batch}",
                totals["i3lani"].rate,
                "tasks/s",
                "PgQueuer QueueManager, same C and B",
                totals["pgqueuer"].rate,
                goal=Goal.ratio_at_least(1.0),
            )
        ]

    async def _seed_i3lani(self, tasks: int) -> None:
        for first in range(0, tasks, ENQUEUE_BATCH):
            await self._i3lani_add(first, min(ENQUEUE_BATCH, tasks - first))

    async def _seed_peer(self, tasks: int) -> None:
        for first in range(0, tasks, ENQUEUE_BATCH):
            await self._peer_add(first, min(ENQUEUE_BATCH, tasks - first))

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

    async def _peer_drain(self, tasks: int, concurrency: int, batch: int) -> Sample:
        await self._seed_peer(tasks)
        manager = QueueManager(self.peer)
        done = 0

        @manager.entrypoint(TYPE)
        async def handle(job: Job) -> None:
            nonlocal done
            done += 1
            if done == tasks:
                manager.shutdown.set()

        started = time.perf_counter()
        await manager.run(
            batch_size=batch,
            max_concurrent_tasks=concurrency,
            dequeue_timeout=timedelta(seconds=2),
        )
        elapsed = time.perf_counter() - started
        left = await self.pool.fetchval("SELECT count(*) FROM pgqueuer")
        assert done == tasks, done
        assert left == 0, left
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
                    sample, added = await _through(through, lambda: done, self._i3lani_add)
                else:
                    sample, added = await _measure(seconds, lambda: done, self._i3lani_add)
                processor.stop()
            produced["i3lani"].append(added / sample.seconds)
            return sample

        async def pgqueuer(seconds: float) -> Sample:
            await self.reset()
            manager = QueueManager(self.peer)
            done = 0

            @manager.entrypoint(TYPE)
            async def handle(job: Job) -> None:
                nonlocal done
                done += 1

            result: list[tuple[Sample, int]] = []

            async def measure() -> None:
                await anyio.sleep(0.1)  # its start-up: schema checks, LISTEN
                if through is not None:
                    result.append(await _through(through, lambda: done, self._peer_add))
                else:
                    result.append(await _measure(seconds, lambda: done, self._peer_add))
                manager.shutdown.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(measure)
                await manager.run(
                    batch_size=batch,
                    max_concurrent_tasks=concurrency,
                    dequeue_timeout=timedelta(seconds=2),
                )
            [(sample, added)] = result
            produced["pgqueuer"].append(added / sample.seconds)
            return sample

        details: dict[str, Any] = {"producer_tasks_per_s": produced}
        # The goal figure: N tasks enqueued, claimed and completed, producer and consumer at
        # once, timed until the last one has run (what a task costs the database, all told).
        through: int | None = 5_000 if self.ctx.quick else 20_000
        totals = await interleave(
            self.ctx,
            f"{title}, {through:,} tasks through",
            [Contender("i3lani", i3lani), Contender("pgqueuer", pgqueuer)],
        )
        # Information: how fast the consumer runs while a producer outruns it for the whole
        # measurement (the queue grows without bound; the producer's cost competes).
        through = None
        flooded = await interleave(
            self.ctx,
            f"{title}, producer flooding",
            [Contender("i3lani", i3lani), Contender("pgqueuer", pgqueuer)],
        )
        return [
            Row(
                "task queue: end to end, 1 producer (batches of "
                f"{ENQUEUE_BATCH}) and 1 consumer at once",
                f"N tasks enqueued, claimed and completed, C {concurrency}, B {batch}",
                totals["i3lani"].rate,
                "tasks/s",
                "PgQueuer, same N, C and B",
                totals["pgqueuer"].rate,
                goal=Goal.ratio_at_least(1.0),
                details=details,
            ),
            Row(
                "task queue: end to end, 1 producer (batches of "
                f"{ENQUEUE_BATCH}) and 1 consumer at once",
                f"consumer rate while the producer floods, C {concurrency}, B {batch}",
                flooded["i3lani"].rate,
                "tasks/s",
                "PgQueuer, same C and B",
                flooded["pgqueuer"].rate,
                details=details,
            ),
        ]


_SECTION_ENQUEUE = "task queue: enqueue no-op tasks"


def _payload(n: int) -> bytes:
    return b'{"n":%d}' % n


async def _for(seconds: float, step: Callable[[int], Awaitable[int]]) -> Sample:
    """Call ``step(first)`` (which adds tasks numbered from ``first`` and says how many) until
    ``seconds`` have passed."""
    done = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        done += await step(done)
    return Sample(done, time.perf_counter() - started)


async def _through(
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


async def _measure(
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
