"""The hint a client command gives when it reached the other kind of server: told by the
server's health service, never guessed."""

from __future__ import annotations

import argparse

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from meshutil import Mesh, add_coordinator, add_region

from nethical_grpc.cli.main import build_parser
from nethical_grpc.cli.wrong_server import wrong_server_hint


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


async def test_the_hint_names_the_kind_of_server_reached(mesh: Mesh) -> None:
    [(node, _)] = await add_region(mesh, "r1", evaluate=False)
    await add_coordinator(mesh)
    assert mesh.coordinator is not None
    at_node = mesh.channel(node.address)
    at_coordinator = mesh.coordinator_channel()

    hint = await wrong_server_hint(_args("query", "--target", node.address), at_node)
    assert hint == (
        f"hint: {node.address} is a region node (nethical_grpc.v1.RegionNodeService), not a "
        "coordinator: add --node to ask it, or give --target a coordinator (port 50050 by "
        "default)"
    )
    regions = await wrong_server_hint(_args("regions", "--target", node.address), at_node)
    assert regions is not None and regions.endswith(
        "give --target a coordinator (port 50050 by default)"
    )
    address = mesh.coordinator.address
    info = await wrong_server_hint(_args("info", "--target", address), at_coordinator)
    assert info is not None and f"{address} is a coordinator" in info
    assert info.endswith("give --target a region node (port 50051 by default)")
    node_flag = await wrong_server_hint(
        _args("evaluate", "x", "--node", "--target", address), at_coordinator
    )
    assert node_flag is not None and "leave out --node to ask it" in node_flag
    # a command that reached its own kind of server gets no hint
    assert await wrong_server_hint(_args("info", "--target", node.address), at_node) is None


async def test_no_hint_from_a_server_that_runs_neither_service() -> None:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for argv in (("query",), ("info",)):
                assert await wrong_server_hint(_args(*argv), channel) is None
    finally:
        await server.stop(0)
