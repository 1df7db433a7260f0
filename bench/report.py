"""Results: one :class:`Row` per figure, a fixed-width table, and a JSON document."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MIN_ROUNDS",
    "UNSTABLE_FACTOR",
    "Goal",
    "GoalKind",
    "Row",
    "Spread",
    "Verdict",
    "format_ratio",
    "format_rounds",
    "format_value",
    "median",
    "render_table",
    "row_to_json",
]

MIN_ROUNDS = 3
"""A verdict rests on the median of at least this many interleaved rounds of each side."""

UNSTABLE_FACTOR = 2.0
"""Rounds of one side further apart than this factor (highest / lowest) make a row UNSTABLE:
no verdict can rest on them."""


def median(values: Sequence[float]) -> float:
    """The median (the mean of the middle two for an even count); NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


@dataclass(frozen=True, slots=True)
class Spread:
    """One side's figure in each interleaved round."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return median(self.values)

    @property
    def low(self) -> float:
        return min(self.values, default=float("nan"))

    @property
    def high(self) -> float:
        return max(self.values, default=float("nan"))

    @property
    def unstable(self) -> bool:
        """The rounds are more than :data:`UNSTABLE_FACTOR` apart (or one measured nothing
        while another did): the median of such rounds says little."""
        if len(self.values) < 2:
            return False
        if self.low <= 0:
            return self.high > 0
        return self.high / self.low > UNSTABLE_FACTOR

    def describe(self) -> str:
        """``low-high``, in the table's number style; ``-`` for no rounds."""
        if not self.values:
            return "-"
        return f"{_number(self.low)}-{_number(self.high)}"


class GoalKind(enum.Enum):
    RATIO_AT_LEAST = "ratio_at_least"  # i3lani / reference >= target
    RATIO_AT_MOST = "ratio_at_most"  # i3lani / reference <= target (a latency, say)
    BELOW = "below"  # the i3lani figure itself < target (in the row's unit)
    AT_MOST = "at_most"  # the i3lani figure itself <= target (a count: connections, events)
    HOLDS = "holds"  # a check: passes unless the row records a failure


class Verdict(enum.Enum):
    PASS = "PASS"
    MISS = "MISS"
    FAIL = "FAIL"  # the run behind the figure broke a guarantee (Row.failure says how)
    UNSTABLE = "UNSTABLE"  # a goal, but one side's rounds were more than 2x apart: no verdict
    INFO = "-"  # a figure shown for context, with no goal
    NOT_MEASURED = "n/a"  # the reference could not be measured (pgbench missing, say)


@dataclass(frozen=True, slots=True)
class Goal:
    kind: GoalKind
    target: float
    unit: str = ""

    @classmethod
    def ratio_at_least(cls, target: float) -> Goal:
        return cls(GoalKind.RATIO_AT_LEAST, target)

    @classmethod
    def ratio_at_most(cls, target: float) -> Goal:
        return cls(GoalKind.RATIO_AT_MOST, target)

    @classmethod
    def below(cls, target: float, unit: str) -> Goal:
        return cls(GoalKind.BELOW, target, unit)

    @classmethod
    def at_most(cls, target: float, unit: str) -> Goal:
        return cls(GoalKind.AT_MOST, target, unit)

    @classmethod
    def holds(cls, what: str) -> Goal:
        """A check rather than a figure: ``what`` must hold (the row's ``failure`` says not)."""
        return cls(GoalKind.HOLDS, 1.0, what)

    def describe(self) -> str:
        if self.kind is GoalKind.RATIO_AT_LEAST:
            return f">= {self.target:.2f}x"
        if self.kind is GoalKind.RATIO_AT_MOST:
            return f"<= {self.target:.2f}x"
        if self.kind is GoalKind.HOLDS:
            return self.unit
        if self.kind is GoalKind.AT_MOST:
            return f"<= {self.target:g} {self.unit}".rstrip()
        return f"< {self.target:g} {self.unit}".rstrip()


@dataclass(frozen=True, slots=True)
class Row:
    """One figure: the i3lani value, and optionally a reference measured in the same run."""

    section: str  # the group it is printed under
    name: str  # what i3lani did, e.g. "1 writer"
    value: float
    unit: str  # e.g. "appends/s", "events/s", "ms"
    reference_name: str | None = None  # e.g. "raw asyncpg INSERT, 1 conn"
    reference: float | None = None  # None: no reference, or it could not be measured
    reference_unit: str | None = None  # default: the row's unit
    goal: Goal | None = None
    details: dict[str, Any] = field(default_factory=dict)  # kept in the JSON only
    failure: str | None = None  # a guarantee the measured run broke: the row FAILs, goal or not
    rounds: tuple[float, ...] = ()  # the value in each interleaved round (value: their median)
    reference_rounds: tuple[float, ...] = ()  # the same for the reference

    @property
    def spread(self) -> Spread:
        return Spread(self.rounds)

    @property
    def reference_spread(self) -> Spread:
        return Spread(self.reference_rounds)

    @property
    def unstable(self) -> bool:
        return self.spread.unstable or self.reference_spread.unstable

    @property
    def ratio(self) -> float | None:
        if (
            self.reference is None
            or not math.isfinite(self.reference)
            or self.reference <= 0
            or not math.isfinite(self.value)
        ):
            return None  # no ratio to print or judge: a side that could not be measured
        return self.value / self.reference

    @property
    def verdict(self) -> Verdict:
        if self.failure is not None:
            return Verdict.FAIL
        if self.goal is None:
            return Verdict.INFO
        if self.goal.kind is GoalKind.HOLDS:
            return Verdict.PASS
        if self.unstable:
            return Verdict.UNSTABLE
        if self.goal.kind is GoalKind.BELOW:
            return Verdict.PASS if self.value < self.goal.target else Verdict.MISS
        if self.goal.kind is GoalKind.AT_MOST:
            return Verdict.PASS if self.value <= self.goal.target else Verdict.MISS
        ratio = self.ratio
        if ratio is None:
            return Verdict.NOT_MEASURED
        if self.goal.kind is GoalKind.RATIO_AT_MOST:
            return Verdict.PASS if ratio <= self.goal.target else Verdict.MISS
        return Verdict.PASS if ratio >= self.goal.target else Verdict.MISS

    @property
    def label(self) -> str:
        if self.reference_name is None:
            return self.name
        return f"{self.name}  vs {self.reference_name}"


def _number(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"


def format_value(value: float | None, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if unit == "ms":
        return f"{value:.2f} ms"
    return f"{_number(value)} {unit}"


def format_rounds(row: Row) -> str:
    """The spread of the row's rounds, ``i3lani / reference``; ``-`` when it has none."""
    if not row.rounds and not row.reference_rounds:
        return "-"
    if not row.reference_rounds:
        return row.spread.describe()
    return f"{row.spread.describe()} / {row.reference_spread.describe()}"


def format_ratio(ratio: float) -> str:
    """Two decimals, truncated rather than rounded: a ratio of 0.6996 against a goal of
    0.70 reads 0.69x (a MISS), never 0.70x. The JSON keeps the exact ratio."""
    return f"{math.floor(ratio * 100 + 1e-9) / 100:.2f}x"


_HEADERS = ("benchmark", "i3lani", "reference", "ratio", "rounds: i3lani / ref", "goal", "verdict")
_RIGHT = (False, True, True, True, True, False, False)


def render_table(rows: Sequence[Row]) -> str:
    """The rows as a fixed-width table, grouped by section."""
    cells: list[tuple[str, ...] | str] = []
    section: str | None = None
    for row in rows:
        if row.section != section:
            section = row.section
            cells.append(section)
        ratio = row.ratio
        reference_unit = row.reference_unit or row.unit
        reference = (
            "-"
            if row.reference_name is None
            else format_value(row.reference, reference_unit)
            if row.reference is not None
            else "not measured"
        )
        cells.append(
            (
                "  " + row.label,
                format_value(row.value, row.unit),
                reference,
                "-" if ratio is None else format_ratio(ratio),
                format_rounds(row),
                "-" if row.goal is None else row.goal.describe(),
                row.verdict.value,
            )
        )
    widths = [len(header) for header in _HEADERS]
    for line in cells:
        if isinstance(line, tuple):
            widths = [max(width, len(cell)) for width, cell in zip(widths, line, strict=True)]

    def fmt(line: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(line, widths, _RIGHT, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [fmt(_HEADERS), fmt(["-" * width for width in widths])]
    for line in cells:
        out.append(line if isinstance(line, str) else fmt(line))
    return "\n".join(out)


def row_to_json(row: Row) -> dict[str, Any]:
    ratio = row.ratio
    return {
        "section": row.section,
        "name": row.name,
        "value": row.value,
        "unit": row.unit,
        "reference_name": row.reference_name,
        "reference": row.reference,
        "reference_unit": row.reference_unit or row.unit,
        "ratio": ratio,
        "goal": None if row.goal is None else row.goal.describe(),
        "verdict": row.verdict.value,
        "details": row.details,
        "failure": row.failure,
        "rounds": list(row.rounds),
        "reference_rounds": list(row.reference_rounds),
        "unstable": row.unstable,
    }
