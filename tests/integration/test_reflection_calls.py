"""The README's grpcurl session, replayed with nothing but server reflection.

Each step is what a ``grpcurl -plaintext ADDR ...`` command in the README does: ``list``,
``describe`` (a service and a message), a health ``Check``, an ``Ingest`` from a stream of
JSON messages, an ``Evaluate`` on the node and through the coordinator, a global query and
``ListRegions``. Descriptors come from the servers' reflection service into an empty pool,
requests are parsed from JSON and answers printed as JSON with the .proto field names, as
grpcurl does; none of the repository's generated modules is used on the client side.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from meshutil import Mesh, add_coordinator, add_region

REGION_SERVICE = "nethical_grpc.v1.RegionNodeService"
COORDINATOR_SERVICE = "nethical_grpc.v1.CoordinatorService"
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"

INGEST_STREAM = [
    '{"metric": "api_latency_ms", "labels": {"route": "/checkout"}, "values": [12.5, 40, 310]}',
    '{"metric": "api_latency_ms", "labels": {"route": "/checkout"}, "values": [7, 95.25]}',
]
INGESTED = np.array([12.5, 40, 310, 7, 95.25])


class ReflectionClient:
    """A small grpcurl: everything it knows about the server comes from reflection."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address)
        self._db = ProtoReflectionDescriptorDatabase(self._channel)
        self._pool = DescriptorPool(self._db)

    def close(self) -> None:
        self._channel.close()

    def list_services(self) -> list[str]:
        """``grpcurl ADDR list``."""
        return sorted(self._db.get_services())

    def describe_service(self, name: str) -> ServiceDescriptor:
        """``grpcurl ADDR describe SERVICE``."""
        return self._pool.FindServiceByName(name)

    def describe_message(self, name: str) -> Descriptor:
        """``grpcurl ADDR describe MESSAGE``."""
        return self._pool.FindMessageTypeByName(name)

    def invoke(self, method: str, *requests_json: str, timeout: float = 10.0) -> Any:
        """``grpcurl -d @ ADDR SERVICE/METHOD``: the answer as a dict (a list of dicts for
        a bidirectional stream). Raises grpc.RpcError as the call fails; ValueError for a
        server-streaming method with a single request (not needed here).
        """
        service_name, method_name = method.split("/")
        m = self.describe_service(service_name).FindMethodByName(method_name)
        if m.server_streaming and not m.client_streaming:
            raise ValueError(f"{method} streams its answers; not needed here")
        request_cls = GetMessageClass(m.input_type)
        response_cls = GetMessageClass(m.output_type)
        requests = [json_format.Parse(text, request_cls()) for text in requests_json]
        path = f"/{method}"
        if m.server_streaming:
            bidi = self._channel.stream_stream(
                path,
                request_serializer=request_cls.SerializeToString,
                response_deserializer=response_cls.FromString,
            )
            return [
                json_format.MessageToDict(a, preserving_proto_field_name=True)
                for a in bidi(iter(requests), timeout=timeout)
            ]
        if m.client_streaming:
            stream_call = self._channel.stream_unary(
                path,
                request_serializer=request_cls.SerializeToString,
                response_deserializer=response_cls.FromString,
            )
            response = stream_call(iter(requests), timeout=timeout)
        else:
            [request] = requests
            unary_call = self._channel.unary_unary(
                path,
                request_serializer=request_cls.SerializeToString,
                response_deserializer=response_cls.FromString,
            )
            response = unary_call(request, timeout=timeout)
        return json_format.MessageToDict(response, preserving_proto_field_name=True)


def grpcurl_session(region_address: str, coordinator_address: str) -> dict[str, Any]:
    """The README's commands, in order; returns what each printed (or described)."""
    region = ReflectionClient(region_address)
    coordinator = ReflectionClient(coordinator_address)
    try:
        out: dict[str, Any] = {
            "list_region": region.list_services(),
            "list_coordinator": coordinator.list_services(),
            "region_service": region.describe_service(REGION_SERVICE),
            "ingest_request": region.describe_message("nethical_grpc.v1.IngestRequest"),
            "health_region": region.invoke(f"{HEALTH}/Check", f'{{"service": "{REGION_SERVICE}"}}'),
            "health_coordinator": coordinator.invoke(f"{HEALTH}/Check", "{}"),
            "ingest": region.invoke(f"{REGION_SERVICE}/Ingest", *INGEST_STREAM),
            "evaluate_region": region.invoke(
                f"{REGION_SERVICE}/Evaluate",
                '{"action": {"agent_id": "agent-7", "action_text": "DROP TABLE users;",'
                ' "action_type": "command", "request_id": "dbg-1"}}',
            ),
            "evaluate_batch": region.invoke(
                f"{REGION_SERVICE}/EvaluateStream",
                '{"actions": [{"agent_id": "agent-7", "action_text": "list files in the'
                ' workspace", "request_id": "b-1"}, {"agent_id": "agent-7", "action_text":'
                ' "rm -rf / --no-preserve-root", "request_id": "b-2"}]}',
            ),
            "evaluate_gateway": coordinator.invoke(
                f"{COORDINATOR_SERVICE}/Evaluate",
                '{"region_id": "us-east-1", "action": {"agent_id": "agent-7",'
                ' "action_text": "SELECT title FROM books WHERE id = 42",'
                ' "action_type": "query"}}',
            ),
            "evaluate_staying": coordinator.invoke(
                f"{COORDINATOR_SERVICE}/Evaluate",
                '{"region_id": "us-east-1", "stay_in_region": true, "action": {"agent_id":'
                ' "agent-7", "action_text": "SELECT title FROM books WHERE id = 42"}}',
            ),
            "global": coordinator.invoke(
                f"{COORDINATOR_SERVICE}/GetGlobalMetrics",
                '{"metrics": ["api_latency_ms"], "quantiles": [0.5, 0.99],'
                ' "include_region_breakdown": true, "region_timeout": "2s"}',
            ),
            "regions": coordinator.invoke(f"{COORDINATOR_SERVICE}/ListRegions", "{}"),
        }
        try:
            region.invoke(
                f"{REGION_SERVICE}/Ingest", '{"metric": "api_latency_ms", "values": [1, "NaN"]}'
            )
        except grpc.RpcError as err:
            out["bad_ingest"] = err.code()
        return out
    finally:
        region.close()
        coordinator.close()


async def test_readme_grpcurl_session_over_reflection(mesh: Mesh) -> None:
    [(region, _)] = await add_region(mesh, "us-east-1")
    await add_coordinator(mesh)
    assert mesh.coordinator is not None
    out = await asyncio.to_thread(grpcurl_session, region.address, mesh.coordinator.address)

    assert out["list_region"] == [HEALTH, REFLECTION_V1, REFLECTION, REGION_SERVICE]
    assert out["list_coordinator"] == [HEALTH, REFLECTION_V1, REFLECTION, COORDINATOR_SERVICE]

    service: ServiceDescriptor = out["region_service"]
    methods = {m.name: m for m in service.methods}
    assert {"Ingest", "Evaluate", "EvaluateStream", "GetSummaries", "GetNodeInfo"} <= set(methods)
    assert methods["Ingest"].client_streaming and not methods["Ingest"].server_streaming
    evaluate_input = methods["Evaluate"].input_type
    assert evaluate_input is not None
    assert evaluate_input.full_name == "nethical_grpc.v1.EvaluateRequest"
    ingest_request: Descriptor = out["ingest_request"]
    fields = ingest_request.fields_by_name
    assert list(fields) == [
        "metric",
        "labels",
        "values",
        "timestamps_unix_nano",
        "time",
        "batch_id",
    ]
    assert fields["values"].type == FieldDescriptor.TYPE_DOUBLE
    time_type = fields["time"].message_type
    assert time_type is not None and time_type.full_name == "google.protobuf.Timestamp"

    assert out["health_region"] == {"status": "SERVING"}
    assert out["health_coordinator"] == {"status": "SERVING"}
    assert out["ingest"] == {"accepted_batches": "2", "accepted_values": "5"}

    blocked = out["evaluate_region"]["evaluation"]
    assert blocked["request_id"] == "dbg-1"
    assert blocked["decision"] in ("DECISION_BLOCK", "DECISION_TERMINATE")
    assert "destructive_database" in {v["type"] for v in blocked["violations"]}
    assert blocked["latency"].endswith("s")  # a Duration, printed the proto3 JSON way
    [batch] = out["evaluate_batch"]
    allowed, refused = (r["evaluation"] for r in batch["results"])
    assert (allowed["request_id"], refused["request_id"]) == ("b-1", "b-2")
    assert allowed["decision"] == "DECISION_ALLOW"
    assert refused["decision"] in ("DECISION_BLOCK", "DECISION_TERMINATE")
    gateway = out["evaluate_gateway"]
    assert gateway["evaluation"]["decision"] == "DECISION_ALLOW"
    assert gateway["evaluation"]["region_id"] == "us-east-1"
    assert gateway["endpoint"] == region.address
    staying = out["evaluate_staying"]
    assert staying["evaluation"]["region_id"] == "us-east-1"
    assert staying["endpoint"] == region.address

    [result] = out["global"]["results"]
    stats = result["statistics"]
    assert result["metric"] == "api_latency_ms"
    assert stats["count"] == "5"
    assert stats["sum"] == pytest.approx(INGESTED.sum(), rel=1e-15)
    assert (stats["min"], stats["max"]) == (7.0, 310.0)
    for q in stats["quantiles"]:
        exact = float(np.quantile(INGESTED, q["quantile"], method="lower"))
        assert abs(q["value"] - exact) <= stats["relative_error"] * exact * (1 + 1e-9)
    assert [r["region_id"] for r in result["regions"]] == ["us-east-1"]
    coverage = out["global"]["coverage"]
    assert coverage["regions_answered"] == ["us-east-1"]
    assert coverage["complete"] is True
    assert coverage["max_staleness"].endswith("s")

    [listed] = out["regions"]["regions"]
    assert listed["region_id"] == "us-east-1" and listed["healthy"] is True
    assert [i["health"] for i in listed["instances"]] == ["INSTANCE_HEALTH_SERVING"]

    assert out["bad_ingest"] == grpc.StatusCode.INVALID_ARGUMENT
