"""`--metrics-port` on real processes: a scrape shows the mesh's own metrics."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from meshutil import free_port
from prometheus_client.parser import text_string_to_metric_families

from nethical_grpc import client
from nethical_grpc.cli.processes import spawn
from nethical_grpc.v1 import governance_pb2, region_node_pb2, region_node_pb2_grpc

pytestmark = pytest.mark.e2e


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def sample(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def labelled(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``; a label given
    as ``prefix*`` matches values starting with the prefix."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name != name:
                continue
            if all(
                s.labels.get(k, "").startswith(v[:-1]) if v.endswith("*") else s.labels.get(k) == v
                for k, v in labels.items()
            ):
                total += s.value
    return total


async def test_region_and_coordinator_export_their_metrics(tmp_path: Path) -> None:
    region_metrics, coord_metrics = free_port(), free_port()
    region = spawn(
        "region",
        ["region", "--region-id", "tel", "--port", "0", "--metrics-port", str(region_metrics),
         "--wal-dir", str(tmp_path / "wal")],
        tmp_path,
    )  # fmt: skip
    try:
        port = await region.aport()
        coord = spawn(
            "coordinator",
            [
                "coordinator",
                "--port",
                "0",
                "--region",
                f"tel=127.0.0.1:{port}",
                "--metrics-port",
                str(coord_metrics),
            ],
            tmp_path,
        )
        try:
            cport = await coord.aport()
            async with client.insecure_channel(f"127.0.0.1:{port}") as ch:
                batch = client.encode_ingest_request("m", np.arange(100.0))
                await client.ingest(ch, [batch, batch])
            async with client.insecure_channel(f"127.0.0.1:{cport}") as ch:
                for _ in range(50):
                    result = await client.global_metrics(ch, client.QueryOptions(metrics=["m"]))
                    if result.coverage.regions_answered:
                        break
                    await asyncio.sleep(0.1)
            text = await asyncio.to_thread(scrape, region_metrics)
            assert sample(text, "nethical_ingest_observations_total") == 200
            assert sample(text, "nethical_ingest_batches_total") == 2
            assert 'rpc_method="Ingest"' in text
            # the log holds the two batches (and their records' headers) at least
            logged = sum(p.stat().st_size for p in (tmp_path / "wal").glob("wal-*.log"))
            assert sample(text, "nethical_wal_size_bytes") == logged > 2 * 100 * 8
            ctext = await asyncio.to_thread(scrape, coord_metrics)
            assert 'rpc_method="GetGlobalMetrics"' in ctext
            assert sample(ctext, "nethical_fanout_answered_total") >= 1
            # metrics alone keep the summary stream (no unary GetSummaries calls), and each
            # region's query is measured on it
            assert 'rpc_method="GetSummaries"' not in ctext
            query = "nethical_fanout_region_duration_seconds_count"
            assert labelled(ctext, query, outcome="ok", region="tel") >= 1
            # the states read at each scrape: the instance up, the node's stores up
            up = {"region": "tel", "node_instance": "127.0.0.1:*"}
            assert labelled(ctext, "nethical_instance_up", **up) == 1
            assert labelled(text, "nethical_store_up", store="cache", backend="memory") == 1
            assert sample(ctext, "process_resident_memory_bytes") > 0
            # the region goes away: the coordinator's gauge says so at the next scrape
            region.stop()
            for _ in range(100):
                ctext = await asyncio.to_thread(scrape, coord_metrics)
                if labelled(ctext, "nethical_instance_up", **up) == 0:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("nethical_instance_up stayed 1 after the region stopped")
        finally:
            coord.stop()
    finally:
        region.stop()


async def test_a_node_counts_the_records_its_memory_stores_drop(tmp_path: Path) -> None:
    metrics = free_port()
    args = ["region", "--region-id", "tel", "--port", "0", "--metrics-port", str(metrics)]
    region = spawn("region", [*args, "--memory-store-records", "5"], tmp_path)
    try:
        port = await region.aport()
        async with client.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = region_node_pb2_grpc.RegionNodeServiceStub(ch)
            for i in range(12):
                action = governance_pb2.AgentAction(agent_id="a", action_text=f"list files {i}")
                await stub.Evaluate(region_node_pb2.EvaluateRequest(action=action), timeout=10)
        evicted = "nethical_store_records_evicted_total"
        for _ in range(100):  # the stores write in the background
            text = await asyncio.to_thread(scrape, metrics)
            if labelled(text, evicted, store="audit") == 7:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"{evicted} never reached 7 for the audit store:\n{text}")
        assert labelled(text, evicted, store="audit", backend="memory") == 7
        # one metric row per evaluation (window summaries may add rows of their own)
        assert labelled(text, evicted, store="timeseries", backend="sqlite (memory)") >= 7
        # the evaluations' own series (risk, latency, counts), each in a window or two of
        # the last seconds: none old enough to be rolled up
        series = labelled(text, "nethical_series_held")
        assert series >= 2
        assert series <= labelled(text, "nethical_windows_held", kind="window") <= 2 * series
        assert labelled(text, "nethical_windows_held", kind="rollup") == 0
    finally:
        region.stop()


async def test_a_node_that_leaves_data_out_says_so_at_each_scrape(tmp_path: Path) -> None:
    """Its time-series server does not answer at start (nothing listens on port 1): the
    node keeps its windows in memory, and its metrics carry the gap's reason."""
    metrics = free_port()
    args = ["region", "--region-id", "tel", "--port", "0", "--metrics-port", str(metrics)]
    url = "postgresql://postgres@127.0.0.1:1/test"
    region = spawn("region", [*args, "--timeseries-url", url], tmp_path)
    try:
        await region.aport()
        text = await asyncio.to_thread(scrape, metrics)
        assert labelled(text, "nethical_data_gaps", reason="STORE_FALLBACK") == 1
        assert labelled(text, "nethical_store_fallback", store="timeseries") == 1
    finally:
        region.stop()
