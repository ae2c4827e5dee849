"""What to tell a user whose command reached the other kind of server: a coordinator
command sent to a region node's port, or the reverse. gRPC says only UNIMPLEMENTED
("Method not found!"); the server's health service (which names each service it runs)
tells which kind it is."""

from __future__ import annotations

import argparse

import grpc
from grpc_health.v1 import health_pb2

from nethical_grpc import client
from nethical_grpc.v1 import coordinator_pb2, region_node_pb2

COORDINATOR_SERVICE = coordinator_pb2.DESCRIPTOR.services_by_name["CoordinatorService"].full_name
REGION_NODE_SERVICE = region_node_pb2.DESCRIPTOR.services_by_name["RegionNodeService"].full_name

#: The commands asked of a coordinator unless ``--node`` says the target is a node.
COORDINATOR_COMMANDS = frozenset({"query", "regions", "evaluate"})

_KIND = {COORDINATOR_SERVICE: "a coordinator", REGION_NODE_SERVICE: "a region node"}
#: How long the health checks that tell a server's kind may take.
PROBE_TIMEOUT_S = 2.0


def wanted_service(args: argparse.Namespace) -> str:
    """The service the command calls."""
    if args.command in COORDINATOR_COMMANDS and not getattr(args, "node", False):
        return COORDINATOR_SERVICE
    return REGION_NODE_SERVICE


def advice(args: argparse.Namespace, found: str) -> str:
    """What to do when the target serves ``found`` instead of what the command calls."""
    if found == REGION_NODE_SERVICE:  # a coordinator command
        if args.command == "regions":
            return "give --target a coordinator (port 50050 by default)"
        return "add --node to ask it, or give --target a coordinator (port 50050 by default)"
    if getattr(args, "node", False):
        return "leave out --node to ask it, or give --target a region node"
    return "give --target a region node (port 50051 by default)"


async def wrong_server_hint(args: argparse.Namespace, channel: grpc.aio.Channel) -> str | None:
    """After an UNIMPLEMENTED answer: a line naming the kind of server ``args.target`` is
    and what to do, when its health service says it runs the other service; else None."""
    want = wanted_service(args)
    other = REGION_NODE_SERVICE if want == COORDINATOR_SERVICE else COORDINATOR_SERVICE
    try:
        status = await client.check_health(channel, other, timeout=PROBE_TIMEOUT_S)
    except grpc.RpcError:
        return None  # not a mesh server with health on, or not reached: no guess
    if status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN:
        return None
    return (
        f"hint: {args.target} is {_KIND[other]} ({other}), not {_KIND[want]}: {advice(args, other)}"
    )
