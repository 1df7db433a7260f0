"""Results: one :class:`Row` per figure, a fixed-width table, and a JSON document."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Goal",
    "GoalKind",
    "Row",
    "Verdict",
    "format_ratio",
    "format_value",
    "render_table",
    "row_to_json",
]


class GoalKind(enum.Enum):
    RATIO_AT_LEAST = "ratio_at_least"  # i3lani / reference >= target
    BELOW = "below"  # the i3lani figure itself < target (in the row's unit)
    AT_MOST = "at_most"  # the i3lani figure itself <= target (a count: connections, events)
    HOLDS = "holds"  # a check: passes unless the row records a failure


class Verdict(enum.Enum):
    PASS = "PASS"
    MISS = "MISS"
    FAIL = "FAIL"  # the run behind the figure broke a guarantee (Row.failure says how)
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

    @property
    def ratio(self) -> float | None:
        if self.reference is None or self.reference <= 0 or not math.isfinite(self.value):
            return None
        return self.value / self.reference

    @property
    def verdict(self) -> Verdict:
        if self.failure is not None:
            return Verdict.FAIL
        if self.goal is None:
            return Verdict.INFO
        if self.goal.kind is GoalKind.HOLDS:
            return Verdict.PASS
        if self.goal.kind is GoalKind.BELOW:
            return Verdict.PASS if self.value < self.goal.target else Verdict.MISS
        if self.goal.kind is GoalKind.AT_MOST:
            return Verdict.PASS if self.value <= self.goal.target else Verdict.MISS
        ratio = self.ratio
        if ratio is None:
            return Verdict.NOT_MEASURED
        return Verdict.PASS if ratio >= self.goal.target else Verdict.MISS

    @property
    def label(self) -> str:
        if self.reference_name is None:
            return self.name
        return f"{self.name}  vs {self.reference_name}"


def format_value(value: float | None, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if unit == "ms":
        return f"{value:.2f} ms"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.1f} {unit}"


def format_ratio(ratio: float) -> str:
    """Two decimals, truncated rather than rounded: a ratio of 0.6996 against a goal of
    0.70 reads 0.69x (a MISS), never 0.70x. The JSON keeps the exact ratio."""
    return f"{math.floor(ratio * 100 + 1e-9) / 100:.2f}x"


_HEADERS = ("benchmark", "i3lani", "reference", "ratio", "goal", "verdict")
_RIGHT = (False, True, True, True, False, False)


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
    }
