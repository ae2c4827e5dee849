"""The stop sequence against stores that are slow or hung: each record stored once, and
one store's trouble keeping no other store's writes from it."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from services import REDIS_URL, fresh_redis_region, fresh_schema
from tcpproxy import CuttableProxy

from nethical_grpc.governance.decision import Decision, Evaluation
from nethical_grpc.governance.detectors import Action
from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.governance.requests import EvaluationRequest, Outcome
from nethical_grpc.series import IngestBatch, SeriesKey
from region_node import persistence
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import Persister
from region_node.profile_writes import PROFILE_PREFIX
from region_node.stores import NodeStores, StoreConfig


def outcomes(agent: str, n: int, start_ns: int) -> list[Outcome]:
    request = EvaluationRequest(Action(agent, "SELECT 1", "query"), "req", "query")
    evaluation = Evaluation(Decision.ALLOW, 0.2, 0.9)
    return [Outcome(request, evaluation, 0.5, 1_000, start_ns + i) for i in range(n)]


async def until(check: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_stop_during_a_write_to_an_embedded_store_stores_its_rows_once(
    tmp_path: Path,
) -> None:
    """The loop's write of metric rows is running in the SQLite store's thread (waiting
    for a lock another connection holds) when the node stops. The thread goes on and
    commits the rows; the stop must not write the same batch a second time."""
    path = tmp_path / "ts.db"
    stores = await NodeStores.open(StoreConfig(timeseries_url=f"sqlite:///{path}"), "r1")
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        p = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, ProfileBook(), 60.0)
        await p.start()
        await asyncio.sleep(0.2)  # the loop's first (retention) work is done
        blocker.execute("BEGIN IMMEDIATE")  # the store's writes wait for this lock
        p.enqueue(outcomes("ann", 40, time.time_ns()))
        # the batch is taken (in flight), then reaches the store's thread
        await until(lambda: len(p._points) == 0)
        await asyncio.sleep(0.5)
        # the lock goes while the stop runs: the thread's write then commits
        asyncio.get_running_loop().call_later(0.3, blocker.rollback)
        await p.stop()
        rows = await stores.timeseries.query_metrics(agent_id="ann", limit=1000)
        assert len(rows) == 40
        assert p.backlog() == 0
    finally:
        blocker.close()
        await stores.close()


@pytest.fixture
def redis_region() -> Iterator[str]:
    with fresh_redis_region() as region:
        yield region


@pytest.fixture
async def hung_pg(redis_region: str) -> AsyncIterator[tuple[CuttableProxy, NodeStores, str]]:
    """Stores with the time-series store on PostgreSQL through a proxy, and the cache on
    Redis directly."""
    pytest.importorskip("redis")
    with fresh_schema("review") as schema:
        proxy = CuttableProxy("127.0.0.1", 5432)
        await proxy.start()
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test?schema={schema}"
        stores = await NodeStores.open(
            StoreConfig(cache_url=REDIS_URL, timeseries_url=url), redis_region
        )
        try:
            assert stores.shared_cache and stores.shared_timeseries
            yield proxy, stores, redis_region
        finally:
            proxy.resume()
            await stores.close()
            await proxy.close()


async def test_a_hung_timeseries_store_does_not_keep_the_stop_from_writing_profiles(
    hung_pg: tuple[CuttableProxy, NodeStores, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL stops answering (a hung host) while the loop writes metric rows: the
    stop ends within its bound all the same (psycopg turns a cancel while it waits on
    the server into an error of its own, so the loop's task goes on). Redis answers all
    along: the profiles the stop promises to write reach it, and the audit store's
    records are written too."""
    monkeypatch.setattr(persistence, "STOP_WRITE_LIMIT_S", 1.0)
    proxy, stores, region = hung_pg
    book = ProfileBook()
    p = Persister(RegionNode(NodeIdentity(region, f"{region}-a")), stores, book, 60.0)
    await p.start()
    await asyncio.sleep(0.2)
    proxy.stall()
    p.enqueue(outcomes("bo", 3, time.time_ns()))
    await asyncio.sleep(0.5)  # the loop's write waits for PostgreSQL
    book.update(outcomes("bo", 3, time.time_ns()))
    stopping = asyncio.ensure_future(p.stop())
    done, _ = await asyncio.wait([stopping], timeout=3.0)
    assert done, "the stop did not end within its bound"
    await stopping
    cached = await stores.cache.get(PROFILE_PREFIX + "bo")
    assert isinstance(cached, dict) and cached["evaluations"] == 3
    assert (await stores.audit.get_audit_log_statistics()).total_actions == 3


async def test_a_stop_during_a_flush_to_a_hung_store_ends_within_its_bound(
    hung_pg: tuple[CuttableProxy, NodeStores, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's flush of windows waits on a PostgreSQL that stopped answering when the
    node stops. psycopg answers the cancel with an error of its own (it tries to cancel
    the query on the server, which does not answer either): the loop's task does not
    end, and the stop must not wait for it past its bound."""
    monkeypatch.setattr(persistence, "STOP_WRITE_LIMIT_S", 1.0)
    proxy, stores, region = hung_pg
    node = RegionNode(NodeIdentity(region, f"{region}-a"))
    p = Persister(node, stores, ProfileBook(), 0.1)
    await p.start()
    await asyncio.sleep(0.3)
    proxy.stall()
    node.ingest(IngestBatch(SeriesKey("m", ()), np.arange(5.0), None, time.time_ns()))
    await asyncio.sleep(0.6)  # the loop's flush waits for PostgreSQL
    stopping = asyncio.ensure_future(p.stop())
    done, _ = await asyncio.wait([stopping], timeout=3.0)
    assert done, "the stop did not end within its bound"
    await stopping
    assert p._task is None


async def test_records_a_stop_leaves_unwritten_are_counted_as_dropped(
    hung_pg: tuple[CuttableProxy, NodeStores, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The metric rows a hung PostgreSQL never took at the stop were only logged: the
    node's dropped count (and its metric) said nothing was lost."""
    monkeypatch.setattr(persistence, "STOP_WRITE_LIMIT_S", 1.0)
    proxy, stores, region = hung_pg
    p = Persister(RegionNode(NodeIdentity(region, f"{region}-a")), stores, ProfileBook(), 60.0)
    await p.start()
    await asyncio.sleep(0.2)
    proxy.stall()
    p.enqueue(outcomes("cy", 4, time.time_ns()))
    await asyncio.sleep(0.5)  # the loop's write waits for PostgreSQL
    assert p.dropped == 0
    await p.stop()
    assert (await stores.audit.get_audit_log_statistics()).total_actions == 4
    assert p.dropped == 4  # the 4 risk_score rows; the audit records were written
