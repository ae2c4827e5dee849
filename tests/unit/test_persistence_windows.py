"""Flushing windows to the time-series store when the store refuses some of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.series import IngestBatch, SeriesKey
from nethical_grpc.storage.timeseries import WindowSummaryRow
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import Persister
from region_node.stores import NodeStores, StoreConfig


async def test_rows_the_store_refuses_are_dropped_and_the_rest_written(tmp_path: Path) -> None:
    """A window whose labels the store cannot keep (a NUL, from a log written before the
    boundary refused them) is dropped and counted; the other windows are written, on this
    flush and the next, instead of waiting behind it forever."""
    stores = await NodeStores.open(
        StoreConfig(timeseries_url=f"sqlite:///{tmp_path / 'ts.db'}"), "r1"
    )
    try:
        node = RegionNode(NodeIdentity("r1", "r1-a"))
        persister = Persister(node, stores, ProfileBook(), 1.0)
        now = 1_700_000_000_000_000_000
        node.record_internal(
            [IngestBatch(SeriesKey("good", (("k", "v"),)), np.array([1.0, 2.0]), None, now)]
        )
        bad = WindowSummaryRow("r1", "r1-a", "bad", {"k": "x\x00y"}, 0, 60 * 10**9, b"", 1)
        persister._retry_windows = [bad]
        assert await persister.flush_windows() == 1
        assert persister.dropped == 1
        stored = await stores.timeseries.load_window_summaries("r1")
        assert [(r.metric, dict(r.labels)) for r in stored] == [("good", {"k": "v"})]
        # the next flush is not held either
        node.record_internal([IngestBatch(SeriesKey("later", ()), np.array([3.0]), None, now)])
        assert await persister.flush_windows() == 1
        stored = await stores.timeseries.load_window_summaries("r1")
        assert sorted(r.metric for r in stored) == ["good", "later"]
    finally:
        await stores.close()
