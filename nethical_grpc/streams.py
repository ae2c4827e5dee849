"""Reading a gRPC request stream: in chunks, so a server can batch what has arrived, and
under a bound on what it has read but not yet answered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_END = object()


async def read_chunks(source: AsyncIterator[T], max_chunk: int) -> AsyncIterator[list[T]]:
    """Yield lists of items from ``source``: each holds the next item and whatever else has
    already arrived (at most ``max_chunk``), so a busy stream is processed in batches and a
    quiet one item by item, never waiting for more to come.

    Errors of ``source`` are raised here; leaving the loop early stops reading ``source``.
    """
    if max_chunk < 1:
        raise ValueError("max_chunk must be at least 1")
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=max_chunk * 4)
    failure: list[BaseException] = []

    async def pump() -> None:
        try:
            async for item in source:
                await queue.put(item)
        except Exception as exc:  # handed to the consumer
            failure.append(exc)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # this reader was cancelled: the consumer left
            # raised by the source itself, not by a cancel of this reader: handed over
            # like any error, or the consumer would wait for an end that never comes
            failure.append(exc)
        # the end, when the source ends or fails; not when cancelled (the consumer left,
        # and a put into a full queue would wait for it for ever)
        await queue.put(_END)

    reader = asyncio.ensure_future(pump())
    try:
        while True:
            first = await queue.get()
            if first is _END:
                break
            chunk: list[T] = [first]  # type: ignore[list-item]
            ended = False
            while len(chunk) < max_chunk and not queue.empty():
                item = queue.get_nowait()
                if item is _END:
                    ended = True
                    break
                chunk.append(item)  # type: ignore[arg-type]
            yield chunk
            if ended:
                break
        if failure:
            raise failure[0]
    finally:
        reader.cancel()
        if not reader.done():
            # not ``await reader``: its CancelledError, suppressed, would also swallow one
            # of the consumer's own, sent while the reader stops
            await asyncio.wait({reader})


class ReadAhead(Generic[T]):
    """Bounds the weight of the items a stream has read but not yet answered (e.g. the
    actions of batch messages: a bound on messages alone would not bound memory).

    :meth:`read` passes items through, waiting while one more would pass ``limit``; one
    item always passes when nothing is pending, whatever its weight. The consumer calls
    :meth:`release` with the weight it has answered.
    """

    def __init__(self, limit: int, weight: Callable[[T], int]) -> None:
        self.limit = limit
        self.pending = 0
        self._weight = weight
        self._room = asyncio.Event()

    async def read(self, source: AsyncIterator[T]) -> AsyncGenerator[T, None]:
        async for item in source:
            n = self._weight(item)
            while self.pending and self.pending + n > self.limit:
                self._room.clear()
                await self._room.wait()
            self.pending += n
            yield item

    def release(self, n: int) -> None:
        self.pending -= n
        self._room.set()
