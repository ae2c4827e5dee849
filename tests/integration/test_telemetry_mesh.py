"""Traces through the wired mesh: a global query and a gateway Evaluate are one trace each."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from meshutil import Mesh, add_coordinator, add_region, mesh_fixture
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from test_gateway import mark_not_serving, start_gateway
from test_telemetry import by_kind, global_query_trace_problems, span_id, trace_id

from nethical_grpc import client
from nethical_grpc.telemetry.setup import configure_telemetry
from nethical_grpc.v1 import coordinator_pb2, coordinator_pb2_grpc, governance_pb2


async def _mesh_with_telemetry(**settings: Any) -> AsyncIterator[Mesh]:
    """A mesh in a process whose telemetry is on, with ``settings``."""
    tel = configure_telemetry("mesh-test", activate=True, **settings)
    try:
        async for m in mesh_fixture():
            yield m
    finally:
        tel.shutdown()


@pytest.fixture
async def traced_mesh() -> AsyncIterator[tuple[Mesh, InMemorySpanExporter]]:
    spans = InMemorySpanExporter()
    async for m in _mesh_with_telemetry(span_exporters=[spans]):
        yield m, spans


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


@pytest.fixture
async def metered_mesh() -> AsyncIterator[tuple[Mesh, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    async for m in _mesh_with_telemetry(metric_readers=[reader]):
        yield m, reader


def gateway_calls(reader: InMemoryMetricReader) -> dict[tuple[str, str, str], int]:
    """nethical.gateway.calls by (region, served_region, outcome)."""
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[tuple[str, str, str], int] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "nethical.gateway.calls":
                    for p in metric.data.data_points:
                        a = dict(p.attributes or {})
                        key = (str(a["region"]), str(a["served_region"]), str(a["outcome"]))
                        out[key] = out.get(key, 0) + int(p.value)  # type: ignore[union-attr]
    return out


async def test_the_gateway_counts_where_each_call_went(
    metered_mesh: tuple[Mesh, InMemoryMetricReader],
) -> None:
    """An operator sees how many actions left their region, and how many stayed and
    found no instance: calls by the region asked for, the region served and outcome."""
    mesh, reader = metered_mesh
    await add_region(mesh, "eu-west-1")
    await add_region(mesh, "us-east-1")
    stub = await start_gateway(mesh, strategy="region_aware")

    def request(**kw: object) -> coordinator_pb2.CoordinatorServiceEvaluateRequest:
        action = governance_pb2.AgentAction(agent_id="a", action_text="SELECT 1")
        return coordinator_pb2.CoordinatorServiceEvaluateRequest(action=action, **kw)  # type: ignore[arg-type]

    for _ in range(2):
        await stub.Evaluate(request(region_id="eu-west-1"), timeout=10)
    empty = governance_pb2.AgentAction(agent_id="a", action_text="")
    with pytest.raises(grpc.aio.AioRpcError):  # the node's own INVALID_ARGUMENT: answered
        await stub.Evaluate(
            coordinator_pb2.CoordinatorServiceEvaluateRequest(action=empty, region_id="us-east-1"),
            timeout=10,
        )
    batch = [governance_pb2.AgentAction(agent_id="a", action_text=f"SELECT {i}") for i in range(3)]
    stream = [
        coordinator_pb2.CoordinatorServiceEvaluateStreamRequest(
            actions=batch, region_id="us-east-1"
        ),
        coordinator_pb2.CoordinatorServiceEvaluateStreamRequest(action=batch[0]),
    ]
    assert len([a async for a in stub.EvaluateStream(iter(stream), timeout=10)]) == 2
    await mark_not_serving(mesh, "eu-west-1")
    moved = await stub.Evaluate(request(region_id="eu-west-1"), timeout=10)
    assert moved.evaluation.region_id == "us-east-1"
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Evaluate(request(region_id="eu-west-1", stay_in_region=True), timeout=10)
    assert gateway_calls(reader) == {
        ("eu-west-1", "eu-west-1", "answered"): 2,
        ("us-east-1", "us-east-1", "answered"): 3,  # the refused action and two messages
        ("eu-west-1", "us-east-1", "answered"): 1,  # the action left its region
        ("eu-west-1", "none", "no_instance"): 1,
    }
