"""A region node's start and stop: what a drain waits for, what a start that fails part
way or a stop leaves behind (threads, descriptors, processes, sockets, the log's lock),
stores that cannot be reached at start, and a SIGTERM to a real ``nethical-mesh region``
process with calls still running. Real servers on port 0, real refused ports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshutil import free_port, port_is_free
from services import PG_URL, REDIS_URL, fresh_schema, require

from nethical_grpc import client
from nethical_grpc.cli.processes import spawn
from nethical_grpc.server_runtime import MeshServer, start_server
from nethical_grpc.v1 import governance_pb2, region_node_pb2, region_node_pb2_grpc
from region_node.model import ModelConfig
from region_node.server import RegionServerConfig, start_region_server
from region_node.stores import StoreConfig
from region_node.wal import WriteAheadLog

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


def log_is_free(wal_dir: Path) -> bool:
    """Whether another log could open ``wal_dir`` now (its lock let go)."""
    try:
        WriteAheadLog(wal_dir).close()
    except OSError:
        return False
    return True


def resources() -> tuple[int, int, set[int]]:
    """This process's threads, open descriptors and child processes."""
    me = psutil.Process()
    return threading.active_count(), me.num_fds(), {c.pid for c in me.children(recursive=True)}


def store_connections() -> list[str]:
    """This process's TCP connections to the PostgreSQL and Redis servers."""
    ports = {5432, 6379}
    return [
        f"{c.raddr.ip}:{c.raddr.port} {c.status}"
        for c in psutil.Process().net_connections("tcp")
        if c.raddr and c.raddr.port in ports
    ]


async def settle(check: object, timeout_s: float = 15.0) -> None:
    """Wait until ``check()`` holds (threads and processes end a moment after a stop)."""
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "never settled"
        await asyncio.sleep(0.05)


def node_config(tmp_path: Path, **kwargs: object) -> RegionServerConfig:
    base: dict[str, object] = {
        "region_id": "life",
        "instance_id": "life-0",
        "model": None,
        "wal_dir": tmp_path / "wal",
        "stores": StoreConfig(timeseries_url=f"sqlite:///{tmp_path / 'ts.db'}"),
    }
    base.update(kwargs)
    return RegionServerConfig(**base)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def node(config: RegionServerConfig) -> AsyncIterator[MeshServer]:
    mesh, _ = await start_region_server(config)
    try:
        yield mesh
    finally:
        await mesh.drain(0.0, 0.0)


# -- drain, in process -------------------------------------------------------------------


async def test_a_second_drain_waits_until_the_first_one_has_stopped(tmp_path: Path) -> None:
    """A drain already under way (a stop with an announcement, say) and a second call
    (a test's teardown, a shutdown hook): the second returned at once, before the
    server stopped and its stop hooks ran, so the stores and the log were still open
    when the caller went on (and a loop closed then never closed them)."""
    mesh, _ = await start_region_server(node_config(tmp_path))
    async with client.insecure_channel(mesh.address) as ch:
        await client.ingest(ch, [client.encode_ingest_request("m", np.ones(4), batch_id="b1")])
    first = asyncio.ensure_future(mesh.drain(announce_s=0.5, grace_s=0.5))
    await asyncio.sleep(0.05)
    assert mesh.health.status() == NOT_SERVING  # the first one began
    assert not log_is_free(tmp_path / "wal")
    await mesh.drain(announce_s=0.0, grace_s=0.0)
    assert first.done()  # stopped, hooks and all, when the second call returns
    await first
    assert log_is_free(tmp_path / "wal")
    assert port_is_free(mesh.port)


async def test_a_drain_whose_caller_is_cancelled_still_stops_the_node(tmp_path: Path) -> None:
    """The task draining the node cancelled during the announcement (its caller gave
    up): the stop went no further, leaving the server listening and its log locked. The
    stop now finishes; a later drain waits for it."""
    mesh, _ = await start_region_server(node_config(tmp_path))
    draining = asyncio.ensure_future(mesh.drain(announce_s=0.3, grace_s=0.0))
    await asyncio.sleep(0.05)
    draining.cancel()
    with pytest.raises(asyncio.CancelledError):
        await draining
    await asyncio.wait_for(mesh.drain(0.0, 0.0), 10)
    assert port_is_free(mesh.port)
    assert log_is_free(tmp_path / "wal")


async def test_a_start_cancelled_while_grpc_starts_is_cancelled_and_lets_go_of_the_port() -> None:
    """Cancelled (a SIGTERM while the node starts) once the port is bound, while gRPC's
    own start runs: the stop of that half-started server raised InvalidStateError in
    place of the cancel (the CLI said "cannot start ...: InvalidStateError" and exited
    2) and the port could still be bound when the start had ended."""
    for _ in range(3):
        port = free_port()
        starting = asyncio.ensure_future(start_server([], [], port=port, reflection_enabled=False))
        await asyncio.sleep(0)  # its first step: bound, then waiting in gRPC's start
        assert not port_is_free(port) and not starting.done()
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert port_is_free(port)


# -- what a start and a stop leave behind ----------------------------------------------


def big_batch(n: int = 200) -> region_node_pb2.EvaluateStreamRequest:
    return region_node_pb2.EvaluateStreamRequest(
        actions=[
            governance_pb2.AgentAction(agent_id="a", action_text=f"DROP TABLE t{i}")
            for i in range(n)
        ]
    )


async def serve_once(tmp_path: Path, cache_url: str) -> None:
    """A node with every part running: detection workers started by a large batch, a
    cache whose Redis refuses (its probe running), a log, SQLite stores; stopped with an
    EvaluateStream still open."""
    config = node_config(
        tmp_path,
        model=ModelConfig(),
        detect_workers=1,
        stores=StoreConfig(
            cache_url=cache_url,
            timeseries_url=f"sqlite:///{tmp_path / 'ts.db'}",
            audit_url=f"sqlite:///{tmp_path / 'audit.db'}",
        ),
    )
    mesh, _ = await start_region_server(config)
    try:
        async with client.insecure_channel(mesh.address) as ch:
            stub = region_node_pb2_grpc.RegionNodeServiceStub(ch)
            deadline = time.monotonic() + 90
            while True:  # until the workers have taken a batch
                [_ async for _ in stub.EvaluateStream(iter([big_batch()]), timeout=30)]
                info = await stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=10)
                if "batches detected there 0," not in info.components["detection"]:
                    break
                assert time.monotonic() < deadline, info.components["detection"]
                await asyncio.sleep(0.2)
            assert psutil.Process().children(recursive=True)
            held = asyncio.Event()

            async def requests() -> AsyncIterator[region_node_pb2.EvaluateStreamRequest]:
                yield big_batch(3)
                await held.wait()

            stream = stub.EvaluateStream(requests(), timeout=60)
            assert len((await stream.read()).results) == 3
            await mesh.drain(announce_s=0.0, grace_s=0.2)
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await stream.read()
            assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
            held.set()
    finally:
        await mesh.drain(0.0, 0.0)


async def test_start_and_stop_again_in_one_process_leave_nothing_behind(tmp_path: Path) -> None:
    """Threads, descriptors and child processes (the detection workers) counted in this
    process: a second and a third start after the first (which starts what gRPC and
    multiprocessing keep for the process) leave the same counts when stopped."""
    cache = f"redis://127.0.0.1:{free_port()}/0"
    await serve_once(tmp_path, cache)
    await asyncio.sleep(0.5)
    threads, fds, children = resources()
    for _ in range(2):
        await serve_once(tmp_path, cache)
        await settle(lambda: resources() == (threads, fds, children))
    assert log_is_free(tmp_path / "wal")


@pytest.fixture
def pg_schema() -> Iterator[str]:
    with fresh_schema("life36") as schema:
        yield schema


def require_redis() -> None:
    import redis

    def ping() -> None:
        r = redis.Redis.from_url(REDIS_URL, socket_timeout=3)
        try:
            r.ping()
        finally:
            r.close()

    require("Redis", ping)


async def test_a_start_that_cannot_listen_closes_its_stores_and_a_second_start_serves(
    tmp_path: Path, pg_schema: str
) -> None:
    """PostgreSQL and Redis opened, the log locked, then the port turns out taken: the
    start fails naming it, its connections to both servers and its log's lock go, the
    process's descriptors and threads are as before, and a second start in the same
    process (the same log, the same schema) serves."""
    require_redis()
    stores = StoreConfig(cache_url=REDIS_URL, timeseries_url=PG_URL, timeseries_schema=pg_schema)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = node_config(tmp_path, stores=stores, port=taken.getsockname()[1])
        with pytest.raises(OSError, match="cannot listen"):  # gRPC's first bind, once
            await start_region_server(config)
        await settle(lambda: not store_connections())
        threads, fds, _ = resources()
        with pytest.raises(OSError, match="cannot listen"):
            await start_region_server(config)
        assert log_is_free(tmp_path / "wal")
        await settle(lambda: not store_connections())
        await settle(lambda: resources()[:2] == (threads, fds))
    async with node(node_config(tmp_path, stores=stores)) as mesh:
        async with client.insecure_channel(mesh.address) as ch:
            assert await client.check_health(ch) == SERVING
            await client.ingest(ch, [client.encode_ingest_request("m", np.ones(3))])
        assert store_connections()  # the second start uses the servers
    await settle(lambda: not store_connections())


async def test_stores_on_refused_ports_fall_back_saying_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis and PostgreSQL URLs whose ports refuse (nothing listens there): the node
    starts on the embedded stores, warns once per store naming the URL and the reason,
    and says so in GetNodeInfo; it serves, and stops cleanly."""
    redis_port, pg_port = free_port(), free_port()
    stores = StoreConfig(
        cache_url=f"redis://127.0.0.1:{redis_port}/0",
        timeseries_url=f"postgresql://postgres@127.0.0.1:{pg_port}/test",
    )
    caplog.set_level(logging.INFO, logger="region_node.stores")
    started = time.monotonic()
    async with node(node_config(tmp_path, wal_dir=None, stores=stores)) as mesh:
        assert time.monotonic() - started < 30  # a refused port is no connect timeout
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.name == "region_node.stores" and r.levelno == logging.WARNING
        ]
        assert any(
            w.startswith("cache:") and f":{redis_port}" in w and "connection refused" in w
            for w in warnings
        ), warnings
        assert any(
            w.startswith("timeseries:") and f":{pg_port}" in w and "connection refused" in w
            for w in warnings
        ), warnings
        async with client.insecure_channel(mesh.address) as ch:
            assert await client.check_health(ch) == SERVING
            stub = region_node_pb2_grpc.RegionNodeServiceStub(ch)
            info = await stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=10)
            backends = {s.store: s for s in info.stores}
            assert "memory" in backends["cache"].backend
            assert "memory" in backends["timeseries"].backend
            await client.ingest(ch, [client.encode_ingest_request("m", np.ones(3))])


# -- SIGTERM to a real process ---------------------------------------------------------


def evaluate_stream_of_one(
    stub: region_node_pb2_grpc.RegionNodeServiceStub,
) -> tuple[object, asyncio.Queue[region_node_pb2.EvaluateStreamRequest | None]]:
    queue: asyncio.Queue[region_node_pb2.EvaluateStreamRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[region_node_pb2.EvaluateStreamRequest]:
        while (item := await queue.get()) is not None:
            yield item

    return stub.EvaluateStream(requests(), timeout=120), queue


ONE = region_node_pb2.EvaluateStreamRequest(
    action=governance_pb2.AgentAction(agent_id="a", action_text="ls -la", action_type="command")
)


@pytest.mark.e2e
async def test_sigterm_announces_then_refuses_new_calls_and_gives_a_stream_its_grace(
    tmp_path: Path,
) -> None:
    """SIGTERM: NOT_SERVING for the announcement while calls are still answered; then
    new calls are refused while an open EvaluateStream goes on being answered for the
    grace; then it is cut (UNAVAILABLE) and the process exits 0, its worker processes
    gone, in about announcement + grace."""
    announce_s, grace_s = 1.5, 2.5
    child = spawn(
        "sigterm",
        [
            "region", "--region-id", "sigterm", "--port", "0", "--detect-workers", "1",
            "--drain-announce", f"{announce_s}s", "--drain-grace", f"{grace_s}s",
        ],
        tmp_path,
    )  # fmt: skip
    try:
        port = await child.aport()
        async with client.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = region_node_pb2_grpc.RegionNodeServiceStub(ch)
            health = health_pb2_grpc.HealthStub(ch)
            [_ async for _ in stub.EvaluateStream(iter([big_batch()]), timeout=60)]
            descendants = psutil.Process(child.pid).children(recursive=True)
            stream, queue = evaluate_stream_of_one(stub)
            await queue.put(ONE)
            assert (await stream.read()).HasField("evaluation")  # type: ignore[attr-defined]
            child.signal(signal.SIGTERM)
            signalled = time.monotonic()
            await settle(lambda: "draining" in child.log_path.read_text())
            # the announcement: NOT_SERVING, and calls still answered
            check = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert check.status == NOT_SERVING
            await stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=5)
            assert time.monotonic() - signalled < announce_s
            # the grace: new calls refused, the open stream still answered
            await asyncio.sleep(max(0.0, signalled + announce_s + 0.3 - time.monotonic()))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            await queue.put(ONE)
            assert (await stream.read()).HasField("evaluation")  # type: ignore[attr-defined]
            assert time.monotonic() - signalled < announce_s + grace_s
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await stream.read()  # type: ignore[attr-defined]
            assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
            await queue.put(None)
        code = await asyncio.to_thread(child.proc.wait, 30)
        took = time.monotonic() - signalled
        assert code == 0, child.tail()
        assert announce_s + grace_s - 0.2 < took < announce_s + grace_s + 10, took
        _, alive = psutil.wait_procs(descendants, timeout=15)
        assert alive == []
        said = child.log_path.read_text()
        assert "Traceback" not in said and "stopped" in said
        assert not child.port_file.exists()
    finally:
        child.stop()


@pytest.mark.e2e
async def test_a_second_sigterm_in_the_grace_cuts_an_open_stream_at_once(
    tmp_path: Path,
) -> None:
    """A second SIGTERM while an EvaluateStream holds the grace: the stream is cut and
    the node exits 0 in moments, not at the end of the grace."""
    child = spawn(
        "sigterm2",
        [
            "region", "--region-id", "sigterm2", "--port", "0", "--detect-workers", "0",
            "--drain-announce", "0.2s", "--drain-grace", "60s",
        ],
        tmp_path,
    )  # fmt: skip
    try:
        port = await child.aport()
        async with client.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = region_node_pb2_grpc.RegionNodeServiceStub(ch)
            stream, queue = evaluate_stream_of_one(stub)
            await queue.put(ONE)
            await stream.read()  # type: ignore[attr-defined]
            child.signal(signal.SIGTERM)
            await settle(lambda: "calls in progress get up to" in child.log_path.read_text())
            again = time.monotonic()
            child.signal(signal.SIGTERM)
            with pytest.raises(grpc.aio.AioRpcError):
                await stream.read()  # type: ignore[attr-defined]
            await queue.put(None)
        code = await asyncio.to_thread(child.proc.wait, 30)
        assert code == 0, child.tail()
        assert time.monotonic() - again < 10
        assert "SIGTERM again: stopping now" in child.log_path.read_text()
    finally:
        child.stop()
