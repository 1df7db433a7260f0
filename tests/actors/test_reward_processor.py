"""RewardProcessor on a real database: every reward credited exactly once, even when the
processor is cancelled at random instants; refused rewards retried, then RewardFailed."""

from __future__ import annotations

import contextlib
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import anyio
import pytest

from actors.config import Settings
from actors.reward_processor import RewardProcessor, RewardState
from actors.runtime import ActorRef, ActorRunner
from actors.runtime.clock import SystemClock
from actors.tasks import task_types
from events import RewardCredited, RewardEarned, RewardFailed
from events.streams import user_stream
from store import EventStore, RecordedEvent
from store.tasks import TaskQueue
from tests.waiting import eventually

TON = 1_000_000_000


def settings(max_balance_nanotons: int = 1000 * TON) -> Settings:
    return Settings(
        reward_interval=0.2,
        task_retry_delay=0.05,
        task_lock_timeout=1.0,
        max_balance_nanotons=max_balance_nanotons,
    )


async def earn(store: EventStore, user_id: int, amount: int = TON // 10) -> uuid.UUID:
    reward_id = uuid.uuid4()
    await store.append(
        user_stream(user_id),
        [
            RewardEarned(
                reward_id=reward_id,
                user_id=user_id,
                amount_nanotons=amount,
                reason="referral",
                source=f"user:{user_id + 1}",
                earned_at=datetime.now(UTC),
            )
        ],
    )
    return reward_id


@contextlib.asynccontextmanager
async def processor(
    store: EventStore, config: Settings
) -> AsyncIterator[tuple[ActorRef, ActorRunner[RewardState]]]:
    async with anyio.create_task_group() as tg:
        runner = ActorRunner(RewardProcessor(config), store, SystemClock(), node="node-a")
        ref: ActorRef = await tg.start(runner.run)
        yield ref, runner
        tg.cancel_scope.cancel()


async def user_events(store: EventStore, users: range) -> list[RecordedEvent]:
    found: list[RecordedEvent] = []
    for user in users:
        found.extend(await store.read_stream(user_stream(user)))
    return found


async def wait_until_settled(store: EventStore, users: range, rewards: int) -> None:
    """Until every reward of ``users`` is credited or failed."""

    async def settled() -> bool:
        events = await user_events(store, users)
        return sum(isinstance(r.event, RewardCredited | RewardFailed) for r in events) >= rewards

    await eventually(settled, within=30)


async def test_each_reward_is_credited_once_with_a_running_balance(store: EventStore) -> None:
    users = range(1, 6)
    for user in users:
        for _ in range(4):
            await earn(store, user)
    async with processor(store, settings()):
        await wait_until_settled(store, users, 20)
    events = await user_events(store, users)
    credits = [r.event for r in events if isinstance(r.event, RewardCredited)]
    assert len(credits) == 20
    assert len({c.reward_id for c in credits}) == 20
    for user in users:
        mine = [c for c in credits if c.user_id == user]
        assert sorted(c.balance_after_nanotons for c in mine) == [
            TON // 10 * n for n in range(1, 5)
        ]


async def test_cancelled_at_random_instants_credits_every_reward_exactly_once(
    store: EventStore,
) -> None:
    users = range(1, 21)
    expected = {await earn(store, user) for user in users for _ in range(5)}
    rng = random.Random(7)
    for _ in range(8):  # cancel the whole incarnation at a random moment, then start again
        async with processor(store, settings()):
            await anyio.sleep(rng.uniform(0.0, 0.4))
    async with processor(store, settings()):
        await wait_until_settled(store, users, len(expected))
    credited = Counter(
        r.event.reward_id
        for r in await user_events(store, users)
        if isinstance(r.event, RewardCredited)
    )
    assert set(credited) == expected
    assert set(credited.values()) == {1}


async def test_a_refused_reward_is_retried_then_failed_and_dead_lettered(
    store: EventStore,
) -> None:
    config = settings(max_balance_nanotons=TON)
    await earn(store, 1, amount=TON)  # fills the balance to the cap
    async with processor(store, config):
        await wait_until_settled(store, range(1, 2), 1)
    over = await earn(store, 1, amount=1)  # one nanoton too many
    async with processor(store, config):
        await wait_until_settled(store, range(1, 2), 2)
        queue = TaskQueue(store, task_types(config))

        async def dead_lettered() -> bool:
            return bool(await queue.dead_letters())

        await eventually(dead_lettered)
        dead = await queue.dead_letters()
    events = [r.event for r in await store.read_stream("user-1")]
    failed = [e for e in events if isinstance(e, RewardFailed)]
    assert len(failed) == 1
    assert failed[0].reward_id == over
    assert failed[0].attempts == 3
    assert "over the 1 TON cap" in failed[0].error
    assert [e.reward_id for e in events if isinstance(e, RewardCredited)] != [over]
    assert len(dead) == 1
    assert dead[0].attempts == 3
    assert dead[0].last_error is not None
    assert "cap" in dead[0].last_error


@pytest.mark.parametrize("amount", [TON, 3 * TON])
async def test_state_counts_credits_and_failures(store: EventStore, amount: int) -> None:
    await earn(store, 9, amount=amount)
    async with processor(store, settings(max_balance_nanotons=2 * TON)) as (_, runner):
        await wait_until_settled(store, range(9, 10), 1)

        async def folded() -> bool:
            return runner.state.credited + runner.state.failed >= 1

        await eventually(folded)
        assert not runner.state.pending
        if amount <= 2 * TON:
            assert (runner.state.credited, runner.state.balances[9]) == (1, amount)
        else:
            assert runner.state.failed == 1
