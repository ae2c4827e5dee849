"""Registering a servicer whose handlers may answer with bytes they encoded themselves.

The generated ``add_…Servicer_to_server`` functions give each method its response
message's ``SerializeToString`` as serialiser, which refuses ``bytes``. A region node
keeps its summaries answers encoded and answers them as they are (GetSummaries,
StreamSummaries): registered with :func:`add_servicer`, every method's serialiser lets
``bytes`` through unchanged and serialises a message as before, whatever interceptors
the server has. The methods, their message types and streaming shapes come from the
service's descriptor, as the generated function's do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

# (client streaming, server streaming) -> the handler factory of that shape
_FACTORIES: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _encoded_or(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """``serialize``, except that ``bytes`` (an answer already encoded) pass unchanged."""

    def out(answer: Any) -> bytes:
        return answer if type(answer) is bytes else serialize(answer)

    return out


def add_servicer(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object) -> None:
    """Register ``servicer``'s methods of ``service`` on ``server`` (as the generated
    function does), each answering a message or the bytes of one."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        factory = _FACTORIES[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = factory(
            getattr(servicer, method.name),
            request_deserializer=request.FromString,
            response_serializer=_encoded_or(response.SerializeToString),
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    # the registered-method path (the generated function's too), not in grpc's stubs
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[attr-defined]
