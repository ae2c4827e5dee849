"""A region node's background work against real stores: the window maintenance loop
survives a failing turn, a store's problem leaves the node without the values its driver
echoed, and the problem reported follows the store's state."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from services import PG_URL, fresh_schema

from nethical_grpc.governance.decision import Decision, Evaluation
from nethical_grpc.governance.detectors import Action
from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.governance.requests import EvaluationRequest, Outcome
from nethical_grpc.series import IngestBatch, SeriesKey
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import GAP_WINDOWS_NOT_LOADED, Persister
from region_node.stores import NodeStores, StoreConfig, reportable_problem
from region_node.windows import WindowConfig

NANOS = 1_000_000_000
SECRET = "secret-agent-4711"


async def until(check: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


class FlakyMaintenanceNode(RegionNode):
    """A real node whose first ``failures`` maintenance turns fail (a bug, a store's
    error): the turns after them do the real work."""

    def __init__(self, failures: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failures = failures
        self.turns = 0

    async def maintain_windows(self) -> None:
        self.turns += 1
        if self.turns <= self.failures:
            raise RuntimeError("maintenance broke")
        await super().maintain_windows()


async def test_window_maintenance_goes_on_after_a_turn_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failing turn ended the loop for good: windows never rolled up or expired again,
    and the node's memory grew. Now the loop logs the failure (once, not every turn) and
    the next turn drops the windows past retention."""
    now = [1_000 * NANOS]
    config = WindowConfig(window_ns=NANOS, retention_ns=2 * NANOS, rollup_after_ns=0)
    node = FlakyMaintenanceNode(
        3, identity=NodeIdentity("r1", "r1-a"), windows=config, clock=lambda: now[0]
    )
    node.ingest(IngestBatch(SeriesKey("m", ()), np.arange(4.0), None, now[0]))
    assert node.store.window_count == 1
    now[0] += 60 * NANOS  # the window is past retention
    caplog.set_level(logging.INFO, logger="region_node.node")
    node.start_background(0.01)
    try:
        await until(lambda: node.turns > 3 and node.store.window_count == 0)
        assert node._evictor is not None and not node._evictor.done()
        failed = [r for r in caplog.records if "window maintenance failed" in r.getMessage()]
        assert len(failed) == 1  # three failing turns, one log record
        assert "maintenance broke" in caplog.text  # with the error's text
        assert "window maintenance succeeds again" in caplog.text
    finally:
        await node.stop_background()


def test_a_reportable_problem_leaves_out_the_values_a_driver_echoes() -> None:
    """The messages PostgreSQL and Elasticsearch give quote the values they refused, and
    add the row's values after DETAIL; what is reported beyond the node has neither."""
    cases = {
        f'invalid input syntax for type integer: "{SECRET}"': (
            'invalid input syntax for type integer: "…"'
        ),
        f'null value in column "x" violates not-null constraint DETAIL:  Failing row '
        f"contains (1, {SECRET})": 'null value in column "…" violates not-null constraint',
        f"duplicate key value violates unique constraint Key (id)=({SECRET}) exists": (
            "duplicate key value violates unique constraint"
        ),
        f"failed to parse field [amount] of type [long] in document with id 'd-1'. "
        f"Preview of field's value: '{SECRET}'s'": (
            'failed to parse field [amount] of type [long] in document with id "…"'
        ),
        # a value that holds its quote and a space: out whole, not in pieces
        f'agent "a" {SECRET} "b" may not be stored': 'agent "…" may not be stored',
        f'value too long: "{SECRET}': "value too long",  # a quote left open
        "store unreachable": "store unreachable",
    }
    for message, reported in cases.items():
        assert reportable_problem(ValueError(message)) == reported
    assert reportable_problem(ValueError("")) == "ValueError"
    assert len(reportable_problem(ValueError("x" * 5_000))) <= 200


@pytest.fixture
def pg_schema() -> Iterator[str]:
    with fresh_schema("persist") as schema:
        yield schema


@pytest.fixture
async def pg_stores(pg_schema: str) -> AsyncIterator[NodeStores]:
    stores = await NodeStores.open(
        StoreConfig(timeseries_url=PG_URL, timeseries_schema=pg_schema), "r1"
    )
    try:
        assert stores.shared_timeseries
        yield stores
    finally:
        await stores.close()


def outcome(agent: str) -> Outcome:
    request = EvaluationRequest(Action(agent, "SELECT 1", "query"), "req", "query")
    return Outcome(request, Evaluation(Decision.ALLOW, 0.2, 0.9), 0.5, 1_000, time.time_ns())


async def test_a_store_problem_that_leaves_the_node_holds_no_refused_values(
    pg_schema: str, pg_stores: NodeStores, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL refuses an evaluation's row with a message that quotes the agent's id
    (a policy trigger; PostgreSQL's own messages quote values the same way, and its
    DETAIL gives the row). GetNodeInfo, which the coordinator calls, reported the first
    line as it was: an agent id left the region. The node's log keeps it whole."""
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(
            f'CREATE FUNCTION "{pg_schema}".refuse() RETURNS trigger LANGUAGE plpgsql AS $$ '
            "BEGIN RAISE EXCEPTION 'agent \"%\" may not be stored', NEW.agent_id "
            "USING DETAIL = 'Failing row contains (' || NEW.agent_id || ')'; END $$"
        )
        conn.execute(
            f'CREATE TRIGGER refuse BEFORE INSERT ON "{pg_schema}".metrics '
            f'FOR EACH ROW EXECUTE FUNCTION "{pg_schema}".refuse()'
        )
    p = Persister(RegionNode(NodeIdentity("r1", "r1-a")), pg_stores, ProfileBook(), 60.0)
    p.enqueue([outcome(SECRET)])
    await p.round(windows=False, profiles=False)
    try:
        (status,) = [c for c in pg_stores.choices() if c.store == "timeseries"]
        assert status.problem == 'agent "…" may not be stored'
        assert SECRET not in status.problem
        assert SECRET in caplog.text  # in-region, the log has the whole message
    finally:
        await p.stop()


async def test_a_failed_restore_is_reported_without_the_query_and_cleared_when_it_succeeds(
    pg_schema: str, pg_stores: NodeStores
) -> None:
    """The store's window table is missing when the node starts (renamed by an operator):
    the restore fails, the store's problem and the answers' gap say so, without the
    driver's full text. Once the table is back the next flush restores the windows; on
    an idle node (no window, no evaluation to write) the problem stayed reported for
    good, though the store answered again."""
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'ALTER TABLE "{pg_schema}".window_summaries RENAME TO ws_away')
    node = RegionNode(NodeIdentity("r1", "r1-a"))
    p = Persister(node, pg_stores, ProfileBook(), 60.0)
    try:
        with pytest.raises(psycopg.Error):
            await p.restore()
        await p.round(windows=True, profiles=False)  # the restore fails again
        assert not p.restored
        problem = pg_stores.problems["timeseries"]
        assert pg_schema not in problem and "\n" not in problem
        (gap,) = node.gap_reasons()
        assert gap == GAP_WINDOWS_NOT_LOADED
        detail = node._gaps[gap].message
        assert pg_schema not in detail and "\n" not in detail

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'ALTER TABLE "{pg_schema}".ws_away RENAME TO window_summaries')
        await p.round(windows=True, profiles=False)
        assert p.restored and node.gap_reasons() == []
        assert pg_stores.problems == {}
        assert all(not c.problem for c in pg_stores.choices())
    finally:
        await p.stop()
