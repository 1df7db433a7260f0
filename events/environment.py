"""Where time, ids and randomness come from: the system, or a simulation's seeded stand-ins.

Production code asks here, and nowhere else, for the wall clock (:func:`now`), the monotonic
clock (:func:`monotonic`), new ids (:func:`new_uuid`) and an unseeded random source
(:func:`new_rng`), instead of calling ``datetime.now``, ``time.monotonic``, ``uuid.uuid4`` or
``random.Random()`` itself. Outside a simulation each answer is the system's own. A
deterministic simulation (``i3lani simulate``) runs the whole system under an
:class:`Environment` of its own, set with :func:`use`: a simulated clock and generators
seeded from the run's seed, so that one seed always gives the same run.

The environment is a context variable: tasks inherit it from the task that started them, so
everything started under ``with use(env):`` sees ``env``, and nothing else does (a test or a
process running beside a simulation is not affected).

``monotonic`` is the event loop's clock (``anyio.current_time()``) inside one, so that
deadlines measured by it agree with ``anyio.sleep`` and ``anyio.fail_after`` even when the
loop's time is simulated; outside a loop it is ``time.monotonic()``, the same clock asyncio's
loop reads.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Final, Protocol

import anyio

__all__ = [
    "Environment",
    "SystemEnvironment",
    "SYSTEM",
    "current",
    "use",
    "now",
    "monotonic",
    "new_uuid",
    "new_rng",
    "set_after",
]


class Environment(Protocol):
    """The sources of non-determinism a process draws on."""

    def now(self) -> datetime:
        """The wall clock: timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (durations, deadlines)."""
        ...

    def new_uuid(self) -> uuid.UUID:
        """A new random (version 4) UUID: event ids, command ids, holder ids."""
        ...

    def new_rng(self) -> random.Random:
        """A random source for a component that was not given one (jitter, backoff)."""
        ...


class SystemEnvironment:
    """The real thing: the system clocks, ``uuid.uuid4`` and an OS-seeded ``random.Random``."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return time.monotonic()
        return loop.time()

    def new_uuid(self) -> uuid.UUID:
        return uuid.uuid4()

    def new_rng(self) -> random.Random:
        return random.Random()


SYSTEM: Final = SystemEnvironment()

_current: ContextVar[Environment] = ContextVar("i3lani_environment", default=SYSTEM)


def current() -> Environment:
    """The environment in force here: a simulation's, or :data:`SYSTEM`."""
    return _current.get()


@contextmanager
def use(environment: Environment) -> Iterator[Environment]:
    """Run the block (and every task started from it) under ``environment``."""
    token = _current.set(environment)
    try:
        yield environment
    finally:
        _current.reset(token)


def now() -> datetime:
    """The current time, timezone-aware UTC (:meth:`Environment.now`)."""
    return _current.get().now()


def monotonic() -> float:
    """Seconds on the monotonic clock (:meth:`Environment.monotonic`)."""
    return _current.get().monotonic()


def new_uuid() -> uuid.UUID:
    """A new version-4 UUID (:meth:`Environment.new_uuid`)."""
    return _current.get().new_uuid()


def new_rng() -> random.Random:
    """A random source for a component not given one (:meth:`Environment.new_rng`)."""
    return _current.get().new_rng()


async def set_after(event: anyio.Event, seconds: float) -> None:
    """Wait until ``event`` is set, setting it itself once ``seconds`` have passed: a wait
    with a time limit whose owner tells a wake-up from the limit by a flag of its own (see
    :class:`store._wakeup.Wakeup`), and replaces the event after it.

    What ``with anyio.move_on_after(seconds): await event.wait()`` does, on a timer of the
    event loop instead of a cancel scope: a wait that runs out costs one timer callback, not
    a cancellation (the scope's timeout, a ``CancelledError`` raised through the task, the
    scope's delivery and clean-up, in all about four of the loop's steps and most of their
    CPU). Such waits are most of what a quiet node does (standing by for a lease, polling
    for work, following a quiet log), and in a simulation most of its steps. The timer is the
    running loop's, so a simulated loop's virtual time drives it like any sleep."""
    if event.is_set() or seconds == math.inf:
        await event.wait()
        return
    handle = asyncio.get_running_loop().call_later(max(seconds, 0.0), event.set)
    try:
        await event.wait()
    finally:
        handle.cancel()
