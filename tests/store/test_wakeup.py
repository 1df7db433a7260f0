"""LISTEN-or-poll (store/_wakeup.py), driven with a fake connection: no PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from events.errors import StoreUnavailable
from store._wakeup import RETRY_LISTEN_AFTER, ListenConnection, Listener, Wakeup


class FakeConnection:
    def __init__(self) -> None:
        self.closed = False

    def is_closed(self) -> bool:
        return self.closed

    async def close(self) -> None:
        self.closed = True

    def terminate(self) -> None:
        self.closed = True


class FakeServer:
    """Opens fake LISTEN connections, or refuses while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.opened: list[FakeConnection] = []
        self.notify: Callable[..., Any] | None = None
        self.lose: Callable[..., Any] | None = None

    async def open(
        self, on_notify: Callable[..., Any], on_lost: Callable[..., Any]
    ) -> ListenConnection:
        if self.down:
            raise StoreUnavailable("cannot connect to postgresql://db to LISTEN: refused")
        conn = FakeConnection()
        self.opened.append(conn)
        self.notify, self.lose = on_notify, on_lost
        return conn


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def listener(server: FakeServer, clock: Clock, heard: list[str], lost: list[bool]) -> Listener:
    return Listener(
        server.open,
        on_notify=heard.append,
        on_lost=lambda: lost.append(True),
        who="subscription s",
        poll_interval=1.0,
        clock=clock,
    )


async def test_it_listens_and_forwards_notifications() -> None:
    server, clock, heard, lost = FakeServer(), Clock(), [], []
    follower = listener(server, clock, heard, lost)
    assert await follower.listen()
    assert follower.listening
    assert not await follower.listen()  # already listening: nothing opened
    assert len(server.opened) == 1
    assert server.notify is not None
    server.notify(server.opened[0], 42, "i3lani_events", "payment,user")
    assert heard == ["payment,user"]
    await follower.close()
    assert server.opened[0].closed
    assert not follower.listening


async def test_a_refusal_means_polling_for_a_second(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="store._wakeup")
    server, clock, heard, lost = FakeServer(), Clock(), [], []
    follower = listener(server, clock, heard, lost)
    server.down = True
    assert not await follower.listen()
    assert "subscription s cannot LISTEN" in caplog.text
    assert "polling every 1.0s" in caplog.text
    server.down = False
    clock.now += RETRY_LISTEN_AFTER / 2
    assert not await follower.listen()  # not tried again so soon
    assert server.opened == []
    clock.now += RETRY_LISTEN_AFTER
    assert await follower.listen()
    assert follower.listening


async def test_a_lost_connection_is_dropped_and_opened_again() -> None:
    server, clock, heard, lost = FakeServer(), Clock(), [], []
    follower = listener(server, clock, heard, lost)
    await follower.listen()
    assert server.lose is not None
    server.lose(server.opened[0])
    assert lost == [True]
    assert not follower.listening
    assert await follower.listen()
    assert len(server.opened) == 2


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
