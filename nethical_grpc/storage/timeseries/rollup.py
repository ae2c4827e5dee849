"""The per-minute rollup: what a batch adds to it, and which part of a query it answers.

Every write of raw metrics also adds, in the same transaction, one row per (region, metric,
UTC minute) it touches to a rollup table: observation count, sum, min and max. Rows merge
by adding counts and sums and taking the min of mins and max of maxes, so the rollup is
exact for count, min and max, and for sum and avg up to floating-point summation order.

``aggregate_metrics`` with a bucket width that is a whole number of minutes and no agent
filter reads whole minutes from the rollup (about 1,440 rows a day instead of every
observation) and only the partial minutes at the edges of an unaligned range from the raw
table. An agent filter, or a width that is not a whole number of minutes, reads the raw
table (through the (region, agent, time) or (region, metric, time) index).

Retention drops whole UTC days of both tables together, so they stay consistent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from nethical_grpc.storage.timeseries.buckets import US_PER_MINUTE, ceil_to
from nethical_grpc.storage.timeseries.model import MetricColumns

__all__ = ["AggregatePlan", "RollupRows", "TimeRange", "plan_aggregate", "rollup_rows"]

TimeRange = tuple[int | None, int | None]
"""A half-open range of Unix µs ``[start, end)``; ``None`` is open on that side."""


@dataclass(frozen=True, slots=True)
class RollupRows:
    """What one batch adds to the rollup, one row per (region, metric, minute), sorted by
    that key (so concurrent writers lock rollup rows in the same order)."""

    region_ids: list[str]
    metric_names: list[str]
    minute_us: list[int]
    counts: list[int]
    sums: list[float]
    mins: list[float]
    maxs: list[float]

    def __len__(self) -> int:
        return len(self.minute_us)

    def rows(self) -> list[tuple[str, str, int, int, float, float, float]]:
        return list(
            zip(
                self.region_ids,
                self.metric_names,
                self.minute_us,
                self.counts,
                self.sums,
                self.mins,
                self.maxs,
                strict=True,
            )
        )


def _codes(column: list[str]) -> tuple[list[str], npt.NDArray[np.intp]]:
    """Distinct values of ``column`` and each row's index into them."""
    if column.count(column[0]) == len(column):
        return column[:1], np.zeros(len(column), dtype=np.intp)
    uniques, inverse = np.unique(np.asarray(column, dtype=object), return_inverse=True)
    return [str(u) for u in uniques], inverse.astype(np.intp)


def rollup_rows(cols: MetricColumns) -> RollupRows:
    """Group a validated batch by (region, metric, minute): count, sum, min, max (NumPy)."""
    n = len(cols)
    if n == 0:
        return RollupRows([], [], [], [], [], [], [])
    regions, region_code = _codes(cols.region_ids)
    names, name_code = _codes(cols.metric_names)
    minute = np.floor_divide(cols.ts_us, US_PER_MINUTE)
    series = region_code.astype(np.int64) * len(names) + name_code
    # Sort by (region, metric, minute); the stable sort keeps each group's input order, so
    # its sum is accumulated in the order the values arrived.
    order = np.lexsort((minute, series))
    s_series = series[order]
    s_minute = minute[order]
    s_values = cols.values[order]
    starts_mask = np.empty(n, dtype=bool)
    starts_mask[0] = True
    starts_mask[1:] = (s_series[1:] != s_series[:-1]) | (s_minute[1:] != s_minute[:-1])
    starts = np.flatnonzero(starts_mask)
    counts = np.diff(np.append(starts, n))
    sums = np.add.reduceat(s_values, starts)
    mins = np.minimum.reduceat(s_values, starts)
    maxs = np.maximum.reduceat(s_values, starts)
    g_series = s_series[starts]
    g_region = (g_series // len(names)).tolist()
    g_name = (g_series % len(names)).tolist()
    return RollupRows(
        region_ids=[regions[i] for i in g_region],
        metric_names=[names[i] for i in g_name],
        minute_us=(s_minute[starts] * US_PER_MINUTE).tolist(),
        counts=counts.tolist(),
        sums=sums.tolist(),
        mins=mins.tolist(),
        maxs=maxs.tolist(),
    )


@dataclass(frozen=True, slots=True)
class AggregatePlan:
    """A validated ``aggregate_metrics`` call and where its data comes from.

    ``rollup`` is the range read from the rollup (whole minutes), or ``None``;
    ``raw`` the ranges read from the raw table (disjoint; empty list when none).
    """

    region_id: str
    metric_name: str
    agent_id: str | None
    bucket_us: int
    start_us: int | None
    end_us: int | None
    rollup: TimeRange | None
    raw: list[TimeRange]


def plan_aggregate(
    *,
    region_id: str,
    metric_name: str,
    agent_id: str | None,
    bucket_us: int,
    start_us: int | None,
    end_us: int | None,
) -> AggregatePlan:
    """Split ``[start_us, end_us)`` between the rollup and the raw table (see the module)."""

    def plan(rollup: TimeRange | None, raw: list[TimeRange]) -> AggregatePlan:
        return AggregatePlan(
            region_id, metric_name, agent_id, bucket_us, start_us, end_us, rollup, raw
        )

    if agent_id is not None or bucket_us % US_PER_MINUTE != 0:
        return plan(None, [(start_us, end_us)])
    lo = None if start_us is None else ceil_to(start_us, US_PER_MINUTE)
    hi = None if end_us is None else end_us - end_us % US_PER_MINUTE
    if lo is not None and hi is not None and lo >= hi:
        return plan(None, [(start_us, end_us)])
    raw: list[TimeRange] = []
    if start_us is not None and lo is not None and start_us < lo:
        raw.append((start_us, lo))
    if end_us is not None and hi is not None and hi < end_us:
        raw.append((hi, end_us))
    return plan((lo, hi), raw)
