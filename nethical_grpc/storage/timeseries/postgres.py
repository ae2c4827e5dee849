"""The production time-series store: PostgreSQL through psycopg 3's async connection pool.

Tables live in one schema (``?schema=NAME`` in the URL, default ``nethical``); see
:mod:`.postgres_schema` for the TimescaleDB and native-partitioning layouts. Raw metrics are
written with binary ``COPY`` (timestamps and JSON go straight from integers and text, with
no per-row datetime or JSON objects); the per-minute rollup is merged in the same
transaction with one ``INSERT … ON CONFLICT`` over arrays. Events and audit rows use
``ON CONFLICT DO NOTHING``, so a retried write is not a duplicate; metric rows have no key,
so a writer that retries a batch numbers its batches
(:meth:`PostgresTimeSeriesStore.numbered`), and the table ``metric_writers``
keeps, per writer, the last number stored, in the batch's transaction.

Every session runs with ``TimeZone=UTC`` and ``jit=off`` (JIT compilation costs more than
these short queries take). Text ordering uses ``COLLATE "C"`` (byte order), the order
SQLite uses, so both backends list rows identically.

Every use of a connection is bounded (:data:`READ_TIMEOUT_S` for a read,
:data:`WRITE_TIMEOUT_S` for a write, :data:`SCHEMA_TIMEOUT_S` for the schema set-up at
open): past it the connection's socket is shut down, so the call fails at once with
:class:`TimeSeriesUnavailableError` (``psycopg.OperationalError`` at open) and the pool
discards the connection. A server that is gone but whose TCP connection stays open (a hung
host, a stalled proxy or partition) would otherwise hold the call until TCP gives up,
about 15 minutes. Sessions also carry ``statement_timeout`` and
``idle_in_transaction_session_timeout`` of :data:`WRITE_TIMEOUT_S`, so the server ends
what a client gave up on (and frees its locks), and TCP keepalives
(:data:`KEEPALIVES`, unless the URL sets them) notice a dead peer of an idle connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import re
import socket
import struct
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import psycopg
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import Format
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from nethical_grpc.errors import first_line
from nethical_grpc.storage.timeseries.base import (
    AuditRow,
    BucketTotals,
    EventRow,
    TimeSeriesStore,
    TimeSeriesUnavailableError,
    check_retention,
)
from nethical_grpc.storage.timeseries.model import (
    EPOCH,
    MAX_WRITE_TIME,
    US_PER_DAY,
    WINDOW_COLUMNS,
    WINDOW_WRITE_COLUMNS,
    AuditRecord,
    EventRecord,
    MetricColumns,
    MetricPoint,
    MetricRecord,
    WindowFilter,
    WindowKey,
    WindowSummaryRow,
    check_name,
    datetime_from_us,
    window_params,
    window_rows,
)
from nethical_grpc.storage.timeseries.postgres_schema import (
    create_partitions,
    drop_partitions_before,
    ensure_schema,
    lock_key,
    window_change_lock,
)
from nethical_grpc.storage.timeseries.rollup import AggregatePlan, RollupRows, TimeRange

__all__ = ["DEFAULT_SCHEMA", "PostgresTimeSeriesStore", "check_schema", "split_schema"]

DEFAULT_SCHEMA = "nethical"
DAYS_AHEAD = 2
"""Day partitions kept ready beyond today (native layout)."""
_END_DAY: Final = (MAX_WRITE_TIME - EPOCH) // timedelta(days=1)
"""The first Unix day no row may lie in: no partition is made for it or later (its name
and upper bound would be past the year 9999)."""

_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")  # whole names: fullmatch
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01, the origin of binary timestamps
_INT8 = struct.Struct(">q")

#: How long ``metric_writers`` remembers a writer that stored nothing since: a writer is one
#: node process's persister, and its retry of a batch comes at its next write that reaches
#: the server (an outage of the node's own connection longer than this may store it twice).
WRITERS_KEPT: Final = timedelta(days=7)
# (writer, batch number) of the metric batch being written (see PostgresTimeSeriesStore.numbered)
_WRITER_BATCH: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "metric_writer_batch", default=None
)


Conn = psycopg.AsyncConnection[tuple[Any, ...]]


def split_schema(url: str) -> tuple[str, str]:
    """``(url without the schema parameter, schema)`` of a ``postgresql://`` URL.

    ``ValueError`` when the schema is not a plain lower-case identifier (1-63 characters
    of ``a-z``, digits and ``_``, not starting with a digit).
    """
    parts = urlsplit(url)
    schema = DEFAULT_SCHEMA
    rest = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "schema":
            schema = value
        else:
            rest.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(rest))), check_schema(schema)


def check_schema(schema: str) -> str:
    """``schema`` if it is a plain lower-case identifier; else ``ValueError``."""
    if not _SCHEMA_RE.fullmatch(schema):
        raise ValueError(
            f"schema: {schema[:64]!r} must be 1-63 characters of a-z, 0-9 and '_', "
            "not starting with a digit"
        )
    return schema


#: The longest an in-region read waits for PostgreSQL (a connection, then the answer).
READ_TIMEOUT_S: Final = 5.0
#: The longest one write waits for PostgreSQL (a connection, then the whole batch and its
#: commit). A batch of a million metric rows, the most one call takes, writes in about 3 s
#: on a local server; the persister writes 5,000 rows at a time.
WRITE_TIMEOUT_S: Final = 30.0
#: The longest :meth:`PostgresTimeSeriesStore.open` waits for the schema set-up (which
#: waits for other nodes setting up the same schema).
SCHEMA_TIMEOUT_S: Final = 60.0
#: How long any call waits for a pooled connection (psycopg_pool's default is 30 s).
CONNECTION_WAIT_S: Final = 5.0
#: The longest the pool's check of an idle connection (one empty query) may take.
CHECK_TIMEOUT_S: Final = 2.0
#: TCP keepalives of every connection, unless the URL sets its own: a peer that died
#: while the connection was idle is noticed after about a minute, not two hours.
KEEPALIVES: Final = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}


class _MicrosTimestamptzDumper(Dumper):
    """Binary ``timestamptz`` from integer Unix microseconds (COPY only, by type oid)."""

    format = Format.BINARY
    oid = psycopg.postgres.types["timestamptz"].oid

    def dump(self, obj: Any) -> bytes:
        return _INT8.pack(obj - _PG_EPOCH_US)


class _JsonTextDumper(Dumper):
    """Binary ``json`` from already-serialised JSON text (COPY only, by type oid): the
    text itself, kept as written."""

    format = Format.BINARY
    oid = psycopg.postgres.types["json"].oid

    def dump(self, obj: Any) -> bytes:
        return str(obj).encode()


class _JsonbTextDumper(Dumper):
    """Binary ``jsonb`` from already-serialised JSON text (COPY only, by type oid), for a
    schema an older version made (see :func:`.postgres_schema._metadata_type`)."""

    format = Format.BINARY
    oid = psycopg.postgres.types["jsonb"].oid

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + str(obj).encode()


_JSON_DUMPERS: dict[str, type[Dumper]] = {"json": _JsonTextDumper, "jsonb": _JsonbTextDumper}


async def _configure(conn: Conn) -> None:
    await conn.execute("SET TIME ZONE 'UTC'")
    await conn.execute("SET jit = off")
    bound_ms = round(WRITE_TIMEOUT_S * 1000)
    await conn.execute(f"SET statement_timeout = {bound_ms}")
    await conn.execute(f"SET idle_in_transaction_session_timeout = {bound_ms}")


def _hang_up(conn: Conn) -> None:
    """Shut down ``conn``'s socket: whatever waits on it fails at once with
    ``OperationalError`` and the connection is broken (a pool discards it). Cancelling the
    waiting task instead would have psycopg send the server a cancel request and wait for
    the answer, up to 10 s more from a server that does not answer."""
    with contextlib.suppress(OSError, psycopg.Error):
        fd = conn.pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def _deadline(conn: Conn, seconds: float) -> Iterator[None]:
    """Hang ``conn`` up if the block is still running after ``seconds``."""
    handle = asyncio.get_running_loop().call_later(seconds, _hang_up, conn)
    try:
        yield
    finally:
        handle.cancel()


async def _check(conn: Conn) -> None:
    """The pool's check of an idle connection before it is handed out, bounded by
    :data:`CHECK_TIMEOUT_S` (psycopg's own check waits as long as TCP does)."""
    with _deadline(conn, CHECK_TIMEOUT_S):
        await AsyncConnectionPool.check_connection(conn)


async def _ensure_writers_table(conn: Conn, schema: str) -> None:
    """Create ``metric_writers`` if missing, under the schema's DDL lock (as
    :func:`.postgres_schema.ensure_schema` creates the other tables)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema),))
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (writer text PRIMARY KEY, "
                "last_batch bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(schema, "metric_writers"))
        )


def _with_keepalives(conninfo: str) -> dict[str, Any]:
    """The :data:`KEEPALIVES` that ``conninfo`` does not set itself."""
    given = conninfo_to_dict(conninfo)
    return {k: v for k, v in KEEPALIVES.items() if k not in given}


def _us(value: datetime) -> int:
    return (value - EPOCH) // timedelta(microseconds=1)


def _range_sql(column: str, rng: TimeRange, tag: str, params: dict[str, Any]) -> sql.Composable:
    start, end = rng
    parts: list[sql.Composable] = [sql.SQL("TRUE")]
    if start is not None:
        params[f"{tag}_lo"] = datetime_from_us(start)
        parts.append(
            sql.SQL("{} >= {}").format(sql.Identifier(column), sql.Placeholder(f"{tag}_lo"))
        )
    if end is not None:
        params[f"{tag}_hi"] = datetime_from_us(end)
        parts.append(
            sql.SQL("{} < {}").format(sql.Identifier(column), sql.Placeholder(f"{tag}_hi"))
        )
    return sql.SQL(" AND ").join(parts)


def _equal_filters(params: dict[str, Any], **filters: str | None) -> list[sql.Composable]:
    out: list[sql.Composable] = []
    for column, value in filters.items():
        if value is not None:
            params[column] = value
            out.append(sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(column)))
    return out


class PostgresTimeSeriesStore(TimeSeriesStore):
    """:class:`TimeSeriesStore` on PostgreSQL; open with :meth:`open`."""

    backend = "postgresql"

    def __init__(
        self,
        region_id: str,
        retention: timedelta | None,
        pool: AsyncConnectionPool[Conn],
        schema: str,
        timescaledb: bool,
        partition_days: set[int],
        metadata_type: str = "json",
    ) -> None:
        super().__init__(region_id, retention)
        self.schema = schema
        self.timescaledb = timescaledb
        self.metadata_type = metadata_type
        """``metrics.metadata``'s type: ``json``, or ``jsonb`` in an older version's schema."""
        self._pool: AsyncConnectionPool[Conn] | None = pool
        self._partition_days = partition_days
        self.read_timeout_s = READ_TIMEOUT_S
        """Bound of each read (:data:`READ_TIMEOUT_S`)."""
        self.write_timeout_s = WRITE_TIMEOUT_S
        """Bound of each write (:data:`WRITE_TIMEOUT_S`)."""

    @property
    def layout(self) -> str:
        """``"timescaledb"`` (hypertables) or ``"partitioned"`` (native day partitions)."""
        return "timescaledb" if self.timescaledb else "partitioned"

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        region_id: str,
        retention: timedelta | None = None,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 4,
        connect_timeout: float = 5.0,
    ) -> Self:
        """Connect, create the schema and tables if needed, and open the pool.

        ``schema`` overrides the URL's ``?schema=``. Connection problems raise
        ``psycopg.OperationalError`` (the factory turns them into a fallback).
        """
        check_name("region_id", region_id)
        check_retention(retention)
        conninfo, url_schema = split_schema(url)
        schema = url_schema if schema is None else check_schema(schema)
        timeout = max(1, round(connect_timeout))
        keepalives = _with_keepalives(conninfo)
        probe: Conn = await psycopg.AsyncConnection.connect(
            conninfo, autocommit=True, connect_timeout=timeout, **keepalives
        )
        try:
            # a server that stops answering fails the open (OperationalError: the factory
            # falls back) instead of holding the node's start for as long as TCP waits
            with _deadline(probe, SCHEMA_TIMEOUT_S):
                state = await ensure_schema(probe, schema, retention)
                await _ensure_writers_table(probe, schema)
                days = state.partition_days
                if not state.timescaledb:
                    today = _us(datetime.now(UTC)) // US_PER_DAY
                    wanted = set(range(today - 1, min(today + DAYS_AHEAD + 1, _END_DAY)))
                    if not wanted <= days:
                        days = await create_partitions(probe, schema, wanted)
        finally:
            await probe.close()
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True, "connect_timeout": timeout, **keepalives},
            configure=_configure,
            check=_check,
            name=f"nethical-timeseries-{schema}",
            open=False,
            # how long a call waits for a connection: a server that went away fails a
            # write in seconds (and the node says so), not after psycopg's 30 s
            timeout=CONNECTION_WAIT_S,
        )
        try:
            await pool.open(wait=True, timeout=connect_timeout)
            return cls(
                region_id, retention, pool, schema, state.timescaledb, days, state.metadata_type
            )
        except BaseException:
            await pool.close()
            raise

    # ------------------------------------------------------------------ plumbing

    def _pool_or_raise(self) -> AsyncConnectionPool[Conn]:
        if self._pool is None:
            raise RuntimeError("the time-series store is closed")
        return self._pool

    def _table(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    @contextlib.asynccontextmanager
    async def _connection(self, seconds: float, what: str) -> AsyncIterator[Conn]:
        """A pooled connection for one read or write that must be done within ``seconds``,
        the wait for the connection included; ``TimeSeriesUnavailableError`` when it is
        not, or when PostgreSQL cannot be reached. Past ``seconds`` the connection is hung
        up (see :func:`_hang_up`), so the pool replaces it rather than reuse it."""
        pool = self._pool_or_raise()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        try:
            # the backstop for the wait for a connection (itself bounded); the hang-up
            # below is what ends a call waiting on a silent server
            async with asyncio.timeout(seconds + CHECK_TIMEOUT_S):
                async with pool.connection(timeout=min(seconds, CONNECTION_WAIT_S)) as conn:
                    with _deadline(conn, max(0.0, deadline - loop.time())):
                        yield conn
        except (TimeoutError, PoolTimeout, psycopg.OperationalError) as exc:
            if isinstance(exc, TimeoutError) or loop.time() >= deadline:
                why = f"within {seconds:g} s"
            else:  # no connection in time, refused, broken
                why = f"({first_line(exc)})"
            raise TimeSeriesUnavailableError(f"PostgreSQL did not answer a {what} {why}") from None

    async def _ensure_days(self, days: set[int]) -> None:
        """Make sure the day partitions of ``days`` exist (native layout)."""
        if self.timescaledb or days <= self._partition_days:
            return
        async with self._connection(self.write_timeout_s, "write") as conn:
            self._partition_days = await create_partitions(
                conn, self.schema, days | self._partition_days
            )

    async def _with_partitions(self, days: set[int], write: Any) -> None:
        """Run ``write()`` after making sure ``days`` have partitions; if another node
        dropped one meanwhile (no partition for a row), re-check them and retry once."""
        await self._ensure_days(days)
        try:
            await write()
        except psycopg.errors.CheckViolation:
            if self.timescaledb:
                raise
            self._partition_days = set()
            await self._ensure_days(days)
            await write()

    # ------------------------------------------------------------------ metrics

    @contextlib.contextmanager
    def numbered(self, writer: str, batch: int) -> Iterator[None]:
        """The metric writes of this task within are ``writer``'s batch numbered
        ``batch``: for a writer that retries a batch until it is stored, when a write
        that failed may have been committed all the same (the server took the COMMIT,
        its answer was lost with the connection). ``writer`` numbers its batches in the
        order it writes them (``batch``, increasing): a batch numbered no higher than the
        writer's last stored one was stored, and is not stored again (each insert call
        within still returns the batch's rows). Any insert of metric rows may go inside:
        :meth:`insert_metrics`, :meth:`insert_metric_values`,
        :meth:`insert_metric_columns`."""
        token = _WRITER_BATCH.set((writer, batch))
        try:
            yield
        finally:
            _WRITER_BATCH.reset(token)

    async def insert_metrics_once(
        self, points: Sequence[MetricPoint], *, writer: str, batch: int
    ) -> int:
        """:meth:`insert_metrics` as the batch ``batch`` of ``writer`` (see
        :meth:`numbered`). Returns the batch's rows (stored now or before)."""
        with self.numbered(writer, batch):
            return await self.insert_metrics(points)

    async def _write_metrics(self, cols: MetricColumns, rollup: RollupRows) -> None:
        days = set(np.unique(cols.ts_us // US_PER_DAY).tolist())

        async def write() -> None:
            await self._copy_metrics(cols, rollup)

        await self._with_partitions(days, write)

    async def _copy_metrics(self, cols: MetricColumns, rollup: RollupRows) -> None:
        copy_sql = sql.SQL(
            "COPY {} (region_id, ts, metric_name, agent_id, metric_value, metadata) "
            "FROM STDIN (FORMAT BINARY)"
        ).format(self._table("metrics"))
        upsert = sql.SQL(
            "INSERT INTO {rollup} AS r "
            "(region_id, metric_name, minute, n, sum_value, min_value, max_value) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::int8[], "
            "%s::float8[], %s::float8[], %s::float8[]) "
            "ON CONFLICT (region_id, metric_name, minute) DO UPDATE SET "
            "n = r.n + excluded.n, sum_value = r.sum_value + excluded.sum_value, "
            "min_value = least(r.min_value, excluded.min_value), "
            "max_value = greatest(r.max_value, excluded.max_value)"
        ).format(rollup=self._table("metric_rollup"))
        rows = cols.rows()
        numbered = _WRITER_BATCH.get()
        async with self._connection(self.write_timeout_s, "write") as conn, conn.transaction():
            if numbered is not None and not await self._next_batch(conn, *numbered):
                return  # stored by a write whose answer was lost
            cur = conn.cursor()
            cur.adapters.register_dumper(None, _MicrosTimestamptzDumper)
            cur.adapters.register_dumper(None, _JSON_DUMPERS[self.metadata_type])
            async with cur.copy(copy_sql) as copy:
                copy.set_types(
                    ["text", "timestamptz", "text", "text", "float8", self.metadata_type]
                )
                for row in rows:
                    await copy.write_row(row)
            await cur.execute(
                upsert,
                (
                    rollup.region_ids,
                    rollup.metric_names,
                    [datetime_from_us(m) for m in rollup.minute_us],
                    rollup.counts,
                    rollup.sums,
                    rollup.mins,
                    rollup.maxs,
                ),
            )

    async def _next_batch(self, conn: Conn, writer: str, batch: int) -> bool:
        """Record ``batch`` as ``writer``'s last stored one, in the open transaction: False
        when that or a later one is recorded (committed) already."""
        cur = await conn.execute(
            sql.SQL(
                "INSERT INTO {} AS w (writer, last_batch) VALUES (%s, %s) "
                "ON CONFLICT (writer) DO UPDATE SET last_batch = excluded.last_batch, "
                "updated_at = now() WHERE w.last_batch < excluded.last_batch"
            ).format(self._table("metric_writers")),
            (writer, batch),
        )
        return cur.rowcount == 1

    async def _fetch(self, query: sql.Composed, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """One read; ``TimeSeriesUnavailableError`` when PostgreSQL cannot be reached or
        does not answer within :data:`READ_TIMEOUT_S` (the pool would otherwise wait 30 s
        for a connection, and a connection whose peer went silent waits for TCP)."""
        async with self._connection(self.read_timeout_s, "read") as conn:
            # Binary results: timestamps, floats and bytea decode without text parsing.
            cur = conn.cursor(binary=True)
            await cur.execute(query, params)
            return await cur.fetchall()

    async def _select_metrics(
        self,
        region_id: str,
        agent_id: str | None,
        metric_name: str | None,
        start_us: int | None,
        end_us: int | None,
        limit: int,
    ) -> list[MetricRecord]:
        params: dict[str, Any] = {"limit": limit}
        where = _equal_filters(
            params, region_id=region_id, agent_id=agent_id, metric_name=metric_name
        )
        where.append(_range_sql("ts", (start_us, end_us), "t", params))
        query = sql.SQL(
            "SELECT region_id, agent_id, metric_name, metric_value, ts, metadata FROM {} "
            'WHERE {} ORDER BY ts, metric_name COLLATE "C", agent_id COLLATE "C", '
            'metric_value, metadata::text COLLATE "C" NULLS FIRST LIMIT %(limit)s'
        ).format(self._table("metrics"), sql.SQL(" AND ").join(where))
        return [MetricRecord(*row) for row in await self._fetch(query, params)]

    async def _aggregate(self, plan: AggregatePlan) -> list[BucketTotals]:
        params: dict[str, Any] = {
            "w": timedelta(microseconds=plan.bucket_us),
            "origin": EPOCH,
            "region": plan.region_id,
            "metric": plan.metric_name,
        }
        parts: list[sql.Composable] = []
        if plan.rollup is not None:
            parts.append(
                sql.SQL(
                    "SELECT date_bin(%(w)s, minute, %(origin)s) AS b, sum_value AS s, n, "
                    "min_value AS lo, max_value AS hi FROM {} "
                    "WHERE region_id = %(region)s AND metric_name = %(metric)s AND {}"
                ).format(
                    self._table("metric_rollup"), _range_sql("minute", plan.rollup, "r", params)
                )
            )
        if plan.raw:
            ranges = sql.SQL(" OR ").join(
                sql.SQL("({})").format(_range_sql("ts", rng, f"raw{i}", params))
                for i, rng in enumerate(plan.raw)
            )
            agent: sql.Composable = sql.SQL("")
            if plan.agent_id is not None:
                params["agent"] = plan.agent_id
                agent = sql.SQL(" AND agent_id = %(agent)s")
            parts.append(
                sql.SQL(
                    "SELECT date_bin(%(w)s, ts, %(origin)s) AS b, sum(metric_value) AS s, "
                    "count(*) AS n, min(metric_value) AS lo, max(metric_value) AS hi FROM {} "
                    "WHERE region_id = %(region)s AND metric_name = %(metric)s{} AND ({}) "
                    "GROUP BY 1"
                ).format(self._table("metrics"), agent, ranges)
            )
        query = sql.SQL(
            "SELECT b, sum(s), sum(n)::bigint, min(lo), max(hi) FROM ({}) AS q "
            "GROUP BY b ORDER BY b"
        ).format(sql.SQL(" UNION ALL ").join(parts))
        return [
            (_us(b), float(s), int(n), float(lo), float(hi))
            for b, s, n, lo, hi in await self._fetch(query, params)
        ]

    # ------------------------------------------------------------------ events, audit

    async def _execute(self, query: sql.Composed, params: tuple[Any, ...]) -> int:
        async with self._connection(self.write_timeout_s, "write") as conn:
            cur = await conn.execute(query, params)
            return cur.rowcount

    async def _write_event(self, row: EventRow) -> None:
        region, event_id, ts_us, event_type, agent, severity, data = row
        query = sql.SQL(
            "INSERT INTO {} (region_id, event_id, ts, event_type, agent_id, severity, data) "
            "VALUES (%s, %s::uuid, %s, %s, %s, %s, %s::json) ON CONFLICT DO NOTHING"
        ).format(self._table("events"))
        params = (region, event_id, datetime_from_us(ts_us), event_type, agent, severity, data)

        async def write() -> None:
            await self._execute(query, params)

        await self._with_partitions({ts_us // US_PER_DAY}, write)

    async def _write_audit(self, row: AuditRow) -> None:
        region, audit_id, ts_us, action, agent, decision, violations, metadata = row
        query = sql.SQL(
            "INSERT INTO {} (region_id, audit_id, ts, action_id, agent_id, decision, "
            "violations, metadata) VALUES (%s, %s::uuid, %s, %s, %s, %s, %s::json, %s::json) "
            "ON CONFLICT DO NOTHING"
        ).format(self._table("audit_logs"))
        params = (
            region,
            audit_id,
            datetime_from_us(ts_us),
            action,
            agent,
            decision,
            violations,
            metadata,
        )

        async def write() -> None:
            await self._execute(query, params)

        await self._with_partitions({ts_us // US_PER_DAY}, write)

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
        params: dict[str, Any] = {"limit": limit}
        where = _equal_filters(
            params,
            region_id=region_id,
            event_type=event_type,
            agent_id=agent_id,
            severity=severity,
        )
        where.append(_range_sql("ts", (start_us, end_us), "t", params))
        query = sql.SQL(
            "SELECT event_id::text, region_id, event_type, agent_id, severity, data, ts "
            "FROM {} WHERE {} ORDER BY ts, event_id LIMIT %(limit)s"
        ).format(self._table("events"), sql.SQL(" AND ").join(where))
        return [EventRecord(*row) for row in await self._fetch(query, params)]

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
        params: dict[str, Any] = {"limit": limit}
        where = _equal_filters(
            params,
            region_id=region_id,
            action_id=action_id,
            agent_id=agent_id,
            decision=decision,
        )
        where.append(_range_sql("ts", (start_us, end_us), "t", params))
        query = sql.SQL(
            "SELECT audit_id::text, region_id, action_id, agent_id, decision, violations, "
            "metadata, ts FROM {} WHERE {} ORDER BY ts, audit_id LIMIT %(limit)s"
        ).format(self._table("audit_logs"), sql.SQL(" AND ").join(where))
        return [AuditRecord(*row) for row in await self._fetch(query, params)]

    # ------------------------------------------------------------------ window summaries

    async def _upsert_windows(self, rows: list[tuple[WindowSummaryRow, str]]) -> None:
        table = self._table("window_summaries")
        query = sql.SQL(
            "INSERT INTO {} (" + WINDOW_WRITE_COLUMNS + ") VALUES "
            "(%s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (region_id, instance_id, metric, labels, window_start_ns) "
            "DO UPDATE SET window_ns = excluded.window_ns, count = excluded.count, "
            "payload = excluded.payload, change_seq = excluded.change_seq, updated_at = now()"
        ).format(table)
        async with self._connection(self.write_timeout_s, "write") as conn, conn.transaction():
            seqs: dict[str, int] = {}
            for region in sorted({r.region_id for r, _ in rows}):
                # the region's upserts take turns until they commit: numbers follow commits
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(%s)", (window_change_lock(self.schema, region),)
                )
                seqs[region] = await self._last_change(conn, region) + 1
            await conn.cursor().executemany(
                sql.SQL(
                    "INSERT INTO {} VALUES (%s, %s) "
                    "ON CONFLICT (region_id) DO UPDATE SET last_seq = excluded.last_seq"
                ).format(self._table("window_changes")),
                list(seqs.items()),
            )
            await conn.cursor().executemany(query, window_params(rows, seqs))

    async def _last_change(self, conn: Conn, region_id: str) -> int:
        """The number kept in ``window_changes`` (a delete does not take it back), or the
        largest a row holds (a store written before that table was kept)."""
        cur = await conn.execute(
            sql.SQL(
                "SELECT greatest((SELECT last_seq FROM {} WHERE region_id = %s), "
                "(SELECT max(change_seq) FROM {} WHERE region_id = %s))"
            ).format(self._table("window_changes"), self._table("window_summaries")),
            (region_id, region_id),
        )
        found = await cur.fetchone()
        return 0 if found is None or found[0] is None else int(found[0])

    async def _last_window_change(self, region_id: str) -> int:
        async with self._connection(self.read_timeout_s, "read") as conn:
            return await self._last_change(conn, region_id)

    async def _load_windows(self, region_id: str, where: WindowFilter) -> list[WindowSummaryRow]:
        conditions, params = where.conditions(lambda name: f"%({name})s")
        params["region"] = region_id
        query = sql.SQL(
            "SELECT " + WINDOW_COLUMNS + " FROM {} WHERE {} ORDER BY window_start_ns, "
            'instance_id COLLATE "C", metric COLLATE "C", labels COLLATE "C"'
        ).format(
            self._table("window_summaries"),
            sql.SQL(" AND ".join(["region_id = %(region)s", *conditions])),
        )
        return window_rows(await self._fetch(query, params))

    async def _delete_windows(self, region_id: str, before_ns: int) -> int:
        return await self._execute(
            sql.SQL("DELETE FROM {} WHERE region_id = %s AND window_start_ns < %s").format(
                self._table("window_summaries")
            ),
            (region_id, before_ns),
        )

    async def _delete_window_rows(self, keys: list[WindowKey]) -> int:
        query = sql.SQL(
            "DELETE FROM {} WHERE region_id = %s AND instance_id = %s AND metric = %s "
            "AND labels = %s AND window_start_ns = %s AND change_seq = %s"
        ).format(self._table("window_summaries"))
        deleted = 0
        async with self._connection(self.write_timeout_s, "write") as conn, conn.transaction():
            for key in keys:
                cur = await conn.execute(query, key)
                deleted += cur.rowcount
        return deleted

    # ------------------------------------------------------------------ lifecycle

    async def _apply_retention(self, cutoff_us: int | None, now_us: int) -> None:
        async with self._connection(self.write_timeout_s, "write") as conn:
            await conn.execute(
                sql.SQL("DELETE FROM {} WHERE updated_at < now() - %s").format(
                    self._table("metric_writers")
                ),
                (WRITERS_KEPT,),
            )
            if cutoff_us is not None:
                remaining = await drop_partitions_before(
                    conn, self.schema, cutoff_us // US_PER_DAY, self.timescaledb
                )
                self._partition_days = remaining
            if not self.timescaledb:
                today = now_us // US_PER_DAY
                ahead = set(range(today, min(today + DAYS_AHEAD + 1, _END_DAY)))
                if not ahead <= self._partition_days:
                    self._partition_days = await create_partitions(conn, self.schema, ahead)

    async def _close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
