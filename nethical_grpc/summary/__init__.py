"""Mergeable numeric summaries: exact moments plus an exponential-histogram quantile sketch.

Pure NumPy (optionally Numba-accelerated) math; no protobuf here.
"""

from nethical_grpc.summary.exponential_histogram import (
    DEFAULT_MAX_BUCKETS,
    DEFAULT_SCALE,
    MAX_SCALE,
    MIN_MAX_BUCKETS,
    MIN_SCALE,
    Buckets,
    ExponentialHistogram,
)
from nethical_grpc.summary.moments import Moments
from nethical_grpc.summary.summary import Summary

__all__ = [
    "DEFAULT_MAX_BUCKETS",
    "DEFAULT_SCALE",
    "MAX_SCALE",
    "MIN_MAX_BUCKETS",
    "MIN_SCALE",
    "Buckets",
    "ExponentialHistogram",
    "Moments",
    "Summary",
]
