"""``insert_metric_columns``: one metric's rows from many agents, given as columns, stored
as ``insert_metrics`` stores the same rows given as points (both backends: SQLite and a
real PostgreSQL at 127.0.0.1:5432), checked a column at a time with the same refusals,
each naming its entry, nothing written; the numbered PostgreSQL write stores a batch
once; and a region node's evaluation records reach the store this way, their rows as
they were (metadata per decision and action type, times to the microsecond below)."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from services import PG_URL, fresh_schema

from nethical_grpc.governance.decision import DECISION_VALUES, Decision, Evaluation
from nethical_grpc.governance.detectors import Action
from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.governance.requests import EvaluationRequest, Outcome
from nethical_grpc.storage.timeseries import MetricPoint, TimeSeriesStore, open_timeseries
from nethical_grpc.storage.timeseries.model import (
    MAX_NAME_LEN,
    MetricColumns,
    metric_columns,
    metric_rows_columns,
)
from nethical_grpc.storage.timeseries.postgres import PostgresTimeSeriesStore
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import Persister
from region_node.stores import NodeStores

BASE_NS = 1_772_323_200_000_000_000  # 2026-03-01T00:00:00Z
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ALLOW = {"decision": "ALLOW", "action_type": "query"}
BLOCK = {"decision": "BLOCK", "action_type": "command"}


@pytest.fixture(scope="module")
def pg_schema() -> Iterator[str]:
    with fresh_schema("ts_cols") as schema:
        yield schema


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TimeSeriesStore]:
    url = "memory://"
    if request.param == "postgresql":
        url = f"{PG_URL}?schema={request.getfixturevalue('pg_schema')}"
    opened, _ = await open_timeseries(url, f"r-{uuid.uuid4().hex[:10]}", fallback=False)
    yield opened
    await opened.close()


def _points(
    agents: Sequence[str],
    values: Sequence[float],
    times_ns: Sequence[int],
    metadata: Sequence[dict[str, Any] | None],
) -> list[MetricPoint]:
    """The same rows as points (times to the microsecond below, as columns keep them)."""
    return [
        MetricPoint(
            a,
            "risk_score",
            v,
            EPOCH + timedelta(microseconds=t // 1000),
            None,
            m,
        )
        for a, v, t, m in zip(agents, values, times_ns, metadata, strict=True)
    ]


async def _rows(store: TimeSeriesStore) -> list[tuple[Any, ...]]:
    rows = await store.query_metrics(metric_name="risk_score", limit=100_000)
    return sorted((r.agent_id, r.metric_value, r.timestamp, str(r.metadata)) for r in rows)


async def test_columns_store_what_points_store(store: TimeSeriesStore) -> None:
    n = 300
    agents = [f"agent-{i % 7}" if i % 11 else "" for i in range(n)]
    agents[5] = "agënt-ü"  # valid text beyond ASCII takes the entry-by-entry path
    values = [i / 8 for i in range(n)]
    times_ns = [BASE_NS + i * 1_234_567 for i in range(n)]  # sub-µs digits dropped
    metadata = [(ALLOW, BLOCK, None)[i % 3] for i in range(n)]
    stored = await store.insert_metric_columns(
        "risk_score",
        np.array(values),
        np.array(times_ns, np.int64),
        agent_ids=agents,
        metadata=metadata,
    )
    assert stored == n
    got = await _rows(store)
    other, _ = await open_timeseries("memory://", store.region_id)
    try:
        assert await other.insert_metrics(_points(agents, values, times_ns, metadata)) == n
        assert got == await _rows(other)
    finally:
        await other.close()
    # the rollup counted every row, as its minutes' sum
    total = await store.aggregate_metrics("risk_score", "sum", timedelta(hours=1))
    assert [(row.count, row.value) for row in total] == [(n, sum(values))]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(
            st.text(max_size=12),
            st.floats(-1e6, 1e6, allow_nan=False),
            st.integers(0, 10**15),
            st.sampled_from([0, 1, 2, 3]),
        ),
        max_size=40,
    )
)
def test_columns_are_the_points_columns(rows: list[tuple[str, float, int, int]]) -> None:
    """Property: the columns made from columns equal those made from the same points,
    or both refuse (a text no database keeps)."""
    kinds: list[dict[str, Any] | None] = [ALLOW, BLOCK, None, {"k": "ë"}]
    agents = [r[0] for r in rows]
    values = [r[1] for r in rows]
    times_ns = [BASE_NS + r[2] for r in rows]
    metadata = [kinds[r[3]] for r in rows]

    def columns() -> MetricColumns:
        return metric_rows_columns(
            region_id="r1",
            metric_name="risk_score",
            values=values,
            timestamps_ns=np.array(times_ns, np.int64),
            agent_ids=agents,
            metadata=metadata,
        )

    try:
        expected = metric_columns(_points(agents, values, times_ns, metadata), "r1", 0)
    except ValueError:
        with pytest.raises(ValueError, match=r"^agent_ids\[\d+\]: "):
            columns()
        return
    assert columns().rows() == expected.rows()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["agent_ids"].__setitem__(3, "a\x00b"), r"agent_ids\[3\]: .*NUL"),
        (lambda c: c["agent_ids"].__setitem__(4, "\ud800"), r"agent_ids\[4\]: not valid Unicode"),
        (
            lambda c: c["agent_ids"].__setitem__(2, "x" * (MAX_NAME_LEN + 1)),
            r"agent_ids\[2\]: longer than",
        ),
        (lambda c: c["agent_ids"].__setitem__(1, 7), r"agent_ids\[1\]: must be a string"),
        (lambda c: c["agent_ids"].pop(), r"agent_ids: 5 entries for 6 values"),
        (lambda c: c["metadata"].pop(), r"metadata: 5 entries for 6 values"),
        (lambda c: c["values"].__setitem__(5, math.nan), r"values\[5\]: must be finite"),
        # one string or one mapping where a column belongs: refused, not split up
        (lambda c: c.__setitem__("agent_ids", "agent1"), r"agent_ids: .*not one string"),
        (lambda c: c.__setitem__("metadata", ALLOW), r"metadata: .*not one mapping"),
    ],
)
async def test_a_bad_entry_refuses_the_batch_naming_it(
    store: TimeSeriesStore, change: Any, message: str
) -> None:
    columns: dict[str, Any] = {
        "values": [0.25] * 6,
        "agent_ids": [f"agent-{i}" for i in range(6)],
        "metadata": [ALLOW] * 6,
    }
    change(columns)
    with pytest.raises(ValueError, match=message):
        await store.insert_metric_columns(
            "risk_score",
            columns["values"],
            BASE_NS,
            agent_ids=columns["agent_ids"],
            metadata=columns["metadata"],
        )
    assert await _rows(store) == []


async def test_a_bad_mapping_is_refused_at_its_first_row(store: TimeSeriesStore) -> None:
    bad = {"score": math.nan}
    with pytest.raises(ValueError, match=r"^metadata\[2\]: not JSON-serialisable"):
        await store.insert_metric_columns(
            "risk_score",
            [0.5] * 6,
            BASE_NS,
            agent_ids=["a"] * 6,
            metadata=[ALLOW, None, bad, ALLOW, bad, {"x": math.inf}],
        )
    assert await _rows(store) == []


async def test_a_numbered_batch_is_stored_once(pg_schema: str) -> None:
    region = f"r-{uuid.uuid4().hex[:10]}"
    store, _ = await open_timeseries(f"{PG_URL}?schema={pg_schema}", region, fallback=False)
    assert isinstance(store, PostgresTimeSeriesStore)
    try:

        async def write(batch: int, value: float) -> int:
            with store.numbered("w-cols", batch):
                return await store.insert_metric_columns(
                    "risk_score",
                    [value] * 4,
                    BASE_NS,
                    agent_ids=["a", "b", "c", "d"],
                    metadata=[ALLOW] * 4,
                )

        assert await write(1, 1.0) == 4
        assert await write(1, 1.0) == 4  # a retry: not stored again
        assert await write(2, 2.0) == 4
        assert await write(1, 3.0) == 4  # a late retry of batch 1
        assert sorted(v for _, v, _, _ in await _rows(store)) == [1.0] * 4 + [2.0] * 4
    finally:
        await store.close()


async def test_a_nodes_evaluation_records_keep_their_rows(stores: NodeStores) -> None:
    persister = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, ProfileBook(), 60.0)
    kinds = [(Decision.ALLOW, "query"), (Decision.BLOCK, ""), (Decision.RESTRICT, "command")]
    outcomes = []
    for i in range(30):
        decision, action_type = kinds[i % 3]
        action = Action(f"agent-{i % 4}", "list files", action_type)
        request = EvaluationRequest(action, f"q{i}", action_type)
        evaluation = Evaluation(decision, i / 32, 0.9)
        outcomes.append(Outcome(request, evaluation, 0.5, 1_000, BASE_NS + i * 1_500))
    persister.enqueue(outcomes)
    await persister.round(windows=False)
    assert persister.dropped == 0
    rows = await stores.timeseries.query_metrics(metric_name="risk_score", limit=1_000)
    expected = sorted(
        (
            o.request.action.agent_id,
            o.evaluation.risk_score,
            o.time_ns // 1000,
            (DECISION_VALUES[o.evaluation.decision], o.request.action_type or "unspecified"),
        )
        for o in outcomes
    )
    got = sorted(
        (
            r.agent_id,
            r.metric_value,
            (r.timestamp - EPOCH) // timedelta(microseconds=1),
            (r.metadata["decision"], r.metadata["action_type"]) if r.metadata else None,
        )
        for r in rows
    )
    assert got == expected


async def test_agent_ids_from_any_iterable(store: TimeSeriesStore) -> None:
    agents = (f"agent-{i}" for i in range(3))  # no length to ask
    assert (
        await store.insert_metric_columns(
            "risk_score", [0.25, 0.5, 0.75], BASE_NS, agent_ids=agents
        )
        == 3
    )
    assert [(a, v) for a, v, _, _ in await _rows(store)] == [
        ("agent-0", 0.25),
        ("agent-1", 0.5),
        ("agent-2", 0.75),
    ]
