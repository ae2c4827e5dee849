"""A region-scope node's copy of the other instances' windows, kept up to date from a
shared store: the first load reads them all, later ones only what was flushed since."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from clocks import Clock

from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.series import IngestBatch, SeriesKey, SummaryQuery
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import WAL_MARK_METRIC, Persister
from region_node.stores import NodeStores
from region_node.wal import WriteAheadLog

S = 1_000_000_000
W = 10 * S


class _Loads:
    """Counts the rows each load of window summaries answered, and how it asked."""

    def __init__(self, stores: NodeStores) -> None:
        self.calls: list[tuple[dict[str, Any], int]] = []
        self._load = stores.timeseries.load_window_summaries
        stores.timeseries.load_window_summaries = self  # type: ignore[method-assign]

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        rows = await self._load(*args, **kwargs)
        self.calls.append((kwargs, len(rows)))
        return rows

    def take(self) -> list[tuple[dict[str, Any], int]]:
        calls, self.calls = self.calls, []
        return calls


def _node(instance: str, clock: Clock, *, region_scope: bool = False) -> RegionNode:
    return RegionNode(NodeIdentity("r1", instance, region_scope=region_scope), clock=clock)


def _counts(store: Any) -> dict[str, int]:
    return {g.metric: g.summary.count for g in store.summaries(SummaryQuery())}


def _put(node: RegionNode, metric: str, t: int, n: int) -> None:
    node.ingest(IngestBatch(SeriesKey(metric, ()), np.ones(n), None, t))


async def test_later_refreshes_read_only_the_windows_flushed_since(
    sqlite_stores: NodeStores,
) -> None:
    now = time.time_ns() // W * W
    clock = Clock(now)
    writer = _node("r1-a", clock)
    writing = Persister(writer, sqlite_stores, ProfileBook(), 1.0)
    for k in range(30):
        _put(writer, "lat", now - k * W, 2)
    assert await writing.flush_windows() == 30

    reader = _node("r1-b", clock, region_scope=True)
    reading = Persister(reader, sqlite_stores, ProfileBook(), 1.0)
    _put(reader, "lat", now, 5)  # its own window: flushed, and never read as a peer's
    await reading.flush_windows()
    loads = _Loads(sqlite_stores)
    await reading.refresh_peers()
    assert reader.peers is not None
    assert _counts(reader.peers) == {"lat": 60}
    assert all("changed_after" not in kwargs for kwargs, _ in loads.take())  # all of them
    version = reader.version

    # the writer adds to its newest window and opens another: the next refresh reads
    # those two rows, then every instance's copy of their windows (the reader's own
    # among them, not taken), and the newer one replaces the window held, not adds to it
    _put(writer, "lat", now, 3)
    _put(writer, "lat", now + W, 4)
    assert await writing.flush_windows() == 2
    await reading.refresh_peers()
    assert [(kwargs.get("changed_after") is not None, rows) for kwargs, rows in loads.take()] == [
        (True, 2),
        (False, 3),
    ]
    assert _counts(reader.peers) == {"lat": 60 + 3 + 4}
    assert _counts(reader) == {"lat": 60 + 3 + 4 + 5}
    assert reader.version != version
    version = reader.version

    # nothing flushed since: no window read, and answers cached for the last version hold
    await reading.refresh_peers()
    assert loads.take() == []
    assert reader.version == version

    # the reader's own flushes are not its peers'
    _put(reader, "lat", now, 1)
    await reading.flush_windows()
    await reading.refresh_peers()
    assert [rows for _, rows in loads.take()] == [1]
    assert _counts(reader.peers) == {"lat": 67}


async def test_a_window_two_others_hold_keeps_both_parts_when_one_flushes_again(
    sqlite_stores: NodeStores,
) -> None:
    """Three instances: the reader holds the merge of the other two's copies of a window.
    When one of them flushes its copy again, the window held becomes the merge of its
    new copy and the other's, not its copy alone."""
    now = time.time_ns() // W * W
    clock = Clock(now)
    a, c = _node("r1-a", clock), _node("r1-c", clock)
    writers = [Persister(n, sqlite_stores, ProfileBook(), 1.0) for n in (a, c)]
    _put(a, "lat", now, 2)
    _put(c, "lat", now, 5)
    _put(c, "lat", now - W, 7)  # a window only c holds
    for writer in writers:
        await writer.flush_windows()
    reader = _node("r1-b", clock, region_scope=True)
    reading = Persister(reader, sqlite_stores, ProfileBook(), 1.0)
    await reading.refresh_peers()
    assert _counts(reader.peers) == {"lat": 14}

    _put(a, "lat", now, 1)
    await writers[0].flush_windows()
    await reading.refresh_peers()
    assert _counts(reader.peers) == {"lat": 15}
    # both flush the shared window again in one refresh's time, and c a new one
    _put(a, "lat", now, 10)
    _put(c, "lat", now, 20)
    _put(c, "lat", now + W, 40)
    for writer in writers:
        await writer.flush_windows()
    await reading.refresh_peers()
    assert _counts(reader.peers) == {"lat": 85}
    window = reader.peers.summaries(  # type: ignore[union-attr]
        SummaryQuery(start_ns=now, end_ns=now + W)
    )
    assert [g.summary.count for g in window] == [2 + 5 + 1 + 10 + 20]


async def test_a_change_past_the_rollup_horizon_loads_everything_again(
    sqlite_stores: NodeStores,
) -> None:
    """The reader holds the writer's old windows merged in rollup windows. A later flush
    of one of them (the writer's clock behind, or its log replayed after a restart) has
    no window to replace: the reader loads every window again, and counts each once."""
    start = (time.time_ns() - 3 * 3600 * S) // (300 * S) * (300 * S)
    writer = _node("r1-a", Clock(start + 600 * S))  # a clock two hours behind the reader's
    writing = Persister(writer, sqlite_stores, ProfileBook(), 1.0)
    for k in range(60):
        _put(writer, "lat", start + k * W, 2)
    await writing.flush_windows()

    clock = Clock(start + 2 * 3600 * S + 600 * S)  # all of it past the reader's horizon
    reader = _node("r1-b", clock, region_scope=True)
    reading = Persister(reader, sqlite_stores, ProfileBook(), 1.0)
    await reading.refresh_peers()
    assert reader.peers is not None
    assert (reader.peers.rollup_count, reader.peers.window_count) == (2, 2)
    first = reader.peers

    # the writer flushes its first window again, with one more value in it
    _put(writer, "lat", start, 1)
    assert await writing.flush_windows() == 1
    loads = _Loads(sqlite_stores)
    await reading.refresh_peers()
    calls = loads.take()
    assert calls[0][0].get("changed_after") is not None  # tried in place first
    assert all("changed_after" not in kwargs for kwargs, _ in calls[1:]) and len(calls) > 1
    assert reader.peers is not first
    assert _counts(reader.peers) == {"lat": 121}


async def test_the_peers_windows_roll_up_and_expire_as_the_nodes_own(
    sqlite_stores: NodeStores,
) -> None:
    start = (time.time_ns() - 3 * 3600 * S) // (300 * S) * (300 * S)
    clock = Clock(start + 600 * S)
    writer = _node("r1-a", clock)
    writing = Persister(writer, sqlite_stores, ProfileBook(), 1.0)
    for k in range(60):  # ten minutes of windows
        _put(writer, "lat", start + k * W, 2)
    await writing.flush_windows()
    reader = _node("r1-b", clock, region_scope=True)
    reading = Persister(reader, sqlite_stores, ProfileBook(), 1.0)
    await reading.refresh_peers()
    assert reader.peers is not None
    assert (reader.peers.rollup_count, reader.peers.window_count) == (0, 60)

    clock.t = start + 75 * 60 * S  # an hour and a quarter on: past the horizon
    await reading.refresh_peers()
    assert (reader.peers.rollup_count, reader.peers.window_count) == (2, 2)
    assert _counts(reader.peers) == {"lat": 120}
    clock.t = start + 25 * 3600 * S  # past the retention (24 h)
    await reading.refresh_peers()
    assert reader.peers.window_count == 0


async def test_log_marks_are_not_windows(sqlite_stores: NodeStores, tmp_path: Path) -> None:
    """A peer's write-ahead log mark comes with its windows' changes and is left out."""
    clock = Clock(time.time_ns())
    reader = _node("r1-b", clock, region_scope=True)
    reading = Persister(reader, sqlite_stores, ProfileBook(), 1.0)
    await reading.refresh_peers()
    writer = _node("r1-a", clock)
    writer.hold_wal(WriteAheadLog(tmp_path / "wal"))
    writing = Persister(writer, sqlite_stores, ProfileBook(), 1.0)
    await writing.restore()
    writing.restored = True
    writer.record_internal([IngestBatch(SeriesKey("lat", ()), np.ones(4), None, clock.t)])
    await writing.flush_windows()
    marks = await sqlite_stores.timeseries.load_window_summaries("r1", since_ns=2**62)
    assert [r.metric for r in marks] == [WAL_MARK_METRIC]
    await reading.refresh_peers()
    assert reader.peers is not None
    assert _counts(reader.peers) == {"lat": 4}
    assert reader.peers.series_count == 1


async def test_change_numbers_that_start_again_load_everything_again(
    sqlite_stores: NodeStores,
) -> None:
    """The store's tables were replaced (emptied, its kept change number too): its change
    numbers start again below the reader's mark, which would hide every later flush. The
    reader loads it all. (A delete by the retention does not take numbers back.)"""
    clock = Clock(time.time_ns() // W * W)
    writer = _node("r1-a", clock)
    writing = Persister(writer, sqlite_stores, ProfileBook(), 1.0)
    for k in range(3):
        _put(writer, "lat", clock.t - k * W, 2)
    await writing.flush_windows()
    await writing.flush_windows()  # nothing changed: no upsert, no number taken
    _put(writer, "lat", clock.t, 1)
    await writing.flush_windows()
    reader = _node("r1-b", clock, region_scope=True)
    reading = Persister(reader, sqlite_stores, ProfileBook(), 1.0)
    await reading.refresh_peers()
    assert reader.peers is not None
    assert _counts(reader.peers) == {"lat": 7}
    assert await sqlite_stores.timeseries.last_window_change("r1") == 2

    assert await sqlite_stores.timeseries.delete_window_summaries_before("r1", 2**63 - 1) == 3
    assert await sqlite_stores.timeseries.last_window_change("r1") == 2
    store = sqlite_stores.timeseries

    def replace_tables() -> None:
        store._db().execute("DELETE FROM window_changes")  # type: ignore[attr-defined]

    await store._run(replace_tables)  # type: ignore[attr-defined]
    assert await sqlite_stores.timeseries.last_window_change("r1") == 0
    fresh = _node("r1-a", clock)
    _put(fresh, "lat", clock.t + W, 5)
    await Persister(fresh, sqlite_stores, ProfileBook(), 1.0).flush_windows()
    assert await sqlite_stores.timeseries.last_window_change("r1") == 1
    await reading.refresh_peers()
    assert _counts(reader.peers) == {"lat": 5}
