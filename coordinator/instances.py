"""Region node instances as the coordinator sees them, held by one LoadBalancer.

The balancer owns every instance: its channel, its health (one
``grpc.health.v1.Health/Watch`` stream per instance, applied the moment an update
arrives) and the routing figures. This registry adds what the federation needs on top:
the configured regions, which id each node reports and whether it holds the whole
region's data. Instances come from static endpoints or from ``dns:///NAME:PORT``
targets re-resolved on an interval (see :mod:`nethical_grpc.balancing.discovery`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import grpc

from coordinator.summary_stream import SummaryStream
from nethical_grpc.balancing import (
    DnsDiscovery,
    HealthState,
    Instance,
    LoadBalancer,
    LoadBalancingStrategy,
    Resolver,
    parse_target,
)
from nethical_grpc.balancing.discovery import DEFAULT_RESOLVE_INTERVAL_S
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc

log = logging.getLogger(__name__)

REGION_SERVICE = region_node_pb2.DESCRIPTOR.services_by_name["RegionNodeService"].full_name

# The coordinator's health names are the balancer's (UNKNOWN, SERVING, NOT_SERVING,
# UNREACHABLE); one enum, one place that holds health.
Health = HealthState

_IDENTITY_TIMEOUT_S = 2.0


class RegionInstance:
    """A view of one balancer instance plus what its node told the coordinator."""

    __slots__ = (
        "_lb",
        "_stub",
        "_stub_channel",
        "inst",
        "instance_id",
        "region_scope",
        "removed",
        "summary_stream",
        "version",
    )

    def __init__(self, balancer: LoadBalancer, inst: Instance) -> None:
        self._lb = balancer
        self.inst = inst
        self.instance_id = ""  # as the node reports it
        self.region_scope = False
        self.version = ""  # the node's software version, learned when it turned SERVING
        self.removed = False  # taken out of the registry: asked no more (no new channel)
        self._stub: region_node_pb2_grpc.RegionNodeServiceStub | None = None
        self._stub_channel: grpc.aio.Channel | None = None
        # summary queries over one long-lived stream (see coordinator.summary_stream)
        self.summary_stream = SummaryStream(lambda: self.inst.channel)

    @property
    def region_id(self) -> str:
        return self.inst.region_id

    @property
    def endpoint(self) -> str:
        return self.inst.endpoint

    @property
    def name(self) -> str:
        return self.instance_id or self.inst.endpoint

    @property
    def health(self) -> HealthState:
        return self.inst.health

    @health.setter
    def health(self, health: HealthState) -> None:
        self._lb.set_health(self.inst, health)

    @property
    def health_changed_ns(self) -> int:
        return self.inst.health_changed_ns

    @property
    def channel(self) -> grpc.aio.Channel:
        return self.inst.channel

    @channel.setter
    def channel(self, channel: grpc.aio.Channel) -> None:
        """Swap in another channel (e.g. with interceptors) before the registry starts."""
        self.inst.replace_channel(channel)

    @property
    def stub(self) -> region_node_pb2_grpc.RegionNodeServiceStub:
        channel = self.inst.channel
        if self._stub is None or self._stub_channel is not channel:
            self._stub = region_node_pb2_grpc.RegionNodeServiceStub(channel)
            self._stub_channel = channel
        return self._stub

    @stub.setter
    def stub(self, stub: region_node_pb2_grpc.RegionNodeServiceStub) -> None:
        self._stub = stub
        self._stub_channel = self.inst.channel

    def learn(self, instance_id: str, scope: int) -> None:
        if instance_id:
            self.instance_id = instance_id
        if scope:
            self.region_scope = scope == region_node_pb2.DATA_SCOPE_REGION


def parse_region_spec(spec: str) -> tuple[str, list[str]]:
    """``us-east-1=127.0.0.1:50051,dns:///nodes:50051@2`` → (region, targets).

    Each target is checked (see :func:`nethical_grpc.balancing.parse_target`); raises
    ValueError naming the bad part.
    """
    region, sep, rest = spec.partition("=")
    targets = [e.strip() for e in rest.split(",") if e.strip()]
    if not sep or not region.strip() or not targets:
        raise ValueError(f"expected REGION=TARGET[,TARGET...], got {spec!r}")
    for target in targets:
        parse_target(target)
    return region.strip(), targets


def default_balancer() -> LoadBalancer:
    return LoadBalancer(strategy=LoadBalancingStrategy.REGION_AWARE)


def _endpoint(view: RegionInstance) -> str:
    return view.endpoint


class InstanceRegistry:
    """All instances, by region, on one LoadBalancer with one health stream each.

    ``regions`` maps a region to its targets: ``HOST:PORT[@W]`` or
    ``dns:///NAME:PORT[@W]``. Pass ``balancer`` to choose the strategy, retry policy,
    ejection and channel factory (default: region aware, 2 retries).
    """

    def __init__(
        self,
        regions: Mapping[str, Sequence[str]],
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        *,
        balancer: LoadBalancer | None = None,
        resolve_interval_s: float = DEFAULT_RESOLVE_INTERVAL_S,
        resolver: Resolver | None = None,
    ) -> None:
        self.balancer = balancer if balancer is not None else default_balancer()
        self.discovery = DnsDiscovery(self.balancer, resolve_interval_s, resolver)
        self._views: dict[str, RegionInstance] = {}
        self._configured: set[str] = set()
        self._closing: set[asyncio.Future[None]] = set()
        self.balancer.add_listener(self)
        for inst in self.balancer.instances():
            self.instance_added(inst)
        self.balancer.attach_health_watcher(
            REGION_SERVICE, backoff_initial_s, backoff_max_s, on_serving=self._learn
        )
        for region_id, targets in regions.items():
            for target in targets:
                self.add_target(region_id, target)

    # -- membership (the balancer tells us) ------------------------------------------

    def instance_added(self, inst: Instance) -> None:
        self._views[inst.instance_id] = RegionInstance(self.balancer, inst)

    def instance_removed(self, inst: Instance) -> None:
        view = self._views.get(inst.instance_id)
        if view is not None and view.inst is inst:
            del self._views[inst.instance_id]
            view.removed = True
            if view.summary_stream.is_open:  # only then is there a loop and a call
                closing = asyncio.ensure_future(view.summary_stream.close())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)

    def add(self, region_id: str, endpoint: str, weight: int = 1) -> RegionInstance:
        """A static instance (id = its endpoint); adding it again returns the same one.

        ``ValueError`` when the endpoint is already a static instance of another region:
        a node serves one region, and the balancer would move it, leaving the first
        region without it for good.
        """
        known = self._views.get(endpoint)
        if known is not None and known.region_id != region_id:
            raise ValueError(
                f"{endpoint} is listed in region {known.region_id!r} and in region "
                f"{region_id!r}; a region node serves one region"
            )
        self._configured.add(region_id)
        inst = self.balancer.add_instance(endpoint, region_id, endpoint, weight)
        return self._views[inst.instance_id]

    def add_target(self, region_id: str, text: str) -> None:
        """``HOST:PORT[@W]`` (added now) or ``dns:///NAME:PORT[@W]`` (on each resolve)."""
        target = parse_target(text)
        self._configured.add(region_id)
        if target.dns:
            self.discovery.add_target(region_id, target)
        else:
            self.add(region_id, target.endpoint, target.weight)

    def remove(self, endpoint: str) -> bool:
        return self.balancer.remove_instance(endpoint)

    def view(self, inst: Instance) -> RegionInstance | None:
        return self._views.get(inst.instance_id)

    @property
    def region_ids(self) -> list[str]:
        """Configured regions and the regions of every known instance, sorted."""
        return sorted(self._configured | {v.region_id for v in self._views.values()})

    def has_region(self, region_id: str) -> bool:
        return region_id in self._configured or any(
            v.region_id == region_id for v in self._views.values()
        )

    def instances(self, region_id: str) -> list[RegionInstance]:
        """The region's instances, sorted by endpoint."""
        return self.by_region().get(region_id, [])

    def by_region(self) -> dict[str, list[RegionInstance]]:
        """Every known instance by region, each region's sorted by endpoint: one pass
        over the instances (a global query asks for all regions at once; an instance's
        region is read now, as the balancer may have moved it)."""
        grouped: dict[str, list[RegionInstance]] = {}
        for view in self._views.values():
            found = grouped.get(view.region_id)
            if found is None:
                grouped[view.region_id] = [view]
            else:
                found.append(view)
        for found in grouped.values():
            if len(found) > 1:
                found.sort(key=_endpoint)
        return grouped

    def all_instances(self) -> Iterable[RegionInstance]:
        return list(self._views.values())

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the health streams and DNS re-resolution (inside the event loop)."""
        watcher = self.balancer.health_watcher
        if watcher is not None:
            watcher.start()
        self.discovery.start()

    async def resolve_now(self) -> None:
        """Resolve every DNS target once, now (the coordinator does it before serving)."""
        await self.discovery.refresh()

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until every instance has reported a health status (or time out)."""
        deadline = time.monotonic() + timeout_s
        watcher = self.balancer.health_watcher
        if watcher is None:
            return True
        return await watcher.wait_ready(max(0.0, deadline - time.monotonic()))

    async def close(self) -> None:
        await self.discovery.close()
        for view in list(self._views.values()):
            await view.summary_stream.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self.balancer.close()

    async def _learn(self, inst: Instance) -> None:
        """Ask a node that just turned SERVING who it is (before it gets traffic)."""
        view = self._views.get(inst.instance_id)
        if view is None:
            return
        try:
            info = await view.stub.GetNodeInfo(
                region_node_pb2.GetNodeInfoRequest(), timeout=_IDENTITY_TIMEOUT_S
            )
        except grpc.RpcError:
            return
        if info.region_id and info.region_id != inst.region_id:
            log.warning(
                "%s says it serves region %r, configured as %r",
                inst.endpoint,
                info.region_id,
                inst.region_id,
            )
        view.learn(info.instance_id, info.scope)
        view.version = info.version


#: A node's answers about the caller's credentials: on a call the coordinator makes, they
#: are about the coordinator's own token or certificate, not its caller's.
CREDENTIAL_CODES: Final = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
#: How often the coordinator repeats that region nodes refuse its credentials.
CREDENTIALS_LOG_INTERVAL_S: Final = 10.0
_credentials_logged: dict[str, float] = {}


def warn_credentials_refused(where: str, code: grpc.StatusCode, details: str) -> None:
    """Log that a region node refused the coordinator's own token or certificate: the
    first time for each node and status, then at most every
    :data:`CREDENTIALS_LOG_INTERVAL_S`."""
    now = time.monotonic()
    key = f"{where} {code.name}"
    last = _credentials_logged.get(key)
    if last is not None and now - last < CREDENTIALS_LOG_INTERVAL_S:
        return
    if len(_credentials_logged) >= 1024:
        _credentials_logged.clear()
    _credentials_logged[key] = now
    log.warning(
        "%s refused the coordinator's credentials: %s: %s (check --region-token-file and "
        "the region TLS settings)",
        where,
        code.name,
        details,
    )
