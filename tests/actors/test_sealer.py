"""The Sealer on the in-memory log: seals every event once, in a chain, whatever restarts, races
or lost acknowledgements it meets, and sends each digest to the admins in the same commit."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from actors.config import Settings, load_settings
from actors.runtime import ActorRunner, TickSpec
from actors.runtime.clock import ManualClock
from actors.sealer import SEAL_STREAM, Sealer, SealsComputed, digest_text, seal_event_id
from actors.tasks import ADMIN_ALERT, AdminAlert, task_types
from events import LogSealed, PaymentExpired
from events.errors import ConcurrencyConflict, ConfigError, StaleGeneration, StoreUnavailable
from store import Fence
from store.memory import MemoryLog
from store.sealing import MAX_EVENTS_PER_SEAL, SealDigest, verify_seals
from store.tasks import TaskContext, TaskProcessor, TaskQueue
from tests.waiting import eventually

pytestmark = pytest.mark.memory

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
INTERVAL = 60.0
SETTINGS = Settings(seal_interval=INTERVAL)


async def append_events(log: MemoryLog, first: int, count: int) -> None:
    for n in range(first, first + count):
        await log.append(f"payment-{n}", [PaymentExpired(payment_id=n, expired_at=NOW)])


async def seals(log: MemoryLog) -> list[LogSealed]:
    return [r.event for r in await log.read_stream(SEAL_STREAM) if isinstance(r.event, LogSealed)]


async def sealed_through(log: MemoryLog, count: int) -> bool:
    """Whether the seals cover ``count`` events or more."""
    found = await seals(log)
    return bool(found) and found[-1].total >= count


@contextlib.asynccontextmanager
async def sealer(
    log: MemoryLog,
    *,
    settings: Settings = SETTINGS,
    clock: ManualClock | None = None,
    fence: Fence | None = None,
    max_events_per_run: int = 10 * MAX_EVENTS_PER_SEAL,
) -> AsyncIterator[ActorRunner[None]]:
    actor = Sealer(settings, max_events_per_run=max_events_per_run)
    runner = ActorRunner(actor, log, clock or ManualClock(NOW), node="n1", fence=fence)
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        yield runner
        tg.cancel_scope.cancel()


async def test_each_tick_seals_what_came_since_the_last_seal_in_a_chain() -> None:
    log = MemoryLog()
    clock = ManualClock(NOW)
    await append_events(log, 1, 25)
    async with sealer(log, clock=clock):
        await eventually(lambda: sealed_through(log, 25))  # the first tick runs at start
        await append_events(log, 100, 10)
        await clock.wait_for_sleepers(1)
        await clock.advance(INTERVAL)
        await eventually(lambda: sealed_through(log, 25 + 10 + 1))
    first, second = await seals(log)
    assert (first.seal, first.count, first.total) == (1, 25, 25)
    assert first.previous_hash == "0" * 64
    assert first.positions == [(1, 25)]
    # The second covers the ten new events and the first seal's own commit (the seal alone:
    # a tick's schedule is kept beside the log, not in it).
    assert (second.seal, second.count) == (2, 11)
    assert second.previous_hash == first.hash
    assert (second.after_transaction_id, second.after_position) == (
        first.last_transaction_id,
        first.last_position,
    )
    stored = await log.read_stream(SEAL_STREAM)
    assert [r.version for r in stored] == [1, 2]
    assert [r.event_id for r in stored] == [seal_event_id(first), seal_event_id(second)]
    report = await verify_seals(log, against=SealDigest.of(second))
    assert report.clean, report.findings
    assert (report.seals, report.digest_matched) == (2, True)


async def test_an_empty_log_gets_no_seal() -> None:
    log = MemoryLog()
    clock = ManualClock(NOW)
    async with sealer(log, clock=clock):
        await clock.wait_for_sleepers(1)  # the first tick ran, found nothing to seal
        assert await seals(log) == []
        # Ticks leave nothing in the log (their schedule is kept beside it): still nothing.
        await clock.advance(INTERVAL)
        await clock.wait_for_sleepers(1)
        assert await seals(log) == []
        # The next run seals what is there by then.
        await append_events(log, 1, 3)
        await clock.advance(INTERVAL)
        await eventually(lambda: sealed_through(log, 3))
    [only] = await seals(log)
    assert (only.count, only.positions) == (3, [(1, 3)])


async def test_a_big_backlog_is_sealed_at_once_in_bounded_runs() -> None:
    log = MemoryLog()
    await append_events(log, 1, 250)
    # 100 events per run: three runs, the second and third without waiting for a tick.
    async with sealer(log, max_events_per_run=100):
        await eventually(lambda: sealed_through(log, 250))
    found = await seals(log)
    assert [s.seal for s in found] == list(range(1, len(found) + 1))
    assert sum(s.count for s in found) == found[-1].total >= 250
    assert (await verify_seals(log)).clean


async def test_a_restarted_sealer_goes_on_from_the_last_seal_in_the_log() -> None:
    log = MemoryLog()
    await append_events(log, 1, 5)
    async with sealer(log):
        await eventually(lambda: sealed_through(log, 5))
    await append_events(log, 10, 5)
    # A new incarnation, when its next tick is due: nothing in memory carries over.
    later = ManualClock(NOW + timedelta(seconds=INTERVAL))
    async with sealer(log, clock=later):
        await eventually(lambda: sealed_through(log, 10))
    found = await seals(log)
    assert [s.seal for s in found] == [1, 2]
    assert found[1].previous_hash == found[0].hash
    assert (await verify_seals(log)).clean


async def test_a_lost_acknowledgement_appends_the_seal_once() -> None:
    lost: list[str] = []

    def lose_first_commit(operation: str) -> bool:
        if operation == "commit" and not lost:
            lost.append(operation)
            return True  # it committed; the sealer is told it failed, and tries again
        return False

    log = MemoryLog(lost_ack=lose_first_commit)
    clock = ManualClock(NOW)
    await append_events(log, 1, 7)
    async with sealer(log, clock=clock):
        await eventually(lambda: sealed_through(log, 7))
        await clock.wait_for_sleepers(1)
        await clock.advance(1.0)  # the tick's retry after the "failure"
        await clock.wait_for_sleepers(1)
    assert lost == ["commit"]
    found = await seals(log)
    assert found[0].seal == 1
    assert found[0].count == 7
    assert [s.seal for s in found] == list(range(1, len(found) + 1))
    assert (await verify_seals(log)).clean


@contextlib.contextmanager
def idle(runner: ActorRunner[None]) -> Iterator[ActorRunner[None]]:
    """A runner whose steps a test drives itself (its mailbox is closed at the end)."""
    with runner._send, runner._receive:
        yield runner


async def test_two_sealers_never_both_write_one_seal() -> None:
    log = MemoryLog()
    await append_events(log, 1, 20)
    a, b = Sealer(SETTINGS), Sealer(SETTINGS)
    with (
        idle(ActorRunner(a, log, ManualClock(NOW), node="a")) as runner_a,
        idle(ActorRunner(b, log, ManualClock(NOW), node="b")) as runner_b,
    ):
        await race(log, a, runner_a, b, runner_b)
    found = await seals(log)
    assert [(s.seal, s.count) for s in found] == [(1, 20)]
    assert (await verify_seals(log)).clean


async def race(
    log: MemoryLog, a: Sealer, runner_a: ActorRunner[None], b: Sealer, runner_b: ActorRunner[None]
) -> None:
    # Both computed seal 1 from the same log; only the first append lands.
    [computed_a] = await a.compute(runner_a)
    await append_events(log, 50, 3)
    [computed_b] = await b.compute(runner_b)
    assert isinstance(computed_a, SealsComputed)
    assert isinstance(computed_b, SealsComputed)
    assert computed_a.seals[0].seal == computed_b.seals[0].seal == 1
    assert computed_a.seals[0].count == 20
    assert computed_b.seals[0].count == 23
    await runner_a._commit(list(a.decide(None, computed_a)))
    with pytest.raises(ConcurrencyConflict, match="expected 0, actual version 1"):
        await runner_b._commit(list(b.decide(None, computed_b)))


async def test_a_sealer_whose_lease_was_taken_over_cannot_write() -> None:
    log = MemoryLog()
    await append_events(log, 1, 3)
    lease = "actor-Sealer"
    stale = Fence(lease, log.grant(lease))
    log.grant(lease)  # another node took the lease over
    actor = Sealer(SETTINGS)
    with idle(ActorRunner(actor, log, ManualClock(NOW), node="old", fence=stale)) as runner:
        computed = await actor.compute(runner)
        assert computed
        with pytest.raises(StaleGeneration):
            await runner._commit(list(actor.decide(None, computed[0])))
    assert await seals(log) == []


async def test_each_digest_goes_to_the_admins_with_its_seal() -> None:
    log = MemoryLog()
    await append_events(log, 1, 4)
    settings = Settings(seal_interval=INTERVAL, admin_ids=(42,))
    async with sealer(log, settings=settings):
        await eventually(lambda: sealed_through(log, 4))
    [seal] = await seals(log)
    queue = TaskQueue(log, task_types(settings))
    counts = await queue.counts()
    assert counts[ADMIN_ALERT].queued == 1
    [enqueued] = [
        r for r in await log.read_stream("task-1") if r.type == "TaskEnqueued"
    ]  # the task queue numbers tasks from 1
    payload = enqueued.event.payload  # type: ignore[attr-defined]
    assert payload["text"] == digest_text(seal)
    assert str(SealDigest.of(seal)) in payload["text"]
    assert enqueued.transaction_id == (await log.read_stream(SEAL_STREAM))[0].transaction_id


async def deliver_digests(log: MemoryLog, settings: Settings, count: int) -> list[str]:
    """Run the digest tasks as the HealthChecker's processor does, until tasks 1 to ``count``
    succeeded; the texts delivered."""
    queue = TaskQueue(log, task_types(settings))
    delivered: list[str] = []

    async def handle(alert: AdminAlert, context: TaskContext) -> None:
        delivered.append(alert.text)

    processor = TaskProcessor(queue, node="n1", poll_interval=0.05)
    processor.register_handler(ADMIN_ALERT, handle)

    async def succeeded() -> bool:
        ends = [await log.last_event(f"task-{n}") for n in range(1, count + 1)]
        return all(end is not None and end.type == "TaskSucceeded" for end in ends)

    async with anyio.create_task_group() as tg:
        await tg.start(processor.run)
        await eventually(succeeded)
        processor.stop()
    return delivered


async def test_an_idle_log_stays_idle_its_seals_and_digests_wait_for_the_next_event() -> None:
    log = MemoryLog()
    clock = ManualClock(NOW)
    settings = Settings(seal_interval=INTERVAL, admin_ids=(42,))
    await append_events(log, 1, 4)

    async def tick() -> None:
        await clock.wait_for_sleepers(1)
        await clock.advance(INTERVAL)
        await clock.wait_for_sleepers(1)

    async with sealer(log, settings=settings, clock=clock):
        await eventually(lambda: sealed_through(log, 4))
        # A real event before the first digest is delivered: seal 2 covers it, seal 1 and
        # the first digest's TaskEnqueued (so task-1's later events come without it).
        await append_events(log, 10, 1)
        await tick()
        assert [(s.seal, s.count) for s in await seals(log)] == [(1, 4), (2, 3)]
        delivered = await deliver_digests(log, settings, 2)
        assert len(delivered) == 2
        # Past seal 2: itself, its digest enqueued, both digests claimed and delivered: the
        # Sealer's own doing only. Ticks seal nothing more.
        for _ in range(3):
            await tick()
        assert len(await seals(log)) == 2
        report = await verify_seals(log)
        assert report.clean, report.findings
        assert (report.seals, report.events, report.unsealed) == (2, 7, 6)
        # The next other event calls for a seal, which covers all of them.
        await append_events(log, 20, 1)
        await tick()
        await eventually(lambda: sealed_through(log, 7 + 6 + 1))
    last = (await seals(log))[-1]
    assert (last.seal, last.count) == (3, 7)
    report = await verify_seals(log, against=SealDigest.of(last))
    assert report.clean, report.findings
    assert (report.digest_matched, report.unsealed) == (True, 2)  # seal 3 and its digest task


def test_the_digest_message_says_what_to_keep_and_how_to_check() -> None:
    seal = LogSealed(
        seal=3,
        after_transaction_id=7,
        after_position=20,
        last_transaction_id=9,
        last_position=31,
        count=11,
        total=31,
        hash="ab" * 32,
        previous_hash="cd" * 32,
        positions=[(21, 11)],
        fingerprints="AAAA" * 11,
        sealed_at=NOW,
    )
    text = digest_text(seal)
    digest = f"i3lani-seal-v1:3:31:31:{'ab' * 32}"
    assert text.splitlines() == [
        "[seal] i3lani log sealed: seal 3",
        f"the log up to #31, 31 events, sha256 {'ab' * 32}",
        "Keep this digest; it shows whether the log up to there was ever rewritten:",
        digest,
        f"check: i3lani audit --verify-seals --against {digest}",
        "2026-11-29 10:00:00 UTC",
    ]
    assert SealDigest.parse(digest) == SealDigest.of(seal)


def test_the_interval_is_configuration() -> None:
    assert load_settings({}).seal_interval == 3600.0
    assert load_settings({"I3LANI_SEAL_INTERVAL": "120"}).seal_interval == 120.0
    with pytest.raises(ConfigError, match="I3LANI_SEAL_INTERVAL must be a number, got 'hourly'"):
        load_settings({"I3LANI_SEAL_INTERVAL": "hourly"})
    assert Sealer(load_settings({"I3LANI_SEAL_INTERVAL": "120"})).tick == TickSpec(
        interval=120.0, missed="run_once"
    )


async def test_an_outage_while_sealing_a_backlog_waits_for_the_next_tick(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reads: list[str] = []

    def faults(operation: str) -> None:
        if operation == "read_hashed":
            reads.append(operation)
            if len(reads) == 2:  # the backlog's run (the first run read one page of 20)
                raise StoreUnavailable("simulated outage")

    log = MemoryLog(faults=faults)
    clock = ManualClock(NOW)
    await append_events(log, 1, 30)
    async with sealer(log, clock=clock, max_events_per_run=20) as runner:
        await eventually(lambda: sealed_through(log, 20))
        await clock.wait_for_sleepers(1)
        assert (await seals(log))[-1].total == 20  # the backlog waits: no crash
        assert "sealing the backlog stopped, the database is unreachable" in caplog.text
        await clock.advance(INTERVAL)
        await eventually(lambda: sealed_through(log, 30))
        assert runner.state is None
    assert (await verify_seals(log)).clean
