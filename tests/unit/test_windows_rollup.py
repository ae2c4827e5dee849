"""WindowStore rollup: windows past the horizon merge into wider ones, losing no data,
waiting while unflushed, and the node refuses observations that old."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nethical_grpc.cli.args import parse_duration_or_zero_ns
from nethical_grpc.errors import InvalidArgument
from nethical_grpc.series import IngestBatch, SeriesKey, SummaryQuery
from nethical_grpc.summary import Summary
from region_node.windows import WindowConfig, WindowStore

S = 1_000_000_000
W = 10 * S  # window
R = 60 * S  # rollup window: 6 windows
AFTER = 120 * S  # rollup horizon
T0 = 1_000_020 * S  # a time well inside a rollup window (1,000,020 s = rollup 16,667 + 0 s)


def config(**kw: int) -> WindowConfig:
    args = {
        "window_ns": W,
        "retention_ns": 3_600 * S,
        "rollup_after_ns": AFTER,
        "rollup_window_ns": R,
    }
    args.update(kw)
    return WindowConfig(**args)


def batch(t: int, values: np.ndarray, metric: str = "m") -> IngestBatch:  # type: ignore[type-arg]
    return IngestBatch(SeriesKey(metric, ()), values, None, t)


def fill(store: WindowStore, start: int, windows: int, seed: int = 0) -> Summary:
    """One batch in each of ``windows`` windows from ``start``, each arriving in its own
    window; the summary of them all."""
    rng = np.random.default_rng(seed)
    every = Summary()
    for k in range(windows):
        values = rng.lognormal(0, 2, 20)
        b = batch(start + k * W, values)
        store.check_times(b, b.time_ns)
        store.apply(b)
        every.update(values)
    return every


def whole(store: WindowStore) -> Summary:
    [group] = store.summaries(SummaryQuery())
    return group.summary


def assert_same_data(a: Summary, b: Summary) -> None:
    assert a.count == b.count
    assert a.total == pytest.approx(b.total, rel=1e-12)
    assert (a.min, a.max) == (b.min, b.max)
    assert a.histogram == b.histogram


def test_windows_past_the_horizon_merge_into_rollup_windows_keeping_every_value() -> None:
    store = WindowStore(config())
    start = (T0 // R) * R  # a rollup window's first window
    every = fill(store, start, 24)  # four rollup windows' worth
    store.take_dirty()  # flushed
    assert (store.window_count, store.rollup_count) == (24, 0)
    # once the horizon passes the twelfth window, the first two rollup windows are
    # wholly past it (the oldest window accepted is the thirteenth)
    now = start + 11 * W + AFTER
    assert store.oldest_accepted_ns(now) == start + 12 * W
    assert store.roll_up(now) == 12
    assert (store.window_count, store.rollup_count) == (12 + 2, 2)
    assert_same_data(whole(store), every)
    # later still, all four
    assert store.roll_up(now + 2 * R) == 12
    assert (store.window_count, store.rollup_count) == (4, 4)
    assert_same_data(whole(store), every)


def test_a_window_not_flushed_yet_keeps_its_rollup_window_waiting() -> None:
    store = WindowStore(config())
    start = (T0 // R) * R
    fill(store, start, 6)
    now = start + 6 * W + AFTER
    assert store.roll_up(now) == 0  # every window is dirty: the store has none of them
    assert store.window_count == 6
    store.take_dirty()
    assert store.roll_up(now) == 6
    assert (store.window_count, store.rollup_count) == (1, 1)


def test_observations_past_the_horizon_are_refused_with_the_oldest_accepted_time() -> None:
    store = WindowStore(config())
    now = T0
    inside = batch(now - AFTER + W, np.ones(1))
    store.check_times(inside, now)  # the oldest window still accepted
    with pytest.raises(InvalidArgument) as refused:
        store.check_times(batch(now - AFTER - W, np.ones(1)), now)
    [violation] = refused.value.violations()
    assert violation.field == "time"
    assert "late-data horizon of 120 s" in violation.description
    assert "60-second" in violation.description
    assert f"Unix {store.oldest_accepted_ns(now) / S:.3f}" in violation.description
    # with rollup off the horizon is the retention again
    off = WindowStore(config(rollup_after_ns=0))
    off.check_times(batch(now - AFTER - W, np.ones(1)), now)
    with pytest.raises(InvalidArgument, match="retention of 3600 s"):
        off.check_times(batch(now - 3_600 * S, np.ones(1)), now)


def test_rolled_windows_stay_refused_when_the_clock_steps_back() -> None:
    store = WindowStore(config())
    start = (T0 // R) * R
    fill(store, start, 6)
    store.take_dirty()
    now = start + 6 * W + AFTER
    store.roll_up(now)
    # the clock steps back an hour: the rolled windows must not take data again
    back = now - 3_600 * S + AFTER + R
    with pytest.raises(InvalidArgument):
        store.check_times(batch(start + 5 * W, np.ones(1)), back)
    assert store.oldest_accepted_ns(back) == start + R


def test_a_range_that_reaches_a_rollup_window_merges_all_of_it_and_says_so() -> None:
    store = WindowStore(config())
    start = (T0 // R) * R
    fill(store, start, 12)
    store.take_dirty()
    store.roll_up(start + 12 * W + AFTER)
    assert store.rollup_count == 2
    # ask for one window's worth inside the first rollup window
    [group] = store.summaries(SummaryQuery(start_ns=start + 2 * W, end_ns=start + 3 * W))
    assert (group.start_ns, group.end_ns) == (start, start + R)
    assert group.summary.count == 6 * 20
    # a range ending on the rollup edge does not reach the next one
    [group] = store.summaries(SummaryQuery(start_ns=start, end_ns=start + R))
    assert group.summary.count == 6 * 20
    # a range starting in the second reaches only it
    [group] = store.summaries(SummaryQuery(start_ns=start + R + W, end_ns=start + 2 * R + 5 * W))
    assert (group.start_ns, group.end_ns, group.summary.count) == (start + R, start + 2 * R, 120)


def test_retention_drops_a_rollup_window_once_all_of_it_is_past() -> None:
    store = WindowStore(config(retention_ns=600 * S))
    start = (T0 // R) * R
    fill(store, start, 12)
    store.take_dirty()
    store.roll_up(start + 12 * W + AFTER)
    assert store.rollup_count == 2
    # the first one's first window is past the retention, its last not yet
    now = start + 600 * S + W
    assert store.evict_expired(now) == 0
    assert store.kept_from_id(now) == start // W  # its budgets stay as long
    # all of the first past, and part of the second: only the first goes
    now = start + 600 * S + R + W
    assert store.evict_expired(now) == 1
    assert (store.rollup_count, whole(store).count) == (1, 6 * 20)
    assert store.kept_from_id(now) == (start + R) // W
    # then the second
    now = start + 600 * S + 2 * R
    assert store.evict_expired(now) == 1
    assert (store.series_count, store.window_count) == (0, 0)


def test_restored_windows_past_the_horizon_go_into_rollup_windows() -> None:
    store = WindowStore(config())
    start = (T0 // R) * R
    now = start + 12 * W + AFTER
    store.roll_up(now)  # an empty store: sets the horizon only
    key = SeriesKey("m", ())
    stored = Summary()
    stored.update(np.arange(1.0, 11.0))
    for k in range(6):
        store.restore(key, start // W + k, stored.copy(), start + k * W)
    assert (store.window_count, store.rollup_count) == (1, 1)
    assert whole(store).count == 60
    # a window past the horizon that is held at full width (its newer data not flushed)
    # takes its stored part itself, so the flush writes it whole
    fresh = WindowStore(config())
    fresh.apply(batch(start, np.ones(3)))
    fresh.roll_up(now)  # dirty: stays
    fresh.restore(key, start // W, stored.copy(), start)
    assert (fresh.window_count, fresh.rollup_count) == (1, 0)
    [(_, window_id, summary, _)] = fresh.take_dirty()
    assert (window_id, summary.count) == (start // W, 13)


def test_windows_put_in_whole_are_compacted_and_answer_the_same() -> None:
    """A decoded window's sketch counts in 64 bits (about 4.6x a closed window's memory):
    restored and replaced windows are compacted as closed windows are, and answer as
    the stored ones do."""
    key = SeriesKey("m", ())
    start = (T0 // R) * R
    stored = Summary()
    stored.update(10 ** np.random.default_rng(1).uniform(0, 4, 64))
    assert stored.histogram.positive.counts.dtype == np.uint64
    restored, replaced = WindowStore(config()), WindowStore(config())
    restored.restore(key, start // W, stored.copy(), start)
    assert replaced.replace_many([(key, start // W, stored.copy(), start)])
    for store in (restored, replaced):
        [held] = store._series[key].windows.values()
        assert held.histogram.positive.counts.dtype == np.uint8
        answer = whole(store)
        assert answer.count == 64
        qs = [0.1, 0.5, 0.99]
        assert np.array_equal(answer.quantiles(qs), stored.quantiles(qs))


def test_rollup_is_off_where_the_retention_drops_windows_first() -> None:
    short = config(retention_ns=AFTER)
    assert short.rollup_factor == 0
    # the window settings are not held against a rollup that never happens
    assert config(retention_ns=AFTER, rollup_window_ns=65 * S).rollup_factor == 0
    store = WindowStore(short)
    start = (T0 // R) * R
    fill(store, start, 12)
    store.take_dirty()
    assert store.roll_up(start + 12 * W + AFTER) == 0
    # windows leave one by one at the retention, none kept longer in a rollup window
    assert store.evict_expired(start + AFTER + W) == 2
    assert (store.window_count, store.rollup_count) == (10, 0)
    with pytest.raises(InvalidArgument, match="retention of 120 s"):
        store.check_times(batch(start, np.ones(1)), start + AFTER + W)


def test_rollup_off_keeps_every_window() -> None:
    store = WindowStore(config(rollup_after_ns=0))
    start = (T0 // R) * R
    fill(store, start, 12)
    store.take_dirty()
    assert store.roll_up(start + 3_000 * S) == 0
    assert (store.window_count, store.rollup_count) == (12, 0)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"rollup_window_ns": 65 * S}, "multiple of the window"),
        ({"rollup_window_ns": W}, "larger than it"),
        ({"rollup_after_ns": S}, "at least one window"),
        ({"rollup_after_ns": -1}, "0 \\(never\\) or positive"),
    ],
)
def test_rollup_settings_are_checked(kw: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config(**kw)


@settings(max_examples=60, deadline=None)
@given(
    windows=st.lists(st.integers(0, 47), min_size=1, max_size=30),
    passes=st.lists(st.integers(0, 600), min_size=1, max_size=4),
    lo=st.integers(-2, 50),
    span=st.integers(1, 50),
)
def test_any_range_after_rollup_answers_exactly_the_windows_it_says_it_covers(
    windows: list[int], passes: list[int], lo: int, span: int
) -> None:
    """Whatever was rolled up when, a range's answer is exactly the data of the windows
    in the range it reports, and that range contains every window the query overlaps."""
    start = (T0 // R) * R
    store = WindowStore(config())
    by_window: dict[int, list[float]] = {}
    for k, w in enumerate(windows):
        values = np.full(3, float(k + 1))
        store.apply(batch(start + w * W, values))
        by_window.setdefault(w, []).extend(values.tolist())
    store.take_dirty()
    now = start + 48 * W
    for step in sorted(passes):
        store.roll_up(now + step * S)
    query = SummaryQuery(start_ns=start + lo * W, end_ns=start + (lo + span) * W)
    overlapped = [w for w in by_window if lo <= w < lo + span]
    groups = store.summaries(query)
    if not overlapped and not groups:
        return
    [group] = groups
    first, last = (group.start_ns - start) // W, (group.end_ns - start) // W
    assert all(first <= w < last for w in overlapped)
    expected = [v for w, vs in by_window.items() if first <= w < last for v in vs]
    assert group.summary.count == len(expected)
    assert group.summary.total == pytest.approx(sum(expected))


def test_a_limited_rollup_stops_after_a_series_and_the_next_call_goes_on() -> None:
    store = WindowStore(config())
    start = (T0 // R) * R
    for s in range(5):
        for k in range(6):
            store.apply(
                IngestBatch(SeriesKey("m", (("s", str(s)),)), np.ones(2), None, start + k * W)
            )
    store.take_dirty()
    now = start + 6 * W + AFTER
    # each series has one rollup window (6 windows) due: a limit of 10 stops after two
    assert store.roll_up(now, limit=10) == 12
    assert store.roll_up(now, limit=10) == 12
    assert store.roll_up(now, limit=10) == 6
    assert store.roll_up(now, limit=10) == 0
    assert (store.window_count, store.rollup_count) == (5, 5)


def test_a_limited_rollup_stops_within_a_series_with_many_due() -> None:
    # a restart restores a series' windows at full width: many rollup windows due at once
    store = WindowStore(config())
    start = (T0 // R) * R
    key = SeriesKey("m", ())
    for k in range(60):
        store.apply(IngestBatch(key, np.ones(2), None, start + k * W))
    store.take_dirty()
    now = start + 60 * W + AFTER
    steps = []
    while (step := store.roll_up(now, limit=10)) >= 10:
        steps.append(step)
    steps.append(step)
    assert steps == [12, 12, 12, 12, 12, 0]
    assert (store.rollup_count, whole(store).count) == (10, 120)


@pytest.mark.parametrize(
    ("text", "ns"),
    [("0", 0), ("0s", 0), ("off", 0), ("OFF", 0), ("1h", 3_600 * S), ("90m", 5_400 * S)],
)
def test_the_rollup_flag_reads_zero_or_off_as_never(text: str, ns: int) -> None:
    assert parse_duration_or_zero_ns(text) == ns


@pytest.mark.parametrize("text", ["-1", "soon", "", "1 hour"])
def test_the_rollup_flag_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
        parse_duration_or_zero_ns(text)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"retention_ns": 3_600 * S + 25 * S},
        {"rollup_after_ns": 125 * S},
        {"rollup_after_ns": 0},
        {"retention_ns": 600 * S, "rollup_window_ns": 120 * S},
    ],
)
def test_a_series_never_holds_more_windows_than_the_config_says(kw: dict[str, int]) -> None:
    """A series sending in every window, flushed and maintained after each, for longer
    than the retention: its windows stay within most_windows_per_series, and reach it
    within a few (the bound is what an operator sizes memory by)."""
    cfg = config(**kw)
    store = WindowStore(cfg)
    start = (T0 // R) * R + 3 * S
    most = 0
    for k in range(cfg.retention_ns // W + 3 * R // W):
        now = start + k * W
        store.apply(batch(now, np.ones(1)))
        store.take_dirty()
        most = max(most, store.window_count)
        store.roll_up(now)
        store.evict_expired(now)
    assert most <= cfg.most_windows_per_series
    assert most >= cfg.most_windows_per_series - 3
