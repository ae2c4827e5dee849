"""Type names for grpc.aio interceptors, generic for the type checker, plain at run time.

grpc's stubs make the interceptor base classes generic, but the classes themselves are
not subscriptable at run time; every interceptor in the mesh takes its bases from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    UnaryUnaryClient = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    UnaryStreamClient = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    StreamUnaryClient = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    StreamStreamClient = grpc.aio.StreamStreamClientInterceptor[Any, Any]
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]
else:
    UnaryUnaryClient = grpc.aio.UnaryUnaryClientInterceptor
    UnaryStreamClient = grpc.aio.UnaryStreamClientInterceptor
    StreamUnaryClient = grpc.aio.StreamUnaryClientInterceptor
    StreamStreamClient = grpc.aio.StreamStreamClientInterceptor
    ServerInterceptor = grpc.aio.ServerInterceptor
    Handler = grpc.RpcMethodHandler
    Context = grpc.aio.ServicerContext

#: The ``continuation`` a client interceptor is given.
Continuation = Callable[..., Any]
