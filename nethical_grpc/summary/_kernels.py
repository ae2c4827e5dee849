"""Hot-path kernels for :mod:`nethical_grpc.summary`.

Every kernel exists twice, under explicit names, so the two can be compared in tests:

* ``*_numba``: explicit loops compiled with :func:`nethical_grpc.jit.maybe_njit` (``nogil`` and
  ``cache`` on).  When JIT is unavailable they still work, as plain (slow) Python loops.
* ``*_numpy``: vectorised NumPy.

The unsuffixed names (:func:`batch_moments`, :func:`bucketize`, :func:`count_in_range`,
:func:`accumulate`) are bound ONCE at import: to the Numba versions when
:func:`nethical_grpc.jit.is_jit_available` is true, otherwise to the NumPy versions.
:func:`minmax` / :func:`first_nonfinite` always use NumPy's SIMD reductions (faster than a
scalar compiled loop); the finiteness check is free given ``(min, max)``.

Bucket indices
--------------
A positive finite ``v`` is written ``v = m * 2**E`` with ``m`` in ``[1, 2)``.  At scale ``s``
the exponential-histogram index is ``ceil(log2(v) * 2**s) - 1``, i.e. bucket ``i`` covers
``(base**i, base**(i+1)]`` with ``base = 2**(2**-s)``.

* ``s <= 0``: exact integer arithmetic, ``(E - (m == 1)) >> -s``.
* ``s > 0``: ``(E << s) + w`` where ``w = #{j in [0, 2**s) : B_j < m} - 1`` and the octave
  boundaries ``B_j = exp2(j / 2**s)`` are float64 numbers computed once per scale with
  :func:`math.exp2`.  ``w`` is found with a lookup table over the top ``s + 1`` mantissa bits
  (each table cell holds at most one boundary) plus one exact integer comparison of mantissa
  bits, so there is no ``log`` call and no floating-point rounding in the index itself.

Because ``exp2(j / 2**(s-k)) == exp2((j * 2**k) / 2**s)`` (same argument, same function), the
boundary set at scale ``s - k`` is exactly a subset of the one at scale ``s``; therefore
``index(v, s - k) == index(v, s) >> k`` holds bit-for-bit and downscaling is exactly
consistent with bucketing at the coarser scale.  The only deviation from the ideal
(irrational) boundaries is the rounding of ``B_j`` itself, i.e. at most ~1 ulp.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from nethical_grpc.jit import is_jit_available, maybe_njit

__all__ = [
    "BACKEND",
    "BucketizeResult",
    "MomentsTuple",
    "SpillResult",
    "accumulate",
    "accumulate_numba",
    "accumulate_numpy",
    "batch_moments",
    "batch_moments_numba",
    "batch_moments_numpy",
    "bucketize",
    "bucketize_numba",
    "bucketize_numpy",
    "count_in_range",
    "count_in_range_numba",
    "count_in_range_numpy",
    "first_nonfinite",
    "merge_buckets_numba",
    "minmax",
    "quantile_estimates_numba",
    "scale_tables",
    "two_sum",
    "warmup",
    "warmup_merge",
]

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]
CountArray = npt.NDArray[np.uint64]
LoTable = npt.NDArray[np.int32]

MANTISSA_BITS: Final = 52
MANTISSA_MASK: Final = (1 << MANTISSA_BITS) - 1
ABS_MASK: Final = 0x7FFF_FFFF_FFFF_FFFF
EXPONENT_BIAS: Final = 1023
_TWO_POW_52: Final = float(2**52)
_INT64_MAX: Final = np.iinfo(np.int64).max
_INT64_MIN: Final = np.iinfo(np.int64).min
_ONE_U64: Final = np.uint64(1)
#: Tables are built for these scales only (see ``scale_tables``).
_TABLE_MAX_SCALE: Final = 20


class MomentsTuple(NamedTuple):
    """Moments of one batch; ``sum + compensation`` is the (compensated) total."""

    n: int
    sum: float
    compensation: float
    min: float
    max: float
    mean: float
    m2: float


EMPTY_MOMENTS: Final = MomentsTuple(0, 0.0, 0.0, math.inf, -math.inf, 0.0, 0.0)


class BucketizeResult(NamedTuple):
    """Bucket indices of one batch at one scale.

    ``positive``/``negative`` hold one index per non-zero value (negatives by ``|v|``);
    ``pos_min``/``pos_max`` (``neg_min``/``neg_max``) are only meaningful when the matching
    array is non-empty.
    """

    positive: IndexArray
    negative: IndexArray
    zero_count: int
    pos_min: int
    pos_max: int
    neg_min: int
    neg_max: int


def two_sum(a: float, b: float) -> tuple[float, float]:
    """Knuth's TwoSum: ``s = fl(a + b)`` and the exact rounding error ``e`` (``a + b == s + e``)."""
    s = a + b
    bp = s - a
    e = (a - (s - bp)) + (b - bp)
    return s, e


def two_prod_error(a: float, b: float, p: float) -> float:
    """Exact error ``a*b - p`` of ``p = fl(a*b)`` (Dekker/Veltkamp), 0.0 where it would overflow."""
    if not math.isfinite(p) or abs(a) > 1e290 or abs(b) > 1e290:
        return 0.0
    return float(dekker_error(a, b, p))


#: A float, or a float64 array: the error-free arithmetic here is the same element-wise.
FloatOrArray = Any


def dekker_error(a: FloatOrArray, b: FloatOrArray, p: FloatOrArray) -> FloatOrArray:
    """The Dekker/Veltkamp error ``a*b - p`` of ``p = fl(a*b)``, for floats or element-wise
    for arrays, where no product overflows (:func:`two_prod_error` guards scalars; means
    of values within 1e100 times counts never do)."""
    split = 134217729.0  # 2**27 + 1
    t = split * a
    a_hi = t - (t - a)
    a_lo = a - a_hi
    t = split * b
    b_hi = t - (t - b)
    b_lo = b - b_hi
    return ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo


def _clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def _check_threshold(zero_threshold: float) -> None:
    if not zero_threshold >= 0.0 or zero_threshold == math.inf:
        raise ValueError(f"zero_threshold must be finite and >= 0, got {zero_threshold!r}")


def _as_vector(values: npt.ArrayLike) -> FloatArray:
    arr = np.ascontiguousarray(values, dtype=np.float64)
    return arr.reshape(-1) if arr.ndim != 1 else arr


# --------------------------------------------------------------------------------------------
# Moments
# --------------------------------------------------------------------------------------------


def minmax(values: npt.ArrayLike) -> tuple[float, float]:
    """``(min, max)`` with NumPy's SIMD reductions; NaN/inf in the data shows up in the result.

    Both NaN (propagated by ``np.minimum``/``np.maximum``) and +-inf make one of the two
    non-finite, so ``math.isfinite(lo) and math.isfinite(hi)`` iff every value is finite.
    """
    x = _as_vector(values)
    if x.shape[0] == 0:
        return math.inf, -math.inf
    return float(np.minimum.reduce(x)), float(np.maximum.reduce(x))


def first_nonfinite(values: npt.ArrayLike, bounds: tuple[float, float] | None = None) -> int:
    """Index of the first NaN/inf in ``values`` (flattened), or -1 when all are finite.

    ``bounds`` may pass a precomputed :func:`minmax` to skip the fast check.
    """
    x = _as_vector(values)
    lo, hi = minmax(x) if bounds is None else bounds
    if x.shape[0] == 0 or (math.isfinite(lo) and math.isfinite(hi)):
        return -1
    return int(np.argmin(np.isfinite(x)))


def _bounds(x: FloatArray, bounds: tuple[float, float] | None) -> tuple[float, float]:
    return minmax(x) if bounds is None else bounds


def batch_moments_numpy(
    values: npt.ArrayLike, bounds: tuple[float, float] | None = None
) -> MomentsTuple:
    """Moments of finite ``values`` with NumPy (a compensated total, corrected two-pass
    variance).

    The total keeps each addition's exact error (TwoSum over whole rows of lanes, see
    :func:`_compensated_total`), the errors summed apart as the compensation, as the
    compiled kernel's lanes do: a total the doubles hold exactly comes out exact.
    ``bounds`` may pass a precomputed ``(min, max)``.
    """
    x = _as_vector(values)
    n = int(x.shape[0])
    if n == 0:
        return EMPTY_MOMENTS
    lo, hi = _bounds(x, bounds)
    total, comp = two_sum(*_compensated_total(x))
    m = _clamp((total + comp) / n, lo, hi)
    d = x - m
    dsum = float(np.add.reduce(d))
    m2 = max(float(np.dot(d, d)) - dsum * dsum / n, 0.0)
    if float(np.add.reduce(np.abs(x))) > _CANCELLATION * abs(total):
        # values cancel: the compensation keeps each addition's error, not the errors of
        # adding those up, which can then count; sum exactly instead
        total, comp = _exact_sum(x, total, comp)
    mean = _clamp((total + comp) / n, lo, hi)
    return MomentsTuple(n, total, comp, lo, hi, mean, m2)


def _exact_sum(x: FloatArray, total: float, comp: float) -> tuple[float, float]:
    """``(math.fsum(x), 0.0)``, or ``(total, comp)`` as given where its partial sums pass
    the largest double (``math.fsum`` raises ``OverflowError`` then, even when the sum
    itself is finite): a batch of finite values is never refused for its sum."""
    try:
        return math.fsum(x.tolist()), 0.0
    except OverflowError:
        return total, comp


#: ``sum |x|`` over ``|sum x|`` beyond which the NumPy path sums exactly (cancellation).
_CANCELLATION: Final = 4.0


#: Lanes of the NumPy path's compensated total: a row of values is added to the lanes
#: with one set of array operations that stay in the cache (32 KiB a row).
_NUMPY_LANES: Final = 4096


def _compensated_total(x: FloatArray) -> tuple[float, float]:
    """``(sum, compensation)`` of ``x``, as the compiled kernel's lanes give it: rows of
    :data:`_NUMPY_LANES` values added into as many running sums, the exact error of each
    addition (TwoSum) kept apart, then the lanes and the rest summed by
    :func:`_pairwise_two_sum`."""
    rows = x.shape[0] // _NUMPY_LANES
    if rows < 2:
        return _pairwise_two_sum(x)
    lanes = x[:_NUMPY_LANES].copy()
    errors = np.zeros(_NUMPY_LANES)
    t, z, e = (np.empty(_NUMPY_LANES) for _ in range(3))
    for r in range(1, rows):
        row = x[r * _NUMPY_LANES : (r + 1) * _NUMPY_LANES]
        np.add(lanes, row, out=t)
        np.subtract(t, lanes, out=z)
        np.subtract(t, z, out=e)
        np.subtract(lanes, e, out=e)
        np.subtract(row, z, out=z)
        np.add(e, z, out=e)
        np.add(errors, e, out=errors)
        lanes, t = t, lanes
    total, comp = _pairwise_two_sum(np.concatenate([lanes, x[rows * _NUMPY_LANES :]]))
    return total, comp + float(np.add.reduce(errors))


def _pairwise_two_sum(x: FloatArray) -> tuple[float, float]:
    """``(sum, compensation)`` of ``x``: adjacent pairs added a level at a time, the exact
    error of every addition (TwoSum, element-wise) summed into the compensation."""
    level = x
    errors = 0.0
    while level.shape[0] > 1:
        odd = level[-1] if level.shape[0] % 2 else None
        a, b = level[0:-1:2] if odd is not None else level[0::2], level[1::2]
        t = a + b
        z = t - a
        errors += float(np.add.reduce((a - (t - z)) + (b - z)))
        level = t if odd is None else np.append(t, odd)
    return float(level[0]), errors


#: Independent accumulator lanes.  The inner ``for j in range(_LANES)`` loops have no
#: cross-lane dependency, so LLVM's loop vectoriser turns them into AVX code (strict IEEE
#: semantics are kept, so TwoSum stays exact).  32 was measured: 16 gets fully unrolled and
#: left scalar (~3x slower), 64 is slightly slower than 32.
_LANES: Final = 32


@maybe_njit()
def _moments_kernel(
    x: FloatArray, lo: float, hi: float
) -> tuple[float, float, float, float, float]:
    n = x.shape[0]
    s = np.zeros(_LANES)
    c = np.zeros(_LANES)
    # the sum of the errors' magnitudes: what bounds the rounding of adding them up
    ca = np.zeros(_LANES)
    n_main = n - n % _LANES
    # Pass 1: TwoSum (error-free) accumulation in _LANES independent lanes.
    for base in range(0, n_main, _LANES):
        for j in range(_LANES):
            a = x[base + j]
            sj = s[j]
            t = sj + a
            z = t - sj
            e = (sj - (t - z)) + (a - z)
            c[j] += e
            ca[j] += abs(e)
            s[j] = t
    for i in range(n_main, n):
        a = x[i]
        sj = s[0]
        t = sj + a
        z = t - sj
        e = (sj - (t - z)) + (a - z)
        c[0] += e
        ca[0] += abs(e)
        s[0] = t
    # Combine the lanes exactly, then renormalise so that total == fl(total + comp).
    total = s[0]
    comp = 0.0
    mass = 0.0
    for j in range(_LANES):
        comp += c[j]
        mass += ca[j]
    for j in range(1, _LANES):
        a = s[j]
        t = total + a
        z = t - total
        e = (total - (t - z)) + (a - z)
        comp += e
        mass += abs(e)
        total = t
    t = total + comp
    z = t - total
    comp = (total - (t - z)) + (comp - z)
    total = t
    m = min(max((total + comp) / n, lo), hi)
    # Pass 2 (corrected two-pass): m2 = sum(d^2) - (sum d)^2 / n with d = x - m.
    dl = np.zeros(_LANES)
    ql = np.zeros(_LANES)
    for base in range(0, n_main, _LANES):
        for j in range(_LANES):
            d = x[base + j] - m
            dl[j] += d
            ql[j] += d * d
    dsum = 0.0
    qsum = 0.0
    for i in range(n_main, n):
        d = x[i] - m
        dsum += d
        qsum += d * d
    for j in range(_LANES):
        dsum += dl[j]
        qsum += ql[j]
    m2 = max(qsum - dsum * dsum / n, 0.0)
    # the mean is the compensated total over n: adding dsum / n (uncompensated) only
    # brought its rounding error back where values cancel (1e100, 1, -1e100, 3: 1.5)
    return total, comp, m, m2, mass


def batch_moments_numba(
    values: npt.ArrayLike, bounds: tuple[float, float] | None = None
) -> MomentsTuple:
    """Moments of finite ``values`` with the compiled kernel (lane-parallel TwoSum, 2 passes)."""
    x = _as_vector(values)
    n = int(x.shape[0])
    if n == 0:
        return EMPTY_MOMENTS
    lo, hi = _bounds(x, bounds)
    total, comp, mean, m2, mass = _moments_kernel(x, lo, hi)
    # Adding up n errors of total magnitude ``mass`` rounds by at most n * mass * 2**-53:
    # where that can reach the total (values that cancel after a sum that rounded, as
    # 3 * 1e100 + 1 - 3 * 1e100 summed to 0.0), sum exactly, as the NumPy path does
    if n * float(mass) * _UNIT_ROUNDOFF > math.ulp(float(total)) / 4.0:
        total, comp = _exact_sum(x, float(total), float(comp))
        mean = _clamp((total + comp) / n, lo, hi)
    return MomentsTuple(n, float(total), float(comp), lo, hi, float(mean), float(m2))


_UNIT_ROUNDOFF: Final = 2.0**-53


# --------------------------------------------------------------------------------------------
# Bucket indices
# --------------------------------------------------------------------------------------------

_DUMMY_LO: Final = np.zeros(1, dtype=np.int32)
_DUMMY_BND: Final = np.zeros(1, dtype=np.int64)
_DUMMY_LO.setflags(write=False)
_DUMMY_BND.setflags(write=False)


@functools.cache
def scale_tables(scale: int) -> tuple[LoTable, IndexArray]:
    """Per-scale lookup tables ``(lo, bnd)`` over the top ``scale + 1`` mantissa bits.

    For mantissa bits ``mb`` (``m = 1 + mb / 2**52``) in cell ``c = mb >> (51 - scale)``:
    ``w = lo[c] + (mb > bnd[c])``.  Size: ``12 * 2**(scale + 1)`` bytes (1.5 KiB at scale 6,
    24 MiB at scale 20; only built for scales actually used).  Scales ``<= 0`` need no table
    and get 1-element dummies.
    """
    if scale <= 0:
        return _DUMMY_LO, _DUMMY_BND
    if scale > _TABLE_MAX_SCALE:
        raise ValueError(f"scale {scale} > {_TABLE_MAX_SCALE}")
    nb = 1 << scale
    bounds = np.fromiter((math.exp2(j / nb) for j in range(nb)), dtype=np.float64, count=nb)
    if bounds[0] != 1.0 or bounds[-1] >= 2.0 or not bool(np.all(np.diff(bounds) > 0)):
        raise RuntimeError(f"non-monotone exp2 boundaries at scale {scale}")
    bbits = bounds.view(np.int64) & MANTISSA_MASK
    cell_shift = MANTISSA_BITS - (scale + 1)
    cells = bbits >> cell_shift
    if bool(np.any(np.diff(cells) == 0)):
        raise RuntimeError(f"two boundaries share a table cell at scale {scale}")
    starts = np.arange(1 << (scale + 1), dtype=np.int64) << cell_shift
    lo = (np.searchsorted(bbits, starts, side="left") - 1).astype(np.int32)
    bnd = np.full(1 << (scale + 1), 1 << MANTISSA_BITS, dtype=np.int64)  # sentinel > any mb
    bnd[cells] = bbits
    lo.setflags(write=False)
    bnd.setflags(write=False)
    return lo, bnd


@functools.cache
def _numpy_tables(scale: int) -> tuple[IndexArray, IndexArray]:
    """Tables for the vectorised path: ``lo`` widened to int64 with the exponent bias folded in."""
    lo, bnd = scale_tables(scale)
    lo_fold = lo.astype(np.int64) - (EXPONENT_BIAS << scale)
    lo_fold.setflags(write=False)
    return lo_fold, bnd


def _normal_indices(bits: IndexArray, scale: int) -> IndexArray:
    """Indices for the bit patterns of positive *normal* doubles (a new array)."""
    if scale > 0:
        lo_fold, bnd = _numpy_tables(scale)
        # key = (biased_exponent << (scale + 1)) | cell, so (key - cell) >> 1 == e_biased << scale.
        key = bits >> (MANTISSA_BITS - (scale + 1))
        cell = key & ((1 << (scale + 1)) - 1)
        idx: IndexArray = np.take(lo_fold, cell)
        key -= cell
        key >>= 1
        idx += key
        mant = bits & MANTISSA_MASK
        idx += mant > np.take(bnd, cell)
        return idx
    expo: IndexArray = bits >> MANTISSA_BITS
    expo -= EXPONENT_BIAS
    expo -= (bits & MANTISSA_MASK) == 0
    if scale < 0:
        expo >>= -scale
    return expo


def _indices_numpy(mag: FloatArray, scale: int, check_subnormal: bool = True) -> IndexArray:
    """Indices of positive, finite, non-zero magnitudes (contiguous float64)."""
    bits = mag.view(np.int64)
    idx = _normal_indices(bits, scale)
    if check_subnormal:
        sub = bits < (1 << MANTISSA_BITS)
        if bool(sub.any()):
            # Subnormal: v * 2**52 is exact and normal; its scale-0 index is index0(v) + 52.
            nbits = (mag[sub] * _TWO_POW_52).view(np.int64)
            if scale >= 0:
                idx[sub] = _normal_indices(nbits, scale) - (MANTISSA_BITS << scale)
            else:
                idx[sub] = (_normal_indices(nbits, 0) - MANTISSA_BITS) >> -scale
    return idx


def _minmax(a: IndexArray) -> tuple[int, int]:
    if a.shape[0] == 0:
        return 0, -1
    return int(a.min()), int(a.max())


_DBL_MIN_NORMAL: Final = float(np.finfo(np.float64).tiny)
#: the subnormal doubles are the multiples of 2 ** -SUBNORMAL_SHIFT
SUBNORMAL_SHIFT: Final = 1074
#: up to here (2 ** 53 steps of 2 ** -1074) the doubles are the multiples of 2 ** -1074
GRID_TOP: Final = 2.0 * _DBL_MIN_NORMAL
_EMPTY_INDEX: Final = np.zeros(0, dtype=np.int64)
_EMPTY_INDEX.setflags(write=False)


def bucketize_numpy(
    values: npt.ArrayLike,
    scale: int,
    zero_threshold: float,
    bounds: tuple[float, float] | None = None,
) -> BucketizeResult:
    """Bucket indices of finite ``values`` at ``scale`` (vectorised NumPy).

    ``bounds`` may pass a precomputed ``(min, max)`` of the values; it enables fast paths for
    single-signed batches (no masking, no sign split).
    """
    _check_threshold(zero_threshold)
    x = _as_vector(values)
    n = int(x.shape[0])
    if n == 0:
        return BucketizeResult(_EMPTY_INDEX, _EMPTY_INDEX, 0, 0, -1, 0, -1)
    lo, hi = _bounds(x, bounds)
    if lo > zero_threshold:
        pos = _indices_numpy(x, scale, lo < _DBL_MIN_NORMAL)
        pmin, pmax = _minmax(pos)
        return BucketizeResult(pos, _EMPTY_INDEX, 0, pmin, pmax, 0, -1)
    if hi < -zero_threshold:
        neg = _indices_numpy(-x, scale, -hi < _DBL_MIN_NORMAL)
        nmin, nmax = _minmax(neg)
        return BucketizeResult(_EMPTY_INDEX, neg, 0, 0, -1, nmin, nmax)
    mag = np.abs(x)
    keep = mag > zero_threshold
    n_keep = int(np.count_nonzero(keep))
    if n_keep != n:
        mag = mag[keep]
        x = x[keep]
    idx = _indices_numpy(mag, scale)
    is_pos = x > 0
    n_pos = int(np.count_nonzero(is_pos))
    if n_pos == n_keep:
        pos, neg = idx, idx[:0]
    elif n_pos == 0:
        pos, neg = idx[:0], idx
    else:
        pos, neg = idx[is_pos], idx[~is_pos]
    pmin, pmax = _minmax(pos)
    nmin, nmax = _minmax(neg)
    return BucketizeResult(pos, neg, n - n_keep, pmin, pmax, nmin, nmax)


@maybe_njit(inline="always")
def _index_from_bits(
    b: int, scale: int, cell_shift: int, lo_tab: LoTable, bnd_tab: IndexArray
) -> int:
    """Index of the positive, finite, non-zero float64 whose (sign-cleared) bits are ``b``."""
    e = b >> MANTISSA_BITS
    mb = b & MANTISSA_MASK
    if e == 0:
        # Subnormal: normalise the mantissa by hand (same result as scaling by 2**52).
        p = MANTISSA_BITS - 1
        while p > 0 and (mb >> p) == 0:  # p > 0: never spin, even on a (rejected) zero
            p -= 1
        mb = (mb << (MANTISSA_BITS - p)) & MANTISSA_MASK
        e = p - (MANTISSA_BITS - 1)
    ex = e - EXPONENT_BIAS
    if scale > 0:
        c = mb >> cell_shift
        w = np.int64(lo_tab[c])
        if mb > bnd_tab[c]:
            w += 1
        return int(ex * (1 << scale) + w)
    if mb == 0:
        ex -= 1
    return int(ex >> -scale)


@maybe_njit()
def _bucketize_kernel(
    x: FloatArray,
    bits: IndexArray,
    scale: int,
    zero_threshold: float,
    lo_tab: LoTable,
    bnd_tab: IndexArray,
    out: IndexArray,
) -> tuple[int, int, int, int, int, int, int]:
    n = x.shape[0]
    n_pos = 0
    n_neg = 0
    n_zero = 0
    pmin = _INT64_MAX
    pmax = _INT64_MIN
    nmin = _INT64_MAX
    nmax = _INT64_MIN
    cell_shift = MANTISSA_BITS - (scale + 1)
    for i in range(n):
        v = x[i]
        if abs(v) <= zero_threshold:
            n_zero += 1
            continue
        idx = _index_from_bits(bits[i] & ABS_MASK, scale, cell_shift, lo_tab, bnd_tab)
        if v > 0:
            out[n_pos] = idx
            n_pos += 1
            pmin = min(pmin, idx)
            pmax = max(pmax, idx)
        else:
            n_neg += 1
            out[n - n_neg] = idx
            nmin = min(nmin, idx)
            nmax = max(nmax, idx)
    return n_pos, n_neg, n_zero, pmin, pmax, nmin, nmax


def bucketize_numba(
    values: npt.ArrayLike,
    scale: int,
    zero_threshold: float,
    bounds: tuple[float, float] | None = None,
) -> BucketizeResult:
    """Bucket indices of finite ``values`` at ``scale`` (one compiled pass; ``bounds`` unused)."""
    _check_threshold(zero_threshold)
    x = _as_vector(values)
    n = int(x.shape[0])
    out = np.empty(n, dtype=np.int64)
    lo, bnd = scale_tables(scale)
    n_pos, n_neg, n_zero, pmin, pmax, nmin, nmax = _bucketize_kernel(
        x, x.view(np.int64), int(scale), float(zero_threshold), lo, bnd, out
    )
    n_pos = int(n_pos)
    n_neg = int(n_neg)
    if n_pos == 0:
        pmin, pmax = 0, -1
    if n_neg == 0:
        nmin, nmax = 0, -1
    return BucketizeResult(
        out[:n_pos],
        out[n - n_neg :],
        int(n_zero),
        int(pmin),
        int(pmax),
        int(nmin),
        int(nmax),
    )


# --------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------


def accumulate_numpy(
    indices: IndexArray, shift: int, offset: int, counts: CountArray, *, consume: bool = False
) -> None:
    """``counts[(i >> shift) - offset] += 1`` for every ``i`` in ``indices`` (in place).

    The caller guarantees every shifted index lies in ``[offset, offset + len(counts))``.
    With ``consume=True`` the ``indices`` array is used as scratch space (clobbered).
    """
    if indices.shape[0] == 0:
        return
    if shift:
        rel = indices >> shift
    elif consume:
        rel = indices
    else:
        rel = indices.copy()
    rel -= offset
    bc = np.bincount(rel)
    counts[: bc.shape[0]] += bc.astype(np.uint64, copy=False)


@maybe_njit()
def _accumulate_kernel(indices: IndexArray, shift: int, offset: int, counts: CountArray) -> int:
    # Numba does not bounds-check; an out-of-range index is skipped and reported instead of
    # corrupting the heap.
    n_counts = counts.shape[0]
    bad = 0
    for i in range(indices.shape[0]):
        k = (indices[i] >> shift) - offset
        if k >= 0 and k < n_counts:
            counts[k] += _ONE_U64
        else:
            bad += 1
    return bad


def accumulate_numba(
    indices: IndexArray, shift: int, offset: int, counts: CountArray, *, consume: bool = False
) -> None:
    """Compiled version of :func:`accumulate_numpy` (``consume`` is accepted and ignored)."""
    if indices.shape[0] == 0:
        return
    bad = int(_accumulate_kernel(indices, int(shift), int(offset), counts))
    if bad:
        raise IndexError(f"{bad} bucket indices outside the counts array (internal error)")


# --------------------------------------------------------------------------------------------
# Fused bucketize + count (the histogram update hot path)
# --------------------------------------------------------------------------------------------


class SpillResult(NamedTuple):
    """Outcome of :func:`count_in_range`.

    Values whose index fell inside the given count arrays were counted in place; the others
    are returned here (``positive``/``negative`` indices at the requested scale, in no
    particular order) with their min/max (only meaningful when the array is non-empty).
    """

    positive: IndexArray
    negative: IndexArray
    zero_count: int
    pos_min: int
    pos_max: int
    neg_min: int
    neg_max: int


#: Largest dense bincount span (bins) the NumPy path will allocate before falling back.
_MAX_DENSE_SPAN: Final = 1 << 20


def _add_dense(bc: IndexArray, lo_index: int, counts: CountArray, offset: int) -> IndexArray:
    """Add dense per-index counts ``bc`` (``bc[j]`` counts index ``lo_index + j``) into
    ``counts`` where they fit; return the indices (repeated per count) that did not fit."""
    nz = np.flatnonzero(bc)
    if nz.shape[0] == 0:
        return _EMPTY_INDEX
    first = lo_index + int(nz[0])
    last = lo_index + int(nz[-1])
    n_counts = counts.shape[0]
    a = max(first, offset)
    b = min(last, offset + n_counts - 1)
    if a <= b:
        counts[a - offset : b - offset + 1] += bc[a - lo_index : b - lo_index + 1].astype(
            np.uint64, copy=False
        )
        if a == first and b == last:
            return _EMPTY_INDEX
        bc = bc.copy()
        bc[a - lo_index : b - lo_index + 1] = 0
        nz = np.flatnonzero(bc)
    rest: IndexArray = np.repeat(lo_index + nz.astype(np.int64), bc[nz])
    return rest


def _count_single_sign(idx: IndexArray, counts: CountArray, offset: int) -> IndexArray:
    """Count one sign's indices (consumed as scratch) into ``counts``; return the spill."""
    if idx.shape[0] == 0:
        return idx
    lo, hi = int(idx.min()), int(idx.max())
    if hi - lo >= _MAX_DENSE_SPAN:
        return idx  # absurdly wide batch: let the caller place (and downscale) everything
    idx -= lo
    return _add_dense(np.bincount(idx), lo, counts, offset)


def count_in_range_numpy(
    values: npt.ArrayLike,
    scale: int,
    zero_threshold: float,
    pos_counts: CountArray,
    pos_offset: int,
    neg_counts: CountArray,
    neg_offset: int,
    bounds: tuple[float, float] | None = None,
) -> SpillResult:
    """Bucketize finite ``values`` at ``scale``; count in place what fits, return the rest.

    ``pos_counts[k]`` counts index ``pos_offset + k`` (same for negatives, by ``|v|``); the
    arrays must be writable, C-contiguous ``uint64``.  ``bounds``: optional precomputed
    ``(min, max)`` of ``values`` (enables single-sign fast paths).  Mixed-sign batches are
    counted with ONE bincount over ``index * 2 + is_negative`` (boolean-mask splitting of a
    random sign pattern costs more than the whole index computation).
    """
    _check_threshold(zero_threshold)
    x = _as_vector(values)
    n = int(x.shape[0])
    if n == 0:
        return SpillResult(_EMPTY_INDEX, _EMPTY_INDEX, 0, 0, -1, 0, -1)
    lo, hi = _bounds(x, bounds)
    n_zero = 0
    if lo > zero_threshold:
        idx = _indices_numpy(x, scale, lo < _DBL_MIN_NORMAL)
        pos = _count_single_sign(idx, pos_counts, pos_offset)
        neg = _EMPTY_INDEX
    elif hi < -zero_threshold:
        idx = _indices_numpy(-x, scale, -hi < _DBL_MIN_NORMAL)
        pos = _EMPTY_INDEX
        neg = _count_single_sign(idx, neg_counts, neg_offset)
    else:
        mag = np.abs(x)
        keep = mag > zero_threshold
        n_keep = int(np.count_nonzero(keep))
        n_zero = n - n_keep
        if n_keep != n:
            mag = mag[keep]
            x = x[keep]
        if n_keep == 0:
            return SpillResult(_EMPTY_INDEX, _EMPTY_INDEX, n_zero, 0, -1, 0, -1)
        idx = _indices_numpy(mag, scale)
        is_neg = x < 0
        code = idx << 1
        code |= is_neg
        cmin, cmax = int(code.min()), int(code.max())
        if cmax - cmin < _MAX_DENSE_SPAN:
            base = cmin & ~1  # even, so bin parity == sign
            code -= base
            bc = np.bincount(code)
            pos = _add_dense(bc[0::2], base >> 1, pos_counts, pos_offset)
            neg = _add_dense(bc[1::2], base >> 1, neg_counts, neg_offset)
        else:
            pos = _count_single_sign(idx[~is_neg], pos_counts, pos_offset)
            neg = _count_single_sign(idx[is_neg], neg_counts, neg_offset)
    pmin, pmax = _minmax(pos)
    nmin, nmax = _minmax(neg)
    return SpillResult(pos, neg, n_zero, pmin, pmax, nmin, nmax)


@maybe_njit()
def _count_kernel(
    x: FloatArray,
    bits: IndexArray,
    scale: int,
    zero_threshold: float,
    lo_tab: LoTable,
    bnd_tab: IndexArray,
    pos_counts: CountArray,
    pos_offset: int,
    neg_counts: CountArray,
    neg_offset: int,
    spill: IndexArray,
) -> tuple[int, int, int]:
    # Kept deliberately lean (no min/max tracking): fewer live values means no register
    # spills inside the loop, which measurably matters for the in-place increments.
    n = x.shape[0]
    n_pos_counts = pos_counts.shape[0]
    n_neg_counts = neg_counts.shape[0]
    n_pos = 0
    n_neg = 0
    n_zero = 0
    cell_shift = MANTISSA_BITS - (scale + 1)
    for i in range(n):
        v = x[i]
        if abs(v) <= zero_threshold:
            n_zero += 1
            continue
        idx = _index_from_bits(bits[i] & ABS_MASK, scale, cell_shift, lo_tab, bnd_tab)
        if v > 0:
            k = idx - pos_offset
            if k >= 0 and k < n_pos_counts:
                pos_counts[k] += _ONE_U64
            else:
                spill[n_pos] = idx
                n_pos += 1
        else:
            k = idx - neg_offset
            if k >= 0 and k < n_neg_counts:
                neg_counts[k] += _ONE_U64
            else:
                n_neg += 1
                spill[n - n_neg] = idx
    return n_pos, n_neg, n_zero


def count_in_range_numba(
    values: npt.ArrayLike,
    scale: int,
    zero_threshold: float,
    pos_counts: CountArray,
    pos_offset: int,
    neg_counts: CountArray,
    neg_offset: int,
    bounds: tuple[float, float] | None = None,
) -> SpillResult:
    """Compiled, single-pass version of :func:`count_in_range_numpy` (``bounds`` unused)."""
    _check_threshold(zero_threshold)
    x = _as_vector(values)
    n = int(x.shape[0])
    spill = np.empty(n, dtype=np.int64)
    lo, bnd = scale_tables(scale)
    n_pos, n_neg, n_zero = _count_kernel(
        x,
        x.view(np.int64),
        int(scale),
        float(zero_threshold),
        lo,
        bnd,
        pos_counts,
        int(pos_offset),
        neg_counts,
        int(neg_offset),
        spill,
    )
    pos = spill[: int(n_pos)]
    neg = spill[n - int(n_neg) :]
    pmin, pmax = _minmax(pos)
    nmin, nmax = _minmax(neg)
    return SpillResult(pos, neg, int(n_zero), pmin, pmax, nmin, nmax)


# --------------------------------------------------------------------------------------------
# Merging histograms' buckets (the coordinator's merge, every global query)
# --------------------------------------------------------------------------------------------

#: Columns of the parts table of :func:`merge_buckets_numba`.
PART_START: Final = 0
PART_LEN: Final = 1
PART_OFFSET: Final = 2
PART_SHIFT: Final = 3
PART_SIDE: Final = 4


@maybe_njit()
def _merge_kernel(
    counts: CountArray, parts: IndexArray, max_buckets: int, max_shift: int
) -> tuple[int, int, CountArray, int, CountArray]:  # pragma: no cover
    n = parts.shape[0]
    first = np.full(n, -1, dtype=np.int64)
    last = np.full(n, -1, dtype=np.int64)
    lo = np.zeros(2, dtype=np.int64)
    hi = np.zeros(2, dtype=np.int64)
    found = np.zeros(2, dtype=np.bool_)
    for i in range(n):  # each part's first and last non-zero bucket, each side's range
        start = parts[i, PART_START]
        length = parts[i, PART_LEN]
        j0 = 0
        while j0 < length and counts[start + j0] == 0:
            j0 += 1
        if j0 == length:
            continue
        j1 = length - 1
        while counts[start + j1] == 0:
            j1 -= 1
        first[i] = j0
        last[i] = j1
        a = (parts[i, PART_OFFSET] + j0) >> parts[i, PART_SHIFT]
        b = (parts[i, PART_OFFSET] + j1) >> parts[i, PART_SHIFT]
        side = parts[i, PART_SIDE]
        if not found[side]:
            lo[side] = a
            hi[side] = b
            found[side] = True
        else:
            lo[side] = min(lo[side], a)
            hi[side] = max(hi[side], b)
    k = 0  # the smallest further downscale that fits both sides in max_buckets
    while (found[0] and (hi[0] >> k) - (lo[0] >> k) + 1 > max_buckets) or (
        found[1] and (hi[1] >> k) - (lo[1] >> k) + 1 > max_buckets
    ):
        k += 1
        if k > max_shift:
            return -1, 0, counts[:0], 0, counts[:0]
    base_pos = lo[0] >> k
    base_neg = lo[1] >> k
    pos = np.zeros((hi[0] >> k) - base_pos + 1 if found[0] else 0, dtype=np.uint64)
    neg = np.zeros((hi[1] >> k) - base_neg + 1 if found[1] else 0, dtype=np.uint64)
    for i in range(n):
        if first[i] < 0:
            continue
        start = parts[i, PART_START]
        offset = parts[i, PART_OFFSET]
        shift = parts[i, PART_SHIFT] + k
        out = pos if parts[i, PART_SIDE] == 0 else neg
        base = base_pos if parts[i, PART_SIDE] == 0 else base_neg
        if shift == 0:  # the usual case, one slice onto another (a loop LLVM vectorises)
            src = counts[start + first[i] : start + last[i] + 1]
            dst = out[offset + first[i] - base : offset + last[i] + 1 - base]
            for j in range(src.shape[0]):
                dst[j] += src[j]
        else:
            for j in range(first[i], last[i] + 1):
                out[((offset + j) >> shift) - base] += counts[start + j]
    return k, base_pos, pos, base_neg, neg


def merge_buckets_numba(
    sides: list[tuple[int, int, CountArray, int]], max_buckets: int, max_shift: int
) -> tuple[int, int, CountArray, int, CountArray] | None:
    """The buckets of merged histograms in one compiled pass: ``sides`` holds every part's
    ``(side, offset, counts, shift)`` (side 0 positive, 1 negative; ``shift`` what brings
    its scale down to the merged one; counts need not be trimmed). Each part's indices
    move down by ``shift`` and, when the merged sides would need more than ``max_buckets``
    buckets, by the same further ``k`` for both, the smallest that fits. Returns ``(k,
    positive offset, positive counts, negative offset, negative counts)``, fresh and
    trimmed arrays, or ``None`` when ``k`` would pass ``max_shift``."""
    arrays = []
    table: list[int] = []
    start = 0
    for side, offset, counts, shift in sides:
        n = counts.shape[0]
        if n:
            arrays.append(counts)
            table += (start, n, offset, shift, side)
            start += n
    cat = np.concatenate(arrays, dtype=np.uint64) if arrays else _NO_COUNTS
    parts = np.array(table, dtype=np.int64).reshape(-1, 5)
    k, base_pos, pos, base_neg, neg = _merge_kernel(cat, parts, max_buckets, max_shift)
    if k < 0:
        return None
    return int(k), int(base_pos), pos, int(base_neg), neg


_NO_COUNTS: Final = np.zeros(0, dtype=np.uint64)


# --------------------------------------------------------------------------------------------
# Quantiles of a histogram (the coordinator's statistics, every global query)
# --------------------------------------------------------------------------------------------

#: Largest scale whose ``exp2`` octave table :func:`quantile_estimates_numba` uses (8 KiB);
#: finer histograms take the NumPy path.
QUANTILE_TABLE_MAX_SCALE: Final = 10


@functools.cache
def exp2_table(scale: int) -> FloatArray:
    """``exp2(j / 2**scale)`` for ``j`` in ``[0, 2**scale)``, computed by ``np.exp2`` as
    :func:`~nethical_grpc.summary.exponential_histogram.bucket_lower_boundary` computes it
    element by element (``math.exp2`` differs in the last bit for some ``j``); a 1-element
    dummy for scales ``<= 0``."""
    if scale <= 0:
        return _ONE_TABLE
    table = np.exp2(np.arange(1 << scale, dtype=np.float64) * math.ldexp(1.0, -scale))
    table.setflags(write=False)
    return table


_ONE_TABLE: Final = np.ones(1, dtype=np.float64)
_ONE_TABLE.setflags(write=False)
_ONE_COUNT: Final = np.ones(1, dtype=np.uint64)
_ONE_COUNT.setflags(write=False)


@maybe_njit()
def _lower_boundary(
    index: int, scale: int, table: FloatArray, shift: int = 0
) -> float:  # pragma: no cover
    if scale > 0:
        return math.ldexp(table[index & ((1 << scale) - 1)], (index >> scale) + shift)
    return math.ldexp(1.0, (index << -scale) + shift)


@maybe_njit()
def _estimate(
    index: int, scale: int, table: FloatArray, factor: float
) -> float:  # pragma: no cover
    # as exponential_histogram._estimates: L * factor; among subnormal numbers, of the
    # multiples of 2 ** -1074 next to 2ab / (a + b) (a, b: the first and last in the
    # bucket), the one whose larger relative error to a and b is smaller
    lower = _lower_boundary(index, scale, table)
    if lower >= _DBL_MIN_NORMAL or _lower_boundary(index + 1, scale, table) > GRID_TOP:
        return lower * factor  # a bucket reaching past the even grid: its bound is coarse
    lo = _lower_boundary(index, scale, table, SUBNORMAL_SHIFT)
    hi = _lower_boundary(index + 1, scale, table, SUBNORMAL_SHIFT)
    a, b = np.floor(lo) + 1.0, np.floor(hi)
    if a > b:  # no double in the bucket
        return math.ldexp(np.floor(lo * factor + 0.5), -SUBNORMAL_SHIFT)
    below = max(np.floor(2.0 * a * b / (a + b)), a)
    above = min(below + 1.0, b)
    worst_below = max((below - a) / a, (b - below) / b)
    worst_above = max((above - a) / a, (b - above) / b)
    return math.ldexp(above if worst_above < worst_below else below, -SUBNORMAL_SHIFT)


@maybe_njit()
def _quantile_kernel(
    qs: FloatArray,
    pos: CountArray,
    pos_offset: int,
    neg: CountArray,
    neg_offset: int,
    zero_count: np.uint64,
    scale: int,
    table: FloatArray,
    factor: float,
    count: int,
    lo: float,
    hi: float,
) -> FloatArray:  # pragma: no cover
    out = np.empty(qs.shape[0], dtype=np.float64)
    cum_pos = np.cumsum(pos)
    n_neg = neg.shape[0]
    cum_neg = np.cumsum(neg[::-1])  # from the largest magnitude in: ascending values
    neg_total = cum_neg[-1] if n_neg else np.uint64(0)
    below_pos = neg_total + zero_count
    pos_total = cum_pos[-1] if cum_pos.shape[0] else np.uint64(0)
    n = below_pos + pos_total
    last = float(count - 1)
    for i in range(qs.shape[0]):
        if n == 0:
            out[i] = np.nan
        else:
            rank = np.uint64(math.floor(float(n - np.uint64(1)) * qs[i]))
            # in doubles, above 2**53 counts, the product rounds: past the last rank,
            # or below it for q = 1 (whose rank is the last one exactly)
            if rank > n - np.uint64(1) or qs[i] == 1.0:
                rank = n - np.uint64(1)
            if rank < neg_total:
                j = int(np.searchsorted(cum_neg, rank, side="right"))
                out[i] = -_estimate(neg_offset + (n_neg - 1 - j), scale, table, factor)
            elif rank < below_pos:
                out[i] = 0.0
            else:
                j = int(np.searchsorted(cum_pos, rank - below_pos, side="right"))
                out[i] = _estimate(pos_offset + j, scale, table, factor)
        if count > 0:  # as Summary.quantiles: inside [lo, hi], the end ranks exact
            v = out[i]
            if not math.isnan(v):
                v = max(v, lo)
                v = min(v, hi)
            r = math.floor(last * qs[i])
            if r <= 0:
                v = lo
            if r >= last:
                v = hi
            out[i] = v
    return out


def quantile_estimates_numba(
    qs: FloatArray,
    positive: tuple[int, CountArray],
    negative: tuple[int, CountArray],
    zero_count: int,
    scale: int,
    factor: float,
    clamp: tuple[int, float, float] = (0, 0.0, 0.0),
) -> FloatArray | None:
    """A histogram's quantile estimates in one compiled pass, as
    :meth:`~nethical_grpc.summary.exponential_histogram.ExponentialHistogram.quantiles`
    computes them (each side ``(offset, counts)``; ``factor`` ``1 + relative error``).
    ``clamp`` ``(count, min, max)`` with ``count > 0`` also applies what
    :meth:`~nethical_grpc.summary.Summary.quantiles` does with the moments: each estimate
    kept inside ``[min, max]``, the lowest and highest ranks of ``count`` exactly ``min``
    and ``max``. ``None`` for scales above :data:`QUANTILE_TABLE_MAX_SCALE`."""
    if scale > QUANTILE_TABLE_MAX_SCALE:
        return None
    count, lo, hi = clamp
    out: FloatArray = _quantile_kernel(
        qs,
        np.ascontiguousarray(positive[1], dtype=np.uint64),
        positive[0],
        np.ascontiguousarray(negative[1], dtype=np.uint64),
        negative[0],
        np.uint64(zero_count),
        scale,
        exp2_table(scale),
        factor,
        count,
        lo,
        hi,
    )
    return out


def warmup() -> None:
    """Compile (or load from Numba's on-disk cache) every kernel specialisation used at runtime.

    Call once at process start-up to keep the first real batch from paying the JIT cost
    (~2-3 s cold, well under 1 s from cache).  Covers writable and read-only value arrays
    (``np.frombuffer`` gives read-only ones) and scales above and at/below zero.  A no-op
    apart from a few microseconds of work when JIT is unavailable.
    """
    if not is_jit_available():
        return
    values = np.array([1.5, -2.5, 0.0, 5e-324, 3.0, -4.0, 7.0, 1e300, -1e-300], dtype=np.float64)
    frozen = values.copy()
    frozen.setflags(write=False)
    for x in (values, frozen):
        batch_moments_numba(x)
        for scale in (1, 0):
            bucketize_numba(x, scale, 0.0)
            counts = np.zeros(4, dtype=np.uint64)
            r = count_in_range_numba(x, scale, 0.0, counts, 0, counts, 0)
            lo, hi = r.pos_min >> 1, r.pos_max >> 1
            accumulate_numba(r.positive, 1, lo, np.zeros(hi - lo + 1, dtype=np.uint64))
    warmup_merge()


def warmup_merge() -> None:
    """:func:`warmup` for what a coordinator runs on every global query: the merge of
    histograms and their quantiles (a node warms these too, with the rest)."""
    if not is_jit_available():
        return
    merge_buckets_numba([(0, 3, np.ones(2, dtype=np.uint64), 1), (1, -4, _ONE_COUNT, 0)], 4, 8)
    qs = np.array([0.5, 0.99])
    # each side's counts writable or read-only (a coordinator's empty sides share one
    # read-only array), in every combination
    for pos in (np.ones(3, dtype=np.uint64), _ONE_COUNT):
        for neg in (np.ones(3, dtype=np.uint64), _ONE_COUNT):
            quantile_estimates_numba(qs, (1, pos), (-2, neg), 1, 6, 1.01, (7, -1.0, 9.0))


# --------------------------------------------------------------------------------------------
# Selection (once, at import)
# --------------------------------------------------------------------------------------------

BACKEND: str
if is_jit_available():
    BACKEND = "numba"
    batch_moments = batch_moments_numba
    bucketize = bucketize_numba
    count_in_range = count_in_range_numba
    accumulate = accumulate_numba
else:
    BACKEND = "numpy"
    batch_moments = batch_moments_numpy
    bucketize = bucketize_numpy
    count_in_range = count_in_range_numpy
    accumulate = accumulate_numpy
