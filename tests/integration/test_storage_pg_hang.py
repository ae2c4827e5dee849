"""The PostgreSQL time-series store against a server that hangs: the TCP connection stays
open and nothing comes back (a hung host, a stalled proxy or partition). The real server on
127.0.0.1:5432 is never stopped; the store reaches it through a TCP proxy run by the test
(:class:`tcpproxy.CuttableProxy`), which stops forwarding and then forwards again.

Every write fails within its bound (shortened here from 30 s to keep the tests short)
with :class:`TimeSeriesUnavailableError`, the error the persister counts as a failed write
and retries, and the next write after the server answers again succeeds on a fresh
connection. A write whose COMMIT the server took but whose answer was lost (the proxy
forwards it, then cuts the connection) is retried by the persister, and stored once.
Without PostgreSQL these tests skip, or fail when ``CI`` is set.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime

import numpy as np
import psycopg
import pytest
from services import PG_URL, fresh_schema
from tcpproxy import CuttableProxy

from nethical_grpc.governance.decision import Decision, Evaluation
from nethical_grpc.governance.detectors import Action
from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.governance.requests import EvaluationRequest, Outcome
from nethical_grpc.storage.timeseries import MetricPoint, WindowSummaryRow
from nethical_grpc.storage.timeseries.base import TimeSeriesUnavailableError
from nethical_grpc.storage.timeseries.postgres import PostgresTimeSeriesStore
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import Persister
from region_node.stores import NodeStores, StoreConfig

PG_HOST, PG_PORT = "127.0.0.1", 5432
BOUND_S = 2.0
SLACK_S = 1.5  # the event loop, the pool's bookkeeping; nothing near psycopg's 10 s cancel


@pytest.fixture
def pg_schema() -> Iterator[str]:
    with fresh_schema("ts_hang") as schema:
        yield schema


@pytest.fixture
async def proxy() -> AsyncIterator[CuttableProxy]:
    p = CuttableProxy(PG_HOST, PG_PORT)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def store(pg_schema: str, proxy: CuttableProxy) -> AsyncIterator[PostgresTimeSeriesStore]:
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test?schema={pg_schema}"
    s = await PostgresTimeSeriesStore.open(url, region_id="hang", max_size=2)
    s.write_timeout_s = BOUND_S
    s.read_timeout_s = BOUND_S
    try:
        yield s
    finally:
        proxy.resume()
        await s.close()


def _window(start_ns: int) -> WindowSummaryRow:
    return WindowSummaryRow("hang", "i0", "m", {"k": "v"}, start_ns, 10**10, b"\x01", 1)


async def _scalar(query: str) -> int:
    """One number from the real server (directly, not through the proxy)."""
    async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
        row = await (await conn.execute(query)).fetchone()
    return int(row[0]) if row is not None else 0


async def _fails_in_bound(what: str, call: Callable[[], Awaitable[object]]) -> float:
    t0 = time.monotonic()
    # the outer bound only turns a hang into a failure of this test, not a stuck run
    async with asyncio.timeout(60):
        with pytest.raises(TimeSeriesUnavailableError, match="did not answer a"):
            await call()
    took = time.monotonic() - t0
    assert took < BOUND_S + SLACK_S, (what, took)
    return took


async def test_writes_to_a_hung_server_fail_within_their_bound(
    store: PostgresTimeSeriesStore, proxy: CuttableProxy, pg_schema: str
) -> None:
    now = datetime.now(UTC)
    now_ns = time.time_ns()
    await store.insert_metric("a", "m", 1.0, now)  # a pooled connection, checked and used
    proxy.stall()
    writes: dict[str, Callable[[], Awaitable[object]]] = {
        "metrics": lambda: store.insert_metrics([MetricPoint("a", "m", 2.0, now)]),
        "columns": lambda: store.insert_metric_values("m", np.ones(100), now_ns + np.arange(100)),
        "event": lambda: store.insert_event("e", "a", "INFO", None, None, now),
        "audit": lambda: store.insert_audit_log(f"act-{uuid.uuid4()}", "a", "ALLOW", [], None, now),
        "windows": lambda: store.upsert_window_summaries([_window(now_ns)]),
        "delete windows": lambda: store.delete_window_summaries_before("hang", now_ns),
        "retention": lambda: store.apply_retention(),
    }
    took = {what: await _fails_in_bound(what, call) for what, call in writes.items()}
    assert min(took.values()) >= BOUND_S - 0.1, took  # the bound, not a refusal
    proxy.resume()
    await store.insert_metric("a", "m", 3.0, now)
    await store.upsert_window_summaries([_window(now_ns)])
    table = f'"{pg_schema}"'
    assert await _scalar(f"SELECT count(*) FROM {table}.metrics") == 2  # 1.0 and 3.0
    assert await _scalar(f"SELECT count(*) FROM {table}.window_summaries") == 1


async def test_a_write_stalled_mid_batch_is_not_committed(
    store: PostgresTimeSeriesStore, proxy: CuttableProxy, pg_schema: str
) -> None:
    """The server stops answering while a large batch is on its way: the write fails in
    its bound and nothing of it is committed; the same batch written again lands once."""
    n = 200_000
    ts = time.time_ns() + np.arange(n)
    await store.insert_metric("a", "m", 1.0)

    async def write() -> None:
        await store.insert_metric_values("big", np.ones(n), ts)

    task = asyncio.ensure_future(write())
    await asyncio.sleep(0.05)  # part of the COPY is out
    proxy.stall()
    t0 = time.monotonic()
    with pytest.raises(TimeSeriesUnavailableError, match=r"within 2 s$"):  # hung up
        await asyncio.wait_for(task, 60)
    assert time.monotonic() - t0 < BOUND_S + SLACK_S
    proxy.resume()
    query = f"SELECT count(*) FROM \"{pg_schema}\".metrics WHERE metric_name = 'big'"
    assert await _scalar(query) == 0
    # written again with a server that answers: 200,000 rows through the proxy can take
    # longer than the hang bound on a slow machine, and this is not what is timed here
    store.write_timeout_s = 60.0
    await write()
    assert await _scalar(query) == n


async def test_a_read_of_a_hung_server_fails_within_its_bound(
    store: PostgresTimeSeriesStore, proxy: CuttableProxy
) -> None:
    await store.insert_metric("a", "m", 1.0)
    proxy.stall()
    t0 = time.monotonic()
    async with asyncio.timeout(60):
        with pytest.raises(TimeSeriesUnavailableError):
            await store.query_metrics(agent_id="a")
    assert time.monotonic() - t0 < BOUND_S + SLACK_S  # it took the bound plus 10 s
    proxy.resume()
    assert len(await store.query_metrics(agent_id="a")) == 1


async def test_connection_settings(store: PostgresTimeSeriesStore) -> None:
    """Sessions end what their client gave up on; TCP keepalives notice a dead peer."""
    pool = store._pool
    assert pool is not None
    async with pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT current_setting('statement_timeout'), "
                "current_setting('idle_in_transaction_session_timeout')"
            )
        ).fetchone()
        assert rows == ("30s", "30s")
        assert conn.info.get_parameters()["keepalives_idle"] == "30"


async def _count(pg_schema: str, table: str, column: str = "count(*)") -> int:
    return await _scalar(f'SELECT coalesce({column}, 0) FROM "{pg_schema}".{table}')


async def test_a_metric_batch_whose_commit_answer_was_lost_is_stored_once(
    proxy: CuttableProxy, pg_schema: str
) -> None:
    """The server commits the persister's batch of metric rows, the answer is lost with
    the connection: the persister cannot tell, keeps the batch and writes it again once
    the server answers. The rows (and their per-minute rollup) are stored once."""
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test?schema={pg_schema}"
    stores = await NodeStores.open(StoreConfig(timeseries_url=url), "lost")
    try:
        assert not stores.timeseries_choice.fallback
        p = Persister(RegionNode(NodeIdentity("lost", "lost-a")), stores, ProfileBook(), 60.0)
        request = EvaluationRequest(Action("agent-1", "SELECT 1", "query"), "req", "query")
        evaluation = Evaluation(Decision.ALLOW, 0.25, 0.9)
        now_ns = time.time_ns()
        p.enqueue([Outcome(request, evaluation, 0.5, 1_000, now_ns + i) for i in range(50)])
        await p.round(windows=False, profiles=False)
        assert await _count(pg_schema, "metrics") == 50
        p.enqueue([Outcome(request, evaluation, 0.5, 1_000, now_ns + 50 + i) for i in range(30)])
        proxy.lose_replies_after(b"COMMIT")
        await p.round(windows=False, profiles=False)
        assert await _count(pg_schema, "metrics") == 80  # committed, answer lost
        assert p.backlog() == 30  # kept: the persister cannot tell
        proxy.restore()
        async with asyncio.timeout(60):
            while p.backlog():  # the pool reconnects
                await p.round(windows=False, profiles=False)
                await asyncio.sleep(0.05)
        assert await _count(pg_schema, "metrics") == 80
        assert await _count(pg_schema, "metric_rollup", "sum(n)") == 80
        # a later batch is stored as usual
        p.enqueue([Outcome(request, evaluation, 0.5, 1_000, now_ns + 80 + i) for i in range(5)])
        await p.round(windows=False, profiles=False)
        assert await _count(pg_schema, "metrics") == 85
    finally:
        await stores.close()
