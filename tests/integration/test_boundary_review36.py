"""Review of the RPC boundary (round 36): bad input a client in any language can send
is INVALID_ARGUMENT with BadRequest field violations, and nothing of it applies."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from hypothesis import given
from hypothesis import strategies as st
from meshutil import Mesh, add_region

from nethical_grpc import client, convert
from nethical_grpc.convert import NANOS
from nethical_grpc.errors import details_from_error
from nethical_grpc.proto_limits import FIRST_TIMESTAMP_NS, LAST_TIMESTAMP_NS
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc

GOOD = client.encode_ingest_request("kept", np.array([1.0, 2.0]))
LATER = client.encode_ingest_request("dropped", np.array([3.0]))
#: field 1 (metric) holding bytes that are not UTF-8: no IngestRequest parses from it
UNPARSABLE = b"\x0a\x02\xff\xfe"


async def counts(mesh: Mesh, address: str) -> dict[str, int]:
    stub = region_node_pb2_grpc.RegionNodeServiceStub(mesh.channel(address))
    answer = await stub.GetSummaries(region_node_pb2.GetSummariesRequest(), timeout=10)
    return {s.metric: s.summary.moments.count for s in answer.series}


@pytest.mark.parametrize(
    "later", [(LATER,), (UNPARSABLE, LATER)], ids=["then-good", "then-unparsable-too"]
)
async def test_a_stream_still_writing_after_an_unparsable_message_gets_its_error(
    mesh: Mesh, later: tuple[bytes, ...]
) -> None:
    """The rest of the stream is read and dropped, as after a message that parses but is
    refused, past any later unparsable message too: a client still writing gets
    INVALID_ARGUMENT with its applied counts (the first error's), not grpc's INTERNAL for
    a write that met the finished call."""
    [(server, _)] = await add_region(mesh, "r1")
    sent_all = asyncio.Event()

    async def batches() -> AsyncIterator[bytes]:
        yield GOOD
        yield UNPARSABLE
        for _ in range(5):
            await asyncio.sleep(0.05)
            for message in later:
                yield message
        sent_all.set()

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.ingest(mesh.channel(server.address), batches(), timeout=10)
    details = details_from_error(err.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert sent_all.is_set()
    assert [v.field for v in details.field_violations] == ["request[1]"]
    assert details.metadata["applied_batches"] == "1"
    assert await counts(mesh, server.address) == {"kept": 2}


# -- a client reading back a status whose details are broken --------------------------

_MISMATCHED = status_pb2.Status(code=code_pb2.NOT_FOUND, message="other").SerializeToString()
_CORRUPT_DETAIL = status_pb2.Status(
    code=code_pb2.INVALID_ARGUMENT,
    message="bad thing",
    details=[
        any_pb2.Any(type_url="type.googleapis.com/google.rpc.BadRequest", value=b"\xff\xff"),
        any_pb2.Any(
            type_url="type.googleapis.com/google.rpc.ErrorInfo",
            value=error_details_pb2.ErrorInfo(reason="KEPT").SerializeToString(),
        ),
    ],
).SerializeToString()


@pytest.fixture
async def foreign_server() -> AsyncIterator[str]:
    """A server (not the mesh's: a proxy, or another service at a wrong address) that
    fails every call INVALID_ARGUMENT "bad thing", its grpc-status-details-bin trailer the
    request's bytes."""

    async def fail(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        context.set_trailing_metadata((("grpc-status-details-bin", request),))
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad thing")
        raise AssertionError("abort returned")

    handler = grpc.method_handlers_generic_handler(
        "x.Foreign", {"Call": grpc.unary_unary_rpc_method_handler(fail, _same, _same)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


def _same(data: bytes) -> bytes:
    return data


async def _aio_error(address: str, details: bytes) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await channel.unary_unary("/x.Foreign/Call", _same, _same)(details, timeout=10)
        except grpc.aio.AioRpcError as err:
            return err
    raise AssertionError("the call succeeded")


def _sync_error(address: str, details: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel:
        try:
            channel.unary_unary("/x.Foreign/Call", _same, _same)(details, timeout=10)
        except grpc.RpcError as err:
            return err
    raise AssertionError("the call succeeded")


@pytest.mark.parametrize("details", [b"\xff\xff\xff", _MISMATCHED], ids=["corrupt", "mismatched"])
async def test_broken_status_details_still_give_the_code_and_message(
    foreign_server: str, details: bytes
) -> None:
    """details_from_error raised DecodeError (or, on a blocking channel, ValueError for
    details whose code is not the call's): the CLI showed a traceback, not the status."""
    for err in (
        await _aio_error(foreign_server, details),
        await asyncio.to_thread(_sync_error, foreign_server, details),
    ):
        got = details_from_error(err)
        assert got.code == grpc.StatusCode.INVALID_ARGUMENT
        assert got.message == "bad thing"
        assert got.field_violations == ()


async def test_a_detail_that_does_not_parse_is_skipped_and_the_others_read(
    foreign_server: str,
) -> None:
    for err in (
        await _aio_error(foreign_server, _CORRUPT_DETAIL),
        await asyncio.to_thread(_sync_error, foreign_server, _CORRUPT_DETAIL),
    ):
        got = details_from_error(err)
        assert (got.code, got.message, got.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "bad thing",
            "KEPT",
        )


# -- the Python client's own checks ---------------------------------------------------


@pytest.mark.parametrize("seconds", [math.nan, math.inf, -math.inf, 1e30])
def test_a_region_timeout_no_duration_holds_is_named(seconds: float) -> None:
    """It was ``cannot convert float NaN to integer``, an OverflowError, or protobuf's
    ``Value out of range``, none naming the option."""
    with pytest.raises(ValueError, match="region_timeout_s"):
        client.global_metrics_request(client.QueryOptions(region_timeout_s=seconds))


@given(st.integers(min_value=1, max_value=60 * NANOS))
def test_a_region_timeout_in_seconds_is_sent_to_the_nanosecond(ns: int) -> None:
    """Seconds from nanoseconds (as the CLI's --region-timeout gives them) went back
    truncated: 15 ns (1.5e-08 s) was sent as 14 ns."""
    request = client.global_metrics_request(client.QueryOptions(region_timeout_s=ns / 1e9))
    assert convert.duration_to_ns(request.region_timeout) == ns


@pytest.mark.parametrize("time_ns", [LAST_TIMESTAMP_NS + 1, 2**70, FIRST_TIMESTAMP_NS - 1])
def test_an_ingest_time_no_timestamp_holds_is_refused_by_the_client(time_ns: int) -> None:
    """Such a time was encoded as a Timestamp no protobuf runtime accepts (past year
    9999), and a time before -2**63 s as protobuf's bare ``Value out of range``."""
    with pytest.raises(ValueError, match="time_ns"):
        client.encode_ingest_request("m", np.array([1.0]), time_ns=time_ns)
