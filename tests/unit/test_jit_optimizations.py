"""``nethical_grpc.jit_optimizations``: Numba and NumPy paths agree, and both are right.

Parity is exact (bit for bit) for the risk score, statistics, outlier masks, n-gram
counts and moving average, which use the same fixed reduction order / order statistics on
both paths; the similarity and decay kernels agree to ``rtol=1e-12`` (the older moving
average tests still allow ``1e-9`` of the data scale; the newer ones check bit parity).
When JIT is unavailable (``NETHICAL_DISABLE_JIT=1``) the ``*_numba`` implementations run
as plain Python loops, so the same tests then check the loop formulation against NumPy.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nethical_grpc import jit_optimizations as jo

REPO_ROOT = Path(__file__).resolve().parents[2]
#: "Large" arrays: 1e5 with JIT; smaller when the Numba implementations are Python loops.
LARGE = 100_000 if jo.is_jit_available() else 5_000
HYP = settings(deadline=None, max_examples=60)
if not jo.is_jit_available():
    # The ``*_numba`` implementations then run as Python loops over NumPy scalars, which warn
    # on inf/NaN arithmetic where compiled code is silent; results are still compared.
    pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

_rng = np.random.default_rng(2024)


def _with_nans(x: np.ndarray, every: int) -> np.ndarray:
    y = x.copy()
    y[::every] = np.nan
    return y


VALUES: dict[str, np.ndarray] = {
    "empty": np.array([], dtype=np.float64),
    "single": np.array([3.5]),
    "single_nan": np.array([np.nan]),
    "all_nan": np.full(5, np.nan),
    "two": np.array([1.0, -2.0]),
    "negatives": -_rng.lognormal(0.0, 1.0, 257),
    "mixed_sign": _rng.normal(0.0, 10.0, 1_001),
    "with_nans": _with_nans(_rng.normal(5.0, 2.0, 999), 7),
    "constant": np.full(300, 2.25),
    "duplicates": np.repeat(_rng.normal(size=9), 70),
    "zeros_signed": np.array([0.0, -0.0] * 300 + [1.0]),
    "heavy_tail": _rng.lognormal(0.0, 25.0, 3_000),
    "integers": _rng.integers(-3, 4, 2_001).astype(np.float64),
    "large": _with_nans(_rng.normal(100.0, 15.0, LARGE), 997),
}
VALUE_IDS = list(VALUES)

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
with_nan = st.one_of(finite, st.just(math.nan))
float_arrays = hnp.arrays(np.float64, st.integers(0, 300), elements=with_nan)
finite_arrays = hnp.arrays(np.float64, st.integers(0, 300), elements=finite)


def impls(name: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    return jo.IMPLEMENTATIONS[name]


def both(name: str, *args: Any) -> tuple[Any, Any]:
    numba_impl, numpy_impl = impls(name)
    return numba_impl(*args), numpy_impl(*args)


def same_floats(a: Any, b: Any) -> bool:
    """Bit-level equality up to the sign of zero, NaN equal to NaN."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    return x.shape == y.shape and bool(np.all((x == y) | (np.isnan(x) & np.isnan(y))))


def scale_of(x: np.ndarray) -> float:
    f = x[np.isfinite(x)]
    return float(np.max(np.abs(f))) if f.size else 1.0


# --------------------------------------------------------------------------------------------
# Module wiring
# --------------------------------------------------------------------------------------------


def test_registry_and_live_choice() -> None:
    public = {n for n in jo.__all__ if n.endswith(("_jit", "_batch"))} - {"is_jit_available"}
    assert set(jo.IMPLEMENTATIONS) == public
    expected = "numba" if jo.is_jit_available() else "numpy"
    assert expected == jo.BACKEND
    for name, live in jo.LIVE.items():
        assert live == ("numpy" if name == "matrix_multiply_jit" else expected)


def test_warmup_runs() -> None:
    jo.warmup()


# --------------------------------------------------------------------------------------------
# Risk score
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", VALUE_IDS)
def test_risk_parity_cases(case: str) -> None:
    x = VALUES[case]
    sev = np.abs(x) % 6.0
    conf = np.clip(np.abs(np.sin(x)), 0.0, 1.0)
    a, b = both("calculate_risk_score_jit", sev, conf)
    assert same_floats(a, b)
    assert 0.0 <= a <= 1.0


@HYP
@given(st.integers(0, 200).flatmap(lambda n: st.tuples(*(2 * [hnp.arrays(np.float64, n)]))))
def test_risk_parity_random(pair: tuple[np.ndarray, np.ndarray]) -> None:
    sev, conf = pair  # arbitrary doubles: NaN, inf, huge, negative
    a, b = both("calculate_risk_score_jit", sev, conf)
    assert same_floats(a, b)
    assert 0.0 <= a <= 1.0


def test_risk_values() -> None:
    f = jo.calculate_risk_score_jit
    assert f([], []) == 0.0
    assert f([5.0], [1.0]) == 1.0
    assert f([2.5], [0.5]) == pytest.approx(0.25)
    assert f([5.0, 5.0], [0.5, 0.5]) == pytest.approx(0.75)
    assert f([10.0, -3.0], [2.0, 0.7]) == 1.0  # clipped to the scale
    assert f([np.nan, 5.0, np.inf], [1.0, 0.5, 1.0]) == pytest.approx(0.5)
    assert f([np.nan], [np.nan]) == 0.0
    assert f(4.0, 0.5) == pytest.approx(0.4)  # scalars count as length 1


@HYP
@given(
    st.lists(st.tuples(st.floats(0, 6), st.floats(0, 1)), min_size=1, max_size=50),
    st.data(),
)
def test_risk_monotone_and_bounded(pairs: list[tuple[float, float]], data: st.DataObject) -> None:
    sev = np.array([p[0] for p in pairs])
    conf = np.array([p[1] for p in pairs])
    base = jo.calculate_risk_score_jit(sev, conf)
    assert 0.0 <= base <= 1.0
    i = data.draw(st.integers(0, len(pairs) - 1))
    bump = data.draw(st.floats(0, 2))
    sev2 = sev.copy()
    sev2[i] += bump
    conf2 = conf.copy()
    conf2[i] = min(conf2[i] + bump, 1.0)
    assert jo.calculate_risk_score_jit(sev2, conf) >= base
    assert jo.calculate_risk_score_jit(sev, conf2) >= base
    # adding a finding never lowers the risk
    assert jo.calculate_risk_score_jit(np.append(sev, 3.0), np.append(conf, 0.5)) >= base


def test_risk_errors() -> None:
    with pytest.raises(ValueError, match="same length"):
        jo.calculate_risk_score_jit([1.0, 2.0], [0.5])
    with pytest.raises(ValueError, match="1-D"):
        jo.calculate_risk_score_jit([[1.0]], [[0.5]])


# --------------------------------------------------------------------------------------------
# Temporal decay
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", VALUE_IDS)
def test_decay_parity_cases(case: str) -> None:
    s = VALUES[case]
    ages = np.abs(np.cos(np.arange(s.shape[0]))) * 1e5 - 10.0  # includes negative ages
    a, b = both("calculate_temporal_decay_jit", s, ages, 3_600.0)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=0.0)


@HYP
@given(float_arrays, st.floats(1e-3, 1e9))
def test_decay_parity_random(s: np.ndarray, half_life: float) -> None:
    ages = np.linspace(0.0, 10.0 * half_life, s.shape[0])
    a, b = both("calculate_temporal_decay_jit", s, ages, half_life)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=0.0)


def test_decay_parity_across_the_exponent_range() -> None:
    # normal results take the polynomial path; overflow, subnormal, NaN and inf ages take
    # np.exp2; integer exponents (whole half-lives) must come out exact on both
    exponents = np.concatenate(
        [
            np.linspace(-1100.0, 1100.0, 20_001),
            np.arange(-1074.0, 1024.0),
            [-1022.0, -1022.5, 1023.0, 1023.5, -0.5, 0.5, -0.0, np.nan, np.inf, -np.inf],
        ]
    )
    ages = -exponents * 3.0
    scores = np.resize(np.array([1.0, -2.5, 0.0, 7.0, np.nan]), ages.shape[0])
    a, b = both("calculate_temporal_decay_jit", scores, ages, 3.0)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=0.0)
    whole = np.arange(-1074.0, 1024.0)
    out = jo.calculate_temporal_decay_jit(np.ones_like(whole), -whole, 1.0)
    assert out.tolist() == np.exp2(whole).tolist()


def test_decay_values() -> None:
    h = 86_400.0
    out = jo.calculate_temporal_decay_jit([8.0, 8.0, 8.0, -2.0], [0.0, h, 2 * h, h], h)
    assert out.tolist() == [8.0, 4.0, 2.0, -1.0]  # exactly halves at one half-life
    np.testing.assert_array_equal(jo.calculate_temporal_decay_jit([1.0, 3.0], 7.0, 7.0), [0.5, 1.5])
    assert jo.calculate_temporal_decay_jit([], [], 1.0).shape == (0,)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, "x"])
def test_decay_bad_half_life(bad: Any) -> None:
    with pytest.raises(ValueError, match="half_life_seconds"):
        jo.calculate_temporal_decay_jit([1.0], [1.0], bad)


def test_decay_length_mismatch() -> None:
    with pytest.raises(ValueError, match="same length"):
        jo.calculate_temporal_decay_jit([1.0, 2.0], [1.0, 2.0, 3.0], 1.0)


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def reference_stats(x: np.ndarray) -> tuple[float, float, float, float, float]:
    # the std of the values scaled to a largest |value| near 1 (squares cannot underflow)
    e = math.frexp(scale_of(x))[1]
    with np.errstate(all="ignore"):
        return (
            float(np.nanmean(x)),
            math.ldexp(float(np.nanstd(np.ldexp(x, -e))), e),
            float(np.nanmin(x)),
            float(np.nanmax(x)),
            float(np.nanmedian(x)),
        )


@pytest.mark.parametrize("case", VALUE_IDS)
def test_statistics_parity_and_reference(case: str) -> None:
    x = VALUES[case]
    a, b = both("calculate_statistics_jit", x)
    assert same_floats(a, b), (a, b)
    if np.all(np.isnan(x)):
        assert all(math.isnan(v) for v in a)
        return
    mean, std, lo, hi, med = reference_stats(x)
    scale = scale_of(x)
    assert a[0] == pytest.approx(mean, rel=1e-12, abs=1e-12 * scale)
    assert a[1] == pytest.approx(std, rel=1e-9, abs=1e-12 * scale)
    assert (a[2], a[3], a[4]) == (lo, hi, med)


@HYP
@given(float_arrays)
def test_statistics_parity_random(x: np.ndarray) -> None:
    a, b = both("calculate_statistics_jit", x)
    assert same_floats(a, b), (a, b)
    if not np.all(np.isnan(x)):
        mean, std, lo, hi, med = reference_stats(x)
        assert a[0] == pytest.approx(mean, rel=1e-12, abs=1e-12 * scale_of(x))
        assert a[1] == pytest.approx(std, rel=1e-9, abs=1e-9 * scale_of(x))
        assert (a[2], a[3], a[4]) == (lo, hi, med)


def test_statistics_infinities_follow_numpy() -> None:
    x = np.array([1.0, np.inf, -np.inf, 2.0, np.nan, np.inf])
    a, b = both("calculate_statistics_jit", x)
    assert same_floats(a, b)
    assert same_floats(a, reference_stats(x))


def test_statistics_public() -> None:
    assert jo.calculate_statistics_jit([1.0, 2.0, 3.0, 4.0]) == pytest.approx(
        (2.5, math.sqrt(1.25), 1.0, 4.0, 2.5)
    )
    assert all(math.isnan(v) for v in jo.calculate_statistics_jit([]))
    with pytest.raises(ValueError, match="1-D"):
        jo.calculate_statistics_jit(np.zeros((2, 2)))


# --------------------------------------------------------------------------------------------
# Moving average
# --------------------------------------------------------------------------------------------


def reference_moving_average(x: np.ndarray, window: int) -> np.ndarray:
    if x.size == 0:
        return np.zeros(0)
    fin = np.isfinite(x)
    kernel = np.ones(window)
    sums = np.convolve(np.where(fin, x, 0.0), kernel)[: x.shape[0]]
    counts = np.convolve(fin.astype(np.float64), kernel)[: x.shape[0]]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


@pytest.mark.parametrize("window", [1, 2, 5, 64, 5_000])
@pytest.mark.parametrize("case", VALUE_IDS)
def test_moving_average_parity_and_reference(case: str, window: int) -> None:
    x = VALUES[case]
    a, b = both("calculate_moving_average_jit", x, window)
    tol = 1e-9 * scale_of(x)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=tol)
    np.testing.assert_allclose(a, reference_moving_average(x, window), rtol=1e-9, atol=tol)


@HYP
@given(float_arrays, st.integers(1, 50))
def test_moving_average_parity_random(x: np.ndarray, window: int) -> None:
    x = x.copy()
    x[::11] = np.inf  # non-finite values are treated as missing
    a, b = both("calculate_moving_average_jit", x, window)
    tol = 1e-9 * scale_of(x)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=tol)
    np.testing.assert_allclose(a, reference_moving_average(x, window), rtol=1e-9, atol=tol)


def test_moving_average_values_and_errors() -> None:
    out = jo.calculate_moving_average_jit([1.0, 2.0, 3.0, 4.0, np.nan, np.nan, np.nan], 2)
    np.testing.assert_array_equal(out, [1.0, 1.5, 2.5, 3.5, 4.0, np.nan, np.nan])
    # large offset, small spread: no catastrophic cancellation
    x = 1e9 + np.arange(10_000, dtype=np.float64) % 3
    out = jo.calculate_moving_average_jit(x, 3)
    np.testing.assert_allclose(out[2:], 1e9 + 1.0, rtol=0, atol=1e-6)
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="window"):
            jo.calculate_moving_average_jit([1.0], bad)  # type: ignore[arg-type]


def exact_moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """The moving average computed in exact rational arithmetic, rounded once."""
    out = np.full(x.shape[0], np.nan)
    for i in range(x.shape[0]):
        part = [Fraction(float(v)) for v in x[max(0, i - window + 1) : i + 1] if np.isfinite(v)]
        if part:
            out[i] = float(sum(part, Fraction(0)) / len(part))
    return out


DBL_MAX = float(np.finfo(np.float64).max)


@pytest.mark.parametrize(
    ("x", "window", "expected"),
    [
        ([1e308, 1e308, 1e308], 1, [1e308, 1e308, 1e308]),
        ([1e308, 1e308, 1e308], 2, [1e308, 1e308, 1e308]),
        ([DBL_MAX] * 5, 3, [DBL_MAX] * 5),
        ([-DBL_MAX, DBL_MAX, -DBL_MAX], 2, [-DBL_MAX, 0.0, 0.0]),
        ([1e20, 1.0, 2.0, 3.0], 2, [1e20, 5e19, 1.5, 2.5]),
        (
            [1e20, 1.0, -1e20, 2.0, 4.0, 6.0],
            3,
            [1e20, 5e19, 1.0 / 3.0, -1e20 / 3.0, -1e20 / 3.0, 4.0],
        ),
        ([1e300, np.nan, 1e-300, 3e-300], 2, [1e300, 1e300, 1e-300, 2e-300]),
    ],
)
def test_moving_average_of_huge_values_is_finite_and_exact_on_both_paths(
    x: list[float], window: int, expected: list[float]
) -> None:
    arr = np.array(x)
    a, b = both("calculate_moving_average_jit", arr, window)
    np.testing.assert_array_equal(a, b)  # the same sums in the same order: bit for bit
    np.testing.assert_allclose(a, expected, rtol=1e-15, atol=0.0)
    np.testing.assert_array_equal(a, exact_moving_average(arr, window))


any_finite_with_gaps = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from([math.nan, math.inf, -math.inf, DBL_MAX, -DBL_MAX, 1e300, 1.0]),
)


@HYP
@given(
    hnp.arrays(np.float64, st.integers(0, 60), elements=any_finite_with_gaps), st.integers(1, 20)
)
def test_moving_average_paths_are_identical_and_close_to_exact_for_any_doubles(
    x: np.ndarray, window: int
) -> None:
    a, b = both("calculate_moving_average_jit", x, window)
    np.testing.assert_array_equal(a, b)
    exact = exact_moving_average(x, window)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(exact))  # finite data: no NaN
    np.testing.assert_allclose(a, exact, rtol=1e-12, atol=1e-12 * scale_of(x))


# --------------------------------------------------------------------------------------------
# Similarity and distance
# --------------------------------------------------------------------------------------------

vector_pairs = st.integers(0, 300).flatmap(
    lambda n: st.tuples(
        hnp.arrays(np.float64, n, elements=finite), hnp.arrays(np.float64, n, elements=finite)
    )
)


@HYP
@given(vector_pairs)
def test_cosine_and_euclidean_parity_random(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    c1, c2 = both("cosine_similarity_jit", a, b)
    assert c1 == pytest.approx(c2, rel=1e-12, abs=1e-12)
    assert -1.0 <= c1 <= 1.0
    # the cosine of the vectors scaled to a largest |value| of 1 (norms cannot underflow)
    ua = a / np.max(np.abs(a)) if a.any() else a
    ub = b / np.max(np.abs(b)) if b.any() else b
    aa, bb = float(np.dot(ua, ua)), float(np.dot(ub, ub))
    direct = 0.0 if aa == 0 or bb == 0 else float(np.dot(ua, ub)) / math.sqrt(aa) / math.sqrt(bb)
    assert c1 == pytest.approx(max(-1.0, min(1.0, direct)), rel=1e-9, abs=1e-12)
    d1, d2 = both("euclidean_distance_jit", a, b)
    assert d1 == pytest.approx(d2, rel=1e-12, abs=1e-300)
    # math.dist scales, so unlike np.linalg.norm(a - b) it does not underflow to 0.0
    assert d1 == pytest.approx(math.dist(a.tolist(), b.tolist()), rel=1e-12, abs=1e-300)


def test_cosine_euclidean_values() -> None:
    tiny = np.array([1e-160, 2e-160])  # norms whose product underflows
    assert both("cosine_similarity_jit", tiny, tiny) == (1.0, 1.0)
    np.testing.assert_array_equal(both("batch_cosine_similarity_jit", tiny, tiny[None, :]), 1.0)
    assert jo.cosine_similarity_jit([1.0, 0.0], [0.0, 2.0]) == 0.0
    assert jo.cosine_similarity_jit([1.0, 2.0], [2.0, 4.0]) == pytest.approx(1.0)
    assert jo.cosine_similarity_jit([1.0, 2.0], [-1.0, -2.0]) == pytest.approx(-1.0)
    assert jo.cosine_similarity_jit([0.0, 0.0], [1.0, 2.0]) == 0.0
    assert jo.cosine_similarity_jit([], []) == 0.0
    assert jo.euclidean_distance_jit([0.0, 3.0], [4.0, 0.0]) == 5.0
    assert jo.euclidean_distance_jit([], []) == 0.0
    big = _rng.normal(size=100_000)
    a, b = both("cosine_similarity_jit", big, -big + 0.1)
    assert a == pytest.approx(b, rel=1e-12)
    with pytest.raises(ValueError, match="same length"):
        jo.cosine_similarity_jit([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="1-D"):
        jo.euclidean_distance_jit([[1.0]], [[1.0]])


@pytest.mark.parametrize(("n", "d"), [(0, 4), (1, 1), (5, 3), (1_000, 256)])
def test_batch_cosine_parity(n: int, d: int) -> None:
    m = _rng.normal(size=(n, d))
    if n > 2:
        m[1] = 0.0  # zero row
        m[2] = -m[0]
    q = _rng.normal(size=d)
    a, b = both("batch_cosine_similarity_jit", q, m)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    expected = [jo.cosine_similarity_jit(q, row) for row in m]
    np.testing.assert_allclose(a, expected, rtol=1e-12, atol=1e-12)
    if n > 2:
        assert a[1] == 0.0
        assert a[2] == pytest.approx(-a[0])
    zq = both("batch_cosine_similarity_jit", np.zeros(d), m)
    assert not zq[0].any() and not zq[1].any()


def test_batch_cosine_errors() -> None:
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        jo.batch_cosine_similarity_jit([1.0, 2.0, 3.0], np.zeros((4, 2)))
    with pytest.raises(ValueError, match="query must be 1-D"):
        jo.batch_cosine_similarity_jit(np.zeros((1, 3)), np.zeros((4, 3)))


# --------------------------------------------------------------------------------------------
# Outliers
# --------------------------------------------------------------------------------------------


def reference_iqr(x: np.ndarray, k: float) -> np.ndarray:
    v = x[~np.isnan(x)]
    if v.size == 0:
        return np.zeros(x.shape, dtype=bool)
    with np.errstate(invalid="ignore", over="ignore"):
        q1, q3 = np.percentile(v, [25, 75])
        mask: np.ndarray = (x < q1 - k * (q3 - q1)) | (x > q3 + k * (q3 - q1))
    return mask


@pytest.mark.parametrize("k", [0.0, 0.5, 1.5, 3.0])
@pytest.mark.parametrize("case", VALUE_IDS)
def test_iqr_parity_and_percentile(case: str, k: float) -> None:
    x = VALUES[case]
    a, b = both("detect_outliers_iqr_jit", x, k)
    assert a.dtype == np.bool_ and b.dtype == np.bool_
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, reference_iqr(x, k))
    assert not a[np.isnan(x)].any()


@HYP
@given(float_arrays, st.sampled_from([0.0, 0.25, 1.5]))
def test_iqr_parity_random(x: np.ndarray, k: float) -> None:
    a, b = both("detect_outliers_iqr_jit", x, k)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, reference_iqr(x, k))


def test_iqr_selection_edge_cases() -> None:
    """Large inputs exercise the radix selection (more than 256 candidates)."""
    tiny = np.nextafter(1.0, 2.0)
    cases = [
        np.concatenate([np.full(500, 1.0), np.full(500, tiny)]),  # adjacent doubles
        np.array([-1e308, 1e308] * 400),  # key span beyond int64 without halving
        _rng.normal(size=2_000) * 1e-310,  # subnormals
        np.concatenate([_rng.normal(size=1_000), [np.inf, -np.inf] * 10]),
        np.concatenate([np.full(700, -0.0), np.full(700, 0.0), [np.nan] * 50]),
    ]
    for x in cases:
        for k in (0.0, 1.5):
            a, b = both("detect_outliers_iqr_jit", x, k)
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, reference_iqr(x, k))
        s1, s2 = both("calculate_statistics_jit", x)
        assert same_floats(s1, s2)
        assert s1[4] == np.nanmedian(x)


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("case", VALUE_IDS)
def test_zscore_parity_and_reference(case: str, t: float) -> None:
    x = VALUES[case]
    a, b = both("detect_outliers_zscore_jit", x, t)
    assert a.dtype == np.bool_
    np.testing.assert_array_equal(a, b)
    assert not a[np.isnan(x)].any()
    if np.all(np.isnan(x)):
        return
    mean, std = float(np.nanmean(x)), float(np.nanstd(x))
    if std == 0.0:
        assert not a.any()
        return
    z = np.abs(x - mean) / std
    decided = np.isfinite(z) & (np.abs(z - t) > 1e-9 * t)  # away from the boundary
    np.testing.assert_array_equal(a[decided], (z > t)[decided])


@HYP
@given(float_arrays, st.sampled_from([0.5, 1.0, 2.0, 3.0]))
def test_zscore_parity_random(x: np.ndarray, t: float) -> None:
    a, b = both("detect_outliers_zscore_jit", x, t)
    np.testing.assert_array_equal(a, b)


def test_zscore_exact_boundary_agrees() -> None:
    """Nine zeros and a one: z of the one is exactly 3 in exact arithmetic."""
    x = np.array([0.0] * 9 + [1.0])
    a, b = both("detect_outliers_zscore_jit", x, 3.0)
    np.testing.assert_array_equal(a, b)


def test_outlier_errors() -> None:
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="k must"):
            jo.detect_outliers_iqr_jit([1.0], bad)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="threshold must"):
            jo.detect_outliers_zscore_jit([1.0], bad)
    assert jo.detect_outliers_iqr_jit([1.0, 2.0, 3.0, 100.0]).tolist() == [0, 0, 0, 1]
    assert jo.detect_outliers_zscore_jit([5.0] * 5).tolist() == [False] * 5


# --------------------------------------------------------------------------------------------
# Hashed n-grams
# --------------------------------------------------------------------------------------------


def fnv_reference(text: str, n: int, dim: int) -> np.ndarray:
    """The documented hash, written independently over Python ints."""
    out = np.zeros(dim, dtype=np.float32)
    cps = [ord(c) for c in text]
    for start in range(len(cps) - n + 1):
        h = 2166136261
        for cp in cps[start : start + n]:
            for byte in cp.to_bytes(4, "little"):
                h = ((h ^ byte) * 16777619) % 2**32
        h ^= h >> 16
        out[h % dim] += 1
    return out


@pytest.mark.parametrize(
    "text", ["", "a", "ab", "abc", "hello world", "héllo wörld 🙂🙂", "aaaaaaaaaaaaaaa", "\ud800x"]
)
@pytest.mark.parametrize(("n", "dim"), [(1, 1), (2, 16), (3, 1024), (5, 7)])
def test_ngram_parity_and_reference(text: str, n: int, dim: int) -> None:
    cps = jo._code_points(text, "t")
    a, b = both("extract_ngram_features_jit", cps, n, dim)
    assert a.dtype == np.float32 and a.shape == (dim,)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, fnv_reference(text, n, dim))
    assert a.sum() == max(len(text) - n + 1, 0)


@HYP
@given(st.text(max_size=300), st.integers(1, 6), st.integers(1, 4096))
def test_ngram_parity_random(text: str, n: int, dim: int) -> None:
    cps = jo._code_points(text, "t")
    a, b = both("extract_ngram_features_jit", cps, n, dim)
    np.testing.assert_array_equal(a, b)
    assert a.sum() == max(len(text) - n + 1, 0)
    np.testing.assert_array_equal(jo.extract_ngram_features_jit(text, n, dim), a)


def test_ngram_public_behaviour() -> None:
    f = jo.extract_ngram_features_jit
    text = "the quick brown fox jumps over the lazy dog"
    np.testing.assert_array_equal(f(text), f(text))  # deterministic
    assert f(text).shape == (1024,) and f(text, dim=10).shape == (10,)
    assert not np.array_equal(f(text), f(text[::-1]))
    tokens = np.array([ord(c) for c in text], dtype=np.int32)
    np.testing.assert_array_equal(f(tokens), f(text))  # str == its code points
    np.testing.assert_array_equal(f([1, 2, 3, 4], 2, 8), f(np.array([1, 2, 3, 4]), 2, 8))
    assert f([-1, 2**40, 7], 1, 8).sum() == 3  # hashed by their low 32 bits
    assert f("ab", n=3).sum() == 0
    # a subprocess with another hash seed gives the same vector (no per-process salt)
    code = (
        "from nethical_grpc.jit_optimizations import extract_ngram_features_jit as f;"
        "print(f('deterministic?', 3, 64).tolist())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == str(f("deterministic?", 3, 64).tolist())


def test_ngram_batch() -> None:
    texts = ["", "a", "abc", "hello there", "🙂🙂🙂🙂", "x" * 500] + [
        "".join(_rng.choice(list("abcdefgh éü"), size=int(_rng.integers(0, 300))))
        for _ in range(200)
    ]
    for n, dim in ((1, 3), (3, 1024), (4, 33)):
        out = jo.extract_ngram_features_batch(texts, n, dim)
        assert out.shape == (len(texts), dim) and out.dtype == np.float32
        rows = np.stack([jo.extract_ngram_features_jit(t, n, dim) for t in texts])
        np.testing.assert_array_equal(out, rows)  # n-grams never span two texts
        cps = np.concatenate([jo._code_points(t, "t") for t in texts])
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum([len(t) for t in texts], out=offsets[1:])
        a, b = both("extract_ngram_features_batch", cps, offsets, n, dim)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, out)
    mixed = jo.extract_ngram_features_batch(["abcd", np.array([97, 98, 99, 100])], 2, 16)
    np.testing.assert_array_equal(mixed[0], mixed[1])
    assert jo.extract_ngram_features_batch([], 3, 8).shape == (0, 8)


def test_ngram_errors() -> None:
    with pytest.raises(ValueError, match="n must"):
        jo.extract_ngram_features_jit("abc", 0)
    with pytest.raises(ValueError, match="dim must"):
        jo.extract_ngram_features_jit("abc", 3, 0)
    with pytest.raises(ValueError, match="integer array"):
        jo.extract_ngram_features_jit(np.array([1.5, 2.5]))
    with pytest.raises(ValueError, match="integer array"):
        jo.extract_ngram_features_jit(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="not a single str"):
        jo.extract_ngram_features_batch("abc")
    with pytest.raises(ValueError, match="n must"):
        jo.extract_ngram_features_batch(["abc"], n=True)


# --------------------------------------------------------------------------------------------
# Matrix multiply
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sa", "sb"), [((3, 4), (4, 5)), ((1, 1), (1, 1)), ((0, 3), (3, 2)), ((2, 0), (0, 3))]
)
def test_matmul_reference_and_parity(sa: tuple[int, int], sb: tuple[int, int]) -> None:
    a = _rng.normal(size=sa)
    b = _rng.normal(size=sb)
    np.testing.assert_allclose(jo.matrix_multiply_jit(a, b), a @ b, rtol=1e-12, atol=1e-12)
    if jo.is_jit_available() and not jo.NUMBA_BLAS_AVAILABLE:
        pytest.skip("Numba's np.dot needs SciPy's BLAS bindings; SciPy is not installed")
    x, y = both("matrix_multiply_jit", a, b)
    np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


def test_matmul_vectors_and_errors() -> None:
    a = _rng.normal(size=(3, 4))
    v = _rng.normal(size=4)
    np.testing.assert_allclose(jo.matrix_multiply_jit(a, v), a @ v, rtol=1e-12)
    np.testing.assert_allclose(jo.matrix_multiply_jit(v, a.T), v @ a.T, rtol=1e-12)
    assert float(jo.matrix_multiply_jit(v, v)) == pytest.approx(float(v @ v))
    with pytest.raises(ValueError, match="shape mismatch"):
        jo.matrix_multiply_jit(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="1-D or 2-D"):
        jo.matrix_multiply_jit(np.zeros((2, 2, 2)), np.zeros((2, 2)))


# --------------------------------------------------------------------------------------------
# The NumPy fallback
# --------------------------------------------------------------------------------------------


def test_fallback_imports_and_works_without_jit() -> None:
    code = (
        "import numpy as np\n"
        "from nethical_grpc import jit_optimizations as jo\n"
        "assert not jo.is_jit_available()\n"
        "assert jo.BACKEND == 'numpy' and set(jo.LIVE.values()) == {'numpy'}\n"
        "assert jo.calculate_risk_score_jit([5.0, 2.5], [1.0, 0.5]) == 1.0\n"
        "assert jo.calculate_statistics_jit([1.0, np.nan, 3.0])[4] == 2.0\n"
        "assert jo.extract_ngram_features_batch(['abc', 'abcd'], 3, 8).sum() == 3\n"
        "print('ok')\n"
    )
    env = {**os.environ, "NETHICAL_DISABLE_JIT": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "ok"
