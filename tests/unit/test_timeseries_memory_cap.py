"""The row cap of the SQLite time-series store (``max_rows``), what bounds an in-memory
store: the newest rows are kept, per table, in the write's own transaction; the rollup is
not capped. Real SQLite, no mocks."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nethical_grpc.storage.timeseries import AggregateRow, MetricPoint, WindowSummaryRow
from nethical_grpc.storage.timeseries.factory import DEFAULT_MEMORY_MAX_ROWS, open_timeseries
from nethical_grpc.storage.timeseries.sqlite import CAPPED_TABLES, SQLiteTimeSeriesStore

BASE = datetime(2026, 3, 1, tzinfo=UTC)
REGION = "r1"
W = 10_000_000_000  # window width, ns


@pytest.fixture
async def capped() -> AsyncIterator[SQLiteTimeSeriesStore]:
    store = await SQLiteTimeSeriesStore.open(None, region_id=REGION, max_rows=10)
    yield store
    await store.close()


def metric_points(start: int, n: int) -> list[MetricPoint]:
    """Points ``start .. start+n-1``: point i is at BASE + i s with value i / 4."""
    return [
        MetricPoint("agent-0", "risk", i / 4, BASE + timedelta(seconds=i))
        for i in range(start, start + n)
    ]


async def kept_seconds(store: SQLiteTimeSeriesStore) -> list[int]:
    rows = await store.query_metrics(limit=100_000)
    for r in rows:
        assert r.metric_value == (r.timestamp - BASE).total_seconds() / 4
    return [int((r.timestamp - BASE).total_seconds()) for r in rows]


def window(instance: str, start: int, payload: bytes = b"p") -> WindowSummaryRow:
    return WindowSummaryRow(REGION, instance, "latency_ms", {"a": "1"}, start, W, payload, 1)


async def table_counts(store: SQLiteTimeSeriesStore) -> dict[str, int]:
    """Each capped table's rows, counted by SQLite (on the store's connection thread)."""
    return {
        t: (await store._run(store._fetch, f"SELECT count(*) FROM {t}", {}))[0][0]
        for t in CAPPED_TABLES
    }


# --------------------------------------------------------------------------- metrics


async def test_metrics_in_batches_keep_the_newest(capped: SQLiteTimeSeriesStore) -> None:
    assert capped.max_rows == 10 and capped.rows_dropped == 0
    await capped.insert_metrics(metric_points(0, 6))
    assert await kept_seconds(capped) == list(range(6))
    assert capped.rows_dropped == 0
    await capped.insert_metrics(metric_points(6, 4))  # exactly at the cap
    assert capped.rows_dropped == 0
    await capped.insert_metrics(metric_points(10, 7))
    assert await kept_seconds(capped) == list(range(7, 17))
    assert capped.rows_dropped == 7
    for start in range(17, 40, 3):  # 23 more points, 3 at a time
        await capped.insert_metrics(metric_points(start, min(3, 40 - start)))
    assert await kept_seconds(capped) == list(range(30, 40))
    assert capped.rows_dropped == 40 - 10
    assert (await table_counts(capped))["metrics"] == 10


async def test_one_batch_larger_than_the_cap(capped: SQLiteTimeSeriesStore) -> None:
    await capped.insert_metrics(metric_points(0, 4))
    assert await capped.insert_metrics(metric_points(4, 25)) == 25
    assert await kept_seconds(capped) == list(range(19, 29))
    assert capped.rows_dropped == 29 - 10
    # the columnar insert is capped the same way
    ns = [int((BASE + timedelta(seconds=s)).timestamp()) * 10**9 for s in range(100, 130)]
    await capped.insert_metric_values("risk", [s / 4 for s in range(100, 130)], ns)
    assert await kept_seconds(capped) == list(range(120, 130))
    assert capped.rows_dropped == 59 - 10


async def test_oldest_means_earliest_written_not_earliest_timestamp(
    capped: SQLiteTimeSeriesStore,
) -> None:
    """A late point (old timestamp, written last) is the newest row: it is kept."""
    await capped.insert_metrics(metric_points(100, 10))
    await capped.insert_metrics(metric_points(0, 1))
    assert await kept_seconds(capped) == [0, *range(101, 110)]


async def test_rollup_aggregates_count_every_point(capped: SQLiteTimeSeriesStore) -> None:
    """Whole-minute aggregates read the (uncapped) rollup; raw reads see the kept rows."""
    for start in range(0, 120, 8):  # 120 points, 1 s apart: minutes 0 and 1
        await capped.insert_metrics(metric_points(start, 8))
    assert capped.rows_dropped == 110
    minute = timedelta(minutes=1)
    sums = [sum(i / 4 for i in range(m * 60, m * 60 + 60)) for m in (0, 1)]
    assert await capped.aggregate_metrics("risk", "count", "1 minute") == [
        AggregateRow(BASE, 60.0, 60),
        AggregateRow(BASE + minute, 60.0, 60),
    ]
    assert await capped.aggregate_metrics("risk", "sum", "1 hour") == [
        AggregateRow(BASE, sum(sums), 120)
    ]
    # an agent filter (or a width that is not whole minutes) reads the capped raw table
    assert await capped.aggregate_metrics("risk", "count", "1 minute", agent_id="agent-0") == [
        AggregateRow(BASE + minute, 10.0, 10)
    ]
    assert await capped.aggregate_metrics("risk", "count", 90) == [
        AggregateRow(BASE + timedelta(seconds=90), 10.0, 10)
    ]


# --------------------------------------------------------------------------- windows


async def test_window_reflushes_are_not_new_rows(capped: SQLiteTimeSeriesStore) -> None:
    first = [window("i1", k * W) for k in range(10)]
    assert await capped.upsert_window_summaries(first) == 10
    # the same windows again, with new payloads: updated in place, nothing dropped
    again = [window("i1", k * W, b"new") for k in range(10)]
    assert await capped.upsert_window_summaries(again) == 10
    # and a flush holding one key twice (the last wins) plus a re-flush
    assert await capped.upsert_window_summaries([window("i1", 0, b"x"), window("i1", 0)]) == 1
    assert capped.rows_dropped == 0
    rows = await capped.load_window_summaries(REGION)
    assert [r.window_start_ns for r in rows] == [k * W for k in range(10)]
    assert [r.payload for r in rows] == [b"p"] + [b"new"] * 9
    # three new windows and one re-flush in one call: the three oldest windows go
    mixed = [window("i1", 10 * W), window("i1", 5 * W, b"re"), window("i2", 0), window("i2", W)]
    assert await capped.upsert_window_summaries(mixed) == 4
    assert capped.rows_dropped == 3
    rows = await capped.load_window_summaries(REGION)
    assert sorted((r.instance_id, r.window_start_ns) for r in rows) == sorted(
        [("i1", k * W) for k in range(3, 11)] + [("i2", 0), ("i2", W)]
    )
    assert next(r.payload for r in rows if r.window_start_ns == 5 * W) == b"re"
    assert (await table_counts(capped))["window_summaries"] == 10


async def test_deleted_windows_make_room(capped: SQLiteTimeSeriesStore) -> None:
    await capped.upsert_window_summaries([window("i1", k * W) for k in range(10)])
    assert await capped.delete_window_summaries_before(REGION, 4 * W) == 4
    await capped.upsert_window_summaries([window("i1", k * W) for k in range(10, 14)])
    assert capped.rows_dropped == 0
    await capped.upsert_window_summaries([window("i1", 14 * W)])
    assert capped.rows_dropped == 1
    starts = [r.window_start_ns // W for r in await capped.load_window_summaries(REGION)]
    assert starts == list(range(5, 15))


# --------------------------------------------------------------------------- events, audit


async def test_events_and_audit_logs_keep_the_newest(capped: SQLiteTimeSeriesStore) -> None:
    event_ids = []
    for i in range(15):
        event_ids.append(await capped.insert_event("e", timestamp=BASE + timedelta(seconds=i)))
        await capped.insert_audit_log(
            f"act-{i}", "agent-0", "ALLOW", timestamp=BASE + timedelta(seconds=i)
        )
    # a retry of a kept event stores nothing new, so drops nothing
    await capped.insert_event(
        "e", timestamp=BASE + timedelta(seconds=14), event_id=uuid.UUID(event_ids[14])
    )
    assert [e.event_id for e in await capped.query_events()] == event_ids[5:]
    assert [a.action_id for a in await capped.query_audit_logs()] == [
        f"act-{i}" for i in range(5, 15)
    ]
    assert capped.rows_dropped == 5 + 5
    assert await table_counts(capped) == {
        "metrics": 0,
        "events": 10,
        "audit_logs": 10,
        "window_summaries": 0,
    }


async def test_tables_are_capped_separately(capped: SQLiteTimeSeriesStore) -> None:
    await capped.insert_metrics(metric_points(0, 10))
    for i in range(3):
        await capped.insert_event("e", timestamp=BASE + timedelta(seconds=i))
    await capped.upsert_window_summaries([window("i1", 0)])
    assert capped.rows_dropped == 0
    assert await table_counts(capped) == {
        "metrics": 10,
        "events": 3,
        "audit_logs": 0,
        "window_summaries": 1,
    }


async def test_retention_makes_room() -> None:
    store = await SQLiteTimeSeriesStore.open(
        None, region_id=REGION, retention=timedelta(days=1), max_rows=10
    )
    try:
        old = [MetricPoint("a", "risk", 1.0, BASE - timedelta(days=5, seconds=i)) for i in range(6)]
        await store.insert_metrics(old)
        await store.insert_event("e", timestamp=BASE - timedelta(days=5))
        await store.apply_retention(now=BASE)  # the old rows go by time, not by the cap
        assert (await table_counts(store))["metrics"] == 0
        await store.insert_metrics(metric_points(0, 10))
        await store.insert_event("e", timestamp=BASE)
        assert store.rows_dropped == 0
        await store.insert_metrics(metric_points(10, 1))
        assert store.rows_dropped == 1
        assert await kept_seconds(store) == list(range(1, 11))
    finally:
        await store.close()


async def test_a_refused_batch_drops_nothing(capped: SQLiteTimeSeriesStore) -> None:
    await capped.insert_metrics(metric_points(0, 10))
    with pytest.raises(ValueError, match="must be finite"):
        await capped.insert_metrics([*metric_points(10, 3), MetricPoint("a", "r", float("nan"))])
    await capped.insert_metrics(metric_points(10, 1))
    assert capped.rows_dropped == 1
    assert await kept_seconds(capped) == list(range(1, 11))


async def test_no_cap_keeps_everything() -> None:
    store = await SQLiteTimeSeriesStore.open(None, region_id=REGION)
    try:
        assert store.max_rows is None
        await store.insert_metrics(metric_points(0, 50))
        await store.upsert_window_summaries([window("i1", k * W) for k in range(30)])
        assert store.rows_dropped == 0
        assert len(await kept_seconds(store)) == 50
        assert (await table_counts(store))["window_summaries"] == 30
    finally:
        await store.close()


async def test_a_capped_file_store_counts_inside_the_transaction(tmp_path: Path) -> None:
    """Two stores on one file: each write trims to the cap, whoever wrote the rest."""
    path = str(tmp_path / "ts.db")
    one = await SQLiteTimeSeriesStore.open(path, region_id=REGION, max_rows=10)
    two = await SQLiteTimeSeriesStore.open(path, region_id=REGION, max_rows=10)
    try:
        await one.insert_metrics(metric_points(0, 8))
        await two.insert_metrics(metric_points(8, 8))
        assert two.rows_dropped == 6 and one.rows_dropped == 0
        await one.insert_metrics(metric_points(16, 1))
        assert one.rows_dropped == 1
        assert await kept_seconds(two) == list(range(7, 17))
        await one.upsert_window_summaries([window("i1", k * W) for k in range(10)])
        await two.upsert_window_summaries([window("i1", k * W, b"2") for k in range(10)])
        assert two.rows_dropped == 6
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT count(*) FROM window_summaries").fetchone()[0] == 10
    finally:
        await one.close()
        await two.close()


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "max_rows: must be at least 1"),
        (-5, "max_rows: must be at least 1"),
        (True, "max_rows: must be an int or None, got bool"),
        (10.0, "max_rows: must be an int or None, got float"),
        ("10", "max_rows: must be an int or None, got str"),
    ],
)
async def test_bad_max_rows_is_refused(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await SQLiteTimeSeriesStore.open(None, region_id=REGION, max_rows=value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message.replace("max_rows", "memory_max_rows")):
        await open_timeseries("memory://", REGION, memory_max_rows=value)  # type: ignore[arg-type]


async def test_max_rows_of_one() -> None:
    store = await SQLiteTimeSeriesStore.open(None, region_id=REGION, max_rows=1)
    try:
        await store.insert_metrics(metric_points(0, 5))
        assert await kept_seconds(store) == [4]
        assert store.rows_dropped == 4
    finally:
        await store.close()


# --------------------------------------------------------------------------- factory


async def test_factory_caps_memory_stores_only(tmp_path: Path) -> None:
    opened = [
        await open_timeseries("memory://", REGION),
        await open_timeseries("sqlite:///:memory:", REGION),
        await open_timeseries("memory://", REGION, memory_max_rows=7),
        await open_timeseries("memory://", REGION, memory_max_rows=None),
        await open_timeseries(f"sqlite://{tmp_path}/ts.db", REGION, memory_max_rows=7),
    ]
    try:
        stores = [s for s, _ in opened]
        assert all(isinstance(s, SQLiteTimeSeriesStore) for s in stores)
        caps = [s.max_rows for s in stores if isinstance(s, SQLiteTimeSeriesStore)]
        assert caps == [DEFAULT_MEMORY_MAX_ROWS, DEFAULT_MEMORY_MAX_ROWS, 7, None, None]
        assert [c.backend for _, c in opened] == ["sqlite (memory)"] * 4 + ["sqlite"]
    finally:
        for s, _ in opened:
            await s.close()


async def test_the_postgres_fallback_is_capped() -> None:
    """Nothing listens on port 1: the in-memory fallback gets ``memory_max_rows``."""
    url = "postgresql://nethical@127.0.0.1:1/ts"
    store, choice = await open_timeseries(url, REGION, connect_timeout=2, memory_max_rows=3)
    try:
        assert choice.fallback and choice.backend == "sqlite (memory)"
        assert isinstance(store, SQLiteTimeSeriesStore) and store.max_rows == 3
        await store.insert_metrics(metric_points(0, 5))
        assert [r.metric_value for r in await store.query_metrics()] == [0.5, 0.75, 1.0]
    finally:
        await store.close()


# --------------------------------------------------------------------------- property


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cap=st.integers(1, 12),
    writes=st.lists(
        st.one_of(
            st.tuples(st.just("metrics"), st.integers(1, 30)),
            st.tuples(st.just("windows"), st.lists(st.integers(0, 20), min_size=1, max_size=8)),
        ),
        max_size=12,
    ),
)
async def test_cap_property(cap: int, writes: list[tuple[str, object]]) -> None:
    """Against a model: the newest ``cap`` metric rows, the ``cap`` most recently
    inserted window keys (a re-flush keeps its place), the drop count, and the store's own
    row counts equal to SQLite's."""
    store = await SQLiteTimeSeriesStore.open(None, region_id=REGION, max_rows=cap)
    try:
        written = 0
        model_windows: list[int] = []  # window keys, in insertion order
        dropped = 0
        for kind, arg in writes:
            if kind == "metrics":
                assert isinstance(arg, int)
                await store.insert_metrics(metric_points(written, arg))
                written += arg
            else:
                assert isinstance(arg, list)
                await store.upsert_window_summaries([window("i1", k * W) for k in arg])
                for k in arg:
                    if k not in model_windows:
                        model_windows.append(k)
                excess = max(0, len(model_windows) - cap)
                dropped += excess
                model_windows = model_windows[excess:]
        dropped += max(0, written - cap)
        assert await kept_seconds(store) == list(range(max(0, written - cap), written))
        kept = [r.window_start_ns // W for r in await store.load_window_summaries(REGION)]
        assert kept == sorted(model_windows)
        assert store.rows_dropped == dropped
        counts = await table_counts(store)
        assert store._rows == counts
    finally:
        await store.close()
