"""read_chunks: batches of what has arrived, the source's errors raised, and a consumer
that leaves early stops the reading task whatever the state of its queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from nethical_grpc.streams import read_chunks


async def _numbers(n: int, fail_at: int | None = None) -> AsyncIterator[int]:
    for i in range(n):
        if i == fail_at:
            raise ValueError(f"broken at {i}")
        yield i
        await asyncio.sleep(0)


async def test_chunks_hold_every_item_once_in_order() -> None:
    seen = [chunk async for chunk in read_chunks(_numbers(50), 4)]
    assert [i for chunk in seen for i in chunk] == list(range(50))
    assert all(1 <= len(chunk) <= 4 for chunk in seen)


async def test_an_error_of_the_source_is_raised_after_what_came_before() -> None:
    got: list[int] = []

    async def read() -> None:
        async for chunk in read_chunks(_numbers(20, fail_at=7), 3):
            got.extend(chunk)

    with pytest.raises(ValueError, match="broken at 7"):
        await read()
    assert got == list(range(7))


@pytest.mark.parametrize("max_chunk", [1, 2, 8])
async def test_leaving_while_the_queue_is_full_ends_the_reader(max_chunk: int) -> None:
    """The reading task is blocked on a full queue when the consumer leaves; the close
    returns and no task is left (before, the reader's end marker waited on the full
    queue for ever, and the close with it)."""
    before = asyncio.all_tasks()
    chunks = read_chunks(_numbers(1000), max_chunk)
    await anext(chunks)
    await asyncio.sleep(0.05)  # the reader fills its queue (4 chunks' worth) and waits
    closing = asyncio.ensure_future(chunks.aclose())
    done, _ = await asyncio.wait({closing}, timeout=2.0)
    closing.cancel()  # (a hung close, ended so the test can report it)
    assert done == {closing}, "the close waited on the reading task"
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()
