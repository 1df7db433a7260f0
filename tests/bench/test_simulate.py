"""The simulate suite's pure parts: reading ``i3lani simulate``'s output and the worker's line,
the workloads' scenarios, and when two runs of a seed count as the same run."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from bench.report import Goal, Row, Verdict
from bench.simulate import _Exit, parse_soak, replay_failure
from bench.simulate_worker import Failed, Measured, decode_outcome, quiet_rates, scenario_for
from ops.simulate.world import Scenario

# As `i3lani simulate --seconds 20` prints it (ops/simulate/cli.py), one seed failing.
SOAK = """\
seed 3141: ok  45 rewards credited once each, 22 payments (10 confirmed, each once), 566 \
events; 142 store faults, 3 lost acks, 3 kills, 2 cuts, 7 TonAPI faults, 2 commands, 2 \
redeliveries, 4 duplicate updates; 1.5 h simulated in 10.5 s; log a85d7ad7862bf4ae
seed 2718: FAILED: reward r-1 credited twice
simulated run: seed=2718 steps=1234 virtual time=600.000 s digest=0123 (the same seed replays it)
  the faults and commands before it:
  node-1 killed
  replay: i3lani simulate --seed 2718 --trace
seed 42: ok  45 rewards credited once each, 22 payments (14 confirmed, each once), 561 events; \
131 store faults, 1 kills, 2 cuts, 2 TonAPI faults, 7 commands, 1 redeliveries; 1.6 h simulated \
in 8.3 s; log ccc088877d7a1661
3 seed(s), 1 failed, in 27.1 s: 7 seeds/minute
"""


def test_a_soak_counts_every_seed_and_names_the_failed_ones() -> None:
    soak = parse_soak(SOAK)
    assert soak.seeds == 3
    assert soak.failed == ((2718, "reward r-1 credited twice"),)
    assert soak.simulated_hours == pytest.approx(3.1)
    assert soak.summary == "3 seed(s), 1 failed, in 27.1 s: 7 seeds/minute"


def test_a_soak_cut_short_has_no_summary() -> None:
    soak = parse_soak(SOAK.splitlines(keepends=True)[0])
    assert (soak.seeds, soak.failed, soak.summary) == (1, (), None)
    assert parse_soak("").seeds == 0


BASE = Measured(
    workload="default",
    seed=1,
    simulated_seconds=5400.0,
    wall_seconds=8.0,
    steps=400_000,
    events=566,
    digest="schedule",
    log_digest="log",
)


def _measured(**changes: object) -> Measured:
    return msgspec.structs.replace(BASE, **changes)


def test_the_worker_line_decodes_to_its_outcome() -> None:
    measured = _measured()
    assert decode_outcome(msgspec.json.encode(measured)) == measured
    failed = Failed(workload="quiet", seed=7, failure="Deadlock: nothing ready")
    assert decode_outcome(msgspec.json.encode(failed).decode()) == failed
    with pytest.raises(msgspec.ValidationError):
        decode_outcome('{"outcome": "measured", "seed": 1}')


def test_the_workloads() -> None:
    assert scenario_for("default", 24) == Scenario()
    quiet = scenario_for("quiet", 6)
    assert (quiet.users, quiet.hours, quiet.settle) == (50, 6, 1800)
    named = {"store_fault_rate", "kills_per_hour", "cuts_per_hour", "commands_per_hour"}
    assert named | {"tonapi_faults_per_hour"} <= set(quiet_rates())
    assert all(getattr(quiet, rate) == 0 for rate in quiet_rates())


def test_a_replay_is_the_same_run_only_when_log_and_schedule_agree() -> None:
    assert replay_failure([_measured(), _measured()]) is None
    different = replay_failure([_measured(), _measured(digest="other", steps=400_001)])
    assert different == "not the same run: digest schedule != other, steps 400000 != 400001"
    assert replay_failure([_measured(), "replay 2 exited -9: no output on stderr"]) == (
        "replay 2 exited -9: no output on stderr"
    )
    failed = Failed(workload="default", seed=1, failure="InvariantViolated: paid twice")
    assert replay_failure([failed, _measured()]) == "seed 1: InvariantViolated: paid twice"


def test_a_row_with_a_failure_fails_whatever_its_figure() -> None:
    met = Row("s", "seeds/minute", 150, "seeds/min", "goal", 100, goal=Goal.ratio_at_least(1))
    assert met.verdict is Verdict.PASS
    assert dataclasses.replace(met, failure="seed 3 failed").verdict is Verdict.FAIL
    check = Row("s", "replay", 1, "steps", goal=Goal.holds("same digests"))
    assert check.verdict is Verdict.PASS
    assert check.goal is not None
    assert check.goal.describe() == "same digests"


def test_a_crashed_soak_is_reported_by_its_exception_not_the_box_of_its_group() -> None:
    stderr = (
        "  + Exception Group Traceback (most recent call last):\n"
        "  | ExceptionGroup: unhandled errors in a TaskGroup (1 sub-exception)\n"
        "  +-+---------------- 1 ----------------\n"
        "    | Traceback (most recent call last):\n"
        '    |   File "world.py", line 1, in run\n'
        "    | KeyError: 'payment-7'\n"
        "    +------------------------------------\n"
    )
    assert _Exit(1, "", stderr, 1.0).last_error() == "KeyError: 'payment-7'"
    assert _Exit(1, "", "plain last words\n", 1.0).last_error() == "plain last words"
    assert _Exit(1, "", "", 1.0).last_error() == "no output on stderr"
