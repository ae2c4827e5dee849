"""Review of the small core modules: target names read with gRPC's case-insensitive
schemes, and a request stream read in chunks that neither hangs on a source's own
CancelledError nor loses a cancel of its consumer."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from nethical_grpc.cli.args import parse_target
from nethical_grpc.server_runtime import start_server
from nethical_grpc.streams import read_chunks
from nethical_grpc.target_names import addresses_of
from nethical_grpc.telemetry.client_interceptor import target_attributes

# -- target names -----------------------------------------------------------------------


@given(
    scheme=st.sampled_from(["dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock"]),
    flips=st.lists(st.booleans(), min_size=13, max_size=13),
    rest=st.sampled_from(["///h:1", "//8.8.8.8/h:2", "[::1]:3,[::2]:4", "/tmp/s", "1.2.3.4:5"]),
)
def test_a_scheme_in_any_case_is_read_as_grpc_reads_it(
    scheme: str, flips: list[bool], rest: str
) -> None:
    cased = "".join(c.upper() if f else c for c, f in zip(scheme, flips, strict=False))
    assert addresses_of(f"{cased}:{rest}") == addresses_of(f"{scheme}:{rest}")


def test_a_unix_socket_target_in_capitals_is_not_refused_as_a_bad_port() -> None:
    """gRPC connects to ``UNIX:/path`` (checked on the wire below for ``DNS:``); the
    command line refused it: "port must be 1 to 65535, got '/tmp/node.sock'"."""
    assert parse_target("UNIX:/tmp/node.sock") == "UNIX:/tmp/node.sock"
    assert parse_target("Unix-Abstract:node") == "Unix-Abstract:node"
    assert target_attributes("Unix:///tmp/node.sock") == {"server.address": "/tmp/node.sock"}
    assert target_attributes("IPv4:10.0.0.7:50051,10.0.0.8:50051") == {
        "server.address": "10.0.0.7",
        "server.port": 50051,
    }


async def test_a_port_past_65535_under_a_capital_scheme_is_refused() -> None:
    """gRPC reads ``DNS:///HOST:PORT+65536`` as PORT (a real server answers it), so the
    command line must refuse it as it does ``dns:///HOST:70000``; it took it as given."""
    server = await start_server([], [], max_concurrent_rpcs=None)
    try:
        wrapped = f"DNS:///127.0.0.1:{server.port + 65536}"
        async with grpc.aio.insecure_channel(wrapped) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING  # it did wrap around
        for target in (wrapped, f"IPv4:127.0.0.1:{server.port},127.0.0.1:70000"):
            with pytest.raises(argparse.ArgumentTypeError, match="port must be 1 to 65535"):
                parse_target(target)
        assert parse_target(f"DNS:///127.0.0.1:{server.port}")
    finally:
        await server.drain(announce_s=0, grace_s=0)


# -- read_chunks ------------------------------------------------------------------------


async def test_a_source_raising_cancelled_error_itself_ends_the_chunks() -> None:
    """A source whose read raises CancelledError without its reader being cancelled
    (the consumer's task is not): the consumer got what came before, then that error;
    it waited for ever on a queue nothing would fill."""

    async def source() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise asyncio.CancelledError

    got: list[int] = []

    async def consume() -> None:
        async for chunk in read_chunks(source(), 8):
            got.extend(chunk)

    task = asyncio.ensure_future(consume())
    done, _ = await asyncio.wait({task}, timeout=5.0)
    if not done:
        task.cancel()
        pytest.fail("the consumer waited for ever after its source failed")
    assert task.cancelled()  # the source's CancelledError, raised to the consumer
    assert got == [1, 2]


async def test_a_cancel_of_the_consumer_while_the_reader_stops_is_not_lost() -> None:
    """The consumer leaves early, and is cancelled while the reading task stops (a gRPC
    call cancelled as its handler leaves the loop): the cancel reaches it; before, the
    reader's CancelledError was suppressed and the consumer's own with it."""
    consumer: asyncio.Task[str] | None = None

    async def source() -> AsyncIterator[int]:
        yield 1
        try:
            await asyncio.Event().wait()  # nothing more comes
        except asyncio.CancelledError:
            assert consumer is not None
            consumer.cancel()  # in the same turn as the reader's own cancel
            raise

    async def consume() -> str:
        chunks = cast(AsyncGenerator[list[int], None], read_chunks(source(), 4))
        async with contextlib.aclosing(chunks):
            async for _ in chunks:
                await asyncio.sleep(0.01)  # the reader now waits on the source
                break
        await asyncio.sleep(0)
        return "went on as if not cancelled"

    consumer = asyncio.ensure_future(consume())
    done, _ = await asyncio.wait({consumer}, timeout=5.0)
    assert done == {consumer}
    assert consumer.cancelled(), consumer.result()
