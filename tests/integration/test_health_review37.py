"""Review of health watching (round 37), on real grpc.aio servers on port 0:
``follow_health`` does not re-watch a server that ends each Watch stream at once every
50 ms (its backoff started over on every answer), and a server bounds the Watch streams
it holds (Watch is public and exempt from the call limit)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nethical_grpc.errors import details_from_error
from nethical_grpc.health import SERVING, HealthService, Watched, follow_health

BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 0.4


class _ShortStreams(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Watch sends SERVING, then ends the stream (or aborts UNAVAILABLE) at once, except
    the streams listed in ``long_lived``, which stay up ``long_s`` first. Records when
    each Watch call came and when each ended."""

    def __init__(self, abort: bool, long_lived: frozenset[int] = frozenset(), long_s: float = 0):
        self.abort = abort
        self.long_lived = long_lived
        self.long_s = long_s
        self.started: list[float] = []
        self.ended: list[float] = []

    async def Watch(  # noqa: N802
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        loop = asyncio.get_running_loop()
        index = len(self.started)
        self.started.append(loop.time())
        await context.write(health_pb2.HealthCheckResponse(status=SERVING))
        if index in self.long_lived:
            await asyncio.sleep(self.long_s)
        self.ended.append(loop.time())
        if self.abort:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "stream closed by the proxy")


async def _server(servicer: Any) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _follow(port: int, seconds: float, reports: list[Watched]) -> None:
    async def report(state: Watched) -> None:
        reports.append(state)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        task = asyncio.ensure_future(
            follow_health(
                channel,
                "",
                report,
                BACKOFF_INITIAL_S,
                BACKOFF_MAX_S,
                rng=random.Random(7),
                name="flapping",
            )
        )
        await asyncio.sleep(seconds)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("abort", [False, True], ids=["ends", "aborts"])
async def test_a_server_ending_each_watch_at_once_is_rewatched_at_the_backed_off_pace(
    abort: bool,
) -> None:
    """The backoff started over on every answer: a stream that ended right after its
    first was reopened ~50 ms later, forever (measured 20+ Watch calls in 1.5 s), and the
    instance flapped SERVING/UNREACHABLE at that rate. Backed off, it is a handful."""
    servicer = _ShortStreams(abort)
    server, port = await _server(servicer)
    try:
        reports: list[Watched] = []
        await _follow(port, 1.5, reports)
    finally:
        await server.stop(None)
    # delays 0.05, 0.1, 0.2, 0.4, 0.4 … (jittered by 0.5-1.5): about 6 calls in 1.5 s
    assert 3 <= len(servicer.started) <= 10, servicer.started
    assert reports[:2] == [Watched.SERVING, Watched.UNREACHABLE]
    assert reports.count(Watched.SERVING) == len(servicer.started)


async def test_a_long_lived_watch_that_ends_is_reopened_at_once() -> None:
    """The backoff starts over after a stream that was up a while: after a few quick
    ends (the delay grown to its max), a stream up longer than ``backoff_max_s`` that
    then ends is reopened after about ``backoff_initial_s``, not the grown delay."""
    long_index = 4
    servicer = _ShortStreams(False, frozenset({long_index}), long_s=BACKOFF_MAX_S + 0.3)
    server, port = await _server(servicer)
    try:
        reports: list[Watched] = []
        await _follow(port, 3.0, reports)
    finally:
        await server.stop(None)
    assert len(servicer.started) > long_index + 1, servicer.started
    # the calls before it backed off (the last wait at least 0.2 * 0.5 s) ...
    assert servicer.started[long_index] - servicer.ended[long_index - 1] >= 0.1
    # ... and the one after it came at once (0.05 * 1.5 s at most, with slack for RPCs)
    gap = servicer.started[long_index + 1] - servicer.ended[long_index]
    assert gap < 0.15, gap


# --- the server's bound on Watch streams -------------------------------------------------


async def _watching(stub: health_pb2_grpc.HealthStub) -> Any:
    """A Watch call whose first answer has come (so the server holds it)."""
    call = stub.Watch(health_pb2.HealthCheckRequest(), timeout=20)
    first = await call.read()
    assert first.status == SERVING
    return call


async def _refused(stub: health_pb2_grpc.HealthStub) -> grpc.aio.AioRpcError:
    call = stub.Watch(health_pb2.HealthCheckRequest(), timeout=20)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    return caught.value


async def _until_accepted(stub: health_pb2_grpc.HealthStub) -> Any:
    """A Watch accepted, once the server has seen a cancelled one end."""
    for _ in range(100):
        try:
            return await _watching(stub)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            await asyncio.sleep(0.05)
    raise AssertionError("no Watch accepted after one ended")


@pytest.fixture
async def bounded() -> AsyncIterator[health_pb2_grpc.HealthStub]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(HealthService(max_watches=2), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield health_pb2_grpc.HealthStub(channel)
    finally:
        await server.stop(None)


async def test_watch_streams_over_the_bound_are_refused(
    bounded: health_pb2_grpc.HealthStub,
) -> None:
    """Nothing bounded the Watch streams a server held: any caller (Health needs no
    token, nor counts against the call limit) could hold a stream and a task each, as
    many as it liked."""
    stub = bounded
    first = await _watching(stub)
    second = await _watching(stub)
    err = await _refused(stub)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = details_from_error(err)
    assert "limit of 2 concurrent health Watch streams" in details.message
    assert details.reason == "TOO_MANY_WATCHES"
    assert details.metadata == {"max_watch_streams": "2"}
    # Check is not bounded by the watches
    answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert answer.status == SERVING
    # a refusal holds nothing; a watch that ends frees its place
    assert (await _refused(stub)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    first.cancel()
    third = await _until_accepted(stub)
    assert (await _refused(stub)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    second.cancel()
    third.cancel()
    fourth = await _until_accepted(stub)
    fifth = await _until_accepted(stub)
    fourth.cancel()
    fifth.cancel()


def test_the_watch_bound_is_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        HealthService(max_watches=0)


async def test_under_a_call_limit_watches_leave_room_in_grpcs_own_bound() -> None:
    """Watch is exempt from a server's call gate, not from gRPC's bound behind it (the
    gate's limit plus EXEMPT_HEADROOM): there the Watch streams may take only part of
    the headroom, so that Checks and mesh calls still get in."""
    from nethical_grpc.call_limit import EXEMPT_HEADROOM, WATCHES_UNDER_A_GATE
    from nethical_grpc.server_runtime import start_server

    assert WATCHES_UNDER_A_GATE < EXEMPT_HEADROOM
    server = await start_server([], [], max_concurrent_rpcs=1)
    channels = [grpc.aio.insecure_channel(server.address) for _ in range(4)]
    watches = []
    try:
        for i in range(WATCHES_UNDER_A_GATE):
            call = health_pb2_grpc.HealthStub(channels[i % 4]).Watch(
                health_pb2.HealthCheckRequest(), timeout=30
            )
            watches.append(call)
        for call in watches:  # each one is up: its first answer came
            assert (await call.read()).status == SERVING
        extra = health_pb2_grpc.HealthStub(channels[0]).Watch(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await extra.read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details_from_error(refused.value).reason == "TOO_MANY_WATCHES"
        check = await health_pb2_grpc.HealthStub(channels[1]).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert check.status == SERVING
    finally:
        for call in watches:
            call.cancel()
        for channel in channels:
            await channel.close()
        await server.drain(0)
