"""Edge cases of the time-series store where the backends used to part ways, or a bad input
got past validation: run against SQLite and the real PostgreSQL (127.0.0.1:5432, or
``NETHICAL_TEST_POSTGRES_URL``), in a schema of this module's own, dropped afterwards."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from services import PG_URL, fresh_schema

from nethical_grpc.storage.timeseries import (
    MetricPoint,
    TimeSeriesStore,
    WindowSummaryRow,
    open_timeseries,
)
from nethical_grpc.storage.timeseries.model import MAX_ABS_VALUE, MAX_WRITE_TIME

BASE = datetime(2026, 3, 1, tzinfo=UTC)
BASE_NS = int(BASE.timestamp()) * 1_000_000_000


@pytest.fixture(scope="module")
def pg_schema() -> Iterator[str]:
    with fresh_schema("ts_review") as schema:
        yield schema


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TimeSeriesStore]:
    region = f"r-{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        opened, _ = await open_timeseries("memory://", region)
    else:
        schema = request.getfixturevalue("pg_schema")
        opened, _ = await open_timeseries(f"{PG_URL}?schema={schema}", region, fallback=False)
    yield opened
    await opened.close()


# --------------------------------------------------------------------------- huge values


async def test_values_too_large_to_sum_are_refused_by_both_backends(
    store: TimeSeriesStore,
) -> None:
    """PostgreSQL refused a write whose rollup sum overflowed (and every later one of that
    minute: ``NumericValueOutOfRange``, the whole batch lost), and a raw sum that did;
    SQLite stored it and answered an average of ``inf``. Now both refuse the value."""
    for big in (1e308, -1e308, 1e101, np.float64(2e100)):
        with pytest.raises(
            ValueError, match=r"^points\[0\]\.metric_value: must be within ±1e\+100"
        ):
            await store.insert_metric("a", "big", big, BASE)
    batch = [MetricPoint("a", "big", 1.0, BASE), MetricPoint("a", "big", 1e300, BASE)]
    with pytest.raises(ValueError, match=r"^points\[1\]\.metric_value: "):
        await store.insert_metrics(batch)
    with pytest.raises(ValueError, match=r"^points\[0\]\.metric_value: "):
        await store.insert_metrics([MetricPoint("a", "big", 10**400, BASE)])  # OverflowError
    with pytest.raises(ValueError, match=r"^values\[1\]: "):
        await store.insert_metric_values("big", [1.0, -1e200], BASE_NS)
    with pytest.raises(ValueError, match=r"^values: "):
        await store.insert_metric_values("big", [10**400], BASE_NS)
    assert await store.query_metrics(metric_name="big") == []
    # the bound itself is accepted, and sums of it stay finite and equal on both backends
    await store.insert_metric("a", "big", MAX_ABS_VALUE, BASE)
    await store.insert_metric("a", "big", MAX_ABS_VALUE, BASE + timedelta(seconds=1))
    await store.insert_metric_values("big", [-MAX_ABS_VALUE], BASE_NS + 2_000_000_000)
    for width in ("1 minute", "1 s"):
        rows = await store.aggregate_metrics("big", "sum", width)
        assert sum(r.count for r in rows) == 3
        assert all(np.isfinite(r.value) for r in rows)
    [minute] = await store.aggregate_metrics("big", "avg", "1 minute")
    assert minute.value == pytest.approx(MAX_ABS_VALUE / 3)


# --------------------------------------------------------------------------- timestamps


async def test_unsigned_timestamps_beyond_int64_are_refused(store: TimeSeriesStore) -> None:
    """NumPy makes ``[2**64 - 1]`` a uint64 array; cast to int64 it wrapped to -1 ns and
    the value was stored at 1969-12-31T23:59:59.999999 instead of being refused."""
    huge = 2**64 - 1
    for stamps in ([huge], np.array([huge], dtype=np.uint64), huge):
        with pytest.raises(ValueError, match=r"^timestamps_ns\[0\]: "):
            await store.insert_metric_values("m", [1.0], stamps)
    with pytest.raises(ValueError, match=r"^timestamps_ns\[1\]: "):
        await store.insert_metric_values(
            "m", [1.0, 2.0], np.array([BASE_NS, 2**63], dtype=np.uint64)
        )
    assert await store.query_metrics() == []
    # unsigned timestamps in range are fine
    written = await store.insert_metric_values(
        "m", [1.0], np.array([BASE_NS + 1_500], dtype=np.uint64)
    )
    assert written == 1
    [row] = await store.query_metrics()
    assert row.timestamp == BASE + timedelta(microseconds=1)


async def test_retention_at_the_end_of_the_writable_range() -> None:
    """PostgreSQL prepared day partitions past 9999-12-31 and failed with OverflowError
    (SQLite applied it). A schema of its own: it drops every day partition before 9999."""
    last = MAX_WRITE_TIME - timedelta(microseconds=1)
    with fresh_schema("ts_review") as schema:
        for url in ("memory://", f"{PG_URL}?schema={schema}"):
            store, _ = await open_timeseries(
                url, "r-end", retention=timedelta(days=1), fallback=False
            )
            try:
                await store.insert_metric("a", "m", 1.0, last)
                await store.insert_metric("a", "m", 2.0, last - timedelta(days=2))
                cutoff = await store.apply_retention(now=last)
                assert cutoff == datetime(9999, 12, 29, tzinfo=UTC), url
                assert [r.metric_value for r in await store.query_metrics()] == [1.0], url
            finally:
                await store.close()


# --------------------------------------------------------------------------- unicode


async def test_lone_surrogates_are_refused_naming_the_field(store: TimeSeriesStore) -> None:
    """A string no database can store (UTF-8 has no lone surrogates) is a ``ValueError``
    naming its field, raised before anything is written; it was a bare
    ``UnicodeEncodeError`` from the driver, or ``points[0].'utf-8' codec can't…``."""
    bad = "x\ud800"
    cases: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        (r"^points\[0\]\.metric_name: ", lambda: store.insert_metric("a", bad, 1.0, BASE)),
        (
            r"^points\[0\]\.agent_id: ",
            lambda: store.insert_metrics([MetricPoint(bad, "m", 1.0, BASE)]),
        ),
        (
            r"^points\[1\]\.metric_name: ",
            lambda: store.insert_metrics(
                [MetricPoint("a", "m", 1.0, BASE), MetricPoint("a", bad, 1.0)]
            ),
        ),
        (
            r"^points\[0\]\.metadata: ",
            lambda: store.insert_metric("a", "m", 1.0, BASE, metadata={"k": {"n": [bad]}}),
        ),
        (
            r"^metadata: ",
            lambda: store.insert_metric_values("m", [1.0], BASE_NS, metadata={bad: 1}),
        ),
        (r"^agent_id: ", lambda: store.insert_metric_values("m", [1.0], BASE_NS, agent_id=bad)),
        (r"^event_type: ", lambda: store.insert_event(bad)),
        (r"^data: ", lambda: store.insert_event("e", data={"k": bad})),
        (r"^violations: ", lambda: store.insert_audit_log("act", "a", "BLOCK", violations=[bad])),
        (
            r"^rows\[0\]\.labels: ",
            lambda: store.upsert_window_summaries(
                [WindowSummaryRow("r", "i", "m", {"k": bad}, 0, 10, b"x")]
            ),
        ),
        (
            r"^rows\[0\]\.instance_id: ",
            lambda: store.upsert_window_summaries(
                [WindowSummaryRow("r", bad, "m", {}, 0, 10, b"x")]
            ),
        ),
        (r"^metric_name: ", lambda: store.query_metrics(metric_name=bad)),
        (r"^agent_id: ", lambda: store.aggregate_metrics("m", agent_id=bad)),
        (r"^severity: ", lambda: store.query_events(severity=bad)),
    ]
    for pattern, call in cases:
        with pytest.raises(ValueError, match=pattern) as info:
            await call()
        assert not isinstance(info.value, UnicodeError), info.value
    assert await store.query_metrics() == []
    assert await store.query_events() == []
    assert await store.query_audit_logs() == []
    # other non-ASCII text is stored and comes back as written
    await store.insert_metric("agént-ü", "métrique-😀", 1.0, BASE, metadata={"ключ": "值"})
    [row] = await store.query_metrics(agent_id="agént-ü")
    assert (row.metric_name, row.metadata) == ("métrique-😀", {"ключ": "值"})


# --------------------------------------------------------------------------- ordering


def _json_bytes(value: object) -> bytes:
    """The stored text of a metadata document: compact, keys sorted, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


async def test_rows_tied_but_for_metadata_come_back_in_one_order(store: TimeSeriesStore) -> None:
    """Rows equal in time, metric, agent and value but not in metadata came back in
    storage order: each backend listed them differently, and a ``limit`` cut a different
    set. Metadata is the last key: its JSON text in byte order, none first."""
    metas: list[dict[str, object] | None] = [
        {"d": "x"},
        None,
        {"d": "é"},
        {"d": "w", "a": 1},
        {"d": "w"},
        {"d": "z"},
        None,
        {"d": "w"},
        {"b": [1, {"c": "ü"}]},
    ]
    tied = [MetricPoint("a", "m", 1.0, BASE, metadata=m) for m in metas]
    await store.insert_metrics(tied)
    await store.insert_metrics(list(reversed(tied)))
    want = sorted(
        metas * 2,
        key=lambda m: (m is not None, "" if m is None else _json_bytes(m)),
    )
    assert [r.metadata for r in await store.query_metrics()] == want
    for limit in (1, 3, 7):
        assert [r.metadata for r in await store.query_metrics(limit=limit)] == want[:limit]
