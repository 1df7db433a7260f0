"""Actor snapshots: recovery starts from the last snapshot and folds only what came after."""

from __future__ import annotations

from typing import ClassVar

import anyio
import msgspec

from actors.runtime import Actor, ActorRunner, SystemClock
from events import Event
from store import EventStore, RecordedEvent
from tests.actors.test_runtime import register, running


@register
class TallyAdded(Event, frozen=True, tag="SnapshotTestTallyAdded"):
    amount: int


class Tally(msgspec.Struct, frozen=True):
    total: int = 0
    events: int = 0


class Tallier(Actor[Tally]):
    """Sums the tally category; counts its own evolve calls to show what recovery folded."""

    name: ClassVar[str] = "Tallier"
    category: ClassVar[str | None] = "tally"
    snapshot_every: ClassVar[int | None] = 4
    state_type: ClassVar[object] = Tally

    def __init__(self) -> None:
        self.folded = 0

    def initial_state(self) -> Tally:
        return Tally()

    def evolve(self, state: Tally, recorded: RecordedEvent) -> Tally:
        self.folded += 1
        assert isinstance(recorded.event, TallyAdded)
        return Tally(total=state.total + recorded.event.amount, events=state.events + 1)


async def test_recovery_starts_from_the_snapshot(store: EventStore) -> None:
    first = Tallier()
    runner = ActorRunner(first, store, SystemClock(), node="n1")
    async with running(runner):
        for n in range(1, 11):
            await store.append(f"tally-{n % 3}", [TallyAdded(amount=n)])
        for _ in range(500):  # the subscription delivers them within a few milliseconds
            if runner.state.events == 10:
                break
            await anyio.sleep(0.02)
    assert runner.state == Tally(total=55, events=10)
    snapshot = await store.load_snapshot("snapshot-actor-Tallier", Tally)
    assert snapshot is not None
    _, state = snapshot
    assert state.events >= 4  # taken after at least snapshot_every events

    second = Tallier()
    recovered = ActorRunner(second, store, SystemClock(), node="n1")
    async with running(recovered):
        assert recovered.state == Tally(total=55, events=10)  # the same state...
    # ...folding only the events after the snapshot.
    assert second.folded == 10 - state.events
    assert second.folded < 10


async def test_a_snapshot_of_another_shape_is_ignored_and_the_log_replayed(
    store: EventStore,
) -> None:
    class OldShape(msgspec.Struct, frozen=True):
        something: str

    for n in range(1, 6):
        await store.append("tally-1", [TallyAdded(amount=n)])
    await store.save_snapshot("snapshot-actor-Tallier", 3, OldShape(something="stale"))
    actor = Tallier()
    runner = ActorRunner(actor, store, SystemClock(), node="n1")
    async with running(runner):
        assert runner.state == Tally(total=15, events=5)
    assert actor.folded == 5
