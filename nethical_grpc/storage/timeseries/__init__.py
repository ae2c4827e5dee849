"""The region's time-series store: raw metrics, events, audit logs and window summaries.

Open it with :func:`open_timeseries` (``postgresql://…``, ``sqlite:///PATH`` or
``memory://``); every method of :class:`TimeSeriesStore` is a coroutine. Names follow the
product guide (``insert_metric``, ``query_metrics``, ``aggregate_metrics``,
``insert_event``, ``insert_audit_log``); window summaries are what a region node flushes
so that a restart, or another instance of the region, finds its aggregates.
"""

from nethical_grpc.storage.timeseries.base import (
    TimeSeriesSchemaError,
    TimeSeriesStore,
    TimeSeriesUnavailableError,
)
from nethical_grpc.storage.timeseries.buckets import AGGREGATIONS
from nethical_grpc.storage.timeseries.factory import DEFAULT_RETENTION, open_timeseries
from nethical_grpc.storage.timeseries.model import (
    AggregateRow,
    AuditRecord,
    EventRecord,
    MetricPoint,
    MetricRecord,
    WindowSummaryRow,
)

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_RETENTION",
    "AggregateRow",
    "AuditRecord",
    "EventRecord",
    "MetricPoint",
    "MetricRecord",
    "TimeSeriesSchemaError",
    "TimeSeriesStore",
    "TimeSeriesUnavailableError",
    "WindowSummaryRow",
    "open_timeseries",
]
