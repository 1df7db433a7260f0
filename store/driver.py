"""Driver errors into the store's own: the one place in ``store/`` that knows asyncpg's errors.

Every call into asyncpg runs inside :func:`driver_errors` (or hands what it caught to
:func:`translate`), so whatever leaves the store is a :class:`~events.errors.StoreError`, with
the driver's error as its ``__cause__``. Code outside ``store/`` catches ``StoreUnavailable``
(retry later) or ``StoreError``, never asyncpg's classes. The mapping (httpx's
``map_httpcore_exceptions`` is the model), first match wins:

    raised by the driver                                    becomes
    ──────────────────────────────────────────────────────  ──────────────────────────────────
    SQLSTATE I3SG1 (``i3lani.check_fence``), with a fence   StaleGeneration
    SQLSTATE I3AO1 (the append-only triggers)               AppendOnlyViolation
    while connecting: anything (refused, bad password)      StoreUnavailable ("cannot connect")
    class 40 (deadlock, serialization failure), for a       ConcurrencyConflict
      stream: the writer re-reads and decides again
    the connection or the server is gone, or too busy:      StoreUnavailable
      OSError, TimeoutError, class 08 (connection),
      class 53 (too many connections, out of memory, disk
      full), class 57 (admin/crash shutdown, cannot connect
      now, statement timeout), asyncpg's InterfaceError
      (connection closed) and InternalClientError
      (protocol state lost)
    a bound of store/limits.py ran out: 55P03 lock          StoreUnavailable
      timeout, 25P03 idle-in-transaction timeout, 25P04
      transaction timeout; 40003 completion unknown; class
      40 with no stream to blame
    anything else asyncpg raises (a bad statement, a        StoreError
      constraint, a client-side misuse such as a bad
      argument or configuration, an SQLSTATE asyncpg does
      not know: our own I3xxx come as UnknownPostgresError)

"StoreUnavailable" means *nothing was done, or it cannot be known: try again later*; every
write of the store is idempotent (event ids, compare-and-set checkpoints), so a retry is safe.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import asyncpg
from asyncpg.exceptions import _base as asyncpg_base

from events.errors import (
    AppendOnlyViolation,
    ConcurrencyConflict,
    StaleGeneration,
    StoreError,
    StoreUnavailable,
)
from store.records import ANY

__all__ = ["DRIVER_ERRORS", "STALE_GENERATION_SQLSTATE", "driver_errors", "translate"]

DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # asyncpg may notice a connection the server closed only mid-protocol, and say so with
    # this error rather than a closed-connection one (asyncpg issue #1069).
    asyncpg.exceptions.InternalClientError,
)
"""Everything the driver raises. For ``except`` clauses inside ``store/`` only: code outside
catches the store's own exceptions."""

STALE_GENERATION_SQLSTATE = "I3SG1"
"""Raised by ``i3lani.check_fence`` (migration 0005): a fenced write from a lease generation
that is no longer current."""

APPEND_ONLY_SQLSTATE = "I3AO1"
"""Raised by the triggers that keep ``i3lani.events`` append-only."""

_GONE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, ...
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdowns, statement timeout
    asyncpg.exceptions.InternalClientError,
    # The bounds every connection sets (store/limits.py): a lock wait that ran out of time, a
    # transaction the server ended because its client went quiet or it ran too long. Each
    # means "nothing was done; try again", like an outage.
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,
    asyncpg.exceptions.TransactionTimeoutError,
    # The connection broke during the COMMIT: whether it happened cannot be known.
    asyncpg.exceptions.StatementCompletionUnknownError,
)

_MISUSE: tuple[type[BaseException], ...] = (
    # asyncpg's client-side refusals: a bug or a configuration to fix, not an outage.
    asyncpg_base.ClientConfigurationError,
    asyncpg_base.UnsupportedClientFeatureError,
    asyncpg_base.UnsupportedServerFeatureError,
    asyncpg_base.DataError,
)


class Fenced(Protocol):
    """What :func:`translate` needs of a :class:`store.eventstore.Fence`."""

    @property
    def lease(self) -> str: ...

    @property
    def generation(self) -> int: ...


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) else None


def translate(
    exc: BaseException,
    *,
    what: str = "the event store's SQL",
    stream: str | None = None,
    expected: object = ANY,
    fence: Fenced | None = None,
    connecting_to: str | None = None,
) -> StoreError:
    """The store's exception for driver error ``exc`` (see the module's table); the caller
    raises it ``from exc``. ``what`` names the work in the message of a plain StoreError;
    ``stream`` and ``expected`` are the append a class-40 rollback is blamed on; ``fence`` the
    lease an I3SG1 refusal names; ``connecting_to`` (a redacted DSN) says the error came from
    opening a connection."""
    state = _sqlstate(exc)
    if state == STALE_GENERATION_SQLSTATE and fence is not None:
        return StaleGeneration(fence.lease, fence.generation)
    if state == APPEND_ONLY_SQLSTATE:
        return AppendOnlyViolation(str(exc))
    detail = f"{type(exc).__name__}: {exc}"
    if connecting_to is not None:
        # Unreachable, or the server refused us (no such database, bad password): one line.
        return StoreUnavailable(f"cannot connect to {connecting_to}: {detail}")
    if isinstance(exc, asyncpg.exceptions.TransactionRollbackError) and not isinstance(
        exc, asyncpg.exceptions.StatementCompletionUnknownError
    ):
        if stream is not None:
            return ConcurrencyConflict(stream, expected, None)
        return StoreUnavailable(f"PostgreSQL rolled the transaction back, try again: {detail}")
    if isinstance(exc, _GONE) or (
        isinstance(exc, asyncpg.InterfaceError) and not isinstance(exc, _MISUSE)
    ):
        return StoreUnavailable(f"PostgreSQL is unreachable or too slow: {detail}")
    return StoreError(f"{what} failed: {detail}")


@contextmanager
def driver_errors(
    *,
    what: str = "the event store's SQL",
    stream: str | None = None,
    expected: object = ANY,
    fence: Fenced | None = None,
    connecting_to: str | None = None,
) -> Iterator[None]:
    """Run the block with driver errors translated (:func:`translate`), ``__cause__`` set.
    The store's own exceptions, and everything that is not the driver's, pass unchanged."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise translate(
            exc,
            what=what,
            stream=stream,
            expected=expected,
            fence=fence,
            connecting_to=connecting_to,
        ) from exc
