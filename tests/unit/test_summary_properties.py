"""Property-based tests (hypothesis) for Summary / ExponentialHistogram / Moments merging."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nethical_grpc.summary import ExponentialHistogram, Moments, Summary, _kernels
from nethical_grpc.summary.exponential_histogram import (
    MIN_MAX_BUCKETS,
    _estimates,
    relative_error_at,
)

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
QS = np.array([0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0])


@st.composite
def generated(draw: st.DrawFn, max_size: int = 1_500) -> np.ndarray:
    """Heavy-tailed lognormal data (sigma up to 3, many decades) with negatives and zeros."""
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(0, max_size))
    mu = draw(st.floats(-60.0, 60.0))
    sigma = draw(st.floats(0.0, 3.0))
    frac_neg = draw(st.sampled_from([0.0, 0.0, 0.3, 0.5, 1.0]))
    frac_zero = draw(st.sampled_from([0.0, 0.0, 0.05, 0.5]))
    rng = np.random.default_rng(seed)
    x = rng.lognormal(mu, sigma, n)
    x[rng.random(n) < frac_neg] *= -1.0
    x[rng.random(n) < frac_zero] = 0.0
    return x


adversarial = hnp.arrays(
    np.float64,
    st.integers(0, 60),
    elements=st.floats(
        -1e150, 1e150, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=64
    ),
)
datasets = st.one_of(generated(), adversarial)
scales = st.sampled_from([-3, 0, 2, 6, 6, 6, 11])
small_max_buckets = st.integers(MIN_MAX_BUCKETS, 64)


def _assert_moments_close(a: Moments, b: Moments, x: np.ndarray) -> None:
    assert a.count == b.count
    assert a.min == b.min
    assert a.max == b.max
    if a.count == 0:
        assert a == b
        return
    mag = float(np.max(np.abs(x)))
    abs_sum = float(np.sum(np.abs(x)))
    assert abs(a.total - b.total) <= 1e-13 * abs_sum
    assert a.mean == pytest.approx(b.mean, rel=1e-11, abs=1e-13 * mag)
    assert a.m2 == pytest.approx(
        b.m2, rel=1e-9, abs=1e-12 * mag * mag * a.count + 1e-300
    )  # subnormal rounding


def _assert_quantiles_within_bound(
    est: np.ndarray,
    x: np.ndarray,
    rel_err: float,
    qs: Sequence[float] | np.ndarray = QS,
    slack: float = 0.0,
) -> None:
    """Each estimate within ``rel_err`` of the exact quantile, plus ``slack``."""
    true = np.quantile(x, qs, method="lower")
    for q, e, t in zip(list(qs), est.tolist(), true.tolist(), strict=True):
        if t == 0.0:
            assert e == 0.0, (q, e, t)
        else:
            assert abs(e - t) <= (rel_err + 1e-12) * abs(t) + slack, (q, e, t, rel_err)


@SETTINGS
@given(a=datasets, b=datasets, c=datasets, scale=scales)
def test_merge_commutative_and_associative(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, scale: int
) -> None:
    sa, sb, sc = (Summary.from_values(v, scale=scale) for v in (a, b, c))
    pooled = np.concatenate([a, b, c])

    ab, ba = sa.merge(sb), sb.merge(sa)
    assert ab.histogram == ba.histogram
    assert ab.moments == ba.moments  # bit-for-bit: operands are put in canonical order

    left = ab.merge(sc)
    right = sa.merge(sb.merge(sc))
    assert left.histogram == right.histogram
    _assert_moments_close(left.moments, right.moments, pooled)

    # Order independence goes further: merging equals summarising the pooled data.
    whole = Summary.from_values(pooled, scale=scale)
    assert left.histogram == whole.histogram
    _assert_moments_close(left.moments, whole.moments, pooled)

    left.validate()
    right.validate()
    assert left.count == pooled.size
    # Operands were not modified.
    assert sa.count == a.size
    assert sb.count == b.size


@SETTINGS
@given(parts=st.lists(datasets, min_size=1, max_size=6))
def test_merged_quantiles_within_relative_error(parts: list[np.ndarray]) -> None:
    merged = Summary.merge_all(Summary.from_values(p) for p in parts)
    pooled = np.concatenate(parts)
    merged.validate()
    if pooled.size == 0:
        assert np.isnan(merged.quantiles(QS)).all()
        return
    rel = merged.relative_error
    _assert_quantiles_within_bound(merged.quantiles(QS), pooled, rel)
    _assert_quantiles_within_bound(merged.histogram.quantiles(QS), pooled, rel)
    assert merged.quantiles(QS).min() >= pooled.min()
    assert merged.quantiles(QS).max() <= pooled.max()


@SETTINGS
@given(parts=st.lists(datasets, min_size=1, max_size=6), q=st.floats(0.0, 1.0))
def test_lowest_and_highest_ranks_are_the_exact_min_and_max(
    parts: list[np.ndarray], q: float
) -> None:
    merged = Summary.merge_all(Summary.from_values(p) for p in parts)
    pooled = np.sort(np.concatenate(parts))
    if pooled.size == 0:
        return
    lowest, highest, at_q = merged.quantiles([0.0, 1.0, q])
    assert lowest == pooled[0] and highest == pooled[-1]
    # np.quantile(method="lower") picks rank floor(q * (n - 1)): exact at either end
    rank = int(np.floor(q * (pooled.size - 1)))
    if rank in (0, pooled.size - 1):
        assert at_q == pooled[rank]
    else:
        _assert_quantiles_within_bound(np.array([at_q]), pooled, merged.relative_error, [q])


@SETTINGS
@given(parts=st.lists(datasets, min_size=1, max_size=5), max_buckets=small_max_buckets)
def test_quantiles_after_forced_downscaling(parts: list[np.ndarray], max_buckets: int) -> None:
    hists = [ExponentialHistogram.from_values(p, max_buckets=max_buckets) for p in parts]
    merged = ExponentialHistogram.merge_all(hists)
    pooled = np.concatenate(parts)
    merged.validate()
    assert merged.count == pooled.size
    for b in (merged.positive, merged.negative):
        rng = b.index_range()
        if rng is not None:
            assert rng[1] - rng[0] + 1 <= max_buckets
    assert merged == ExponentialHistogram.from_values(pooled, max_buckets=max_buckets)
    if pooled.size:
        # Bound at the *downscaled* scale.
        _assert_quantiles_within_bound(merged.quantiles(QS), pooled, merged.relative_error)


@SETTINGS
@given(x=datasets, cuts=st.lists(st.integers(0, 1_500), max_size=8))
def test_split_updates_equal_single_update(x: np.ndarray, cuts: list[int]) -> None:
    s = Summary()
    for chunk in np.split(x, sorted(c for c in cuts if c <= x.size)):
        s.update(chunk)
    whole = Summary.from_values(x)
    assert s.histogram == whole.histogram
    _assert_moments_close(s.moments, whole.moments, x)


@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("max_buckets", [2048, 160, 16])
def test_heavy_tailed_many_decades(sigma: float, max_buckets: int) -> None:
    rng = np.random.default_rng(int(sigma * 100) + max_buckets)
    n = 40_000
    x = rng.lognormal(0.0, sigma, n) * rng.choice([-1.0, 1.0], n)
    x[rng.random(n) < 0.02] = 0.0
    decades = math.log10(np.abs(x[x != 0]).max() / np.abs(x[x != 0]).min())
    assert decades > 3 * sigma  # +-4 sigma in ln space is ~3.5 sigma decades
    parts = np.array_split(x, 13)
    merged = Summary.merge_all(Summary.from_values(p, max_buckets=max_buckets) for p in parts)
    assert merged.count == n
    merged.validate()
    qs = np.linspace(0.0, 1.0, 201)
    true = np.quantile(x, qs, method="lower")
    est = merged.quantiles(qs)
    nz = true != 0
    assert np.all(est[~nz] == 0.0)
    rel = np.abs(est[nz] - true[nz]) / np.abs(true[nz])
    assert rel.max() <= merged.relative_error + 1e-12
    assert merged.mean == pytest.approx(float(np.mean(x)), rel=1e-9)
    assert merged.variance == pytest.approx(float(np.var(x)), rel=1e-9)


def test_nonfinite_batch_rejected_atomically() -> None:
    s = Summary.from_values(np.array([1.0, -2.0, 0.0]))
    before = s.copy()
    with pytest.raises(ValueError, match=r"values\[1\]"):
        s.update(np.array([3.0, np.nan, np.inf]))
    assert s == before
    with pytest.raises(ValueError, match=r"values\[0\]"):
        s.update([-np.inf])
    assert s == before
    s.validate()


def test_summary_properties_and_empty() -> None:
    s = Summary()
    assert s.count == 0
    assert s.total == 0.0
    for value in (s.mean, s.min, s.max, s.variance, s.stddev, s.quantile(0.5)):
        assert math.isnan(value)
    s.validate()
    s.update(np.array([1.0, 2.0, 3.0, 4.0]))
    assert (s.count, s.total, s.mean, s.min, s.max) == (4, 10.0, 2.5, 1.0, 4.0)
    assert s.variance == pytest.approx(1.25)
    assert s.stddev == pytest.approx(math.sqrt(1.25))
    assert s.relative_error == s.histogram.relative_error
    assert Summary.merge_all([]) == Summary()


def test_summary_validate_detects_count_mismatch() -> None:
    s = Summary.from_values(np.array([1.0, 2.0]))
    s.moments = Moments.from_values(np.array([1.0]))
    with pytest.raises(ValueError, match=r"moments\.count"):
        s.validate()


def test_summary_merge_from_self_and_copy() -> None:
    s = Summary.from_values(np.array([1.0, 5.0]))
    c = s.copy()
    s.merge_from(s)
    assert s.count == 4
    assert c.count == 2
    assert s.histogram.count == 4
    with pytest.raises(TypeError):
        s.merge_from(Moments())  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=300))
def test_compact_changes_nothing_observable(values: list[float]) -> None:
    arr = np.asarray(values)
    s = Summary.from_values(arr)
    compacted = s.copy()
    compacted.compact()
    assert compacted == s
    qs = [0.0, 0.25, 0.5, 0.75, 1.0]
    np.testing.assert_array_equal(compacted.quantiles(qs), s.quantiles(qs))
    both = compacted.merge(s)
    assert both == s.merge(s)
    compacted.update(arr)
    assert compacted == s.merge(s)


@SETTINGS
@given(
    values=st.lists(
        st.floats(min_value=5e-324, max_value=1e-305) | st.sampled_from([1.0, 0.0, 1e-300]),
        min_size=1,
        max_size=60,
    ),
    scale=scales,
)
def test_quantiles_of_subnormal_values_stay_within_the_bound(
    values: list[float], scale: int
) -> None:
    """An estimate is a double, and the subnormal ones are the multiples of 2**-1074: a
    bucket there may hold two of them further apart than the bound allows one estimate
    to be from both, so the estimate may be off by up to half that step more."""
    x = np.array(values)
    s = Summary.from_values(x, scale=scale)
    half_step = math.ldexp(1.0, -1075)
    _assert_quantiles_within_bound(s.histogram.quantiles(QS), x, s.relative_error, slack=half_step)
    _assert_quantiles_within_bound(s.quantiles(QS), x, s.relative_error, slack=half_step)


@pytest.mark.parametrize("scale", [-3, 0, 1, 2, 4, 6, 8, 12, 16, 20])
def test_every_small_subnormal_is_estimated_within_the_bound_and_half_a_step(
    scale: int,
) -> None:
    """Each of the 65,535 smallest positive doubles, alone in a summary: the estimate is
    within the bound plus half the step between subnormal doubles, and exact where its
    bucket holds no other double (so no estimate lands in a neighbouring double)."""
    units = np.arange(1, 1 << 16, dtype=np.int64)
    x = units.view(np.float64)
    err = relative_error_at(scale)
    index = _kernels.bucketize_numpy(x, scale, 0.0).positive
    est = _estimates(index, scale, 1.0 + err)
    assert np.all(np.abs(est - x) <= err * x + math.ldexp(1.0, -1075))
    alone = np.ones(units.size, dtype=bool)
    alone[:-1] &= index[:-1] != index[1:]
    alone[1:] &= index[1:] != index[:-1]
    assert alone.any() or scale < 0  # coarse buckets: the smallest share them
    np.testing.assert_array_equal(est[alone], x[alone])
    # the compiled quantile path's estimate is the same double (a sample of the buckets)
    if scale <= _kernels.QUANTILE_TABLE_MAX_SCALE:
        table = _kernels.exp2_table(scale)
        for i in np.unique(index)[::97]:
            want = _estimates(np.array([i]), scale, 1.0 + err)[0]
            assert _kernels._estimate(int(i), scale, table, 1.0 + err) == want
