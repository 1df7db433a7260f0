"""LISTEN-or-poll (store/_wakeup.py): one LISTEN connection per process, shared by every
follower, driven with a fake connection: no PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from events import environment
from events.errors import StoreUnavailable
from store._wakeup import (
    RETRY_LISTEN_AFTER,
    ListenConnection,
    Listener,
    ListenHub,
    ListenStatistics,
    Wakeup,
)


class FakeConnection:
    def __init__(self) -> None:
        self.closed = False
        self.channels: dict[str, Callable[..., Any]] = {}
        self.fail_listen = False

    def is_closed(self) -> bool:
        return self.closed

    async def add_listener(self, channel: str, callback: Callable[..., Any]) -> None:
        if self.fail_listen:
            raise StoreUnavailable(f"LISTEN {channel}: connection reset")
        self.channels[channel] = callback

    async def remove_listener(self, channel: str, callback: Callable[..., Any]) -> None:
        self.channels.pop(channel, None)

    async def close(self) -> None:
        self.closed = True

    def terminate(self) -> None:
        self.closed = True


class FakeServer:
    """Opens fake LISTEN connections, or refuses while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.opened: list[FakeConnection] = []
        self.lose: Callable[..., Any] | None = None

    async def open(self, on_lost: Callable[..., Any]) -> ListenConnection:
        if self.down:
            raise StoreUnavailable("cannot connect to postgresql://db to LISTEN: refused")
        conn = FakeConnection()
        self.opened.append(conn)
        self.lose = on_lost
        return conn

    def notify(self, channel: str, payload: str) -> None:
        conn = self.opened[-1]
        conn.channels[channel](conn, 42, channel, payload)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def hub_on(server: FakeServer, clock: Clock) -> ListenHub:
    return ListenHub(server.open, clock=clock)


def follower(
    hub: ListenHub, heard: list[str], lost: list[bool], channel: str = "i3lani_events"
) -> Listener:
    return hub.listener(
        channel,
        on_notify=heard.append,
        on_lost=lambda: lost.append(True),
        who="subscription s",
        poll_interval=1.0,
    )


async def test_it_listens_and_forwards_notifications() -> None:
    server, clock, heard, lost = FakeServer(), Clock(), [], []
    one = follower(hub_on(server, clock), heard, lost)
    assert await one.listen()
    assert one.listening
    assert not await one.listen()  # already listening: nothing opened
    assert len(server.opened) == 1
    server.notify("i3lani_events", "payment,user")
    assert heard == ["payment,user"]
    await one.close()
    assert server.opened[0].closed  # nobody follows any more: the connection goes back
    assert not one.listening


async def test_every_follower_of_a_process_shares_one_connection() -> None:
    server, clock = FakeServer(), Clock()
    hub = hub_on(server, clock)
    heard: dict[str, list[str]] = {"a": [], "b": [], "tasks": []}
    lost: list[bool] = []
    a = follower(hub, heard["a"], lost)
    b = follower(hub, heard["b"], lost)
    tasks = follower(hub, heard["tasks"], lost, channel="i3lani_tasks")
    for one in (a, b, tasks):
        assert await one.listen()
    assert len(server.opened) == 1
    conn = server.opened[0]
    assert set(conn.channels) == {"i3lani_events", "i3lani_tasks"}
    assert hub.statistics().followers == {"i3lani_events": 2, "i3lani_tasks": 1}
    server.notify("i3lani_events", "payment")
    server.notify("i3lani_tasks", "0.000")
    assert heard == {"a": ["payment"], "b": ["payment"], "tasks": ["0.000"]}
    # The last follower of a channel leaving UNLISTENs it; the last of all closes it.
    await tasks.close()
    assert set(conn.channels) == {"i3lani_events"}
    await a.close()
    assert not conn.closed
    await b.close()
    assert conn.closed
    assert hub.statistics() == ListenStatistics(connected=False, followers={}, opened=1)


async def test_a_refusal_means_polling_for_a_second(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="store._wakeup")
    server, clock, heard, lost = FakeServer(), Clock(), [], []
    one = follower(hub_on(server, clock), heard, lost)
    server.down = True
    assert not await one.listen()
    assert "subscription s cannot LISTEN" in caplog.text
    assert "polling every 1.0s" in caplog.text
    server.down = False
    clock.now += RETRY_LISTEN_AFTER / 2
    assert not await one.listen()  # not tried again so soon
    assert server.opened == []
    clock.now += RETRY_LISTEN_AFTER
    assert await one.listen()
    assert one.listening


async def test_a_failed_listen_drops_the_connection_and_polls() -> None:
    server, clock, heard, lost = FakeServer(), Clock(), [], []
    hub = hub_on(server, clock)
    events = follower(hub, heard, lost)
    assert await events.listen()
    server.opened[0].fail_listen = True
    tasks = follower(hub, heard, lost, channel="i3lani_tasks")
    assert not await tasks.listen()
    assert server.opened[0].closed  # terminated: its protocol state is in doubt
    assert server.lose is not None
    server.lose(server.opened[0])  # as asyncpg's termination listener would
    assert lost == [True]
    clock.now += RETRY_LISTEN_AFTER
    assert await tasks.listen()
    assert await events.listen()  # told it was lost: listens again, on the new connection
    assert len(server.opened) == 2
    assert set(server.opened[1].channels) == {"i3lani_events", "i3lani_tasks"}


async def test_a_lost_connection_tells_every_follower_and_is_opened_again() -> None:
    server, clock = FakeServer(), Clock()
    hub = hub_on(server, clock)
    heard: list[str] = []
    lost: list[bool] = []
    one, two = follower(hub, heard, lost), follower(hub, heard, lost, channel="i3lani_tasks")
    await one.listen()
    await two.listen()
    assert server.lose is not None
    server.lose(server.opened[0])
    assert lost == [True, True]
    assert not one.listening
    assert not two.listening
    assert await one.listen()  # the first to ask opens it again
    assert await two.listen()  # the second joins it
    assert len(server.opened) == 2


async def test_a_closed_hub_opens_nothing_more() -> None:
    server, clock, heard, lost = FakeServer(), Clock(), [], []
    hub = hub_on(server, clock)
    one = follower(hub, heard, lost)
    await one.listen()
    await hub.close()
    assert server.opened[0].closed
    assert not await one.listen()
    assert len(server.opened) == 1


def test_followers_poll_at_their_interval_give_or_take_a_quarter() -> None:
    one = follower(hub_on(FakeServer(), Clock()), [], [])
    polls = [one.poll_interval for _ in range(200)]
    assert all(0.75 <= poll <= 1.25 for poll in polls)
    assert len(set(polls)) > 100  # they drift apart


async def test_a_wakeup_during_the_look_is_not_lost() -> None:
    wakeup = Wakeup()
    wakeup.set()  # before the first arm: nobody waits yet, nothing to keep
    wakeup.arm()
    wakeup.set()  # came while looking for work
    with anyio.fail_after(1):
        assert await wakeup.wait(10)


async def test_a_wait_without_a_wakeup_times_out() -> None:
    wakeup = Wakeup()
    wakeup.arm()
    assert not await wakeup.wait(0.01)


async def test_a_wakeup_ends_a_wait() -> None:
    wakeup = Wakeup()
    wakeup.arm()
    woken: list[bool] = []

    async def waiter() -> None:
        woken.append(await wakeup.wait(10))

    with anyio.fail_after(1):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            wakeup.set()
    assert woken == [True]


async def test_a_wait_that_ran_out_leaves_the_next_wait_waiting_and_keeps_a_late_wakeup() -> None:
    """The time limit sets the awaited event on a timer (no cancel scope): a wait that ran out
    must not leave it set for the next wait, and a wake-up that comes after it is kept."""
    wakeup = Wakeup()
    wakeup.arm()
    assert not await wakeup.wait(0.01)
    assert not wakeup.is_set()
    assert not await wakeup.wait(0.01)  # not ended at once by the first wait's timer
    wakeup.set()  # while nobody waits: the next wait ends at once
    with anyio.fail_after(1):
        assert await wakeup.wait(10)
    wakeup.arm()
    assert not wakeup.is_set()


async def test_a_cancelled_wait_leaves_no_timer_behind() -> None:
    wakeup = Wakeup()
    wakeup.arm()
    with anyio.move_on_after(0.01):
        await wakeup.wait(0.05)
    await anyio.sleep(0.08)  # past the cancelled wait's limit: its timer must not fire
    assert not wakeup.is_set()
    assert not await wakeup.wait(0.01)


async def test_set_after_sets_the_event_once_the_time_is_up_or_returns_when_it_is_set() -> None:
    late = anyio.Event()
    began = anyio.current_time()
    await environment.set_after(late, 0.02)
    assert late.is_set()
    assert anyio.current_time() - began >= 0.02
    early = anyio.Event()
    early.set()
    with anyio.fail_after(1):
        await environment.set_after(early, 10)
