"""Telemetry for the mesh: traces and metrics of its RPCs and of its own work.

Off by default, and then free: this package's top level imports no OpenTelemetry, the
interceptor lists are empty and :func:`get_recorder` returns :data:`NOOP`. To turn it on,
call :func:`nethical_grpc.telemetry.setup.configure_telemetry` (needs the ``telemetry``
extra) before building servers and channels; then

* ``grpc.aio.server(interceptors=server_interceptors())`` gets a SERVER span and a
  latency sample per RPC, continuing the caller's W3C trace context;
* ``grpc.aio.insecure_channel(target, interceptors=client_interceptors(target, region))``
  gets a CLIENT span per call and sends its context along;
* ``with traced_call("/pkg.Service/Method", target, region) as call:`` around a call made
  with ``metadata=call.metadata`` does the same for one call, on a channel without
  interceptors (cheaper: see :func:`traced_call`);
* ``get_recorder().record_ingest(...)`` / ``.record_health_transition(...)`` /
  ``.record_coverage(...)`` count the mesh's own work.
"""

from nethical_grpc.telemetry.recorder import NOOP, CoverageLevel, Recorder
from nethical_grpc.telemetry.state import (
    CallScope,
    active_telemetry,
    client_interceptors,
    get_recorder,
    server_interceptors,
    traced_call,
)

__all__ = [
    "NOOP",
    "CallScope",
    "CoverageLevel",
    "Recorder",
    "active_telemetry",
    "client_interceptors",
    "get_recorder",
    "server_interceptors",
    "traced_call",
]
