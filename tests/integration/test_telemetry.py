"""Telemetry over real gRPC: spans joined across calls, statuses, Prometheus, OTLP, off mode.

Every server here is a real grpc.aio server on 127.0.0.1 port 0 built with the handle's
interceptors; spans and metrics go to in-memory exporters, a private Prometheus
endpoint scraped over HTTP, or an in-process OTLP collector.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, TraceFlags
from prometheus_client.parser import text_string_to_metric_families

import nethical_grpc.telemetry as telemetry
from coordinator.federation import Federation, SummaryTransport
from coordinator.instances import REGION_SERVICE, InstanceRegistry
from coordinator.servicer import CoordinatorServicer
from nethical_grpc import client
from nethical_grpc.health import SERVING, HealthService
from nethical_grpc.telemetry.instruments import PROMETHEUS_METRICS
from nethical_grpc.telemetry.propagation import extract_context, inject_metadata
from nethical_grpc.telemetry.setup import Telemetry, configure_telemetry
from nethical_grpc.v1 import (
    coordinator_pb2_grpc,
    region_node_pb2,
    region_node_pb2_grpc,
)
from region_node.node import NodeIdentity, RegionNode
from region_node.servicer import RegionNodeServicer, add_to_server

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "nethical-mesh-dashboard.json"
RNS = "nethical_grpc.v1.RegionNodeService"

Registrar = Callable[[grpc.aio.Server], None]


# --------------------------------------------------------------------------- rig


@dataclass
class Rig:
    """A telemetry handle with in-memory exporters, and the servers/channels built on it."""

    tel: Telemetry
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    servers: list[grpc.aio.Server] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    async def serve(self, *registrars: Registrar) -> str:
        server = grpc.aio.server(interceptors=self.tel.server_interceptors())
        for register in registrars:
            register(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self.servers.append(server)
        return f"127.0.0.1:{port}"

    def channel(self, address: str, region: str | None = None) -> grpc.aio.Channel:
        ch = grpc.aio.insecure_channel(
            address, interceptors=self.tel.client_interceptors(address, region)
        )
        self.channels.append(ch)
        return ch

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close(None)
        for server in self.servers:
            await server.stop(0)
        self.tel.shutdown()


def new_rig(**kwargs: Any) -> Rig:
    spans = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    tel = configure_telemetry(
        "telemetry-test", span_exporters=[spans], metric_readers=[reader], activate=False, **kwargs
    )
    return Rig(tel, spans, reader)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = new_rig()
    yield r
    await r.close()


def region_node(region: str, instance: str = "") -> Registrar:
    """Register a real RegionNodeService (and a health service that says SERVING)."""
    servicer = RegionNodeServicer(RegionNode(NodeIdentity(region, instance or f"{region}-0")))
    health = HealthService()
    health.set(REGION_SERVICE, SERVING)

    def register(server: grpc.aio.Server) -> None:
        add_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)

    return register


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def by_kind(spans: Iterable[ReadableSpan], name: str, kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name and s.kind is kind]


def both_finished(rig: Rig, name: str) -> bool:
    """Whether the CLIENT and the SERVER span called ``name`` have both ended."""
    spans = rig.finished()
    return all(len(by_kind(spans, name, kind)) == 1 for kind in (SpanKind.CLIENT, SpanKind.SERVER))


async def finished_pair(rig: Rig, name: str) -> tuple[ReadableSpan, ReadableSpan]:
    """The CLIENT and SERVER span called ``name`` once both have ended: a server span
    ends after its answer is sent, so the caller can be back before it is finished."""
    await wait_for(lambda: both_finished(rig, name))
    return pair(rig.finished(), name)


def pair(spans: Sequence[ReadableSpan], name: str) -> tuple[ReadableSpan, ReadableSpan]:
    """The one CLIENT and the one SERVER span called ``name``."""
    [c] = by_kind(spans, name, SpanKind.CLIENT)
    [s] = by_kind(spans, name, SpanKind.SERVER)
    return c, s


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


def assert_parent(child: ReadableSpan, parent: ReadableSpan) -> None:
    assert child.parent is not None, f"{child.name} has no parent"
    assert trace_id(child) == trace_id(parent)
    assert child.parent.span_id == span_id(parent)


def histogram_points(reader: InMemoryMetricReader, name: str) -> list[HistogramDataPoint]:
    data = reader.get_metrics_data()
    assert data is not None
    found: list[HistogramDataPoint] = []
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    found.extend(p for p in metric.data.data_points)  # type: ignore[misc]
    return found


def counts_by(points: Iterable[HistogramDataPoint], *keys: str) -> dict[tuple[Any, ...], int]:
    out: dict[tuple[Any, ...], int] = {}
    for p in points:
        attrs = dict(p.attributes or {})
        key = tuple(attrs.get(k) for k in keys)
        out[key] = out.get(key, 0) + p.count
    return out


def bad_range_request() -> region_node_pb2.GetSummariesRequest:
    """start after end: the node answers INVALID_ARGUMENT."""
    req = region_node_pb2.GetSummariesRequest()
    req.start_time.FromSeconds(2_000_000_000)
    req.end_time.FromSeconds(1_000_000_000)
    return req


# --------------------------------------------------------------------------- traces


async def test_unary_call_gives_client_and_server_span_in_one_trace(rig: Rig) -> None:
    address = await rig.serve(region_node("us-east-1"))
    stub = region_node_pb2_grpc.RegionNodeServiceStub(rig.channel(address, "us-east-1"))
    info = await stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=5)
    assert info.region_id == "us-east-1"

    c, s = await finished_pair(rig, f"{RNS}/GetNodeInfo")
    assert_parent(s, c)
    assert s.parent is not None and s.parent.is_remote
    assert c.parent is None
    for span in (c, s):
        attrs = dict(span.attributes or {})
        assert attrs["rpc.system"] == "grpc"
        assert attrs["rpc.service"] == RNS
        assert attrs["rpc.method"] == "GetNodeInfo"
        assert attrs["rpc.grpc.status_code"] == 0
        assert span.status.status_code is StatusCode.UNSET
    c_attrs = dict(c.attributes or {})
    assert c_attrs["server.address"] == "127.0.0.1"
    assert c_attrs["server.port"] == int(address.rsplit(":", 1)[1])
    assert c_attrs["nethical.peer.region"] == "us-east-1"


async def test_failing_call_records_its_status_code(rig: Rig) -> None:
    address = await rig.serve(region_node("eu-west-1"))
    stub = region_node_pb2_grpc.RegionNodeServiceStub(rig.channel(address, "eu-west-1"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetSummaries(bad_range_request(), timeout=5)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    c, s = await finished_pair(rig, f"{RNS}/GetSummaries")
    assert_parent(s, c)
    code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert dict(c.attributes or {})["rpc.grpc.status_code"] == code
    assert dict(s.attributes or {})["rpc.grpc.status_code"] == code
    # a client error is a failed call for the client, not a server fault
    assert c.status.status_code is StatusCode.ERROR
    assert s.status.status_code is StatusCode.UNSET

    server = counts_by(
        histogram_points(rig.reader, "rpc.server.duration"), "rpc.method", "rpc.grpc.status_code"
    )
    sent = counts_by(
        histogram_points(rig.reader, "rpc.client.duration"),
        "rpc.method",
        "rpc.grpc.status_code",
        "nethical.peer.region",
    )
    assert server == {("GetSummaries", code): 1}
    assert sent == {("GetSummaries", code, "eu-west-1"): 1}


async def test_unimplemented_method_of_a_generated_base_is_recorded(rig: Rig) -> None:
    # a synchronous handler: the generated base class of a servicer without the method
    base = region_node_pb2_grpc.RegionNodeServiceServicer()
    address = await rig.serve(
        lambda s: region_node_pb2_grpc.add_RegionNodeServiceServicer_to_server(base, s)
    )
    stub = region_node_pb2_grpc.RegionNodeServiceStub(rig.channel(address))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=5)
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
    c, s = await finished_pair(rig, f"{RNS}/GetNodeInfo")
    assert_parent(s, c)
    assert dict(s.attributes or {})["rpc.grpc.status_code"] == 12
    assert s.status.status_code is StatusCode.ERROR


async def test_traced_call_without_interceptors_joins_the_trace(rig: Rig) -> None:
    address = await rig.serve(region_node("us-east-1"))
    plain = grpc.aio.insecure_channel(address)  # no client interceptors
    rig.channels.append(plain)
    stub = region_node_pb2_grpc.RegionNodeServiceStub(plain)
    with rig.tel.traced_call(f"/{RNS}/GetNodeInfo", address, "us-east-1", [("x-k", "v")]) as c:
        assert c.metadata is not None and ("x-k", "v") in c.metadata
        await stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=5, metadata=c.metadata)
    with pytest.raises(grpc.aio.AioRpcError):
        with rig.tel.traced_call(f"/{RNS}/GetSummaries", address, "us-east-1") as c:
            await stub.GetSummaries(bad_range_request(), timeout=5, metadata=c.metadata)
    with pytest.raises(RuntimeError, match="one call"):
        with c:
            pass

    await wait_for(lambda: both_finished(rig, f"{RNS}/GetNodeInfo"))
    await wait_for(lambda: both_finished(rig, f"{RNS}/GetSummaries"))
    spans = rig.finished()
    ok_c, ok_s = pair(spans, f"{RNS}/GetNodeInfo")
    bad_c, bad_s = pair(spans, f"{RNS}/GetSummaries")
    assert_parent(ok_s, ok_c)
    assert_parent(bad_s, bad_c)
    assert dict(ok_c.attributes or {})["nethical.peer.region"] == "us-east-1"
    assert dict(bad_c.attributes or {})["rpc.grpc.status_code"] == 3
    assert bad_c.status.status_code is StatusCode.ERROR
    sent = counts_by(
        histogram_points(rig.reader, "rpc.client.duration"), "rpc.method", "rpc.grpc.status_code"
    )
    assert sent == {("GetNodeInfo", 0): 1, ("GetSummaries", 3): 1}


# a bytes-in, bytes-out service with one method per arity and handler style


@dataclass
class Echo:
    """Handlers note when they finish, so spans can be checked to cover them."""

    finished_ns: dict[str, int] = field(default_factory=dict)

    def _done(self, name: str) -> None:
        self.finished_ns[name] = time.time_ns()

    async def _check(self, payload: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if payload == b"refuse":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "refused")
        if payload == b"crash":
            raise RuntimeError("handler bug")

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await self._check(request, context)
        self._done("Unary")
        return request

    async def server_stream(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        for i in range(3):
            await asyncio.sleep(0.005)
            yield request + bytes([i])
        await self._check(request, context)
        self._done("ServerStream")

    async def client_stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        parts = [r async for r in requests]
        await self._check(parts[-1] if parts else b"", context)
        self._done("ClientStream")
        return b"".join(parts)

    async def bidi_generator(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        async for r in requests:
            await self._check(r, context)
            yield r
        self._done("BidiGenerator")

    async def bidi_write(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        async for r in requests:
            await self._check(r, context)
            await context.write(r)
        self._done("BidiWrite")

    async def flood(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        """Megabyte answers until the client goes: a send waits on flow control."""
        while True:
            yield b"x" * (1 << 20)

    def register(self, server: grpc.aio.Server) -> None:
        handlers = {
            "Flood": grpc.unary_stream_rpc_method_handler(self.flood),
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
            "BidiGenerator": grpc.stream_stream_rpc_method_handler(self.bidi_generator),
            "BidiWrite": grpc.stream_stream_rpc_method_handler(self.bidi_write),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Echo", handlers),)
        )


async def echo_call(ch: grpc.aio.Channel, method: str, payload: bytes) -> list[bytes]:
    """Call ``method`` with ``payload`` (streams send it twice); the responses."""
    path = f"/test.Echo/{method}"
    if method == "Unary":
        return [await ch.unary_unary(path, None, None)(payload, timeout=5)]
    if method == "ServerStream":
        return [r async for r in ch.unary_stream(path, None, None)(payload, timeout=5)]
    if method == "ClientStream":
        return [await ch.stream_unary(path, None, None)(iter([b"x", payload]), timeout=5)]
    return [r async for r in ch.stream_stream(path, None, None)(iter([b"x", payload]), timeout=5)]


ARITIES = ["Unary", "ServerStream", "ClientStream", "BidiGenerator", "BidiWrite"]


@pytest.mark.parametrize("method", ARITIES)
async def test_every_arity_is_traced_over_the_whole_handler(rig: Rig, method: str) -> None:
    echo = Echo()
    address = await rig.serve(echo.register)
    responses = await echo_call(rig.channel(address), method, b"ok")
    assert responses
    name = f"test.Echo/{method}"
    # streaming calls end their client span from the call's done callback
    c, s = await finished_pair(rig, name)
    assert_parent(s, c)
    assert dict(s.attributes or {})["rpc.grpc.status_code"] == 0
    assert dict(c.attributes or {})["rpc.grpc.status_code"] == 0
    # the span covers the handler to its end, not just the interceptor's own call
    assert s.end_time is not None and s.end_time >= echo.finished_ns[method]
    assert c.end_time is not None and c.end_time >= s.end_time


async def test_a_stream_cancelled_while_sending_ends_its_span_cleanly(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """The client cancels a server stream while the server waits to send: the span ends
    CANCELLED, with no "Failed to detach context" error (the span's context had been
    attached across the handler's yields, then detached by the loop's finaliser, in
    another context)."""
    address = await rig.serve(Echo().register)
    ch = rig.channel(address)
    with caplog.at_level(logging.ERROR, logger="opentelemetry.context"):
        for _ in range(3):
            call = ch.unary_stream("/test.Echo/Flood", None, None)(b"", timeout=10)
            await call.read()
            await asyncio.sleep(0.2)  # the server's next sends wait on the client
            call.cancel()
        await wait_for(
            lambda: (
                len(by_kind(rig.spans.get_finished_spans(), "test.Echo/Flood", SpanKind.SERVER))
                == 3
            )
        )
        gc.collect()  # (finalisers of abandoned generators run now, if not before)
        await asyncio.sleep(0.2)
    servers = by_kind(rig.spans.get_finished_spans(), "test.Echo/Flood", SpanKind.SERVER)
    assert [dict(s.attributes or {})["rpc.grpc.status_code"] for s in servers] == [1, 1, 1]
    assert not [r for r in caplog.records if "detach" in r.getMessage()]


@pytest.mark.parametrize("method", ARITIES)
@pytest.mark.parametrize(
    ("payload", "code", "server_error"),
    [
        (b"refuse", grpc.StatusCode.FAILED_PRECONDITION, False),
        (b"crash", grpc.StatusCode.UNKNOWN, True),
    ],
)
async def test_every_arity_records_failures(
    rig: Rig, method: str, payload: bytes, code: grpc.StatusCode, server_error: bool
) -> None:
    address = await rig.serve(Echo().register)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await echo_call(rig.channel(address), method, payload)
    assert err.value.code() is code
    name = f"test.Echo/{method}"
    c, s = await finished_pair(rig, name)
    assert_parent(s, c)
    assert dict(s.attributes or {})["rpc.grpc.status_code"] == code.value[0]
    assert dict(c.attributes or {})["rpc.grpc.status_code"] == code.value[0]
    assert c.status.status_code is StatusCode.ERROR
    assert s.status.status_code is (StatusCode.ERROR if server_error else StatusCode.UNSET)
    # a crash is recorded as an exception event; an abort with a status is not
    crashes = [dict(e.attributes or {}) for e in s.events if e.name == "exception"]
    assert bool(crashes) is server_error
    # its type only: a message or stack could carry a request's values out of the region
    assert crashes == ([{"exception.type": "builtins.RuntimeError"}] if server_error else [])
    server = counts_by(histogram_points(rig.reader, "rpc.server.duration"), "rpc.grpc.status_code")
    assert server == {(code.value[0],): 1}


async def test_deadline_exceeded_is_recorded_on_both_sides(rig: Rig) -> None:
    release = asyncio.Event()

    async def slow(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await release.wait()
        return request

    def register(server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(slow)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Slow", {"Wait": handler}),)
        )

    address = await rig.serve(register)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rig.channel(address).unary_unary("/test.Slow/Wait", None, None)(b"", timeout=0.05)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    c, s = await finished_pair(rig, "test.Slow/Wait")
    assert dict(c.attributes or {})["rpc.grpc.status_code"] == 4
    assert dict(s.attributes or {})["rpc.grpc.status_code"] in (1, 4)  # CANCELLED or DEADLINE
    release.set()


async def test_nested_call_is_a_child_of_the_server_span(rig: Rig) -> None:
    """A handler's outgoing call continues the incoming trace (the fan-out pattern)."""
    inner = await rig.serve(region_node("ap-south-1"))
    inner_stub = region_node_pb2_grpc.RegionNodeServiceStub(rig.channel(inner, "ap-south-1"))

    async def relay(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        info = await inner_stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=5)
        return bytes(info.region_id.encode())

    def register(server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(relay)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Relay", {"Ask": handler}),)
        )

    outer = await rig.serve(register)
    assert (
        await rig.channel(outer).unary_unary("/test.Relay/Ask", None, None)(b"", timeout=5)
        == b"ap-south-1"
    )
    await wait_for(lambda: both_finished(rig, "test.Relay/Ask"))
    await wait_for(lambda: both_finished(rig, f"{RNS}/GetNodeInfo"))
    spans = rig.finished()
    outer_c, outer_s = pair(spans, "test.Relay/Ask")
    inner_c, inner_s = pair(spans, f"{RNS}/GetNodeInfo")
    assert_parent(outer_s, outer_c)
    assert_parent(inner_c, outer_s)
    assert_parent(inner_s, inner_c)
    assert len({trace_id(s) for s in spans}) == 1


# --------------------------------------------------------------------------- full path


def global_query_trace_problems(
    spans: Sequence[ReadableSpan], regions: Sequence[str], instances_per_region: int = 1
) -> list[str]:
    """What is wrong with the trace of the one global query among ``spans`` ([] if fine).

    Expected: one SERVER ``CoordinatorService/GetGlobalMetrics`` span; under it, one
    CLIENT ``RegionNodeService/GetSummaries`` span per region instance (labelled with
    its region); under each of those, that instance's SERVER span; all in one trace.
    For the lead's wired mesh test, call this on the in-memory exporter's spans.
    """
    problems: list[str] = []
    roots = by_kind(spans, "nethical_grpc.v1.CoordinatorService/GetGlobalMetrics", SpanKind.SERVER)
    if len(roots) != 1:
        return [f"expected 1 coordinator SERVER span, found {len(roots)}"]
    [root] = roots
    in_trace = [s for s in spans if trace_id(s) == trace_id(root)]
    fan_out = [
        s
        for s in by_kind(in_trace, f"{RNS}/GetSummaries", SpanKind.CLIENT)
        if s.parent is not None and s.parent.span_id == span_id(root)
    ]
    expected = sorted(r for r in regions for _ in range(instances_per_region))
    got = sorted(str(dict(s.attributes or {}).get("nethical.peer.region")) for s in fan_out)
    if got != expected:
        problems.append(f"fan-out CLIENT spans under the coordinator span: {got} != {expected}")
    served = by_kind(in_trace, f"{RNS}/GetSummaries", SpanKind.SERVER)
    for call in fan_out:
        children = [s for s in served if s.parent is not None and s.parent.span_id == span_id(call)]
        if len(children) != 1:
            problems.append(f"call {span_id(call):x} has {len(children)} region SERVER spans")
    return problems


async def test_global_query_is_one_trace_across_coordinator_and_regions(rig: Rig) -> None:
    regions = ["eu-west-1", "us-east-1"]
    addresses = {r: await rig.serve(region_node(r)) for r in regions}
    # the coordinator as the lead will wire it: instance channels carry client interceptors
    registry = InstanceRegistry({})
    for region, address in addresses.items():
        inst = registry.add(region, address)
        await inst.channel.close(None)
        inst.channel = grpc.aio.insecure_channel(
            address, interceptors=rig.tel.client_interceptors(address, region)
        )
        inst.stub = region_node_pb2_grpc.RegionNodeServiceStub(inst.channel)
    registry.start()
    try:
        assert await registry.wait_ready(10.0)
        # telemetry is wired here but not activated process-wide, so say what "auto"
        # picks when it is: a unary call per region query, each its own span
        servicer = CoordinatorServicer(Federation(registry, SummaryTransport.UNARY))
        coordinator = await rig.serve(
            lambda s: coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(servicer, s)
        )
        response = await client.global_metrics(
            rig.channel(coordinator), client.QueryOptions(), timeout=10
        )
    finally:
        await registry.close()
    assert sorted(response.coverage.regions_answered) == regions
    await wait_for(
        lambda: both_finished(rig, "nethical_grpc.v1.CoordinatorService/GetGlobalMetrics")
    )
    spans = rig.finished()
    assert global_query_trace_problems(spans, regions) == []
    caller, root = pair(spans, "nethical_grpc.v1.CoordinatorService/GetGlobalMetrics")
    assert_parent(root, caller)


# --------------------------------------------------------------------------- metrics


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body: bytes = resp.read()
    return body.decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def pick(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= ls)


@pytest.fixture
async def prom() -> AsyncIterator[Rig]:
    r = new_rig(
        metrics_port=0,
        metrics_host="127.0.0.1",
        resource_attributes={"nethical.region": "us-east-1"},
    )
    yield r
    await r.close()


async def exercise(r: Rig) -> None:
    """Three good calls and one bad one, plus one of each recorder call."""
    address = await r.serve(region_node("us-east-1"))
    stub = region_node_pb2_grpc.RegionNodeServiceStub(r.channel(address, "us-east-1"))
    for _ in range(3):
        await stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetSummaries(bad_range_request(), timeout=5)
    rec = r.tel.recorder
    rec.record_ingest(batches=4, values=1000)
    rec.record_health_transition("eu-west-1", "10.0.0.7:50051", "not_serving")
    rec.record_coverage(queried=3, answered=2)
    rec.record_coverage(queried=4, answered=4, level="instance")
    rec.record_region_query("us-east-1", 0.003, "ok")
    rec.record_region_query("eu-west-1", 2.0, "deadline_exceeded")
    rec.record_evaluations({"ALLOW": 3, "BLOCK": 1, "RESTRICT": 0})
    rec.record_dropped_records(2)
    rec.record_gateway_call("eu-west-1", "eu-west-1", "answered", 3)
    rec.record_gateway_call("eu-west-1", "us-east-1", "answered")
    rec.record_gateway_call("", "", "no_instance")
    up = {"10.0.0.7:50051": True, "10.0.0.8:50051": False}
    rec.observe_instances(lambda: [("eu-west-1", name, ok) for name, ok in up.items()])
    rec.observe_stores(
        lambda: [("timeseries", "sqlite (memory)", True, True), ("audit", "sqlite", False, False)]
    )
    rec.observe_store_evictions(
        lambda: [("timeseries", "sqlite (memory)", 0), ("audit", "memory", 5)]
    )
    rec.observe_windows(lambda: (3, 10, 4))
    rec.observe_gaps(lambda: ["STORE_FALLBACK", "PEERS_STALE"])
    rec.observe_wal(lambda: (3, 12_345_678))


async def test_prometheus_endpoint_serves_rpc_and_mesh_metrics(prom: Rig) -> None:
    assert prom.tel.metrics_port is not None and prom.tel.metrics_port > 0
    await exercise(prom)
    found = samples(await asyncio.to_thread(scrape, prom.tel.metrics_port))

    ok = {"rpc_method": "GetNodeInfo", "rpc_grpc_status_code": "0"}
    bad = {"rpc_method": "GetSummaries", "rpc_grpc_status_code": "3"}
    assert pick(found, "rpc_server_duration_seconds_count", **ok) == 3
    assert pick(found, "rpc_server_duration_seconds_count", **bad) == 1
    assert (
        pick(found, "rpc_client_duration_seconds_count", nethical_peer_region="us-east-1", **ok)
        == 3
    )
    assert pick(found, "rpc_client_duration_seconds_count", **bad) == 1
    # every sample is in the +Inf bucket; the region resource attribute labels every series
    assert pick(found, "rpc_server_duration_seconds_bucket", le="+Inf", **ok) == 3
    assert pick(found, "rpc_server_duration_seconds_count", nethical_region="us-east-1") == 4

    assert pick(found, "nethical_ingest_batches_total") == 4
    assert pick(found, "nethical_ingest_observations_total") == 1000
    assert (
        pick(
            found,
            "nethical_health_transitions_total",
            region="eu-west-1",
            node_instance="10.0.0.7:50051",
            status="not_serving",
        )
        == 1
    )
    assert pick(found, "nethical_fanout_queried_total", level="region") == 3
    assert pick(found, "nethical_fanout_answered_total", level="region") == 2
    assert pick(found, "nethical_fanout_answered_total", level="instance") == 4
    # 2/3 answered: above the 0.5 bound, within 0.75; the complete instance fan-out is at 1
    assert pick(found, "nethical_fanout_coverage_bucket", level="region", le="0.5") == 0
    assert pick(found, "nethical_fanout_coverage_bucket", level="region", le="0.75") == 1
    assert pick(found, "nethical_fanout_coverage_bucket", level="instance", le="0.99") == 0
    assert pick(found, "nethical_fanout_coverage_bucket", level="instance", le="1.0") == 1
    bounds = {dict(ls)["le"] for n, ls in found if n == "nethical_fanout_coverage_bucket"}
    assert bounds == {"0.0", "0.25", "0.5", "0.75", "0.9", "0.99", "1.0", "+Inf"}
    # each region's query of the fan-out, by outcome
    query = "nethical_fanout_region_duration_seconds"
    assert pick(found, f"{query}_count", region="us-east-1", outcome="ok") == 1
    assert pick(found, f"{query}_bucket", region="us-east-1", outcome="ok", le="0.005") == 1
    assert pick(found, f"{query}_count", region="eu-west-1", outcome="deadline_exceeded") == 1
    # decisions, dropped records; the states read at the scrape
    assert pick(found, "nethical_evaluations_total", decision="ALLOW") == 3
    assert pick(found, "nethical_evaluations_total", decision="BLOCK") == 1
    assert pick(found, "nethical_evaluations_total", decision="RESTRICT") == 0
    assert pick(found, "nethical_store_records_dropped_total") == 2
    assert pick(found, "nethical_instance_up", node_instance="10.0.0.7:50051") == 1
    assert pick(found, "nethical_instance_up", node_instance="10.0.0.8:50051") == 0
    assert pick(found, "nethical_store_up", store="timeseries") == 1
    assert pick(found, "nethical_store_up", store="audit", backend="sqlite") == 0
    assert pick(found, "nethical_store_fallback", store="timeseries") == 1
    assert pick(found, "nethical_store_fallback", store="audit") == 0
    assert pick(found, "nethical_store_records_evicted_total", store="audit", backend="memory") == 5
    assert pick(found, "nethical_store_records_evicted_total", store="timeseries") == 0
    assert pick(found, "nethical_series_held") == 3
    assert pick(found, "nethical_windows_held", kind="window") == 10
    assert pick(found, "nethical_windows_held", kind="rollup") == 4
    assert pick(found, "nethical_data_gaps", reason="STORE_FALLBACK") == 1
    assert pick(found, "nethical_data_gaps", reason="PEERS_STALE") == 1
    assert pick(found, "nethical_data_gaps") == 2  # no other reason
    assert pick(found, "nethical_wal_size_bytes") == 12_345_678
    calls = "nethical_gateway_calls_total"
    assert pick(found, calls, region="eu-west-1", served_region="eu-west-1") == 3
    assert pick(found, calls, region="eu-west-1", served_region="us-east-1") == 1
    assert pick(found, calls, region="any", served_region="none", outcome="no_instance") == 1


async def test_recorder_rejects_impossible_counts(rig: Rig) -> None:
    rec = rig.tel.recorder
    assert rec.enabled
    with pytest.raises(ValueError, match="answered <= queried"):
        rec.record_coverage(queried=2, answered=3)
    with pytest.raises(ValueError, match="level"):
        rec.record_coverage(1, 1, level="zone")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        rec.record_ingest(-1, 5)
    with pytest.raises(ValueError, match="non-empty"):
        rec.record_health_transition("eu-west-1", "", "serving")
    with pytest.raises(ValueError, match="outcome must be one of"):
        rec.record_gateway_call("eu-west-1", "eu-west-1", "ok")
    with pytest.raises(ValueError, match=">= 0"):
        rec.record_gateway_call("eu-west-1", "eu-west-1", "answered", -1)
    # a fan-out that asked nobody counts, but has no coverage fraction
    rec.record_coverage(0, 0)
    assert histogram_points(rig.reader, "nethical.fanout.coverage") == []


def test_configuration_is_validated() -> None:
    with pytest.raises(ValueError, match="service_name"):
        configure_telemetry("", metrics_port=0)
    with pytest.raises(ValueError, match="metrics_port"):
        configure_telemetry("svc", metrics_port=70000)
    with pytest.raises(ValueError, match="otlp_endpoint"):
        configure_telemetry("svc", otlp_endpoint=" ")
    with pytest.raises(ValueError, match="interval"):
        configure_telemetry("svc", console=True, otlp_export_interval_s=0)
    assert telemetry.active_telemetry() is None


# --------------------------------------------------------------------------- off mode


def test_off_mode_installs_nothing() -> None:
    assert telemetry.active_telemetry() is None
    assert telemetry.get_recorder() is telemetry.NOOP
    assert telemetry.server_interceptors() == []
    assert telemetry.client_interceptors("127.0.0.1:1", "us-east-1") == []
    # off, a traced call is a shared do-nothing scope that passes the caller's metadata
    with telemetry.traced_call("/a.B/C") as scope:
        assert scope.metadata is None
    assert telemetry.traced_call("/a.B/C") is scope
    assert telemetry.traced_call("/a.B/C", metadata=[("k", "v")]).metadata == [("k", "v")]
    # the no-op recorder neither validates nor fails
    telemetry.NOOP.record_coverage(1, 5)
    telemetry.NOOP.record_ingest(-1, -1)
    assert not telemetry.NOOP.enabled

    off = configure_telemetry("svc")  # nothing to export to: telemetry stays off
    assert not off.enabled
    assert off.server_interceptors() == [] and off.client_interceptors() == []
    assert off.metrics_port is None and off.recorder is telemetry.NOOP
    assert telemetry.active_telemetry() is None
    off.shutdown()


def test_off_mode_imports_no_opentelemetry() -> None:
    code = (
        "import sys, nethical_grpc.telemetry as t\n"
        "assert t.server_interceptors() == [] and t.get_recorder() is t.NOOP\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('opentelemetry', 'prometheus_client')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]"


async def test_activation_routes_the_process_functions() -> None:
    r = new_rig()
    other = InMemorySpanExporter()
    try:
        # not yet active: the process functions still say off
        assert telemetry.get_recorder() is telemetry.NOOP
        r2 = configure_telemetry("svc", span_exporters=[other], activate=True)
        try:
            assert telemetry.active_telemetry() is r2
            assert len(telemetry.server_interceptors()) == 1
            assert len(telemetry.client_interceptors("127.0.0.1:1")) == 4
            with telemetry.traced_call("/a.B/C", "127.0.0.1:1") as scope:
                assert scope.metadata is not None
                assert [k for k, _ in scope.metadata] == ["traceparent"]
            [span] = other.get_finished_spans()
            assert (span.name, span.kind) == ("a.B/C", SpanKind.CLIENT)
            assert telemetry.get_recorder() is telemetry.NOOP  # traces only: no metrics
            with pytest.raises(RuntimeError, match="already configured"):
                configure_telemetry("svc2", span_exporters=[InMemorySpanExporter()])
        finally:
            r2.shutdown()
        assert telemetry.active_telemetry() is None
        assert telemetry.server_interceptors() == []
    finally:
        await r.close()


# --------------------------------------------------------------------------- OTLP


@dataclass
class Collector:
    """An in-process OTLP/gRPC collector (synchronous server: exporters block while
    they send, so it must not share the test's event loop)."""

    spans: list[tuple[str, int]] = field(default_factory=list)
    metrics: set[str] = field(default_factory=set)

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC method name)
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    self.spans.extend((s.name, s.kind) for s in ss.spans)
            return trace_service_pb2.ExportTraceServiceResponse()
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                self.metrics.update(m.name for m in sm.metrics)
        return metrics_service_pb2.ExportMetricsServiceResponse()


async def test_otlp_exports_spans_and_metrics_to_a_collector() -> None:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    tel = configure_telemetry("otlp-test", otlp_endpoint=f"127.0.0.1:{port}", activate=False)
    r = Rig(tel, InMemorySpanExporter(), InMemoryMetricReader())
    try:
        address = await r.serve(region_node("us-east-1"))
        stub = region_node_pb2_grpc.RegionNodeServiceStub(r.channel(address))
        await stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=5)
        assert await asyncio.to_thread(tel.force_flush, 10.0)
    finally:
        await r.close()
        server.stop(0)
    name = f"{RNS}/GetNodeInfo"
    assert (name, 2) in collector.spans and (name, 3) in collector.spans  # SERVER, CLIENT
    assert {"rpc.server.duration", "rpc.client.duration"} <= collector.metrics


# --------------------------------------------------------------------------- propagation

ids = st.tuples(
    st.integers(min_value=1, max_value=2**128 - 1),
    st.integers(min_value=1, max_value=2**64 - 1),
    st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(
    ids,
    st.lists(
        st.tuples(st.sampled_from(["a", "x-user", "traceparent"]), st.text("abc", max_size=5))
    ),
)
def test_trace_context_round_trips_through_metadata(
    ctx_ids: tuple[int, int, bool], extra: list[tuple[str, str]]
) -> None:
    tid, sid, sampled = ctx_ids
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    parent = SpanContext(tid, sid, is_remote=True, trace_flags=flags)
    ctx = trace.set_span_in_context(trace.NonRecordingSpan(parent))
    metadata = inject_metadata(extra, ctx)
    # the propagator's own header appears once, replacing a stale one; the rest is kept
    assert [k for k, _ in metadata].count("traceparent") == 1
    assert [kv for kv in metadata if kv[0] != "traceparent"] == [
        kv for kv in extra if kv[0] != "traceparent"
    ]
    got = trace.get_current_span(extract_context(metadata)).get_span_context()
    assert (got.trace_id, got.span_id, got.trace_flags.sampled) == (tid, sid, sampled)
    assert got.is_remote


def test_missing_or_malformed_trace_headers_start_a_new_trace() -> None:
    for metadata in (None, [], [("traceparent", "00-zz-yy-01")], [("traceparent", b"\x00")]):
        span = trace.get_current_span(extract_context(metadata))
        assert not span.get_span_context().is_valid


# --------------------------------------------------------------------------- dashboard

_PROMQL_WORDS = {
    "sum", "rate", "irate", "increase", "histogram_quantile", "by", "without", "on",
    "ignoring", "group_left", "group_right", "clamp_min", "clamp_max", "max", "min", "avg",
    "count", "topk", "bottomk", "or", "and", "unless", "offset", "le", "vector", "scalar",
    "label_replace", "abs", "delta", "deriv", "sum_over_time", "avg_over_time", "bool",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers outside label matchers, grouping
    clauses, range selectors and strings, that are not PromQL functions or keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', " ", expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return {n for n in names if n not in _PROMQL_WORDS and not re.fullmatch(r"\d+(?:e\d+)?", n)}


def dashboard_exprs(doc: dict[str, Any]) -> list[str]:
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", ()) if "expr" in t)
            walk(panel.get("panels", []))

    walk(doc["panels"])
    return exprs


def test_promql_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, rpc_method) (rate(rpc_server_duration_seconds_bucket"
        '{rpc_service=~"$service", job="x"}[$__rate_interval])))'
        " / on (rpc_method) group_left sum(rate(a_total[5m]))"
    )
    assert promql_metric_names(expr) == {"rpc_server_duration_seconds_bucket", "a_total"}


async def test_dashboard_queries_only_exported_metrics(prom: Rig) -> None:
    doc = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    exprs = dashboard_exprs(doc)
    assert len(exprs) >= 6
    await exercise(prom)
    assert prom.tel.metrics_port is not None
    scraped = samples(await asyncio.to_thread(scrape, prom.tel.metrics_port))
    exported = {name for name, _ in scraped}
    # Prometheus owns "instance" and "job" (the scraped target): a metric's own would be
    # renamed exported_*, and a panel grouping by it would show the coordinator instead
    for name, labels in scraped:
        assert not {"instance", "job"} & {k for k, _ in labels}, name
    # every label a panel groups by is on the metrics it groups, or is one Prometheus
    # adds to every series of a target (job, instance: the scraped process)
    for expr in exprs:
        names = promql_metric_names(expr)
        present = {k for n, ls in scraped if n in names for k, _ in ls} | {"job", "instance"}
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            for label in (x.strip() for x in group.split(",")):
                assert label in present, f"{label!r} is on none of {sorted(names)}"
    used: set[str] = set()
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exported, f"{sorted(names - exported)} not exported (in {expr!r})"
        used |= names
    # every family the mesh exports is on the dashboard
    for family in PROMETHEUS_METRICS.values():
        assert any(u.startswith(family) for u in used), f"{family} missing from the dashboard"
    for panel in doc["panels"]:
        if panel.get("type") != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
