"""``grpc.aio`` client interceptors: one CLIENT span and one latency sample per call.

Each call gets a CLIENT span, child of the current span (inside a traced server
handler: the SERVER span), and the span's context is injected into the call's metadata
(W3C ``traceparent``), so the callee's SERVER span joins the same trace. The span and
the ``rpc.client.duration`` sample end when the call ends:

* unary-unary: the interceptor awaits the response (cancelling the caller cancels the
  call), records the outcome and hands back the finished call, so the caller sees the
  same response or the same :class:`grpc.aio.AioRpcError`;
* streaming calls: the call is handed back at once and finishes from its done callback
  (in that callback, so a span is ended before anything else runs), so
  ``read``/``write``/``async for`` work unchanged.

grpc.aio files each interceptor under one arity only, hence one class per arity over a
shared :class:`ClientTelemetry`; :meth:`ClientTelemetry.interceptors` returns all four.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, cast

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

from nethical_grpc import interceptor_types
from nethical_grpc.target_names import PATH_SCHEMES, addresses_of, host_and_port
from nethical_grpc.telemetry.instruments import ATTR_PEER_REGION, RpcInstruments
from nethical_grpc.telemetry.propagation import inject_metadata
from nethical_grpc.telemetry.rpc_attributes import (
    DEFAULT_UNTRACED_SERVICES,
    MethodInfo,
    code_of,
    end_span,
    method_info,
)

_UnaryUnary = interceptor_types.UnaryUnaryClient
_UnaryStream = interceptor_types.UnaryStreamClient
_StreamUnary = interceptor_types.StreamUnaryClient
_StreamStream = interceptor_types.StreamStreamClient
Continuation = interceptor_types.Continuation


@dataclass(slots=True)
class OpenCall:
    info: MethodInfo
    span: Span
    start: float


def target_attributes(target: str | None) -> dict[str, AttributeValue]:
    """``server.address``/``server.port`` from a channel target: ``host:port``,
    ``[v6]:port``, ``dns:host:port``, ``dns:///host:port`` or ``dns://resolver/host:port``,
    ``ipv4:``/``ipv6:`` address lists (the first address), ``unix:``/``unix-abstract:``
    paths (the path, no port); ``{}`` for ``None``."""
    if not target:
        return {}
    scheme, addresses = addresses_of(target)
    if scheme in PATH_SCHEMES:
        return {"server.address": addresses[0].removeprefix("//")}
    host, port = host_and_port(addresses[0])
    if not host:
        return {"server.address": addresses[0]}
    if port is None or not (port.isascii() and port.isdigit()):
        return {"server.address": host}
    return {"server.address": host, "server.port": int(port)}


def _final_code(rpc: Any) -> grpc.StatusCode | None:
    """The status code of a call that is done, read without the event loop (``None`` if
    it is not in yet): ``code()`` returns on its first step once the status is set, as it
    is before the call's done callbacks run."""
    step = rpc.code()
    try:
        step.send(None)
    except StopIteration as done:
        return cast("grpc.StatusCode", done.value)
    except asyncio.CancelledError:
        return grpc.StatusCode.CANCELLED
    step.close()
    return None


class ClientTelemetry:
    """What the four client interceptors of one channel share.

    ``target`` labels spans (``server.address``/``server.port``); ``region`` labels spans
    and ``rpc.client.duration`` with ``nethical.peer.region``.
    """

    def __init__(
        self,
        tracer: Tracer,
        instruments: RpcInstruments | None,
        target: str | None = None,
        region: str | None = None,
        untraced_services: Collection[str] = DEFAULT_UNTRACED_SERVICES,
    ) -> None:
        self._tracer = tracer
        self._instruments = instruments
        self._untraced = frozenset(untraced_services)
        self._span_extra = target_attributes(target)
        self._metric_extra: dict[str, AttributeValue] = {}
        if region:
            self._span_extra[ATTR_PEER_REGION] = region
            self._metric_extra[ATTR_PEER_REGION] = region
        self._infos: dict[str | bytes, MethodInfo | None] = {}
        self._finishing: set[asyncio.Task[None]] = set()

    def interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """The interceptors to pass to ``grpc.aio.insecure_channel(interceptors=...)``."""
        # grpc-stubs types ClientInterceptor as a marker that must be cast to
        made: list[object] = [
            UnaryUnaryTelemetryInterceptor(self),
            UnaryStreamTelemetryInterceptor(self),
            StreamUnaryTelemetryInterceptor(self),
            StreamStreamTelemetryInterceptor(self),
        ]
        return [cast("grpc.aio.ClientInterceptor", i) for i in made]

    def _info(self, method: str | bytes) -> MethodInfo | None:
        try:
            return self._infos[method]
        except KeyError:
            parsed = method_info(method, self._span_extra, self._metric_extra)
            info = None if parsed.service in self._untraced else parsed
            self._infos[method] = info
            return info

    def start(self, method: str | bytes) -> OpenCall | None:
        """Open a CLIENT span for ``method`` (``None`` for an untraced service)."""
        info = self._info(method)
        if info is None:
            return None
        span = self._tracer.start_span(
            info.span_name, kind=SpanKind.CLIENT, attributes=info.span_attributes
        )
        return OpenCall(info, span, time.perf_counter())

    def begin(
        self, details: grpc.aio.ClientCallDetails
    ) -> tuple[OpenCall | None, grpc.aio.ClientCallDetails]:
        """Open the span and return the details with trace headers added."""
        call = self.start(details.method)
        if call is None:
            return None, details
        metadata = inject_metadata(details.metadata, trace.set_span_in_context(call.span))
        new_details = grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*metadata),
            details.credentials,
            details.wait_for_ready,
        )
        return call, new_details

    def finish(
        self,
        call: OpenCall,
        code: grpc.StatusCode,
        exc: BaseException | None,
        end: float | None = None,
    ) -> None:
        """End the span and record the latency sample."""
        elapsed = (time.perf_counter() if end is None else end) - call.start
        end_span(call.span, code, exc, server_side=False)
        if self._instruments is not None:
            self._instruments.client_duration.record(elapsed, call.info.metric_attributes(code))

    def finish_when_done(self, call: OpenCall, rpc: Any) -> None:
        """Finish ``call`` once the streaming ``rpc`` has its final status."""
        rpc.add_done_callback(functools.partial(self._on_done, call))

    def _on_done(self, call: OpenCall, rpc: Any) -> None:
        end = time.perf_counter()
        # ended here, not in a task of its own: a task scheduled now would not have run
        # yet when a draining process closes its channels and shuts telemetry down in
        # the same step, and the span would be lost
        code = _final_code(rpc)
        if code is not None:
            self.finish(call, code, None, end)
            return
        task = asyncio.get_running_loop().create_task(self._finish_from(call, rpc, end))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish_from(self, call: OpenCall, rpc: Any, end: float) -> None:
        try:
            code: grpc.StatusCode = await rpc.code()
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
        self.finish(call, code, None, end)

    async def unary_response(
        self, continuation: Continuation, details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        call, details = self.begin(details)
        if call is None:
            return await continuation(details, request)
        try:
            rpc = await continuation(details, request)
        except BaseException as exc:
            self.finish(call, code_of(exc), exc)
            raise
        try:
            await rpc
        except grpc.aio.AioRpcError as err:
            # hand back the failed call: awaiting it raises the same error for the caller
            self.finish(call, err.code(), err)
            return rpc
        except BaseException as exc:
            self.finish(call, code_of(exc), exc)
            raise
        self.finish(call, grpc.StatusCode.OK, None)
        return rpc

    async def streaming(
        self, continuation: Continuation, details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        call, details = self.begin(details)
        if call is None:
            return await continuation(details, request)
        try:
            rpc = await continuation(details, request)
        except BaseException as exc:
            self.finish(call, code_of(exc), exc)
            raise
        self.finish_when_done(call, rpc)
        return rpc


class UnaryUnaryTelemetryInterceptor(_UnaryUnary):
    def __init__(self, shared: ClientTelemetry) -> None:
        self._shared = shared

    async def intercept_unary_unary(
        self, continuation: Continuation, client_call_details: Any, request: Any
    ) -> Any:
        return await self._shared.unary_response(continuation, client_call_details, request)


class UnaryStreamTelemetryInterceptor(_UnaryStream):
    def __init__(self, shared: ClientTelemetry) -> None:
        self._shared = shared

    async def intercept_unary_stream(
        self, continuation: Continuation, client_call_details: Any, request: Any
    ) -> Any:
        return await self._shared.streaming(continuation, client_call_details, request)


class StreamUnaryTelemetryInterceptor(_StreamUnary):
    def __init__(self, shared: ClientTelemetry) -> None:
        self._shared = shared

    async def intercept_stream_unary(
        self, continuation: Continuation, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._shared.streaming(continuation, client_call_details, request_iterator)


class StreamStreamTelemetryInterceptor(_StreamStream):
    def __init__(self, shared: ClientTelemetry) -> None:
        self._shared = shared

    async def intercept_stream_stream(
        self, continuation: Continuation, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._shared.streaming(continuation, client_call_details, request_iterator)
