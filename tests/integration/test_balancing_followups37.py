"""Balancing follow-ups (round 37): a removed instance makes no new channel, a replaced
channel closes once its own calls end (per channel, across several endpoint changes),
and with a health watcher an instance not yet known healthy is not picked while a
SERVING one can take the call. Real grpc.aio servers on loopback port 0 with gRPC's own
health servicer (grpc_health.v1.health.aio)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from info_servers import InfoServers as Servers
from meshutil import wait_for

from nethical_grpc.balancing import (
    HealthState,
    Instance,
    InstanceRemovedError,
    LoadBalancer,
    remaining_timeout,
)
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    s = Servers()
    await s.start(3)
    yield s
    await s.close()


def get_node_info(inst: Instance) -> Any:
    stub = region_node_pb2_grpc.RegionNodeServiceStub(inst.channel)
    return stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=remaining_timeout(5.0))


def serving(inst: Instance) -> bool:
    return inst.health is HealthState.SERVING


def closed(channel: grpc.aio.Channel) -> bool:
    return channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN


# -- 1. a removed instance makes no channel ----------------------------------------------


async def test_a_removed_instance_makes_no_new_channel(servers: Servers) -> None:
    """After its removal, asking the instance for its channel opened a fresh one that
    nothing would ever close; now it is UNAVAILABLE, never sent, so a call that picked
    the instance just before it left is retried on another one."""
    lb = LoadBalancer()
    try:
        lb.add_instance("n0", "r1", servers.addresses[0])  # round robin starts with n0
        lb.add_instance("n1", "r1", servers.addresses[1])
        removed_first: list[Instance] = []

        def removed_then_called(inst: Instance) -> Any:
            if not removed_first:  # the instance leaves between the pick and the call
                removed_first.append(inst)
                assert lb.remove_instance(inst.instance_id)
            return get_node_info(inst)

        reply = await lb.execute_request_async(removed_then_called, timeout=5.0, idempotent=False)
        assert reply.instance_id == "n1"  # retried elsewhere (never sent: even not idempotent)
        assert removed_first and not removed_first[0].has_channel
        assert servers.hits() == [0, 1, 0]
        with pytest.raises(InstanceRemovedError) as info:
            _ = removed_first[0].channel
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == (
            f"instance n0 ({servers.addresses[0]}) was removed from the balancer"
        )
        assert not removed_first[0].has_channel
    finally:
        await lb.close()


# -- 2. a replaced channel waits for its own calls only ----------------------------------


async def test_a_moved_instances_old_channel_closes_when_its_own_calls_end(
    servers: Servers,
) -> None:
    """The instance moves while a short call runs on its old endpoint, then a long call
    starts on the new one: the old channel waited for every call of the instance (the
    long one too), not just its own."""
    lb = LoadBalancer()
    used: list[grpc.aio.Channel] = []

    def remember(inst: Instance) -> Any:
        used.append(inst.channel)
        return get_node_info(inst)

    try:
        inst = lb.add_instance("n", "r1", servers.addresses[0])
        servers.nodes[0].delay_s = 0.3
        servers.nodes[1].delay_s = 3.0
        short = asyncio.ensure_future(lb.execute_request_async(remember, timeout=10.0))
        await wait_for(lambda: servers.hits() == [1, 0, 0])
        lb.add_instance("n", "r1", servers.addresses[1])  # moved
        long = asyncio.ensure_future(lb.execute_request_async(remember, timeout=10.0))
        await wait_for(lambda: servers.hits() == [1, 1, 0])
        assert (await short).instance_id == "n0"
        await wait_for(lambda: closed(used[0]), timeout_s=1.5)
        assert not long.done() and not closed(used[1])
        assert (await long).instance_id == "n1"
        assert inst.in_flight == 0 and not closed(used[1])  # the current channel stays
    finally:
        await lb.close()


async def test_two_moves_during_calls_close_each_old_channel_after_its_calls(
    servers: Servers,
) -> None:
    """Two endpoint changes while calls run: the second one's wait replaced the first's,
    so the first old channel stayed open for the whole grace (30 s) after its call."""
    lb = LoadBalancer()
    used: list[grpc.aio.Channel] = []

    def remember(inst: Instance) -> Any:
        used.append(inst.channel)
        return get_node_info(inst)

    try:
        inst = lb.add_instance("n", "r1", servers.addresses[0])
        servers.nodes[0].delay_s = 0.3
        servers.nodes[1].delay_s = 0.6
        first = asyncio.ensure_future(lb.execute_request_async(remember, timeout=10.0))
        await wait_for(lambda: servers.hits() == [1, 0, 0])
        lb.add_instance("n", "r1", servers.addresses[1])
        second = asyncio.ensure_future(lb.execute_request_async(remember, timeout=10.0))
        await wait_for(lambda: servers.hits() == [1, 1, 0])
        lb.add_instance("n", "r1", servers.addresses[2])
        reply = await lb.execute_request_async(remember, timeout=10.0)
        assert reply.instance_id == "n2"
        assert (await first).instance_id == "n0"
        assert (await second).instance_id == "n1"
        await wait_for(lambda: closed(used[0]) and closed(used[1]), timeout_s=1.5)
        assert not closed(used[2]) and inst.in_flight == 0
    finally:
        await lb.close()


async def test_calls_reported_without_their_channel_never_close_one_early(
    servers: Servers,
) -> None:
    """Callers doing their own calls (begin / record_* without ``calls``): an old channel
    is not closed while a call that began on it runs, whatever order calls end in."""
    lb = LoadBalancer()
    try:
        inst = lb.add_instance("n", "r1", servers.addresses[0])
        servers.nodes[0].delay_s = 0.8
        lb.begin(inst)
        old = inst.channel
        slow = asyncio.ensure_future(get_node_info(inst))
        await wait_for(lambda: servers.hits() == [1, 0, 0])
        lb.add_instance("n", "r1", servers.addresses[1])
        lb.begin(inst)  # a quick call on the new channel ends first
        assert (await get_node_info(inst)).instance_id == "n1"
        lb.record_success(inst, 0.01)
        await asyncio.sleep(0.1)
        assert not closed(old)
        assert (await slow).instance_id == "n0"  # not cancelled by a close
        lb.record_success(inst, 0.8)
        await wait_for(lambda: closed(old), timeout_s=1.5)
    finally:
        await lb.close()


# -- 3. with a watcher, an instance not yet known healthy waits --------------------------


async def test_an_instance_not_yet_reported_gets_no_calls_while_another_serves(
    servers: Servers,
) -> None:
    """A new instance (and one whose endpoint changed) is UNKNOWN until its first health
    report and its on_serving hook: it got every other call meanwhile, before the hook
    ran, though a SERVING instance could take them."""
    hold = asyncio.Event()
    hooked: list[str] = []

    async def on_serving(inst: Instance) -> None:
        if inst.instance_id == "late":
            hooked.append(inst.endpoint)
            await hold.wait()

    lb = LoadBalancer()
    watcher = lb.attach_health_watcher(
        backoff_initial_s=0.02, backoff_max_s=0.1, on_serving=on_serving
    )
    lb.add_instance("n0", "r1", servers.addresses[0])
    async with lb:
        assert await watcher.wait_ready(5.0)
        late = lb.add_instance("late", "r1", servers.addresses[1])
        await wait_for(lambda: len(hooked) == 1)  # reported SERVING: its hook runs
        assert late.health is HealthState.UNKNOWN
        for _ in range(6):
            assert (await lb.execute_request_async(get_node_info, timeout=5.0)).instance_id == "n0"
        assert servers.hits() == [6, 0, 0]
        assert lb.get_statistics()["total"]["available_instances"] == 2
        hold.set()
        await wait_for(lambda: serving(late))
        ids = {
            (await lb.execute_request_async(get_node_info, timeout=5.0)).instance_id
            for _ in range(4)
        }
        assert ids == {"n0", "n1"}
        # it moves: unknown again until its new endpoint reports and the hook has run
        hold.clear()
        lb.add_instance("late", "r1", servers.addresses[2])
        await wait_for(lambda: len(hooked) == 2)
        assert late.health is HealthState.UNKNOWN
        for _ in range(4):
            assert (await lb.execute_request_async(get_node_info, timeout=5.0)).instance_id == "n0"
        assert servers.nodes[2].hits == 0
        hold.set()
        await wait_for(lambda: serving(late))


async def test_with_no_instance_known_healthy_unknown_ones_still_take_calls(
    servers: Servers,
) -> None:
    """At a start, before any watch reported, calls still go to the UNKNOWN instances
    rather than fail (as before); and a region whose instances are all UNKNOWN keeps its
    calls even while another region has SERVING ones."""
    hold = asyncio.Event()

    async def on_serving(inst: Instance) -> None:
        await hold.wait()

    lb = LoadBalancer()
    lb.attach_health_watcher(backoff_initial_s=0.02, backoff_max_s=0.1, on_serving=on_serving)
    lb.add_instance("n0", "r1", servers.addresses[0])
    lb.add_instance("n1", "r1", servers.addresses[1])
    lb.add_instance("n2", "r2", servers.addresses[2])
    async with lb:
        ids = {
            (await lb.execute_request_async(get_node_info, timeout=5.0)).instance_id
            for _ in range(6)
        }
        assert ids == {"n0", "n1", "n2"}
        hold.set()
        await wait_for(lambda: all(i.health is HealthState.SERVING for i in lb.instances()))
        hold.clear()
        lb.add_instance("n2", "r2", servers.addresses[1])  # r2's only instance moves
        reply = await lb.execute_request_async(get_node_info, "r2", timeout=5.0)
        assert reply.instance_id == "n1"  # r2's instance (now at n1's address), unknown
        hold.set()
