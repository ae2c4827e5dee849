"""Test helpers: real servers on 127.0.0.1 port 0, in-process (grpc.aio)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest

from coordinator.federation import Federation
from coordinator.instances import REGION_SERVICE
from coordinator.server import CoordinatorConfig, start_coordinator
from nethical_grpc import client, registration
from nethical_grpc.grpc_options import DEFAULT_MAX_MESSAGE_BYTES
from nethical_grpc.privacy import PrivacyConfig
from nethical_grpc.server_runtime import MeshServer, start_server
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc
from region_node.model import ModelConfig
from region_node.node import RegionNode
from region_node.server import RegionServerConfig, start_region_server
from region_node.servicer import SERVICE, RegionNodeServicer, add_to_server
from region_node.stores import StoreConfig
from region_node.windows import WindowConfig


@dataclass
class Mesh:
    """Region servers and (optionally) a coordinator, all real, all on loopback."""

    regions: dict[str, list[tuple[MeshServer, RegionNode]]] = field(default_factory=dict)
    coordinator: MeshServer | None = None
    federation: Federation | None = None
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def channel(self, address: str) -> grpc.aio.Channel:
        ch = client.insecure_channel(address)
        self.channels.append(ch)
        return ch

    def coordinator_channel(self) -> grpc.aio.Channel:
        assert self.coordinator is not None
        return self.channel(self.coordinator.address)

    async def ingest(
        self,
        region: str,
        metric: str,
        values: np.ndarray,
        labels: Mapping[str, str] | None = None,
        instance: int = 0,
    ) -> None:
        server, _ = self.regions[region][instance]
        ch = self.channel(server.address)
        await client.ingest(ch, [client.encode_ingest_request(metric, values, labels)])


StartRegion = Callable[..., Awaitable[tuple[MeshServer, RegionNode]]]


async def mesh_fixture() -> AsyncIterator[Mesh]:
    m = Mesh()
    yield m
    for ch in m.channels:
        await ch.close()
    await stop_mesh(m)


async def stop_mesh(m: Mesh) -> None:
    """Stop the mesh's coordinator, then its region servers, at once."""
    if m.coordinator is not None:
        await m.coordinator.drain(announce_s=0, grace_s=0)
    for servers in m.regions.values():
        for server, _ in servers:
            await server.drain(announce_s=0, grace_s=0)


async def add_region(
    m: Mesh,
    region_id: str,
    instances: int = 1,
    region_scope: bool = False,
    windows: WindowConfig | None = None,
    stores: StoreConfig | None = None,
    first_instance: int = 0,
    privacy: PrivacyConfig | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    evaluate: bool = True,
    detect_workers: int | None = None,
) -> list[tuple[MeshServer, RegionNode]]:
    started = []
    for i in range(first_instance, first_instance + instances):
        started.append(
            await start_region_server(
                RegionServerConfig(
                    region_id=region_id,
                    instance_id=f"{region_id}-{i}",
                    region_scope=region_scope,
                    windows=windows or WindowConfig(),
                    stores=stores or StoreConfig(),
                    privacy=privacy,
                    max_message_bytes=max_message_bytes,
                    model=ModelConfig() if evaluate else None,
                    detect_workers=detect_workers,
                )
            )
        )
    m.regions.setdefault(region_id, []).extend(started)
    return started


async def add_coordinator(
    m: Mesh,
    regions: Sequence[str] | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Federation:
    spec = {r: [s.address for s, _ in m.regions[r]] for r in (regions or m.regions)}
    m.coordinator, m.federation = await start_coordinator(
        CoordinatorConfig(regions=spec, max_message_bytes=max_message_bytes)
    )
    assert await m.federation.registry.wait_ready(10.0)
    return m.federation


def peer_serial(
    port: int, cafile: os.PathLike[str] | str, client_chain: tuple[Any, Any] | None = None
) -> int:
    """Open a fresh TLS connection to ``127.0.0.1:port`` trusting only ``cafile`` (with
    ``client_chain``, a (certificate, key) pair: mutual TLS) and return the serial of the
    certificate served (ssl.SSLCertVerificationError when it is not from that CA)."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(cafile))
    if client_chain is not None:
        ctx.load_cert_chain(*client_chain)
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as conn:
            cert = conn.getpeercert()
    assert cert is not None
    return int(str(cert["serialNumber"]), 16)


def get_node_info(inst: Any, timeout_s: float = 2.0) -> Any:
    """A balanced call (``execute_request*``'s request function): GetNodeInfo on
    ``inst``'s channel within the attempt's deadline."""
    from nethical_grpc.balancing import remaining_timeout
    from nethical_grpc.v1 import region_node_pb2

    stub = region_node_pb2_grpc.RegionNodeServiceStub(inst.channel)
    return stub.GetNodeInfo(
        region_node_pb2.GetNodeInfoRequest(), timeout=remaining_timeout(timeout_s)
    )


def require_openssl() -> None:
    """Skip the test without the openssl command (which makes test certificates); under
    CI its absence is a failure."""
    from nethical_grpc.security.devcerts import openssl_available

    if not openssl_available():
        if os.environ.get("CI"):
            pytest.fail("the openssl command is required to make test certificates")
        pytest.skip("openssl is not installed")


def free_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a server could bind ``port`` on loopback now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


T = TypeVar("T")


class LoopThread:
    """An asyncio loop running in a daemon thread (servers for blocking clients); ``run``
    waits for a coroutine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="servers")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def until_error(answers: Any) -> tuple[list[Any], grpc.aio.AioRpcError]:
    """The answers of a streaming call, and the error that ended it (it must end with
    one)."""
    got: list[Any] = []
    try:
        async for answer in answers:
            got.append(answer)
    except grpc.aio.AioRpcError as err:
        return got, err
    raise AssertionError(f"the call ended with OK after {len(got)} answers")


async def serve_region_servicer(
    servicer: region_node_pb2_grpc.RegionNodeServiceServicer,
) -> MeshServer:
    """A server on port 0 answering the region node service with ``servicer`` (a node's
    own, or a stand-in that behaves as a fault does), its health SERVING."""

    def register(server: grpc.aio.Server) -> None:
        if isinstance(servicer, RegionNodeServicer):
            add_to_server(servicer, server)
        else:
            registration.add_servicer(server, SERVICE, servicer)

    return await start_server([register], [REGION_SERVICE])


async def count_and_gaps(address: str, metric: str) -> tuple[int, list[str]]:
    """A node's answer for ``metric`` (GetSummaries over a fresh channel): the values it
    counts, and the reasons of the gaps it names."""
    async with client.insecure_channel(address) as ch:
        stub = region_node_pb2_grpc.RegionNodeServiceStub(ch)
        resp = await stub.GetSummaries(
            region_node_pb2.GetSummariesRequest(metrics=[metric]), timeout=5
        )
    return sum(s.summary.moments.count for s in resp.series), [g.reason for g in resp.gaps]
