"""A failed write on an SQLite store reports its own error, not the rollback's; multi-row
statements write what one statement per row would, in a few statements."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nethical_grpc.storage.sqlite_tx import (
    MAX_ROWS_PER_STATEMENT,
    execute_rows,
    rollback_quietly,
    write_transaction,
)


def test_the_first_error_is_the_one_raised() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (x)")

    def write() -> None:
        with write_transaction(conn):
            conn.execute("INSERT INTO t VALUES (1)")
            conn.execute("ROLLBACK")  # SQLite ended the transaction itself, as on a full disk
            raise sqlite3.OperationalError("database or disk is full")

    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        write()
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_a_rollback_still_undoes_a_live_transaction() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t VALUES (1)")
    rollback_quietly(conn)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    rollback_quietly(conn)  # nothing to undo: no error


def _table() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER NOT NULL, x REAL)")
    return conn


def _statements(conn: sqlite3.Connection) -> list[str]:
    """The statements ``conn`` runs from now on (as SQLite traces them: values bound)."""
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    return seen


def _rows_per_statement(statements: list[str]) -> list[int]:
    return [s.count("), (") + 1 for s in statements]


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.text(max_size=8), st.integers(-5, 5), st.floats(allow_nan=False)),
        max_size=700,
        unique_by=lambda r: r[0],
    ),
    variables=st.integers(3, 2_000),
)
def test_rows_are_written_as_one_statement_per_row_writes_them(
    rows: list[tuple[str, int, float]], variables: int
) -> None:
    expected, got = _table(), _table()
    expected.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
    # a small variable limit (as older SQLite builds have) makes the chunks smaller
    got.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, variables)
    execute_rows(got, "INSERT INTO t VALUES {rows}", "(?, ?, ?)", rows)
    query = "SELECT k, n, x FROM t ORDER BY k"
    assert got.execute(query).fetchall() == expected.execute(query).fetchall()


def test_rows_go_in_full_chunks_then_powers_of_two() -> None:
    conn = _table()
    seen = _statements(conn)
    rows = [(str(i), i, 0.5) for i in range(2 * MAX_ROWS_PER_STATEMENT + 88)]
    execute_rows(conn, "INSERT INTO t VALUES {rows}", "(?, ?, ?)", rows)
    assert _rows_per_statement(seen) == [MAX_ROWS_PER_STATEMENT, MAX_ROWS_PER_STATEMENT, 64, 16, 8]
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (len(rows),)


def test_chunks_stay_under_the_variable_limit() -> None:
    conn = _table()
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 100)  # 33 rows of 3
    seen = _statements(conn)
    execute_rows(
        conn, "INSERT INTO t VALUES {rows}", "(?, ?, ?)", [(str(i), i, 0) for i in range(70)]
    )
    assert _rows_per_statement(seen) == [32, 32, 4, 2]


def test_upserts_and_deletes_by_value_lists() -> None:
    conn = _table()
    upsert = "INSERT INTO t VALUES {rows} ON CONFLICT (k) DO UPDATE SET n = n + excluded.n"
    execute_rows(conn, upsert, "(?, ?, NULL)", [("a", 1), ("b", 2), ("a", 3)])
    execute_rows(conn, upsert, "(?, ?, NULL)", [("b", -2), ("c", 1)])
    assert conn.execute("SELECT k, n FROM t ORDER BY k").fetchall() == [
        ("a", 4),
        ("b", 0),
        ("c", 1),
    ]
    execute_rows(
        conn, "DELETE FROM t WHERE k IN (VALUES {rows}) AND n <= 0", "(?)", [("b",), ("c",)]
    )
    assert conn.execute("SELECT k FROM t ORDER BY k").fetchall() == [("a",), ("c",)]


def test_no_rows_runs_nothing() -> None:
    conn = _table()
    seen = _statements(conn)
    execute_rows(conn, "INSERT INTO t VALUES {rows}", "(?, ?, ?)", [])
    assert seen == []


@settings(max_examples=40, deadline=None)
@given(
    keys=st.lists(st.text(max_size=4), max_size=300, unique=True),
    bounds=st.tuples(st.integers(-6, 6), st.integers(-6, 6)),
    variables=st.integers(3, 600),
)
def test_params_after_the_rows_are_bound_in_every_chunk(
    keys: list[str], bounds: tuple[int, int], variables: int
) -> None:
    rows = [(k, n) for k in [*keys, "kept"] for n in range(-5, 6)]
    expected, got = _table(), _table()
    for conn in (expected, got):
        conn.executemany("INSERT INTO t VALUES (?, ?, NULL)", [(f"{k}|{n}", n) for k, n in rows])
    lo, hi = bounds
    for k in keys:
        expected.execute(
            "DELETE FROM t WHERE k IN (SELECT ? || '|' || n FROM t) AND n BETWEEN ? AND ?",
            (k, lo, hi),
        )
    got.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, variables)
    execute_rows(
        got,
        "DELETE FROM t WHERE k IN (VALUES {rows}) AND n BETWEEN ? AND ?",
        "(?)",
        [(f"{k}|{n}",) for k in keys for n in range(-5, 6)],
        (lo, hi),
    )
    query = "SELECT k, n FROM t ORDER BY k"
    assert got.execute(query).fetchall() == expected.execute(query).fetchall()
