"""A balancer's close tells its listeners, and DNS discovery stops with it (round 38).

``LoadBalancer.close()`` tells every registered listener that each instance was removed
(after marking it removed and balancer_closed), as ``remove_instance`` does: a health
watcher made directly (``HealthWatcher(lb)``, not the balancer's own) ends its watches at
once rather than at its own close. ``DnsDiscovery.start()`` after its close, or its
balancer's, raises RuntimeError; its re-resolution adds and removes nothing once the
balancer is closed, and ends. Real grpc.aio servers on loopback port 0 with gRPC's own
health servicer; DNS answers come from an injected resolver callable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from info_servers import InfoServers as Servers
from meshutil import wait_for

from nethical_grpc.balancing import (
    DnsDiscovery,
    HealthState,
    HealthWatcher,
    Instance,
    LoadBalancer,
    parse_target,
)


def watches() -> list[asyncio.Task[Any]]:
    """The health watches still running (any watcher's)."""
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and getattr(t.get_coro(), "__qualname__", "") == "HealthWatcher._watch"
    ]


class Membership:
    """A listener that records what it was told, and the instance's marks then."""

    def __init__(self) -> None:
        self.added: list[str] = []
        self.removed: list[tuple[str, bool, bool]] = []

    def instance_added(self, inst: Instance) -> None:
        self.added.append(inst.instance_id)

    def instance_removed(self, inst: Instance) -> None:
        self.removed.append((inst.instance_id, inst.removed, inst.balancer_closed))


class Failing(Membership):
    def instance_removed(self, inst: Instance) -> None:
        super().instance_removed(inst)
        raise RuntimeError("listener bug (test)")


class Answers:
    """An injectable resolver: name -> (ip, port) pairs; ``hold`` keeps answers back."""

    def __init__(self) -> None:
        self.names: dict[str, Sequence[tuple[str, int]]] = {}
        self.asked: list[str] = []
        self.hold: asyncio.Event | None = None

    async def __call__(self, host: str, port: int) -> list[tuple[str, int]]:
        self.asked.append(host)
        if self.hold is not None:
            await self.hold.wait()
        return list(self.names[host])


def pair(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


# -- LoadBalancer.close() tells its listeners -----------------------------------------


async def test_close_tells_every_listener_of_every_instance_once(servers: Servers) -> None:
    """Before: close() told no listener; they heard of nothing until their own close."""
    lb = servers.balancer()
    first, second = Membership(), Membership()
    lb.add_listener(first)
    lb.add_listener(second)
    lb.add_instance("n9", "r2", servers.addresses[0])
    await lb.close()
    for listener in (first, second):
        # each instance told once, already marked removed and balancer_closed
        assert sorted(listener.removed) == [
            ("n0", True, True),
            ("n1", True, True),
            ("n9", True, True),
        ]
    await lb.close()  # again: nothing more to tell
    assert len(first.removed) == len(second.removed) == 3
    assert {i.instance_id for i in lb.instances()} == {"n0", "n1", "n9"}  # still listed


async def test_a_failing_listener_does_not_stop_the_close(servers: Servers) -> None:
    """A listener's error is logged: the others are told and the channels closed."""
    lb = servers.balancer()
    failing, told = Failing(), Membership()
    lb.add_listener(failing)
    lb.add_listener(told)
    for inst in lb.instances():
        assert inst.channel is not None  # make each channel
    made = list(servers.made)
    assert len(made) == 2
    await lb.close()
    assert len(failing.removed) == 2 and len(told.removed) == 2
    assert not any(i.has_channel for i in lb.instances())
    # the channels were closed (a stub made on a closed channel could hang in grpc's
    # registered-method lookup: its state says it instead)
    assert all(c.get_state() is grpc.ChannelConnectivity.SHUTDOWN for c in made)


async def test_a_direct_watchers_retrying_watches_end_at_the_close(servers: Servers) -> None:
    """A watcher made directly, its watches retrying with a long backoff (the channels
    cannot be made): they end when the balancer closes. Before: each slept out its
    backoff (seconds) first, until the watcher's own close."""
    lb = servers.balancer()
    watcher = HealthWatcher(lb, backoff_initial_s=5.0, backoff_max_s=5.0)
    servers.rotating = True
    try:
        watcher.start()
        await wait_for(lambda: watcher.updates >= 2, timeout_s=5.0)
        assert {i.health for i in lb.instances()} == {HealthState.UNREACHABLE}
        assert len(watches()) == 2

        await lb.close()
        await wait_for(lambda: watches() == [], timeout_s=0.5)
        assert not watcher.closed  # its own close is still its caller's
        assert servers.made == []
    finally:
        await watcher.close()
        await lb.close()


async def test_a_direct_watchers_serving_watches_end_with_the_close(servers: Servers) -> None:
    """Healthy streams of a watcher made directly end when close() returns."""
    lb = servers.balancer()
    watcher = HealthWatcher(lb, backoff_initial_s=5.0, backoff_max_s=5.0)
    try:
        watcher.start()
        assert await watcher.wait_ready(5.0) and len(watches()) == 2
        assert {i.health for i in lb.instances()} == {HealthState.SERVING}
        await lb.close()
        await asyncio.sleep(0)  # the cancelled watches' last step
        assert watches() == []
        updates = watcher.updates
        await asyncio.sleep(0.2)
        assert watcher.updates == updates
        assert {i.health for i in lb.instances()} == {HealthState.SERVING}  # as it left it
    finally:
        await watcher.close()


async def test_the_attached_watcher_is_closed_as_before(servers: Servers) -> None:
    """The balancer's own watcher: closed by the close, its watches awaited there."""
    lb = servers.balancer()
    watcher = lb.attach_health_watcher(backoff_initial_s=0.01, backoff_max_s=0.02)
    told = Membership()
    lb.add_listener(told)
    async with lb:
        assert await watcher.wait_ready(5.0) and len(watches()) == 2
    assert watcher.closed and not watcher.running
    assert watches() == []  # no extra step needed: the close awaited them
    assert len(told.removed) == 2
    with pytest.raises(RuntimeError, match=r"^the balancer is closed"):
        watcher.start()


# -- DnsDiscovery after a close --------------------------------------------------------


async def test_discovery_is_not_started_again_after_its_close(servers: Servers) -> None:
    """Before: start() after close() restarted the re-resolution, silently."""
    dns = Answers()
    dns.names["n0"] = [pair(servers.addresses[0])]
    lb = LoadBalancer(channel_factory=servers.channel_for)
    discovery = DnsDiscovery(lb, interval_s=0.01, resolver=dns)
    discovery.add_target("r1", parse_target("dns:///n0:1"))
    try:
        discovery.start()
        await wait_for(lambda: len(lb.instances()) == 1, timeout_s=5.0)
        await discovery.close()
        asked = len(dns.asked)
        with pytest.raises(RuntimeError, match=r"^the DNS discovery is closed"):
            discovery.start()
        await asyncio.sleep(0.1)
        assert len(dns.asked) == asked
    finally:
        await discovery.close()
        await lb.close()


async def test_discovery_is_not_started_on_a_closed_balancer(servers: Servers) -> None:
    """Before: start() on a closed balancer re-resolved, adding instances born closed."""
    dns = Answers()
    dns.names["n0"] = [pair(servers.addresses[0])]
    lb = LoadBalancer(channel_factory=servers.channel_for)
    await lb.close()
    discovery = DnsDiscovery(lb, interval_s=0.01, resolver=dns)
    discovery.add_target("r1", parse_target("dns:///n0:1"))
    try:
        with pytest.raises(RuntimeError, match=r"^the balancer is closed: its DNS discovery"):
            discovery.start()
        await asyncio.sleep(0.1)
        assert dns.asked == [] and lb.instances() == []
        await discovery.refresh()  # by hand: nothing either
        assert dns.asked == [] and lb.instances() == []
    finally:
        await discovery.close()


async def test_re_resolution_stops_once_the_balancer_closes(servers: Servers) -> None:
    """The balancer closed under a running discovery: the next answers add and remove
    nothing, and the loop ends. Before: it went on resolving, removing the instances
    that left (their statistics with them) and adding ones born closed."""
    dns = Answers()
    dns.names["nodes"] = [pair(servers.addresses[0])]
    lb = LoadBalancer(channel_factory=servers.channel_for)
    discovery = DnsDiscovery(lb, interval_s=0.01, resolver=dns)
    discovery.add_target("r1", parse_target("dns:///nodes:1"))
    told = Membership()
    lb.add_listener(told)
    try:
        discovery.start()
        await wait_for(lambda: len(lb.instances()) == 1, timeout_s=5.0)
        await lb.close()
        dns.names["nodes"] = [pair(servers.addresses[1])]  # one left, one came
        await asyncio.sleep(0.2)
        assert [i.endpoint for i in lb.instances()] == [servers.addresses[0]]
        assert told.added == [servers.addresses[0]]
        asked = len(dns.asked)
        await asyncio.sleep(0.1)
        assert len(dns.asked) == asked  # the loop ended
        with pytest.raises(RuntimeError, match=r"^the balancer is closed"):
            discovery.start()
    finally:
        await discovery.close()


async def test_a_resolution_answered_after_the_close_adds_nothing(servers: Servers) -> None:
    """A refresh whose answer arrives after the balancer closed leaves it unchanged
    (before: it added an instance born closed, and told the listeners of it)."""
    dns = Answers()
    dns.names["nodes"] = [pair(servers.addresses[0])]
    dns.hold = asyncio.Event()
    lb = LoadBalancer(channel_factory=servers.channel_for)
    discovery = DnsDiscovery(lb, interval_s=60, resolver=dns)
    discovery.add_target("r1", parse_target("dns:///nodes:1"))
    told = Membership()
    lb.add_listener(told)
    refreshing = asyncio.ensure_future(discovery.refresh())
    await wait_for(lambda: dns.asked == ["nodes"], timeout_s=5.0)
    await lb.close()
    dns.hold.set()
    await refreshing
    assert lb.instances() == [] and told.added == []
    assert servers.made == []
