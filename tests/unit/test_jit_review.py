"""Review fixes for ``nethical_grpc.jit_optimizations``: finite inputs of any magnitude.

Every check runs on both implementations (``IMPLEMENTATIONS``): the Numba one (compiled, or
plain Python loops when JIT is disabled) and the NumPy one.  Inputs are small integers
scaled by a power of two, which is exact for exponents in ``[-1000, 1000]``, so the right
answer is the unscaled one, scaled (similarity: unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nethical_grpc import jit_optimizations as jo

HYP = settings(deadline=None, max_examples=60)
DBL_MAX = float(np.finfo(np.float64).max)
if not jo.is_jit_available():
    pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

ints = st.integers(-1000, 1000).map(float)
exponents = st.integers(-1000, 1000)


def impls(name: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    return jo.IMPLEMENTATIONS[name]


def int_pairs(min_size: int) -> st.SearchStrategy[tuple[np.ndarray, np.ndarray]]:
    return st.integers(min_size, 40).flatmap(
        lambda n: st.tuples(
            hnp.arrays(np.float64, n, elements=ints), hnp.arrays(np.float64, n, elements=ints)
        )
    )


# --------------------------------------------------------------------------------------------
# Cosine similarity
# --------------------------------------------------------------------------------------------


def _cosine_reference(a: np.ndarray, b: np.ndarray) -> float:
    aa, bb = float(np.dot(a, a)), float(np.dot(b, b))
    if aa == 0.0 or bb == 0.0:
        return 0.0
    return max(-1.0, min(1.0, float(np.dot(a, b)) / math.sqrt(aa) / math.sqrt(bb)))


@HYP
@given(int_pairs(1), exponents, exponents)
def test_cosine_of_tiny_or_huge_vectors_is_their_cosine(
    pair: tuple[np.ndarray, np.ndarray], ka: int, kb: int
) -> None:
    a, b = pair
    expected = _cosine_reference(a, b)
    sa, sb = np.ldexp(a, ka), np.ldexp(b, kb)
    for impl in impls("cosine_similarity_jit"):
        assert impl(sa, sb) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    rows = np.stack([sb, np.ldexp(b, -kb), np.ldexp(a, kb), np.zeros_like(a)])
    want = [expected, expected, _cosine_reference(a, a), 0.0]
    for impl in impls("batch_cosine_similarity_jit"):
        np.testing.assert_allclose(impl(sa, rows), want, rtol=1e-12, atol=1e-12)


def test_cosine_examples_that_were_wrong() -> None:
    tiny = np.array([1e-200, 0.0])
    huge = np.array([1e200, 1e200])
    for impl in impls("cosine_similarity_jit"):
        assert impl(tiny, tiny) == 1.0  # was 0.0: squared norm underflowed
        assert impl(huge, huge) == pytest.approx(1.0, rel=1e-15)  # was NaN
        assert impl(np.array([1e200, 1.0]), np.array([1.0, 1.0])) == pytest.approx(
            math.sqrt(0.5), rel=1e-12
        )  # was 0.0
        assert impl(np.array([DBL_MAX, -DBL_MAX]), np.array([1.0, 1.0])) == pytest.approx(
            0.0, abs=1e-15
        )
    for impl in impls("batch_cosine_similarity_jit"):
        np.testing.assert_allclose(impl(tiny, np.stack([tiny, huge])), [1.0, math.sqrt(0.5)])
        np.testing.assert_allclose(impl(huge, np.stack([tiny, huge])), [math.sqrt(0.5), 1.0])
    assert jo.cosine_similarity_jit([1e-200], [3e-200]) == 1.0


def test_cosine_special_values_unchanged_and_paths_agree() -> None:
    nb, npy = impls("cosine_similarity_jit")
    cases = [
        ([np.nan, 1.0], [1.0, 1.0]),
        ([np.inf, 1.0], [1.0, 1.0]),
        ([np.inf], [0.0]),
        ([np.nan], [0.0]),
        ([0.0, 0.0], [1e-300, 0.0]),
        ([5e-324], [5e-324]),
        ([], []),
    ]
    for a, b in cases:
        x, y = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
        r1, r2 = nb(x, y), npy(x, y)
        assert (math.isnan(r1) and math.isnan(r2)) or r1 == r2, (a, b, r1, r2)
    assert jo.cosine_similarity_jit([5e-324], [5e-324]) == 1.0
    assert jo.cosine_similarity_jit([0.0], [1e-300]) == 0.0


# --------------------------------------------------------------------------------------------
# Euclidean distance
# --------------------------------------------------------------------------------------------


@HYP
@given(int_pairs(0), st.integers(-1000, 1000))
def test_euclidean_distance_of_tiny_or_huge_vectors_scales(
    pair: tuple[np.ndarray, np.ndarray], k: int
) -> None:
    a, b = pair
    d = a - b
    expected = math.ldexp(math.sqrt(float(np.dot(d, d))), k)
    sa, sb = np.ldexp(a, k), np.ldexp(b, k)
    for impl in impls("euclidean_distance_jit"):
        assert impl(sa, sb) == pytest.approx(expected, rel=1e-12, abs=0.0)


def test_euclidean_examples_that_were_wrong() -> None:
    half = DBL_MAX / 2
    cases = [
        ([1e-200], [0.0], 1e-200),  # was 0.0
        ([1e200], [-1e200], 2e200),  # was inf
        ([1e300, 1.0], [-1e300, 1.0], 2e300),
        ([half, 0.0], [-half, 0.0], DBL_MAX),  # the difference itself is finite
        ([DBL_MAX, 1.0], [-DBL_MAX / 4, 1.0], DBL_MAX * 1.25),  # inf: past DBL_MAX
        ([1.0, 1e-300], [1.0, 0.0], 1e-300),
        ([3e-310, 0.0], [0.0, 4e-310], 5e-310),
    ]
    for impl in impls("euclidean_distance_jit"):
        for a, b, want in cases:
            got = impl(np.array(a), np.array(b))
            assert got == pytest.approx(want, rel=1e-12), (a, b, got)
        assert impl(np.array([np.inf]), np.array([0.0])) == math.inf
        assert math.isnan(impl(np.array([np.inf]), np.array([np.inf])))
        assert math.isnan(impl(np.array([np.nan, 1e300]), np.array([0.0, -1e300])))
        assert impl(np.array([0.0, -0.0]), np.array([-0.0, 0.0])) == 0.0


# --------------------------------------------------------------------------------------------
# Statistics and z-score outliers
# --------------------------------------------------------------------------------------------


int_arrays = hnp.arrays(np.float64, st.integers(1, 80), elements=ints)


@HYP
@given(int_arrays, exponents)
def test_statistics_of_tiny_or_huge_values_scale(x: np.ndarray, k: int) -> None:
    ref = jo.IMPLEMENTATIONS["calculate_statistics_jit"][1](x)
    y = np.ldexp(x, k)
    results = [impl(y) for impl in impls("calculate_statistics_jit")]
    assert results[0] == results[1]
    mean, std, lo, hi, med = results[0]
    assert mean == pytest.approx(math.ldexp(ref[0], k), rel=1e-12, abs=math.ldexp(1e-12, k))
    assert std == pytest.approx(math.ldexp(ref[1], k), rel=1e-12, abs=0.0)
    assert (lo, hi, med) == tuple(math.ldexp(v, k) for v in ref[2:])


@HYP
@given(int_arrays, exponents, st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0]))
def test_zscore_outliers_of_tiny_or_huge_values_are_those_of_the_values(
    x: np.ndarray, k: int, t: float
) -> None:
    ref = jo.IMPLEMENTATIONS["detect_outliers_zscore_jit"][1](x, t)
    y = np.ldexp(x, k)
    for impl in impls("detect_outliers_zscore_jit"):
        np.testing.assert_array_equal(impl(y, t), ref)


def test_statistics_examples_that_were_wrong() -> None:
    for impl in impls("calculate_statistics_jit"):
        # all were inf: the sum of values, the squared deviations, the two middle values
        assert impl(np.array([DBL_MAX, DBL_MAX])) == (DBL_MAX, 0.0, DBL_MAX, DBL_MAX, DBL_MAX)
        assert impl(np.array([1e200, -1e200])) == (0.0, 1e200, -1e200, 1e200, 0.0)
        mean, std, *_ = impl(np.array([-DBL_MAX, DBL_MAX, DBL_MAX, -DBL_MAX]))
        assert (mean, std) == (0.0, DBL_MAX)
        # was a std of 0.0: squared deviations underflowed
        mean, std, *_ = impl(np.array([1e-200, 2e-200, 3e-200, np.nan]))
        assert mean == pytest.approx(2e-200, rel=1e-15)
        assert std == pytest.approx(math.sqrt(2 / 3) * 1e-200, rel=1e-15)
        # infinities are still kept
        assert impl(np.array([np.inf, 1e308, 1e308]))[0] == math.inf
    x = np.full(50, 1e-200)
    x[7] = 9e-200
    for impl in impls("detect_outliers_zscore_jit"):
        assert np.flatnonzero(impl(x, 3.0)).tolist() == [7]  # was none: std was 0.0
        assert np.flatnonzero(impl(x * 1e300 * 1e200, 3.0)).tolist() == [7]


# --------------------------------------------------------------------------------------------
# Integer parameters beyond int64
# --------------------------------------------------------------------------------------------


def test_moving_average_window_of_any_integer_size() -> None:
    x = np.array([1.0, 3.0, np.nan, 5.0])
    expanding = np.array([1.0, 2.0, 2.0, 3.0])
    windows: tuple[Any, ...] = (2**63 - 1, 2**63, 2**70, np.uint64(2**64 - 1))
    for window in windows:
        np.testing.assert_array_equal(jo.calculate_moving_average_jit(x, window), expanding)
    np.testing.assert_array_equal(jo.calculate_moving_average_jit([], 2**70), [])


def test_ngram_n_of_any_integer_size() -> None:
    sizes: tuple[Any, ...] = (2**63, 2**70, np.uint64(2**64 - 1))
    for n in sizes:
        out = jo.extract_ngram_features_jit("abcdef", n, 16)
        assert out.shape == (16,) and not out.any()
        batch = jo.extract_ngram_features_batch(["abc", "defg"], n, 8)
        assert batch.shape == (2, 8) and not batch.any()


@pytest.mark.parametrize(
    "call",
    [
        lambda: jo.calculate_statistics_jit(None),
        lambda: jo.detect_outliers_zscore_jit(None),
        lambda: jo.detect_outliers_iqr_jit(None),
        lambda: jo.calculate_risk_score_jit(None, [1.0]),
    ],
)
def test_none_is_refused_not_read_as_a_nan(call: Callable[[], object]) -> None:
    """``np.asarray(None, float)`` is ``nan``: statistics of None were five NaNs."""
    with pytest.raises(ValueError, match="must be numbers, got None"):
        call()
