"""Real ``i3lani`` processes for end-to-end tests: workers (``i3lani run``) and one-shot commands.

Every worker's stdout and stderr are drained by tasks into buffers, so its pipes never fill,
and :func:`running_workers` kills whatever is still running when the test ends, pass or fail.
The helpers that read the log poll it: a test observes what the workers did through the
event store, the lease table and the command line, never through their internals.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import CompletedProcess
from typing import TypeVar

import anyio
from anyio.abc import ByteReceiveStream, Process, TaskGroup

from events import (
    ActorCrashed,
    ActorParked,
    ActorRestarted,
    ActorStarted,
    ActorStopped,
)
from store import EventStore, RecordedEvent, TickRecord
from store.leases import LeaseInfo, Leases

__all__ = [
    "I3LANI",
    "Worker",
    "Workers",
    "assert_one_at_a_time",
    "assert_ticks_follow_starts",
    "i3lani",
    "lease_of",
    "lifecycle",
    "running_workers",
    "wait_for",
    "wait_for_event",
    "wait_started",
]

I3LANI = str(Path(sys.executable).parent / "i3lani")

T = TypeVar("T")


# -- workers ---------------------------------------------------------------------------------
@dataclass(eq=False, repr=False)
class Worker:
    """One ``i3lani run`` process and everything it has printed so far."""

    node: str
    process: Process
    spawned_at: float = field(default_factory=time.monotonic)
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    drained: list[anyio.Event] = field(default_factory=list)

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited {self.process.returncode}"
        return f"<worker {self.node} pid {self.pid} {state}>"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def output(self) -> str:
        """Both streams, for assertion messages."""
        return (
            f"--- {self.node} (pid {self.pid}) stdout ---\n{self.stdout.decode(errors='replace')}"
            f"--- stderr ---\n{self.stderr.decode(errors='replace')}"
        )

    async def wait_ready(self, seconds: float = 60) -> None:
        """Wait until the worker says it supervises (its schema is migrated, its pool open).
        A minute, as the scenarios that say so give it: a worker's start (an interpreter,
        its imports, a migration check) took over 20 s beside the whole suite on 2 cores."""
        with anyio.fail_after(seconds):
            while b"supervising" not in self.stdout:
                if not self.alive:
                    raise AssertionError(f"worker exited before it was ready\n{self.output()}")
                await anyio.sleep(0.05)

    async def exited(self, seconds: float) -> int:
        """Wait for the process to end and for its output to be read completely."""
        with anyio.fail_after(seconds):
            code = await self.process.wait()
            for done in self.drained:
                await done.wait()
        return code

    async def terminate(self, seconds: float = 30) -> tuple[int, float]:
        """SIGTERM; wait for the exit. Returns the exit code and how long the exit took."""
        sent = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = await self.exited(seconds)
        return code, time.monotonic() - sent

    async def kill(self) -> None:
        """SIGKILL (no chance to clean up); wait for it to be gone."""
        if self.alive:
            self.process.kill()
        await self.exited(10)


async def _drain(stream: ByteReceiveStream, into: bytearray, done: anyio.Event) -> None:
    try:
        async for chunk in stream:
            into.extend(chunk)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass
    finally:
        done.set()


class Workers:
    """Starts workers against one database; see :func:`running_workers`."""

    def __init__(self, tg: TaskGroup, env: Mapping[str, str]) -> None:
        self._tg = tg
        self.env = dict(env)
        self.started: list[Worker] = []

    async def start(
        self,
        node: str | None = "node-a",
        actors: str = "Heartbeat,Flaky",
        *,
        ready: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> Worker:
        """Start ``i3lani run --actors ACTORS`` as node ``node`` (None: the default name,
        ``<host>:<pid>``), with extra environment ``env``; by default wait until it is ready."""
        environment = {**self.env, **(env or {})}
        environment.pop("I3LANI_NODE", None)
        if node is not None:
            environment["I3LANI_NODE"] = node
        worker = await self.spawn([I3LANI, "run", "--actors", actors], environment, node=node)
        if ready:
            await worker.wait_ready()
        return worker

    async def spawn(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        *,
        node: str | None = None,
        cwd: Path | None = None,
    ) -> Worker:
        """Start ``command`` with exactly ``env`` (not :attr:`env`), its output drained and
        the process killed at the end like every worker's. ``node``: its name in the log;
        None, ``<host>:<pid>``, what an unnamed ``i3lani`` process calls itself
        (ops.cli.node_name): right when the process started is ``i3lani`` itself (the console
        script, or a shell's ``-c`` that execs it)."""
        process = await anyio.open_process(list(command), env=dict(env), cwd=cwd)
        worker = Worker(node=node or f"{socket.gethostname()}:{process.pid}", process=process)
        self.started.append(worker)
        for stream, buffer in ((process.stdout, worker.stdout), (process.stderr, worker.stderr)):
            assert stream is not None
            done = anyio.Event()
            worker.drained.append(done)
            self._tg.start_soon(_drain, stream, buffer, done)
        return worker

    async def kill_all(self) -> None:
        for worker in self.started:
            if worker.alive:
                worker.process.kill()
            with anyio.move_on_after(10):
                await worker.process.wait()
            await worker.process.aclose()


@asynccontextmanager
async def running_workers(env: Mapping[str, str]) -> AsyncIterator[Workers]:
    """Workers for one test; every one still running at the end is killed (SIGKILL).

    An assertion failing inside is re-raised as itself, not wrapped in an exception group.
    """
    try:
        async with anyio.create_task_group() as tg:
            workers = Workers(tg, env)
            try:
                yield workers
            finally:
                with anyio.CancelScope(shield=True):
                    await workers.kill_all()
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


# -- one-shot commands -----------------------------------------------------------------------
async def i3lani(
    env: Mapping[str, str], *args: str, seconds: float = 30
) -> CompletedProcess[bytes]:
    """Run ``i3lani ARGS`` to completion (no exception on a non-zero exit)."""
    with anyio.fail_after(seconds):
        return await anyio.run_process([I3LANI, *args], env=dict(env), check=False)


# -- observing the log -----------------------------------------------------------------------
async def wait_for(
    probe: Callable[[], Awaitable[T | None]], seconds: float, what: str, interval: float = 0.1
) -> T:
    """Poll ``probe`` until it returns something other than None (or False)."""
    try:
        with anyio.fail_after(seconds):
            while True:
                result = await probe()
                if result is not None and result is not False:
                    return result
                await anyio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"not within {seconds:g}s: {what}") from None


async def lifecycle(store: EventStore, actor: str) -> list[RecordedEvent]:
    return await store.read_stream(f"actor-{actor}")


async def wait_for_event(
    store: EventStore,
    stream: str,
    match: Callable[[RecordedEvent], bool],
    seconds: float,
    *,
    after_version: int = 0,
    what: str = "",
) -> RecordedEvent:
    """The first event of ``stream`` past ``after_version`` that ``match`` accepts."""

    async def probe() -> RecordedEvent | None:
        for recorded in await store.read_stream(stream, after_version=after_version):
            if match(recorded):
                return recorded
        return None

    return await wait_for(probe, seconds, what or f"a matching event in {stream}")


async def wait_started(
    store: EventStore,
    actor: str,
    *,
    node: str | None = None,
    after_version: int = 0,
    seconds: float = 15,
) -> tuple[RecordedEvent, ActorStarted]:
    """The first ActorStarted of ``actor`` past ``after_version`` (on ``node``, if given), with
    its envelope (``recorded_at``, ``version``)."""

    def match(recorded: RecordedEvent) -> bool:
        event = recorded.event
        return isinstance(event, ActorStarted) and (node is None or event.node == node)

    recorded = await wait_for_event(
        store,
        f"actor-{actor}",
        match,
        seconds,
        after_version=after_version,
        what=f"{actor} started{f' on {node}' if node else ''} after v{after_version}",
    )
    assert isinstance(recorded.event, ActorStarted)
    return recorded, recorded.event


async def lease_of(store: EventStore, name: str) -> LeaseInfo | None:
    for info in await Leases(store, "e2e-observer").all():
        if info.name == name:
            return info
    return None


def assert_one_at_a_time(history: Sequence[RecordedEvent]) -> list[ActorStarted]:
    """An actor's lifecycle shows one incarnation at a time: after an ActorStarted the next
    ActorStarted comes only once that incarnation ended (stopped, crashed or parked, or an
    operator restart), or once another node took over a dead node's actor (failover); and
    every start has a strictly higher lease generation than the one before. Returns the
    starts, oldest first."""
    starts: list[ActorStarted] = []
    running: ActorStarted | None = None
    for recorded in history:
        event = recorded.event
        if isinstance(event, ActorStarted):
            assert running is None, (
                f"#{recorded.position}: {event.node} started generation {event.generation} "
                f"while generation {running.generation} on {running.node} never ended"
            )
            if starts:
                assert event.generation > starts[-1].generation, (
                    f"#{recorded.position}: generation {event.generation} after "
                    f"{starts[-1].generation}"
                )
            starts.append(event)
            running = event
        elif isinstance(event, ActorStopped | ActorCrashed):
            if running is not None:
                assert (event.node, event.generation) == (running.node, running.generation), (
                    f"#{recorded.position}: {type(event).__name__} of {event.node} generation "
                    f"{event.generation}, but {running.node} runs generation {running.generation}"
                )
            running = None
        elif isinstance(event, ActorParked) or (
            isinstance(event, ActorRestarted) and event.cause in ("operator", "failover")
        ):
            running = None
    return starts


def assert_schedule_by_a_holder(history: Sequence[RecordedEvent], tick: TickRecord | None) -> None:
    """The actor's tick schedule (overwritten by every tick, fenced by the lease) was last
    written by a node under a generation it was granted: one of the actor's starts."""
    if tick is None:
        return  # never ticked (its first tick is still ahead)
    grants = {
        (recorded.event.node, recorded.event.generation)
        for recorded in history
        if isinstance(recorded.event, ActorStarted)
    }
    assert (tick.node, tick.generation) in grants, (
        f"tick schedule last written by {tick.node} under generation {tick.generation}; the "
        f"actor was started as {sorted(grants)}"
    )


def assert_ticks_follow_starts(
    history: Sequence[RecordedEvent], ticks: Sequence[RecordedEvent]
) -> None:
    """Every tick (``tick-<actor>``) was written by the node that had last started the actor,
    or by the node about to record its start (a new incarnation's first tick can land just
    before its ActorStarted): never by a node that had handed the actor over."""
    starts = [
        (recorded.position, recorded.event.node)
        for recorded in history
        if isinstance(recorded.event, ActorStarted)
    ]
    for tick in ticks:
        before = [node for position, node in starts if position < tick.position]
        after = [node for position, node in starts if position > tick.position]
        allowed = {*before[-1:], *after[:1]}
        assert tick.metadata.node in allowed, (
            f"tick #{tick.position} written by {tick.metadata.node}; the actor ran on "
            f"{before[-1] if before else 'no node'} then"
        )
