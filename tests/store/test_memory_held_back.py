"""A reader of the in-memory log held back by an older open transaction is woken when that
transaction ends, not at its next look (which backs off up to its poll interval); and a
transaction's end wakes only the readers held back. On virtual time (:mod:`ops.simulate`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import anyio
import pytest

from events import RewardEarned
from ops.simulate import run
from store.memory import MemoryLog

pytestmark = pytest.mark.memory


def reward(user_id: int) -> RewardEarned:
    return RewardEarned(
        reward_id=uuid.UUID(int=user_id),
        user_id=user_id,
        amount_nanotons=5,
        reason="referral",
        source=f"user-{user_id + 1}",
        earned_at=datetime(2026, 12, 7, tzinfo=UTC),
    )


def test_a_held_back_reader_is_woken_when_the_older_transaction_ends() -> None:
    async def main() -> tuple[float, float, list[str]]:
        log = MemoryLog(safety_poll=120.0)
        seen: list[tuple[float, str]] = []
        ended, both = anyio.Event(), anyio.Event()
        async with anyio.create_task_group() as tg:

            async def follow() -> None:
                async with log.subscribe(poll_interval=1.0) as sub:
                    async for recorded in sub:
                        seen.append((anyio.current_time(), recorded.stream))
                        if len(seen) == 2:
                            both.set()

            tg.start_soon(follow)
            await anyio.wait_all_tasks_blocked()

            async def slow() -> None:
                async with log.transaction() as tx:
                    await tx.append("payment-1", [reward(1)])
                    await ended.wait()

            tg.start_soon(slow)
            await anyio.wait_all_tasks_blocked()
            await log.append("user-2", [reward(2)])  # committed, behind the open one
            await anyio.sleep(100.0)
            assert seen == []
            ended.set()
            committed_at = anyio.current_time()
            with anyio.fail_after(1.0):
                await both.wait()
            tg.cancel_scope.cancel()
        return committed_at, seen[0][0], [stream for _, stream in seen]

    committed_at, delivered_at, streams = run(main, seed=1).value
    assert streams == ["payment-1", "user-2"]
    # Woken by the end of the transaction: well within a second, not the minute or two its
    # backed-off re-read would have taken.
    assert delivered_at - committed_at < 0.1
