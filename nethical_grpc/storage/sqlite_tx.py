"""A transaction's end on an SQLite connection, shared by the SQLite stores."""

from __future__ import annotations

import contextlib
import sqlite3

__all__ = ["rollback_quietly"]


def rollback_quietly(conn: sqlite3.Connection) -> None:
    """``ROLLBACK`` after a failed statement, for the caller to raise the failure itself.

    SQLite ends the transaction by itself after some errors (a full disk, an I/O error),
    and then ``ROLLBACK`` fails with "no transaction is active": that second error would
    hide the first, so it is dropped.
    """
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")
