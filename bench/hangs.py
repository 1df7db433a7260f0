"""A node that hangs rather than dies, at the default lease: take-over time and the longest
reader stall, for a pause (SIGSTOP) and for a network cut, each at a random moment and right
before a COMMIT; each the median of several runs. The reference, measured in the same run by
the same scenario, is what a crash costs: the node killed with SIGKILL (its connections close
at once, so the server ends its transaction at once too). The scenario is the fault suite's
(:mod:`tests.faults.hangs`: two real ``i3lani run`` workers, one behind a TCP proxy that can cut
it off without closing anything); every run also checks the work (every effect once, audit
clean), so a figure is only reported for a run that lost nothing.

Each run takes about three leases plus start-up (about 40 s at the default 8 s lease): the
suite runs 5 scenarios x ``RUNS`` (3; 1 with ``--quick``).
"""

from __future__ import annotations

import os
import random
import statistics
from typing import Final

from bench.measure import BenchContext
from bench.report import Goal, Row
from store import EventStore
from store.database import with_database
from store.limits import DEFAULT_LEASE_TTL, SessionLimits
from store.migrate import migrate
from tests.faults.hangs import Fault, HangResult, run_hang
from tests.pg import fresh_database

RUNS: Final = 3
SECTION: Final = "hangs (default lease)"
SCENARIOS: Final[list[tuple[Fault, bool, str]]] = [
    ("pause", False, "SIGSTOP at a random moment"),
    ("pause", True, "SIGSTOP right before a COMMIT"),
    ("cut", False, "network cut at a random moment"),
    ("cut", True, "network cut right before a COMMIT"),
]

NOTES: Final = (
    "hangs: two `i3lani run` workers, node A (behind a TCP proxy) runs the five actors, node B "
    "stands by; A is frozen (SIGSTOP) or cut off (the proxy forwards nothing, closes nothing) "
    f"for 2.5 leases, at the default lease ({DEFAULT_LEASE_TTL:g} s). take-over: until B has "
    "started every actor; goal: within lease + 3 s. reader stall: the longest a committed event "
    "stayed invisible to a gap-free subscriber (a probe appends every 50 ms); goal: within the "
    f"idle-transaction bound ({SessionLimits().idle_in_transaction_seconds:g} s) + 1 s. "
    "Reference: the same scenario with A killed (SIGKILL), what a crash costs. Medians of "
    f"{RUNS} runs (1 with --quick); every run also checks every effect once and the audit clean.",
)


async def _one(ctx: BenchContext, fault: Fault, at_commit: bool, seed: int) -> HangResult:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    server = with_database(ctx.dsn, "postgres")
    async with fresh_database(server, prefix="i3lani_bench_hang") as dsn:
        await migrate(dsn)
        async with EventStore.open(dsn, max_connections=6) as store:
            return await run_hang(
                dsn,
                env,
                store,
                fault=fault,
                at_commit=at_commit,
                lease_ttl=DEFAULT_LEASE_TTL,
                seed=seed,
                scale=2,
            )


async def run(ctx: BenchContext) -> list[Row]:
    runs = 1 if ctx.quick else RUNS
    rng = random.Random(7)
    results: dict[tuple[Fault, bool], list[HangResult]] = {}
    for fault, at_commit, what in [("kill", False, "SIGKILL"), *SCENARIOS]:
        for number in range(runs):
            ctx.log(f"hangs: {what}, run {number + 1}/{runs} ...")
            result = await _one(ctx, fault, at_commit, rng.randrange(2**32))
            if result.stale:
                raise AssertionError(f"{what}: writes under a superseded lease: {result.stale}")
            ctx.log(f"  {result.line()}")
            results.setdefault((fault, at_commit), []).append(result)
    killed = results[("kill", False)]
    kill_takeover = statistics.median(r.takeover for r in killed)
    kill_stall = statistics.median(r.reader_stall for r in killed)
    idle = killed[0].idle_bound
    rows: list[Row] = []
    for fault, at_commit, what in SCENARIOS:
        measured = results[(fault, at_commit)]
        details = {"runs": [r.__dict__ for r in measured]}
        figures: list[tuple[str, list[float], float, float]] = [
            ("take-over", [r.takeover for r in measured], kill_takeover, DEFAULT_LEASE_TTL + 3),
            ("longest reader stall", [r.reader_stall for r in measured], kill_stall, idle + 1),
        ]
        for figure, values, reference, goal in figures:
            rows.append(
                Row(
                    SECTION,
                    f"{figure}, {what}",
                    statistics.median(values),
                    "s",
                    reference_name="SIGKILL",
                    reference=reference,
                    goal=Goal.below(goal, "s"),
                    details=details,
                )
            )
    return rows
