"""Verdicts over interleaved rounds: each side's median, the spread printed, and rounds more
than 2x apart marked UNSTABLE instead of given a verdict (bench/report.py, bench/measure.py)."""

from __future__ import annotations

import math
from collections.abc import Callable

import anyio
import pytest

from bench.measure import (
    BenchContext,
    Contender,
    Rounds,
    Sample,
    interleave,
    run_suite,
    versus,
)
from bench.report import Goal, Row, Spread, Verdict, format_rounds, median, render_table


def bench_context(*, seconds: float, log: Callable[[str], None] = lambda _: None) -> BenchContext:
    """A context with no database: three rounds, no warm-up."""
    return BenchContext(
        dsn="",
        seconds=seconds,
        warmup=0.0,
        rounds=3,
        quick=False,
        read_events=0,
        pgbench=None,
        log=log,
    )


def test_median_of_odd_and_even_counts() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert math.isnan(median([]))


def test_a_spread_within_twice_is_stable_and_beyond_it_unstable() -> None:
    assert not Spread((1000.0, 1900.0, 1500.0)).unstable
    assert Spread((9285.0, 1025.0, 5000.0)).unstable
    # Exactly twice apart is still stable; one round is never unstable.
    assert not Spread((1000.0, 2000.0)).unstable
    assert not Spread((5.0,)).unstable
    # A round that did nothing beside one that did is as unstable as can be.
    assert Spread((0.0, 10.0, 12.0)).unstable
    assert Spread((1000.0, 1900.0)).describe() == "1,000-1,900"
    assert Spread(()).describe() == "-"


def _row(mine: tuple[float, ...], theirs: tuple[float, ...], goal: Goal) -> Row:
    return Row(
        "s",
        "figure",
        median(mine),
        "tasks/s",
        "peer",
        median(theirs),
        goal=goal,
        rounds=mine,
        reference_rounds=theirs,
    )


def test_the_verdict_rests_on_the_medians() -> None:
    # One noisy round of the reference (9,285 beside 1,025 and 1,100) would have made the
    # totals' ratio 0.29x; the medians make it 1.0x... but those rounds are 9x apart.
    row = _row((1100.0, 1050.0, 1200.0), (9285.0, 1025.0, 1100.0), Goal.ratio_at_least(1.0))
    assert row.value == 1100.0
    assert row.reference == 1100.0
    assert row.verdict is Verdict.UNSTABLE
    steady = _row((1100.0, 1050.0, 1200.0), (1000.0, 1025.0, 1400.0), Goal.ratio_at_least(1.0))
    assert steady.verdict is Verdict.PASS
    behind = _row((900.0, 950.0, 1000.0), (1000.0, 1025.0, 1400.0), Goal.ratio_at_least(1.0))
    assert behind.verdict is Verdict.MISS


def test_an_unstable_i3lani_side_is_unstable_too_and_checks_and_failures_still_decide() -> None:
    row = _row((500.0, 1500.0, 1100.0), (1000.0, 1000.0, 1000.0), Goal.ratio_at_least(1.0))
    assert row.verdict is Verdict.UNSTABLE
    assert "500-1,500 / 1,000-1,000" in render_table([row])
    assert "UNSTABLE" in render_table([row])
    failed = Row("s", "f", 1.0, "x", goal=Goal.below(2, "x"), rounds=(1.0, 9.0), failure="lost")
    assert failed.verdict is Verdict.FAIL
    held = Row("s", "f", 1.0, "x", goal=Goal.holds("ok"), rounds=(1.0, 9.0))
    assert held.verdict is Verdict.PASS
    info = Row("s", "f", 1.0, "x", rounds=(1.0, 9.0))
    assert info.verdict is Verdict.INFO


def test_a_ratio_at_most_goal_is_for_latencies() -> None:
    fast = _row((20.0, 25.0, 22.0), (450.0, 500.0, 600.0), Goal.ratio_at_most(0.1))
    assert fast.verdict is Verdict.PASS
    slow = _row((80.0, 90.0, 85.0), (450.0, 500.0, 600.0), Goal.ratio_at_most(0.1))
    assert slow.verdict is Verdict.MISS
    assert Goal.ratio_at_most(0.1).describe() == "<= 0.10x"


def test_a_reference_that_could_not_be_measured_gives_no_ratio_and_prints() -> None:
    """A NaN reference (nothing measured) once ended a whole run in the table's printing."""
    for reference in (math.nan, math.inf, 0.0, None):
        row = Row("s", "f", 1.0, "x", "peer", reference, goal=Goal.ratio_at_least(1.0))
        assert row.ratio is None
        assert "f" in render_table([row])


def test_a_row_without_rounds_prints_no_spread() -> None:
    assert format_rounds(Row("s", "f", 1.0, "x")) == "-"
    assert format_rounds(Row("s", "f", 1.0, "x", rounds=(1.0, 2.0))) == "1.0-2.0"


def test_rounds_take_the_median_rate_of_their_samples() -> None:
    rounds = Rounds((Sample(100, 1.0), Sample(300, 1.0), Sample(1000, 5.0)))
    assert rounds.rates == (100.0, 300.0, 200.0)
    assert rounds.rate == 200.0
    assert rounds.items == 1400
    row = versus("s", "f", "x/s", rounds, "peer", Rounds((Sample(50, 1.0),) * 3))
    assert row.rounds == (100.0, 300.0, 200.0)
    assert row.reference_rounds == (50.0, 50.0, 50.0)
    assert row.ratio == 4.0


def test_interleave_alternates_the_order_and_keeps_every_round() -> None:
    order: list[str] = []

    def contender(name: str, rate: float) -> Contender:
        async def run(seconds: float) -> Sample:
            order.append(name)
            return Sample(rate * seconds, seconds)

        return Contender(name, run, warmup=False)

    ctx = bench_context(seconds=3.0)
    totals = anyio.run(interleave, ctx, "t", [contender("a", 10.0), contender("b", 20.0)])
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert totals["a"].rates == pytest.approx((10.0, 10.0, 10.0))
    assert totals["b"].rate == pytest.approx(20.0)


def test_a_suite_that_raises_gives_one_fail_row_and_the_run_goes_on() -> None:
    """A full run lost twenty minutes of figures to one suite's exception: now that suite
    gives a FAIL row naming its innermost error, and the suites after it run."""

    class Broken:
        async def run(self, ctx: BenchContext) -> list[Row]:
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.sleep, 0)
                raise ExceptionGroup("peer", [TimeoutError("statement\n timed out")])
            return []

    logged: list[str] = []
    ctx = bench_context(seconds=0.1, log=logged.append)
    [row] = anyio.run(run_suite, Broken().run, "broken", ctx)
    assert row.verdict is Verdict.FAIL
    assert row.failure == "TimeoutError: statement timed out"
    assert "Traceback" in logged[0]
    assert "FAIL" in render_table([row])
