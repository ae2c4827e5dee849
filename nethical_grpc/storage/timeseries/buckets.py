"""Time buckets of ``aggregate_metrics``: widths, epoch alignment and the aggregations.

Buckets are aligned to the Unix epoch: the bucket of a time ``t`` (µs) for a width ``w``
(µs) starts at ``t - (t mod w)`` with a floored modulo, exactly what PostgreSQL's
``date_bin(w, t, '1970-01-01 00:00:00+00')`` computes, so every backend cuts the same
buckets (a 7-minute bucket starts at a multiple of 7 minutes since 1970, not since the
query's start or midnight).
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Final

__all__ = [
    "AGGREGATIONS",
    "MAX_BUCKET_US",
    "US_PER_MINUTE",
    "bucket_floor",
    "check_aggregation",
    "parse_bucket_us",
]

AGGREGATIONS: Final = frozenset({"avg", "sum", "min", "max", "count"})
US_PER_MINUTE: Final = 60_000_000
MAX_BUCKET_US: Final = 3650 * 86_400_000_000
"""The widest bucket: ten years of 24-hour days."""

_UNIT_US: Final = {
    "us": 1,
    "microsecond": 1,
    "microseconds": 1,
    "ms": 1_000,
    "millisecond": 1_000,
    "milliseconds": 1_000,
    "s": 1_000_000,
    "sec": 1_000_000,
    "secs": 1_000_000,
    "second": 1_000_000,
    "seconds": 1_000_000,
    "m": 60_000_000,
    "min": 60_000_000,
    "mins": 60_000_000,
    "minute": 60_000_000,
    "minutes": 60_000_000,
    "h": 3_600_000_000,
    "hour": 3_600_000_000,
    "hours": 3_600_000_000,
    "d": 86_400_000_000,
    "day": 86_400_000_000,
    "days": 86_400_000_000,
    "w": 604_800_000_000,
    "week": 604_800_000_000,
    "weeks": 604_800_000_000,
}
_TEXT_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$")


def check_aggregation(aggregation: object) -> str:
    """``aggregation`` if it is one of avg, sum, min, max, count; else ``ValueError``."""
    if not isinstance(aggregation, str) or aggregation not in AGGREGATIONS:
        raise ValueError(
            f"aggregation: must be one of {', '.join(sorted(AGGREGATIONS))}, "
            f"got {str(aggregation)[:64]!r}"
        )
    return aggregation


def parse_bucket_us(bucket: object) -> int:
    """Bucket width in whole microseconds.

    Accepts a ``timedelta``, a number of seconds (int or float, rounded to the
    microsecond), or text like ``"1 hour"``, ``"15 minutes"``, ``"30s"``, ``"1.5 h"``
    (units us, ms, s, min/m, h, d, w; months and years are not fixed widths and are
    refused). ``ValueError`` when the width is not positive, rounds to 0 µs, or is wider
    than ten years.
    """
    us: int
    if isinstance(bucket, timedelta):
        us = bucket // timedelta(microseconds=1)
    elif isinstance(bucket, bool):
        raise ValueError("time_bucket: must be a timedelta, seconds or text like '1 hour'")
    elif isinstance(bucket, int):
        us = bucket * 1_000_000
    elif isinstance(bucket, float):
        if not math.isfinite(bucket):
            raise ValueError(f"time_bucket: must be finite, got {bucket}")
        us = round(bucket * 1_000_000)
    elif isinstance(bucket, str):
        match = _TEXT_RE.match(bucket.lower())
        if match is None or match.group(2) not in _UNIT_US:
            raise ValueError(
                f"time_bucket: {bucket[:64]!r} is not a width like '1 hour', '15 minutes' "
                "or '30s' (units: us, ms, s, min, h, d, w)"
            )
        us = round(float(match.group(1)) * _UNIT_US[match.group(2)])
    else:
        raise ValueError(
            "time_bucket: must be a timedelta, seconds or text like '1 hour', "
            f"got {type(bucket).__name__}"
        )
    if us <= 0:
        raise ValueError(f"time_bucket: width must be positive (got {us} µs)")
    if us > MAX_BUCKET_US:
        raise ValueError("time_bucket: wider than ten years")
    return us


def bucket_floor(t_us: int, width_us: int) -> int:
    """Start of the epoch-aligned bucket holding ``t_us`` (floored, also before 1970)."""
    return t_us - (t_us % width_us)


def ceil_to(t_us: int, width_us: int) -> int:
    """The smallest multiple of ``width_us`` at or after ``t_us``."""
    return -((-t_us) // width_us) * width_us
