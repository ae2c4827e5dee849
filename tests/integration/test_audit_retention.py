"""The SQLite audit store keeps records ``retention_days``: apply_retention deletes older
ones from every table and the full-text index, and the store then answers exactly as one
that only ever held the records it kept."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_audit_memory_bound import answers, index_tables, load_in_batches
from test_storage_audit import REGION, dataset

from nethical_grpc.storage.audit import (
    DEFAULT_RETENTION_DAYS,
    AuditRecord,
    SqliteFtsAuditStore,
    open_audit_store,
    sqlite_fts,
)
from region_node.stores import StoreConfig

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def aged(records: list[AuditRecord], ages: list[timedelta]) -> list[AuditRecord]:
    """``records`` with the timestamps ``NOW - age``; every other one repeats a word (so
    the term counts are covered) and each has a word of its own."""
    return [
        replace(
            r,
            timestamp=NOW - age,
            action_text=f"{r.action_text} ref{i}" + (" again and again" if i % 2 else ""),
        )
        for i, (r, age) in enumerate(zip(records, ages, strict=True))
    ]


async def test_records_past_the_retention_leave_every_table(tmp_path: Path) -> None:
    # stored oldest first, as a node stores its evaluations: 150 past 3 days, 90 inside
    ages = [timedelta(days=5) - timedelta(minutes=i) for i in range(150)]
    ages += [timedelta(days=2) - timedelta(minutes=i) for i in range(90)]
    records = aged(dataset(240), ages)
    kept = records[150:]
    store = await SqliteFtsAuditStore.open(REGION, str(tmp_path / "r.db"), retention_days=3)
    fresh = await SqliteFtsAuditStore.open(REGION, str(tmp_path / "f.db"))
    try:
        await load_in_batches(store, records, 41)
        await load_in_batches(fresh, kept, 90)
        assert await store.apply_retention(NOW) == 150
        assert await answers(store) == await answers(fresh)
        assert await store.apply_retention(NOW) == 0  # nothing more is due
    finally:
        await store.close()
        await fresh.close()
    assert index_tables(tmp_path / "r.db") == index_tables(tmp_path / "f.db")


async def test_deletion_stops_at_the_first_record_inside_the_retention(tmp_path: Path) -> None:
    # a backfill: an old record stored after a recent one stays, until the recent one
    # (stored before it) is past the retention too
    old, recent, backfilled, newest = aged(
        dataset(4), [timedelta(days=9), timedelta(days=1), timedelta(days=8), timedelta(0)]
    )
    store = await SqliteFtsAuditStore.open(REGION, str(tmp_path / "r.db"), retention_days=3)
    try:
        await store.index_audit_logs([old, recent, backfilled, newest])
        assert await store.apply_retention(NOW) == 1
        assert await ids(store) == {recent.action_id, backfilled.action_id, newest.action_id}
        assert await store.apply_retention(NOW + timedelta(days=2, hours=1)) == 2
        assert await ids(store) == {newest.action_id}
    finally:
        await store.close()


async def ids(store: SqliteFtsAuditStore) -> set[str]:
    page = await store.search_audit_logs(page_size=100)
    return {h.record.action_id for h in page.hits}


async def test_a_long_backlog_is_deleted_a_chunk_per_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_fts, "_RETENTION_CHUNK", 7)
    records = aged(dataset(40), [timedelta(days=10)] * 30 + [timedelta(hours=1)] * 10)
    store = await SqliteFtsAuditStore.open(REGION, None, retention_days=1)
    try:
        await store.index_audit_logs(records)
        transactions = 0
        delete = sqlite_fts._delete_expired

        def counted(conn: object, cutoff_us: int, most: int) -> int:
            nonlocal transactions
            transactions += 1
            return delete(conn, cutoff_us, most)  # type: ignore[arg-type]

        monkeypatch.setattr(sqlite_fts, "_delete_expired", counted)
        assert await store.apply_retention(NOW) == 30
        assert transactions == 5  # 7 + 7 + 7 + 7 + 2
        assert await ids(store) == {r.action_id for r in records[30:]}
    finally:
        await store.close()


async def test_a_limit_deletes_the_oldest_first_and_leaves_the_rest_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_fts, "_RETENTION_CHUNK", 4)
    records = aged(dataset(25), [timedelta(days=10)] * 23 + [timedelta(hours=1)] * 2)
    store = await SqliteFtsAuditStore.open(REGION, str(tmp_path / "r.db"), retention_days=1)
    try:
        await store.index_audit_logs(records)
        assert await store.apply_retention(NOW, limit=10) == 10  # chunks of 4, 4 and 2
        assert await ids(store) == {r.action_id for r in records[10:]}
        assert await store.apply_retention(NOW, limit=10) == 10
        assert await store.apply_retention(NOW, limit=10) == 3  # less than the limit: done
        assert await ids(store) == {r.action_id for r in records[23:]}
        for bad in (0, -3, True, 2.5):
            with pytest.raises(ValueError, match="limit must be"):
                await store.apply_retention(NOW, limit=bad)  # type: ignore[arg-type]
    finally:
        await store.close()


async def test_a_reader_sharing_the_file_sees_them_go(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    records = aged(dataset(20), [timedelta(days=4)] * 12 + [timedelta(hours=2)] * 8)
    writer = await SqliteFtsAuditStore.open(REGION, path, retention_days=2)
    reader = await SqliteFtsAuditStore.open(REGION, path)
    try:
        await writer.index_audit_logs(records)
        assert len(await ids(reader)) == 20
        assert await writer.apply_retention(NOW) == 12
        assert await ids(reader) == {r.action_id for r in records[12:]}
        stats = await reader.get_audit_log_statistics()
        assert stats.total_actions == 8
    finally:
        await writer.close()
        await reader.close()


async def test_without_a_retention_every_record_stays(tmp_path: Path) -> None:
    store = await SqliteFtsAuditStore.open(REGION, str(tmp_path / "r.db"))
    try:
        assert store.retention_days is None
        await store.index_audit_logs(aged(dataset(3), [timedelta(days=400)] * 3))
        assert await store.apply_retention(NOW) == 0
        assert len(await ids(store)) == 3
    finally:
        await store.close()


async def test_the_factory_gives_sqlite_and_memory_stores_the_retention(tmp_path: Path) -> None:
    file_store, _ = await open_audit_store(f"sqlite:///{tmp_path}/a.db", REGION, retention_days=7)
    memory, _ = await open_audit_store("memory://", REGION)
    try:
        assert isinstance(file_store, SqliteFtsAuditStore)
        assert isinstance(memory, SqliteFtsAuditStore)
        assert file_store.retention_days == 7
        assert memory.retention_days == DEFAULT_RETENTION_DAYS
    finally:
        await file_store.close()
        await memory.close()


@pytest.mark.parametrize("bad", [0, -1, 36_501, True, 1.5, "30"])
async def test_a_bad_retention_is_refused(bad: object, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"retention_days must be a whole number in 1\.\.36500"):
        await SqliteFtsAuditStore.open(REGION, None, retention_days=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retention_days"):
        await open_audit_store("memory://", REGION, retention_days=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retention_days"):
        StoreConfig(audit_retention_days=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("on_file", [False, True])
async def test_a_store_emptied_by_the_retention_gives_no_number_twice(
    tmp_path: Path, on_file: bool
) -> None:
    """Every record past the retention: the store answers as an empty one (its column
    mirror held the deleted records), and records stored after that (or after a
    reopening of the file) are numbered after the deleted ones, so nothing the mirror
    held of those is taken for theirs (a search failed with IndexError, statistics
    counted the deleted records' decisions, filters missed the new ones)."""
    path = str(tmp_path / "r.db") if on_file else None
    old = aged(dataset(5), [timedelta(days=9)] * 5)
    new = [replace(r, timestamp=NOW, decision="ALLOW") for r in dataset(8)[5:]]
    store = await SqliteFtsAuditStore.open(REGION, path, retention_days=3)
    try:
        await store.index_audit_logs([replace(r, decision="BLOCK") for r in old])
        assert (await store.search_audit_logs()).total == 5  # the mirror holds them
        assert await store.apply_retention(NOW) == 5
        assert await ids(store) == set()
        await store.index_audit_logs(new[:2])
        if on_file:
            await store.close()
            store = await SqliteFtsAuditStore.open(REGION, path, retention_days=3)
        await store.index_audit_logs(new[2:])
        assert await ids(store) == {r.action_id for r in new}
        assert (await store.search_audit_logs(decision="ALLOW")).total == 3
        assert (await store.search_audit_logs(agent_id=new[0].agent_id)).total == sum(
            r.agent_id == new[0].agent_id for r in new
        )
        stats = await store.get_audit_log_statistics()
        assert (stats.total_actions, stats.decision_counts["BLOCK"]) == (3, 0)
    finally:
        await store.close()
    if path is not None:  # the numbers given before the reopening were kept too
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT min(seq), max(seq) FROM audit_records").fetchone() == (
                6,
                8,
            )
