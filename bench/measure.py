"""Timing: fixed-duration runs of async tasks or threads, interleaved between contenders.

Every comparison is made in rounds (A B, B A, A B, ...): each contender's figure is the median
of its rounds, their spread goes into the row, and rounds more than 2x apart make the row
UNSTABLE instead of PASS or MISS (:mod:`bench.report`)."""

from __future__ import annotations

import math
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import anyio
import anyio.to_thread

from bench.report import Goal, Row, median

__all__ = [
    "BenchContext",
    "Contender",
    "Rounds",
    "Sample",
    "interleave",
    "percentile",
    "run_tasks",
    "run_threads",
    "versus",
]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class BenchContext:
    """What every suite gets: where to measure and for how long."""

    dsn: str  # the benchmark database, freshly created and migrated for this run
    seconds: float  # per measurement of one contender, split over ``rounds``
    warmup: float  # seconds of untimed work before a contender's first timed round
    rounds: int  # contenders take turns this many times (ABBA order), to share the noise
    quick: bool
    read_events: int  # the log size the read figures scan
    pgbench: str | None  # the pgbench program, None when there is none
    log: Callable[[str], None] = field(default=_stderr)  # progress, to stderr
    keep_databases: bool = False  # --keep-database: suites leave their own databases too


@dataclass(frozen=True, slots=True)
class Sample:
    """``items`` done in ``seconds`` of wall-clock time."""

    items: float
    seconds: float

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    def __add__(self, other: Sample) -> Sample:
        return Sample(self.items + other.items, self.seconds + other.seconds)


ZERO = Sample(0, 0)


@dataclass(frozen=True, slots=True)
class Rounds:
    """One contender's samples, one per interleaved round; its figure is their median."""

    samples: tuple[Sample, ...] = ()

    def add(self, sample: Sample) -> Rounds:
        return Rounds((*self.samples, sample))

    @property
    def rates(self) -> tuple[float, ...]:
        return tuple(sample.rate for sample in self.samples)

    @property
    def rate(self) -> float:
        """The median of the rounds' rates (NaN for none)."""
        return median(self.rates)

    @property
    def items(self) -> float:
        return sum(sample.items for sample in self.samples)


def versus(
    section: str,
    name: str,
    unit: str,
    mine: Rounds,
    reference_name: str,
    reference: Rounds | None,
    *,
    reference_unit: str | None = None,
    goal: Goal | None = None,
    details: dict[str, object] | None = None,
) -> Row:
    """A row comparing two contenders' rounds: each side's median, with the rounds kept (their
    spread is printed, and makes the verdict UNSTABLE when they are more than 2x apart)."""
    return Row(
        section,
        name,
        mine.rate,
        unit,
        reference_name,
        None if reference is None else reference.rate,
        reference_unit,
        goal=goal,
        details=dict(details or {}),
        rounds=mine.rates,
        reference_rounds=() if reference is None else reference.rates,
    )


@dataclass(frozen=True, slots=True)
class Contender:
    """One side of a comparison: ``run(seconds)`` works for about that long and reports."""

    name: str
    run: Callable[[float], Awaitable[Sample]]
    warmup: bool = True  # False for programs that warm up on their own (pgbench)


async def run_tasks(seconds: float, workers: int, step: Callable[[int], Awaitable[int]]) -> Sample:
    """``workers`` concurrent tasks each call ``step(worker)`` (which returns how many items
    it did) until ``seconds`` have passed."""
    counts = [0] * workers
    deadline = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        done = 0
        while time.perf_counter() < deadline:
            done += await step(index)
        counts[index] = done

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for index in range(workers):
            tg.start_soon(worker, index)
    return Sample(sum(counts), time.perf_counter() - start)


async def run_threads(seconds: float, workers: int, step: Callable[[int], int]) -> Sample:
    """Like :func:`run_tasks` for blocking code: ``workers`` threads call ``step(worker)``."""
    counts = [0] * workers
    limiter = anyio.CapacityLimiter(workers)
    deadline = time.perf_counter() + seconds

    def worker(index: int) -> None:
        done = 0
        while time.perf_counter() < deadline:
            done += step(index)
        counts[index] = done

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for index in range(workers):
            tg.start_soon(partial(anyio.to_thread.run_sync, worker, index, limiter=limiter))
    return Sample(sum(counts), time.perf_counter() - start)


async def interleave(
    ctx: BenchContext, title: str, contenders: Sequence[Contender]
) -> dict[str, Rounds]:
    """Measure every contender for ``ctx.seconds`` in all, taking turns over ``ctx.rounds``
    rounds (A B C, C B A, ...), so that a noisy moment does not fall on one side only; each
    contender's rounds, in order."""
    totals = {contender.name: Rounds() for contender in contenders}
    per_round = ctx.seconds / ctx.rounds
    for round_no in range(ctx.rounds):
        order = list(contenders) if round_no % 2 == 0 else list(reversed(contenders))
        for contender in order:
            if round_no == 0 and contender.warmup and ctx.warmup > 0:
                await contender.run(ctx.warmup)
            sample = await contender.run(per_round)
            totals[contender.name] = totals[contender.name].add(sample)
            ctx.log(
                f"  {title}: {contender.name}: {sample.rate:,.0f}/s "
                f"(round {round_no + 1}/{ctx.rounds})"
            )
    return totals


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


async def run_suite(
    run: Callable[[BenchContext], Awaitable[list[Row]]], name: str, ctx: BenchContext
) -> list[Row]:
    """The rows of suite ``name`` (``run``: its module's ``run``). A suite that raises gives
    one FAIL row naming the error instead, and the run goes on: a fault in one suite (a peer
    that would not start, a statement timed out) must not throw away the figures of every
    other one, some twenty minutes of them."""
    try:
        return await run(ctx)
    except Exception as exc:  # reported in the table and the JSON; the run goes on
        ctx.log(f"suite {name} failed:\n{''.join(traceback.format_exception(exc))}")
        return [
            Row(
                section=f"{name} (the suite did not finish)",
                name="the suite ran to its end",
                value=0.0,
                unit="-",
                failure=suite_failure(exc),
            )
        ]


def suite_failure(exc: BaseException) -> str:
    """One line for a suite's failure: its innermost error (an exception group's first)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]
