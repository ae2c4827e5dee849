"""Telemetry exports at their edges: a bad OTLP endpoint, a collector that is down, the
exporters' log lines, and what a Prometheus scrape holds besides the mesh's metrics."""

from __future__ import annotations

import logging
import socket
import time
import urllib.request

import pytest

from nethical_grpc.telemetry.setup import (
    EXPORT_TIMEOUT_S,
    _OncePerInterval,
    checked_otlp_endpoint,
    configure_telemetry,
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:4317", "http://127.0.0.1:4317"),
        ("collector.monitoring:4317", "http://collector.monitoring:4317"),
        ("https://otel.example:443", "https://otel.example:443"),
        ("  http://[::1]:4317 ", "http://[::1]:4317"),
    ],
)
def test_good_otlp_endpoints(given: str, expected: str) -> None:
    assert checked_otlp_endpoint(given) == expected


@pytest.mark.parametrize(
    "given", ["not a url::", "collector", "ftp://h:21", "http://h:99999", "http://:4317"]
)
def test_bad_otlp_endpoints_are_refused_at_start(given: str) -> None:
    with pytest.raises(ValueError, match="bad OTLP endpoint"):
        checked_otlp_endpoint(given)
    with pytest.raises(ValueError, match="bad OTLP endpoint"):
        configure_telemetry("svc", otlp_endpoint=given, activate=False)


def test_the_endpoints_password_stays_out_of_errors_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(ValueError) as err:
        checked_otlp_endpoint("http://otel:S3cr3t@collector:notaport")
    assert "S3cr3t" not in str(err.value)
    port = _free_port()
    # credentials in the user part are refused (the exporter would dial them as the
    # host and log them); a password in the query string is kept out of the log line
    with pytest.raises(ValueError) as err:
        configure_telemetry(
            "svc", otlp_endpoint=f"http://otel:S3cr3t@127.0.0.1:{port}", activate=False
        )
    assert "S3cr3t" not in str(err.value)
    with caplog.at_level(logging.INFO, logger="nethical_grpc.telemetry.setup"):
        handle = configure_telemetry(
            "svc", otlp_endpoint=f"http://127.0.0.1:{port}/?password=S3cr3t", activate=False
        )
    handle.shutdown()
    text = caplog.text
    assert f"otlp=http://127.0.0.1:{port}/?password=***" in text
    assert "S3cr3t" not in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_collector_that_is_down_does_not_hold_the_stop() -> None:
    """Spans and metrics wait for a collector nobody runs; the stop still ends within a
    few export timeouts (the exporters' own retries took 36 s before)."""
    handle = configure_telemetry(
        "svc", otlp_endpoint=f"127.0.0.1:{_free_port()}", otlp_export_interval_s=0.2, activate=False
    )
    for i in range(2_000):
        with handle.tracer.start_as_current_span(f"span-{i}"):
            pass
    handle.recorder.record_ingest(1, 10)
    time.sleep(0.5)  # a metrics export has started failing
    started = time.monotonic()
    handle.shutdown()
    assert time.monotonic() - started < 4 * EXPORT_TIMEOUT_S


def test_exporter_log_lines_pass_once_per_interval() -> None:
    gate = _OncePerInterval(interval_s=0.2)

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("opentelemetry.exporter.x", logging.WARNING, "", 0, msg, (), None)

    first = record("Failed to export %s")
    assert gate.filter(first)
    assert not any(gate.filter(record("Failed to export %s")) for _ in range(5))
    assert gate.filter(record("another message"))  # each message has its own turn
    time.sleep(0.25)
    later = record("Failed to export %s")
    assert gate.filter(later)
    assert "(5 more like it in the last 0.2 s)" in str(later.msg)


def test_a_scrape_holds_the_process_and_interpreter_metrics() -> None:
    handle = configure_telemetry("svc", metrics_port=0, metrics_host="127.0.0.1", activate=False)
    try:
        assert handle.metrics_port is not None
        url = f"http://127.0.0.1:{handle.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read().decode()
    finally:
        handle.shutdown()
    names = {line.split("{")[0].split(" ")[0] for line in body.splitlines() if line[:1] != "#"}
    for wanted in (
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "python_info",
        "python_gc_collections_total",
    ):
        assert wanted in names, wanted
