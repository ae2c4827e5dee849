"""A mergeable summary of a stream of finite float64 values: moments + exponential histogram."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from nethical_grpc.summary import _kernels
from nethical_grpc.summary.exponential_histogram import (
    DEFAULT_MAX_BUCKETS,
    DEFAULT_SCALE,
    ExponentialHistogram,
)
from nethical_grpc.summary.moments import Moments

__all__ = ["Summary"]

FloatArray = npt.NDArray[np.float64]


def _as_vector(values: npt.ArrayLike) -> FloatArray:
    try:
        arr = np.ascontiguousarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:  # text, objects, ints past a double
        raise ValueError(f"values must be real numbers: {exc}") from None
    return arr.reshape(-1) if arr.ndim != 1 else arr


class Summary:
    """Exact moments (count/sum/min/max/mean/variance) plus a quantile sketch.

    ``update`` rejects a batch containing NaN/inf as a whole; nothing changes on error.
    Quantile estimates are the histogram's, clamped to ``[min, max]``.
    """

    __slots__ = ("histogram", "moments")

    moments: Moments
    histogram: ExponentialHistogram

    def __init__(
        self,
        moments: Moments | None = None,
        histogram: ExponentialHistogram | None = None,
        *,
        scale: int = DEFAULT_SCALE,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        zero_threshold: float = 0.0,
    ) -> None:
        """Wrap existing parts (not copied) or start empty with the given histogram settings."""
        self.moments = moments if moments is not None else Moments()
        self.histogram = (
            histogram
            if histogram is not None
            else ExponentialHistogram(scale, max_buckets, zero_threshold)
        )

    @classmethod
    def from_values(
        cls,
        values: npt.ArrayLike,
        scale: int = DEFAULT_SCALE,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        zero_threshold: float = 0.0,
    ) -> Summary:
        s = cls(scale=scale, max_buckets=max_buckets, zero_threshold=zero_threshold)
        s.update(values)
        return s

    @classmethod
    def merge_all(cls, items: Iterable[Summary]) -> Summary:
        """Merge any number of summaries in one pass (empty iterable: an empty summary)."""
        parts = list(items)
        if not parts:
            return cls()
        wrong = next((p for p in parts if not isinstance(p, Summary)), None)
        if wrong is not None:
            raise TypeError(f"can only merge Summary objects, got {type(wrong).__name__}")
        if len(parts) == 1:
            return parts[0].copy()
        return cls(
            Moments.merge_all(p.moments for p in parts),
            ExponentialHistogram.merge_all(p.histogram for p in parts),
        )

    def compact(self) -> None:
        """Shrink the sketch's memory once it is no longer updated (see the histogram's)."""
        self.histogram.compact()

    def copy(self) -> Summary:
        return Summary(self.moments.copy(), self.histogram.copy())

    # ---------------------------------------------------------------- updating

    def update(self, values: npt.ArrayLike) -> None:
        """Add a batch; raises ``ValueError`` naming the first non-finite index."""
        arr = _as_vector(values)
        if arr.shape[0] == 0:
            return
        bounds = _kernels.minmax(arr)  # non-finite min/max <=> some value is NaN/inf
        bad = _kernels.first_nonfinite(arr, bounds)
        if bad >= 0:
            raise ValueError(f"values[{bad}] = {arr[bad]!r} is not finite; batch rejected")
        t = _kernels.batch_moments(arr, bounds)
        self.histogram._update_finite(arr, bounds)
        self.moments._merge_in_place(
            Moments(t.n, t.sum, t.compensation, t.min, t.max, t.mean, t.m2)
        )

    def merge(self, other: Summary) -> Summary:
        out = self.copy()
        out.merge_from(other)
        return out

    def merge_from(self, other: Summary) -> None:
        if not isinstance(other, Summary):
            raise TypeError(f"cannot merge Summary with {type(other).__name__}")
        merged = self.histogram.merge(other.histogram)  # may raise: do it before mutating
        self.moments._merge_in_place(other.moments)
        self.histogram = merged

    # ---------------------------------------------------------------- queries

    def quantile(self, q: float) -> float:
        """Estimate of the ``floor(q * (count - 1))``-th order statistic; NaN when empty."""
        return float(self.quantiles(np.array([q], dtype=np.float64))[0])

    def quantiles(self, qs: Sequence[float] | npt.NDArray[np.floating]) -> FloatArray:
        """The histogram's estimates, kept within ``[min, max]``; the lowest and highest
        ranks (``q = 0`` and ``q = 1``, and any ``q`` whose rank is one of them) are the
        exact minimum and maximum, which the moments hold."""
        m = self.moments
        return self.histogram.clamped_quantiles(qs, (m.count, m.min, m.max))

    @property
    def count(self) -> int:
        return self.moments.count

    @property
    def total(self) -> float:
        """Compensated sum (0.0 when empty)."""
        return self.moments.total

    @property
    def mean(self) -> float:
        """Mean; NaN when empty."""
        return self.moments.mean if self.moments.count else math.nan

    @property
    def min(self) -> float:
        """Minimum; NaN when empty."""
        return self.moments.min if self.moments.count else math.nan

    @property
    def max(self) -> float:
        """Maximum; NaN when empty."""
        return self.moments.max if self.moments.count else math.nan

    @property
    def variance(self) -> float:
        """Population variance; NaN when empty."""
        return self.moments.variance

    @property
    def stddev(self) -> float:
        """Population standard deviation; NaN when empty."""
        return self.moments.stddev

    @property
    def relative_error(self) -> float:
        """Quantile relative-error bound at the histogram's current scale."""
        return self.histogram.relative_error

    # ---------------------------------------------------------------- validation

    def validate(self) -> None:
        """Raise ``ValueError`` when the parts are invalid or disagree on the count."""
        self.moments.validate()
        self.histogram.validate()
        if self.moments.count != self.histogram.count:
            raise ValueError(
                f"moments.count ({self.moments.count}) != histogram.count ({self.histogram.count})"
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Summary):
            return NotImplemented
        return self.moments == other.moments and self.histogram == other.histogram

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Summary(moments={self.moments!r}, histogram={self.histogram!r})"
