"""A HealthWatcher runs once (round 38): start() after the watcher's close, or after its
balancer's close, raises RuntimeError saying which was closed (as LoadBalancer.start
does) instead of starting watches that could never connect and retried, unseen, until
the watcher's next close; and a watch ends once its instance is removed or its balancer
closed, rather than backing off forever. Real grpc.aio servers on loopback port 0 with
gRPC's own health servicer (grpc_health.v1.health.aio)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from info_servers import InfoServers as Servers
from meshutil import wait_for

from coordinator.instances import InstanceRegistry
from nethical_grpc.balancing import HealthState, HealthWatcher, Instance, LoadBalancer
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc


def watches() -> list[asyncio.Task[Any]]:
    """The health watches still running (any watcher's)."""
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and getattr(t.get_coro(), "__qualname__", "") == "HealthWatcher._watch"
    ]


def get_node_info(inst: Instance) -> Any:
    stub = region_node_pb2_grpc.RegionNodeServiceStub(inst.channel)
    return stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=5.0)


async def test_a_watcher_is_not_started_again_after_its_balancer_closed(
    servers: Servers,
) -> None:
    """Before: start() after the close started a watch per instance that reported it
    UNREACHABLE and retried with backoff until the watcher's next close."""
    lb = servers.balancer()
    watcher = lb.attach_health_watcher(backoff_initial_s=0.01, backoff_max_s=0.02)
    async with lb:
        assert await watcher.wait_ready(5.0)
    assert lb.closed and watcher.closed and not watcher.running
    updates = watcher.updates
    try:
        with pytest.raises(RuntimeError, match=r"^the balancer is closed: its health watcher"):
            watcher.start()
        assert not watcher.running and watches() == []
        await asyncio.sleep(0.2)  # what a started watch would have retried meanwhile
        assert watches() == [] and watcher.updates == updates
        assert {i.health for i in lb.instances()} == {HealthState.SERVING}  # as it left it
        assert len(servers.made) == 2
    finally:
        await watcher.close()
        await lb.close()


async def test_a_closed_watcher_is_not_started_again(servers: Servers) -> None:
    """Before: start() after the watcher's own close started it again, silently."""
    lb = servers.balancer()
    watcher = lb.attach_health_watcher(backoff_initial_s=0.01, backoff_max_s=0.02)
    try:
        await lb.start()
        watcher.start()  # again while running: nothing more
        assert await watcher.wait_ready(5.0) and len(watches()) == 2
        await watcher.close()
        await watcher.close()  # idempotent
        assert watcher.closed and not lb.closed and watches() == []

        with pytest.raises(RuntimeError, match=r"^the health watcher is closed"):
            watcher.start()
        with pytest.raises(RuntimeError, match=r"^the health watcher is closed"):
            await lb.start()  # the balancer starts its watcher
        assert watches() == [] and not watcher.running

        # the balancer itself still routes (with the health last reported)
        info = await lb.execute_request_async(get_node_info, timeout=5.0)
        assert info.region_id == "r1"
    finally:
        await lb.close()


async def test_the_coordinator_registry_is_not_started_again_after_its_close(
    servers: Servers,
) -> None:
    """The registry starts its balancer's watcher directly: after its close, start()
    says why, and leaves no watch running (before: two, retrying unseen)."""
    registry = InstanceRegistry(
        {"r1": servers.addresses}, 0.01, 0.02, balancer=LoadBalancer(seed=1)
    )
    registry.start()
    try:
        assert await registry.wait_ready(5.0) and len(watches()) == 2
    finally:
        await registry.close()
    assert watches() == []
    with pytest.raises(RuntimeError, match=r"^the balancer is closed"):
        registry.start()
    await asyncio.sleep(0.1)
    assert watches() == []


async def test_a_watch_ends_once_its_balancer_closes(servers: Servers) -> None:
    """A watcher made directly (not the balancer's own, so its close does not stop it):
    a watch retrying (its channel cannot be made) ends when the balancer closes. Before:
    it went on retrying, each time refused by the closed instance, reporting it
    UNREACHABLE for good."""
    lb = servers.balancer()
    watcher = HealthWatcher(lb, backoff_initial_s=0.01, backoff_max_s=0.02)
    servers.rotating = True
    try:
        watcher.start()
        await wait_for(lambda: watcher.updates >= 6, timeout_s=5.0)  # a few retries each
        assert {i.health for i in lb.instances()} == {HealthState.UNREACHABLE}
        assert len(watches()) == 2

        await lb.close()
        await wait_for(lambda: watches() == [], timeout_s=2.0)
        updates = watcher.updates
        await asyncio.sleep(0.1)
        assert watcher.updates == updates
        assert servers.made == []  # no channel made, before or after the close
    finally:
        await watcher.close()
        await lb.close()


async def test_a_watch_of_a_removed_instance_is_not_started(servers: Servers) -> None:
    """The watcher told of an instance already removed (an add that raced a removal)
    starts no watch for it; before, that watch retried forever, refused each time."""
    lb = servers.balancer()
    watcher = lb.attach_health_watcher(backoff_initial_s=0.01, backoff_max_s=0.02)
    try:
        await lb.start()
        assert await watcher.wait_ready(5.0) and len(watches()) == 2
        gone = lb.instance("n0")
        assert gone is not None and lb.remove_instance("n0")
        await wait_for(lambda: len(watches()) == 1, timeout_s=2.0)

        updates = watcher.updates
        watcher.instance_added(gone)
        await asyncio.sleep(0.1)
        assert len(watches()) == 1 and watcher.updates == updates
        assert gone.health is HealthState.SERVING and not gone.has_channel
    finally:
        await lb.close()
    assert watches() == []
