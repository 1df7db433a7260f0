"""Group commit and the throttled NOTIFY (store/_batching.py), driven with fakes: no PostgreSQL."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
import pytest

from events.errors import StoreError, StoreUnavailable
from store._batching import (
    NOTIFY_INTERVAL,
    NOTIFY_MAX_INTERVAL,
    GroupCommit,
    ThrottledNotify,
    next_pause,
)
from tests.waiting import eventually


@dataclass(slots=True)
class Item:
    n: int
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None
    batch: int | None = None


def take_three(queue: deque[Item]) -> list[Item]:
    return [queue.popleft() for _ in range(min(3, len(queue)))]


class Writer:
    """A writer whose statements take ``latency`` seconds; records each batch it wrote."""

    def __init__(self, latency: float = 0.02) -> None:
        self.latency = latency
        self.batches: list[list[int]] = []
        self.commit: GroupCommit[Item] = GroupCommit(
            take=take_three, flush=self.flush, closed="closed before it ran"
        )

    async def write(self, item: Item) -> None:
        if self.commit.in_flight > 0:
            await self.commit.submit(item)
            return
        with self.commit.direct():
            await anyio.sleep(self.latency)
            self.batches.append([item.n])

    async def flush(self, batch: list[Item]) -> None:
        await anyio.sleep(self.latency)
        self.batches.append([item.n for item in batch])
        for item in batch:
            item.batch = len(self.batches)
            item.done.set()


async def test_a_lone_request_goes_straight_out() -> None:
    writer = Writer()
    async with anyio.create_task_group() as tg:
        assert writer.commit.start(tg)
        await writer.write(Item(1))
        assert writer.batches == [[1]]
        assert writer.commit.in_flight == 0
        tg.cancel_scope.cancel()


async def test_requests_behind_a_statement_on_the_wire_go_out_together() -> None:
    writer = Writer()
    async with anyio.create_task_group() as tg:
        writer.commit.start(tg)
        tg.start_soon(writer.write, Item(0))
        await anyio.sleep(0.005)  # item 0 is on the wire
        async with anyio.create_task_group() as writers:
            for n in range(1, 8):
                writers.start_soon(writer.write, Item(n))
        tg.cancel_scope.cancel()
    # The first went alone; the seven that queued behind it went in batches of the take rule.
    assert writer.batches[0] == [0]
    assert writer.batches[1:] == [[1, 2, 3], [4, 5, 6], [7]]


async def test_requests_still_queued_when_the_flusher_stops_fail() -> None:
    writer = Writer()
    queued = Item(1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.commit.submit, queued)  # no flusher runs
        await anyio.wait_all_tasks_blocked()
        writer.commit.fail_queued()
    assert queued.done.is_set()
    assert isinstance(queued.error, StoreError)
    assert str(queued.error) == "closed before it ran"


async def test_start_needs_a_task_group_and_starts_once() -> None:
    writer = Writer()
    assert not writer.commit.start(None)
    async with anyio.create_task_group() as tg:
        assert writer.commit.start(tg)
        assert writer.commit.start(tg)  # already running: not started twice
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert not writer.commit.running


class Sender:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[float] = []
        self.fail = fail

    async def send(self) -> None:
        self.sent.append(anyio.current_time())
        if self.fail:
            raise StoreUnavailable("PostgreSQL is unreachable")


async def wait_for(condition: Callable[[], bool]) -> None:
    async def check() -> bool:
        return condition()

    await eventually(check, within=5, interval=0.005)


async def test_the_first_notification_goes_at_once_then_they_are_throttled() -> None:
    sender = Sender()
    notify = ThrottledNotify(sender.send, what="listeners", interval=0.3)
    async with anyio.create_task_group() as tg:
        notify.start(tg)
        notify.mark()
        await wait_for(lambda: len(sender.sent) == 1)
        for _ in range(20):  # a burst of commits, well within one interval
            notify.mark()
        await anyio.lowlevel.checkpoint()
        assert len(sender.sent) == 1
        # The burst is covered by one more notification, once the interval has passed.
        await wait_for(lambda: len(sender.sent) == 2)
        await anyio.sleep(0.4)
        tg.cancel_scope.cancel()
    assert len(sender.sent) == 2
    assert sender.sent[1] - sender.sent[0] >= 0.3


def test_the_pause_doubles_while_commits_keep_coming_and_resets_after_a_quiet_one() -> None:
    pauses = [NOTIFY_INTERVAL]
    for _ in range(4):
        pauses.append(next_pause(pauses[-1], True, NOTIFY_INTERVAL, NOTIFY_MAX_INTERVAL))
    assert pauses == [0.003, 0.006, NOTIFY_MAX_INTERVAL, NOTIFY_MAX_INTERVAL, NOTIFY_MAX_INTERVAL]
    assert next_pause(NOTIFY_MAX_INTERVAL, False, NOTIFY_INTERVAL, NOTIFY_MAX_INTERVAL) == 0.003


async def test_sustained_commits_are_announced_less_often_a_quiet_one_at_once() -> None:
    sender = Sender()
    notify = ThrottledNotify(sender.send, what="listeners", interval=0.05, max_interval=0.2)
    assert (notify.interval, notify.max_interval) == (0.05, 0.2)
    async with anyio.create_task_group() as tg:
        notify.start(tg)
        began = anyio.current_time()
        while anyio.current_time() - began < 1.0:  # a commit every 10 ms for a second
            notify.mark()
            await anyio.sleep(0.01)
        await anyio.sleep(0.5)  # quiet: the last commits' notification goes out meanwhile
        busy = list(sender.sent)
        quiet_at = anyio.current_time()
        notify.mark()  # the first commit after a quiet spell: announced at once
        await wait_for(lambda: len(sender.sent) == len(busy) + 1)
        tg.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(busy)]
    # 0.05, 0.1, then 0.2 each: at most 1 + 1 + 1 + 5 notifications for the second and the
    # last commits' (a slow machine sends fewer), where a fixed 0.05 s pause sends about 20.
    assert 3 <= len(busy) <= 8, busy
    assert gaps[0] >= 0.05
    assert gaps[1] >= 0.1
    assert all(gap >= 0.2 for gap in gaps[2:]), gaps
    assert sender.sent[-1] >= quiet_at


async def test_commits_further_apart_than_the_shortest_pause_are_announced_one_by_one() -> None:
    # After a busy spell has widened the pause, commits 0.1 s apart (the shortest pause is
    # 0.02 s) are each announced, not batched by the wide pause (which would keep finding a
    # commit in each of its 0.2 s and stay wide).
    sender = Sender()
    notify = ThrottledNotify(sender.send, what="listeners", interval=0.02, max_interval=0.2)
    async with anyio.create_task_group() as tg:
        notify.start(tg)
        began = anyio.current_time()
        while anyio.current_time() - began < 0.5:  # busy: a commit every 5 ms
            notify.mark()
            await anyio.sleep(0.005)
        busy = len(sender.sent)
        for _ in range(6):
            notify.mark()
            await anyio.sleep(0.1)
        await anyio.sleep(0.3)
        tg.cancel_scope.cancel()
    # The first may still go out with the busy spell's last notification; the others alone.
    assert len(sender.sent) - busy >= 5, sender.sent


def test_the_longest_pause_is_never_shorter_than_the_shortest() -> None:
    with pytest.raises(ValueError, match="max_interval"):
        ThrottledNotify(Sender().send, what="listeners", interval=0.5, max_interval=0.1)
    assert ThrottledNotify(Sender().send, what="listeners", interval=0.3).max_interval == 0.3


async def test_nothing_is_sent_without_a_commit() -> None:
    sender = Sender()
    notify = ThrottledNotify(sender.send, what="listeners")
    await notify.flush()
    async with anyio.create_task_group() as tg:
        notify.start(tg)
        await anyio.sleep(NOTIFY_INTERVAL * 3)
        tg.cancel_scope.cancel()
    assert sender.sent == []


async def test_flush_sends_what_is_due_now() -> None:
    sender = Sender()
    notify = ThrottledNotify(sender.send, what="listeners")
    notify.mark()
    await notify.flush()
    await notify.flush()  # nothing new is due
    assert len(sender.sent) == 1


async def test_a_failed_notification_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notify = ThrottledNotify(Sender(fail=True).send, what="listeners")
    notify.mark()
    await notify.flush()
    assert "could not notify listeners: PostgreSQL is unreachable" in caplog.text
