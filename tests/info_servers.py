"""Small real region-node servers for the balancer tests: grpc.aio servers on loopback
port 0 with gRPC's own health servicer (grpc_health.v1.health.aio) and a RegionNodeService
whose GetNodeInfo answers the instance's id, slowly or UNAVAILABLE when a test says so."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from nethical_grpc.balancing import LoadBalancer
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class InfoNode(region_node_pb2_grpc.RegionNodeServiceServicer):
    """GetNodeInfo answers its id after ``delay_s``; with ``unavailable`` set, UNAVAILABLE
    with those details (first turning NOT_SERVING, heard by watchers, with
    ``stop_serving``)."""

    def __init__(self, instance_id: str, health: health_aio.HealthServicer) -> None:
        self.instance_id = instance_id
        self.health = health
        self.hits = 0
        self.delay_s = 0.0
        self.unavailable = ""
        self.stop_serving = False

    async def GetNodeInfo(  # noqa: N802 (gRPC method name)
        self,
        request: region_node_pb2.GetNodeInfoRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> region_node_pb2.GetNodeInfoResponse:
        self.hits += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.stop_serving:
            await self.health.set("", NOT_SERVING)
            await asyncio.sleep(0.2)  # the client's health watch hears it first
        if self.unavailable:
            await context.abort(grpc.StatusCode.UNAVAILABLE, self.unavailable)
        return region_node_pb2.GetNodeInfoResponse(region_id="r1", instance_id=self.instance_id)


class InfoServers:
    """``n`` :class:`InfoNode` servers (``n0``, ``n1``, … of region ``r1``), and balancers
    over them whose channels are all kept in ``made``."""

    def __init__(self) -> None:
        self.servers: list[grpc.aio.Server] = []
        self.nodes: list[InfoNode] = []
        self.addresses: list[str] = []
        self.made: list[grpc.aio.Channel] = []  # every channel a balancer made
        self.rotating = False  # channels cannot be made (a TLS file mid-rotation, say)

    async def start(self, n: int) -> None:
        for i in range(n):
            server = grpc.aio.server()
            health = health_aio.HealthServicer()
            node = InfoNode(f"n{i}", health)
            health_pb2_grpc.add_HealthServicer_to_server(health, server)
            region_node_pb2_grpc.add_RegionNodeServiceServicer_to_server(node, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            self.servers.append(server)
            self.nodes.append(node)
            self.addresses.append(f"127.0.0.1:{port}")

    def hits(self) -> list[int]:
        return [n.hits for n in self.nodes]

    def channel_for(self, endpoint: str) -> grpc.aio.Channel:
        if self.rotating:
            raise OSError("TLS key mid-rotation (test)")
        channel = grpc.aio.insecure_channel(endpoint)
        self.made.append(channel)
        return channel

    def balancer(self, **kw: Any) -> LoadBalancer:
        """A balancer over every server (its channels from :meth:`channel_for`)."""
        lb = LoadBalancer(channel_factory=self.channel_for, **kw)
        for node, address in zip(self.nodes, self.addresses, strict=True):
            lb.add_instance(node.instance_id, "r1", address)
        return lb

    async def close(self) -> None:
        for server in self.servers:
            await server.stop(0)
