"""Review of the region node's RPC boundary (region_node/servicer.py): what a caller
that may be the coordinator learns from a node that adds differential-privacy noise."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from meshutil import Mesh

from nethical_grpc import client
from nethical_grpc.privacy import PrivacyConfig
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc
from region_node.model import ModelConfig
from region_node.server import RegionServerConfig, start_region_server

DP = PrivacyConfig(
    epsilon_per_release=1.0, window_budget=3.0, value_bound=100.0, min_count=5, nonnegative=True
)


async def _node_info(
    mesh: Mesh, tmp_path: Path, privacy: PrivacyConfig | None
) -> region_node_pb2.GetNodeInfoResponse:
    server, node = await start_region_server(
        RegionServerConfig(
            region_id="r1",
            wal_dir=tmp_path / "wal",
            privacy=privacy,
            model=ModelConfig(),
            detect_workers=1,  # started with the first large batch: none here
        )
    )
    mesh.regions.setdefault("r1", []).append((server, node))
    channel = mesh.channel(server.address)
    # enough data that the log's size shows it (about 0.8 MiB)
    await client.ingest(channel, [client.encode_ingest_request("latency_ms", np.ones(100_000))])
    stub = region_node_pb2_grpc.RegionNodeServiceStub(channel)
    info: region_node_pb2.GetNodeInfoResponse = await stub.GetNodeInfo(
        region_node_pb2.GetNodeInfoRequest(), timeout=5
    )
    return info


async def test_node_info_of_a_private_node_does_not_tell_how_much_it_ingested(
    mesh: Mesh, tmp_path: Path
) -> None:
    # GetNodeInfo hides series and window counts on such a node ("an exact count would
    # reveal the groups the noise hides"); the write-ahead log's segments and size are a
    # function of the data ingested just the same
    info = await _node_info(mesh, tmp_path, DP)
    assert info.series_count == 0 and info.window_count == 0
    logged = info.components["write_ahead_log"]
    assert str(tmp_path / "wal") in logged
    assert not re.search(r"\d+ segments?|MiB", logged), logged
    # nor how many evaluation batches it detected
    assert "worker process" in info.components["detection"]
    assert "batches detected" not in info.components["detection"]


async def test_node_info_of_an_exact_node_still_tells_the_log_size(
    mesh: Mesh, tmp_path: Path
) -> None:
    info = await _node_info(mesh, tmp_path, None)
    assert info.series_count == 1
    assert re.search(r"\d+ segments?, [\d.]+ MiB", info.components["write_ahead_log"])
    assert re.search(r"batches detected there \d+, here \d+", info.components["detection"])
