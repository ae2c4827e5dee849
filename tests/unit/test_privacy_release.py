"""Private release of summaries: noise scale, withheld extremes, suppression, budget, cache."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nethical_grpc import convert
from nethical_grpc.privacy import (
    BucketGrid,
    PrivacyBudgetExhausted,
    PrivacyConfig,
    PrivateReleaser,
    clip_to_bound,
    merged_error,
    noise_cells,
    noise_summary,
    presence_delta,
)
from nethical_grpc.series import GroupSummary, IngestBatch, SeriesKey, SummaryQuery
from nethical_grpc.summary import Summary
from region_node.windows import NANOS, WindowConfig, WindowStore

W = 10 * NANOS
QS = [0.1, 0.25, 0.5, 0.75, 0.9]


def make(**overrides: Any) -> PrivacyConfig:
    fields: dict[str, Any] = {
        "epsilon_per_release": 1.0,
        "window_budget": 10.0,
        "value_bound": 1.0,
        "min_count": 0,
    }
    fields.update(overrides)
    return PrivacyConfig(**fields)


def group(
    summary: Summary, metric: str = "risk", first: int = 100, last: int = 102
) -> GroupSummary:
    return GroupSummary(
        metric=metric,
        labels=(),
        summary=summary,
        start_ns=first * W,
        end_ns=(last + 1) * W,
        data_as_of_ns=last * W + 1_234_567,
    )


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(11).beta(2.0, 5.0, 50_000)


@pytest.fixture(scope="module")
def true_summary(data: np.ndarray) -> Summary:
    return Summary.from_values(data)


# ------------------------------------------------------------------------------- noise scale


@pytest.mark.parametrize("mechanism", ["laplace", "geometric"])
def test_count_and_sum_noise_have_the_configured_scale(
    true_summary: Summary, mechanism: str
) -> None:
    cfg = make(mechanism=mechanism, value_bound=2.0)
    rng = np.random.default_rng(2024)
    draws = 3_000
    counts = np.empty(draws)
    sums = np.empty(draws)
    for i in range(draws):
        out = noise_summary(true_summary, cfg, rng)
        assert out is not None
        counts[i] = out.count
        sums[i] = out.total
    count_err = np.abs(counts - true_summary.count).mean()
    expected_count = 1.0 / cfg.epsilon_count  # Laplace: 4 (rounded); geometric: 3.9
    assert abs(count_err / expected_count - 1.0) < 0.10
    sum_err = np.abs(sums - true_summary.total).mean()
    assert abs(sum_err / (2.0 / cfg.epsilon_sum) - 1.0) < 0.10
    assert abs(float(np.mean(counts - true_summary.count))) < 0.5  # unbiased away from 0


@pytest.mark.parametrize("mechanism", ["laplace", "geometric"])
def test_every_grid_cell_gets_noise_of_scale_one_over_epsilon_histogram(mechanism: str) -> None:
    cfg = make(bucket_threshold=0.0, mechanism=mechanism)
    grid = BucketGrid.from_config(cfg)
    cells = np.full(grid.size, 10_000, dtype=np.int64)  # far from 0: clamping never acts
    rng = np.random.default_rng(8)
    noise = np.concatenate([noise_cells(cells, cfg, rng) - cells for _ in range(80)])
    assert noise.size > 20_000
    b = 1.0 / cfg.epsilon_histogram  # 2
    # E|round(Laplace(2))| is within 2% of 2; the geometric's is 2a / (1 - a^2) = 1.92
    assert abs(float(np.mean(np.abs(noise))) / b - 1.0) < 0.10
    empty = noise_cells(np.zeros(grid.size, dtype=np.int64), make(bucket_threshold=0.0), rng)
    assert 0.25 < float(np.mean(empty > 0)) < 0.55  # empty cells are noised too
    assert int(empty.min()) >= 0


def test_threshold_zeroes_cells_that_hold_only_noise() -> None:
    cfg = make(bucket_threshold=2.0)
    grid = BucketGrid.from_config(cfg)
    rng = np.random.default_rng(9)
    empty = np.concatenate(
        [noise_cells(np.zeros(grid.size, dtype=np.int64), cfg, rng) for _ in range(50)]
    )
    # P(round(Z) >= 2b) for Laplace(b = 2): about 0.5 * exp(-1.75) = 0.087
    assert 0.05 < float(np.mean(empty > 0)) < 0.12
    assert int(empty[empty > 0].min()) >= 4


def test_projection_onto_the_grid_keeps_every_observation() -> None:
    cfg = make(value_bound=8.0, histogram_octaves=10)
    grid = BucketGrid.from_config(cfg)
    values = np.array([0.0, 1e-9, -1e-9, 0.5, -0.5, 7.9, -7.9, 100.0, -100.0, 3.0, 3.0])
    cells = grid.project(Summary.from_values(values).histogram)
    assert int(cells.sum()) == values.size
    assert int(cells[grid.zero_cell]) == 3  # the zero and the two tiny magnitudes
    assert int(cells[grid.cell_of(3.0)]) == 2
    assert int(cells[-1]) == 2  # 7.9 and 100 (past the bound) share the top cell
    assert int(cells[0]) == 2
    back = grid.histogram(cells, 2048)
    assert back.count == values.size
    assert back.quantile(0.7) == pytest.approx(3.0, rel=0.05)


# ------------------------------------------------------------------------------- contents


def test_min_and_max_are_withheld_and_no_raw_value_leaks() -> None:
    secret = np.array([0.123456789, 0.987654321, 0.5555, 0.31415926] * 50)
    s = Summary.from_values(secret)
    cfg = make(nonnegative=True)
    out = noise_summary(s, cfg, np.random.default_rng(1))
    assert out is not None
    assert (out.min, out.max) == (0.0, 1.0)  # the public bounds, whatever the data
    released = {out.min, out.max, *out.quantiles(np.linspace(0, 1, 101)).tolist()}
    assert not released & set(secret.tolist())
    again = noise_summary(Summary.from_values(secret * 0.5), cfg, np.random.default_rng(1))
    assert again is not None
    assert (again.min, again.max) == (0.0, 1.0)
    signed = noise_summary(s, make(value_bound=4.0), np.random.default_rng(2))
    assert signed is not None
    assert (signed.min, signed.max) == (-4.0, 4.0)


def test_released_summary_is_consistent_merges_and_answers_quantiles(
    true_summary: Summary, data: np.ndarray
) -> None:
    cfg = make(nonnegative=True)
    rng = np.random.default_rng(3)
    a = noise_summary(true_summary, cfg, rng)
    b = noise_summary(true_summary, cfg, rng)
    assert a is not None
    assert b is not None
    for s in (a, b):
        s.validate()
        assert s.moments.count == s.histogram.count
    merged = a.merge(b)
    merged.validate()
    assert merged.count == a.count + b.count
    truth = np.quantile(data, QS, method="lower")
    got = merged.quantiles(QS)
    assert np.all(np.abs(got - truth) <= 0.05 * truth + 0.01)
    # merging with a raw (finer) summary works too: downscales to the release grid
    mixed = a.merge(true_summary)
    mixed.validate()
    assert mixed.histogram.scale == cfg.histogram_scale
    assert abs(a.mean - float(data.mean())) < 0.01
    assert a.stddev == pytest.approx(float(data.std()), rel=0.05)


def test_released_summary_survives_the_wire(true_summary: Summary) -> None:
    cfg = make()
    out = noise_summary(true_summary, cfg, np.random.default_rng(4))
    assert out is not None
    msg = convert.group_summary_to_proto(group(out))
    back = convert.group_summary_from_proto(msg, "series[0]")  # the coordinator's validation
    assert back.summary.count == out.count
    assert back.summary.quantile(0.5) == out.quantile(0.5)


def test_a_released_count_of_one_is_a_valid_single_value() -> None:
    cfg = make(min_count=0, epsilon_per_release=50.0, window_budget=50.0)
    out = noise_summary(Summary.from_values([0.3]), cfg, np.random.default_rng(5))
    assert out is not None
    assert out.count == 1
    out.validate()
    assert out.min == out.max == out.mean


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 400),
    bound=st.sampled_from([1.0, 50.0, 1e6]),
    nonneg=st.booleans(),
    mechanism=st.sampled_from(["laplace", "geometric"]),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_release_validates_and_stays_within_public_bounds(
    seed: int, n: int, bound: float, nonneg: bool, mechanism: str
) -> None:
    rng = np.random.default_rng(seed)
    low = 0.0 if nonneg else -bound
    values = rng.uniform(low, bound, n)
    values[rng.random(n) < 0.1] = 0.0
    cfg = make(value_bound=bound, nonnegative=nonneg, mechanism=mechanism, min_count=0)
    out = noise_summary(Summary.from_values(values), cfg, rng)
    assert out is not None
    out.validate()
    assert out.moments.count == out.histogram.count
    back = convert.summary_from_proto(convert.summary_to_proto(out))
    assert back.count == out.count
    if out.count:
        q = out.quantiles([0.0, 0.5, 1.0])
        assert np.all((q >= low) & (q <= bound))
        assert low <= out.mean <= bound
    if out.count > 1:
        assert (out.min, out.max) == (low, bound)


# ------------------------------------------------------------------------------- suppression


def test_small_groups_are_suppressed_on_the_noisy_count() -> None:
    cfg = make(min_count=50)
    rng = np.random.default_rng(6)
    small = Summary.from_values(np.full(3, 0.5))
    assert all(noise_summary(small, cfg, rng) is None for _ in range(500))
    big = Summary.from_values(np.full(500, 0.5))
    assert all(noise_summary(big, cfg, rng) is not None for _ in range(200))
    # at exactly min_count the noisy count decides: released about half the time
    edge = Summary.from_values(np.full(50, 0.5))
    released = sum(noise_summary(edge, cfg, rng) is not None for _ in range(600))
    assert 0.35 < released / 600 < 0.70


@pytest.mark.parametrize("mechanism", ["laplace", "geometric"])
def test_presence_delta_is_the_release_rate_of_a_single_observation(mechanism: str) -> None:
    cfg = make(min_count=6, mechanism=mechanism)
    rng = np.random.default_rng(7)
    one = Summary.from_values([0.5])
    rate = np.mean([noise_summary(one, cfg, rng) is not None for _ in range(6_000)])
    assert abs(rate - presence_delta(cfg)) < 0.02


def test_clip_to_bound_and_bound_violations_are_counted() -> None:
    cfg = make(value_bound=1.0, nonnegative=True)
    assert clip_to_bound([-2.0, 0.5, 3.0], cfg).tolist() == [0.0, 0.5, 1.0]
    rel = PrivateReleaser(cfg, window_ns=W, rng=np.random.default_rng(0))
    out = rel.release(SummaryQuery(), [group(Summary.from_values([0.2, 5.0] * 50))], 1)
    assert rel.bound_violations == 1
    # its sum and mean would tell the value beyond the bound: the group is left out
    assert out.groups == ()
    rel.release(SummaryQuery(metrics=frozenset({"x"})), [group(Summary.from_values([0.2]))], 1)
    assert rel.bound_violations == 1


# ------------------------------------------------------------------------------- releaser


def test_repeated_query_returns_the_same_answer_and_spends_nothing(
    true_summary: Summary,
) -> None:
    rel = PrivateReleaser(make(), window_ns=W, rng=np.random.default_rng(9))
    q = SummaryQuery(start_ns=100 * W, end_ns=103 * W, metrics=frozenset({"risk"}))
    first = rel.release(q, [group(true_summary)], data_version=5)
    key = (SeriesKey("risk", ()), 101)
    assert first.epsilon_spent == 1.0
    assert rel.accountant.spent(key) == pytest.approx(1.0)
    # same windows asked with a different start inside the first window: same question
    q2 = SummaryQuery(start_ns=100 * W + 7, end_ns=103 * W, metrics=frozenset({"risk"}))
    for query in (q, q2, q):
        again = rel.release(query, [group(true_summary)], data_version=5)
        assert again.from_cache
        assert again.epsilon_spent == 0.0
        assert again.groups == first.groups
    assert rel.accountant.spent(key) == pytest.approx(1.0)
    fresh = rel.release(q, [group(true_summary)], data_version=6)  # data changed
    assert not fresh.from_cache
    assert fresh.groups[0].group.summary != first.groups[0].group.summary
    assert rel.accountant.spent(key) == pytest.approx(2.0)


def test_a_prepared_release_spends_nothing_until_committed(true_summary: Summary) -> None:
    """A caller may refuse a prepared release (too large to send): nothing is spent, and
    preparing it again gives the same noise, so refusals cannot average it away."""
    rel = PrivateReleaser(make(), window_ns=W, rng=np.random.default_rng(4))
    q = SummaryQuery(metrics=frozenset({"risk"}))
    key = (SeriesKey("risk", ()), 101)
    pending = rel.prepare(q, [group(true_summary)], data_version=1)
    assert rel.accountant.spent(key) == 0.0
    again = rel.prepare(q, [group(true_summary)], data_version=1)
    assert again.release.groups == pending.release.groups
    assert rel.accountant.spent(key) == 0.0
    sent = rel.commit(again)
    assert sent.epsilon_spent == 1.0 and not sent.from_cache
    assert rel.accountant.spent(key) == pytest.approx(1.0)
    cached = rel.release(q, [group(true_summary)], data_version=1)
    assert cached.from_cache and cached.groups == sent.groups
    assert rel.accountant.spent(key) == pytest.approx(1.0)
    # a spent budget is refused by prepare, before any noise is drawn
    tight = PrivateReleaser(make(window_budget=1.0), window_ns=W, rng=np.random.default_rng(4))
    tight.release(q, [group(true_summary)], data_version=1)
    with pytest.raises(PrivacyBudgetExhausted):
        tight.prepare(q, [group(true_summary)], data_version=2)


def test_releaser_refuses_when_a_covered_window_is_spent_and_keeps_others(
    true_summary: Summary,
) -> None:
    rel = PrivateReleaser(
        make(epsilon_per_release=0.5, window_budget=1.0), window_ns=W, rng=np.random.default_rng(1)
    )
    q = SummaryQuery(metrics=frozenset({"risk"}))
    rel.release(q, [group(true_summary, first=100, last=102)], data_version=1)
    rel.release(q, [group(true_summary, first=100, last=102)], data_version=2)
    with pytest.raises(PrivacyBudgetExhausted) as info:
        rel.release(q, [group(true_summary, first=102, last=104)], data_version=3)
    assert {k[1] for k, _ in info.value.exhausted} == {102}
    assert rel.accountant.spent((SeriesKey("risk", ()), 103)) == 0.0  # nothing charged
    # disjoint windows, and another metric over the same windows, are unaffected
    ok = rel.release(q, [group(true_summary, first=103, last=104)], data_version=4)
    assert len(ok.groups) == 1
    other = rel.release(q, [group(true_summary, metric="latency")], data_version=5)
    assert len(other.groups) == 1


def test_groups_of_one_release_are_charged_once_per_window(true_summary: Summary) -> None:
    rel = PrivateReleaser(make(), window_ns=W, rng=np.random.default_rng(2))
    a = group(true_summary)
    b = GroupSummary("risk", (("decision", "block"),), true_summary, a.start_ns, a.end_ns, 0)
    out = rel.release(SummaryQuery(group_by=("decision",)), [a, b], data_version=1)
    assert len(out.groups) == 2
    assert rel.accountant.spent((SeriesKey("risk", ()), 100)) == pytest.approx(1.0)


def test_series_granularity_charges_what_the_caller_says(true_summary: Summary) -> None:
    rel = PrivateReleaser(make(), window_ns=W, granularity="series", rng=np.random.default_rng(3))
    key = SeriesKey("risk", (("decision", "allow"),))
    with pytest.raises(ValueError, match="series granularity needs covered"):
        rel.release(SummaryQuery(), [group(true_summary)], data_version=1)
    rel.release(SummaryQuery(), [group(true_summary)], 1, covered=[[(key, 100), (key, 101)]])
    assert rel.accountant.spent((key, 100)) == pytest.approx(1.0)
    assert rel.accountant.spent((SeriesKey("risk", ()), 100)) == 0.0


def test_release_reports_expected_errors_and_coarsens_the_data_time(
    true_summary: Summary,
) -> None:
    cfg = make(value_bound=2.0, min_count=20)
    rel = PrivateReleaser(cfg, window_ns=W, rng=np.random.default_rng(4))
    out = rel.release(SummaryQuery(), [group(true_summary)], data_version=1)
    info = out.info
    assert info.noised
    assert info.epsilon == 1.0
    assert info.count_error.expected_abs == pytest.approx(1.0 / cfg.epsilon_count)
    assert info.sum_error.expected_abs == pytest.approx(2.0 / cfg.epsilon_sum)
    assert info.bucket_error.expected_abs == pytest.approx(1.0 / cfg.epsilon_histogram)
    assert info.delta == pytest.approx(presence_delta(cfg))
    released = out.groups[0]
    assert 0.0 < released.mean_error < 0.01
    assert released.group.data_as_of_ns == 103 * W  # the window edge, not the event time


def test_release_with_no_groups_spends_nothing() -> None:
    rel = PrivateReleaser(make(), window_ns=W)
    out = rel.release(SummaryQuery(), [], data_version=1)
    assert out.groups == ()
    assert out.epsilon_spent == 0.0
    assert len(rel.accountant) == 0


def test_cache_is_bounded_and_evicted_answers_are_charged_again(true_summary: Summary) -> None:
    rel = PrivateReleaser(make(), window_ns=W, cache_size=2, rng=np.random.default_rng(5))
    queries = [SummaryQuery(metrics=frozenset({f"m{i}"})) for i in range(3)]
    for q in queries:
        rel.release(q, [group(true_summary)], data_version=1)
    assert rel.accountant.spent((SeriesKey("risk", ()), 100)) == pytest.approx(3.0)
    assert rel.release(queries[2], [group(true_summary)], 1).from_cache
    assert not rel.release(queries[0], [group(true_summary)], 1).from_cache  # evicted
    assert rel.accountant.spent((SeriesKey("risk", ()), 100)) == pytest.approx(4.0)


def test_releaser_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="window_ns"):
        PrivateReleaser(make(), window_ns=0)
    with pytest.raises(ValueError, match="cache_size"):
        PrivateReleaser(make(), window_ns=W, cache_size=0)
    with pytest.raises(ValueError, match="granularity"):
        PrivateReleaser(make(), window_ns=W, granularity="agent")  # type: ignore[arg-type]


def test_end_to_end_from_the_window_store() -> None:
    now = 1_000 * W
    store = WindowStore(WindowConfig(window_ns=W), clock=lambda: now)
    rng = np.random.default_rng(12)
    cfg = make(value_bound=1.0, nonnegative=True, min_count=30)
    for decision, n in (("allow", 5_000), ("block", 4)):
        values = clip_to_bound(rng.uniform(0, 1.5, n), cfg)
        store.apply(
            IngestBatch(
                key=SeriesKey("risk", (("decision", decision),)),
                values=values,
                timestamps_ns=np.full(n, now - W, dtype=np.int64),
                time_ns=now,
            )
        )
    query = SummaryQuery(metrics=frozenset({"risk"}), group_by=("decision",))
    rel = PrivateReleaser(cfg, window_ns=W, rng=rng)
    out = rel.release(query, store.summaries(query), store.version)
    assert [g.group.labels for g in out.groups] == [(("decision", "allow"),)]  # block: too few
    assert rel.bound_violations == 0  # clipped at ingest
    s = out.groups[0].group.summary
    assert abs(s.count - 5_000) < 60
    assert math.isclose(s.max, 1.0)


def test_merged_error_of_regions_matches_the_spread_of_merged_releases(
    true_summary: Summary,
) -> None:
    cfg = make(value_bound=1.0)
    rng = np.random.default_rng(13)
    info = PrivateReleaser(cfg, window_ns=W).info
    merged_counts = []
    merged_sums = []
    for _ in range(1_500):
        parts = [noise_summary(true_summary, cfg, rng) for _ in range(3)]  # three regions
        merged = Summary.merge_all([p for p in parts if p is not None])
        merged_counts.append(merged.count)
        merged_sums.append(merged.total)
    err = merged_error([info] * 3, count=3 * true_summary.count, mean=true_summary.mean)
    count_sd = float(np.std(np.asarray(merged_counts) - 3 * true_summary.count))
    sum_sd = float(np.std(np.asarray(merged_sums) - 3 * true_summary.total))
    assert abs(count_sd / err.count_error.stddev - 1.0) < 0.10
    assert abs(sum_sd / err.sum_error.stddev - 1.0) < 0.10
    assert err.mean_error < info.sum_error.expected_abs / true_summary.count
    assert merged_error([], 10, 0.5).mean_error == 0.0
