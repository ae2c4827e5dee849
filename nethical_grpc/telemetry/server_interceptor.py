"""A ``grpc.aio`` server interceptor: one SERVER span and one latency sample per RPC.

The interceptor wraps the method's handler (not just its own call), so the span and the
``rpc.server.duration`` sample cover the handler's whole run: for a streaming response,
until the last message is sent; for a streaming request, until the handler returns.
The remote parent comes from the invocation metadata (W3C ``traceparent``); the span is
the current span while the handler runs, so calls the handler makes are its children.

Handlers of every arity are supported when they are ``async def`` functions (returning
a response or writing with ``context.write``) or async generators. A synchronous
unary-unary handler (e.g. a generated base class answering UNIMPLEMENTED) is run in the
loop's default executor, as grpc.aio itself does; other synchronous handlers, and the
services in ``untraced_services``, are passed through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context as OtelContext
from opentelemetry.trace import Span, SpanKind, Tracer

from nethical_grpc import interceptor_types
from nethical_grpc.telemetry.instruments import RpcInstruments
from nethical_grpc.telemetry.propagation import extract_context
from nethical_grpc.telemetry.rpc_attributes import (
    DEFAULT_UNTRACED_SERVICES,
    MethodInfo,
    end_span,
    method_info,
)

_ServerInterceptor = interceptor_types.ServerInterceptor
Handler = interceptor_types.Handler
Context = interceptor_types.Context

Behavior = Callable[..., Any]
Token = contextvars.Token[OtelContext]


class TelemetryServerInterceptor(_ServerInterceptor):
    """Opens a SERVER span and records ``rpc.server.duration`` for each RPC it wraps.

    ``instruments`` may be ``None`` (traces only); ``tracer`` may be OpenTelemetry's
    no-op tracer (metrics only), in which case the caller's trace context is still made
    current so outgoing calls carry it on.
    """

    def __init__(
        self,
        tracer: Tracer,
        instruments: RpcInstruments | None,
        untraced_services: Collection[str] = DEFAULT_UNTRACED_SERVICES,
    ) -> None:
        self._tracer = tracer
        self._instruments = instruments
        self._untraced = frozenset(untraced_services)
        # method -> (the handler seen, its wrapper); generated services return the same
        # handler object for every call, so wrapping happens once per method
        self._handlers: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(  # type: ignore[override]
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method)
        self._handlers[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Handler, method: str) -> Handler:
        info = method_info(method)
        if info.service in self._untraced:
            return handler
        if handler.request_streaming and handler.response_streaming:
            behavior, factory = handler.stream_stream, grpc.stream_stream_rpc_method_handler
        elif handler.request_streaming:
            behavior, factory = handler.stream_unary, grpc.stream_unary_rpc_method_handler
        elif handler.response_streaming:
            behavior, factory = handler.unary_stream, grpc.unary_stream_rpc_method_handler
        else:
            behavior, factory = handler.unary_unary, grpc.unary_unary_rpc_method_handler
        if behavior is None:
            return handler
        new: Behavior
        if handler.response_streaming and inspect.isasyncgenfunction(behavior):
            new = self._generator(behavior, info)
        elif inspect.iscoroutinefunction(behavior):
            new = self._coroutine(behavior, info)
        elif not (handler.request_streaming or handler.response_streaming):
            new = self._coroutine(_in_executor(behavior), info)
        else:
            return handler
        return factory(
            new,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _coroutine(self, behavior: Behavior, info: MethodInfo) -> Behavior:
        async def traced(request: Any, context: Context) -> Any:
            span, token, start = self._begin(info, context)
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                self._end(info, context, span, token, start, exc)
                raise
            self._end(info, context, span, token, start, None)
            return response

        return traced

    def _generator(self, behavior: Behavior, info: MethodInfo) -> Behavior:
        """A streaming handler's steps each run with the SERVER span as the current
        context, attached and detached around the step: a context attached across a
        ``yield`` would be detached, when the client cancels during a send, by the loop's
        finaliser in another context (OpenTelemetry logs that as an error)."""

        async def traced(request: Any, context: Context) -> AsyncIterator[Any]:
            span, current, start = self._start(info, context)
            try:
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    while True:
                        token = otel_context.attach(current)
                        try:
                            response = await anext(responses)
                        except StopAsyncIteration:
                            break
                        finally:
                            otel_context.detach(token)
                        yield response
            except BaseException as exc:
                self._end(info, context, span, None, start, exc)
                raise
            self._end(info, context, span, None, start, None)

        return traced

    def _start(
        self, info: MethodInfo, context: Context
    ) -> tuple[Span, otel_context.Context, float]:
        """The call's SERVER span (under the caller's context) and the context holding it."""
        parent = extract_context(context.invocation_metadata())
        span = self._tracer.start_span(
            info.span_name, context=parent, kind=SpanKind.SERVER, attributes=info.span_attributes
        )
        return span, trace.set_span_in_context(span, parent), time.perf_counter()

    def _begin(self, info: MethodInfo, context: Context) -> tuple[Span, Token, float]:
        span, current, start = self._start(info, context)
        return span, otel_context.attach(current), start

    def _end(
        self,
        info: MethodInfo,
        context: Context,
        span: Span,
        token: Token | None,
        start: float,
        exc: BaseException | None,
    ) -> None:
        elapsed = time.perf_counter() - start
        code = _server_code(context, exc)
        if token is not None:
            otel_context.detach(token)
        end_span(span, code, exc, server_side=True)
        if self._instruments is not None:
            self._instruments.server_duration.record(elapsed, info.metric_attributes(code))


def _in_executor(behavior: Behavior) -> Behavior:
    """Run a synchronous unary handler where grpc.aio would: the loop's executor.

    The current context (with the SERVER span) goes along to the worker thread.
    """

    async def run(request: Any, context: Context) -> Any:
        ctx = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, ctx.run, behavior, request, context)

    return run


def _server_code(context: Context, exc: BaseException | None) -> grpc.StatusCode:
    """The status the server sends: set by the handler (``abort``/``set_code``) or implied."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode) and (exc is None or code is not grpc.StatusCode.OK):
        return code
    return grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN
