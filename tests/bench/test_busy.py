"""Two benchmark runs against one server must not pull each other's databases away: the second
refuses to start, in one line (two runs from one checkout share its embedded server, and both
died with "connection is closed" when each dropped the other's databases WITH (FORCE))."""

from __future__ import annotations

from urllib.parse import urlsplit

import asyncpg
import pytest

from bench.__main__ import BenchBusy, refuse_if_busy
from store.database import with_database


async def test_a_run_refuses_while_another_holds_its_databases(
    server_dsn: str, dsn: str, raw: asyncpg.Connection
) -> None:
    database = urlsplit(dsn).path.lstrip("/")
    admin = with_database(server_dsn, "postgres")
    pid = raw.get_server_pid()
    with pytest.raises(BenchBusy) as refused:
        await refuse_if_busy(admin, database)
    message = str(refused.value)
    assert "\n" not in message
    assert f"another benchmark is using {database} on this server (pid {pid} on {database}" in (
        message
    )
    # A suite's own database (name_suffix) counts too; a name merely sharing a prefix does not.
    with pytest.raises(BenchBusy):
        await refuse_if_busy(admin, database.rsplit("_", 1)[0])
    await refuse_if_busy(admin, database + "x")  # nobody there: goes on
