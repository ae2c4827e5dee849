"""What any client sees of the plumbing every mesh server shares: reflection answers for
symbols that do not exist, the health service's every method, and statuses built from
text that is not valid UTF-8 (real servers on port 0, plain grpc.aio clients)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nethical_grpc.errors import FieldViolation, InvalidArgument, details_from_error, rpc_errors
from nethical_grpc.event_wait import wait_until
from nethical_grpc.grpc_options import channel_options, node_channel_options, server_options
from nethical_grpc.health import HealthService
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


async def test_a_wait_cancelled_as_its_event_is_set_is_cancelled() -> None:
    """``wait_until`` went through ``asyncio.wait_for``, which in Python 3.11 returns the
    inner result when it completes in the same turn as a cancellation: a micro-batch
    worker cancelled just as a caller woke it waited on until its deadline and went on
    running instead of stopping."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    waiting = asyncio.ensure_future(wait_until(lambda: False, wake, loop.time() + 2.0))
    await asyncio.sleep(0.05)  # waiting on ``wake``
    wake.set()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):  # before: False, at the deadline
        await waiting


def _held_lines(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie, its new parent not reaping it, counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_a_child_exits_when_its_parent_dies() -> None:
    child = (
        "import sys, time\n"
        "from nethical_grpc.parent_death import exit_with_parent\n"
        "exit_with_parent(int(sys.argv[1]))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = (
        "import os, subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', sys.argv[1], str(os.getpid())],"
        " stdout=subprocess.PIPE, text=True)\n"
        "print(c.pid, flush=True)\n"
        "print(c.stdout.readline().strip(), flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = _held_lines(parent, child)
    try:
        assert proc.stdout is not None
        child_pid = int(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "ready"
        assert not _gone(child_pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for _ in range(500):
            if _gone(child_pid):
                break
            await asyncio.sleep(0.01)
        else:
            os.kill(child_pid, signal.SIGKILL)
            pytest.fail("the child outlived its parent")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_whose_parent_died_already_exits_at_once() -> None:
    proc = _held_lines(
        "import time\n"
        "from nethical_grpc.parent_death import exit_with_parent\n"
        "exit_with_parent(1)\n"  # not this child's parent: gone before the request
        "time.sleep(60)\n"
    )
    assert proc.wait(30) == -signal.SIGTERM


async def test_health_watch_sends_changes_only_and_ends_when_the_server_stops(
    mesh: MeshServer,
) -> None:
    async with grpc.aio.insecure_channel(mesh.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health.Check(health_pb2.HealthCheckRequest(service="later"), timeout=5)
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service="later"), timeout=10)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        mesh.health.set("later", health_pb2.HealthCheckResponse.SERVING)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        mesh.health.set("later", health_pb2.HealthCheckResponse.SERVING)  # no change
        mesh.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)  # another service
        mesh.health.close()
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await watch.read() is grpc.aio.EOF  # type: ignore[attr-defined]
        assert await watch.code() is grpc.StatusCode.OK


_GATED = "nethical_test.Gated"
_started = asyncio.Event()


async def _flood(
    request: region_node_pb2.GetNodeInfoRequest, context: object
) -> AsyncIterator[region_node_pb2.GetNodeInfoResponse]:
    """Answers until the client leaves (the writes wait on flow control)."""
    _started.set()
    while True:
        yield region_node_pb2.GetNodeInfoResponse(region_id="x" * 60_000)


async def _hang(
    request: region_node_pb2.GetNodeInfoRequest, context: object
) -> region_node_pb2.GetNodeInfoResponse:
    _started.set()
    await asyncio.sleep(60)
    return region_node_pb2.GetNodeInfoResponse()


async def _fail(
    request: region_node_pb2.GetNodeInfoRequest, context: object
) -> AsyncIterator[region_node_pb2.GetNodeInfoResponse]:
    yield region_node_pb2.GetNodeInfoResponse()
    raise RuntimeError("a bug")


def _gated(server: grpc.aio.Server) -> None:
    parse = region_node_pb2.GetNodeInfoRequest.FromString
    out = region_node_pb2.GetNodeInfoResponse.SerializeToString
    handlers = {
        "Flood": grpc.unary_stream_rpc_method_handler(_flood, parse, out),
        "Hang": grpc.unary_unary_rpc_method_handler(_hang, parse, out),
        "Fail": grpc.unary_stream_rpc_method_handler(_fail, parse, out),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_GATED, handlers),))


async def _settled(gate: Any, active: int) -> None:
    for _ in range(500):
        if gate.active == active:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{gate.active} calls counted, {active} expected")


async def test_the_call_gate_frees_the_slot_of_a_call_cancelled_failed_or_ended() -> None:
    server = await start_server([_gated], [_GATED], max_concurrent_rpcs=1)
    gate = server.gate
    assert gate is not None
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            ser = region_node_pb2.GetNodeInfoRequest.SerializeToString
            de = region_node_pb2.GetNodeInfoResponse.FromString
            request = region_node_pb2.GetNodeInfoRequest()

            def stream(name: str) -> Any:
                return channel.unary_stream(
                    f"/{_GATED}/{name}", request_serializer=ser, response_deserializer=de
                )(request, timeout=10)

            flood = stream("Flood")
            await flood.read()
            await _settled(gate, 1)
            flood.cancel()  # while the handler waits to write
            await _settled(gate, 0)
            _started.clear()
            hang = asyncio.ensure_future(
                channel.unary_unary(
                    f"/{_GATED}/Hang", request_serializer=ser, response_deserializer=de
                )(request, timeout=10)
            )
            await _started.wait()
            assert gate.active == 1
            hang.cancel()
            await _settled(gate, 0)
            failing = stream("Fail")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in failing:
                    pass
            assert err.value.code() is grpc.StatusCode.INTERNAL
            await _settled(gate, 0)
            done = stream("Flood")  # the one slot is free
            await done.read()
            done.cancel()
            await _settled(gate, 0)
            assert gate.refused == 0
    finally:
        await server.drain(announce_s=0, grace_s=0)


class _ClosingWhileWriting:
    """A Watch call's real context whose ``write`` has ``health.close()`` run while it
    waits (the server stopping as a status is on its way to the watcher)."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any], health: HealthService):
        self._context = context
        self._health = health

    async def write(self, message: health_pb2.HealthCheckResponse) -> None:
        if message.status == health_pb2.HealthCheckResponse.SERVING:
            self._health.close()
        await self._context.write(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


async def test_health_watch_sends_the_final_status_of_a_close_during_a_write() -> None:
    """Watch looked at ``closed`` after its write: a close() while the write waited ended
    the stream with SERVING as the last word, not the NOT_SERVING close() promises."""
    health = HealthService()

    async def watch(
        request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await health.Watch(request, _ClosingWhileWriting(context, health))  # type: ignore[arg-type]

    server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(
        watch,
        health_pb2.HealthCheckRequest.FromString,
        health_pb2.HealthCheckResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Watch": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            statuses = [answer.status async for answer in call]
        assert statuses == [
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        ]
    finally:
        await server.stop(None)


@pytest.mark.parametrize(
    "options",
    [server_options(), channel_options(), node_channel_options()],
    ids=["server", "channel", "node_channel"],
)
def test_a_keepalive_ping_times_out_after_the_keepalive_timeout(
    options: list[tuple[str, int]],
) -> None:
    """grpc core waits ``grpc.http2.ping_timeout_ms`` (60 s by default) for a keepalive
    ping's ack, not ``grpc.keepalive_timeout_ms``: a client on ``channel_options`` saw a
    SIGSTOPped server 90 s after its last word (measured), not the documented 30 + 10 s.
    Each option once: gRPC does not say which of two values for one name it takes."""
    found = dict(options)
    assert len(found) == len(options)
    assert found["grpc.http2.ping_timeout_ms"] == found["grpc.keepalive_timeout_ms"]
