"""The LISTEN connection, opened and closed safely: one per process, shared by every
subscription and task processor (:class:`store._wakeup.ListenHub`), which each decide what to
do when it cannot be had (poll instead). Failures raise the store's own errors
(:mod:`store.driver`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import asyncpg

from store.database import redact_dsn
from store.driver import DRIVER_ERRORS, driver_errors
from store.limits import SessionLimits, apply_socket_limits

__all__ = [
    "NOTIFY_CHANNEL",
    "ListenConnection",
    "open_listener",
    "close_listener",
    "listen_on",
    "unlisten",
]

NOTIFY_CHANNEL = "i3lani_events"
"""LISTEN channel woken after appends commit; its payload lists the categories written."""

_LISTEN_TIMEOUT = 5.0
"""Seconds a connect or a LISTEN may take before it is given up (and polling covers)."""


async def open_listener(
    dsn: str, on_lost: Callable[..., Any], limits: SessionLimits | None = None
) -> asyncpg.Connection:
    """A new connection for LISTEN (channels are added with :func:`listen_on`); ``on_lost``
    is called if it drops.

    With ``limits`` (the store's), the connection carries them like every other of ours: a
    cut network path then fails it (and ``on_lost`` is called) instead of leaving it silent.
    Shielded (and bounded to 5 s): a connect cancelled half-way leaves asyncpg with a dangling
    connection (asyncpg issue #1211). If the caller was cancelled meanwhile, the connection is
    closed and the cancellation goes on; on a failure nothing is left open. PostgreSQL
    unreachable or refusing raises StoreUnavailable.
    """
    conn: asyncpg.Connection | None = None
    try:
        with (
            driver_errors(connecting_to=f"{redact_dsn(dsn)} to LISTEN"),
            anyio.CancelScope(shield=True),
            anyio.fail_after(_LISTEN_TIMEOUT),
        ):
            settings = limits.connect_kwargs("listen") if limits is not None else {}
            conn = await asyncpg.connect(dsn, **settings)
            if limits is not None:
                apply_socket_limits(conn, limits)
            conn.add_termination_listener(on_lost)
        await anyio.lowlevel.checkpoint()
    except BaseException:
        if conn is not None:
            conn.terminate()
        raise
    assert conn is not None  # connected, or the shielded block raised
    return conn


async def listen_on(conn: ListenConnection, channel: str, callback: Callable[..., Any]) -> None:
    """``LISTEN channel`` on ``conn``, ``callback(connection, pid, channel, payload)`` for each
    notification. Shielded and bounded like the connect: a LISTEN cancelled half-way would
    leave the connection's protocol in doubt. A failure terminates the connection (its
    owner is told through ``on_lost``) and raises the store's error."""
    await _shielded(conn, f"LISTEN {channel}", conn.add_listener(channel, callback))


async def unlisten(conn: ListenConnection, channel: str, callback: Callable[..., Any]) -> None:
    """``UNLISTEN channel`` on ``conn`` (nobody follows it any more); a failure terminates the
    connection rather than leave it listening in doubt."""
    await _shielded(conn, f"UNLISTEN {channel}", conn.remove_listener(channel, callback))


async def _shielded(conn: ListenConnection, what: str, statement: Awaitable[None]) -> None:
    try:
        with (
            driver_errors(what=what),
            anyio.CancelScope(shield=True),
            anyio.fail_after(_LISTEN_TIMEOUT),
        ):
            await statement
    except BaseException:
        conn.terminate()
        raise


class ListenConnection(Protocol):
    """What the hub needs of a LISTEN connection (an asyncpg connection; fakes in tests)."""

    def is_closed(self) -> bool: ...

    async def add_listener(self, channel: str, callback: Callable[..., Any]) -> None: ...

    async def remove_listener(self, channel: str, callback: Callable[..., Any]) -> None: ...

    async def close(self) -> None: ...

    def terminate(self) -> None: ...


async def close_listener(conn: ListenConnection | None) -> None:
    """Close ``conn`` within 2 s, shielded from cancellation; terminate it otherwise."""
    if conn is None or conn.is_closed():
        return
    with anyio.CancelScope(shield=True), anyio.move_on_after(2):
        try:
            await conn.close()
        except DRIVER_ERRORS:
            conn.terminate()
    if not conn.is_closed():
        conn.terminate()
