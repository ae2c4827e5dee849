"""Streams that begin after a draining node ended its open streams (in the moment before
the server stops taking calls) end as those did, instead of holding the stop for the
whole grace period."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from meshutil import Mesh, add_region

from nethical_grpc import client
from nethical_grpc.errors import details_from_error
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc


async def test_an_ingest_stream_begun_after_the_drain_ended_streams_takes_nothing(
    mesh: Mesh,
) -> None:
    [(server, _)] = await add_region(mesh, "r1", evaluate=False)
    for end_streams in server.on_drain:  # the drain's first step, the server still serving
        end_streams()
    batch = client.encode_ingest_request("late", np.ones(5), batch_id="b0")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.ingest(mesh.channel(server.address), [batch], 5)
    found = details_from_error(err.value)
    assert found.code is grpc.StatusCode.UNAVAILABLE
    assert found.reason == "NODE_DRAINING"
    assert found.metadata == {"message_index": "0", "applied_batches": "0", "applied_values": "0"}
    stub = region_node_pb2_grpc.RegionNodeServiceStub(mesh.channel(server.address))
    info = await stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=5)
    assert info.series_count == 0  # nothing applied


async def test_a_summary_stream_begun_after_the_drain_ended_streams_ends_at_once(
    mesh: Mesh,
) -> None:
    [(server, _)] = await add_region(mesh, "r1", evaluate=False)
    for end_streams in server.on_drain:
        end_streams()
    stub = region_node_pb2_grpc.RegionNodeServiceStub(mesh.channel(server.address))
    never = asyncio.Event()

    async def queries() -> AsyncIterator[region_node_pb2.StreamSummariesRequest]:
        yield region_node_pb2.StreamSummariesRequest(query_id=1)
        await never.wait()

    call = stub.StreamSummaries(queries(), timeout=10)
    async with asyncio.timeout(5):  # not left open until the stop's grace runs out
        answers = [a async for a in call]
    assert answers == []
    assert await call.code() is grpc.StatusCode.OK
