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
* **Ticks**, when :attr:`Actor.tick` is set: each run is recorded as an ``ActorTicked`` event in
  the same transaction as its effects, and the next one is scheduled from the last one recorded,
  so a restart or a deploy neither skips nor doubles a due run.

Messages are processed one at a time, in arrival order. Time comes from an injected
:class:`~actors.clock.Clock`.
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

from actors.clock import Clock
from events import ActorTicked, Event, EventMetadata
from events.errors import ConcurrencyConflict, EventIdReused, StaleGeneration
from store import ANY, START, Cursor, EventStore, Expected, Fence, NewEvent, RecordedEvent

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

logger = logging.getLogger(__name__)

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
    tick: ClassVar[TickSpec | None] = None
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
        store: EventStore,
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
        self.rng = rng or random.Random()
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

    @property
    def checkpoint_name(self) -> str:
        return f"actor-{self.actor.name}"

    @property
    def snapshot_stream(self) -> str:
        return f"snapshot-actor-{self.actor.name}"

    @property
    def tick_stream(self) -> str:
        return f"tick-{self.actor.name}"

    def metadata(self, causation: uuid.UUID | None = None) -> EventMetadata:
        return EventMetadata(
            caused_by=f"actor:{self.actor.name}", node=self.node, causation_id=causation
        )

    # -- the incarnation ---------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[ActorRef] = anyio.TASK_STATUS_IGNORED) -> None:
        """Recover, report started, then run until cancelled (or an error crashes it)."""
        with self._send, self._receive:
            await self._recover()
            task_status.started(self.ref)
            async with anyio.create_task_group() as tg:
                if self.actor.category is not None:
                    tg.start_soon(self._follow)
                if self.actor.tick is not None:
                    tg.start_soon(self._ticker, self.actor.tick)
                await self._process()
                tg.cancel_scope.cancel()

    async def _recover(self) -> None:
        category = self.actor.category
        if category is None:
            return
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
        # Events past the checkpoint were never reacted to: do it now, before reporting started
        # (except our own: we never react to what we wrote ourselves).
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

    async def _ticker(self, spec: TickSpec) -> None:
        last = await self.store.last_event(self.tick_stream)
        last_due = None
        if last is not None:
            assert isinstance(last.event, ActorTicked)
            last_due = last.event.due_at
        while True:
            now = self.clock.now()
            due = next_tick_due(spec, last_due, now)
            delay = (due - now).total_seconds() + self.rng.uniform(0, spec.jitter)
            await self.clock.sleep(delay)
            await self._send.send(_Envelope("tick", due_at=due))
            last_due = due

    async def _process(self) -> None:
        while not self._stopping:
            # Only the wait for the next envelope can be interrupted by a graceful stop: a
            # message being handled is finished (or the supervisor cancels it after the
            # shutdown timeout, and then nothing of it was applied).
            envelope: _Envelope | None = None
            with anyio.CancelScope() as self._waiting:
                envelope = await self._receive.receive()
            self._waiting = None
            if envelope is None:  # a graceful stop interrupted the wait
                break
            if envelope.kind == "event":
                assert envelope.recorded is not None
                await self._on_event(envelope.recorded)
            elif envelope.kind == "tick":
                assert envelope.due_at is not None
                await self._on_tick(envelope.due_at)
            else:
                assert envelope.message is not None
                await self._on_message(envelope.message, envelope.reply)
            idle = self._receive.statistics().current_buffer_used == 0
            if self._unsaved_checkpoint is not None and idle:
                await self._flush_checkpoint()
        await self._flush_checkpoint()
        # Whoever still waits on an answer hears now that none is coming.
        while True:
            try:
                left = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
            _answer(left.reply, False, ActorNotRunning(f"{self.actor.name} stopped"))

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
        self._fold(recorded)
        emits: list[Emit] = []
        for message in self.actor.react(self.state, recorded):
            emits.extend(self.actor.decide(self.state, message))
        if emits:
            await self._commit(emits, causation=recorded.event_id, checkpoint=recorded.cursor)
        else:
            self._unsaved_checkpoint = recorded.cursor
        await self._maybe_snapshot()

    async def _on_message(
        self, message: Message, reply: MemoryObjectSendStream[tuple[bool, Any]] | None
    ) -> None:
        self.processed += 1
        try:
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
        except Exception as exc:
            _answer(reply, False, exc)
            raise
        _answer(reply, True, answer)

    async def _on_tick(self, due_at: datetime) -> None:
        messages = await self.actor.on_tick(self.state, self)
        emits: list[Emit] = []
        for message in messages:
            emits.extend(self.actor.decide(self.state, message))
        tick = Emit(
            self.tick_stream,
            ActorTicked(actor=self.actor.name, due_at=due_at, ticked_at=self.clock.now()),
        )
        await self._commit([*emits, tick])

    async def _commit(
        self,
        emits: Sequence[Emit],
        *,
        causation: uuid.UUID | None = None,
        checkpoint: Cursor | None = None,
    ) -> None:
        """Append ``emits`` (and move the checkpoint) in one transaction, then apply them.

        Emits with a derived ``event_id`` that is already stored (a retry after a crash) are
        not appended again, nor applied twice.
        """
        metadata = self.metadata(causation)
        items = [NewEvent(event=e.event, event_id=e.event_id or uuid.uuid4()) for e in emits]
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
                for emit, item in zip(emits, items, strict=True):
                    if item.event_id in stored:
                        continue  # appended by an earlier attempt: already folded then
                    result = await tx.append(
                        emit.stream,
                        [item],
                        expected_version=emit.expected_version,
                        metadata=metadata,
                        fence=self.fence,
                    )
                    if self._in_category(emit.stream) and not result.duplicate:
                        applied.append(
                            RecordedEvent(
                                position=result.first_position,
                                transaction_id=result.transaction_id,
                                event_id=item.event_id,
                                stream=emit.stream,
                                version=result.first_version,
                                type=self.store.registry.tag_of(emit.event),
                                schema_version=type(emit.event).schema_version,
                                event=emit.event,
                                metadata=metadata,
                                recorded_at=result.recorded_at,
                            )
                        )
                if checkpoint is not None:
                    await tx.save_checkpoint(
                        self.checkpoint_name, checkpoint, expected=self.checkpoint
                    )
        except BaseException:
            self._own.difference_update(fresh)
            raise
        self._own.difference_update(fresh - {r.event_id for r in applied})
        # Committed: now, and only now, the state moves.
        if checkpoint is not None:
            self.checkpoint = checkpoint
            self._unsaved_checkpoint = None
        for recorded in applied:
            self._fold(recorded)

    async def _flush_checkpoint(self) -> None:
        cursor = self._unsaved_checkpoint
        if cursor is None or self.actor.category is None:
            return
        await self.store.save_checkpoint(self.checkpoint_name, cursor, expected=self.checkpoint)
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
