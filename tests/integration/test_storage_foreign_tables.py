"""Stores opened where tables of their names already exist: another application's table
is refused with one line naming it, before anything is written (the other application's
schema or file stays as it was); an older table of ours gains the columns added since.

PostgreSQL is the server at 127.0.0.1:5432 (``NETHICAL_TEST_POSTGRES_URL`` overrides), one
fresh schema per test; without it those cases skip, or fail when ``CI`` is set.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from services import PG_URL, fresh_schema

from nethical_grpc.cli.processes import mesh_command
from nethical_grpc.storage.audit import AuditStoreError, open_audit_store
from nethical_grpc.storage.timeseries import WindowSummaryRow, open_timeseries
from nethical_grpc.storage.timeseries.base import TimeSeriesSchemaError


@pytest.fixture
def pg_schema() -> Iterator[str]:
    with fresh_schema("ts_foreign") as schema:
        yield schema


def _pg(*statements: str) -> list[tuple[object, ...]]:
    """Run ``statements`` on the real server; the rows of the last one."""
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        rows: list[tuple[object, ...]] = []
        for statement in statements:
            cur = conn.execute(statement)  # type: ignore[arg-type]
            rows = cur.fetchall() if cur.description else []
        return rows


def _tables(schema: str) -> list[object]:
    return [
        r[0]
        for r in _pg(
            f"SELECT tablename FROM pg_tables WHERE schemaname = '{schema}' ORDER BY tablename"
        )
    ]


def _url(schema: str) -> str:
    return f"{PG_URL}?schema={schema}"


async def test_another_applications_metrics_table_is_refused(pg_schema: str) -> None:
    _pg(
        f"CREATE SCHEMA {pg_schema}",
        f"CREATE TABLE {pg_schema}.metrics (id serial PRIMARY KEY, name text, value float8)",
        f"INSERT INTO {pg_schema}.metrics (name, value) VALUES ('cpu', 0.5)",
    )
    with pytest.raises(TimeSeriesSchemaError) as refused:
        await open_timeseries(_url(pg_schema), "r1")
    said = str(refused.value)
    assert f"table metrics in schema {pg_schema} exists but is not a Nethical mesh" in said
    assert "no columns agent_id, metadata, metric_name, metric_value, region_id, ts" in said
    assert "?schema=" in said and "\n" not in said
    assert _tables(pg_schema) == ["metrics"]  # nothing created beside it
    assert _pg(f"SELECT name, value FROM {pg_schema}.metrics") == [("cpu", 0.5)]


async def test_a_plain_metrics_table_is_not_taken_for_timescaledb(pg_schema: str) -> None:
    """Every column of ours, but neither partitioned nor a hypertable: not ours."""
    _pg(
        f"CREATE SCHEMA {pg_schema}",
        f"CREATE TABLE {pg_schema}.metrics (region_id text, ts timestamptz, metric_name text, "
        "agent_id text, metric_value float8, metadata jsonb)",
    )
    with pytest.raises(TimeSeriesSchemaError, match="a plain table: neither partitioned"):
        await open_timeseries(_url(pg_schema), "r1")
    assert _tables(pg_schema) == ["metrics"]


async def test_another_applications_events_table_is_refused(pg_schema: str) -> None:
    _pg(f"CREATE SCHEMA {pg_schema}", f"CREATE TABLE {pg_schema}.events (id int, body text)")
    with pytest.raises(
        TimeSeriesSchemaError, match=r"table events in schema \S+ exists .*\(no columns"
    ):
        await open_timeseries(_url(pg_schema), "r1")
    assert _tables(pg_schema) == ["events"]


async def _flush_one_and_load(url: str) -> list[WindowSummaryRow]:
    """Open the store at ``url``, flush one window ("new", count 7), load them all back."""
    store, _ = await open_timeseries(url, "r1")
    try:
        await store.upsert_window_summaries(
            [WindowSummaryRow("r1", "i0", "new", {}, 2000, 10, b"\x02", 7)]
        )
        return await store.load_window_summaries("r1")
    finally:
        await store.close()


async def test_an_older_window_summaries_table_gains_count(pg_schema: str) -> None:
    """A window_summaries table without ``count`` (and ``updated_at``, ``change_seq``):
    the columns are added (``count`` and ``change_seq`` 0 on the rows already there) and
    flushes work."""
    _pg(
        f"CREATE SCHEMA {pg_schema}",
        f"CREATE TABLE {pg_schema}.window_summaries (region_id text NOT NULL, "
        "instance_id text NOT NULL, metric text NOT NULL, labels text NOT NULL, "
        "window_start_ns bigint NOT NULL, window_ns bigint NOT NULL, payload bytea NOT NULL, "
        "PRIMARY KEY (region_id, instance_id, metric, labels, window_start_ns))",
        f"INSERT INTO {pg_schema}.window_summaries VALUES "
        "('r1', 'i0', 'old', '{}', 1000, 10, '\\x01')",
    )
    rows = await _flush_one_and_load(_url(pg_schema))
    assert [(r.metric, r.count, r.payload, r.change_seq) for r in rows] == [
        ("old", 0, b"\x01", 0),
        ("new", 7, b"\x02", 1),
    ]


# ---------------------------------------------------------------------- SQLite


def _fingerprint(path: Path) -> tuple[str, int, str]:
    """The file's bytes (hashed), ``user_version`` and journal mode."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    return digest, int(version), str(mode)


def _foreign_file(path: Path, table: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute(f"INSERT INTO {table} (body) VALUES ('theirs')")
        conn.commit()


async def test_sqlite_audit_store_leaves_a_foreign_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    _foreign_file(path, "audit_records")
    before = _fingerprint(path)
    assert before[1:] == (0, "delete")
    with pytest.raises(AuditStoreError) as refused:
        await open_audit_store(f"sqlite://{path}", "r1")
    said = str(refused.value)
    assert f"table audit_records in {path} exists but is not a Nethical mesh audit" in said
    assert "no column" in said and "seq" in said
    assert _fingerprint(path) == before  # user_version still 0, no WAL, same bytes


async def test_sqlite_timeseries_store_leaves_a_foreign_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    _foreign_file(path, "metrics")
    before = _fingerprint(path)
    with pytest.raises(TimeSeriesSchemaError) as refused:
        await open_timeseries(f"sqlite://{path}", "r1")
    assert f"table metrics in {path} exists but is not a Nethical mesh table" in str(refused.value)
    assert "no columns agent_id" in str(refused.value)
    assert _fingerprint(path) == before


async def test_sqlite_older_window_summaries_gains_count(tmp_path: Path) -> None:
    path = tmp_path / "ts.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(
            "CREATE TABLE window_summaries (region_id TEXT NOT NULL, instance_id TEXT NOT NULL, "
            "metric TEXT NOT NULL, labels TEXT NOT NULL, window_start_ns INTEGER NOT NULL, "
            "window_ns INTEGER NOT NULL, payload BLOB NOT NULL, "
            "PRIMARY KEY (region_id, instance_id, metric, labels, window_start_ns))"
        )
        conn.execute(
            "INSERT INTO window_summaries VALUES ('r1', 'i0', 'old', '{}', 1000, 10, x'01')"
        )
        conn.commit()
    rows = await _flush_one_and_load(f"sqlite://{path}")
    assert [(r.metric, r.count, r.change_seq) for r in rows] == [("old", 0, 0), ("new", 7, 1)]


# ---------------------------------------------------------------------- the CLI


@pytest.mark.e2e
def test_the_node_says_which_table_is_not_ours(pg_schema: str, tmp_path: Path) -> None:
    """``nethical-mesh region`` on a schema with another application's ``metrics``: exit 2
    and one line naming the table, no traceback (it was ``UndefinedColumn``)."""
    import subprocess

    _pg(f"CREATE SCHEMA {pg_schema}", f"CREATE TABLE {pg_schema}.metrics (id int, name text)")
    t0 = time.monotonic()
    out = subprocess.run(
        mesh_command(
            "region", "--region-id", "r1", "--port", "0", "--no-evaluate",
            "--timeseries-url", _url(pg_schema),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:], time.monotonic() - t0)
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "cannot start the region node: table metrics in schema" in out.stderr
    assert "no columns" in out.stderr
