"""Requests that do not parse get INVALID_ARGUMENT, not UNKNOWN or INTERNAL.

grpc deserialises a request before any handler runs, and a ``DecodeError`` there reaches
the client as UNKNOWN (unary, with the Python exception's class name in the message) or
INTERNAL (streams). This interceptor takes the parsing over: the handler it installs
receives raw bytes, parses them with the method's own deserialiser, and answers a message
that does not parse with INVALID_ARGUMENT and a ``BadRequest`` naming the request,
before the servicer sees anything. It is the innermost interceptor, so telemetry and
authentication still see every call.

In a request stream, a message that does not parse raises :class:`UnparsableRequest`
(an ``InvalidArgument``) from the handler's request iterator, so the handler ends the call
from its own task, like any other error of its input: what it answered before stands, and
a handler that reports progress with an error (Ingest's applied counts) does so. The
iterator goes on past such a message, so a handler may read and drop the rest. The call
is never aborted from a task that reads ahead of the handler: gRPC refuses a second
operation on a call whose answer is being written, and such a call never got a status.

Answers go out through the handler's own serialiser: one registered by
:func:`nethical_grpc.registration.add_servicer` also sends ``bytes`` (an answer its
handler keeps encoded) as they are.

An exception a handler lets out (the mesh's servicers map their own errors; the health
and reflection services, or a bug, may not) ends the call INTERNAL with no text of it,
and is logged: gRPC would send UNKNOWN with the exception's class and message. A method
a servicer leaves out (its generated base raises ``NotImplementedError``) is UNIMPLEMENTED.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from nethical_grpc import interceptor_types
from nethical_grpc.call_limit import CallGate
from nethical_grpc.errors import InvalidArgument, internal_status, to_status

Handler = interceptor_types.Handler
Context = interceptor_types.Context

log = logging.getLogger(__name__)

#: What ends a call on purpose: an abort (the handler's own status).
_ENDED = (grpc.aio.AbortError,)

#: Wrapped handlers remembered (far more than a server's methods).
_MAX_WRAPPED = 1024


class UnparsableRequest(InvalidArgument):
    """A request message that is not a valid message of the method's request type."""

    @classmethod
    def at(cls, what: str) -> UnparsableRequest:
        return cls.single(what, "is not a valid message of the method's request type")


async def _reject(context: Context, error: InvalidArgument) -> NoReturn:
    await context.abort_with_status(to_status(error))  # type: ignore[attr-defined]
    raise AssertionError("abort_with_status returned")  # it raises, ending the call


async def _internal(context: Context, exc: Exception) -> NoReturn:
    """End the call INTERNAL for an exception its handler let out (logged, not sent);
    UNIMPLEMENTED for the ``NotImplementedError`` of a method a servicer leaves out (as
    generated servicers do)."""
    if isinstance(exc, NotImplementedError):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "method not implemented")
    log.error("unhandled error in an RPC handler", exc_info=exc)
    await context.abort_with_status(internal_status())  # type: ignore[attr-defined]
    raise AssertionError("abort_with_status returned")


class _ParsedStream:
    """The messages of a request stream, each parsed as it is read. One that does not
    parse raises :class:`UnparsableRequest` naming it, and the stream goes on past it
    (an async generator would end there): a handler that reads and drops the rest of a
    refused stream (Ingest) then reads what the client still sends, so a client still
    writing gets the handler's error, not grpc's INTERNAL for a write that met the
    finished call."""

    __slots__ = ("_index", "_parse", "_raw", "_reader")

    def __init__(self, parse: Callable[[bytes], Any], raw: AsyncIterable[bytes]) -> None:
        self._parse = parse
        self._raw = raw
        # made on the first read: grpc's reader is a coroutine that warns, unread, when
        # a handler never reads its stream
        self._reader: AsyncIterator[bytes] | None = None
        self._index = 0

    def __aiter__(self) -> _ParsedStream:
        return self

    async def __anext__(self) -> Any:
        if self._reader is None:
            self._reader = aiter(self._raw)
        item = await anext(self._reader)
        index = self._index
        self._index = index + 1
        try:
            return self._parse(item)
        except (DecodeError, ValueError):
            raise UnparsableRequest.at(f"request[{index}]") from None


async def _respond(result: Any) -> AsyncIterator[Any]:
    """Responses of a streaming handler, async generator or ``context.write`` style."""
    if inspect.isasyncgen(result):
        async for item in result:
            yield item
    elif inspect.isawaitable(result):
        await result


class RequestParsingInterceptor(interceptor_types.ServerInterceptor):
    """See the module docstring."""

    def __init__(self, gate: CallGate | None = None) -> None:
        # the wrapping handler of each servicer handler, built once (a servicer's handler
        # for a method is the same object on every call)
        self._wrapped: dict[int, tuple[Handler, Handler]] = {}
        # the server's bound on concurrent calls, kept in the same wrapper
        self.gate = gate

    async def intercept_service(  # type: ignore[override]
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler: Handler | None = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        known = self._wrapped.get(id(handler))
        if known is not None and known[0] is handler:
            return known[1]
        gate = self.gate
        wrapped = _wrap(
            handler, gate if gate is not None and gate.covers(handler_call_details.method) else None
        )
        if len(self._wrapped) >= _MAX_WRAPPED:  # handlers made per call: keep no history
            self._wrapped.clear()
        self._wrapped[id(handler)] = (handler, wrapped)
        return wrapped


def _wrap(handler: Handler, gate: CallGate | None = None) -> Handler:
    """``handler`` taking raw bytes and parsing them itself (see the module docstring),
    its calls counted by ``gate`` when given."""
    parsing = _parsing(handler)
    if gate is None or parsing is handler:
        return parsing
    if parsing.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            gate.coroutine(parsing.unary_unary), None, parsing.response_serializer
        )
    if parsing.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            gate.generator(parsing.unary_stream), None, parsing.response_serializer
        )
    if parsing.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            gate.coroutine(parsing.stream_unary), None, parsing.response_serializer
        )
    assert parsing.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(
        gate.generator(parsing.stream_stream), None, parsing.response_serializer
    )


def _parsing(handler: Handler) -> Handler:
    parse = handler.request_deserializer
    assert parse is not None
    out = handler.response_serializer
    if handler.unary_unary is not None:
        behavior: Any = handler.unary_unary

        async def unary_unary(raw: bytes, context: Context) -> Any:
            try:
                request = parse(raw)
            except (DecodeError, ValueError):
                await _reject(context, UnparsableRequest.at("request"))
            try:
                return await behavior(request, context)
            except _ENDED:
                raise
            except Exception as exc:
                await _internal(context, exc)

        return grpc.unary_unary_rpc_method_handler(unary_unary, None, out)
    if handler.unary_stream is not None:
        stream_behavior: Any = handler.unary_stream

        async def unary_stream(raw: bytes, context: Context) -> AsyncIterator[Any]:
            try:
                request = parse(raw)
            except (DecodeError, ValueError):
                await _reject(context, UnparsableRequest.at("request"))
            try:
                async for item in _respond(stream_behavior(request, context)):
                    yield item
            except _ENDED:
                raise
            except Exception as exc:
                await _internal(context, exc)

        return grpc.unary_stream_rpc_method_handler(unary_stream, None, out)
    if handler.stream_unary is not None:
        collect: Any = handler.stream_unary

        async def stream_unary(raw: AsyncIterator[bytes], context: Context) -> Any:
            try:
                return await collect(_ParsedStream(parse, raw), context)
            except UnparsableRequest as error:  # a handler that let it through
                await _reject(context, error)
            except _ENDED:
                raise
            except Exception as exc:
                await _internal(context, exc)

        return grpc.stream_unary_rpc_method_handler(stream_unary, None, out)
    if handler.stream_stream is not None:
        both: Any = handler.stream_stream

        async def stream_stream(raw: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
            try:
                async for item in _respond(both(_ParsedStream(parse, raw), context)):
                    yield item
            except UnparsableRequest as error:  # a handler that let it through
                await _reject(context, error)
            except _ENDED:
                raise
            except Exception as exc:
                await _internal(context, exc)

        return grpc.stream_stream_rpc_method_handler(stream_stream, None, out)
    return handler
