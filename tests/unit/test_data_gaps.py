"""Gaps: data a region node keeps but cannot put in its answers for now (windows it stored
before a restart that are not back, a store it fell back from, a region-scope node's
peers not loaded), named in the answers whose time range reaches into them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
from clocks import Clock
from hypothesis import given
from hypothesis import strategies as st
from test_persistence_windows import _FailingOnce, _flushed_before_a_restart

from nethical_grpc import convert, summary_scan
from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.jit import is_jit_available
from nethical_grpc.series import DataGap, GroupSummary, IngestBatch, SeriesKey, SummaryQuery
from nethical_grpc.summary import Summary
from nethical_grpc.v1 import region_node_pb2
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import (
    GAP_PEERS_NOT_LOADED,
    GAP_PEERS_STALE,
    GAP_STORE_FALLBACK,
    GAP_WINDOWS_NOT_LOADED,
    Persister,
)
from region_node.stores import NodeStores, StoreConfig
from region_node.windows import WindowConfig

S = 1_000_000_000
bound = st.one_of(st.none(), st.integers(-(10**12), 10**12))


@given(bound, bound, bound, bound)
def test_a_gap_overlaps_a_range_when_they_share_a_moment(
    g0: int | None, g1: int | None, q0: int | None, q1: int | None
) -> None:
    """[g0, g1) against [q0, q1), None unbounded: the same verdict as a search for a
    moment both hold, among the bounds themselves (where a shared stretch begins)."""
    gap = DataGap("R", g0, g1, "")
    lo, hi = -(10**13), 10**13
    a0, a1 = lo if g0 is None else g0, hi if g1 is None else g1
    b0, b1 = lo if q0 is None else q0, hi if q1 is None else q1
    shared = any(a0 <= t < a1 and b0 <= t < b1 for t in (a0, b0))
    assert gap.overlaps(q0, q1) == shared
    assert gap.overlaps(None, None) == (a0 < a1)


def test_a_node_names_the_gaps_a_query_reaches_into() -> None:
    node = RegionNode(NodeIdentity("r1", "r1-a"))
    assert node.gaps_for(SummaryQuery()) == []
    before = node.gaps_version
    old = DataGap(GAP_WINDOWS_NOT_LOADED, 100 * S, 200 * S, "not back")
    node.set_gap(old)
    assert node.gaps_version == before + 1
    node.set_gap(old)  # the same: answers need not change
    assert node.gaps_version == before + 1
    assert node.gaps_for(SummaryQuery()) == [old]
    assert node.gaps_for(SummaryQuery(start_ns=150 * S, end_ns=160 * S)) == [old]
    assert node.gaps_for(SummaryQuery(start_ns=200 * S)) == []  # the end is exclusive
    assert node.gaps_for(SummaryQuery(end_ns=100 * S)) == []
    everywhere = DataGap(GAP_PEERS_NOT_LOADED, None, None, "peers")
    node.set_gap(everywhere)
    assert node.gaps_for(SummaryQuery(start_ns=300 * S)) == [everywhere]
    node.clear_gap(GAP_WINDOWS_NOT_LOADED)
    node.clear_gap(GAP_WINDOWS_NOT_LOADED)  # already gone: no change
    assert node.gaps_version == before + 3
    assert node.gaps_for(SummaryQuery()) == [everywhere]


def test_a_gap_is_named_where_the_windows_an_answer_merges_reach_into_it() -> None:
    """An answer merges every window its range overlaps whole (a rollup window past the
    rollup horizon): it names a gap the range itself stops short of, but one of those
    windows reaches into."""
    t0 = 1_700_000_000 * S  # a window boundary for 1 s and 4 s windows
    clock = Clock(t0 + S // 2)
    node = RegionNode(
        NodeIdentity("r1", "r1-a"),
        WindowConfig(window_ns=S, rollup_after_ns=2 * S, rollup_window_ns=4 * S),
        clock=clock,
    )
    gap = DataGap(GAP_STORE_FALLBACK, None, t0 + S // 2, "fell back")
    node.set_gap(gap)
    key = SeriesKey("m", ())
    assert node.ingest(IngestBatch(key, np.ones(2), None, t0 + S // 4))
    assert node.ingest(IngestBatch(key, np.ones(3), None, t0 + 2 * S + S // 4))
    # the range starts after the gap, in the window where it ends: that window counts whole
    inside = SummaryQuery(start_ns=t0 + S // 2 + 1, end_ns=t0 + S)
    [group] = node.summaries(inside)
    assert group.start_ns == t0 and group.summary.count == 2
    assert node.gaps_for(inside) == [gap]
    assert node.gaps_for(SummaryQuery(start_ns=t0 + S)) == []
    # past the horizon the windows are rolled up into [t0, t0 + 4 s): a range from the
    # third second reaches the gap through its rollup window
    clock.t = t0 + 10 * S
    node.store.take_dirty()  # flushed
    assert node.store.roll_up() == 2
    later = SummaryQuery(start_ns=t0 + 2 * S, end_ns=t0 + 3 * S)
    [group] = node.summaries(later)
    assert group.start_ns == t0 and group.summary.count == 5
    assert node.gaps_for(later) == [gap]
    assert node.gaps_for(SummaryQuery(start_ns=t0 + 4 * S)) == []


@pytest.mark.parametrize(
    "gap",
    [
        DataGap(GAP_STORE_FALLBACK, None, 1_700_000_000 * S + 5, "fell back"),
        DataGap(GAP_WINDOWS_NOT_LOADED, 1_699_000_000 * S, 1_700_000_000 * S, "later"),
        DataGap(GAP_PEERS_NOT_LOADED, None, None, ""),
    ],
)
def test_a_gap_survives_the_wire_on_both_read_paths(gap: DataGap) -> None:
    """The coordinator reads an answer's bytes in one compiled scan, or through
    protobuf: an answer naming a gap goes through protobuf, summaries and gap intact."""
    summary = Summary()
    summary.update(np.array([1.0, 2.0, 4.0]))
    msg = region_node_pb2.GetSummariesResponse(
        series=[convert.group_summary_to_proto(GroupSummary("m", (), summary, 0, 10 * S, 10 * S))],
        region_id="r1",
        instance_id="r1-a",
        gaps=[convert.data_gap_to_proto(gap)],
    )
    data = msg.SerializeToString()
    assert summary_scan.scan(data) is None
    for answer in (
        convert.summaries_answer_from_bytes(data),
        convert.summaries_answer_from_proto(msg),
    ):
        assert answer.invalid is None
        assert answer.gaps == (gap,)
        assert [g.summary.count for g in answer.groups] == [3]
    plain = region_node_pb2.GetSummariesResponse()
    plain.CopyFrom(msg)
    del plain.gaps[:]
    assert convert.summaries_answer_from_bytes(plain.SerializeToString()).gaps == ()
    if is_jit_available():  # the scan reads the same answer without its gap
        assert summary_scan.scan(plain.SerializeToString()) is not None


async def test_windows_not_back_after_a_restart_are_a_gap_until_they_are(tmp_path: Path) -> None:
    """The store failed while the windows flushed before the restart were read: the
    node's answers say which time they leave out until a later try brings them back."""
    key = SeriesKey("lat", ())
    config = await _flushed_before_a_restart(
        tmp_path, IngestBatch(key, np.arange(5.0), None, time.time_ns() - 60 * S)
    )

    stores = await NodeStores.open(config, "r1")
    try:
        node = RegionNode(NodeIdentity("r1", "r1-a"))
        persister = Persister(node, stores, ProfileBook(), 60.0)
        failing = _FailingOnce(stores.timeseries.load_window_summaries, 10**9)
        stores.timeseries.load_window_summaries = failing  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await persister.restore()
        [gap] = node.gaps_for(SummaryQuery())
        assert gap.reason == GAP_WINDOWS_NOT_LOADED
        assert gap.start_ns is None and gap.end_ns == persister.started_ns
        assert "store unreachable" in gap.message
        # a query from the window after the start's holds everything there is (the
        # start's own window holds data flushed before the start)
        after = (
            -(-persister.started_ns // node.store.config.window_ns) * node.store.config.window_ns
        )
        assert node.gaps_for(SummaryQuery(start_ns=after)) == []
        assert node.gaps_for(SummaryQuery(start_ns=after - 1)) == [gap]
        failing.left = 0  # the store answers again
        assert await persister.restore() == 1
        assert node.gaps_for(SummaryQuery()) == []
        assert sum(g.summary.count for g in node.summaries(SummaryQuery())) == 5
    finally:
        await stores.close()


async def test_a_restore_that_fails_part_way_names_only_what_is_left(tmp_path: Path) -> None:
    now = time.time_ns()
    times = np.array([now - k * 600 * S for k in range(6)])  # a ten-minute slice each
    config = await _flushed_before_a_restart(
        tmp_path, IngestBatch(SeriesKey("lat", ()), np.arange(6.0), times, now)
    )
    stores = await NodeStores.open(config, "r1")
    try:
        node = RegionNode(NodeIdentity("r1", "r1-a"))
        persister = Persister(node, stores, ProfileBook(), 60.0)
        load = stores.timeseries.load_window_summaries
        cut = now - 30 * 60 * S

        async def failing_past_the_cut(*args: object, **kwargs: object) -> object:
            since = kwargs.get("since_ns")
            if isinstance(since, int) and cut <= since < now:
                raise ConnectionError("store unreachable")
            return await load(*args, **kwargs)  # type: ignore[arg-type]

        stores.timeseries.load_window_summaries = failing_past_the_cut  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await persister.restore()
        [gap] = node.gaps_for(SummaryQuery())
        # the slice that failed starts the gap: the slices before it are back
        assert gap.start_ns is not None and cut <= gap.start_ns < cut + 600 * S
        older = SummaryQuery(end_ns=gap.start_ns)
        assert node.gaps_for(older) == []
        assert sum(g.summary.count for g in node.summaries(older)) >= 2
        assert "from " in gap.message
    finally:
        await stores.close()


async def test_a_store_that_fell_back_at_start_is_a_gap_before_the_start() -> None:
    """Nothing listens on port 1: the node keeps its windows in memory, and its answers
    about the time before it started say the windows stored there are left out."""
    stores = await NodeStores.open(
        StoreConfig(timeseries_url="postgresql://postgres@127.0.0.1:1/test"), "r1"
    )
    try:
        assert stores.timeseries_choice.fallback
        node = RegionNode(NodeIdentity("r1", "r1-a"))
        persister = Persister(node, stores, ProfileBook(), 60.0)
        [gap] = node.gaps_for(SummaryQuery())
        assert gap.reason == GAP_STORE_FALLBACK
        assert gap.start_ns is None and gap.end_ns == persister.started_ns
        assert "postgresql://" in gap.message and "unreachable" in gap.message
        # answers from the window after the start's have no gap (the start's own window
        # holds data flushed before the start)
        after = (
            -(-persister.started_ns // node.store.config.window_ns) * node.store.config.window_ns
        )
        assert node.gaps_for(SummaryQuery(start_ns=after)) == []
        assert node.gaps_for(SummaryQuery(start_ns=after - 1)) == [gap]
        await persister.restore()  # nothing to restore from memory: the gap stays
        assert len(node.gaps_for(SummaryQuery())) == 1
    finally:
        await stores.close()


async def test_a_store_that_did_not_fall_back_is_no_gap(sqlite_stores: NodeStores) -> None:
    node = RegionNode(NodeIdentity("r1", "r1-a"))
    persister = Persister(node, sqlite_stores, ProfileBook(), 60.0)
    await persister.start()
    try:
        assert node.gaps_for(SummaryQuery()) == []
    finally:
        await persister.stop()


async def test_peers_not_loaded_or_stale_are_a_gap_until_a_refresh_succeeds(
    sqlite_stores: NodeStores,
) -> None:
    node = RegionNode(NodeIdentity("r1", "r1-b", region_scope=True))
    persister = Persister(node, sqlite_stores, ProfileBook(), 60.0)
    change = _FailingOnce(sqlite_stores.timeseries.last_window_change, 10**9)
    sqlite_stores.timeseries.last_window_change = change  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await persister.refresh_peers()
    [gap] = node.gaps_for(SummaryQuery(start_ns=time.time_ns()))
    assert gap.reason == GAP_PEERS_NOT_LOADED and gap.start_ns is None and gap.end_ns is None
    change.left = 0
    await persister.refresh_peers()
    assert node.peers is not None
    assert node.gaps_for(SummaryQuery()) == []
    # once loaded, a refresh that fails leaves the loaded windows, and the answers name
    # what the peers may have flushed since the last read (less a flush interval: what
    # they held unflushed then), until a refresh succeeds
    read_at = time.time_ns()
    change.left = 2
    with pytest.raises(ConnectionError):
        await persister.refresh_peers()
    [stale] = node.gaps_for(SummaryQuery())
    assert stale.reason == GAP_PEERS_STALE and stale.end_ns is None
    assert stale.start_ns is not None
    assert read_at - 60 * S - 5 * S <= stale.start_ns <= read_at - 60 * S
    assert node.gaps_for(SummaryQuery(end_ns=stale.start_ns)) == []
    with pytest.raises(ConnectionError):  # failing again: the same gap
        await persister.refresh_peers()
    assert node.gaps_for(SummaryQuery()) == [stale]
    await persister.refresh_peers()
    assert node.gaps_for(SummaryQuery()) == []


class _Gated:
    """A store method that waits for ``gate`` (a store slow to answer)."""

    def __init__(self, method: Callable[..., Awaitable[object]]) -> None:
        self.method, self.gate, self.waiting = method, asyncio.Event(), asyncio.Event()

    async def __call__(self, *args: object, **kwargs: object) -> object:
        self.waiting.set()
        await self.gate.wait()
        return await self.method(*args, **kwargs)


async def test_a_node_serving_while_it_restores_names_what_is_not_back_yet(
    tmp_path: Path,
) -> None:
    """--serve-while-restoring: the restore runs in the background while the node takes
    batches; until it ends, answers about the time before the start name the gap, and
    then hold the stored windows and the new batches alike."""
    key = SeriesKey("lat", ())
    config = await _flushed_before_a_restart(
        tmp_path, IngestBatch(key, np.arange(5.0), None, time.time_ns() - 60 * S)
    )
    stores = await NodeStores.open(config, "r1")
    try:
        node = RegionNode(NodeIdentity("r1", "r1-a"))
        persister = Persister(node, stores, ProfileBook(), 60.0)
        gated = _Gated(stores.timeseries.load_window_summaries)
        stores.timeseries.load_window_summaries = gated  # type: ignore[method-assign]
        persister.start_soon()
        await asyncio.wait_for(gated.waiting.wait(), 10)
        assert node.ingest(IngestBatch(key, np.ones(3), None, time.time_ns()))
        [gap] = node.gaps_for(SummaryQuery())
        assert gap.reason == GAP_WINDOWS_NOT_LOADED and "being read back" in gap.message
        assert gap.end_ns == persister.started_ns
        assert sum(g.summary.count for g in node.summaries(SummaryQuery())) == 3
        gated.gate.set()
        for _ in range(500):
            if persister.restored:
                break
            await asyncio.sleep(0.01)
        assert persister.restored
        assert node.gaps_for(SummaryQuery()) == []
        assert sum(g.summary.count for g in node.summaries(SummaryQuery())) == 8
        await persister.stop()
    finally:
        await stores.close()


async def test_a_stop_during_a_background_restore_ends_it(tmp_path: Path) -> None:
    stores = await NodeStores.open(
        StoreConfig(timeseries_url=f"sqlite:///{tmp_path / 'ts.db'}"), "r1"
    )
    try:
        node = RegionNode(NodeIdentity("r1", "r1-a"))
        persister = Persister(node, stores, ProfileBook(), 60.0)
        gated = _Gated(stores.timeseries.load_window_summaries)
        stores.timeseries.load_window_summaries = gated  # type: ignore[method-assign]
        persister.start_soon()
        await asyncio.wait_for(gated.waiting.wait(), 10)
        async with asyncio.timeout(10):  # the restore never ends by itself here
            await persister.stop()
        assert not persister.restored
    finally:
        await stores.close()
