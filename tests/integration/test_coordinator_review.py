"""Review of the coordinator at its boundary: the summary stream, the public RPCs, the
instance registry and the server's drain, against real servers on loopback (port 0)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from meshutil import serve_region_servicer

from coordinator.summary_stream import SummaryCallError, SummaryStream
from nethical_grpc import client
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc

Request = region_node_pb2.GetSummariesRequest
Context = grpc.aio.ServicerContext[object, object]


class _StalledNode(region_node_pb2_grpc.RegionNodeServiceServicer):
    """A node whose summary stream is open and never read (its event loop is stuck, say):
    once the stream's flow-control window is full, the coordinator's writes wait."""

    async def StreamSummaries(  # noqa: N802
        self,
        request_iterator: AsyncIterator[region_node_pb2.StreamSummariesRequest],
        context: Context,
    ) -> AsyncIterator[region_node_pb2.StreamSummariesResponse]:
        await asyncio.Event().wait()
        if False:  # pragma: no cover (an async generator that yields nothing)
            yield region_node_pb2.StreamSummariesResponse()


async def test_queries_that_gave_up_on_a_stalled_stream_are_not_kept() -> None:
    """A node that stopped reading holds the writer; each query gives up at its deadline.
    Before, every one of them stayed in the outbox (each with its request: 200 kB here)
    until the stream ended, which keepalive never does for a node that still answers
    pings: the coordinator's memory grew with every global query."""
    server = await serve_region_servicer(_StalledNode())
    channel = client.insecure_channel(server.address)
    stream = SummaryStream(lambda: channel)
    big = Request(metrics=["m" * 1000] * 200)  # fills the window in a query or two
    wave = 20
    try:
        for _ in range(20):
            results = await asyncio.gather(
                *(stream.query(big, 0.02) for _ in range(wave)), return_exceptions=True
            )
            assert all(isinstance(r, SummaryCallError) for r in results), results
            assert {r.code for r in results if isinstance(r, SummaryCallError)} == {
                grpc.StatusCode.DEADLINE_EXCEEDED
            }
        assert stream.opened == 1
        current = stream._current
        assert current is not None
        # every query gave up: what the outbox keeps is bounded by the last wave's
        assert len(current.outbox) <= 3 * wave
        assert not current.pending
    finally:
        await stream.close()
        await channel.close(None)
        await server.drain(0, 0)
