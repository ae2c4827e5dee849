"""Tables of the PostgreSQL time-series store: creation, time partitions, retention.

Two layouts, chosen when the schema is first created and kept afterwards (a store opening
an existing schema follows what is there):

* **TimescaleDB** (the ``timescaledb`` extension is available and can be created):
  ``metrics``, ``metric_rollup``, ``events`` and ``audit_logs`` are hypertables with
  one-day chunks and a retention policy (``add_retention_policy``); retention drops chunks
  with ``drop_chunks``.
* **Native partitioning** otherwise: the same four tables are ``PARTITION BY RANGE`` on
  their time column with one partition per UTC day (``<table>_pYYYYMMDD``), created ahead
  for the coming days and on demand for any day a write touches; retention drops whole
  partitions.

Buckets use ``date_bin`` with the Unix epoch as origin in both layouts (TimescaleDB's
``time_bucket`` aligns weeks to 2000-01-03, which would differ from SQLite).

Every DDL statement runs in a transaction holding a transaction-level advisory lock derived
from the schema name, so nodes starting at once never race on ``CREATE``. Keys of
partitioned tables include the time column (PostgreSQL requires it): an event or audit row
is unique per (region, id, time).

Tables that exist already are checked before anything is created: one that lacks a column
of ours, or a time table that is neither partitioned nor a hypertable, belongs to another
application (or layout) and :class:`TimeSeriesSchemaError` names it, with nothing changed.
Columns added since the first version (:data:`ADDED_COLUMNS`) are added to an older table.
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import date, timedelta

import psycopg
from psycopg import sql

from nethical_grpc.storage.timeseries.base import TimeSeriesSchemaError
from nethical_grpc.storage.timeseries.model import US_PER_DAY, datetime_from_us

__all__ = [
    "ADDED_COLUMNS",
    "DROP_DAYS_PER_TRANSACTION",
    "PARTITIONED_TABLES",
    "SchemaState",
    "create_partitions",
    "drop_partitions_before",
    "ensure_schema",
    "lock_key",
    "window_change_lock",
]

log = logging.getLogger(__name__)

PARTITIONED_TABLES: tuple[tuple[str, str], ...] = (
    ("metrics", "ts"),
    ("metric_rollup", "minute"),
    ("events", "ts"),
    ("audit_logs", "ts"),
)
"""(table, time column) of every time-partitioned table."""

JSON_COLUMNS: tuple[tuple[str, str], ...] = (
    ("metrics", "metadata"),
    ("events", "data"),
    ("audit_logs", "violations"),
    ("audit_logs", "metadata"),
)
"""(table, column) of every JSON column: type ``json``, which keeps a document as written."""

DROP_DAYS_PER_TRANSACTION = 16
"""Most days of partitions one retention transaction drops. Each day's four tables, with
their indexes and TOAST tables, take about 19 locks until the commit, and the server's
lock table holds ``max_locks_per_transaction × max_connections`` (6,400 by default) for
every session together: dropping a year of days at once (retention shortened, or a
backfill of old days) failed with "out of shared memory" at every attempt."""

_EPOCH_DATE = date(1970, 1, 1)
_PARTITION_RE = re.compile(r"^metrics_p(\d{4})(\d{2})(\d{2})$")

_TABLES = """
CREATE TABLE IF NOT EXISTS {schema}.metrics (
    region_id text NOT NULL,
    ts timestamptz NOT NULL,
    metric_name text NOT NULL,
    agent_id text NOT NULL,
    metric_value double precision NOT NULL,
    metadata json
){partition_ts};
CREATE INDEX IF NOT EXISTS metrics_metric_ts ON {schema}.metrics (region_id, metric_name, ts);
CREATE INDEX IF NOT EXISTS metrics_agent_ts ON {schema}.metrics (region_id, agent_id, ts);
CREATE TABLE IF NOT EXISTS {schema}.metric_rollup (
    region_id text NOT NULL,
    metric_name text NOT NULL,
    minute timestamptz NOT NULL,
    n bigint NOT NULL,
    sum_value double precision NOT NULL,
    min_value double precision NOT NULL,
    max_value double precision NOT NULL,
    PRIMARY KEY (region_id, metric_name, minute)
){partition_minute};
CREATE TABLE IF NOT EXISTS {schema}.events (
    region_id text NOT NULL,
    event_id uuid NOT NULL,
    ts timestamptz NOT NULL,
    event_type text NOT NULL,
    agent_id text NOT NULL,
    severity text NOT NULL,
    data json,
    PRIMARY KEY (region_id, event_id, ts)
){partition_ts};
CREATE INDEX IF NOT EXISTS events_ts ON {schema}.events (region_id, ts);
CREATE TABLE IF NOT EXISTS {schema}.audit_logs (
    region_id text NOT NULL,
    audit_id uuid NOT NULL,
    ts timestamptz NOT NULL,
    action_id text NOT NULL,
    agent_id text NOT NULL,
    decision text NOT NULL,
    violations json NOT NULL,
    metadata json,
    PRIMARY KEY (region_id, audit_id, ts)
){partition_ts};
CREATE INDEX IF NOT EXISTS audit_logs_ts ON {schema}.audit_logs (region_id, ts);
CREATE TABLE IF NOT EXISTS {schema}.window_summaries (
    region_id text NOT NULL,
    instance_id text NOT NULL,
    metric text NOT NULL,
    labels text NOT NULL,
    window_start_ns bigint NOT NULL,
    window_ns bigint NOT NULL,
    count bigint NOT NULL,
    payload bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    change_seq bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (region_id, instance_id, metric, labels, window_start_ns)
);
CREATE INDEX IF NOT EXISTS window_summaries_start
    ON {schema}.window_summaries (region_id, window_start_ns);
CREATE INDEX IF NOT EXISTS window_summaries_changes
    ON {schema}.window_summaries (region_id, change_seq);
CREATE TABLE IF NOT EXISTS {schema}.window_changes (
    region_id text PRIMARY KEY,
    last_seq bigint NOT NULL
)
"""

ADDED_COLUMNS: dict[tuple[str, str], str] = {
    ("window_summaries", "count"): "bigint NOT NULL DEFAULT 0",
    ("window_summaries", "updated_at"): "timestamptz NOT NULL DEFAULT now()",
    ("window_summaries", "change_seq"): "bigint NOT NULL DEFAULT 0",
}
"""(table, column) → definition of the columns an older table of ours may lack; they are
added when the schema is set up (``count`` 0 on older rows: unknown, as in
:class:`~nethical_grpc.storage.timeseries.model.WindowSummaryRow`'s default)."""


def _declared_columns() -> dict[str, frozenset[str]]:
    """Table → the columns :data:`_TABLES` gives it."""
    out: dict[str, frozenset[str]] = {}
    for match in re.finditer(
        r"CREATE TABLE IF NOT EXISTS \{schema\}\.(\w+) \((.*?)\n\)", _TABLES, re.S
    ):
        lines = [line.strip() for line in match[2].strip().splitlines()]
        out[match[1]] = frozenset(ln.split()[0] for ln in lines if not ln.startswith("PRIMARY"))
    return out


_COLUMNS = _declared_columns()


class SchemaState:
    """What :func:`ensure_schema` found or made: the layout, the existing day partitions
    (Unix day numbers; always empty with TimescaleDB, which makes its own chunks) and the
    type of ``metrics.metadata`` (``json``; ``jsonb`` in a schema an older version made)."""

    def __init__(
        self, timescaledb: bool, partition_days: set[int], metadata_type: str = "json"
    ) -> None:
        self.timescaledb = timescaledb
        self.partition_days = partition_days
        self.metadata_type = metadata_type


def _advisory_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for ``name``."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_key(schema: str) -> int:
    """The advisory-lock key guarding DDL of ``schema``."""
    return _advisory_key(f"nethical.timeseries:{schema}")


def window_change_lock(schema: str, region_id: str) -> int:
    """The advisory-lock key an upsert of ``region_id``'s window summaries in ``schema``
    holds until it commits (their change numbers follow commits)."""
    return _advisory_key(f"nethical.window_changes:{schema}:{region_id}")


def _qualified(schema: str, table: str) -> sql.Identifier:
    return sql.Identifier(schema, table)


async def _lock(conn: psycopg.AsyncConnection[tuple[object, ...]], schema: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema),))


def _not_ours(schema: str, table: str, why: str) -> TimeSeriesSchemaError:
    return TimeSeriesSchemaError(
        f"table {table} in schema {schema} exists but is not a Nethical mesh table ({why}); "
        "use another schema (?schema=NAME in the URL)"
    )


async def _existing_tables(
    conn: psycopg.AsyncConnection[tuple[object, ...]], schema: str
) -> dict[str, tuple[str, set[str]]]:
    """Our table names that exist in ``schema``: name → (``relkind``, its columns)."""
    cur = await conn.execute(
        "SELECT c.relname, c.relkind, a.attname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
        "AND NOT a.attisdropped WHERE n.nspname = %s AND c.relname = ANY(%s)",
        (schema, list(_COLUMNS)),
    )
    found: dict[str, tuple[str, set[str]]] = {}
    for name, kind, column in await cur.fetchall():
        _, columns = found.setdefault(str(name), (str(kind), set()))
        if column is not None:
            columns.add(str(column))
    return found


async def _is_hypertable(
    conn: psycopg.AsyncConnection[tuple[object, ...]], schema: str, table: str
) -> bool:
    cur = await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    if await cur.fetchone() is None:
        return False
    cur = await conn.execute(
        "SELECT 1 FROM timescaledb_information.hypertables "
        "WHERE hypertable_schema = %s AND hypertable_name = %s",
        (schema, table),
    )
    return await cur.fetchone() is not None


async def _check_existing(
    conn: psycopg.AsyncConnection[tuple[object, ...]], schema: str
) -> bool | None:
    """Check the tables of ours that exist already, and add :data:`ADDED_COLUMNS` they
    lack. Returns the layout they have (True: TimescaleDB, False: partitioned, None: no
    time table yet). :class:`TimeSeriesSchemaError`, with nothing changed, for a table
    that is not ours."""
    existing = await _existing_tables(conn, schema)
    time_tables = {table for table, _ in PARTITIONED_TABLES}
    layouts: set[bool] = set()
    for table, (kind, columns) in sorted(existing.items()):
        missing = sorted(c for c in _COLUMNS[table] - columns if (table, c) not in ADDED_COLUMNS)
        if kind not in ("r", "p"):
            raise _not_ours(schema, table, f"not a table: relkind {kind!r}")
        if missing:
            what = "column" if len(missing) == 1 else "columns"
            raise _not_ours(schema, table, f"no {what} {', '.join(missing)}")
        if table not in time_tables:
            continue
        if kind == "p":
            layouts.add(False)
        elif await _is_hypertable(conn, schema, table):
            layouts.add(True)
        else:
            raise _not_ours(
                schema, table, "a plain table: neither partitioned by day nor a hypertable"
            )
    if len(layouts) > 1:
        raise TimeSeriesSchemaError(
            f"the tables in schema {schema} mix TimescaleDB hypertables and partitioned "
            "tables; use another schema (?schema=NAME in the URL)"
        )
    for (table, column), definition in ADDED_COLUMNS.items():
        if table in existing and column not in existing[table][1]:
            log.warning(
                "adding column %s to %s.%s (made by an older version)", column, schema, table
            )
            await conn.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                    _qualified(schema, table), sql.Identifier(column), sql.SQL(definition)
                )
            )
    return layouts.pop() if layouts else None


async def _try_timescaledb(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> bool:
    """Whether TimescaleDB is usable, creating the extension if it is available.

    ``CREATE EXTENSION`` can fail even when the extension is listed (not preloaded, no
    privilege); that is caught inside a savepoint and means "no".
    """
    cur = await conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    if await cur.fetchone() is None:
        return False
    try:
        async with conn.transaction():  # a savepoint: a failure leaves the outer tx usable
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:
        log.warning(
            "timescaledb is available but cannot be created (%s); using native partitioning",
            str(exc).strip().splitlines()[0],
        )
        return False
    cur = await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    return await cur.fetchone() is not None


async def ensure_schema(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    schema: str,
    retention: timedelta | None,
) -> SchemaState:
    """Create the schema and its tables if missing (idempotent, safe concurrently).

    ``conn`` must be in autocommit mode; the work happens in one transaction under the
    schema's advisory lock. :class:`TimeSeriesSchemaError` when a table of that name
    exists but is not ours (the transaction is rolled back: nothing changes).
    """
    async with conn.transaction():
        await _lock(conn, schema)
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        layout = await _check_existing(conn, schema)
        timescaledb = layout if layout is not None else await _try_timescaledb(conn)
        fragments = {
            "schema": sql.Identifier(schema),
            "partition_ts": sql.SQL("" if timescaledb else " PARTITION BY RANGE (ts)"),
            "partition_minute": sql.SQL("" if timescaledb else " PARTITION BY RANGE (minute)"),
        }
        for statement in _TABLES.split(";"):
            await conn.execute(sql.SQL(statement.strip()).format(**fragments))
        metadata_type = await _metadata_type(conn, schema)
        if timescaledb:
            await _make_hypertables(conn, schema, retention)
            return SchemaState(True, set(), metadata_type)
        days = await _partition_days(conn, schema)
    return SchemaState(False, days, metadata_type)


async def _metadata_type(conn: psycopg.AsyncConnection[tuple[object, ...]], schema: str) -> str:
    """The type of ``metrics.metadata`` in ``schema``: ``json``, or ``jsonb`` where an older
    version made the tables (a binary COPY must send that type's format).

    ``json`` keeps each document as written; ``jsonb`` normalises numbers (``1e16`` comes
    back as an integer, ``-0.0`` as ``0.0``) and key order. Such a schema is used as it is,
    with a warning: changing the type rewrites the tables, which is the operator's call."""
    cur = await conn.execute(
        "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = %s::regclass AND a.attname = 'metadata' AND NOT a.attisdropped",
        (f"{_quoted(schema)}.metrics",),
    )
    row = await cur.fetchone()
    found = str(row[0]) if row is not None else "json"
    if found == "jsonb":
        log.warning(
            "the JSON columns of schema %s are jsonb (made by an older version): stored "
            "metadata comes back with its numbers normalised (1e16 as an integer, -0.0 as "
            "0.0); ALTER TABLE ... ALTER COLUMN ... TYPE json on %s keeps new documents "
            "as written",
            schema,
            ", ".join(f"{table}.{column}" for table, column in JSON_COLUMNS),
        )
    return found


def _quoted(name: str) -> str:
    """``name`` as a quoted SQL identifier (for a ``regclass`` text)."""
    return '"' + name.replace('"', '""') + '"'


async def _make_hypertables(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    schema: str,
    retention: timedelta | None,
) -> None:
    """Turn the four time tables into hypertables (one-day chunks) with a retention policy.

    ``create_hypertable``/``add_retention_policy`` take ``if_not_exists`` so a second node
    (or a restart) is a no-op. The default (ts DESC) index is skipped: every query filters on
    region first, which the table's own indexes lead with. Written against TimescaleDB 2.x
    (the classic ``create_hypertable`` signature, still accepted by 2.13+); not exercised
    by the tests here, whose server has no TimescaleDB.
    """
    for table, column in PARTITIONED_TABLES:
        relation = _qualified(schema, table).as_string(conn)
        await conn.execute(
            "SELECT create_hypertable(%s::regclass, %s::name, chunk_time_interval => "
            "interval '1 day', create_default_indexes => FALSE, if_not_exists => TRUE)",
            (relation, column),
        )
        if retention is not None:
            await conn.execute(
                "SELECT add_retention_policy(%s::regclass, drop_after => %s::interval, "
                "if_not_exists => TRUE)",
                (relation, retention),
            )


async def _partition_days(
    conn: psycopg.AsyncConnection[tuple[object, ...]], schema: str
) -> set[int]:
    """Unix day numbers that have a ``metrics`` partition (the four tables get theirs
    together, in one transaction)."""
    cur = await conn.execute(
        "SELECT c.relname FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent "
        "JOIN pg_namespace n ON n.oid = p.relnamespace "
        "WHERE n.nspname = %s AND p.relname = 'metrics'",
        (schema,),
    )
    days: set[int] = set()
    for (name,) in await cur.fetchall():
        match = _PARTITION_RE.match(str(name))
        if match is None:
            continue
        y, m, d = (int(g) for g in match.groups())
        days.add((date(y, m, d) - _EPOCH_DATE).days)
    return days


def _day_suffix(day: int) -> str:
    d = datetime_from_us(day * US_PER_DAY)
    return f"{d.year:04d}{d.month:02d}{d.day:02d}"


def _day_literal(day: int) -> sql.Literal:
    d = datetime_from_us(day * US_PER_DAY)
    return sql.Literal(f"{d.year:04d}-{d.month:02d}-{d.day:02d} 00:00:00+00")


async def create_partitions(
    conn: psycopg.AsyncConnection[tuple[object, ...]], schema: str, days: set[int]
) -> set[int]:
    """Create the day partitions of ``days`` for the four tables (missing ones only).

    Returns every day that has partitions afterwards. Native layout only.
    """
    async with conn.transaction():
        await _lock(conn, schema)
        existing = await _partition_days(conn, schema)
        for day in sorted(days - existing):
            for table, _ in PARTITIONED_TABLES:
                await conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {part} PARTITION OF {parent} "
                        "FOR VALUES FROM ({lo}) TO ({hi})"
                    ).format(
                        part=_qualified(schema, f"{table}_p{_day_suffix(day)}"),
                        parent=_qualified(schema, table),
                        lo=_day_literal(day),
                        hi=_day_literal(day + 1),
                    )
                )
        return existing | days


async def drop_partitions_before(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    schema: str,
    cutoff_day: int,
    timescaledb: bool,
) -> set[int]:
    """Drop all data of the days before ``cutoff_day`` (whole partitions or chunks).

    Returns the days whose partitions remain (native layout; empty with TimescaleDB).
    Partitions go :data:`DROP_DAYS_PER_TRANSACTION` days at a time, oldest first, each
    group in a transaction of its own: a call that fails part-way keeps what it dropped,
    and the next one goes on from there.
    """
    if timescaledb:
        async with conn.transaction():
            await _lock(conn, schema)
            cutoff = datetime_from_us(cutoff_day * US_PER_DAY)
            for table, _ in PARTITIONED_TABLES:
                await conn.execute(
                    "SELECT drop_chunks(%s::regclass, older_than => %s)",
                    (_qualified(schema, table).as_string(conn), cutoff),
                )
        return set()
    tried: set[int] = set()  # a day is tried once (a partition of another schema stays)
    while True:
        async with conn.transaction():
            await _lock(conn, schema)
            existing = await _partition_days(conn, schema)
            old = sorted(d for d in existing - tried if d < cutoff_day)
            old = old[:DROP_DAYS_PER_TRANSACTION]
            tried.update(old)
            for day in old:
                for table, _ in PARTITIONED_TABLES:
                    await conn.execute(
                        sql.SQL("DROP TABLE IF EXISTS {}").format(
                            _qualified(schema, f"{table}_p{_day_suffix(day)}")
                        )
                    )
        if len(old) < DROP_DAYS_PER_TRANSACTION:
            return {d for d in existing if d >= cutoff_day}
