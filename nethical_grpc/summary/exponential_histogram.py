"""OpenTelemetry-style base-2 exponential histogram.

At scale ``s`` the base is ``2 ** (2 ** -s)`` and bucket index ``i`` covers
``(base ** i, base ** (i + 1)]``; negative values are bucketed by ``|v|`` and values with
``|v| <= zero_threshold`` are counted in ``zero_count``.  Reducing the scale by ``k`` maps
index ``i`` to ``i >> k`` (floor shift), which is lossless with respect to merging.

Merge semantics
---------------
* The merged scale is the largest scale ``<= min(scales)`` at which both the positive and the
  negative buckets of the union fit in ``max_buckets``; it is therefore independent of the
  order of merges and updates (given equal ``max_buckets`` and ``zero_threshold``), and
  ``merge`` is exactly commutative and associative in that case.
* ``max_buckets`` of the result is the **max** of the operands' (keeps the resolution of the
  better-provisioned side).  When operands have different ``max_buckets``, associativity can
  fail in the scale of the result (an intermediate merge may be forced coarser than needed).
* ``zero_threshold`` of the result is the max of the operands'.  Buckets lying entirely below
  the new threshold (index ``< index(threshold)`` at the merged scale) are moved into
  ``zero_count``.  With differing thresholds, merge order can change which buckets move.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeGuard

import numpy as np
import numpy.typing as npt

from nethical_grpc.summary import _kernels

__all__ = [
    "DEFAULT_MAX_BUCKETS",
    "DEFAULT_SCALE",
    "MAX_SCALE",
    "MIN_MAX_BUCKETS",
    "MIN_SCALE",
    "Buckets",
    "ExponentialHistogram",
    "bucket_index",
    "bucket_lower_boundary",
    "counted_side",
    "index_limits",
    "relative_error_at",
]

DEFAULT_SCALE: Final = 6
DEFAULT_MAX_BUCKETS: Final = 2048
MIN_SCALE: Final = -10
MAX_SCALE: Final = 20
#: At MIN_SCALE all finite doubles (subnormals included) span 3 indices per sign, so any
#: ``max_buckets >= 3`` can always be satisfied by downscaling; 4 is the enforced minimum.
MIN_MAX_BUCKETS: Final = 4
#: the most a summary message can say (``max_buckets`` is a uint32 on the wire)
MAX_MAX_BUCKETS: Final = 2**32 - 1

_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1
_COUNT_LIMIT: Final = 2**63 - 1
_DBL_MAX: Final = float(np.finfo(np.float64).max)
_DBL_TRUE_MIN: Final = 5e-324

CountArray = npt.NDArray[np.uint64]
AnyCounts = npt.NDArray[np.unsignedinteger] | npt.NDArray[np.signedinteger]
FloatArray = npt.NDArray[np.float64]


def _is_int(value: object) -> TypeGuard[numbers.Integral]:
    if type(value) is int:  # the common case, without the ABC check
        return True
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _empty_counts() -> CountArray:
    return np.zeros(0, dtype=np.uint64)


def relative_error_at(scale: int) -> float:
    """``(base - 1) / (base + 1)`` for ``base = 2 ** (2 ** -scale)``, computed without overflow."""
    return math.tanh(math.log(2.0) * math.ldexp(1.0, -scale) / 2.0)


def bucket_index(value: float, scale: int) -> int:
    """Bucket index of ``|value|`` at ``scale`` (``value`` finite and non-zero)."""
    v = float(value)
    if v == 0.0 or not math.isfinite(v):
        raise ValueError(f"bucket_index needs a finite non-zero value, got {value!r}")
    r = _kernels.bucketize_numpy(np.array([abs(v)]), int(scale), 0.0)
    return int(r.positive[0])


def bucket_lower_boundary(
    index: int | npt.NDArray[np.int64], scale: int, shift: int = 0
) -> FloatArray:
    """``base ** index`` (lower, exclusive boundary), as float64 (may under/overflow to
    0/inf); times ``2 ** shift`` when given, rounded once."""
    idx = np.asarray(index, dtype=np.int64)
    out: FloatArray
    with np.errstate(over="ignore", under="ignore"):
        if scale > 0:
            whole = idx >> scale
            frac = (idx & ((1 << scale) - 1)).astype(np.float64) * math.ldexp(1.0, -scale)
            out = np.ldexp(np.exp2(frac), whole + shift)
        else:
            out = np.ldexp(np.ones(idx.shape), (idx << -scale) + shift)
    return out


def _estimates(index: npt.NDArray[np.int64], scale: int, factor: float) -> FloatArray:
    """The magnitude each bucket ``(L, U]`` of ``index`` stands for in a quantile,
    ``L * factor`` (``2LU / (L + U)``, within the relative error bound of every value in
    the bucket).

    Below the smallest normal number the doubles are the multiples of ``2 ** -1074``, so
    a bucket holds only those from its first, ``a``, to its last, ``b``, and the estimate
    must be one of them: the one of the two next to ``2ab / (a + b)`` whose larger
    relative error to ``a`` and ``b`` is smaller (within the bound, as ``a > L`` and
    ``b <= U``). Worked out in units of that step; ``_kernels._estimate`` does the same."""
    lower = bucket_lower_boundary(index, scale)
    est = lower * factor
    shift = _kernels.SUBNORMAL_SHIFT
    tiny = lower < _kernels.GRID_TOP / 2  # below the smallest normal number
    if bool(tiny.any()):
        # not a bucket reaching past the even grid (coarse scales): its bound is coarse
        tiny[tiny] = bucket_lower_boundary(index[tiny] + 1, scale) <= _kernels.GRID_TOP
    if bool(tiny.any()):
        lo = bucket_lower_boundary(index[tiny], scale, shift)
        hi = bucket_lower_boundary(index[tiny] + 1, scale, shift)
        a, b = np.floor(lo) + 1.0, np.floor(hi)
        with np.errstate(divide="ignore", invalid="ignore"):  # a bucket with no double
            mean = 2.0 * a * b / (a + b)
            below = np.maximum(np.floor(mean), a)
            above = np.minimum(below + 1.0, b)
            worst_below = np.maximum((below - a) / a, (b - below) / b)
            worst_above = np.maximum((above - a) / a, (b - above) / b)
        units = np.where(worst_above < worst_below, above, below)
        units = np.where(a <= b, units, np.floor(lo * factor + 0.5))
        est[tiny] = np.ldexp(units, -shift)
    return est


@functools.cache
def index_limits(scale: int) -> tuple[int, int]:
    """``(lowest, highest)`` index that a finite non-zero double can have at ``scale``."""
    r = _kernels.bucketize_numpy(np.array([_DBL_TRUE_MIN, _DBL_MAX]), int(scale), 0.0)
    return int(r.positive[0]), int(r.positive[1])


# ------------------------------------------------------------------------------------------------
# Buckets
# ------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Buckets:
    """Dense bucket counts: ``counts[k]`` is the count of bucket index ``offset + k``.

    Leading/trailing zero counts are allowed but :meth:`trimmed` removes them (the
    histogram keeps its own buckets trimmed).  Equality compares trimmed contents.
    """

    offset: int = 0
    counts: CountArray = field(default_factory=_empty_counts)

    @property
    def total(self) -> int:
        """Sum of all counts."""
        return int(self.counts.sum(dtype=np.uint64)) if self.counts.size else 0

    def index_range(self) -> tuple[int, int] | None:
        """``(first, last)`` index with a non-zero count, or ``None`` when empty."""
        c = self.counts
        n = c.shape[0]
        if n == 0:
            return None
        if c[0] != 0 and c[n - 1] != 0:
            return self.offset, self.offset + n - 1
        nz = np.flatnonzero(c)
        if nz.size == 0:
            return None
        return self.offset + int(nz[0]), self.offset + int(nz[-1])

    def trimmed(self) -> Buckets:
        """A copy without leading/trailing zeros (``Buckets(0, [])`` when empty)."""
        rng = self.index_range()
        if rng is None:
            return Buckets()
        lo, hi = rng
        start = lo - self.offset
        counts = np.array(self.counts[start : start + hi - lo + 1], dtype=np.uint64)
        return Buckets(lo, counts)

    def indices(self) -> npt.NDArray[np.int64]:
        """Bucket index of every element of ``counts``."""
        return np.arange(self.offset, self.offset + self.counts.shape[0], dtype=np.int64)

    def copy(self) -> Buckets:
        return Buckets(int(self.offset), np.array(self.counts, dtype=np.uint64))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Buckets):
            return NotImplemented
        a, b = self.trimmed(), other.trimmed()
        return a.offset == b.offset and np.array_equal(a.counts, b.counts)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Buckets(offset={self.offset}, counts={self.counts.tolist()!r})"


def _checked_parts(
    scale: object,
    max_buckets: object,
    zero_threshold: object,
    zero_count: object,
    positive: object,
    negative: object,
) -> tuple[Buckets, Buckets]:
    """Validate a histogram's fields (``ValueError``); return both sides trimmed, uint64."""
    _check_params(scale, max_buckets, zero_threshold)
    if not _is_int(zero_count) or int(zero_count) < 0:
        raise ValueError(f"zero_count must be a non-negative integer, got {zero_count!r}")
    lo_lim, hi_lim = index_limits(int(scale))  # type: ignore[call-overload]
    limit = int(max_buckets)  # type: ignore[call-overload]
    pos, pos_total = _checked_side("positive", positive, limit, lo_lim, hi_lim)
    neg, neg_total = _checked_side("negative", negative, limit, lo_lim, hi_lim)
    if int(zero_count) + pos_total + neg_total > _COUNT_LIMIT:
        raise ValueError("total count overflows int64")
    return pos, neg


def _checked_side(
    name: str, b: object, max_buckets: int, lo_lim: int, hi_lim: int
) -> tuple[Buckets, int]:
    """Validate one side's buckets; return them trimmed (uint64) with their total."""
    if not isinstance(b, Buckets):
        raise ValueError(f"{name} must be Buckets, got {type(b).__name__}")
    if not _is_int(b.offset):
        raise ValueError(f"{name}.offset must be an integer, got {b.offset!r}")
    c = b.counts
    if not isinstance(c, np.ndarray) or c.ndim != 1:
        raise ValueError(f"{name}.counts must be a 1-D numpy array")
    if c.dtype.kind not in "ui":
        raise ValueError(f"{name}.counts must have an integer dtype, got {c.dtype}")
    if c.dtype.kind == "i" and c.shape[0] and int(c.min()) < 0:
        raise ValueError(f"{name}.counts must be non-negative")
    return _checked_side_counts(name, counted_side(int(b.offset), c), max_buckets, lo_lim, hi_lim)


#: One side as decoded: offset, counts, then where its first and last non-zero counts
#: are (``-1, -1`` when none is) and the exact sum of its counts.
CountedSide = tuple[int, AnyCounts, int, int, int]


def counted_side(offset: int, c: AnyCounts) -> CountedSide:
    """``offset`` and ``c`` (non-negative integer counts) with their first and last
    non-zero positions and their exact total."""
    n = c.shape[0]
    if n == 0:
        return offset, c, -1, -1, 0
    if c[0] != 0 and c[n - 1] != 0:  # already trimmed, as senders write them
        lead, trail = 0, n - 1
    else:
        nz = np.flatnonzero(c)
        lead, trail = (int(nz[0]), int(nz[-1])) if nz.shape[0] else (-1, -1)
    approx = float(c.sum(dtype=np.float64))
    # a float sum of integers is exact below 2**53; above, Python's integers are
    total = int(approx) if approx < 2.0**53 else sum(c.tolist())
    return offset, c, lead, trail, total


def _checked_side_counts(
    name: str,
    side: CountedSide,
    max_buckets: int,
    lo_lim: int,
    hi_lim: int,
) -> tuple[Buckets, int]:
    """The checks of one side: its buckets trimmed (uint64) and their total."""
    offset, c, lead, trail, total = side
    n = c.shape[0]
    if n == 0:
        return Buckets(), 0
    if not (offset >= _INT32_MIN and offset + n - 1 <= _INT32_MAX):
        raise ValueError(f"{name} bucket indices overflow int32")
    if lead < 0:
        return Buckets(), 0
    first, last = offset + lead, offset + trail
    if last - first + 1 > max_buckets:
        raise ValueError(f"{name} bucket span {last - first + 1} exceeds max_buckets {max_buckets}")
    if first < lo_lim or last > hi_lim:
        raise ValueError(
            f"{name} bucket indices [{first}, {last}] outside the range of finite values: "
            f"[{lo_lim}, {hi_lim}]"
        )
    if total > _COUNT_LIMIT:
        raise ValueError("total count overflows int64")
    return Buckets(first, c[lead : trail + 1].astype(np.uint64, copy=False)), total


def _narrowed(b: Buckets) -> Buckets:
    """``b`` with counts in the narrowest unsigned dtype that holds them."""
    c = b.counts
    if c.shape[0] == 0:
        return b
    top = int(c.max())
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return Buckets(b.offset, c.astype(dtype))
    return b


_U64: Final = np.dtype(np.uint64)


def _own(b: Buckets) -> Buckets:
    """Trimmed, writable, C-contiguous uint64 buckets; returns ``b`` itself when already so."""
    c = b.counts
    n = c.shape[0] if type(c) is np.ndarray and c.ndim == 1 else -1
    if n == 0 and c.dtype == _U64 and c.flags.writeable:
        # nothing to write into: an update replaces an empty array (a read-only one, as
        # decoding shares, is replaced here: the compiled update takes writable arrays)
        return b
    if (
        n > 0
        and c.dtype == _U64
        and c.flags.c_contiguous
        and c.flags.writeable
        and type(b.offset) is int
        and c[0] != 0
        and c[n - 1] != 0
    ):
        return b
    return Buckets(int(b.offset), np.asarray(b.counts)).trimmed()


def _shift(b: Buckets, k: int) -> Buckets:
    """Downscale trimmed buckets by ``k`` (index ``i -> i >> k``, counts summed); new object."""
    n = b.counts.shape[0]
    if n == 0:
        return Buckets()
    if k == 0:
        return Buckets(b.offset, b.counts.copy())
    new_idx = (b.offset + np.arange(n, dtype=np.int64)) >> k
    starts = np.concatenate(([0], np.flatnonzero(np.diff(new_idx)) + 1))
    return Buckets(int(new_idx[0]), np.add.reduceat(b.counts, starts))


def _maybe_shift(b: Buckets, k: int) -> Buckets:
    """``_shift(b, k)``, or ``b`` itself (no copy) when ``k == 0``."""
    return b if k == 0 else _shift(b, k)


def _span_after(rng: tuple[int, int] | None, k: int) -> int:
    if rng is None:
        return 0
    return (rng[1] >> k) - (rng[0] >> k) + 1


def _union(a: tuple[int, int] | None, b: tuple[int, int] | None) -> tuple[int, int] | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a[0], b[0]), max(a[1], b[1])


def _fit_shift(ranges: Sequence[tuple[int, int] | None], max_buckets: int, scale: int) -> int:
    """Smallest ``k >= 0`` such that every range fits in ``max_buckets`` at ``scale - k``."""
    k = 0
    while any(_span_after(r, k) > max_buckets for r in ranges):
        k += 1
        if scale - k < MIN_SCALE:
            raise _unfit(max_buckets)
    return k


def _unfit(max_buckets: int) -> ValueError:
    return ValueError(f"cannot fit the data in {max_buckets} buckets even at MIN_SCALE={MIN_SCALE}")


def _trimmed_span(parts: Sequence[Buckets]) -> tuple[int, int] | None:
    """The union of the index ranges of trimmed buckets (``None`` when all are empty)."""
    lo = hi = 0
    found = False
    for p in parts:
        n = p.counts.shape[0]
        if n:
            first = p.offset
            last = first + n - 1
            if not found:
                lo, hi, found = first, last, True
            else:
                lo = first if first < lo else lo
                hi = last if last > hi else hi
    return (lo, hi) if found else None


def _sum_buckets(parts: Sequence[Buckets], span: tuple[int, int] | None, k: int) -> Buckets:
    """Elementwise sum of trimmed buckets at the same scale (always a fresh array), given
    the union of their index ranges before a downscale by ``k``."""
    if span is None:
        return Buckets()
    lo = span[0] >> k
    out = np.zeros((span[1] >> k) - lo + 1, dtype=np.uint64)
    for p in parts:
        n = p.counts.shape[0]
        if n:
            start = p.offset - lo
            out[start : start + n] += p.counts
    return Buckets(lo, out)


def _drop_below(b: Buckets, limit: int) -> tuple[Buckets, int]:
    """Remove buckets with index ``< limit``; return the rest and the removed count."""
    n = b.counts.shape[0]
    if n == 0 or b.offset >= limit:
        return b, 0
    cut = min(limit - b.offset, n)
    moved = int(b.counts[:cut].sum(dtype=np.uint64))
    rest = Buckets(b.offset + cut, b.counts[cut:])
    return rest.trimmed(), moved


def _grow(b: Buckets, lo: int, hi: int) -> Buckets:
    """Buckets covering at least ``[lo, hi]`` (``b`` itself when it already does)."""
    n = b.counts.shape[0]
    if n == 0:
        return Buckets(lo, np.zeros(hi - lo + 1, dtype=np.uint64))
    cur_hi = b.offset + n - 1
    if lo >= b.offset and hi <= cur_hi:
        return b
    new_lo = min(lo, b.offset)
    new_hi = max(hi, cur_hi)
    out = np.zeros(new_hi - new_lo + 1, dtype=np.uint64)
    start = b.offset - new_lo
    out[start : start + n] = b.counts
    return Buckets(new_lo, out)


def _add_spill(b: Buckets, idx: npt.NDArray[np.int64], lo: int, hi: int, k: int) -> Buckets:
    if idx.shape[0] == 0:
        return b
    b = _grow(b, lo >> k, hi >> k)
    _kernels.accumulate(idx, k, b.offset, b.counts)
    return b


def _as_vector(values: npt.ArrayLike) -> FloatArray:
    arr = np.ascontiguousarray(values, dtype=np.float64)
    return arr.reshape(-1) if arr.ndim != 1 else arr


def _check_finite(arr: FloatArray) -> tuple[float, float]:
    """``(min, max)`` of ``arr``; ``ValueError`` naming the first NaN/inf if there is one."""
    bounds = _kernels.minmax(arr)
    bad = _kernels.first_nonfinite(arr, bounds)
    if bad >= 0:
        raise ValueError(f"values[{bad}] = {arr[bad]!r} is not finite; batch rejected")
    return bounds


# ------------------------------------------------------------------------------------------------
# Histogram
# ------------------------------------------------------------------------------------------------


class ExponentialHistogram:
    """Mergeable base-2 exponential histogram with automatic downscaling.

    Attributes are public for serialisation; after assigning them directly call
    :meth:`validate`.  Relative error of any quantile estimate (for values outside the zero
    bucket) is at most :attr:`relative_error`.
    """

    __slots__ = ("max_buckets", "negative", "positive", "scale", "zero_count", "zero_threshold")

    scale: int
    max_buckets: int
    zero_threshold: float
    zero_count: int
    positive: Buckets
    negative: Buckets

    def __init__(
        self,
        scale: int = DEFAULT_SCALE,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        zero_threshold: float = 0.0,
    ) -> None:
        _check_params(scale, max_buckets, zero_threshold)
        self.scale = int(scale)
        self.max_buckets = int(max_buckets)
        self.zero_threshold = float(zero_threshold)
        self.zero_count = 0
        self.positive = Buckets()
        self.negative = Buckets()

    @classmethod
    def from_parts(
        cls,
        *,
        scale: int,
        zero_count: int,
        positive: Buckets,
        negative: Buckets,
        zero_threshold: float = 0.0,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
    ) -> ExponentialHistogram:
        """Build from decoded fields; validates (``ValueError``) and normalises the buckets.

        Checks what :meth:`validate` checks, in one lean pass per side: this is the path
        every summary received over the wire takes.
        """
        pos, neg = _checked_parts(
            scale, max_buckets, zero_threshold, zero_count, positive, negative
        )
        h = cls.__new__(cls)
        h.scale = int(scale)
        h.max_buckets = int(max_buckets)
        h.zero_threshold = float(zero_threshold)
        h.zero_count = int(zero_count)
        h.positive = pos
        h.negative = neg
        return h

    @classmethod
    def from_counted(
        cls,
        scale: int,
        max_buckets: int,
        zero_threshold: float,
        zero_count: int,
        positive: CountedSide,
        negative: CountedSide,
    ) -> tuple[ExponentialHistogram, int]:
        """:meth:`from_parts` for a decoder: every value check, none of the type checks.

        ``scale``, ``max_buckets`` and ``zero_count`` are ``int`` (``zero_count`` >= 0),
        ``zero_threshold`` a ``float``, and each side a :data:`CountedSide` (see
        :func:`counted_side`): what a decoded message holds. Returns the histogram and
        its total count.
        """
        if not (
            MIN_SCALE <= scale <= MAX_SCALE
            and max_buckets >= MIN_MAX_BUCKETS
            and 0.0 <= zero_threshold < math.inf
        ):
            _check_params(scale, max_buckets, zero_threshold)
        lo_lim, hi_lim = index_limits(scale)
        pos, pos_total = _checked_side_counts("positive", positive, max_buckets, lo_lim, hi_lim)
        neg, neg_total = _checked_side_counts("negative", negative, max_buckets, lo_lim, hi_lim)
        total = zero_count + pos_total + neg_total
        if total > _COUNT_LIMIT:
            raise ValueError("total count overflows int64")
        return cls.from_checked(scale, max_buckets, zero_threshold, zero_count, pos, neg), total

    @classmethod
    def from_checked(
        cls,
        scale: int,
        max_buckets: int,
        zero_threshold: float,
        zero_count: int,
        positive: Buckets,
        negative: Buckets,
    ) -> ExponentialHistogram:
        """A histogram of parts :meth:`from_counted` accepts (checked by the caller: see
        :func:`nethical_grpc.summary_scan.values_valid`), each side trimmed uint64
        buckets, built without checking them again."""
        h = cls.__new__(cls)
        h.scale = scale
        h.max_buckets = max_buckets
        h.zero_threshold = zero_threshold
        h.zero_count = zero_count
        h.positive = positive
        h.negative = negative
        return h

    @classmethod
    def from_values(
        cls,
        values: npt.ArrayLike,
        scale: int = DEFAULT_SCALE,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        zero_threshold: float = 0.0,
    ) -> ExponentialHistogram:
        h = cls(scale, max_buckets, zero_threshold)
        h.update(values)
        return h

    @classmethod
    def merge_all(cls, items: Iterable[ExponentialHistogram]) -> ExponentialHistogram:
        """Merge any number of histograms in one pass (empty iterable: an empty histogram).

        Equivalent to folding :meth:`merge_from`, but each bucket array is added once into a
        single output, so merging many summaries costs one array operation per summary.
        """
        hs = list(items)
        if len(hs) < 2:
            return hs[0].copy() if hs else cls()
        out = cls.__new__(cls)  # every field is set by the merge
        out._merge_many(hs)
        return out

    def copy(self) -> ExponentialHistogram:
        h = ExponentialHistogram.__new__(ExponentialHistogram)
        h.scale = self.scale
        h.max_buckets = self.max_buckets
        h.zero_threshold = self.zero_threshold
        h.zero_count = self.zero_count
        h.positive = self.positive.copy()
        h.negative = self.negative.copy()
        return h

    # ---------------------------------------------------------------- properties

    @property
    def count(self) -> int:
        return int(self.zero_count) + self.positive.total + self.negative.total

    @property
    def relative_error(self) -> float:
        """``(base - 1) / (base + 1)``: max relative error of a bucket's representative value."""
        return relative_error_at(self.scale)

    @property
    def base(self) -> float:
        """``2 ** (2 ** -scale)`` (``inf`` when it overflows, at scale -10)."""
        with np.errstate(over="ignore"):
            return float(np.exp2(np.float64(math.ldexp(1.0, -self.scale))))

    # ---------------------------------------------------------------- updating

    def update(self, values: npt.ArrayLike) -> None:
        """Add a batch of values; any NaN/inf rejects the whole batch (``ValueError``)."""
        arr = _as_vector(values)
        if arr.shape[0] == 0:
            return
        self._update_finite(arr, _check_finite(arr))

    def _update_finite(self, arr: FloatArray, bounds: tuple[float, float] | None = None) -> None:
        """Add a batch already known to be finite (``bounds``: its precomputed min/max)."""
        if arr.shape[0] == 0:
            return
        pos = _own(self.positive)
        neg = _own(self.negative)
        self.positive, self.negative = pos, neg
        r = _kernels.count_in_range(
            arr,
            self.scale,
            self.zero_threshold,
            pos.counts,
            pos.offset,
            neg.counts,
            neg.offset,
            bounds,
        )
        self.zero_count += r.zero_count
        has_pos = r.positive.shape[0] > 0
        has_neg = r.negative.shape[0] > 0
        if not (has_pos or has_neg):
            return
        prange = _union(pos.index_range(), (r.pos_min, r.pos_max) if has_pos else None)
        nrange = _union(neg.index_range(), (r.neg_min, r.neg_max) if has_neg else None)
        k = _fit_shift((prange, nrange), self.max_buckets, self.scale)
        if k:
            pos = _shift(pos, k)
            neg = _shift(neg, k)
            self.scale -= k
        self.positive = _add_spill(pos, r.positive, r.pos_min, r.pos_max, k)
        self.negative = _add_spill(neg, r.negative, r.neg_min, r.neg_max, k)

    def downscale(self, k: int) -> None:
        """Reduce the scale by ``k`` in place (bucket ``i`` becomes ``i >> k``)."""
        if not _is_int(k) or int(k) < 0:
            raise ValueError(f"downscale step must be a non-negative integer, got {k!r}")
        step = int(k)
        if self.scale - step < MIN_SCALE:
            raise ValueError(f"cannot downscale from {self.scale} by {step}: below {MIN_SCALE}")
        if step == 0:
            return
        self.positive = _shift(_own(self.positive), step)
        self.negative = _shift(_own(self.negative), step)
        self.scale -= step

    def compact(self) -> None:
        """Keep counts in the narrowest dtype that holds them (uint8 for most windows).

        For histograms that are no longer updated, such as closed windows. Every
        operation widens the counts back to uint64 first, so results are unchanged.
        """
        self.positive = _narrowed(self.positive)
        self.negative = _narrowed(self.negative)

    @property
    def is_compact(self) -> bool:
        """Whether no counts are held at 64 bits (what an update leaves and
        :meth:`compact` narrows), told without reading them."""
        return all(
            b.counts.dtype != _U64 or b.counts.shape[0] == 0 for b in (self.positive, self.negative)
        )

    # ---------------------------------------------------------------- merging

    def merge(self, other: ExponentialHistogram) -> ExponentialHistogram:
        """A new histogram for the union of both (see module docstring for the rules)."""
        out = self.copy()
        out.merge_from(other)
        return out

    def merge_from(self, other: ExponentialHistogram) -> None:
        """Merge ``other`` into ``self`` (``other`` is not modified)."""
        self._merge_many([self, other])

    def _merge_many(self, hs: Sequence[ExponentialHistogram], compiled: bool = True) -> None:
        """Set ``self`` to the merge of ``hs`` (which may include ``self``; none is modified):
        in one compiled pass with Numba (``compiled``) when no part has a zero threshold,
        else with NumPy; both give the same buckets."""
        for h in hs:
            if not isinstance(h, ExponentialHistogram):
                raise TypeError(f"cannot merge ExponentialHistogram with {type(h).__name__}")
        scale = min([h.scale for h in hs])
        threshold = max([h.zero_threshold for h in hs])
        max_buckets = max([h.max_buckets for h in hs])
        zero_count = sum([int(h.zero_count) for h in hs])
        if compiled and threshold == 0.0 and _kernels.BACKEND == "numba":
            k, new_pos, new_neg = _merged_sides_compiled(hs, scale, max_buckets)
        else:
            k, new_pos, new_neg, moved = _merged_sides_numpy(hs, scale, threshold, max_buckets)
            zero_count += moved
        self.scale = scale - k
        self.max_buckets = max_buckets
        self.zero_threshold = threshold
        self.zero_count = zero_count
        self.positive = new_pos
        self.negative = new_neg

    # ---------------------------------------------------------------- queries

    def quantile(self, q: float) -> float:
        """Estimate of the order statistic of rank ``floor(q * (count - 1))``; NaN if empty."""
        return float(self.quantiles(np.array([q], dtype=np.float64))[0])

    def quantiles(self, qs: Sequence[float] | npt.NDArray[np.floating]) -> FloatArray:
        """Vectorised :meth:`quantile` (same rank definition as ``np.quantile(method="lower")``).

        The estimate for a bucket ``(L, U]`` is ``2LU / (L + U)`` (negated for negative
        buckets), whose relative error is at most :attr:`relative_error`; the zero bucket
        yields 0.0.
        """
        return self.clamped_quantiles(qs)

    def clamped_quantiles(
        self,
        qs: Sequence[float] | npt.NDArray[np.floating],
        clamp: tuple[int, float, float] = (0, 0.0, 0.0),
    ) -> FloatArray:
        """:meth:`quantiles`, and with ``clamp`` ``(count, min, max)`` (``count > 0``) each
        estimate kept inside ``[min, max]``, the lowest and highest ranks of ``count``
        exactly ``min`` and ``max`` (what :meth:`Summary.quantiles
        <nethical_grpc.summary.Summary.quantiles>` does with its moments). One compiled
        pass with Numba, else NumPy; both give the same figures."""
        q = np.asarray(qs, dtype=np.float64).reshape(-1)
        if not all([0.0 <= v <= 1.0 for v in q.tolist()]):
            raise ValueError(f"quantiles must be in [0, 1], got {q.tolist()!r}")
        if _kernels.BACKEND == "numba":
            found = _kernels.quantile_estimates_numba(
                q,
                (self.positive.offset, self.positive.counts),
                (self.negative.offset, self.negative.counts),
                int(self.zero_count),
                self.scale,
                1.0 + self.relative_error,
                clamp,
            )
            if found is not None:
                return found
        return _clamped(self._quantiles_numpy(q), q, clamp)

    def _quantiles_numpy(self, q: FloatArray) -> FloatArray:
        pos = _own(self.positive)
        neg = _own(self.negative)
        # cumulative counts of each side, negatives from the bucket nearest zero outwards
        cum_pos = np.cumsum(pos.counts)
        cum_neg = np.cumsum(neg.counts[::-1]) if neg.counts.shape[0] else cum_pos[:0]
        neg_total = int(cum_neg[-1]) if cum_neg.shape[0] else 0
        below_pos = neg_total + int(self.zero_count)
        n = below_pos + (int(cum_pos[-1]) if cum_pos.shape[0] else 0)
        if n == 0:
            return np.full(q.shape, np.nan)
        # in doubles, above 2**53 counts, the product rounds: past the last rank, or
        # below it for q = 1 (whose rank is the last one exactly)
        last = np.uint64(n - 1)
        ranks = np.minimum(np.floor((n - 1) * q).astype(np.uint64), last)
        ranks[q == 1.0] = last
        factor = 1.0 + self.relative_error  # 2LU/(L+U) == L * 2*base/(1+base) == L*(1+err)
        if below_pos == 0:  # only positive values: every rank falls in a positive bucket
            found = np.searchsorted(cum_pos, ranks, side="right")
            return _estimates(pos.offset + found.astype(np.int64), self.scale, factor)
        out = np.zeros(q.shape, dtype=np.float64)
        in_neg = ranks < neg_total
        if bool(in_neg.any()):
            nearest = np.searchsorted(cum_neg, ranks[in_neg], side="right")
            idx = neg.offset + (neg.counts.shape[0] - 1 - nearest).astype(np.int64)
            out[in_neg] = -_estimates(idx, self.scale, factor)
        in_pos = ranks >= below_pos
        if bool(in_pos.any()):
            found = np.searchsorted(cum_pos, ranks[in_pos] - np.uint64(below_pos), side="right")
            idx = pos.offset + found.astype(np.int64)
            out[in_pos] = _estimates(idx, self.scale, factor)
        return out

    # ---------------------------------------------------------------- validation

    def validate(self) -> None:
        """Raise ``ValueError`` if the fields do not form a usable histogram."""
        _checked_parts(
            self.scale,
            self.max_buckets,
            self.zero_threshold,
            self.zero_count,
            self.positive,
            self.negative,
        )

    # ---------------------------------------------------------------- dunder

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExponentialHistogram):
            return NotImplemented
        return (
            self.scale == other.scale
            and self.zero_count == other.zero_count
            and self.zero_threshold == other.zero_threshold
            and self.positive == other.positive
            and self.negative == other.negative
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"ExponentialHistogram(scale={self.scale}, count={self.count}, "
            f"zero_count={self.zero_count}, zero_threshold={self.zero_threshold}, "
            f"positive={self.positive!r}, negative={self.negative!r}, "
            f"max_buckets={self.max_buckets})"
        )


def _clamped(est: FloatArray, q: FloatArray, clamp: tuple[int, float, float]) -> FloatArray:
    n, lo, hi = clamp
    if n <= 0:
        return est
    # np.maximum/np.minimum: the same as np.clip, without its wrapper's cost
    est = np.minimum(np.maximum(est, lo), hi)
    ranks = np.floor((n - 1) * q)
    est[ranks <= 0] = lo
    est[ranks >= n - 1] = hi
    return est


def _merged_sides_compiled(
    hs: Sequence[ExponentialHistogram], scale: int, max_buckets: int
) -> tuple[int, Buckets, Buckets]:
    """The further downscale ``k`` and both merged sides, from the compiled kernel (no
    zero thresholds)."""
    merged = _kernels.merge_buckets_numba(
        [
            (side, b.offset, b.counts, h.scale - scale)
            for h in hs
            for side, b in ((0, h.positive), (1, h.negative))
        ],
        max_buckets,
        scale - MIN_SCALE,
    )
    if merged is None:
        raise _unfit(max_buckets)
    k, pos_offset, pos, neg_offset, neg = merged
    return (
        k,
        Buckets(pos_offset, pos) if pos.size else Buckets(),
        Buckets(neg_offset, neg) if neg.size else Buckets(),
    )


def _merged_sides_numpy(
    hs: Sequence[ExponentialHistogram], scale: int, threshold: float, max_buckets: int
) -> tuple[int, Buckets, Buckets, int]:
    """:func:`_merged_sides_compiled` with NumPy, and what the zero ``threshold`` moved
    into the zero bucket."""
    pos = [_maybe_shift(_own(h.positive), h.scale - scale) for h in hs]
    neg = [_maybe_shift(_own(h.negative), h.scale - scale) for h in hs]
    moved_total = 0
    if threshold > 0.0:
        limit = bucket_index(threshold, scale)
        for parts in (pos, neg):
            for i, part in enumerate(parts):
                parts[i], moved = _drop_below(part, limit)
                moved_total += moved
    # every part is trimmed now, so its range is its first and last index
    prange = _trimmed_span(pos)
    nrange = _trimmed_span(neg)
    k = _fit_shift((prange, nrange), max_buckets, scale)
    new_pos = _sum_buckets([_maybe_shift(p, k) for p in pos] if k else pos, prange, k)
    new_neg = _sum_buckets([_maybe_shift(p, k) for p in neg] if k else neg, nrange, k)
    return k, new_pos, new_neg, moved_total


def _check_params(scale: object, max_buckets: object, zero_threshold: object) -> None:
    if not _is_int(scale) or not (MIN_SCALE <= int(scale) <= MAX_SCALE):
        raise ValueError(f"scale must be an integer in [{MIN_SCALE}, {MAX_SCALE}], got {scale!r}")
    if not _is_int(max_buckets) or not MIN_MAX_BUCKETS <= int(max_buckets) <= MAX_MAX_BUCKETS:
        raise ValueError(
            f"max_buckets must be an integer in [{MIN_MAX_BUCKETS}, {MAX_MAX_BUCKETS}], "
            f"got {max_buckets!r}"
        )
    if type(zero_threshold) is float and 0.0 <= zero_threshold < math.inf:
        return
    if (
        not isinstance(zero_threshold, numbers.Real)
        or isinstance(zero_threshold, bool)
        or not math.isfinite(float(zero_threshold))
        or float(zero_threshold) < 0.0
    ):
        raise ValueError(f"zero_threshold must be a finite float >= 0, got {zero_threshold!r}")
