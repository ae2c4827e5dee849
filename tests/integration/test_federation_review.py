"""Review of the federation: coverage, dedupe and the blocking client, over real region
nodes on loopback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from meshutil import Mesh, add_coordinator, serve_region_servicer, wait_for

from coordinator.federation import MAX_GAP_TEXT, GlobalQuery, SummaryTransport
from coordinator.server import CoordinatorConfig, start_coordinator
from nethical_grpc import client
from nethical_grpc.series import SummaryQuery
from nethical_grpc.v1 import coordinator_pb2, region_node_pb2, region_node_pb2_grpc
from region_node.server import RegionServerConfig, start_region_server

Context = grpc.aio.ServicerContext[object, object]


async def _node(mesh: Mesh, region: str, instance_id: str) -> None:
    started = await start_region_server(
        RegionServerConfig(region_id=region, instance_id=instance_id, model=None)
    )
    mesh.regions.setdefault(region, []).append(started)


@pytest.mark.parametrize("transport", [SummaryTransport.STREAM, SummaryTransport.UNARY])
async def test_two_nodes_that_share_an_id_are_both_merged(
    mesh: Mesh, transport: SummaryTransport, caplog: pytest.LogCaptureFixture
) -> None:
    """Two hosts of a region each run a node on the same port without --instance-id: both
    call themselves "eu-50051". They hold disjoint data, and each is merged (before, the
    second was taken for the first at another address: its data was left out while the
    coverage said complete)."""
    await _node(mesh, "eu", "eu-50051")
    await _node(mesh, "eu", "eu-50051")
    await mesh.ingest("eu", "m", np.array([1.0, 2.0, 3.0]), instance=0)
    await mesh.ingest("eu", "m", np.array([10.0, 20.0]), instance=1)
    federation = await add_coordinator(mesh)
    federation.transport = transport
    caplog.set_level(logging.WARNING, logger="coordinator.federation")
    for _ in range(2):
        result = await federation.global_metrics(GlobalQuery(SummaryQuery()))
        [group] = result.groups
        assert (group.summary.count, group.summary.total) == (5, 36.0)
        c = result.coverage
        assert c.complete and c.regions_answered == ["eu"]
        assert (c.instances_queried, c.instances_answered) == (2, 2)
    [warning] = {r.getMessage() for r in caplog.records if "eu-50051" in r.getMessage()}
    assert "give each its own --instance-id" in warning


class _Verbose(region_node_pb2_grpc.RegionNodeServiceServicer):
    """A node that refuses every summary query with a very long message (in its stream,
    where nothing bounds it, and on the unary call)."""

    def __init__(self, region_id: str, text: str) -> None:
        self.region_id = region_id
        self.text = text

    async def GetSummaries(  # noqa: N802
        self, request: region_node_pb2.GetSummariesRequest, context: Context
    ) -> region_node_pb2.GetSummariesResponse:
        # gRPC bounds a status message (8 KiB, percent-encoded): ASCII, under that
        await context.abort(grpc.StatusCode.INTERNAL, "x" * 1500)
        raise AssertionError("unreachable")

    async def StreamSummaries(  # noqa: N802
        self,
        request_iterator: AsyncIterator[region_node_pb2.StreamSummariesRequest],
        context: Context,
    ) -> AsyncIterator[region_node_pb2.StreamSummariesResponse]:
        async for message in request_iterator:
            yield region_node_pb2.StreamSummariesResponse(
                query_id=message.query_id,
                error=region_node_pb2.SummaryQueryError(
                    code=grpc.StatusCode.INTERNAL.value[0], message=self.text
                ),
            )


@pytest.mark.parametrize("transport", [SummaryTransport.STREAM, SummaryTransport.UNARY])
async def test_a_region_s_long_error_text_is_clipped_in_the_coverage(
    mesh: Mesh, transport: SummaryTransport
) -> None:
    """Three regions refuse their queries with 3 MB of text each: the answer still comes,
    with the region that answered and the others' reasons clipped as gap texts are
    (before, in stream mode, their texts made the answer too large to send: the whole
    query failed with RESOURCE_EXHAUSTED)."""
    servers = [await serve_region_servicer(_Verbose(f"v{i}", "é" * 1_500_000)) for i in range(3)]
    try:
        await _node(mesh, "us", "us-0")
        await mesh.ingest("us", "m", np.array([1.0, 2.0]))
        spec = {"us": [mesh.regions["us"][0][0].address]}
        spec |= {f"v{i}": [s.address] for i, s in enumerate(servers)}
        mesh.coordinator, mesh.federation = await start_coordinator(
            CoordinatorConfig(spec, summary_transport=transport)
        )
        assert await mesh.federation.registry.wait_ready(10.0)
        response = await client.global_metrics(mesh.coordinator_channel(), client.QueryOptions())
        assert [r.statistics.count for r in response.results] == [2]
        assert list(response.coverage.regions_answered) == ["us"]
        missing = response.coverage.missing
        assert sorted(m.region_id for m in missing) == ["v0", "v1", "v2"]
        for m in missing:
            assert m.message.startswith("INTERNAL: ")
            assert len(m.message) <= MAX_GAP_TEXT and m.message.endswith("…")
    finally:
        for server in servers:
            await server.drain(0, 0)


class _Hung(region_node_pb2_grpc.RegionNodeServiceServicer):
    """A node of its own data that takes summary queries and never answers them."""

    def __init__(self, region_id: str) -> None:
        self.region_id = region_id
        self.queries = 0

    async def GetNodeInfo(  # noqa: N802
        self, request: region_node_pb2.GetNodeInfoRequest, context: Context
    ) -> region_node_pb2.GetNodeInfoResponse:
        return region_node_pb2.GetNodeInfoResponse(
            region_id=self.region_id, instance_id=f"{self.region_id}-hung"
        )

    async def GetSummaries(  # noqa: N802
        self, request: region_node_pb2.GetSummariesRequest, context: Context
    ) -> region_node_pb2.GetSummariesResponse:
        self.queries += 1
        await asyncio.sleep(60)
        raise AssertionError("unreachable")

    async def StreamSummaries(  # noqa: N802
        self,
        request_iterator: AsyncIterator[region_node_pb2.StreamSummariesRequest],
        context: Context,
    ) -> AsyncIterator[region_node_pb2.StreamSummariesResponse]:
        async for _ in request_iterator:
            self.queries += 1
        if False:  # pragma: no cover (an async generator that yields nothing)
            yield region_node_pb2.StreamSummariesResponse()


@pytest.mark.parametrize("transport", [SummaryTransport.STREAM, SummaryTransport.UNARY])
async def test_a_drain_keeps_the_instances_that_answered(
    mesh: Mesh, transport: SummaryTransport
) -> None:
    """Region "eu" has two instances of their own data, one hung. A query in flight when
    the coordinator drains answers with what eu's other instance sent, as the region
    timeout would have (before: the whole region was dropped as missing)."""
    hung = _Hung("eu")
    server = await serve_region_servicer(hung)
    try:
        await _node(mesh, "eu", "eu-0")
        await _node(mesh, "us", "us-0")
        await mesh.ingest("eu", "m", np.array([1.0, 2.0, 3.0]))
        await mesh.ingest("us", "m", np.array([4.0]))
        spec = {"eu": [mesh.regions["eu"][0][0].address, server.address]}
        spec["us"] = [mesh.regions["us"][0][0].address]
        mesh.coordinator, mesh.federation = await start_coordinator(
            CoordinatorConfig(spec, summary_transport=transport)
        )
        assert await mesh.federation.registry.wait_ready(10.0)
        query = asyncio.ensure_future(
            client.global_metrics(
                mesh.coordinator_channel(),
                client.QueryOptions(region_timeout_s=8.0, include_region_breakdown=True),
            )
        )
        await wait_for(lambda: hung.queries > 0)
        await asyncio.sleep(0.2)  # eu-0 and us have answered
        await mesh.coordinator.drain(announce_s=0, grace_s=1.0)
        response = await query
        c = response.coverage
        assert sorted(c.regions_answered) == ["eu", "us"]
        assert [(m.region_id, m.instance_id) for m in c.missing] == [("eu", "eu-hung")]
        assert c.missing[0].reason == coordinator_pb2.MISSING_REASON_DEADLINE_EXCEEDED
        assert "stopping" in c.missing[0].message
        assert (c.instances_queried, c.instances_answered) == (3, 2)
        [result] = response.results
        assert result.statistics.count == 4
        assert {r.region_id: r.statistics.count for r in result.regions} == {"eu": 3, "us": 1}
    finally:
        await server.drain(0, 0)


@pytest.mark.parametrize("transport", [SummaryTransport.STREAM, SummaryTransport.UNARY])
async def test_a_node_listed_under_another_region_is_left_out_and_named(
    mesh: Mesh, transport: SummaryTransport
) -> None:
    """A node of region "us" listed under "eu" (a wrong address in --region): its data
    counted as eu's; now it is missing from "eu", saying why."""
    await _node(mesh, "eu", "eu-0")
    await _node(mesh, "us", "us-0")
    await mesh.ingest("eu", "m", np.array([1.0, 2.0]), instance=0)
    await mesh.ingest("us", "m", np.array([10.0, 20.0, 30.0]), instance=0)
    us = mesh.regions["us"][0][0].address
    mesh.coordinator, mesh.federation = await start_coordinator(
        CoordinatorConfig(regions={"eu": [mesh.regions["eu"][0][0].address, us]})
    )
    federation = mesh.federation
    assert await federation.registry.wait_ready(10.0)
    federation.transport = transport
    for _ in range(2):
        result = await federation.global_metrics(GlobalQuery(SummaryQuery()))
        [group] = result.groups
        assert (group.summary.count, group.summary.total) == (2, 3.0)  # eu's own data only
        c = result.coverage
        assert not c.complete
        [missing] = c.missing
        assert missing.region_id == "eu"
        assert "serves region 'us', not 'eu'" in missing.message
