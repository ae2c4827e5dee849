"""Region scope over a shared PostgreSQL schema: windows another instance of the region
flushed with another width (its own ``--window``) cannot be merged, and are left out of a
region-scope instance's answers. The answers must say so (a PEERS_WINDOW_MISMATCH gap
naming the instance and its width) for as long as those windows are within the retention,
or the coordinator takes an undercount for the whole region.

PostgreSQL is the real server on this machine (a schema per test, dropped afterwards).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from clocks import Clock
from services import PG_URL, fresh_schema

from nethical_grpc import client
from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.series import IngestBatch, SeriesKey, SummaryQuery
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import GAP_PEERS_WINDOW_MISMATCH, Persister
from region_node.server import RegionServerConfig, start_region_server
from region_node.stores import NodeStores, StoreConfig
from region_node.windows import WindowConfig

S = 1_000_000_000


@pytest.fixture
def pg_schema() -> Iterator[str]:
    with fresh_schema("width38") as schema:
        yield schema


def _mismatch_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and GAP_PEERS_WINDOW_MISMATCH in r.getMessage()
    ]


async def test_a_peer_of_another_window_width_is_a_named_gap_in_the_answers(
    pg_schema: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two peers flushed 100 values (5 s windows) and 50 (10 s windows, with a log mark);
    a region-scope instance of 10 s windows answers 50 (the 5 s ones are not re-bucketed)
    and names eu-a and its width in a gap; eu-c (and its log mark) is not named."""
    caplog.set_level(logging.WARNING, logger="region_node.persistence")
    cfg = StoreConfig(timeseries_url=f"{PG_URL}?schema={pg_schema}", flush_interval_s=0.2)

    async def flushed(instance: str, window_s: int, values: int, **extra: object) -> None:
        server, _ = await start_region_server(
            RegionServerConfig(
                region_id="eu",
                instance_id=instance,
                stores=cfg,
                model=None,
                windows=WindowConfig(window_ns=window_s * S),
                **extra,  # type: ignore[arg-type]
            )
        )
        async with client.insecure_channel(server.address) as ch:
            await client.ingest(ch, [client.encode_ingest_request("m", np.arange(values * 1.0))])
        await server.drain(announce_s=0, grace_s=0)  # a clean stop flushes

    await flushed("eu-a", 5, 100)
    await flushed("eu-c", 10, 50, wal_dir=tmp_path / "wal")

    server, node = await start_region_server(
        RegionServerConfig(
            region_id="eu", instance_id="eu-b", region_scope=True, stores=cfg, model=None
        )
    )
    try:
        for _ in range(100):
            if node.peers is not None and GAP_PEERS_WINDOW_MISMATCH in node.gap_reasons():
                break
            await asyncio.sleep(0.05)
        async with client.insecure_channel(server.address) as ch:
            stub = region_node_pb2_grpc.RegionNodeServiceStub(ch)
            resp = await stub.GetSummaries(
                region_node_pb2.GetSummariesRequest(metrics=["m"]), timeout=5
            )
        assert sum(s.summary.moments.count for s in resp.series) == 50
        assert [g.reason for g in resp.gaps] == [GAP_PEERS_WINDOW_MISMATCH]
        message = resp.gaps[0].message
        assert "eu-a (5 s)" in message and "eu-c" not in message
        assert resp.gaps[0].HasField("start_time") and resp.gaps[0].HasField("end_time")
        # later refreshes (every 0.2 s) keep the gap, and do not log it again
        await asyncio.sleep(0.7)
        assert node.gap_reasons() == [GAP_PEERS_WINDOW_MISMATCH]
        warnings = _mismatch_warnings(caplog)
        assert len(warnings) == 1 and "eu-a" in warnings[0] and "5 s" in warnings[0]
    finally:
        await server.drain(announce_s=0, grace_s=0)


async def test_the_gap_comes_with_a_refresh_and_clears_past_the_retention(
    pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer of another width that flushes after the instance's first load is seen by a
    later refresh (the windows changed since), named from then on, logged once; once its
    windows are past the retention the gap is gone."""
    caplog.set_level(logging.WARNING, logger="region_node.persistence")
    cfg = StoreConfig(timeseries_url=f"{PG_URL}?schema={pg_schema}", flush_interval_s=60.0)
    stores = await NodeStores.open(cfg, "eu")
    t0 = time.time_ns() // (10 * S) * (10 * S)
    clock = Clock(t0)
    retention = 60 * S

    def node(instance: str, window_s: int, *, region_scope: bool = False) -> RegionNode:
        return RegionNode(
            NodeIdentity("eu", instance, region_scope=region_scope),
            WindowConfig(window_ns=window_s * S, retention_ns=retention),
            clock=clock,
        )

    def put(target: RegionNode, t: int, n: int) -> None:
        target.ingest(IngestBatch(SeriesKey("m", ()), np.ones(n), None, t))

    reader = node("eu-b", 10, region_scope=True)
    reading = Persister(reader, stores, ProfileBook(), 60.0)
    same = node("eu-c", 10)
    other = node("eu-a", 5)
    try:
        put(same, t0, 3)
        await Persister(same, stores, ProfileBook(), 60.0).flush_windows()
        await reading.refresh_peers()  # the first load: eu-c's only
        assert reader.gap_reasons() == []

        writing = Persister(other, stores, ProfileBook(), 60.0)
        put(other, t0, 7)
        put(other, t0 + 5 * S, 2)
        assert await writing.flush_windows() == 2
        await reading.refresh_peers()  # windows changed since: eu-a's are left out
        assert sum(g.summary.count for g in reader.summaries(SummaryQuery())) == 3
        [gap] = reader.gaps_for(SummaryQuery())
        assert gap.reason == GAP_PEERS_WINDOW_MISMATCH
        assert "eu-a (5 s)" in gap.message and "eu-c" not in gap.message
        assert (gap.start_ns, gap.end_ns) == (t0, t0 + 10 * S)
        # a query of the time after those windows does not reach into the gap
        assert reader.gaps_for(SummaryQuery(start_ns=t0 + 20 * S)) == []

        clock.t = t0 + 20 * S
        put(other, clock.t, 1)
        await writing.flush_windows()
        await reading.refresh_peers()
        [gap] = reader.gaps_for(SummaryQuery())
        assert (gap.start_ns, gap.end_ns) == (t0, t0 + 25 * S)
        assert len(_mismatch_warnings(caplog)) == 1

        clock.t = t0 + 20 * S + retention + 10 * S  # all of eu-a's windows are past it
        await reading.refresh_peers()
        assert reader.gap_reasons() == []
    finally:
        await stores.close()
