"""A transaction's end, and a check of existing tables, on an SQLite connection, shared by
the SQLite stores."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Mapping

__all__ = ["missing_columns", "rollback_quietly", "schema_columns"]


def rollback_quietly(conn: sqlite3.Connection) -> None:
    """``ROLLBACK`` after a failed statement, for the caller to raise the failure itself.

    SQLite ends the transaction by itself after some errors (a full disk, an I/O error),
    and then ``ROLLBACK`` fails with "no transaction is active": that second error would
    hide the first, so it is dropped.
    """
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")


def missing_columns(
    conn: sqlite3.Connection, expected: Mapping[str, Iterable[str]]
) -> tuple[str, str] | None:
    """``(table, why)`` for the first table of ``expected`` (name → its columns) that
    exists in ``conn``'s database but is not that table: not a table, or lacking one of
    the columns; ``None`` when every one that exists has them all. Reads only."""
    for table, columns in expected.items():
        row = conn.execute("SELECT type FROM sqlite_master WHERE name = ?", (table,)).fetchone()
        if row is None:
            continue
        if row[0] != "table":
            return table, f"not a table but a {row[0]}"
        have = {r[1] for r in conn.execute("SELECT * FROM pragma_table_info(?)", (table,))}
        missing = sorted(set(columns) - have)
        if missing:
            what = "column" if len(missing) == 1 else "columns"
            return table, f"no {what} {', '.join(missing)}"
    return None


def schema_columns(schema: str | Iterable[str]) -> dict[str, list[str]]:
    """Table → its columns, as ``schema`` (a script, or statements) makes them, run in a
    scratch in-memory database: what :func:`missing_columns` expects of a store's file."""
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        if isinstance(schema, str):
            conn.executescript(schema)
        else:
            for statement in schema:
                conn.execute(statement)
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            name: [r[1] for r in conn.execute("SELECT * FROM pragma_table_info(?)", (name,))]
            for name in names
        }
