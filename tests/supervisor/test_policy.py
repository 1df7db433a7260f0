"""The supervisor's pure decisions: restart matrix, backoff, restart intensity, status, ticks.

Ported from the meaning of Erlang/OTP's supervisor_SUITE (restart types x exit reasons, MaxR
within MaxT, a restart history that is forgotten once it falls out of the window) and Akka's
backoff supervision (exponential delays with a cap, bounded jitter, reset after a stable run).
No database and no clock: histories are lists of lifecycle events with real datetimes.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest

from actors.runtime import RestartType, TickSpec, next_tick_due
from actors.runtime.status import ActorStatus, project_status
from events import (
    ActorBackoffScheduled,
    ActorCrashed,
    ActorParked,
    ActorRestarted,
    ActorStarted,
    ActorStopped,
    Event,
    EventMetadata,
)
from events.lifecycle import RestartCause
from events.streams import actor_stream
from store import RecordedEvent
from store.leases import LeaseInfo
from supervisor import (
    BackingOff,
    BackoffPolicy,
    ChildState,
    Crashed,
    ExitReason,
    Fenced,
    Finished,
    IllegalTransition,
    Intensity,
    Park,
    Restart,
    Running,
    StandingBy,
    Starting,
    Stopped,
    decide_restart,
    exit_reason,
    should_restart,
    transition,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ACTOR = "Worker"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- lifecycle events ---------------------------------------------------------------------------
def started(when: float, generation: int = 1, node: str = "a") -> ActorStarted:
    return ActorStarted(actor=ACTOR, node=node, generation=generation, started_at=at(when))


def crashed(when: float, uptime: float = 1.0, generation: int = 1) -> ActorCrashed:
    return ActorCrashed(
        actor=ACTOR,
        node="a",
        generation=generation,
        error_type="RuntimeError",
        message="boom",
        traceback_digest="0123456789abcdef",
        uptime_seconds=uptime,
        crashed_at=at(when),
    )


def backoff_scheduled(when: float, attempt: int = 1, delay: float = 0.5) -> ActorBackoffScheduled:
    return ActorBackoffScheduled(
        actor=ACTOR,
        attempt=attempt,
        delay_seconds=delay,
        until=at(when + delay),
        scheduled_at=at(when),
    )


def restarted(
    when: float, cause: RestartCause = "crash", attempt: int = 1, delay: float = 0.5
) -> ActorRestarted:
    return ActorRestarted(
        actor=ACTOR,
        cause=cause,
        attempt=attempt if cause == "crash" else 0,
        delay_seconds=delay if cause == "crash" else 0,
        restarted_at=at(when),
        requested_by="alice" if cause == "operator" else None,
    )


def parked(when: float, restarts: int = 3) -> ActorParked:
    return ActorParked(
        actor=ACTOR,
        reason="restart intensity exceeded",
        restarts=restarts,
        window_seconds=60,
        parked_at=at(when),
    )


def stopped(when: float, reason: str = "stopped by alice") -> ActorStopped:
    return ActorStopped(actor=ACTOR, node="a", generation=1, reason=reason, stopped_at=at(when))


def crash_restarts(count: int, *, start: float, spacing: float, uptime: float = 1.0) -> list[Event]:
    """``count`` rounds of start, crash, backoff, crash restart, ``spacing`` seconds apart;
    each restart comes 0.5 s after its crash."""
    history: list[Event] = []
    for k in range(count):
        t = start + k * spacing
        history += [
            started(t - uptime, generation=k + 1),
            crashed(t, uptime=uptime, generation=k + 1),
            backoff_scheduled(t, attempt=k + 1),
            restarted(t + 0.5, attempt=k + 1),
        ]
    return history


NO_JITTER = BackoffPolicy(min_delay=1.0, max_delay=60.0, factor=2.0, jitter=0.0, reset_after=30.0)
LENIENT = Intensity(max_restarts=1000, within=60.0)


def decide(
    history: Sequence[Event],
    now: datetime,
    *,
    backoff: BackoffPolicy = NO_JITTER,
    intensity: Intensity = LENIENT,
) -> Restart | Park:
    return decide_restart(history, now, backoff, intensity, random.Random(0))


def attempt_after(history: Sequence[Event]) -> int:
    """The backoff attempt decided after the crash that ends ``history``."""
    last = history[-1]
    assert isinstance(last, ActorCrashed)
    decision = decide(history, last.crashed_at)
    assert isinstance(decision, Restart)
    return decision.attempt


# -- restart types x exit reasons (OTP) ---------------------------------------------------------
@pytest.mark.parametrize(
    ("restart", "reason", "expected"),
    [
        (RestartType.PERMANENT, ExitReason.NORMAL, True),
        (RestartType.PERMANENT, ExitReason.CRASH, True),
        (RestartType.PERMANENT, ExitReason.SHUTDOWN, False),
        (RestartType.TRANSIENT, ExitReason.NORMAL, False),
        (RestartType.TRANSIENT, ExitReason.CRASH, True),
        (RestartType.TRANSIENT, ExitReason.SHUTDOWN, False),
        (RestartType.TEMPORARY, ExitReason.NORMAL, False),
        (RestartType.TEMPORARY, ExitReason.CRASH, False),
        (RestartType.TEMPORARY, ExitReason.SHUTDOWN, False),
    ],
)
def test_restart_type_by_exit_reason(
    restart: RestartType, reason: ExitReason, expected: bool
) -> None:
    assert should_restart(restart, reason) is expected


# -- backoff ------------------------------------------------------------------------------------
def test_backoff_delays_grow_geometrically_up_to_the_cap() -> None:
    policy = BackoffPolicy(min_delay=0.5, max_delay=30.0, factor=2.0, jitter=0.0)
    assert [policy.base_delay(n) for n in range(1, 10)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        30.0,
        30.0,
        30.0,
    ]
    rng = random.Random(1)
    assert [policy.delay(n, rng) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    # Attempt numbers that would overflow a float power are simply the cap.
    assert policy.base_delay(10_000) == 30.0
    assert policy.delay(10_000, rng) == 30.0
    # Factor 1: a constant delay; attempt 0 is treated as the first.
    constant = BackoffPolicy(min_delay=2.0, max_delay=9.0, factor=1.0, jitter=0.0)
    assert {constant.base_delay(n) for n in (0, 1, 2, 50, 10_000)} == {2.0}
    # Other factors: min * factor ** (n - 1).
    triple = BackoffPolicy(min_delay=0.1, max_delay=100.0, factor=3.0, jitter=0.0)
    for n in range(1, 8):
        assert triple.base_delay(n) == pytest.approx(min(100.0, 0.1 * 3.0 ** (n - 1)))


def test_backoff_jitter_stays_within_its_bound() -> None:
    policy = BackoffPolicy(min_delay=0.5, max_delay=30.0, factor=2.0, jitter=0.2)
    for seed in range(20):
        rng = random.Random(seed)
        for attempt in range(1, 10):
            base = policy.base_delay(attempt)
            draws = [policy.delay(attempt, rng) for _ in range(200)]
            # Delays are rounded to the millisecond; every base here is a whole millisecond.
            assert all(base <= d <= base * 1.2 + 1e-9 for d in draws), (attempt, base, draws)
            # The jitter is really drawn: the draws spread over most of the allowed range.
            assert max(draws) - min(draws) > 0.5 * base * 0.2
    # The same seed gives the same delays (a test can pin them down).
    first = [policy.delay(3, random.Random(42)) for _ in range(5)]
    again = [policy.delay(3, random.Random(42)) for _ in range(5)]
    assert first == again


def test_full_jitter_of_one_at_most_doubles_the_delay() -> None:
    policy = BackoffPolicy(min_delay=1.0, max_delay=8.0, factor=2.0, jitter=1.0)
    rng = random.Random(3)
    for attempt in range(1, 6):
        base = policy.base_delay(attempt)
        for _ in range(500):
            assert base <= policy.delay(attempt, rng) <= 2 * base


@pytest.mark.parametrize(
    "options",
    [
        {"min_delay": -0.1},
        {"min_delay": 5.0, "max_delay": 1.0},
        {"factor": 0.5},
        {"jitter": -0.1},
        {"jitter": 1.5},
        {"reset_after": 0.0},
    ],
)
def test_backoff_policy_refuses_nonsense(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        BackoffPolicy(**options)


@pytest.mark.parametrize("options", [{"max_restarts": -1}, {"within": 0.0}, {"within": -5.0}])
def test_intensity_refuses_nonsense(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="intensity needs"):
        Intensity(**options)


def test_consecutive_crashes_raise_the_attempt_and_the_delay() -> None:
    history: list[Event] = [started(0)]
    seen: list[tuple[int, float]] = []
    for k in range(1, 8):
        history.append(crashed(k * 10, uptime=1.0))
        decision = decide(history, at(k * 10))
        assert isinstance(decision, Restart)
        seen.append((decision.attempt, decision.delay))
        history += [
            backoff_scheduled(k * 10, decision.attempt, decision.delay),
            restarted(k * 10 + decision.delay, attempt=decision.attempt, delay=decision.delay),
            started(k * 10 + decision.delay, generation=k + 1),
        ]
    assert seen == [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0), (6, 32.0), (7, 60.0)]


def test_a_crash_after_a_stable_run_starts_the_count_again() -> None:
    # Three quick crashes in a row: the next delay would be the fourth step...
    history = [started(0), *crash_restarts(3, start=1, spacing=2)]
    history.append(started(100, generation=4))
    # ...but this incarnation ran for 45 s >= reset_after (30 s): back to the first step.
    history.append(crashed(145, uptime=45.0, generation=4))
    decision = decide(history, at(145))
    assert decision == Restart(attempt=1, delay=1.0)
    # Without the stable run the same history would be on attempt 4.
    quick = [*history[:-1], crashed(145, uptime=1.0, generation=4)]
    assert decide(quick, at(145)) == Restart(attempt=4, delay=8.0)


def test_the_count_goes_on_from_the_crash_after_a_stable_run() -> None:
    # Restart number n after consecutive crashes waits min * factor**(n-1), and a crash after a
    # stable run "starts the count again": that crash is restart 1, the next quick crash is
    # restart 2 (2 s), then 3 (4 s), exactly as for an actor that has just started.
    def attempts_after_first_crash(uptime: float) -> list[int]:
        history: list[Event] = [started(0), crashed(100, uptime=uptime)]
        attempts = [attempt_after(history)]
        for k in range(2):
            t = 110.0 + 10 * k
            history += [
                backoff_scheduled(t - 9, attempt=attempts[-1]),
                restarted(t - 8, attempt=attempts[-1]),
                started(t - 1, generation=k + 2),
                crashed(t, uptime=1.0, generation=k + 2),
            ]
            attempts.append(attempt_after(history))
        return attempts

    assert attempts_after_first_crash(uptime=1.0) == [1, 2, 3]  # from a fresh start
    assert attempts_after_first_crash(uptime=45.0) == [1, 2, 3]  # after a stable run


# -- restart intensity (OTP's MaxR within MaxT) -------------------------------------------------
def test_too_many_crash_restarts_within_the_window_park_the_actor() -> None:
    intensity = Intensity(max_restarts=3, within=60.0)
    # Three crash restarts in the last minute, then a fourth crash: parked.
    history: list[Event] = [started(0), *crash_restarts(3, start=10, spacing=10)]
    history += [started(41, generation=4), crashed(42, generation=4)]
    decision = decide(history, at(42), intensity=intensity)
    assert isinstance(decision, Park)
    assert decision.restarts == 3
    assert "4 crash restarts" in decision.reason
    assert "60s" in decision.reason
    assert "limit 3" in decision.reason
    # One restart fewer is still within the limit: restart, with the attempt counted on.
    fewer: list[Event] = [started(0), *crash_restarts(2, start=10, spacing=10)]
    fewer += [started(31, generation=3), crashed(42, generation=3)]
    assert decide(fewer, at(42), intensity=intensity) == Restart(attempt=3, delay=4.0)


def test_no_restarts_allowed_parks_at_the_first_crash() -> None:
    decision = decide(
        [started(0), crashed(5)], at(5), intensity=Intensity(max_restarts=0, within=60)
    )
    assert isinstance(decision, Park)
    assert decision.restarts == 0


def test_restarts_that_left_the_window_no_longer_count() -> None:
    intensity = Intensity(max_restarts=2, within=60.0)
    # Two crash restarts long ago (t=10 and t=20), a third one 30 s ago.
    history: list[Event] = [started(0), *crash_restarts(3, start=10, spacing=10)]
    history += [started(31, generation=4), crashed(90, uptime=59, generation=4)]
    # At t=90 only the restart at 30.5 is inside the last 60 s: 1 + 1 <= 2.
    assert isinstance(decide(history, at(90), intensity=intensity), Restart)
    # At t=80 the one at 20.5 still is (59.5 s ago): 2 + 1 > 2.
    assert isinstance(decide(history, at(80), intensity=intensity), Park)
    # A restart exactly `within` ago is outside the window; a hair inside, it counts.
    edge: list[Event] = [restarted(0), restarted(30), crashed(60)]
    assert isinstance(decide(edge, at(60.0), intensity=intensity), Restart)
    assert isinstance(decide(edge, at(59.999), intensity=intensity), Park)


def test_spaced_failures_never_trip_the_intensity() -> None:
    intensity = Intensity(max_restarts=1, within=60.0)
    policy = BackoffPolicy(min_delay=0.5, max_delay=0.5, jitter=0.0, reset_after=3600)
    history: list[Event] = [started(0)]
    t = 0.0
    for k in range(200):
        # Each crash comes just after the previous restart has left the window.
        t += 60.0 + 0.5 + 0.001
        history.append(crashed(t, uptime=60.0, generation=k + 1))
        decision = decide(history, at(t), backoff=policy, intensity=intensity)
        assert isinstance(decision, Restart), (k, decision)
        history += [
            backoff_scheduled(t, decision.attempt, decision.delay),
            restarted(t + decision.delay, attempt=decision.attempt, delay=decision.delay),
            started(t + decision.delay, generation=k + 2),
        ]


@pytest.mark.parametrize("cause", ["operator", "failover"])
def test_operator_and_failover_restarts_do_not_count_toward_the_intensity(
    cause: RestartCause,
) -> None:
    intensity = Intensity(max_restarts=2, within=60.0)
    history: list[Event] = [started(0)]
    for k in range(10):
        history += [restarted(k + 0.5, cause=cause), started(k + 0.6, generation=k + 2)]
    history.append(crashed(11, generation=12))
    assert decide(history, at(11), intensity=intensity) == Restart(attempt=1, delay=1.0)


def test_an_operator_restart_resets_the_window_and_the_backoff_count() -> None:
    intensity = Intensity(max_restarts=2, within=60.0)
    history: list[Event] = [started(0), *crash_restarts(2, start=1, spacing=1)]
    history += [started(3, generation=3), crashed(4, generation=3)]
    assert isinstance(decide(history, at(4), intensity=intensity), Park)
    # The same crashes, but an operator restarted the actor before the last one.
    history[-1:-1] = [restarted(3.5, cause="operator"), started(3.6, generation=4)]
    assert decide(history, at(4), intensity=intensity) == Restart(attempt=1, delay=1.0)


def test_after_unparking_the_window_starts_afresh() -> None:
    intensity = Intensity(max_restarts=2, within=60.0)
    history: list[Event] = [started(0), *crash_restarts(2, start=1, spacing=1)]
    history += [started(3, generation=3), crashed(4, generation=3)]
    decision = decide(history, at(4), intensity=intensity)
    assert isinstance(decision, Park)
    history.append(parked(4, restarts=decision.restarts))
    # An operator starts it again (unparks) a few seconds later; it crashes at once.
    history += [started(10, generation=4), crashed(11, generation=4)]
    assert decide(history, at(11), intensity=intensity) == Restart(attempt=1, delay=1.0)


# -- status projection --------------------------------------------------------------------------
def recorded(events: Sequence[Event]) -> list[RecordedEvent]:
    return [
        RecordedEvent(
            position=n,
            transaction_id=1000 + n,
            event_id=uuid.uuid4(),
            stream=actor_stream(ACTOR),
            version=n,
            type=str(type(event).__struct_config__.tag),
            schema_version=1,
            event=event,
            metadata=EventMetadata(caused_by="supervisor", node="a"),
            recorded_at=T0,
        )
        for n, event in enumerate(events, start=1)
    ]


def status_of(
    events: Sequence[Event],
    now: float = 3600.0,
    *,
    desired: Literal["running", "stopped", "parked"] = "running",
    lease: LeaseInfo | None = None,
) -> ActorStatus:
    return project_status(ACTOR, recorded(events), at(now), desired=desired, lease=lease)


def test_status_of_an_actor_never_started() -> None:
    status = status_of([])
    assert status.actor == ACTOR
    assert status.state == "never started"
    assert (status.node, status.generation, status.since) == (None, None, None)
    assert status.restarts_last_hour == 0
    assert status.last_error is None
    assert status.desired == "running"
    assert status.lease_live is None


def test_status_follows_the_lifecycle() -> None:
    history: list[Event] = [started(10, generation=3, node="node-7")]
    status = status_of(history)
    assert (status.state, status.node, status.generation, status.since) == (
        "running",
        "node-7",
        3,
        at(10),
    )

    history.append(crashed(20, generation=3))
    status = status_of(history)
    assert (status.state, status.since) == ("starting", at(20))
    assert status.last_error == "RuntimeError: boom"
    assert status.last_error_at == at(20)

    history.append(backoff_scheduled(20, attempt=1, delay=4.0))
    status = status_of(history, now=22)
    assert (status.state, status.since, status.backing_off_until) == (
        "backing off",
        at(20),
        at(24),
    )

    history.append(restarted(24))
    status = status_of(history)
    assert (status.state, status.since, status.backing_off_until) == ("starting", at(24), None)
    assert status.restarts_last_hour == 1

    history.append(started(25, generation=4, node="node-7"))
    status = status_of(history)
    assert (status.state, status.generation, status.since) == ("running", 4, at(25))
    assert status.last_error == "RuntimeError: boom"  # the last error stays visible

    history.append(stopped(30, reason="stopped by alice: maintenance"))
    status = status_of(history)
    assert (status.state, status.since) == ("stopped", at(30))
    assert status.stop_reason == "stopped by alice: maintenance"

    history.append(started(40, generation=5))
    status = status_of(history)
    assert (status.state, status.stop_reason) == ("running", None)


def test_a_backoff_whose_time_has_come_reads_starting_until_the_restart_is_recorded() -> None:
    # The supervisor appends ActorRestarted with the next incarnation's ActorStarted, once that
    # incarnation is up: while it starts, the log still ends with the backoff. A health check
    # then must not report "backing off" (the false alert of a slow start after a crash).
    history: list[Event] = [
        started(10, generation=3),
        crashed(20, generation=3),
        backoff_scheduled(20, attempt=1, delay=4.0),
    ]
    assert status_of(history, now=23.999).state == "backing off"
    for now in (24, 26, 3600):
        status = status_of(history, now=now)
        assert (status.state, status.since, status.backing_off_until) == (
            "starting",
            at(24),
            None,
        )
        assert status.last_error == "RuntimeError: boom"
    # Recorded, the restart and the start move it on as before.
    history += [restarted(26), started(26, generation=4)]
    assert status_of(history, now=27).state == "running"
    # A parked desired state still wins.
    assert status_of(history[:3], now=30, desired="parked").state == "parked"


def test_status_of_a_parked_actor() -> None:
    history: list[Event] = [
        started(0),
        crashed(1),
        backoff_scheduled(1),
        restarted(1.5),
        started(1.6, generation=2),
        crashed(2, generation=2),
        parked(2, restarts=1),
    ]
    status = status_of(history)
    assert (status.state, status.since) == ("parked", at(2))
    assert status.stop_reason == "restart intensity exceeded"
    assert status.backing_off_until is None
    # The desired state (from the log of commands) overrides the last event.
    assert status_of([started(0)], desired="parked").state == "parked"
    assert status_of([started(0)], desired="stopped").desired == "stopped"


def test_status_counts_only_the_restarts_of_the_last_hour() -> None:
    now = 10_000.0
    history: list[Event] = [started(0)]
    for when in (now - 7200, now - 3601, now - 3599, now - 60, now - 1):
        history += [restarted(when, cause="crash"), started(when + 0.1)]
    history.append(restarted(now - 30, cause="operator"))
    assert status_of(history, now=now).restarts_last_hour == 4


def test_status_reports_whether_the_lease_is_live() -> None:
    def lease(node: str | None, live: bool) -> LeaseInfo:
        return LeaseInfo(
            name=ACTOR,
            node=node,
            generation=2,
            acquired_at=T0,
            renewed_at=T0,
            expires_at=T0,
            live=live,
        )

    assert status_of([started(0)], lease=lease("a", True)).lease_live is True
    assert status_of([started(0)], lease=lease("a", False)).lease_live is False
    assert status_of([started(0)], lease=lease(None, True)).lease_live is False  # released


# -- tick schedule ------------------------------------------------------------------------------
def test_a_tick_never_recorded_is_due_now() -> None:
    spec = TickSpec(interval=60)
    assert next_tick_due(spec, None, at(5)) == at(5)
    assert next_tick_due(TickSpec(interval=60, missed="skip"), None, at(5)) == at(5)


@pytest.mark.parametrize("missed", ["run_once", "skip"])
def test_a_tick_on_schedule_is_due_one_interval_after_the_last(
    missed: Literal["skip", "run_once"],
) -> None:
    spec = TickSpec(interval=60, jitter=5, missed=missed)
    assert next_tick_due(spec, at(0), at(0)) == at(60)
    assert next_tick_due(spec, at(0), at(30)) == at(60)
    assert next_tick_due(spec, at(0), at(60)) == at(60)  # due exactly now: on schedule


def test_an_overdue_tick_with_run_once_is_due_now() -> None:
    spec = TickSpec(interval=60, missed="run_once")
    assert next_tick_due(spec, at(0), at(60.001)) == at(60.001)
    assert next_tick_due(spec, at(0), at(150)) == at(150)
    assert next_tick_due(spec, at(0), at(86_400 * 3)) == at(86_400 * 3)


def test_an_overdue_tick_with_skip_waits_for_the_next_slot_of_the_schedule() -> None:
    spec = TickSpec(interval=60, missed="skip")
    assert next_tick_due(spec, at(0), at(61)) == at(120)
    assert next_tick_due(spec, at(0), at(150)) == at(180)
    assert next_tick_due(spec, at(0), at(179.5)) == at(180)
    # Days of downtime: still on the original grid, never in the past.
    due = next_tick_due(spec, at(0), at(86_400 * 3 + 7))
    assert due == at(86_400 * 3 + 60)
    assert ((due - at(0)).total_seconds() % 60) == 0


@pytest.mark.parametrize(
    ("interval", "jitter"),
    [(0, 0), (-1, 0), (math.inf, 0), (math.nan, 0), (10, -0.1), (10, 10), (10, 11), (10, math.nan)],
)
def test_tick_spec_refuses_nonsense(interval: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="tick"):
        TickSpec(interval=interval, jitter=jitter)


def test_tick_spec_accepts_sensible_values() -> None:
    spec = TickSpec(interval=0.5, jitter=0.499, missed="skip")
    assert (spec.interval, spec.jitter, spec.missed) == (0.5, 0.499, "skip")
    assert TickSpec(interval=60).missed == "run_once"


# -- a child's lifecycle -------------------------------------------------------------------------
BACKING_OFF = BackingOff(until=T0, attempt=1, delay=0.5)


@pytest.mark.parametrize(
    "path",
    [
        # started, crashed, backed off, restarted, stopped by an operator, started again
        [
            StandingBy(),
            Starting(1),
            Running(1),
            BACKING_OFF,
            Starting(2),
            Running(2),
            Stopped("stopped by alice"),
            StandingBy(),
        ],
        # a backoff from before a deploy resumes as soon as the lease is held
        [StandingBy(), Starting(3), BACKING_OFF, Starting(4), Running(4)],
        # an operator restart takes a new generation; the lease lost, it stands by again
        [StandingBy(), Starting(1), Running(1), Starting(2), Running(2), Fenced("taken over")],
        [Fenced("expired"), StandingBy()],
        # the database went away mid-run: it stands by, the lease still its own
        [Running(1), StandingBy()],
        # parked, and the node stopping before it ever ran
        [Running(1), Stopped("parked: too many crashes")],
        [StandingBy(), Stopped("shutdown")],
    ],
)
def test_a_child_moves_along_its_lifecycle(path: list[ChildState]) -> None:
    state = path[0]
    for new in path[1:]:
        state = transition(state, new)
    assert state == path[-1]


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (StandingBy(), Running(1)),  # never runs without a recorded start under a lease
        (Stopped("stopped by alice"), Starting(1)),  # only after standing by for the lease
        (Fenced("expired"), Starting(2)),
        (Fenced("expired"), Running(1)),
        (BACKING_OFF, Running(1)),  # a restart starts again: a new generation
        (Stopped("shutdown"), Fenced("expired")),
    ],
)
def test_a_move_the_lifecycle_does_not_allow_is_refused_loudly(
    current: ChildState, new: ChildState
) -> None:
    with pytest.raises(IllegalTransition, match=type(new).__name__):
        transition(current, new)


def test_an_exit_maps_to_its_otp_reason() -> None:
    assert exit_reason(Crashed(RuntimeError("boom"), uptime=1.0, at=T0)) is ExitReason.CRASH
    assert exit_reason(Finished()) is ExitReason.NORMAL
