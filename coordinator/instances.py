"""Region node instances as the coordinator sees them: a channel, a stub and live health.

Each instance has one channel and one ``grpc.health.v1.Health/Watch`` stream; a health
change takes effect the moment the stream delivers it. A broken stream marks the
instance UNREACHABLE at once and reconnects with jittered backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from nethical_grpc.grpc_options import channel_options
from nethical_grpc.health import Watched, follow_health
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc

log = logging.getLogger(__name__)

REGION_SERVICE = region_node_pb2.DESCRIPTOR.services_by_name["RegionNodeService"].full_name


class Health(enum.Enum):
    UNKNOWN = "unknown"
    SERVING = "serving"
    NOT_SERVING = "not_serving"
    UNREACHABLE = "unreachable"


@dataclass(eq=False)
class RegionInstance:
    region_id: str
    endpoint: str
    channel: grpc.aio.Channel
    stub: region_node_pb2_grpc.RegionNodeServiceStub
    health: Health = Health.UNKNOWN
    health_changed_ns: int = field(default_factory=time.time_ns)
    instance_id: str = ""
    region_scope: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _watcher: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.instance_id or self.endpoint

    def set_health(self, health: Health) -> None:
        if health is not self.health:
            log.info(
                "%s/%s: %s -> %s", self.region_id, self.endpoint, self.health.value, health.value
            )
            self.health = health
            self.health_changed_ns = time.time_ns()
            self.changed.set()
            self.changed = asyncio.Event()

    def learn(self, instance_id: str, scope: int) -> None:
        if instance_id:
            self.instance_id = instance_id
        if scope:
            self.region_scope = scope == region_node_pb2.DATA_SCOPE_REGION


_HEALTH = {
    Watched.SERVING: Health.SERVING,
    Watched.NOT_SERVING: Health.NOT_SERVING,
    Watched.UNREACHABLE: Health.UNREACHABLE,
}


def parse_region_spec(spec: str) -> tuple[str, list[str]]:
    """``us-east-1=127.0.0.1:50051,127.0.0.1:50052`` → (region, endpoints)."""
    region, sep, rest = spec.partition("=")
    endpoints = [e.strip() for e in rest.split(",") if e.strip()]
    if not sep or not region.strip() or not endpoints:
        raise ValueError(f"expected REGION=HOST:PORT[,HOST:PORT...], got {spec!r}")
    return region.strip(), endpoints


class InstanceRegistry:
    """All instances, grouped by region, with their health watchers."""

    def __init__(
        self,
        regions: Mapping[str, Sequence[str]],
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
    ) -> None:
        self._regions: dict[str, list[RegionInstance]] = {}
        self._backoff = (backoff_initial_s, backoff_max_s)
        for region_id, endpoints in regions.items():
            for endpoint in endpoints:
                self.add(region_id, endpoint)

    def add(self, region_id: str, endpoint: str) -> RegionInstance:
        existing = self._regions.setdefault(region_id, [])
        for inst in existing:
            if inst.endpoint == endpoint:
                return inst
        channel = grpc.aio.insecure_channel(endpoint, options=channel_options())
        inst = RegionInstance(
            region_id, endpoint, channel, region_node_pb2_grpc.RegionNodeServiceStub(channel)
        )
        existing.append(inst)
        return inst

    @property
    def region_ids(self) -> list[str]:
        return sorted(self._regions)

    def instances(self, region_id: str) -> list[RegionInstance]:
        return list(self._regions.get(region_id, ()))

    def all_instances(self) -> Iterable[RegionInstance]:
        for insts in self._regions.values():
            yield from insts

    def start(self) -> None:
        for inst in self.all_instances():
            if inst._watcher is None:
                inst._watcher = asyncio.get_running_loop().create_task(self._watch(inst))

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until every instance has reported a health status (or time out)."""
        deadline = time.monotonic() + timeout_s
        while any(i.health is Health.UNKNOWN for i in self.all_instances()):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self) -> None:
        for inst in self.all_instances():
            if inst._watcher is not None:
                inst._watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await inst._watcher
                inst._watcher = None
            await inst.channel.close(None)

    async def _watch(self, inst: RegionInstance) -> None:
        async def report(state: Watched) -> None:
            if state is Watched.SERVING and not inst.instance_id:
                await self._learn(inst)
            inst.set_health(_HEALTH[state])

        await follow_health(inst.channel, REGION_SERVICE, report, *self._backoff)

    async def _learn(self, inst: RegionInstance) -> None:
        try:
            info = await inst.stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=2.0)
        except grpc.RpcError:
            return
        if info.region_id and info.region_id != inst.region_id:
            log.warning(
                "%s says it serves region %r, configured as %r",
                inst.endpoint,
                info.region_id,
                inst.region_id,
            )
        inst.learn(info.instance_id, info.scope)
