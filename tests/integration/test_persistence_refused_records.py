"""A store that refuses some of a batch's evaluation records for good (``ValueError``)
cost the whole batch: up to 5,000 records dropped for one bad one. Now the batch is
halved down to the records refused; only those are dropped (and counted), the others are
stored once each, also when a write fails for a while between the parts (the metric rows
on PostgreSQL, each part numbered by its last record, are not stored twice).

Real stores: SQLite files, and PostgreSQL at 127.0.0.1:5432. The audit store refuses a
record whose time it cannot keep (the node's own check of the store's range); the
time-series store refuses a batch spanning more UTC days than one write takes. A single
metric point past the RPC checks has nothing a store refuses, so a real store's
``insert_metric_columns`` is wrapped to refuse the rows of marked agents, as a store whose own
rules are stricter would (one bad point refuses the whole call, nothing written).
The node writes its metric rows in columns: ``insert_metric_columns`` is the wrapped
call (the PostgreSQL store's numbered write goes through it too)."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from services import PG_URL, fresh_schema

from nethical_grpc import convert
from nethical_grpc.governance.decision import evaluate_actions
from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.governance.requests import EvaluationRequest, Outcome
from nethical_grpc.storage.audit.model import MAX_TIMESTAMP_US
from nethical_grpc.storage.timeseries.base import TimeSeriesStore
from nethical_grpc.storage.timeseries.model import MAX_BATCH_DAYS
from nethical_grpc.storage.timeseries.postgres import PostgresTimeSeriesStore
from nethical_grpc.v1 import governance_pb2
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import Persister
from region_node.stores import NodeStores, StoreConfig

_DAY_NS = 86_400 * 10**9
# past what an audit record keeps (2262-01-01), still a time a metric row keeps
_UNSTORABLE_NS = MAX_TIMESTAMP_US * 1000 + 5_000


def _outcomes(times_ns: Sequence[int]) -> list[Outcome]:
    """One evaluation of agent ``agent-I`` at ``times_ns[I]``, each."""
    actions = [
        governance_pb2.AgentAction(agent_id=f"agent-{i}", action_text="list files")
        for i in range(len(times_ns))
    ]
    requests = convert.batch_actions_from_proto(actions)
    assert all(isinstance(r, EvaluationRequest) for r in requests)
    valid = [r for r in requests if isinstance(r, EvaluationRequest)]
    evaluations = evaluate_actions([r.action for r in valid], [0.1] * len(valid))
    return [
        Outcome(r, e, 0.1, 1_000, t) for r, e, t in zip(valid, evaluations, times_ns, strict=True)
    ]


class _Refusing:
    """The real store's ``insert_metric_columns``, refusing (``ValueError``, nothing
    written) a call holding a row of one of ``agents``; and, once, failing its
    ``fail_at``-th call that stores (``lost_answer``: after storing it, as a commit whose
    answer was lost; else before)."""

    def __init__(
        self,
        store: TimeSeriesStore,
        agents: set[str],
        fail_at: int | None = None,
        lost_answer: bool = False,
    ) -> None:
        self.insert, self.agents = store.insert_metric_columns, agents
        self.fail_at, self.lost_answer = fail_at, lost_answer
        self.stored_calls = self.calls = 0

    async def __call__(self, *args: Any, agent_ids: Sequence[str], **kwargs: Any) -> int:
        self.calls += 1
        if not self.agents.isdisjoint(agent_ids):
            raise ValueError("agent_ids: this store keeps no such agent")
        self.stored_calls += 1
        if self.stored_calls == self.fail_at:
            if self.lost_answer:
                await self.insert(*args, agent_ids=agent_ids, **kwargs)
            raise ConnectionError("the store went away")
        return await self.insert(*args, agent_ids=agent_ids, **kwargs)


def _sqlite_counts(path: Path, query: str) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute(query).fetchall())


def _metric_rows(path: Path) -> dict[str, int]:
    return _sqlite_counts(path, "SELECT agent_id, count(*) FROM metrics GROUP BY agent_id")


def _audit_rows(path: Path) -> dict[str, int]:
    return _sqlite_counts(
        path,
        "SELECT a.agent_id, count(*) FROM audit_records r "
        "JOIN audit_agents a ON a.code = r.agent_code GROUP BY a.agent_id",
    )


def _agents(n: int, without: set[int]) -> dict[str, int]:
    return {f"agent-{i}": 1 for i in range(n) if i not in without}


async def _sqlite_stores(tmp_path: Path) -> NodeStores:
    return await NodeStores.open(
        StoreConfig(
            timeseries_url=f"sqlite:///{tmp_path / 'ts.db'}",
            audit_url=f"sqlite:///{tmp_path / 'audit.db'}",
        ),
        "r1",
    )


async def test_only_the_refused_records_of_a_batch_are_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = 200
    bad_metrics, bad_audits = {5, 6, 137}, {0, 99, 199}
    now = time.time_ns()
    times = [_UNSTORABLE_NS if i in bad_audits else now for i in range(n)]
    stores = await _sqlite_stores(tmp_path)
    try:
        refusing = _Refusing(stores.timeseries, {f"agent-{i}" for i in bad_metrics})
        stores.timeseries.insert_metric_columns = refusing  # type: ignore[method-assign]
        persister = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, ProfileBook(), 60.0)
        persister.enqueue(_outcomes(times))
        with caplog.at_level(logging.ERROR, logger="region_node.persistence"):
            await persister._write_outcomes()
        assert persister.dropped == len(bad_metrics) + len(bad_audits)
        assert persister.backlog() == 0
        assert _metric_rows(tmp_path / "ts.db") == _agents(n, bad_metrics)
        assert _audit_rows(tmp_path / "audit.db") == _agents(n, bad_audits)
        # halving: a few dozen writes, not one per record
        assert refusing.calls < 60
        lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(lines) == 2, lines  # one a store's batch
        assert any(line.startswith("timeseries store refused 3 ") for line in lines)
        assert any(
            line.startswith("audit store refused 3 ") and "outside" in line for line in lines
        )
    finally:
        await stores.close()


async def test_a_batch_spanning_more_days_than_a_write_takes_is_stored_whole(
    tmp_path: Path,
) -> None:
    """The store refuses the batch, not a record: each part it is halved into is stored,
    and nothing is dropped."""
    n = 4 * MAX_BATCH_DAYS
    start = time.time_ns() - n * _DAY_NS
    stores = await _sqlite_stores(tmp_path)
    try:
        persister = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, ProfileBook(), 60.0)
        persister.enqueue(_outcomes([start + i * _DAY_NS for i in range(n)]))
        await persister._write_outcomes()
        assert persister.dropped == 0
        assert _metric_rows(tmp_path / "ts.db") == _agents(n, set())
        assert _audit_rows(tmp_path / "audit.db") == _agents(n, set())
    finally:
        await stores.close()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    with fresh_schema("refused_records") as schema:
        yield schema


@pytest.mark.parametrize("lost_answer", [False, True], ids=["not-stored", "answer-lost"])
async def test_a_failure_between_parts_retries_what_was_not_stored_once(
    tmp_path: Path, pg_schema: str, lost_answer: bool
) -> None:
    """A write fails (the store goes away) after some parts of a batch with refused
    records were stored: the retry holds only the rest, the part that failed numbered as
    before, so a part PostgreSQL stored all the same (its answer lost) is not stored
    twice, and every other good record is stored once."""
    n = 300
    bad = {3, 4, 150, 151, 290}
    stores = await NodeStores.open(
        StoreConfig(
            timeseries_url=PG_URL,
            timeseries_schema=pg_schema,
            audit_url=f"sqlite:///{tmp_path / 'audit.db'}",
        ),
        "r1",
    )
    try:
        assert isinstance(stores.timeseries, PostgresTimeSeriesStore)
        refusing = _Refusing(
            stores.timeseries, {f"agent-{i}" for i in bad}, fail_at=3, lost_answer=lost_answer
        )
        stores.timeseries.insert_metric_columns = refusing  # type: ignore[method-assign]
        persister = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, ProfileBook(), 60.0)
        persister.enqueue(_outcomes([time.time_ns()] * n))
        await persister._write_outcomes()
        # the failure came after some parts were stored and some records refused
        assert persister._points.retry is not None
        stored_before = await _pg_metric_rows(pg_schema)
        assert 0 < sum(stored_before.values()) < n - len(bad)
        assert 0 < persister.dropped < len(bad)
        assert len(persister._points) < n
        await persister._write_outcomes()
        assert persister.backlog() == 0
        assert persister.dropped == len(bad)
        assert await _pg_metric_rows(pg_schema) == _agents(n, bad)
        assert _audit_rows(tmp_path / "audit.db") == _agents(n, set())
    finally:
        await stores.close()


async def _pg_metric_rows(schema: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(PG_URL) as conn:
        cur = await conn.execute(
            f'SELECT agent_id, count(*) FROM "{schema}".metrics GROUP BY agent_id'
        )
        return {agent: int(count) for agent, count in await cur.fetchall()}


async def test_a_store_refusing_everything_is_not_asked_record_by_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Halving a batch a store refuses whole would take two writes a record: after a few
    dozen refused one by one with nothing taken, the rest is dropped unwritten."""
    n = 2_000
    stores = await _sqlite_stores(tmp_path)
    try:
        refusing = _Refusing(stores.timeseries, {f"agent-{i}" for i in range(n)})
        stores.timeseries.insert_metric_columns = refusing  # type: ignore[method-assign]
        persister = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, ProfileBook(), 60.0)
        persister.enqueue(_outcomes([time.time_ns()] * n))
        with caplog.at_level(logging.ERROR, logger="region_node.persistence"):
            await persister._write_outcomes()
        assert persister.dropped == n  # every metric record, counted once
        assert persister.backlog() == 0
        assert _metric_rows(tmp_path / "ts.db") == {}
        assert _audit_rows(tmp_path / "audit.db") == _agents(n, set())
        assert refusing.calls < 200  # not about 2 * n
        assert (
            sum("refused 2000 evaluations' records" in r.getMessage() for r in caplog.records) == 1
        )
    finally:
        await stores.close()
