"""The coordinator's summary stream (StreamSummaries) against real servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from meshutil import Mesh, add_coordinator, add_region, serve_region_servicer

from coordinator.federation import GlobalQuery, SummaryTransport
from coordinator.server import CoordinatorConfig, start_coordinator
from coordinator.summary_stream import SummaryCallError, SummaryStream
from nethical_grpc import client, convert
from nethical_grpc.series import SummaryQuery
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc

Request = region_node_pb2.GetSummariesRequest


def stream_to(mesh: Mesh, address: str) -> SummaryStream:
    channel = mesh.channel(address)
    return SummaryStream(lambda: channel)


def parsed(answer: bytes) -> region_node_pb2.GetSummariesResponse:
    return region_node_pb2.GetSummariesResponse.FromString(answer)


async def test_concurrent_queries_share_one_stream_and_get_their_own_answers(
    mesh: Mesh,
) -> None:
    [(server, _)] = await add_region(mesh, "us-east-1")
    rng = np.random.default_rng(1)
    sizes = {f"metric_{i}": 100 * (i + 1) for i in range(8)}
    for metric, n in sizes.items():
        await mesh.ingest("us-east-1", metric, rng.lognormal(size=n))
    stream = stream_to(mesh, server.address)
    try:
        encoded = await asyncio.gather(
            *(stream.query(Request(metrics=[m]), 5.0) for m in sizes for _ in range(3))
        )
        expected = [m for m in sizes for _ in range(3)]
        answers = [parsed(a) for a in encoded]
        assert [a.series[0].metric for a in answers] == expected
        assert [a.series[0].summary.moments.count for a in answers] == [sizes[m] for m in expected]
        # what the unary call answers, byte for byte
        unary = await region_node_pb2_grpc.RegionNodeServiceStub(
            mesh.channel(server.address)
        ).GetSummaries(Request(metrics=["metric_3"]), timeout=5)
        assert encoded[9] == unary.SerializeToString()
        assert stream.opened == 1 and not stream.unary_only
    finally:
        await stream.close()


async def test_a_rejected_query_fails_alone_and_the_stream_goes_on(mesh: Mesh) -> None:
    [(server, _)] = await add_region(mesh, "us-east-1")
    await mesh.ingest("us-east-1", "latency_ms", np.arange(1.0, 101.0))
    stream = stream_to(mesh, server.address)
    try:
        with pytest.raises(SummaryCallError) as err:
            await stream.query(Request(metrics=["not a metric name"]), 5.0)
        assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert "metrics" in err.value.details
        answer = parsed(await stream.query(Request(), 5.0))
        assert answer.series[0].summary.moments.count == 100
        assert stream.opened == 1
    finally:
        await stream.close()


async def test_a_node_that_goes_away_fails_waiting_queries_then_the_stream_reopens(
    mesh: Mesh,
) -> None:
    [(server, node)] = await add_region(mesh, "us-east-1")
    address = server.address
    stream = stream_to(mesh, address)
    try:
        await stream.query(Request(), 5.0)
        await server.drain(announce_s=0, grace_s=0)
        with pytest.raises(SummaryCallError) as err:
            await stream.query(Request(), 2.0)
        assert err.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        # a node on the same address again: the next query opens a new stream
        port = int(address.rsplit(":", 1)[1])
        from region_node.server import RegionServerConfig, start_region_server

        again, _ = await start_region_server(RegionServerConfig(region_id="us-east-1", port=port))
        mesh.regions["us-east-1"] = [(again, node)]
        for _ in range(50):
            try:
                await stream.query(Request(), 2.0)
                break
            except SummaryCallError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the stream never reopened")
        assert stream.opened >= 2
    finally:
        await stream.close()


async def test_a_query_on_a_stream_that_just_ended_is_asked_on_a_new_one(mesh: Mesh) -> None:
    """The stream is over, but its reader has not run since: the query's write fails, it
    never reached the node, and the query is asked again on a fresh stream."""
    [(server, _)] = await add_region(mesh, "us-east-1")
    await mesh.ingest("us-east-1", "m", np.arange(1.0, 11.0))
    stream = stream_to(mesh, server.address)
    try:
        await stream.query(Request(), 5.0)
        assert stream.is_open and stream.opened == 1
        assert stream._current is not None
        stream._current.call.cancel()  # ended under the stream; no turn of the loop since
        answer = parsed(await stream.query(Request(), 5.0))
        assert [s.summary.moments.count for s in answer.series] == [10]
        assert stream.opened == 2
    finally:
        await stream.close()


@pytest.fixture
async def blackhole() -> AsyncIterator[str]:
    """An address that accepts TCP connections and never says a word (so a channel to it
    stays connecting until gRPC's connect timeout, about 20 s)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"127.0.0.1:{port}"
    for writer in held:
        writer.close()
    server.close()


async def test_a_query_to_an_address_that_never_speaks_ends_at_its_deadline(
    mesh: Mesh, blackhole: str
) -> None:
    """Its message cannot be written while the channel connects: the query still ends
    at its own deadline, and so does the next one."""
    stream = stream_to(mesh, blackhole)
    loop = asyncio.get_running_loop()
    try:
        for _ in range(2):
            t0 = loop.time()
            with pytest.raises(SummaryCallError) as err:
                await stream.query(Request(), 0.3)
            assert err.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
            assert loop.time() - t0 < 5.0  # a hang bound: before, ~20 s
    finally:
        await stream.close()


async def test_a_global_query_with_a_silent_region_answers_partially_in_time(
    mesh: Mesh, blackhole: str
) -> None:
    await add_region(mesh, "us-east-1")
    await mesh.ingest("us-east-1", "m", np.arange(1.0, 101.0))
    mesh.coordinator, mesh.federation = await start_coordinator(
        CoordinatorConfig(
            regions={
                "us-east-1": [s.address for s, _ in mesh.regions["us-east-1"]],
                "silent": [blackhole],
            }
        )
    )
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    response = await client.global_metrics(
        mesh.coordinator_channel(), client.QueryOptions(region_timeout_s=0.3), timeout=10
    )
    assert loop.time() - t0 < 5.0  # a hang bound: before, ~20 s
    assert list(response.coverage.regions_answered) == ["us-east-1"]
    [missing] = response.coverage.missing
    assert missing.region_id == "silent"
    assert [r.statistics.count for r in response.results] == [100]


class _SilentNode(region_node_pb2_grpc.RegionNodeServiceServicer):
    """Reads summary queries and never answers them."""

    async def StreamSummaries(  # noqa: N802
        self,
        request_iterator: AsyncIterator[region_node_pb2.StreamSummariesRequest],
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[region_node_pb2.StreamSummariesResponse]:
        async for _ in request_iterator:
            pass
        if False:  # pragma: no cover (an async generator that yields nothing)
            yield region_node_pb2.StreamSummariesResponse()


class _OlderNode(region_node_pb2_grpc.RegionNodeServiceServicer):
    """A node from before StreamSummaries: GetSummaries only."""

    calls = 0

    async def GetSummaries(  # noqa: N802
        self, request: Request, context: grpc.aio.ServicerContext[object, object]
    ) -> region_node_pb2.GetSummariesResponse:
        _OlderNode.calls += 1
        return region_node_pb2.GetSummariesResponse(region_id="old-1", instance_id="old-1-a")


async def test_an_unanswered_query_times_out_on_its_own_deadline(mesh: Mesh) -> None:
    server = await serve_region_servicer(_SilentNode())
    stream = stream_to(mesh, server.address)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(SummaryCallError) as err:
            await stream.query(Request(), 0.3)
        assert err.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
        assert loop.time() - started < 5.0  # it gave up; nothing hung
        assert stream.is_open  # the stream itself is fine
    finally:
        await stream.close()
        await server.drain(0, 0)


async def test_a_node_without_the_stream_is_asked_with_unary_calls(mesh: Mesh) -> None:
    server = await serve_region_servicer(_OlderNode())
    stream = stream_to(mesh, server.address)
    try:
        before = _OlderNode.calls
        first = parsed(await stream.query(Request(), 5.0))
        second = parsed(await stream.query(Request(), 5.0))
        assert (first.region_id, second.instance_id) == ("old-1", "old-1-a")
        assert stream.unary_only
        assert _OlderNode.calls - before == 2
    finally:
        await stream.close()
        await server.drain(0, 0)


class _UpgradedNode(_OlderNode):
    """A node upgraded in place: no stream method at first, then one."""

    def __init__(self) -> None:
        self.streaming = False
        self.streamed = 0

    async def StreamSummaries(  # noqa: N802
        self,
        request_iterator: AsyncIterator[region_node_pb2.StreamSummariesRequest],
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[region_node_pb2.StreamSummariesResponse]:
        if not self.streaming:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        async for message in request_iterator:
            self.streamed += 1
            yield region_node_pb2.StreamSummariesResponse(
                query_id=message.query_id,
                summaries=region_node_pb2.GetSummariesResponse(region_id="old-1"),
            )


async def test_a_node_upgraded_in_place_is_streamed_to_again(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """UNIMPLEMENTED once did not mean unary calls for as long as the coordinator ran:
    after UNARY_RETRY_S the stream is tried again, and used once the node has it."""
    monkeypatch.setattr(SummaryStream, "UNARY_RETRY_S", 0.3)
    node = _UpgradedNode()
    server = await serve_region_servicer(node)
    stream = stream_to(mesh, server.address)
    try:
        before = _OlderNode.calls
        await stream.query(Request(), 5.0)
        assert stream.unary_only and _OlderNode.calls - before == 1
        node.streaming = True  # upgraded
        await stream.query(Request(), 5.0)
        assert _OlderNode.calls - before == 2  # still unary, within the retry time
        await asyncio.sleep(0.35)
        assert not stream.unary_only
        assert parsed(await stream.query(Request(), 5.0)).region_id == "old-1"
        assert node.streamed == 1 and _OlderNode.calls - before == 2
    finally:
        await stream.close()
        await server.drain(0, 0)


async def test_both_transports_give_the_coordinator_the_same_answer(mesh: Mesh) -> None:
    rng = np.random.default_rng(7)
    for region in ("us-east-1", "eu-west-1"):
        await add_region(mesh, region)
        await mesh.ingest(region, "latency_ms", rng.lognormal(size=5_000))
        await mesh.ingest(region, "risk", rng.random(2_000), {"decision": "allow"})
    federation = await add_coordinator(mesh)
    query = GlobalQuery(SummaryQuery(group_by=("decision",)), quantiles=(0.5, 0.99))
    federation.transport = SummaryTransport.STREAM
    streamed = await federation.global_metrics(query)
    federation.transport = SummaryTransport.UNARY
    unary = await federation.global_metrics(query)
    assert streamed.coverage.complete and unary.coverage.complete
    assert [(g.metric, g.labels) for g in streamed.groups] == [
        (g.metric, g.labels) for g in unary.groups
    ]
    for a, b in zip(streamed.groups, unary.groups, strict=True):
        assert convert.summary_to_proto(a.summary) == convert.summary_to_proto(b.summary)
    opened = [i.summary_stream.opened for i in federation.registry.all_instances()]
    assert opened == [1, 1]
    # the coordinator's own answer over gRPC is complete as well
    resp = await client.global_metrics(mesh.coordinator_channel(), client.QueryOptions())
    assert resp.coverage.complete


async def test_a_draining_node_ends_the_stream_instead_of_waiting_out_the_grace(
    mesh: Mesh,
) -> None:
    """The coordinator's stream is long-lived: the node ends it when it drains, so the stop
    does not wait for the whole grace period, and the coordinator sees the stream end."""
    [(server, _)] = await add_region(mesh, "us-east-1")
    stream = stream_to(mesh, server.address)
    try:
        await stream.query(Request(), 5.0)
        assert stream.is_open
        loop = asyncio.get_running_loop()
        started = loop.time()
        await server.drain(announce_s=0, grace_s=30.0)
        assert loop.time() - started < 10.0  # not the 30 s grace
        for _ in range(100):
            if not stream.is_open:
                break
            await asyncio.sleep(0.02)
        assert not stream.is_open
        with pytest.raises(SummaryCallError) as err:
            await stream.query(Request(), 2.0)
        assert err.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        await stream.close()
