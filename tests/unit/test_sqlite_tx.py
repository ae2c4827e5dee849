"""A failed write on an SQLite store reports its own error, not the rollback's."""

from __future__ import annotations

import sqlite3

import pytest

from nethical_grpc.storage.sqlite_tx import rollback_quietly
from nethical_grpc.storage.timeseries.sqlite import _transaction


def test_the_first_error_is_the_one_raised() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (x)")

    def write() -> None:
        with _transaction(conn):
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
