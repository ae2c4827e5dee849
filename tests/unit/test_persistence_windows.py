"""What the node writes to its stores when a store fails or refuses some of it."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from nethical_grpc import client, convert
from nethical_grpc.governance.decision import evaluate_action
from nethical_grpc.governance.detectors import Action
from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.governance.requests import EvaluationRequest, Outcome
from nethical_grpc.series import IngestBatch, SeriesKey, SummaryQuery
from nethical_grpc.storage.timeseries import MetricPoint, WindowSummaryRow
from nethical_grpc.v1 import region_node_pb2
from region_node import persistence
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import WAL_MARK_METRIC, Persister
from region_node.stores import NodeStores, StoreConfig
from region_node.wal import WriteAheadLog
from region_node.windows import WindowConfig


async def test_rows_the_store_refuses_are_dropped_and_the_rest_written(tmp_path: Path) -> None:
    """A window whose labels the store cannot keep (a NUL, from a log written before the
    boundary refused them) is dropped and counted; the other windows are written, on this
    flush and the next, instead of waiting behind it forever."""
    stores = await NodeStores.open(
        StoreConfig(timeseries_url=f"sqlite:///{tmp_path / 'ts.db'}"), "r1"
    )
    try:
        node = RegionNode(NodeIdentity("r1", "r1-a"))
        persister = Persister(node, stores, ProfileBook(), 1.0)
        now = time.time_ns()
        node.record_internal(
            [IngestBatch(SeriesKey("good", (("k", "v"),)), np.array([1.0, 2.0]), None, now)]
        )
        bad = WindowSummaryRow("r1", "r1-a", "bad", {"k": "x\x00y"}, 0, 60 * 10**9, b"", 1)
        persister._retry_windows = [bad]
        assert await persister.flush_windows() == 1
        assert persister.dropped == 1
        stored = await stores.timeseries.load_window_summaries("r1")
        assert [(r.metric, dict(r.labels)) for r in stored] == [("good", {"k": "v"})]
        # the next flush is not held either
        node.record_internal([IngestBatch(SeriesKey("later", ()), np.array([3.0]), None, now)])
        assert await persister.flush_windows() == 1
        stored = await stores.timeseries.load_window_summaries("r1")
        assert sorted(r.metric for r in stored) == ["good", "later"]
    finally:
        await stores.close()


class _FailingOnce:
    """A store method that raises ``times`` times (a store down for a while), then works."""

    def __init__(self, method: Callable[..., Awaitable[object]], times: int) -> None:
        self.method, self.left = method, times

    async def __call__(self, *args: object, **kwargs: object) -> object:
        if self.left:
            self.left -= 1
            raise ConnectionError("store unreachable")
        return await self.method(*args, **kwargs)


async def _flushed_before_a_restart(tmp_path: Path, batch: IngestBatch) -> StoreConfig:
    """A node "r1-a" took ``batch`` and flushed its windows to a SQLite file, then
    stopped; returns the store's configuration."""
    config = StoreConfig(timeseries_url=f"sqlite:///{tmp_path / 'ts.db'}")
    stores = await NodeStores.open(config, "r1")
    try:
        before = RegionNode(NodeIdentity("r1", "r1-a"))
        before.store.apply(batch)
        assert await Persister(before, stores, ProfileBook(), 1.0).flush_windows() > 0
    finally:
        await stores.close()
    return config


async def _count(stores: NodeStores) -> int:
    rows = await stores.timeseries.load_window_summaries("r1")
    return sum(r.count for r in rows if r.metric != WAL_MARK_METRIC)


async def test_a_failed_restore_is_retried_and_holds_window_flushes_until_it_succeeds(
    tmp_path: Path,
) -> None:
    """The node started while its store failed: evaluations' records are written as
    usual, windows only once the windows flushed before the restart are back in the
    node (a flush before that would replace them with what came after the start)."""
    now = time.time_ns()
    key = SeriesKey("m", ())
    config = await _flushed_before_a_restart(tmp_path, IngestBatch(key, np.arange(5.0), None, now))
    stores = await NodeStores.open(config, "r1")
    try:
        node = RegionNode(NodeIdentity("r1", "r1-a"))
        persister = Persister(node, stores, ProfileBook(), 60.0)
        load = stores.timeseries.load_window_summaries
        stores.timeseries.load_window_summaries = _FailingOnce(load, 2)  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await persister.start()
        try:
            assert not persister.restored
            node.record_internal([IngestBatch(key, np.arange(3.0), None, now)])
            persister.enqueue([_outcome("agent-7")])
            await persister.round(windows=True)  # the restore fails again: no window flushed
            assert await _count(stores) == 5
            assert stores.problems["timeseries"] == "store unreachable"  # GetNodeInfo says so
            assert len(await stores.timeseries.query_metrics(agent_id="agent-7")) == 1
            await persister.round(windows=True)  # restored, merged, flushed
            assert persister.restored
            assert await _count(stores) == 8
        finally:
            await persister.stop()
    finally:
        await stores.close()


async def test_a_flush_cut_short_by_the_stop_is_written_by_the_stop(tmp_path: Path) -> None:
    """The stop cancels the store loop while its flush waits for the store: the windows
    that flush had taken are written by the stop's last round, not lost (and a stop that
    cannot write them counts them in its log line)."""
    config = StoreConfig(timeseries_url=f"sqlite:///{tmp_path / 'ts.db'}", flush_interval_s=0.05)
    stores = await NodeStores.open(config, "r1")
    try:
        node = RegionNode(NodeIdentity("r1", "r1-a"))
        persister = Persister(node, stores, ProfileBook(), 0.05)
        upsert = stores.timeseries.upsert_window_summaries
        waiting, release = asyncio.Event(), asyncio.Event()

        async def slow_once(rows: list[WindowSummaryRow]) -> int:
            if not waiting.is_set():
                waiting.set()
                await release.wait()  # the store answers slowly: the stop comes first
            return await upsert(rows)

        stores.timeseries.upsert_window_summaries = slow_once  # type: ignore[method-assign]
        await persister.start()
        node.ingest(IngestBatch(SeriesKey("m", ()), np.arange(7.0), None, time.time_ns()))
        await asyncio.wait_for(waiting.wait(), 10)
        await persister.stop()
        assert await _count(stores) == 7
    finally:
        await stores.close()


async def test_an_outage_of_one_store_holds_back_only_its_own_records(tmp_path: Path) -> None:
    stores = await NodeStores.open(
        StoreConfig(timeseries_url=f"sqlite:///{tmp_path / 'ts.db'}"), "r1"
    )
    try:
        persister = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, ProfileBook(), 1.0)
        insert = stores.timeseries.insert_metric_columns
        stores.timeseries.insert_metric_columns = _FailingOnce(insert, 1)  # type: ignore[method-assign]
        persister.enqueue([_outcome("agent-1"), _outcome("agent-2")])
        await persister.round(windows=False)
        # the audit store took its records while the time-series store was down ...
        stats = await stores.audit.get_audit_log_statistics()
        assert stats.total_actions == 2
        assert await stores.timeseries.query_metrics(agent_id="agent-1") == []
        # ... and the metric rows follow once it is back, each once
        await persister.round(windows=False)
        assert len(await stores.timeseries.query_metrics(agent_id="agent-1")) == 1
        assert (await stores.audit.get_audit_log_statistics()).total_actions == 2
        assert persister.dropped == 0
    finally:
        await stores.close()


def _outcome(agent: str) -> Outcome:
    action = Action(agent_id=agent, action_text="SELECT 1", action_type="query")
    request = EvaluationRequest(action=action, request_id="", action_type="query")
    return Outcome(request, evaluate_action(action, 0.1), 0.1, 1_000, time.time_ns())


async def test_an_evaluations_time_is_kept_to_the_microsecond_below(tmp_path: Path) -> None:
    """A record's time is its evaluation's, cut to the microsecond as an ingested time
    is (rounded through a float, one at 23:59:59.9999996 was stored on the next day)."""
    stores = await NodeStores.open(
        StoreConfig(timeseries_url=f"sqlite:///{tmp_path / 'ts.db'}"), "r1"
    )
    try:
        persister = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, ProfileBook(), 60.0)
        day = int(datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp())
        ns = day * 10**9 - 400  # 400 ns before midnight
        outcome = _outcome("agent-9")
        persister.enqueue([Outcome(outcome.request, outcome.evaluation, 0.1, 1_000, ns)])
        await persister.round(windows=False)
        [row] = await stores.timeseries.query_metrics(agent_id="agent-9")
        assert row.timestamp == datetime.fromtimestamp(day, UTC) - timedelta(microseconds=1)
        [hit] = (await stores.audit.search_audit_logs(agent_id="agent-9")).hits
        assert hit.record.timestamp == row.timestamp
    finally:
        await stores.close()


async def test_the_stores_retention_is_applied_to_rows_and_stored_windows(tmp_path: Path) -> None:
    """Rows and stored windows older than the time-series store's retention (30 days by
    default) go at the loop's start; newer ones stay."""
    stores = await NodeStores.open(
        StoreConfig(timeseries_url=f"sqlite:///{tmp_path / 'ts.db'}"), "r1"
    )
    try:
        now = datetime.now(UTC)
        old, recent = now - timedelta(days=45), now - timedelta(days=2)
        await stores.timeseries.insert_metrics(
            [MetricPoint("a", "risk_score", 0.5, t) for t in (old, recent)]
        )
        window_ns = 60 * 10**9
        rows = [
            WindowSummaryRow("r1", "r1-a", "m", {}, int(t.timestamp()) * 10**9, window_ns, b"", 1)
            for t in (old, recent)
        ]
        await stores.timeseries.upsert_window_summaries(rows)
        persister = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, ProfileBook(), 60.0)
        await persister.start()  # the loop applies the retention on its first turn
        try:

            async def pruned() -> bool:
                return len(await stores.timeseries.query_metrics(agent_id="a")) == 1

            for _ in range(100):
                if await pruned():
                    break
                await asyncio.sleep(0.05)
            [kept] = await stores.timeseries.query_metrics(agent_id="a")
            assert kept.timestamp > now - timedelta(days=3)
            windows = await stores.timeseries.load_window_summaries("r1")
            assert [w.window_start_ns for w in windows] == [rows[1].window_start_ns]
        finally:
            await persister.stop()
    finally:
        await stores.close()


def _logged_batch(batch_id: str, values: np.ndarray) -> tuple[IngestBatch, bytes]:
    raw = client.encode_ingest_request("lat", values, batch_id=batch_id)
    request = region_node_pb2.IngestRequest.FromString(raw)
    return convert.ingest_batch_from_proto(request, time.time_ns()), raw


async def _start_logged_node(
    tmp_path: Path, stores: NodeStores
) -> tuple[RegionNode, Persister, WriteAheadLog]:
    """A node with a log, started as the server starts one: the log held, then the
    restore (which applies the held batches the store does not hold)."""
    node, persister, wal = _logged_node(tmp_path, stores)
    await persister.restore()
    persister.restored = True
    return node, persister, wal


def _logged_node(tmp_path: Path, stores: NodeStores) -> tuple[RegionNode, Persister, WriteAheadLog]:
    """A node holding its log (``tmp_path / "wal"``), not restored yet."""
    node = RegionNode(NodeIdentity("r1", "r1-a"))
    wal = WriteAheadLog(tmp_path / "wal")
    node.hold_wal(wal)
    return node, Persister(node, stores, ProfileBook(), 60.0), wal


def _lat_count(node: RegionNode) -> int:
    return sum(g.summary.count for g in node.summaries(SummaryQuery(metrics=frozenset({"lat"}))))


async def _killed_between_flush_and_checkpoint(tmp_path: Path) -> StoreConfig:
    """b1 (100 values) flushed and checkpointed; b2 (50) flushed, and the node killed
    before the checkpoint: the store's windows and mark hold b2, the log does too.
    Returns the store's configuration (the node's log is ``tmp_path / "wal"``)."""
    config = StoreConfig(timeseries_url=f"sqlite:///{tmp_path / 'ts.db'}")
    stores = await NodeStores.open(config, "r1")
    try:
        await _kill_between_flush_and_checkpoint(tmp_path, stores)
    finally:
        await stores.close()
    return config


async def _restart_counts_b1_and_b2_once(tmp_path: Path, config: StoreConfig) -> None:
    """A restart of the logged node on ``config``'s store: 150 values, a retry of b2 known,
    and a flush leaves the store at 150."""
    stores = await NodeStores.open(config, "r1")
    try:
        node, persister, wal = await _start_logged_node(tmp_path, stores)
        assert _lat_count(node) == 150
        batch, raw = _logged_batch("b2", np.arange(50.0))
        assert not node.ingest(batch, raw)  # a retry of b2 is still known
        await persister.flush_windows()
        assert await _count(stores) == 150
        wal.close()
    finally:
        await stores.close()


async def _kill_between_flush_and_checkpoint(tmp_path: Path, stores: NodeStores) -> None:
    node, persister, wal = await _start_logged_node(tmp_path, stores)
    batch, raw = _logged_batch("b1", np.arange(100.0))
    node.ingest(batch, raw)
    await persister.flush_windows()  # flushed and checkpointed
    batch, raw = _logged_batch("b2", np.arange(50.0))
    node.ingest(batch, raw)
    await node.sync()

    def killed(*_: object) -> None:
        raise SystemExit("killed before the checkpoint")

    wal.checkpoint = killed  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        await persister.flush_windows()
    assert await _count(stores) == 150  # the flush did commit
    wal.close()


async def test_a_kill_between_a_flush_and_its_checkpoint_counts_nothing_twice(
    tmp_path: Path,
) -> None:
    """The flush committed (windows hold b2), the node died before its log's checkpoint:
    on restart b2 is in the restored windows and in the log after the checkpoint. It was
    counted twice (200 values for 150), and the double count was flushed for good."""
    config = await _killed_between_flush_and_checkpoint(tmp_path)
    await _restart_counts_b1_and_b2_once(tmp_path, config)


async def test_a_restart_with_the_store_down_holds_the_log_until_the_store_says_what_it_has(
    tmp_path: Path,
) -> None:
    """As above, but the store fails when the restarted node first asks it for its mark.
    The node cannot tell whether b2 is in the store's windows: replayed then, b2 was
    counted a second time once the store came back (200 values for 150). Until the store
    answers, the node knows the log's batches (a retry is a duplicate) and logs and
    applies new ones; then it applies what the store does not hold, once."""
    config = await _killed_between_flush_and_checkpoint(tmp_path)
    stores = await NodeStores.open(config, "r1")
    try:
        node, persister, wal = _logged_node(tmp_path, stores)
        load = stores.timeseries.load_window_summaries
        stores.timeseries.load_window_summaries = _FailingOnce(load, 2)  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await persister.start()
        try:
            assert node.holds_log and _lat_count(node) == 0
            batch, raw = _logged_batch("b2", np.arange(50.0))
            assert not node.ingest(batch, raw)  # known from the log
            batch, raw = _logged_batch("b3", np.arange(7.0))
            assert node.ingest(batch, raw)  # logged and applied at once
            await node.sync()
            await persister.round(windows=True)  # the restore fails again: nothing flushed
            assert await _count(stores) == 150 and node.holds_log
            await persister.round(windows=True)  # restored, the log's rest applied, flushed
            assert persister.restored and not node.holds_log
            assert _lat_count(node) == 157
            assert await _count(stores) == 157
        finally:
            await persister.stop()
            wal.close()
    finally:
        await stores.close()

    # and the log's checkpoint now covers it all: a restart counts each batch once
    stores = await NodeStores.open(config, "r1")
    try:
        node, persister, wal = await _start_logged_node(tmp_path, stores)
        assert _lat_count(node) == 157
        wal.close()
    finally:
        await stores.close()


async def test_a_batch_taken_while_a_flush_runs_survives_a_kill_after_its_checkpoint(
    tmp_path: Path,
) -> None:
    """A batch taken while the flush's write was in flight goes to the segment after the
    one the flush closed, and its id into the checkpoint the flush then writes (the ids
    it remembers). Replayed after a kill, that batch was skipped as already seen: an
    acknowledged batch lost."""
    config = StoreConfig(timeseries_url=f"sqlite:///{tmp_path / 'ts.db'}")
    stores = await NodeStores.open(config, "r1")
    try:
        node, persister, wal = await _start_logged_node(tmp_path, stores)
        batch, raw = _logged_batch("b1", np.arange(100.0))
        node.ingest(batch, raw)
        upsert = stores.timeseries.upsert_window_summaries

        async def upsert_while_a_batch_arrives(rows: list[WindowSummaryRow]) -> None:
            late, late_raw = _logged_batch("b2", np.arange(50.0))
            assert node.ingest(late, late_raw)
            await node.sync()  # acknowledged
            await upsert(rows)

        stores.timeseries.upsert_window_summaries = upsert_while_a_batch_arrives  # type: ignore[method-assign]
        await persister.flush_windows()
        stores.timeseries.upsert_window_summaries = upsert  # type: ignore[method-assign]
        assert await _count(stores) == 100
        assert "b2" in json.loads((tmp_path / "wal" / "checkpoint").read_text())["batch_ids"]
        wal.close()  # killed: b2 is in the log only
    finally:
        await stores.close()

    await _restart_counts_b1_and_b2_once(tmp_path, config)


async def test_a_restore_that_fails_part_way_goes_on_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store fails after some slices of stored windows were installed: the retry
    installed every slice again, and those windows counted twice."""
    now = time.time_ns()
    # six windows, ten minutes apart: a slice each
    times = np.array([now - k * 600 * 10**9 for k in range(6)])
    config = await _flushed_before_a_restart(
        tmp_path, IngestBatch(SeriesKey("lat", ()), np.arange(6.0), times, now)
    )
    stores = await NodeStores.open(config, "r1")
    try:
        node = RegionNode(NodeIdentity("r1", "r1-a"))
        persister = Persister(node, stores, ProfileBook(), 60.0)
        load = stores.timeseries.load_window_summaries
        failed = False

        async def failing_once_half_way(*args: object, **kwargs: object) -> object:
            nonlocal failed
            since = kwargs.get("since_ns")
            if not failed and isinstance(since, int) and now - 30 * 60 * 10**9 <= since < now:
                failed = True  # the slices of the older three windows were read
                raise ConnectionError("store unreachable")
            return await load(*args, **kwargs)  # type: ignore[arg-type]

        stores.timeseries.load_window_summaries = failing_once_half_way  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await persister.restore()
        assert _lat_count(node) == 3
        assert await persister.restore() == 3
        assert _lat_count(node) == 6
    finally:
        await stores.close()


async def test_a_restore_says_how_far_it_got(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A day of windows takes a minute or more to restore, with the node NOT_SERVING: the
    log says how far it got (here at every slice, each read once)."""
    now = time.time_ns()
    times = np.array([now - k * 3600 * 10**9 for k in range(6)])  # an hour apart
    config = await _flushed_before_a_restart(
        tmp_path, IngestBatch(SeriesKey("lat", ()), np.arange(6.0), times, now)
    )
    monkeypatch.setattr(persistence, "PROGRESS_LOG_S", 0.0)
    stores = await NodeStores.open(config, "r1")
    try:
        node = RegionNode(NodeIdentity("r1", "r1-a"))
        with caplog.at_level(logging.INFO, logger="region_node.persistence"):
            assert await Persister(node, stores, ProfileBook(), 60.0).restore() == 6
    finally:
        await stores.close()
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("restoring stored")]
    found = [
        re.fullmatch(r"restoring stored windows: (\d+)% of the time read, (\d+) windows", m)
        for m in said
    ]
    assert all(found) and len(found) >= 144  # a day, ten minutes a slice
    done = [(int(m[1]), int(m[2])) for m in found if m is not None]
    assert done == sorted(done) and done[-1] == (100, 6)
    assert done[len(done) // 2][0] in range(45, 56) and done[len(done) // 2][1] < 6


async def test_a_stored_window_that_does_not_decode_is_skipped_and_the_rest_restored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The stored windows decode many at a time; one that does not (a damaged row) is
    named in the log and left out, and every other one comes back."""
    now = time.time_ns()
    times = np.array([now - k * 10**10 for k in range(5)])
    config = await _flushed_before_a_restart(
        tmp_path, IngestBatch(SeriesKey("lat", ()), np.arange(5.0), times, now)
    )
    stores = await NodeStores.open(config, "r1")
    try:
        damaged = WindowSummaryRow("r1", "r1-a", "lat", {"k": "bad"}, now, 10**10, b"\xff\xff", 1)
        await stores.timeseries.upsert_window_summaries([damaged])
        node = RegionNode(NodeIdentity("r1", "r1-a"))
        with caplog.at_level(logging.WARNING, logger="region_node.persistence"):
            assert await Persister(node, stores, ProfileBook(), 60.0).restore() == 5
    finally:
        await stores.close()
    assert _lat_count(node) == 5
    [said] = [r.getMessage() for r in caplog.records]
    assert said.startswith("skipping an unreadable stored window lat {'k': 'bad'}")


async def test_the_open_window_restored_after_a_restart_takes_new_batches(
    tmp_path: Path,
) -> None:
    """The node restarted within a window it had flushed: that window comes back from
    the store (all values positive: an empty negative side), and the batches sent after
    the restart go into it. Each such batch failed INTERNAL (the compiled update refused
    the decoded window's read-only empty side)."""
    now = time.time_ns()
    key = SeriesKey("lat", ())
    config = await _flushed_before_a_restart(
        tmp_path, IngestBatch(key, np.arange(1.0, 6.0), None, now)
    )
    stores = await NodeStores.open(config, "r1")
    try:
        node = RegionNode(NodeIdentity("r1", "r1-a"))
        assert await Persister(node, stores, ProfileBook(), 60.0).restore() == 1
        assert node.ingest(IngestBatch(key, np.array([7.0, -2.0]), None, now))
        [group] = node.summaries(SummaryQuery(metrics=frozenset({"lat"})))
        assert group.summary.count == 7
        assert (group.summary.min, group.summary.max) == (-2.0, 7.0)
    finally:
        await stores.close()


async def test_on_an_in_memory_store_the_log_keeps_the_retention_and_no_more(
    tmp_path: Path,
) -> None:
    """No flush checkpoints the log of a node whose store keeps nothing across a restart:
    its flushes rotate the log every 64th of the retention (or flush interval) instead,
    and delete a segment once all its batches are past the retention (plus the future
    bound and a window). A restart replays what is left."""
    cfg = WindowConfig(window_ns=10**9, retention_ns=60 * 10**9, rollup_after_ns=0)
    now = [time.time_ns()]
    stores = await NodeStores.open(StoreConfig(), "r1")  # the in-memory default
    wal_dir = tmp_path / "wal"
    try:
        node = RegionNode(NodeIdentity("r1", "r1-a"), cfg, clock=lambda: now[0])
        wal = WriteAheadLog(wal_dir)
        node.hold_wal(wal)
        persister = Persister(node, stores, ProfileBook(), 2.0)
        assert not persister.durable_store
        await persister.restore()

        def ingest(batch_id: str, n: int) -> None:
            raw = client.encode_ingest_request("lat", np.ones(n), batch_id=batch_id)
            request = region_node_pb2.IngestRequest.FromString(raw)
            assert node.ingest(convert.ingest_batch_from_proto(request, now[0]), raw)

        def segments() -> int:
            return len(list(wal_dir.glob("wal-*.log")))

        ingest("b1", 100)
        await persister.flush_windows()
        assert segments() == 1  # younger than a flush interval (2 s > 60 s / 64): kept open
        now[0] += 2 * 10**9
        await persister.flush_windows()
        assert segments() == 1 and wal.current_is_empty  # rotated: b1's segment closed
        ingest("b2", 10)
        now[0] += 2 * 10**9
        await persister.flush_windows()
        assert segments() == 2
        # b1 (taken 4 s ago) exactly 60 s + 5 min (the future bound) + 1 s (a window) old
        now[0] += (60 + 300 + 1 - 4) * 10**9
        await persister.flush_windows()
        assert segments() == 2  # not past it yet
        now[0] += 2 * 10**9
        await persister.flush_windows()
        assert segments() == 1  # b1's segment deleted; b2's (2 s younger) is at the bound
        wal.close()

        restarted = RegionNode(NodeIdentity("r1", "r1-a"), cfg, clock=lambda: now[0])
        again = WriteAheadLog(wal_dir)
        # on such a store the restart applies the log as it reads it, in one pass
        assert restarted.hold_wal(again, apply=True) == 1
        assert _lat_count(restarted) == 10 and not restarted.holds_log
        assert restarted.replay_wal() == 0
        assert "b2" in again.batch_ids and "b1" not in again.batch_ids
        again.close()
    finally:
        await stores.close()
