"""Every error the driver can raise leaves the store as one of the store's own (store/driver.py).

The classes are found by walking asyncpg's exception modules, so an asyncpg upgrade that adds
one is tested (and classified by its SQLSTATE family) without anyone listing it here. Then every
store method that talks to PostgreSQL is driven with a failing connection, to prove none lets a
driver error through. No PostgreSQL needed.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
import pytest
from asyncpg.exceptions import _base as asyncpg_base

from events.errors import (
    AppendOnlyViolation,
    ConcurrencyConflict,
    StaleGeneration,
    StoreError,
    StoreUnavailable,
)
from store import NO_STREAM, Cursor, EventStore, Fence
from store.driver import DRIVER_ERRORS, driver_errors, translate
from store.leases import Lease, Leases

# Parametrized async tests need anyio_backend in their closure: otherwise anyio's plugin
# re-creates them at collection time, dropping their parameters.
pytestmark = pytest.mark.usefixtures("anyio_backend")


def _asyncpg_exception_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module in (asyncpg.exceptions, asyncpg_base):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and not issubclass(cls, Warning):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[name] for name in sorted(found)]


ASYNCPG_CLASSES = _asyncpg_exception_classes()

OS_CLASSES: list[type[BaseException]] = [
    OSError,
    ConnectionError,
    ConnectionRefusedError,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    socket.gaierror,
    ssl.SSLError,
    TimeoutError,
    asyncio.TimeoutError,
]

# The independent statement of the rules (see store/driver.py's table), by SQLSTATE family.
UNAVAILABLE_FAMILIES = {"08", "53", "57"}  # connection, insufficient resources, operator
UNAVAILABLE_STATES = {"55P03", "25P03", "25P04", "40003"}  # the session bounds; completion unknown
MISUSE = (
    asyncpg_base.ClientConfigurationError,
    asyncpg_base.UnsupportedClientFeatureError,
    asyncpg_base.UnsupportedServerFeatureError,
    asyncpg_base.DataError,
)


def expected_for(cls: type[BaseException], *, stream: str | None) -> type[StoreError]:
    if issubclass(cls, OSError | TimeoutError | asyncpg.exceptions.InternalClientError):
        return StoreUnavailable
    if issubclass(cls, asyncpg.InterfaceError):
        return StoreError if issubclass(cls, MISUSE) else StoreUnavailable
    state = getattr(cls, "sqlstate", None)
    if state is None:
        return StoreError  # PostgresError itself, and SQLSTATEs asyncpg does not know
    if state in UNAVAILABLE_STATES or state[:2] in UNAVAILABLE_FAMILIES:
        return StoreUnavailable
    if state[:2] == "40":  # deadlock, serialization failure
        return ConcurrencyConflict if stream is not None else StoreUnavailable
    return StoreError


def make(cls: type[BaseException]) -> BaseException:
    return cls(104, "boom") if issubclass(cls, OSError) else cls("boom")


def _name(cls: type[BaseException]) -> str:
    return (
        cls.__qualname__
        if cls.__module__ != "asyncpg.exceptions._base"
        else f"_base.{cls.__name__}"
    )


ALL_CLASSES = ASYNCPG_CLASSES + OS_CLASSES


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=_name)
def test_every_driver_error_is_translated(cls: type[BaseException]) -> None:
    raised = make(cls)
    assert isinstance(raised, DRIVER_ERRORS)
    with pytest.raises(StoreError) as caught, driver_errors():
        raise raised
    assert type(caught.value) is expected_for(cls, stream=None)
    assert caught.value.__cause__ is raised


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=_name)
def test_every_driver_error_met_by_an_append_is_translated(cls: type[BaseException]) -> None:
    translated = translate(make(cls), stream="payment-1", expected=NO_STREAM)
    assert type(translated) is expected_for(cls, stream="payment-1")
    if isinstance(translated, ConcurrencyConflict):
        assert (translated.stream, translated.expected) == ("payment-1", NO_STREAM)


def test_the_classification_covers_what_it_must() -> None:
    # The families the store treats as "try again later" are really in the walk.
    names = {cls.__name__ for cls in ASYNCPG_CLASSES}
    for name in (
        "PostgresConnectionError",
        "ConnectionDoesNotExistError",
        "ConnectionFailureError",
        "CannotConnectNowError",
        "AdminShutdownError",
        "CrashShutdownError",
        "TooManyConnectionsError",
        "QueryCanceledError",
        "LockNotAvailableError",
        "IdleInTransactionSessionTimeoutError",
        "TransactionTimeoutError",
        "SerializationError",
        "DeadlockDetectedError",
        "InterfaceError",
        "InternalClientError",
        "ProtocolError",
    ):
        assert name in names
    unavailable = [c for c in ALL_CLASSES if expected_for(c, stream=None) is StoreUnavailable]
    assert len(unavailable) > 30


def _postgres_error(sqlstate: str, message: str = "refused") -> BaseException:
    error: BaseException = asyncpg.PostgresError.new({"C": sqlstate, "M": message, "S": "ERROR"})
    return error


def test_our_own_sqlstates() -> None:
    # Custom SQLSTATEs come from asyncpg as UnknownPostgresError: never taken for an outage.
    fence = Fence("actor-payments", 7)
    stale = translate(_postgres_error("I3SG1"), fence=fence)
    assert isinstance(stale, StaleGeneration)
    assert (stale.lease, stale.generation) == ("actor-payments", 7)
    assert type(translate(_postgres_error("I3SG1"))) is StoreError
    refused = translate(_postgres_error("I3AO1", "DELETE refused: the log is append-only"))
    assert isinstance(refused, AppendOnlyViolation)
    assert "DELETE refused" in str(refused)
    assert type(translate(_postgres_error("XX999"))) is StoreError


def test_the_message_names_the_work_and_the_driver_error() -> None:
    error = translate(asyncpg.exceptions.UndefinedTableError("no tasks"), what="the task queue")
    assert str(error) == "the task queue failed: UndefinedTableError: no tasks"
    down = translate(ConnectionRefusedError(111, "refused"))
    assert str(down).startswith("PostgreSQL is unreachable or too slow: ConnectionRefusedError")


def test_anything_fails_a_connect_as_unavailable() -> None:
    # A bad password is not an outage, but the caller cannot connect either way: one line.
    error = translate(
        asyncpg.exceptions.InvalidPasswordError("password authentication failed"),
        connecting_to="postgresql://i3lani@db/i3lani",
    )
    assert type(error) is StoreUnavailable
    assert str(error).startswith("cannot connect to postgresql://i3lani@db/i3lani: ")


def test_other_errors_pass_unchanged() -> None:
    own = StaleGeneration("actor-x", 1)
    with pytest.raises(StaleGeneration) as caught, driver_errors():
        raise own
    assert caught.value is own
    with pytest.raises(ValueError, match="ours"), driver_errors():
        raise ValueError("ours")


# -- every store method, on a connection that fails ---------------------------------------------


class FailingPool:
    """Stands in for the store's asyncpg pool: every statement raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def _fail(self, *args: object, **kwargs: object) -> Any:
        raise self.error

    fetch = fetchrow = fetchval = execute = _fail


class Snap(msgspec.Struct):
    n: int


DEAD_DSN = "postgresql://i3lani@127.0.0.1:9/i3lani?connect_timeout=1"

Call = Callable[[EventStore], Awaitable[object]]

CALLS: dict[str, Call] = {
    "stream_version": lambda s: s.stream_version("payment-1"),
    "read_stream": lambda s: s.read_stream("payment-1"),
    "last_event": lambda s: s.last_event("payment-1"),
    "head": lambda s: s.head(),
    "cursor_at": lambda s: s.cursor_at(5),
    "read_page": lambda s: s.read_page(Cursor(1, 1)),
    "oldest_writer": lambda s: s.oldest_writer(),
    "held_back": lambda s: s.held_back(Cursor(1, 1)),
    "load_checkpoint": lambda s: s.load_checkpoint("reader"),
    "save_checkpoint": lambda s: s.save_checkpoint("reader", Cursor(1, 1), expected=None),
    "save_snapshot": lambda s: s.save_snapshot("payment-1", 1, Snap(1)),
    "load_snapshot": lambda s: s.load_snapshot("payment-1", Snap),
    "execute_sql": lambda s: s.execute_sql("SELECT 1"),
    "leases.all": lambda s: Leases(s, "node-a").all(),
}

FAILURES: list[BaseException] = [
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
    asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
    asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
    ConnectionResetError(104, "reset by peer"),
    asyncpg.exceptions.UndefinedTableError("relation does not exist"),
]


@pytest.mark.parametrize("failure", FAILURES, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("method", sorted(CALLS))
async def test_no_store_read_or_write_lets_a_driver_error_through(
    method: str, failure: BaseException
) -> None:
    store = EventStore(DEAD_DSN)
    store._opened = FailingPool(failure)  # type: ignore[assignment]
    with pytest.raises(StoreError) as caught:
        await CALLS[method](store)
    assert type(caught.value) is expected_for(type(failure), stream=None)
    assert caught.value.__cause__ is failure


async def test_lease_statements_raise_store_errors_when_postgresql_is_down() -> None:
    leases = Leases(EventStore(DEAD_DSN), "node-a", ttl=5)
    with pytest.raises(StoreUnavailable) as caught:
        await leases.acquire("actor-payments")
    assert isinstance(caught.value.__cause__, DRIVER_ERRORS)
    with pytest.raises(StoreUnavailable):
        await leases.renew(Lease("actor-payments", "node-a", 3))
