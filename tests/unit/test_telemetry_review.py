"""Telemetry at its edges, over real gRPC servers on 127.0.0.1 port 0: OTLP endpoints
that could never export, caller metadata the client interceptors must not lose, and
the last spans of streams before a shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nethical_grpc.telemetry.client_interceptor import target_attributes
from nethical_grpc.telemetry.propagation import inject_metadata
from nethical_grpc.telemetry.setup import Telemetry, checked_otlp_endpoint, configure_telemetry

# --------------------------------------------------------------------------- endpoints


@pytest.mark.parametrize(
    "given",
    [
        "http://otel:S3cr3t@collector:4317",
        "otel:S3cr3t@collector:4317",
        "https://token@collector:4317",
    ],
)
def test_an_endpoint_with_credentials_is_refused_at_start(given: str) -> None:
    """The OTLP/gRPC exporter sends no credentials from the URL: it dials the user info
    as part of the host name (no export ever succeeds) and logs the password in every
    failed export's line."""
    with pytest.raises(ValueError, match="bad OTLP endpoint") as err:
        checked_otlp_endpoint(given)
    assert "S3cr3t" not in str(err.value) and "token@" not in str(err.value)
    assert "OTEL_EXPORTER_OTLP_HEADERS" in str(err.value)
    with pytest.raises(ValueError, match="bad OTLP endpoint"):
        configure_telemetry("svc", otlp_endpoint=given, activate=False)


@pytest.mark.parametrize("given", ["http://collector", "http://127.0.0.1", "HTTP://[::1]"])
def test_a_plaintext_endpoint_without_a_port_is_refused(given: str) -> None:
    """gRPC's default port is 443: a plaintext endpoint without one would go, in
    plaintext, to the TLS port (not the collector's 4317)."""
    with pytest.raises(ValueError, match="give its port"):
        checked_otlp_endpoint(given)


def test_a_tls_endpoint_may_leave_its_port_to_the_default() -> None:
    assert checked_otlp_endpoint("https://otel.example") == "https://otel.example"


# --------------------------------------------------------------------------- metadata


async def _echo_metadata_server(tel: Telemetry) -> tuple[grpc.aio.Server, str, list[Any]]:
    seen: list[Any] = []

    async def unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        seen.append(tuple((k, v) for k, v in context.invocation_metadata() or ()))
        return request

    server = grpc.aio.server(interceptors=tel.server_interceptors())
    handler = grpc.unary_unary_rpc_method_handler(unary)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Meta", {"Echo": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}", seen


@pytest.fixture
async def traced() -> AsyncIterator[Telemetry]:
    tel = configure_telemetry(
        "review",
        span_exporters=[InMemorySpanExporter()],
        metric_readers=[InMemoryMetricReader()],
        activate=False,
    )
    yield tel
    tel.shutdown()


async def test_the_callers_own_baggage_header_reaches_the_server(traced: Telemetry) -> None:
    """A caller that sets a ``baggage`` header itself (no OpenTelemetry baggage in its
    context) must not lose it when telemetry is on: nothing replaces it."""
    server, address, seen = await _echo_metadata_server(traced)
    channel = grpc.aio.insecure_channel(address, interceptors=traced.client_interceptors(address))
    plain = grpc.aio.insecure_channel(address)
    try:
        mine = (("baggage", "tenant=acme"), ("x-user", "u1"))
        await channel.unary_unary("/test.Meta/Echo", None, None)(b"x", metadata=mine, timeout=5)
        with traced.traced_call("/test.Meta/Echo", address, metadata=mine) as call:
            await plain.unary_unary("/test.Meta/Echo", None, None)(
                b"x", metadata=call.metadata, timeout=5
            )
    finally:
        await channel.close(None)
        await plain.close(None)
        await server.stop(0)
    assert len(seen) == 2
    for md in seen:
        assert ("baggage", "tenant=acme") in md
        assert ("x-user", "u1") in md
        assert [k for k, _ in md].count("traceparent") == 1


def test_owned_headers_are_replaced_by_what_the_context_carries() -> None:
    """Baggage in the context replaces the caller's header (one ``baggage`` entry); a
    stale ``tracestate`` goes with the ``traceparent`` it belonged to."""
    tel = configure_telemetry("review", span_exporters=[InMemorySpanExporter()], activate=False)
    try:
        span = tel.tracer.start_span("parent")
        ctx = baggage.set_baggage("tenant", "ctx", trace.set_span_in_context(span))
        token = otel_context.attach(ctx)
        try:
            out = inject_metadata(
                [
                    ("baggage", "tenant=mine"),
                    ("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01"),
                    ("tracestate", "vendor=stale"),
                    ("k", "v"),
                ]
            )
        finally:
            otel_context.detach(token)
        span.end()
    finally:
        tel.shutdown()
    keys = [k for k, _ in out]
    assert keys.count("baggage") == 1 and ("baggage", "tenant=ctx") in out
    assert keys.count("traceparent") == 1 and "1" * 32 not in dict(out)["traceparent"]
    assert "tracestate" not in keys
    assert ("k", "v") in out


# --------------------------------------------------------------------------- shutdown


async def _stream_server() -> tuple[grpc.aio.Server, str]:
    async def ticks(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        for _ in range(int(request or b"1000")):
            await asyncio.sleep(0.001)
            yield b"t"

    server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(ticks)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Ticks", {"Run": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.mark.parametrize("how", ["cancelled", "read to the end"])
async def test_a_finished_streams_span_is_exported_by_a_shutdown_right_after(how: str) -> None:
    """A stream's CLIENT span ended in a task of its own, scheduled by the call's done
    callback: a shutdown in the same step (a draining process closes its channels, then
    stops telemetry) lost it ("Processor is already shutdown")."""
    spans = InMemorySpanExporter()
    tel = configure_telemetry("review", span_exporters=[spans], activate=False)
    server, address = await _stream_server()
    channel = grpc.aio.insecure_channel(address, interceptors=tel.client_interceptors(address))
    try:
        if how == "cancelled":
            call = channel.unary_stream("/test.Ticks/Run", None, None)(b"", timeout=5)
            await call.read()
            call.cancel()
            code = grpc.StatusCode.CANCELLED
        else:
            call = channel.unary_stream("/test.Ticks/Run", None, None)(b"3", timeout=5)
            assert [r async for r in call] == [b"t"] * 3
            assert await call.code() is grpc.StatusCode.OK
            code = grpc.StatusCode.OK
        tel.shutdown()  # no await in between: nothing else runs first
    finally:
        await channel.close(None)
        await server.stop(0)
    [span] = [s for s in spans.get_finished_spans() if s.name == "test.Ticks/Run"]
    assert dict(span.attributes or {})["rpc.grpc.status_code"] == code.value[0]


@pytest.mark.parametrize(
    ("target", "want"),
    [
        ("node.mesh:50051", {"server.address": "node.mesh", "server.port": 50051}),
        ("[::1]:50051", {"server.address": "::1", "server.port": 50051}),
        ("dns:///node.mesh:443", {"server.address": "node.mesh", "server.port": 443}),
        ("dns://8.8.8.8/node.mesh:50051", {"server.address": "node.mesh", "server.port": 50051}),
        ("dns:node.mesh:50051", {"server.address": "node.mesh", "server.port": 50051}),
        ("ipv4:127.0.0.1:50051", {"server.address": "127.0.0.1", "server.port": 50051}),
        ("ipv4:10.0.0.1:1,10.0.0.2:2", {"server.address": "10.0.0.1", "server.port": 1}),
        ("ipv6:[::1]:50051", {"server.address": "::1", "server.port": 50051}),
        ("unix:/run/node.sock", {"server.address": "/run/node.sock"}),
        ("unix:///run/node.sock", {"server.address": "/run/node.sock"}),
        ("unix-abstract:node", {"server.address": "node"}),
        ("node.mesh", {"server.address": "node.mesh"}),
    ],
)
def test_span_server_attributes_name_the_host_of_any_grpc_target(
    target: str, want: dict[str, object]
) -> None:
    """gRPC's target forms (name syntax): the scheme is not part of the host."""
    assert target_attributes(target) == want
