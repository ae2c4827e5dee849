"""A node's write-ahead log marks of earlier instance ids are deleted once its own is stored.

A node with a write-ahead log (``--wal-dir``) stores with its windows a mark: "this log's
segments up to n are in the store", under its instance id, labelled with the log's id.
Restarted under a new instance id (a pod with a generated name on the same volume), it
wrote its marks under the new id, and the old ids' marks stayed for ever (their start is
past any retention): one more row at each restart, read by every restore and peers' load.
Now, once its own mark is stored and the log checkpointed up to it, the node deletes the
marks of the same log under the region's other instance ids (another log's marks stay).

PostgreSQL is the real server at 127.0.0.1:5432 (a schema per test, dropped afterwards);
SQLite is a file in the test's directory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from meshutil import count_and_gaps
from services import PG_URL, fresh_schema

from nethical_grpc import client, convert
from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.series import IngestBatch, SummaryQuery
from nethical_grpc.storage.timeseries import TimeSeriesStore, WindowSummaryRow, open_timeseries
from nethical_grpc.v1 import region_node_pb2
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import _WAL_MARK_START_NS, WAL_MARK_METRIC, Persister
from region_node.server import RegionServerConfig, start_region_server
from region_node.stores import NodeStores, StoreConfig
from region_node.wal import WriteAheadLog

W = 10_000_000_000


@pytest.fixture
def pg_schema() -> Iterator[str]:
    with fresh_schema("walmarks38") as schema:
        yield schema


# --------------------------------------------------------------------------- the store


@pytest.fixture(params=["sqlite file", "sqlite memory", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TimeSeriesStore]:
    region = f"r-{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite file":
        opened, choice = await open_timeseries(f"sqlite:///{tmp_path / 'ts.db'}", region)
        assert choice.backend == "sqlite"
    elif request.param == "sqlite memory":
        opened, choice = await open_timeseries("memory://", region, memory_max_rows=4)
        assert choice.backend == "sqlite (memory)"
    else:
        schema = request.getfixturevalue("pg_schema")
        opened, choice = await open_timeseries(f"{PG_URL}?schema={schema}", region, fallback=False)
        assert choice.backend.startswith("postgresql")
    yield opened
    await opened.close()


def _row(region: str, instance: str, start: int, count: int, **labels: str) -> WindowSummaryRow:
    return WindowSummaryRow(region, instance, "m", labels, start, W, b"p", count)


async def test_delete_window_summaries_deletes_the_rows_as_loaded(store: TimeSeriesStore) -> None:
    region = store.region_id
    await store.upsert_window_summaries(
        [
            _row(region, "a", 0, 1, k="1", j="2"),
            _row(region, "a", W, 2, k="1"),
            _row(region, "b", 0, 3, k="1"),
        ]
    )
    loaded = await store.load_window_summaries(region)
    assert len(loaded) == 3
    # "b"'s window is written again after the load: its newer version stays
    await store.upsert_window_summaries([_row(region, "b", 0, 4, k="1")])
    # labels in another order are the same labels; a row listed twice is deleted once
    first = loaded[0]
    reordered = WindowSummaryRow(
        first.region_id,
        first.instance_id,
        first.metric,
        dict(reversed(list(first.labels.items()))),
        first.window_start_ns,
        first.window_ns,
        b"",
        0,
        first.change_seq,
    )
    b_row = next(r for r in loaded if r.instance_id == "b")
    assert await store.delete_window_summaries([reordered, first, b_row]) == 1
    left = await store.load_window_summaries(region)
    assert [(r.instance_id, r.window_start_ns, r.count) for r in left] == [("b", 0, 4), ("a", W, 2)]
    # another region's row with the same key is another row
    other = dataclasses.replace(left[1], region_id="elsewhere")
    assert await store.delete_window_summaries([other]) == 0
    # a bad row refuses the whole call: nothing is deleted
    bad = WindowSummaryRow(region, "", "m", {}, 0, W, b"", 0)
    with pytest.raises(ValueError, match=r"rows\[1\]\.instance_id"):
        await store.delete_window_summaries([left[1], bad])
    assert len(await store.load_window_summaries(region)) == 2
    assert await store.delete_window_summaries([]) == 0
    assert await store.delete_window_summaries(left) == 2
    assert await store.load_window_summaries(region) == []


async def test_deleted_rows_make_room_in_a_capped_memory_store() -> None:
    """The in-memory store keeps a count of its rows for its cap: a deleted row no longer
    counts (or the cap dropped rows it has room for)."""
    store, _ = await open_timeseries("memory://", "r", memory_max_rows=3)
    try:
        await store.upsert_window_summaries([_row("r", "a", i * W, 1) for i in range(3)])
        loaded = await store.load_window_summaries("r")
        assert await store.delete_window_summaries(loaded[:2]) == 2
        await store.upsert_window_summaries([_row("r", "a", i * W, 1) for i in range(3, 5)])
        starts = [r.window_start_ns for r in await store.load_window_summaries("r")]
        assert starts == [2 * W, 3 * W, 4 * W]
        assert store.rows_dropped == 0
    finally:
        await store.close()


# --------------------------------------------------------------------------- nodes


async def _marks(url: str, region: str) -> list[tuple[str, str, int]]:
    """The region's stored marks: (instance id, log id, count)."""
    store, _ = await open_timeseries(url, region, fallback=False)
    try:
        rows = await store.load_window_summaries(region, since_ns=_WAL_MARK_START_NS)
    finally:
        await store.close()
    return sorted(
        (r.instance_id, r.labels.get("wal", ""), r.count)
        for r in rows
        if r.metric == WAL_MARK_METRIC
    )


async def _plant(url: str, region: str, rows: list[WindowSummaryRow]) -> None:
    store, _ = await open_timeseries(url, region, fallback=False)
    try:
        await store.upsert_window_summaries(rows)
    finally:
        await store.close()


def _mark(region: str, instance: str, wal: str, count: int) -> WindowSummaryRow:
    return WindowSummaryRow(
        region, instance, WAL_MARK_METRIC, {"wal": wal}, _WAL_MARK_START_NS, 1, b"", count
    )


async def _run(config: RegionServerConfig, values: int, expected: int) -> None:
    """Start a node, send ``values`` values (if any), check that it counts ``expected``
    with no gap, and stop it (its stop flushes)."""
    server, _ = await start_region_server(config)
    try:
        if values:
            async with client.insecure_channel(server.address) as ch:
                sent = [
                    client.encode_ingest_request(
                        "m", np.arange(float(values)), batch_id=uuid.uuid4().hex
                    )
                ]
                assert (await client.ingest(ch, sent)).accepted_batches == 1
        for _ in range(100):
            count, gaps = await count_and_gaps(server.address, "m")
            if not gaps and count == expected:
                break
            await asyncio.sleep(0.05)
        assert (count, gaps) == (expected, [])
    finally:
        await server.drain(announce_s=0, grace_s=0)


def _log_id(tmp_path: Path) -> str:
    return (tmp_path / "wal" / "wal-id").read_text().strip()


async def test_restarts_under_new_ids_keep_one_mark_of_the_log(
    pg_schema: str, tmp_path: Path
) -> None:
    """Region scope on PostgreSQL: each restart under a new instance id counts every value
    once, and once it has stored its own mark, the log's marks of the earlier ids are gone
    (another log's mark, and the earlier ids' windows, stay)."""
    url = f"{PG_URL}?schema={pg_schema}"
    cfg = StoreConfig(timeseries_url=url, flush_interval_s=60.0)

    def config(instance: str) -> RegionServerConfig:
        return RegionServerConfig(
            region_id="eu",
            instance_id=instance,
            region_scope=True,
            stores=cfg,
            model=None,
            wal_dir=tmp_path / "wal",
        )

    await _run(config("eu-a"), 100, 100)
    wal = _log_id(tmp_path)
    assert [(i, w) for i, w, _ in await _marks(url, "eu")] == [("eu-a", wal)]
    # another instance's log, in the same region: its mark is none of this log's business
    await _plant(url, "eu", [_mark("eu", "eu-x", "another-log", 3)])

    await _run(config("eu-b"), 50, 150)
    marks = await _marks(url, "eu")
    assert [(i, w) for i, w, _ in marks] == [("eu-b", wal), ("eu-x", "another-log")]
    # the earlier instance's windows are the region's data: they stay
    store, _ = await open_timeseries(url, "eu", fallback=False)
    try:
        windows = await store.load_window_summaries("eu", until_ns=_WAL_MARK_START_NS)
    finally:
        await store.close()
    assert {r.instance_id for r in windows} == {"eu-a", "eu-b"}

    await _run(config("eu-c"), 25, 175)
    assert [(i, w) for i, w, _ in await _marks(url, "eu")] == [
        ("eu-c", wal),
        ("eu-x", "another-log"),
    ]
    # and a restart with nothing new counts everything once still
    await _run(config("eu-d"), 0, 175)


async def test_the_old_mark_stays_until_the_new_id_has_stored_its_own(
    pg_schema: str, tmp_path: Path
) -> None:
    """Killed between its flush and the log's checkpoint, an instance left its mark and the
    segments it names; restarted under a new id with nothing to flush, the node stores no
    mark of its own: the old one must stay (it names what the stored windows hold). The
    next instance that stores its mark deletes it; a mark of the log that covers more than
    that instance's own (a copy of the log run on elsewhere) stays."""
    url = f"{PG_URL}?schema={pg_schema}"
    cfg = StoreConfig(timeseries_url=url, flush_interval_s=60.0)

    def config(instance: str) -> RegionServerConfig:
        return RegionServerConfig(
            region_id="eu",
            instance_id=instance,
            region_scope=True,
            stores=cfg,
            model=None,
            wal_dir=tmp_path / "wal",
        )

    server, node = await start_region_server(config("eu-old"))
    async with client.insecure_channel(server.address) as ch:
        sent = [client.encode_ingest_request("m", np.arange(100.0), batch_id="b1")]
        assert (await client.ingest(ch, sent)).accepted_batches == 1
    assert node.wal is not None
    node.wal.checkpoint = lambda *args, **kwargs: 0  # type: ignore[method-assign]
    await server.drain(announce_s=0, grace_s=0)
    wal = _log_id(tmp_path)
    old = await _marks(url, "eu")
    assert [(i, w) for i, w, _ in old] == [("eu-old", wal)]

    await _run(config("eu-new"), 0, 100)
    assert await _marks(url, "eu") == old

    await _run(config("eu-newer"), 10, 110)
    marks = await _marks(url, "eu")
    assert [(i, w) for i, w, _ in marks] == [("eu-newer", wal)]
    own = marks[0][2]
    assert own > old[0][2]

    # a mark of this log past this instance's own stays (and so would its windows' data)
    await _plant(url, "eu", [_mark("eu", "eu-copy", wal, own + 1_000)])
    await _run(config("eu-last"), 0, 110)  # stores nothing: no mark, nothing deleted
    assert [(i, w, c) for i, w, c in await _marks(url, "eu")] == [
        ("eu-copy", wal, own + 1_000),
        ("eu-newer", wal, own),
    ]


async def test_on_a_sqlite_file_too(tmp_path: Path) -> None:
    """A node of its own (instance scope) on a SQLite file, restarted under a new id: the
    same log's marks of its earlier ids go once it has stored its own."""
    url = f"sqlite:///{tmp_path / 'ts.db'}"
    cfg = StoreConfig(timeseries_url=url, flush_interval_s=60.0)

    def config(instance: str) -> RegionServerConfig:
        return RegionServerConfig(
            region_id="eu",
            instance_id=instance,
            stores=cfg,
            model=None,
            wal_dir=tmp_path / "wal",
        )

    await _run(config("eu-a"), 100, 100)
    wal = _log_id(tmp_path)
    await _plant(url, "eu", [_mark("eu", "eu-x", "another-log", 3)])
    assert [(i, w) for i, w, _ in await _marks(url, "eu")] == [
        ("eu-a", wal),
        ("eu-x", "another-log"),
    ]
    await _run(config("eu-b"), 50, 50)  # its own windows only (instance scope)
    assert [(i, w) for i, w, _ in await _marks(url, "eu")] == [
        ("eu-b", wal),
        ("eu-x", "another-log"),
    ]
    await _run(config("eu-a"), 0, 100)  # the first id's windows are still stored


async def test_a_failed_delete_is_tried_again_after_the_next_flush(
    pg_schema: str, tmp_path: Path
) -> None:
    """The store refuses the delete (here a trigger): the flush's windows and mark are
    stored all the same, the old mark stays, and the next flush that stores a mark
    deletes it."""
    url = f"{PG_URL}?schema={pg_schema}"
    stores = await NodeStores.open(StoreConfig(timeseries_url=url), "eu")
    node = RegionNode(NodeIdentity("eu", "eu-b", region_scope=True))
    wal = WriteAheadLog(tmp_path / "wal")
    node.hold_wal(wal)
    persister = Persister(node, stores, ProfileBook(), 60.0)
    try:
        # an earlier run of this log under another id, which stored nothing but its mark
        await stores.timeseries.upsert_window_summaries([_mark("eu", "eu-a", wal.id, 0)])
        await persister.restore()
        persister.restored = True
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(
                f'CREATE FUNCTION "{pg_schema}".refuse() RETURNS trigger LANGUAGE plpgsql AS '
                "$$ BEGIN RAISE EXCEPTION 'no deletes today'; END $$"
            )
            conn.execute(
                f'CREATE TRIGGER refuse BEFORE DELETE ON "{pg_schema}".window_summaries '
                f'FOR EACH ROW EXECUTE FUNCTION "{pg_schema}".refuse()'
            )
        assert node.ingest(*_batch(np.arange(10.0), "x1"))
        await node.sync()
        assert await persister.flush_windows() == 1
        assert [(i, w) for i, w, _ in await _marks(url, "eu")] == [
            ("eu-a", wal.id),
            ("eu-b", wal.id),
        ]
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP TRIGGER refuse ON "{pg_schema}".window_summaries')
        assert node.ingest(*_batch(np.arange(5.0), "x2"))
        await node.sync()
        assert await persister.flush_windows() == 1
        assert [(i, w) for i, w, _ in await _marks(url, "eu")] == [("eu-b", wal.id)]
        assert sum(g.summary.count for g in node.summaries(SummaryQuery())) == 15
    finally:
        await persister.stop()
        await stores.close()
        wal.close()


def _batch(values: np.ndarray, batch_id: str) -> tuple[IngestBatch, bytes]:
    """A batch as the node's Ingest takes it, with the request bytes its log keeps."""
    raw = client.encode_ingest_request("m", values, batch_id=batch_id)
    request = region_node_pb2.IngestRequest.FromString(raw)
    return convert.ingest_batch_from_proto(request, time.time_ns()), raw
