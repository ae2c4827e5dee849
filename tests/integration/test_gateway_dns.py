"""The coordinator following dns:/// targets: real region nodes appear and leave.

The nodes listen on one port at different loopback addresses (127.0.0.1, .2, .3), the
way pods behind a headless Service share a port at different IPs; an injected resolver
says which of them the name currently resolves to. One test resolves ``localhost`` with
the system resolver.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from meshutil import wait_for

from coordinator.gateway_config import GatewayConfig
from coordinator.instances import Health, InstanceRegistry
from coordinator.server import CoordinatorConfig, start_coordinator
from nethical_grpc import client
from nethical_grpc.balancing import Resolver
from nethical_grpc.server_runtime import MeshServer
from nethical_grpc.v1 import coordinator_pb2, coordinator_pb2_grpc, governance_pb2
from region_node.server import RegionServerConfig, start_region_server

NAME = "nodes.r1.svc.cluster.local"


class Pods:
    """Region nodes on 127.0.0.N:PORT and the addresses the name resolves to."""

    def __init__(self) -> None:
        self.servers: dict[str, MeshServer] = {}
        self.port = 0
        self.resolves_to: Sequence[str] = ()
        self.coordinator: MeshServer | None = None
        self.channels: list[grpc.aio.Channel] = []

    async def start(self, ips: Sequence[str]) -> None:
        for ip in ips:
            server, _ = await start_region_server(
                RegionServerConfig(region_id="r1", instance_id=f"pod-{ip}", host=ip, port=self.port)
            )
            self.port = server.port
            self.servers[ip] = server

    async def resolve(self, host: str, port: int) -> list[tuple[str, int]]:
        assert (host, port) == (NAME, self.port)
        return [(ip, port) for ip in self.resolves_to]

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()
        if self.coordinator is not None:
            await self.coordinator.drain(0, 0)
        for server in self.servers.values():
            await server.drain(0, 0)


@pytest.fixture
async def pods() -> AsyncIterator[Pods]:
    p = Pods()
    yield p
    await p.close()


async def gateway(
    pods: Pods, target: str, interval_s: float, resolver: Resolver | None = None
) -> tuple[coordinator_pb2_grpc.CoordinatorServiceStub, InstanceRegistry]:
    pods.coordinator, federation = await start_coordinator(
        CoordinatorConfig(
            regions={"r1": [target]},
            gateway=GatewayConfig(
                strategy="round_robin",
                resolve_interval_s=interval_s,
                resolver=resolver,
            ),
        )
    )
    channel = client.insecure_channel(pods.coordinator.address)
    pods.channels.append(channel)
    return coordinator_pb2_grpc.CoordinatorServiceStub(channel), federation.registry


async def served(stub: coordinator_pb2_grpc.CoordinatorServiceStub, n: int) -> set[str]:
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        resp = await stub.Evaluate(
            coordinator_pb2.CoordinatorServiceEvaluateRequest(
                action=governance_pb2.AgentAction(agent_id="a", action_text="ls")
            ),
            timeout=10,
        )
        counts[resp.evaluation.instance_id] += 1
    return set(counts)


async def test_pods_that_appear_and_leave_are_followed(pods: Pods) -> None:
    await pods.start(["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    pods.resolves_to = ["127.0.0.1", "127.0.0.2"]
    stub, registry = await gateway(pods, f"dns:///{NAME}:{pods.port}", 0.05, pods.resolve)
    assert await registry.wait_ready(10.0)
    assert await served(stub, 8) == {"pod-127.0.0.1", "pod-127.0.0.2"}
    listed = await stub.ListRegions(coordinator_pb2.ListRegionsRequest(), timeout=5)
    [region] = listed.regions
    assert sorted((i.instance_id, i.endpoint) for i in region.instances) == [
        ("pod-127.0.0.1", f"127.0.0.1:{pods.port}"),
        ("pod-127.0.0.2", f"127.0.0.2:{pods.port}"),
    ]
    assert {i.resolved_from for i in region.instances} == {f"dns:///{NAME}:{pods.port}"}

    pods.resolves_to = ["127.0.0.2", "127.0.0.3"]  # one pod left, another came
    third = f"127.0.0.3:{pods.port}"

    def followed() -> bool:
        views = {v.endpoint: v for v in registry.all_instances()}
        return set(views) == {f"127.0.0.2:{pods.port}", third} and (
            views[third].health is Health.SERVING
        )

    await wait_for(followed)
    assert await served(stub, 8) == {"pod-127.0.0.2", "pod-127.0.0.3"}
    listed = await stub.ListRegions(coordinator_pb2.ListRegionsRequest(), timeout=5)
    assert sorted(i.instance_id for i in listed.regions[0].instances) == [
        "pod-127.0.0.2",
        "pod-127.0.0.3",
    ]


async def test_a_name_with_no_pods_yet_is_a_known_region_without_instances(pods: Pods) -> None:
    await pods.start(["127.0.0.1"])
    pods.resolves_to = []
    stub, registry = await gateway(pods, f"dns:///{NAME}:{pods.port}", 0.05, pods.resolve)
    listed = await stub.ListRegions(coordinator_pb2.ListRegionsRequest(), timeout=5)
    assert [(r.region_id, len(r.instances), r.healthy) for r in listed.regions] == [
        ("r1", 0, False)
    ]
    pods.resolves_to = ["127.0.0.1"]
    await wait_for(lambda: len(list(registry.all_instances())) == 1)
    await wait_for(lambda: all(v.health is Health.SERVING for v in registry.all_instances()))
    assert await served(stub, 2) == {"pod-127.0.0.1"}


async def test_localhost_resolves_for_real(pods: Pods) -> None:
    await pods.start(["127.0.0.1"])
    stub, registry = await gateway(pods, f"dns:///localhost:{pods.port}", 10.0)
    assert await registry.wait_ready(10.0)
    endpoints = {v.endpoint for v in registry.all_instances()}
    assert f"127.0.0.1:{pods.port}" in endpoints
    assert await served(stub, 3) == {"pod-127.0.0.1"}
