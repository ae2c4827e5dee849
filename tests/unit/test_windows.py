"""WindowStore: tumbling windows, retention, caps, atomicity (no gRPC)."""

from __future__ import annotations

import numpy as np
import pytest
from clocks import Clock

from nethical_grpc.errors import InvalidArgument, ResourceExhausted
from nethical_grpc.series import IngestBatch, SeriesKey, SummaryQuery
from region_node.windows import WindowConfig, WindowStore

S = 1_000_000_000


def batch(metric: str, values: np.ndarray, t: int, labels: tuple = ()) -> IngestBatch:  # type: ignore[type-arg]
    return IngestBatch(SeriesKey(metric, labels), values, None, t)


def ingest(store: WindowStore, b: IngestBatch, now: int) -> None:
    store.check_times(b, now)
    store.check_capacity([b.key])
    store.apply(b)


def test_windows_are_epoch_aligned_and_retention_drops_them() -> None:
    clock = Clock(1_000 * S)
    store = WindowStore(WindowConfig(window_ns=10 * S, retention_ns=60 * S), clock=clock)
    for k in range(6):
        t = clock.t - k * 10 * S
        ingest(store, batch("m", np.ones(5), t), clock.t)
    assert store.window_count == 6
    [g] = store.summaries(SummaryQuery())
    assert g.summary.count == 30
    assert g.start_ns % (10 * S) == 0 and g.end_ns == 1_010 * S
    # time passes: windows past retention go, memory stays bounded
    clock.t += 30 * S
    assert store.evict_expired() == 3
    assert store.window_count == 3
    clock.t += 60 * S
    store.evict_expired()
    assert store.series_count == 0 and store.window_count == 0
    # the label-set budget of the metric is released with its series
    assert store.summaries(SummaryQuery()) == []


def test_too_old_and_future_observations_are_rejected() -> None:
    now = 10_000 * S
    store = WindowStore(WindowConfig(window_ns=10 * S, retention_ns=60 * S))
    with pytest.raises(InvalidArgument) as old:
        store.check_times(batch("m", np.ones(1), now - 3_600 * S), now)
    assert old.value.violations()[0].field == "time"
    with pytest.raises(InvalidArgument):
        store.check_times(batch("m", np.ones(1), now + 3_600 * S), now)
    ts = IngestBatch(SeriesKey("m", ()), np.ones(2), np.array([now, now - 3_600 * S]), now)
    with pytest.raises(InvalidArgument) as info:
        store.check_times(ts, now)
    [violation] = info.value.violations()
    assert violation.field == "timestamps_unix_nano[1]"  # which one, in a large batch
    assert f"observation at Unix {(now - 3_600 * S) / S:.3f} is older" in violation.description
    ahead = np.array([now, now, now + 3_600 * S, now])
    with pytest.raises(InvalidArgument) as info:
        store.check_times(IngestBatch(SeriesKey("m", ()), np.ones(4), ahead, now), now)
    [violation] = info.value.violations()
    assert violation.field == "timestamps_unix_nano[2]"
    assert f"observation at Unix {(now + 3_600 * S) / S:.3f} is more than" in violation.description


def test_per_value_timestamps_split_across_windows() -> None:
    now = 1_000 * S
    store = WindowStore(WindowConfig(window_ns=10 * S), clock=Clock(now))
    ts = np.array([now, now - 10 * S, now, now - 20 * S, now - 10 * S], dtype=np.int64)
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    ingest(store, IngestBatch(SeriesKey("m", ()), values, ts, now), now)
    assert store.window_count == 3
    recent = store.summaries(SummaryQuery(start_ns=now - 10 * S))
    assert recent[0].summary.count == 4
    assert recent[0].summary.total == pytest.approx(1 + 2 + 3 + 5)
    newest = store.summaries(SummaryQuery(start_ns=now))
    assert newest[0].summary.total == pytest.approx(4.0)


def test_caps_raise_before_any_change() -> None:
    now = 1_000 * S
    store = WindowStore(WindowConfig(max_label_sets_per_metric=2, max_series=3), clock=Clock(now))
    ingest(store, batch("a", np.ones(1), now, (("k", "1"),)), now)
    ingest(store, batch("a", np.ones(1), now, (("k", "2"),)), now)
    with pytest.raises(ResourceExhausted) as per_metric:
        store.check_capacity([SeriesKey("a", (("k", "3"),))])
    assert per_metric.value.reason == "LABEL_CARDINALITY_EXCEEDED"
    ingest(store, batch("b", np.ones(1), now), now)
    with pytest.raises(ResourceExhausted) as total:
        store.check_capacity([SeriesKey("c", ())])
    assert total.value.reason == "SERIES_LIMIT_EXCEEDED"
    assert store.series_count == 3
    # existing series are not counted again
    store.check_capacity([SeriesKey("a", (("k", "1"),))])


def test_group_by_merges_other_labels() -> None:
    now = 1_000 * S
    store = WindowStore(clock=Clock(now))
    ingest(store, batch("m", np.full(3, 1.0), now, (("d", "ALLOW"), ("t", "x"))), now)
    ingest(store, batch("m", np.full(2, 2.0), now, (("d", "ALLOW"), ("t", "y"))), now)
    ingest(store, batch("m", np.full(4, 3.0), now, (("d", "BLOCK"), ("t", "x"))), now)
    groups = store.summaries(SummaryQuery(group_by=("d",)))
    assert [(g.labels, g.summary.count) for g in groups] == [
        ((("d", "ALLOW"),), 5),
        ((("d", "BLOCK"),), 4),
    ]
    filtered = store.summaries(SummaryQuery(label_filter=(("t", "x"),)))
    assert filtered[0].summary.count == 7


def test_closed_windows_are_compacted_without_changing_answers() -> None:
    now = 1_000 * S
    store = WindowStore(WindowConfig(window_ns=10 * S), clock=Clock(now))
    rng = np.random.default_rng(5)
    data = [10 ** rng.uniform(0, 4, size=300) for _ in range(3)]
    for k, values in enumerate(data):
        ingest(store, batch("m", values, now - (2 - k) * 10 * S), now)
    [g] = store.summaries(SummaryQuery())
    pooled = np.concatenate(data)
    assert g.summary.count == pooled.size
    for q in (0.1, 0.5, 0.99):
        exact = np.quantile(pooled, q, method="lower")
        assert abs(g.summary.quantile(q) - exact) <= g.summary.relative_error * exact * 1.000001
    series = store._series[SeriesKey("m", ())]
    dtypes = [series.windows[w].histogram.positive.counts.dtype for w in sorted(series.windows)]
    assert dtypes[:2] == [np.uint8, np.uint8]  # closed windows shrank
    assert dtypes[2] == np.uint64  # the current one did not
    # late data for a closed window still lands (and widens it again)
    ingest(store, batch("m", np.full(400, 7.0), now - 20 * S), now)
    assert store.summaries(SummaryQuery())[0].summary.count == pooled.size + 400


def test_held_counts_can_be_read_from_another_thread_while_series_come_and_go() -> None:
    """A metrics scrape reads the counts on its exporter's thread while the event loop
    adds series: the walk over the series had failed with "dictionary changed size
    during iteration" (and the scrape left both gauges out)."""
    import threading

    now = 10**12
    store = WindowStore(
        WindowConfig(max_series=1_000_000, max_label_sets_per_metric=1_000_000), clock=Clock(now)
    )
    failures: list[BaseException] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            try:
                store.held()
            except BaseException as exc:  # (what the test looks for)
                failures.append(exc)
                return

    reader = threading.Thread(target=scrape)
    reader.start()
    try:
        for i in range(10_000):
            ingest(store, batch("m", np.array([1.0]), now, (("k", str(i)),)), now)
            if failures:
                break
    finally:
        done.set()
        reader.join()
    assert failures == []
    assert store.held()[0] == 10_000
