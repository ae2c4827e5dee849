"""What grpcurl does, with no .proto files at hand: list, describe and call over reflection."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, json_format
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha import reflection_pb2
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


def _v1_ask(address: str, request: reflection_pb2.ServerReflectionRequest) -> Any:
    """One question on ``grpc.reflection.v1`` (the messages are v1alpha's, same wire)."""
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        (answer,) = list(call(iter([request]), timeout=10))
        return answer


def _comments(files: list[bytes]) -> dict[str, str]:
    """Leading comments of every element, by file name and path, joined."""
    out: dict[str, str] = {}
    for raw in files:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        text = " ".join(loc.leading_comments for loc in proto.source_code_info.location)
        out[proto.name] = text
    return out


async def test_reflection_v1_answers_with_the_contracts_comments(mesh: Mesh) -> None:
    [(server, _)] = await add_region(mesh, "us-east-1")
    await add_coordinator(mesh)
    for address, service in (
        (server.address, "nethical_grpc.v1.RegionNodeService"),
        (
            mesh.coordinator.address if mesh.coordinator else "",
            "nethical_grpc.v1.CoordinatorService",
        ),
    ):
        listed = await asyncio.to_thread(
            _v1_ask, address, reflection_pb2.ServerReflectionRequest(list_services="")
        )
        names = {s.name for s in listed.list_services_response.service}
        assert {
            service,
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "grpc.health.v1.Health",
        } <= names
        found = await asyncio.to_thread(
            _v1_ask,
            address,
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol=f"{service}.GetNodeInfo"
                if "Region" in service
                else f"{service}.GetGlobalMetrics"
            ),
        )
        comments = _comments(list(found.file_descriptor_response.file_descriptor_proto))
        own = comments[
            "nethical_grpc/v1/region_node.proto"
            if "Region" in service
            else "nethical_grpc/v1/coordinator.proto"
        ]
        # the RPC's documentation, as written in the .proto
        assert "ANSWER_TOO_LARGE" in own
        # imported mesh files come documented too; well-known types come as they are
        assert "Exact moments of a series" in comments["nethical_grpc/v1/summary.proto"]
        assert "google/protobuf/timestamp.proto" in comments
    # the v1 service describes itself, as any other
    itself = await asyncio.to_thread(
        _v1_ask,
        server.address,
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.reflection.v1.ServerReflection"
        ),
    )
    (raw,) = itself.file_descriptor_response.file_descriptor_proto
    proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
    assert proto.package == "grpc.reflection.v1"
    assert proto.service[0].method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"
