"""``i3lani dev``: a local worker in one command, acted on from a second shell."""

from __future__ import annotations

import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import asyncpg
import pytest
from anyio.abc import ByteReceiveStream

from ops.dev import second_shell
from store.database import with_database
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


@pytest.fixture
async def dev_database(server_dsn: str) -> AsyncIterator[str]:
    """A name for dev's database, dropped after the test."""
    name = f"i3lani_dev_t_{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        admin = await asyncpg.connect(with_database(server_dsn, "postgres"))
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


@pytest.mark.process
async def test_dev_runs_a_worker_the_second_shell_acts_on_until_ctrl_c(
    server_dsn: str, dev_database: str, clean_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**clean_env, "DATABASE_URL": server_dsn, "I3LANI_HOME": str(tmp_path)}
    command = [I3LANI, "dev", "--database", dev_database]
    async with await anyio.open_process(command, env=env) as process:
        stdout, stderr = bytearray(), bytearray()

        async def drain(stream: ByteReceiveStream, into: bytearray) -> None:
            async for chunk in stream:
                into.extend(chunk)

        async with anyio.create_task_group() as tg:
            assert process.stdout is not None
            assert process.stderr is not None
            tg.start_soon(drain, process.stdout, stdout)
            tg.start_soon(drain, process.stderr, stderr)

            async def ready() -> bool:
                assert process.returncode is None, stderr.decode()
                return b"Ctrl-C stops it." in stdout

            await eventually(ready, within=60)
            text = stdout.decode()
            assert re.search(r"dashboard +http://127\.0\.0\.1:\d+/dashboard\?token=", text), text
            exported = re.search(r"export DATABASE_URL='([^']+)'", text)
            assert exported is not None, text
            second = {**clean_env, "DATABASE_URL": exported[1]}

            # The second shell, as printed: status shows dev's worker, restart acts on it.
            with anyio.fail_after(60):
                status = await anyio.run_process([I3LANI, "status"], env=second, check=False)
                assert status.returncode == 0, status.stderr.decode()
                rows = {
                    r.split()[0]: r.split()[1] for r in status.stdout.decode().splitlines()[1:7]
                }
                assert rows["PaymentMonitor"] == "running", status.stdout.decode()
                restart = await anyio.run_process(
                    [I3LANI, "restart", "PaymentMonitor"], env=second, check=False
                )
            assert restart.returncode == 0, restart.stderr.decode()
            assert "ActorRestarted" in restart.stdout.decode(), restart.stdout.decode()

            process.send_signal(signal.SIGINT)
            with anyio.fail_after(30):
                code = await process.wait()
    assert code == 0, stderr.decode()
    assert "Traceback" not in stderr.decode(), stderr.decode()
    assert f"`i3lani audit --database {dev_database}` reads it" in stdout.decode()

    # Kept after it ends, and read with --database as the last line says.
    with anyio.fail_after(60):
        audit = await anyio.run_process(
            [I3LANI, "audit", "--database", dev_database], env=env, check=False
        )
    assert audit.returncode == 0, audit.stderr.decode() + audit.stdout.decode()
