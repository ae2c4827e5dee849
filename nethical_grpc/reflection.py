"""Server reflection, as grpcurl and other tools use it, in both protocol versions and
with the contract's comments.

* **Both versions.** grpcio-reflection serves ``grpc.reflection.v1alpha`` only; clients
  that speak only ``grpc.reflection.v1`` (the stable name) got UNIMPLEMENTED. The two
  protocols are the same messages under another package, so the same servicer answers
  ``grpc.reflection.v1.ServerReflection`` too, and its descriptor is added to the pool
  (made from the v1alpha one, renamed) so that it describes itself like any service.
* **Comments.** Descriptors built from the generated stubs carry no source info, so
  ``grpcurl describe`` showed no documentation. The mesh's own files are served from
  ``nethical_grpc/v1/descriptors.binpb`` (written by ``scripts/gen_protos.py`` with
  ``--include_source_info``, checked for drift like the stubs), comments included.
* **Method names.** With the upb protobuf backend, ``FindFileContainingSymbol`` does not
  find a method's full name (grpc/grpc#34743), so ``describe pkg.Service.Method`` failed
  with "Symbol not found". When a symbol is not found, the file of its parent (the
  service that holds the method, the message that holds a field) is the answer, which is
  what the protocol asks for; a name its parent does not hold is NOT_FOUND.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Final

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

#: The v1alpha service (what grpcio-reflection names SERVICE_NAME).
SERVICE_NAME: Final = reflection.SERVICE_NAME
V1_SERVICE_NAME: Final = "grpc.reflection.v1.ServerReflection"
_V1_FILE: Final = "grpc/reflection/v1/reflection.proto"
_METHOD: Final = "ServerReflectionInfo"


def _documented_files() -> dict[str, bytes]:
    """The mesh's FileDescriptorProtos with source info, encoded, by file name."""
    data = resources.files("nethical_grpc.v1").joinpath("descriptors.binpb").read_bytes()
    found = descriptor_pb2.FileDescriptorSet.FromString(data)
    return {f.name: f.SerializeToString() for f in found.file}


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Put ``grpc/reflection/v1/reflection.proto`` in ``pool``: the v1alpha file under
    the v1 package (the protocols differ only in that)."""
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    alpha = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(alpha)
    v1 = descriptor_pb2.FileDescriptorProto()
    v1.CopyFrom(alpha)
    v1.name = _V1_FILE
    v1.package = "grpc.reflection.v1"
    v1.ClearField("options")
    for message in v1.message_type:
        for field in message.field:
            if field.type_name.startswith(".grpc.reflection.v1alpha."):
                field.type_name = field.type_name.replace(".v1alpha.", ".v1.", 1)
    for service in v1.service:
        for method in service.method:
            method.input_type = method.input_type.replace(".v1alpha.", ".v1.", 1)
            method.output_type = method.output_type.replace(".v1alpha.", ".v1.", 1)
    pool.AddSerializedFile(v1.SerializeToString())


class _ReflectionServicer(reflection.aio.ReflectionServicer):  # type: ignore[misc,name-defined]
    def __init__(self, service_names: list[str], documented: dict[str, bytes]) -> None:
        super().__init__(service_names)
        self._documented = documented

    def _file_by_filename(self, request: Any, filename: str) -> Any:
        try:
            descriptor = self._pool.FindFileByName(filename)
        except KeyError:
            return super()._file_by_filename(request, filename)  # its not-found answer
        return self._files_response(descriptor, request)

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        try:
            descriptor = self._pool.FindFileContainingSymbol(fully_qualified_name)
        except KeyError:
            descriptor = self._file_of_member(fully_qualified_name)
        if descriptor is None:
            return super()._file_containing_symbol(request, fully_qualified_name)
        return self._files_response(descriptor, request)

    def _file_of_member(self, fully_qualified_name: str) -> Any:
        """The file of the service or message holding ``fully_qualified_name`` as a
        method, field, oneof, nested type or extension; None when it holds no such
        member (an unknown name is NOT_FOUND, not its parent's file)."""
        parent, _, member = fully_qualified_name.rpartition(".")
        if not parent or not member:
            return None
        try:
            service = self._pool.FindServiceByName(parent)
        except KeyError:
            pass
        else:
            return service.file if member in service.methods_by_name else None
        try:
            message = self._pool.FindMessageTypeByName(parent)
        except KeyError:
            return None
        members = (
            message.fields_by_name,
            message.oneofs_by_name,
            message.nested_types_by_name,
            message.enum_types_by_name,
            message.extensions_by_name,
        )
        return message.file if any(member in m for m in members) else None

    def _files_response(self, descriptor: Any, request: Any) -> Any:
        """The file and every file it imports, the mesh's own with their comments."""
        files: dict[str, Any] = {}
        todo = [descriptor]
        while todo:
            d = todo.pop()
            if d.name not in files:
                files[d.name] = d
                todo.extend(d.dependencies)
        encoded = []
        for name, d in files.items():
            known = self._documented.get(name)
            if known is None:
                proto = descriptor_pb2.FileDescriptorProto()
                d.CopyToProto(proto)
                known = proto.SerializeToString()
            encoded.append(known)
        return reflection_pb2.ServerReflectionResponse(
            file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                file_descriptor_proto=encoded
            ),
            original_request=request,
        )


def enable_server_reflection(service_names: list[str], server: grpc.aio.Server) -> None:
    """Add server reflection (v1alpha and v1, listing ``service_names`` and both
    reflection services) to a ``grpc.aio`` server."""
    _add_v1_descriptor(descriptor_pool.Default())
    names = sorted({*service_names, SERVICE_NAME, V1_SERVICE_NAME})
    servicer = _ReflectionServicer(names, _documented_files())
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {_METHOD: v1}),)
    )


__all__ = ["SERVICE_NAME", "V1_SERVICE_NAME", "enable_server_reflection", "reflection_pb2"]
