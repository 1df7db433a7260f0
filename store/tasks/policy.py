"""How a task type's failures are handled: a pure decision, retry or dead-letter. No clock, no
I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

__all__ = ["RandomSource", "Retry", "DeadLetter", "RetryPolicy"]


class RandomSource(Protocol):
    """Where jitter comes from (``random.Random``; tests pass a seeded one)."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Retry:
    """Run the task again in ``delay`` seconds (by PostgreSQL's clock)."""

    delay: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Give up: the task waits, dead, for an operator."""

    reason: str


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a task type's failures are handled: at most ``max_attempts`` attempts; after failed
    attempt ``n`` the next one waits ``min_delay * factor**(n-1)`` seconds, capped at
    ``max_delay``, plus up to ``jitter`` of itself at random (so that tasks that failed
    together do not all retry in the same instant). Errors that are not instances of
    ``retry_on`` are dead-lettered at once. Pure: no clock, no I/O."""

    max_attempts: int = 3
    min_delay: float = 1.0
    max_delay: float = 300.0
    factor: float = 2.0
    jitter: float = 0.2
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("a retry policy needs max_attempts >= 1")
        if not 0 <= self.min_delay <= self.max_delay or not math.isfinite(self.max_delay):
            raise ValueError("a retry policy needs 0 <= min_delay <= max_delay (finite)")
        if self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("a retry policy needs factor >= 1 and 0 <= jitter <= 1")

    def base_delay(self, attempt: int) -> float:
        """The delay after failed attempt ``attempt`` (from 1), before jitter."""
        exponent = max(attempt - 1, 0)
        if self.factor > 1 and exponent > 64:  # capped before factor**exponent overflows
            return self.max_delay
        return float(min(self.max_delay, self.min_delay * self.factor**exponent))

    def delay(self, attempt: int, rng: RandomSource | None = None) -> float:
        """The delay after failed attempt ``attempt``, with jitter drawn from ``rng`` (none
        without one)."""
        base = self.base_delay(attempt)
        spread = base * self.jitter * rng.random() if rng is not None else 0.0
        return round(base + spread, 3)

    def decide(
        self,
        attempt: int,
        error: BaseException,
        rng: RandomSource | None = None,
        *,
        max_attempts: int | None = None,
    ) -> Retry | DeadLetter:
        """What to do after attempt ``attempt`` (from 1) failed with ``error``.
        ``max_attempts`` overrides the policy's own (a task keeps the limit it was added
        with)."""
        limit = self.max_attempts if max_attempts is None else max_attempts
        if not isinstance(error, self.retry_on):
            return DeadLetter(f"{type(error).__name__} is not retried")
        if attempt >= limit:
            return DeadLetter(f"attempt {attempt} of {limit} failed")
        return Retry(self.delay(attempt, rng))
