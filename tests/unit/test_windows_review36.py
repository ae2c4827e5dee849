"""WindowStore and RegionNode review: window edges, rollup across resolutions, caps,
data versions, late windows' memory, and split/order invariance of ingest."""

from __future__ import annotations

import numpy as np
import pytest
from clocks import Clock
from hypothesis import given, settings
from hypothesis import strategies as st

from nethical_grpc.errors import InvalidArgument, ResourceExhausted
from nethical_grpc.series import IngestBatch, SeriesKey, SummaryQuery
from nethical_grpc.summary import Summary
from region_node.node import NodeIdentity, RegionNode
from region_node.windows import WindowConfig, WindowStore

S = 1_000_000_000
W = 10 * S
R = 60 * S  # rollup window: 6 windows
AFTER = 120 * S
NOW = 1_000_000 * S
KEY = SeriesKey("m", ())


def rollup_config() -> WindowConfig:
    return WindowConfig(
        window_ns=W, retention_ns=3_600 * S, rollup_after_ns=AFTER, rollup_window_ns=R
    )


def put(store: WindowStore, t: int, values: list[float], key: SeriesKey = KEY) -> None:
    b = IngestBatch(key, np.array(values, dtype=np.float64), None, t)
    store.check_times(b, t)
    store.check_capacity([b.key])
    store.apply(b)


def test_window_edges_and_time_bounds() -> None:
    store = WindowStore(WindowConfig(window_ns=W, retention_ns=60 * S, rollup_after_ns=0))
    edge = NOW  # a multiple of the window
    put(store, edge, [1.0], key=SeriesKey("m", ()))
    # the value on the edge is in the window that starts there, not the one before
    assert store.summaries(SummaryQuery(end_ns=edge)) == []
    [g] = store.summaries(SummaryQuery(start_ns=edge, end_ns=edge + 1))
    assert (g.start_ns, g.end_ns, g.summary.count) == (edge, edge + W, 1)
    # the future bound is inclusive; one nanosecond past it is refused
    ahead = IngestBatch(KEY, np.ones(1), None, NOW + store.config.max_future_ns)
    store.check_times(ahead, NOW)
    ahead.time_ns += 1
    with pytest.raises(InvalidArgument):
        store.check_times(ahead, NOW)
    # the oldest accepted time is the start of the oldest window retention keeps
    oldest = store.oldest_accepted_ns(NOW)
    store.check_times(IngestBatch(KEY, np.ones(1), None, oldest), NOW)
    with pytest.raises(InvalidArgument):
        store.check_times(IngestBatch(KEY, np.ones(1), None, oldest - 1), NOW)
    # ... and eviction keeps that window
    store.apply(IngestBatch(KEY, np.ones(1), None, oldest))
    assert store.evict_expired(NOW) == 0


def test_pre_1970_series_says_its_newest_observation() -> None:
    now = -1_000 * S
    store = WindowStore(WindowConfig(window_ns=W, rollup_after_ns=0), clock=Clock(now))
    put(store, -1_005 * S, [1.0, 2.0])
    [g] = store.summaries(SummaryQuery())
    assert (g.start_ns, g.end_ns) == (-1_010 * S, -1_000 * S)
    # the newest observation's time, not the last nanosecond of its window
    assert g.data_as_of_ns == -1_005 * S


def test_windows_held_at_full_width_inside_a_rollup_window_count_with_it() -> None:
    """A window put back at full width into a rolled-up range (a log replay, a restore
    of the window's newer data) is part of its rollup window: a query that counts the
    rollup window whole counts it too, not only once it is rolled up as well."""
    store = WindowStore(rollup_config())
    r0 = (NOW // R) * R
    put(store, r0, [1.0])
    put(store, r0 + 3 * W, [2.0])
    store.take_dirty()
    assert store.roll_up(r0 + R + AFTER + W) == 2
    assert store.rollup_count == 1
    # a replayed batch of the window after the first one: held at full width
    store.apply(IngestBatch(KEY, np.array([4.0]), None, r0 + W))
    assert store.rollup_count == 1 and store.window_count == 2
    everything = {(g.summary.count, g.summary.total) for g in store.summaries(SummaryQuery())}
    assert everything == {(3, 7.0)}
    for query in (
        SummaryQuery(start_ns=r0 + 3 * W),  # from inside the rollup window
        SummaryQuery(end_ns=r0 + 1),  # to its first window
        SummaryQuery(start_ns=r0 + 4 * W, end_ns=r0 + 5 * W),
    ):
        [g] = store.summaries(query)
        assert (g.summary.count, g.summary.total) == (3, 7.0), query
        assert (g.start_ns, g.end_ns) == (r0, r0 + R)
        # gaps are reported over the same range the answer merged
        assert store.window_starts(query.start_ns, query.end_ns)[0] in (None, r0)
    # once the window is flushed and rolled up too, the answers stay the same
    store.take_dirty()
    store.roll_up(r0 + R + AFTER + W)
    assert store.window_count == 1
    [g] = store.summaries(SummaryQuery(start_ns=r0 + 3 * W))
    assert (g.summary.count, g.summary.total) == (3, 7.0)


def test_restored_window_and_live_one_in_the_same_rollup_window() -> None:
    store = WindowStore(rollup_config())
    r0 = (NOW // R) * R
    # live data of a window past the horizon, not flushed (the store was unreachable)
    put(store, r0 + 2 * W, [5.0])
    store.roll_up(r0 + R + AFTER + W)
    assert store.rollup_count == 0  # waits while dirty
    # the stored windows come back: another window of that rollup window goes into it
    store.restore_many([(KEY, r0 // W + 4, Summary.from_values(np.array([1.0, 1.0])), r0)])
    assert store.rollup_count == 1
    [g] = store.summaries(SummaryQuery(start_ns=r0 + 4 * W))
    assert (g.summary.count, g.summary.total) == (3, 7.0)


def test_late_data_leaves_its_window_compacted() -> None:
    store = WindowStore(WindowConfig(window_ns=W, rollup_after_ns=0))
    rng = np.random.default_rng(1)
    put(store, NOW, list(rng.lognormal(0, 2, 200)))
    put(store, NOW + W, [1.0])  # a newer window: the first one is compacted
    first = store._series[KEY].windows[NOW // W]
    compact_bytes = first.histogram.positive.counts.nbytes
    assert first.histogram.positive.counts.dtype == np.uint8
    # late data for the closed window, alone and within a batch spanning windows
    put(store, NOW + 1, [2.0])
    assert first.histogram.positive.counts.nbytes == compact_bytes
    ts = np.array([NOW + 2, NOW + W + 2], dtype=np.int64)
    b = IngestBatch(KEY, np.array([3.0, 4.0]), ts, NOW + W)
    store.check_times(b, NOW + W)
    store.apply(b)
    assert first.histogram.positive.counts.nbytes == compact_bytes
    assert first.count == 202  # nothing lost by compacting


def test_a_quiet_series_newest_window_is_compacted_by_the_maintenance() -> None:
    """A series that stops getting data never makes a newer window that would shrink its
    newest one: that window kept its counts at 64 bits (~8x) until rollup or eviction.
    The maintenance pass compacts it once it is closed, not while it is open."""
    store = WindowStore(WindowConfig(window_ns=W, rollup_after_ns=0))
    put(store, NOW, list(np.random.default_rng(2).lognormal(0, 2, 200)))
    newest = store._series[KEY].windows[NOW // W]
    assert not newest.histogram.is_compact
    store.evict_expired(NOW + 1)  # still the open window: left as it is
    assert not newest.histogram.is_compact
    before = store.summaries(SummaryQuery(metrics=frozenset({"m"})))[0].summary
    store.evict_expired(NOW + W)  # closed
    assert newest.histogram.is_compact
    assert newest.histogram.positive.counts.dtype == np.uint8
    after = store.summaries(SummaryQuery(metrics=frozenset({"m"})))[0].summary
    assert after.count == before.count == 200
    assert after.quantile(0.5) == before.quantile(0.5)


def test_cap_crossing_batch_changes_nothing() -> None:
    clock = Clock(NOW)
    node = RegionNode(
        NodeIdentity("r", "i"),
        WindowConfig(window_ns=W, rollup_after_ns=0, max_label_sets_per_metric=2),
        clock=clock,
    )
    a, b, c = (SeriesKey("m", (("k", v),)) for v in "abc")
    node.record_internal([IngestBatch(a, np.ones(1), None, NOW)])
    before = node.version
    batches = [IngestBatch(k, np.ones(2), None, NOW) for k in (a, b, c)]
    with pytest.raises(ResourceExhausted) as info:
        node.record_internal(batches)
    assert info.value.reason == "LABEL_CARDINALITY_EXCEEDED"
    assert "--max-label-sets" in str(info.value)  # the setting to raise
    assert node.version == before
    [g] = node.summaries(SummaryQuery())
    assert g.summary.count == 1 and node.store.series_count == 1
    # the series cap the same way, through ingest
    node2 = RegionNode(
        NodeIdentity("r", "i"),
        WindowConfig(window_ns=W, rollup_after_ns=0, max_series=1),
        clock=clock,
    )
    assert node2.ingest(IngestBatch(a, np.ones(1), None, NOW))
    with pytest.raises(ResourceExhausted) as info:
        node2.ingest(IngestBatch(b, np.ones(1), None, NOW))
    assert info.value.reason == "SERIES_LIMIT_EXCEEDED"
    assert "--max-series" in str(info.value)
    assert node2.store.series_count == 1


def test_data_versions_follow_the_metrics_they_cover() -> None:
    store = WindowStore(rollup_config())
    r0 = (NOW // R) * R
    a, b = SeriesKey("a", ()), SeriesKey("b", ())
    put(store, r0, [1.0], key=a)
    put(store, r0, [1.0], key=b)
    va, vb = store.version_of(frozenset({"a"})), store.version_of(frozenset({"b"}))
    put(store, r0 + 1, [2.0], key=a)  # a change to an existing window of a
    assert store.version_of(frozenset({"a"})) != va
    assert store.version_of(frozenset({"b"})) == vb
    store.take_dirty()
    va = store.version_of(frozenset({"a"}))
    assert store.roll_up(r0 + R + AFTER + W) == 2  # the rollup changes answers' ranges
    assert store.version_of(frozenset({"a"})) != va
    # every series of a goes: its version says "no data" again
    later = r0 + 3 * 3_600 * S
    put(store, later, [3.0], key=b)
    store.evict_expired(later)
    assert store.version_of(frozenset({"a"})) == (0,)
    assert store.summaries(SummaryQuery(metrics=frozenset({"a"}))) == []
    [g] = store.summaries(SummaryQuery(metrics=frozenset({"b"})))
    assert g.summary.count == 1 and store.version_of(frozenset({"b"})) != (0,)


def test_label_filter_empty_value_and_group_by_a_label_some_lack() -> None:
    """A filter pair must be among the series' labels: "" matches a label set to "",
    not a series without the label; grouping by a label a series lacks puts it in the
    group without that label."""
    store = WindowStore(WindowConfig(window_ns=W, rollup_after_ns=0))
    for labels, v in (((("k", ""),), 1.0), ((), 2.0), ((("k", "x"),), 4.0)):
        put(store, NOW, [v], key=SeriesKey("m", labels))
    [g] = store.summaries(SummaryQuery(label_filter=(("k", ""),)))
    assert g.summary.total == 1.0
    groups = {g.labels: g.summary.total for g in store.summaries(SummaryQuery(group_by=("k",)))}
    assert groups == {(): 2.0, (("k", ""),): 1.0, (("k", "x"),): 4.0}


def _snapshot(store: WindowStore, query: SummaryQuery) -> list[tuple[object, ...]]:
    return [
        (
            g.metric,
            g.labels,
            g.summary.count,
            g.summary.min,
            g.summary.max,
            g.start_ns,
            g.end_ns,
            g.data_as_of_ns,
            g.summary.histogram,
        )
        for g in store.summaries(query)
    ]


def _totals(store: WindowStore, query: SummaryQuery) -> list[float]:
    return [g.summary.total for g in store.summaries(query)]


observations = st.lists(
    st.tuples(
        st.floats(-1e6, 1e6, allow_nan=False),
        st.integers(-300 * S, 300 * S),
        st.sampled_from("ab"),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(observations, st.data())
def test_split_and_reordered_batches_give_the_same_summaries(
    obs: list[tuple[float, int, str]], data: st.DataObject
) -> None:
    values = np.array([o[0] for o in obs])
    ts = np.array([NOW + o[1] for o in obs], dtype=np.int64)
    labels = np.array([o[2] for o in obs])

    def feed(store: WindowStore, lo: int, hi: int) -> None:
        for label in "ab":
            mask = labels[lo:hi] == label
            if mask.any():
                key = SeriesKey("m", (("k", label),))
                b = IngestBatch(key, values[lo:hi][mask], ts[lo:hi][mask], NOW)
                store.check_times(b, NOW)
                store.check_capacity([key])
                store.apply(b)

    config = WindowConfig(window_ns=W, retention_ns=3_600 * S, rollup_after_ns=0)
    whole = WindowStore(config, clock=Clock(NOW))
    feed(whole, 0, len(obs))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(obs)), max_size=5)))
    pieces = list(zip([0, *cuts], [*cuts, len(obs)], strict=True))
    split = WindowStore(config, clock=Clock(NOW))
    for lo, hi in data.draw(st.permutations(pieces)):
        feed(split, lo, hi)
    for query in (
        SummaryQuery(),
        SummaryQuery(group_by=("k",)),
        SummaryQuery(start_ns=NOW - 15 * S, end_ns=NOW + 100 * S),
    ):
        assert _snapshot(split, query) == _snapshot(whole, query)
        assert _totals(split, query) == pytest.approx(_totals(whole, query), rel=1e-12, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 29), st.floats(0.001, 1e6)), min_size=1, max_size=80),
    st.integers(0, 5 * 6),
)
def test_rollup_preserves_counts_and_sums_over_ranges_across_both_resolutions(
    obs: list[tuple[int, float]], start_window: int
) -> None:
    """Windows of 5 rollup windows: rolling the older ones up keeps every count, sum and
    extreme, and a query from any window answers the same as before the rollup, but
    widened to the start of its rollup window where that one is rolled up."""
    store = WindowStore(rollup_config())
    base = (NOW // R) * R
    for w, v in obs:
        store.apply(IngestBatch(KEY, np.array([v]), None, base + w * W))
    store.take_dirty()
    before = {
        w: (g.summary.count, g.summary.total)
        for w in range(30)
        for g in store.summaries(SummaryQuery(start_ns=base + w * W))
    }
    # the horizon falls in the 4th rollup window: the first 3 are rolled up
    now = base + 3 * R + AFTER + 2 * W
    store.roll_up(now)
    assert store._rolled_through == base // W + 17
    start = base + start_window * W
    got = store.summaries(SummaryQuery(start_ns=start))
    widened = start_window - start_window % 6 if start_window < 18 else start_window
    exp = before.get(widened)
    if exp is None:
        assert got == []
        return
    [g] = got
    assert g.summary.count == exp[0]
    assert g.summary.total == pytest.approx(exp[1], rel=1e-12)
    assert g.summary.max == max(v for w, v in obs if w >= widened)
