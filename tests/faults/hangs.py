"""A node that hangs instead of dying: the scenario shared by the fault suite and the benchmark.

Two ``i3lani run`` workers run the five product actors on one database. Node A starts first
and takes every lease; node B stands by. A reaches PostgreSQL through a :class:`PgProxy`, so
that the test can cut its network path without closing anything, or catch the instant one of
its transactions is about to COMMIT. While work is flowing, one fault hits A:

* ``pause``: SIGSTOP (a frozen container, a long swap stall), later SIGCONT;
* ``cut``: the proxy stops forwarding both ways (packets dropped, nothing closed), later heals;
* ``kill``: SIGKILL, the reference: what a crash costs (A's connections close at once);

either at a random moment or, with ``at_commit``, at the worst one: A has a write transaction
open and its COMMIT is on the way (the proxy holds it back, then stops A or cuts).

:func:`run_hang` measures, from the fault on:

* ``takeover``: seconds until B has recorded ``ActorStarted`` for every actor;
* ``reader_stall``: the longest a committed event stayed invisible to a gap-free reader (a
  subscription in the test process, fed by a probe that appends every 50 ms);
* after A resumes (and the work is finished), which events A wrote under a generation that was
  no longer current: by the events' metadata (``lease``, ``generation``), in log order.

The verdicts of the issue (every actor on B within lease + 3 s; no reader held back longer than
the idle-transaction bound + 1 s; nothing landing under an old generation; every effect once;
the audit clean) are asserted by ``tests/faults/test_hangs.py``; ``bench/hangs.py`` repeats the
scenario at the default lease and reports medians.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal

import anyio

from actors.catalog import PRODUCT_ACTORS
from events import ActorStarted, AlertRaised
from events.errors import StoreError
from store import EventStore, RecordedEvent
from store.leases import Leases
from store.limits import SessionLimits
from tests.e2e.processes import lifecycle, running_workers, wait_for
from tests.faults.harness import (
    PRODUCT,
    Seeder,
    Workload,
    assert_audit_clean,
    assert_exactly_once,
    count_effects,
    fault_env,
    holder_of,
    standins,
    wait_until_done,
)
from tests.faults.pgproxy import PgProxy

__all__ = ["Fault", "HangResult", "run_hang", "stale_writes"]

Fault = Literal["pause", "cut", "kill"]

PROBE_STREAM: Final = "faultprobe-readers"


@dataclass
class HangResult:
    """What one run measured."""

    fault: Fault
    at_commit: bool
    lease_ttl: float
    idle_bound: float
    takeover: float
    """Seconds from the fault until node B had started every actor."""
    reader_stall: float
    """The longest a committed probe event stayed invisible to a gap-free reader."""
    stale: list[str] = field(default_factory=list)
    """Events written under a generation that was no longer current (should be none)."""
    seed: int = 0

    def line(self) -> str:
        where = "right before a COMMIT" if self.at_commit else "at a random moment"
        return (
            f"{self.fault} {where}: every actor on node-b after {self.takeover:.2f}s "
            f"(lease {self.lease_ttl:g}s), longest reader stall {self.reader_stall:.2f}s "
            f"(idle-transaction bound {self.idle_bound:g}s)"
        )


class ReaderProbe:
    """Appends a probe event every ``interval`` and times how long each takes to reach a
    gap-free subscriber: the stall readers of the log suffer."""

    def __init__(self, store: EventStore, interval: float = 0.05) -> None:
        self.store = store
        self.interval = interval
        self.sent: dict[uuid.UUID, float] = {}
        self.stalls: list[tuple[float, float]] = []  # (appended at, seconds until read)

    def longest(self, since: float = 0.0) -> float:
        """The longest stall of a probe appended at ``since`` or later; a probe still unread
        counts with its age."""
        now = time.monotonic()
        read = [stall for at, stall in self.stalls if at >= since]
        unread = [now - at for at in self.sent.values() if at >= since]
        return max([0.0, *read, *unread])

    async def _append(self) -> None:
        while True:
            event = AlertRaised(
                alert_id=uuid.uuid4(),
                kind="probe",
                subject="readers",
                message="reader stall probe",
                raised_at=datetime.now(UTC),
            )
            self.sent[event.alert_id] = time.monotonic()
            try:
                await self.store.append(PROBE_STREAM, [event])
            except StoreError:  # a probe that could not be written is simply not counted
                self.sent.pop(event.alert_id, None)
            await anyio.sleep(self.interval)

    async def _read(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        start = await self.store.head()
        async with self.store.subscribe(
            category="faultprobe", after=start, poll_interval=0.05
        ) as subscription:
            task_status.started()
            async for recorded in subscription:
                event = recorded.event
                if isinstance(event, AlertRaised) and event.alert_id in self.sent:
                    at = self.sent.pop(event.alert_id)
                    self.stalls.append((at, time.monotonic() - at))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ReaderProbe]:
        async with anyio.create_task_group() as tg:
            await tg.start(self._read)
            tg.start_soon(self._append)
            yield self
            tg.cancel_scope.cancel()


def stale_writes(events: list[RecordedEvent]) -> list[str]:
    """Events written under a lease generation after a newer generation of that lease had
    written, in log order: a node writing on after its grant was superseded."""
    newest: dict[str, int] = {}
    stale: list[str] = []
    for recorded in events:
        lease, generation = recorded.metadata.lease, recorded.metadata.generation
        if lease is None or generation is None:
            continue
        if generation < newest.get(lease, 0):
            stale.append(
                f"#{recorded.position} {recorded.type} in {recorded.stream} by "
                f"{recorded.metadata.node}: {lease} generation {generation} after "
                f"{newest[lease]}"
            )
        newest[lease] = max(newest.get(lease, 0), generation)
    return stale


async def _started_on(store: EventStore, node: str, after: Mapping[str, int]) -> datetime | None:
    """When ``node`` had started every actor (its ActorStarted past ``after`` versions), or
    None if it has not yet."""
    latest: datetime | None = None
    for actor in PRODUCT_ACTORS:
        found = [
            r
            for r in (await lifecycle(store, actor))[after[actor] :]
            if isinstance(r.event, ActorStarted) and r.event.node == node
        ]
        if not found:
            return None
        at = found[0].recorded_at
        latest = at if latest is None or at > latest else latest
    return latest


async def _freeze_before_a_write_commits(
    store: EventStore,
    proxy: PgProxy,
    pid: int,
    fault: Fault,
    work: Callable[[], Awaitable[object]],
) -> None:
    """Hold node A's next COMMIT of a transaction that *wrote* (it holds row locks and an xid
    that readers wait on), then stop A (``pause``) or leave it cut off (``cut``).

    The proxy only catches the COMMIT of a transaction that ran a statement that may write
    (``only_writes``); the server then says whether it did. A transaction that wrote nothing
    after all (an UPDATE that matched no row: open, no xid) is let through and the next one
    awaited. The server may already have ended the session (``idle_in_transaction_session_
    timeout``, a quarter of the lease) when a loaded machine gets to look: the write was held
    all the same, and that is the scenario (regression: looking only for an open writing
    session, the loop never caught one on a loaded CI machine and timed out).

    Each time the trap is armed, ``work`` hands A something new to write (regression: on a
    loaded CI machine A had done all the work seeded before the trap was armed, and its idle
    writes are single statements with no COMMIT to catch: the trap waited 60 s for nothing)."""

    def stop() -> None:
        os.kill(pid, signal.SIGSTOP)

    deadline = time.monotonic() + 60
    while True:
        if fault == "pause":
            # Paused right before sending its COMMIT: what its other connections had sent
            # before still reaches the server.
            caught = proxy.cut_before_commit(stop, only_that_connection=True, only_writes=True)
        else:
            caught = proxy.cut_before_commit(only_writes=True)
        await work()
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
            await caught.wait()
        if not caught.is_set():
            holders = {actor: await holder_of(store, actor) for actor in PRODUCT_ACTORS}
            raise AssertionError(
                f"node-a committed no write in 60 s; holders {holders}\n{await _diagnosis(store)}"
            )
        with anyio.fail_after(30):
            row = await store._pool.fetchrow(
                "SELECT count(*) AS open, count(*) FILTER (WHERE backend_xid IS NOT NULL)"
                " AS writing FROM pg_stat_activity WHERE application_name LIKE $1"
                " AND state = 'idle in transaction'",
                "i3lani:node-a:%",
            )
        assert row is not None
        if row["writing"] or not row["open"]:
            return
        proxy.heal()
        if fault == "pause":
            os.kill(pid, signal.SIGCONT)


async def _diagnosis(store: EventStore) -> str:
    """What the leases and the server's sessions look like: for a take-over that did not come."""
    leases = "\n".join(
        f"  lease {info.name}: {info.node} generation {info.generation} live={info.live} "
        f"suspect={info.suspect} renewed {info.renewed_seconds_ago:.1f}s ago"
        for info in await Leases(store, "diagnosis").all()
    )
    sessions = "\n".join(
        f"  pid {r['pid']} {r['application_name']} {r['state']} xact {r['xact']} "
        f"wait {r['wait_event_type']}/{r['wait_event']} blocked by {r['blockers']}: {r['query']}"
        for r in await store._pool.fetch(
            "SELECT pid, application_name, state, now() - xact_start AS xact, wait_event_type,"
            " wait_event, pg_blocking_pids(pid) AS blockers, left(query, 120) AS query"
            " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    )
    return f"leases:\n{leases}\nsessions:\n{sessions}"


async def _seed(seeder: Seeder, scale: int) -> None:
    await seeder.rewards(15 * scale)
    await seeder.payments(5 * scale, paid=3 * scale, underpaid=scale, twice=scale)


async def run_hang(
    dsn: str,
    clean_env: Mapping[str, str],
    store: EventStore,
    *,
    fault: Fault,
    at_commit: bool,
    lease_ttl: float,
    frozen_for: float | None = None,
    seed: int,
    scale: int = 4,
    check: bool = True,
) -> HangResult:
    """One run of the scenario (see the module docstring). With ``check``, the work is
    verified afterwards: every effect exactly once and the audit clean."""
    rng = random.Random(seed)
    idle_bound = SessionLimits(lease_ttl=lease_ttl).idle_in_transaction_seconds
    frozen_for = frozen_for if frozen_for is not None else 2.5 * lease_ttl
    async with standins() as (tonapi, bot_api), PgProxy.for_dsn(dsn) as proxy:
        env = fault_env(dsn, clean_env, tonapi, bot_api, I3LANI_LEASE_TTL=f"{lease_ttl:g}")
        seeder = Seeder(store, tonapi, bot_api, rng=rng)
        await seeder.channels(1)
        await _seed(seeder, scale)
        async with running_workers(env) as workers:
            a = await workers.start("node-a", PRODUCT, env={"DATABASE_URL": proxy.dsn_for(dsn)})

            async def all_on_a() -> bool:
                holders = [await holder_of(store, actor) for actor in PRODUCT_ACTORS]
                return all(h == "node-a" for h in holders)

            await wait_for(all_on_a, 60, "every actor running on node-a")
            b = await workers.start("node-b", PRODUCT)
            await wait_until_done(store, seeder.workload, 90)
            versions = {actor: len(await lifecycle(store, actor)) for actor in PRODUCT_ACTORS}
            await _seed(seeder, scale)  # in flight when the fault hits

            async with ReaderProbe(store).running() as probe:
                await anyio.sleep(0.5)  # a baseline for the probe
                if at_commit and fault != "kill":
                    await _freeze_before_a_write_commits(
                        store, proxy, a.pid, fault, lambda: seeder.rewards(scale)
                    )
                else:
                    await anyio.sleep(rng.uniform(0.0, lease_ttl / 2))
                    if fault == "pause":
                        os.kill(a.pid, signal.SIGSTOP)
                    elif fault == "cut":
                        proxy.cut()
                    else:
                        await a.kill()
                fault_mono, fault_wall = time.monotonic(), datetime.now(UTC)

                async def taken_over() -> datetime | None:
                    return await _started_on(store, "node-b", versions)

                try:
                    taken = await wait_for(taken_over, 60, "every actor started on node-b")
                except AssertionError as exc:
                    diagnosis = await _diagnosis(store)
                    raise AssertionError(f"{exc}\n{diagnosis}\n{b.output()}") from None
                takeover = (taken - fault_wall).total_seconds()
                await anyio.sleep(max(0.0, fault_mono + frozen_for - time.monotonic()))
                stall = probe.longest(since=fault_mono - 0.5)
                if fault != "kill":
                    proxy.heal()
                    if fault == "pause":
                        os.kill(a.pid, signal.SIGCONT)
            if fault != "kill":
                # A is back: it must stand by, and write nothing under its old grants.
                await anyio.sleep(lease_ttl)
                assert a.alive, a.output()
            await _seed(seeder, scale)
            await wait_until_done(store, seeder.workload, 90)
            if check:
                for actor in PRODUCT_ACTORS:
                    assert await holder_of(store, actor) == "node-b", actor
            for worker in (a, b):
                if worker.alive:
                    code, _ = await worker.terminate(30)
                    assert code == 0, worker.output()
        events = [r async for r in store.read_all(skip_unknown=True)]
        result = HangResult(
            fault=fault,
            at_commit=at_commit,
            lease_ttl=lease_ttl,
            idle_bound=idle_bound,
            takeover=takeover,
            reader_stall=stall,
            stale=stale_writes(events),
            seed=seed,
        )
        if check:
            await _check_work(env, store, seeder.workload)
    return result


async def _check_work(env: Mapping[str, str], store: EventStore, workload: Workload) -> None:
    assert_exactly_once(workload, await count_effects(store))
    await assert_audit_clean(env, workload)
