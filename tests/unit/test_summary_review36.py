"""Review 36: finite values whose exact sums overflow along the way.

``math.fsum`` raises ``OverflowError`` when a partial sum passes the largest double, even
where the total is finite. The kernels' exact-sum fallback and ``Moments.merge_all`` used
it bare, so a batch of finite values (or three valid summaries) could make
``Summary.update`` / ``merge_all`` raise ``OverflowError``, where the same data in another
order, or merged two at a time, went through.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nethical_grpc.summary import Moments, Summary
from nethical_grpc.summary import _kernels as kernels

DBL_MAX = float(np.finfo(np.float64).max)

BatchMoments = Callable[..., kernels.MomentsTuple]
BACKENDS: dict[str, BatchMoments] = {
    "numba": kernels.batch_moments_numba,
    "numpy": kernels.batch_moments_numpy,
}


def _lanes_that_cancel() -> np.ndarray:
    """Lanes of the compiled kernel that each stay finite and together cancel to 1.0 with
    a rounding error, so the kernel sums the batch again with ``math.fsum``, whose
    partial sums (DBL_MAX + DBL_MAX) overflow."""
    x = np.zeros(64)
    x[[0, 1, 2]] = DBL_MAX
    x[[3, 32, 33]] = -DBL_MAX
    x[34] = 1.0
    return x


def test_a_finite_batch_whose_exact_sum_overflows_midway_is_summarised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the compiled kernel's fallback (plain Python loops under NETHICAL_DISABLE_JIT=1)
    monkeypatch.setattr(kernels, "batch_moments", kernels.batch_moments_numba)
    backend = kernels.batch_moments_numba
    x = _lanes_that_cancel()
    t = backend(x)  # was OverflowError from the compiled kernel's fallback
    assert t.n == 64 and t.min == -DBL_MAX and t.max == DBL_MAX
    s = Summary()
    s.update(x)
    assert s.count == 64 and s.histogram.count == 64
    assert s.min == -DBL_MAX and s.max == DBL_MAX
    assert s.quantile(0.0) == -DBL_MAX and s.quantile(1.0) == DBL_MAX
    # the same values in another order never took the fallback: same count and sketch
    other = Summary.from_values(np.sort(x))
    assert other.histogram == s.histogram


def test_merge_all_of_parts_whose_sum_overflows_matches_merging_two_at_a_time() -> None:
    parts = [Summary.from_values([1e308]) for _ in range(3)]
    folded = parts[0].merge(parts[1]).merge(parts[2])  # went through: inf/NaN moments
    merged = Summary.merge_all(parts)  # was OverflowError from math.fsum
    assert merged.count == 3 == folded.count
    assert merged.histogram == folded.histogram
    assert merged.min == merged.max == 1e308
    assert Moments.merge_all([p.moments for p in parts]).count == 3
    # m2 alone overflowing its fsum (each part's m2 finite)
    wide = [Summary.from_values([1e154, -1e154]) for _ in range(3)]
    assert Moments.merge_all([p.moments for p in wide]).count == 6


def _merge_all(parts: list[Moments]) -> Moments:
    return Moments.merge_all(parts)


def _fold(parts: list[Moments]) -> Moments:
    out = Moments()
    for p in parts:
        out = out.merge(p)
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(
        st.lists(st.sampled_from([DBL_MAX, -DBL_MAX, 1e308, -6e307, 1e154, 1.0, 0.0]), max_size=3),
        min_size=3,
        max_size=6,
    )
)
def test_building_and_merging_finite_values_never_raises(values: list[list[float]]) -> None:
    """Any finite data gives a summary (its moments may be non-finite where they pass the
    largest double, as documented), built one batch at a time, or merged any way, with
    either kernel."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        flat = [v for part in values for v in part]
        for impl in BACKENDS.values():
            impl(np.array(flat, dtype=np.float64))
            impl(_lanes_that_cancel())
        summaries = [Summary.from_values(v) for v in values]
        moments = [s.moments for s in summaries]
        for merge in (_merge_all, _fold):
            assert merge(moments).count == len(flat)
        assert Summary.merge_all(summaries).count == len(flat)
        whole = Summary.from_values(flat)
        assert whole.histogram == Summary.merge_all(summaries).histogram


def test_values_that_are_no_real_numbers_are_a_value_error_changing_nothing() -> None:
    s = Summary.from_values([1.0, 2.0])
    for bad in ([10**400], ["x"], [object()]):
        with pytest.raises(ValueError, match="values must be real numbers"):
            s.update(bad)  # type: ignore[arg-type]
    assert s.moments.count == 2


def test_merge_all_of_what_is_no_summary_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="can only merge Summary objects, got int"):
        Summary.merge_all([Summary.from_values([1.0]), 2])  # type: ignore[list-item]
