"""The time-series store contract, run against both backends: SQLite and a real PostgreSQL.

PostgreSQL is the server at 127.0.0.1:5432 (``NETHICAL_TEST_POSTGRES_URL`` overrides). This
module uses one schema, dropped afterwards; each test writes under its own region id (the
region is part of every key), and tests that drop data or create schemas use a fresh
schema of their own. Without PostgreSQL the PostgreSQL cases skip, or fail when ``CI`` is
set. Values are multiples of 1/4 or 1/8, so every sum is exact and both backends must agree
bit for bit.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from services import PG_URL, fresh_schema

from nethical_grpc.storage.timeseries import (
    AggregateRow,
    MetricPoint,
    TimeSeriesStore,
    WindowSummaryRow,
    open_timeseries,
)
from nethical_grpc.storage.timeseries.buckets import US_PER_MINUTE, parse_bucket_us
from nethical_grpc.storage.timeseries.model import MAX_JSON_BYTES, MAX_NAME_LEN, metric_columns
from nethical_grpc.storage.timeseries.postgres import WRITERS_KEPT, PostgresTimeSeriesStore
from nethical_grpc.storage.timeseries.postgres_schema import JSON_COLUMNS
from nethical_grpc.storage.timeseries.rollup import plan_aggregate, rollup_rows
from nethical_grpc.storage.timeseries.sqlite import SQLiteTimeSeriesStore

BASE = datetime(2026, 3, 1, tzinfo=UTC)  # a Sunday; not a multiple of 7 minutes since 1970
US = 1_000_000


@pytest.fixture(scope="module")
def pg_schema() -> Iterator[str]:
    with fresh_schema("ts_test") as schema:
        yield schema


@pytest.fixture
def fresh_pg_schema() -> Iterator[str]:
    with fresh_schema("ts_test") as schema:
        yield schema


def _pg_url(schema: str) -> str:
    return f"{PG_URL}?schema={schema}"


def _region() -> str:
    return f"r-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TimeSeriesStore]:
    if request.param == "sqlite":
        opened, choice = await open_timeseries("memory://", _region())
        assert choice.backend == "sqlite (memory)"
    else:
        schema = request.getfixturevalue("pg_schema")
        opened, choice = await open_timeseries(_pg_url(schema), _region(), fallback=False)
        assert choice.backend == "postgresql (partitioned)"
        assert not choice.fallback
    yield opened
    await opened.close()


def points(
    n: int, *, agents: int = 3, step_s: float = 7.0, metric: str = "risk"
) -> list[MetricPoint]:
    """``n`` points every ``step_s`` seconds from BASE, values multiples of 1/4."""
    return [
        MetricPoint(
            agent_id=f"agent-{i % agents}",
            metric_name=metric,
            metric_value=(i % 37) * 0.25 - 3.0,
            timestamp=BASE + timedelta(seconds=step_s * i),
        )
        for i in range(n)
    ]


def reference(
    pts: list[MetricPoint],
    aggregation: str,
    bucket_us: int,
    start: datetime | None = None,
    end: datetime | None = None,
    agent_id: str | None = None,
) -> list[AggregateRow]:
    """What aggregate_metrics must return, computed directly from the points."""
    groups: dict[int, list[float]] = {}
    for p in pts:
        assert p.timestamp is not None
        if (start is not None and p.timestamp < start) or (end is not None and p.timestamp >= end):
            continue
        if agent_id is not None and p.agent_id != agent_id:
            continue
        t = (p.timestamp - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        groups.setdefault(t - t % bucket_us, []).append(p.metric_value)
    out = []
    for b in sorted(groups):
        v = groups[b]
        value = {
            "avg": sum(v) / len(v),
            "sum": sum(v),
            "min": min(v),
            "max": max(v),
            "count": float(len(v)),
        }[aggregation]
        out.append(
            AggregateRow(
                datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=b), value, len(v)
            )
        )
    return out


# --------------------------------------------------------------------------- metrics


async def test_insert_and_query_round_trip(store: TimeSeriesStore) -> None:
    pts = points(30)
    assert await store.insert_metrics(pts) == 30
    await store.insert_metric(
        "agent-0",
        "risk",
        1.25,
        timestamp=datetime(2026, 3, 1, 1, 0, 1, 5, tzinfo=timezone(timedelta(hours=1))),
        metadata={"source": "detector_v2", "n": [1, 2.5, None, True]},
    )
    rows = await store.query_metrics(agent_id="agent-0", metric_name="risk")
    assert len(rows) == 11
    first = rows[0]
    assert first.region_id == store.region_id
    assert first.timestamp == BASE and first.timestamp.utcoffset() == timedelta(0)
    assert first.metadata is None
    # the +01:00 timestamp is stored as the same instant, in UTC, to the microsecond
    extra = next(r for r in rows if r.metadata is not None)
    assert extra.timestamp == datetime(2026, 3, 1, 0, 0, 1, 5, tzinfo=UTC)
    assert extra.metadata == {"source": "detector_v2", "n": [1, 2.5, None, True]}
    assert [r.timestamp for r in rows] == sorted(r.timestamp for r in rows)
    assert all(r.agent_id == "agent-0" for r in rows)


async def test_query_filters_range_and_limit(store: TimeSeriesStore) -> None:
    pts = points(40) + points(5, metric="latency")
    await store.insert_metrics(pts)
    start, end = BASE + timedelta(seconds=70), BASE + timedelta(seconds=140)
    rows = await store.query_metrics(metric_name="risk", start_time=start, end_time=end)
    # [start, end): the point at exactly 70 s is in, the one at 140 s is not
    assert [r.timestamp for r in rows] == [BASE + timedelta(seconds=7 * i) for i in range(10, 20)]
    assert len(await store.query_metrics(metric_name="latency")) == 5
    assert len(await store.query_metrics(limit=7)) == 7
    assert len(await store.query_metrics()) == 45
    assert await store.query_metrics(agent_id="nobody") == []
    assert await store.query_metrics(region_id="another-region") == []
    widest = (datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC))
    assert len(await store.query_metrics(start_time=widest[0], end_time=widest[1])) == 45
    rows = await store.aggregate_metrics("risk", "count", "1 minute", *widest)
    assert sum(r.count for r in rows) == 40


async def test_ties_in_time_are_ordered_identically(store: TimeSeriesStore) -> None:
    same = BASE + timedelta(minutes=5)
    batch = [
        MetricPoint("b", "m2", 2.0, same),
        MetricPoint("a", "m2", 3.0, same),
        MetricPoint("a", "m2", 1.0, same),
        MetricPoint("é", "m1", 0.0, same),
        MetricPoint("Z", "m1", 0.0, same),
    ]
    await store.insert_metrics(batch)
    got = [(r.metric_name, r.agent_id, r.metric_value) for r in await store.query_metrics()]
    assert got == [
        ("m1", "Z", 0.0),
        ("m1", "é", 0.0),
        ("m2", "a", 1.0),
        ("m2", "a", 3.0),
        ("m2", "b", 2.0),
    ]


@pytest.mark.parametrize("aggregation", ["avg", "sum", "min", "max", "count"])
async def test_aggregations_match_reference(store: TimeSeriesStore, aggregation: str) -> None:
    pts = points(300, step_s=13)
    await store.insert_metrics(pts)
    for bucket in ("1 minute", "7 minutes", timedelta(seconds=90), 3600):
        width = parse_bucket_us(bucket)
        got = await store.aggregate_metrics("risk", aggregation, bucket)
        assert got == reference(pts, aggregation, width), bucket


async def test_buckets_are_aligned_to_the_epoch(store: TimeSeriesStore) -> None:
    await store.insert_metric("a", "m", 1.0, BASE)
    await store.insert_metric("a", "m", 2.0, BASE + timedelta(minutes=3))
    rows = await store.aggregate_metrics("m", "count", "7 minutes")
    base_us = (BASE - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    width = 7 * 60 * US
    expected_start = base_us - base_us % width
    assert expected_start != base_us  # BASE is not on a 7-minute boundary
    starts = [r.bucket_start for r in rows]
    assert starts[0] == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=expected_start)
    assert sum(r.count for r in rows) == 2
    # a bucket boundary between the two points splits them
    boundary = starts[0] + timedelta(minutes=7)
    assert (len(rows) == 2) == (boundary <= BASE + timedelta(minutes=3))


async def test_unaligned_ranges_combine_rollup_and_raw_edges(store: TimeSeriesStore) -> None:
    pts = points(400, step_s=11)
    await store.insert_metrics(pts)
    start = BASE + timedelta(seconds=95, microseconds=3)
    end = BASE + timedelta(seconds=3333)
    for agg in ("avg", "sum", "min", "max", "count"):
        got = await store.aggregate_metrics("risk", agg, "2 minutes", start, end)
        assert got == reference(pts, agg, 120 * US, start, end), agg
    # an agent filter reads raw rows only, with the same answers
    got = await store.aggregate_metrics("risk", "sum", "1 min", start, end, agent_id="agent-1")
    assert got == reference(pts, "sum", 60 * US, start, end, agent_id="agent-1")
    # a range inside one minute
    inside = (BASE + timedelta(seconds=61), BASE + timedelta(seconds=119))
    got = await store.aggregate_metrics("risk", "count", "1 minute", *inside)
    assert got == reference(pts, "count", 60 * US, *inside)
    assert await store.aggregate_metrics("risk", "count", "1 minute", start, start) == []


async def test_columnar_insert_matches_rows(store: TimeSeriesStore) -> None:
    base_ns = (BASE - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
    values = np.arange(100, dtype=np.float64) * 0.5
    stamps = base_ns + np.arange(100, dtype=np.int64) * 3_000_000_999  # sub-µs part floored
    n = await store.insert_metric_values(
        "latency", values, stamps, agent_id="agent-9", metadata={"decision": "ALLOW"}
    )
    assert n == 100
    rows = await store.query_metrics(metric_name="latency")
    assert [r.metric_value for r in rows] == values.tolist()
    assert rows[1].timestamp == BASE + timedelta(microseconds=3_000_000)
    assert {r.agent_id for r in rows} == {"agent-9"}
    assert rows[0].metadata == {"decision": "ALLOW"}
    got = await store.aggregate_metrics("latency", "sum", "1 minute")
    assert sum(r.value for r in got) == values.sum()
    assert await store.insert_metric_values("latency", [], []) == 0


async def test_regions_never_mix(store: TimeSeriesStore) -> None:
    other = _region()
    await store.insert_metrics(points(10))
    await store.insert_metrics([MetricPoint("agent-0", "risk", 100.0, BASE, region_id=other)])
    mine = await store.aggregate_metrics("risk", "max", "1 hour")
    theirs = await store.aggregate_metrics("risk", "max", "1 hour", region_id=other)
    assert mine[0].value == max(p.metric_value for p in points(10))
    assert theirs == [AggregateRow(BASE, 100.0, 1)]
    assert {r.region_id for r in await store.query_metrics(region_id=other)} == {other}


# --------------------------------------------------------------------------- events, audit


async def test_events_retry_is_not_a_duplicate(store: TimeSeriesStore) -> None:
    eid = await store.insert_event(
        "violation_detected", "agent-1", "HIGH", {"type": "privacy"}, timestamp=BASE
    )
    assert str(uuid.UUID(eid)) == eid
    again = await store.insert_event(
        "violation_detected", "agent-1", "HIGH", {"type": "privacy"}, timestamp=BASE, event_id=eid
    )
    assert again == eid
    given_id = uuid.uuid4()
    await store.insert_event("drift", timestamp=BASE + timedelta(seconds=1), event_id=given_id)
    # the same id in another region is another event
    other = _region()
    await store.insert_event("violation_detected", timestamp=BASE, event_id=eid, region_id=other)
    events = await store.query_events()
    assert [e.event_id for e in events] == [eid, str(given_id)]
    assert events[0].data == {"type": "privacy"} and events[0].severity == "HIGH"
    assert events[1].data is None and events[1].agent_id == "" and events[1].severity == "INFO"
    assert len(await store.query_events(region_id=other)) == 1
    assert len(await store.query_events(event_type="drift")) == 1
    assert await store.query_events(severity="LOW") == []
    assert len(await store.query_events(start_time=BASE + timedelta(seconds=1))) == 1


async def test_audit_logs_retry_is_not_a_duplicate(store: TimeSeriesStore) -> None:
    violations = [{"type": "privacy", "severity": 4}]
    aid = await store.insert_audit_log("act_123", "agent_123", "BLOCK", violations, timestamp=BASE)
    await store.insert_audit_log(
        "act_123", "agent_123", "BLOCK", violations, timestamp=BASE, audit_id=aid
    )
    await store.insert_audit_log(
        "act_124", "agent_123", "ALLOW", timestamp=BASE + timedelta(hours=1), metadata={"k": 1}
    )
    logs = await store.query_audit_logs(agent_id="agent_123")
    assert (logs[0].audit_id, logs[0].action_id, logs[0].decision) == (aid, "act_123", "BLOCK")
    assert logs[0].violations == violations and logs[0].metadata is None
    assert logs[1].violations == [] and logs[1].metadata == {"k": 1}
    assert [a.action_id for a in await store.query_audit_logs(decision="ALLOW")] == ["act_124"]
    assert await store.query_audit_logs(end_time=BASE) == []


#: JSON documents whose numbers a normalising store would change: a float that is a whole
#: number past 2^53, a negative zero, a float equal to an integer, an integer past 2^64
AWKWARD_JSON = {"z": 1e16, "neg": -0.0, "x": [1.5, 2.0, -0.0, 12345678901234567890], "a": 1}


def _same_json(got: object, want: object) -> bool:
    """Equal, with the same types (a float is not an int) and the same zero signs."""
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and set(got) == set(want)
            and all(_same_json(got[k], v) for k, v in want.items())
        )
    if isinstance(want, list):
        return (
            isinstance(got, list)
            and len(got) == len(want)
            and all(_same_json(g, w) for g, w in zip(got, want, strict=True))
        )
    if isinstance(want, float):
        return (
            type(got) is float and got == want and math.copysign(1, got) == math.copysign(1, want)
        )
    return type(got) is type(want) and got == want


async def test_json_documents_come_back_as_written(store: TimeSeriesStore) -> None:
    await store.insert_metric("agent-j", "risk", 0.5, BASE, metadata=AWKWARD_JSON)
    await store.insert_metric_values(
        "latency", [1.0], [0], agent_id="agent-j", metadata=AWKWARD_JSON
    )
    await store.insert_event("drift", "agent-j", data=AWKWARD_JSON, timestamp=BASE)
    await store.insert_audit_log(
        "act-j", "agent-j", "ALLOW", [AWKWARD_JSON], timestamp=BASE, metadata=AWKWARD_JSON
    )
    documents = [r.metadata for r in await store.query_metrics(agent_id="agent-j")]
    documents.append((await store.query_events(agent_id="agent-j"))[0].data)
    (audit,) = await store.query_audit_logs(agent_id="agent-j")
    documents += [audit.metadata, audit.violations[0]]
    assert len(documents) == 5
    for got in documents:
        assert _same_json(got, AWKWARD_JSON), got


async def test_a_schema_with_older_jsonb_columns_still_works(
    fresh_pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = _pg_url(fresh_pg_schema)
    made, _ = await open_timeseries(url, _region(), fallback=False)
    assert isinstance(made, PostgresTimeSeriesStore) and made.metadata_type == "json"
    await made.close()
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for table, column in JSON_COLUMNS:
            conn.execute(
                f'ALTER TABLE "{fresh_pg_schema}".{table} ALTER COLUMN {column} TYPE jsonb'
            )
    with caplog.at_level("WARNING"):
        old, _ = await open_timeseries(url, _region(), fallback=False)
    try:
        assert isinstance(old, PostgresTimeSeriesStore) and old.metadata_type == "jsonb"
        assert any("are jsonb" in r.getMessage() for r in caplog.records)
        # every write path still works (the binary COPY sends jsonb's format), normalised
        await old.insert_metric("agent-j", "risk", 0.5, BASE, metadata={"n": 1e16})
        await old.insert_metric_values("latency", [1.0], [0], agent_id="agent-j", metadata={"k": 1})
        await old.insert_event("drift", "agent-j", data={"n": -0.0}, timestamp=BASE)
        await old.insert_audit_log("act", "agent-j", "ALLOW", [{"t": 1}], timestamp=BASE)
        assert sorted(str(r.metadata) for r in await old.query_metrics(agent_id="agent-j")) == [
            "{'k': 1}",
            "{'n': 10000000000000000}",
        ]
        assert (await old.query_events())[0].data == {"n": 0.0}
        assert (await old.query_audit_logs())[0].violations == [{"t": 1}]
    finally:
        await old.close()


# --------------------------------------------------------------------------- window summaries


def window(
    region: str, instance: str, start: int, payload: bytes, **labels: str
) -> WindowSummaryRow:
    return WindowSummaryRow(
        region, instance, "latency_ms", labels, start, 10_000_000_000, payload, len(payload)
    )


async def test_window_summaries_upsert_load_delete(store: TimeSeriesStore) -> None:
    region = store.region_id
    w = 10_000_000_000
    first = [
        window(region, "i1", 0, b"a", decision="ALLOW", action="read"),
        window(region, "i1", w, b"bb", decision="ALLOW", action="read"),
        window(region, "i2", w, b"ccc", decision="BLOCK"),
    ]
    assert await store.upsert_window_summaries(first) == 3
    # re-flushing the still-open window replaces it; label order does not matter
    reflush = WindowSummaryRow(
        region, "i1", "latency_ms", {"action": "read", "decision": "ALLOW"}, w, w, b"bbbb", 4
    )
    assert await store.upsert_window_summaries([reflush]) == 1
    rows = await store.load_window_summaries(region)
    assert [(r.instance_id, r.window_start_ns, r.payload, r.count) for r in rows] == [
        ("i1", 0, b"a", 1),
        ("i1", w, b"bbbb", 4),
        ("i2", w, b"ccc", 3),
    ]
    assert rows[1].labels == {"decision": "ALLOW", "action": "read"}
    assert [r.instance_id for r in await store.load_window_summaries(region, since_ns=w)] == [
        "i1",
        "i2",
    ]
    assert len(await store.load_window_summaries(region, instance_id="i2")) == 1
    # a slice of time: windows starting before until_ns, and with since_ns and an instance
    assert [r.window_start_ns for r in await store.load_window_summaries(region, until_ns=w)] == [0]
    sliced = await store.load_window_summaries(region, since_ns=w, instance_id="i1", until_ns=2 * w)
    assert [(r.instance_id, r.window_start_ns) for r in sliced] == [("i1", w)]
    assert await store.load_window_summaries(region, since_ns=w, until_ns=w) == []
    with pytest.raises(ValueError, match="until_ns"):
        await store.load_window_summaries(region, until_ns=2**63)
    # another region with the very same key is another row
    other = _region()
    await store.upsert_window_summaries(
        [window(other, "i1", 0, b"zz", decision="ALLOW", action="read")]
    )
    assert (await store.load_window_summaries(region))[0].payload == b"a"
    assert await store.delete_window_summaries_before(region, w) == 1
    assert [r.window_start_ns for r in await store.load_window_summaries(region)] == [w, w]
    assert len(await store.load_window_summaries(other)) == 1


async def test_duplicate_keys_in_one_flush_keep_the_last(store: TimeSeriesStore) -> None:
    region = store.region_id
    rows = [window(region, "i1", 0, b"old", a="1"), window(region, "i1", 0, b"new", a="1")]
    assert await store.upsert_window_summaries(rows) == 1
    assert [r.payload for r in await store.load_window_summaries(region)] == [b"new"]


# --------------------------------------------------------------------------- bad input


async def test_bad_batch_writes_nothing(store: TimeSeriesStore) -> None:
    for bad in (math.nan, math.inf, -math.inf):
        batch = points(10)
        batch[7] = MetricPoint("agent-1", "risk", bad, BASE)
        with pytest.raises(ValueError, match=r"points\[7\]\.metric_value: must be finite"):
            await store.insert_metrics(batch)
    with pytest.raises(ValueError, match="must be finite"):
        await store.insert_metric("a", "risk", math.nan, BASE)
    with pytest.raises(ValueError, match=r"values\[2\]: must be finite"):
        await store.insert_metric_values("risk", [1.0, 2.0, math.inf], BASE.timestamp() * 1e9)
    with pytest.raises(ValueError, match=r"points\[1\]\.metric_name: must not be empty"):
        await store.insert_metrics([points(1)[0], MetricPoint("a", "", 1.0, BASE)])
    with pytest.raises(ValueError, match=f"longer than {MAX_NAME_LEN}"):
        await store.insert_metric("a" * (MAX_NAME_LEN + 1), "risk", 1.0, BASE)
    with pytest.raises(ValueError, match="NUL"):
        await store.insert_metric("a\x00b", "risk", 1.0, BASE)
    with pytest.raises(ValueError, match=f"larger than {MAX_JSON_BYTES} bytes"):
        await store.insert_metric("a", "risk", 1.0, BASE, metadata={"x": "y" * MAX_JSON_BYTES})
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        await store.insert_metric("a", "risk", 1.0, BASE, metadata={"x": math.nan})
    with pytest.raises(ValueError, match="UTC days"):
        await store.insert_metrics(
            [MetricPoint("a", "risk", 1.0, BASE + timedelta(days=d)) for d in range(65)]
        )
    with pytest.raises(ValueError, match=r"points\[0\]\.timestamp: .* is outside"):
        await store.insert_metrics(
            [MetricPoint("a", "risk", 1.0, datetime(1800, 1, 1, tzinfo=UTC))]
        )
    with pytest.raises(ValueError, match="is outside"):
        await store.insert_event("e", timestamp=datetime(9999, 12, 31, 5, tzinfo=UTC))
    with pytest.raises(ValueError, match="timestamps for"):
        await store.insert_metric_values("risk", [1.0, 2.0], [1, 2, 3])
    assert await store.query_metrics() == []
    assert await store.aggregate_metrics("risk", "count", "1 minute") == []


async def test_a_naive_datetime_is_utc(store: TimeSeriesStore) -> None:
    """As the guide writes them (``datetime.utcnow()``), and as the audit store takes them."""
    naive = BASE.astimezone(UTC).replace(tzinfo=None)
    await store.insert_metric("a", "risk", 1.0, naive)
    [row] = await store.query_metrics(start_time=naive, end_time=naive + timedelta(seconds=1))
    assert row.timestamp == BASE
    assert await store.query_metrics(start_time=BASE + timedelta(seconds=1)) == []


async def test_bad_queries_are_refused(store: TimeSeriesStore) -> None:
    await store.insert_metrics(points(5))
    with pytest.raises(ValueError, match="aggregation: must be one of avg, count, max, min, sum"):
        await store.aggregate_metrics("risk", "median", "1 minute")
    with pytest.raises(ValueError, match="inverted time range"):
        await store.query_metrics(start_time=BASE + timedelta(seconds=1), end_time=BASE)
    with pytest.raises(ValueError, match="inverted time range"):
        await store.aggregate_metrics("risk", "avg", 60, BASE + timedelta(hours=1), BASE)
    with pytest.raises(ValueError, match="inverted time range"):
        await store.query_events(start_time=BASE + timedelta(seconds=1), end_time=BASE)
    for width in (0, -60, timedelta(0), timedelta(seconds=-1), "0 s", 1e-9, math.inf):
        with pytest.raises(ValueError, match="time_bucket"):
            await store.aggregate_metrics("risk", "avg", width)
    with pytest.raises(ValueError, match="time_bucket"):
        await store.aggregate_metrics("risk", "avg", "1 month")
    with pytest.raises(ValueError, match="metric_name: must not be empty"):
        await store.aggregate_metrics("", "avg", 60)
    for limit in (0, -1, 100_001):
        with pytest.raises(ValueError, match="limit"):
            await store.query_metrics(limit=limit)
    with pytest.raises(ValueError, match="event_id: 'x' is not a UUID"):
        await store.insert_event("t", event_id="x")
    with pytest.raises(ValueError, match="decision: longer than"):
        await store.insert_audit_log("act", "agent", "B" * 65)
    assert await store.query_events() == [] and await store.query_audit_logs() == []


async def test_sql_looking_strings_are_just_data(store: TimeSeriesStore) -> None:
    evil = [
        "x' OR '1'='1",
        "risk'; DROP TABLE metrics; --",
        'a"; DELETE FROM window_summaries; --',
        "%(region)s %s {}",
    ]
    await store.insert_metrics(points(5))
    for text in evil:
        assert await store.query_metrics(agent_id=text) == []
        assert await store.query_metrics(metric_name=text) == []
        assert await store.aggregate_metrics(text, "count", 60) == []
        assert await store.aggregate_metrics("risk", "count", 60, agent_id=text) == []
        assert await store.query_events(event_type=text) == []
        assert await store.load_window_summaries(text) == []
        assert await store.delete_window_summaries_before(text, 2**62) == 0
    # the tables survived and the strings round-trip as plain data
    assert len(await store.query_metrics()) == 5
    await store.insert_metric(evil[0], evil[1], 1.0, BASE, metadata={evil[2]: evil[3]})
    (row,) = await store.query_metrics(agent_id=evil[0])
    assert (row.agent_id, row.metric_name, row.metadata) == (evil[0], evil[1], {evil[2]: evil[3]})


async def test_bad_window_rows_write_nothing(store: TimeSeriesStore) -> None:
    region = store.region_id
    good = window(region, "i1", 0, b"ok", a="1")
    bad_rows: list[object] = [
        WindowSummaryRow(region, "i1", "m", {}, 0, 0, b"x", 1),
        WindowSummaryRow(region, "i1", "m", {}, 0, 10, b"x", -1),
        WindowSummaryRow(region, "i1", "m", {"a": 1}, 0, 10, b"x", 1),  # type: ignore[dict-item]
        WindowSummaryRow(region, "", "m", {}, 0, 10, b"x", 1),
        WindowSummaryRow(region, "i1", "m", {}, 2**63, 10, b"x", 1),
        WindowSummaryRow(region, "i1", "m", {}, 0, 10, "text", 1),  # type: ignore[arg-type]
        "not a row",
    ]
    for bad in bad_rows:
        with pytest.raises(ValueError, match=r"rows\[1\]"):
            await store.upsert_window_summaries([good, bad])  # type: ignore[list-item]
    assert await store.load_window_summaries(region) == []


# --------------------------------------------------------------------------- retention


async def _retention_case(a: TimeSeriesStore, b: TimeSeriesStore) -> None:
    """``a`` and ``b`` share one database; ``b`` opened before ``a`` drops old days."""
    old, new = BASE - timedelta(days=3), BASE
    for t in (old, new):
        await a.insert_metrics(
            [MetricPoint("a", "m", 1.0, t + timedelta(seconds=s)) for s in range(3)]
        )
        await a.insert_event("e", timestamp=t)
        await a.insert_audit_log("act", "a", "ALLOW", timestamp=t)
    cutoff = await a.apply_retention(now=new + timedelta(hours=5))
    assert cutoff == new - timedelta(days=1)
    assert {r.timestamp.date() for r in await a.query_metrics()} == {new.date()}
    assert [r.bucket_start for r in await a.aggregate_metrics("m", "count", "1 day")] == [new]
    assert [e.timestamp for e in await a.query_events()] == [new]
    assert [e.timestamp for e in await a.query_audit_logs()] == [new]
    # a store that still believes the old day exists can write there (recreated on demand)
    await b.insert_metric("a", "m", 5.0, old)
    await b.insert_event("e", timestamp=old + timedelta(seconds=1))
    assert len(await a.query_metrics(start_time=old, end_time=old + timedelta(days=1))) == 1
    assert await a.aggregate_metrics("m", "sum", "1 day", end_time=new) == [
        AggregateRow(old, 5.0, 1)
    ]


async def test_retention_drops_whole_old_days_sqlite(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/ts.db"
    region = _region()
    a, _ = await open_timeseries(url, region, retention=timedelta(days=1))
    b, _ = await open_timeseries(url, region, retention=timedelta(days=1))
    try:
        await _retention_case(a, b)
    finally:
        await a.close()
        await b.close()


async def test_retention_drops_partitions_postgres(fresh_pg_schema: str) -> None:
    url = _pg_url(fresh_pg_schema)
    region = _region()
    a, _ = await open_timeseries(url, region, retention=timedelta(days=1), fallback=False)
    b, _ = await open_timeseries(url, region, retention=timedelta(days=1), fallback=False)
    try:
        await _retention_case(a, b)
        with psycopg.connect(PG_URL) as conn:
            names = {
                r[0]
                for r in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = %s", (fresh_pg_schema,)
                ).fetchall()
            }
        old_day = (BASE - timedelta(days=3)).strftime("%Y%m%d")
        gone_day = (BASE - timedelta(days=2)).strftime("%Y%m%d")
        assert f"metrics_p{old_day}" in names  # recreated by b's late write
        assert f"metric_rollup_p{gone_day}" not in names
        assert f"metrics_p{BASE.strftime('%Y%m%d')}" in names
        # partitions are kept ready for the coming days
        today = datetime.now(UTC)
        for ahead in range(3):
            assert f"events_p{(today + timedelta(days=ahead)).strftime('%Y%m%d')}" in names
    finally:
        await a.close()
        await b.close()


async def test_a_numbered_metric_batch_is_stored_once_postgres(fresh_pg_schema: str) -> None:
    """A writer's retry of a batch its failed write stored all the same (the answer to
    the COMMIT lost) is not stored again, however it comes: again alone, from two
    connections at once, or late (after a later batch). Another writer's numbers are its
    own; a writer silent for WRITERS_KEPT is forgotten by the retention."""
    url = _pg_url(fresh_pg_schema)
    region = _region()
    a, _ = await open_timeseries(url, region, fallback=False)
    b, _ = await open_timeseries(url, region, fallback=False)
    assert isinstance(a, PostgresTimeSeriesStore) and isinstance(b, PostgresTimeSeriesStore)

    def batch(n: int, value: float) -> list[MetricPoint]:
        return [MetricPoint("agent", "m", value, BASE + timedelta(seconds=i)) for i in range(n)]

    def stored() -> tuple[int, float]:
        """(rows, sum of their values), the same by the raw rows and by the rollup."""
        with psycopg.connect(PG_URL) as conn:
            raw, rollup = (
                conn.execute(
                    f'SELECT {totals} FROM "{fresh_pg_schema}".{table} WHERE region_id = %s',
                    (region,),
                ).fetchone()
                for table, totals in [
                    ("metrics", "count(*), sum(metric_value)"),
                    ("metric_rollup", "sum(n), sum(sum_value)"),
                ]
            )
        assert raw == rollup
        assert raw is not None
        return int(raw[0]), float(raw[1])

    try:
        assert await a.insert_metrics_once(batch(10, 1.0), writer="w1", batch=1) == 10
        assert await a.insert_metrics_once(batch(10, 1.0), writer="w1", batch=1) == 10
        assert stored() == (10, 10.0)
        await asyncio.gather(
            a.insert_metrics_once(batch(5, 2.0), writer="w1", batch=2),
            b.insert_metrics_once(batch(5, 2.0), writer="w1", batch=2),
        )
        assert stored() == (15, 20.0)
        await a.insert_metrics_once(batch(3, 4.0), writer="w1", batch=1)  # a late retry
        assert stored() == (15, 20.0)
        await b.insert_metrics_once(batch(3, 4.0), writer="w2", batch=1)
        await a.insert_metrics(batch(1, 100.0))  # not numbered: stored as it comes
        assert stored() == (19, 132.0)

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(
                f'UPDATE "{fresh_pg_schema}".metric_writers SET updated_at = now() - %s '
                "WHERE writer = 'w1'",
                (WRITERS_KEPT + timedelta(minutes=1),),
            )
        await a.apply_retention()
        with psycopg.connect(PG_URL) as conn:
            writers = conn.execute(
                f'SELECT writer FROM "{fresh_pg_schema}".metric_writers'
            ).fetchall()
        assert writers == [("w2",)]
    finally:
        await a.close()
        await b.close()


# --------------------------------------------------------------------------- sharing, restarts


async def test_concurrent_opening_of_a_fresh_schema(fresh_pg_schema: str) -> None:
    url = _pg_url(fresh_pg_schema)
    region = _region()
    opened = await asyncio.gather(*(open_timeseries(url, region, fallback=False) for _ in range(4)))
    stores = [s for s, _ in opened]
    try:
        assert {c.backend for _, c in opened} == {"postgresql (partitioned)"}
        for i, s in enumerate(stores):
            await s.insert_event("start", agent_id=f"node-{i}", timestamp=BASE)
        assert sorted(e.agent_id for e in await stores[0].query_events()) == [
            f"node-{i}" for i in range(4)
        ]
    finally:
        for s in stores:
            await s.close()


async def test_each_upsert_gets_the_regions_next_change_number(store: TimeSeriesStore) -> None:
    """A reader that saw changes up to n asks for those after n: it gets the rows the
    later upserts wrote (each upsert's rows share a number), and nothing it saw."""
    region, other = store.region_id, _region()
    w = 10_000_000_000
    assert await store.last_window_change(region) == 0
    await store.upsert_window_summaries(
        [window(region, "i1", 0, b"a", k="1"), window(region, "i2", 0, b"b", k="1")]
    )
    await store.upsert_window_summaries([window(other, "i1", 0, b"x", k="1")])
    seen = await store.last_window_change(region)
    rows = await store.load_window_summaries(region)
    assert {r.change_seq for r in rows} == {seen} and seen > 0
    # the other region's upsert did not take one of this region's numbers
    assert await store.last_window_change(other) == 1
    # i1 re-flushes window 0 and adds window w: both rows, and only they, are new
    await store.upsert_window_summaries(
        [window(region, "i1", 0, b"aa", k="1"), window(region, "i1", w, b"c", k="1")]
    )
    changed = await store.load_window_summaries(region, changed_after=seen)
    assert [(r.instance_id, r.window_start_ns, r.payload) for r in changed] == [
        ("i1", 0, b"aa"),
        ("i1", w, b"c"),
    ]
    assert {r.change_seq for r in changed} == {seen + 1}
    assert await store.last_window_change(region) == seen + 1
    assert await store.load_window_summaries(region, changed_after=seen + 1) == []
    # with the other filters
    assert [
        r.window_start_ns
        for r in await store.load_window_summaries(region, since_ns=w, changed_after=seen)
    ] == [w]
    with pytest.raises(ValueError, match="changed_after"):
        await store.load_window_summaries(region, changed_after=2**63)


async def test_a_change_number_is_not_given_again_after_its_row_is_deleted(
    store: TimeSeriesStore,
) -> None:
    """The retention deletes the window holding the region's latest change number: the
    next upsert still gets a later number, so a reader that saw that number finds it
    (numbers came from the largest a row held, and one was given twice)."""
    region, w = store.region_id, 10_000_000_000
    await store.upsert_window_summaries([window(region, "i1", w, b"a", k="1")])
    await store.upsert_window_summaries([window(region, "i1", 0, b"old", k="2")])
    seen = await store.last_window_change(region)
    assert seen == 2
    assert await store.delete_window_summaries_before(region, w) == 1  # it held number 2
    assert await store.last_window_change(region) == seen
    await store.upsert_window_summaries([window(region, "i1", 2 * w, b"new", k="1")])
    changed = await store.load_window_summaries(region, changed_after=seen)
    assert [(r.payload, r.change_seq) for r in changed] == [(b"new", seen + 1)]


@pytest.mark.parametrize("kind", ["sqlite-file", "postgresql"])
async def test_a_reader_of_changes_misses_none_while_instances_flush_at_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Four instances upsert at once through their own connections while a reader asks
    for the changes after the largest number it saw: when all is written, what it read
    (each key's latest row) is what the store holds. A number taken in one order and
    committed in another would leave a row behind the reader's mark."""
    if kind == "sqlite-file":
        url = f"sqlite://{tmp_path}/shared.db"
    else:
        url = _pg_url(request.getfixturevalue("pg_schema"))
    region = _region()
    writers = [(await open_timeseries(url, region, fallback=False))[0] for _ in range(4)]
    reader, _ = await open_timeseries(url, region, fallback=False)
    w = 10_000_000_000
    try:

        async def flushes(i: int, store: TimeSeriesStore) -> None:
            for n in range(15):
                rows = [window(region, f"i{i}", k * w, f"{n}".encode(), k=str(k)) for k in range(8)]
                await store.upsert_window_summaries(rows)

        writing = asyncio.gather(*(flushes(i, s) for i, s in enumerate(writers)))
        seen: dict[tuple[str, str, int], bytes] = {}
        mark = 0

        async def read_changes() -> None:
            nonlocal mark
            for r in await reader.load_window_summaries(region, changed_after=mark):
                seen[(r.instance_id, r.labels["k"], r.window_start_ns)] = r.payload
                mark = max(mark, r.change_seq)

        while not writing.done():
            await read_changes()
            await asyncio.sleep(0)
        await writing
        await read_changes()
        held = {
            (r.instance_id, r.labels["k"], r.window_start_ns): r.payload
            for r in await reader.load_window_summaries(region)
        }
        assert len(held) == 32 and set(held.values()) == {b"14"}
        assert seen == held
        assert mark == await reader.last_window_change(region) == 60
    finally:
        for s in [*writers, reader]:
            await s.close()


@pytest.mark.parametrize("kind", ["sqlite-file", "postgresql"])
async def test_instances_share_and_restart_keeps_windows(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "sqlite-file":
        url = f"sqlite://{tmp_path}/shared.db"
    else:
        url = _pg_url(request.getfixturevalue("pg_schema"))
    region = _region()
    one, _ = await open_timeseries(url, region, fallback=False)
    two, _ = await open_timeseries(url, region, fallback=False)
    await one.upsert_window_summaries([window(region, "i1", 0, b"one", a="1")])
    await two.upsert_window_summaries([window(region, "i2", 0, b"two", a="1")])
    await one.insert_metrics(points(4))
    assert [r.payload for r in await two.load_window_summaries(region)] == [b"one", b"two"]
    await one.close()
    await two.close()
    again, _ = await open_timeseries(url, region, fallback=False)
    try:
        assert [r.instance_id for r in await again.load_window_summaries(region)] == ["i1", "i2"]
        assert len(await again.query_metrics()) == 4
    finally:
        await again.close()


async def test_backends_give_identical_answers(pg_schema: str) -> None:
    region = _region()
    lite, _ = await open_timeseries("memory://", region)
    pg, _ = await open_timeseries(_pg_url(pg_schema), region, fallback=False)
    try:
        rng = np.random.default_rng(7)
        pts = [
            MetricPoint(
                f"agent-{int(rng.integers(5))}",
                ("risk", "latency")[int(rng.integers(2))],
                float(rng.integers(-400, 400)) / 8,
                BASE + timedelta(microseconds=int(rng.integers(0, 3 * 3600 * US))),
                metadata=None if i % 3 else {"i": i},
            )
            for i in range(500)
        ]
        for s in (lite, pg):
            await s.insert_metrics(pts[:250])
            await s.insert_metrics(pts[250:])
            await s.insert_event("e", "agent-1", "LOW", {"x": [1, {"y": None}]}, timestamp=BASE)
            await s.upsert_window_summaries([window(region, "i1", 5, b"\x00\xff", z="1", a="2")])

        async def answers(s: TimeSeriesStore) -> list[object]:
            out: list[object] = [await s.query_metrics(limit=100_000)]
            out.append(await s.query_metrics(agent_id="agent-2", metric_name="risk", limit=20))
            for agg in ("avg", "sum", "min", "max", "count"):
                for width in ("1 minute", "5 minutes", 45, "1 hour"):
                    out.append(await s.aggregate_metrics("risk", agg, width))
                    out.append(
                        await s.aggregate_metrics(
                            "latency",
                            agg,
                            width,
                            BASE + timedelta(seconds=77),
                            BASE + timedelta(hours=2, seconds=5),
                        )
                    )
            out.append([(e.event_type, e.data, e.timestamp) for e in await s.query_events()])
            out.append(await s.load_window_summaries(region))
            return out

        assert await answers(lite) == await answers(pg)
    finally:
        await lite.close()
        await pg.close()


# --------------------------------------------------------------------------- factory


async def test_unreachable_postgres_falls_back_to_memory() -> None:
    url = "postgresql://nethical:s3cret@127.0.0.1:1/ts?schema=x"
    store, choice = await open_timeseries(url, "us-east-1", connect_timeout=2)
    try:
        assert choice.store == "timeseries"
        assert choice.backend == "sqlite (memory)"
        assert choice.fallback
        assert choice.describe() == "postgresql: unreachable (connection refused) → sqlite (memory)"
        assert "s3cret" not in choice.requested and "***" in choice.requested
        await store.insert_metric("a", "m", 1.0, BASE)
        assert len(await store.query_metrics()) == 1
    finally:
        await store.close()
    with pytest.raises(psycopg.OperationalError):
        await open_timeseries(url, "us-east-1", fallback=False, connect_timeout=2)


async def test_factory_refuses_bad_urls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported scheme 'redis'"):
        await open_timeseries("redis://127.0.0.1:6379", "r")
    with pytest.raises(ValueError, match="scheme://"):
        await open_timeseries("not a url", "r")
    with pytest.raises(ValueError, match="schema"):
        await open_timeseries(f"{PG_URL}?schema=Bad-Name", "r")
    with pytest.raises(ValueError, match="region_id: must not be empty"):
        await open_timeseries("memory://", "")
    with pytest.raises(ValueError, match="retention"):
        await open_timeseries("memory://", "r", retention=timedelta(hours=1))
    with pytest.raises(ValueError, match="needs a path"):
        await open_timeseries("sqlite://", "r")


@pytest.mark.parametrize(("query", "mib"), [("", 64), ("?cache_mib=8", 8)])
async def test_a_sqlite_url_sets_the_page_cache(tmp_path: Path, query: str, mib: int) -> None:
    store, choice = await open_timeseries(f"sqlite://{tmp_path / 'ts.db'}{query}", "r")
    assert isinstance(store, SQLiteTimeSeriesStore) and choice.backend == "sqlite"
    try:
        (size,) = await store._run(lambda: store._db().execute("PRAGMA cache_size").fetchone())
        assert -size == mib * 1024  # negative: KiB
        assert store.cache_mib == mib
    finally:
        await store.close()
    with pytest.raises(ValueError, match="cache_mib must be"):
        await open_timeseries(f"sqlite://{tmp_path / 'ts.db'}?cache_mib=abc", "r")
    with pytest.raises(ValueError, match="cache_mib must be"):
        await SQLiteTimeSeriesStore.open(None, region_id="r", cache_mib=0)


async def test_sqlite_file_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "ts.db"
    store, choice = await open_timeseries(f"sqlite://{path}", "r")
    try:
        assert choice.backend == "sqlite" and not choice.fallback
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        await store.close()
    await store.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        await store.query_metrics()


# --------------------------------------------------------------------------- properties


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    offsets=st.lists(st.integers(0, 4 * 3600 * US), max_size=40),
    width_s=st.sampled_from([1, 30, 60, 90, 120, 420, 3600]),
    lo=st.integers(-60 * US, 4 * 3600 * US),
    span=st.integers(0, 4 * 3600 * US),
    agg=st.sampled_from(["avg", "sum", "min", "max", "count"]),
)
async def test_aggregate_property(
    store: TimeSeriesStore, offsets: list[int], width_s: int, lo: int, span: int, agg: str
) -> None:
    region = _region()  # a fresh region per example, in the same store
    pts = [
        MetricPoint(
            "a", "m", float(i % 9) * 0.5, BASE + timedelta(microseconds=o), region_id=region
        )
        for i, o in enumerate(offsets)
    ]
    await store.insert_metrics(pts)
    start = BASE + timedelta(microseconds=lo)
    end = start + timedelta(microseconds=span)
    got = await store.aggregate_metrics("m", agg, width_s, start, end, region_id=region)
    assert got == reference(pts, agg, width_s * US, start, end)


@given(
    start=st.one_of(st.none(), st.integers(-(10**12), 10**12)),
    span=st.one_of(st.none(), st.integers(0, 10**11)),
    width=st.sampled_from([1, US, 60 * US, 120 * US, 7 * 60 * US]),
)
def test_plan_covers_the_range_exactly(start: int | None, span: int | None, width: int) -> None:
    end = None if span is None or start is None else start + span
    plan = plan_aggregate(
        region_id="r", metric_name="m", agent_id=None, bucket_us=width, start_us=start, end_us=end
    )
    if plan.rollup is None:
        assert plan.raw == [(start, end)]
        return
    assert width % US_PER_MINUTE == 0
    r_lo, r_hi = plan.rollup
    for bound in (r_lo, r_hi):
        assert bound is None or bound % US_PER_MINUTE == 0
    # raw edges, then the rollup, tile [start, end) with no gap or overlap
    pieces = sorted([*plan.raw, plan.rollup], key=lambda r: -(2**80) if r[0] is None else r[0])
    assert pieces[0][0] == start and pieces[-1][1] == end
    for (_, a_hi), (b_lo, _) in itertools.pairwise(pieces):
        assert a_hi == b_lo
    for r in plan.raw:
        assert r[0] is not None and r[1] is not None and 0 < r[1] - r[0] < US_PER_MINUTE


@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["r1", "r2"]),
            st.sampled_from(["m", "n"]),
            st.integers(-(10**10), 10**10),
            st.integers(-8, 8),
        ),
        max_size=60,
    )
)
def test_rollup_rows_group_exactly(rows: list[tuple[str, str, int, int]]) -> None:
    pts = [
        MetricPoint(
            "a", m, v / 4, datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=t), region_id=r
        )
        for r, m, t, v in rows
    ]
    roll = rollup_rows(metric_columns(pts, "r1", 0))
    expected: dict[tuple[str, str, int], list[float]] = {}
    for r, m, t, v in rows:
        expected.setdefault((r, m, t - t % US_PER_MINUTE), []).append(v / 4)
    keys = list(zip(roll.region_ids, roll.metric_names, roll.minute_us, strict=True))
    assert keys == sorted(expected)
    for key, n, s, lo, hi in zip(keys, roll.counts, roll.sums, roll.mins, roll.maxs, strict=True):
        vals = expected[key]
        assert (n, s, lo, hi) == (len(vals), sum(vals), min(vals), max(vals))
