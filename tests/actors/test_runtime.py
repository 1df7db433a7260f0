"""The actor runtime on a real database: mailbox, ask/tell, event-sourced state and recovery,
reactions exactly once, fenced appends, ticks on a manual clock and graceful stop.

Each test runs an ActorRunner the way the supervisor does, ``ref = await tg.start(runner.run)``,
and ends it by cancelling it (what a crash or a kill looks like to the log) unless it says
otherwise.
"""

from __future__ import annotations

import asyncio
import gc
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar, cast

import anyio
import asyncpg
import asyncpg.pool
import msgspec
import pytest
from anyio.abc import TaskStatus

from actors.runtime import (
    Actor,
    ActorNotRunning,
    ActorRef,
    ActorRunner,
    AskTimeout,
    Emit,
    MailboxFull,
    Message,
    TickSpec,
)
from actors.runtime.clock import Clock, ManualClock, SystemClock
from actors.runtime.core import _rounds
from events import DEFAULT_REGISTRY, ActorTicked, Event
from events.errors import ConcurrencyConflict, StaleGeneration, StoreUnavailable
from events.streams import tick_stream
from store import (
    ANY,
    NOTIFY_CHANNEL,
    EventStore,
    Expected,
    Fence,
    NewEvent,
    RecordedEvent,
    TickRecord,
    derived_id,
)
from store.eventstore import MAX_EVENTS_PER_APPEND
from store.leases import Leases

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)

E = TypeVar("E", bound=type[Event])


def register(cls: E) -> E:
    """Register a test event in the default registry, once (a re-imported module reuses the
    class registered first under the tag)."""
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    if tag in DEFAULT_REGISTRY:
        return cast(E, DEFAULT_REGISTRY.class_for(tag))
    return DEFAULT_REGISTRY.register(cls)


# -- events -------------------------------------------------------------------------------------
@register
class CounterIncremented(Event, frozen=True, tag="RuntimeTestCounterIncremented"):
    by: int


@register
class CounterAudited(Event, frozen=True, tag="RuntimeTestCounterAudited"):
    position: int


@register
class JobSubmitted(Event, frozen=True, tag="RuntimeTestJobSubmitted"):
    job: int


@register
class JobReceipt(Event, frozen=True, tag="RuntimeTestJobReceipt"):
    job: int


@register
class Stamped(Event, frozen=True, tag="RuntimeTestStamped"):
    at: datetime


# -- messages -----------------------------------------------------------------------------------
class Increment(msgspec.Struct, frozen=True):
    by: int = 1
    expected_version: int | None = None
    request_id: uuid.UUID | None = None  # a client's id for the request: retries reuse it


class Get(msgspec.Struct, frozen=True):
    pass


class Fail(msgspec.Struct, frozen=True):
    reason: str


class Audit(msgspec.Struct, frozen=True):
    position: int


class Accept(msgspec.Struct, frozen=True):
    job: int


class Unknown(msgspec.Struct, frozen=True):
    pass


class Stamp(msgspec.Struct, frozen=True):
    at: datetime


class DecisionFailed(RuntimeError):
    pass


# -- actors -------------------------------------------------------------------------------------
class Counter(Actor[int]):
    """State: the sum of every CounterIncremented of the ``counter`` category."""

    name: ClassVar[str] = "Counter"
    category: ClassVar[str | None] = "counter"
    messages: ClassVar[tuple[type[msgspec.Struct], ...]] = (Increment, Get, Fail)

    def initial_state(self) -> int:
        return 0

    def evolve(self, state: int, recorded: RecordedEvent) -> int:
        event = recorded.event
        return state + event.by if isinstance(event, CounterIncremented) else state

    def decide(self, state: int, message: Message) -> Sequence[Emit]:
        if isinstance(message, Increment):
            expected: Expected = (
                ANY if message.expected_version is None else message.expected_version
            )
            event_id = None if message.request_id is None else derived_id(message.request_id, "add")
            return [
                Emit(
                    "counter-1",
                    CounterIncremented(by=message.by),
                    expected_version=expected,
                    event_id=event_id,
                )
            ]
        if isinstance(message, Fail):
            raise DecisionFailed(message.reason)
        return ()

    def reply(self, state: int, message: Message) -> Any:
        return state


class AuditedCounter(Counter):
    """A Counter that audits (outside its category) every increment it reacts to."""

    name: ClassVar[str] = "AuditedCounter"
    messages: ClassVar[tuple[type[msgspec.Struct], ...]] = (Increment, Get, Audit)

    def react(self, state: int, recorded: RecordedEvent) -> Sequence[Message]:
        if isinstance(recorded.event, CounterIncremented):
            return [Audit(recorded.position)]
        return ()

    def decide(self, state: int, message: Message) -> Sequence[Emit]:
        if isinstance(message, Audit):
            return [Emit("audit-1", CounterAudited(position=message.position))]
        return super().decide(state, message)


class Receipts(Actor[tuple[int, ...]]):
    """Reacts to every JobSubmitted (appended by others) with a JobReceipt."""

    name: ClassVar[str] = "Receipts"
    category: ClassVar[str | None] = "job"
    messages: ClassVar[tuple[type[msgspec.Struct], ...]] = (Accept,)

    def initial_state(self) -> tuple[int, ...]:
        return ()

    def evolve(self, state: tuple[int, ...], recorded: RecordedEvent) -> tuple[int, ...]:
        event = recorded.event
        return (*state, event.job) if isinstance(event, JobSubmitted) else state

    def react(self, state: tuple[int, ...], recorded: RecordedEvent) -> Sequence[Message]:
        event = recorded.event
        return [Accept(event.job)] if isinstance(event, JobSubmitted) else ()

    def decide(self, state: tuple[int, ...], message: Message) -> Sequence[Emit]:
        assert isinstance(message, Accept)
        return [Emit(f"receipt-{message.job}", JobReceipt(job=message.job))]


class Ticker(Actor[None]):
    name: ClassVar[str] = "Ticker"
    tick: TickSpec | None = TickSpec(interval=60, missed="run_once")

    def __init__(self) -> None:
        self.ran: list[datetime] = []  # when each tick ran, by the actor's clock

    def initial_state(self) -> None:
        return None

    async def on_tick(self, state: None, runner: ActorRunner[None]) -> Sequence[Message]:
        self.ran.append(runner.clock.now())
        return ()


class Stamper(Actor[None]):
    """Hourly; each tick stamps the time in the log (a tick with effects)."""

    name: ClassVar[str] = "Stamper"
    tick: TickSpec | None = TickSpec(interval=3600)

    def initial_state(self) -> None:
        return None

    async def on_tick(self, state: None, runner: ActorRunner[None]) -> Sequence[Message]:
        return [Stamp(at=runner.clock.now())]

    def decide(self, state: None, message: Message) -> Sequence[Emit]:
        assert isinstance(message, Stamp)
        return [Emit("stamp-1", Stamped(at=message.at))]


class SkippingTicker(Ticker):
    name: ClassVar[str] = "SkippingTicker"
    tick: TickSpec | None = TickSpec(interval=60, missed="skip")


class Gated(Actor[None]):
    """Busy in its first tick until the test opens the gate; a small mailbox."""

    name: ClassVar[str] = "Gated"
    messages: ClassVar[tuple[type[msgspec.Struct], ...]] = (Get,)
    tick: TickSpec | None = TickSpec(interval=3600)
    mailbox_size: ClassVar[int] = 2

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.gate = anyio.Event()

    def initial_state(self) -> None:
        return None

    async def on_tick(self, state: None, runner: ActorRunner[None]) -> Sequence[Message]:
        self.entered.set()
        await self.gate.wait()
        return ()

    def reply(self, state: None, message: Message) -> Any:
        return "done"


class CrashingGated(Gated):
    """Crashes in its first tick once the test opens the gate."""

    async def on_tick(self, state: None, runner: ActorRunner[None]) -> Sequence[Message]:
        await super().on_tick(state, runner)
        raise DecisionFailed("tick failed")


class Hanging(Actor[None]):
    """Every minute; its first tick hangs (an outside service not answering) until the gate
    opens."""

    name: ClassVar[str] = "Hanging"
    tick: TickSpec | None = TickSpec(interval=60)

    def __init__(self) -> None:
        self.gate = anyio.Event()
        self.calls = 0

    def initial_state(self) -> None:
        return None

    async def on_tick(self, state: None, runner: ActorRunner[None]) -> Sequence[Message]:
        self.calls += 1
        if self.calls == 1:
            await self.gate.wait()
        return ()


class Unreachable(Actor[None]):
    """Hourly; its tick's own database call fails ``outage`` times (PostgreSQL restarting)."""

    name: ClassVar[str] = "Unreachable"
    tick: TickSpec | None = TickSpec(interval=3600)

    def __init__(self, outage: int) -> None:
        self.outage = outage
        self.calls = 0

    def initial_state(self) -> None:
        return None

    async def on_tick(self, state: None, runner: ActorRunner[None]) -> Sequence[Message]:
        self.calls += 1
        if self.calls <= self.outage:
            raise StoreUnavailable("connection refused")
        return ()


class Mute(Actor[None]):
    name: ClassVar[str] = "Mute"

    def initial_state(self) -> None:
        return None


# -- harness ------------------------------------------------------------------------------------
def root_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class Incarnation:
    """Runs a runner and remembers how it ended (the least a supervisor does)."""

    def __init__(self, runner: ActorRunner[Any]) -> None:
        self.runner = runner
        self.error: BaseException | None = None
        self.ended = anyio.Event()

    async def run(self, *, task_status: TaskStatus[ActorRef]) -> None:
        try:
            await self.runner.run(task_status=task_status)
        except Exception as exc:
            self.error = root_cause(exc)
        finally:
            self.ended.set()


def listening(store: EventStore) -> int:
    """This store's subscriptions that LISTEN now (on its one LISTEN connection)."""
    return store.listen_statistics().followers.get(NOTIFY_CHANNEL, 0)


async def wait_listening(store: EventStore, before: int) -> None:
    """Wait until one more subscription than ``before`` follows the log live."""

    async def more() -> bool:
        return listening(store) > before

    await wait_for(more, what="the subscription to LISTEN")


@asynccontextmanager
async def running(runner: ActorRunner[Any]) -> AsyncIterator[tuple[ActorRef, Incarnation]]:
    """Start ``runner`` (returns once it has recovered), wait until it follows the log live,
    and cancel it on the way out.

    (Stopping a runner while its LISTEN connection is being set up is the subject of its own
    test; the others start from a runner that is fully up.)
    """
    incarnation = Incarnation(runner)
    before = listening(runner.store)
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            ref: ActorRef = await tg.start(incarnation.run)
        if runner.actor.category is not None:
            await wait_listening(runner.store, before)
        yield ref, incarnation
        tg.cancel_scope.cancel()


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, what: str, seconds: float = 5.0
) -> None:
    """Poll ``check`` every 20 ms until it holds; fail after ``seconds``.

    (An AssertionError, not pytest.fail: it may be raised inside a task group.)"""
    with anyio.move_on_after(seconds):
        while True:
            if await check():
                return
            await anyio.sleep(0.02)
    raise AssertionError(f"gave up after {seconds}s waiting for {what}")


async def wait_until_state(
    runner: ActorRunner[Any], expected: object, seconds: float = 5.0
) -> None:
    """Wait until the runner's state is ``expected`` (events still arriving are folded)."""
    with anyio.move_on_after(seconds):
        while True:
            if runner.state == expected:
                return
            await anyio.sleep(0.02)
    raise AssertionError(f"the state is {runner.state!r} after {seconds}s, not {expected!r}")


async def events_in(store: EventStore, stream: str) -> list[Event]:
    return [recorded.event for recorded in await store.read_stream(stream)]


async def count_in(raw: asyncpg.Connection, category: str) -> dict[str, int]:
    rows = await raw.fetch(
        "SELECT stream, count(*) AS n FROM i3lani.events WHERE category = $1 GROUP BY stream",
        category,
    )
    return {row["stream"]: row["n"] for row in rows}


def runner_for(
    actor: Actor[Any], store: EventStore, clock: Clock | None = None, **options: Any
) -> ActorRunner[Any]:
    return ActorRunner(actor, store, clock or SystemClock(), node="n1", **options)


# -- mailbox: tell, ask, types, back-pressure ---------------------------------------------------
async def test_tell_and_ask_are_handled_in_order_and_ask_replies_after_applying(
    store: EventStore,
) -> None:
    runner = runner_for(Counter(), store)
    async with running(runner) as (ref, incarnation):
        # The reply is computed from the state *after* the event was appended and applied.
        assert await ref.ask(Increment(by=5)) == 5
        await ref.tell(Increment(by=2))
        ref.tell_nowait(Increment(by=3))
        assert await ref.ask(Get()) == 10
        assert runner.state == 10
        assert runner.processed == 4
        assert incarnation.error is None
    stored = await store.read_stream("counter-1")
    assert [r.event for r in stored] == [
        CounterIncremented(by=5),
        CounterIncremented(by=2),
        CounterIncremented(by=3),
    ]
    assert {(r.metadata.caused_by, r.metadata.node) for r in stored} == {("actor:Counter", "n1")}


async def test_own_events_are_folded_once_and_others_events_as_they_come(
    store: EventStore,
) -> None:
    runner = runner_for(Counter(), store)
    async with running(runner) as (ref, _):
        await ref.ask(Increment(by=1))
        await ref.ask(Increment(by=2))
        # Someone else writes to the category; the subscription delivers it after our own
        # two events, which must not be folded a second time.
        await store.append("counter-9", [CounterIncremented(by=100)])

        async def folded() -> bool:
            return runner.state != 3

        await wait_for(folded, what="the other writer's event to be folded")
        assert runner.state == 103
        assert await ref.ask(Get()) == 103


async def test_a_message_of_the_wrong_type_is_refused_naming_the_accepted_types(
    store: EventStore,
) -> None:
    runner = runner_for(Counter(), store)
    async with running(runner) as (ref, _):
        expected = r"Counter accepts Increment, Get, Fail, not Unknown"
        with pytest.raises(TypeError, match=expected):
            await ref.tell(Unknown())
        with pytest.raises(TypeError, match=expected):
            ref.tell_nowait(Unknown())
        with pytest.raises(TypeError, match=expected):
            await ref.ask(Unknown())
        assert await ref.ask(Get()) == 0
        assert runner.processed == 1
    mute = runner_for(Mute(), store)
    async with running(mute) as (ref, _):
        with pytest.raises(TypeError, match="Mute accepts no messages, not Get"):
            await ref.tell(Get())


async def test_tell_nowait_on_a_full_mailbox_raises_mailbox_full(store: EventStore) -> None:
    actor = Gated()
    runner = runner_for(actor, store, ManualClock(T0))
    async with running(runner) as (ref, incarnation):
        with anyio.fail_after(5):
            await actor.entered.wait()  # busy with its first tick
        ref.tell_nowait(Get())
        ref.tell_nowait(Get())
        with pytest.raises(MailboxFull, match="Gated's mailbox is full"):
            ref.tell_nowait(Get())
        # `tell` waits for room instead.
        with anyio.move_on_after(0.2) as waited:
            await ref.tell(Get())
        assert waited.cancelled_caught
        actor.gate.set()
        assert await ref.ask(Get(), timeout=5) == "done"
        assert runner.processed == 3
        assert incarnation.error is None


async def test_ask_times_out_while_the_actor_is_busy_and_the_actor_goes_on(
    store: EventStore,
) -> None:
    actor = Gated()
    runner = runner_for(actor, store, ManualClock(T0))
    async with running(runner) as (ref, incarnation):
        with anyio.fail_after(5):
            await actor.entered.wait()
        with anyio.fail_after(5), pytest.raises(AskTimeout, match=r"Gated did not answer within"):
            await ref.ask(Get(), timeout=0.2)
        actor.gate.set()
        # The abandoned question is still handled later; nobody listens for its answer, and
        # that must not kill the actor.
        try:
            answer = await ref.ask(Get(), timeout=2)
        except Exception as exc:
            raise AssertionError(
                f"the actor died after an ask timed out: {incarnation.error!r} "
                f"(the next ask raised {exc!r})"
            ) from None
        assert answer == "done"
        assert incarnation.error is None


# -- event-sourced state and recovery -----------------------------------------------------------
async def test_a_new_runner_rebuilds_the_same_state_from_the_log(store: EventStore) -> None:
    first = runner_for(Counter(), store)
    async with running(first) as (ref, _):
        for by in (1, 2, 3, 4):
            await ref.ask(Increment(by=by))
    assert first.state == 10
    # The process dies; a new one starts the actor again, from a fresh initial state.
    second = runner_for(Counter(), store)
    async with running(second) as (ref, _):
        await wait_until_state(second, 10)
        assert second.cursor == first.cursor
        assert await ref.ask(Increment(by=5)) == 15
    third = runner_for(Counter(), store)
    async with running(third) as (ref, _):
        await wait_until_state(third, 15)
        assert await ref.ask(Get()) == 15


async def test_start_returns_only_after_recovery_and_catch_up(
    store: EventStore, raw: asyncpg.Connection
) -> None:
    # A log written by others before the actor ever ran: its newest events are committed but
    # not yet readable, because an older transaction (another client's) is still open.
    blocker = raw.transaction()
    await blocker.start()
    await raw.fetchval("SELECT pg_current_xact_id()")  # it has a transaction id now
    for n in range(1, 41):
        await store.append(f"counter-{n % 4}", [CounterIncremented(by=n)])
    for job in (1, 2, 3):
        await store.append(f"job-{job}", [JobSubmitted(job=job)])

    async def end_the_older_transaction_soon() -> None:
        await anyio.sleep(0.3)
        await blocker.commit()

    async with anyio.create_task_group() as tg:
        tg.start_soon(end_the_older_transaction_soon)
        counter = runner_for(Counter(), store)
        before = listening(store)
        with anyio.fail_after(10):
            await tg.start(counter.run)
        # No waiting: when start returns the state already holds every earlier event.
        counted_at_start = counter.state
        await wait_listening(store, before)  # (so that it can be stopped cleanly)
        assert counted_at_start == sum(range(1, 41)), "start returned before the actor caught up"

        receipts = runner_for(Receipts(), store)
        before = listening(store)
        with anyio.fail_after(10):
            await tg.start(receipts.run)
        jobs_at_start = receipts.state
        # ...and what those events called for was done before it reported started.
        receipts_at_start = await count_in(raw, "receipt")
        await wait_listening(store, before)
        assert jobs_at_start == (1, 2, 3)
        assert receipts_at_start == {f"receipt-{j}": 1 for j in (1, 2, 3)}
        tg.cancel_scope.cancel()


async def test_a_conflicting_append_changes_nothing_and_is_raised_to_the_asker(
    store: EventStore,
) -> None:
    runner = runner_for(Counter(), store)
    async with running(runner) as (ref, incarnation):
        assert await ref.ask(Increment(by=1)) == 1  # counter-1 is at version 1
        with pytest.raises(ConcurrencyConflict) as caught:
            await ref.ask(Increment(by=100, expected_version=5))
        assert caught.value.stream == "counter-1"
        assert caught.value.actual == 1
        assert runner.state == 1
        # The actor goes on with the next message.
        assert await ref.ask(Increment(by=2, expected_version=1)) == 3
        assert incarnation.error is None
    assert await events_in(store, "counter-1") == [
        CounterIncremented(by=1),
        CounterIncremented(by=2),
    ]


async def test_an_append_under_a_stale_lease_generation_is_refused_and_ends_the_incarnation(
    store: EventStore,
) -> None:
    leases = Leases(store, "n1", ttl=30)
    lease = await leases.acquire("Counter")
    assert lease is not None
    assert lease.generation == 1
    runner = runner_for(Counter(), store, fence=lease.fence)
    async with running(runner) as (ref, incarnation):
        assert await ref.ask(Increment(by=1)) == 1  # fenced, and the fence holds
        newer = await leases.acquire("Counter")  # a newer incarnation was granted the lease
        assert newer is not None
        assert newer.generation == 2
        with pytest.raises(StaleGeneration) as caught:
            await ref.ask(Increment(by=5))
        assert (caught.value.lease, caught.value.generation) == ("Counter", 1)
        assert runner.state == 1
        # A writer that lost its lease must stop: the incarnation ends with the refusal.
        with anyio.fail_after(5):
            await incarnation.ended.wait()
        assert isinstance(incarnation.error, StaleGeneration)
    assert await events_in(store, "counter-1") == [CounterIncremented(by=1)]


async def test_a_retried_request_already_stored_is_not_applied_twice(store: EventStore) -> None:
    # A client retries a request (same request id, so the same derived event id, and the same
    # expected version) because it never heard the answer. The store recognises the retry and
    # hands back the original append; the actor must not apply that event a second time.
    runner = runner_for(Counter(), store)
    request = Increment(by=5, expected_version=0, request_id=uuid.uuid4())
    async with running(runner) as (ref, incarnation):
        assert await ref.ask(request) == 5
        again = await ref.ask(request)
        assert len(await store.read_stream("counter-1")) == 1  # nothing new was appended
        assert (again, runner.state) == (5, 5), "the retried event was applied twice"
        assert incarnation.error is None


async def test_a_retried_request_with_a_derived_event_id_appends_nothing_and_answers(
    store: EventStore,
) -> None:
    # Emit's contract: an event_id derived from the cause makes the append idempotent, "a retry
    # appends nothing new". Without a version expectation the retry should simply succeed.
    runner = runner_for(Counter(), store)
    request = Increment(by=5, request_id=uuid.uuid4())
    async with running(runner) as (ref, incarnation):
        assert await ref.ask(request) == 5
        try:
            again = await ref.ask(request)
        except Exception as exc:
            raise AssertionError(f"a retried idempotent request was refused: {exc!r}") from None
        assert (again, runner.state) == (5, 5)
        assert len(await store.read_stream("counter-1")) == 1
        assert incarnation.error is None


async def test_an_error_in_decide_is_raised_to_the_asker_and_crashes_the_incarnation(
    store: EventStore, raw: asyncpg.Connection
) -> None:
    runner = runner_for(Counter(), store)
    async with running(runner) as (ref, incarnation):
        await ref.ask(Increment(by=7))
        with pytest.raises(DecisionFailed, match="no way"):
            await ref.ask(Fail("no way"))
        with anyio.fail_after(5):
            await incarnation.ended.wait()
        assert isinstance(incarnation.error, DecisionFailed)
        assert runner.state == 7
    assert await count_in(raw, "counter") == {"counter-1": 1}


async def test_an_ask_queued_behind_a_crash_is_told_at_once_that_no_answer_comes(
    store: EventStore,
) -> None:
    actor = CrashingGated()
    runner = runner_for(actor, store, ManualClock(T0))
    async with running(runner) as (ref, incarnation):
        with anyio.fail_after(5):
            await actor.entered.wait()  # a tick is in hand
        outcome: list[BaseException] = []

        async def ask() -> None:
            try:
                await ref.ask(Get(), timeout=30)
            except (ActorNotRunning, AskTimeout) as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            await wait_for(lambda: _queued(runner), what="the ask to be queued")
            actor.gate.set()  # the tick now crashes the incarnation, the ask still queued
            with anyio.fail_after(5):
                await incarnation.ended.wait()
        assert isinstance(incarnation.error, DecisionFailed)
        assert [type(exc) for exc in outcome] == [ActorNotRunning]


async def _queued(runner: ActorRunner[Any]) -> bool:
    return runner._receive.statistics().current_buffer_used == 1


def open_connections_outside_pools() -> list[asyncpg.Connection]:
    """asyncpg connections still open that no pool owns (a subscription's LISTEN connection,
    for one)."""
    gc.collect()
    found = []
    for obj in gc.get_objects():
        if isinstance(obj, asyncpg.Connection) and not obj.is_closed():
            owners = gc.get_referrers(obj)
            if not any(isinstance(owner, asyncpg.pool.PoolConnectionHolder) for owner in owners):
                found.append(obj)
    return found


async def test_stopping_a_runner_right_after_it_started_leaves_nothing_behind(
    store: EventStore,
) -> None:
    # A supervisor may stop an actor at any moment, including while its subscription is still
    # setting up its LISTEN connection. Nothing may leak: no connection left open, no error left
    # on the event loop. Errors and warnings are collected here rather than by the test runner,
    # so that a failure names them, and leaked connections are closed before asserting, so that
    # they do not spill into later tests.
    loop = asyncio.get_running_loop()
    stray: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: stray.append(repr(context.get("exception"))))
    before = {id(conn) for conn in open_connections_outside_pools()}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for step in range(100):  # stop 0 to 30 ms after start, every 0.3 ms
                delay = step * 0.0003
                runner = runner_for(Counter(), store)
                async with anyio.create_task_group() as tg:
                    incarnation = Incarnation(runner)
                    await tg.start(incarnation.run)
                    await anyio.sleep(delay)
                    runner.request_stop()
                    with anyio.fail_after(5):
                        await incarnation.ended.wait()
                    assert incarnation.error is None
            await anyio.sleep(0.3)
            still_open = [c for c in open_connections_outside_pools() if id(c) not in before]
            for conn in still_open:
                conn.terminate()
            gc.collect()
            await anyio.sleep(0.05)
    finally:
        loop.set_exception_handler(previous)
    collected_open = [
        w
        for w in caught
        if issubclass(w.category, ResourceWarning) and "unclosed" in str(w.message)
    ]
    leaked = len(still_open) + len(collected_open)
    assert leaked == 0, f"{leaked} connections were left open by runners stopped early"
    assert stray == [], f"errors left on the event loop: {stray}"


# -- reactions ----------------------------------------------------------------------------------
async def test_reactions_to_others_events_happen_exactly_once(
    store: EventStore, raw: asyncpg.Connection
) -> None:
    runner = runner_for(Receipts(), store)
    async with running(runner) as (_, incarnation):
        for job in (1, 2, 3):
            await store.append(f"job-{job}", [JobSubmitted(job=job)])

        async def three_receipts() -> bool:
            return len(await count_in(raw, "receipt")) == 3

        await wait_for(three_receipts, what="a receipt for each job")
        await anyio.sleep(0.3)  # time enough to react twice, were it to
        assert await count_in(raw, "receipt") == {f"receipt-{j}": 1 for j in (1, 2, 3)}
        assert runner.state == (1, 2, 3)
        # The checkpoint is at job 3, stored by the transaction that wrote its receipt.
        [job3] = await store.read_stream("job-3")
        assert await store.load_checkpoint("actor-Receipts") == job3.cursor
        same_transaction = await raw.fetchval(
            "SELECT c.xmin::text = e.transaction_id::xid::text "
            "FROM i3lani.checkpoints c, i3lani.events e "
            "WHERE c.name = 'actor-Receipts' AND e.stream = 'receipt-3'"
        )
        assert same_transaction is True
        [receipt] = await store.read_stream("receipt-3")
        assert receipt.metadata.causation_id == job3.event_id
        assert incarnation.error is None


async def test_after_a_crash_a_new_runner_reacts_only_to_what_it_had_not_reacted_to(
    store: EventStore, raw: asyncpg.Connection
) -> None:
    first = runner_for(Receipts(), store)
    async with running(first):
        for job in (1, 2):
            await store.append(f"job-{job}", [JobSubmitted(job=job)])

        async def two_receipts() -> bool:
            return len(await count_in(raw, "receipt")) == 2

        await wait_for(two_receipts, what="receipts for jobs 1 and 2")
    # Crashed (cancelled). A job arrives while nothing runs.
    await store.append("job-3", [JobSubmitted(job=3)])
    second = runner_for(Receipts(), store)
    async with running(second):

        async def three_receipts() -> bool:
            return len(await count_in(raw, "receipt")) == 3

        # Job 3 gets its receipt; jobs 1 and 2 get no second one.
        await wait_for(three_receipts, what="a receipt for job 3")
        await anyio.sleep(0.3)
        assert await count_in(raw, "receipt") == {f"receipt-{j}": 1 for j in (1, 2, 3)}
        assert second.state == (1, 2, 3)
        await store.append("job-4", [JobSubmitted(job=4)])

        async def four_receipts() -> bool:
            return len(await count_in(raw, "receipt")) == 4

        await wait_for(four_receipts, what="a receipt for job 4")
    third = runner_for(Receipts(), store)
    async with running(third):
        await anyio.sleep(0.2)
    assert await count_in(raw, "receipt") == {f"receipt-{j}": 1 for j in (1, 2, 3, 4)}


async def test_a_gated_runner_recovers_and_reports_started_but_reacts_only_once_let_begin(
    store: EventStore, raw: asyncpg.Connection
) -> None:
    # A supervisor gets a crash restart's next incarnation ready ahead of its backoff's end:
    # recovered and reported started, it does nothing of its own until the gate opens, not
    # even the reactions owed to events past its checkpoint.
    await store.append("job-1", [JobSubmitted(job=1)])
    await store.append("job-2", [JobSubmitted(job=2)])
    runner = runner_for(Receipts(), store)
    gate = anyio.Event()

    async def run(*, task_status: TaskStatus[ActorRef]) -> None:
        await runner.run(task_status=task_status, gate=gate)

    async with anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            await tg.start(run)
        await anyio.sleep(0.2)  # time enough to react, were it to
        assert runner.state == ()  # nothing past the (absent) checkpoint folded yet
        assert await count_in(raw, "receipt") == {}
        assert await store.load_checkpoint("actor-Receipts") is None

        gate.set()

        async def two_receipts() -> bool:
            return len(await count_in(raw, "receipt")) == 2

        await wait_for(two_receipts, what="the owed receipts once the gate opened")
        assert runner.state == (1, 2)
        assert await count_in(raw, "receipt") == {"receipt-1": 1, "receipt-2": 1}
        tg.cancel_scope.cancel()


async def test_own_events_are_not_reacted_to_after_a_restart_either(
    store: EventStore, raw: asyncpg.Connection
) -> None:
    # Live, the runner skips the events it appended itself: `react` sees only events of
    # others. A restart must not change that.
    first = runner_for(AuditedCounter(), store)
    async with running(first) as (ref, _):
        await store.append("counter-2", [CounterIncremented(by=100)])  # someone else's

        async def audited() -> bool:
            return await count_in(raw, "audit") == {"audit-1": 1}

        await wait_for(audited, what="the other writer's increment to be audited")
        assert await ref.ask(Increment(by=1)) == 101  # the actor's own increments
        assert await ref.ask(Increment(by=2)) == 103
        await anyio.sleep(0.3)
        assert await count_in(raw, "audit") == {"audit-1": 1}, "own events are not reacted to"
    second = runner_for(AuditedCounter(), store)
    async with running(second):
        await wait_until_state(second, 103)
        await anyio.sleep(0.2)
        audits = await events_in(store, "audit-1")
        assert len(audits) == 1, f"after a restart the actor reacted to its own events: {audits}"


# -- ticks --------------------------------------------------------------------------------------
def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def wait_for_tick(store: EventStore, actor: str, due_at: datetime) -> TickRecord:
    """Wait until ``actor``'s tick schedule records the tick due at ``due_at``."""

    async def recorded() -> bool:
        tick = await store.load_tick(actor)
        return tick is not None and tick.due_at == due_at

    await wait_for(recorded, what=f"{actor}'s tick due at {due_at:%H:%M:%S}")
    tick = await store.load_tick(actor)
    assert tick is not None
    return tick


async def log_size(store: EventStore) -> int:
    return len([r async for r in store.read_all()])


async def test_a_tick_actor_records_each_tick_in_its_schedule_not_the_log(
    store: EventStore,
) -> None:
    clock = ManualClock(T0)
    actor = Ticker()
    runner = runner_for(actor, store, clock)
    async with running(runner) as (_, incarnation):
        # Never ticked before: the first tick is due at once.
        first = await wait_for_tick(store, "Ticker", T0)
        assert first == TickRecord(due_at=T0, ticked_at=T0, node="n1")
        with anyio.fail_after(5):
            await clock.wait_for_sleepers(1)
        assert clock.next_wake() == 60
        await clock.advance(60)
        await wait_for_tick(store, "Ticker", at(60))
        await clock.advance(120)
        await wait_for_tick(store, "Ticker", at(180))
        assert actor.ran == [at(s) for s in (0, 60, 120, 180)]
        assert incarnation.error is None
    # Four ticks that changed nothing: nothing in the log, the schedule row alone moved.
    assert await log_size(store) == 0
    assert await store.read_stream(tick_stream("Ticker")) == []


async def test_a_tick_with_effects_records_them_and_the_tick_together(store: EventStore) -> None:
    clock = ManualClock(T0)
    runner = runner_for(Stamper(), store, clock)
    async with running(runner) as (_, incarnation):
        tick = await wait_for_tick(store, "Stamper", T0)
        assert tick == TickRecord(due_at=T0, ticked_at=T0, node="n1")
        assert await events_in(store, "stamp-1") == [Stamped(at=T0)]
        assert incarnation.error is None


async def test_a_tick_under_a_lost_lease_is_refused_and_moves_no_schedule(
    store: EventStore,
) -> None:
    leases = Leases(store, "n1", ttl=30)
    lease = await leases.acquire("Ticker")
    assert lease is not None
    await leases.release(lease)
    again = await Leases(store, "n2", ttl=30).acquire("Ticker")  # a newer generation elsewhere
    assert again is not None
    with pytest.raises(StaleGeneration):
        await store.save_tick("Ticker", T0, T0, node="n1", fence=Fence("Ticker", lease.generation))
    assert await store.load_tick("Ticker") is None
    await store.save_tick("Ticker", T0, T0, node="n2", fence=again.fence)
    assert await store.load_tick("Ticker") == TickRecord(
        due_at=T0, ticked_at=T0, node="n2", generation=again.generation
    )


async def test_a_restart_neither_skips_nor_doubles_a_tick(store: EventStore) -> None:
    clock = ManualClock(T0)
    async with running(runner_for(Ticker(), store, clock)):
        await wait_for_tick(store, "Ticker", T0)  # ticked at T0
    await clock.advance(30)  # a restart half an interval later
    actor = Ticker()
    async with running(runner_for(actor, store, clock)):
        with anyio.fail_after(5):
            await clock.wait_for_sleepers(1)
        # Next due at T0 + 60, i.e. in 30 s: not at once, and not 60 s from the restart.
        assert clock.next_wake() == 30
        assert actor.ran == []
        await clock.advance(29.5)
        await anyio.sleep(0.1)
        assert actor.ran == []
        assert clock.next_wake() == 0.5
        await clock.advance(0.5)
        await wait_for_tick(store, "Ticker", at(60))
        assert actor.ran == [at(60)]


async def test_a_schedule_left_in_the_log_by_an_older_release_is_resumed(
    store: EventStore,
) -> None:
    # A log written before tick schedules left it: the last ActorTicked says when the last
    # tick was due, and the deploy that brings the schedule row in neither skips nor doubles.
    await store.append(
        tick_stream("Ticker"), [ActorTicked(actor="Ticker", due_at=T0, ticked_at=T0)]
    )
    clock = ManualClock(at(20))
    actor = Ticker()
    async with running(runner_for(actor, store, clock)):
        with anyio.fail_after(5):
            await clock.wait_for_sleepers(1)
        assert clock.next_wake() == 40  # due at T0 + 60
        await clock.advance(40)
        await wait_for_tick(store, "Ticker", at(60))
        assert actor.ran == [at(60)]


async def test_a_missed_tick_with_run_once_runs_once_at_once(store: EventStore) -> None:
    clock = ManualClock(T0)
    async with running(runner_for(Ticker(), store, clock)):
        await wait_for_tick(store, "Ticker", T0)
    await clock.advance(150)  # two and a half intervals without a tick
    actor = Ticker()
    async with running(runner_for(actor, store, clock)):
        late = at(150)
        assert await wait_for_tick(store, "Ticker", late) == TickRecord(
            due_at=late, ticked_at=late, node="n1"
        )
        with anyio.fail_after(5):
            await clock.wait_for_sleepers(1)
        assert clock.next_wake() == 60  # one catch-up run, then the schedule goes on from it
        await anyio.sleep(0.1)
        assert actor.ran == [late]


async def test_a_missed_tick_with_skip_waits_for_the_next_slot(store: EventStore) -> None:
    clock = ManualClock(T0)
    async with running(runner_for(SkippingTicker(), store, clock)):
        await wait_for_tick(store, "SkippingTicker", T0)
    await clock.advance(150)
    actor = SkippingTicker()
    async with running(runner_for(actor, store, clock)):
        with anyio.fail_after(5):
            await clock.wait_for_sleepers(1)
        assert clock.next_wake() == 30  # the slot at T0 + 180
        await anyio.sleep(0.1)
        assert actor.ran == []
        await clock.advance(30)
        tick = await wait_for_tick(store, "SkippingTicker", at(180))
    assert tick.ticked_at == at(180)
    assert actor.ran == [at(180)]


async def test_a_tick_that_hangs_for_five_intervals_is_followed_by_one_catch_up_not_five(
    store: EventStore,
) -> None:
    clock = ManualClock(T0)
    actor = Hanging()
    async with running(runner_for(actor, store, clock)) as (_, incarnation):

        async def hanging() -> bool:
            return actor.calls == 1

        await wait_for(hanging, what="the first tick to hang")
        for _ in range(5):  # five intervals pass, minute by minute, while it hangs
            await clock.advance(60)
            await anyio.sleep(0.05)
        assert actor.calls == 1
        actor.gate.set()
        late = at(300)
        # The hung tick is recorded under its own slot, then the one catch-up under now.
        assert await wait_for_tick(store, "Hanging", late) == TickRecord(
            due_at=late, ticked_at=late, node="n1"
        )
        with anyio.fail_after(5):
            await clock.wait_for_sleepers(1)
        assert clock.next_wake() == 60
        await anyio.sleep(0.1)
        assert actor.calls == 2
        assert incarnation.error is None


async def test_a_tick_that_meets_an_unreachable_database_runs_again_soon(
    store: EventStore,
) -> None:
    clock = ManualClock(T0)
    actor = Unreachable(outage=3)
    async with running(runner_for(actor, store, clock)) as (_, incarnation):
        # The first tick (due at once) fails, then waits 1, 2, 4 s: not the hour's interval.
        for attempt, backoff in enumerate((1, 2, 4), start=1):

            async def backing_off(attempt: int = attempt, backoff: float = backoff) -> bool:
                return actor.calls >= attempt and clock.next_wake() == backoff

            # The ticker sleeps for the backoff, not the hour's interval.
            await wait_for(backing_off, what=f"a {backoff} s backoff after attempt {attempt}")
            assert await store.load_tick("Unreachable") is None
            await clock.advance(backoff)
        done = await wait_for_tick(store, "Unreachable", T0)
        # Recorded under the slot it was due at; the next slot is an hour after that one.
        assert done == TickRecord(due_at=T0, ticked_at=at(7), node="n1")
        with anyio.fail_after(5):
            await clock.wait_for_sleepers(1)
        assert clock.next_wake() == 3600 - 7
        assert actor.calls == 4
        assert incarnation.error is None  # no crash: the incarnation ran through the outage


# -- graceful stop ------------------------------------------------------------------------------
async def test_a_graceful_stop_finishes_the_message_in_hand(store: EventStore) -> None:
    actor = Gated()
    runner = runner_for(actor, store, ManualClock(T0))
    async with running(runner) as (ref, incarnation):
        with anyio.fail_after(5):
            await actor.entered.wait()  # a tick is in hand
        runner.request_stop()
        ref.tell_nowait(Get())  # queued behind it: not handled after a stop
        await anyio.sleep(0.1)
        assert not incarnation.ended.is_set()  # still finishing the tick
        actor.gate.set()
        with anyio.fail_after(5):
            await incarnation.ended.wait()
        assert incarnation.error is None
        assert runner.processed == 0
    # The tick in hand was completed, and recorded.
    assert await store.load_tick("Gated") == TickRecord(due_at=T0, ticked_at=T0, node="n1")


async def test_a_graceful_stop_of_an_idle_actor_returns_at_once(store: EventStore) -> None:
    runner = runner_for(Counter(), store)
    async with running(runner) as (ref, incarnation):
        assert await ref.ask(Increment(by=2)) == 2
        runner.request_stop()
        with anyio.fail_after(2):
            await incarnation.ended.wait()
        assert incarnation.error is None


def test_a_decision_with_more_events_for_a_stream_than_one_append_takes_is_split() -> None:
    """A scan recording a backlog of transfers: more than MAX_EVENTS_PER_APPEND events for
    the wallet's stream go out in several requests, in order, in the one transaction."""
    ticked = ActorTicked(actor="A", due_at=datetime.now(UTC), ticked_at=datetime.now(UTC))
    many = MAX_EVENTS_PER_APPEND + 5
    pending = [
        (Emit("wallet-1", ticked), NewEvent(event=ticked, event_id=uuid.uuid4()))
        for _ in range(many)
    ]
    pending.append((Emit("other-1", ticked), NewEvent(event=ticked, event_id=uuid.uuid4())))
    rounds = _rounds(pending)
    sizes = [[(g.stream, len(g.items)) for g in batch] for batch in rounds]
    assert sizes == [[("wallet-1", MAX_EVENTS_PER_APPEND)], [("wallet-1", 5), ("other-1", 1)]]
    flat = [item for batch in rounds for g in batch for item in g.items if g.stream == "wallet-1"]
    assert flat == [item for _, item in pending[:many]]
