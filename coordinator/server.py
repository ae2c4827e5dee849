"""Build and run a coordinator server."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from coordinator.federation import Federation, SummaryTransport
from coordinator.gateway import Gateway
from coordinator.gateway_config import GatewayConfig
from coordinator.instances import Health, InstanceRegistry
from coordinator.servicer import CoordinatorServicer
from nethical_grpc import summary_scan, telemetry
from nethical_grpc.grpc_options import DEFAULT_MAX_MESSAGE_BYTES
from nethical_grpc.security.config import ServerSecurity
from nethical_grpc.server_runtime import MeshServer, start_server
from nethical_grpc.summary import _kernels
from nethical_grpc.v1 import coordinator_pb2, coordinator_pb2_grpc

SERVICE_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["CoordinatorService"].full_name


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    """``regions`` maps a region to its targets: ``HOST:PORT[@W]`` or
    ``dns:///NAME:PORT[@W]`` (see :func:`nethical_grpc.balancing.parse_target`)."""

    regions: Mapping[str, Sequence[str]] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_concurrent_rpcs: int = 1000
    reflection: bool = True
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    security: ServerSecurity = field(default_factory=ServerSecurity)
    summary_transport: SummaryTransport = SummaryTransport.AUTO


def _unknown_regions(gw: GatewayConfig, registry: InstanceRegistry) -> str:
    """Why the gateway settings name a region no ``--region`` gives ('' when none does):
    a typo in ``--region-order`` would otherwise leave the region out of the order
    silently, and the calls it meant to keep near go by measured latency."""
    if gw.local_region and not registry.has_region(gw.local_region):
        return f"local region {gw.local_region!r} is not one of the --region's"
    for home, order in gw.proximity.items():
        for region in (home, *order):
            if not registry.has_region(region):
                return f"--region-order {home}=...: region {region!r} is not one of the --region's"
    return ""


def upstream_message_bytes(max_message_bytes: int) -> int:
    """The largest node answer the coordinator's channels to the nodes take: its own
    limit, raised (nodes given the same raised limit answer past gRPC's 8 MiB default),
    never below that default (a node's answer may exceed a lowered limit and still merge
    into a global answer within it)."""
    return max(max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES)


async def start_coordinator(config: CoordinatorConfig) -> tuple[MeshServer, Federation]:
    """Start the coordinator: instances (static and resolved once), health streams,
    the federation and the gateway. Raises ValueError for a bad target or local region.
    """
    gw = replace(config.gateway, max_message_bytes=upstream_message_bytes(config.max_message_bytes))
    registry = InstanceRegistry(
        config.regions,
        balancer=gw.balancer(),
        resolve_interval_s=gw.resolve_interval_s,
        resolver=gw.resolver,
    )
    problem = _unknown_regions(gw, registry)
    if problem:
        await registry.close()
        raise ValueError(problem)
    summary_scan.warmup()  # the compiled reader of region answers, before any query
    _kernels.warmup_merge()  # and the compiled merge and quantiles
    await registry.resolve_now()  # DNS targets have their instances before serving
    registry.start()
    federation = Federation(registry, config.summary_transport)
    # each instance's health, read at every scrape (alerts on an instance that stays down)
    telemetry.get_recorder().observe_instances(
        lambda: [
            (v.region_id, v.endpoint, v.health is Health.SERVING) for v in registry.all_instances()
        ]
    )
    servicer = CoordinatorServicer(
        federation, Gateway(registry, gw.gateway_settings()), config.max_message_bytes
    )
    try:
        mesh = await start_server(
            [lambda s: coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(servicer, s)],
            [SERVICE_NAME],
            host=config.host,
            port=config.port,
            max_message_bytes=config.max_message_bytes,
            max_concurrent_rpcs=config.max_concurrent_rpcs,
            reflection_enabled=config.reflection,
            security=config.security,
        )
    except BaseException:
        await registry.close()
        raise
    mesh.on_stop.append(registry.close)

    def finish_before_stop() -> None:
        if mesh.stop_deadline is not None:
            federation.stop_by(mesh.stop_deadline)

    mesh.on_drain.append(finish_before_stop)
    return mesh, federation
