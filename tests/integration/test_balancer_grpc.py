"""The load balancer against real grpc.aio servers on loopback: health, retries, errors."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from meshutil import get_node_info, wait_for

from nethical_grpc.balancing import (
    HealthState,
    Instance,
    LoadBalancer,
    LoadBalancingStrategy,
    RetryPolicy,
)
from nethical_grpc.server_runtime import MeshServer, start_server
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc

SERVICE = region_node_pb2.DESCRIPTOR.services_by_name["RegionNodeService"].full_name


class CountingNode(region_node_pb2_grpc.RegionNodeServiceServicer):  # type: ignore[misc]
    """GetNodeInfo answers this node's id and counts hits; can reject as bad input."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.hits = 0
        self.reject = False
        self.delay_s = 0.0
        self.unavailable = ""  # answer UNAVAILABLE with these details, after the work

    async def GetNodeInfo(  # noqa: N802 (gRPC method name)
        self,
        request: region_node_pb2.GetNodeInfoRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> region_node_pb2.GetNodeInfoResponse:
        self.hits += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.reject:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "rejected by test")
        if self.unavailable:
            await context.abort(grpc.StatusCode.UNAVAILABLE, self.unavailable)
        return region_node_pb2.GetNodeInfoResponse(region_id="test", instance_id=self.instance_id)


class Cluster:
    def __init__(self) -> None:
        self.servers: list[MeshServer] = []
        self.nodes: list[CountingNode] = []

    async def start(self, n: int) -> None:
        for i in range(n):
            node = CountingNode(f"n{i}")
            server = await start_server(
                [
                    lambda s, node=node: (
                        region_node_pb2_grpc.add_RegionNodeServiceServicer_to_server(node, s)
                    )
                ],
                [SERVICE],
            )
            self.nodes.append(node)
            self.servers.append(server)

    def hits(self) -> dict[str, int]:
        return {n.instance_id: n.hits for n in self.nodes}

    def reset_hits(self) -> None:
        for n in self.nodes:
            n.hits = 0

    def balancer(self, strategy: LoadBalancingStrategy, **kw: Any) -> LoadBalancer:
        lb = LoadBalancer(
            strategy=strategy,
            retry_policy=RetryPolicy(max_retries=2, backoff_initial_s=0.005, backoff_max_s=0.05),
            **kw,
        )
        for node, server in zip(self.nodes, self.servers, strict=True):
            lb.add_instance(node.instance_id, "test", server.address)
        return lb

    async def close(self) -> None:
        for server in self.servers:
            server.health.close()
            await server.server.stop(0)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    await c.start(3)
    yield c
    await c.close()


async def call_many(lb: LoadBalancer, n: int, **kw: Any) -> list[str]:
    replies = await asyncio.gather(
        *(lb.execute_request_async(get_node_info, timeout=5.0, **kw) for _ in range(n))
    )
    return [r.instance_id for r in replies]


async def test_calls_spread_over_healthy_instances(cluster: Cluster) -> None:
    lb = cluster.balancer(LoadBalancingStrategy.ROUND_ROBIN)
    lb.attach_health_watcher()
    async with lb:
        assert lb.health_watcher is not None and await lb.health_watcher.wait_ready(5.0)
        assert {i.health for i in lb.instances()} == {HealthState.SERVING}
        ids = await call_many(lb, 30)
        assert collections.Counter(ids) == {"n0": 10, "n1": 10, "n2": 10}
        assert cluster.hits() == {"n0": 10, "n1": 10, "n2": 10}
        stats = lb.get_statistics()
        assert stats["total"]["requests"] == 30 and stats["total"]["failures"] == 0
        assert all(s["ewma_latency_ms"] > 0 for s in stats["instances"].values())
        assert stats["total"]["in_flight"] == 0


async def test_not_serving_instance_gets_no_new_requests(cluster: Cluster) -> None:
    lb = cluster.balancer(LoadBalancingStrategy.LEAST_CONNECTIONS)
    lb.attach_health_watcher()
    async with lb:
        assert lb.health_watcher is not None and await lb.health_watcher.wait_ready(5.0)
        await call_many(lb, 12)
        await cluster.servers[1].set_serving(False)
        n1 = lb.instance("n1")
        assert n1 is not None
        await wait_for(lambda: n1.health is HealthState.NOT_SERVING)
        cluster.reset_hits()
        ids = await call_many(lb, 40)
        assert "n1" not in ids
        assert cluster.hits()["n1"] == 0
        assert cluster.hits()["n0"] + cluster.hits()["n2"] == 40
        await cluster.servers[1].set_serving(True)
        await wait_for(lambda: n1.health is HealthState.SERVING)
        cluster.reset_hits()
        await call_many(lb, 30)
        assert cluster.hits()["n1"] > 0


async def test_stopped_server_calls_are_retried_elsewhere(cluster: Cluster) -> None:
    # No health watcher: the balancer learns only from failed calls, so the dead
    # instance is picked and every such attempt must be retried on a live one.
    lb = cluster.balancer(LoadBalancingStrategy.ROUND_ROBIN)
    try:
        await call_many(lb, 9)
        await cluster.servers[0].server.stop(0)
        failed = 0
        for _ in range(30):
            try:
                reply = await lb.execute_request_async(get_node_info, timeout=5.0)
            except grpc.RpcError:
                failed += 1
            else:
                assert reply.instance_id != "n0"
        assert failed == 0
        stats = lb.get_statistics()
        assert stats["instances"]["n0"]["failures"] >= 1
        assert stats["total"]["retries"] >= 1 and stats["total"]["failed_calls"] == 0
        assert stats["instances"]["n0"]["ejected"]  # 3 consecutive failures
    finally:
        await lb.close()


async def test_stopped_server_with_health_watch_loses_no_call(cluster: Cluster) -> None:
    lb = cluster.balancer(LoadBalancingStrategy.RANDOM, seed=3)
    lb.attach_health_watcher()
    async with lb:
        assert lb.health_watcher is not None and await lb.health_watcher.wait_ready(5.0)
        await call_many(lb, 9)
        # the mesh's own stop: NOT_SERVING first, which the health watch turns into no new
        # calls, then a graceful stop. A bare stop, even with a grace period, cancels the
        # calls gRPC has taken in but not yet handed to the server: they end CANCELLED,
        # which is never retried (the balancer cannot tell them from calls in progress)
        stop = asyncio.ensure_future(cluster.servers[2].drain(announce_s=0.5, grace_s=0.5))
        ids = await call_many(lb, 60)  # in flight while the server goes away
        await stop
        ids += await call_many(lb, 30)
        assert len(ids) == 90
        n2 = lb.instance("n2")
        assert n2 is not None
        await wait_for(lambda: n2.health is HealthState.UNREACHABLE)
        assert lb.get_statistics()["total"]["failed_calls"] == 0


async def test_non_idempotent_call_is_retried_only_when_never_sent(cluster: Cluster) -> None:
    lb = cluster.balancer(LoadBalancingStrategy.ROUND_ROBIN)
    try:
        await call_many(lb, 3)
        n0 = lb.instance("n0")
        assert n0 is not None
        await cluster.servers[0].server.stop(0)
        # once the old connection is gone, calls to n0 fail to connect: never sent
        await wait_for(lambda: n0.channel.get_state() is not grpc.ChannelConnectivity.READY)
        ids = [
            (await lb.execute_request_async(get_node_info, idempotent=False)).instance_id
            for _ in range(6)
        ]
        assert "n0" not in ids
        assert lb.get_statistics()["instances"]["n0"]["failures"] >= 1
    finally:
        await lb.close()


async def test_a_non_idempotent_call_a_node_ran_is_not_resent(cluster: Cluster) -> None:
    """A node that did the work and then answered UNAVAILABLE in words that mention a
    refused connection (its store's) was taken as never reached, and the call was sent
    to the other nodes too."""
    lb = cluster.balancer(LoadBalancingStrategy.ROUND_ROBIN)
    try:
        for node in cluster.nodes:
            node.unavailable = "audit store: failed to connect: Connection refused"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await lb.execute_request_async(get_node_info, timeout=5.0, idempotent=False)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert sum(cluster.hits().values()) == 1
        # an idempotent call is retried elsewhere, as before
        cluster.reset_hits()
        with pytest.raises(grpc.aio.AioRpcError):
            await lb.execute_request_async(get_node_info, timeout=5.0)
        assert sum(cluster.hits().values()) == 3
    finally:
        await lb.close()


async def test_removing_an_instance_lets_its_calls_finish(cluster: Cluster) -> None:
    """An instance leaves (DNS stopped naming it) while a call is on it: the call gets its
    answer (its channel had been closed at once, and the caller got a bare
    CancelledError, as if its own task were cancelled); new calls go elsewhere, and the
    balancer's close ends what is left at once."""
    lb = cluster.balancer(LoadBalancingStrategy.ROUND_ROBIN)
    try:
        for node in cluster.nodes:
            node.delay_s = 0.3
        call = asyncio.ensure_future(lb.execute_request_async(get_node_info, timeout=5.0))
        await wait_for(lambda: sum(cluster.hits().values()) == 1)
        (busy,) = [n.instance_id for n in cluster.nodes if n.hits]
        assert lb.remove_instance(busy)
        assert (await call).instance_id == busy
        ids = await call_many(lb, 4)
        assert busy not in ids
        # a call still running on a removed instance when the balancer closes ends then
        lb.add_instance(busy, "test", cluster.servers[int(busy[1:])].address)
        for node in cluster.nodes:
            node.delay_s = 30.0

        def slow_call(inst: Instance) -> Any:
            stub = region_node_pb2_grpc.RegionNodeServiceStub(inst.channel)
            return stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=60.0)

        stuck = asyncio.ensure_future(lb.execute_request_async(slow_call, timeout=60.0))
        await wait_for(lambda: sum(cluster.hits().values()) == 6)
        for inst in lb.instances():
            lb.remove_instance(inst.instance_id)
    finally:
        await asyncio.wait_for(lb.close(), 5.0)
    with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
        await stuck


async def test_invalid_argument_is_not_retried(cluster: Cluster) -> None:
    lb = cluster.balancer(LoadBalancingStrategy.ROUND_ROBIN)
    try:
        for node in cluster.nodes:
            node.reject = True
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await lb.execute_request_async(get_node_info, timeout=5.0)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert sum(cluster.hits().values()) == 1
        total = lb.get_statistics()["total"]
        assert total["retries"] == 0 and total["failed_calls"] == 1
        # caller errors do not eject
        for _ in range(5):
            with pytest.raises(grpc.aio.AioRpcError):
                await lb.execute_request_async(get_node_info, timeout=5.0)
        assert lb.get_statistics()["total"]["ejected_instances"] == 0
    finally:
        await lb.close()


async def test_instances_added_after_start_are_watched(cluster: Cluster) -> None:
    lb = LoadBalancer()
    lb.attach_health_watcher()
    async with lb:
        lb.add_instance("late", "test", cluster.servers[0].address)
        late = lb.instance("late")
        assert late is not None
        await wait_for(lambda: late.health is HealthState.SERVING)
        lb.add_instance("late", "test", cluster.servers[1].address)  # moved
        await wait_for(lambda: late.health is HealthState.SERVING)
        reply = await lb.execute_request_async(get_node_info, timeout=5.0)
        assert reply.instance_id == "n1"
        assert lb.remove_instance("late")
        assert lb.get_instance() is None


async def test_attempt_deadline_reaches_grpc_and_is_enforced(cluster: Cluster) -> None:
    lb = cluster.balancer(LoadBalancingStrategy.ROUND_ROBIN)
    try:
        for node in cluster.nodes:
            node.delay_s = 2.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        # the call hands the attempt's deadline to gRPC: DEADLINE_EXCEEDED, not retried
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await lb.execute_request_async(get_node_info, timeout=5.0, attempt_timeout=0.2)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert loop.time() - started < 1.5

        def ignores_deadline(inst: Instance) -> Any:
            stub = region_node_pb2_grpc.RegionNodeServiceStub(inst.channel)
            return stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=30.0)

        # a call with a looser deadline of its own is cut off by the balancer
        started = loop.time()
        with pytest.raises(TimeoutError):
            await lb.execute_request_async(ignores_deadline, attempt_timeout=0.2)
        assert loop.time() - started < 1.5
        assert sum(cluster.hits().values()) == 2  # neither was retried
        assert lb.get_statistics()["total"]["in_flight"] == 0
    finally:
        await lb.close()
