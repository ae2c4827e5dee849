"""Order statistics bracketed from a sample first (``_order_pair_bracketed``): the same
values as the radix selection alone and as a sort, whatever the data (NaN, infinities,
both zeros, many equal values, data ordered against the sampling stride); and the
statistics and quartiles of large arrays, which now take that path, equal NumPy's and
the NumPy fallback's, bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nethical_grpc import jit_optimizations as jo

VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5]),  # ties, and both zeros
)


def _expected(x: np.ndarray, k: int) -> tuple[float, float]:
    finite = np.sort(x[~np.isnan(x)])
    m = finite.shape[0]
    return float(finite[k]), float(finite[min(k + 1, m - 1)])


@settings(max_examples=300, deadline=None)
@given(
    x=hnp.arrays(np.float64, st.integers(1, 400), elements=VALUES),
    where=st.floats(0.0, 1.0),
    samples=st.integers(1, 64),
)
def test_bracketed_selection_is_the_sorted_order(x: np.ndarray, where: float, samples: int) -> None:
    m = int(np.count_nonzero(~np.isnan(x)))
    if m == 0:
        return
    k = min(int(where * m), m - 1)
    lo, hi = jo._nan_minmax(x)
    got = jo._order_pair_bracketed(x, m, k, lo, hi, samples)
    assert got == _expected(x, k)
    assert got == jo._radix_order_pair(x, m, k, lo, hi)


@pytest.mark.parametrize(
    "shape",
    [
        "sorted",
        "reversed",
        "sawtooth against the stride",
        "few distinct",
        "mostly one value",
        "heavy tails",
    ],
)
def test_large_arrays_median_and_quartiles_equal_numpys(shape: str) -> None:
    rng = np.random.default_rng(41)
    n = jo._BRACKET_MIN * 2 + 7
    if shape == "sorted":
        x = np.sort(rng.normal(0.0, 1.0, n))
    elif shape == "reversed":
        x = np.sort(rng.normal(0.0, 1.0, n))[::-1].copy()
    elif shape == "sawtooth against the stride":
        # each sampled value (every n // 4096-th) is its period's largest: the sample
        # misplaces rank k and the bracket misses it, so the whole array is selected
        step = max(n // jo._BRACKET_SAMPLE, 1)
        x = (np.arange(n) % step).astype(np.float64)[::-1].copy()
    elif shape == "few distinct":
        # the bracket is one value: the ranks sought are that value, nothing copied
        x = rng.integers(0, 4, n).astype(np.float64)
    elif shape == "mostly one value":
        # over half the values inside the bracket: the whole array is selected instead
        x = np.where(rng.random(n) < 0.7, -0.0, rng.normal(0.0, 1.0, n))
    else:
        x = rng.standard_cauchy(n)
        x[rng.random(n) < 0.2] = np.nan
    stats = jo.calculate_statistics_jit(x)
    fallback = jo._statistics_numpy(x)
    assert all(
        a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(stats, fallback, strict=True)
    )
    _, _, lo, hi, median = stats
    assert median == float(np.nanmedian(x))
    assert (lo, hi) == (float(np.nanmin(x)), float(np.nanmax(x)))
    finite = x[~np.isnan(x)]
    for q in (0.25, 0.75):
        m = finite.shape[0]
        assert jo._quantile_linear(x, m, q, lo, hi) == float(np.percentile(finite, q * 100))


def test_min_and_max_skip_nan_in_every_lane() -> None:
    x = np.full(1_000, np.nan)
    assert jo._nan_minmax(x) == (math.inf, -math.inf)
    x[517] = -3.0
    x[999] = 7.0  # past the last full run of lanes
    assert jo._nan_minmax(x) == (-3.0, 7.0)
    x[3] = -math.inf
    assert jo._nan_minmax(x) == (-math.inf, 7.0)
