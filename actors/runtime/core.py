"""The actor runtime: a bounded typed mailbox, periodic ticks, event-sourced state.

An actor is a class with pure decisions and a thin layer of I/O::

    class Counter(Actor[int]):
        name = "Counter"
        category = "counter"              # its state is the fold of counter-* events
        messages = (Increment,)

        def initial_state(self) -> int: return 0
        def evolve(self, state, recorded): return state + 1                # pure
        def decide(self, state, message): return [Emit("counter-1", Incremented())]  # pure

The runtime (:class:`ActorRunner`) does the I/O around them:

* **Recovery.** On start the state is rebuilt by folding the actor's category from the start
  (or from a snapshot) up to its stored checkpoint; events after the checkpoint are folded *and*
  reacted to (:meth:`Actor.react`); only then does the runner report itself started, so
  ``await tg.start(runner.run)`` returns once the actor has caught up.
* **Append, then apply.** A message goes through ``decide``; the events it returns are appended
  in one transaction (fenced by the actor's lease generation, together with the checkpoint of the
  event that caused them, if any); only after the commit are they folded into the state with
  ``evolve``. If the append fails the state is unchanged.
* **Reactions.** New events of the category (from the gateway, other actors) arrive through a
  store subscription and are folded in log order; ``react`` may turn one into messages.
* **Ticks**, when :attr:`Actor.tick` is set: each run is recorded in the actor's tick schedule
  (``save_tick``: one row per actor beside the log, overwritten in place, fenced by the lease
  like every write of the actor's), in the same transaction as its effects when it had any,
  and the next one is scheduled from the last one recorded, so a restart, a deploy or a
  take-over by another node neither skips nor doubles a due run. A tick that changed nothing
  adds nothing to the log. One tick runs at a time: a tick
  that outlasts its interval (a hung outside service) is followed by one catch-up tick (or the
  next slot, with ``missed="skip"``), not by a burst of the ticks that fell due meanwhile. A
  tick that meets an unreachable PostgreSQL (in its own I/O or at its commit) changes nothing
  and crashes nothing: it runs again after 1, 2, 4 ... s (at most a minute, never later than
  the next tick), so a database restart neither crashes the actor nor holds its work back for
  a whole interval.

Messages are processed one at a time, in arrival order. Time comes from an injected
:class:`~actors.runtime.clock.Clock`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, Literal, TypeVar

import anyio
import msgspec
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from actors.runtime import tracing
from actors.runtime.clock import Clock
from events import ActorTicked, Event, EventMetadata, environment, streams
from events.errors import ConcurrencyConflict, EventIdReused, StaleGeneration, StoreUnavailable
from store import (
    ANY,
    NO_STREAM,
    START,
    Append,
    Cursor,
    EventStore,
    Expected,
    ExpectedVersion,
    Fence,
    NewEvent,
    RecordedEvent,
    Transaction,
)
from store.eventstore import MAX_EVENTS_PER_APPEND
from store.memory import MemoryLog, MemoryTransaction

__all__ = [
    "Actor",
    "ActorRef",
    "ActorRunner",
    "AskTimeout",
    "ActorNotRunning",
    "Emit",
    "MailboxFull",
    "TickSpec",
    "next_tick_due",
]

logger = logging.getLogger("actors.runtime")

TICK_RETRY_MIN = 1.0
"""Seconds before a tick that met an unreachable PostgreSQL runs again; doubled each time."""
TICK_RETRY_MAX = 60.0
"""The cap of that backoff; the same backoff spaces the retries of a reaction's commit and of
a reaction's I/O that met an unreachable PostgreSQL."""

BACKGROUND_GRACE = 3.0
"""Seconds a graceful stop waits for :meth:`Actor.background` to return by itself."""

S = TypeVar("S")
Message = msgspec.Struct


class MailboxFull(Exception):
    """``tell_nowait`` found the mailbox full."""


class AskTimeout(TimeoutError):
    """``ask`` got no reply within its timeout."""


class ActorNotRunning(Exception):
    """The actor behind a ref has stopped: its mailbox no longer takes messages."""


class TickSpec(msgspec.Struct, frozen=True):
    """A periodic tick: every ``interval`` seconds plus up to ``jitter`` seconds.

    ``missed`` says what happens to runs that fell due while nothing ran (a deploy, an outage):
    ``"run_once"`` runs one catch-up tick at once, ``"skip"`` waits for the next slot of the
    original schedule.
    """

    interval: float
    jitter: float = 0.0
    missed: Literal["skip", "run_once"] = "run_once"

    def __post_init__(self) -> None:
        if not (self.interval > 0 and math.isfinite(self.interval)):
            raise ValueError("a tick interval must be a positive number of seconds")
        if not 0 <= self.jitter < self.interval:
            raise ValueError("tick jitter must be >= 0 and smaller than the interval")


def next_tick_due(spec: TickSpec, last_due: datetime | None, now: datetime) -> datetime:
    """When the next tick is due, from the last one recorded. Pure.

    Never recorded: now. On schedule: ``last_due + interval``. Overdue: now (``run_once``), or
    the first slot of the original schedule that is still ahead (``skip``).
    """
    if last_due is None:
        return now
    interval = timedelta(seconds=spec.interval)
    due = last_due + interval
    if due >= now:
        return due
    if spec.missed == "run_once":
        return now
    behind = math.floor((now - last_due) / interval)
    return last_due + interval * (behind + 1)


class Emit(msgspec.Struct, frozen=True):
    """One event a decision wants appended to ``stream``.

    ``event_id`` makes the append idempotent: derive it from what caused the event
    (``store.derived_id``) and a retry after a crash appends nothing new.
    """

    stream: str
    event: Event
    expected_version: Expected = ANY
    event_id: uuid.UUID | None = None


class Actor(ABC, Generic[S]):
    """Base class of actors: override the pure parts; the runner does the rest."""

    name: ClassVar[str]
    category: ClassVar[str | None] = None
    """The event category (``payment`` for ``payment-*``) whose fold is the actor's state."""
    messages: ClassVar[tuple[type[msgspec.Struct], ...]] = ()
    """The message types its mailbox accepts."""
    tick: TickSpec | None = None
    """Periodic ticks (an instance may set its own, from configuration)."""
    io_messages: ClassVar[tuple[type[msgspec.Struct], ...]] = ()
    """Messages that need I/O first: :meth:`perform` turns each into messages to decide on.
    Returned by :meth:`react`, they are coalesced (equal messages pending run once) and run
    when the mailbox is idle, or within a second."""
    mailbox_size: ClassVar[int] = 256
    snapshot_every: ClassVar[int | None] = None
    """Save a snapshot of the state every N folded events (needs a msgspec-encodable state)."""
    state_type: ClassVar[Any] = None
    """The state's type, for snapshots."""

    @abstractmethod
    def initial_state(self) -> S:
        """The state before any event: every actor defines it."""

    def evolve(self, state: S, recorded: RecordedEvent) -> S:
        """Fold one event of the actor's category into its state. Pure."""
        return state

    def decide(self, state: S, message: Message) -> Sequence[Emit]:
        """The events that handling ``message`` produces. Pure."""
        return ()

    def react(self, state: S, recorded: RecordedEvent) -> Sequence[Message]:
        """Messages to handle in reaction to a new event of the category. Pure."""
        return ()

    def reply(self, state: S, message: Message) -> Any:
        """What ``ask(message)`` returns, computed after its events were applied. Pure."""
        return None

    async def on_tick(self, state: S, runner: ActorRunner[S]) -> Sequence[Message]:
        """I/O for a periodic tick (call outside services); return messages to decide on."""
        return ()

    async def perform(
        self, state: S, message: Message, runner: ActorRunner[S]
    ) -> Sequence[Message]:
        """I/O for one of :attr:`io_messages`; return the messages to decide on."""
        return ()

    async def setup(self, stack: contextlib.AsyncExitStack, runner: ActorRunner[S]) -> None:
        """Open what one incarnation needs (HTTP clients, ...) on ``stack``: closed when the
        incarnation ends, however it ends. Runs before recovery."""

    async def background(self, runner: ActorRunner[S]) -> None:
        """Work that runs beside the mailbox for the incarnation's life (a task processor).
        Returning ends nothing; raising crashes the actor. On a graceful stop
        ``runner.stopping`` is set and it has :data:`BACKGROUND_GRACE` seconds to return before
        it is cancelled."""

    async def on_commit(self, tx: Transaction | MemoryTransaction, emits: Sequence[Emit]) -> None:
        """Extra writes in the transaction that appends ``emits`` (a projection row, a task):
        committed with them, or not at all."""


@dataclass(slots=True)
class _Group:
    """Consecutive emits to one stream, appended as one request."""

    stream: str
    expected: Expected
    emits: list[Emit] = field(default_factory=list)
    items: list[NewEvent] = field(default_factory=list)

    def takes(self, emit: Emit) -> bool:
        """Whether ``emit`` can join: its expectation is what the group leaves behind, and the
        group is not full (one append takes at most MAX_EVENTS_PER_APPEND events: a decision
        with more for one stream, a scan recording a backlog of transfers, appends them in
        several requests of its one transaction)."""
        if len(self.items) >= MAX_EVENTS_PER_APPEND:
            return False
        if emit.expected_version == ANY:
            return True
        after = len(self.items)
        if isinstance(self.expected, int) and not isinstance(self.expected, ExpectedVersion):
            after += self.expected
        elif self.expected != NO_STREAM:
            return False
        return emit.expected_version == after


def _rounds(pending: Sequence[tuple[Emit, NewEvent]]) -> list[list[_Group]]:
    """Emits in as few multi-stream statements as possible: each round holds one request per
    stream; an emit that cannot join its stream's request (an unrelated expectation) starts
    the next round, so the order of every stream's events is kept."""
    rounds: list[dict[str, _Group]] = [{}]
    for emit, item in pending:
        current = rounds[-1]
        group = current.get(emit.stream)
        if group is not None and not group.takes(emit):
            current = {}
            rounds.append(current)
            group = None
        if group is None:
            group = current[emit.stream] = _Group(emit.stream, emit.expected_version)
        group.emits.append(emit)
        group.items.append(item)
    return [list(r.values()) for r in rounds if r]


@dataclass(slots=True)
class _Envelope:
    kind: Literal["message", "event", "tick"]
    message: Message | None = None
    recorded: RecordedEvent | None = None
    due_at: datetime | None = None
    reply: MemoryObjectSendStream[tuple[bool, Any]] | None = None


@dataclass(eq=False)
class ActorRef:
    """How others talk to a running actor: ``tell`` and ``ask``."""

    name: str
    _accepts: tuple[type[msgspec.Struct], ...]
    _send: MemoryObjectSendStream[_Envelope] = field(repr=False)

    def _check(self, message: Message) -> None:
        if not isinstance(message, self._accepts):
            accepted = ", ".join(t.__name__ for t in self._accepts) or "no messages"
            raise TypeError(f"{self.name} accepts {accepted}, not {type(message).__name__}")

    async def tell(self, message: Message) -> None:
        """Deliver ``message``, waiting while the mailbox is full."""
        self._check(message)
        try:
            await self._send.send(_Envelope("message", message=message))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise ActorNotRunning(f"{self.name} is not running") from None

    def tell_nowait(self, message: Message) -> None:
        """Deliver ``message`` or raise MailboxFull at once."""
        self._check(message)
        try:
            self._send.send_nowait(_Envelope("message", message=message))
        except anyio.WouldBlock:
            raise MailboxFull(f"{self.name}'s mailbox is full") from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise ActorNotRunning(f"{self.name} is not running") from None

    async def ask(self, message: Message, *, timeout: float = 5.0) -> Any:
        """Deliver ``message`` and wait for the actor's reply (its ``reply()`` after the
        events were applied, or the error that handling raised)."""
        self._check(message)
        send, receive = anyio.create_memory_object_stream[tuple[bool, Any]](1)
        with send, receive:
            try:
                with anyio.fail_after(timeout):
                    await self._send.send(_Envelope("message", message=message, reply=send))
                    ok, value = await receive.receive()
            except TimeoutError:
                raise AskTimeout(f"{self.name} did not answer within {timeout}s") from None
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                raise ActorNotRunning(f"{self.name} stopped before answering") from None
        if not ok:
            raise value
        return value


def _answer(reply: MemoryObjectSendStream[tuple[bool, Any]] | None, ok: bool, value: Any) -> None:
    """Send an ask's answer; an asker that gave up (timed out) is no reason to crash."""
    if reply is None:
        return
    with (
        reply,
        contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.WouldBlock),
    ):
        reply.send_nowait((ok, value))


class ActorRunner(Generic[S]):
    """Runs one actor incarnation: recover, then process messages, events and ticks."""

    def __init__(
        self,
        actor: Actor[S],
        store: EventStore | MemoryLog,
        clock: Clock,
        *,
        node: str,
        fence: Fence | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.actor = actor
        self.store = store
        self.clock = clock
        self.node = node
        self.fence = fence
        self.rng = rng or environment.new_rng()
        self.state: S = actor.initial_state()
        self.cursor: Cursor = START  # the last event of the category folded into the state
        self.checkpoint: Cursor | None = None  # as stored
        self.processed = 0  # messages handled (statistics)
        self._folded_since_snapshot = 0
        self._own: set[uuid.UUID] = set()
        send, receive = anyio.create_memory_object_stream[_Envelope](actor.mailbox_size)
        self._send: MemoryObjectSendStream[_Envelope] = send
        self._receive: MemoryObjectReceiveStream[_Envelope] = receive
        self.ref = ActorRef(actor.name, actor.messages, send)
        self._unsaved_checkpoint: Cursor | None = None
        self._stopping = False
        self._waiting: anyio.CancelScope | None = None
        # I/O messages that reactions asked for, coalesced, with when the first was asked.
        self.stopping = anyio.Event()
        """Set when a graceful stop begins: background work should wind down and return."""
        self._background_done = anyio.Event()
        self._deferred: dict[Message, str | None] = {}  # and the trace that asked first
        self._deferred_since: float | None = None
        self._deferred_not_before = 0.0  # after an outage: not before this monotonic time
        # Reactions and messages that met an unreachable PostgreSQL, in a row.
        self._outage_failures = 0
        # A tick that met an unreachable PostgreSQL: its due time, and failures in a row.
        self._tick_retry: datetime | None = None
        self._tick_failures = 0
        self._tick_done = anyio.Event()  # the tick sent last has been handled

    @property
    def checkpoint_name(self) -> str:
        return streams.actor_stream(self.actor.name)

    @property
    def snapshot_stream(self) -> str:
        return streams.snapshot_stream(self.actor.name)

    @property
    def tick_stream(self) -> str:
        return streams.tick_stream(self.actor.name)

    def metadata(self, causation: uuid.UUID | None = None) -> EventMetadata:
        return EventMetadata(
            caused_by=f"actor:{self.actor.name}",
            node=self.node,
            causation_id=causation,
            traceparent=tracing.traceparent(),
        )

    # -- the incarnation ---------------------------------------------------------------------
    async def run(
        self,
        *,
        task_status: TaskStatus[ActorRef] = anyio.TASK_STATUS_IGNORED,
        gate: anyio.Event | None = None,
    ) -> None:
        """Recover, report started, then run until cancelled (or an error crashes it).

        With ``gate``, the incarnation gets ready ahead of its time: it recovers its state
        (the log read and folded), reports started, and waits for ``gate`` before it does
        anything of its own: reacting to the events past its checkpoint, ticks, messages
        (those told meanwhile wait in the mailbox). A supervisor restarting it after a
        backoff uses this to have its start recorded by the backoff's end."""
        async with contextlib.AsyncExitStack() as stack:
            stack.enter_context(self._send)
            stack.enter_context(self._receive)
            stack.callback(self._refuse_leftovers)
            await self.actor.setup(stack, self)
            pending = await self._recover()
            if gate is not None:
                task_status.started(self.ref)
                await gate.wait()
            await self._react_to(pending)
            if gate is None:
                task_status.started(self.ref)
            async with anyio.create_task_group() as tg:
                if self.actor.category is not None:
                    tg.start_soon(self._follow)
                if self.actor.tick is not None:
                    tg.start_soon(self._ticker, self.actor.tick)
                tg.start_soon(self._background)
                await self._process()
                # A graceful stop: background work winds down (a task processor finishes the
                # tasks in hand) for a moment; the supervisor's shutdown timeout still bounds it.
                self.stopping.set()
                with anyio.move_on_after(BACKGROUND_GRACE):
                    await self._background_done.wait()
                tg.cancel_scope.cancel()

    async def _recover(self) -> list[RecordedEvent]:
        """Fold the log into the state, up to the checkpoint; the events past it, to react to
        (:meth:`_react_to`)."""
        category = self.actor.category
        if category is None:
            return []
        self.checkpoint = await self.store.load_checkpoint(self.checkpoint_name)
        start = START
        if self.actor.snapshot_every and self.actor.state_type is not None:
            snapshot = await self.store.load_snapshot(self.snapshot_stream, self.actor.state_type)
            if snapshot is not None:
                position, state = snapshot
                snap_cursor = await self.store.cursor_at(position)
                if self.checkpoint is not None and snap_cursor <= self.checkpoint:
                    self.state, start = state, snap_cursor
        self.cursor = start
        pending: list[RecordedEvent] = []
        cursor = start
        while True:
            async for recorded in self.store.read_all(after=cursor, category=category):
                cursor = recorded.cursor
                if self.checkpoint is not None and recorded.cursor <= self.checkpoint:
                    self._fold(recorded)
                else:
                    pending.append(recorded)
            # Committed events behind an older open transaction: wait for them, so that
            # "started" really means caught up.
            if not await self.store.held_back(cursor, category):
                break
            await anyio.sleep(0.01)
        return pending

    async def _react_to(self, pending: list[RecordedEvent]) -> None:
        """Events past the checkpoint were never reacted to: do it now, before anything else
        (except our own: we never react to what we wrote ourselves)."""
        if self.actor.category is None:
            return
        mine = f"actor:{self.actor.name}"
        for recorded in pending:
            if recorded.metadata.caused_by == mine:
                self._fold(recorded)
                self._unsaved_checkpoint = recorded.cursor
            else:
                await self._on_event(recorded)
        await self._flush_checkpoint()

    async def _follow(self) -> None:
        async with self.store.subscribe(
            category=self.actor.category, after=self.cursor, poll_interval=1.0
        ) as subscription:
            async for recorded in subscription:
                if recorded.event_id in self._own:
                    self._own.discard(recorded.event_id)
                    continue
                await self._send.send(_Envelope("event", recorded=recorded))

    async def _last_due(self) -> datetime | None:
        """When the last tick recorded was due: from the tick schedule, or, for an actor that
        has none yet, from the last ``ActorTicked`` of its tick stream (logs written before
        the schedule left the log), so that the deploy bringing it in keeps the schedule."""
        record = await self.store.load_tick(self.actor.name)
        if record is not None:
            return record.due_at
        last = await self.store.last_event(self.tick_stream, skip_unknown=True)
        if last is not None and isinstance(last.event, ActorTicked):
            return last.event.due_at
        return None

    async def _ticker(self, spec: TickSpec) -> None:
        last_due = await self._last_due()
        while True:
            if self._tick_retry is not None:
                # The last tick met an unreachable database: run it again, soon.
                due, self._tick_retry = self._tick_retry, None
                delay = min(
                    TICK_RETRY_MIN * 2 ** (self._tick_failures - 1), TICK_RETRY_MAX, spec.interval
                )
            else:
                now = self.clock.now()
                due = next_tick_due(spec, last_due, now)
                delay = (due - now).total_seconds() + self.rng.uniform(0, spec.jitter)
            await self.clock.sleep(delay)
            await self._send.send(_Envelope("tick", due_at=due))
            last_due = due
            # One tick at a time: a tick that outlasts its interval (a hung outside service)
            # is followed by one catch-up tick (or the next slot, with "skip"), not a burst of
            # the ticks that fell due meanwhile.
            await self._tick_done.wait()
            self._tick_done = anyio.Event()

    async def _process(self) -> None:
        while not self._stopping:
            if self._deferred_due():
                await self._run_deferred()
                continue
            # Only the wait for the next envelope can be interrupted by a graceful stop: a
            # message being handled is finished (or the supervisor cancels it after the
            # shutdown timeout, and then nothing of it was applied).
            envelope: _Envelope | None = None
            # With reactions' I/O pending, wake up for it within a second however quiet it is.
            patience = 1.0 if self._deferred else math.inf
            with anyio.CancelScope() as self._waiting, anyio.move_on_after(patience):
                envelope = await self._receive.receive()
            self._waiting = None
            if envelope is None:  # a graceful stop, or the deferred I/O is due
                continue
            if envelope.kind == "event":
                assert envelope.recorded is not None
                await self._on_event(envelope.recorded)
            elif envelope.kind == "tick":
                assert envelope.due_at is not None
                await self._on_tick(envelope.due_at)
                self._tick_done.set()
            else:
                assert envelope.message is not None
                await self._on_message(envelope.message, envelope.reply)
            idle = self._receive.statistics().current_buffer_used == 0
            if self._unsaved_checkpoint is not None and idle:
                await self._flush_checkpoint()
        await self._flush_checkpoint()

    def _refuse_leftovers(self) -> None:
        """Whoever still waits on an answer hears now that none is coming: after a graceful
        stop, and after a crash too (an ask queued behind the event that crashed it)."""
        while True:
            try:
                left = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            _answer(left.reply, False, ActorNotRunning(f"{self.actor.name} stopped"))

    async def _background(self) -> None:
        try:
            await self.actor.background(self)
        finally:
            self._background_done.set()

    def _deferred_due(self) -> bool:
        if not self._deferred or self._deferred_since is None:
            return False
        if self.clock.monotonic() < self._deferred_not_before:
            return False  # an outage's backoff
        idle = self._receive.statistics().current_buffer_used == 0
        return idle or self.clock.monotonic() - self._deferred_since >= 1.0

    async def _run_deferred(self) -> None:
        pending = list(self._deferred.items())
        self._deferred.clear()
        self._deferred_since = None
        for message, trace in pending:
            name = f"{self.actor.name} perform {type(message).__name__}"
            with tracing.span(name, parent=trace, attributes={"i3lani.actor": self.actor.name}):
                await self._on_message(message, None)

    def request_stop(self) -> None:
        """Stop after the message in hand (graceful stop); ``run`` then returns."""
        self._stopping = True
        if self._waiting is not None:
            self._waiting.cancel()

    # -- handling ----------------------------------------------------------------------------
    def _fold(self, recorded: RecordedEvent) -> None:
        self.state = self.actor.evolve(self.state, recorded)
        self.cursor = max(self.cursor, recorded.cursor)
        self._folded_since_snapshot += 1

    async def _on_event(self, recorded: RecordedEvent) -> None:
        with tracing.span(
            f"{self.actor.name} react {recorded.type}",
            parent=recorded.metadata.traceparent,
            attributes={
                "i3lani.actor": self.actor.name,
                "i3lani.stream": recorded.stream,
                "i3lani.event.type": recorded.type,
                "i3lani.position": recorded.position,
            },
        ):
            await self._react(recorded)
        await self._maybe_snapshot()

    async def _react(self, recorded: RecordedEvent) -> None:
        self._fold(recorded)
        emits: list[Emit] = []
        for message in self.actor.react(self.state, recorded):
            if isinstance(message, self.actor.io_messages):
                if not self._deferred:
                    self._deferred_since = self.clock.monotonic()
                # Coalesced: the message runs once, in the trace of the first event that asked.
                if self._deferred.get(message) is None:
                    self._deferred[message] = tracing.traceparent()
                continue
            emits.extend(self.actor.decide(self.state, message))
        if emits:
            await self._commit_reaction(emits, recorded)
        else:
            self._unsaved_checkpoint = recorded.cursor

    async def _commit_reaction(self, emits: Sequence[Emit], recorded: RecordedEvent) -> None:
        """Commit a reaction's ``emits`` with the checkpoint past ``recorded``; while PostgreSQL
        is unreachable (a restart, a failover, or this node's session ended by a limit of
        :mod:`store.limits` after a stall), try again with backoff instead of crashing.

        The event is folded already and the reaction decided: only the commit is tried again.
        The checkpoint moves in the same transaction as the events, so an attempt whose
        acknowledgement was lost (it committed) shows as the checkpoint already past
        ``recorded``: then nothing is appended again (the events come back through the
        subscription, as anyone's). A graceful stop during the outage ends the runner with
        the error: the checkpoint did not move past the event, so the next incarnation
        reacts to it again.
        """
        retry = False
        while True:
            try:
                if retry:
                    stored = await self.store.load_checkpoint(self.checkpoint_name)
                    if stored is not None and stored >= recorded.cursor:
                        self.checkpoint = stored
                        self._unsaved_checkpoint = None
                        self._outage_failures = 0
                        return
                await self._commit(emits, causation=recorded.event_id, checkpoint=recorded.cursor)
            except StoreUnavailable as exc:
                if self._stopping:
                    raise
                delay = self._outage_backoff()
                logger.warning(
                    "%s: reaction to %s at %s not committed, the database is unreachable (%s);"
                    " trying again in %.0f s",
                    self.actor.name,
                    recorded.type,
                    recorded.position,
                    exc,
                    delay,
                    extra={"action": "actor_reaction_retry"},
                )
                with anyio.CancelScope() as self._waiting:
                    await self.clock.sleep(delay)
                self._waiting = None
                retry = True
                continue
            self._outage_failures = 0
            return

    def _outage_backoff(self) -> float:
        """Seconds before the next try after a failure that met an unreachable PostgreSQL."""
        self._outage_failures += 1
        delay: float = TICK_RETRY_MIN * 2.0 ** (self._outage_failures - 1)
        return min(delay, TICK_RETRY_MAX)

    async def _on_message(
        self, message: Message, reply: MemoryObjectSendStream[tuple[bool, Any]] | None
    ) -> None:
        self.processed += 1
        try:
            emits: list[Emit]
            if isinstance(message, self.actor.io_messages):
                emits = []
                for result in await self.actor.perform(self.state, message, self):
                    emits.extend(self.actor.decide(self.state, result))
            else:
                emits = list(self.actor.decide(self.state, message))
            if emits:
                await self._commit(emits)
            answer = self.actor.reply(self.state, message)
        except (ConcurrencyConflict, EventIdReused, StaleGeneration) as exc:
            # The decision met a log that moved under it: the state is unchanged; say so.
            logger.warning("%s: %s", self.actor.name, exc, extra={"action": "actor_append_refused"})
            _answer(reply, False, exc)
            if isinstance(exc, StaleGeneration):
                raise  # another incarnation owns this actor now: this one must end
            return
        except StoreUnavailable as exc:
            # PostgreSQL is unreachable (or ended this node's session after a stall): nothing
            # of the message was applied, and restarting the actor would not bring the
            # database back. The asker hears the error; a reaction's I/O is asked again.
            _answer(reply, False, exc)
            self._message_failed(message, reply is None, exc)
            return
        except Exception as exc:
            _answer(reply, False, exc)
            raise
        self._outage_failures = 0
        _answer(reply, True, answer)

    def _message_failed(self, message: Message, deferred: bool, error: StoreUnavailable) -> None:
        delay = self._outage_backoff()
        again = deferred and isinstance(message, self.actor.io_messages)
        logger.warning(
            "%s: %s not handled, the database is unreachable (%s)%s",
            self.actor.name,
            type(message).__name__,
            error,
            f"; trying again in {delay:.0f} s" if again else "",
            extra={"action": "actor_message_refused"},
        )
        if again:
            now = self.clock.monotonic()
            self._deferred.setdefault(message, tracing.traceparent())
            if self._deferred_since is None:
                self._deferred_since = now
            self._deferred_not_before = now + delay

    async def _on_tick(self, due_at: datetime) -> None:
        try:
            messages = await self.actor.on_tick(self.state, self)
        except StoreUnavailable as exc:
            self._tick_failed(due_at, exc)
            return
        emits: list[Emit] = []
        for message in messages:
            emits.extend(self.actor.decide(self.state, message))
        tick = (due_at, self.clock.now())
        try:
            if emits:
                await self._commit(emits, tick=tick)
            else:
                # Nothing changed: the schedule moves on, the log gets nothing.
                await self.store.save_tick(self.actor.name, *tick, node=self.node, fence=self.fence)
        except StoreUnavailable as exc:
            self._tick_failed(due_at, exc)
            return
        except (ConcurrencyConflict, EventIdReused) as exc:
            # Another writer got there first (a second node during a deploy overlap): nothing
            # of this tick was applied; the next one decides again on what is then in the log.
            logger.warning(
                "%s: tick not recorded: %s",
                self.actor.name,
                exc,
                extra={"action": "actor_tick_refused"},
            )
        self._tick_failures = 0

    def _tick_failed(self, due_at: datetime, error: StoreUnavailable) -> None:
        """PostgreSQL is unreachable (a restart, a failover): nothing of the tick due at
        ``due_at`` was applied. An outage is not a crash (restarting the actor would not bring
        the database back sooner): the ticker, waiting for this tick to end, runs it again
        after a backoff."""
        self._tick_failures += 1
        self._tick_retry = due_at
        logger.warning(
            "%s: tick not done, the database is unreachable (%s); trying again (attempt %d)",
            self.actor.name,
            error,
            self._tick_failures + 1,
            extra={"action": "actor_tick_refused"},
        )

    async def _commit(
        self,
        emits: Sequence[Emit],
        *,
        causation: uuid.UUID | None = None,
        checkpoint: Cursor | None = None,
        tick: tuple[datetime, datetime] | None = None,
    ) -> None:
        """Append ``emits`` (and move the checkpoint, and record the tick ``(due_at,
        ticked_at)`` that decided them) in one transaction, then apply them.

        Emits with a derived ``event_id`` that is already stored (a retry after a crash) are
        not appended again, nor applied twice.
        """
        metadata = self.metadata(causation)
        items = [
            NewEvent(event=e.event, event_id=e.event_id or environment.new_uuid()) for e in emits
        ]
        # Known as ours before the subscription can possibly deliver them.
        ours = {
            item.event_id
            for emit, item in zip(emits, items, strict=True)
            if self._in_category(emit.stream)
        }
        # Only ids not already awaited from the subscription are ours to take back below (a
        # retry of an append whose event is still on its way must not forget it).
        fresh = ours - self._own
        self._own.update(fresh)
        applied: list[RecordedEvent] = []
        try:
            async with self.store.transaction() as tx:
                derived = [e.event_id for e in emits if e.event_id is not None]
                stored = await tx.stored_ids(derived) if derived else set()
                pending = [
                    (emit, item)
                    for emit, item in zip(emits, items, strict=True)
                    if item.event_id not in stored  # appended by an earlier attempt: folded then
                ]
                appended = [emit for emit, _ in pending]
                for batch in _rounds(pending):
                    landed = await tx.append_many(
                        [
                            Append(
                                group.stream,
                                group.items,
                                expected_version=group.expected,
                                metadata=metadata,
                                fence=self.fence,
                            )
                            for group in batch
                        ]
                    )
                    for group, positions in zip(batch, landed, strict=True):
                        for emit, where in zip(group.emits, positions, strict=True):
                            tag = self.store.registry.tag_of(emit.event)
                            tracing.note_appended(group.stream, tag, where.position)
                        if not self._in_category(group.stream):
                            continue
                        for emit, item, where in zip(
                            group.emits, group.items, positions, strict=True
                        ):
                            applied.append(
                                RecordedEvent(
                                    position=where.position,
                                    transaction_id=where.transaction_id,
                                    event_id=item.event_id,
                                    stream=emit.stream,
                                    version=where.version,
                                    type=self.store.registry.tag_of(emit.event),
                                    schema_version=type(emit.event).schema_version,
                                    event=emit.event,
                                    metadata=metadata,
                                    recorded_at=where.recorded_at,
                                )
                            )
                if appended:
                    await self.actor.on_commit(tx, appended)
                if checkpoint is not None:
                    await tx.save_checkpoint(
                        self.checkpoint_name, checkpoint, expected=self.checkpoint, fence=self.fence
                    )
                if tick is not None:
                    await tx.save_tick(self.actor.name, *tick, node=self.node, fence=self.fence)
        except BaseException:
            self._own.difference_update(fresh)
            raise
        self._own.difference_update(fresh - {r.event_id for r in applied})
        # Committed: now, and only now, the state moves.
        if checkpoint is not None:
            self.checkpoint = checkpoint
            self._unsaved_checkpoint = None
        # In log order (a batch groups each stream's events together).
        for recorded in sorted(applied, key=lambda r: r.position):
            self._fold(recorded)

    async def _flush_checkpoint(self) -> None:
        cursor = self._unsaved_checkpoint
        if cursor is None or self.actor.category is None:
            return
        await self.store.save_checkpoint(
            self.checkpoint_name, cursor, expected=self.checkpoint, fence=self.fence
        )
        self.checkpoint = cursor
        self._unsaved_checkpoint = None

    async def _maybe_snapshot(self) -> None:
        every = self.actor.snapshot_every
        if not every or self._folded_since_snapshot < every or self.actor.state_type is None:
            return
        if self.checkpoint is None or self.cursor > self.checkpoint:
            await self._flush_checkpoint()
        state = self.state
        if isinstance(state, msgspec.Struct):
            await self.store.save_snapshot(self.snapshot_stream, self.cursor.position, state)
            self._folded_since_snapshot = 0

    def _in_category(self, stream: str) -> bool:
        return self.actor.category is not None and stream.split("-", 1)[0] == self.actor.category
