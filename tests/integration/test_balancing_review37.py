"""Balancing review (round 37): health watches that restart, clear UNAVAILABLE errors
when no instance is left, and backoff that survives long retry runs. Real grpc.aio
servers on loopback port 0 with gRPC's own health servicer (grpc_health.v1.health.aio)."""

from __future__ import annotations

import random

import grpc
import pytest
from grpc_health.v1 import health_pb2
from info_servers import InfoServers as Servers
from meshutil import get_node_info, wait_for

from nethical_grpc.balancing import (
    HealthState,
    LoadBalancer,
    NoAvailableInstanceError,
    RetryPolicy,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_watch_whose_channel_cannot_be_made_yet_is_restarted(servers: Servers) -> None:
    """The channel factory fails for a while (a TLS key and certificate mid-rotation):
    the watch died with it, leaving the instance UNKNOWN (picked) and never watched
    again; now it is UNREACHABLE meanwhile, then followed as usual."""
    failing = [3]

    def channel_for(endpoint: str) -> grpc.aio.Channel:
        if failing[0] > 0:
            failing[0] -= 1
            raise ValueError("the TLS key does not match the certificate")
        return grpc.aio.insecure_channel(endpoint)

    lb = LoadBalancer(channel_factory=channel_for)
    lb.attach_health_watcher(backoff_initial_s=0.02, backoff_max_s=0.1)
    inst = lb.add_instance("n0", "r1", servers.addresses[0])
    async with lb:
        await wait_for(lambda: inst.health is HealthState.UNREACHABLE)
        assert lb.get_instance() is None  # not picked while it has no channel
        await wait_for(lambda: inst.health is HealthState.SERVING)
        assert failing[0] == 0
        # the watch runs: the node's own health changes reach the balancer
        await servers.nodes[0].health.set("", NOT_SERVING)
        await wait_for(lambda: inst.health is HealthState.NOT_SERVING)
        await servers.nodes[0].health.set("", SERVING)
        await wait_for(lambda: inst.health is HealthState.SERVING)
        reply = await lb.execute_request_async(get_node_info, timeout=5.0)
        assert reply.instance_id == "n0"


async def test_no_instance_left_after_a_retry_names_what_was_tried(servers: Servers) -> None:
    """The only instance answers UNAVAILABLE and goes NOT_SERVING: the retry finds no
    instance. The error said only "no usable instance", dropping the node's answer; now
    it is UNAVAILABLE naming the instance and how it failed, raised from that error."""
    lb = LoadBalancer(
        retry_policy=RetryPolicy(max_retries=2, backoff_initial_s=0.05, backoff_max_s=0.05)
    )
    lb.attach_health_watcher(backoff_initial_s=0.02, backoff_max_s=0.1)
    lb.add_instance("n0", "r1", servers.addresses[0])
    node = servers.nodes[0]
    async with lb:
        assert lb.health_watcher is not None and await lb.health_watcher.wait_ready(5.0)
        node.unavailable, node.stop_serving = "overloaded: 512 calls queued", True
        with pytest.raises(NoAvailableInstanceError) as info:
            await lb.execute_request_async(get_node_info, "r1", 5.0)
        err = info.value
        assert node.hits == 1
        assert err.code() is grpc.StatusCode.UNAVAILABLE
        text = str(err)
        assert text.startswith('no usable instance (region "r1"); tried n0 ')
        assert servers.addresses[0] in text and "UNAVAILABLE: overloaded: 512 calls" in text
        assert set(err.tried) == {"n0"}
        assert isinstance(err.__cause__, grpc.aio.AioRpcError)
        assert err.__cause__.details() == "overloaded: 512 calls queued"
        total = lb.get_statistics()["total"]
        assert (total["calls"], total["failed_calls"], total["retries"]) == (1, 1, 1)


async def test_no_instance_at_all_says_the_state_of_each(servers: Servers) -> None:
    lb = LoadBalancer()
    lb.attach_health_watcher(backoff_initial_s=0.02, backoff_max_s=0.1)
    for i, address in enumerate(servers.addresses):
        lb.add_instance(f"n{i}", "r1", address)
    async with lb:
        assert lb.health_watcher is not None and await lb.health_watcher.wait_ready(5.0)
        await servers.nodes[0].health.set("", NOT_SERVING)
        await servers.servers[1].stop(0)
        await wait_for(lambda: lb.get_instance() is None)
        with pytest.raises(NoAvailableInstanceError) as info:
            await lb.execute_request_async(get_node_info, timeout=5.0)
        assert str(info.value) == (
            f"no usable instance: n0 ({servers.addresses[0]}) not_serving, "
            f"n1 ({servers.addresses[1]}) unreachable"
        )
        assert info.value.__cause__ is None and info.value.tried == {}
        assert lb.get_statistics()["total"]["failed_calls"] == 1
        assert servers.nodes[0].hits == servers.nodes[1].hits == 0


def test_backoff_past_a_thousand_retries_stays_capped() -> None:
    """multiplier ** retry overflowed a float at retry 1024 (OverflowError)."""
    policy = RetryPolicy(max_retries=5000, backoff_initial_s=0.01, backoff_max_s=0.5, jitter=0.0)
    rng = random.Random(1)
    assert [policy.backoff_s(n, rng) for n in (0, 1, 1023, 1024, 4999)] == [
        0.01,
        0.02,
        0.5,
        0.5,
        0.5,
    ]


async def test_a_long_retry_run_ends_with_the_nodes_error(servers: Servers) -> None:
    """A policy that retries without waiting, many times: the 1025th retry raised
    OverflowError from the backoff instead of the node's UNAVAILABLE (and the failed
    call went uncounted)."""
    lb = LoadBalancer(
        retry_policy=RetryPolicy(max_retries=1100, backoff_initial_s=0.0, backoff_max_s=0.0)
    )
    lb.add_instance("n0", "r1", servers.addresses[0])
    servers.nodes[0].unavailable = "draining"
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await lb.execute_request_async(get_node_info, timeout=60.0)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "draining"
        assert servers.nodes[0].hits == 1101
        total = lb.get_statistics()["total"]
        assert (total["retries"], total["failed_calls"]) == (1100, 1)
    finally:
        await lb.close()
