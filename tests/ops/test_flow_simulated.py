"""Three nodes, one broadcast, Telegram's limits: flow control on the simulated loop.

Three nodes share nothing but the in-memory log (its task queue and its rate limits), as three
processes share PostgreSQL: each has its own :class:`store.flow.RateLimiter`, its own Bot
(aiogram, through an in-process session to the Bot API stand-in) and its own task processor
running ten notices at a time. The stand-in holds Telegram's limits itself and answers what goes
over with 429. On virtual time the run is exact and repeatable: a seed gives the same schedule,
and the stand-in's own log says whether any one second held more than 30 requests.

The same three nodes as real processes on PostgreSQL are ``tests/e2e/test_broadcast.py``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import anyio
import pytest

from actors.telegram import TelegramClient, TelegramRates, make_bot
from bench.broadcast import (
    NOTICE,
    RATE,
    TOKEN,
    Notice,
    deliver_with,
    most_in_any_window,
    notice_types,
    tightest,
)
from ops.simulate.kernel import run
from ops.simulate.transports import InProcessServer, InProcessSession
from ops.standins import BotApiCall, BotApiStandIn
from store.flow import Limit, RateLimiter
from store.flow.memory import MemoryFlowTable
from store.memory import MemoryLog
from store.tasks import NewTask, TaskProcessor, TaskQueue

pytestmark = pytest.mark.memory

NOTICES: Final = 500
RATES: Final = TelegramRates(overall=RATE, chat=Limit(1, 1.0), group=Limit(20, 60.0))


async def _broadcast(*, shared: bool) -> tuple[list[BotApiCall], list[tuple[int, str]], float]:
    """Send :data:`NOTICES` notices from three nodes; the stand-in's log of sendMessage calls,
    the messages delivered and the virtual seconds it took."""
    log = MemoryLog(node="simulation")
    bot_api = BotApiStandIn(token=TOKEN)
    bot_api.enforce_limits()
    async with InProcessServer(bot_api.application(), host="bot-api.invalid") as server:
        queue = TaskQueue(log, notice_types())
        async with anyio.create_task_group() as tg:
            processors: list[TaskProcessor] = []
            for n in range(3):
                limiter = RateLimiter(MemoryFlowTable.of(log) if shared else None)
                bot = make_bot(
                    TOKEN, session=InProcessSession(server), limiter=limiter, rates=RATES
                )
                telegram = TelegramClient(bot)
                processor = TaskProcessor(
                    TaskQueue(log, notice_types(), node=f"node-{n}"),
                    node=f"node-{n}",
                    concurrency=10,
                    batch_size=10,
                    poll_interval=0.2,
                )
                processor.register_handler(NOTICE, deliver_with(telegram))
                await tg.start(processor.run)
                processors.append(processor)
            started = anyio.current_time()
            await queue.add_tasks(
                [
                    NewTask(NOTICE, Notice(chat_id=1000 + n, text=f"notice {n}"))
                    for n in range(NOTICES)
                ]
            )
            while len(bot_api.sent) < NOTICES:  # noqa: ASYNC110 (the stand-in's log, polled)
                await anyio.sleep(0.05)
            took = anyio.current_time() - started
            for processor in processors:
                processor.stop()
    calls = [call for call in bot_api.calls if call.method == "sendMessage"]
    return calls, [(int(m.chat_id), m.text) for m in bot_api.sent], took


def _all_sent(bot_api: BotApiStandIn) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(bot_api.sent) >= NOTICES

    return check


def _windows(calls: Sequence[BotApiCall]) -> int:
    return most_in_any_window([call.at for call in calls])


def test_three_nodes_keep_to_the_limit_and_send_every_notice_once() -> None:
    result = run(lambda: _broadcast(shared=True), seed=15, max_time=3600)
    calls, sent, took = result.value
    assert _windows(calls) <= RATE.count
    assert sum(1 for call in calls if call.status == 429) == 0
    counted = Counter(sent)
    assert set(counted) == {(1000 + n, f"notice {n}") for n in range(NOTICES)}
    assert max(counted.values()) == 1
    # As fast as the limit allows: the ideal is 500 / 30 s, the grants spread 2 % wider.
    assert NOTICES / RATE.rate * 0.95 <= took <= NOTICES / RATE.rate * 1.05
    spans = tightest([call.at for call in calls], RATE.count + 1)
    assert spans is not None
    assert spans > 1.0
    # The same seed, the same run.
    assert run(lambda: _broadcast(shared=True), seed=15, max_time=3600).digest == result.digest


def test_without_the_shared_limits_three_nodes_meet_429s() -> None:
    """The reference: each node keeps to 30/s on its own, and together they go over."""
    calls, sent, _ = run(lambda: _broadcast(shared=False), seed=15, max_time=3600).value
    assert sum(1 for call in calls if call.status == 429) > 0
    assert _windows(calls) > RATE.count
    assert len(set(sent)) == NOTICES  # the queue tries them again: all delivered in the end
