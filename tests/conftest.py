"""Test harness: a real PostgreSQL, one fresh database per test cloned from a migrated template.

``DATABASE_URL`` set: tests use that server (its credentials must allow CREATE DATABASE).
Unset: the embedded PostgreSQL is started under ``$I3LANI_HOME/test-pgdata``.
"""

from __future__ import annotations

import inspect
import os
import subprocess
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from store import EventStore, migrate
from store.database import embedded_postgres, i3lani_home, with_database
from tests.pg import fresh_database

# The test pyramid: each test belongs to one tier, the most expensive thing it uses, and
# `make test-<tier>` runs a tier (`make check` runs the two cheapest).
#   pure      no I/O beyond the test process: no database, no process, no browser
#   memory    the in-memory event log (store.memory), no server
#   postgres  the PostgreSQL test server (any fixture built on `server_dsn`)
#   process   starts worker processes or other programs (tests/e2e, tests/faults, or marked)
#   browser   drives headless Chromium
TIERS: tuple[str, ...] = ("browser", "process", "postgres", "memory", "pure")
_PROCESS_DIRS: tuple[str, ...] = ("e2e", "faults")


def tier_of(item: pytest.Item) -> str:
    """The tier ``item`` is in: the first of :data:`TIERS` it carries a mark of, else pure."""
    # By keyword, not by marker: anyio's plugin replaces some items after collection (adding
    # their [asyncio] parameter) and copies their keywords, not the markers added here.
    for tier in TIERS[:-1]:
        if tier in item.keywords:
            return tier
    return "pure"


# The fault scenarios (marked `faults`) and the other `heavy` tests (the deploy rehearsal) run
# for 20 to 60 s each and start worker processes that need CPU. Run all at once they starve
# each other, and scheduled as they come the longest start last and make the tail of the run.
# So under pytest-xdist (`make pytest`) they go in two lanes: pytest-xdist's `load` scheduling
# first sends each worker a chunk of consecutive tests (a quarter of its share), and each
# lane's scenarios open one worker's chunk, where they run one after another while the other
# workers take everything else. Only the order changes: were xdist to chunk otherwise, every
# test would still run, just in a slower schedule.
FAULT_LANES: int = 2


def _in_a_lane(item: pytest.Item) -> bool:
    return "faults" in item.keywords or "heavy" in item.keywords


def _fault_lanes_first(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    scenarios = [item for item in items if _in_a_lane(item)]
    rest = [item for item in items if not _in_a_lane(item)]
    lanes = min(FAULT_LANES, workers - 1)
    if not scenarios or lanes < 1:
        return items
    chunk = max(len(items) // workers // 4, 2)
    ordered: list[pytest.Item] = []
    for lane in range(lanes):
        share = scenarios[lane::lanes]
        ordered += share
        fill = max(chunk - len(share), 0)
        ordered += rest[:fill]
        del rest[:fill]
    return ordered + rest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        items[:] = _fault_lanes_first(items, workers)
    for item in items:
        # Every coroutine test runs on anyio's pytest plugin (asyncio backend).
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.add_marker(pytest.mark.anyio)
        # A test that needs the server (directly or through any fixture built on it) is a
        # PostgreSQL test; one in tests/e2e or tests/faults starts processes.
        if "server_dsn" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
        if item.path.parent.name in _PROCESS_DIRS and item.path.parent.parent.name == "tests":
            item.add_marker(pytest.mark.process)
        if tier_of(item) == "pure":
            item.add_marker(pytest.mark.pure)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Keep the tiers honest: a pure or in-memory test that starts a program fails, naming
    the mark it needs (every way of starting one, anyio's and asyncio's included, ends in
    ``subprocess.Popen``). Only while the test itself runs: session fixtures shared with other
    tiers (the embedded server) may start or stop programs while a pure test is set up."""
    tier = tier_of(item)
    if tier not in ("pure", "memory"):
        return (yield)
    name = item.nodeid

    def refuse(self: object, args: object, *rest: object, **kwargs: object) -> None:
        pytest.fail(
            f"{name} is a {tier} test but starts {args!r}: mark it pytest.mark.process",
            pytrace=False,
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", refuse)
        return (yield)


@pytest.fixture(scope="session")
def anyio_backend() -> tuple[str, dict[str, object]]:
    # asyncpg needs asyncio; debug mode reports never-awaited coroutines and slow callbacks.
    return "asyncio", {"debug": True}


@pytest.fixture(scope="session")
async def server_dsn(anyio_backend: object) -> AsyncIterator[str]:
    configured = os.environ.get("DATABASE_URL", "").strip()
    if configured:
        # A local test server over TCP: no SSL negotiation. asyncpg's default (prefer) leaves
        # an unretrieved future behind when a connect is cancelled during the SSL exchange,
        # which the strict harness reports as an error of whichever test was running.
        if "sslmode=" not in configured and "@127.0.0.1" in configured:
            configured += ("&" if "?" in configured else "?") + "sslmode=disable"
        yield configured
        return
    # One server per pytest-xdist worker: gap-free reads wait for the oldest transaction of
    # the whole server, so tests sharing one would hold each other's readers back.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    pgdata = i3lani_home() / ("test-pgdata" + (f"-{worker}" if worker else ""))
    async with embedded_postgres(pgdata) as dsn:
        await _throwaway_durability(dsn)
        yield dsn


async def _throwaway_durability(server_dsn: str) -> None:
    """The embedded test server's data is thrown away, so it need not survive an operating
    system crash and does not wait for the disk (PostgreSQL's "Non-Durable Settings"). A
    crash of the server alone (the fault suite kills it) still loses nothing committed. This
    makes each test's CREATE DATABASE about 6 times faster (0.06 s instead of 0.35 s). A
    configured server (DATABASE_URL) is never changed."""
    admin = await _admin(server_dsn)
    try:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            await admin.execute(f"ALTER SYSTEM SET {setting} = off")
        await admin.execute("SELECT pg_reload_conf()")
    finally:
        await admin.close()


async def _admin(server_dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(with_database(server_dsn, "postgres"))


@pytest.fixture(scope="session")
async def template_database(server_dsn: str) -> AsyncIterator[str]:
    """A database with every migration applied, cloned for each test."""
    name = f"i3lani_tpl_{os.getpid()}"
    admin = await _admin(server_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name}")
        await admin.execute(f"CREATE DATABASE {name}")
        await migrate(with_database(server_dsn, name))
        yield name
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


@pytest.fixture
async def dsn(server_dsn: str, template_database: str) -> AsyncIterator[str]:
    """The DSN of this test's own, freshly migrated database."""
    async with fresh_database(server_dsn, template=template_database) as test_dsn:
        yield test_dsn


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[EventStore]:
    async with EventStore.open(dsn, node="test-node") as opened:
        yield opened


@pytest.fixture
async def raw(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection to the test database, outside the store."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def clean_env() -> dict[str, str]:
    """The environment without DATABASE_URL, for subprocess tests that set their own."""
    return {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
