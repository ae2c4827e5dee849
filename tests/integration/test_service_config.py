"""Any-language clients: gRPC's own round_robin + client-side health checking.

No nethical code on the client: a plain grpcio channel with a service config, the same
JSON a Go, Java or C++ client would pass, over the addresses of three real region
nodes (in Kubernetes: ``dns:///`` + a headless Service name).
"""

from __future__ import annotations

import asyncio
import collections
import json

import grpc
from meshutil import Mesh, add_region

from nethical_grpc.v1 import governance_pb2, region_node_pb2, region_node_pb2_grpc

SERVICE = "nethical_grpc.v1.RegionNodeService"
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": SERVICE},
}
REQUEST = region_node_pb2.EvaluateRequest(
    action=governance_pb2.AgentAction(agent_id="a", action_text="SELECT 1", action_type="query")
)


def target(mesh: Mesh) -> str:
    return "ipv4:" + ",".join(server.address for server, _ in mesh.regions["r1"])


async def served_by(stub: region_node_pb2_grpc.RegionNodeServiceStub, n: int) -> list[str]:
    return [
        (await stub.Evaluate(REQUEST, timeout=10, wait_for_ready=True)).evaluation.instance_id
        for _ in range(n)
    ]


async def until_all_seen(stub: region_node_pb2_grpc.RegionNodeServiceStub, n: int) -> None:
    seen: set[str] = set()
    for _ in range(200):
        seen.update(await served_by(stub, 3))
        if len(seen) == n:
            return
    raise AssertionError(f"only {sorted(seen)} answered")


async def test_service_config_spreads_calls_and_skips_not_serving(mesh: Mesh) -> None:
    await add_region(mesh, "r1", instances=3)
    options = [("grpc.service_config", json.dumps(SERVICE_CONFIG))]
    async with grpc.aio.insecure_channel(target(mesh), options=options) as channel:
        stub = region_node_pb2_grpc.RegionNodeServiceStub(channel)
        await until_all_seen(stub, 3)  # every subchannel connected and health-checked
        counts = collections.Counter(await served_by(stub, 60))
        assert counts == {"r1-0": 20, "r1-1": 20, "r1-2": 20}  # round robin: even

        draining, _ = mesh.regions["r1"][1]
        await draining.set_serving(False)
        # the channel's own Health/Watch stream delivers the change: wait until a whole
        # round of calls stays off the node, then no later call reaches it
        for _ in range(200):
            if "r1-1" not in await served_by(stub, 6):
                break
        later = collections.Counter(await served_by(stub, 60))
        assert later == {"r1-0": 30, "r1-2": 30}

        await draining.set_serving(True)
        for _ in range(200):
            if "r1-1" in await served_by(stub, 6):
                break
        assert set(await served_by(stub, 30)) == {"r1-0", "r1-1", "r1-2"}


async def test_without_health_check_config_a_not_serving_node_still_gets_calls(
    mesh: Mesh,
) -> None:
    await add_region(mesh, "r1", instances=3)
    config = {"loadBalancingConfig": [{"round_robin": {}}]}
    options = [("grpc.service_config", json.dumps(config))]
    async with grpc.aio.insecure_channel(target(mesh), options=options) as channel:
        stub = region_node_pb2_grpc.RegionNodeServiceStub(channel)
        await until_all_seen(stub, 3)
        server, _ = mesh.regions["r1"][1]
        await server.set_serving(False)
        # the node still answers Evaluate: only the health check keeps a client away
        assert collections.Counter(await served_by(stub, 30))["r1-1"] == 10


async def test_blocking_channel_with_service_config_spreads_calls(mesh: Mesh) -> None:
    """The blocking grpcio API (what most scripts use) behaves the same way."""
    await add_region(mesh, "r1", instances=2)
    addresses = target(mesh)

    def call_many() -> collections.Counter[str]:
        options = [("grpc.service_config", json.dumps(SERVICE_CONFIG))]
        with grpc.insecure_channel(addresses, options=options) as channel:
            stub = region_node_pb2_grpc.RegionNodeServiceStub(channel)

            def served() -> str:
                reply = stub.Evaluate(REQUEST, timeout=10, wait_for_ready=True)
                return str(reply.evaluation.instance_id)

            seen = {served() for _ in range(4)}
            for _ in range(200):  # until both subchannels are up and healthy
                if len(seen) == 2:
                    break
                seen.add(served())
            return collections.Counter(served() for _ in range(20))

    assert await asyncio.to_thread(call_many) == {"r1-0": 10, "r1-1": 10}
