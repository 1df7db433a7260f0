"""``i3lani dev``: a local worker in one command, acted on from a second shell."""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

import pytest

from ops.dev import second_shell
from tests.e2e.processes import i3lani, running_workers
from tests.waiting import eventually

I3LANI = str(Path(sys.executable).parent / "i3lani")


def test_the_second_shell_gets_the_whole_dsn_unless_it_holds_a_password() -> None:
    embedded = "postgresql://postgres:@/postgres?host=/home/you/i3lani/.i3lani/pgdata"
    assert second_shell(embedded, "i3lani_dev", venv="/home/you/i3lani/.venv") == [
        "source /home/you/i3lani/.venv/bin/activate",
        "export DATABASE_URL='postgresql://postgres:@/i3lani_dev?host=/home/you/i3lani/.i3lani/pgdata'",
        "i3lani status",
        "i3lani events --follow",
        "i3lani restart PaymentMonitor",
        "i3lani audit",
    ]
    secret = second_shell("postgresql://ann:s3cret@db:5432/app", "i3lani_dev", venv=None)
    assert not any("s3cret" in line for line in secret), secret
    assert secret[0] == "export DATABASE_URL=...   # the same as here"
    assert secret[1:] == [
        "i3lani status --database i3lani_dev",
        "i3lani events --follow --database i3lani_dev",
        "i3lani restart PaymentMonitor --database i3lani_dev",
        "i3lani audit --database i3lani_dev",
    ]


@pytest.mark.process
async def test_dev_runs_a_worker_the_second_shell_acts_on_until_ctrl_c(
    server_dsn: str, scratch_database: str, clean_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**clean_env, "DATABASE_URL": server_dsn, "I3LANI_HOME": str(tmp_path)}
    command = [I3LANI, "dev", "--database", scratch_database]
    async with running_workers(env) as workers:
        dev = await workers.spawn(command, env)

        async def ready() -> bool:
            assert dev.alive, dev.output()
            return b"Ctrl-C stops it." in dev.stdout

        await eventually(ready, within=60)
        text = dev.stdout.decode()
        assert re.search(r"dashboard +http://127\.0\.0\.1:\d+/dashboard\?token=", text), text
        exported = re.search(r"export DATABASE_URL='([^']+)'", text)
        assert exported is not None, text
        second = {**clean_env, "DATABASE_URL": exported[1]}

        # The second shell, as printed: status shows dev's worker, restart acts on it.
        status = await i3lani(second, "status", seconds=60)
        assert status.returncode == 0, status.stderr.decode()
        rows = {r.split()[0]: r.split()[1] for r in status.stdout.decode().splitlines()[1:7]}
        assert rows["PaymentMonitor"] == "running", status.stdout.decode()
        restart = await i3lani(second, "restart", "PaymentMonitor", seconds=60)
        assert restart.returncode == 0, restart.stderr.decode()
        assert "ActorRestarted" in restart.stdout.decode(), restart.stdout.decode()

        dev.process.send_signal(signal.SIGINT)
        code = await dev.exited(30)
    assert code == 0, dev.output()
    assert "Traceback" not in dev.stderr.decode(), dev.output()
    assert f"`i3lani audit --database {scratch_database}` reads it" in dev.stdout.decode()

    # Kept after it ends, and read with --database as the last line says.
    audit = await i3lani(env, "audit", "--database", scratch_database, seconds=60)
    assert audit.returncode == 0, audit.stderr.decode() + audit.stdout.decode()
