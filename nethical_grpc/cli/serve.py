"""Foreground servers for the CLI: start, announce, serve until SIGTERM, drain."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from nethical_grpc.components import report_once
from nethical_grpc.server_runtime import MeshServer, serve_until_signalled

log = logging.getLogger("nethical_mesh")


def _announce(mesh: MeshServer, role: str, port_file: Path | None, host: str) -> None:
    log.info("%s serving on %s:%d (health + reflection on)", role, host, mesh.port)
    if port_file is not None:
        tmp = port_file.with_suffix(port_file.suffix + ".tmp")
        tmp.write_text(str(mesh.port))
        tmp.replace(port_file)


async def run_region(args: argparse.Namespace) -> int:
    from region_node.server import RegionServerConfig, start_region_server
    from region_node.windows import WindowConfig

    report_once()
    try:
        windows = WindowConfig(
            window_ns=args.window,
            retention_ns=args.retention,
            histogram_scale=args.histogram_scale,
            max_buckets=args.max_buckets,
            max_label_sets_per_metric=args.max_label_sets,
            max_series=args.max_series,
        )
    except ValueError as exc:
        log.error("bad configuration: %s", exc)
        return 2
    mesh, _node = await start_region_server(
        RegionServerConfig(
            region_id=args.region_id,
            instance_id=args.instance_id,
            host=args.host,
            port=args.port,
            windows=windows,
            region_scope=args.region_scope,
            max_message_bytes=args.max_message_bytes,
            reflection=not args.no_reflection,
        )
    )
    _announce(mesh, f"region node {args.region_id}", args.port_file, args.host)
    await serve_until_signalled(mesh, args.drain_announce / 1e9, args.drain_grace / 1e9)
    return 0


async def run_coordinator(args: argparse.Namespace) -> int:
    from coordinator.instances import parse_region_spec
    from coordinator.server import CoordinatorConfig, start_coordinator

    report_once()
    regions: dict[str, list[str]] = {}
    for spec in args.region:
        try:
            region, endpoints = parse_region_spec(spec)
        except ValueError as exc:
            log.error("--region: %s", exc)
            return 2
        regions.setdefault(region, []).extend(endpoints)
    if not regions:
        log.error("give at least one --region REGION=HOST:PORT")
        return 2
    mesh, _fed = await start_coordinator(
        CoordinatorConfig(
            regions=regions,
            host=args.host,
            port=args.port,
            max_message_bytes=args.max_message_bytes,
            reflection=not args.no_reflection,
        )
    )
    _announce(mesh, "coordinator", args.port_file, args.host)
    await serve_until_signalled(mesh, args.drain_announce / 1e9, args.drain_grace / 1e9)
    return 0
