"""Rolled-up windows and the time-series store: the store keeps every window at full
width, a restart gets them all back, and another instance's windows arrive rolled up."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from clocks import Clock

from nethical_grpc import client
from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.series import IngestBatch, SeriesKey, SummaryQuery
from nethical_grpc.storage.timeseries import WindowSummaryRow
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import RESTORE_SLICE_NS, WAL_MARK_METRIC, Persister
from region_node.stores import NodeStores
from region_node.wal import WriteAheadLog

S = 1_000_000_000
W = 10 * S


def _count(node: RegionNode) -> int:
    return sum(g.summary.count for g in node.summaries(SummaryQuery()))


def _node_hours_back(stores: NodeStores, hours: int) -> tuple[RegionNode, Persister, Clock, int]:
    """A node whose clock stands ``hours`` back, on a rollup window's edge: the node, its
    persister, its clock and that time."""
    start = (time.time_ns() - hours * 3600 * S) // (300 * S) * (300 * S)
    clock = Clock(start)
    node = RegionNode(NodeIdentity("r1", "r1-a"), clock=clock)
    return node, Persister(node, stores, ProfileBook(), 1.0), clock, start


async def test_rolled_windows_stay_whole_in_the_store_and_come_back(
    sqlite_stores: NodeStores, tmp_path: Path
) -> None:
    # two hours ago, by the node's clock, a batch in each of 60 windows (10 minutes)
    node, persister, clock, start = _node_hours_back(sqlite_stores, 2)
    for k in range(60):
        clock.t = start + k * W
        batch = IngestBatch(SeriesKey("latency_ms", ()), np.full(4, k + 1.0), None, clock.t)
        node.ingest(batch)
    assert await persister.flush_windows() == 60
    # an hour and a quarter on, the first two rollup windows are past the horizon
    clock.t = start + 75 * 60 * S
    await node.maintain_windows()
    assert (node.store.rollup_count, node.store.window_count) == (2, 2)
    assert _count(node) == 240
    # the store still holds each window at full width, every value in it
    rows = [
        r
        for r in await sqlite_stores.timeseries.load_window_summaries("r1")
        if r.metric != WAL_MARK_METRIC
    ]
    assert len(rows) == 60 and {r.window_ns for r in rows} == {W}
    assert sum(r.count for r in rows) == 240
    # nothing to flush: rolling up changed no window the store holds
    assert await persister.flush_windows() == 0

    # at a restart the log's batches are applied first, then the stored windows go
    # straight into rollup windows, except one a replayed batch holds at full width: the
    # stored part joins it there, so the next flush writes that window whole
    wal = WriteAheadLog(tmp_path / "wal")
    late = client.encode_ingest_request("latency_ms", np.full(2, 100.0), batch_id="late")
    wal.append(late, start)
    wal.close()
    started = RegionNode(NodeIdentity("r1", "r1-a"), clock=clock)
    assert started.hold_wal(WriteAheadLog(tmp_path / "wal")) == 1
    assert await Persister(started, sqlite_stores, ProfileBook(), 1.0).restore() == 60
    assert not started.holds_log
    assert (started.store.window_count, started.store.rollup_count) == (3, 2)
    assert _count(started) == 242
    [(_, window_id, whole, _)] = started.store.take_dirty()
    assert (window_id, whole.count) == (start // W, 4 + 2)

    # without a log, straight into rollup windows: no day of windows at full width
    plain = RegionNode(NodeIdentity("r1", "r1-a"), clock=clock)
    assert await Persister(plain, sqlite_stores, ProfileBook(), 1.0).restore() == 60
    assert (plain.store.window_count, plain.store.rollup_count, _count(plain)) == (2, 2, 240)

    # another instance of the region loads these windows as its peers' straight into
    # rollup windows (nothing is ingested into them)
    other = RegionNode(NodeIdentity("r1", "r1-b", region_scope=True), clock=clock)
    other_persister = Persister(other, sqlite_stores, ProfileBook(), 1.0)
    await other_persister.refresh_peers()
    assert other.peers is not None
    assert (other.peers.rollup_count, other.peers.window_count) == (2, 2)
    assert _count(other) == 240


async def test_a_restore_reads_the_store_a_slice_of_time_at_a_time(
    sqlite_stores: NodeStores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A day of a node's windows is not read in one answer: that would hold every stored
    row in memory at once, far more than the rolled-up windows they become."""
    node, persister, clock, start = _node_hours_back(sqlite_stores, 4)
    for k in range(36):  # a window every 5 minutes for 3 hours
        clock.t = start + k * 300 * S
        node.ingest(IngestBatch(SeriesKey("m", ()), np.ones(3), None, clock.t))
    assert await persister.flush_windows() == 36

    answers: list[int] = []
    load = sqlite_stores.timeseries.load_window_summaries

    async def counted(*args: object, **kwargs: object) -> list[WindowSummaryRow]:
        rows = await load(*args, **kwargs)  # type: ignore[arg-type]
        answers.append(len(rows))
        return rows

    monkeypatch.setattr(sqlite_stores.timeseries, "load_window_summaries", counted)
    again = RegionNode(NodeIdentity("r1", "r1-a"), clock=Clock(time.time_ns()))
    assert await Persister(again, sqlite_stores, ProfileBook(), 1.0).restore() == 36
    assert _count(again) == 36 * 3
    assert max(answers) <= RESTORE_SLICE_NS // (300 * S)  # two windows a slice
    assert sum(answers) == 36  # each row once (no log, so no marks)
