"""Traces through the wired mesh: a global query and a gateway Evaluate are one trace each."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from meshutil import Mesh, add_coordinator, add_region, mesh_fixture
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from test_telemetry import by_kind, global_query_trace_problems, span_id, trace_id

from nethical_grpc import client
from nethical_grpc.telemetry.setup import configure_telemetry
from nethical_grpc.v1 import coordinator_pb2, coordinator_pb2_grpc, governance_pb2


@pytest.fixture
async def traced_mesh() -> AsyncIterator[tuple[Mesh, InMemorySpanExporter]]:
    spans = InMemorySpanExporter()
    tel = configure_telemetry("mesh-test", span_exporters=[spans], activate=True)
    try:
        async for m in mesh_fixture():
            yield m, spans
    finally:
        tel.shutdown()


async def test_global_query_and_gateway_evaluate_are_traced_end_to_end(
    traced_mesh: tuple[Mesh, InMemorySpanExporter],
) -> None:
    mesh, exporter = traced_mesh
    await add_region(mesh, "eu-west-1")
    await add_region(mesh, "us-east-1")
    await add_coordinator(mesh)
    ch = mesh.coordinator_channel()
    response = await client.global_metrics(ch, client.QueryOptions(), timeout=10)
    assert sorted(response.coverage.regions_answered) == ["eu-west-1", "us-east-1"]
    spans = list(exporter.get_finished_spans())
    assert global_query_trace_problems(spans, ["eu-west-1", "us-east-1"]) == []

    exporter.clear()
    stub = coordinator_pb2_grpc.CoordinatorServiceStub(ch)
    reply = await stub.Evaluate(
        coordinator_pb2.CoordinatorServiceEvaluateRequest(
            action=governance_pb2.AgentAction(agent_id="a", action_text="SELECT 1"),
            region_id="us-east-1",
        ),
        timeout=10,
    )
    assert reply.evaluation.region_id == "us-east-1"
    spans = list(exporter.get_finished_spans())
    [gateway] = by_kind(spans, "nethical_grpc.v1.CoordinatorService/Evaluate", SpanKind.SERVER)
    routed = [
        s
        for s in by_kind(spans, "nethical_grpc.v1.RegionNodeService/Evaluate", SpanKind.CLIENT)
        if s.parent is not None and s.parent.span_id == span_id(gateway)
    ]
    assert len(routed) == 1
    [served] = by_kind(spans, "nethical_grpc.v1.RegionNodeService/Evaluate", SpanKind.SERVER)
    assert served.parent is not None and served.parent.span_id == span_id(routed[0])
    assert trace_id(served) == trace_id(gateway)
