"""A node restarted with another ``--window`` cannot restore the windows it flushed with
the old width (they are not re-bucketed): its answers must name them (a
STORED_WINDOWS_OTHER_WIDTH gap, with both widths) while they are within the retention,
instead of leaving them out silently, and the gap must clear once they are past it (also
on a node that does not answer for the region).

The stores are real: an embedded SQLite file (it keeps the windows across a restart) and,
for the region-scope case, the PostgreSQL server on this machine (a schema per test).
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
from region_node.persistence import GAP_WINDOWS_OTHER_WIDTH, Persister
from region_node.server import RegionServerConfig, start_region_server
from region_node.stores import NodeStores, StoreConfig
from region_node.windows import WindowConfig

S = 1_000_000_000


@pytest.fixture
def pg_schema() -> Iterator[str]:
    with fresh_schema("rwidth38") as schema:
        yield schema


def _width_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and GAP_WINDOWS_OTHER_WIDTH in r.getMessage()
    ]


async def _answer(address: str) -> region_node_pb2.GetSummariesResponse:
    async with client.insecure_channel(address) as ch:
        stub = region_node_pb2_grpc.RegionNodeServiceStub(ch)
        request = region_node_pb2.GetSummariesRequest(metrics=["m"])
        resp: region_node_pb2.GetSummariesResponse = await stub.GetSummaries(request, timeout=5)
    return resp


async def _restart_with_other_width(
    cfg: StoreConfig, caplog: pytest.LogCaptureFixture, **extra: object
) -> None:
    """Flush 100 values with 5 s windows, restart with 10 s: the answers hold the 30 new
    values only and name the 5 s windows (both widths in the message), logged once."""

    def config(window_s: int) -> RegionServerConfig:
        return RegionServerConfig(
            region_id="eu",
            instance_id="eu-a",
            stores=cfg,
            model=None,
            windows=WindowConfig(window_ns=window_s * S),
            **extra,  # type: ignore[arg-type]
        )

    server, _ = await start_region_server(config(5))
    async with client.insecure_channel(server.address) as ch:
        await client.ingest(ch, [client.encode_ingest_request("m", np.arange(100.0))])
    await server.drain(announce_s=0, grace_s=0)  # a clean stop flushes

    server, node = await start_region_server(config(10))
    try:
        async with client.insecure_channel(server.address) as ch:
            await client.ingest(ch, [client.encode_ingest_request("m", np.arange(30.0))])
        resp = await _answer(server.address)
        assert sum(s.summary.moments.count for s in resp.series) == 30  # not re-bucketed
        assert [g.reason for g in resp.gaps] == [GAP_WINDOWS_OTHER_WIDTH]
        gap = resp.gaps[0]
        assert "5 s" in gap.message and "10 s" in gap.message
        assert gap.HasField("start_time") and gap.HasField("end_time")
        # the node's flushes (every 0.2 s) keep the gap, and do not log it again
        await asyncio.sleep(0.7)
        assert GAP_WINDOWS_OTHER_WIDTH in node.gap_reasons()
        warnings = _width_warnings(caplog)
        assert len(warnings) == 1 and "5 s" in warnings[0] and "10 s" in warnings[0]
    finally:
        await server.drain(announce_s=0, grace_s=0)


async def test_a_restart_with_another_window_names_the_old_windows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="region_node.persistence")
    cfg = StoreConfig(timeseries_url=f"sqlite:///{tmp_path / 'ts.db'}", flush_interval_s=0.2)
    await _restart_with_other_width(cfg, caplog)


async def test_a_region_scope_node_names_its_own_old_windows_not_as_a_peer(
    pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Answering for the region, its own windows of the old width are its own gap (the
    peers' mismatch names other instances only)."""
    caplog.set_level(logging.WARNING, logger="region_node.persistence")
    cfg = StoreConfig(timeseries_url=f"{PG_URL}?schema={pg_schema}", flush_interval_s=0.2)
    await _restart_with_other_width(cfg, caplog, region_scope=True)


async def test_the_gap_spans_the_old_windows_and_clears_past_the_retention(
    tmp_path: Path,
) -> None:
    """Without region scope: the gap runs from the oldest old window's start to the newest
    one's end, a query of the time after them does not reach it, and a flush once they
    are all past the retention clears it."""
    cfg = StoreConfig(timeseries_url=f"sqlite:///{tmp_path / 'ts.db'}", flush_interval_s=60.0)
    stores = await NodeStores.open(cfg, "eu")
    t0 = time.time_ns() // (10 * S) * (10 * S)
    clock = Clock(t0)
    retention = 60 * S

    def node(window_s: int) -> RegionNode:
        return RegionNode(
            NodeIdentity("eu", "eu-a"),
            WindowConfig(window_ns=window_s * S, retention_ns=retention),
            clock=clock,
        )

    try:
        before = node(5)
        before.ingest(IngestBatch(SeriesKey("m", ()), np.ones(7), None, t0))
        before.ingest(IngestBatch(SeriesKey("m", ()), np.ones(2), None, t0 + 5 * S))
        assert await Persister(before, stores, ProfileBook(), 60.0).flush_windows() == 2

        after = node(10)
        persister = Persister(after, stores, ProfileBook(), 60.0)
        await persister.flush_windows()  # restores first
        assert sum(g.summary.count for g in after.summaries(SummaryQuery())) == 0
        [gap] = after.gaps_for(SummaryQuery())
        assert gap.reason == GAP_WINDOWS_OTHER_WIDTH
        assert (gap.start_ns, gap.end_ns) == (t0, t0 + 10 * S)
        assert after.gaps_for(SummaryQuery(start_ns=t0 + 20 * S)) == []

        clock.t = t0 + 30 * S  # still within the retention
        await persister.flush_windows()
        assert after.gap_reasons() == [GAP_WINDOWS_OTHER_WIDTH]

        clock.t = t0 + 5 * S + retention + 10 * S  # both old windows are past it
        await persister.flush_windows()
        assert after.gap_reasons() == []
    finally:
        await stores.close()
