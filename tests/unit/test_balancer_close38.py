"""A closed LoadBalancer refuses cleanly (round 38): close() marks every instance so that
none makes a new channel (nothing would close it), calls through the balancer fail fast
with UNAVAILABLE "the balancer is closed" (a call retrying when it closes is not retried
elsewhere; one in flight ends as the close always ended it), a health watcher started
again makes no channel, and close() can be called again (and concurrently). Real grpc.aio
servers on loopback port 0 with gRPC's own health servicer (grpc_health.v1.health.aio)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from info_servers import InfoServers as Servers
from meshutil import wait_for

from nethical_grpc.balancing import (
    HealthState,
    Instance,
    InstanceRemovedError,
    NoAvailableInstanceError,
    RetryPolicy,
    remaining_timeout,
)
from nethical_grpc.balancing.retry import BalancerClosedError
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc


def get_node_info(inst: Instance) -> Any:
    stub = region_node_pb2_grpc.RegionNodeServiceStub(inst.channel)
    return stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=remaining_timeout(5.0))


def shut(channel: grpc.aio.Channel) -> bool:
    return channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN


async def test_a_closed_balancer_refuses_calls_and_makes_no_channel(servers: Servers) -> None:
    """Before: after close() the next call picked an instance, whose channel access made
    a fresh channel that nothing ever closed (and the call went out)."""
    lb, made = servers.balancer(), servers.made
    for _ in range(2):  # a channel on each instance
        await lb.execute_request_async(get_node_info, timeout=5.0)
    assert len(made) == 2 and servers.hits() == [1, 1]

    # twice at once, then again: each returns once every channel is closed
    await asyncio.gather(lb.close(), lb.close())
    assert all(shut(c) for c in made)
    await lb.close()
    assert lb.closed

    for inst in lb.instances():
        assert inst.removed and inst.balancer_closed and not inst.has_channel
        with pytest.raises(InstanceRemovedError) as refused:
            _ = inst.channel
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert refused.value.details() == (
            f"instance {inst.instance_id} ({inst.endpoint}): the balancer is closed"
        )
    assert lb.get_instance() is None and lb.get_instance("r1", stay_in_region=True) is None
    assert not any(lb.is_available(i) for i in lb.instances())

    started = time.monotonic()
    with pytest.raises(BalancerClosedError) as info:
        await lb.execute_request_async(get_node_info, timeout=5.0)
    assert time.monotonic() - started < 1.0  # refused at once
    # what callers catch for "no instance to send it to" (the gateway: UNAVAILABLE)
    assert isinstance(info.value, NoAvailableInstanceError)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == "the balancer is closed"

    with pytest.raises(BalancerClosedError):  # sync callers too
        lb.execute_request(lambda inst: inst.channel)

    # nor is an instance added after the close (round 39: it was added, born closed)
    with pytest.raises(RuntimeError, match=r"^the balancer is closed"):
        lb.add_instance("late", "r1", servers.addresses[0])

    assert len(made) == 2 and servers.hits() == [1, 1]  # no new channel, nothing sent
    assert lb.get_statistics()["total"]["failed_calls"] == 2


async def test_a_call_retrying_when_the_balancer_closes_is_not_retried(
    servers: Servers,
) -> None:
    """Before: the retry after the backoff picked the other instance and made it a new
    channel after the close (the call then went out on a channel nothing closed). A call
    in flight on the other instance still ends as the close always ended it."""
    made = servers.made
    lb = servers.balancer(
        retry_policy=RetryPolicy(max_retries=3, backoff_initial_s=0.5, backoff_max_s=0.5, jitter=0)
    )
    servers.nodes[0].unavailable = "overloaded (test)"  # round robin starts with n0
    servers.nodes[1].delay_s = 30.0
    try:
        retrying = asyncio.ensure_future(lb.execute_request_async(get_node_info, timeout=10.0))
        await wait_for(lambda: servers.hits() == [1, 0], timeout_s=5.0)
        in_flight = asyncio.ensure_future(lb.execute_request_async(get_node_info, timeout=60.0))
        await wait_for(lambda: servers.hits() == [1, 1], timeout_s=5.0)
        await asyncio.sleep(0.05)  # n0's UNAVAILABLE is in: the first call backs off
        await asyncio.wait_for(lb.close(), 2.0)
        with pytest.raises(BalancerClosedError) as info:
            await asyncio.wait_for(retrying, 2.0)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert info.value.details().startswith("the balancer is closed; tried n0 (")
        assert "UNAVAILABLE: overloaded (test)" in info.value.details()
        # ended by the close, as before (sent: not reported as refused)
        with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
            await asyncio.wait_for(in_flight, 2.0)
        assert servers.hits() == [1, 1]
        assert len(made) == 2 and all(shut(c) for c in made)
        assert not any(i.has_channel for i in lb.instances())
        assert lb.get_statistics()["total"]["in_flight"] == 0
    finally:
        await lb.close()


async def test_a_health_watcher_started_after_the_close_makes_no_channel(
    servers: Servers,
) -> None:
    """Before: the watcher (started again directly, as the coordinator's registry does)
    asked each instance for its channel and made fresh ones that nothing closed."""
    lb, made = servers.balancer(), servers.made
    watcher = lb.attach_health_watcher(backoff_initial_s=0.01, backoff_max_s=0.05)
    async with lb:
        assert await watcher.wait_ready(5.0)
        assert {i.health for i in lb.instances()} == {HealthState.SERVING}
    assert len(made) == 2 and all(shut(c) for c in made)
    with pytest.raises(RuntimeError, match="the balancer is closed"):
        await lb.start()

    with pytest.raises(RuntimeError, match="the balancer is closed"):
        watcher.start()
    try:
        await asyncio.sleep(0.1)  # what a started watch would have retried meanwhile
        assert len(made) == 2
        assert not any(i.has_channel for i in lb.instances())
    finally:
        await watcher.close()
        await lb.close()
