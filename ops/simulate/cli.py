"""``i3lani simulate``: run seeded simulations of the whole system; a failure names its seed.

    i3lani simulate --seed 42            # one run; the same seed always gives the same run
    i3lani simulate --seeds 20           # seeds 1..20 (or --seed N --seeds K: N..N+K-1)
    i3lani simulate --seconds 600        # random seeds until the time is up (a soak)

Each run prints one line: its seed, what it did, the digest of its event log (equal digests:
equal logs, event for event) and the real time it took. A run that breaks a guarantee prints
the seed, the violation and the last steps that led to it, and the command exits 1; replaying
that seed with ``--seed N --trace`` shows every fault as it is injected.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import sys
import time
import traceback
from typing import TYPE_CHECKING, TextIO

from events.errors import I3laniError
from ops.simulate.kernel import SimResult, SimulationError, run

if TYPE_CHECKING:
    from ops.simulate.world import Report, Scenario

__all__ = ["add_arguments", "main"]

EXIT_OK, EXIT_FOUND = 0, 1

FAULTS: dict[str, str] = {
    "store-faults": "store_fault_rate",
    "lost-acks": "lost_ack_rate",
    "kills": "kills_per_hour",
    "cuts": "cuts_per_hour",
    "pauses": "pauses_per_hour",
    "commands": "commands_per_hour",
    "tonapi": "tonapi_faults_per_hour",
    "telegram": "telegram_faults_per_hour",
    "duplicates": "duplicate_rate",
    "reorders": "reorder_rate",
    "clock": "clock_jumps_per_hour",
    "outage": "tonapi_outage_rate",
}
"""``--without`` names, and the :class:`~ops.simulate.world.Scenario` rate each one zeroes."""
MAX_SHRINK_RUNS = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=None, help="the first (or only) seed")
    parser.add_argument(
        "--seeds", type=int, default=1, help="how many consecutive seeds to run (default 1)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="run random seeds for this many seconds of real time (a soak), then stop",
    )
    parser.add_argument("--users", type=int, default=50, help="users arriving (default 50)")
    parser.add_argument(
        "--hours", type=float, default=1.0, help="simulated hours of faulty traffic (default 1)"
    )
    parser.add_argument("--nodes", type=int, default=2, help="worker nodes (default 2)")
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        choices=sorted(FAULTS),
        metavar="FAULT",
        help=f"leave one kind of fault out (repeatable): {', '.join(sorted(FAULTS))}",
    )
    parser.add_argument(
        "--trace", action="store_true", help="print every fault and operator command as it happens"
    )
    parser.add_argument(
        "--shrink",
        action="store_true",
        help="when a seed fails, look for the smallest scenario that still fails with it",
    )


def replay_command(scenario: Scenario, seed: int) -> str:
    """The command that runs ``seed`` on ``scenario`` again."""
    from ops.simulate.world import Scenario

    default = Scenario()
    words = [f"i3lani simulate --seed {seed}"]
    if scenario.users != default.users:
        words.append(f"--users {scenario.users}")
    if scenario.hours != default.hours:
        words.append(f"--hours {scenario.hours:g}")
    if scenario.nodes != default.nodes:
        words.append(f"--nodes {scenario.nodes}")
    words += [f"--without {name}" for name, rate in FAULTS.items() if getattr(scenario, rate) == 0]
    return " ".join(words)


def _fails(scenario: Scenario, seed: int) -> str | None:
    """Why ``seed`` fails on ``scenario``; None when it holds."""
    from ops.simulate.world import simulate

    try:
        run(lambda: simulate(scenario), seed=seed, max_time=scenario_budget(scenario))
    except (I3laniError, SimulationError, AssertionError) as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    except Exception as exc:  # a crash is a failure of the seed too: see _one
        return f"crashed: {_crash(exc)}"
    return None


def _crash(exc: BaseException) -> str:
    """One line for an exception the run was not meant to raise: the innermost of a group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _smaller(scenario: Scenario) -> list[Scenario]:
    """One step smaller each: a kind of fault left out, fewer users, fewer hours, a node less."""
    from ops.simulate.world import REFERRERS

    out = [
        dataclasses.replace(scenario, **{rate: 0})
        for rate in FAULTS.values()
        if getattr(scenario, rate) != 0
    ]
    if scenario.users // 2 > REFERRERS:
        out.append(dataclasses.replace(scenario, users=scenario.users // 2))
    if scenario.hours > 0.125:
        out.append(dataclasses.replace(scenario, hours=scenario.hours / 2))
    if scenario.nodes > 1:
        out.append(dataclasses.replace(scenario, nodes=scenario.nodes - 1))
    return out


def shrink(scenario: Scenario, seed: int, out: TextIO) -> Scenario:
    """The smallest scenario found that still fails with ``seed`` (greedy: each step takes the
    first smaller scenario that fails, until none does or the runs allowed are spent). A
    smaller scenario is another run of the same seed, not a cut of the failing schedule."""
    runs = 0
    current = scenario
    while runs < MAX_SHRINK_RUNS:
        for candidate in _smaller(current):
            runs += 1
            why = _fails(candidate, seed)
            if why is not None:
                print(f"  still fails: {replay_command(candidate, seed)}: {why}", file=out)
                current = candidate
                break
            if runs >= MAX_SHRINK_RUNS:
                break
        else:
            break
    return current


def _one(scenario: Scenario, seed: int, out: TextIO, trace: bool) -> SimResult[Report] | None:
    from ops.simulate.world import simulate

    lines: list[str] = []

    def say(line: str) -> None:
        if trace:
            print(f"  {line}", file=out, flush=True)
        else:
            lines.append(line)

    began = time.perf_counter()
    try:
        result = run(lambda: simulate(scenario, say), seed=seed, max_time=scenario_budget(scenario))
    except (I3laniError, SimulationError, AssertionError) as exc:
        print(f"seed {seed}: FAILED: {exc}", file=out)
        for note in getattr(exc, "__notes__", ()):
            print(note, file=out)
        if lines:
            print("  the faults and commands before it:", file=out)
            for line in lines[-20:]:
                print(f"  {line}", file=out)
        print(f"  replay: {replay_command(scenario, seed)} --trace", file=out, flush=True)
        return None
    except Exception as exc:
        # Anything else the run raised is a bug the seed found too (in the production code or
        # the world's), not a reason to end a soak without saying which seed it was.
        print(f"seed {seed}: FAILED: crashed: {_crash(exc)}", file=out)
        for line in traceback.format_exception(exc)[-12:]:
            print(f"  {line.rstrip()}", file=out)
        print(f"  replay: {replay_command(scenario, seed)} --trace", file=out, flush=True)
        return None
    report = result.value
    print(
        f"seed {seed}: ok  {report.rewards} rewards credited once each, {report.payments} "
        f"payments ({report.confirmed} confirmed, each once), {report.events} "
        f"events; {report.store_faults} store faults, {report.lost_acks} lost acks, "
        f"{report.kills} kills, {report.cuts} cuts, {report.pauses} pauses, "
        f"{report.tonapi_faults} TonAPI faults, {report.commands} commands, "
        f"{report.redeliveries} redeliveries, {report.duplicates} duplicate updates, "
        f"{report.clock_jumps} clock jumps; "
        f"{report.channels} channels ({report.measurements} measurements, "
        f"{report.price_changes} price changes, {report.measure_failures} failed), "
        f"{report.telegram_faults} Bot API faults; "
        f"{report.verdicts} health verdicts, {report.alerts} alerts, "
        f"{report.cleanups} cleanups ({report.samples_pruned} samples pruned), "
        f"{report.outage_rounds} health rounds in a TonAPI outage; "
        f"{result.elapsed / 3600:.1f} h simulated in {time.perf_counter() - began:.1f} s; "
        f"log {report.log_digest[:16]}",
        file=out,
        flush=True,
    )
    return result


def _failed(scenario: Scenario, seed: int, out: TextIO, args: argparse.Namespace) -> bool:
    """Run one seed (and shrink it when it fails and ``--shrink`` says so); whether it failed."""
    if _one(scenario, seed, out, args.trace) is not None:
        return False
    if args.shrink:
        print(f"  shrinking seed {seed}: smaller scenarios, same seed", file=out)
        smallest = shrink(scenario, seed, out)
        print(f"  smallest failing: {replay_command(smallest, seed)}", file=out, flush=True)
    return True


def scenario_budget(scenario: Scenario) -> float:
    """Simulated seconds a run may take before it counts as stuck: its length, plus slack."""
    return scenario.hours * 3600.0 + scenario.settle + 600.0


def main(args: argparse.Namespace, out: TextIO) -> int:
    """Run what ``args`` ask; EXIT_FOUND when any seed broke a guarantee."""
    from ops.simulate.world import Scenario

    without = {FAULTS[name]: 0 for name in args.without}
    scenario = Scenario(users=args.users, hours=args.hours, nodes=args.nodes, **without)
    # The production code logs crashes and retries as it would in a worker: thousands of
    # lines per run, all of them expected under injected faults. Only the verdicts show.
    logging.getLogger().setLevel(logging.CRITICAL)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    failed = 0
    runs = 0
    began = time.perf_counter()
    if args.seconds is not None:
        if args.seconds <= 0:
            raise ValueError(f"--seconds must be positive, got {args.seconds}")
        rng = random.Random()
        deadline = began + args.seconds
        while time.perf_counter() < deadline:
            runs += 1
            failed += _failed(scenario, rng.randrange(2**32), out, args)
    else:
        first = args.seed if args.seed is not None else 1
        for seed in range(first, first + args.seeds):
            runs += 1
            failed += _failed(scenario, seed, out, args)
    took = time.perf_counter() - began
    print(
        f"{runs} seed(s), {failed} failed, in {took:.1f} s: {runs / took * 60:.0f} seeds/minute",
        file=out,
    )
    return EXIT_FOUND if failed else EXIT_OK


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m ops.simulate.cli")
    add_arguments(parser)
    sys.exit(main(parser.parse_args(), sys.stdout))
