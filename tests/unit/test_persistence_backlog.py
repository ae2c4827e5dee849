"""Evaluations wait for stores that fall behind (a sustained stream), instead of their
records being dropped; never while a store fails, and never for long."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from nethical_grpc.governance.decision import Decision, Evaluation
from nethical_grpc.governance.detectors import Action
from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.governance.requests import EvaluationRequest, Outcome
from nethical_grpc.storage.audit import AuditFilter, SearchQuery
from region_node import persistence
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import Persister
from region_node.stores import NodeStores


def outcomes(n: int, start_ns: int) -> list[Outcome]:
    request = EvaluationRequest(Action("agent-1", "SELECT 1", "query"), "req", "query")
    evaluation = Evaluation(Decision.ALLOW, 0.1, 0.9)
    return [Outcome(request, evaluation, 0.5, 1_000, start_ns + i) for i in range(n)]


def persister(stores: NodeStores) -> Persister:
    return Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, ProfileBook(), 60.0)


@pytest.fixture
def small_marks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(persistence, "BACKLOG_HIGH", 300)
    monkeypatch.setattr(persistence, "BACKLOG_LOW", 100)


async def audited(stores: NodeStores) -> int:
    page = await stores.audit.search(SearchQuery(AuditFilter(agent_id="agent-1"), page_size=1))
    return page.total


@pytest.mark.usefixtures("small_marks")
async def test_past_the_mark_evaluations_wait_until_the_stores_catch_up(
    stores: NodeStores,
) -> None:
    p = persister(stores)
    await p.start()
    try:
        p.enqueue(outcomes(200, 1_000))
        await p.room()  # under the mark: no wait
        assert p.backlog_waits == 0
        p.enqueue(outcomes(200, 2_000))
        assert p.backlog() >= 300
        started = time.monotonic()
        await p.room()
        assert p.backlog_waits == 1
        assert p.backlog() <= 100  # the loop wrote (it writes every WRITE_INTERVAL_S)
        assert time.monotonic() - started < persistence.BACKLOG_WAIT_S
        assert p.dropped == 0
    finally:
        await p.stop()
    assert await audited(stores) == 400  # every record stored, none dropped


@pytest.mark.usefixtures("small_marks")
async def test_no_wait_without_the_write_loop(stores: NodeStores) -> None:
    p = persister(stores)
    p.enqueue(outcomes(400, 1_000))  # the loop is not running: nobody would write
    await asyncio.wait_for(p.room(), 1.0)
    assert p.backlog() == 400 and p.backlog_waits == 0


@pytest.mark.usefixtures("small_marks")
async def test_a_failing_store_does_not_hold_evaluations_but_the_other_does(
    stores: NodeStores,
) -> None:
    p = persister(stores)
    await p.start()
    try:
        await stores.audit.close()  # its writes fail from now on
        p.enqueue(outcomes(400, 1_000))
        deadline = time.monotonic() + 10
        while p._audits.retry is None or len(p._points):  # a round: one fails, one writes
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        started = time.monotonic()
        await p.room()  # 400 wait for the failing store: no wait
        assert time.monotonic() - started < 0.2
        assert p.backlog_waits == 0 and p.backlog() >= 400
        # the store that answers still holds evaluations back when it falls behind
        p.enqueue(outcomes(400, 2_000))
        await p.room()
        assert p.backlog_waits == 1
        assert len(p._points) <= 100  # it waited for the time-series store's write
        assert p.backlog() >= 800  # the audit store's records still wait (bounded)
    finally:
        await p.stop()


async def test_the_wait_is_bounded(stores: NodeStores, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(persistence, "BACKLOG_HIGH", 300)
    monkeypatch.setattr(persistence, "BACKLOG_LOW", -1)  # never reached
    monkeypatch.setattr(persistence, "BACKLOG_WAIT_S", 0.6)
    p = persister(stores)
    await p.start()
    try:
        p.enqueue(outcomes(400, 1_000))
        started = time.monotonic()
        await p.room()
        assert 0.5 <= time.monotonic() - started < 2.0
    finally:
        await p.stop()


async def test_a_round_writes_what_waited_at_its_start_not_what_keeps_coming(
    stores: NodeStores,
) -> None:
    """Under a sustained load a round ends (and comes back to retry a failed store)."""
    p = persister(stores)
    p.enqueue(outcomes(12_000, 1_000))
    calls = 0

    async def write_while_more_come(batch: list[tuple[str, Outcome]]) -> None:
        nonlocal calls
        calls += 1
        p.enqueue(outcomes(5_000, 100_000 * calls))  # as many as the store takes
        values, times_ns, agent_ids, metadata = p._points_of(batch)
        await stores.timeseries.insert_metric_columns(
            "risk_score", values, times_ns, agent_ids=agent_ids, metadata=metadata
        )

    await asyncio.wait_for(p._write_queue(p._points, write_while_more_come), 30)
    # batches of 5,000 until the 12,000 that waited are written (three), then it ends
    assert calls == 3
    assert len(p._points) == 12_000 + 3 * 5_000 - 3 * 5_000  # the rest: the next round


async def test_evaluations_after_the_stop_are_counted_not_lost_silently(
    stores: NodeStores, caplog: pytest.LogCaptureFixture
) -> None:
    p = persister(stores)
    await p.start()
    p.enqueue(outcomes(10, 1_000))
    await p.stop()
    assert await audited(stores) == 10  # the stop wrote what was pending
    p.enqueue(outcomes(7, 2_000))  # a batch that finished after the stop
    assert p.dropped == 7 and p.backlog() == 0
    assert "records not written" in caplog.text


async def test_records_are_made_off_the_event_loop_and_all_stored(
    stores: NodeStores, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a batch's rows (a few µs per evaluation) would hold the loop that answers requests
    loop_thread = threading.get_ident()
    made_on: set[int] = set()
    points, audit = Persister._points_of, Persister._audit

    def spy_points(self: Persister, batch: list[tuple[str, Outcome]]) -> object:
        made_on.add(threading.get_ident())
        return points(self, batch)

    def spy_audit(self: Persister, audit_id: str, o: Outcome) -> object:
        made_on.add(threading.get_ident())
        return audit(self, audit_id, o)

    monkeypatch.setattr(Persister, "_points_of", spy_points)
    monkeypatch.setattr(Persister, "_audit", spy_audit)
    p = persister(stores)
    p.enqueue(outcomes(300, 1_000))
    await p.round(windows=False)
    assert made_on and loop_thread not in made_on
    assert p.backlog() == 0
    assert await audited(stores) == 300
    rows = await stores.timeseries.query_metrics("agent-1", "risk_score", limit=1000)
    assert len(rows) == 300


async def test_an_idle_loop_sleeps_until_records_arrive(
    stores: NodeStores, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = persister(stores)
    rounds = 0
    write_round = p.round

    async def counted(windows: bool, profiles: bool = True) -> None:
        nonlocal rounds
        rounds += 1
        await write_round(windows, profiles)

    monkeypatch.setattr(p, "round", counted)
    await p.start()
    try:
        await asyncio.sleep(0.1)  # the first round (retention is due at the start)
        before = rounds
        await asyncio.sleep(0.5)  # ten write intervals, nothing queued, profiles due in 1 s
        assert rounds == before
        p.enqueue(outcomes(3, 1_000))
        started = time.monotonic()
        while await audited(stores) < 3:  # written a write interval or so later
            assert time.monotonic() - started < 2.0
            await asyncio.sleep(0.01)
        assert rounds > before
    finally:
        await p.stop()
