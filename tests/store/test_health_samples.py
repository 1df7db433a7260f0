"""What the HealthChecker and Cleanup read and write beside the log, on both logs: the ping,
the health samples (``i3lani.health_samples``, or :class:`store.views.MemoryHealthSamples`)
and a checkpoint's lag. The in-memory side's own parts (its hooks) are at the end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from actors.health import checkpoint_lag
from events import PaymentExpired
from events.errors import StoreUnavailable
from store import START, EventStore, views
from store.eventstore import Transaction
from store.memory import OPERATIONS, READS, MemoryLog, MemoryTransaction
from store.port import EventLog
from store.views import HealthSample

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def store_of(log: EventLog) -> EventStore | MemoryLog:
    assert isinstance(log, EventStore | MemoryLog)
    return log


def sample(at: datetime, name: str, *, ok: bool = True, detail: str = "") -> HealthSample:
    return HealthSample(checked_at=at, name=name, ok=ok, latency_ms=1.5, detail=detail)


def round_at(at: datetime) -> list[HealthSample]:
    """One health round: its checks in the order the checker runs them."""
    return [
        sample(at, "database"),
        sample(at, "tonapi", ok=False, detail="502"),
        sample(at, "telegram"),
    ]


async def test_the_ping_answers(log: EventLog) -> None:
    await views.ping(store_of(log))


async def test_no_samples_no_latest_round(log: EventLog) -> None:
    assert await views.latest_health_samples(store_of(log)) == []
    assert await views.prune_health_samples(store_of(log), NOW, batch_size=10) == 0


async def test_the_latest_round_is_every_sample_of_the_latest_time_in_written_order(
    log: EventLog,
) -> None:
    store = store_of(log)
    await views.record_health_samples(store, round_at(NOW))
    await views.record_health_samples(store, [])  # nothing to write
    later = round_at(NOW + timedelta(minutes=15))
    await views.record_health_samples(store, later)
    assert await views.latest_health_samples(store) == later
    # A round recorded late (a held verdict) with an older time is not the latest.
    await views.record_health_samples(store, [sample(NOW - timedelta(hours=1), "database")])
    assert await views.latest_health_samples(store) == later


async def test_samples_written_in_a_transaction_are_kept_only_if_it_commits(
    log: EventLog,
) -> None:
    store = store_of(log)
    kept = round_at(NOW)
    async with log.transaction() as tx:
        assert isinstance(tx, Transaction | MemoryTransaction)
        await views.record_health_samples(tx, kept)

    async def rolled_back() -> None:
        async with log.transaction() as tx:
            assert isinstance(tx, Transaction | MemoryTransaction)
            await views.record_health_samples(tx, round_at(NOW + timedelta(minutes=1)))
            raise RuntimeError("changed its mind")

    with pytest.raises(RuntimeError, match="changed its mind"):
        await rolled_back()
    assert await views.latest_health_samples(store) == kept


async def test_pruning_removes_the_old_samples_in_batches_and_only_them(log: EventLog) -> None:
    store = store_of(log)
    old, new = NOW - timedelta(days=40), NOW
    await views.record_health_samples(store, [sample(old, "database")] * 5)
    await views.record_health_samples(store, round_at(new))
    assert await views.prune_health_samples(store, NOW - timedelta(days=1), batch_size=2) == 5
    assert await views.prune_health_samples(store, NOW - timedelta(days=1), batch_size=2) == 0
    assert await views.latest_health_samples(store) == round_at(new)
    # A sample checked exactly at the cut-off stays (checked *before* it goes).
    assert await views.prune_health_samples(store, new, batch_size=100) == 0
    assert await views.prune_health_samples(store, new + timedelta(seconds=1), batch_size=100) == 3
    assert await views.latest_health_samples(store) == []


async def test_two_prunings_at_once_remove_each_sample_once(log: EventLog) -> None:
    store = store_of(log)
    await views.record_health_samples(store, [sample(NOW - timedelta(days=40), "database")] * 7)
    removed: list[int] = []

    async def prune() -> None:
        removed.append(
            await views.prune_health_samples(store, NOW - timedelta(days=1), batch_size=3)
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(prune)
        tg.start_soon(prune)
    assert sum(removed) == 7
    assert await views.prune_health_samples(store, NOW, batch_size=3) == 0


async def test_a_batch_size_below_one_is_refused(log: EventLog) -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        await views.prune_health_samples(store_of(log), NOW, batch_size=0)


async def test_a_checkpoints_lag_counts_its_categorys_events_past_it_up_to_the_limit(
    log: EventLog,
) -> None:
    store = store_of(log)
    assert await checkpoint_lag(store, "actor-Cleanup", "payment") is None
    await log.save_checkpoint("actor-Cleanup", START, expected=None)
    assert await checkpoint_lag(store, "actor-Cleanup", "payment") == 0
    for n in range(1, 6):
        await log.append(f"payment-{n}", [PaymentExpired(payment_id=n, expired_at=NOW)])
    await log.append("user-1", [PaymentExpired(payment_id=9, expired_at=NOW)])  # not its own
    assert await checkpoint_lag(store, "actor-Cleanup", "payment") == 5
    assert await checkpoint_lag(store, "actor-Cleanup", "payment", limit=3) == 4  # "more than 3"
    head = await log.head()
    await log.save_checkpoint("actor-Cleanup", head, expected=START)
    assert await checkpoint_lag(store, "actor-Cleanup", "payment") == 0


# -- the in-memory side's hooks ---------------------------------------------------------------
@pytest.mark.memory
async def test_the_memory_ping_and_samples_pass_the_hooks_and_fail_when_the_log_is_down() -> None:
    seen: list[str] = []
    down = False

    async def record(operation: str) -> None:
        seen.append(operation)

    def faults(operation: str) -> None:
        if down:
            raise StoreUnavailable(f"simulated outage during {operation}")

    log = MemoryLog(yield_point=record, faults=faults)
    await views.ping(log)
    await views.record_health_samples(log, round_at(NOW))
    await views.latest_health_samples(log)
    assert seen == ["ping", "begin", "commit", "samples_read"]
    assert {"ping", "samples_read"} <= READS
    assert set(seen) <= OPERATIONS
    down = True
    with pytest.raises(StoreUnavailable):
        await views.ping(log)
    with pytest.raises(StoreUnavailable):
        await views.record_health_samples(log, round_at(NOW + timedelta(minutes=15)))
    with pytest.raises(StoreUnavailable):
        await views.prune_health_samples(log, NOW + timedelta(days=1), batch_size=10)
    down = False
    assert await views.latest_health_samples(log) == round_at(NOW)


@pytest.mark.memory
async def test_a_failed_commit_keeps_no_sample_and_a_lost_acknowledgement_keeps_them() -> None:
    failing: set[str] = set()
    lost: set[str] = set()

    def faults(operation: str) -> None:
        if operation in failing:
            raise StoreUnavailable(f"{operation} failed (simulated)")

    log = MemoryLog(faults=faults, lost_ack=lambda operation: operation in lost)
    failing.add("commit")
    with pytest.raises(StoreUnavailable):
        await views.record_health_samples(log, round_at(NOW))
    with pytest.raises(StoreUnavailable):  # nor is a sample deleted by a failed commit
        await views.prune_health_samples(log, NOW, batch_size=10)
    failing.clear()
    assert await views.latest_health_samples(log) == []
    lost.add("commit")
    with pytest.raises(StoreUnavailable, match="acknowledged"):
        await views.record_health_samples(log, round_at(NOW))
    lost.clear()
    assert await views.latest_health_samples(log) == round_at(NOW)
    failing.add("commit")
    with pytest.raises(StoreUnavailable):
        await views.prune_health_samples(log, NOW + timedelta(days=1), batch_size=10)
    failing.clear()
    assert await views.latest_health_samples(log) == round_at(NOW)
