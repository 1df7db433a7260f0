"""Deterministic simulation: the whole system in one process, every choice drawn from a seed.

:mod:`ops.simulate.kernel` is the loop a simulated run executes on (virtual time, seeded
scheduling, no outside world), the seeded :class:`~events.environment.Environment` and the
entry point :func:`run`.
"""

from ops.simulate.kernel import (
    DEFAULT_START,
    BudgetExceeded,
    Deadlock,
    RealWorldAccess,
    SimEnvironment,
    SimLoop,
    SimResult,
    SimulationError,
    TraceStep,
    UnsupportedAsyncio,
    check_asyncio_assumptions,
    current_loop,
    current_rng,
    run,
)

__all__ = [
    "run",
    "SimResult",
    "TraceStep",
    "SimLoop",
    "SimEnvironment",
    "current_loop",
    "current_rng",
    "SimulationError",
    "Deadlock",
    "BudgetExceeded",
    "RealWorldAccess",
    "UnsupportedAsyncio",
    "check_asyncio_assumptions",
    "DEFAULT_START",
]
