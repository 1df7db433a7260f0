"""The connection budget: how many PostgreSQL connections one process may hold at most.

A database plan caps its connections (Render's: 100 for the original deployment, shared by the
web service and every worker), and a deploy runs an old and a new worker side by side. So each
process keeps to a budget, ``$I3LANI_MAX_CONNECTIONS`` (``N`` below; default 8 for
``i3lani run``, 4 for the gateway, 3 for the operator commands), whatever its load:

* **one LISTEN connection**, shared by every subscription and task processor of the process
  (:class:`store._wakeup.ListenHub`), opened while anything follows the log;
* **one connection for lease statements** (:mod:`store.leases`) and the session guard that
  ends frozen sessions (``i3lani run``), opened by the first of them and never starved by a
  busy pool, with its short lock timeout;
* **a pool of at most N - 2** for everything else: appends, transactions, reads, the task
  queue, NOTIFY. Jobs that run one statement after another (the lone writer's appends) keep a
  pooled connection between close uses and give it back once it has sat unused a moment, or
  at once when others wait for one.

Two workers and the web service at the defaults hold at most 8 + 8 + 4 = 20 connections, and
24 with a second web instance during its own deploy: under 25.

When every pooled connection is in use, a caller **waits** for one, in turn, however long it
takes; nothing is refused and nothing retried in a loop. The wait is logged (a warning naming
the budget and how many wait, at most once per :data:`LOG_EVERY` seconds while waits go on),
and counted (:meth:`BudgetedPool.statistics`): a line when waits begin (information: a start-up,
when every actor recovers at once, meets a short one), a warning when one lasted over
:data:`SLOW_WAIT` seconds. Every statement a connection runs is bounded by
the session limits (:mod:`store.limits`), and no caller holds a pooled connection while it
waits for another, so a wait ends as soon as a statement does.

Idle, a process holds fewer: the pool keeps one connection and closes the others once they
have sat unused for :data:`IDLE_LIFETIME` seconds. And it opens another only for a wait that
lasts: a caller that finds every open connection busy waits up to :data:`GROW_AFTER` for one
to come back before a new one is opened. The timers of an idle worker's followers and ticks
meet now and then; a statement takes a millisecond or two, so such a meeting is served by the
connections already open instead of leaving the pool a connection larger for the next
minute (each such connection, used now and then, never sat unused long enough to close).
Sustained demand still grows the pool, a few milliseconds later.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from events.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "GATEWAY_MAX_CONNECTIONS",
    "COMMAND_MAX_CONNECTIONS",
    "MIN_CONNECTIONS",
    "RESERVED",
    "IDLE_LIFETIME",
    "GROW_AFTER",
    "LOG_EVERY",
    "BudgetedPool",
    "PoolStatistics",
    "max_connections_from_env",
    "pool_size",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS: Final = 8
"""A worker's budget (``i3lani run``) unless ``$I3LANI_MAX_CONNECTIONS`` says otherwise."""
GATEWAY_MAX_CONNECTIONS: Final = 4
"""The web service's budget (``i3lani gateway``) unless ``$I3LANI_MAX_CONNECTIONS`` says
otherwise: its pool of 2 serves webhook requests, the admin API and the payment notifier."""
COMMAND_MAX_CONNECTIONS: Final = 3
"""An operator command's (``status``, ``events``, ``audit``...): one pooled connection, and one
to LISTEN for those that follow the log."""
RESERVED: Final = 2
"""Connections of the budget outside the pool: one LISTEN, one for lease statements."""
MIN_CONNECTIONS: Final = RESERVED + 1
MAX_CONNECTIONS: Final = 1000
IDLE_LIFETIME: Final = 60.0
"""Seconds a pooled connection may sit unused before the pool closes it (down to one)."""
GROW_AFTER: Final = 0.01
"""Seconds a caller waits for a busy open connection to come back before the pool opens
another (below its maximum)."""
LOG_EVERY: Final = 10.0
"""Seconds between two log lines about waits for a connection, at most (of each kind)."""
SLOW_WAIT: Final = 1.0
"""A wait for a connection longer than this is a warning (a shorter one, information)."""


def max_connections_from_env(default: int, env: Mapping[str, str] = os.environ) -> int:
    """``$I3LANI_MAX_CONNECTIONS``: the most connections this process may hold (LISTEN and
    lease connections included), from 3 to 1000; ``default`` when unset."""
    text = env.get("I3LANI_MAX_CONNECTIONS", "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(
            f"I3LANI_MAX_CONNECTIONS must be a whole number of connections, got {text!r}"
        ) from None
    check_budget(value, name="I3LANI_MAX_CONNECTIONS")
    return value


def check_budget(value: int, *, name: str = "max_connections") -> None:
    """Refuse, in one line, a budget that leaves the pool nothing."""
    if not MIN_CONNECTIONS <= value <= MAX_CONNECTIONS:
        raise ConfigError(
            f"{name} must be between {MIN_CONNECTIONS} and {MAX_CONNECTIONS} (one LISTEN "
            f"connection, one for leases, at least one for the rest), got {value}"
        )


def pool_size(budget: int) -> int:
    """The pool's share of a budget of ``budget`` connections."""
    return budget - RESERVED


class PoolStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """The pool at one moment: connections open (``size``), in use, its maximum; how many
    callers wait for one now, how many have waited since the process started, and the
    longest wait in seconds."""

    size: int
    in_use: int
    max_size: int
    waiting: int
    waits: int
    longest_wait: float


class BudgetedPool:
    """The store's asyncpg pool, kept to its share of the budget (see the module docstring):
    the calls the store makes of a pool (``acquire``, ``fetch`` ...), with a full pool's waits
    logged and counted. ``budget`` is the whole process's, for the log line."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        budget: int,
        reclaim: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._pool = pool
        self._reclaim = reclaim  # gives back connections held but unused (the store's borrowers)
        self.budget = budget
        self._waiting = 0
        self._waits = 0
        self._longest = 0.0
        self._logged_at: float | None = None
        self._warned_at: float | None = None
        self._returned = anyio.Event()  # set when a connection comes back to the pool
        self.growth_waits = 0
        """Callers that found every open connection busy and waited (up to GROW_AFTER) for
        one to come back instead of opening another."""

    @property
    def waiting(self) -> int:
        """Callers waiting for a connection now."""
        return self._waiting

    @property
    def max_size(self) -> int:
        return int(self._pool.get_max_size())

    def in_use(self) -> int:
        return int(self._pool.get_size() - self._pool.get_idle_size())

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            size=int(self._pool.get_size()),
            in_use=self.in_use(),
            max_size=self.max_size,
            waiting=self._waiting,
            waits=self._waits,
            longest_wait=round(self._longest, 3),
        )

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[PoolConnectionProxy[Any]]:
        """A pooled connection for the block; when all are in use, wait for one (logged).
        When every open one is busy, a new one is opened only after :data:`GROW_AFTER`."""
        try:
            if self.in_use() < self.max_size and not self._waiting:
                if self._pool.get_idle_size() == 0 and self._pool.get_size() > 0:
                    await self._wait_before_growing()
                async with self._pool.acquire() as conn:
                    yield conn
                return
            async with self._acquire_waiting() as conn:
                yield conn
        finally:
            self._returned.set()

    async def _wait_before_growing(self) -> None:
        """Take back the connections held but unused, then wait up to GROW_AFTER for an open
        connection to come back (see the module docstring)."""
        if self._reclaim is not None:
            await self._reclaim()
            if self._pool.get_idle_size() > 0:
                return
        self.growth_waits += 1
        deadline = anyio.current_time() + GROW_AFTER
        while self._pool.get_idle_size() == 0 and self.in_use() < self.max_size:
            left = deadline - anyio.current_time()
            if left <= 0:
                return
            if self._returned.is_set():
                self._returned = anyio.Event()
            with anyio.move_on_after(left):
                await self._returned.wait()

    @asynccontextmanager
    async def _acquire_waiting(self) -> AsyncIterator[PoolConnectionProxy[Any]]:
        began = anyio.current_time()
        self._waiting += 1
        self._waits += 1
        self._log_wait(began)
        waited = False
        try:
            async with self._pool.acquire() as conn:
                waited = self._waited(began)
                yield conn
        finally:
            if not waited:  # given up (cancelled) while waiting
                self._waited(began)

    def _waited(self, began: float) -> bool:
        now = anyio.current_time()
        self._waiting -= 1
        self._longest = max(self._longest, now - began)
        if now - began > SLOW_WAIT and (
            self._warned_at is None or now - self._warned_at >= LOG_EVERY
        ):
            self._warned_at = now
            logger.warning(
                "waited %.1fs for a database connection: all %d pooled connections of this "
                "process were in use (I3LANI_MAX_CONNECTIONS=%d); %d caller(s) still wait",
                now - began,
                self.max_size,
                self.budget,
                self._waiting,
                extra={"action": "connection_budget_slow_wait"},
            )
        return True

    def _log_wait(self, now: float) -> None:
        if self._logged_at is not None and now - self._logged_at < LOG_EVERY:
            return
        self._logged_at = now
        logger.info(
            "all %d pooled database connections of this process are in use "
            "(I3LANI_MAX_CONNECTIONS=%d, %d of them for LISTEN and leases): %d caller(s) "
            "wait for one (%d waits so far, the longest %.2fs)",
            self.max_size,
            self.budget,
            RESERVED,
            self._waiting,
            self._waits,
            self._longest,
            extra={"action": "connection_budget_wait"},
        )

    # -- what the store runs on a pool -------------------------------------------------------------
    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.acquire() as conn:
            return await conn.fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self.acquire() as conn:
            return await conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        async with self.acquire() as conn:
            return await conn.execute(query, *args)

    async def executemany(self, query: str, args: Sequence[Sequence[Any]]) -> None:
        async with self.acquire() as conn:
            await conn.executemany(query, args)

    async def close(self) -> None:
        await self._pool.close()

    def terminate(self) -> None:
        self._pool.terminate()
