"""Store faults with real processes: the region node keeps serving while its stores fail,
and catches up when they return.

* Redis (a private ``redis-server`` on a free port, started and stopped by the test):
  stopped while Evaluate traffic flows, then started again on the same port.
* SQLite time-series store: the node SIGKILLed mid-ingest and restarted with the same
  flags: what was flushed before the kill is back.
* PostgreSQL: the shared server on 5432 is never stopped (other work uses it); the node
  reaches it through a TCP proxy run by the test, which cuts every connection and
  refuses new ones, then lets them through again.

Under ``CI`` a missing ``redis-server`` binary or PostgreSQL fails these tests; without
it they are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import psycopg
import pytest
import redis.asyncio as aioredis
from meshutil import free_port
from services import PG_URL, fresh_schema
from tcpproxy import CuttableProxy
from test_faults import launch

from nethical_grpc import client, convert
from nethical_grpc.cli.processes import Child, mesh_command
from nethical_grpc.v1 import governance_pb2, region_node_pb2, region_node_pb2_grpc
from region_node.persistence import WRITE_INTERVAL_S

pytestmark = pytest.mark.e2e

PG_HOST, PG_PORT = "127.0.0.1", 5432
FAR_FUTURE_S = 10**11
FLUSH = "200ms"
# window flushes happen on the persister's ticks, once --flush-interval has passed
FLUSH_PERIOD_S = max(0.2, WRITE_INTERVAL_S)
Stub = region_node_pb2_grpc.RegionNodeServiceStub


def _unavailable(what: str, reason: object) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required under CI: {reason}")
    pytest.skip(f"{what} not available: {reason}")


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.05)


@dataclass
class Node:
    child: Child
    channel: grpc.aio.Channel
    stub: Stub


@contextlib.asynccontextmanager
async def region(
    name: str, workdir: Path, *flags: str, region_id: str | None = None
) -> AsyncIterator[Node]:
    """A ``nethical-mesh region`` process and a channel to it; stopped on exit."""
    args = ["region", "--region-id", region_id or name, "--port", "0", *flags]
    child = launch(name, args, workdir)
    try:
        port = await child.aport(120)
        async with client.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield Node(child, ch, region_node_pb2_grpc.RegionNodeServiceStub(ch))
    finally:
        await asyncio.to_thread(child.stop)


async def store_status(stub: Stub, store: str) -> region_node_pb2.StoreStatus:
    info = await stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=10)
    [status] = [s for s in info.stores if s.store == store]
    found: region_node_pb2.StoreStatus = status
    return found


async def total_count(stub: Stub, metric: str) -> int:
    resp = await stub.GetSummaries(
        region_node_pb2.GetSummariesRequest(
            metrics=[metric],
            start_time=convert.ns_to_timestamp(0),
            end_time=convert.ns_to_timestamp(FAR_FUTURE_S * 10**9),
        ),
        timeout=10,
    )
    return sum(int(s.summary.moments.count) for s in resp.series)


def evaluate_request(agent: str) -> region_node_pb2.EvaluateRequest:
    return region_node_pb2.EvaluateRequest(
        action=governance_pb2.AgentAction(
            agent_id=agent, action_text="SELECT title FROM books WHERE id = 7"
        )
    )


@dataclass
class Traffic:
    """Evaluate calls back to back; any failed call ends the loop and fails the test."""

    stub: Stub
    prefix: str = "before"
    ok: int = 0
    ok_by_prefix: dict[str, int] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            prefix = self.prefix
            await self.stub.Evaluate(evaluate_request(f"{prefix}-agent-{i % 4}"), timeout=10)
            self.ok += 1
            self.ok_by_prefix[prefix] = self.ok_by_prefix.get(prefix, 0) + 1
            i += 1

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def check(self) -> None:
        """Re-raise what the loop hit, if it stopped."""
        assert self._task is not None
        if self._task.done():
            self._task.result()
            raise AssertionError("the traffic loop ended by itself")

    async def until_ok(self, prefix: str, n: int) -> None:
        async def enough() -> bool:
            self.check()
            return self.ok_by_prefix.get(prefix, 0) >= n

        await eventually(enough, f"{n} evaluations as {prefix}")

    async def stop(self) -> None:
        self.check()
        self._stop.set()
        assert self._task is not None
        await self._task


# -- (a) Redis stopped and started ---------------------------------------------------


@dataclass
class PrivateRedis:
    """A redis-server of this test's own on one port, which it can stop and start."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        with open(self.workdir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.workdir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    async def wait_ready(self) -> None:
        async def pong() -> bool:
            r = aioredis.Redis(port=self.port, socket_timeout=1)
            try:
                return bool(await r.ping())
            except (aioredis.ConnectionError, OSError):
                return False
            finally:
                await r.aclose()

        await eventually(pong, "redis-server answers PING", 30)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.proc.wait, 30)

    async def keys(self, pattern: str) -> list[bytes]:
        r = aioredis.Redis(port=self.port, socket_timeout=5)
        try:
            return [k if isinstance(k, bytes) else k.encode() for k in await r.keys(pattern)]
        finally:
            await r.aclose()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        _unavailable("redis-server", "not on PATH")
    server = PrivateRedis(free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)


async def test_redis_stopped_and_started_while_evaluations_flow(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    await private_redis.wait_ready()
    region_id = f"sf-redis-{secrets.token_hex(3)}"
    profiles = f"nethical:{region_id}:profile:*"
    cache_url = f"redis://127.0.0.1:{private_redis.port}/0"
    flags = ["--cache-url", cache_url, "--flush-interval", FLUSH]
    async with region("sf-redis", tmp_path, *flags, region_id=region_id) as node:
        stub = node.stub
        assert (await store_status(stub, "cache")).backend == "redis"
        traffic = Traffic(stub)
        traffic.start()

        async def profiles_in_redis(prefix: str) -> bool:
            traffic.check()
            found = await private_redis.keys(profiles)
            return sum(1 for k in found if f":profile:{prefix}-agent-".encode() in k) == 4

        await eventually(lambda: profiles_in_redis("before"), "profiles written to Redis")

        # Redis goes away: every Evaluate still answers, the node says it uses memory
        traffic.prefix = "outage"
        await private_redis.stop()

        async def on_memory() -> bool:
            traffic.check()
            status = await store_status(stub, "cache")
            return status.backend == "memory" and bool(status.reason)

        await eventually(on_memory, "the cache reports memory with a reason")
        await traffic.until_ok("outage", 40)
        status = await store_status(stub, "cache")
        assert status.requested == cache_url and status.backend == "memory"

        # Redis is back on the same port: the cache returns to it and writes back
        private_redis.start()
        await private_redis.wait_ready()

        async def on_redis() -> bool:
            traffic.check()
            status = await store_status(stub, "cache")
            return status.backend == "redis" and status.reason == ""

        await eventually(on_redis, "the cache reports redis again")
        traffic.prefix = "after"
        await eventually(lambda: profiles_in_redis("outage"), "outage profiles in Redis")
        await eventually(lambda: profiles_in_redis("after"), "new profiles in Redis")
        await traffic.stop()
    assert traffic.ok_by_prefix["outage"] >= 40


# -- (b) SIGKILL during ingest, SQLite store ----------------------------------------


def flushed_count(db: Path, metric: str) -> int:
    """Observations in the window rows committed to the node's SQLite file."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            row = conn.execute(
                "SELECT COALESCE(SUM(count), 0) FROM window_summaries WHERE metric = ?",
                (metric,),
            ).fetchone()
    except sqlite3.OperationalError:  # not created yet, or busy
        return -1
    return int(row[0])


@dataclass
class SentLog:
    """When each batch was handed to the stream (monotonic s) and the total after it."""

    times: list[float] = field(default_factory=list)
    totals: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.totals[-1] if self.totals else 0

    def before(self, t: float) -> int:
        """Values sent before time ``t``."""
        i = int(np.searchsorted(np.asarray(self.times), t, side="left"))
        return self.totals[i - 1] if i else 0


async def test_a_killed_node_keeps_every_window_flushed_before_the_kill(tmp_path: Path) -> None:
    """SIGKILL mid-ingest, restart with the same flags: the flushed windows are back.

    Phase 1 is streamed and acknowledged, then the test waits for two flush periods
    and for its whole count in the SQLite file: it was flushed before the kill. Phase 2
    is paced (a batch every 10 ms, each send time logged) and the node is SIGKILLed in
    the middle of it.

    Window summaries are upserted every ``max(--flush-interval, the persister's tick)``
    (0.2 s here) and a flush the kill interrupts is rolled back, so the restarted node
    may miss what was applied after the last committed flush: at most two flush periods'
    worth of what was sent before the kill. So: phase-1 count <= restarted count <= sent,
    the restarted count is at least the last count seen committed in the file before the
    kill, and sent minus restarted is at most what was sent in the last two flush
    periods before the kill.
    """
    db = tmp_path / "ts.db"
    metric = "kill_ingest"
    flags = [
        "--timeseries-url",
        f"sqlite:///{db}",
        "--instance-id",
        "fixed",
        "--flush-interval",
        FLUSH,
    ]
    phase1 = [client.encode_ingest_request(metric, np.full(100, float(i))) for i in range(50)]
    sent = SentLog()
    committed: list[tuple[float, int]] = []  # (time seen, count) while phase 2 runs
    async with region("sf-kill", tmp_path, *flags) as node:
        ack = await client.ingest(node.channel, phase1)
        phase1_count = int(ack.accepted_values)
        assert phase1_count == 5_000
        await asyncio.sleep(2 * FLUSH_PERIOD_S)

        async def phase1_committed() -> bool:
            return flushed_count(db, metric) == phase1_count

        await eventually(phase1_committed, "phase 1 committed to the file", 30)

        async def paced() -> AsyncIterator[bytes]:
            for i in range(1_000):
                batch = client.encode_ingest_request(metric, np.full(10, float(i)))
                # logged as sent when handed over: it may reach the node from now on
                sent.times.append(time.monotonic())
                sent.totals.append(phase1_count + 10 * (i + 1))
                yield batch
                await asyncio.sleep(0.01)

        async def watch_file() -> None:
            while True:
                committed.append((time.monotonic(), flushed_count(db, metric)))
                await asyncio.sleep(0.03)

        stream = asyncio.ensure_future(client.ingest(node.channel, paced(), timeout=60))
        watcher = asyncio.ensure_future(watch_file())
        await asyncio.sleep(1.5)
        node.child.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        watcher.cancel()
        await asyncio.to_thread(node.child.proc.wait, 10)
        with pytest.raises(grpc.aio.AioRpcError):
            await stream
    total_sent = sent.before(killed_at + 1e-9)
    last_seen = max((c for t, c in committed if t < killed_at), default=phase1_count)

    async with region("sf-kill-again", tmp_path, *flags, region_id="sf-kill") as again:
        restarted = await total_count(again.stub, metric)
    lost = total_sent - restarted
    budget = total_sent - sent.before(killed_at - 2 * FLUSH_PERIOD_S)
    print(
        f"phase1={phase1_count} sent={total_sent} last_committed_seen={last_seen} "
        f"restarted={restarted} lost={lost} sent_in_last_2_flush_periods={budget}"
    )
    assert phase1_count <= last_seen <= restarted <= total_sent
    assert total_sent > phase1_count  # the kill did land mid-stream
    assert lost <= budget


# -- (c) PostgreSQL cut off and restored (through a proxy) --------------------------


@pytest.fixture
def pg_schema() -> Iterator[str]:
    with fresh_schema("store_faults") as schema:
        yield schema


async def pg_scalar(query: str, *params: object) -> int:
    """One number from the real server (directly, not through the proxy)."""
    async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        row = await cur.fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


async def test_postgresql_cut_off_and_restored_during_ingest(
    pg_schema: str, tmp_path: Path
) -> None:
    """While the proxy refuses PostgreSQL, ingest and Evaluate keep answering and the
    node's own summaries include the new data; nothing new reaches the schema. Once the
    proxy lets connections through again, the retried flushes catch up: the window rows
    hold every observation and the evaluations' metric rows arrive."""
    proxy = CuttableProxy(PG_HOST, PG_PORT)
    await proxy.start()
    metric = "pg_cut_ingest"
    windows_sql = (
        f'SELECT COALESCE(SUM(count), 0) FROM "{pg_schema}".window_summaries WHERE metric = %s'
    )
    rows_sql = f'SELECT COUNT(*) FROM "{pg_schema}".metrics WHERE agent_id = %s'
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test?schema={pg_schema}"
    flags = ["--timeseries-url", url, "--flush-interval", FLUSH, "--instance-id", "sf-pg-0"]
    try:
        async with region("sf-pg", tmp_path, *flags) as node:
            status = await store_status(node.stub, "timeseries")
            assert status.backend.startswith("postgresql"), status
            await client.ingest(
                node.channel, [client.encode_ingest_request(metric, np.arange(1_000.0))]
            )

            async def first_phase_flushed() -> bool:
                return await pg_scalar(windows_sql, metric) == 1_000

            await eventually(first_phase_flushed, "the first phase's windows in the schema")

            proxy.cut()
            cut_at = time.monotonic()
            ack = await client.ingest(
                node.channel,
                [client.encode_ingest_request(metric, np.ones(500)) for _ in range(4)],
            )
            assert ack.accepted_values == 2_000
            for _ in range(10):
                verdict = await node.stub.Evaluate(evaluate_request("pg-cut-agent"), timeout=10)
                assert verdict.evaluation.decision != governance_pb2.DECISION_UNSPECIFIED
            assert await total_count(node.stub, metric) == 3_000
            # an in-region read of the unreachable store: UNAVAILABLE, promptly (it was
            # INTERNAL after the pool's 30 s wait, or a hang on a silent connection)
            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await node.stub.QueryMetrics(
                    region_node_pb2.QueryMetricsRequest(agent_id="pg-cut-agent"), timeout=30
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
            assert time.monotonic() - t0 < 15  # a hang bound

            async def problem_reported() -> bool:
                return bool((await store_status(node.stub, "timeseries")).problem)

            # GetNodeInfo says the store in use fails now (it kept saying nothing)
            await eventually(problem_reported, "the store's problem in GetNodeInfo", 60)
            # within a few seconds of the first write after the cut (a write waited 30 s
            # for a pooled connection before)
            assert time.monotonic() - cut_at < 20
            await asyncio.sleep(8 * FLUSH_PERIOD_S)  # several flush rounds, all failing
            assert await pg_scalar(windows_sql, metric) == 1_000
            assert await pg_scalar(rows_sql, "pg-cut-agent") == 0
            assert await total_count(node.stub, metric) == 3_000

            proxy.restore()

            async def caught_up() -> bool:
                windows = await pg_scalar(windows_sql, metric)
                rows = await pg_scalar(rows_sql, "pg-cut-agent")
                return windows == 3_000 and rows == 10

            await eventually(caught_up, "the flushes catch up after the cut", 90)
            status = await store_status(node.stub, "timeseries")
            assert status.backend.startswith("postgresql")
            assert status.problem == ""  # cleared by the writes that succeeded
    finally:
        await proxy.close()


async def test_a_logged_node_does_not_start_on_a_fallback_store(
    pg_schema: str, tmp_path: Path
) -> None:
    """With --wal-dir, batches flushed to PostgreSQL are checkpointed out of the log. A
    restart while PostgreSQL is unreachable would serve only the log's tail (and refuse
    re-sends of the flushed batches as duplicates): the node refuses to start instead,
    with one line, and starts whole once PostgreSQL answers."""
    proxy = CuttableProxy(PG_HOST, PG_PORT)
    await proxy.start()
    metric = "wal_pg"
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test?schema={pg_schema}"
    wal = tmp_path / "wal"
    flags = ["--timeseries-url", url, "--flush-interval", FLUSH, "--wal-dir", str(wal)]
    flags += ["--instance-id", "wal-pg-0"]  # the windows it flushed are its own
    windows_sql = (
        f'SELECT COALESCE(SUM(count), 0) FROM "{pg_schema}".window_summaries WHERE metric = %s'
    )
    try:
        async with region("wal-pg", tmp_path, *flags, region_id="wal-pg") as node:
            batches = [
                client.encode_ingest_request(metric, np.ones(10), batch_id=f"b{i}")
                for i in range(20)
            ]
            await client.ingest(node.channel, batches)

            async def flushed() -> bool:
                return await pg_scalar(windows_sql, metric) == 200 and (wal / "checkpoint").exists()

            await eventually(flushed, "the windows flushed and checkpointed")
            node.child.signal(signal.SIGKILL)
            node.child.proc.wait(10)
        proxy.cut()
        refused = launch(
            "wal-pg-2", ["region", "--region-id", "wal-pg", "--port", "0", *flags], tmp_path
        )
        try:
            assert refused.proc.wait(120) == 2
        finally:
            refused.stop()
        said = refused.log_path.read_text()
        assert "cannot start the region node" in said and "write-ahead log" in said
        assert "Traceback" not in said
        proxy.restore()
        async with region("wal-pg-3", tmp_path, *flags, region_id="wal-pg") as again:
            assert await total_count(again.stub, metric) == 200
    finally:
        await proxy.close()


async def test_a_stop_while_postgresql_is_cut_is_bounded_and_says_what_it_lost(
    pg_schema: str, tmp_path: Path
) -> None:
    """SIGTERM while the store does not answer: the node stops within its drain and the
    stores' bound (it took 61-72 s, two pool waits in a row), and logs what it could not
    write (it said nothing)."""
    proxy = CuttableProxy(PG_HOST, PG_PORT)
    await proxy.start()
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test?schema={pg_schema}"
    try:
        async with region("stop-pg", tmp_path, "--timeseries-url", url) as node:
            proxy.cut()
            for _ in range(20):
                await node.stub.Evaluate(evaluate_request("stop-agent"), timeout=10)
            t0 = time.monotonic()
            node.child.signal(signal.SIGTERM)
            code = await asyncio.to_thread(node.child.proc.wait, 60)
            took = time.monotonic() - t0
        assert code == 0
        assert took < 20  # 1 s announce + 5 s grace + 5 s for the stores, and some slack
        said = node.child.log_path.read_text()
        assert "stopping with" in said and "not written" in said
    finally:
        await proxy.close()


async def test_a_node_restarted_while_postgresql_is_cut_off_says_what_it_leaves_out(
    pg_schema: str, tmp_path: Path
) -> None:
    """Restarted while the proxy refuses PostgreSQL (no --wal-dir), the node keeps its
    windows in memory and answers from what came after its start. Its answers about the
    time before the start name the gap (the windows flushed there are left out), and a
    coordinator's coverage names the instance incomplete, in JSON and in the `query`
    table, also for a query from the start (its window holds what was flushed before);
    one from the first window after the start is complete. Restarted once PostgreSQL
    answers (with --serve-while-restoring), the node is whole again."""
    proxy = CuttableProxy(PG_HOST, PG_PORT)
    await proxy.start()
    metric = "gap_pg"
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test?schema={pg_schema}"
    flags = ["--timeseries-url", url, "--flush-interval", FLUSH, "--instance-id", "gap-pg-0"]
    windows_sql = (
        f'SELECT COALESCE(SUM(count), 0) FROM "{pg_schema}".window_summaries WHERE metric = %s'
    )
    try:
        async with region("gap-pg", tmp_path, *flags) as node:
            await client.ingest(
                node.channel, [client.encode_ingest_request(metric, np.arange(1_000.0))]
            )

            async def flushed() -> bool:
                return await pg_scalar(windows_sql, metric) == 1_000

            await eventually(flushed, "the windows in the schema")
        proxy.cut()
        before_start = time.time_ns()
        async with region("gap-pg-2", tmp_path, *flags, region_id="gap-pg") as node:
            await client.ingest(node.channel, [client.encode_ingest_request(metric, np.ones(500))])
            answer = await node.stub.GetSummaries(
                region_node_pb2.GetSummariesRequest(metrics=[metric]), timeout=10
            )
            assert sum(s.summary.moments.count for s in answer.series) == 500
            [gap] = answer.gaps
            assert gap.reason == "STORE_FALLBACK"
            started = convert.timestamp_to_ns(gap.end_time)
            assert before_start <= started <= time.time_ns()
            assert f"127.0.0.1:{proxy.port}" in gap.message and "left out" in gap.message
            port = await node.child.aport()
            info = await asyncio.to_thread(
                subprocess.run,
                mesh_command("info", "--target", f"127.0.0.1:{port}"),
                capture_output=True,
                text=True,
            )
            assert info.returncode == 0, info.stderr
            assert "left out     before " in info.stdout and ": STORE_FALLBACK: " in info.stdout
            coordinator = launch(
                "gap-coordinator",
                ["coordinator", "--port", "0", "--region", f"gap-pg=127.0.0.1:{port}"],
                tmp_path,
            )
            try:
                target = ["--target", f"127.0.0.1:{await coordinator.aport(120)}"]
                await eventually(
                    lambda: _query_says(target, "--json", want="regionsAnswered"),
                    "the coordinator sees the node",
                )
                out = await asyncio.to_thread(_query, *target, "--json", "--metric", metric)
                coverage = json.loads(out)["coverage"]
                assert coverage.get("complete", False) is False
                assert coverage["regionsAnswered"] == ["gap-pg"]
                [part] = coverage["missing"]
                assert part["instanceId"] == "gap-pg-0"
                assert part["reason"] == "MISSING_REASON_INCOMPLETE"
                assert part["message"].startswith("STORE_FALLBACK: ")
                table = await asyncio.to_thread(_query, *target, "--metric", metric)
                assert "incomplete gap-pg/gap-pg-0: STORE_FALLBACK" in table
                # the time since the start, from the start itself (to the microsecond, not
                # before it): a duration would count back from the query's later clock
                epoch = datetime(1970, 1, 1, tzinfo=UTC)
                from_start = epoch + timedelta(microseconds=-(-started // 1_000))
                since = ["--since", from_start.isoformat()]
                recent = json.loads(
                    await asyncio.to_thread(_query, *target, "--json", *since, "--metric", metric)
                )
                # it merges the start's window whole, which held windows flushed before
                assert recent["coverage"].get("complete", False) is False
                assert int(recent["results"][0]["statistics"]["count"]) == 500
                # from the first window after the start: complete
                window_us = 10_000_000  # the default --window
                after = -(-started // 1_000 // window_us) * window_us
                next_window = ["--since", (epoch + timedelta(microseconds=after)).isoformat()]
                later = json.loads(
                    await asyncio.to_thread(
                        _query, *target, "--json", *next_window, "--metric", metric
                    )
                )
                assert later["coverage"]["complete"] is True
            finally:
                await asyncio.to_thread(coordinator.stop)
        proxy.restore()
        # restarted again, serving while it reads its windows back: whole once it has
        again_flags = [*flags, "--serve-while-restoring"]
        async with region("gap-pg-3", tmp_path, *again_flags, region_id="gap-pg") as again:

            async def whole() -> bool:
                answer = await again.stub.GetSummaries(
                    region_node_pb2.GetSummariesRequest(metrics=[metric]), timeout=10
                )
                count = sum(s.summary.moments.count for s in answer.series)
                return not answer.gaps and count == 1_000

            await eventually(whole, "the restored windows, and no gap")
    finally:
        await proxy.close()


def _query(*args: str) -> str:
    out = subprocess.run(mesh_command("query", *args), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


async def _query_says(args: list[str], *more: str, want: str) -> bool:
    out = await asyncio.to_thread(
        subprocess.run, mesh_command("query", *args, *more), capture_output=True, text=True
    )
    return out.returncode == 0 and want in out.stdout
