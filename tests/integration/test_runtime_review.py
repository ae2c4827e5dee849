"""What any client sees of the plumbing every mesh server shares: reflection answers for
symbols that do not exist, the health service's every method, and statuses built from
text that is not valid UTF-8 (real servers on port 0, plain grpc.aio clients)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nethical_grpc.errors import FieldViolation, InvalidArgument, details_from_error, rpc_errors
from nethical_grpc.server_runtime import MeshServer, start_server
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc

REGION_SERVICE = "nethical_grpc.v1.RegionNodeService"
TEST_SERVICE = "nethical_test.Echo"


@pytest.fixture
async def mesh() -> AsyncIterator[MeshServer]:
    server = await start_server([], [REGION_SERVICE])
    try:
        yield server
    finally:
        await server.drain(announce_s=0.0, grace_s=0.0)


async def _reflect(address: str, symbol: str) -> reflection_pb2.ServerReflectionResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
        answers = [a async for a in stub.ServerReflectionInfo(iter([request]), timeout=10)]
    assert len(answers) == 1
    return answers[0]


@pytest.mark.parametrize(
    "symbol",
    [
        f"{REGION_SERVICE}.NoSuchMethod",
        "nethical_grpc.v1.IngestRequest.no_such_field",
        "nethical_grpc.v1.IngestRequest.",
        "nethical_grpc.v1.ExponentialHistogram.Buckets.no_such_field",
        # an enum value's name is a sibling of its enum, not inside it
        "nethical_grpc.v1.Decision.DECISION_ALLOW",
    ],
)
async def test_a_symbol_that_does_not_exist_is_not_found(mesh: MeshServer, symbol: str) -> None:
    """Before, any name under an existing service or message was answered with that
    file: a client caching "symbol -> file" was told a method or field exists."""
    answer = await _reflect(mesh.address, symbol)
    assert answer.WhichOneof("message_response") == "error_response"
    assert answer.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


@pytest.mark.parametrize(
    ("symbol", "file"),
    [
        (f"{REGION_SERVICE}.Ingest", "nethical_grpc/v1/region_node.proto"),
        ("nethical_grpc.v1.IngestRequest.metric", "nethical_grpc/v1/region_node.proto"),
        ("nethical_grpc.v1.EvaluateStreamResponse.result", "nethical_grpc/v1/region_node.proto"),
        ("nethical_grpc.v1.ExponentialHistogram.Buckets", "nethical_grpc/v1/summary.proto"),
        ("nethical_grpc.v1.DECISION_ALLOW", "nethical_grpc/v1/governance.proto"),
        ("grpc.health.v1.Health.Check", "grpc_health/v1/health.proto"),
        ("grpc.reflection.v1.ServerReflection.ServerReflectionInfo", None),
    ],
)
async def test_members_that_exist_are_found(
    mesh: MeshServer, symbol: str, file: str | None
) -> None:
    answer = await _reflect(mesh.address, symbol)
    assert answer.WhichOneof("message_response") == "file_descriptor_response"
    first = descriptor_pb2.FileDescriptorProto.FromString(
        answer.file_descriptor_response.file_descriptor_proto[0]
    )
    if file is not None:
        assert first.name == file


async def test_health_list_answers_every_service(mesh: MeshServer) -> None:
    """``grpc.health.v1.Health/List`` is in the health.proto reflection serves (grpcurl
    describe shows it); before, calling it answered UNIMPLEMENTED with Python's
    "Unexpected <class 'NotImplementedError'>" text."""
    async with grpc.aio.insecure_channel(mesh.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        listed = await health.List(health_pb2.HealthListRequest(), timeout=10)
        statuses = {name: answer.status for name, answer in listed.statuses.items()}
        assert statuses == {
            "": health_pb2.HealthCheckResponse.SERVING,
            REGION_SERVICE: health_pb2.HealthCheckResponse.SERVING,
        }
        await mesh.set_serving(False)
        listed = await health.List(health_pb2.HealthListRequest(), timeout=10)
        assert {a.status for a in listed.statuses.values()} == {
            health_pb2.HealthCheckResponse.NOT_SERVING
        }


def _echo_registrar(error: InvalidArgument) -> Callable[[grpc.aio.Server], None]:
    @rpc_errors
    async def fail(
        request: region_node_pb2.GetNodeInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> region_node_pb2.GetNodeInfoResponse:
        raise error

    def register(server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            fail,
            region_node_pb2.GetNodeInfoRequest.FromString,
            region_node_pb2.GetNodeInfoResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(TEST_SERVICE, {"Fail": handler}),)
        )

    return register


async def _failed_with(error: InvalidArgument) -> grpc.aio.AioRpcError:
    """What a client gets from a real server whose handler raises ``error``."""
    server = await start_server([_echo_registrar(error)], [TEST_SERVICE])
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            fail = channel.unary_unary(
                f"/{TEST_SERVICE}/Fail",
                request_serializer=region_node_pb2.GetNodeInfoRequest.SerializeToString,
                response_deserializer=region_node_pb2.GetNodeInfoResponse.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await fail(region_node_pb2.GetNodeInfoRequest(), timeout=10)
    finally:
        await server.drain(announce_s=0.0, grace_s=0.0)
    return caught.value


async def test_an_error_about_an_undecodable_name_keeps_its_status() -> None:
    """A name read from the file system with undecodable bytes (``surrogateescape``, as
    ``os.listdir`` gives them) in an error: before, building the status failed on the
    lone surrogate and the caller got UNKNOWN with "Unexpected <class
    'UnicodeEncodeError'>" instead of the error's code, message and violations."""
    name = b"segment-\xff.bin".decode("utf-8", "surrogateescape")
    error = InvalidArgument(
        message=f"cannot read {name}",
        field_violations=(FieldViolation(f"files[{name}]", f"{name} is damaged"),),
        metadata={"file": name},
    )
    caught = await _failed_with(error)
    found = details_from_error(caught)
    assert found.code is grpc.StatusCode.INVALID_ARGUMENT
    assert found.reason == "INVALID_ARGUMENT"
    assert "Unexpected" not in found.message
    assert found.message.startswith("cannot read segment-")
    assert "\\udcff" in found.message  # the bad byte, shown rather than dropped
    [violation] = found.field_violations
    assert violation.field.startswith("files[segment-")
    assert found.metadata["file"].startswith("segment-")


async def test_an_error_whose_status_cannot_be_built_is_internal_without_text() -> None:
    """A malformed domain error (metadata that is not text) reaches the caller as the
    bare INTERNAL status rpc_errors promises, not UNKNOWN with Python's exception text."""
    error = InvalidArgument(message="bad", metadata={"limit": 5})  # type: ignore[dict-item]
    caught = await _failed_with(error)
    assert caught.code() is grpc.StatusCode.INTERNAL
    assert caught.details() == "internal error; see the server log"


class _Broken(region_node_pb2_grpc.RegionNodeServiceServicer):
    """A servicer whose handlers let an unexpected exception out (a bug)."""

    async def GetNodeInfo(  # noqa: N802
        self, request: region_node_pb2.GetNodeInfoRequest, context: object
    ) -> region_node_pb2.GetNodeInfoResponse:
        raise KeyError("secret-internal-detail")

    async def StreamSummaries(  # noqa: N802
        self,
        request_iterator: AsyncIterator[region_node_pb2.StreamSummariesRequest],
        context: object,
    ) -> AsyncIterator[region_node_pb2.StreamSummariesResponse]:
        async for _ in request_iterator:
            raise RuntimeError("secret-internal-detail")
        yield region_node_pb2.StreamSummariesResponse()


@contextlib.asynccontextmanager
async def _broken_node() -> AsyncIterator[region_node_pb2_grpc.RegionNodeServiceStub]:
    """A real server of :class:`_Broken`, and a stub on a channel to it."""
    server = await start_server(
        [lambda s: region_node_pb2_grpc.add_RegionNodeServiceServicer_to_server(_Broken(), s)],
        [REGION_SERVICE],
    )
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield region_node_pb2_grpc.RegionNodeServiceStub(channel)
    finally:
        await server.drain(announce_s=0, grace_s=0)


async def test_an_exception_a_handler_lets_out_is_internal_without_its_text() -> None:
    """gRPC answered UNKNOWN "Unexpected <class 'KeyError'>: 'secret-internal-detail'"."""
    async with _broken_node() as stub:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in (err.value.details() or "")
        assert "Unexpected" not in (err.value.details() or "")
        call = stub.StreamSummaries(timeout=5)
        await call.write(region_node_pb2.StreamSummariesRequest())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in (err.value.details() or "")


async def test_a_method_a_servicer_leaves_out_is_unimplemented_without_python_text() -> None:
    async with _broken_node() as stub:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetSummaries(region_node_pb2.GetSummariesRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "<class" not in (err.value.details() or "")
