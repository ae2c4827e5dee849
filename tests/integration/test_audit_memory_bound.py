"""The SQLite audit store's ``max_records``: past it the oldest records are dropped, and the
store then answers exactly as a store that only ever held the newest ``max_records``.

The in-memory store (``memory://``, the region node's default) is bounded by default, so a
long-running node does not grow until it runs out of memory.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_storage_audit import (
    QUERIES,
    REGION,
    all_pages,
    dataset,
    oracle_ids,
    page_ids,
)

from nethical_grpc.storage.audit import (
    DEFAULT_MEMORY_MAX_RECORDS,
    AuditRecord,
    SqliteFtsAuditStore,
    open_audit_store,
    sqlite_fts,
)

Opener = Callable[..., Awaitable[SqliteFtsAuditStore]]


@pytest.fixture(name="open_store", params=["memory", "sqlite"])
async def open_store_fixture(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Opener]:
    """Opens stores of the parametrised kind, each file store in its own file."""
    opened: list[SqliteFtsAuditStore] = []

    async def open_one(max_records: int | None = None) -> SqliteFtsAuditStore:
        path = None if request.param == "memory" else str(tmp_path / f"a{len(opened)}.db")
        store = await SqliteFtsAuditStore.open(REGION, path, max_records=max_records)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


async def load_in_batches(
    store: SqliteFtsAuditStore, records: Sequence[AuditRecord], size: int
) -> None:
    for i in range(0, len(records), size):
        result = await store.index_audit_logs(records[i : i + size])
        assert result.indexed == len(records[i : i + size])


async def answers(store: SqliteFtsAuditStore) -> list[object]:
    """Everything a caller can see: newest-first ids per query, relevance order with its
    scores, filtered searches and statistics."""
    out: list[object] = []
    for text in [None, *QUERIES]:
        out.append(page_ids(await all_pages(store, text, page_size=7, order="newest")))
    for text in QUERIES:
        pages = await all_pages(store, text, page_size=9, order="relevance")
        out.append([(h.record.action_id, h.score) for p in pages for h in p.hits])
    out.append(page_ids(await all_pages(store, "report", agent_id="agent-3", page_size=50)))
    out.append(page_ids(await all_pages(store, decision="block", min_risk_score=0.4)))
    out.append(await store.get_audit_log_statistics())
    out.append(await store.get_audit_log_statistics(agent_id="agent-2"))
    return out


def index_tables(path: Path) -> tuple[object, ...]:
    """What a store file's full-text index and ranking tables hold, comparable between two
    files (after FTS5's own integrity check)."""
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO audit_fts (audit_fts, rank) VALUES ('integrity-check', 1)")
        matches = [
            conn.execute(
                "SELECT count(*) FROM audit_fts WHERE audit_fts MATCH ?", (term,)
            ).fetchone()[0]
            for term in ("ticket", "report", "cafe", "d0", *(f"k{b}" for b in range(10)))
        ]
        # agent tags by agent name: the two stores number their agents differently
        agents = []
        for code, agent in conn.execute("SELECT code, agent_id FROM audit_agents"):
            (n,) = conn.execute(
                "SELECT count(*) FROM audit_fts WHERE audit_fts MATCH ?", (f"a{code}",)
            ).fetchone()
            if n:  # an agent whose records were all dropped may keep its code a while
                agents.append((agent, n))
        terms = conn.execute("SELECT term, df FROM audit_terms ORDER BY term").fetchall()
        repeats = sorted(conn.execute("SELECT term, tf FROM audit_term_counts").fetchall())
        assert repeats  # the test covers them
        return matches, sorted(agents), terms, repeats


async def test_a_bounded_store_answers_as_one_that_holds_only_the_newest(
    open_store: Opener,
) -> None:
    records = dataset(240)
    bounded = await open_store(max_records=100)
    await load_in_batches(bounded, records, 37)
    fresh = await open_store()
    await load_in_batches(fresh, records[-100:], 100)

    assert bounded.records_dropped == 140 and bounded.max_records == 100
    got, expected = await answers(bounded), await answers(fresh)
    assert got == expected  # ids, BM25 scores (same df, N, lengths), statistics
    assert got[0] == oracle_ids(records[-100:])
    assert (await bounded.get_audit_log_statistics()).total_actions == 100


async def test_a_batch_larger_than_the_bound_keeps_its_newest(open_store: Opener) -> None:
    records = dataset(120)
    store = await open_store(max_records=25)
    await load_in_batches(store, records, 120)
    assert page_ids(await all_pages(store, page_size=10)) == oracle_ids(records[-25:])
    assert page_ids(await all_pages(store, "report", page_size=3, order="newest")) == oracle_ids(
        records[-25:], "report"
    )
    assert store.records_dropped == 95


async def test_ids_are_deduplicated_among_the_records_kept(open_store: Opener) -> None:
    records = dataset(30)
    store = await open_store(max_records=10)
    await load_in_batches(store, records, 30)
    again = await store.index_audit_logs(records[-10:])
    assert (again.indexed, again.duplicates) == (0, 10)
    # a dropped record is no longer known: sent again, it is the newest record
    back = await store.index_audit_logs([records[0]])
    assert (back.indexed, back.duplicates) == (1, 0)
    assert page_ids(await all_pages(store, page_size=20)) == oracle_ids([*records[-9:], records[0]])


@pytest.fixture
async def shared_file(
    tmp_path: Path,
) -> AsyncIterator[tuple[SqliteFtsAuditStore, SqliteFtsAuditStore]]:
    """A writer bounded at 40 records and a reader (another store, as another process
    would open it) on one file."""
    path = str(tmp_path / "shared.db")
    writer = await SqliteFtsAuditStore.open(REGION, path, max_records=40)
    reader = await SqliteFtsAuditStore.open(REGION, path)
    try:
        yield writer, reader
    finally:
        await writer.close()
        await reader.close()


async def test_a_reader_sharing_the_file_sees_the_oldest_go(
    shared_file: tuple[SqliteFtsAuditStore, SqliteFtsAuditStore],
) -> None:
    writer, reader = shared_file
    records = dataset(160)
    start = 0
    for end in (30, 70, 160):  # the reader's mirror is cut at each step, then emptied
        await load_in_batches(writer, records[start:end], 30)
        start = end
        kept = records[max(0, end - 40) : end]
        assert page_ids(await all_pages(reader, page_size=16)) == oracle_ids(kept)
        assert page_ids(await all_pages(reader, "ticket 7", order="newest")) == oracle_ids(
            kept, "ticket 7"
        )
        stats = await reader.get_audit_log_statistics()
        assert stats.total_actions == len(kept)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bound=st.integers(min_value=1, max_value=30),
    sizes=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=6),
)
def test_after_any_writes_the_newest_records_remain(bound: int, sizes: list[int]) -> None:
    records = dataset(sum(sizes))

    async def check() -> None:
        store = await SqliteFtsAuditStore.open(REGION, max_records=bound)
        try:
            written = 0
            for size in sizes:
                await store.index_audit_logs(records[written : written + size])
                written += size
                kept = records[max(0, written - bound) : written]
                assert page_ids(await all_pages(store, page_size=50)) == oracle_ids(kept)
                assert page_ids(
                    await all_pages(store, "report", page_size=50, order="newest")
                ) == oracle_ids(kept, "report")
                assert store.records_dropped == written - len(kept)
        finally:
            await store.close()

    asyncio.run(check())


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "10"])
async def test_a_bad_bound_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="max_records"):
        await SqliteFtsAuditStore.open(REGION, max_records=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_records"):
        await open_audit_store("memory://", REGION, memory_max_records=bad)  # type: ignore[arg-type]


async def test_the_factory_bounds_memory_by_default_and_files_by_their_url(
    tmp_path: Path,
) -> None:
    memory, _ = await open_audit_store("memory://", REGION)
    unbounded, _ = await open_audit_store("memory://", REGION, memory_max_records=None)
    file, _ = await open_audit_store(f"sqlite://{tmp_path / 'a.db'}", REGION)
    bounded_file, _ = await open_audit_store(
        f"sqlite://{tmp_path / 'b.db'}?max_records=25&cache_mib=4", REGION, memory_max_records=7
    )
    # nothing listens on the discard port: the in-memory stand-in is bounded too
    standin, choice = await open_audit_store(
        "http://127.0.0.1:9", REGION, connect_timeout_s=1.0, memory_max_records=7
    )
    try:
        assert isinstance(memory, SqliteFtsAuditStore)
        assert memory.max_records == DEFAULT_MEMORY_MAX_RECORDS
        assert isinstance(unbounded, SqliteFtsAuditStore) and unbounded.max_records is None
        assert isinstance(file, SqliteFtsAuditStore) and file.max_records is None
        assert choice.fallback and isinstance(standin, SqliteFtsAuditStore)
        assert standin.max_records == 7
        # the URL's bound, not the in-memory one, and it holds: the newest 25 stay
        assert isinstance(bounded_file, SqliteFtsAuditStore) and bounded_file.max_records == 25
        records = dataset(60)
        await load_in_batches(bounded_file, records, 20)
        assert page_ids(await all_pages(bounded_file, page_size=30)) == oracle_ids(records[-25:])
        assert bounded_file.records_dropped == 35
    finally:
        for s in (memory, unbounded, file, bounded_file, standin):
            await s.close()
    # the bound is the file's to keep: a node restarted with it finds the same 25
    again, _ = await open_audit_store(f"sqlite://{tmp_path / 'b.db'}?max_records=25", REGION)
    try:
        assert (await again.get_audit_log_statistics()).total_actions == 25
    finally:
        await again.close()


async def test_the_factory_refuses_a_bad_record_bound(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="audit URL: max_records must be a whole number"):
        await open_audit_store(f"sqlite://{tmp_path / 'a.db'}?max_records=0", REGION)
    assert not (tmp_path / "a.db").exists()  # refused before the file is made


@pytest.mark.parametrize("indexed_every", [1, 2, 3, 0])
async def test_dropped_records_leave_the_index_and_the_term_counts(
    tmp_path: Path, indexed_every: int
) -> None:
    # every record has a word of its own (a dropped record's term must leave
    # audit_terms), and every other one repeats a word (counted in audit_term_counts);
    # the index is brought up to date after every batch, every other or third one (so
    # drops take indexed and unindexed records, and ranges of both), or only at the end
    records = [
        replace(r, action_text=f"{r.action_text} ref{i}" + (" again and again" if i % 2 else ""))
        for i, r in enumerate(dataset(240))
    ]
    bounded = await SqliteFtsAuditStore.open(REGION, str(tmp_path / "b.db"), max_records=60)
    fresh = await SqliteFtsAuditStore.open(REGION, str(tmp_path / "f.db"))
    try:
        for n, i in enumerate(range(0, len(records), 41), start=1):
            await bounded.index_audit_logs(records[i : i + 41])
            if indexed_every and n % indexed_every == 0:
                await bounded.refresh()
        await load_in_batches(fresh, records[-60:], 60)
        await bounded.refresh()
        await fresh.refresh()
    finally:
        await bounded.close()
        await fresh.close()

    assert index_tables(tmp_path / "b.db") == index_tables(tmp_path / "f.db")


@settings(max_examples=300, deadline=None)
@given(st.floats(0.0, 1.0))
def test_the_risk_bucket_is_the_same_in_sql_and_in_python(risk: float) -> None:
    # a drop tells FTS5 the tags it indexed, the risk decile computed in SQL: a different
    # decile would leave the record's tags in the index
    with sqlite3.connect(":memory:") as conn:
        (bucket,) = conn.execute(
            f"SELECT {sqlite_fts._RISK_BUCKET_SQL} FROM (SELECT ? AS risk_score) AS r", (risk,)
        ).fetchone()
    assert bucket == sqlite_fts._risk_bucket(risk)


async def test_a_drop_searches_its_tables_by_key_and_scans_none(tmp_path: Path) -> None:
    # a drop's deletes must find the dropped rows through the tables' keys: a statement
    # that scans a table costs a drop (one per write of a full store) the whole table
    records = [
        replace(r, action_text=f"{r.action_text} ref{i} again and again")
        for i, r in enumerate(dataset(40))
    ]
    path = tmp_path / "b.db"
    store = await SqliteFtsAuditStore.open(REGION, str(path), max_records=40)
    try:
        await load_in_batches(store, records, 40)
        await store.refresh()  # the drop's index deletes are what the test is about
    finally:
        await store.close()
    with sqlite3.connect(path, isolation_level=None) as conn:
        seen: list[str] = []
        conn.set_trace_callback(seen.append)
        conn.execute("BEGIN IMMEDIATE")
        assert sqlite_fts._drop_range(conn, 1, 30) == 30
        conn.execute("ROLLBACK")
        conn.set_trace_callback(None)
        deletes = [s for s in seen if s.lstrip().upper().startswith("DELETE")]
        assert len(deletes) >= 4  # audit_terms, audit_term_counts, documents, records
        for statement in deletes:
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement)]
            scans = [p for p in plan if p.startswith("SCAN") and "CONSTANT ROW" not in p]
            assert not scans, (statement[:90], plan)


async def mirror_view(store: SqliteFtsAuditStore) -> sqlite_fts._View:
    """The store's column mirror as a search sees it (topped up and cut first)."""
    return await store._readers.run(
        lambda conn: sqlite_fts._read(conn, lambda: store._mirror.view(conn))
    )


def live_columns(view: sqlite_fts._View) -> tuple[list[int], ...]:
    """The view's records' columns, oldest first (copied out)."""
    live = slice(1, view.n - view.base + 1)
    return tuple(
        getattr(view, name)[live].tolist()
        for name in ("ts", "decision", "risk", "agent", "region", "doc_len")
    )


async def test_a_full_store_moves_its_records_once_per_as_many_drops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a store at its bound drops records on every write: cutting them from the mirror
    # must not copy the records that stay on every search, or each search after a write
    # would cost a copy of the whole mirror
    copied: list[int] = []
    reallocate = sqlite_fts._Mirror._reallocate

    def counting(self: sqlite_fts._Mirror, cap: int, drop: int = 0) -> None:
        copied.append(self._n - self._base - drop)
        reallocate(self, cap, drop)

    monkeypatch.setattr(sqlite_fts._Mirror, "_reallocate", counting)
    bound, batch, writes = 1000, 50, 200
    records = dataset(batch * writes)
    store = await SqliteFtsAuditStore.open(REGION, max_records=bound)
    try:
        for i in range(writes):
            await store.index_audit_logs(records[i * batch : (i + 1) * batch])
            view = await mirror_view(store)
            assert view.n - view.base == min(bound, (i + 1) * batch)
        assert store._mirror.capacity <= 2 * (bound + batch)
        assert page_ids(await all_pages(store, page_size=100)) == oracle_ids(records[-bound:])
    finally:
        await store.close()
    # every record is copied a bounded number of times on average (once per write and
    # search, it would be 200,000 copies of 1,000 records)
    assert sum(copied) <= 2 * batch * writes


async def test_views_taken_before_a_cut_keep_their_records(
    shared_file: tuple[SqliteFtsAuditStore, SqliteFtsAuditStore],
) -> None:
    # a search runs on a view while other readers cut and top up the mirror: the
    # entries a view reads are never written again, whether some or all of its records
    # were dropped since
    writer, reader = shared_file
    records = dataset(250)
    await writer.index_audit_logs(records[:40])
    before = await mirror_view(reader)
    columns = live_columns(before)
    await writer.index_audit_logs(records[40:150])  # every mirrored record dropped
    after = await mirror_view(reader)
    assert live_columns(before) == columns
    assert (after.base, after.n) == (110, 150)

    await writer.index_audit_logs(records[150:160])  # 10 dropped: cut without a copy
    some_dropped = await mirror_view(reader)
    assert np.shares_memory(some_dropped.ts, after.ts)
    assert live_columns(some_dropped)[0][:30] == live_columns(after)[0][10:]
    assert page_ids(await all_pages(reader, page_size=50)) == oracle_ids(records[120:160])
