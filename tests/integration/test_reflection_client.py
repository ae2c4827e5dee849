"""What grpcurl does, with no .proto files at hand: list, describe and call over reflection."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from meshutil import Mesh, add_coordinator, add_region


def call_by_reflection(
    address: str, service: str, method: str, requests_json: list[str]
) -> tuple[list[str], dict]:  # type: ignore[type-arg]
    """Resolve everything from the server's reflection service, then call with JSON."""
    with grpc.insecure_channel(address) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = list(db.get_services())
        pool = DescriptorPool(db)
        m = pool.FindServiceByName(service).FindMethodByName(method)
        request_cls = GetMessageClass(m.input_type)
        response_cls = GetMessageClass(m.output_type)
        requests = [json_format.Parse(r, request_cls()) for r in requests_json]
        path = f"/{service}/{method}"
        if m.client_streaming:
            call = channel.stream_unary(
                path,
                request_serializer=request_cls.SerializeToString,
                response_deserializer=response_cls.FromString,
            )
            response = call(iter(requests), timeout=10)
        else:
            call = channel.unary_unary(
                path,
                request_serializer=request_cls.SerializeToString,
                response_deserializer=response_cls.FromString,
            )
            response = call(requests[0], timeout=10)
        return services, json_format.MessageToDict(response)


async def test_ingest_and_query_with_only_reflection(mesh: Mesh) -> None:
    [(region, _)] = await add_region(mesh, "us-east-1")
    await add_coordinator(mesh)
    assert mesh.coordinator is not None
    services, ingest = await asyncio.to_thread(
        call_by_reflection,
        region.address,
        "nethical_grpc.v1.RegionNodeService",
        "Ingest",
        [
            '{"metric": "latency_ms", "labels": {"decision": "ALLOW"}, "values": [12.5, 40, 310]}',
            '{"metric": "latency_ms", "values": [7]}',
        ],
    )
    assert {
        "nethical_grpc.v1.RegionNodeService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= set(services)
    assert ingest == {"acceptedBatches": "2", "acceptedValues": "4"}
    services, result = await asyncio.to_thread(
        call_by_reflection,
        mesh.coordinator.address,
        "nethical_grpc.v1.CoordinatorService",
        "GetGlobalMetrics",
        ['{"quantiles": [0.5, 0.99], "include_region_breakdown": true}'],
    )
    assert "nethical_grpc.v1.CoordinatorService" in services
    [metric] = result["results"]
    assert metric["metric"] == "latency_ms"
    assert metric["statistics"]["count"] == "4"
    assert metric["statistics"]["max"] == 310.0
    median = metric["statistics"]["quantiles"][0]["value"]
    exact = float(np.quantile([12.5, 40, 310, 7], 0.5, method="lower"))
    assert abs(median - exact) <= 0.0055 * exact
    assert result["coverage"]["complete"] is True
    _, health = await asyncio.to_thread(
        call_by_reflection,
        region.address,
        "grpc.health.v1.Health",
        "Check",
        ['{"service": "nethical_grpc.v1.RegionNodeService"}'],
    )
    assert health == {"status": "SERVING"}
