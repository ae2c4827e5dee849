"""Review of the time-series stores: retention of millennia, a retention that drops many
day partitions, -0.0 on both backends, an oversized column batch.

PostgreSQL is the shared test server (``services.PG_URL``), each test in a schema of its
own.
"""

from __future__ import annotations

import math
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest
from services import PG_URL, fresh_schema

from nethical_grpc.storage.timeseries import (
    MetricPoint,
    TimeSeriesStore,
    TimeSeriesUnavailableError,
    open_timeseries,
)
from nethical_grpc.storage.timeseries.base import MAX_BATCH_ROWS
from nethical_grpc.storage.timeseries.model import MIN_WRITE_TIME
from nethical_grpc.storage.timeseries.postgres import PostgresTimeSeriesStore
from nethical_grpc.storage.timeseries.postgres_schema import DROP_DAYS_PER_TRANSACTION

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    with fresh_schema("ts_review36") as schema:
        yield schema


def _region() -> str:
    return f"r-{uuid.uuid4().hex[:10]}"


async def _open_both(pg_schema: str, **kwargs: object) -> tuple[TimeSeriesStore, TimeSeriesStore]:
    region = _region()
    lite, _ = await open_timeseries("memory://", region, **kwargs)  # type: ignore[arg-type]
    try:
        pg, choice = await open_timeseries(
            f"{PG_URL}?schema={pg_schema}",
            region,
            fallback=False,
            **kwargs,  # type: ignore[arg-type]
        )
    except BaseException:
        await lite.close()
        raise
    assert choice.backend.startswith("postgresql")
    return lite, pg


@pytest.mark.parametrize("retention", [timedelta(days=10**7), timedelta.max])
async def test_a_retention_of_millennia_keeps_everything(
    pg_schema: str, retention: timedelta
) -> None:
    # was: OverflowError ("date value out of range", or "Python int too large to convert
    # to SQLite INTEGER") from every apply_retention, on both backends
    lite, pg = await _open_both(pg_schema, retention=retention)
    try:
        for store in (lite, pg):
            await store.insert_metric("a", "m", 1.0, MIN_WRITE_TIME)
            await store.insert_metric("a", "m", 2.0, NOW)
            assert await store.apply_retention(NOW) == MIN_WRITE_TIME
            assert await store.apply_retention() == MIN_WRITE_TIME
            got = await store.query_metrics()
            assert [r.metric_value for r in got] == [1.0, 2.0], store.backend
    finally:
        await lite.close()
        await pg.close()


async def test_negative_zero_comes_back_the_same_from_both_backends(pg_schema: str) -> None:
    # SQLite stores a whole REAL as an integer and returned 0.0; PostgreSQL returned -0.0
    lite, pg = await _open_both(pg_schema)
    try:
        answers = []
        for store in (lite, pg):
            await store.insert_metrics([MetricPoint("a", "z", -0.0, NOW)])
            await store.insert_metric_values(
                "z", np.array([-0.0, -0.0]), int(NOW.timestamp()) * 10**9 + 1000
            )
            values = [r.metric_value for r in await store.query_metrics(metric_name="z")]
            lows = [r.value for r in await store.aggregate_metrics("z", "min", "1 s")]
            sums = [r.value for r in await store.aggregate_metrics("z", "sum", "1 min")]
            answers.append([math.copysign(1.0, v) for v in values + lows + sums])
        assert answers[0] == answers[1] == [1.0] * 5
    finally:
        await lite.close()
        await pg.close()


async def test_an_oversized_column_batch_is_refused_before_its_rows_are_built() -> None:
    store, _ = await open_timeseries("memory://", _region())
    try:
        values = np.zeros(MAX_BATCH_ROWS + 1)
        tracemalloc.start()
        try:
            with pytest.raises(ValueError, match=f"values: at most {MAX_BATCH_ROWS} per call"):
                await store.insert_metric_values("m", values, 1_700_000_000_000_000_000)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # was: four per-row lists and two timestamp arrays (~48 MB) before the refusal
        assert peak < 4 * 1024 * 1024
        assert await store.query_metrics() == []
    finally:
        await store.close()


async def test_retention_keeps_the_days_it_dropped_when_a_later_day_holds_it_up(
    pg_schema: str,
) -> None:
    # Dropping every old day in one transaction took ~19 locks a day, and a year of days
    # (retention shortened, or a backfill) overflowed the server's lock table ("out of
    # shared memory") at every attempt. Days now go in groups, each committed: here a
    # day of the second group is held by another session, and the first group stays
    # dropped when the call gives up.
    days = 2 * DROP_DAYS_PER_TRANSACTION + 8
    first = datetime(2025, 1, 1, tzinfo=UTC)
    store, _ = await open_timeseries(
        f"{PG_URL}?schema={pg_schema}", _region(), fallback=False, retention=timedelta(days=1)
    )
    assert isinstance(store, PostgresTimeSeriesStore)
    try:
        await store.insert_metrics(
            [MetricPoint("a", "m", 1.0, first + timedelta(days=d)) for d in range(days)]
            + [MetricPoint("a", "m", 2.0, NOW)]
        )
        held = first + timedelta(days=DROP_DAYS_PER_TRANSACTION + 4)
        store.write_timeout_s = 3.0
        with psycopg.connect(PG_URL) as blocker:  # a transaction until the block ends
            blocker.execute(f'LOCK TABLE "{pg_schema}".metrics_p{held:%Y%m%d} IN ACCESS SHARE MODE')
            with pytest.raises(TimeSeriesUnavailableError):
                await store.apply_retention(NOW)
            left = {
                r[0]
                for r in blocker.execute(
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE n.nspname = %s "
                    "AND c.relname LIKE 'metrics\\_p%%'",
                    (pg_schema,),
                ).fetchall()
            }
        gone = {f"metrics_p{first + timedelta(days=d):%Y%m%d}" for d in range(days)} - left
        assert len(gone) == DROP_DAYS_PER_TRANSACTION
        assert f"metrics_p{first:%Y%m%d}" in gone
        store.write_timeout_s = 30.0
        await store.apply_retention(NOW)
        assert [r.metric_value for r in await store.query_metrics(limit=1000)] == [2.0]
    finally:
        await store.close()
