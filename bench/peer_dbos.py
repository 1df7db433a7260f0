"""DBOS (``dbos`` on PyPI: durable workflows and queues on PostgreSQL) as its users run it: a
process of its own, its documented configuration (an application name and its system
database on the benchmark's PostgreSQL server), a queue registered with a concurrency, no-op
async workflows, ``DBOS.launch()``. The benchmark starts it once per round::

    python -m bench.peer_dbos '{"command": "through", "system_database_url": ..., ...}'

and reads the JSON object it prints last on stdout (:func:`bench.peers.run_peer`). Commands:

* ``through``: ``tasks`` workflows enqueued one at a time (``enqueue_async``) on a queue of
  ``concurrency`` per worker polled every ``poll`` seconds, timed from the first enqueue until
  the last has run (after ``warmup`` tasks the same way, untimed): ``{"items", "seconds"}``;
* ``latency``: ``samples`` workflows enqueued one at a time, each after a random pause of up
  to a second (so that enqueues fall anywhere in the queue's polling period, as a user's do),
  each timed from just before ``enqueue_async`` to the workflow's first line:
  ``{"latencies_ms": [...]}``;
* ``recovery``: with ``"phase": "start"``, starts a workflow whose first step completes and
  whose second prints ``READY`` and waits forever (the benchmark SIGKILLs the process then);
  with ``"phase": "resume"``, launches, which recovers the pending workflow: its second step,
  run again, prints ``RESUMED`` and the process exits once the workflow has finished.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import anyio
from dbos import DBOS, DBOSConfig, Queue, WorkflowHandleAsync

from bench.peers import answer, read_request

__all__ = ["main"]

APPLICATION = "i3lani_bench_peer"
QUEUE = "bench"

_RUN = uuid.uuid4().hex  # this process's tasks; a workflow of an earlier process is not one
_started: dict[int, float] = {}  # task number -> perf_counter when its workflow began
_done = 0
_target = 0  # _all_done is set once _done reaches it
_all_done = anyio.Event()
_phase = ""


@DBOS.workflow()
async def noop(run: str, n: int) -> None:
    """The no-op task: it notes when it began (latency) and that it ran (throughput). A
    workflow an earlier process enqueued and had not recorded as finished when it exited is
    recovered by this one (same executor, same code): it runs, but is not counted."""
    global _done
    if run != _RUN:
        return
    _started[n] = time.perf_counter()
    _done += 1
    if _done >= _target:
        _all_done.set()


@DBOS.step()
async def first_step() -> int:
    return 1


@DBOS.step()
async def second_step() -> int:
    if _phase == "start":
        print("READY", flush=True)
        await anyio.sleep(3600)  # killed here
    print("RESUMED", flush=True)
    _all_done.set()
    return 2


@DBOS.workflow()
async def pending() -> int:
    """A workflow caught by a SIGKILL between its two steps."""
    return await first_step() + await second_step()


def _launch(request: dict[str, Any]) -> None:
    config: DBOSConfig = {
        "name": APPLICATION,
        "system_database_url": request["system_database_url"],
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()


async def _finished(handles: list[WorkflowHandleAsync[None]]) -> None:
    """Untimed: until DBOS has recorded every one finished, so that the next process (same
    executor) has nothing of this one's to recover."""
    for handle in handles:
        await handle.get_result()


async def _wait_done(count: int) -> None:
    global _target, _all_done
    _target, _all_done = count, anyio.Event()
    if _done < count:
        await _all_done.wait()


async def _queue(request: dict[str, Any]) -> Queue:
    """Launched, with the benchmark's queue registered: ``concurrency`` per worker, polled
    every ``poll`` seconds."""
    _launch(request)
    return await DBOS.register_queue_async(
        QUEUE,
        worker_concurrency=int(request["concurrency"]),
        polling_interval_sec=float(request["poll"]),
        on_conflict="always_update",
    )


async def through(request: dict[str, Any]) -> dict[str, Any]:
    queue = await _queue(request)

    async def run(first: int, tasks: int) -> float:
        before = _done
        started = time.perf_counter()
        handles = [await queue.enqueue_async(noop, _RUN, n) for n in range(first, first + tasks)]
        await _wait_done(before + tasks)
        elapsed = time.perf_counter() - started
        await _finished(handles)
        return elapsed

    warmup = int(request.get("warmup", 0))
    if warmup:
        await run(0, warmup)
    tasks = int(request["tasks"])
    seconds = await run(warmup, tasks)
    DBOS.destroy()
    return {"items": tasks, "seconds": seconds}


async def latency(request: dict[str, Any]) -> dict[str, Any]:
    queue = await _queue(request)
    pauses = random.Random(int(request.get("seed", 0)))
    handles = [await queue.enqueue_async(noop, _RUN, -1)]  # its own start-up, untimed
    await _wait_done(1)
    latencies: list[float] = []
    for n in range(int(request["samples"])):
        await anyio.sleep(pauses.uniform(0, 1.0))
        began = time.perf_counter()
        handles.append(await queue.enqueue_async(noop, _RUN, n))
        await _wait_done(n + 2)
        latencies.append((_started[n] - began) * 1000)
    await _finished(handles)
    DBOS.destroy()
    return {"latencies_ms": latencies}


async def recovery(request: dict[str, Any]) -> dict[str, Any]:
    global _phase
    _phase = str(request["phase"])
    _launch(request)
    if _phase == "start":
        await DBOS.start_workflow_async(pending)
        await anyio.sleep(3600)  # killed meanwhile
        return {}
    # Launching recovered the pending workflow (it is queued again, then run): wait for its
    # second step, then for the workflow to finish.
    with anyio.fail_after(60):
        await _all_done.wait()
        # Its status is in DBOS's tables only: polled, as DBOS's own tools do.
        while await DBOS.list_workflows_async(status=["PENDING", "ENQUEUED"]):  # noqa: ASYNC110
            await anyio.sleep(0.01)
    DBOS.destroy()
    return {"recovered": True}


COMMANDS = {"through": through, "latency": latency, "recovery": recovery}


def main() -> None:
    request = read_request()
    result = anyio.run(COMMANDS[request["command"]], request)
    answer(result)


if __name__ == "__main__":
    main()
