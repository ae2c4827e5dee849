"""A write transaction and its end, a check of existing tables and multi-row statements on
an SQLite connection, shared by the SQLite stores."""

from __future__ import annotations

import contextlib
import functools
import itertools
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Final

__all__ = [
    "execute_rows",
    "missing_columns",
    "rollback_quietly",
    "schema_columns",
    "write_transaction",
]

#: The most rows one statement of :func:`execute_rows` carries (a power of two).
MAX_ROWS_PER_STATEMENT: Final = 256


def rollback_quietly(conn: sqlite3.Connection) -> None:
    """``ROLLBACK`` after a failed statement, for the caller to raise the failure itself.

    SQLite ends the transaction by itself after some errors (a full disk, an I/O error),
    and then ``ROLLBACK`` fails with "no transaction is active": that second error would
    hide the first, so it is dropped.
    """
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any exception (the commit's too)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise


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


def execute_rows(
    conn: sqlite3.Connection,
    sql: str,
    group: str,
    rows: Sequence[Sequence[object]],
    params: Sequence[object] = (),
) -> None:
    """Run ``sql`` for ``rows`` with a few multi-row statements, not one step per row.

    ``sql`` holds ``{rows}`` where the rows go, as ``group`` (one row's placeholders, e.g.
    ``(?, ?)``) repeated and comma-separated: ``INSERT INTO t VALUES {rows}``, ``DELETE
    FROM t WHERE k IN (VALUES {rows})``. ``params`` fill the placeholders that follow
    ``{rows}`` in ``sql``, the same in every statement (``… IN (VALUES {rows}) AND seq
    BETWEEN ? AND ?``). Rows go in chunks of :data:`MAX_ROWS_PER_STATEMENT`,
    and the rest in power-of-two chunks (200 rows: 128 + 64 + 8), so a table needs at most
    nine statement shapes (the connection's statement cache keeps them prepared).

    Why: the ``sqlite3`` module lets go of the interpreter lock for each step of a
    statement and takes it back after, so ``executemany`` on a writer thread asks for the
    lock once per row. While the event loop holds it, each ask waits for the loop's
    switch interval and then interrupts it: on a busy node a 200-row ``executemany``
    cost the writer 5-10 times the CPU it costs alone, and the loop a forced switch per row.
    A multi-row statement asks once per chunk.
    """
    if not rows:
        return
    width = group.count("?")
    fixed = list(params)
    limit = (conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - len(fixed)) // max(width, 1)
    chunk = MAX_ROWS_PER_STATEMENT
    while chunk > 1 and chunk > limit:
        chunk //= 2
    start = 0
    while start < len(rows):
        left = len(rows) - start
        size = chunk if left >= chunk else 1 << (left.bit_length() - 1)
        part = rows[start : start + size]
        conn.execute(_statement(sql, group, size), [*itertools.chain.from_iterable(part), *fixed])
        start += size


@functools.lru_cache(maxsize=256)
def _statement(sql: str, group: str, size: int) -> str:
    return sql.replace("{rows}", ", ".join([group] * size))
