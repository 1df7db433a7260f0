"""Issue 13's goals for the deterministic simulator (:mod:`ops.simulate`), each measured in
processes of its own, as a user meets them; no database.

1. **Seeds per minute** of the default scenario, run as a soak is run: ``python -m
   ops.simulate.cli --seconds S`` (``i3lani simulate``), one process per core, all at once;
   the seeds they complete, summed, over the wall time from their start to the last one's
   exit (interpreter start-up and the seed still running at the deadline included). Any seed
   that fails, or a process that dies, makes the row FAIL; the failing seeds are printed.
2. **Simulated hours per wall-clock minute** of a quiet day (50 users, no faults, no
   commands), one run in one process (:mod:`bench.simulate_worker`), timed around the run.
3. **Replay**: one seed of the default scenario run in two processes gives the same event log
   (``Report.log_digest``) and the same schedule (``SimResult.digest``). Two processes, not
   one twice: a replay happens in a new process, with its own hash seed and addresses.

Before anything is timed, one untimed process imports the simulator with bytecode writing on
(``PYTHONDONTWRITEBYTECODE`` unset for the children, as ``make pytest`` does), so that no
timed process compiles the project (about a second). The import itself (about 3 s on 2 cores,
most of it aiogram's types) stays in a soak's wall time, as it does for a user.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio
import msgspec

from bench.measure import BenchContext
from bench.report import Goal, Row
from bench.simulate_worker import Failed, Measured, Outcome, decode_outcome

__all__ = ["NOTES", "Soak", "parse_soak", "replay_failure", "run"]

ROOT: Final = Path(__file__).resolve().parents[1]
SECTION: Final = "simulate (ops/simulate, no database)"
SEEDS_GOAL: Final = 100.0  # seeds per minute of the default scenario, on 2 cores
HOURS_GOAL: Final = 1000.0  # simulated hours per wall-clock minute of the quiet day
SOAK_SECONDS: Final = 60.0
QUICK_SOAK_SECONDS: Final = 20.0
QUIET_HOURS: Final = 24.0
QUICK_QUIET_HOURS: Final = 6.0
REPLAY_SEED: Final = 1
SLACK: Final = 600.0
"""Seconds a process may run beyond what it is expected to take before it counts as stuck."""

NOTES: Final = (
    "simulate: issue 13's goals for the deterministic simulator (ops/simulate), each run in "
    "processes of its own, no database. There is no peer simulator in Python to measure "
    "against: the reference column is the goal itself (a ratio of 1.00x meets it), and the "
    "rows 'x real time' say how many times faster than real time the simulation ran (for "
    "information). seeds/minute: `python -m ops.simulate.cli --seconds S` (random seeds), one "
    f"process per core, S = {SOAK_SECONDS:g} s ({QUICK_SOAK_SECONDS:g} s with --quick); the "
    "seeds completed, summed, over the wall time until the last process exits (start-up and the "
    "seed running at the deadline included); goal: 100 seeds/minute on the 2-core machine; a "
    "failing seed FAILs the row and is printed with its replay command. quiet day: "
    "Scenario(users=50, hours=24, settle=1800, every *_rate and *_per_hour zero: no faults, "
    "no commands) "
    f"(hours={QUICK_QUIET_HOURS:g} with --quick) in one process (python -m "
    "bench.simulate_worker), timed around the run; goal: 1,000 simulated hours per minute. "
    f"replay: seed {REPLAY_SEED} of the default scenario in two processes at once; both the log "
    "digest and the kernel's schedule digest must be equal.",
)


@dataclass(frozen=True, slots=True)
class Soak:
    """What one ``i3lani simulate --seconds S`` process printed."""

    seeds: int  # seeds completed, passed or failed
    failed: tuple[tuple[int, str], ...]  # (seed, what broke) of each failed seed
    simulated_hours: float  # summed over the seeds that passed
    summary: str | None  # its final line ("N seed(s), F failed, in T s: X seeds/minute")


_SEED = re.compile(r"^seed (\d+): (ok|FAILED)\b:?\s*(.*)$")
_SIMULATED = re.compile(r"([\d.]+) h simulated")
_SUMMARY = re.compile(r"^\d+ seed\(s\), \d+ failed, in ")


def parse_soak(output: str) -> Soak:
    """Read ``i3lani simulate``'s output: one line per seed (``seed N: ok ...`` or ``seed N:
    FAILED: ...``, then indented lines), and the summary line at the end."""
    seeds = 0
    failed: list[tuple[int, str]] = []
    hours = 0.0
    summary: str | None = None
    for line in output.splitlines():
        if match := _SEED.match(line):
            seeds += 1
            seed, verdict, rest = int(match[1]), match[2], match[3]
            if verdict == "FAILED":
                failed.append((seed, rest))
            elif simulated := _SIMULATED.search(rest):
                hours += float(simulated[1])
        elif _SUMMARY.match(line):
            summary = line
    return Soak(seeds, tuple(failed), hours, summary)


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Group|Exit|Interrupt|Failure)\b.*")


@dataclass(frozen=True, slots=True)
class _Exit:
    """A finished child process."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def problem(self, what: str) -> str | None:
        """One line when the process did not end normally (exit 1 is a failed seed)."""
        if self.returncode in (0, 1):
            return None
        return f"{what} exited {self.returncode}: {self.last_error()}"

    def last_error(self) -> str:
        """The exception a traceback on stderr ends with (inside an exception group's box
        too, whose last line is only the box's edge), else stderr's last line."""
        lines = self.stderr.strip().splitlines()
        for line in reversed(lines):
            text = line.strip().lstrip("|+ ").strip()
            if _EXCEPTION_LINE.match(text):
                return text
        return lines[-1] if lines else "no output on stderr"


def _child_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


async def _run(command: Sequence[str]) -> _Exit:
    """Run ``command`` from the repository's root (killed if the caller's scope is cancelled:
    each caller bounds it, so that a stuck simulation still ends the bench)."""
    began = anyio.current_time()
    done = await anyio.run_process(command, check=False, cwd=ROOT, env=_child_environment())
    return _Exit(
        done.returncode,
        done.stdout.decode(errors="replace"),
        done.stderr.decode(errors="replace"),
        anyio.current_time() - began,
    )


async def _run_all(commands: Sequence[Sequence[str]]) -> tuple[list[_Exit], float]:
    """Run ``commands`` at once; their exits, and the wall time until the last one ended."""
    exits: list[_Exit | None] = [None] * len(commands)

    async def one(index: int) -> None:
        exits[index] = await _run(commands[index])

    began = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for index in range(len(commands)):
            tg.start_soon(one, index)
    finished = [child for child in exits if child is not None]
    return finished, anyio.current_time() - began


def _worker(workload: str, seed: int, hours: float | None = None) -> list[str]:
    command = [sys.executable, "-m", "bench.simulate_worker", "--workload", workload]
    command += ["--seed", str(seed)]
    return command + ([] if hours is None else ["--hours", f"{hours:g}"])


def _outcome(child: _Exit, what: str) -> Outcome | str:
    """The worker's outcome, or one line saying why there is none."""
    if problem := child.problem(what):
        return problem
    lines = child.stdout.strip().splitlines()
    try:
        return decode_outcome(lines[-1])
    except (IndexError, msgspec.DecodeError, msgspec.ValidationError):
        return f"{what} printed no result (exit {child.returncode}): {child.last_error()}"


async def _seeds_per_minute(ctx: BenchContext) -> list[Row]:
    seconds = QUICK_SOAK_SECONDS if ctx.quick else SOAK_SECONDS
    processes = os.cpu_count() or 1
    command = [sys.executable, "-m", "ops.simulate.cli", "--seconds", f"{seconds:g}"]
    ctx.log(f"simulate: {processes} soak(s) of {seconds:g} s at once: {' '.join(command[1:])}")
    limit = seconds + SLACK
    exits: list[_Exit] = []
    wall = math.nan
    with anyio.move_on_after(limit):
        exits, wall = await _run_all([command] * processes)
    soaks = [parse_soak(child.stdout) for child in exits]
    failures = [] if exits else [f"the soaks did not end within {limit:g} s"]
    for n, (child, soak) in enumerate(zip(exits, soaks, strict=True)):
        ctx.log(f"  soak {n + 1}: {soak.summary or 'no summary'} ({child.seconds:.1f} s wall)")
        if problem := child.problem(f"soak {n + 1}"):
            failures.append(problem)
        elif child.returncode == 1 and not soak.failed:  # no seed failed: the process did
            failures.append(f"soak {n + 1} exited 1: {child.last_error()}")
        for seed, what in soak.failed:
            ctx.log(f"  FAILED seed {seed}: {what}")
            ctx.log(f"    replay: i3lani simulate --seed {seed} --trace")
    failed = sorted(seed for soak in soaks for seed, _ in soak.failed)
    if failed:
        listed = ", ".join(map(str, failed))
        failures.append(f"seed(s) {listed} failed; replay: i3lani simulate --seed N --trace")
    seeds = sum(soak.seeds for soak in soaks)
    simulated = sum(soak.simulated_hours for soak in soaks) * 3600
    details = {
        "soak_seconds": seconds,
        "processes": processes,
        "wall_seconds": wall,
        "seeds": seeds,
        "failed_seeds": failed,
        "summaries": [soak.summary for soak in soaks],
        "process_seconds": [child.seconds for child in exits],
    }
    return [
        Row(
            SECTION,
            f"default scenario: seeds/minute, {processes} processes",
            seeds / wall * 60,
            "seeds/min",
            reference_name="goal",
            reference=SEEDS_GOAL,
            goal=Goal.ratio_at_least(1.0),
            details=details,
            failure="; ".join(failures) or None,
        ),
        Row(
            SECTION,
            "default scenario: simulated time / wall time, per process",
            simulated / (wall * processes),
            "x real time",
            details=details,
        ),
    ]


async def _quiet_day(ctx: BenchContext) -> list[Row]:
    hours = QUICK_QUIET_HOURS if ctx.quick else QUIET_HOURS
    ctx.log(f"simulate: a quiet day of {hours:g} h, 50 users, no faults, one process ...")
    # A quiet simulated hour takes 1 to 3 s today: a minute per hour is generous, and a stuck run
    # still ends.
    limit = 60 * (hours + 0.5) + SLACK
    outcome: Outcome | str = f"the quiet day did not end within {limit:g} s"
    process_seconds = math.nan
    with anyio.move_on_after(limit):
        child = await _run(_worker("quiet", REPLAY_SEED, hours))
        outcome, process_seconds = _outcome(child, "the quiet day"), child.seconds
    name = f"quiet day ({hours:g} h + 0.5 h settle, 50 users)"
    if not isinstance(outcome, Measured):
        failure = outcome if isinstance(outcome, str) else f"seed {outcome.seed}: {outcome.failure}"
        ctx.log(f"  FAILED: {failure}")
        return [
            Row(
                SECTION,
                f"{name}: simulated h/minute",
                float("nan"),
                "sim h/min",
                reference_name="goal",
                reference=HOURS_GOAL,
                goal=Goal.ratio_at_least(1.0),
                failure=failure,
            )
        ]
    rate = outcome.simulated_seconds / 3600 / (outcome.wall_seconds / 60)
    ctx.log(
        f"  {outcome.simulated_seconds / 3600:.1f} h simulated in {outcome.wall_seconds:.1f} s "
        f"({process_seconds:.1f} s with start-up): {rate:,.1f} h/minute, {outcome.steps:,} steps, "
        f"{outcome.events:,} events"
    )
    details = {**msgspec.structs.asdict(outcome), "process_seconds": process_seconds}
    return [
        Row(
            SECTION,
            f"{name}: simulated h/minute",
            rate,
            "sim h/min",
            reference_name="goal",
            reference=HOURS_GOAL,
            goal=Goal.ratio_at_least(1.0),
            details=details,
        ),
        Row(
            SECTION,
            f"{name}: simulated time / wall time",
            outcome.simulated_seconds / outcome.wall_seconds,
            "x real time",
            details=details,
        ),
    ]


def replay_failure(outcomes: Sequence[Outcome | str]) -> str | None:
    """Why two runs of one seed are not the same run, or None when they are."""
    for outcome in outcomes:
        if isinstance(outcome, str):
            return outcome
        if isinstance(outcome, Failed):
            return f"seed {outcome.seed}: {outcome.failure}"
    first, second = outcomes
    assert isinstance(first, Measured)
    assert isinstance(second, Measured)
    differ = [
        f"{field} {getattr(first, field)} != {getattr(second, field)}"
        for field in ("log_digest", "digest", "steps", "events")
        if getattr(first, field) != getattr(second, field)
    ]
    return "not the same run: " + ", ".join(differ) if differ else None


async def _replay(ctx: BenchContext) -> list[Row]:
    ctx.log(f"simulate: replay, seed {REPLAY_SEED} of the default scenario in two processes ...")
    outcomes: list[Outcome | str] = [f"the replays did not end within {SLACK:g} s"]
    with anyio.move_on_after(SLACK):
        exits, _ = await _run_all([_worker("default", REPLAY_SEED)] * 2)
        outcomes = [_outcome(child, f"replay {n + 1}") for n, child in enumerate(exits)]
    failure = replay_failure(outcomes)
    measured = [outcome for outcome in outcomes if isinstance(outcome, Measured)]
    for outcome in measured:
        ctx.log(
            f"  {outcome.steps:,} steps, {outcome.events} events, log "
            f"{outcome.log_digest[:16]}, schedule {outcome.digest[:16]}"
        )
    if failure:
        ctx.log(f"  FAILED: {failure}")
    return [
        Row(
            SECTION,
            f"replay: seed {REPLAY_SEED} in two processes, steps",
            float(measured[0].steps) if measured else float("nan"),
            "steps",
            goal=Goal.holds("same log and schedule digests"),
            details={"runs": [msgspec.structs.asdict(outcome) for outcome in measured]},
            failure=failure,
        )
    ]


async def _compile(ctx: BenchContext) -> None:
    """Import the simulator once, untimed, writing bytecode for the timed processes."""
    modules = "import bench.simulate_worker, ops.simulate.cli"
    child = await _run([sys.executable, "-c", modules])
    if problem := child.problem("importing the simulator"):
        raise RuntimeError(problem)
    ctx.log(f"simulate: imported the simulator once in {child.seconds:.1f} s (bytecode written)")


async def run(ctx: BenchContext) -> list[Row]:
    await _compile(ctx)
    rows = await _seeds_per_minute(ctx)
    rows += await _quiet_day(ctx)
    rows += await _replay(ctx)
    return rows
