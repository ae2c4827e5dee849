"""Targets (static and dns:) and DNS discovery's add/remove logic on a balancer."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

import pytest

from coordinator.instances import parse_region_spec
from nethical_grpc.balancing import (
    DnsDiscovery,
    LoadBalancer,
    Target,
    getaddrinfo_resolver,
    parse_target,
)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("10.0.0.7:50051", Target("10.0.0.7:50051", "10.0.0.7", 50051)),
        ("10.0.0.7:50051@3", Target("10.0.0.7:50051", "10.0.0.7", 50051, 3)),
        ("[::1]:50051", Target("[::1]:50051", "::1", 50051)),
        (
            "dns:///nodes.ns.svc.cluster.local:50051",
            Target(
                "dns:///nodes.ns.svc.cluster.local:50051",
                "nodes.ns.svc.cluster.local",
                50051,
                1,
                True,
            ),
        ),
        ("dns:nodes:7@2", Target("dns:nodes:7", "nodes", 7, 2, True)),
        (" dns:///[::1]:9 ", Target("dns:///[::1]:9", "::1", 9, 1, True)),
    ],
)
def test_parse_target(text: str, want: Target) -> None:
    assert parse_target(text) == want
    assert want.endpoint == (
        f"[{want.host}]:{want.port}" if ":" in want.host else f"{want.host}:{want.port}"
    )


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("10.0.0.7", "port is required"),
        ("dns:///nodes", "port is required"),
        ("dns://8.8.8.8/nodes:50051", "authority is not supported"),
        ("nodes:http", "not a number"),
        ("nodes:70000", "out of range"),
        ("nodes:1@0", "weight must be >= 1"),
        ("nodes:1@x", "not an integer"),
        ("http://nodes:1", "expected HOST:PORT"),
        ("ipv4:127.0.0.1:1", "expected HOST:PORT"),
        (":50051", "empty host"),
        ("[::1]50051", "[IPV6]:PORT"),
        # int() takes these; a target does not
        ("nodes:+50", "not a number"),
        ("nodes: 50", "not a number"),
        ("nodes:5_0", "not a number"),
        ("nodes:50@", "not an integer"),
        ("nodes:50@+2", "not an integer"),
        ("no des:50", "holds whitespace"),
        ("dns:///no\tdes:50", "holds whitespace"),
    ],
)
def test_bad_targets_are_named(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint.replace("[", r"\[").replace("]", r"\]")):
        parse_target(text)


def test_region_spec_accepts_dns_and_weights() -> None:
    region, targets = parse_region_spec("us-east-1=dns:///nodes:50051@2, 10.0.0.1:1")
    assert (region, targets) == ("us-east-1", ["dns:///nodes:50051@2", "10.0.0.1:1"])
    with pytest.raises(ValueError, match="port is required"):
        parse_region_spec("us-east-1=dns:///nodes")


class Answers:
    """An injectable resolver: name -> addresses, or an error to raise."""

    def __init__(self) -> None:
        self.names: dict[str, Sequence[str] | Exception] = {}
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[tuple[str, int]]:
        self.asked.append((host, port))
        found = self.names[host]
        if isinstance(found, Exception):
            raise found
        return [(ip, port) for ip in found]


def members(lb: LoadBalancer) -> dict[str, str]:
    return {i.instance_id: i.region_id for i in lb.instances()}


async def test_resolved_addresses_are_added_and_removed() -> None:
    dns = Answers()
    lb = LoadBalancer()
    lb.add_instance("static", "r1", "10.9.9.9:1")
    discovery = DnsDiscovery(lb, interval_s=60, resolver=dns)
    discovery.add_target("r1", parse_target("dns:///nodes.r1:50051@2"))
    dns.names["nodes.r1"] = ["10.0.0.1", "10.0.0.2"]
    await discovery.refresh()
    assert members(lb) == {"static": "r1", "10.0.0.1:50051": "r1", "10.0.0.2:50051": "r1"}
    added = lb.instance("10.0.0.1:50051")
    assert added is not None
    assert (added.endpoint, added.weight, added.resolved_from) == (
        "10.0.0.1:50051",
        2,
        "dns:///nodes.r1:50051",
    )
    dns.names["nodes.r1"] = ["10.0.0.2", "10.0.0.3"]  # a pod left, one appeared
    await discovery.refresh()
    assert set(members(lb)) == {"static", "10.0.0.2:50051", "10.0.0.3:50051"}
    assert lb.instance("10.0.0.2:50051") is not None
    dns.names["nodes.r1"] = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    await discovery.refresh()  # a failed resolution changes nothing
    assert set(members(lb)) == {"static", "10.0.0.2:50051", "10.0.0.3:50051"}
    [state] = discovery.targets
    assert (state.resolutions, state.failures) == (2, 1)
    assert "gaierror" in state.last_error
    dns.names["nodes.r1"] = []
    await discovery.refresh()  # resolved to nothing: every resolved instance leaves
    assert members(lb) == {"static": "r1"}
    await lb.close()


async def test_an_address_two_targets_resolve_stays_while_one_does() -> None:
    dns = Answers()
    lb = LoadBalancer()
    discovery = DnsDiscovery(lb, resolver=dns)
    discovery.add_target("r1", parse_target("dns:///a:1"))
    discovery.add_target("r1", parse_target("dns:///b:1"))
    dns.names.update({"a": ["10.0.0.1", "10.0.0.2"], "b": ["10.0.0.2"]})
    await discovery.refresh()
    assert set(members(lb)) == {"10.0.0.1:1", "10.0.0.2:1"}
    dns.names["a"] = ["10.0.0.1"]
    await discovery.refresh()
    assert set(members(lb)) == {"10.0.0.1:1", "10.0.0.2:1"}  # b still resolves it
    dns.names["b"] = []
    await discovery.refresh()
    assert set(members(lb)) == {"10.0.0.1:1"}
    await lb.close()


async def test_a_static_instance_a_name_resolves_to_is_never_removed_or_moved() -> None:
    """An address listed statically that a dns: target also resolves to stays as listed:
    when the name stops resolving to it, and when a name of another region does."""
    dns = Answers()
    lb = LoadBalancer()
    lb.add_instance("10.0.0.1:1", "eu", "10.0.0.1:1")  # as the registry adds a static one
    discovery = DnsDiscovery(lb, resolver=dns)
    discovery.add_target("eu", parse_target("dns:///nodes:1"))
    discovery.add_target("us", parse_target("dns:///other:1"))
    dns.names.update({"nodes": ["10.0.0.1", "10.0.0.2"], "other": ["10.0.0.1", "10.0.0.3"]})
    await discovery.refresh()
    assert members(lb) == {"10.0.0.1:1": "eu", "10.0.0.2:1": "eu", "10.0.0.3:1": "us"}
    static = lb.instance("10.0.0.1:1")
    assert static is not None and static.resolved_from == ""
    dns.names.update({"nodes": ["10.0.0.2"], "other": []})
    await discovery.refresh()
    assert members(lb) == {"10.0.0.1:1": "eu", "10.0.0.2:1": "eu"}
    await lb.close()


async def test_an_address_two_regions_names_resolve_stays_in_the_first() -> None:
    dns = Answers()
    lb = LoadBalancer()
    discovery = DnsDiscovery(lb, resolver=dns)
    discovery.add_target("eu", parse_target("dns:///a:1"))
    dns.names.update({"a": ["10.0.0.1"], "b": ["10.0.0.1"]})
    await discovery.refresh()
    discovery.add_target("us", parse_target("dns:///b:1"))
    await discovery.refresh()
    assert members(lb) == {"10.0.0.1:1": "eu"}
    dns.names["b"] = []  # the other region's name lets go of it: nothing changes
    await discovery.refresh()
    assert members(lb) == {"10.0.0.1:1": "eu"}
    dns.names["a"] = []  # its own region's does: it goes
    await discovery.refresh()
    assert members(lb) == {}
    await lb.close()


async def test_an_address_another_target_still_resolves_is_handed_over() -> None:
    """An address two targets resolve belongs to the one that added it; when that one
    lets go of it, the other takes it over (its region, weight and name) instead of the
    instance being removed while a target still resolves it."""
    dns = Answers()
    lb = LoadBalancer()
    discovery = DnsDiscovery(lb, resolver=dns)
    discovery.add_target("r1", parse_target("dns:///a:1"))
    dns.names.update({"a": ["10.0.0.1", "10.0.0.2"], "b": ["10.0.0.2"], "c": ["10.0.0.2"]})
    await discovery.refresh()
    discovery.add_target("r1", parse_target("dns:///b:1@3"))
    discovery.add_target("r2", parse_target("dns:///c:1"))
    await discovery.refresh()
    shared = lb.instance("10.0.0.2:1")
    assert shared is not None
    assert (shared.region_id, shared.weight, shared.resolved_from) == ("r1", 1, "dns:///a:1")
    a, b, c = discovery.targets
    assert (a.added, b.added, c.added) == ({"10.0.0.1:1", "10.0.0.2:1"}, set(), set())
    dns.names["a"] = ["10.0.0.1"]  # its own region's other name has it: that one's now
    await discovery.refresh()
    assert lb.instance("10.0.0.2:1") is shared  # kept, not removed and added again
    assert (shared.region_id, shared.weight, shared.resolved_from) == ("r1", 3, "dns:///b:1")
    assert (a.added, b.added, c.added) == ({"10.0.0.1:1"}, {"10.0.0.2:1"}, set())
    dns.names["b"] = []  # only another region's name has it now: it moves there
    await discovery.refresh()
    assert members(lb) == {"10.0.0.1:1": "r1", "10.0.0.2:1": "r2"}
    assert shared.resolved_from == "dns:///c:1"
    assert (a.added, b.added, c.added) == ({"10.0.0.1:1"}, set(), {"10.0.0.2:1"})
    dns.names["c"] = []
    await discovery.refresh()
    assert members(lb) == {"10.0.0.1:1": "r1"}
    await lb.close()


async def test_ipv6_addresses_get_one_spelling_in_brackets() -> None:
    dns = Answers()
    lb = LoadBalancer()
    discovery = DnsDiscovery(lb, resolver=dns)
    discovery.add_target("r1", parse_target("dns:///v6:50051"))
    dns.names["v6"] = ["0:0::1", "::1", "fd00::0:7"]
    await discovery.refresh()
    assert set(members(lb)) == {"[::1]:50051", "[fd00::7]:50051"}
    await lb.close()


async def test_periodic_re_resolution_picks_up_changes() -> None:
    dns = Answers()
    lb = LoadBalancer()
    discovery = DnsDiscovery(lb, interval_s=0.01, resolver=dns)
    discovery.add_target("r1", parse_target("dns:///n:1"))
    dns.names["n"] = ["10.0.0.1"]
    discovery.start()
    try:
        for _ in range(500):
            if members(lb):
                break
            await asyncio.sleep(0.01)
        assert set(members(lb)) == {"10.0.0.1:1"}
        dns.names["n"] = ["10.0.0.5"]
        for _ in range(500):
            if set(members(lb)) == {"10.0.0.5:1"}:
                break
            await asyncio.sleep(0.01)
        assert set(members(lb)) == {"10.0.0.5:1"}
        assert len(dns.asked) >= 2
    finally:
        await discovery.close()
        await lb.close()


async def test_slow_resolver_is_cut_off_and_counted() -> None:
    async def never(host: str, port: int) -> list[tuple[str, int]]:
        await asyncio.Event().wait()
        return []

    lb = LoadBalancer()
    discovery = DnsDiscovery(lb, resolver=never, resolve_timeout_s=0.01)
    discovery.add_target("r1", parse_target("dns:///n:1"))
    await discovery.refresh()
    [state] = discovery.targets
    assert state.failures == 1 and "TimeoutError" in state.last_error
    assert members(lb) == {}


async def test_a_resolver_failing_in_any_way_keeps_the_instances_and_the_refreshes() -> None:
    """An error that is not a resolution error (a resolver's bug, say) is counted like
    one; it had ended the periodic refresh task for good, silently."""
    dns = Answers()
    lb = LoadBalancer()
    discovery = DnsDiscovery(lb, interval_s=0.01, resolver=dns)
    discovery.add_target("r1", parse_target("dns:///n:1"))
    dns.names["n"] = ["10.0.0.1"]
    await discovery.refresh()
    dns.names["n"] = RuntimeError("resolver bug")
    discovery.start()
    try:
        [state] = discovery.targets
        for _ in range(500):
            if state.failures >= 2:
                break
            await asyncio.sleep(0.01)
        assert state.failures >= 2 and "RuntimeError: resolver bug" in state.last_error
        assert set(members(lb)) == {"10.0.0.1:1"}
        dns.names["n"] = ["10.0.0.7"]  # the refreshes went on
        for _ in range(500):
            if set(members(lb)) == {"10.0.0.7:1"}:
                break
            await asyncio.sleep(0.01)
        assert set(members(lb)) == {"10.0.0.7:1"}
    finally:
        await discovery.close()
        await lb.close()


async def test_system_resolver_resolves_localhost() -> None:
    pairs = await getaddrinfo_resolver("localhost", 50051)
    assert ("127.0.0.1", 50051) in pairs
    assert len(pairs) == len(set(pairs))


def test_discovery_rejects_bad_settings() -> None:
    lb = LoadBalancer()
    with pytest.raises(ValueError, match="interval"):
        DnsDiscovery(lb, interval_s=0)
    with pytest.raises(ValueError, match="timeout"):
        DnsDiscovery(lb, resolve_timeout_s=0)
    with pytest.raises(ValueError, match="not a dns"):
        DnsDiscovery(lb).add_target("r1", parse_target("10.0.0.1:1"))
