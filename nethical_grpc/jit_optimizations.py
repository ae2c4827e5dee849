"""JIT-compiled numeric kernels for risk scoring, statistics, similarity and features.

Every kernel exists twice, under explicit names, so tests can compare them:

* ``_<kernel>_numba``: explicit loops compiled with :func:`nethical_grpc.jit.maybe_njit`
  (``nogil`` and ``cache`` on).  When JIT is unavailable they still run, as plain (slow)
  Python loops with identical semantics.
* ``_<kernel>_numpy``: vectorised NumPy.

:data:`IMPLEMENTATIONS` maps each public name to ``(numba_impl, numpy_impl)``; both take the
*validated, converted* arguments the public wrapper passes.  The live implementation of each
public function is bound ONCE at import (:data:`LIVE`): the Numba one when
:func:`is_jit_available` is true, otherwise the NumPy one.  The single exception is
:func:`matrix_multiply_jit`, which always uses NumPy's ``a @ b`` (see its docstring).

Validation (shapes, lengths, parameters) happens once, in the public wrapper, before
dispatching; array inputs are converted with ``np.ascontiguousarray(..., dtype=float64)``
(token arrays to ``int64``).

Reproducibility between the two paths
-------------------------------------
The reductions in :func:`calculate_risk_score_jit`, :func:`calculate_statistics_jit` and
:func:`detect_outliers_zscore_jit` use the same fixed order on both paths: ``_LANES`` (32)
independent accumulators, lane ``j`` taking elements ``j, j + 32, ...`` by position (a
skipped NaN / non-finite pair contributes the neutral ``0.0`` / ``1.0``), then the lanes
combined left to right and the ``n % 32`` tail added last.  NumPy reproduces this with an
axis-0 reduction of an ``(n // 32, 32)`` view (a sequential element-wise accumulation per
column) and Numba vectorises the inner 32-lane loop, so both paths give bit-identical
results.  Quartiles and medians are order statistics combined with NumPy's interpolation
formula, so they and the outlier masks are bit-identical too.  The moving average is
bit-identical as well (the same compensated prefix sums, in the same order).  The
similarity and decay kernels agree to ``rtol=1e-12``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from importlib.util import find_spec
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from nethical_grpc.jit import bits_float, float_bits, is_jit_available, maybe_njit

__all__ = [
    "BACKEND",
    "IMPLEMENTATIONS",
    "LIVE",
    "NUMBA_BLAS_AVAILABLE",
    "batch_cosine_similarity_jit",
    "calculate_moving_average_jit",
    "calculate_risk_score_jit",
    "calculate_statistics_jit",
    "calculate_temporal_decay_jit",
    "cosine_similarity_jit",
    "detect_outliers_iqr_jit",
    "detect_outliers_zscore_jit",
    "euclidean_distance_jit",
    "extract_ngram_features_batch",
    "extract_ngram_features_jit",
    "is_jit_available",
    "matrix_multiply_jit",
    "warmup",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Float32Array = npt.NDArray[np.float32]
StatsTuple = tuple[float, float, float, float, float]
TokensLike = str | npt.ArrayLike

if is_jit_available():
    import numba

    prange: Any = numba.prange
    _threading_layer: Callable[[], str] = numba.threading_layer  # type: ignore[attr-defined]
else:
    prange = range

#: Independent accumulator lanes of the fixed-order reductions (see the module docstring).
_LANES: Final = 32
#: Severity scale maximum: ``severity / SEVERITY_MAX`` is clipped to ``[0, 1]``.
SEVERITY_MAX: Final = 5.0
#: 32-bit FNV-1a parameters.
_FNV_OFFSET: Final = 2166136261
_FNV_PRIME: Final = 16777619
_MASK32: Final = 0xFFFFFFFF

#: Whether Numba can call BLAS (``np.dot`` in nopython mode needs SciPy's BLAS bindings).
NUMBA_BLAS_AVAILABLE: Final = is_jit_available() and find_spec("scipy") is not None

_NAN: Final = math.nan
_ALL_NAN: Final = (_NAN, _NAN, _NAN, _NAN, _NAN)


# --------------------------------------------------------------------------------------------
# Shared fixed-order reductions (Numba side; also valid Python)
# --------------------------------------------------------------------------------------------


@maybe_njit()
def _moments_skipnan(x: FloatArray) -> tuple[int, float, float]:
    """``(m, mean, sum of squared deviations)`` of the non-NaN values of ``x``.

    Fixed order: 32 lanes by position (lane ``j`` takes ``x[j], x[j + 32], ...``), a NaN
    contributing ``0.0``; lanes combined left to right, then the tail.  Two passes
    (the second on deviations from the first pass's mean).
    """
    n = x.shape[0]
    acc = np.zeros(_LANES, dtype=np.float64)
    cnt = np.zeros(_LANES, dtype=np.int64)
    main = n - n % _LANES
    for base in range(0, main, _LANES):
        for j in range(_LANES):
            v = x[base + j]
            ok = v == v
            acc[j] += v if ok else 0.0
            cnt[j] += 1 if ok else 0
    total = 0.0
    m = 0
    for j in range(_LANES):
        total += acc[j]
        m += cnt[j]
    for i in range(main, n):
        v = x[i]
        if v == v:
            total += v
            m += 1
        else:
            total += 0.0
    if m == 0:
        return 0, np.nan, np.nan
    mean = total / m
    acc[:] = 0.0
    for base in range(0, main, _LANES):
        for j in range(_LANES):
            v = x[base + j]
            d = v - mean
            acc[j] += d * d if v == v else 0.0
    sq = 0.0
    for j in range(_LANES):
        sq += acc[j]
    for i in range(main, n):
        v = x[i]
        d = v - mean
        sq += d * d if v == v else 0.0
    return m, mean, sq


@maybe_njit()
def _nan_minmax(x: FloatArray) -> tuple[float, float]:
    """The smallest and largest non-NaN values of ``x`` (``inf, -inf`` if none).

    In :data:`_LANES` lanes by position, as :func:`_moments_skipnan` sums, each a select
    rather than a branch, which the compiler turns into vector instructions (a third of
    a branching loop's time on 1,000,000 values); a NaN compares false, so no lane takes
    it. Which zero a lane keeps when both signs are present is not specified."""
    n = x.shape[0]
    lows = np.full(_LANES, np.inf)
    highs = np.full(_LANES, -np.inf)
    main = n - n % _LANES
    for base in range(0, main, _LANES):
        for j in range(_LANES):
            v = x[base + j]
            lows[j] = v if v < lows[j] else lows[j]
            highs[j] = v if v > highs[j] else highs[j]
    lo = np.inf
    hi = -np.inf
    for j in range(_LANES):
        lo = lows[j] if lows[j] < lo else lo
        hi = highs[j] if highs[j] > hi else hi
    for i in range(main, n):
        v = x[i]
        lo = v if v < lo else lo
        hi = v if v > hi else hi
    return lo, hi


@maybe_njit()
def _select(x: FloatArray, lo: int, hi: int, k: int) -> None:
    """Rearrange ``x[lo:hi + 1]`` in place so that ``x[k]`` is its ``k``-th smallest value.

    Hoare/Wirth quickselect with a median-of-three pivot (expected O(n)); afterwards
    ``x[lo:k] <= x[k] <= x[k + 1:hi + 1]``.  ``x`` must not contain NaN.  Used on small
    candidate sets (see :func:`_radix_order_pair`) and as its fallback.
    """
    while hi > lo:
        mid = (lo + hi) >> 1
        if x[mid] < x[lo]:
            x[mid], x[lo] = x[lo], x[mid]
        if x[hi] < x[lo]:
            x[hi], x[lo] = x[lo], x[hi]
        if x[hi] < x[mid]:
            x[hi], x[mid] = x[mid], x[hi]
        pivot = x[mid]
        i = lo
        j = hi
        while i <= j:
            while x[i] < pivot:
                i += 1
            while pivot < x[j]:
                j -= 1
            if i <= j:
                x[i], x[j] = x[j], x[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return


@maybe_njit()
def _min_of(x: FloatArray, lo: int, hi: int) -> float:
    best = float(x[lo])
    for i in range(lo + 1, hi):
        if x[i] < best:
            best = x[i]
    return best


#: Buckets per round of :func:`_radix_order_pair` (11 key bits), and the candidate count below
#: which it switches to quickselect.
_SELECT_BUCKETS: Final = 2048
_SELECT_SMALL: Final = 256
_LOW63: Final = 0x7FFF_FFFF_FFFF_FFFF


@maybe_njit()
def _half_key(bits: int) -> int:
    """Order-preserving integer key of a double's bit pattern, halved (so spans fit int64)."""
    return (bits ^ ((bits >> 63) & _LOW63)) >> 1


@maybe_njit()
def _radix_order_pair(x: FloatArray, m: int, k: int, lo: float, hi: float) -> tuple[float, float]:
    """The ``k``-th and ``(k + 1)``-th smallest non-NaN values of ``x`` (0-based; the second
    is the ``k``-th again when ``k == m - 1``), leaving ``x`` unchanged.

    ``m`` is the number of non-NaN values, ``lo``/``hi`` their min/max.  Radix selection on
    an order-preserving integer key of each double (:func:`_half_key`): each round counts
    the candidates per bucket of ``2**shift`` keys (2048 buckets spanning the candidates'
    key range; NaN and non-candidates go to a discard bucket), keeps the bucket holding rank
    ``k`` and, when rank ``k + 1`` falls in a higher bucket, remembers the smallest value
    there.  The passes are branch-free, so unlike comparison-based selection they do not
    stall on branch mispredictions; at most 6 rounds (usually 2), then quickselect on the
    at most ``_SELECT_SMALL`` remaining candidates.  Only the candidates are copied.
    """
    if not hi > lo:  # all values equal
        return lo, lo
    nb = _SELECT_BUCKETS
    ends = np.empty(2, dtype=np.float64)
    ends[0] = lo
    ends[1] = hi
    eb = ends.view(np.int64)
    # -0.0 == 0.0, so a zero min/max may be either sign; widen to both zeros' keys.
    hmin = -1 if lo == 0.0 else _half_key(eb[0])
    hmax = 0 if hi == 0.0 else _half_key(eb[1])
    hist = np.zeros(nb + 1, dtype=np.int64)
    src = x
    cm = x.shape[0]
    kk = k
    need_next = k + 1 < m
    nxt = np.nan
    while cm > _SELECT_SMALL:
        span = hmax - hmin
        shift = 0
        while (span >> shift) >= nb:
            shift += 1
        bits = src.view(np.int64)
        hist[:] = 0
        for i in range(cm):
            h = _half_key(bits[i])
            ok = h >= hmin and h <= hmax
            hist[((h - hmin) >> shift) if ok else nb] += 1
        below = 0
        target = 0
        while below + hist[target] <= kk:
            below += hist[target]
            target += 1
        count = hist[target]
        if count < cm:
            dst = np.empty(count, dtype=np.float64)
            w = 0
            if need_next and kk + 1 >= below + count:
                up = np.inf
                for i in range(cm):
                    h = _half_key(bits[i])
                    ok = h >= hmin and h <= hmax
                    b = ((h - hmin) >> shift) if ok else nb
                    v = src[i]
                    if b == target:
                        dst[w] = v
                        w += 1
                    up = min(up, v if (b > target and b < nb) else np.inf)
                nxt = up
                need_next = False
            else:
                for i in range(cm):
                    h = _half_key(bits[i])
                    if h >= hmin and h <= hmax and ((h - hmin) >> shift) == target:
                        dst[w] = src[i]
                        w += 1
            src = dst
            cm = count
            kk -= below
        hmin += target << shift
        hmax = hmin + (1 << shift) - 1
        if shift == 0:
            break
    cand = np.empty(cm, dtype=np.float64)
    c = 0
    for i in range(cm):
        v = src[i]
        if v == v:
            cand[c] = v
            c += 1
    _select(cand, 0, c - 1, kk)
    kth = cand[kk]
    if need_next:
        nxt = _min_of(cand, kk + 1, c)
    if k + 1 >= m:
        nxt = kth
    return kth, nxt


# --------------------------------------------------------------------------------------------
# Rescaling by a power of two (both sides)
# --------------------------------------------------------------------------------------------


#: Sums of squares at least this large (and finite) lost nothing that matters to underflow
#: (each subnormal square is off by at most ``2**-1075``, a relative ``2**-115``); outside
#: ``[_SQ_LO, inf)`` the similarity and distance kernels rescale by a power of two.
_SQ_LO: Final = 2.0**-960


@maybe_njit()
def _abs_max(x: FloatArray) -> float:
    """The largest ``|x|``, NaN skipped (``0.0`` for an empty ``x``)."""
    big = 0.0
    for i in range(x.shape[0]):
        v = abs(x[i])
        big = v if v > big else big
    return big


def _exponent_of_py(big: float) -> int:
    """``frexp`` exponent of ``big >= 0``, so ``ldexp(v, -e)`` of ``|v| <= big`` lies in
    ``(-1, 1)``; ``0`` (do not rescale) when ``big`` is zero or infinite."""
    if big == 0.0 or not big < math.inf:
        return 0
    return math.frexp(big)[1]


_exponent_of = maybe_njit()(_exponent_of_py)


@maybe_njit()
def _scale_exponent(x: FloatArray) -> int:
    """:func:`_exponent_of` the largest ``|x|`` (NaN skipped)."""
    return _exponent_of(_abs_max(x))


def _scale_max_numpy(x: FloatArray) -> float:
    """The largest ``|x|``, NaN skipped (``0.0`` for an empty ``x``)."""
    ax = np.abs(x)
    big = float(np.max(ax, initial=0.0))  # fast; NaN propagates, so then skip NaN (slower)
    return big if big == big else float(np.fmax.reduce(ax, initial=0.0))


def _scale_exponent_numpy(x: FloatArray) -> int:
    """:func:`_scale_exponent` vectorised (``fmax`` skips NaN as the loop does)."""
    return _exponent_of_py(_scale_max_numpy(x))


@maybe_njit()
def _ldexp_array(x: FloatArray, e: int) -> FloatArray:
    """``np.ldexp(x, e)`` (Numba has no ufunc for it)."""
    out = np.empty(x.shape[0], dtype=np.float64)
    for i in range(x.shape[0]):
        out[i] = math.ldexp(x[i], e)
    return out


def _sq_in_range_py(sq: float) -> bool:
    return _SQ_LO <= sq < math.inf


_sq_in_range = maybe_njit()(_sq_in_range_py)


# --------------------------------------------------------------------------------------------
# Shared fixed-order reductions (NumPy side)
# --------------------------------------------------------------------------------------------


def _lane_sum_numpy(v: FloatArray) -> float:
    m = int(v.shape[0])
    main = m - m % _LANES
    total = 0.0
    if main:
        for a in np.add.reduce(v[:main].reshape(-1, _LANES), axis=0).tolist():
            total += a
    for a in v[main:].tolist():
        total += a
    return total


def _lane_prod_numpy(v: FloatArray) -> float:
    m = int(v.shape[0])
    main = m - m % _LANES
    total = 1.0
    if main:
        for a in np.multiply.reduce(v[:main].reshape(-1, _LANES), axis=0).tolist():
            total *= a
    for a in v[main:].tolist():
        total *= a
    return total


def _moments_numpy(x: FloatArray) -> tuple[int, float, float]:
    """``(m, mean, sum of squared deviations)`` of the non-NaN values, in the order of
    :func:`_moments_skipnan`."""
    nan = np.isnan(x)
    n_nan = int(np.count_nonzero(nan))
    m = int(x.shape[0]) - n_nan
    if m == 0:
        return 0, _NAN, _NAN
    y = np.where(nan, 0.0, x) if n_nan else x
    with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN results, as on the Numba path
        mean = _lane_sum_numpy(y) / m
        d = x - mean
        if n_nan:
            d[nan] = 0.0
        d *= d
        sq = _lane_sum_numpy(d)
    return m, mean, sq


#: Finite values with ``|x| <= 2**_MOMENTS_SAFE_EXP`` (and a largest ``|x|`` of at least
#: ``2**-_MOMENTS_SAFE_EXP``) neither overflow the moment sums nor lose a deviation to
#: underflow; others are rescaled (see :func:`_moments_scaled`).
_MOMENTS_SAFE_EXP: Final = 400


def _needs_rescale_py(m: int, mean: float, sq: float) -> bool:
    """Whether the moments may have overflowed or underflowed (then the values decide).

    A small ``sq`` (constant values, say) underflowed only when the values are all tiny,
    which a ``|mean|`` of at least ``2**-_MOMENTS_SAFE_EXP`` rules out.
    """
    if m == 0 or not (abs(mean) < math.inf and sq < math.inf):
        return m > 0
    return sq < _SQ_LO and abs(mean) < _MOMENTS_TINY


_MOMENTS_TINY: Final = 2.0**-_MOMENTS_SAFE_EXP


_needs_rescale = maybe_njit()(_needs_rescale_py)


@maybe_njit()
def _moments_scaled(x: FloatArray) -> tuple[int, float, float, int, FloatArray]:
    """``(m, mean, sq, e, y)``: :func:`_moments_skipnan` of ``y = ldexp(x, -e)``.

    ``e == 0`` and ``y is x`` unless the plain sums overflowed (values past about
    ``1e154``) or underflowed (values below about ``1e-144``) while every value is
    finite: then ``e`` makes the largest ``|y|`` lie in ``[0.5, 1)``, and ``mean`` and
    ``sq`` are those of ``y`` (an exact scaling, but for subnormal ``y``).
    """
    m, mean, sq = _moments_skipnan(x)
    if not _needs_rescale(m, mean, sq):
        return m, mean, sq, 0, x
    e = _scale_exponent(x)
    if -_MOMENTS_SAFE_EXP <= e <= _MOMENTS_SAFE_EXP:  # e == 0: an infinity (or all zero)
        return m, mean, sq, 0, x
    y = _ldexp_array(x, -e)
    m, mean, sq = _moments_skipnan(y)
    return m, mean, sq, e, y


def _moments_scaled_numpy(x: FloatArray) -> tuple[int, float, float, int, FloatArray]:
    """:func:`_moments_scaled` with :func:`_moments_numpy` (the same bits)."""
    m, mean, sq = _moments_numpy(x)
    if not _needs_rescale_py(m, mean, sq):
        return m, mean, sq, 0, x
    e = _scale_exponent_numpy(x)
    if -_MOMENTS_SAFE_EXP <= e <= _MOMENTS_SAFE_EXP:
        return m, mean, sq, 0, x
    y = np.ldexp(x, -e)
    m, mean, sq = _moments_numpy(y)
    return m, mean, sq, e, y


def _unscale_py(v: float, big: float, e: int) -> float:
    """``ldexp(v, e)`` of a scaled mean or deviation ``v``, first clipped to ``[-big, big]``
    (the scaled largest ``|value|``: rounding must not take it past the values)."""
    return math.ldexp(min(max(v, -big), big), e)


_unscale = maybe_njit()(_unscale_py)


def _midpoint_py(a: float, b: float) -> float:
    """``(a + b) / 2``, without overflowing for finite ``a`` and ``b``."""
    mid = (a + b) / 2.0
    if abs(mid) == math.inf and abs(a) < math.inf and abs(b) < math.inf:
        return a * 0.5 + b * 0.5
    return mid


_midpoint = maybe_njit()(_midpoint_py)


# --------------------------------------------------------------------------------------------
# Risk score
# --------------------------------------------------------------------------------------------


@maybe_njit()
def _risk_kernel(sev: FloatArray, conf: FloatArray) -> float:
    n = sev.shape[0]
    acc = np.ones(_LANES, dtype=np.float64)
    main = n - n % _LANES
    for base in range(0, main, _LANES):
        for j in range(_LANES):
            s = sev[base + j]
            c = conf[base + j]
            p = min(max(s / SEVERITY_MAX, 0.0), 1.0) * min(max(c, 0.0), 1.0)
            ok = (s - s == 0.0) and (c - c == 0.0)
            acc[j] *= (1.0 - p) if ok else 1.0
    q = 1.0
    for j in range(_LANES):
        q *= acc[j]
    for i in range(main, n):
        s = sev[i]
        c = conf[i]
        if s - s == 0.0 and c - c == 0.0:
            q *= 1.0 - min(max(s / SEVERITY_MAX, 0.0), 1.0) * min(max(c, 0.0), 1.0)
    return 1.0 - q


def _risk_score_numba(severities: FloatArray, confidences: FloatArray) -> float:
    return float(_risk_kernel(severities, confidences))


def _risk_score_numpy(severities: FloatArray, confidences: FloatArray) -> float:
    ok = np.isfinite(severities)
    ok &= np.isfinite(confidences)
    with np.errstate(invalid="ignore"):
        p = np.clip(severities / SEVERITY_MAX, 0.0, 1.0)
        p *= np.clip(confidences, 0.0, 1.0)
    f = np.subtract(1.0, p, out=p)
    f[~ok] = 1.0
    return 1.0 - _lane_prod_numpy(f)


def calculate_risk_score_jit(severities: npt.ArrayLike, confidences: npt.ArrayLike) -> float:
    """Aggregate risk of independent findings as a noisy-OR, in ``[0, 1]``.

    ``risk = 1 - prod_i (1 - p_i)`` with ``p_i = clip(sev_i / 5, 0, 1) * clip(conf_i, 0, 1)``
    (severity scale 1..5, confidence a probability).  Pairs where either value is NaN or
    +-inf are ignored; no pairs gives ``0.0``.  The result is monotone non-decreasing in
    every severity and confidence.  Absolute error is at most about ``n * 2**-53``.

    Raises ``ValueError`` unless both inputs are 1-D (scalars count as length 1) with the
    same length.
    """
    sev = _as_1d(severities, "severities")
    conf = _as_1d(confidences, "confidences")
    if sev.shape[0] != conf.shape[0]:
        raise ValueError(
            f"severities and confidences must have the same length, got {sev.shape[0]} "
            f"and {conf.shape[0]}"
        )
    return _LIVE_RISK(sev, conf)


# --------------------------------------------------------------------------------------------
# Temporal decay
# --------------------------------------------------------------------------------------------


#: ``2**f = e**(f ln 2)`` for ``f`` in ``[-0.5, 0.5]``: Taylor coefficients to degree 13 (the
#: remainder is below 1e-17, so the result is within a few ulp of ``np.exp2``).
#: Highest degree first, for Horner's rule.
_EXP2_HORNER: Final = tuple(math.log(2.0) ** k / math.factorial(k) for k in range(13, -1, -1))
#: Adding ``1.5 * 2**52`` rounds a float of magnitude < 2**51 to an integer held in the low
#: mantissa bits, so ``round(x)`` comes out as both a float and (bit difference) an int64.
_ROUNDER: Final = 6755399441055744.0


@maybe_njit(fastmath={"contract"})
def _decay_kernel(scores: FloatArray, ages: FloatArray, half_life: float) -> FloatArray:
    # Numba has no vector exp2 (no SVML), so exp2 is built from branch-free arithmetic that
    # the compiler vectorises: x = k + f with k = round(x), 2**f by polynomial, and 2**k
    # by writing k into a float's exponent bits.  That covers normal results
    # (-1022 <= x <= 1023); anything else (NaN, overflow, subnormal) is redone by np.exp2.
    # The one fast-math licence, "contract", lets each step of Horner's rule be one fused
    # multiply-add (no other reordering, and NaN and infinities as before): on ❈ 1.25
    # against 1.73 ms for 1,000,000 values, the largest relative difference from
    # np.exp2's result the same (4.3e-16).
    n = scores.shape[0]
    out = np.empty(n, dtype=np.float64)
    rounder_bits = float_bits(_ROUNDER)
    outside = 0
    for i in range(n):
        x = -(ages[i] / half_life)
        outside += not ((x >= -1022.0) & (x <= 1023.0))
        xc = x if x > -1022.0 else -1022.0
        xc = xc if xc < 1023.0 else 1023.0
        t = xc + _ROUNDER
        f = xc - (t - _ROUNDER)
        p = 0.0
        for c in _EXP2_HORNER:  # a constant tuple: the compiler unrolls it
            p = p * f + c
        k = float_bits(t) - rounder_bits
        out[i] = scores[i] * (p * bits_float((k + 1023) << 52))
    if outside:
        for i in range(n):
            x = -(ages[i] / half_life)
            if not ((x >= -1022.0) & (x <= 1023.0)):
                out[i] = scores[i] * np.exp2(x)
    return out


def _temporal_decay_numba(scores: FloatArray, ages: FloatArray, half_life: float) -> FloatArray:
    out: FloatArray = _decay_kernel(scores, ages, half_life)
    return out


def _temporal_decay_numpy(scores: FloatArray, ages: FloatArray, half_life: float) -> FloatArray:
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN are results here
        e = np.divide(ages, half_life)
        np.negative(e, out=e)
        np.exp2(e, out=e)
        e *= scores
    return e


def calculate_temporal_decay_jit(
    scores: npt.ArrayLike, ages_seconds: npt.ArrayLike, half_life_seconds: float
) -> FloatArray:
    """Exponentially decayed scores: ``scores * 0.5 ** (age / half_life)``.

    Computed as ``scores * exp2(-(age / half_life))``, so an age of exactly one half-life
    halves a score exactly.  ``ages_seconds`` is a 1-D array of the same length as
    ``scores`` or a scalar (applied to all).  Negative ages grow the score (an observation
    from the future); NaN propagates.  Raises ``ValueError`` when ``half_life_seconds`` is
    not a finite number ``> 0`` or the lengths differ.
    """
    half_life = _finite_float(half_life_seconds, "half_life_seconds")
    if half_life <= 0.0:
        raise ValueError(f"half_life_seconds must be > 0, got {half_life_seconds!r}")
    s = _as_1d(scores, "scores")
    if ages_seconds is None:  # NumPy would make it a NaN
        raise ValueError("ages_seconds must be numbers, got None")
    raw = np.asarray(ages_seconds, dtype=np.float64)
    if raw.ndim == 0:
        raw = np.full(s.shape[0], float(raw), dtype=np.float64)
    ages = np.ascontiguousarray(raw)
    if ages.ndim != 1:
        raise ValueError(f"ages_seconds must be a scalar or 1-D, got shape {ages.shape}")
    if ages.shape[0] != s.shape[0]:
        raise ValueError(
            f"scores and ages_seconds must have the same length, got {s.shape[0]} "
            f"and {ages.shape[0]}"
        )
    return _LIVE_DECAY(s, ages, half_life)


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


#: Non-NaN values from which an order statistic is first bracketed from a sample (see
#: :func:`_order_pair_bracketed`); fewer go straight to the radix selection.
_BRACKET_MIN: Final = 1 << 16
#: Values the bracket is taken from (every ``n // _BRACKET_SAMPLE``-th of ``x``).
_BRACKET_SAMPLE: Final = 4096


@maybe_njit()
def _order_pair_bracketed(
    x: FloatArray, m: int, k: int, lo: float, hi: float, samples: int
) -> tuple[float, float]:
    """:func:`_radix_order_pair` (the same values) for a large ``x``, bracketed first.

    A bracket ``[a, b]`` around rank ``k`` is read off ``samples`` values of ``x`` taken
    at a fixed stride (the sample's ranks three standard deviations of a sampled rank
    either side of ``k``'s place). A pass counts the values below and inside it, a
    second copies those inside, both without branches, and the radix selection runs on
    the copies. Should the bracket miss rank ``k`` or ``k + 1`` (data ordered
    against the stride), or hold over half the values, the selection runs on all of
    ``x`` instead: slower, never wrong, and never more than half of ``x`` copied."""
    n = x.shape[0]
    step = max(n // samples, 1)
    picked = np.empty(min(samples, n), dtype=np.float64)
    c = 0
    for i in range(picked.shape[0]):
        v = x[i * step]
        if v == v:
            picked[c] = v
            c += 1
    if c < 16:
        return _radix_order_pair(x, m, k, lo, hi)
    place = int(k * (c / m))
    spread = int(3.0 * math.sqrt(c)) + 1
    r_lo = max(place - spread, 0)
    r_hi = min(place + spread + 1, c - 1)
    _select(picked, 0, c - 1, r_lo)
    _select(picked, r_lo, c - 1, r_hi)
    a = lo if r_lo == 0 else picked[r_lo]
    b = hi if r_hi == c - 1 else picked[r_hi]
    below = 0
    inside = 0
    for i in range(n):
        v = x[i]
        below += 1 if v < a else 0
        inside += 1 if (v >= a and v <= b) else 0
    if below > k or not (k + 1 < below + inside or k + 1 >= m) or inside > n // 2:
        return _radix_order_pair(x, m, k, lo, hi)
    if not b > a:  # every value inside is a, ranks k and k + 1 among them
        return a, a
    # one spare slot: every value is written, and only one inside moves on past it (no
    # branch to mispredict where the values inside lie scattered)
    copies = np.empty(inside + 1, dtype=np.float64)
    w = 0
    for i in range(n):
        v = x[i]
        copies[w] = v
        w += 1 if (v >= a and v <= b) else 0
    return _radix_order_pair(copies[:inside], inside, k - below, a, b)


@maybe_njit()
def _order_pair(x: FloatArray, m: int, k: int, lo: float, hi: float) -> tuple[float, float]:
    """The ``k``-th and ``(k + 1)``-th smallest non-NaN values of ``x``, as
    :func:`_radix_order_pair` gives them: bracketed first (:func:`_order_pair_bracketed`)
    when ``x`` holds many values."""
    if m >= _BRACKET_MIN:
        return _order_pair_bracketed(x, m, k, lo, hi, _BRACKET_SAMPLE)
    return _radix_order_pair(x, m, k, lo, hi)


@maybe_njit()
def _stats_kernel(x: FloatArray) -> tuple[float, float, float, float, float]:
    m, mean, sq, e, y = _moments_scaled(x)
    if m == 0:
        return np.nan, np.nan, np.nan, np.nan, np.nan
    std = math.sqrt(sq / m)
    if e != 0:
        big = _abs_max(y)
        mean = _unscale(mean, big, e)
        std = _unscale(std, big, e)
    lo, hi = _nan_minmax(x)
    if m % 2 == 1:
        median, _ = _order_pair(x, m, m // 2, lo, hi)
    else:
        a, b = _order_pair(x, m, m // 2 - 1, lo, hi)
        median = _midpoint(a, b)
    return mean, std, lo, hi, median


def _statistics_numba(values: FloatArray) -> StatsTuple:
    mean, std, lo, hi, median = _stats_kernel(values)
    return float(mean), float(std), float(lo), float(hi), float(median)


def _statistics_numpy(values: FloatArray) -> StatsTuple:
    m, mean, sq, e, y = _moments_scaled_numpy(values)
    if m == 0:
        return _ALL_NAN
    std = math.sqrt(sq / m)
    if e != 0:
        big = _scale_max_numpy(y)
        mean = _unscale_py(mean, big, e)
        std = _unscale_py(std, big, e)
    lo = float(np.fmin.reduce(values))
    hi = float(np.fmax.reduce(values))
    k = m // 2
    if m % 2 == 1:
        median = float(np.partition(values, k)[k])  # NaN sorts last, beyond index m - 1
    else:
        part = np.partition(values, (k - 1, k))
        median = _midpoint_py(float(part[k - 1]), float(part[k]))
    return mean, std, lo, hi, median


def calculate_statistics_jit(values: npt.ArrayLike) -> StatsTuple:
    """``(mean, std, min, max, median)`` of the non-NaN values; ``std`` is the population one.

    NaN entries are ignored (like ``np.nanmean`` / ``np.nanstd`` / ``np.nanmedian``); an empty
    or all-NaN input gives five NaNs.  Infinities are kept (so mean/std may become inf/NaN,
    as with NumPy).  The median of an even count is the mean of the two middle values.
    Unlike NumPy, finite values of any magnitude give finite, accurate results: when the
    sums of values or of squared deviations would overflow or underflow, they are taken of
    the values scaled by a power of two.
    """
    return _LIVE_STATS(_as_1d(values, "values"))


# --------------------------------------------------------------------------------------------
# Moving average
# --------------------------------------------------------------------------------------------


#: Past this bound on ``n * max|x|`` the prefix sums could overflow: the values are scaled
#: down by a power of two first (exact), and the means scaled back up.
_PREFIX_SUM_LIMIT_EXP: Final = 1000


def _moving_average_shift_py(biggest: float, n: int) -> int:
    """The power of two (``k``: values times ``2**-k``) that keeps prefix sums of ``n``
    values of magnitude at most ``biggest`` below ``2**_PREFIX_SUM_LIMIT_EXP``; 0 when
    they stay below it unscaled.  The NumPy path calls it as is, the Numba kernel
    compiled (:data:`_moving_average_shift`)."""
    if biggest == 0.0:
        return 0
    shift = math.frexp(biggest)[1] + math.frexp(float(n))[1] - _PREFIX_SUM_LIMIT_EXP
    return shift if shift > 0 else 0


_moving_average_shift = maybe_njit()(_moving_average_shift_py)


@maybe_njit()
def _moving_average_kernel(x: FloatArray, window: int) -> FloatArray:
    n = x.shape[0]
    out = np.empty(n, dtype=np.float64)
    if n == 0:
        return out
    biggest = 0.0
    for i in range(n):
        v = abs(x[i])
        if v - v == 0.0 and v > biggest:  # finite
            biggest = v
    shift = _moving_average_shift(biggest, n)
    # a mean lies within the values (scaled): rounding may take it one step past, and the
    # scaling back past the largest double
    bound = math.ldexp(biggest, -shift)
    # prefix sums of the finite values (scaled) and their Neumaier compensation, kept
    # apart; a window is (s - s_then) + (comp - comp_then), "then" its start's prefix
    # (the last `window` prefixes are kept in a ring)
    m = min(window, n)
    ring_s = np.zeros(m, dtype=np.float64)
    ring_comp = np.zeros(m, dtype=np.float64)
    ring_count = np.zeros(m, dtype=np.int64)
    s = 0.0
    comp = 0.0
    count = 0
    j = 0
    for i in range(n):
        v = x[i]
        if v - v == 0.0:  # finite
            if shift:
                v = math.ldexp(v, -shift)
            count += 1
        else:
            v = 0.0
        t = v if i == 0 else s + v
        if abs(s) >= abs(v):  # the exact rounding error of s + v
            comp += (s - t) + v
        else:
            comp += (v - t) + s
        s = t
        if i >= window:
            c = count - ring_count[j]
            total = (s - ring_s[j]) + (comp - ring_comp[j])
        else:
            c = count
            total = s + comp
        ring_s[j] = s
        ring_comp[j] = comp
        ring_count[j] = count
        j = j + 1 if j + 1 < m else 0
        if c > 0:
            mean = total / c
            if shift:
                mean = math.ldexp(min(max(mean, -bound), bound), shift)
            out[i] = mean
        else:
            out[i] = np.nan
    return out


def _moving_average_numba(values: FloatArray, window: int) -> FloatArray:
    out: FloatArray = _moving_average_kernel(values, window)
    return out


def _moving_average_numpy(values: FloatArray, window: int) -> FloatArray:
    n = int(values.shape[0])
    if n == 0:
        return np.empty(0, dtype=np.float64)
    finite = np.isfinite(values)
    x = np.where(finite, values, 0.0)
    biggest = float(np.max(np.abs(x)))
    shift = _moving_average_shift_py(biggest, n)
    if shift:
        np.ldexp(x, -shift, out=x)
    sums = np.cumsum(x)
    # the exact rounding error of each prefix addition sums[i - 1] + x[i] (Knuth's
    # two-sum, element-wise; the same error the Numba loop finds with Neumaier's test):
    # their cumulative sum is that loop's compensation, summed in the same order
    prev = np.empty(n, dtype=np.float64)
    prev[0] = 0.0
    prev[1:] = sums[:-1]
    added = sums - prev
    errors = sums - added
    np.subtract(prev, errors, out=errors)
    x -= added
    errors += x
    errors[0] = 0.0  # the first prefix is the first value itself
    comps = np.cumsum(errors, out=errors)
    counts = np.cumsum(finite, dtype=np.int64)
    if n > window:
        total = np.empty(n, dtype=np.float64)
        np.add(sums[:window], comps[:window], out=total[:window])
        tail = np.subtract(sums[window:], sums[:-window], out=total[window:])
        tail += comps[window:] - comps[:-window]
        wcount = counts.copy()
        wcount[window:] -= counts[:-window]
    else:
        total = sums + comps
        wcount = counts
    out = np.full(n, np.nan, dtype=np.float64)
    has = wcount > 0
    np.divide(total, wcount, out=out, where=has)
    if shift:  # as in the Numba kernel: no rounding past the values, then scaled back
        bound = math.ldexp(biggest, -shift)
        np.clip(out, -bound, bound, out=out)
        np.ldexp(out, shift, out=out, where=has)
    return out


def calculate_moving_average_jit(values: npt.ArrayLike, window: int) -> FloatArray:
    """Trailing simple moving average, same length as ``values``.

    ``out[i]`` is the mean of the finite values among ``values[max(0, i - window + 1) : i + 1]``:
    the first ``window - 1`` entries average what is available so far (an expanding mean),
    and non-finite entries (NaN, +-inf) are treated as missing.  A window without any
    finite value gives NaN.  O(n): both paths difference prefix sums carried with Neumaier
    compensation (sum and compensation kept apart, so a huge value that left the window
    leaves nothing of itself behind: ``[1e20, 1, 2, 3]`` with a window of 2 ends in
    ``1.5, 2.5``), the Numba path in a loop, the NumPy path with cumulative sums and
    element-wise error terms, in the same order, so they agree.  Values so large that the
    prefix sums could overflow (``n * max|x|`` past ``2**1000``) are scaled down by a
    power of two first and the means scaled back: finite inputs never give NaN.
    Raises ``ValueError`` unless ``window`` is an integer ``>= 1``.
    """
    if isinstance(window, bool) or not isinstance(window, int | np.integer):
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    w = int(window)
    if w < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    x = _as_1d(values, "values")
    # a window past the end is the whole array (and must fit the kernels' int64)
    return _LIVE_MOVING_AVERAGE(x, min(w, max(int(x.shape[0]), 1)))


# --------------------------------------------------------------------------------------------
# Similarity and distance
# --------------------------------------------------------------------------------------------


@maybe_njit(fastmath={"reassoc"})
def _cosine_sums(a: FloatArray, b: FloatArray) -> tuple[float, float, float]:
    ab = 0.0
    aa = 0.0
    bb = 0.0
    for i in range(a.shape[0]):
        x = a[i]
        y = b[i]
        ab += x * y
        aa += x * x
        bb += y * y
    return ab, aa, bb


@maybe_njit()
def _cosine_kernel(a: FloatArray, b: FloatArray) -> float:
    ab, aa, bb = _cosine_sums(a, b)
    if not (_sq_in_range(aa) and _sq_in_range(bb)):
        # a squared norm underflowed or overflowed: the cosine does not change when either
        # vector is scaled, so scale each to a largest |value| in [0.5, 1) and redo
        ea = _scale_exponent(a)
        eb = _scale_exponent(b)
        if ea != 0 or eb != 0:
            ab, aa, bb = _cosine_sums(_ldexp_array(a, -ea), _ldexp_array(b, -eb))
    if aa == 0.0 or bb == 0.0:
        return 0.0
    c = (ab / math.sqrt(aa)) / math.sqrt(bb)  # no product of norms: it could underflow
    return min(max(c, -1.0), 1.0)


def _cosine_similarity_numba(a: FloatArray, b: FloatArray) -> float:
    return float(_cosine_kernel(a, b))


def _cosine_similarity_numpy(a: FloatArray, b: FloatArray) -> float:
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is redone below
        aa = float(np.dot(a, a))
        bb = float(np.dot(b, b))
        if not (_sq_in_range_py(aa) and _sq_in_range_py(bb)):  # as in the Numba kernel
            ea = _scale_exponent_numpy(a)
            eb = _scale_exponent_numpy(b)
            if ea != 0 or eb != 0:
                a = np.ldexp(a, -ea)
                b = np.ldexp(b, -eb)
                aa = float(np.dot(a, a))
                bb = float(np.dot(b, b))
        if aa == 0.0 or bb == 0.0:
            return 0.0
        ab = float(np.dot(a, b))
    c = (ab / math.sqrt(aa)) / math.sqrt(bb)
    return min(max(c, -1.0), 1.0)


def cosine_similarity_jit(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """``a . b / (|a| |b|)`` clipped to ``[-1, 1]``; ``0.0`` when either norm is zero.

    Both vectors must be 1-D with the same length (``ValueError`` otherwise).  Finite
    vectors of any magnitude work: when a squared norm would overflow or underflow
    (``|x|`` past about ``1e154`` or below ``1e-144``), each vector is first scaled by a
    power of two, which does not change the cosine.  NaN gives NaN, an infinity NaN or
    ``0.0``.
    """
    x, y = _pair(a, b)
    return _LIVE_COSINE(x, y)


def _ldexp_or_inf_py(r: float, e: int) -> float:
    """``ldexp(r, e)`` of ``r >= 0``, ``inf`` past the largest double (``math.ldexp`` would
    raise)."""
    if e > 0 and r >= math.ldexp(1.0, 1024 - e):
        return math.inf
    return math.ldexp(r, e)


_ldexp_or_inf = maybe_njit()(_ldexp_or_inf_py)


@maybe_njit(fastmath={"reassoc"})
def _euclidean_sq(a: FloatArray, b: FloatArray, e: int, each: bool) -> float:
    """``sum(d * d)`` of the differences scaled by ``2**-e``: ``ldexp(a - b, -e)``, or
    ``ldexp(a, -e) - ldexp(b, -e)`` when ``each`` (a difference that overflows)."""
    s = 0.0
    if e == 0:
        for i in range(a.shape[0]):
            d = a[i] - b[i]
            s += d * d
    elif each:
        for i in range(a.shape[0]):
            d = math.ldexp(a[i], -e) - math.ldexp(b[i], -e)
            s += d * d
    else:
        for i in range(a.shape[0]):
            d = math.ldexp(a[i] - b[i], -e)
            s += d * d
    return s


@maybe_njit(fastmath={"reassoc"})
def _abs_diff_sum(a: FloatArray, b: FloatArray) -> float:
    t = 0.0
    for i in range(a.shape[0]):
        t += abs(a[i] - b[i])
    return t


@maybe_njit()
def _euclidean_kernel(a: FloatArray, b: FloatArray) -> float:
    s = _euclidean_sq(a, b, 0, False)
    if _sq_in_range(s):
        return math.sqrt(s)
    if s == 0.0 and _abs_diff_sum(a, b) == 0.0:  # equal vectors (one fast pass)
        return 0.0
    # the sum of squares overflowed or underflowed (or holds NaN): rescale by the largest
    # difference; when a difference itself overflows, scale both operands first
    dmax = 0.0
    big = 0.0
    for i in range(a.shape[0]):
        x = abs(a[i])
        y = abs(b[i])
        d = abs(a[i] - b[i])
        dmax = d if d > dmax else dmax
        big = x if x > big else big
        big = y if y > big else big
    if dmax == 0.0 or not big < np.inf:  # all equal (or NaN), or a true infinity
        return math.sqrt(s)
    if dmax < np.inf:
        e = math.frexp(dmax)[1]
        return math.ldexp(math.sqrt(_euclidean_sq(a, b, e, False)), e)
    e = math.frexp(big)[1] + 1
    return _ldexp_or_inf(math.sqrt(_euclidean_sq(a, b, e, True)), e)


def _euclidean_distance_numba(a: FloatArray, b: FloatArray) -> float:
    return float(_euclidean_kernel(a, b))


def _euclidean_distance_numpy(a: FloatArray, b: FloatArray) -> float:
    with np.errstate(over="ignore", invalid="ignore"):  # overflows are redone below
        d = a - b
        s = float(np.dot(d, d))
        if _sq_in_range_py(s) or (s == 0.0 and not d.any()):
            return math.sqrt(s)
        dmax = float(np.fmax.reduce(np.abs(d), initial=0.0))  # as in the Numba kernel
        big = max(_scale_max_numpy(a), _scale_max_numpy(b))
        if dmax == 0.0 or not big < math.inf:
            return math.sqrt(s)
        if dmax < math.inf:
            e = math.frexp(dmax)[1]
            np.ldexp(d, -e, out=d)
        else:
            e = math.frexp(big)[1] + 1
            d = np.ldexp(a, -e)
            d -= np.ldexp(b, -e)
        return _ldexp_or_inf_py(math.sqrt(float(np.dot(d, d))), e)


def euclidean_distance_jit(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """``sqrt(sum((a - b) ** 2))`` of two 1-D vectors of the same length (``ValueError``
    otherwise); empty vectors are at distance ``0.0``.

    Finite vectors of any magnitude work: when the sum of squares would overflow or
    underflow, the differences are scaled by a power of two first (so the result is
    ``inf`` only when the distance exceeds the largest double).  NaN gives NaN.
    """
    x, y = _pair(a, b)
    return _LIVE_EUCLIDEAN(x, y)


@maybe_njit(fastmath={"reassoc"})
def _dot_and_sq(row: FloatArray, query: FloatArray) -> tuple[float, float]:
    dot = 0.0
    rr = 0.0
    for j in range(row.shape[0]):
        r = row[j]
        dot += r * query[j]
        rr += r * r
    return dot, rr


@maybe_njit(fastmath={"reassoc"})
def _batch_cosine_kernel(query: FloatArray, matrix: FloatArray) -> FloatArray:
    n, d = matrix.shape
    qq = 0.0
    for j in range(d):
        qq += query[j] * query[j]
    if not _sq_in_range(qq):  # rescaled as in _cosine_kernel
        eq = _scale_exponent(query)
        if eq != 0:
            query = _ldexp_array(query, -eq)
            qq = 0.0
            for j in range(d):
                qq += query[j] * query[j]
    qn = math.sqrt(qq)
    out = np.zeros(n, dtype=np.float64)
    if qn == 0.0:
        return out
    for i in range(n):
        dot, rr = _dot_and_sq(matrix[i], query)
        if not _sq_in_range(rr):
            er = _scale_exponent(matrix[i])
            if er != 0:
                dot, rr = _dot_and_sq(_ldexp_array(matrix[i], -er), query)
        if rr > 0.0:
            c = (dot / qn) / math.sqrt(rr)
            out[i] = min(max(c, -1.0), 1.0)
    return out


def _batch_cosine_similarity_numba(query: FloatArray, matrix: FloatArray) -> FloatArray:
    out: FloatArray = _batch_cosine_kernel(query, matrix)
    return out


def _batch_cosine_similarity_numpy(query: FloatArray, matrix: FloatArray) -> FloatArray:
    n = int(matrix.shape[0])
    out = np.zeros(n, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # overflows are redone below
        qq = float(np.dot(query, query))
        if not _sq_in_range_py(qq):  # rescaled as in the Numba kernel
            eq = _scale_exponent_numpy(query)
            if eq != 0:
                query = np.ldexp(query, -eq)
                qq = float(np.dot(query, query))
        qn = math.sqrt(qq)
        if qn == 0.0 or n == 0:
            return out
        dots = matrix @ query
        sq = np.einsum("ij,ij->i", matrix, matrix)
        redo = ~((sq >= _SQ_LO) & (sq < math.inf))
        if redo.any():
            rows = matrix[redo]
            big = np.fmax.reduce(np.abs(rows), axis=1, initial=0.0)
            exps = np.frexp(big)[1]  # 0 for a zero row; an infinite one is not rescaled
            exps[~(big < math.inf)] = 0
            rows = np.ldexp(rows, -exps[:, None])
            dots[redo] = rows @ query
            sq[redo] = np.einsum("ij,ij->i", rows, rows)
        dots /= qn
        norms = np.sqrt(sq)
        np.divide(dots, norms, out=out, where=norms > 0.0)
    np.clip(out, -1.0, 1.0, out=out)
    return out


def batch_cosine_similarity_jit(query: npt.ArrayLike, matrix: npt.ArrayLike) -> FloatArray:
    """Cosine similarity of a 1-D ``query`` (dim ``d``) with each row of ``matrix`` ``(n, d)``.

    Rows with zero norm (or a zero query) give ``0.0``; results are clipped to ``[-1, 1]``.
    As in :func:`cosine_similarity_jit`, the query and each row are rescaled by a power of
    two when their squared norm would overflow or underflow.
    The Numba path makes one fused pass over ``matrix`` (dot product and row norm together)
    on one thread: the kernel is memory-bound, and ``parallel=True`` measured no faster on
    small hosts while fighting BLAS threads for cores (``nogil`` lets callers run several
    batches concurrently instead).
    """
    q = np.ascontiguousarray(query, dtype=np.float64)
    m = np.ascontiguousarray(matrix, dtype=np.float64)
    if q.ndim != 1:
        raise ValueError(f"query must be 1-D, got shape {q.shape}")
    if m.ndim != 2 or m.shape[1] != q.shape[0]:
        raise ValueError(f"matrix must have shape (n, {q.shape[0]}), got {m.shape}")
    return _LIVE_BATCH_COSINE(q, m)


# --------------------------------------------------------------------------------------------
# Outliers
# --------------------------------------------------------------------------------------------


def _quartile_plan(m: int, q: float) -> tuple[int, int, float, float]:
    """NumPy's ``method='linear'`` quantile: ``(prev, next, virtual_index, gamma)``."""
    virtual = (m * q + (1.0 - q)) - 1.0
    if virtual >= m - 1:
        return m - 1, m - 1, virtual, virtual - (m - 1)
    prev = math.floor(virtual)
    return prev, prev + 1, virtual, virtual - prev


def _lerp_py(a: float, b: float, t: float) -> float:
    """NumPy's ``_lerp``: ``a + (b - a) * t``, or ``b - (b - a) * (1 - t)`` when ``t >= 0.5``."""
    diff = b - a
    if t >= 0.5:
        return b - diff * (1.0 - t)
    return a + diff * t


_lerp = maybe_njit()(_lerp_py)


@maybe_njit()
def _quantile_linear(x: FloatArray, m: int, q: float, lo: float, hi: float) -> float:
    """``np.percentile`` (``method='linear'``) of the ``m`` non-NaN values of ``x``, exactly."""
    virtual = (m * q + (1.0 - q)) - 1.0
    if virtual >= m - 1:
        return _lerp(hi, hi, virtual - (m - 1))
    prev = math.floor(virtual)
    a, b = _order_pair(x, m, prev, lo, hi)
    return _lerp(a, b, virtual - prev)


@maybe_njit()
def _iqr_kernel(x: FloatArray, k: float) -> BoolArray:
    n = x.shape[0]
    out = np.zeros(n, dtype=np.bool_)
    lo, hi = _nan_minmax(x)
    m = 0
    for i in range(n):
        m += 1 if x[i] == x[i] else 0
    if m == 0:
        return out
    q1 = _quantile_linear(x, m, 0.25, lo, hi)
    q3 = _quantile_linear(x, m, 0.75, lo, hi)
    spread = q3 - q1
    low = q1 - k * spread
    high = q3 + k * spread
    for i in range(n):
        v = x[i]
        out[i] = v < low or v > high
    return out


def _outliers_iqr_numba(values: FloatArray, k: float) -> BoolArray:
    out: BoolArray = _iqr_kernel(values, k)
    return out


def _outliers_iqr_numpy(values: FloatArray, k: float) -> BoolArray:
    m = int(values.shape[0]) - int(np.count_nonzero(np.isnan(values)))
    if m == 0:
        return np.zeros(values.shape[0], dtype=np.bool_)
    plans = [_quartile_plan(m, 0.25), _quartile_plan(m, 0.75)]
    kth = sorted({i for p in plans for i in p[:2]})
    part = np.partition(values, kth)  # NaN sorts last, beyond index m - 1
    q1, q3 = (_lerp_py(float(part[prev]), float(part[nxt]), gamma) for prev, nxt, _, gamma in plans)
    spread = q3 - q1
    out = values < q1 - k * spread
    out |= values > q3 + k * spread
    return out


def detect_outliers_iqr_jit(values: npt.ArrayLike, k: float = 1.5) -> BoolArray:
    """Tukey fences: ``v < Q1 - k * IQR`` or ``v > Q3 + k * IQR`` (boolean mask).

    Quartiles of the non-NaN values use linear interpolation, exactly as
    ``np.percentile(v, [25, 75])`` (default method).  NaN is never an outlier; an empty or
    all-NaN input gives an all-False mask.  ``k`` must be finite and ``>= 0``.
    """
    kk = _finite_float(k, "k")
    if kk < 0.0:
        raise ValueError(f"k must be >= 0, got {k!r}")
    return _LIVE_IQR(_as_1d(values, "values"), kk)


@maybe_njit()
def _zscore_kernel(x: FloatArray, threshold: float) -> BoolArray:
    n = x.shape[0]
    out = np.zeros(n, dtype=np.bool_)
    m, mean, sq, _, y = _moments_scaled(x)  # compared at the scale of y
    if m == 0:
        return out
    std = math.sqrt(sq / m)
    if std == 0.0:
        return out
    limit = threshold * std
    for i in range(n):
        out[i] = abs(y[i] - mean) > limit
    return out


def _outliers_zscore_numba(values: FloatArray, threshold: float) -> BoolArray:
    out: BoolArray = _zscore_kernel(values, threshold)
    return out


def _outliers_zscore_numpy(values: FloatArray, threshold: float) -> BoolArray:
    m, mean, sq, _, y = _moments_scaled_numpy(values)
    std = math.sqrt(sq / m) if m else 0.0
    if std == 0.0:
        return np.zeros(values.shape[0], dtype=np.bool_)
    with np.errstate(invalid="ignore"):  # an infinity: inf - inf is NaN, as in the kernel
        d = y - mean
    np.abs(d, out=d)
    out: BoolArray = d > threshold * std
    return out


def detect_outliers_zscore_jit(values: npt.ArrayLike, threshold: float = 3.0) -> BoolArray:
    """``|v - mean| > threshold * std`` (boolean mask), mean/std (population) over non-NaN.

    NaN is never an outlier; ``std == 0`` (or no non-NaN value) gives an all-False mask.
    ``threshold`` must be finite and ``> 0``.
    """
    t = _finite_float(threshold, "threshold")
    if t <= 0.0:
        raise ValueError(f"threshold must be > 0, got {threshold!r}")
    return _LIVE_ZSCORE(_as_1d(values, "values"), t)


# --------------------------------------------------------------------------------------------
# Hashed character n-grams
# --------------------------------------------------------------------------------------------


@maybe_njit()
def _ngram_row(cps: IntArray, n: int, dim: int, out: Float32Array) -> None:
    """Add the hashed n-gram counts of ``cps`` into ``out`` (length ``dim``)."""
    for start in range(cps.shape[0] - n + 1):
        h = _FNV_OFFSET
        for k in range(n):
            cp = cps[start + k]
            for shift in range(0, 32, 8):
                h = ((h ^ ((cp >> shift) & 0xFF)) * _FNV_PRIME) & _MASK32
        h ^= h >> 16
        out[h % dim] += 1.0


@maybe_njit()
def _ngram_kernel(cps: IntArray, n: int, dim: int) -> Float32Array:
    out = np.zeros(dim, dtype=np.float32)
    _ngram_row(cps, n, dim, out)
    return out


@maybe_njit(parallel=True)
def _ngram_batch_kernel(cps: IntArray, offsets: IntArray, n: int, dim: int) -> Float32Array:
    rows = offsets.shape[0] - 1
    out = np.zeros((rows, dim), dtype=np.float32)
    for r in prange(rows):
        _ngram_row(cps[offsets[r] : offsets[r + 1]], n, dim, out[r])
    return out


def _ngram_numba(cps: IntArray, n: int, dim: int) -> Float32Array:
    out: Float32Array = _ngram_kernel(cps, n, dim)
    return out


#: Serialises :func:`_ngram_batch_kernel` until the threading layer is known to be
#: thread-safe: Numba's ``workqueue`` layer (used when neither TBB nor OpenMP loads, e.g. an
#: image without libgomp) terminates the process when two threads launch parallel kernels.
_PARALLEL_LOCK: Final = threading.Lock()
_parallel_threadsafe = False


def _ngram_batch_numba(cps: IntArray, offsets: IntArray, n: int, dim: int) -> Float32Array:
    global _parallel_threadsafe
    out: Float32Array
    if _parallel_threadsafe:
        out = _ngram_batch_kernel(cps, offsets, n, dim)
        return out
    with _PARALLEL_LOCK:
        out = _ngram_batch_kernel(cps, offsets, n, dim)
        # the layer is known once a parallel kernel has run (plain Python has none)
        _parallel_threadsafe = not is_jit_available() or _threading_layer() != "workqueue"
    return out


def _ngram_hashes_numpy(cps: IntArray, n: int) -> IntArray:
    """Hash (before ``% dim``) of every length-``n`` window of ``cps``."""
    windows = int(cps.shape[0]) - n + 1
    h = np.full(max(windows, 0), _FNV_OFFSET, dtype=np.int64)
    if windows <= 0:
        return h
    for k in range(n):
        cp = cps[k : k + windows]
        for shift in range(0, 32, 8):
            h ^= (cp >> shift) & 0xFF
            h *= _FNV_PRIME
            h &= _MASK32
    h ^= h >> 16
    return h


def _ngram_numpy(cps: IntArray, n: int, dim: int) -> Float32Array:
    h = _ngram_hashes_numpy(cps, n)
    h %= dim
    return np.bincount(h, minlength=dim).astype(np.float32)


def _ngram_batch_numpy(cps: IntArray, offsets: IntArray, n: int, dim: int) -> Float32Array:
    rows = int(offsets.shape[0]) - 1
    h = _ngram_hashes_numpy(cps, n)
    if rows == 0 or h.shape[0] == 0:
        return np.zeros((rows, dim), dtype=np.float32)
    lengths = np.diff(offsets)
    row_of = np.repeat(np.arange(rows, dtype=np.int64), lengths)[: h.shape[0]]
    starts = np.arange(h.shape[0], dtype=np.int64)
    valid = starts + n <= offsets[row_of + 1]
    h %= dim
    flat = row_of[valid] * dim + h[valid]
    counts = np.bincount(flat, minlength=rows * dim).astype(np.float32)
    return counts.reshape(rows, dim)


def _code_points(tokens: TokensLike, what: str) -> IntArray:
    if isinstance(tokens, str):
        raw = np.frombuffer(tokens.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        return raw.astype(np.int64)
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a str or a 1-D integer array, got shape {arr.shape}")
    if arr.shape[0] and arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must be a str or a 1-D integer array, got dtype {arr.dtype}")
    cps = np.ascontiguousarray(arr, dtype=np.int64)
    if cps.shape[0] and (int(cps.min()) < 0 or int(cps.max()) > _MASK32):
        cps = cps & _MASK32
    return cps


#: Larger ``n`` are the same (no input is this long); keeps ``n`` an int64 for the kernels.
_MAX_NGRAM_N: Final = 2**62


_MAX_NGRAM_DIM: Final = 1 << 32


def _check_ngram_params(n: int, dim: int) -> tuple[int, int]:
    for name, v in (("n", n), ("dim", dim)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or int(v) < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if int(dim) > _MAX_NGRAM_DIM:  # the hash has 32 bits: further buckets stay empty
        raise ValueError(f"dim must be at most 2**32 (the hash's range), got {dim!r}")
    # an n past any input's length gives no n-gram; capped so it fits the kernels' int64
    return min(int(n), _MAX_NGRAM_N), int(dim)


def extract_ngram_features_jit(
    tokens_or_text: TokensLike, n: int = 3, dim: int = 1024
) -> Float32Array:
    """Hashed character n-gram counts as a ``float32`` vector of length ``dim``.

    Input: a ``str`` (its Unicode code points, via UTF-32) or a 1-D integer array of
    tokens (hashed as their low 32 bits).  Every window of ``n`` consecutive code points is
    hashed with 32-bit FNV-1a over the 4 little-endian bytes of each code point, folded as
    ``h ^= h >> 16``, and counted in bucket ``h % dim``; so the counts sum to
    ``max(len - n + 1, 0)``.  Deterministic (no per-process salt) and identical on both
    paths.  Raises ``ValueError`` for ``n < 1``, ``dim < 1`` or past ``2**32``, or a
    non-integer array.
    """
    nn, dd = _check_ngram_params(n, dim)
    return _LIVE_NGRAM(_code_points(tokens_or_text, "tokens_or_text"), nn, dd)


def extract_ngram_features_batch(
    texts: Sequence[TokensLike], n: int = 3, dim: int = 1024
) -> Float32Array:
    """:func:`extract_ngram_features_jit` of each item, as a ``(len(texts), dim)`` matrix.

    The Numba path is parallel over rows (each row written by exactly one thread); n-grams
    never span two items.
    """
    nn, dd = _check_ngram_params(n, dim)
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of str or token arrays, not a single str")
    items = list(texts)
    strs = [t for t in items if isinstance(t, str)]
    if len(strs) == len(items):
        joined = "".join(strs)
        raw = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        cps = raw.astype(np.int64)
        lengths = np.fromiter((len(t) for t in strs), dtype=np.int64, count=len(strs))
    else:
        parts = [_code_points(t, f"texts[{i}]") for i, t in enumerate(items)]
        cps = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        lengths = np.fromiter((p.shape[0] for p in parts), dtype=np.int64, count=len(parts))
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return _LIVE_NGRAM_BATCH(cps, offsets, nn, dd)


# --------------------------------------------------------------------------------------------
# Matrix multiply
# --------------------------------------------------------------------------------------------


@maybe_njit()
def _matmul_kernel(a: FloatArray, b: FloatArray) -> FloatArray:
    out: FloatArray = np.dot(a, b)  # BLAS dgemm (through SciPy's bindings) in nopython mode
    return out


def _matrix_multiply_numba(a: FloatArray, b: FloatArray) -> FloatArray:
    """``np.dot`` inside Numba; needs SciPy for Numba's BLAS bindings when JIT is on."""
    if a.shape[0] == 0 or a.shape[1] == 0 or b.shape[1] == 0:
        return np.zeros((a.shape[0], b.shape[1]), dtype=np.float64)
    out: FloatArray = _matmul_kernel(a, b)
    return out


def _matrix_multiply_numpy(a: FloatArray, b: FloatArray) -> FloatArray:
    out: FloatArray = a @ b
    return out


def matrix_multiply_jit(a: npt.ArrayLike, b: npt.ArrayLike) -> FloatArray:
    """Matrix product ``a @ b`` via BLAS ``dgemm`` (1-D operands as in ``np.matmul``).

    The live implementation is always NumPy's ``a @ b``: the Numba one calls the very same
    BLAS routine through ``np.dot`` (so it cannot be faster, only add dispatch overhead) and
    needs SciPy, which is not a dependency.  Raises ``ValueError`` on a shape mismatch or
    operands that are not 1-D/2-D.
    """
    x = np.ascontiguousarray(a, dtype=np.float64)
    y = np.ascontiguousarray(b, dtype=np.float64)
    if x.ndim not in (1, 2) or y.ndim not in (1, 2):
        raise ValueError(f"operands must be 1-D or 2-D, got shapes {x.shape} and {y.shape}")
    x2 = x.reshape(1, -1) if x.ndim == 1 else x
    y2 = y.reshape(-1, 1) if y.ndim == 1 else y
    if x2.shape[1] != y2.shape[0]:
        raise ValueError(f"shape mismatch: {x.shape} @ {y.shape} (inner dimensions differ)")
    out = _LIVE_MATMUL(x2, y2)
    if x.ndim == 1 and y.ndim == 1:
        return out.reshape(())
    if x.ndim == 1:
        return out.reshape(-1)
    if y.ndim == 1:
        return out.reshape(-1)
    return out


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _as_1d(values: npt.ArrayLike, name: str) -> FloatArray:
    if values is None:  # NumPy would make it a NaN
        raise ValueError(f"{name} must be numbers, got None")
    arr = np.ascontiguousarray(values, dtype=np.float64)
    if arr.ndim == 0:
        return arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _pair(a: npt.ArrayLike, b: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    x = np.ascontiguousarray(a, dtype=np.float64)
    y = np.ascontiguousarray(b, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"a and b must be 1-D vectors, got shapes {x.shape} and {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"a and b must have the same length, got {x.shape[0]} and {y.shape[0]}")
    return x, y


def _finite_float(value: Any, name: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return f


# --------------------------------------------------------------------------------------------
# Registry and the live choice (made once, at import)
# --------------------------------------------------------------------------------------------

IMPLEMENTATIONS: Final[dict[str, tuple[Callable[..., Any], Callable[..., Any]]]] = {
    "calculate_risk_score_jit": (_risk_score_numba, _risk_score_numpy),
    "calculate_temporal_decay_jit": (_temporal_decay_numba, _temporal_decay_numpy),
    "calculate_statistics_jit": (_statistics_numba, _statistics_numpy),
    "calculate_moving_average_jit": (_moving_average_numba, _moving_average_numpy),
    "cosine_similarity_jit": (_cosine_similarity_numba, _cosine_similarity_numpy),
    "euclidean_distance_jit": (_euclidean_distance_numba, _euclidean_distance_numpy),
    "batch_cosine_similarity_jit": (
        _batch_cosine_similarity_numba,
        _batch_cosine_similarity_numpy,
    ),
    "detect_outliers_iqr_jit": (_outliers_iqr_numba, _outliers_iqr_numpy),
    "detect_outliers_zscore_jit": (_outliers_zscore_numba, _outliers_zscore_numpy),
    "extract_ngram_features_jit": (_ngram_numba, _ngram_numpy),
    "extract_ngram_features_batch": (_ngram_batch_numba, _ngram_batch_numpy),
    "matrix_multiply_jit": (_matrix_multiply_numba, _matrix_multiply_numpy),
}

#: Kernels whose live implementation is NumPy even when JIT is available (see docstrings).
_NUMPY_PREFERRED: Final = frozenset({"matrix_multiply_jit"})

BACKEND: Final = "numba" if is_jit_available() else "numpy"
LIVE: Final[dict[str, str]] = {
    name: ("numba" if is_jit_available() and name not in _NUMPY_PREFERRED else "numpy")
    for name in IMPLEMENTATIONS
}


def _live(name: str) -> Callable[..., Any]:
    numba_impl, numpy_impl = IMPLEMENTATIONS[name]
    return numba_impl if LIVE[name] == "numba" else numpy_impl


_LIVE_RISK: Callable[[FloatArray, FloatArray], float] = _live("calculate_risk_score_jit")
_LIVE_DECAY: Callable[[FloatArray, FloatArray, float], FloatArray] = _live(
    "calculate_temporal_decay_jit"
)
_LIVE_STATS: Callable[[FloatArray], StatsTuple] = _live("calculate_statistics_jit")
_LIVE_MOVING_AVERAGE: Callable[[FloatArray, int], FloatArray] = _live(
    "calculate_moving_average_jit"
)
_LIVE_COSINE: Callable[[FloatArray, FloatArray], float] = _live("cosine_similarity_jit")
_LIVE_EUCLIDEAN: Callable[[FloatArray, FloatArray], float] = _live("euclidean_distance_jit")
_LIVE_BATCH_COSINE: Callable[[FloatArray, FloatArray], FloatArray] = _live(
    "batch_cosine_similarity_jit"
)
_LIVE_IQR: Callable[[FloatArray, float], BoolArray] = _live("detect_outliers_iqr_jit")
_LIVE_ZSCORE: Callable[[FloatArray, float], BoolArray] = _live("detect_outliers_zscore_jit")
_LIVE_NGRAM: Callable[[IntArray, int, int], Float32Array] = _live("extract_ngram_features_jit")
_LIVE_NGRAM_BATCH: Callable[[IntArray, IntArray, int, int], Float32Array] = _live(
    "extract_ngram_features_batch"
)
_LIVE_MATMUL: Callable[[FloatArray, FloatArray], FloatArray] = _live("matrix_multiply_jit")


def warmup() -> None:
    """Compile (or load from Numba's cache) every live Numba kernel; a no-op without JIT."""
    if not is_jit_available():
        return
    x = np.array([1.0, 5.0, np.nan, 2.0, 4.0, 3.0])
    y = np.array([0.5, 0.9, 0.1, np.nan, 1.0, 0.3])
    calculate_risk_score_jit(x, y)
    calculate_temporal_decay_jit(x, y, 10.0)
    calculate_statistics_jit(x)
    calculate_moving_average_jit(x, 3)
    cosine_similarity_jit(x, x)
    euclidean_distance_jit(x, y)
    batch_cosine_similarity_jit(x, np.stack([x, y]))
    detect_outliers_iqr_jit(x)
    detect_outliers_zscore_jit(x)
    extract_ngram_features_jit("warm up", 3, 64)
    extract_ngram_features_batch(["warm", "up"], 3, 64)
