"""The public bucket grid a private histogram is released on.

Noising only the buckets a histogram happens to hold would reveal which buckets are empty
(one person's value can make a bucket appear), and a histogram's own scale depends on its
data (it downscales when its values span too many buckets). So a release projects the
histogram onto a grid fixed by configuration alone, and noises every cell of it:

* scale ``histogram_scale``; positive cells ``low..high`` where ``high`` is the bucket of
  ``value_bound`` and ``low`` is the bucket just above ``value_bound * 2^-octaves``;
* the same cells for negative values (unless ``nonnegative``), and one zero cell.

Projection: buckets are downscaled to the grid's scale (index ``i -> i >> k``); buckets
above ``high`` (values past the bound) fold into ``high``; buckets below ``low`` fold into
the zero cell. Each observation still lands in exactly one cell, so the cell vector has L1
sensitivity 1. A histogram coarser than the grid (possible only when its values span more
than ``max_buckets / 2^scale`` octaves) is mapped bucket by bucket onto the cell of the
bucket's lower boundary; the sensitivity argument then needs that coarseness not to depend
on one observation, which the value-bound assumption does not guarantee.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from nethical_grpc.privacy.config import PrivacyConfig
from nethical_grpc.summary import Buckets, ExponentialHistogram
from nethical_grpc.summary.exponential_histogram import (
    bucket_index,
    bucket_lower_boundary,
    relative_error_at,
)

__all__ = ["BucketGrid"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class BucketGrid:
    """Cells ``[negative low..high, zero, positive low..high]`` at ``scale``.

    ``signed=False`` (non-negative data) has no negative cells. ``zero_threshold`` is the
    upper edge of what the zero cell holds (the lower boundary of bucket ``low``).
    """

    scale: int
    low: int
    high: int
    signed: bool
    zero_threshold: float

    @classmethod
    def from_config(cls, config: PrivacyConfig) -> BucketGrid:
        """The grid ``config`` describes (computed once per distinct config)."""
        return _grid_for(config)

    @classmethod
    def _build(cls, config: PrivacyConfig) -> BucketGrid:
        scale = int(config.histogram_scale)
        bound = float(config.value_bound)
        # not bound * 2.0 ** -octaves: past 1074 octaves the power underflows to 0
        floor = config.zero_below
        low = bucket_index(floor, scale) + 1
        high = bucket_index(bound, scale)
        threshold = float(bucket_lower_boundary(low, scale))
        return cls(scale, low, high, not config.nonnegative, threshold)

    @property
    def cells_per_side(self) -> int:
        return self.high - self.low + 1

    @property
    def size(self) -> int:
        """Number of cells in the vector :meth:`project` returns."""
        return (2 if self.signed else 1) * self.cells_per_side + 1

    @property
    def zero_cell(self) -> int:
        """Position of the zero cell in the vector."""
        return self.cells_per_side if self.signed else 0

    def _side(self, b: Buckets, hist_scale: int) -> tuple[IntArray, int]:
        """Dense cells ``low..high`` for one side, and the count that falls below ``low``."""
        counts = np.asarray(b.counts).astype(np.int64)
        n = self.cells_per_side
        if counts.shape[0] == 0:
            return np.zeros(n, dtype=np.int64), 0
        idx = int(b.offset) + np.arange(counts.shape[0], dtype=np.int64)
        k = hist_scale - self.scale
        idx = idx >> k if k >= 0 else idx << -k
        # below low: the zero cell (slot 0); past high: the top cell
        slot = np.clip(idx, self.low - 1, self.high) - (self.low - 1)
        dense = np.zeros(n + 1, dtype=np.int64)
        np.add.at(dense, slot, counts)
        return dense[1:], int(dense[0])

    def project(self, h: ExponentialHistogram) -> IntArray:
        """The histogram's counts on the grid (int64; total equals ``h.count``)."""
        pos, pos_below = self._side(h.positive, h.scale)
        neg, neg_below = self._side(h.negative, h.scale)
        zero = int(h.zero_count) + pos_below + neg_below
        if not self.signed:
            # negatives break the assumption: clip them to the bound 0, the zero cell
            zero += int(neg.sum())
            return np.concatenate((np.array([zero], dtype=np.int64), pos))
        return np.concatenate((neg[::-1], np.array([zero], dtype=np.int64), pos))

    def cell_of(self, value: float) -> int:
        """Position of the cell that holds ``value`` (clipped onto the grid)."""
        v = float(value)
        if abs(v) <= self.zero_threshold or (v < 0.0 and not self.signed):
            return self.zero_cell
        # cell i covers (edges[i], edges[i + 1]]
        edges = _edges(self)
        i = int(np.searchsorted(edges, abs(v), side="left")) - 1
        i = min(max(i, 0), self.cells_per_side - 1)
        if v > 0.0:
            return self.zero_cell + 1 + i
        return self.zero_cell - 1 - i

    def histogram(self, cells: IntArray, max_buckets: int) -> ExponentialHistogram:
        """An :class:`ExponentialHistogram` holding ``cells`` (non-negative, grid layout)."""
        if cells.shape != (self.size,):
            raise ValueError(f"cells must have shape ({self.size},), got {cells.shape}")
        if bool((cells < 0).any()):
            raise ValueError("cells must be non-negative")
        n = self.cells_per_side
        z = self.zero_cell
        neg = cells[:z][::-1] if self.signed else np.zeros(0, dtype=np.int64)
        pos = cells[z + 1 :]
        return ExponentialHistogram.from_parts(
            scale=self.scale,
            zero_count=int(cells[z]),
            positive=Buckets(self.low, np.ascontiguousarray(pos, dtype=np.uint64)),
            negative=Buckets(self.low, np.ascontiguousarray(neg, dtype=np.uint64)),
            zero_threshold=self.zero_threshold,
            max_buckets=max(int(max_buckets), n),
        )

    def representatives(self) -> FloatArray:
        """A representative value per cell (the histogram's quantile estimate; 0 at zero).

        Read-only array, shared between calls.
        """
        return _representatives(self)


@functools.lru_cache(maxsize=64)
def _grid_for(config: PrivacyConfig) -> BucketGrid:
    return BucketGrid._build(config)


@functools.lru_cache(maxsize=64)
def _edges(grid: BucketGrid) -> FloatArray:
    """Lower boundaries of buckets ``low..high + 1`` (read-only)."""
    out = bucket_lower_boundary(np.arange(grid.low, grid.high + 2, dtype=np.int64), grid.scale)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=64)
def _representatives(grid: BucketGrid) -> FloatArray:
    pos = _edges(grid)[:-1] * (1.0 + relative_error_at(grid.scale))
    zero = np.zeros(1, dtype=np.float64)
    out = np.concatenate((-pos[::-1], zero, pos) if grid.signed else (zero, pos))
    out.flags.writeable = False
    return out
