"""Per-method span names and attributes, and how a gRPC status ends a span.

Attribute names follow the OpenTelemetry RPC conventions: ``rpc.system`` (``grpc``),
``rpc.service`` (``package.Service``), ``rpc.method`` (``Method``) and
``rpc.grpc.status_code`` (the integer code). Span names are ``package.Service/Method``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

ATTR_SYSTEM = "rpc.system"
ATTR_SERVICE = "rpc.service"
ATTR_METHOD = "rpc.method"
ATTR_STATUS_CODE = "rpc.grpc.status_code"

Attributes = dict[str, AttributeValue]

# codes that mean the server failed (OpenTelemetry gRPC conventions); any non-OK code
# marks a client span as an error
SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

DEFAULT_UNTRACED_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
"""Services left alone by default: health Watch streams live as long as the process and
probes call Check every few seconds; reflection is for grpcurl sessions."""


@dataclass(slots=True)
class MethodInfo:
    """What telemetry records for one RPC method (built once per method, then cached)."""

    service: str
    method: str
    span_name: str
    span_attributes: Attributes
    metric_base: Attributes
    _by_code: dict[grpc.StatusCode, Attributes] = field(default_factory=dict)

    def metric_attributes(self, code: grpc.StatusCode) -> Attributes:
        """The metric attributes for a call that ended with ``code`` (cached)."""
        attrs = self._by_code.get(code)
        if attrs is None:
            attrs = {**self.metric_base, ATTR_STATUS_CODE: code.value[0]}
            self._by_code[code] = attrs
        return attrs


def method_info(
    full_method: str | bytes,
    span_extra: Mapping[str, AttributeValue] | None = None,
    metric_extra: Mapping[str, AttributeValue] | None = None,
) -> MethodInfo:
    """Parse ``/package.Service/Method`` (str or bytes) into a :class:`MethodInfo`.

    A name not of that form is kept whole as the method, with service ``""``.
    """
    name = full_method.decode("ascii", "replace") if isinstance(full_method, bytes) else full_method
    service, sep, method = name.lstrip("/").rpartition("/")
    if not sep:
        service, method = "", name
    base: Attributes = {ATTR_SYSTEM: "grpc", ATTR_SERVICE: service, ATTR_METHOD: method}
    return MethodInfo(
        service=service,
        method=method,
        span_name=f"{service}/{method}" if service else method,
        span_attributes={**base, **(span_extra or {})},
        metric_base={**base, **(metric_extra or {})},
    )


def code_of(exc: BaseException) -> grpc.StatusCode:
    """The status a client sees for an exception raised by a call."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code()
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def end_span(
    span: Span, code: grpc.StatusCode, exc: BaseException | None, server_side: bool
) -> None:
    """Set the status-code attribute and span status, record a crash, end the span.

    Expected outcomes (an abort with a status, a cancellation, an RPC error seen by a
    client) are not recorded as exceptions; anything else that escaped is, as an
    ``exception`` event with its type only: its message and stack could hold a request's
    values (action text, an agent id), and spans may be exported out of the region. The
    node's log, which stays in the region, has the whole traceback.
    """
    if span.is_recording():
        span.set_attribute(ATTR_STATUS_CODE, code.value[0])
        if code is not grpc.StatusCode.OK and (not server_side or code in SERVER_ERROR_CODES):
            span.set_status(Status(StatusCode.ERROR, code.name))
        if exc is not None and not isinstance(
            exc, grpc.aio.AbortError | grpc.RpcError | asyncio.CancelledError
        ):
            span.add_event(
                "exception",
                {"exception.type": f"{type(exc).__module__}.{type(exc).__qualname__}"},
            )
    span.end()
