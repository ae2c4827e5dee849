"""Turn telemetry on: providers, exporters, the Prometheus endpoint, the process handle.

:func:`configure_telemetry` builds a :class:`Telemetry` handle that owns its own
``TracerProvider`` and ``MeterProvider`` (the interceptors and the recorder use those
directly), so several handles can live in one process (tests, benchmarks) without
touching OpenTelemetry's global providers. ``install_global=True`` (the CLI) also
installs them as the global providers, which OpenTelemetry allows once per process.

Exports:

* ``metrics_port``: a Prometheus text endpoint served by prometheus_client on
  ``metrics_host:metrics_port`` from a registry private to the handle (port 0 picks a
  free port; :attr:`Telemetry.metrics_port` says which);
* ``otlp_endpoint``: spans (batched) and metrics (every ``otlp_export_interval_s``) over
  OTLP/gRPC; an endpoint without a scheme is taken as plaintext ``http://``;
* ``console``: spans and metrics printed to stdout (debugging);
* ``span_exporters`` / ``metric_readers``: injected (tests use
  ``InMemorySpanExporter``/``InMemoryMetricReader``). Injected span exporters get a
  synchronous processor, so a span is exported the moment it ends.

With none of these, nothing is configured: the handle is disabled, installs no
interceptor and records nothing (:data:`nethical_grpc.telemetry.NOOP`).
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import NoOpTracer, Tracer

from nethical_grpc import __version__
from nethical_grpc.storage.backend import redact_url
from nethical_grpc.telemetry import state
from nethical_grpc.telemetry.client_call import TracedCall
from nethical_grpc.telemetry.client_interceptor import ClientTelemetry
from nethical_grpc.telemetry.instruments import MeterRecorder, RpcInstruments
from nethical_grpc.telemetry.recorder import NOOP, Recorder
from nethical_grpc.telemetry.rpc_attributes import DEFAULT_UNTRACED_SERVICES
from nethical_grpc.telemetry.server_interceptor import TelemetryServerInterceptor
from nethical_grpc.telemetry.state import CallScope, MetadataPairs

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    import grpc

log = logging.getLogger(__name__)

INSTRUMENTATION_NAME = "nethical_grpc.telemetry"
RESOURCE_LABEL_PREFIX = "nethical."
"""Resource attributes with this prefix (e.g. ``nethical.region``) also become labels on
every Prometheus series (``nethical_region``)."""

#: How long one export to the collector may take, retries included; flushing at
#: shutdown is bounded by it too.
EXPORT_TIMEOUT_S = 2

_global_lock = threading.Lock()
_global_installed = False


class Telemetry:
    """A configured (or disabled) telemetry setup; see :func:`configure_telemetry`."""

    def __init__(
        self,
        service_name: str,
        tracer: Tracer,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        rpc_instruments: RpcInstruments | None = None,
        recorder: Recorder = NOOP,
        metrics_port: int | None = None,
        http_server: WSGIServer | None = None,
        untraced_services: Collection[str] = DEFAULT_UNTRACED_SERVICES,
    ) -> None:
        self.service_name = service_name
        self.tracer = tracer
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.rpc_instruments = rpc_instruments
        self._recorder = recorder
        self.metrics_port = metrics_port
        self._http_server = http_server
        self._untraced = frozenset(untraced_services)
        self._server_interceptor: TelemetryServerInterceptor | None = None
        self._clients: dict[tuple[str | None, str | None], ClientTelemetry] = {}
        self._closed = False

    @property
    def enabled(self) -> bool:
        """True when traces or metrics are exported somewhere."""
        return (self.tracer_provider is not None or self.meter_provider is not None) and (
            not self._closed
        )

    @property
    def tracing(self) -> bool:
        return self.tracer_provider is not None

    @property
    def recorder(self) -> Recorder:
        """Records the mesh's own metrics; :data:`NOOP` without a metrics export."""
        return self._recorder

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
        """``[]`` when disabled; else the one server interceptor of this handle."""
        if not self.enabled:
            return []
        if self._server_interceptor is None:
            self._server_interceptor = TelemetryServerInterceptor(
                self.tracer, self.rpc_instruments, self._untraced
            )
        return [self._server_interceptor]

    def client_interceptors(
        self, target: str | None = None, region: str | None = None
    ) -> list[grpc.aio.ClientInterceptor]:
        """``[]`` when disabled; else four interceptors (one per arity) for one channel."""
        if not self.enabled:
            return []
        return ClientTelemetry(
            self.tracer, self.rpc_instruments, target, region, self._untraced
        ).interceptors()

    def traced_call(
        self,
        method: str,
        target: str | None = None,
        region: str | None = None,
        metadata: MetadataPairs | None = None,
    ) -> CallScope:
        """A scope tracing one call made without interceptors; see
        :func:`nethical_grpc.telemetry.traced_call`. A do-nothing scope when disabled."""
        if not self.enabled:
            return CallScope(metadata)
        key = (target, region)
        client = self._clients.get(key)
        if client is None:
            client = ClientTelemetry(
                self.tracer, self.rpc_instruments, target, region, self._untraced
            )
            self._clients[key] = client
        return TracedCall(client, method, metadata)

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Export what is pending now; False if an exporter did not finish in time."""
        ok = True
        millis = int(timeout_s * 1000)
        if self.tracer_provider is not None:
            ok = self.tracer_provider.force_flush(millis) and ok
        if self.meter_provider is not None:
            ok = self.meter_provider.force_flush(millis) and ok
        return ok

    def shutdown(self) -> None:
        """Deactivate, stop the metrics endpoint, flush and stop the providers. Idempotent.

        Interceptors already installed keep working but record into stopped providers
        (their spans and samples are dropped).
        """
        if self._closed:
            return
        self._closed = True
        state.deactivate(self)
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None
        # exporters give up after EXPORT_TIMEOUT_S (a collector that is down must not
        # hold a draining process past its grace period)
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown(timeout_millis=EXPORT_TIMEOUT_S * 1000)


def configure_telemetry(
    service_name: str,
    metrics_port: int | None = None,
    otlp_endpoint: str | None = None,
    console: bool = False,
    *,
    metrics_host: str = "0.0.0.0",
    resource_attributes: Mapping[str, str] | None = None,
    span_exporters: Sequence[SpanExporter] = (),
    metric_readers: Sequence[MetricReader] = (),
    otlp_export_interval_s: float = 10.0,
    untraced_services: Collection[str] = DEFAULT_UNTRACED_SERVICES,
    install_global: bool = False,
    activate: bool = True,
) -> Telemetry:
    """Configure traces and metrics for this process; see the module docstring.

    ``resource_attributes`` are added to ``service.name`` (e.g. ``nethical.region``,
    ``service.instance.id``). ``activate`` makes the handle the one that
    :func:`~nethical_grpc.telemetry.get_recorder`,
    :func:`~nethical_grpc.telemetry.server_interceptors` and
    :func:`~nethical_grpc.telemetry.client_interceptors` return from; a disabled handle
    is never activated.

    Raises ``ValueError`` for an empty service name, a port outside 0..65535, an empty
    OTLP endpoint, a non-positive export interval or an export whose exporter is not
    installed (naming the package and the extra); ``RuntimeError`` when activating
    while another handle is active; ``OSError`` when the metrics port cannot be bound.
    """
    if not service_name:
        raise ValueError("service_name must be non-empty")
    if metrics_port is not None and not 0 <= metrics_port <= 65535:
        raise ValueError(f"metrics_port must be in 0..65535, got {metrics_port}")
    if otlp_endpoint is not None and not otlp_endpoint.strip():
        raise ValueError("otlp_endpoint must be non-empty when given")
    if not otlp_export_interval_s > 0:
        raise ValueError(f"otlp_export_interval_s must be > 0, got {otlp_export_interval_s}")
    endpoint = checked_otlp_endpoint(otlp_endpoint) if otlp_endpoint else None
    # before anything is built: a missing exporter leaves no provider or thread behind
    _require_exporters(otlp=bool(endpoint), prometheus=metrics_port is not None)

    tracing = bool(endpoint or console or span_exporters)
    metering = bool(metrics_port is not None or endpoint or console or metric_readers)
    if not (tracing or metering):
        return Telemetry(service_name, NoOpTracer(), untraced_services=untraced_services)
    if activate and state.active_telemetry() is not None:
        raise RuntimeError("telemetry is already configured in this process; shut it down first")

    resource = Resource.create(
        {
            "service.name": service_name,
            "service.version": __version__,
            **(resource_attributes or {}),
        }
    )
    tracer_provider: TracerProvider | None = None
    tracer: Tracer = NoOpTracer()
    if tracing:
        tracer_provider = _tracer_provider(resource, endpoint, console, span_exporters)
        tracer = tracer_provider.get_tracer(INSTRUMENTATION_NAME, __version__)

    meter_provider: MeterProvider | None = None
    http_server: WSGIServer | None = None
    bound_port: int | None = None
    rpc_instruments: RpcInstruments | None = None
    recorder: Recorder = NOOP
    if metering:
        readers = list(metric_readers)
        registry: Any = None
        if metrics_port is not None:
            reader, registry = _prometheus_reader()
            readers.append(reader)
        if endpoint:
            readers.append(_otlp_metric_reader(endpoint, otlp_export_interval_s))
        if console:
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        meter = meter_provider.get_meter(INSTRUMENTATION_NAME, __version__)
        rpc_instruments = RpcInstruments(meter)
        recorder = MeterRecorder(meter)
        if metrics_port is not None:
            try:
                http_server, bound_port = _serve_metrics(registry, metrics_host, metrics_port)
            except OSError:
                meter_provider.shutdown()
                if tracer_provider is not None:
                    tracer_provider.shutdown()
                raise

    telemetry = Telemetry(
        service_name,
        tracer,
        tracer_provider,
        meter_provider,
        rpc_instruments,
        recorder,
        bound_port,
        http_server,
        untraced_services,
    )
    if install_global:
        _install_global(tracer_provider, meter_provider)
    if activate:
        state.activate(telemetry)
    log.info(
        "telemetry on for %s: traces=%s metrics=%s prometheus_port=%s otlp=%s",
        service_name,
        tracing,
        metering,
        bound_port,
        redact_url(endpoint) if endpoint else None,
    )
    if endpoint:
        quiet_exporter_logs()
    quiet_propagator_logs()
    return telemetry


#: What each export needs beyond opentelemetry-sdk: (module, distribution).
_OTLP_MODULES: Final = (
    (
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        "opentelemetry-exporter-otlp-proto-grpc",
    ),
    (
        "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
        "opentelemetry-exporter-otlp-proto-grpc",
    ),
)
_PROMETHEUS_MODULES: Final = (
    ("prometheus_client", "prometheus-client"),  # first: the exporter imports it
    ("opentelemetry.exporter.prometheus", "opentelemetry-exporter-prometheus"),
)


def _require_exporters(otlp: bool, prometheus: bool) -> None:
    """``ValueError`` naming the package to install when an export asked for has no
    exporter (opentelemetry-sdk alone is installed, say)."""
    needs = [
        *(("OTLP export", m, d) for m, d in (_OTLP_MODULES if otlp else ())),
        *(
            ("the Prometheus endpoint", m, d)
            for m, d in (_PROMETHEUS_MODULES if prometheus else ())
        ),
    ]
    for export, module, distribution in needs:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(
                f"{export} needs {distribution}, which is not installed ({exc}): "
                "pip install 'nethical-mesh[telemetry]'"
            ) from None


def checked_otlp_endpoint(endpoint: str) -> str:
    """``endpoint`` with a scheme (plain ``host:port`` is ``http://``); ValueError unless
    it is an http(s) URL with a host, a valid port (required for ``http``: gRPC would
    take 443) and no user info (credentials go in ``OTEL_EXPORTER_OTLP_HEADERS``)."""
    text = endpoint.strip()
    url = text if "://" in text else f"http://{text}"
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError for a port out of range or not a number
    except ValueError as exc:
        raise ValueError(f"bad OTLP endpoint {redact_url(url)!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in url:
        raise ValueError(
            f"bad OTLP endpoint {redact_url(url)!r}: give http(s)://HOST:PORT or HOST:PORT"
        )
    if parts.username is not None or parts.password is not None:
        # the exporter dials the user info as part of the host (no export succeeds) and
        # names that "host", password and all, in every failed export's log line
        shown = urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))
        raise ValueError(
            f"bad OTLP endpoint {shown!r}: OTLP/gRPC sends no credentials from "
            "the URL; give them as headers in OTEL_EXPORTER_OTLP_HEADERS"
        )
    if port is None and parts.scheme == "http":
        # gRPC's default port is 443: plaintext would go to the TLS port
        raise ValueError(f"bad OTLP endpoint {redact_url(url)!r}: give its port")
    return url


#: OpenTelemetry's exporters log every failed export (a collector that is down: one
#: line every few seconds, for ever); at most one line per message and logger passes in
#: this many seconds, saying how many were held back.
EXPORTER_LOG_INTERVAL_S = 60.0


class _OncePerInterval(logging.Filter):
    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it in the last {self.interval_s:g} s)"
        return True


#: The kinds of log lines :func:`_rate_limit` limits already (each limited once).
_limited: set[str] = set()


def _rate_limit(kind: str, names: Iterable[str], interval_s: float) -> None:
    """One :class:`_OncePerInterval` gate on the loggers ``names``, the first time
    ``kind`` is asked for (later calls add nothing)."""
    if kind in _limited:
        return
    _limited.add(kind)
    gate = _OncePerInterval(interval_s)
    for name in names:
        logging.getLogger(name).addFilter(gate)


def quiet_exporter_logs(interval_s: float = EXPORTER_LOG_INTERVAL_S) -> None:
    """Rate-limit the OTLP exporters' log lines (see :data:`EXPORTER_LOG_INTERVAL_S`)."""
    # a logger's filters see only its own records, not its children's: the filter goes
    # on every exporter and SDK logger there is (their modules are imported by now)
    names = [n for n in logging.Logger.manager.loggerDict if n.startswith(_NOISY_LOGGERS)]
    _rate_limit("exporters", {*names, *_NOISY_LOGGERS}, interval_s)


_NOISY_LOGGERS: Final = ("opentelemetry.exporter", "opentelemetry.sdk")

#: The loggers of the propagators' modules, which log a line for each malformed entry
#: of an incoming header: a caller's ``baggage`` of 180 bad entries was 180 lines per
#: call, from any caller (telemetry runs before the token check).
_PROPAGATOR_LOGGERS: Final = (
    "opentelemetry.baggage.propagation",
    "opentelemetry.trace.propagation.tracecontext",
    "opentelemetry.trace.span",
)


def quiet_propagator_logs(interval_s: float = EXPORTER_LOG_INTERVAL_S) -> None:
    """Rate-limit what the propagators log about the trace headers of incoming calls,
    as :func:`quiet_exporter_logs` does the exporters' lines."""
    _rate_limit("propagators", _PROPAGATOR_LOGGERS, interval_s)


def _tracer_provider(
    resource: Resource,
    endpoint: str | None,
    console: bool,
    span_exporters: Sequence[SpanExporter],
) -> TracerProvider:
    provider = TracerProvider(resource=resource)
    for exporter in span_exporters:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT_S),
                export_timeout_millis=EXPORT_TIMEOUT_S * 1000,
            )
        )
    if console:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    return provider


def _otlp_metric_reader(endpoint: str, interval_s: float) -> MetricReader:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    return PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT_S),
        export_interval_millis=interval_s * 1000,
        export_timeout_millis=EXPORT_TIMEOUT_S * 1000,
    )


def _prometheus_reader() -> tuple[MetricReader, Any]:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import (
        CollectorRegistry,
        GCCollector,
        PlatformCollector,
        ProcessCollector,
    )

    registry = CollectorRegistry(auto_describe=True)
    # the process itself (RSS, CPU, open files) and the interpreter, as any exporter has
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    reader = PrometheusMetricReader(
        scope_info_enabled=False,
        resource_attribute_filter=lambda key: key.startswith(RESOURCE_LABEL_PREFIX),
        registry=registry,
    )
    return reader, registry


def _serve_metrics(registry: Any, host: str, port: int) -> tuple[WSGIServer, int]:
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, int(server.server_address[1])


def _install_global(
    tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None
) -> None:
    global _global_installed
    with _global_lock:
        if _global_installed:
            log.warning("global OpenTelemetry providers already installed; keeping them")
            return
        _global_installed = True
    if tracer_provider is not None:
        trace.set_tracer_provider(tracer_provider)
    if meter_provider is not None:
        metrics.set_meter_provider(meter_provider)
