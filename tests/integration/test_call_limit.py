"""The concurrent-call bound of a server: calls over it are refused with a reason, while
health checks and reflection still get through (a real region node on loopback)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nethical_grpc import client
from nethical_grpc.call_limit import CallGate, service_of
from nethical_grpc.errors import details_from_error
from nethical_grpc.series import SummaryQuery
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc
from region_node.server import RegionServerConfig, start_region_server

LIMIT = 3


async def _held(
    channel: grpc.aio.Channel, release: asyncio.Event, i: int
) -> region_node_pb2.IngestResponse:
    """An Ingest stream (of metric ``held_I``) that stays open until ``release`` is set."""

    async def requests() -> AsyncIterator[bytes]:
        yield client.encode_ingest_request(f"held_{i}", np.ones(3))
        await release.wait()

    return await client.ingest(channel, requests(), timeout=30)


async def test_calls_over_the_limit_are_refused_and_health_still_answers() -> None:
    server, node = await start_region_server(
        RegionServerConfig(region_id="r1", max_concurrent_rpcs=LIMIT, model=None)
    )
    channel = client.insecure_channel(server.address)
    release = asyncio.Event()
    try:
        stub = region_node_pb2_grpc.RegionNodeServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        # health Watch streams are exempt too: they do not take the service's slots
        watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(LIMIT + 2)]
        for w in watches:
            first = await w.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
        held = [asyncio.create_task(_held(channel, release, i)) for i in range(LIMIT)]
        for _ in range(500):  # the node has each held stream's first batch: all are open
            if len(node.summaries(SummaryQuery())) == LIMIT:
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the held streams never started")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=5)
        found = details_from_error(err.value)
        assert found.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert found.reason == "TOO_MANY_CALLS"
        assert found.metadata["max_concurrent_rpcs"] == str(LIMIT)
        # what a probe or grpcurl does still works at the limit
        check = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        async for answer in reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        ):
            names = {s.name for s in answer.list_services_response.service}
            assert "nethical_grpc.v1.RegionNodeService" in names
        # a slot freed is a call served
        release.set()
        done = await asyncio.gather(*held)
        assert [d.accepted_values for d in done] == [3] * LIMIT
        info = await stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=5)
        assert info.series_count == LIMIT
        for w in watches:
            w.cancel()
    finally:
        release.set()
        await channel.close()
        await server.drain(announce_s=0, grace_s=0)


def test_the_gate_counts_only_the_mesh_services() -> None:
    gate = CallGate(5)
    assert gate.covers("/nethical_grpc.v1.RegionNodeService/Ingest")
    assert not gate.covers("/grpc.health.v1.Health/Check")
    assert not gate.covers("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert not gate.covers("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    assert service_of("/a.B/C") == "a.B" and service_of("nonsense") == ""
    with pytest.raises(ValueError):
        CallGate(0)
