"""Telemetry review: exports whose exporter is not installed, and callers whose trace
headers are malformed, over real gRPC servers on 127.0.0.1 port 0."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from nethical_grpc.telemetry import active_telemetry
from nethical_grpc.telemetry.setup import configure_telemetry

# --------------------------------------------------------------------------- exporters

OTLP = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"


@pytest.mark.parametrize(
    ("missing", "distribution", "kwargs"),
    [
        ("opentelemetry.exporter.prometheus", "opentelemetry-exporter-prometheus", {}),
        ("prometheus_client", "prometheus-client", {}),
        (OTLP, "opentelemetry-exporter-otlp-proto-grpc", {"otlp_endpoint": "127.0.0.1:9"}),
        # the traces' OTLP exporter was built (and its thread started) before the
        # Prometheus reader found its module missing
        (
            "opentelemetry.exporter.prometheus",
            "opentelemetry-exporter-prometheus",
            {"otlp_endpoint": "127.0.0.1:9", "metrics_port": 0},
        ),
    ],
)
def test_an_export_whose_exporter_is_missing_is_a_clear_error_that_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, missing: str, distribution: str, kwargs: dict[str, Any]
) -> None:
    """opentelemetry-sdk installed without an exporter: ``configure_telemetry`` said
    ``ModuleNotFoundError: No module named ...`` (a traceback from the CLI), after
    starting what came before."""
    monkeypatch.setitem(sys.modules, missing, None)
    threads = set(threading.enumerate())
    options: dict[str, Any] = {"metrics_port": 0, "metrics_host": "127.0.0.1", **kwargs}
    with pytest.raises(ValueError, match=r"nethical-mesh\[telemetry\]") as err:
        configure_telemetry("review36", **options)
    assert distribution in str(err.value)
    assert active_telemetry() is None
    assert set(threading.enumerate()) <= threads


_CLI_WITHOUT_PROMETHEUS = """
import sys
sys.modules["opentelemetry.exporter.prometheus"] = None
from nethical_grpc.cli.main import main
sys.exit(main(["region", "--region-id", "r1", "--host", "127.0.0.1", "--port", "0",
               "--metrics-port", "0"]))
"""


def test_the_cli_names_the_missing_exporter_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CLI_WITHOUT_PROMETHEUS],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "opentelemetry-exporter-prometheus" in done.stderr
    assert "pip install 'nethical-mesh[telemetry]'" in done.stderr


# --------------------------------------------------------------------------- headers

PROPAGATOR_LOGGERS = (
    "opentelemetry.baggage.propagation",
    "opentelemetry.trace.propagation.tracecontext",
    "opentelemetry.trace.span",
)
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_malformed_trace_headers_neither_break_calls_nor_flood_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Any caller (telemetry runs before the token check) could send a ``baggage`` of
    bad entries and a ``tracestate`` of bad pairs: the propagators logged a warning per
    entry, per call (here 45 a call). The calls succeed, the valid ``traceparent``
    still parents the SERVER span, and the log has at most one line per kind."""
    spans = InMemorySpanExporter()
    tel = configure_telemetry(
        "review36", span_exporters=[spans], metric_readers=[InMemoryMetricReader()], activate=False
    )

    async def unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return request

    server = grpc.aio.server(interceptors=tel.server_interceptors())
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Review36", {"Echo": grpc.unary_unary_rpc_method_handler(unary)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    metadata = (
        ("traceparent", PARENT),
        ("tracestate", ",".join(f"Bad Key{i}=v" for i in range(20))),
        ("baggage", ",".join(f"=no-name-{i}" for i in range(25))),
    )
    calls = 4
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(calls):
                got = await channel.unary_unary("/test.Review36/Echo", None, None)(
                    b"ok", metadata=metadata, timeout=5
                )
                assert got == b"ok"
    finally:
        await channel.close(None)
        await server.stop(0)
        tel.shutdown()
    served = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert len(served) == calls
    for span in served:
        assert span.parent is not None
        assert span.parent.trace_id == int(PARENT.split("-")[1], 16)
    noisy = [r for r in caplog.records if r.name in PROPAGATOR_LOGGERS]
    # one line per message a minute (an earlier test may have had it already)
    assert len(noisy) <= 2, [r.getMessage() for r in noisy[:5]]
