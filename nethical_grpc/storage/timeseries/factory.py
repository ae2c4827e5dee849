"""Open the region's time-series store from a URL, falling back to embedded SQLite.

=========================================  ==========================================
URL                                        store
=========================================  ==========================================
``postgresql://user@host:5432/db``         PostgreSQL (TimescaleDB when available),
``postgresql://…?schema=NAME``             tables in schema NAME (default ``nethical``)
``sqlite:///var/lib/nethical/ts.db``       SQLite file (WAL); everything after
                                           ``sqlite://`` is the path
``sqlite:///…?cache_mib=16``               the same, with a 16 MiB page cache
                                           (default 64 MiB; see ``sqlite_url``)
``memory://``, ``sqlite:///:memory:``      SQLite in memory (lost on exit), keeping
                                           the newest ``memory_max_rows`` rows per
                                           table (default 100,000)
=========================================  ==========================================

A PostgreSQL server that cannot be reached (refused, timed out, bad credentials, missing
database) or a missing psycopg gives an in-memory SQLite store instead, with the reason in
the returned :class:`~nethical_grpc.storage.backend.BackendChoice`, unless
``fallback=False``. Any other error (e.g. no privilege to create the schema) is raised.

Every in-memory store (``memory://``, ``sqlite:///:memory:`` and that fallback) is capped:
each of its metrics, events, audit-log and window-summary tables keeps its newest
``memory_max_rows`` rows (the oldest are deleted by the write that goes past it), so a
long-running node's memory stays bounded whatever the retention; the per-minute rollup is
not capped, so whole-minute aggregates still count every point. File and PostgreSQL
stores have no cap: their bound is the time retention.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from nethical_grpc.errors import first_line
from nethical_grpc.storage.backend import (
    DEFAULT_MEMORY_BOUND,
    BackendChoice,
    check_row_bound,
    redact_url,
    url_scheme,
)
from nethical_grpc.storage.sqlite_url import parse_sqlite_url
from nethical_grpc.storage.timeseries.base import TimeSeriesStore, check_retention
from nethical_grpc.storage.timeseries.model import check_name
from nethical_grpc.storage.timeseries.sqlite import SQLiteTimeSeriesStore

__all__ = ["DEFAULT_MEMORY_MAX_ROWS", "DEFAULT_RETENTION", "open_timeseries"]

log = logging.getLogger(__name__)

DEFAULT_RETENTION = timedelta(days=30)
DEFAULT_MEMORY_MAX_ROWS = DEFAULT_MEMORY_BOUND
"""Rows an in-memory store keeps per table (a node's metric rows took about 0.24 KiB each:
116 MiB for 500,000 rows of 50 agents with shared metadata); each other table has the
same cap."""
STORE = "timeseries"
MEMORY_BACKEND = "sqlite (memory)"


def _connect_failure_reason(exc: BaseException) -> str:
    """A short, secret-free reason for a failed connection, e.g.
    ``unreachable (connection refused)`` or ``authentication failed``."""
    text = str(exc).lower()
    for needle, reason in (
        ("connection refused", "unreachable (connection refused)"),
        ("timeout", "unreachable (timed out)"),
        ("timed out", "unreachable (timed out)"),
        ("could not translate host name", "unreachable (unknown host)"),
        ("name or service not known", "unreachable (unknown host)"),
        ("no route to host", "unreachable (no route to host)"),
        ("network is unreachable", "unreachable (network unreachable)"),
        ("no such file or directory", "unreachable (no server socket)"),
        ("authentication failed", "authentication failed"),
        ("does not exist", "database or role does not exist"),
    ):
        if needle in text:
            return reason
    return f"unavailable ({first_line(exc)[:120]})"


async def open_timeseries(
    url: str,
    region_id: str,
    *,
    retention: timedelta | None = DEFAULT_RETENTION,
    schema: str | None = None,
    fallback: bool = True,
    connect_timeout: float = 5.0,
    pool_min_size: int = 1,
    pool_max_size: int = 4,
    memory_max_rows: int | None = DEFAULT_MEMORY_MAX_ROWS,
) -> tuple[TimeSeriesStore, BackendChoice]:
    """Open the time-series store of ``region_id`` named by ``url``.

    Returns the store and what was chosen (``BackendChoice.store == "timeseries"``;
    ``backend`` is ``"postgresql (partitioned)"``, ``"postgresql (timescaledb)"``,
    ``"sqlite"`` or ``"sqlite (memory)"``). ``retention`` applies to
    :meth:`TimeSeriesStore.apply_retention` (``None``: keep forever); ``schema`` overrides
    a PostgreSQL URL's ``?schema=``. ``memory_max_rows`` caps each table of an in-memory
    store, including the fallback (``None``: no cap; see the module); file and PostgreSQL
    stores are not capped.

    ``ValueError`` for an unknown scheme, a bad region id, schema, retention or
    ``memory_max_rows`` (an int ≥ 1 or None).
    """
    scheme = url_scheme(url)
    requested = redact_url(url)
    check_name("region_id", region_id)
    check_retention(retention)
    memory_cap = check_row_bound("memory_max_rows", memory_max_rows)
    if scheme == "memory":
        store = await SQLiteTimeSeriesStore.open(
            None, region_id=region_id, retention=retention, max_rows=memory_cap
        )
        return store, BackendChoice(STORE, requested, MEMORY_BACKEND)
    if scheme == "sqlite":
        parsed = parse_sqlite_url(url, STORE)
        path = parsed.path
        store = await SQLiteTimeSeriesStore.open(
            path,
            region_id=region_id,
            retention=retention,
            max_rows=memory_cap if path is None else None,
            cache_mib=parsed.cache_mib,
        )
        return store, BackendChoice(STORE, requested, "sqlite" if path else MEMORY_BACKEND)
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(
            f"timeseries URL: unsupported scheme {scheme!r} "
            "(use postgresql://…, sqlite:///PATH or memory://)"
        )
    try:
        import psycopg

        from nethical_grpc.storage.timeseries.postgres import PostgresTimeSeriesStore
    except ImportError as exc:
        if not fallback:
            raise
        reason = f"psycopg not installed ({exc.name})"
    else:
        try:
            pg = await PostgresTimeSeriesStore.open(
                url,
                region_id=region_id,
                retention=retention,
                schema=schema,
                min_size=pool_min_size,
                max_size=pool_max_size,
                connect_timeout=connect_timeout,
            )
        except psycopg.OperationalError as exc:
            if not fallback:
                raise
            reason = _connect_failure_reason(exc)
        else:
            return pg, BackendChoice(STORE, requested, f"postgresql ({pg.layout})")
    choice = BackendChoice(STORE, requested, MEMORY_BACKEND, reason)
    log.warning("time-series store: %s", choice.describe())
    store = await SQLiteTimeSeriesStore.open(
        None, region_id=region_id, retention=retention, max_rows=memory_cap
    )
    return store, choice
