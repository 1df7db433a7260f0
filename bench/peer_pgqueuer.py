"""PgQueuer as its users run it: a process of its own, its asyncpg pool driver on a pool of its
own, its ``QueueManager`` consuming. The benchmark empties and vacuums both queues, then starts
it once per round::

    python -m bench.peer_pgqueuer '{"command": "drain", "dsn": ..., ...}'

and reads the JSON object it prints last on stdout (:func:`bench.peers.run_peer`). Every
command answers ``{"items": n, "seconds": s}`` (``through`` and ``flood`` add ``"produced"``,
the tasks the producer added):

* ``enqueue``: ``producers`` tasks of the process enqueue ``per_call`` jobs per call for
  ``warmup`` then ``seconds``;
* ``drain``: ``warmup_tasks`` queued and drained (untimed), then ``tasks`` queued (untimed) and
  drained by a ``QueueManager(batch_size=B, max_concurrent_tasks=C)``, timed from its start
  until it has run them all and returned from its shutdown;
* ``through``: the manager running, ``tasks`` enqueued in batches, timed until it has run them;
* ``flood``: the manager running while batches are enqueued as fast as they go for
  ``seconds``: the jobs it ran meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import anyio
import asyncpg
from pgqueuer import AsyncpgPoolDriver, Job, Queries, QueueManager

from bench.measure import Sample, run_tasks
from bench.peers import answer, read_request
from bench.queue import ENQUEUE_BATCH, TYPE, add_for, job_payload, produce_for, produce_through

__all__ = ["main"]


def _sample(sample: Sample, **extra: float) -> dict[str, Any]:
    return {"items": sample.items, "seconds": sample.seconds, **extra}


async def _consume(manager: QueueManager, request: dict[str, Any]) -> None:
    """Run the manager (B, C as requested) until its shutdown is set."""
    await manager.run(
        batch_size=int(request["batch"]),
        max_concurrent_tasks=int(request["concurrency"]),
        dequeue_timeout=timedelta(seconds=2),
    )


class _Peer:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.queries = Queries(AsyncpgPoolDriver(pool))

    async def add(self, first: int, count: int) -> int:
        if count == 1:
            await self.queries.enqueue(TYPE, job_payload(first), 0)
        else:
            await self.queries.enqueue(
                [TYPE] * count, [job_payload(n) for n in range(first, first + count)], [0] * count
            )
        return count

    def _manager(self, *, stop_at: int | None) -> tuple[QueueManager, Callable[[], int]]:
        """A manager running no-op jobs, with the count of jobs run; it shuts down after
        ``stop_at`` of them when given."""
        manager = QueueManager(self.queries)
        done = 0

        @manager.entrypoint(TYPE)
        async def handle(job: Job) -> None:
            nonlocal done
            done += 1
            if done == stop_at:
                manager.shutdown.set()

        return manager, lambda: done

    async def enqueue(self, request: dict[str, Any]) -> dict[str, Any]:
        producers, per_call = int(request["producers"]), int(request["per_call"])

        async def timed(seconds: float) -> Sample:
            if producers == 1:
                return await add_for(seconds, lambda n: self.add(n, per_call))
            return await run_tasks(seconds, producers, lambda i: self.add(i, per_call))

        if request["warmup"] > 0:
            await timed(float(request["warmup"]))
        return _sample(await timed(float(request["seconds"])))

    async def drain(self, request: dict[str, Any]) -> dict[str, Any]:
        warmup = int(request.get("warmup_tasks", 0))
        if warmup:
            await self._drain(warmup, request)
        return _sample(await self._drain(int(request["tasks"]), request))

    async def _drain(self, tasks: int, request: dict[str, Any]) -> Sample:
        for first in range(0, tasks, ENQUEUE_BATCH):
            await self.add(first, min(ENQUEUE_BATCH, tasks - first))
        manager, done = self._manager(stop_at=tasks)
        started = time.perf_counter()
        await _consume(manager, request)
        elapsed = time.perf_counter() - started
        left = await self.pool.fetchval("SELECT count(*) FROM pgqueuer")
        if done() != tasks or left != 0:
            raise RuntimeError(f"PgQueuer ran {done()} of {tasks} jobs, {left} left in its table")
        return Sample(tasks, elapsed)

    async def consume_while(self, request: dict[str, Any]) -> dict[str, Any]:
        """``through`` or ``flood``: a producer while the manager consumes."""
        manager, done = self._manager(stop_at=None)
        result: list[tuple[Sample, int]] = []

        async def measure() -> None:
            await anyio.sleep(0.1)  # its start-up: schema checks, LISTEN
            if request["command"] == "through":
                result.append(await produce_through(int(request["tasks"]), done, self.add))
            else:
                result.append(await produce_for(float(request["seconds"]), done, self.add))
            manager.shutdown.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(measure)
            await _consume(manager, request)
        [(sample, added)] = result
        return _sample(sample, produced=added)


async def _main(request: dict[str, Any]) -> dict[str, Any]:
    pool = await asyncpg.create_pool(
        request["dsn"], min_size=2, max_size=int(request.get("producers", 1)) + 2
    )
    assert pool is not None
    try:
        peer = _Peer(pool)
        command = request["command"]
        if command == "enqueue":
            return await peer.enqueue(request)
        if command == "drain":
            return await peer.drain(request)
        return await peer.consume_while(request)
    finally:
        await pool.close()


def main() -> None:
    request = read_request()
    answer(anyio.run(_main, request))


if __name__ == "__main__":
    main()
