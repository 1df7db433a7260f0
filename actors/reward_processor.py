"""RewardProcessor: credits each earned reward to the user's TON balance, exactly once.

Every ``I3LANI_REWARD_INTERVAL`` seconds (5 min by default) the processor enqueues a
``reward_distribution`` task for each ``RewardEarned`` that is neither credited nor failed
(the task's dedupe key is the reward id, so enqueueing again while one waits is a no-op).
Its own task processor runs those tasks (:meth:`RewardProcessor.credit`):

* the user's stream ``user-<id>`` is read, the balance is the sum of its credits;
* ``RewardCredited`` is appended with the stream's exact expected version and an event id
  derived from the reward id. Whatever instant the process is killed at, the append either
  happened or not: a re-run finds the credit (by id) and stops; two runners racing on one user
  meet a version conflict, re-read and find it. The database's unique event id is the last word,
  so a reward is credited **exactly once**;
* a credit that would take the balance over ``I3LANI_MAX_BALANCE`` is refused
  (:class:`RewardRefused`); the queue retries a failing task 3 times with exponential backoff
  and jitter; on the last attempt ``RewardFailed`` (with the error and the number of attempts)
  is appended first and the task is dead-lettered, left for an operator
  (``i3lani status`` shows dead letters).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Final

import msgspec

from actors.config import Settings
from actors.runtime import Actor, ActorRunner, TickSpec
from actors.tasks import (
    REWARD_DISTRIBUTION,
    RewardDistribution,
    serve_tasks,
    task_types,
)
from actors.ton import format_ton
from events import EventMetadata, RewardCredited, RewardEarned, RewardFailed
from events.errors import ConcurrencyConflict, EventIdReused, I3laniError
from events.streams import USER, user_stream
from store import NewEvent, RecordedEvent
from store.tasks import NewTask, TaskContext, TaskQueue, error_line

__all__ = ["RewardProcessor", "RewardState", "RewardRefused", "credit_event_id", "failure_event_id"]

logger = logging.getLogger(__name__)

_NAMESPACE: Final = uuid.UUID("9e8a4f47-21c4-4a57-b0d6-3f5c2a7e9d10")
CONFLICT_RETRIES: Final = 8
ENQUEUE_BATCH: Final = 1000  # tasks per add_tasks statement


def credit_event_id(reward_id: uuid.UUID) -> uuid.UUID:
    """The one id a reward's ``RewardCredited`` can have."""
    return uuid.uuid5(_NAMESPACE, f"RewardCredited/{reward_id}")


def failure_event_id(reward_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"RewardFailed/{reward_id}")


class RewardRefused(I3laniError):
    """A credit the rules refuse (over the balance cap): retried, then RewardFailed."""


@dataclass(slots=True)
class RewardView:
    reward_id: uuid.UUID
    user_id: int
    amount_nanotons: int


@dataclass(slots=True)
class RewardState:
    """The fold of the ``user`` category (updated in place; see PaymentMonitor's note)."""

    pending: dict[uuid.UUID, RewardView] = field(default_factory=dict)
    balances: dict[int, int] = field(default_factory=dict)
    credited: int = 0
    failed: int = 0


class RewardProcessor(Actor[RewardState]):
    """Credits rewards exactly once (see the module docstring)."""

    name: ClassVar[str] = "RewardProcessor"
    category: ClassVar[str | None] = USER

    def __init__(self, settings: Settings, *, concurrency: int = 4) -> None:
        self.settings = settings
        self.tick = TickSpec(interval=settings.reward_interval, missed="run_once")
        self.concurrency = concurrency
        self.queue: TaskQueue | None = None
        self.runner: ActorRunner[RewardState] | None = None

    def initial_state(self) -> RewardState:
        return RewardState()

    async def setup(
        self, stack: contextlib.AsyncExitStack, runner: ActorRunner[RewardState]
    ) -> None:
        self.queue = TaskQueue(runner.store, task_types(self.settings), node=runner.node)
        self.runner = runner

    # -- pure --------------------------------------------------------------------------------
    def evolve(self, state: RewardState, recorded: RecordedEvent) -> RewardState:
        event = recorded.event
        match event:
            case RewardEarned():
                state.pending[event.reward_id] = RewardView(
                    event.reward_id, event.user_id, event.amount_nanotons
                )
            case RewardCredited():
                state.pending.pop(event.reward_id, None)
                state.balances[event.user_id] = event.balance_after_nanotons
                state.credited += 1
            case RewardFailed():
                state.pending.pop(event.reward_id, None)
                state.failed += 1
        return state

    # -- I/O ---------------------------------------------------------------------------------
    async def on_tick(
        self, state: RewardState, runner: ActorRunner[RewardState]
    ) -> Sequence[msgspec.Struct]:
        assert self.queue is not None
        tasks = [
            NewTask(
                REWARD_DISTRIBUTION,
                RewardDistribution(
                    reward_id=reward.reward_id,
                    user_id=reward.user_id,
                    amount_nanotons=reward.amount_nanotons,
                ),
                dedupe_key=f"reward-{reward.reward_id}",
            )
            for reward in state.pending.values()
        ]
        for start in range(0, len(tasks), ENQUEUE_BATCH):
            await self.queue.add_tasks(tasks[start : start + ENQUEUE_BATCH], fence=runner.fence)
        return ()

    async def background(self, runner: ActorRunner[RewardState]) -> None:
        await serve_tasks(
            runner, self.settings, REWARD_DISTRIBUTION, self.credit, concurrency=self.concurrency
        )

    async def credit(self, reward: RewardDistribution, context: TaskContext) -> None:
        """The ``reward_distribution`` handler: credit one reward, exactly once."""
        try:
            await self._credit(reward)
        except Exception as exc:
            # The last attempt failed, whatever the reason: record it for the operator (the
            # queue dead-letters the task), so that the reward stops counting as pending.
            if context.attempt >= context.max_attempts:
                await self._record_failure(reward, error_line(exc), context.attempt)
            raise

    async def _credit(self, reward: RewardDistribution) -> None:
        assert self.runner is not None
        runner = self.runner
        store = runner.store
        stream = user_stream(reward.user_id)
        credit_id = credit_event_id(reward.reward_id)
        for _ in range(CONFLICT_RETRIES):
            events = await store.read_stream(stream, skip_unknown=True)
            balance = 0
            earned = False
            for recorded in events:
                event = recorded.event
                if isinstance(event, RewardCredited):
                    if event.reward_id == reward.reward_id:
                        return  # credited before (by an earlier attempt): nothing to do
                    balance += event.amount_nanotons
                elif isinstance(event, RewardFailed) and event.reward_id == reward.reward_id:
                    return  # given up on and left for an operator
                elif isinstance(event, RewardEarned) and event.reward_id == reward.reward_id:
                    earned = True
            if not earned:
                raise RewardRefused(f"reward {reward.reward_id} was never earned by {stream}")
            after = balance + reward.amount_nanotons
            if after > self.settings.max_balance_nanotons:
                raise RewardRefused(
                    f"crediting {format_ton(reward.amount_nanotons)} TON would take user "
                    f"{reward.user_id} to {format_ton(after)} TON, over the "
                    f"{format_ton(self.settings.max_balance_nanotons)} TON cap"
                )
            version = events[-1].version if events else 0
            credited = RewardCredited(
                reward_id=reward.reward_id,
                user_id=reward.user_id,
                amount_nanotons=reward.amount_nanotons,
                balance_after_nanotons=after,
                credited_at=runner.clock.now(),
            )
            try:
                await store.append(
                    stream,
                    [NewEvent(event=credited, event_id=credit_id)],
                    expected_version=version,
                    metadata=self._metadata(),
                    fence=runner.fence,
                )
            except (ConcurrencyConflict, EventIdReused):
                continue  # someone wrote to this user meanwhile: read again
            return
        raise RewardRefused(f"{stream} kept changing during {CONFLICT_RETRIES} attempts")

    async def _record_failure(self, reward: RewardDistribution, error: str, attempts: int) -> None:
        assert self.runner is not None
        runner = self.runner
        failed = RewardFailed(
            reward_id=reward.reward_id,
            user_id=reward.user_id,
            error=error[:500] or "failed",
            attempts=attempts,
            failed_at=runner.clock.now(),
        )
        await runner.store.append(
            user_stream(reward.user_id),
            [NewEvent(event=failed, event_id=failure_event_id(reward.reward_id))],
            metadata=self._metadata(),
            fence=runner.fence,
        )
        logger.error(
            "reward %s for user %s failed after %d attempts: %s",
            reward.reward_id,
            reward.user_id,
            attempts,
            error,
            extra={"action": "reward_failed"},
        )

    def _metadata(self) -> EventMetadata:
        assert self.runner is not None
        return self.runner.metadata()
