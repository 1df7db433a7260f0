"""Bounds on what a frozen or cut-off client can hold: every connection i3lani opens sets them.

PostgreSQL's defaults bound nothing: ``idle_in_transaction_session_timeout``,
``statement_timeout`` and ``lock_timeout`` are off, and TCP keepalive starts after two hours.
A node that is paused (SIGSTOP, a frozen container, a long swap stall) or whose network path
to PostgreSQL stops forwarding packets **while one of its transactions is open** then keeps
its row locks and holds back the snapshot horizon that gap-free readers wait on, for as long
as the pause lasts, or about two hours for a cut. Another node's lease take-over waits on
those locks; every reader of the log waits on that transaction.

So every connection of ours sets, per session, limits shorter than the lease (``$I3LANI_LEASE_TTL``,
``T`` below), derived from it unless set explicitly:

* ``idle_in_transaction_session_timeout`` (``I3LANI_IDLE_TX_TIMEOUT``, default ``T/4``, 2 s):
  a transaction left open by a frozen client; the server ends the session, its locks go and
  readers move on;
* ``statement_timeout`` (``I3LANI_STATEMENT_TIMEOUT``, default ``T/2``, 4 s): one statement,
  running or waiting on a lock;
* ``lock_timeout`` of lease operations (``I3LANI_LOCK_TIMEOUT``, default ``T/8``, 1 s): a lease
  take-over or renewal waiting on another session's lock gives up and tries again instead of
  queueing behind it;
* ``transaction_timeout`` (PostgreSQL 17 and later, ``T/2``): a whole transaction, which also
  covers a client frozen between two protocol messages of one statement;
* TCP keepalive, client and server side (idle ``T/4``, then a probe a second, two probes) and
  TCP user timeout (``T/2``): a dead peer on an idle connection, and unacknowledged data on a
  cut one.

Each of them must be shorter than the lease: :meth:`SessionLimits.check` refuses a configuration
where one is not (one line, naming the variable). The reasoning: a node's lease is renewed every
``T/4`` and it stops acting ``T/10`` before its lease can expire (:mod:`store.leases`); another
node may take the lease over once it has expired, so whatever the frozen node still holds must
be released by then, and the take-over itself must not queue behind it.

The keepalive and user-timeout settings only apply to TCP connections (the embedded server is
reached over a Unix socket, where a peer cannot vanish silently). Server settings are sent in the
start-up packet, so they cost no round trip; ``transaction_timeout`` needs one ``SET`` on servers
that have it. The embedded server, Render's and the test server keep their own defaults: these
are per session, not ``ALTER SYSTEM``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Self

from events.errors import ConfigError

__all__ = [
    "DEFAULT_LEASE_TTL",
    "Purpose",
    "SessionLimits",
    "apply_socket_limits",
    "lease_ttl_from_env",
]

logger = logging.getLogger(__name__)

DEFAULT_LEASE_TTL = 8.0
"""Seconds a lease lives without renewal (``$I3LANI_LEASE_TTL``)."""

Purpose = Literal["work", "lease", "listen", "maintenance"]
"""What a connection is for: ordinary work (appends, ticks, reads), lease operations (which
also give up on a lock quickly), LISTEN, and maintenance (migrations: no statement limit, but
still the idle-transaction bound and keepalives)."""


def _seconds(env: Mapping[str, str], name: str) -> float | None:
    text = env.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise ConfigError(f"{name} must be a positive number of seconds, got {text!r}")
    return value


def lease_ttl_from_env(env: Mapping[str, str] = os.environ) -> float:
    """``$I3LANI_LEASE_TTL`` seconds (default 8, from 1 to 300): how long a dead or frozen
    node's actors wait before another node takes them over; renewals come four times per TTL."""
    ttl = _seconds(env, "I3LANI_LEASE_TTL")
    if ttl is None:
        return DEFAULT_LEASE_TTL
    if not 1.0 <= ttl <= 300.0:
        raise ConfigError(f"I3LANI_LEASE_TTL must be between 1 and 300 seconds, got {ttl:g}")
    return ttl


@dataclass(frozen=True)
class SessionLimits:
    """Per-session bounds for every connection i3lani opens (see the module docstring).

    ``None`` for a timeout means "derived from the lease": call :meth:`resolved` (the store
    does) to get the numbers. ``statement`` may be set to ``0`` for a purpose that needs no
    statement bound (the audit reads, benchmarks), never the idle-transaction bound.
    """

    lease_ttl: float = DEFAULT_LEASE_TTL
    idle_in_transaction: float | None = None
    statement: float | None = None
    lock: float | None = None
    application: str = "i3lani"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, *, application: str = "i3lani") -> Self:
        """The limits configured by ``$I3LANI_LEASE_TTL``, ``$I3LANI_IDLE_TX_TIMEOUT``,
        ``$I3LANI_STATEMENT_TIMEOUT`` and ``$I3LANI_LOCK_TIMEOUT``; checked (ConfigError naming
        every malformed one, one line each)."""
        problems: list[str] = []

        def read(name: str) -> float | None:
            try:
                return _seconds(env, name)
            except ConfigError as exc:
                problems.extend(exc.problems)
                return None

        try:
            lease_ttl = lease_ttl_from_env(env)
        except ConfigError as exc:
            problems.extend(exc.problems)
            lease_ttl = DEFAULT_LEASE_TTL
        limits = cls(
            lease_ttl=lease_ttl,
            idle_in_transaction=read("I3LANI_IDLE_TX_TIMEOUT"),
            statement=read("I3LANI_STATEMENT_TIMEOUT"),
            lock=read("I3LANI_LOCK_TIMEOUT"),
            application=application,
        )
        if problems:  # the bounds below are only worth checking between well-formed values
            raise ConfigError(*problems)
        limits.check()
        return limits

    # -- the numbers ------------------------------------------------------------------------
    @property
    def idle_in_transaction_seconds(self) -> float:
        return self.idle_in_transaction or self.lease_ttl / 4

    @property
    def statement_seconds(self) -> float:
        return self.lease_ttl / 2 if self.statement is None else self.statement

    @property
    def lock_seconds(self) -> float:
        return self.lock or self.lease_ttl / 8

    @property
    def keepalive_idle(self) -> int:
        return max(1, int(self.lease_ttl / 4))

    @property
    def user_timeout_ms(self) -> int:
        return max(1000, int(self.lease_ttl * 500))

    @property
    def renew_interval(self) -> float:
        """How often a lease is renewed: four times per time to live."""
        return self.lease_ttl / 4

    def check(self) -> None:
        """Refuse, in one line, limits that would let a frozen client outlast the lease."""
        bounds = [
            ("I3LANI_IDLE_TX_TIMEOUT", self.idle_in_transaction_seconds),
            ("I3LANI_LOCK_TIMEOUT", self.lock_seconds),
        ]
        if self.statement_seconds:
            bounds.append(("I3LANI_STATEMENT_TIMEOUT", self.statement_seconds))
        for name, value in bounds:
            if value >= self.lease_ttl:
                raise ConfigError(
                    f"{name} ({value:g}s) must be shorter than I3LANI_LEASE_TTL "
                    f"({self.lease_ttl:g}s): a frozen node would hold its locks past its lease"
                )
        if self.lock_seconds >= self.renew_interval * 2:
            raise ConfigError(
                f"I3LANI_LOCK_TIMEOUT ({self.lock_seconds:g}s) must be shorter than half the "
                f"lease ({self.lease_ttl / 2:g}s): a renewal stuck on a lock must leave time "
                f"to try again before the lease runs out"
            )

    def for_application(self, name: str) -> SessionLimits:
        return dataclasses.replace(self, application=name)

    # -- what a connection sends -------------------------------------------------------------
    def server_settings(self, purpose: Purpose = "work") -> dict[str, str]:
        """GUCs for asyncpg's ``server_settings`` (sent in the start-up packet)."""
        settings = {
            "application_name": f"{self.application}:{purpose}"[:63],
            "idle_in_transaction_session_timeout": _ms(self.idle_in_transaction_seconds),
            "tcp_keepalives_idle": str(self.keepalive_idle),
            "tcp_keepalives_interval": "1",
            "tcp_keepalives_count": "2",
            "tcp_user_timeout": str(self.user_timeout_ms),
        }
        if purpose == "maintenance":
            settings["statement_timeout"] = "0"
        else:
            settings["statement_timeout"] = _ms(self.statement_seconds)
        if purpose == "lease":
            settings["lock_timeout"] = _ms(self.lock_seconds)
        return settings

    def transaction_timeout_sql(self, server_version: int, purpose: Purpose = "work") -> str | None:
        """``SET transaction_timeout`` for servers that have it (17+), else None."""
        if server_version < 170000 or purpose == "maintenance" or not self.statement_seconds:
            return None
        return f"SET transaction_timeout = {_ms(self.statement_seconds)}"

    def connect_kwargs(self, purpose: Purpose = "work") -> dict[str, Any]:
        """asyncpg ``connect``/``create_pool`` options: the server settings, and a connect
        that gives up after the lease's time to live (asyncpg's default is a minute)."""
        return {"server_settings": self.server_settings(purpose), "timeout": self.lease_ttl}


def _ms(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


def apply_socket_limits(connection: Any, limits: SessionLimits) -> None:
    """TCP keepalive and user timeout on the client's side of ``connection`` (an asyncpg
    connection), so that a cut network path fails the client's calls too instead of leaving
    them waiting for hours. asyncpg has no option for it: the socket is reached through its
    transport. Unix sockets (the embedded server) are left alone."""
    transport = getattr(connection, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), limits.keepalive_idle),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 2),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), limits.user_timeout_ms),
    ]
    for level, option, value in options:
        if option is None:
            continue  # not on this platform
        try:
            sock.setsockopt(level, option, value)
        except OSError as exc:
            logger.debug("cannot set socket option %s: %s", option, exc)
