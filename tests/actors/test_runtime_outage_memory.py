"""A reaction or a message that meets an unreachable PostgreSQL crashes nothing.

Regression (the kill storm, seed 725859225): PaymentMonitor's session was ended by the server
(``idle_in_transaction_session_timeout``, after a stall on a loaded machine) in the middle of
a ``CheckPayments``; the ``StoreUnavailable`` went out of the message handler and crashed the
actor. An outage is not a crash: ticks already took it so (tests/actors/
test_runtime_database_outage.py); now a reaction's commit is tried again with backoff, with
the same event ids (a lost acknowledgement appends nothing twice), an asked message answers
the error, and a reaction's I/O is asked again after the backoff.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import ClassVar

import anyio
import msgspec
import pytest

from actors.runtime import Actor, ActorRef, ActorRunner, Emit, Message
from actors.runtime.clock import ManualClock
from events import Event, streams
from events.errors import StoreUnavailable
from store import RecordedEvent
from store.memory import MemoryLog
from tests.actors.test_runtime import register
from tests.waiting import eventually

pytestmark = pytest.mark.memory


@register
class OrderPlaced(Event, frozen=True, tag="OutageTestOrderPlaced"):
    order: int


@register
class OrderNoted(Event, frozen=True, tag="OutageTestOrderNoted"):
    order: int


@register
class OrderChecked(Event, frozen=True, tag="OutageTestOrderChecked"):
    checks: int


class Note(msgspec.Struct, frozen=True):
    order: int


class Check(msgspec.Struct, frozen=True):
    pass


class Clerk(Actor[int]):
    """Notes every placed order (a reaction with an event of its own, its id left to the
    runtime) and checks after each (a reaction's I/O, as PaymentMonitor's ``CheckPayments``)."""

    name: ClassVar[str] = "Clerk"
    category: ClassVar[str | None] = "order"
    messages: ClassVar[tuple[type[msgspec.Struct], ...]] = (Note, Check)
    io_messages: ClassVar[tuple[type[msgspec.Struct], ...]] = (Check,)

    def __init__(self) -> None:
        self.checks = 0

    def initial_state(self) -> int:
        return 0

    def react(self, state: int, recorded: RecordedEvent) -> Sequence[Message]:
        event = recorded.event
        return [Note(event.order), Check()] if isinstance(event, OrderPlaced) else ()

    async def perform(
        self, state: int, message: Message, runner: ActorRunner[int]
    ) -> Sequence[Message]:
        self.checks += 1
        await runner.store.stream_version("checks-1")  # its I/O: fails in an outage
        return [message]

    def decide(self, state: int, message: Message) -> Sequence[Emit]:
        if isinstance(message, Note):
            return [Emit("notes-1", OrderNoted(order=message.order))]
        if isinstance(message, Check):
            return [Emit("checks-1", OrderChecked(checks=self.checks))]
        return ()


class Outage:
    """Fails the next ``commits`` commits (the server ended the session), the next ``reads``
    version reads, and, when asked,
    loses the acknowledgement of the next one (it committed; the caller is told it failed)."""

    def __init__(self) -> None:
        self.commits = 0
        self.reads = 0
        self.lose_next = False
        self.failed = 0
        self.lost = 0

    def faults(self, operation: str) -> None:
        if operation == "commit" and self.commits:
            self.commits -= 1
            self.failed += 1
            raise StoreUnavailable("PostgreSQL is unreachable or too slow: connection closed")
        if operation == "stream_version" and self.reads:
            self.reads -= 1
            self.failed += 1
            raise StoreUnavailable("PostgreSQL is unreachable or too slow: connection refused")

    def lost_ack(self, operation: str) -> bool:
        if operation == "commit" and self.lose_next:
            self.lose_next = False
            self.lost += 1
            return True
        return False


@asynccontextmanager
async def clerk(log: MemoryLog, clock: ManualClock) -> AsyncIterator[tuple[ActorRef, Clerk]]:
    actor = Clerk()
    runner = ActorRunner(actor, log, clock, node="node-a")
    async with anyio.create_task_group() as tg:
        # A crash would end this task group with the error, failing the test.
        yield await tg.start(runner.run), actor
        tg.cancel_scope.cancel()


async def counted(log: MemoryLog, kind: type[Event]) -> Counter[int]:
    found = [
        r.event.order if isinstance(r.event, OrderNoted) else 0
        async for r in log.read_all()
        if isinstance(r.event, kind)
    ]
    return Counter(found)


async def placed(log: MemoryLog, order: int) -> None:
    await log.append(f"order-{order}", [OrderPlaced(order=order)])


async def test_a_reaction_whose_commit_fails_is_committed_later_not_crashed() -> None:
    outage = Outage()
    log = MemoryLog(faults=outage.faults, lost_ack=outage.lost_ack)
    clock = ManualClock()
    async with clerk(log, clock):
        outage.commits = 3  # the reaction's commit, twice retried
        await placed(log, 1)
        for backoff in (1.0, 2.0, 4.0):
            await clock.wait_for_sleepers(1)
            await clock.advance(backoff)
        await eventually(lambda: _has(log, OrderNoted, {1: 1}))
        await placed(log, 2)  # and the actor goes on
        await eventually(lambda: _has(log, OrderNoted, {1: 1, 2: 1}))
    assert outage.failed == 3


async def test_a_lost_acknowledgement_of_a_reaction_appends_it_once() -> None:
    outage = Outage()
    log = MemoryLog(faults=outage.faults, lost_ack=outage.lost_ack)
    clock = ManualClock()
    async with clerk(log, clock):
        outage.lose_next = True  # the reaction committed; the actor is told it failed
        await placed(log, 1)
        await clock.wait_for_sleepers(1)
        await clock.advance(1.0)
        await placed(log, 2)
        await eventually(lambda: _has(log, OrderNoted, {1: 1, 2: 1}))
        await eventually(lambda: _has(log, OrderChecked, {0: 2}))
    assert outage.lost == 1
    assert await log.load_checkpoint(streams.actor_stream("Clerk")) is not None


async def test_an_asked_message_answers_the_outage_and_the_actor_stays() -> None:
    outage = Outage()
    log = MemoryLog(faults=outage.faults, lost_ack=outage.lost_ack)
    clock = ManualClock()
    async with clerk(log, clock) as (ref, _actor):
        outage.commits = 1
        with pytest.raises(StoreUnavailable, match="unreachable"):
            await ref.ask(Note(7), timeout=5)
        await ref.ask(Note(7), timeout=5)  # the caller's retry: the actor is still there
    assert await counted(log, OrderNoted) == {7: 1}


async def test_a_reactions_io_that_meets_an_outage_is_asked_again_after_a_backoff() -> None:
    outage = Outage()
    log = MemoryLog(faults=outage.faults, lost_ack=outage.lost_ack)
    clock = ManualClock()
    async with clerk(log, clock) as (_ref, actor):
        await placed(log, 1)
        await eventually(lambda: _has(log, OrderChecked, {0: 1}))
        checks = actor.checks
        outage.reads = 1  # the check's own read fails
        await placed(log, 2)
        await eventually(lambda: _has(log, OrderNoted, {1: 1, 2: 1}))
        await eventually(lambda: _is(actor.checks, checks + 1))  # ran, and met the outage
        await anyio.sleep(0.2)
        assert await counted(log, OrderChecked) == {0: 1}  # not before the backoff
        await clock.advance(1.0)  # past it: asked again, without a new event
        await eventually(lambda: _has(log, OrderChecked, {0: 2}))
    assert outage.failed == 1
    assert actor.checks == checks + 2


async def _is(value: int, expected: int) -> bool:
    return value == expected


async def _has(log: MemoryLog, kind: type[Event], expected: dict[int, int]) -> bool:
    return await counted(log, kind) == expected
