"""The console script stops quietly when a signal arrives before the command runs."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from tests.waiting import eventually

pytestmark = pytest.mark.process

I3LANI = str(Path(sys.executable).parent / "i3lani")


async def signalled_while_connecting(env: dict[str, str], signum: int) -> tuple[int, str]:
    """Run ``i3lani migrate`` against a "database" that accepts the connection and never
    answers, so the command is past its imports and inside its first connect; send ``signum``
    then; return the exit code and stderr."""
    accepted: list[SocketStream] = []

    async def hold(stream: SocketStream) -> None:
        async with stream:
            accepted.append(stream)
            await anyio.sleep_forever()

    async def connected() -> bool:
        return bool(accepted)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)
    env = {**env, "DATABASE_URL": f"postgresql://nobody@127.0.0.1:{port}/i3lani"}
    stderr = bytearray()
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hold)
        async with await anyio.open_process([I3LANI, "migrate"], env=env) as process:
            await eventually(connected, within=30)
            process.send_signal(signum)
            assert process.stderr is not None
            with anyio.fail_after(20):
                async for chunk in process.stderr:
                    stderr += chunk
                returncode = await process.wait()
        tg.cancel_scope.cancel()
    return returncode, stderr.decode()


async def test_sigterm_while_starting_exits_0_without_a_traceback(
    clean_env: dict[str, str],
) -> None:
    returncode, stderr = await signalled_while_connecting(clean_env, signal.SIGTERM)
    assert returncode == 0, stderr
    assert stderr.strip() == "i3lani: stopped by SIGTERM before it was running"


async def test_ctrl_c_while_starting_exits_130_without_a_traceback(
    clean_env: dict[str, str],
) -> None:
    returncode, stderr = await signalled_while_connecting(clean_env, signal.SIGINT)
    assert returncode == 130, stderr
    assert "Traceback" not in stderr
