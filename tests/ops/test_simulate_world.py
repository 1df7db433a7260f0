"""Seeded simulations of the whole system: fixed seeds hold every guarantee, a seed replays
exactly, and a broken guarantee is reported with its seed."""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from actors import tasks as actor_tasks
from actors.channel_analytics import AnalyticsState, ChannelAnalytics
from actors.config import PRICE_STEP, Settings, channel_price
from actors.health import HealthChecker
from actors.runtime import ActorRunner, Message
from actors.tasks import AdminAlert
from bot_gateway.service import Gateway
from events import (
    ChannelPriceChanged,
    ChannelStatsUpdated,
    CleanupCompleted,
    Event,
    EventMetadata,
    RewardCredited,
    RewardEarned,
)
from events.errors import ConcurrencyConflict, EventIdReused
from events.streams import user_stream
from ops.cli import main as cli
from ops.simulate import SimResult, run
from ops.simulate.cli import FAULTS
from ops.simulate.world import OLD_SAMPLES, InvariantViolated, Report, Scenario, simulate
from store import NO_STREAM, NewEvent, views
from store.memory import MemoryLog
from store.tasks import TaskContext
from store.tasks.processor import TaskProcessor

# Seconds each: in `make test` (and `make test-simulation`), not in `make check`.
pytestmark = pytest.mark.simulation

# Short runs: half an hour of faulty traffic for 20 users, then the quiet half hour in which
# all due work must be done. `i3lani simulate` runs an hour for 50 users by default.
SHORT = Scenario(users=20, hours=0.5, settle=1800.0)
FIXED_SEEDS = (1, 2)


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    # Injected faults make the production code log crashes and retries by the hundred.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    yield
    root.setLevel(level)


@pytest.fixture(scope="module")
def fixed_runs() -> dict[int, SimResult[Report]]:
    """Each fixed seed's run, once for the module."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        return {
            seed: run(lambda: simulate(SHORT), seed=seed, max_time=3 * 3600) for seed in FIXED_SEEDS
        }
    finally:
        root.setLevel(level)


@pytest.mark.parametrize("seed", FIXED_SEEDS)
def test_a_fixed_seed_holds_every_guarantee(
    seed: int, fixed_runs: dict[int, SimResult[Report]]
) -> None:
    # simulate() raises InvariantViolated on any broken guarantee; these say the run was a
    # real one: work of every kind done, under faults.
    report = fixed_runs[seed].value
    assert report.rewards == report.credited
    assert report.rewards > 0
    assert report.payments > 0
    assert report.store_faults > 0
    # Channels added, measured through the Bot API stand-in and priced: whether a seed's users
    # add any is drawn per seed, so across the fixed seeds, some did.
    runs = [result.value for result in fixed_runs.values()]
    assert sum(r.channels for r in runs) > 0
    assert sum(r.measurements for r in runs) > 0
    assert sum(r.price_changes for r in runs) > 0
    # Cleanup pruned the samples past their retention (checked at the end: all of them, and
    # none of the run's own); the HealthChecker recorded verdicts.
    assert report.cleanups > 0
    assert 0 < report.samples_pruned <= OLD_SAMPLES
    assert report.verdicts > 0
    # Health rounds recorded during TonAPI's long outage all said it fails: across the fixed
    # seeds, some were.
    assert sum(result.value.outage_rounds for result in fixed_runs.values()) > 0
    # Which users pay in full is drawn per seed: across the fixed seeds, some did.
    assert sum(result.value.confirmed for result in fixed_runs.values()) > 0
    assert sum(result.value.telegram_faults for result in fixed_runs.values()) > 0


def test_a_seed_replays_event_for_event(fixed_runs: dict[int, SimResult[Report]]) -> None:
    first = fixed_runs[FIXED_SEEDS[0]]
    again = run(lambda: simulate(SHORT), seed=FIXED_SEEDS[0], max_time=3 * 3600)
    assert again.value == first.value  # the log's digest included
    assert (again.digest, again.steps) == (first.digest, first.steps)
    assert again.elapsed == first.elapsed
    assert fixed_runs[FIXED_SEEDS[1]].value.log_digest != first.value.log_digest


def _run_with_a_bug(
    bug: Callable[[MemoryLog], Awaitable[None]], seed: int = FIXED_SEEDS[0]
) -> None:
    """Run SHORT at ``seed`` with ``bug`` writing to its log ten minutes after the faults
    stopped, behind the actors' backs (a bug's effect); raise what the run raises."""
    original = MemoryLog.__init__
    logs: list[MemoryLog] = []

    def keep(self: MemoryLog, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        logs.append(self)

    async def meddled() -> object:
        async with anyio.create_task_group() as tg:

            async def meddle() -> None:
                await anyio.sleep(SHORT.hours * 3600 + 600)
                await bug(logs[0])

            tg.start_soon(meddle)
            try:
                return await simulate(SHORT)
            except InvariantViolated as exc:
                violated = exc
                tg.cancel_scope.cancel()
        raise violated

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MemoryLog, "__init__", keep)
        run(meddled, seed=seed, max_time=3 * 3600)


def test_a_reward_credited_twice_is_reported() -> None:
    # A bug that credits twice, stood in for by a second credit appended in the middle of the
    # run: the next check must name it.
    async def credit_again(log: MemoryLog) -> None:
        async for batch in log.read_batches(category="user", skip_unknown=True):
            for recorded in batch:
                if isinstance(recorded.event, RewardCredited):
                    again = RewardCredited(
                        reward_id=recorded.event.reward_id,
                        user_id=recorded.event.user_id,
                        amount_nanotons=recorded.event.amount_nanotons,
                        balance_after_nanotons=recorded.event.balance_after_nanotons
                        + recorded.event.amount_nanotons,
                        credited_at=datetime.now(UTC),
                    )
                    await log.append(f"bug-{uuid.uuid4().hex}", [again])
                    return

    with pytest.raises(InvariantViolated, match="credited twice") as caught:
        _run_with_a_bug(credit_again)
    assert any(f"seed={FIXED_SEEDS[0]} " in note for note in caught.value.__notes__)


async def _prune_the_runs_own_samples(log: MemoryLog) -> None:
    """A Cleanup bug: the run's own samples pruned (a retention of nothing)."""
    await views.prune_health_samples(log, datetime(3000, 1, 1, tzinfo=UTC), batch_size=100)


async def _count_samples_never_kept(log: MemoryLog) -> None:
    """A Cleanup bug: a pass recorded with more samples removed than ever were past their
    retention (rows counted twice)."""
    now = datetime.now(UTC)
    done = CleanupCompleted(
        removed={"health_samples": OLD_SAMPLES + 1}, started_at=now, finished_at=now
    )
    await log.append(f"bug-{uuid.uuid4().hex}", [done])


@pytest.mark.parametrize(
    ("bug", "violation"),
    [
        (_prune_the_runs_own_samples, "health samples of this run pruned"),
        (_count_samples_never_kept, "only 40 were ever past their retention"),
    ],
)
def test_a_cleanup_that_prunes_too_much_is_reported(
    bug: Callable[[MemoryLog], Awaitable[None]], violation: str
) -> None:
    with pytest.raises(InvariantViolated, match=violation):
        _run_with_a_bug(bug)


def test_an_alert_never_delivered_is_reported() -> None:
    # A HealthChecker whose deliveries report success without sending anything: the alerts
    # of the outage (failing, then recovered) never reach the admin.
    async def lost(self: HealthChecker, alert: AdminAlert, context: TaskContext) -> None:
        await anyio.lowlevel.checkpoint()

    # Whether a seed's checker raises an alert at all depends on its schedule (an operator may
    # keep the HealthChecker stopped through the whole outage): every seed that raises one
    # must report it undelivered, and one of these seeds at least does.
    violations: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HealthChecker, "_deliver", lost)
        for seed in (*FIXED_SEEDS, 3, 4):
            try:
                report = run(lambda: simulate(SHORT), seed=seed, max_time=3 * 3600).value
            except InvariantViolated as violation:
                violations.append(str(violation))
            else:
                assert report.alerts == 0, (seed, report)  # raised, never sent, not reported
    assert violations
    assert all("never reached the admin" in violation for violation in violations), violations


def test_a_health_check_blind_to_an_outage_is_reported() -> None:
    # A HealthChecker whose TonAPI check passes without asking: the first round recorded
    # during TonAPI's long outage gives it away.
    async def blind(self: HealthChecker) -> str:
        return ""

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HealthChecker, "_tonapi", blind)
        found = _first_violation(SHORT, range(1, 6))
    assert "into a TonAPI outage, says TonAPI passes" in found


@pytest.mark.parametrize(
    ("off_by", "violation"),
    [
        (PRICE_STEP, "channel_price gives"),  # a wrong price for the measurement's audience
        (0, "not by the measurement just before it"),  # the right price, out of the blue
    ],
)
def test_a_wrong_price_is_reported(off_by: int, violation: str) -> None:
    # A pricing bug, stood in for by a ChannelPriceChanged appended to a measured channel's
    # stream: the next check must name it. Whether a seed's users add a channel at all is
    # drawn per seed: the first seed of a few that measures one is the one that counts.
    repriced: list[str] = []

    async def reprice(log: MemoryLog) -> None:
        for _ in range(30):  # until a channel has been measured, for half an hour at most
            async for batch in log.read_batches(category="channel", skip_unknown=True):
                for recorded in batch:
                    if isinstance(recorded.event, ChannelStatsUpdated):
                        stats = recorded.event
                        price = channel_price(stats.active_subscribers, Settings()) + off_by
                        wrong = ChannelPriceChanged(
                            channel=stats.channel,
                            new_price_nanotons=price,
                            active_subscribers=stats.active_subscribers,
                            changed_at=datetime.now(UTC),
                        )
                        await log.append(recorded.stream, [wrong])
                        repriced.append(stats.channel)
                        return
            await anyio.sleep(60)

    outcomes: list[str] = []
    for seed in (*FIXED_SEEDS, 3, 4, 5):
        try:
            _run_with_a_bug(reprice, seed)
            outcomes.append("no violation")
        except InvariantViolated as exc:
            outcomes.append(str(exc))
        if repriced:
            break
    assert repriced, "no seed of 1 to 5 measured a channel"
    assert re.search(violation, outcomes[-1]), outcomes[-1]


@pytest.mark.timeout(180)
def test_channels_measured_only_once_are_reported() -> None:
    # A bug that measures only channels never measured before (each keeps its first count):
    # the liveness check must name a channel not measured again since the faults stopped.
    # (Seed 1 finds it; with the notifier's per-user lanes before the simulator's speed-up it
    # took until seed 8, a few seconds a seed: hence the longer timeout, in case it moves.)
    original = ChannelAnalytics.on_tick

    async def new_only(
        self: ChannelAnalytics, state: AnalyticsState, runner: ActorRunner[AnalyticsState]
    ) -> Sequence[Message]:
        new = {key: view for key, view in state.channels.items() if view.subscribers is None}
        return await original(self, AnalyticsState(new), runner)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ChannelAnalytics, "on_tick", new_only)
        found = _first_violation(SHORT, range(1, 11))
    assert "not measured at their current count" in found


def test_the_command_prints_one_line_per_seed_and_the_rate() -> None:
    out = io.StringIO()
    code = cli(["simulate", "--seed", "4", "--seeds", "2", "--users", "10", "--hours", "0.25"], out)
    assert code == 0, out.getvalue()
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["seed 4", "seed 5"]
    assert all(": ok " in line for line in lines[:2])
    assert lines[2].startswith("2 seed(s), 0 failed, in ")
    assert lines[2].endswith("seeds/minute")


def test_a_seed_whose_run_crashes_is_a_failed_seed_with_its_replay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run that raises what no guarantee check raises (a bug in the production code or the
    world's, in a task group) is reported as that seed's failure, and the soak goes on:
    regression, a soak process ended with a traceback and no seed to replay."""
    from ops.simulate import world

    async def crashing(*args: object, **kwargs: object) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_raise_lookup)

    monkeypatch.setattr(world, "simulate", crashing)
    out = io.StringIO()
    code = cli(["simulate", "--seed", "7", "--seeds", "2", "--users", "10", "--hours", "0.25"], out)
    text = out.getvalue()
    assert code == 1, text
    assert "seed 7: FAILED: crashed: LookupError: no such key in the world" in text
    assert "seed 8: FAILED: crashed: LookupError" in text  # the next seed still ran
    assert "replay: i3lani simulate --seed 7 --users 10 --hours 0.25 --trace" in text
    assert text.splitlines()[-1].startswith("2 seed(s), 2 failed, in ")


async def _raise_lookup() -> None:
    raise LookupError("no such key in the world")


def test_bad_arguments_are_one_line() -> None:
    with pytest.raises(ValueError, match="users must be at least 6"):
        Scenario(users=3)
    out = io.StringIO()
    assert cli(["simulate", "--seeds", "0"], out) == 2


def test_a_short_random_sweep_holds_every_guarantee() -> None:
    # Beyond the fixed seeds, a few random ones each run (`make simulate` soaks for longer).
    # A failure prints its seed: `i3lani simulate --seed N --trace` replays it exactly.
    out = io.StringIO()
    code = cli(["simulate", "--seconds", "4", "--users", "10", "--hours", "0.25"], out)
    assert code == 0, out.getvalue()
    assert "0 failed" in out.getvalue().splitlines()[-1]


async def _append_first_before_8872215(
    self: Gateway, stream: str, event: Event, reward: RewardEarned | None, meta: EventMetadata
) -> bool:
    """Gateway._append_first as it was before commit 8872215: any conflict taken for "already
    registered", so a referral racing another write to the referrer's stream was lost."""
    try:
        async with self.store.transaction() as tx:
            await tx.append(stream, [event], expected_version=NO_STREAM, metadata=meta)
            if reward is not None:
                await tx.append(
                    user_stream(reward.user_id),
                    [NewEvent(event=reward, event_id=reward.reward_id)],
                    metadata=meta,
                )
    except (ConcurrencyConflict, EventIdReused):
        return False
    return True


def _first_violation(scenario: Scenario, seeds: range) -> str:
    """The first of ``seeds`` whose run breaks a guarantee, with the violation; fails the
    test when none does."""
    for seed in seeds:
        try:
            run(lambda: simulate(scenario), seed=seed, max_time=4 * 3600)
        except InvariantViolated as exc:
            return f"seed {seed}: {exc}"
    pytest.fail(f"no seed of {seeds.start} to {seeds.stop - 1} found the reintroduced bug")


def test_the_concurrent_referrals_bug_is_found_again() -> None:
    # The kill-9 storm found this bug (two users joining through one link at once lost one of
    # them); reintroduced, the simulation finds it within a few seeds of this short scenario
    # (9 of seeds 1 to 20, the first at seed 3, when every transfer became recorded).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Gateway, "_append_first", _append_first_before_8872215)
        found = _first_violation(SHORT, range(1, 11))
    assert "referrals earned no reward" in found


class _UnfencedProcessor(TaskProcessor):
    """The task processor as it was before issue 7: its writes carry no lease generation,
    so a node that lost its lease could still claim and record tasks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["fence"] = None
        super().__init__(*args, **kwargs)


@pytest.mark.timeout(180)
def test_the_stale_node_writing_task_events_bug_is_found_again() -> None:
    # The partition test found this bug (a node cut off past its lease still recorded task
    # outcomes); reintroduced, the simulation finds it when a node is stopped while it holds
    # a task and resumes after the other node took its lease. In the default scenario that is
    # rare (at seed 98 of 1 to 120 once ChannelAnalytics joined the world), so this run has
    # nodes stopped ten times as often and no other fault: it finds the bug at 3 of seeds 1 to
    # 20, the first at seed 1, since every transfer is recorded (6, the first at seed 2,
    # before: the schedules moved). Seed 1 finds it with the lease lapsed and not yet taken
    # by the other node: the same stale write. The schedules have moved since (the
    # simulator's speed-up, the notifier's per-user lanes): seed 6 finds it first now, about
    # 2 s a seed; the timeout leaves room for it to move again.
    pauses_only = Scenario(
        pauses_per_hour=30.0,
        **{rate: 0 for rate in FAULTS.values() if rate != "pauses_per_hour"},
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(actor_tasks, "TaskProcessor", _UnfencedProcessor)
        found = _first_violation(pauses_only, range(1, 11))
    assert re.search(r"node-\d committed Task\w+ to task-\d+ \(work of \w+\) while", found)
    assert "lease" in found


class _DeafAfterAnErrorProcessor(TaskProcessor):
    """The task processor as it was before it claimed again after a failed statement: a
    failure between a claim that came back short and the look for the next due task left it
    with no poll set, deaf once its LISTEN connection was gone too."""

    def _claim_after_error(self) -> None:
        pass


def test_the_deaf_processor_bug_is_found_again() -> None:
    # Found as the rare failure of tests/actors/test_health_database_outage.py (an alert never
    # sent after PostgreSQL came back), not by the simulator: its in-memory followers never
    # lost their wake-ups. They do now (a store fault loses the listening of the node it hits,
    # as a lost connection does), and the simulator finds the bug reintroduced: in the default
    # scenario at 3 of seeds 21 to 170 (the first at seed 33); in this short one, with store
    # faults 25 times as frequent, at 10 of seeds 1 to 20, the first at seed 1. The fixed
    # processor passes all of them.
    faulty_store = dataclasses.replace(SHORT, store_fault_rate=0.05)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(actor_tasks, "TaskProcessor", _DeafAfterAnErrorProcessor)
        found = _first_violation(faulty_store, range(1, 11))
    assert "liveness" in found or "never reached the admin" in found
    # The bug is what the seed finds: with the processor as it is, the same seed passes.
    seed = int(found.removeprefix("seed ").partition(":")[0])
    run(lambda: simulate(faulty_store), seed=seed, max_time=4 * 3600)


def test_a_failing_seed_is_shrunk_to_a_smaller_scenario_that_still_fails() -> None:
    # The referrals bug needs no fault at all, only users joining at once: shrinking the
    # failing seed leaves most kinds of fault out, and the command it prints fails again.
    # (Seed 4 found it from the notifier's per-user lanes until the HealthChecker, Cleanup
    # and TonAPI's long outage joined the world and moved the schedules; then seed 2; seed 3
    # stopped finding it with issue 13's first speed-up.)
    # Which seeds find it moves with the schedules, so the test takes the first that does.
    out = io.StringIO()
    scenario = ["--users", "20", "--hours", "0.25", "--nodes", "1"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Gateway, "_append_first", _append_first_before_8872215)
        failing = next(
            (
                seed
                for seed in range(1, 16)
                if cli(["simulate", "--seed", str(seed), *scenario], io.StringIO()) == 1
            ),
            None,
        )
        assert failing is not None, "no seed of 1 to 15 found the reintroduced bug"
        start = ["simulate", "--seed", str(failing), *scenario]
        assert cli([*start, "--shrink"], out) == 1
        smallest = out.getvalue().split("smallest failing: i3lani ", 1)[1].splitlines()[0]
        assert smallest.count("--without") >= 5, out.getvalue()
        again = io.StringIO()
        assert cli(smallest.split(), again) == 1
    assert "referrals earned no reward" in again.getvalue()
