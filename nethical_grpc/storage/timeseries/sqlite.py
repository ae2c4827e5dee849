"""The embedded time-series store: SQLite, in a file (WAL mode) or in memory.

One dedicated thread owns the connection and runs every statement, so coroutines never
block the event loop and never touch SQLite concurrently. Times are stored as integer Unix
microseconds, which makes epoch-aligned bucketing exact integer arithmetic, identical to
PostgreSQL's ``date_bin``. A batch is written in one transaction, by multi-row statements
(:func:`~nethical_grpc.storage.sqlite_tx.execute_rows`: the writer thread takes the
interpreter lock once per chunk of rows, not once per row).

Several processes may share a file (WAL, a 5 s busy timeout); an in-memory store belongs to
the process that opened it. A file holding a table of ours by name that is not ours (a
missing column) is refused before anything is written to it
(:class:`~nethical_grpc.storage.timeseries.base.TimeSeriesSchemaError`); columns added
since the first version are added to an older table.

Row cap: ``open(..., max_rows=N)`` keeps at most N rows in each of ``metrics``,
``events``, ``audit_logs`` and ``window_summaries``; a write that takes a table past N
deletes that table's oldest rows (the earliest inserted: lowest rowid), in the write's own
transaction. It is what bounds an in-memory store, whose only other bound is the time
retention (see :func:`~nethical_grpc.storage.timeseries.factory.open_timeseries`).
``metric_rollup`` is not capped, so whole-minute aggregates still cover every point written.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Self, TypeVar

from nethical_grpc.storage.backend import check_row_bound
from nethical_grpc.storage.sqlite_tx import (
    execute_rows,
    missing_columns,
    schema_columns,
    write_transaction,
)
from nethical_grpc.storage.sqlite_url import DEFAULT_CACHE_MIB, cache_size_pragma, check_cache_mib
from nethical_grpc.storage.timeseries.base import (
    AuditRow,
    BucketTotals,
    EventRow,
    TimeSeriesSchemaError,
    TimeSeriesStore,
)
from nethical_grpc.storage.timeseries.model import (
    WINDOW_COLUMNS,
    WINDOW_WRITE_COLUMNS,
    AuditRecord,
    EventRecord,
    MetricColumns,
    MetricRecord,
    WindowFilter,
    WindowKey,
    WindowSummaryRow,
    datetime_from_us,
    load_json_text,
    window_params,
    window_rows,
)
from nethical_grpc.storage.timeseries.rollup import AggregatePlan, RollupRows, TimeRange

__all__ = ["CAPPED_TABLES", "SQLiteTimeSeriesStore"]

T = TypeVar("T")


CAPPED_TABLES = ("metrics", "events", "audit_logs", "window_summaries")
"""The tables ``max_rows`` bounds (ordinary rowid tables; ``metric_rollup`` is not one)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS metrics (
    region_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    metric_name TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    metric_value REAL NOT NULL,
    metadata TEXT
);
CREATE INDEX IF NOT EXISTS metrics_metric_ts ON metrics (region_id, metric_name, ts);
CREATE INDEX IF NOT EXISTS metrics_agent_ts ON metrics (region_id, agent_id, ts);
CREATE TABLE IF NOT EXISTS metric_rollup (
    region_id TEXT NOT NULL,
    metric_name TEXT NOT NULL,
    minute INTEGER NOT NULL,
    n INTEGER NOT NULL,
    sum_value REAL NOT NULL,
    min_value REAL NOT NULL,
    max_value REAL NOT NULL,
    PRIMARY KEY (region_id, metric_name, minute)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    region_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    severity TEXT NOT NULL,
    data TEXT,
    PRIMARY KEY (region_id, event_id, ts)
);
CREATE INDEX IF NOT EXISTS events_ts ON events (region_id, ts);
CREATE TABLE IF NOT EXISTS audit_logs (
    region_id TEXT NOT NULL,
    audit_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    action_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    decision TEXT NOT NULL,
    violations TEXT NOT NULL,
    metadata TEXT,
    PRIMARY KEY (region_id, audit_id, ts)
);
CREATE INDEX IF NOT EXISTS audit_logs_ts ON audit_logs (region_id, ts);
CREATE TABLE IF NOT EXISTS window_summaries (
    region_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    labels TEXT NOT NULL,
    window_start_ns INTEGER NOT NULL,
    window_ns INTEGER NOT NULL,
    count INTEGER NOT NULL,
    payload BLOB NOT NULL,
    change_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (region_id, instance_id, metric, labels, window_start_ns)
);
CREATE INDEX IF NOT EXISTS window_summaries_start
    ON window_summaries (region_id, window_start_ns);
CREATE INDEX IF NOT EXISTS window_summaries_changes
    ON window_summaries (region_id, change_seq);
CREATE TABLE IF NOT EXISTS window_changes (
    region_id TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
"""

_ADDED_COLUMNS: dict[tuple[str, str], str] = {
    ("window_summaries", "count"): "INTEGER NOT NULL DEFAULT 0",
    ("window_summaries", "change_seq"): "INTEGER NOT NULL DEFAULT 0",
}
"""(table, column) → definition of the columns an older table of ours may lack (as in
:data:`~nethical_grpc.storage.timeseries.postgres_schema.ADDED_COLUMNS`)."""


@functools.cache
def _schema_columns() -> dict[str, list[str]]:
    """Table → the columns :data:`_SCHEMA` gives it, less :data:`_ADDED_COLUMNS`."""
    return {
        table: [c for c in columns if (table, c) not in _ADDED_COLUMNS]
        for table, columns in schema_columns(_SCHEMA).items()
    }


_ROLLUP_UPSERT = """
INSERT INTO metric_rollup
    (region_id, metric_name, minute, n, sum_value, min_value, max_value)
VALUES {rows}
ON CONFLICT (region_id, metric_name, minute) DO UPDATE SET
    n = n + excluded.n,
    sum_value = sum_value + excluded.sum_value,
    min_value = min(min_value, excluded.min_value),
    max_value = max(max_value, excluded.max_value)
"""


def _max_rowid(conn: sqlite3.Connection, table: str) -> int:
    """The table's largest rowid, 0 when empty (one b-tree seek)."""
    value = conn.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0]
    return 0 if value is None else int(value)


def _last_window_change(conn: sqlite3.Connection, region_id: str) -> int:
    """The region's latest window change number, 0 before any (two index seeks): the
    number kept in ``window_changes``, which a delete does not take back, or the largest
    a row holds (a store written before that table was kept)."""
    value = conn.execute(
        "SELECT max(coalesce((SELECT last_seq FROM window_changes WHERE region_id = ?), 0), "
        "coalesce((SELECT max(change_seq) FROM window_summaries WHERE region_id = ?), 0))",
        (region_id, region_id),
    ).fetchone()[0]
    return int(value)


def _bucket_sql(column: str) -> str:
    """Epoch-aligned bucket start of an integer µs column for width ``:w`` (floored)."""
    return f"({column} - ((({column} % :w) + :w) % :w))"


def _filters(
    params: dict[str, Any], time_range: tuple[int | None, int | None], **equal: str | None
) -> list[str]:
    """WHERE terms: the region (``:region``), each given equality filter, the time range."""
    where = ["region_id = :region"]
    for column, value in equal.items():
        if value is not None:
            params[column] = value
            where.append(f"{column} = :{column}")
    where.append(_range_sql("ts", time_range, "t", params))
    return where


def _range_sql(column: str, rng: TimeRange, tag: str, params: dict[str, Any]) -> str:
    start, end = rng
    parts = ["1"]
    if start is not None:
        params[f"{tag}_lo"] = start
        parts.append(f"{column} >= :{tag}_lo")
    if end is not None:
        params[f"{tag}_hi"] = end
        parts.append(f"{column} < :{tag}_hi")
    return " AND ".join(parts)


class SQLiteTimeSeriesStore(TimeSeriesStore):
    """:class:`TimeSeriesStore` on SQLite; open with :meth:`open`.

    With ``max_rows`` (an int ≥ 1) each of :data:`CAPPED_TABLES` keeps at most that many
    rows: a write that takes a table past it deletes the table's oldest rows (lowest rowid,
    i.e. the earliest inserted) in the same transaction, so the table ends at exactly
    ``max_rows``. A window summary re-flushed in place (an upsert of an existing key) adds
    no row and keeps its place. ``metric_rollup`` is not capped: ``aggregate_metrics`` with
    whole-minute buckets and no agent filter reads the rollup and counts every point ever
    written (within retention), while raw reads (``query_metrics``, an agent filter, a
    width that is not whole minutes, the partial minutes at a range's edges) see only the
    rows kept. :attr:`rows_dropped` counts the rows the cap deleted. ``None`` (the
    default): no cap, the time retention is the only bound.

    The cap is meant for in-memory stores (the factory gives it to nothing else). An
    in-memory store counts each table's rows itself, on its connection thread, without a
    ``COUNT(*)`` per write; a file may be shared by several processes, so a capped file
    store counts the table inside each write's transaction (``COUNT(*)``, correct whoever
    else writes, and affordable at the sizes a cap is for). A file that already holds more
    rows than the cap is trimmed by its next write to that table, not at open.
    """

    backend = "sqlite"

    def __init__(
        self,
        region_id: str,
        retention: timedelta | None,
        path: str | None,
        *,
        max_rows: int | None = None,
        cache_mib: int = DEFAULT_CACHE_MIB,
    ) -> None:
        cap = check_row_bound("max_rows", max_rows)  # before the thread is started
        check_cache_mib(cache_mib)
        super().__init__(region_id, retention)
        self.path = path
        self.cache_mib = cache_mib
        self._max_rows = cap
        self._rows: dict[str, int] = dict.fromkeys(CAPPED_TABLES, 0)
        """Rows per capped table (in-memory store with a cap); connection thread only."""
        self._rows_dropped = 0
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="nethical-ts-sqlite"
        )
        self._conn: sqlite3.Connection | None = None

    @classmethod
    async def open(
        cls,
        path: str | None,
        *,
        region_id: str,
        retention: timedelta | None = None,
        max_rows: int | None = None,
        cache_mib: int = DEFAULT_CACHE_MIB,
    ) -> Self:
        """Open (creating tables if needed) the file at ``path``, or memory when None.

        ``max_rows``: at most this many rows in each of :data:`CAPPED_TABLES` (the oldest
        go), or ``None`` for no cap; ``ValueError`` unless None or an int ≥ 1.
        ``cache_mib``: the page cache a file store's connection may fill.
        """
        store = cls(region_id, retention, path, max_rows=max_rows, cache_mib=cache_mib)
        try:
            await store._run(store._connect)
        except sqlite3.Error as exc:  # unwritable directory, not a database, locked, full
            await store.close()
            raise OSError(f"cannot open the SQLite time-series store {path}: {exc}") from None
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def in_memory(self) -> bool:
        return self.path is None

    @property
    def max_rows(self) -> int | None:
        """Most rows kept in each of :data:`CAPPED_TABLES`; ``None``: no cap."""
        return self._max_rows

    @property
    def rows_dropped(self) -> int:
        """Rows the cap has deleted since open, all tables together (0 without a cap)."""
        return self._rows_dropped

    # ------------------------------------------------------------------ plumbing

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("the time-series store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the time-series store is closed")
        return self._conn

    def _connect(self) -> None:
        conn = sqlite3.connect(self.path or ":memory:", isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            # before WAL and the tables: a file we refuse stays as it was
            problem = missing_columns(conn, _schema_columns())
            if problem is not None:
                table, why = problem
                raise TimeSeriesSchemaError(
                    f"table {table} in {self.path} exists but is not a Nethical mesh table "
                    f"({why}); use another file"
                )
            if self.path is not None:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute(cache_size_pragma(self.cache_mib))
            with write_transaction(conn):
                for (table, column), definition in _ADDED_COLUMNS.items():
                    have = conn.execute("SELECT * FROM pragma_table_info(?)", (table,)).fetchall()
                    if have and column not in {r[1] for r in have}:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            if self._max_rows is not None and self.path is None:
                for table in CAPPED_TABLES:  # 0 in a new database; counted all the same
                    self._rows[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    # ------------------------------------------------------------------ row cap

    def _trim(self, conn: sqlite3.Connection, table: str, added: int) -> tuple[str, int, int]:
        """Within a write's transaction, after it added ``added`` rows to ``table``: delete
        the table's oldest rows past the cap. Returns ``(table, rows now, rows deleted)``
        for :meth:`_count` once the transaction has committed (a rollback leaves the
        counts as they were). Only called when the store has a cap."""
        cap = self._max_rows
        assert cap is not None
        if self.path is None:
            count = self._rows[table] + added
        elif added > 0:
            count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        else:
            return table, 0, 0  # a file store keeps no count: nothing to record
        excess = count - cap
        if excess <= 0 or added <= 0:
            return table, count, 0
        # Rowids grow with insertion (a new row gets the largest rowid + 1, deleting the
        # oldest never removes the largest), so the first ``excess`` rowids are the oldest
        # rows. Finding the boundary and deleting ``rowid <= boundary`` measured ~15%
        # cheaper than ``rowid IN (SELECT … LIMIT excess)`` (5,000 of 505,000 rows).
        (boundary,) = conn.execute(
            f"SELECT rowid FROM {table} ORDER BY rowid LIMIT 1 OFFSET ?", (excess - 1,)
        ).fetchone()
        deleted = conn.execute(f"DELETE FROM {table} WHERE rowid <= ?", (boundary,)).rowcount
        return table, count - deleted, deleted

    def _capped_write(self, table: str, write: Callable[[sqlite3.Connection], int]) -> None:
        """Run ``write`` (it answers the rows it added to ``table``) in one transaction,
        with ``table`` trimmed to the cap in the same transaction when there is one."""
        conn = self._db()
        trimmed = None
        with write_transaction(conn):
            added = write(conn)
            if self._max_rows is not None:
                trimmed = self._trim(conn, table, added)
        if trimmed is not None:
            self._count(trimmed)

    def _count(self, trimmed: tuple[str, int, int]) -> None:
        """Record what :meth:`_trim` did, after the commit."""
        table, count, deleted = trimmed
        self._rows[table] = count
        self._rows_dropped += deleted

    def _forget_rows(self, table: str, deleted: int) -> None:
        """Rows deleted otherwise (retention), after the commit."""
        if self._max_rows is not None and self.path is None:
            self._rows[table] -= deleted

    # ------------------------------------------------------------------ metrics

    async def _write_metrics(self, cols: MetricColumns, rollup: RollupRows) -> None:
        await self._run(self._write_metrics_sync, cols, rollup)

    def _write_metrics_sync(self, cols: MetricColumns, rollup: RollupRows) -> None:
        rows = cols.rows()

        def write(conn: sqlite3.Connection) -> int:
            execute_rows(
                conn,
                "INSERT INTO metrics (region_id, ts, metric_name, agent_id, metric_value, "
                "metadata) VALUES {rows}",
                "(?, ?, ?, ?, ?, ?)",
                rows,
            )
            execute_rows(conn, _ROLLUP_UPSERT, "(?, ?, ?, ?, ?, ?, ?)", rollup.rows())
            return len(cols)

        self._capped_write("metrics", write)

    async def _select_metrics(
        self,
        region_id: str,
        agent_id: str | None,
        metric_name: str | None,
        start_us: int | None,
        end_us: int | None,
        limit: int,
    ) -> list[MetricRecord]:
        params: dict[str, Any] = {"region": region_id, "limit": limit}
        where = ["region_id = :region"]
        if agent_id is not None:
            params["agent"] = agent_id
            where.append("agent_id = :agent")
        if metric_name is not None:
            params["metric"] = metric_name
            where.append("metric_name = :metric")
        where.append(_range_sql("ts", (start_us, end_us), "t", params))
        query = (
            "SELECT region_id, agent_id, metric_name, metric_value, ts, metadata FROM metrics "
            f"WHERE {' AND '.join(where)} "
            "ORDER BY ts, metric_name, agent_id, metric_value, metadata LIMIT :limit"
        )
        rows = await self._run(self._fetch, query, params)
        return [
            MetricRecord(r[0], r[1], r[2], r[3], datetime_from_us(r[4]), load_json_text(r[5]))
            for r in rows
        ]

    def _fetch(self, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return self._db().execute(query, params).fetchall()

    async def _aggregate(self, plan: AggregatePlan) -> list[BucketTotals]:
        params: dict[str, Any] = {
            "w": plan.bucket_us,
            "region": plan.region_id,
            "metric": plan.metric_name,
        }
        parts = []
        if plan.rollup is not None:
            parts.append(
                f"SELECT {_bucket_sql('minute')} AS b, sum_value AS s, n, "
                "min_value AS lo, max_value AS hi FROM metric_rollup "
                "WHERE region_id = :region AND metric_name = :metric AND "
                + _range_sql("minute", plan.rollup, "r", params)
            )
        if plan.raw:
            ranges = " OR ".join(
                f"({_range_sql('ts', rng, f'raw{i}', params)})" for i, rng in enumerate(plan.raw)
            )
            agent = ""
            if plan.agent_id is not None:
                params["agent"] = plan.agent_id
                agent = " AND agent_id = :agent"
            parts.append(
                f"SELECT {_bucket_sql('ts')} AS b, sum(metric_value) AS s, count(*) AS n, "
                "min(metric_value) AS lo, max(metric_value) AS hi FROM metrics "
                f"WHERE region_id = :region AND metric_name = :metric{agent} AND ({ranges}) "
                "GROUP BY 1"
            )
        query = (
            "SELECT b, sum(s), sum(n), min(lo), max(hi) FROM ("
            + " UNION ALL ".join(parts)
            + ") GROUP BY b ORDER BY b"
        )
        rows = await self._run(self._fetch, query, params)
        return [(int(b), float(s), int(n), float(lo), float(hi)) for b, s, n, lo, hi in rows]

    # ------------------------------------------------------------------ events, audit

    async def _write_event(self, row: EventRow) -> None:
        await self._run(
            self._insert_capped,
            "events",
            "INSERT INTO events (region_id, event_id, ts, event_type, agent_id, severity, "
            "data) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            row,
        )

    async def _write_audit(self, row: AuditRow) -> None:
        await self._run(
            self._insert_capped,
            "audit_logs",
            "INSERT INTO audit_logs (region_id, audit_id, ts, action_id, agent_id, decision, "
            "violations, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            row,
        )

    def _insert_capped(self, table: str, query: str, params: tuple[Any, ...]) -> None:
        """One ``INSERT … ON CONFLICT DO NOTHING`` into ``table``, trimmed to the cap."""
        # rowcount is 0 for a retry's duplicate
        self._capped_write(table, lambda conn: int(conn.execute(query, params).rowcount))

    async def _select_events(
        self,
        region_id: str,
        event_type: str | None,
        agent_id: str | None,
        severity: str | None,
        start_us: int | None,
        end_us: int | None,
        limit: int,
    ) -> list[EventRecord]:
        params: dict[str, Any] = {"region": region_id, "limit": limit}
        where = _filters(
            params, (start_us, end_us), event_type=event_type, agent_id=agent_id, severity=severity
        )
        query = (
            "SELECT event_id, region_id, event_type, agent_id, severity, data, ts FROM events "
            f"WHERE {' AND '.join(where)} ORDER BY ts, event_id LIMIT :limit"
        )
        rows = await self._run(self._fetch, query, params)
        return [
            EventRecord(r[0], r[1], r[2], r[3], r[4], load_json_text(r[5]), datetime_from_us(r[6]))
            for r in rows
        ]

    async def _select_audits(
        self,
        region_id: str,
        action_id: str | None,
        agent_id: str | None,
        decision: str | None,
        start_us: int | None,
        end_us: int | None,
        limit: int,
    ) -> list[AuditRecord]:
        params: dict[str, Any] = {"region": region_id, "limit": limit}
        where = _filters(
            params, (start_us, end_us), action_id=action_id, agent_id=agent_id, decision=decision
        )
        query = (
            "SELECT audit_id, region_id, action_id, agent_id, decision, violations, metadata, "
            f"ts FROM audit_logs WHERE {' AND '.join(where)} ORDER BY ts, audit_id LIMIT :limit"
        )
        rows = await self._run(self._fetch, query, params)
        return [
            AuditRecord(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                load_json_text(r[5]),
                load_json_text(r[6]),
                datetime_from_us(r[7]),
            )
            for r in rows
        ]

    # ------------------------------------------------------------------ window summaries

    async def _upsert_windows(self, rows: list[tuple[WindowSummaryRow, str]]) -> None:
        await self._run(self._upsert_windows_sync, rows)

    def _upsert_windows_sync(self, rows: list[tuple[WindowSummaryRow, str]]) -> None:
        capped = self._max_rows is not None

        def write(conn: sqlite3.Connection) -> int:
            # The upsert's rowcount counts updated rows too. A row it inserts gets the
            # largest rowid + 1 (SQLite's rule until rowid 2**63 - 1, centuries away at any
            # write rate) and an update keeps its row's rowid, so the largest rowid moves by
            # exactly the number of rows inserted: two b-tree seeks, no COUNT(*).
            before = _max_rowid(conn, "window_summaries") if capped else 0
            # each region's next change number: the write lock (BEGIN IMMEDIATE) orders them
            seqs = {
                region: _last_window_change(conn, region) + 1
                for region in {r.region_id for r, _ in rows}
            }
            conn.executemany(
                "INSERT INTO window_changes VALUES (?, ?) "
                "ON CONFLICT (region_id) DO UPDATE SET last_seq = excluded.last_seq",
                list(seqs.items()),
            )
            execute_rows(
                conn,
                f"INSERT INTO window_summaries ({WINDOW_WRITE_COLUMNS}) VALUES {{rows}} "
                "ON CONFLICT (region_id, instance_id, metric, labels, window_start_ns) "
                "DO UPDATE SET window_ns = excluded.window_ns, count = excluded.count, "
                "payload = excluded.payload, change_seq = excluded.change_seq",
                "(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                window_params(rows, seqs),
            )
            return _max_rowid(conn, "window_summaries") - before if capped else 0

        self._capped_write("window_summaries", write)

    async def _load_windows(self, region_id: str, where: WindowFilter) -> list[WindowSummaryRow]:
        conditions, params = where.conditions(lambda name: f":{name}")
        params["region"] = region_id
        query = (
            f"SELECT {WINDOW_COLUMNS} FROM window_summaries WHERE "
            f"{' AND '.join(['region_id = :region', *conditions])} "
            "ORDER BY window_start_ns, instance_id, metric, labels"
        )
        return window_rows(await self._run(self._fetch, query, params))

    async def _last_window_change(self, region_id: str) -> int:
        return await self._run(lambda: _last_window_change(self._db(), region_id))

    async def _delete_windows(self, region_id: str, before_ns: int) -> int:
        return await self._run(self._delete_windows_sync, region_id, before_ns)

    def _delete_windows_sync(self, region_id: str, before_ns: int) -> int:
        conn = self._db()
        with write_transaction(conn):
            deleted: int = conn.execute(
                "DELETE FROM window_summaries WHERE region_id = ? AND window_start_ns < ?",
                (region_id, before_ns),
            ).rowcount
        self._forget_rows("window_summaries", deleted)
        return deleted

    async def _delete_window_rows(self, keys: list[WindowKey]) -> int:
        return await self._run(self._delete_window_rows_sync, keys)

    def _delete_window_rows_sync(self, keys: list[WindowKey]) -> int:
        conn = self._db()
        with write_transaction(conn):
            deleted = sum(
                conn.execute(
                    "DELETE FROM window_summaries WHERE region_id = ? AND instance_id = ? "
                    "AND metric = ? AND labels = ? AND window_start_ns = ? AND change_seq = ?",
                    key,
                ).rowcount
                for key in keys
            )
        self._forget_rows("window_summaries", deleted)
        return deleted

    # ------------------------------------------------------------------ lifecycle

    async def _apply_retention(self, cutoff_us: int | None, now_us: int) -> None:
        if cutoff_us is not None:
            await self._run(self._delete_before, cutoff_us)

    def _delete_before(self, cutoff_us: int) -> None:
        conn = self._db()
        deleted: dict[str, int] = {}
        with write_transaction(conn):
            for table, column in (
                ("metrics", "ts"),
                ("metric_rollup", "minute"),
                ("events", "ts"),
                ("audit_logs", "ts"),
            ):
                deleted[table] = conn.execute(
                    f"DELETE FROM {table} WHERE {column} < ?", (cutoff_us,)
                ).rowcount
        for table in ("metrics", "events", "audit_logs"):
            self._forget_rows(table, deleted[table])

    async def _close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, self._close_sync)
        executor.shutdown(wait=False)

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
