"""Mergeable streaming moments: count, compensated sum, min, max, mean and M2.

Merging uses Chan et al.'s parallel update for ``mean``/``m2`` and Knuth's TwoSum for the
sum, so merging is exact for ``count``/``min``/``max`` and numerically stable for the rest.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from nethical_grpc.summary import _kernels
from nethical_grpc.summary._kernels import FloatOrArray

__all__ = ["Moments"]

#: Relative slack allowed by :meth:`Moments.validate` for rounding in derived fields.
_VALIDATE_RTOL = 1e-9


def _is_int(value: object) -> bool:
    if type(value) is int:  # the common case, without the ABC check
        return True
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    if type(value) is float or type(value) is int:
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(slots=True)
class Moments:
    """Moments of a multiset of finite float64 values.

    ``sum + compensation`` is the compensated total (``sum`` alone is its correctly rounded
    leading part); ``m2`` is the sum of squared deviations from ``mean``.  An empty
    ``Moments()`` is the identity of :meth:`merge`.

    Every field is a double: where the total or ``m2`` passes the largest one (~1.8e308:
    values near it, or that differ by more than ~1e154) they come out inf or NaN, and so
    may ``mean``; :meth:`validate` (and the wire) refuse such moments. A region node
    never makes them: it takes magnitudes up to 1e100 only.
    """

    count: int = 0
    sum: float = 0.0
    compensation: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    mean: float = 0.0
    m2: float = 0.0

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_values(cls, values: npt.ArrayLike) -> Moments:
        """Moments of ``values`` (flattened to float64; must be finite, checked by the caller)."""
        t = _kernels.batch_moments(values)
        return cls(t.n, t.sum, t.compensation, t.min, t.max, t.mean, t.m2)

    @classmethod
    def merge_all(cls, items: Iterable[Moments]) -> Moments:
        """Merge any number of moments (empty iterable gives ``Moments()``).

        Many parts are combined in one vectorised step: the pooled mean is the
        count-weighted mean and ``m2 = sum(m2_i) + sum(n_i * (mean_i - mean)^2)`` (the
        parallel formula for k parts); the sum is exact over every part's sum and
        compensation.
        """
        parts = [m for m in items if m.count]
        if len(parts) <= 2:
            return cls._folded(parts)
        n = sum(m.count for m in parts)
        lo = functools.reduce(_least, (m.min for m in parts))
        hi = -functools.reduce(_least, (-m.max for m in parts))
        terms = [*(m.sum for m in parts), *(m.compensation for m in parts)]
        try:
            total = math.fsum(terms)
            comp = math.fsum([*terms, -total])
            m2_parts = math.fsum(m.m2 for m in parts)
        except OverflowError:  # partial sums past the largest double: as merge() gives it
            return cls._folded(parts)
        # the mean of the exact total (a count-weighted mean of the parts' means loses
        # everything where the parts' values cancel)
        mean = (total + comp) / n
        mean = lo if mean < lo else hi if mean > hi else mean
        # each part's deviation from the pooled mean, both means as double-doubles: with
        # means rounded to one double, parts of values near 1e9 +- 1e-3 lost 7 digits
        pooled_hi, pooled_lo = _mean_parts(total, comp, float(n))
        if len(parts) <= _SCALAR_PARTS:  # a global query's few regions: no array set-up
            spread = 0.0
            for m in parts:
                d = _dd_difference(
                    *_mean_parts(m.sum, m.compensation, float(m.count)), pooled_hi, pooled_lo
                )
                spread += m.count * d * d
        else:  # a series' many windows
            counts = np.array([m.count for m in parts], dtype=np.float64)
            totals = np.array([m.sum for m in parts], dtype=np.float64)
            comps = np.array([m.compensation for m in parts], dtype=np.float64)
            dev = _dd_difference(*_mean_parts(totals, comps, counts), pooled_hi, pooled_lo)
            spread = float(np.dot(counts, dev * dev))
        m2 = m2_parts + spread
        return cls(n, total, comp, lo, hi, mean, m2)

    @classmethod
    def _folded(cls, parts: Iterable[Moments]) -> Moments:
        out = cls()
        for item in parts:
            out._merge_in_place(item)
        return out

    def copy(self) -> Moments:
        return Moments(
            self.count, self.sum, self.compensation, self.min, self.max, self.mean, self.m2
        )

    # ---------------------------------------------------------------- merging

    def merge(self, other: Moments) -> Moments:
        """A new ``Moments`` for the union of both multisets.

        Commutative bit-for-bit (operands are put in a canonical order first); associative up
        to rounding in ``mean``/``m2``/``compensation``.
        """
        out = self.copy()
        out._merge_in_place(other)
        return out

    def update(self, values: npt.ArrayLike) -> None:
        """Merge a batch of (finite) values in place."""
        self._merge_in_place(Moments.from_values(values))

    def _key(self) -> tuple[int, float, float, float, float, float, float]:
        return (self.count, self.mean, self.m2, self.sum, self.compensation, self.min, self.max)

    def _merge_in_place(self, other: Moments) -> None:
        if not isinstance(other, Moments):
            raise TypeError(f"cannot merge Moments with {type(other).__name__}")
        if other.count == 0:
            return
        if self.count == 0:
            self._assign(other)
            return
        # Canonical order: larger count first (keeps Chan's correction term small) and makes
        # the result independent of argument order.
        a, b = (self, other) if self._key() >= other._key() else (other, self)
        n = a.count + b.count
        t, e = _kernels.two_sum(a.sum, b.sum)
        comp = (a.compensation + b.compensation) + e
        total, comp = _kernels.two_sum(t, comp)
        lo = _least(a.min, b.min)
        hi = -_least(-a.max, -b.max)
        # the means' difference from double-double means (see merge_all)
        delta = _dd_difference(
            *_mean_parts(b.sum, b.compensation, float(b.count)),
            *_mean_parts(a.sum, a.compensation, float(a.count)),
        )
        frac = b.count / n
        # the mean of the exact total, not Chan's a.mean + delta * frac (which loses it
        # where the parts' values cancel); delta still corrects m2
        mean = (total + comp) / n
        mean = lo if mean < lo else hi if mean > hi else mean
        m2 = (a.m2 + b.m2) + delta * delta * (a.count * frac)
        self.count = n
        self.sum = total
        self.compensation = comp
        self.min = lo
        self.max = hi
        self.mean = mean
        self.m2 = m2

    def _assign(self, other: Moments) -> None:
        self.count = other.count
        self.sum = other.sum
        self.compensation = other.compensation
        self.min = other.min
        self.max = other.max
        self.mean = other.mean
        self.m2 = other.m2

    # ---------------------------------------------------------------- derived values

    @property
    def total(self) -> float:
        """Compensated sum of all values (0.0 when empty)."""
        return self.sum + self.compensation

    @property
    def variance(self) -> float:
        """Population variance ``m2 / count``; NaN when empty."""
        if self.count == 0:
            return math.nan
        return self.m2 / self.count

    @property
    def stddev(self) -> float:
        """Population standard deviation; NaN when empty."""
        return math.sqrt(self.variance)

    # ---------------------------------------------------------------- validation

    def validate(self) -> None:
        """Raise ``ValueError`` if the fields cannot describe any multiset of finite values.

        Meant for summaries received over the wire; tolerances allow for rounding only.
        """
        if not _is_int(self.count):
            raise ValueError(f"count must be an integer, got {type(self.count).__name__}")
        fields = {
            "sum": self.sum,
            "compensation": self.compensation,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "m2": self.m2,
        }
        for name, value in fields.items():
            if not _is_real(value):
                raise ValueError(f"{name} must be a real number, got {type(value).__name__}")
        count = int(self.count)
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if count == 0:
            empty = Moments()
            for name, value in fields.items():
                expected = getattr(empty, name)
                if float(value) != expected:
                    raise ValueError(
                        f"empty moments (count == 0) must have {name} == {expected}, got {value}"
                    )
            return
        for name, value in fields.items():
            if not math.isfinite(float(value)):
                raise ValueError(f"{name} must be finite when count > 0, got {value}")
        check_consistent(
            count,
            float(self.sum) + float(self.compensation),
            float(self.min),
            float(self.max),
            float(self.mean),
            float(self.m2),
        )


def _mean_parts(
    total: FloatOrArray, compensation: FloatOrArray, n: FloatOrArray
) -> tuple[FloatOrArray, FloatOrArray]:
    """``(hi, lo)``: the mean ``(total + compensation) / n`` as a double-double (the
    rounded quotient and what its rounding left out); floats, or arrays element-wise."""
    hi = (total + compensation) / n
    p = hi * n
    return hi, (((total - p) - _kernels.dekker_error(hi, n, p)) + compensation) / n


#: Up to this many parts, :meth:`Moments.merge_all` takes the deviations one by one
#: (cheaper than setting up arrays: 10 parts measured 14 us against 29 us).
_SCALAR_PARTS = 32


def _dd_difference(
    a_hi: FloatOrArray, a_lo: FloatOrArray, b_hi: FloatOrArray, b_lo: FloatOrArray
) -> FloatOrArray:
    """``(a_hi + a_lo) - (b_hi + b_lo)`` to about double-double accuracy (floats, or
    arrays element-wise)."""
    s, err = _kernels.two_sum(a_hi, -b_hi)
    return s + (err + (a_lo - b_lo))


def consistency_conditions(
    count: FloatOrArray,
    total: FloatOrArray,
    lo: FloatOrArray,
    hi: FloatOrArray,
    mean: FloatOrArray,
    m2: FloatOrArray,
    mag: FloatOrArray,
) -> tuple[tuple[Any, Any, Any, Any, Any, Any], FloatOrArray]:
    """The conditions of :func:`check_consistent`, in its order, each true where it holds,
    and the Popoviciu bound (``mag`` is ``max(abs(lo), abs(hi))``). Plain float
    operations (overflow gives inf, never an exception), so the compiled copy that
    :mod:`nethical_grpc.summary_scan` runs over many summaries decides as this does."""
    tol = _VALIDATE_RTOL * mag
    # Popoviciu: variance <= (max - min)^2 / 4
    spread = hi - lo
    bound = count * (spread * spread / 4.0)
    slack = count * (tol * tol)
    t_tol = count * tol
    return (
        lo <= hi,
        m2 >= 0.0,
        (lo - tol <= mean) & (mean <= hi + tol),
        (count != 1) | (lo == hi),
        m2 <= bound * (1.0 + _VALIDATE_RTOL) + slack,  # (m2 is finite)
        (total != total)
        | (abs(total) == math.inf)
        | ((count * lo - t_tol <= total) & (total <= count * hi + t_tol)),
    ), bound


def check_consistent(
    count: int, total: float, lo: float, hi: float, mean: float, m2: float
) -> None:
    """The numeric checks of :meth:`Moments.validate` for ``count > 0`` and finite floats
    (``total`` is the compensated sum); ``ValueError`` names the inconsistency."""
    ok, bound = consistency_conditions(count, total, lo, hi, mean, m2, max(abs(lo), abs(hi)))
    ordered, m2_positive, mean_within, single, spread_bound, sum_within = ok
    if not ordered:
        raise ValueError(f"min ({lo}) > max ({hi})")
    if not m2_positive:
        raise ValueError(f"m2 must be >= 0, got {m2}")
    if not mean_within:
        raise ValueError(f"mean ({mean}) outside [min, max] = [{lo}, {hi}]")
    if not single:
        raise ValueError(f"a single value cannot have min ({lo}) != max ({hi})")
    if not spread_bound:
        raise ValueError(f"m2 ({m2}) exceeds count * (max - min)^2 / 4 = {bound}")
    if not sum_within:
        raise ValueError(
            f"sum ({total}) outside [count*min, count*max] = [{count * lo}, {count * hi}]"
        )


def _least(x: float, y: float) -> float:
    """``min(x, y)``, and -0.0 of -0.0 and 0.0 whichever comes first (``min`` gives the
    first of two equal values: a merge's min would depend on its order)."""
    if x == y:
        return x if math.copysign(1.0, x) < 0 else y
    return x if x < y else y
