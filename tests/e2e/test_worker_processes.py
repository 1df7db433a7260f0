"""Real ``i3lani run`` workers against a real database: operator commands, crash loops,
shutdown, several nodes and deploys, observed through the event log, the lease table and the
command line, as an operator would.

Timings the tests measure (SIGTERM exit, failover, hand-over) are printed: ``pytest -s``.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TypeVar

import anyio
import msgspec
import pytest

from actors.runtime.status import ActorStatus, actor_status
from events import (
    ActorBackoffScheduled,
    ActorCrashed,
    ActorParked,
    ActorRestarted,
    ActorStarted,
    ActorStopped,
    AlertRaised,
    OperatorCommandIssued,
)
from store import EventStore, RecordedEvent
from tests.e2e.processes import (
    assert_one_at_a_time,
    assert_schedule_by_a_holder,
    assert_ticks_follow_starts,
    i3lani,
    lease_of,
    lifecycle,
    running_workers,
    wait_for,
    wait_for_event,
    wait_started,
)

# Several real processes, each importing the CLI: slow on a loaded 2-core machine; the waits
# inside each test are bounded on their own, this is only the outer safety net.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

E = TypeVar("E")

BOTH = "Heartbeat,Flaky"
CALM = {"I3LANI_FLAKY_CRASH_EVERY": "1000"}  # Flaky that does not crash during a test
CRASHING = {"I3LANI_FLAKY_CRASH_EVERY": "1"}  # Flaky that crashes on its first tick


def holder_node(holder: str | None) -> str | None:
    """The node name of a lease holder (`<node>/<instance>`: one holder per process)."""
    return None if holder is None else holder.rsplit("/", 1)[0]


@pytest.fixture
def env(dsn: str, clean_env: dict[str, str]) -> dict[str, str]:
    return {
        **clean_env,
        "DATABASE_URL": dsn,
        "I3LANI_NODE": "node-a",
        "I3LANI_HEARTBEAT_SECONDS": "0.5",
    }


# -- helpers ---------------------------------------------------------------------------------
async def sleep_until(deadline: float) -> None:
    await anyio.sleep(max(deadline - time.monotonic(), 0.0))


def of_type(history: Sequence[RecordedEvent], kind: type[E]) -> list[E]:
    return [recorded.event for recorded in history if isinstance(recorded.event, kind)]


def status_rows(output: bytes) -> dict[str, list[str]]:
    """``i3lani status`` as {actor: its line split on whitespace}, plus "<actor>:why" lines."""
    lines = output.decode().splitlines()
    assert lines[0].split()[:4] == ["ACTOR", "STATE", "NODE", "GEN"], lines
    rows: dict[str, list[str]] = {}
    last = ""
    for line in lines[1:]:
        if not line.strip():
            break  # the actors' table ends; the task queue's follows
        if line.startswith(" "):
            rows[f"{last}:why"] = [line.strip()]
        else:
            last = line.split()[0]
            rows[last] = line.split()
    return rows


async def statuses(env: dict[str, str]) -> dict[str, ActorStatus]:
    result = await i3lani(env, "status", "--json")
    assert result.returncode == 0, result.stderr.decode()
    decoded = msgspec.json.decode(result.stdout, type=StatusReport)
    return {status.actor: status for status in decoded.actors}


class StatusReport(msgspec.Struct):
    """The part of ``i3lani status --json`` these tests read (tasks are tested elsewhere)."""

    actors: list[ActorStatus]


# -- 1. status and operator commands ---------------------------------------------------------
async def test_status_and_operator_commands_against_a_running_worker(
    env: dict[str, str], store: EventStore
) -> None:
    async with running_workers(env) as workers:
        worker = await workers.start("node-a", BOTH, env=CALM)
        _, heartbeat = await wait_started(store, "Heartbeat", node="node-a")
        _, flaky = await wait_started(store, "Flaky", node="node-a")

        # status, as a table and as JSON
        result = await i3lani(env, "status")
        assert result.returncode == 0, result.stderr.decode()
        rows = status_rows(result.stdout)
        assert rows["Heartbeat"][1:4] == ["running", "node-a", str(heartbeat.generation)], rows
        assert rows["Flaky"][1:4] == ["running", "node-a", str(flaky.generation)], rows
        by_actor = await statuses(env)
        for started in (heartbeat, flaky):
            status = by_actor[started.actor]
            assert (status.state, status.node, status.generation) == (
                "running",
                "node-a",
                started.generation,
            )
            assert status.lease_live is True
            assert status.desired == "running"

        # restart: recorded by the worker, and a new incarnation within 2 s of the command
        before = len(await lifecycle(store, "Heartbeat"))
        result = await i3lani(env, "restart", "Heartbeat", "--reason", "because")
        assert result.returncode == 0, result.stderr.decode()
        assert "ActorRestarted" in result.stdout.decode(), result.stdout.decode()
        restarted = await wait_for_event(
            store,
            "actor-Heartbeat",
            lambda r: isinstance(r.event, ActorRestarted),
            5,
            after_version=before,
        )
        assert isinstance(restarted.event, ActorRestarted)
        assert restarted.event.cause == "operator"
        assert restarted.event.requested_by is not None
        assert restarted.event.requested_by.startswith("cli:"), restarted.event
        assert restarted.event.reason == "because"
        again_recorded, again = await wait_started(
            store, "Heartbeat", after_version=restarted.version, seconds=5
        )
        assert again.node == "node-a"
        assert again.generation > heartbeat.generation
        commands = await store.read_stream("ops-commands")
        command = commands[-1]
        assert isinstance(command.event, OperatorCommandIssued)
        assert (command.event.action, command.event.actor) == ("restart", "Heartbeat")
        assert command.event.requested_by == restarted.event.requested_by
        reaction = (again_recorded.recorded_at - command.recorded_at).total_seconds()
        print(f"\noperator restart: command to ActorStarted in {reaction:.3f}s")
        assert 0 <= reaction < 2.0

        # an unknown actor: a usage error naming the valid ones, and nothing recorded
        result = await i3lani(env, "restart", "Nope")
        assert result.returncode == 2
        assert result.stdout == b""
        stderr = result.stderr.decode().splitlines()
        assert len(stderr) == 1, stderr
        assert "Nope" in stderr[0]
        assert "Heartbeat" in stderr[0], stderr
        assert "Flaky" in stderr[0], stderr
        assert len(await store.read_stream("ops-commands")) == len(commands)

        # stop: recorded, and the lease handed back
        result = await i3lani(env, "stop", "Heartbeat", "--reason", "maintenance")
        assert result.returncode == 0, result.stderr.decode()
        stopped = await wait_for_event(
            store,
            "actor-Heartbeat",
            lambda r: isinstance(r.event, ActorStopped),
            5,
            after_version=again_recorded.version,
        )
        assert isinstance(stopped.event, ActorStopped)
        assert stopped.event.generation == again.generation
        assert stopped.event.reason.startswith("stopped by cli:"), stopped.event.reason
        assert stopped.event.reason.endswith(": maintenance"), stopped.event.reason

        async def released() -> bool:
            lease = await lease_of(store, "Heartbeat")
            return lease is not None and lease.node is None

        await wait_for(released, 5, "the Heartbeat lease released after the stop")

        # a new worker process: Heartbeat stays stopped (the log says so), Flaky runs
        code, _ = await worker.terminate()
        assert code == 0, worker.output()
        heartbeat_version = len(await lifecycle(store, "Heartbeat"))
        flaky_version = len(await lifecycle(store, "Flaky"))
        second = await workers.start("node-a", BOTH, env=CALM)
        ready = time.monotonic()
        _, flaky_again = await wait_started(
            store, "Flaky", node="node-a", after_version=flaky_version
        )
        assert flaky_again.generation > flaky.generation
        await sleep_until(ready + 3.0)
        assert len(await lifecycle(store, "Heartbeat")) == heartbeat_version, (
            "Heartbeat was stopped by an operator: a new worker must not start it"
        )
        now = datetime.now(UTC)
        status = await actor_status(store, "Heartbeat", now)
        assert (status.state, status.desired) == ("stopped", "stopped")
        result = await i3lani(env, "status")
        assert status_rows(result.stdout)["Heartbeat"][1] == "stopped"

        # start: it runs again, with a new generation
        result = await i3lani(env, "start", "Heartbeat")
        assert result.returncode == 0, result.stderr.decode()
        _, resumed = await wait_started(
            store, "Heartbeat", node="node-a", after_version=heartbeat_version, seconds=5
        )
        assert resumed.generation > again.generation
        assert (await statuses(env))["Heartbeat"].state == "running"
        code, _ = await second.terminate()
        assert code == 0, second.output()
    assert_one_at_a_time(await lifecycle(store, "Heartbeat"))
    assert_one_at_a_time(await lifecycle(store, "Flaky"))


# -- 2. a crash loop parks the actor -----------------------------------------------------------
async def test_commands_with_no_worker_say_what_will_happen_and_it_does(
    env: dict[str, str], store: EventStore
) -> None:
    """With no worker: a restart is refused and records nothing (nothing would act on it); a
    stop is recorded and holds when a worker starts; a start then runs it on that worker."""
    result = await i3lani(env, "restart", "Heartbeat")
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode().splitlines() == [
        "i3lani restart: no node runs Heartbeat (never started): nothing to restart, nothing "
        "recorded; a worker started with it (`i3lani run`) starts it afresh"
    ]
    assert await store.read_stream("ops-commands") == []

    result = await i3lani(env, "stop", "Heartbeat", "--reason", "not yet")
    assert result.returncode == 0, result.stderr.decode()
    said = result.stdout.decode().splitlines()
    assert said[1] == (
        "no node runs Heartbeat (never started); recorded: it stays stopped, and no worker "
        "starts it until `i3lani start Heartbeat`"
    ), said
    [stop] = await store.read_stream("ops-commands")
    assert isinstance(stop.event, OperatorCommandIssued)
    assert stop.event.action == "stop"

    async with running_workers(env) as workers:
        await workers.start("node-a", BOTH, env=CALM)
        await wait_started(store, "Flaky", node="node-a")
        await anyio.sleep(1.0)  # a few of its lease attempts: Heartbeat stays as it was told
        assert await lifecycle(store, "Heartbeat") == []
        heartbeat = await actor_status(store, "Heartbeat", datetime.now(UTC))
        assert (heartbeat.state, heartbeat.desired) == ("never started", "stopped")

        result = await i3lani(env, "start", "Heartbeat")
        assert result.returncode == 0, result.stderr.decode()
        assert "ActorStarted" in result.stdout.decode(), result.stdout.decode()
        await wait_started(store, "Heartbeat", node="node-a", seconds=5)

        # Running now: a start has nothing to do and records nothing; a restart acts.
        commands = len(await store.read_stream("ops-commands"))
        result = await i3lani(env, "start", "Heartbeat")
        assert result.stdout.decode().splitlines() == [
            "Heartbeat already runs on node-a: nothing to start, nothing recorded"
        ]
        assert len(await store.read_stream("ops-commands")) == commands
        result = await i3lani(env, "restart", "Heartbeat")
        assert result.returncode == 0, result.stderr.decode()
        assert "ActorRestarted" in result.stdout.decode(), result.stdout.decode()
        restarted = of_type(await lifecycle(store, "Heartbeat"), ActorRestarted)
        assert [e.cause for e in restarted] == ["operator"]


async def test_a_crash_loop_parks_the_actor_until_an_operator_starts_it(
    env: dict[str, str], store: EventStore
) -> None:
    async with running_workers(env) as workers:
        worker = await workers.start("node-a", BOTH, env=CRASHING)
        began = time.monotonic()
        _, heartbeat = await wait_started(store, "Heartbeat", node="node-a")
        ticks_before = len(await store.read_stream("tick-Heartbeat"))
        counted_from = time.monotonic()

        # default policy: backoff 0.5 s doubling (+ up to 20 % jitter), 5 restarts in 60 s
        parked = await wait_for_event(
            store, "actor-Flaky", lambda r: isinstance(r.event, ActorParked), 35
        )
        print(f"\ncrash loop: Flaky parked {time.monotonic() - began:.1f}s after the start")
        ticks = len(await store.read_stream("tick-Heartbeat")) - ticks_before
        elapsed = time.monotonic() - counted_from
        assert isinstance(parked.event, ActorParked)
        assert parked.event.restarts == 5
        assert parked.event.window_seconds == 60
        assert "restart intensity exceeded" in parked.event.reason

        history = await lifecycle(store, "Flaky")
        incarnation = ["ActorBackoffScheduled", "ActorRestarted", "ActorStarted", "ActorCrashed"]
        assert [r.type for r in history] == [
            "ActorStarted",
            "ActorCrashed",
            *incarnation * 5,
            "ActorParked",
        ]
        assert all(c.error_type == "FlakyCrash" for c in of_type(history, ActorCrashed))
        assert all(r.cause == "crash" for r in of_type(history, ActorRestarted))
        for attempt, backoff in enumerate(of_type(history, ActorBackoffScheduled), start=1):
            base = 0.5 * 2 ** (attempt - 1)
            assert backoff.attempt == attempt
            assert base <= backoff.delay_seconds <= base * 1.2 + 0.001, backoff
        assert_one_at_a_time(history)

        # the alert, and the other actor undisturbed
        alerts = of_type(await store.read_stream("ops-alerts"), AlertRaised)
        assert [(a.kind, a.subject) for a in alerts] == [("actor_parked", "Flaky")]
        assert parked.event.reason in alerts[0].message
        assert ticks >= int(elapsed / 0.5 * 0.6), f"{ticks} Heartbeat ticks in {elapsed:.1f}s"
        assert of_type(await lifecycle(store, "Heartbeat"), ActorStarted) == [heartbeat]

        # status
        result = await i3lani(env, "status")
        rows = status_rows(result.stdout)
        assert rows["Flaky"][1] == "parked", rows
        assert rows["Flaky:why"] == [f"why: {parked.event.reason}"], rows
        status = (await statuses(env))["Flaky"]
        assert (status.state, status.desired, status.stop_reason) == (
            "parked",
            "parked",
            parked.event.reason,
        )
        lease = await lease_of(store, "Flaky")
        assert lease is not None
        assert lease.node is None

        # parking survives a restart of the worker
        code, _ = await worker.terminate()
        assert code == 0, worker.output()
        heartbeat_version = len(await lifecycle(store, "Heartbeat"))
        second = await workers.start("node-a", BOTH, env=CRASHING)
        ready = time.monotonic()
        await wait_started(store, "Heartbeat", node="node-a", after_version=heartbeat_version)
        await sleep_until(ready + 3.0)
        assert len(await lifecycle(store, "Flaky")) == len(history), "a parked actor started"
        assert (await statuses(env))["Flaky"].state == "parked"

        # an operator unparks it
        result = await i3lani(env, "start", "Flaky", "--reason", "fixed")
        assert result.returncode == 0, result.stderr.decode()
        _, unparked = await wait_started(
            store, "Flaky", node="node-a", after_version=len(history), seconds=5
        )
        assert unparked.generation > of_type(history, ActorStarted)[-1].generation
        code, _ = await second.terminate()
        assert code == 0, second.output()


# -- 3. SIGTERM ------------------------------------------------------------------------------
async def test_sigterm_stops_every_actor_in_reverse_start_order_and_releases_the_leases(
    env: dict[str, str], store: EventStore
) -> None:
    async with running_workers(env) as workers:
        worker = await workers.start("node-a", BOTH, env=CALM)
        await wait_started(store, "Heartbeat", node="node-a")
        await wait_started(store, "Flaky", node="node-a")
        await wait_for(
            lambda: store.last_event("tick-Heartbeat"), 5, "a Heartbeat tick"
        )  # running, not just started

        code, took = await worker.terminate(seconds=30)
        print(f"\nSIGTERM: worker exited with {code} after {took:.2f}s")
        assert code == 0, worker.output()
        assert took < 10, worker.output()
        assert worker.stdout.decode().splitlines()[-1] == "i3lani worker node-a: stopped"
        assert b"Traceback" not in worker.stderr, worker.output()

    starts: list[tuple[int, ActorStarted]] = []
    stops: list[tuple[int, ActorStopped]] = []
    for actor in ("Heartbeat", "Flaky"):
        history = await lifecycle(store, actor)
        assert [r.type for r in history] == ["ActorStarted", "ActorStopped"], history
        started, stopped = history[0].event, history[1].event
        assert isinstance(started, ActorStarted)
        assert isinstance(stopped, ActorStopped)
        assert (stopped.reason, stopped.node, stopped.generation) == (
            "shutdown",
            "node-a",
            started.generation,
        )
        starts.append((history[0].position, started))
        stops.append((history[1].position, stopped))
        lease = await lease_of(store, actor)
        assert lease is not None
        assert (lease.node, lease.generation) == (None, started.generation)
    start_order = [event.actor for _, event in sorted(starts, key=lambda pair: pair[0])]
    stop_order = [event.actor for _, event in sorted(stops, key=lambda pair: pair[0])]
    assert stop_order == start_order[::-1]


# -- 4. several nodes ------------------------------------------------------------------------
async def test_one_node_runs_an_actor_and_another_takes_over_when_it_dies_or_stops(
    env: dict[str, str], store: EventStore
) -> None:
    async with running_workers(env) as workers:
        node_a = await workers.start("node-a", "Heartbeat", ready=False)
        node_b = await workers.start("node-b", "Heartbeat", ready=False)
        await node_a.wait_ready()
        await node_b.wait_ready()
        _, first = await wait_started(store, "Heartbeat")
        runner, standby = (node_a, node_b) if first.node == "node-a" else (node_b, node_a)

        await sleep_until(time.monotonic() + 3.0)
        history = await lifecycle(store, "Heartbeat")
        assert assert_one_at_a_time(history) == [first]
        lease = await lease_of(store, "Heartbeat")
        assert lease is not None
        assert (holder_node(lease.node), lease.generation, lease.live) == (
            runner.node,
            first.generation,
            True,
        )
        assert runner.alive
        assert standby.alive

        # kill -9 the running node: the other takes over once the lease expires
        killed_at = datetime.now(UTC)
        await runner.kill()
        taken_recorded, taken = await wait_started(
            store, "Heartbeat", after_version=len(history), seconds=20
        )
        failover = (taken_recorded.recorded_at - killed_at).total_seconds()
        print(f"\nfailover after kill -9: {failover:.2f}s ({runner.node} -> {taken.node})")
        assert taken.node == standby.node
        assert failover < 15
        between = (await lifecycle(store, "Heartbeat"))[len(history) : taken_recorded.version]
        assert [type(r.event) for r in between] == [ActorRestarted, ActorStarted]
        assert isinstance(between[0].event, ActorRestarted)
        assert between[0].event.cause == "failover"
        assert between[0].event.reason == f"previously on {runner.node}"

        # the dead node comes back: it stands by
        revived = await workers.start(runner.node, "Heartbeat")
        await sleep_until(time.monotonic() + 1.5)
        assert len(await lifecycle(store, "Heartbeat")) == taken_recorded.version

        # SIGTERM the running node: it hands over at once, no failover needed
        signalled_at = datetime.now(UTC)
        code, took = await standby.terminate()
        assert code == 0, standby.output()
        handed_recorded, handed = await wait_started(
            store, "Heartbeat", after_version=taken_recorded.version, seconds=10
        )
        handover = (handed_recorded.recorded_at - signalled_at).total_seconds()
        print(f"hand-over after SIGTERM: {handover:.2f}s (worker exit {took:.2f}s)")
        assert handed.node == revived.node
        assert handover < 3.0
        tail = (await lifecycle(store, "Heartbeat"))[taken_recorded.version :]
        assert [type(r.event) for r in tail] == [ActorStopped, ActorStarted]
        assert isinstance(tail[0].event, ActorStopped)
        assert (tail[0].event.node, tail[0].event.reason) == (standby.node, "shutdown")

        history = await lifecycle(store, "Heartbeat")
        starts = assert_one_at_a_time(history)
        assert [s.node for s in starts] == [runner.node, standby.node, revived.node]
        lease = await lease_of(store, "Heartbeat")
        assert lease is not None
        assert (holder_node(lease.node), lease.generation) == (revived.node, handed.generation)
        ticks = await store.read_stream("tick-Heartbeat")
        assert_ticks_follow_starts(history, ticks)
        ticked_by = [node for node, _ in itertools.groupby(r.metadata.node for r in ticks)]
        assert ticked_by in ([runner.node, standby.node], [runner.node, standby.node, runner.node])


# -- 5. deploys ------------------------------------------------------------------------------
async def test_a_deploy_overlap_hands_every_actor_to_the_new_worker(
    env: dict[str, str], store: EventStore
) -> None:
    """Old and new worker under their default names (``<host>:<pid>``)."""
    async with running_workers(env) as workers:
        old = await workers.start(None, BOTH, env=CALM)
        for actor in ("Heartbeat", "Flaky"):
            await wait_started(store, actor, node=old.node)
        new = await workers.start(None, BOTH, env=CALM)
        await sleep_until(time.monotonic() + 2.0)
        for actor in ("Heartbeat", "Flaky"):
            assert len(await lifecycle(store, actor)) == 1, "the new worker must stand by"

        code, took = await old.terminate()
        print(f"\ndeploy: old worker exited after {took:.2f}s")
        assert code == 0, old.output()
        for actor in ("Heartbeat", "Flaky"):
            await wait_started(store, actor, node=new.node, seconds=5)
        assert new.alive

        for actor in ("Heartbeat", "Flaky"):
            history = await lifecycle(store, actor)
            assert [type(r.event) for r in history] == [ActorStarted, ActorStopped, ActorStarted]
            starts = assert_one_at_a_time(history)
            assert [s.node for s in starts] == [old.node, new.node]
            lease = await lease_of(store, actor)
            assert lease is not None
            assert (holder_node(lease.node), lease.generation) == (new.node, starts[-1].generation)
            assert_ticks_follow_starts(history, await store.read_stream(f"tick-{actor}"))
            assert_schedule_by_a_holder(history, await store.load_tick(actor))
        code, _ = await new.terminate()
        assert code == 0, new.output()


async def test_a_deploy_overlap_under_the_same_node_name_runs_the_actor_once(
    env: dict[str, str], store: EventStore
) -> None:
    """I3LANI_NODE set per host (the same in the old and the new release's environment)."""
    async with running_workers(env) as workers:
        old = await workers.start("node-a", "Heartbeat")
        await wait_started(store, "Heartbeat", node="node-a")
        new = await workers.start("node-a", "Heartbeat")
        await sleep_until(time.monotonic() + 3.0)
        history = await lifecycle(store, "Heartbeat")
        assert_one_at_a_time(history)
        assert len(of_type(history, ActorStarted)) == 1, "the new worker must stand by"
        assert old.alive, old.output()

        code, _ = await old.terminate()
        assert code == 0, old.output()
        await wait_started(store, "Heartbeat", after_version=len(history), seconds=5)
        assert_one_at_a_time(await lifecycle(store, "Heartbeat"))
        code, _ = await new.terminate()
        assert code == 0, new.output()


# -- a node that was paused past its lease ----------------------------------------------------
async def test_a_node_paused_past_its_lease_resumes_as_a_standby(
    env: dict[str, str], store: EventStore
) -> None:
    """SIGSTOP (a VM pause, a long GC) beyond the lease's time to live: the other node takes
    over; the paused one, resumed, must neither write nor die, only stand by."""
    async with running_workers(env) as workers:
        paused = await workers.start("node-a", "Heartbeat")
        await wait_started(store, "Heartbeat", node="node-a")
        other = await workers.start("node-b", "Heartbeat")
        paused.process.send_signal(signal.SIGSTOP)
        try:
            taken_recorded, _ = await wait_started(store, "Heartbeat", node="node-b", seconds=20)
        finally:
            paused.process.send_signal(signal.SIGCONT)
        # the resumed node notices at once (its renewal fails, its fenced appends are
        # refused); give it time to act on that, and check it stays up throughout
        resumed = time.monotonic()
        while time.monotonic() - resumed < 6.5:
            assert paused.alive, (
                f"the resumed node exited {time.monotonic() - resumed:.1f}s after SIGCONT "
                f"with {paused.process.returncode}\n{paused.output()}"
            )
            await anyio.sleep(0.1)

        history = await lifecycle(store, "Heartbeat")
        assert_one_at_a_time(history)
        assert all(r.metadata.node == "node-b" for r in history[taken_recorded.version - 1 :]), (
            history
        )
        assert_ticks_follow_starts(history, await store.read_stream("tick-Heartbeat"))
        code, _ = await paused.terminate()
        assert code == 0, paused.output()
        assert b"Traceback" not in paused.stderr, paused.output()
        assert other.alive
        code, _ = await other.terminate()
        assert code == 0, other.output()


# -- configuration ---------------------------------------------------------------------------
async def test_a_worker_without_a_database_exits_with_one_line(clean_env: dict[str, str]) -> None:
    env = {**clean_env, "DATABASE_URL": "postgresql://x:secret@127.0.0.1:1/nope"}
    result = await i3lani(env, "run", "--actors", "Heartbeat", seconds=30)
    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("i3lani run: "), stderr
    assert "secret" not in stderr
    assert b"secret" not in result.stdout
