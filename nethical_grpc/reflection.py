"""Server reflection that also resolves method names (``grpcurl describe Service.Method``).

With the upb protobuf backend, ``DescriptorPool.FindFileContainingSymbol`` does not find
a method's full name (grpc/grpc#34743), so ``describe pkg.Service.Method`` fails with
"Symbol not found" against a stock Python server. When a symbol is not found, this
servicer answers with the file of its parent (the service that holds the method, the
message that holds a field), which is what the reflection protocol asks for.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

SERVICE_NAME = reflection.SERVICE_NAME


class _ReflectionServicer(reflection.aio.ReflectionServicer):  # type: ignore[misc,name-defined]
    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        response = super()._file_containing_symbol(request, fully_qualified_name)
        if response.HasField("error_response") and "." in fully_qualified_name:
            parent = fully_qualified_name.rsplit(".", 1)[0]
            found = super()._file_containing_symbol(request, parent)
            if not found.HasField("error_response"):
                return found
        return response


def enable_server_reflection(service_names: list[str], server: grpc.aio.Server) -> None:
    """Add the reflection service (listing ``service_names``) to a ``grpc.aio`` server."""
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        _ReflectionServicer(service_names), server
    )


__all__ = ["SERVICE_NAME", "enable_server_reflection", "reflection_pb2"]
