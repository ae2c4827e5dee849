"""The summary stream's writer when a write fails late: after the query it carried gave
up waiting (its deadline passed while grpc's write was held up by flow control), the
queries behind it are still asked again on a new stream.

grpc.aio does not let a test hold a write and then fail it on cue, so the calls here are
stand-ins with grpc's call surface (``write``, ``cancel``, async iteration); everything
else is the stream's own code."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from coordinator.summary_stream import SummaryCallError, SummaryStream
from nethical_grpc.v1 import region_node_pb2


class _HeldThenFailedCall:
    """A call whose first write waits until released, then fails (the connection broke);
    its answers never come."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.cancelled = False

    async def write(self, message: Any) -> None:
        await self.release.wait()
        raise ConnectionResetError("connection dropped")

    def cancel(self) -> None:
        self.cancelled = True

    def __aiter__(self) -> _HeldThenFailedCall:
        return self

    async def __anext__(self) -> bytes:
        await asyncio.Event().wait()  # the reader has not noticed anything (yet)
        raise StopAsyncIteration


class _AnsweringCall(_HeldThenFailedCall):
    """A call that answers every query it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: asyncio.Queue[region_node_pb2.StreamSummariesRequest] = asyncio.Queue()

    async def write(self, message: Any) -> None:
        self.sent.put_nowait(message)

    async def __anext__(self) -> bytes:
        query = await self.sent.get()
        return region_node_pb2.StreamSummariesResponse(
            query_id=query.query_id,
            summaries=region_node_pb2.GetSummariesResponse(region_id="r1"),
        ).SerializeToString()


class _Channel:
    def __init__(self) -> None:
        self.calls: list[_HeldThenFailedCall] = [_HeldThenFailedCall(), _AnsweringCall()]
        self.opened = 0

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        def start() -> _HeldThenFailedCall:
            call = self.calls[self.opened]
            self.opened += 1
            return call

        return start


async def test_a_write_that_fails_after_its_query_gave_up_still_fails_over_the_rest() -> None:
    channel = _Channel()
    stream = SummaryStream(lambda: channel)  # type: ignore[arg-type, return-value]
    request = region_node_pb2.GetSummariesRequest()
    first = asyncio.ensure_future(stream.query(request, 0.1))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(stream.query(request, 5.0))
    with pytest.raises(SummaryCallError, match=r"no answer within 0\.1 s"):
        await first
    writer = stream._current.writer if stream._current else None
    assert writer is not None
    channel.calls[0].release.set()  # the held write fails now, its query long gone
    answer = await asyncio.wait_for(second, 2.0)  # not its whole 5 s deadline
    assert region_node_pb2.GetSummariesResponse.FromString(answer).region_id == "r1"
    await asyncio.wait([writer], timeout=2.0)  # it lets the reader speak first, briefly
    assert writer.done() and writer.exception() is None
    assert channel.calls[0].cancelled and channel.opened == 2
    await stream.close()
