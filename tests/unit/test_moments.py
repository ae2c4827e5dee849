"""Unit tests for nethical_grpc.summary.moments.Moments."""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nethical_grpc.summary import Moments
from nethical_grpc.summary import _kernels as kernels

EPS = np.finfo(np.float64).eps


def _datasets() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(20240611)
    return [
        ("normal", rng.normal(3.0, 2.0, 5_000)),
        ("lognormal_heavy", rng.lognormal(0.0, 3.0, 4_097)),
        ("signed_lognormal", rng.lognormal(0.0, 2.0, 3_001) * rng.choice([-1.0, 1.0], 3_001)),
        ("large_offset", 1e9 + rng.normal(0.0, 1e-3, 2_000)),
        ("tiny", rng.normal(0.0, 1e-200, 1_000)),
        ("single", np.array([42.5])),
        ("two", np.array([-1.0, 1.0])),
        ("constant", np.full(1_003, 0.1)),
        ("with_zeros", np.concatenate([np.zeros(50), rng.normal(0.0, 1.0, 77)])),
        ("odd_length_tail", rng.normal(0.0, 1.0, 37)),
    ]


DATASETS = _datasets()


def _check_against_numpy(m: Moments, x: np.ndarray) -> None:
    assert m.count == x.size
    assert m.min == x.min()
    assert m.max == x.max()
    scale = float(np.sum(np.abs(x)))
    assert abs(m.total - math.fsum(x.tolist())) <= 1e-13 * scale + 1e-300
    mag = float(np.max(np.abs(x)))
    assert m.mean == pytest.approx(float(np.mean(x)), rel=1e-12, abs=1e-13 * mag)
    var = float(np.var(x))
    assert m.variance == pytest.approx(var, rel=1e-9, abs=1e-12 * mag * mag)
    assert m.stddev == pytest.approx(math.sqrt(var), rel=1e-9, abs=1e-6 * mag)
    m.validate()


@pytest.mark.parametrize(("name", "x"), DATASETS, ids=[d[0] for d in DATASETS])
def test_from_values_matches_numpy(name: str, x: np.ndarray) -> None:
    _check_against_numpy(Moments.from_values(x), x)


@pytest.mark.parametrize(
    "impl", [kernels.batch_moments_numpy, kernels.batch_moments_numba], ids=["numpy", "numba"]
)
@pytest.mark.parametrize(("name", "x"), DATASETS, ids=[d[0] for d in DATASETS])
def test_both_kernels_match_numpy(impl: object, name: str, x: np.ndarray) -> None:
    t = impl(x)  # type: ignore[operator]
    _check_against_numpy(Moments(*t), x)


def test_constant_data_has_zero_variance_and_exact_mean() -> None:
    x = np.full(999, 0.1)
    m = Moments.from_values(x)
    assert m.mean == 0.1
    assert m.m2 == 0.0
    assert m.min == m.max == 0.1


def test_compensated_sum_kernel_is_exact_under_cancellation() -> None:
    x = np.array([1e100, 1.0, -1e100, 3.0, 1e-20])
    t = kernels.batch_moments_numba(x)
    assert t.sum + t.compensation == 4.0
    assert t.sum == 4.0


def test_merge_sum_is_compensated() -> None:
    parts = [Moments.from_values(np.array([v])) for v in (1e100, 1.0, -1e100, 2.0)]
    merged = Moments.merge_all(parts)
    assert merged.total == 3.0
    assert merged.count == 4


@pytest.mark.parametrize(("name", "x"), DATASETS, ids=[d[0] for d in DATASETS])
def test_merge_of_splits_equals_whole(name: str, x: np.ndarray) -> None:
    rng = np.random.default_rng(7)
    whole = Moments.from_values(x)
    for n_parts in (2, 3, 17):
        cuts = np.sort(rng.integers(0, x.size + 1, n_parts - 1))
        parts = [Moments.from_values(p) for p in np.split(x, cuts)]
        merged = Moments.merge_all(parts)
        assert merged.count == whole.count
        assert merged.min == whole.min
        assert merged.max == whole.max
        mag = float(np.max(np.abs(x)))
        assert merged.total == pytest.approx(whole.total, rel=1e-13, abs=1e-13 * mag * x.size)
        assert merged.mean == pytest.approx(whole.mean, rel=1e-12, abs=1e-13 * mag)
        assert merged.m2 == pytest.approx(whole.m2, rel=1e-9, abs=1e-12 * mag * mag * x.size)
        merged.validate()


def test_merge_returns_new_object_and_is_commutative() -> None:
    rng = np.random.default_rng(3)
    a = Moments.from_values(rng.normal(0, 1, 100))
    b = Moments.from_values(rng.normal(5, 3, 37))
    a0, b0 = a.copy(), b.copy()
    ab = a.merge(b)
    ba = b.merge(a)
    assert ab == ba  # bit-for-bit (canonical operand order)
    assert a == a0
    assert b == b0
    assert ab is not a
    assert ab is not b


def test_empty_is_identity() -> None:
    m = Moments.from_values(np.array([1.0, 2.0, 4.0]))
    assert m.merge(Moments()) == m
    assert Moments().merge(m) == m
    assert Moments().merge(Moments()) == Moments()
    assert Moments.from_values(np.array([])) == Moments()
    assert Moments.merge_all([]) == Moments()
    before = m.copy()
    m.update(np.array([]))
    assert m == before


def test_empty_derived_values() -> None:
    m = Moments()
    assert m.count == 0
    assert m.total == 0.0
    assert math.isnan(m.variance)
    assert math.isnan(m.stddev)
    m.validate()


def test_update_equals_merge() -> None:
    rng = np.random.default_rng(11)
    x, y = rng.normal(0, 1, 500), rng.normal(2, 1, 300)
    m = Moments.from_values(x)
    m.update(y)
    assert m == Moments.from_values(x).merge(Moments.from_values(y))
    assert m.count == 800


def test_self_merge() -> None:
    m = Moments.from_values(np.array([1.0, 3.0]))
    mm = m.merge(m)
    assert mm.count == 4
    assert mm.mean == 2.0
    assert mm.m2 == 4.0
    assert mm.total == 8.0


GOOD = Moments.from_values(np.array([1.0, 2.0, 3.0, 10.0]))


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (replace(GOOD, count=-1), "count"),
        (replace(GOOD, count=2.0), "count"),  # type: ignore[arg-type]
        (replace(GOOD, count=True), "count"),
        (replace(GOOD, m2=-1.0), "m2"),
        (replace(GOOD, min=20.0), r"min .* > max"),
        (replace(GOOD, mean=math.nan), "mean"),
        (replace(GOOD, sum=math.inf), "sum"),
        (replace(GOOD, compensation=math.nan), "compensation"),
        (replace(GOOD, mean=11.0), "mean"),
        (replace(GOOD, mean=-5.0), "mean"),
        (replace(GOOD, m2=1e6), "m2"),
        (replace(GOOD, sum=1e6), "sum"),
        (replace(GOOD, sum="4"), "sum"),  # type: ignore[arg-type]
        (Moments(count=0, min=1.0), "empty"),
        (Moments(count=0, max=1.0), "empty"),
        (Moments(count=0, mean=1.0), "empty"),
        (Moments(count=0, m2=1.0), "empty"),
        (Moments(count=0, sum=1.0), "empty"),
        (Moments(count=1, sum=1.0, min=1.0, max=2.0, mean=1.0), "single value"),
    ],
)
def test_validate_rejects(bad: Moments, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bad.validate()


def test_validate_accepts_good() -> None:
    GOOD.validate()
    Moments().validate()
    Moments.from_values(np.array([-1e150, 1e150])).validate()
    Moments.from_values(np.array([5e-324])).validate()


CANCELLING = [
    [1e100, 1.0, -1e100, 3.0],
    [1e16, 1.0, -1e16],
    [1e16, -1e16, *([1.0] * 1000)],
    # 3e100 rounds: the compiled kernel's errors (~1e84) then swallowed the 1.0 (0.0)
    [1e100, 1e100, 1e100, 1.0, -1e100, -1e100, -1e100],
    [*([1e100] * 40), 1.0, *([-1e100] * 40), *([2.0] * 7)],
]


@pytest.mark.parametrize("values", CANCELLING)
@pytest.mark.parametrize(
    "kernel", [kernels.batch_moments_numpy, kernels.batch_moments_numba], ids=["numpy", "numba"]
)
def test_values_that_cancel_keep_an_exact_sum_and_mean(values: list[float], kernel) -> None:  # type: ignore[no-untyped-def]
    """Both paths give the compensated total and the mean of it (the NumPy path summed
    1e100, 1, -1e100, 3 to 5.25; both gave a mean of 1.5 for a sum of 4)."""
    t = kernel(np.array(values))
    exact = math.fsum(values)
    assert t.sum + t.compensation == exact
    assert t.mean == pytest.approx(exact / len(values), rel=1e-15)


@pytest.mark.parametrize("values", CANCELLING)
def test_merges_of_parts_that_cancel_keep_the_exact_mean(values: list[float]) -> None:
    exact = math.fsum(values) / len(values)
    parts = [Moments.from_values(np.array([v])) for v in values]
    for merged in (
        Moments.merge_all(parts),
        parts[0].merge(Moments.merge_all(parts[1:])),
        Moments.merge_all(parts[:2]).merge(Moments.merge_all(parts[2:])),
    ):
        assert merged.total == math.fsum(values)
        assert merged.mean == pytest.approx(exact, rel=1e-15)


@pytest.mark.parametrize(("base", "spread"), [(1e9, 1e-3), (1e15, 0.5), (-1e12, 3e-4)])
@pytest.mark.parametrize("parts", [2, 10, 50])
def test_merged_spread_keeps_its_digits_however_the_data_is_split(
    base: float, spread: float, parts: int
) -> None:
    """Means rounded to one double made Chan's update lose ~7 digits of the standard
    deviation of values near 1e9 +- 1e-3 (8e-3 of it near 1e15 +- 0.5) once the data was
    merged from parts; the merges now take the means' difference as double-doubles."""
    rng = np.random.default_rng(parts)
    x = base + np.where(rng.random(2_000) < 0.5, -spread, spread)
    n = len(x)
    total = sum(Fraction(v) for v in x.tolist())
    exact = math.sqrt(float(sum((Fraction(v) - total / n) ** 2 for v in x.tolist()) / n))
    pieces = [Moments.from_values(p) for p in np.array_split(x, parts)]
    folded = pieces[0]
    for piece in pieces[1:]:
        folded = folded.merge(piece)
    for merged in (Moments.merge_all(pieces), folded):
        assert merged.stddev == pytest.approx(exact, rel=1e-14)


@given(
    st.lists(st.integers(-(2**50), 2**50), min_size=1, max_size=300),
    st.lists(st.integers(-(2**50), 2**50), min_size=1, max_size=300),
)
@settings(max_examples=200, deadline=None)
def test_both_paths_keep_integer_totals_exact_and_merge_them(a: list[int], b: list[int]) -> None:
    """Integer data whose total the doubles hold: both paths give it exactly, and so does
    the merge of two batches (the NumPy path's compensation once added the rounding of
    every ``x - mean`` to a total that was exact: [0, 0, -56, -18, 0, 348] gave
    273.99999999999994, and two batches summing to zero a mean of 0.039)."""
    xa, xb = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
    for kernel in (kernels.batch_moments_numpy, kernels.batch_moments_numba):
        ta, tb = kernel(xa), kernel(xb)
        if abs(sum(a)) < 2**53:
            assert ta.sum + ta.compensation == sum(a)
        merged = Moments(*ta).merge(Moments(*tb))
        if abs(sum(a) + sum(b)) < 2**53:
            assert merged.total == sum(a) + sum(b)


def test_a_signed_zero_min_or_max_does_not_depend_on_the_merge_order() -> None:
    """-0.0 and 0.0 are equal: the min is -0.0 and the max 0.0 whichever part comes
    first, in a merge of two and of many."""
    low = [Moments.from_values(np.array(v)) for v in ([-0.0, 1.0], [0.0, 1.0], [0.0, 2.0])]
    high = [Moments.from_values(np.array(v)) for v in ([-1.0, -0.0], [-1.0, 0.0], [-2.0, -0.0])]
    for parts, field, sign in ((low, "min", -1.0), (high, "max", 1.0)):
        for order in (parts, parts[::-1]):
            chained = order[0].merge(order[1]).merge(order[2])
            for merged in (chained, Moments.merge_all(order)):
                got = getattr(merged, field)
                assert got == 0.0 and math.copysign(1.0, got) == sign, (field, order)
