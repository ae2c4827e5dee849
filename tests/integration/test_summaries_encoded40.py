"""A unary GetSummaries answers the node's cached answer bytes as they are: what a client
receives is those bytes exactly, and the cache holds nothing else (no parsed copy, which
took the cache's memory to about twice its bound). A real region node servicer on a
loopback port, behind the server's whole interceptor chain."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from meshutil import serve_region_servicer

from nethical_grpc import client
from nethical_grpc.server_runtime import MeshServer
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc
from region_node.node import NodeIdentity, RegionNode
from region_node.servicer import RegionNodeServicer, add_to_server

METHOD = "/nethical_grpc.v1.RegionNodeService/GetSummaries"


@dataclass
class Running:
    node: RegionNode
    servicer: RegionNodeServicer
    channel: grpc.aio.Channel


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    node = RegionNode(NodeIdentity("r1", "r1-0"))
    servicer = RegionNodeServicer(node)
    server: MeshServer = await serve_region_servicer(servicer)
    channel = grpc.aio.insecure_channel(server.address)
    try:
        yield Running(node, servicer, channel)
    finally:
        await channel.close(None)
        await server.drain(0, 0)


async def _ingest(channel: grpc.aio.Channel) -> None:
    rng = np.random.default_rng(40)
    # several labels a series: a parsed answer serialised again may order its map
    # entries otherwise, so only the bytes as cached compare equal to what is sent
    await client.ingest(
        channel,
        [
            client.encode_ingest_request(
                "latency_ms",
                rng.lognormal(3.0, 0.5, 200),
                labels={"route": f"/r{k}", "method": "GET", "zone": "z1"},
            )
            for k in range(5)
        ],
    )


async def _raw_summaries(
    channel: grpc.aio.Channel, request: region_node_pb2.GetSummariesRequest
) -> bytes:
    """A GetSummaries answer as it came over the wire (not parsed)."""
    call = channel.unary_unary(
        METHOD, request_serializer=region_node_pb2.GetSummariesRequest.SerializeToString
    )
    received: bytes = await call(request, timeout=5)
    return received


async def test_a_client_receives_the_cached_bytes_exactly(running: Running) -> None:
    """Three labels a series: the bytes as the node wrote them, map entries in its order."""
    await _ingest(running.channel)
    request = region_node_pb2.GetSummariesRequest(
        metrics=["latency_ms"], group_by_labels=["route", "method", "zone"]
    )
    received = await _raw_summaries(running.channel, request)
    [entry] = running.servicer._responses.values()
    assert received == entry.encoded
    answer = region_node_pb2.GetSummariesResponse.FromString(received)
    assert len(answer.series) == 5
    assert all(len(s.labels) == 3 for s in answer.series)
    assert sum(s.summary.moments.count for s in answer.series) == 1000
    assert answer.region_id == "r1"


async def test_the_servicer_answers_the_cached_bytes_themselves(running: Running) -> None:
    """Asked again with no change, the answer is the very object the cache holds: neither
    parsed nor copied, and the cache counts all it holds."""
    await _ingest(running.channel)
    request = region_node_pb2.GetSummariesRequest(metrics=["latency_ms"])
    first = await running.servicer.GetSummaries(request, None)  # type: ignore[arg-type]
    again = await running.servicer.GetSummaries(request, None)  # type: ignore[arg-type]
    [entry] = running.servicer._responses.values()
    assert type(first) is bytes
    assert first is entry.encoded and again is entry.encoded
    assert running.servicer._responses_bytes == len(entry.encoded)
    assert not hasattr(entry, "_response")


async def test_a_stream_answer_carries_the_same_summaries(running: Running) -> None:
    """StreamSummaries puts its query id before the same bytes."""
    await _ingest(running.channel)
    query = region_node_pb2.GetSummariesRequest(metrics=["latency_ms"], group_by_labels=["route"])
    unary = await _raw_summaries(running.channel, query)
    call = running.channel.stream_stream(
        "/nethical_grpc.v1.RegionNodeService/StreamSummaries",
        request_serializer=region_node_pb2.StreamSummariesRequest.SerializeToString,
    )
    stream = call()
    await stream.write(region_node_pb2.StreamSummariesRequest(query_id=7, query=query))
    streamed = await stream.read()
    await stream.done_writing()
    assert isinstance(streamed, bytes)
    assert streamed.endswith(unary)
    parsed = region_node_pb2.StreamSummariesResponse.FromString(streamed)
    assert parsed.query_id == 7
    assert len(parsed.summaries.series) == 5


def _generated(servicer: RegionNodeServicer, server: grpc.aio.Server) -> None:
    region_node_pb2_grpc.add_RegionNodeServiceServicer_to_server(servicer, server)


@pytest.mark.parametrize("register", [add_to_server, _generated])
async def test_a_server_without_the_mesh_interceptors_sends_them_too(
    register: Callable[[RegionNodeServicer, grpc.aio.Server], None],
) -> None:
    """On a bare gRPC server (no request-parsing interceptor, as an embedding
    application's might be), both summaries RPCs answer, whether the servicer was
    registered by ``add_to_server`` (bytes sent as they are) or by the generated
    function, whose serialisers refuse bytes (INTERNAL/UNKNOWN until the servicer
    answered it messages)."""
    node = RegionNode(NodeIdentity("r2", "r2-0"))
    servicer = RegionNodeServicer(node)
    server = grpc.aio.server()
    register(servicer, server)
    assert servicer.encoded_answers is (register is add_to_server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await _ingest(channel)
            stub = region_node_pb2_grpc.RegionNodeServiceStub(channel)
            query = region_node_pb2.GetSummariesRequest(metrics=["latency_ms"])
            answer = await stub.GetSummaries(query, timeout=5)
            assert [s.summary.moments.count for s in answer.series] == [1000]
            assert answer.region_id == "r2"
            stream = stub.StreamSummaries()
            await stream.write(region_node_pb2.StreamSummariesRequest(query_id=3, query=query))
            streamed = await stream.read()
            await stream.done_writing()
            assert streamed.query_id == 3
            assert streamed.summaries == answer
            info = await stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=5)
            assert info.region_id == "r2"
    finally:
        await server.stop(None)
