"""``python -m bench.simulate_worker``: one simulated run in a process of its own, as JSON.

    python -m bench.simulate_worker --workload quiet --hours 24 --seed 1
    python -m bench.simulate_worker --workload default --seed 1

The ``simulate`` suite (:mod:`bench.simulate`) starts it for the figures ``i3lani simulate``
does not print: simulated time per wall-clock time of a workload other than the default, and
both digests of a run (the kernel's schedule and the event log) to compare two replays. The
workloads (:func:`scenario_for`):

    default  ``Scenario()``, what ``i3lani simulate`` runs: an hour of faulty traffic for
             50 users on 2 nodes, then half an hour of quiet
    quiet    50 users over ``--hours`` (default 24) with every rate of the scenario zero (no
             faults of any kind, no operator commands), then the same half hour of quiet

It prints one JSON line, a :class:`Measured` or a :class:`Failed` (tagged ``outcome``), and
exits 1 when the run broke a guarantee. ``wall_seconds`` is the run alone, not the start-up
of the interpreter.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any, Final, Literal, TypeAlias

import msgspec

from events.errors import I3laniError
from ops.simulate.cli import scenario_budget
from ops.simulate.kernel import SimulationError, run
from ops.simulate.world import Scenario, simulate

__all__ = [
    "Failed",
    "Measured",
    "Outcome",
    "Workload",
    "decode_outcome",
    "quiet_rates",
    "scenario_for",
]

Workload: TypeAlias = Literal["default", "quiet"]
WORKLOADS: Final[tuple[Workload, ...]] = ("default", "quiet")

STEPS_PER_HOUR: Final = 1_000_000
"""The step budget per simulated hour of the run's time budget (at least the kernel's default
of 10,000,000): a quiet day takes about 45,000 steps an hour today, so a day fits with room
to spare, and a livelock still ends."""


class Measured(msgspec.Struct, frozen=True, kw_only=True, tag_field="outcome", tag="measured"):
    """A run that kept every guarantee, and what it took."""

    workload: str
    seed: int
    simulated_seconds: float  # virtual seconds, clean-up included (SimResult.elapsed)
    wall_seconds: float  # real seconds of the run alone
    steps: int
    events: int
    digest: str  # the kernel's trace digest: the schedule (SimResult.digest)
    log_digest: str  # the event log's digest (Report.log_digest)


class Failed(msgspec.Struct, frozen=True, kw_only=True, tag_field="outcome", tag="failed"):
    """A run that broke a guarantee or could not go on: replay it with ``--seed``."""

    workload: str
    seed: int
    failure: str  # the exception's one line


Outcome: TypeAlias = Measured | Failed
_decoder: Final = msgspec.json.Decoder(Outcome)


def decode_outcome(line: str | bytes) -> Outcome:
    """The worker's JSON line, typed; :class:`msgspec.ValidationError` or
    :class:`msgspec.DecodeError` when it is not one."""
    return _decoder.decode(line)


def quiet_rates() -> list[str]:
    """The fields of :class:`Scenario` the quiet workload sets to zero: every rate (named
    ``*_rate`` or ``*_per_hour``), so that a fault added to the scenario later stays out of it."""
    return [
        field.name
        for field in dataclasses.fields(Scenario)
        if field.name.endswith(("_rate", "_per_hour"))
    ]


def scenario_for(workload: Workload, hours: float) -> Scenario:
    """The :class:`Scenario` a workload names (``hours`` counts for ``quiet`` only)."""
    if workload == "default":
        return Scenario()
    zero: dict[str, Any] = dict.fromkeys(quiet_rates(), 0)
    return Scenario(users=50, hours=hours, settle=1800, **zero)


def measure(workload: Workload, hours: float, seed: int) -> Outcome:
    scenario = scenario_for(workload, hours)
    budget = scenario_budget(scenario)
    began = time.perf_counter()
    try:
        result = run(
            lambda: simulate(scenario),
            seed=seed,
            max_time=budget,
            max_steps=max(10_000_000, round(budget / 3600 * STEPS_PER_HOUR)),
        )
    except (I3laniError, SimulationError, AssertionError) as exc:
        return Failed(workload=workload, seed=seed, failure=f"{type(exc).__name__}: {exc}")
    return Measured(
        workload=workload,
        seed=seed,
        simulated_seconds=result.elapsed,
        wall_seconds=time.perf_counter() - began,
        steps=result.steps,
        events=result.value.events,
        digest=result.digest,
        log_digest=result.value.log_digest,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simulate_worker")
    parser.add_argument("--workload", choices=WORKLOADS, default="default")
    parser.add_argument("--hours", type=float, default=24.0, help="quiet: simulated hours")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.hours <= 0:
        parser.error("--hours must be positive")
    # As in `i3lani simulate`: the production code logs every expected crash and retry.
    logging.getLogger().setLevel(logging.CRITICAL)
    outcome = measure(args.workload, args.hours, args.seed)
    print(msgspec.json.encode(outcome).decode(), flush=True)
    return 1 if isinstance(outcome, Failed) else 0


if __name__ == "__main__":
    sys.exit(main())
