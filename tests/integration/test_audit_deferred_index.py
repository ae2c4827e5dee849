"""The SQLite audit store indexes records for full-text search after it writes them: on a
text search, a refresh, an idle second, or past a lag.  Whenever it does, every answer is
the one a store that indexed each record as it wrote it gives, and a record dropped
before it was indexed never touches the index."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from test_audit_memory_bound import (
    Opener,
    answers,
    index_tables,
    load_in_batches,
    open_store_fixture,  # noqa: F401 (the open_store fixture: memory and file stores)
)
from test_storage_audit import QUERIES, REGION, all_pages, dataset, oracle_ids, page_ids

from nethical_grpc.storage.audit import SqliteFtsAuditStore, sqlite_fts


async def index_state(store: SqliteFtsAuditStore) -> tuple[int, int, int]:
    """``(indexed upto, highest seq held, full-text rows)`` as the writer sees them."""

    def read(conn: sqlite3.Connection) -> tuple[int, int, int]:
        (rows,) = conn.execute("SELECT count(*) FROM audit_fts_docsize").fetchone()
        return sqlite_fts._indexed_upto(conn), sqlite_fts._seq_range(conn)[1], int(rows)

    return await store._writer.run(read)


async def test_a_text_search_finds_every_record_written_before_it(open_store: Opener) -> None:
    records = dataset(240)
    store = await open_store()
    for i in range(0, 240, 60):
        await store.index_audit_logs(records[i : i + 60])
        assert (await index_state(store))[0] == i  # the write indexed nothing
        seen = records[: i + 60]
        for text in QUERIES:
            got = page_ids(await all_pages(store, text, page_size=11, order="newest"))
            assert got == oracle_ids(seen, text)
        stats = await store.get_audit_log_statistics("report")
        assert stats.total_actions == len(oracle_ids(seen, "report"))
        assert (await index_state(store))[:2] == (i + 60, i + 60)


async def test_answers_do_not_depend_on_when_records_were_indexed(open_store: Opener) -> None:
    records = dataset(240)
    lazy = await open_store(max_records=100)
    await load_in_batches(lazy, records, 37)
    eager = await open_store(max_records=100)
    for i in range(0, 240, 37):
        await eager.index_audit_logs(records[i : i + 37])
        await eager.refresh()
    assert await answers(lazy) == await answers(eager)  # ids, BM25 scores, statistics


async def test_records_dropped_unindexed_never_touch_the_index(tmp_path: Path) -> None:
    records = [  # words of their own, and repeated ones (audit_term_counts)
        replace(r, action_text=f"{r.action_text} ref{i}" + (" again and again" if i % 2 else ""))
        for i, r in enumerate(dataset(240))
    ]
    path = tmp_path / "b.db"
    store = await SqliteFtsAuditStore.open(REGION, str(path), max_records=50)
    try:
        await load_in_batches(store, records, 30)
        upto, top, rows = await index_state(store)
        assert (upto, top, rows) == (0, 240, 0)
        assert store.records_dropped == 190
        await store.refresh()
        assert await index_state(store) == (240, 240, 50)
    finally:
        await store.close()
    fresh = await SqliteFtsAuditStore.open(REGION, str(tmp_path / "f.db"))
    try:
        await load_in_batches(fresh, records[-50:], 50)
        await fresh.refresh()
    finally:
        await fresh.close()
    assert index_tables(path) == index_tables(tmp_path / "f.db")


async def test_an_idle_store_indexes_what_waits(
    open_store: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_fts, "_INDEX_IDLE_S", 0.2)
    monkeypatch.setattr(sqlite_fts, "_INDEX_CHUNK", 16)  # several chunks
    store = await open_store()
    records = dataset(100)
    await store.index_audit_logs(records[:50])
    await asyncio.sleep(0.05)
    await store.index_audit_logs(records[50:])  # restarts the idle time
    await asyncio.sleep(0.1)
    assert (await index_state(store))[0] == 0  # 0.15 s since the first write
    for _ in range(100):
        await asyncio.sleep(0.05)
        if (await index_state(store))[0] == 100:
            break
    assert await index_state(store) == (100, 100, 100)


async def test_past_the_lag_a_write_indexes_the_oldest(
    open_store: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_fts, "_INDEX_LAG", 40)
    monkeypatch.setattr(sqlite_fts, "_INDEX_IDLE_S", 3600.0)
    store = await open_store()
    records = dataset(200)
    await store.index_audit_logs(records[:40])
    assert (await index_state(store))[:2] == (0, 40)
    await store.index_audit_logs(records[40:55])
    assert (await index_state(store))[:2] == (15, 55)
    await store.index_audit_logs(records[55:200])  # one large write: down to the lag
    assert await index_state(store) == (160, 200, 160)
    got = page_ids(await all_pages(store, "report", page_size=13, order="newest"))
    assert got == oracle_ids(records, "report")


async def test_a_store_written_by_the_previous_version_is_taken_as_indexed(
    tmp_path: Path,
) -> None:
    # version 1 indexed every record as it wrote it and had no audit_index_top
    records = dataset(120)
    path = tmp_path / "v1.db"
    store = await SqliteFtsAuditStore.open(REGION, str(path), max_records=80)
    try:
        await load_in_batches(store, records[:80], 40)
        await store.refresh()
    finally:
        await store.close()
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("DROP TABLE audit_index_top")
        conn.execute("PRAGMA user_version = 1")
    store = await SqliteFtsAuditStore.open(REGION, str(path), max_records=80)
    try:
        assert (await index_state(store))[:2] == (80, 80)
        await load_in_batches(store, records[80:], 20)  # drops indexed records
        got = page_ids(await all_pages(store, "report", page_size=9, order="newest"))
        assert got == oracle_ids(records[-80:], "report")
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
        conn.execute("INSERT INTO audit_fts (audit_fts, rank) VALUES ('integrity-check', 1)")


async def test_a_store_of_another_process_indexes_what_this_one_wrote(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    writer = await SqliteFtsAuditStore.open(REGION, path)
    reader = await SqliteFtsAuditStore.open(REGION, path)
    try:
        records = dataset(90)
        await writer.index_audit_logs(records)
        got = page_ids(await all_pages(reader, "ticket", page_size=20, order="newest"))
        assert got == oracle_ids(records, "ticket")
        assert (await index_state(writer))[0] == 90  # one index, in the file
    finally:
        await writer.close()
        await reader.close()


async def test_idle_indexing_stops_when_a_write_begins(
    open_store: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a write ends the idle time: the indexing it started gives way, after the chunk it
    # is on, and goes on at the next idle time
    monkeypatch.setattr(sqlite_fts, "_INDEX_IDLE_S", 0.5)
    monkeypatch.setattr(sqlite_fts, "_INDEX_CHUNK", 4)
    store = await open_store()
    records = dataset(2001)
    await store.index_audit_logs(records[:2000])
    for _ in range(400):
        await asyncio.sleep(0.01)
        if (await index_state(store))[0] > 0:
            break
    await store.index_audit_logs(records[2000:])
    stopped = (await index_state(store))[0]
    assert 0 < stopped < 2000
    await asyncio.sleep(0.3)  # within the next idle time
    assert (await index_state(store))[0] <= stopped + 4
    for _ in range(200):
        await asyncio.sleep(0.05)
        if (await index_state(store))[0] == 2001:
            break
    assert await index_state(store) == (2001, 2001, 2001)


async def test_a_search_under_writes_faster_than_indexing_ends(
    open_store: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the search indexes what waited when it began; what writes add meanwhile waits for
    # the next time (chasing them, with 2-record chunks against 50-record writes, the
    # search never ended)
    monkeypatch.setattr(sqlite_fts, "_INDEX_CHUNK", 2)
    monkeypatch.setattr(sqlite_fts, "_INDEX_IDLE_S", 3600.0)
    store = await open_store()
    records = dataset(100)
    await store.index_audit_logs(records)

    async def keep_writing() -> None:  # until cancelled
        for n in itertools.count():
            await store.index_audit_logs(
                [replace(r, action_id=f"w{n}-{i}") for i, r in enumerate(records[:50])]
            )

    writer = asyncio.ensure_future(keep_writing())
    try:
        await asyncio.sleep(0)
        page = await asyncio.wait_for(store.search_audit_logs("report", page_size=500), 20.0)
        assert {h.record.action_id for h in page.hits} >= set(oracle_ids(records, "report"))
        assert not writer.done()  # the writes went on meanwhile
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
