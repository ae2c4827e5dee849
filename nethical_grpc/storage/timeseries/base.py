"""The time-series store API: validation here, storage in the backends.

The API is asyncio: the region node is a ``grpc.aio`` server, so every call is a coroutine
that never blocks the event loop. The PostgreSQL backend uses psycopg's async connection
pool; the SQLite backend runs every statement on one dedicated thread (SQLite has one
writer at a time anyway), so calls from many tasks are safe and serialised.

Public methods validate their whole input first (``ValueError``, nothing written) and then
call one ``_``-prefixed hook of the backend with plain, checked data. Both backends must
give identical answers on identical data; ``tests/integration/test_storage_timeseries.py``
is the contract.

Region scoping: a store is opened for one region. ``region_id=None`` in a write or a query
means that region; an explicit ``region_id`` reads or writes another region's rows in the
same database. The region is part of every key, so two regions never overwrite each other.
"""

from __future__ import annotations

import asyncio
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence, Sized
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

import numpy as np
import numpy.typing as npt

from nethical_grpc.storage.timeseries.buckets import check_aggregation, parse_bucket_us
from nethical_grpc.storage.timeseries.model import (
    MAX_SHORT_LEN,
    MIN_WRITE_TIME,
    US_PER_DAY,
    AggregateRow,
    AuditRecord,
    EventRecord,
    JSONValue,
    MetricColumns,
    MetricPoint,
    MetricRecord,
    WindowFilter,
    WindowKey,
    WindowSummaryRow,
    check_limit,
    check_name,
    check_ns,
    check_optional_name,
    check_range,
    check_text,
    check_uuid,
    check_window_rows,
    check_write_times,
    datetime_from_us,
    dump_json,
    metric_columns,
    metric_rows_columns,
    series_columns,
    to_us,
    window_keys,
)
from nethical_grpc.storage.timeseries.rollup import AggregatePlan, RollupRows, plan_aggregate
from nethical_grpc.storage.timeseries.rollup import rollup_rows as build_rollup

__all__ = [
    "AuditRow",
    "BucketTotals",
    "EventRow",
    "TimeSeriesSchemaError",
    "TimeSeriesStore",
    "TimeSeriesUnavailableError",
    "check_retention",
]


class TimeSeriesUnavailableError(ConnectionError):
    """The store's server did not answer a read or a write in time (down, unreachable,
    hung, saturated)."""


class TimeSeriesSchemaError(ValueError):
    """The store's database holds a table of ours by name that is not ours (another
    application's, or a layout this version cannot use). Raised when the store opens,
    with one line naming the table and what is wrong; like a bad URL, it is the
    configuration that must change (another schema or file), so a ``ValueError``."""


THREAD_VALIDATION_ROWS = 256
"""Row batches larger than this are validated in a worker thread (~3 µs a row on the
event loop against ~0.1 ms for the thread's round trip: a node's quarter-second batch of
evaluations' rows held its loop for milliseconds)."""
MAX_BATCH_ROWS = 1_000_000
"""Most observations one ``insert_metrics``/``insert_metric_values`` call may carry."""

BucketTotals = tuple[int, float, int, float, float]
"""What a backend returns per bucket: (bucket start µs, sum, count, min, max)."""

EventRow = tuple[str, str, int, str, str, str, str | None]
"""(region_id, event_id, ts_us, event_type, agent_id, severity, data JSON)."""

AuditRow = tuple[str, str, int, str, str, str, str, str | None]
"""(region_id, audit_id, ts_us, action_id, agent_id, decision, violations JSON,
metadata JSON)."""


def check_retention(retention: object) -> timedelta | None:
    """``retention`` if it is None (keep forever) or a timedelta of at least one day."""
    if retention is None:
        return None
    if not isinstance(retention, timedelta):
        raise ValueError(f"retention: must be a timedelta, got {type(retention).__name__}")
    if retention < timedelta(days=1):
        raise ValueError("retention: at least one day (data is dropped by whole days)")
    return retention


_MIN_WRITE_US = to_us("MIN_WRITE_TIME", MIN_WRITE_TIME)  # a UTC midnight


def _now_us() -> int:
    return to_us("now", datetime.now(UTC))


def _prepare(points: Sequence[MetricPoint], region_id: str) -> tuple[MetricColumns, RollupRows]:
    cols = metric_columns(points, region_id, _now_us())
    return cols, build_rollup(cols)


class TimeSeriesStore(ABC):
    """Raw metrics, events, audit logs and window summaries of one region.

    ``backend`` names what is underneath (``"postgresql"``, ``"sqlite"``…);
    ``retention`` is how long rows are kept by :meth:`apply_retention` (``None``: forever).
    """

    backend: str = "abstract"

    @property
    def rows_dropped(self) -> int:
        """Rows dropped to stay within an in-memory bound since the store was opened (0:
        a store without one)."""
        return 0

    def __init__(self, region_id: str, retention: timedelta | None) -> None:
        self.region_id = check_name("region_id", region_id)
        self.retention = check_retention(retention)

    # ------------------------------------------------------------------ metrics

    async def insert_metric(
        self,
        agent_id: str,
        metric_name: str,
        metric_value: float,
        timestamp: datetime | None = None,
        region_id: str | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
    ) -> None:
        """Store one observation (``timestamp`` defaults to now). ``ValueError`` for bad
        input: empty metric name, a value that is not finite or beyond ±1e100
        (:data:`~.model.MAX_ABS_VALUE`, so no sum overflows), oversized strings or text
        that is not valid Unicode (a naive timestamp is UTC; -0.0 is stored as 0.0, as
        SQLite can keep no other)."""
        await self.insert_metrics(
            [MetricPoint(agent_id, metric_name, metric_value, timestamp, region_id, metadata)]
        )

    async def insert_metrics(self, points: Sequence[MetricPoint]) -> int:
        """Store a batch in one transaction; returns the number of rows written.

        The whole batch is validated first: one bad point refuses it all (``ValueError``
        naming the point's index) and nothing is written.
        """
        if len(points) > MAX_BATCH_ROWS:
            raise ValueError(f"points: at most {MAX_BATCH_ROWS} per call, got {len(points)}")
        if not points:
            return 0
        if len(points) > THREAD_VALIDATION_ROWS:
            # ~3 µs a row: a large batch is validated off the event loop.
            cols, rollup = await asyncio.to_thread(_prepare, points, self.region_id)
        else:
            cols, rollup = _prepare(points, self.region_id)
        await self._write_metrics(cols, rollup)
        return len(cols)

    async def insert_metric_values(
        self,
        metric_name: str,
        values: npt.ArrayLike,
        timestamps_ns: npt.ArrayLike,
        *,
        agent_id: str = "",
        region_id: str | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
    ) -> int:
        """Store one series' observations given as columns (what an ingest batch carries).

        ``values`` is a float array (finite, within ±1e100); ``timestamps_ns`` an int
        array of Unix nanoseconds of the same length, or one int for all (stored to the
        microsecond, floored).
        ``metadata`` (e.g. the series' labels) is stored with every row. Validation is
        vectorised; returns the number of rows written.
        """
        name = check_name("metric_name", metric_name)
        agent = check_text("agent_id", agent_id, allow_empty=True)
        region = self.region_id if region_id is None else check_name("region_id", region_id)
        meta = None if metadata is None else dump_json("metadata", metadata)
        cols = series_columns(
            region_id=region,
            agent_id=agent,
            metric_name=name,
            values=values,
            timestamps_ns=timestamps_ns,
            metadata=meta,
            max_rows=MAX_BATCH_ROWS,
        )
        return await self._store_columns(cols, build_rollup(cols))

    async def insert_metric_columns(
        self,
        metric_name: str,
        values: npt.ArrayLike,
        timestamps_ns: npt.ArrayLike,
        *,
        agent_ids: Sequence[str],
        metadata: Sequence[Mapping[str, JSONValue] | None] | None = None,
        region_id: str | None = None,
    ) -> int:
        """Store one metric's observations from many agents, given as columns: what
        :meth:`insert_metrics` stores for the same rows as points, without a point a row
        (a region node's evaluations: risk scores of many agents, a few label sets).

        ``values`` and ``timestamps_ns`` are as for :meth:`insert_metric_values`;
        ``agent_ids`` has one string a value, and ``metadata`` (if given) one mapping or
        ``None`` a value, each distinct mapping object serialised once. The columns are
        checked as a whole (a large batch off the event loop): one bad entry refuses the
        batch (``ValueError`` naming it, e.g. ``agent_ids[7]: …``) and nothing is written.
        """
        name = check_name("metric_name", metric_name)
        region = self.region_id if region_id is None else check_name("region_id", region_id)

        def prepare() -> tuple[MetricColumns, RollupRows]:
            cols = metric_rows_columns(
                region_id=region,
                metric_name=name,
                values=values,
                timestamps_ns=timestamps_ns,
                agent_ids=agent_ids,
                metadata=metadata,
                max_rows=MAX_BATCH_ROWS,
            )
            return cols, build_rollup(cols)

        large = isinstance(agent_ids, Sized) and len(agent_ids) > THREAD_VALIDATION_ROWS
        cols, rollup = await asyncio.to_thread(prepare) if large else prepare()
        return await self._store_columns(cols, rollup)

    async def _store_columns(self, cols: MetricColumns, rollup: RollupRows) -> int:
        """Write checked columns (none: nothing written); the rows written."""
        if len(cols) == 0:
            return 0
        await self._write_metrics(cols, rollup)
        return len(cols)

    async def query_metrics(
        self,
        agent_id: str | None = None,
        metric_name: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        region_id: str | None = None,
        limit: int = 1000,
    ) -> list[MetricRecord]:
        """Observations matching every given filter, oldest first, at most ``limit``.

        The range is ``[start_time, end_time)``. Ties in time are ordered by metric name,
        agent id, value and metadata (its JSON text, none first; text in byte order), so
        both backends list, and cut at ``limit``, the same rows; naive times are UTC.
        ``ValueError`` for an inverted range, a ``limit`` outside 1..100,000 or oversized
        filter strings.
        """
        agent = check_optional_name("agent_id", agent_id)
        name = check_optional_name("metric_name", metric_name)
        start_us, end_us = check_range(start_time, end_time)
        region = self.region_id if region_id is None else check_name("region_id", region_id)
        return await self._select_metrics(region, agent, name, start_us, end_us, check_limit(limit))

    async def aggregate_metrics(
        self,
        metric_name: str,
        aggregation: str = "avg",
        time_bucket: timedelta | float | str = timedelta(hours=1),
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        region_id: str | None = None,
        agent_id: str | None = None,
    ) -> list[AggregateRow]:
        """One row per non-empty bucket of ``time_bucket`` width, oldest first.

        ``aggregation`` is avg, sum, min, max or count (``value`` of count is the count as
        a float). Buckets are aligned to the Unix epoch (see :mod:`.buckets`); the range is
        ``[start_time, end_time)`` (naive times are UTC). ``ValueError`` for an unknown
        aggregation, a width ≤ 0 or an inverted range.
        """
        name = check_name("metric_name", metric_name)
        agg = check_aggregation(aggregation)
        bucket_us = parse_bucket_us(time_bucket)
        start_us, end_us = check_range(start_time, end_time)
        region = self.region_id if region_id is None else check_name("region_id", region_id)
        agent = check_optional_name("agent_id", agent_id)
        plan = plan_aggregate(
            region_id=region,
            metric_name=name,
            agent_id=agent,
            bucket_us=bucket_us,
            start_us=start_us,
            end_us=end_us,
        )
        if start_us is not None and start_us == end_us:
            return []
        out = []
        for bucket, total, count, low, high in await self._aggregate(plan):
            value = {
                "avg": total / count,
                "sum": total,
                "min": low,
                "max": high,
                "count": float(count),
            }[agg]
            out.append(AggregateRow(datetime_from_us(bucket), value, count))
        return out

    # ------------------------------------------------------------------ events, audit

    async def insert_event(
        self,
        event_type: str,
        agent_id: str = "",
        severity: str = "INFO",
        data: Mapping[str, JSONValue] | None = None,
        region_id: str | None = None,
        timestamp: datetime | None = None,
        event_id: str | uuid.UUID | None = None,
    ) -> str:
        """Store one event; returns its id (``event_id`` or a new UUID).

        An event is identified by (region, id, timestamp): writing the same id with the same
        timestamp again (a retry) stores nothing new. Pass both on a retry.
        """
        row: EventRow = (
            self.region_id if region_id is None else check_name("region_id", region_id),
            str(uuid.uuid4()) if event_id is None else check_uuid("event_id", event_id),
            _now_us() if timestamp is None else to_us("timestamp", timestamp),
            check_name("event_type", event_type),
            check_text("agent_id", agent_id, allow_empty=True),
            check_text("severity", severity, max_len=MAX_SHORT_LEN),
            None if data is None else dump_json("data", data),
        )
        check_write_times(np.array([row[2]], dtype=np.int64))
        await self._write_event(row)
        return row[1]

    async def query_events(
        self,
        event_type: str | None = None,
        agent_id: str | None = None,
        severity: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        region_id: str | None = None,
        limit: int = 1000,
    ) -> list[EventRecord]:
        """Events matching every given filter, oldest first (ties by id)."""
        kind = check_optional_name("event_type", event_type)
        agent = check_optional_name("agent_id", agent_id)
        sev = check_optional_name("severity", severity)
        start_us, end_us = check_range(start_time, end_time)
        region = self.region_id if region_id is None else check_name("region_id", region_id)
        return await self._select_events(
            region, kind, agent, sev, start_us, end_us, check_limit(limit)
        )

    async def insert_audit_log(
        self,
        action_id: str,
        agent_id: str,
        decision: str,
        violations: Sequence[JSONValue] | None = None,
        region_id: str | None = None,
        timestamp: datetime | None = None,
        audit_id: str | uuid.UUID | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
    ) -> str:
        """Store one audit-log entry; returns its id (``audit_id`` or a new UUID).

        Identified by (region, id, timestamp) like events: a retry with the same id and
        timestamp stores nothing new.
        """
        row: AuditRow = (
            self.region_id if region_id is None else check_name("region_id", region_id),
            str(uuid.uuid4()) if audit_id is None else check_uuid("audit_id", audit_id),
            _now_us() if timestamp is None else to_us("timestamp", timestamp),
            check_name("action_id", action_id),
            check_text("agent_id", agent_id, allow_empty=True),
            check_text("decision", decision, max_len=MAX_SHORT_LEN),
            dump_json("violations", [] if violations is None else violations, kind=list),
            None if metadata is None else dump_json("metadata", metadata),
        )
        check_write_times(np.array([row[2]], dtype=np.int64))
        await self._write_audit(row)
        return row[1]

    async def query_audit_logs(
        self,
        action_id: str | None = None,
        agent_id: str | None = None,
        decision: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        region_id: str | None = None,
        limit: int = 1000,
    ) -> list[AuditRecord]:
        """Audit entries matching every given filter, oldest first (ties by id)."""
        action = check_optional_name("action_id", action_id)
        agent = check_optional_name("agent_id", agent_id)
        dec = check_optional_name("decision", decision)
        start_us, end_us = check_range(start_time, end_time)
        region = self.region_id if region_id is None else check_name("region_id", region_id)
        return await self._select_audits(
            region, action, agent, dec, start_us, end_us, check_limit(limit)
        )

    # ------------------------------------------------------------------ window summaries

    async def upsert_window_summaries(self, rows: Sequence[WindowSummaryRow]) -> int:
        """Insert or replace window summaries in one transaction; returns rows written.

        Keyed by (region, instance, metric, labels, window start): re-flushing a window
        that is still open replaces its payload, count and width. Within one call a later
        row with the same key wins. One bad row refuses the whole call (``ValueError``).
        The rows get their region's next change number (``WindowSummaryRow.change_seq``):
        the upserts of one region take turns, so numbers follow the commits.
        """
        checked = check_window_rows(rows)
        if checked:
            await self._upsert_windows(checked)
        return len(checked)

    async def load_window_summaries(
        self,
        region_id: str,
        since_ns: int | None = None,
        instance_id: str | None = None,
        until_ns: int | None = None,
        changed_after: int | None = None,
    ) -> list[WindowSummaryRow]:
        """A region's window summaries starting at or after ``since_ns`` and before
        ``until_ns`` (no bound when None), of one instance or (``instance_id=None``) of
        every instance, written by an upsert after change number ``changed_after`` (no
        bound when None), ordered by window start, instance, metric and labels."""
        region = check_name("region_id", region_id)
        since = None if since_ns is None else check_ns("since_ns", since_ns)
        until = None if until_ns is None else check_ns("until_ns", until_ns)
        instance = None if instance_id is None else check_name("instance_id", instance_id)
        after = None if changed_after is None else check_ns("changed_after", changed_after)
        return await self._load_windows(region, WindowFilter(since, until, instance, after))

    async def last_window_change(self, region_id: str) -> int:
        """The region's latest change number (0 before any upsert): a reader that loads
        everything next and then asks for ``changed_after`` this number misses nothing."""
        return await self._last_window_change(check_name("region_id", region_id))

    async def delete_window_summaries_before(self, region_id: str, before_ns: int) -> int:
        """Delete a region's windows starting before ``before_ns``; returns how many."""
        return await self._delete_windows(
            check_name("region_id", region_id), check_ns("before_ns", before_ns)
        )

    async def delete_window_summaries(self, rows: Sequence[WindowSummaryRow]) -> int:
        """Delete the stored window summaries ``rows`` were loaded from, in one
        transaction; returns how many went.

        A row is found by its key (region, instance, metric, labels, window start) and
        its change number (``WindowSummaryRow.change_seq``, as loaded): one an upsert has
        rewritten since the load has another number and stays. Payloads, counts and widths
        are not compared. One bad row refuses the whole call (``ValueError``)."""
        keys = window_keys(rows)
        return await self._delete_window_rows(keys) if keys else 0

    # ------------------------------------------------------------------ lifecycle

    async def apply_retention(self, now: datetime | None = None) -> datetime | None:
        """Drop metrics, rollups, events and audit rows older than ``retention``.

        Data goes by whole UTC days: everything before the start of the day holding
        ``now - retention`` is removed (on PostgreSQL whole partitions or chunks are
        dropped). Also prepares the next days' partitions where the backend has them.
        Returns that cutoff, or ``None`` when the store keeps data forever. Window
        summaries have their own retention: :meth:`delete_window_summaries_before`.
        A cutoff before :data:`~.model.MIN_WRITE_TIME` (a retention of millennia) is that
        time: no row lies before it.
        """
        now_us = _now_us() if now is None else to_us("now", now)
        cutoff_us: int | None = None
        if self.retention is not None:
            keep_us = self.retention // timedelta(microseconds=1)
            cutoff_us = max((now_us - keep_us) // US_PER_DAY * US_PER_DAY, _MIN_WRITE_US)
        await self._apply_retention(cutoff_us, now_us)
        return None if cutoff_us is None else datetime_from_us(cutoff_us)

    async def close(self) -> None:
        """Release connections and threads. Safe to call twice."""
        await self._close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ backend hooks

    @abstractmethod
    async def _write_metrics(self, cols: MetricColumns, rollup: RollupRows) -> None:
        """Write raw rows and merge their rollup, in one transaction."""

    @abstractmethod
    async def _select_metrics(
        self,
        region_id: str,
        agent_id: str | None,
        metric_name: str | None,
        start_us: int | None,
        end_us: int | None,
        limit: int,
    ) -> list[MetricRecord]: ...

    @abstractmethod
    async def _aggregate(self, plan: AggregatePlan) -> list[BucketTotals]:
        """Per-bucket totals over the plan's rollup and raw ranges, ordered by bucket."""

    @abstractmethod
    async def _write_event(self, row: EventRow) -> None: ...

    @abstractmethod
    async def _select_events(
        self,
        region_id: str,
        event_type: str | None,
        agent_id: str | None,
        severity: str | None,
        start_us: int | None,
        end_us: int | None,
        limit: int,
    ) -> list[EventRecord]: ...

    @abstractmethod
    async def _write_audit(self, row: AuditRow) -> None: ...

    @abstractmethod
    async def _select_audits(
        self,
        region_id: str,
        action_id: str | None,
        agent_id: str | None,
        decision: str | None,
        start_us: int | None,
        end_us: int | None,
        limit: int,
    ) -> list[AuditRecord]: ...

    @abstractmethod
    async def _upsert_windows(self, rows: list[tuple[WindowSummaryRow, str]]) -> None: ...

    @abstractmethod
    async def _load_windows(
        self, region_id: str, where: WindowFilter
    ) -> list[WindowSummaryRow]: ...

    @abstractmethod
    async def _last_window_change(self, region_id: str) -> int: ...

    @abstractmethod
    async def _delete_windows(self, region_id: str, before_ns: int) -> int: ...

    @abstractmethod
    async def _delete_window_rows(self, keys: list[WindowKey]) -> int: ...

    @abstractmethod
    async def _apply_retention(self, cutoff_us: int | None, now_us: int) -> None: ...

    @abstractmethod
    async def _close(self) -> None: ...
