"""A region node's persistence against real stores (SQLite files, PostgreSQL): windows a
store refuses for good, a flush that fails for a while, and privacy accounts files that
do not read back."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from services import PG_URL, fresh_schema

from nethical_grpc import client, convert
from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.privacy import PrivacyAccountant
from nethical_grpc.series import IngestBatch, SeriesKey, SummaryQuery
from nethical_grpc.storage.timeseries import WindowSummaryRow
from nethical_grpc.storage.timeseries.base import TimeSeriesStore
from nethical_grpc.v1 import region_node_pb2
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import WAL_MARK_METRIC, Persister
from region_node.privacy_accounts import ACCOUNTS_FILE, JOURNAL_FILE, AccountsFile
from region_node.stores import NodeStores, StoreConfig
from region_node.wal import WriteAheadLog


class _RefusesMetric:
    """The real store's ``upsert_window_summaries``, refusing (``ValueError``, nothing
    written) every call holding a window of ``metric``: a store whose own rules are
    stricter than the row checks the node runs first."""

    def __init__(self, store: TimeSeriesStore, metric: str) -> None:
        self.upsert, self.metric, self.calls = store.upsert_window_summaries, metric, 0

    async def __call__(self, rows: Sequence[WindowSummaryRow]) -> int:
        self.calls += 1
        if any(r.metric == self.metric for r in rows):
            raise ValueError(f"this store keeps no series {self.metric}")
        return await self.upsert(rows)


def _batch(metric: str, values: np.ndarray, batch_id: str) -> tuple[IngestBatch, bytes]:
    """A batch as the node's Ingest takes it, with the request bytes its log keeps."""
    raw = client.encode_ingest_request(metric, values, batch_id=batch_id)
    request = region_node_pb2.IngestRequest.FromString(raw)
    return convert.ingest_batch_from_proto(request, time.time_ns()), raw


async def _stored(stores: NodeStores) -> dict[str, int]:
    rows = await stores.timeseries.load_window_summaries("r1")
    return {r.metric: r.count for r in rows if r.metric != WAL_MARK_METRIC}


@pytest.fixture
async def sqlite_stores(tmp_path: Path) -> AsyncIterator[NodeStores]:
    stores = await NodeStores.open(
        StoreConfig(timeseries_url=f"sqlite:///{tmp_path / 'ts.db'}"), "r1"
    )
    try:
        yield stores
    finally:
        await stores.close()


async def test_windows_the_store_refuses_after_the_row_checks_do_not_block_later_flushes(
    sqlite_stores: NodeStores, caplog: pytest.LogCaptureFixture
) -> None:
    """The store refused a flush whose rows all pass the node's checks: the second upsert
    (after the rows it checks were filtered) raised ValueError again, and the flush kept
    every row to retry, for good: no window of the node was ever stored again. Now the
    rows it refuses are found and dropped (counted, one log line), the others written."""
    stores = sqlite_stores
    refusing = _RefusesMetric(stores.timeseries, "poison")
    stores.timeseries.upsert_window_summaries = refusing  # type: ignore[method-assign]
    node = RegionNode(NodeIdentity("r1", "r1-a"))
    persister = Persister(node, stores, ProfileBook(), 60.0)
    now = time.time_ns()
    node.record_internal(
        [
            IngestBatch(SeriesKey(name, ()), np.arange(float(n)), None, now)
            for name, n in [("a", 1), ("b", 2), ("poison", 3), ("c", 4), ("d", 5)]
        ]
    )
    caplog.set_level(logging.ERROR, logger="region_node.persistence")
    assert await persister.flush_windows() == 4
    assert persister.dropped == 1
    assert await _stored(stores) == {"a": 1, "b": 2, "c": 4, "d": 5}
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "poison" in refused[0].getMessage()

    # the next flush is not held behind it (nor is the poison window retried)
    node.record_internal([IngestBatch(SeriesKey("later", ()), np.arange(2.0), None, now)])
    calls = refusing.calls
    assert await persister.flush_windows() == 1
    assert refusing.calls == calls + 1
    assert (await _stored(stores))["later"] == 2
    assert persister._retry_windows == []


async def test_a_refused_window_with_a_log_keeps_the_mark_with_the_windows_written(
    tmp_path: Path, sqlite_stores: NodeStores
) -> None:
    """With a write-ahead log, each part written while the refused window is sought
    carries the log's mark: the store's windows never hold a segment their mark does not
    cover, so a restart counts nothing twice."""
    stores = sqlite_stores
    stores.timeseries.upsert_window_summaries = _RefusesMetric(  # type: ignore[method-assign]
        stores.timeseries, "poison"
    )
    node = RegionNode(NodeIdentity("r1", "r1-a"))
    wal = WriteAheadLog(tmp_path / "wal")
    node.hold_wal(wal)
    persister = Persister(node, stores, ProfileBook(), 60.0)
    await persister.restore()
    persister.restored = True
    for i, metric in enumerate(["lat", "poison", "size"]):
        batch, raw = _batch(metric, np.arange(10.0 * (i + 1)), f"b{i}")
        assert node.ingest(batch, raw)
    await node.sync()
    assert await persister.flush_windows() == 2
    assert await _stored(stores) == {"lat": 10, "size": 30}
    wal.close()

    restarted = RegionNode(NodeIdentity("r1", "r1-a"))
    again = WriteAheadLog(tmp_path / "wal")
    restarted.hold_wal(again)
    p2 = Persister(restarted, stores, ProfileBook(), 60.0)
    await p2.restore()
    query = SummaryQuery(metrics=frozenset({"lat", "size"}))
    counts = {g.metric: g.summary.count for g in restarted.summaries(query)}
    assert counts == {"lat": 10, "size": 30}  # once each
    again.close()


class _Down:
    """The real store's upsert, failing (a store down) until ``up`` is set."""

    def __init__(self, store: TimeSeriesStore) -> None:
        self.upsert, self.up = store.upsert_window_summaries, False

    async def __call__(self, rows: Sequence[WindowSummaryRow]) -> int:
        if not self.up:
            raise ConnectionError("store unreachable")
        return await self.upsert(rows)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    with fresh_schema("persist36") as schema:
        yield schema


async def test_windows_kept_while_the_store_is_down_are_held_once_each(
    pg_schema: str,
) -> None:
    """Each failed flush kept every row it had, and the next one added the windows
    changed since: a window written to at every flush interval was held once per flush
    (a store down for an hour, 360 copies of each busy series' window). Now a window's
    newest version replaces the ones held; once the store is back it is stored whole."""
    stores = await NodeStores.open(
        StoreConfig(timeseries_url=PG_URL, timeseries_schema=pg_schema), "r1"
    )
    try:
        down = _Down(stores.timeseries)
        stores.timeseries.upsert_window_summaries = down  # type: ignore[method-assign]
        node = RegionNode(NodeIdentity("r1", "r1-a"))
        persister = Persister(node, stores, ProfileBook(), 60.0)
        persister.restored = True
        now = time.time_ns()
        keys = [SeriesKey(f"m{i}", (("k", "v"),)) for i in range(20)]
        for _ in range(30):
            node.record_internal([IngestBatch(k, np.ones(2), None, now) for k in keys])
            assert await persister.flush_windows() == 0
        assert len(persister._retry_windows) == len(keys)
        down.up = True
        assert await persister.flush_windows() == len(keys)
        rows = await stores.timeseries.load_window_summaries("r1")
        assert sorted(r.count for r in rows) == [60] * len(keys)
    finally:
        await stores.close()


def test_a_bad_journal_line_is_named_in_the_error(tmp_path: Path) -> None:
    """A journal line inside the journal that does not parse stopped the start with an
    error naming the accounts file, which was whole: an operator who moved it aside, as
    the message said, lost every budget it held and still could not start."""
    key = (SeriesKey("risk", ()), 5)
    acc = PrivacyAccountant(10.0)
    accounts = AccountsFile(tmp_path)
    accounts.load(acc)
    acc.charge([key], 1.0)
    accounts.save(acc)
    journal = tmp_path / JOURNAL_FILE
    journal.write_bytes(journal.read_bytes() + b'[["risk",[],5,\n')
    acc.charge([key], 1.0)
    accounts.save(acc)
    with pytest.raises(ValueError, match=rf"{JOURNAL_FILE} line 2") as caught:
        AccountsFile(tmp_path).load(PrivacyAccountant(10.0))
    assert "privacy accounts" in str(caught.value)
    # nothing was reset: both files are as they were
    assert (tmp_path / ACCOUNTS_FILE).exists() and journal.exists()


@pytest.mark.parametrize(
    "text",
    ['[["risk", [], 1e999, 1.0]]', "[" * 100_000 + "]" * 100_000],
)
def test_accounts_a_bad_number_or_nesting_spoils_stop_the_start_with_a_clear_error(
    tmp_path: Path, text: str
) -> None:
    """A window id that reads as infinity raised OverflowError, and a deeply nested file
    RecursionError: a traceback instead of the error that says what to do."""
    (tmp_path / ACCOUNTS_FILE).write_text(text)
    with pytest.raises(ValueError, match=rf"privacy accounts .*{ACCOUNTS_FILE}"):
        AccountsFile(tmp_path).load(PrivacyAccountant(1.0))
    assert (tmp_path / ACCOUNTS_FILE).read_text() == text  # not replaced


def test_saved_accounts_read_back_whole(tmp_path: Path) -> None:
    """Sanity: what the files hold parses as saved (the error paths above are not hit)."""
    acc = PrivacyAccountant(10.0)
    accounts = AccountsFile(tmp_path)
    accounts.load(acc)
    acc.charge([(SeriesKey("m", (("a", "b"),)), 3)], 0.5)
    accounts.save(acc)
    lines = (tmp_path / JOURNAL_FILE).read_bytes().splitlines()
    assert [json.loads(line) for line in lines] == [[["m", [["a", "b"]], 3, 0.5]]]
    fresh = PrivacyAccountant(10.0)
    assert AccountsFile(tmp_path).load(fresh) == 1
    assert fresh.snapshot() == acc.snapshot()
