"""A closed balancer takes no instance (round 39).

``LoadBalancer.add_instance`` after ``close()`` raises RuntimeError ("the balancer is
closed: ..."): before, it added an instance born closed (no channel, no calls), told the
listeners of it (the coordinator's registry made a view for it), and an existing
instance's update went through. The coordinator's registry, which adds through it,
refuses the same way. Real grpc.aio servers on loopback port 0 with gRPC's own health
servicer.
"""

from __future__ import annotations

import pytest
from info_servers import InfoServers as Servers

from coordinator.instances import InstanceRegistry
from nethical_grpc.balancing import Instance, LoadBalancer


class Told:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def instance_added(self, inst: Instance) -> None:
        self.events.append(("added", inst.instance_id))

    def instance_removed(self, inst: Instance) -> None:
        self.events.append(("removed", inst.instance_id))


async def test_add_instance_on_a_closed_balancer_is_refused(servers: Servers) -> None:
    lb = LoadBalancer(channel_factory=servers.channel_for)
    a, b = servers.addresses
    lb.add_instance("a", "r1", a)
    told = Told()
    lb.add_listener(told)
    await lb.close()
    assert told.events == [("removed", "a")]
    with pytest.raises(RuntimeError, match=r"^the balancer is closed: instance 'b' is not added"):
        lb.add_instance("b", "r1", b)
    # nor is a known one changed (moved to another region, given another endpoint)
    with pytest.raises(RuntimeError, match=r"^the balancer is closed"):
        lb.add_instance("a", "r2", b, weight=3)
    [inst] = lb.instances()
    assert (inst.instance_id, inst.region_id, inst.endpoint, inst.weight) == ("a", "r1", a, 1)
    assert lb.instance("b") is None
    assert told.events == [("removed", "a")]
    assert servers.made == []  # no channel was made for any of it


async def test_the_registry_of_a_closed_balancer_adds_no_view(servers: Servers) -> None:
    registry = InstanceRegistry({}, balancer=LoadBalancer(channel_factory=servers.channel_for))
    registry.add("r1", servers.addresses[0])
    await registry.close()
    with pytest.raises(RuntimeError, match=r"^the balancer is closed"):
        registry.add("r1", servers.addresses[1])
    assert list(registry.all_instances()) == []
    assert registry.balancer.instance(servers.addresses[1]) is None
