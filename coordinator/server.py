"""Build and run a coordinator server."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from coordinator.federation import Federation
from coordinator.instances import InstanceRegistry
from coordinator.servicer import CoordinatorServicer
from nethical_grpc.grpc_options import DEFAULT_MAX_MESSAGE_BYTES
from nethical_grpc.server_runtime import MeshServer, start_server
from nethical_grpc.v1 import coordinator_pb2, coordinator_pb2_grpc

SERVICE_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["CoordinatorService"].full_name


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    regions: Mapping[str, Sequence[str]] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    reflection: bool = True


async def start_coordinator(config: CoordinatorConfig) -> tuple[MeshServer, Federation]:
    registry = InstanceRegistry(config.regions)
    registry.start()
    federation = Federation(registry)
    servicer = CoordinatorServicer(federation)
    mesh = await start_server(
        [lambda s: coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(servicer, s)],
        [SERVICE_NAME],
        host=config.host,
        port=config.port,
        max_message_bytes=config.max_message_bytes,
        reflection_enabled=config.reflection,
    )
    mesh.on_stop.append(registry.close)
    return mesh, federation
