"""NumPy and Numba kernel paths must agree (exactly for buckets, closely for moments).

When JIT is unavailable (e.g. NETHICAL_DISABLE_JIT=1) the ``*_numba`` functions run as plain
Python loops, so these tests still check that the loop formulation matches NumPy.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nethical_grpc import jit
from nethical_grpc.summary import ExponentialHistogram, Summary
from nethical_grpc.summary import _kernels as kernels
from nethical_grpc.summary.exponential_histogram import _clamped

DBL_MAX = float(np.finfo(np.float64).max)
REPO_ROOT = Path(__file__).resolve().parents[2]
SCALES = [-10, -4, -1, 0, 1, 3, 6, 13, 20]

_rng = np.random.default_rng(12345)
SPECIAL: dict[str, np.ndarray] = {
    "empty": np.array([], dtype=np.float64),
    "zero": np.array([0.0]),
    "neg_zero": np.array([-0.0]),
    "one": np.array([1.0]),
    "minus_one": np.array([-1.0]),
    "tiny": np.array([1e-300]),
    "huge": np.array([1e300]),
    "tiny_huge_mixed": np.array([-1e300, 1e-300, 0.0, -1e-300, 1e300, 2.0**-1022]),
    "extremes": np.array([5e-324, -5e-324, DBL_MAX, -DBL_MAX, 2.2250738585072014e-308]),
    "subnormals": np.array([5e-324, 1e-320, -3.5e-315, 2.225073858507201e-308, 1e-310]),
    "powers_of_two": np.ldexp(1.0, np.arange(-1074, 1024, 7)),
    "zeros_and_negatives": np.array([0.0, -0.0, -1.0, -2.0, 0.0, 3.0, -0.5]),
    "lognormal": _rng.lognormal(0.0, 3.0, 3_000),
    "signed_lognormal": _rng.lognormal(0.0, 2.0, 3_000) * _rng.choice([-1.0, 1.0, 0.0], 3_000),
    "normal": _rng.normal(0.0, 1.0, 2_001),
}
SPECIAL_IDS = list(SPECIAL)

finite_floats = hnp.arrays(
    np.float64,
    st.integers(0, 200),
    elements=st.floats(allow_nan=False, allow_infinity=False, width=64),
)
PSETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _same_bucketize(a: kernels.BucketizeResult, b: kernels.BucketizeResult) -> None:
    np.testing.assert_array_equal(np.sort(a.positive), np.sort(b.positive))
    np.testing.assert_array_equal(np.sort(a.negative), np.sort(b.negative))
    assert a.zero_count == b.zero_count
    if a.positive.size:
        assert (a.pos_min, a.pos_max) == (b.pos_min, b.pos_max)
    if a.negative.size:
        assert (a.neg_min, a.neg_max) == (b.neg_min, b.neg_max)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", SPECIAL_IDS)
@pytest.mark.parametrize("zero_threshold", [0.0, 1e-5])
def test_bucketize_parity(name: str, scale: int, zero_threshold: float) -> None:
    x = SPECIAL[name]
    r_np = kernels.bucketize_numpy(x, scale, zero_threshold)
    r_nb = kernels.bucketize_numba(x, scale, zero_threshold)
    _same_bucketize(r_np, r_nb)
    assert r_np.positive.size + r_np.negative.size + r_np.zero_count == x.size
    # The bounds fast paths give the same answer.
    if x.size:
        _same_bucketize(kernels.bucketize_numpy(x, scale, zero_threshold, (x.min(), x.max())), r_nb)


@PSETTINGS
@given(x=finite_floats, scale=st.sampled_from(SCALES))
def test_bucketize_parity_hypothesis(x: np.ndarray, scale: int) -> None:
    _same_bucketize(kernels.bucketize_numpy(x, scale, 0.0), kernels.bucketize_numba(x, scale, 0.0))


def _run_count(
    impl: object, x: np.ndarray, scale: int, pos: tuple[int, int], neg: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, kernels.SpillResult]:
    pc = np.arange(pos[1], dtype=np.uint64)  # non-zero start so additions are visible
    nc = np.arange(neg[1], dtype=np.uint64) * np.uint64(3)
    r = impl(x, scale, 0.0, pc, pos[0], nc, neg[0])  # type: ignore[operator]
    return pc, nc, r


@pytest.mark.parametrize("name", ["signed_lognormal", "lognormal", "normal", "extremes", "empty"])
@pytest.mark.parametrize(
    ("pos", "neg"),
    [((0, 0), (0, 0)), ((-400, 1200), (-400, 1200)), ((0, 50), (-30, 40)), ((-5000, 2), (10, 3))],
)
@pytest.mark.parametrize("scale", [0, 6])
def test_count_in_range_parity(
    name: str, pos: tuple[int, int], neg: tuple[int, int], scale: int
) -> None:
    x = SPECIAL[name]
    pc1, nc1, r1 = _run_count(kernels.count_in_range_numpy, x, scale, pos, neg)
    pc2, nc2, r2 = _run_count(kernels.count_in_range_numba, x, scale, pos, neg)
    np.testing.assert_array_equal(pc1, pc2)
    np.testing.assert_array_equal(nc1, nc2)
    np.testing.assert_array_equal(np.sort(r1.positive), np.sort(r2.positive))
    np.testing.assert_array_equal(np.sort(r1.negative), np.sort(r2.negative))
    assert r1.zero_count == r2.zero_count
    assert (r1.pos_min, r1.pos_max, r1.neg_min, r1.neg_max) == (
        r2.pos_min,
        r2.pos_max,
        r2.neg_min,
        r2.neg_max,
    )
    # Nothing is lost: counted + spilled == everything bucketized.
    full = kernels.bucketize_numpy(x, scale, 0.0)
    added = int(pc1.sum()) - int(np.arange(pos[1]).sum())
    added += int(nc1.sum()) - 3 * int(np.arange(neg[1]).sum())
    assert added + r1.positive.size + r1.negative.size == full.positive.size + full.negative.size


@pytest.mark.parametrize("shift", [0, 1, 5])
def test_accumulate_parity(shift: int) -> None:
    idx = _rng.integers(-300, 300, 5_000)
    lo = int(idx.min()) >> shift
    n = (int(idx.max()) >> shift) - lo + 1
    a = np.zeros(n, dtype=np.uint64)
    b = np.zeros(n, dtype=np.uint64)
    kernels.accumulate_numpy(idx, shift, lo, a)
    kernels.accumulate_numba(idx, shift, lo, b)
    np.testing.assert_array_equal(a, b)
    assert int(a.sum()) == idx.size


def _same_moments(a: kernels.MomentsTuple, b: kernels.MomentsTuple, x: np.ndarray) -> None:
    assert a.n == b.n == x.size
    assert a.min == b.min
    assert a.max == b.max
    if x.size == 0:
        assert a == b
        return
    eps = np.finfo(np.float64).eps
    abs_sum = float(np.sum(np.abs(x)))
    mag = float(np.max(np.abs(x)))
    assert abs((a.sum + a.compensation) - (b.sum + b.compensation)) <= 64 * eps * abs_sum
    assert a.mean == pytest.approx(b.mean, rel=1e-12, abs=64 * eps * mag)
    assert a.m2 == pytest.approx(b.m2, rel=1e-9, abs=1e-12 * mag * mag * x.size)


@pytest.mark.parametrize("name", SPECIAL_IDS)
def test_batch_moments_parity(name: str) -> None:
    x = SPECIAL[name]
    if x.size and np.max(np.abs(x)) > 1e150:
        x = x[np.abs(x) <= 1e150]  # squares would overflow: m2 is inf/nan by construction
    _same_moments(kernels.batch_moments_numpy(x), kernels.batch_moments_numba(x), x)


@PSETTINGS
@given(
    x=hnp.arrays(
        np.float64,
        st.integers(0, 300),
        elements=st.floats(-1e150, 1e150, allow_nan=False, allow_infinity=False, width=64),
    )
)
def test_batch_moments_parity_hypothesis(x: np.ndarray) -> None:
    _same_moments(kernels.batch_moments_numpy(x), kernels.batch_moments_numba(x), x)


def test_histogram_updates_identical_across_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(77)
    batches = [
        rng.lognormal(0, 0.1, 500),
        rng.lognormal(0, 3, 2_000) * rng.choice([-1.0, 1.0, 0.0], 2_000),
        np.array([1e-300, -1e300, 0.0]),
        rng.normal(0, 1e-3, 1_000),
        np.array([5e-324, DBL_MAX]),
    ]

    def run(backend: str, max_buckets: int) -> ExponentialHistogram:
        with monkeypatch.context() as mp:
            for name in ("count_in_range", "accumulate", "bucketize", "batch_moments"):
                mp.setattr(kernels, name, getattr(kernels, f"{name}_{backend}"))
            h = ExponentialHistogram(max_buckets=max_buckets)
            for b in batches:
                h.update(b)
                h.validate()
            return h

    for max_buckets in (2048, 64, 4):
        h_np = run("numpy", max_buckets)
        h_nb = run("numba", max_buckets)
        assert h_np == h_nb
        assert h_np.count == sum(b.size for b in batches)


def test_backend_selection_matches_jit_flag() -> None:
    expected = "numba" if jit.is_jit_available() else "numpy"
    assert expected == kernels.BACKEND
    if jit.is_jit_available():
        assert jit.jit_unavailable_reason() is None
        assert kernels.batch_moments is kernels.batch_moments_numba
        assert kernels.count_in_range is kernels.count_in_range_numba
    else:
        assert jit.jit_unavailable_reason()
        assert kernels.batch_moments is kernels.batch_moments_numpy
        assert kernels.count_in_range is kernels.count_in_range_numpy


def test_maybe_njit_returns_callable() -> None:
    @jit.maybe_njit()
    def add(a: float, b: float) -> float:
        return a + b

    assert add(1.0, 2.0) == 3.0


@pytest.mark.parametrize("flag", ["1", "true", "YES"])
def test_disable_env_var_selects_numpy_fallback(flag: str) -> None:
    code = (
        "import numpy as np\n"
        "from nethical_grpc import jit\n"
        "from nethical_grpc.summary import Summary, _kernels\n"
        "assert not jit.is_jit_available()\n"
        "assert 'NETHICAL_DISABLE_JIT' in jit.jit_unavailable_reason()\n"
        "assert _kernels.BACKEND == 'numpy'\n"
        "s = Summary.from_values(np.array([1.0, -2.0, 0.0, 4.0]))\n"
        "s.validate()\n"
        "assert s.count == 4 and s.total == 3.0\n"
        "print('ok')\n"
    )
    env = dict(os.environ)
    env["NETHICAL_DISABLE_JIT"] = flag
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_summary_same_result_with_either_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    x = SPECIAL["signed_lognormal"]
    results = []
    for backend in ("numpy", "numba"):
        with monkeypatch.context() as mp:
            for name in ("count_in_range", "accumulate", "bucketize", "batch_moments"):
                mp.setattr(kernels, name, getattr(kernels, f"{name}_{backend}"))
            results.append(Summary.from_values(x))
    a, b = results
    assert a.histogram == b.histogram
    assert a.moments.count == b.moments.count
    assert a.moments.total == pytest.approx(b.moments.total, rel=1e-12)
    assert a.moments.m2 == pytest.approx(b.moments.m2, rel=1e-12)


def test_accumulate_out_of_range_is_rejected_not_written() -> None:
    counts = np.zeros(4, dtype=np.uint64)
    with pytest.raises(IndexError):
        kernels.accumulate_numba(np.array([0, 1, 9], dtype=np.int64), 0, 0, counts)
    assert counts[:2].tolist() == [1, 1]  # in-range ones counted; nothing written past the end
    with pytest.raises(ValueError, match="negative"):
        kernels.accumulate_numpy(np.array([-3, 1], dtype=np.int64), 0, 0, np.zeros(4, np.uint64))


EMPTY_COUNTS = (np.zeros(0, dtype=np.uint64), 0, np.zeros(0, dtype=np.uint64), 0)


@pytest.mark.parametrize("threshold", [-1.0, float("nan"), float("inf")])
@pytest.mark.parametrize(
    "impl",
    [
        kernels.bucketize_numpy,
        kernels.bucketize_numba,
        lambda x, s, t: kernels.count_in_range_numpy(x, s, t, *EMPTY_COUNTS),
        lambda x, s, t: kernels.count_in_range_numba(x, s, t, *EMPTY_COUNTS),
    ],
)
def test_kernels_reject_bad_zero_threshold(impl: object, threshold: float) -> None:
    with pytest.raises(ValueError, match="zero_threshold"):
        impl(np.array([0.0, 1.0]), 3, threshold)  # type: ignore[operator]


def test_warmup_and_read_only_input() -> None:
    kernels.warmup()
    x = SPECIAL["signed_lognormal"].copy()
    x.setflags(write=False)
    a = Summary.from_values(x)
    b = Summary.from_values(x.copy())
    assert a == b


def _quantile_paths(
    h: ExponentialHistogram, qs: np.ndarray, clamp: tuple[int, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """The compiled (or, without JIT, loop) estimates and the NumPy ones, for one histogram."""
    looped = kernels.quantile_estimates_numba(
        qs,
        (h.positive.offset, h.positive.counts),
        (h.negative.offset, h.negative.counts),
        h.zero_count,
        h.scale,
        1.0 + h.relative_error,
        clamp,
    )
    assert looped is not None
    return looped, _clamped(h._quantiles_numpy(qs), qs, clamp)


def _same_quantiles_both_ways(s: Summary, qs: np.ndarray) -> None:
    """Both paths agree, without and with the moments' clamp, and what users call
    (``Summary.quantiles``, whichever path is live) gives the same figures."""
    m = s.moments
    for clamp in ((0, 0.0, 0.0), (m.count, m.min, m.max)):
        looped, vectorised = _quantile_paths(s.histogram, qs, clamp)
        np.testing.assert_array_equal(looped, vectorised)
    np.testing.assert_array_equal(s.quantiles(qs), vectorised)


QS = np.array([0.0, 1e-9, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0 - 1e-12, 1.0])


@pytest.mark.parametrize("scale", [s for s in SCALES if s <= kernels.QUANTILE_TABLE_MAX_SCALE])
@pytest.mark.parametrize("name", SPECIAL_IDS)
def test_quantile_estimates_parity(name: str, scale: int) -> None:
    x = SPECIAL[name]
    h = ExponentialHistogram.from_values(x, scale=scale)
    s = Summary(Summary.from_values(x).moments, h)
    _same_quantiles_both_ways(s, QS)
    if x.size == 0:
        assert np.isnan(s.quantiles(QS)).all()


@PSETTINGS
@given(
    x=finite_floats,
    scale=st.integers(-4, kernels.QUANTILE_TABLE_MAX_SCALE),
    qs=hnp.arrays(np.float64, st.integers(1, 12), elements=st.floats(0.0, 1.0)),
    untrimmed=st.booleans(),
)
def test_quantile_estimates_parity_hypothesis(
    x: np.ndarray, scale: int, qs: np.ndarray, untrimmed: bool
) -> None:
    s = Summary.from_values(x, scale=scale)
    h = s.histogram
    if untrimmed and h.positive.counts.size:  # zero buckets at both ends, narrower counts
        counts = np.concatenate(([0, 0], h.positive.counts, [0])).astype(np.uint32)
        h.positive = type(h.positive)(h.positive.offset - 2, counts)
    _same_quantiles_both_ways(s, qs)


def test_quantile_estimates_leave_fine_scales_to_numpy() -> None:
    h = ExponentialHistogram.from_values(SPECIAL["lognormal"], scale=13)
    found = kernels.quantile_estimates_numba(
        QS, (h.positive.offset, h.positive.counts), (0, h.negative.counts), 0, 13, 1.0
    )
    assert found is None  # no 2**13-entry table: the NumPy path answers
    exact = np.quantile(SPECIAL["lognormal"], QS, method="lower")
    np.testing.assert_allclose(h.quantiles(QS), exact, rtol=h.relative_error)


def _numpy_merge(hs: list[ExponentialHistogram]) -> ExponentialHistogram:
    out = ExponentialHistogram.__new__(ExponentialHistogram)
    out._merge_many(hs, compiled=False)
    return out


@PSETTINGS
@given(
    parts=st.lists(
        st.tuples(finite_floats, st.sampled_from([-2, 0, 3, 6]), st.sampled_from([4, 40, 2048])),
        min_size=1,
        max_size=6,
    ),
    untrimmed=st.booleans(),
)
def test_histogram_merge_parity_hypothesis(
    parts: list[tuple[np.ndarray, int, int]], untrimmed: bool
) -> None:
    hs = [ExponentialHistogram.from_values(x, scale=s, max_buckets=m) for x, s, m in parts]
    if untrimmed:  # zero buckets at both ends and narrower counts, as stored windows have
        for h in hs:
            if h.negative.counts.size:
                counts = np.concatenate(([0], h.negative.counts, [0, 0])).astype(np.uint16)
                h.negative = type(h.negative)(h.negative.offset - 1, counts)
    merged = _numpy_merge(hs)  # trimmed, as the kernel's
    assert ExponentialHistogram.merge_all(hs) == merged
    assert merged.count == sum(h.count for h in hs)
    merged.validate()
    sides = [
        (side, b.offset, b.counts, h.scale - min(h.scale for h in hs))
        for h in hs
        for side, b in ((0, h.positive), (1, h.negative))
    ]
    found = kernels.merge_buckets_numba(sides, merged.max_buckets, 40)
    assert found is not None
    k, pos_offset, pos, neg_offset, neg = found
    assert min(h.scale for h in hs) - k == merged.scale
    assert (pos_offset, neg_offset if neg.size else 0) == (
        merged.positive.offset,
        merged.negative.offset,
    )
    np.testing.assert_array_equal(pos, merged.positive.counts)
    np.testing.assert_array_equal(neg, merged.negative.counts)


def test_histogram_merge_downscales_to_fit_and_stops_at_its_limit() -> None:
    # the widest data there is, in 4 buckets: merged at the lowest scales, as NumPy does
    a = ExponentialHistogram.from_values(np.array([5e-324, 1e300]), max_buckets=4)
    b = ExponentialHistogram.from_values(np.array([-1e-300, -DBL_MAX, 2.0]), max_buckets=4)
    merged = ExponentialHistogram.merge_all([a, b])
    assert merged == _numpy_merge([a, b])
    assert merged.scale < 0 and merged.count == 5
    # a downscale past what the caller allows is refused, not clipped
    wide = np.ones(9, dtype=np.uint64)
    assert kernels.merge_buckets_numba([(0, -3, wide, 0)], 4, 2) is not None
    assert kernels.merge_buckets_numba([(0, -3, wide, 0)], 4, 1) is None


@pytest.mark.skipif(not jit.is_jit_available(), reason="compiled kernels only")
def test_the_coordinators_warmup_compiles_what_its_queries_run() -> None:
    kernels.warmup_merge()
    compiled = (
        len(kernels._merge_kernel.signatures),  # type: ignore[attr-defined]
        len(kernels._quantile_kernel.signatures),  # type: ignore[attr-defined]
    )
    parts = [Summary.from_values(SPECIAL[n]) for n in ("signed_lognormal", "normal", "one")]
    merged = Summary.merge_all(parts)
    merged.quantiles([0.5, 0.9, 0.99])
    # either side's counts read-only or not (a coordinator's empty sides share one
    # read-only array; others are views of its writable scan)
    for pos_frozen, neg_frozen in itertools.product([False, True], repeat=2):
        h = ExponentialHistogram.from_values(SPECIAL["signed_lognormal"])
        h.positive.counts.setflags(write=not pos_frozen)
        h.negative.counts.setflags(write=not neg_frozen)
        h.quantiles(np.array([0.25]))
        h.clamped_quantiles(np.array([0.25]), (h.count, -1.0, 1.0))
    assert (
        len(kernels._merge_kernel.signatures),  # type: ignore[attr-defined]
        len(kernels._quantile_kernel.signatures),  # type: ignore[attr-defined]
    ) == compiled  # nothing left to compile at the first query
