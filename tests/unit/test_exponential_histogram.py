"""Unit tests for nethical_grpc.summary.exponential_histogram."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nethical_grpc.summary import (
    DEFAULT_MAX_BUCKETS,
    DEFAULT_SCALE,
    MAX_SCALE,
    MIN_SCALE,
    Buckets,
    ExponentialHistogram,
)
from nethical_grpc.summary import _kernels as kernels
from nethical_grpc.summary.exponential_histogram import (
    MAX_MAX_BUCKETS,
    MIN_MAX_BUCKETS,
    bucket_index,
    index_limits,
    relative_error_at,
)

DBL_MAX = float(np.finfo(np.float64).max)
ALL_SCALES = list(range(MIN_SCALE, MAX_SCALE + 1))
BUCKETIZERS = [kernels.bucketize_numpy, kernels.bucketize_numba]


def _indices(values: list[float] | np.ndarray, scale: int, impl: object) -> np.ndarray:
    r = impl(np.asarray(values, dtype=np.float64), scale, 0.0)  # type: ignore[operator]
    assert r.negative.size == 0
    out: np.ndarray = r.positive
    return out


# ------------------------------------------------------------------------------- indices


@pytest.mark.parametrize("impl", BUCKETIZERS, ids=["numpy", "numba"])
def test_index_boundaries_scale0(impl: object) -> None:
    # Bucket i covers (2**i, 2**(i+1)] at scale 0.
    got = _indices([2.0, 2.0000001, 1.0, 4.0, 3.0, 0.5, 1.5, np.nextafter(2.0, 0.0)], 0, impl)
    assert got.tolist() == [0, 1, -1, 1, 1, -2, 0, 0]


@pytest.mark.parametrize("impl", BUCKETIZERS, ids=["numpy", "numba"])
@pytest.mark.parametrize("scale", ALL_SCALES)
def test_exact_powers_of_two(impl: object, scale: int) -> None:
    # 2**k lies exactly on a boundary: index = ceil(k * 2**scale) - 1 (upper-inclusive buckets).
    ks = np.arange(-1074, 1024)
    values = np.ldexp(1.0, ks)
    expected = [math.ceil(k * 2.0**scale) - 1 for k in ks.tolist()]
    assert _indices(values, scale, impl).tolist() == expected
    # The next double up lands in the following bucket (normal numbers only: above a deep
    # subnormal the next double is a large relative step away).
    normal = ks >= -1022
    above = np.nextafter(values[normal], np.inf)
    expected_above = [math.floor(k * 2.0**scale) for k in ks[normal].tolist()]
    assert _indices(above, scale, impl).tolist() == expected_above


@pytest.mark.parametrize("impl", BUCKETIZERS, ids=["numpy", "numba"])
@pytest.mark.parametrize("scale", [1, 2, 3, 6, 9, 14, 20])
def test_table_boundaries_are_upper_inclusive(impl: object, scale: int) -> None:
    rng = np.random.default_rng(scale)
    js = rng.integers(1, 1 << scale, 200)
    exps = rng.integers(-1000, 1000, 200)
    bounds = np.array(
        [math.ldexp(math.exp2(int(j) / 2**scale), int(e)) for j, e in zip(js, exps, strict=True)]
    )
    base_idx = (exps << scale) + js
    assert _indices(bounds, scale, impl).tolist() == (base_idx - 1).tolist()
    assert _indices(np.nextafter(bounds, np.inf), scale, impl).tolist() == base_idx.tolist()
    assert _indices(np.nextafter(bounds, 0.0), scale, impl).tolist() == (base_idx - 1).tolist()


@pytest.mark.parametrize("scale", [-10, -4, -1, 0, 1, 4, 6, 10, 20])
def test_indices_match_log_definition_away_from_boundaries(scale: int) -> None:
    rng = np.random.default_rng(100 + scale)
    x = np.exp(rng.uniform(-690, 690, 20_000))
    t = np.log2(x) * 2.0**scale
    far = np.abs(t - np.round(t)) > 1e-5  # |error of t| <= 2**20 * 1e3 * 1e-16 = 1e-7
    expected = np.ceil(t[far]).astype(np.int64) - 1
    got = kernels.bucketize_numpy(x[far], scale, 0.0).positive
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("scale", [-3, 0, 2, 6, 11])
def test_subnormals_are_bucketed_consistently(scale: int) -> None:
    x = np.array([5e-324, 1e-320, 3.3e-310, 2.2250738585072014e-308, 2.225073858507201e-308])
    t = np.array([math.log2(v) for v in x.tolist()])  # math.log2 is exact enough for these
    got = kernels.bucketize_numpy(x, scale, 0.0).positive
    got_nb = kernels.bucketize_numba(x, scale, 0.0).positive
    np.testing.assert_array_equal(got, got_nb)
    for g, v, tt in zip(got.tolist(), x.tolist(), t.tolist(), strict=True):
        if float(tt).is_integer():
            assert g == math.ceil(tt * 2.0**scale) - 1, v
        else:
            assert abs(g - (math.ceil(tt * 2.0**scale) - 1)) <= 1, v


def test_downscaled_index_equals_index_at_coarser_scale() -> None:
    rng = np.random.default_rng(5)
    x = np.concatenate([np.exp(rng.uniform(-700, 700, 5_000)), [5e-324, DBL_MAX, 1.0, 2.0]])
    fine = kernels.bucketize_numpy(x, MAX_SCALE, 0.0).positive
    for scale in range(MIN_SCALE, MAX_SCALE):
        coarse = kernels.bucketize_numpy(x, scale, 0.0).positive
        np.testing.assert_array_equal(coarse, fine >> (MAX_SCALE - scale))


def test_index_limits_fit_int32() -> None:
    for scale in ALL_SCALES:
        lo, hi = index_limits(scale)
        assert -(2**31) <= lo < hi <= 2**31 - 1
        assert bucket_index(5e-324, scale) == lo
        assert bucket_index(-DBL_MAX, scale) == hi


def test_bucket_index_rejects_zero_and_nonfinite() -> None:
    for bad in (0.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="finite non-zero"):
            bucket_index(bad, 0)


# ------------------------------------------------------------------------------- basics


def test_defaults_and_relative_error() -> None:
    h = ExponentialHistogram()
    assert h.scale == DEFAULT_SCALE == 6
    assert h.max_buckets == DEFAULT_MAX_BUCKETS == 2048
    assert h.count == 0
    base = 2.0 ** (2.0**-6)
    assert h.relative_error == pytest.approx((base - 1) / (base + 1), rel=1e-12)
    assert h.relative_error == pytest.approx(0.0054, abs=1e-4)
    assert relative_error_at(-10) == pytest.approx(1.0)
    assert 0 < relative_error_at(20) < 1e-6


def test_update_counts_and_buckets() -> None:
    h = ExponentialHistogram(scale=0)
    h.update(np.array([1.0, 1.5, 2.0, 3.0, 4.0, -1.0, -3.0, 0.0, -0.0]))
    assert h.count == 9
    assert h.zero_count == 2
    assert h.positive == Buckets(-1, np.array([1, 2, 2], dtype=np.uint64))
    assert h.negative == Buckets(-1, np.array([1, 0, 1], dtype=np.uint64))
    h.validate()


def test_zero_threshold() -> None:
    h = ExponentialHistogram(scale=2, zero_threshold=0.5)
    h.update(np.array([0.5, -0.5, 0.25, 0.6, -0.7, 1e-300]))
    assert h.zero_count == 4
    assert h.positive.total == 1
    assert h.negative.total == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_update_rejects_nonfinite_batch_atomically(bad: float) -> None:
    h = ExponentialHistogram.from_values(np.array([1.0, 2.0, -3.0]))
    before = h.copy()
    with pytest.raises(ValueError, match=r"values\[2\]"):
        h.update(np.array([5.0, 6.0, bad, 7.0]))
    assert h == before
    assert h.count == 3


def test_empty_update_is_noop() -> None:
    h = ExponentialHistogram()
    h.update(np.array([], dtype=np.float64))
    h.update([])
    assert h == ExponentialHistogram()
    assert h.count == 0


def test_copy_is_independent() -> None:
    h = ExponentialHistogram.from_values(np.array([1.0, 2.0, 3.0]))
    c = h.copy()
    c.update(np.array([1.0, 2.0, 3.0]))
    assert h.count == 3
    assert c.count == 6
    assert h != c


def test_steady_state_updates_match_single_batch() -> None:
    rng = np.random.default_rng(9)
    x = rng.lognormal(0, 1.5, 30_000) * rng.choice([-1.0, 1.0, 0.0], 30_000)
    h = ExponentialHistogram()
    for chunk in np.array_split(x, 30):
        h.update(chunk)
    assert h == ExponentialHistogram.from_values(x)
    assert h.count == x.size


# ------------------------------------------------------------------------------- downscale


def test_downscale_preserves_counts_and_maps_indices() -> None:
    rng = np.random.default_rng(1)
    x = rng.lognormal(0, 2, 5_000) * rng.choice([-1.0, 1.0], 5_000)
    wide = 1 << 14
    h = ExponentialHistogram.from_values(x, scale=8, max_buckets=wide)
    assert h.scale == 8
    for k in (1, 3, 7):
        d = h.copy()
        d.downscale(k)
        assert d.scale == 8 - k
        assert d.count == h.count
        assert d.positive.total == h.positive.total
        assert d.negative.total == h.negative.total
        assert d == ExponentialHistogram.from_values(x, scale=8 - k, max_buckets=wide)
    d = h.copy()
    d.downscale(0)
    assert d == h


def test_downscale_limits() -> None:
    h = ExponentialHistogram(scale=MIN_SCALE + 2)
    with pytest.raises(ValueError, match="below"):
        h.downscale(3)
    with pytest.raises(ValueError, match="non-negative"):
        h.downscale(-1)


@pytest.mark.parametrize("max_buckets", [MIN_MAX_BUCKETS, 5, 8, 33, 160])
def test_overflow_downscales_just_enough(max_buckets: int) -> None:
    rng = np.random.default_rng(max_buckets)
    x = rng.lognormal(0, 3, 20_000) * rng.choice([-1.0, 1.0, 0.0], 20_000)
    h = ExponentialHistogram.from_values(x, scale=DEFAULT_SCALE, max_buckets=max_buckets)
    h.validate()
    assert h.count == x.size
    for b in (h.positive, h.negative):
        lo, hi = b.index_range() or (0, -1)
        assert hi - lo + 1 <= max_buckets
    # One scale finer would not fit (so the downscale was minimal).
    finer = h.scale + 1
    r = kernels.bucketize_numpy(x, finer, 0.0)
    spans = [r.pos_max - r.pos_min + 1, r.neg_max - r.neg_min + 1]
    assert max(spans) > max_buckets
    assert h == ExponentialHistogram.from_values(x, scale=h.scale, max_buckets=max_buckets)


def test_full_double_range_fits_min_buckets() -> None:
    x = np.array([5e-324, 1e-300, 1.0, 1e300, DBL_MAX, -5e-324, -DBL_MAX])
    h = ExponentialHistogram.from_values(x, max_buckets=MIN_MAX_BUCKETS)
    h.validate()
    assert h.count == x.size
    assert h.scale >= MIN_SCALE


def test_incremental_overflow_downscale() -> None:
    h = ExponentialHistogram(max_buckets=16)
    values = [1.0, 1.01, 1.02, 2.0, 10.0, 1e3, 1e9, 1e-9]
    for v in values:
        h.update(np.array([v]))
        h.validate()
    assert h.count == len(values)
    assert h == ExponentialHistogram.from_values(np.array(values), max_buckets=16)


# ------------------------------------------------------------------------------- merge


def test_merge_different_scales() -> None:
    rng = np.random.default_rng(2)
    a = rng.lognormal(0, 0.05, 1_000)  # narrow: stays at scale 6
    b = rng.lognormal(0, 1, 1_000)
    ha = ExponentialHistogram.from_values(a)
    hb = ExponentialHistogram.from_values(b, scale=2)
    assert ha.scale == 6
    merged = ha.merge(hb)
    assert merged.scale == 2
    assert merged.count == 2_000
    assert merged == ExponentialHistogram.from_values(np.concatenate([a, b]), scale=2)
    assert merged == hb.merge(ha)
    assert ha.scale == 6  # operands untouched
    assert ha.count == 1_000


def test_merge_downscales_when_union_overflows() -> None:
    ha = ExponentialHistogram.from_values(np.array([1.0, 1.01]), max_buckets=8)
    hb = ExponentialHistogram.from_values(np.array([1e6, 1.01e6]), max_buckets=8)
    assert ha.scale == hb.scale == DEFAULT_SCALE
    m = ha.merge(hb)
    m.validate()
    assert m.count == 4
    lo, hi = m.positive.index_range() or (0, -1)
    assert hi - lo + 1 <= 8
    assert m.scale < DEFAULT_SCALE
    pooled = np.array([1.0, 1.01, 1e6, 1.01e6])
    assert m == ExponentialHistogram.from_values(pooled, max_buckets=8)


def test_merge_max_buckets_takes_max() -> None:
    ha = ExponentialHistogram(max_buckets=16)
    hb = ExponentialHistogram(max_buckets=64)
    assert ha.merge(hb).max_buckets == 64
    assert hb.merge(ha).max_buckets == 64


def test_merge_with_empty_and_self() -> None:
    h = ExponentialHistogram.from_values(np.array([-2.0, 0.0, 3.0, 3.0]))
    assert h.merge(ExponentialHistogram()) == h
    assert ExponentialHistogram().merge(h) == h
    hh = h.merge(h)
    assert hh.count == 8
    assert hh.zero_count == 2
    h.merge_from(h)
    assert h == hh


def test_merge_zero_threshold_moves_small_buckets() -> None:
    ha = ExponentialHistogram.from_values(np.array([1e-3, -2e-3, 0.5, 10.0]), scale=4)
    hb = ExponentialHistogram.from_values(np.array([0.0, 0.02]), scale=4, zero_threshold=0.01)
    m = ha.merge(hb)
    assert m.zero_threshold == 0.01
    assert m.count == 6
    assert m.zero_count == 3  # 0.0, 1e-3, -2e-3
    assert m.negative.total == 0
    assert m.positive.total == 3
    m.validate()


def test_merge_type_error() -> None:
    with pytest.raises(TypeError):
        ExponentialHistogram().merge_from(object())  # type: ignore[arg-type]


def test_merge_all() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(0, 10, 3_000)
    parts = [ExponentialHistogram.from_values(p) for p in np.array_split(x, 7)]
    assert ExponentialHistogram.merge_all(parts) == ExponentialHistogram.from_values(x)
    assert ExponentialHistogram.merge_all([]) == ExponentialHistogram()


# ------------------------------------------------------------------------------- quantiles


def test_quantiles_negatives_zeros_positives() -> None:
    x = np.array([-4.0, -1.0, 0.0, 0.0, 1.0, 4.0, 100.0])
    h = ExponentialHistogram.from_values(x)
    qs = np.linspace(0, 1, 41)
    est = h.quantiles(qs)
    true = np.quantile(x, qs, method="lower")
    zero = true == 0
    assert np.all(est[zero] == 0.0)
    rel = np.abs(est[~zero] - true[~zero]) / np.abs(true[~zero])
    assert np.all(rel <= h.relative_error * (1 + 1e-9))
    assert h.quantile(0.5) == 0.0
    assert h.quantile(0.0) < 0 < h.quantile(1.0)
    np.testing.assert_array_equal(est, [h.quantile(float(q)) for q in qs])


def test_quantile_estimate_is_bucket_harmonic_point() -> None:
    h = ExponentialHistogram.from_values(np.array([3.0]), scale=0)  # bucket (2, 4]
    assert h.quantile(0.5) == pytest.approx(2 * 2 * 4 / (2 + 4), rel=1e-15)
    h = ExponentialHistogram.from_values(np.array([-3.0]), scale=0)
    assert h.quantile(0.5) == pytest.approx(-8 / 3, rel=1e-15)


def test_quantile_of_extreme_values() -> None:
    x = np.array([DBL_MAX, 1e-300, 5e-324])
    for scale in (MIN_SCALE, -3, 0, 6, MAX_SCALE):
        h = ExponentialHistogram.from_values(x, scale=scale)
        top = h.quantile(1.0)
        assert math.isfinite(top)
        assert abs(top - DBL_MAX) <= h.relative_error * DBL_MAX * (1 + 1e-9)


def test_quantile_errors_and_empty() -> None:
    h = ExponentialHistogram()
    assert math.isnan(h.quantile(0.5))
    assert np.isnan(h.quantiles([0.1, 0.9])).all()
    h.update(np.array([1.0]))
    for bad in (-0.1, 1.1, math.nan):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            h.quantile(bad)


# ------------------------------------------------------------------------------- validate


def _valid() -> ExponentialHistogram:
    return ExponentialHistogram.from_values(np.array([-3.0, 0.0, 1.0, 2.0, 5.0]), scale=3)


def test_validate_accepts_valid() -> None:
    _valid().validate()
    ExponentialHistogram().validate()


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("scale", MAX_SCALE + 1, "scale"),
        ("scale", MIN_SCALE - 1, "scale"),
        ("scale", 2.0, "scale"),
        ("max_buckets", MIN_MAX_BUCKETS - 1, "max_buckets"),
        ("max_buckets", MAX_MAX_BUCKETS + 1, "max_buckets"),  # no summary message holds it
        ("zero_threshold", -1.0, "zero_threshold"),
        ("zero_threshold", math.nan, "zero_threshold"),
        ("zero_count", -1, "zero_count"),
        ("zero_count", 1.5, "zero_count"),
        ("positive", Buckets(0, np.array([[1, 2]], dtype=np.uint64)), "1-D"),
        ("positive", Buckets(0, np.array([1.0, 2.0])), "integer dtype"),
        ("positive", Buckets(0, np.array([1, -2], dtype=np.int64)), "non-negative"),
        ("positive", Buckets(0, [1, 2]), "numpy array"),  # type: ignore[arg-type]
        ("positive", Buckets(1.5, np.array([1], dtype=np.uint64)), "offset"),  # type: ignore[arg-type]
        ("negative", Buckets(0, np.ones(3000, dtype=np.uint64)), "exceeds max_buckets"),
        ("negative", Buckets(2**31 - 2, np.ones(4, dtype=np.uint64)), "int32"),
        ("positive", Buckets(2**30, np.ones(4, dtype=np.uint64)), "outside the range"),
        ("positive", Buckets(0, np.array([2**63, 2**63], dtype=np.uint64)), "overflow"),
        ("positive", "nope", "Buckets"),
    ],
)
def test_validate_rejects(field: str, value: object, match: str) -> None:
    h = _valid()
    setattr(h, field, value)
    with pytest.raises(ValueError, match=match):
        h.validate()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale": 21}, "scale"),
        ({"scale": True}, "scale"),
        ({"max_buckets": 3}, "max_buckets"),
        ({"zero_threshold": -0.5}, "zero_threshold"),
        ({"zero_threshold": math.inf}, "zero_threshold"),
    ],
)
def test_constructor_rejects(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ExponentialHistogram(**kwargs)  # type: ignore[arg-type]


def test_from_parts_normalises() -> None:
    h = ExponentialHistogram.from_parts(
        scale=3,
        zero_count=2,
        positive=Buckets(5, np.array([0, 0, 4, 0, 1, 0], dtype=np.int64)),
        negative=Buckets(-2, np.array([], dtype=np.uint64)),
    )
    assert h.positive.offset == 7
    assert h.positive.counts.dtype == np.uint64
    assert h.positive.counts.tolist() == [4, 0, 1]
    assert h.count == 7
    h.update(np.array([1.0]))
    assert h.count == 8
    with pytest.raises(ValueError, match="non-negative"):
        ExponentialHistogram.from_parts(
            scale=3,
            zero_count=0,
            positive=Buckets(0, np.array([-1], dtype=np.int64)),
            negative=Buckets(),
        )


def test_read_only_counts_are_not_written() -> None:
    counts = np.array([1, 2, 3], dtype=np.uint64)
    counts.setflags(write=False)
    h = ExponentialHistogram(scale=0)
    h.positive = Buckets(0, counts)
    h.validate()
    h.update(np.array([1.5, 3.0]))  # indices 0 and 1
    assert counts.tolist() == [1, 2, 3]
    assert h.positive.counts.tolist() == [2, 3, 3]


def test_buckets_equality_ignores_padding() -> None:
    a = Buckets(0, np.array([0, 1, 0, 2, 0], dtype=np.uint64))
    b = Buckets(1, np.array([1, 0, 2], dtype=np.uint64))
    assert a == b
    assert a.trimmed().offset == 1
    assert Buckets(3, np.zeros(4, dtype=np.uint64)) == Buckets()
    assert a != Buckets(1, np.array([1, 0, 3], dtype=np.uint64))
    assert a.total == 3
    assert a.index_range() == (1, 3)
    assert Buckets().index_range() is None
