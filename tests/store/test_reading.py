"""``store.reading.ReadAhead``, alone: the read starts before ``begin`` returns, and what it
returned or raised reaches the reader and nothing else."""

from __future__ import annotations

import anyio
import pytest

from events.errors import StoreError
from store.reading import ReadAhead


async def test_begin_returns_once_the_read_has_gone_out() -> None:
    """A reader that works through a page without awaiting anything gives the loop no turn:
    ``begin`` must have run the read up to its first real wait already."""
    sent: list[int] = []
    answer = anyio.Event()

    async def read(page: int) -> list[int]:
        sent.append(page)  # the query written to the socket
        await answer.wait()  # the server's answer
        return [page]

    async with anyio.create_task_group() as tg:
        ahead = await ReadAhead.begin(tg, read, 7)
        assert sent == [7]
        answer.set()
        assert await ahead.result() == [7]


async def test_an_error_reaches_the_reader_not_the_task_group() -> None:
    async def read(page: int) -> list[int]:
        raise ValueError(f"page {page} is broken")

    async with anyio.create_task_group() as tg:
        ahead = await ReadAhead.begin(tg, read, 3)
        with pytest.raises(ValueError, match="page 3 is broken"):
            await ahead.result()


async def test_a_read_cancelled_with_its_task_group_tells_the_reader_so() -> None:
    async def read(page: int) -> list[int]:
        await anyio.sleep_forever()
        return [page]

    async with anyio.create_task_group() as tg:
        ahead = await ReadAhead.begin(tg, read, 1)
        tg.cancel_scope.cancel()
    with pytest.raises(StoreError, match="cancelled before it finished"):
        await ahead.result()
