"""The PostgreSQL log's long reads ask for the next page before the reader has this one
(``EventStore.read_batches``): what that must not change. The order and completeness of a read
are contract tests (tests/store/test_read.py); here, what only a real store has: its task
group, its pool, its closing.

PostgreSQL only (not in the contract suite)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from events import PaymentExpired
from events.errors import StoreError
from store import EventStore
from store.reading import ReadAhead

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)

pytestmark = pytest.mark.postgres


def expired(payment_id: int) -> PaymentExpired:
    return PaymentExpired(payment_id=payment_id, expired_at=NOW)


async def test_a_read_on_the_smallest_pool_goes_on_beside_writers(dsn: str) -> None:
    """With one pooled connection (the smallest budget), the page read ahead and the writers
    take turns on it: the read ends whole, the appends all land."""
    async with EventStore.open(dsn, max_connections=3) as store:
        for n in range(1, 61):
            await store.append(f"payment-{n}", [expired(n)])
        read: list[int] = []

        async def reader() -> None:
            async for batch in store.read_batches(batch_size=7):
                read.extend(r.position for r in batch)
                await anyio.lowlevel.checkpoint()

        async def writer() -> None:
            for n in range(61, 81):
                await store.append(f"payment-{n}", [expired(n)])

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                tg.start_soon(writer)
        assert read == sorted(read)
        assert len(read) >= 60
        assert len(set(read)) == len(read)
        assert len([r async for r in store.read_all()]) == 80


async def test_a_reader_whose_store_closes_gets_a_one_line_error(dsn: str) -> None:
    async with EventStore.open(dsn, max_connections=3) as store:
        for n in range(1, 11):
            await store.append(f"payment-{n}", [expired(n)])
        batches = store.read_batches(batch_size=2)
        assert isinstance(batches, AsyncGenerator)
        first = await anext(batches)
        assert [r.event for r in first] == [expired(1), expired(2)]
        await store.close()
        with pytest.raises(StoreError) as closed:
            await anext(batches)
        assert "closed" in str(closed.value)
        assert "\n" not in str(closed.value)
        await batches.aclose()


async def test_a_page_is_read_ahead_unless_others_wait_for_a_connection(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the smallest pool (one connection, an operator command's: the audit's) every page is
    read ahead, since the reader holds no connection while it decodes; while others wait for
    a pooled connection, every page is read in turn."""
    begun: list[int] = []
    run = ReadAhead._run

    async def counted(
        ahead: ReadAhead[Any], read: Callable[..., Awaitable[Any]], *args: Any
    ) -> None:
        begun.append(1)
        await run(ahead, read, *args)

    monkeypatch.setattr(ReadAhead, "_run", counted)
    async with EventStore.open(dsn, max_connections=3) as store:
        for n in range(1, 21):
            await store.append(f"payment-{n}", [expired(n)])
        read = [r.position async for r in store.read_all(batch_size=4)]
        assert len(read) == 20
        assert len(begun) == 6  # five full pages, and the empty one that ends the read
        begun.clear()
        monkeypatch.setattr(type(store._pool), "waiting", property(lambda pool: 1))
        read = [r.position async for r in store.read_all(batch_size=4)]
        assert len(read) == 20
        assert begun == []
