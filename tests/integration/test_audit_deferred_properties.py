"""Property tests of the SQLite audit store's deferred full-text indexing: whatever the
interleaving of writes (with repeated ids), drops by the bound, the retention, text
searches, text statistics, refreshes and idle indexing, with small lags and chunks, the
store answers as a store that holds exactly the records it should keep, its full-text
index and ranking tables hold exactly the kept records at or below ``audit_index_top``,
and FTS5 finds its index sound.  A relevance- (or newest-) ordered search paged while
writes and drops happen between its pages never serves a hit twice and never skips a
record kept throughout."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_audit_memory_bound import answers, index_tables
from test_storage_audit import QUERIES, REGION, all_pages, dataset, oracle_ids, page_ids

from nethical_grpc.storage.audit import AuditRecord, SqliteFtsAuditStore, sqlite_fts
from nethical_grpc.storage.audit.model import text_tokens

#: Records the steps draw from: each has a word of its own and repeated words (so the
#: term counts table is never empty), and their timestamps rise a minute apart.
POOL: list[AuditRecord] = [
    replace(
        r,
        action_text=f"{r.action_text} ref{i} again and again" + (" report report" if i % 2 else ""),
    )
    for i, r in enumerate(dataset(400))
]
RETENTION_DAYS = 1
#: Queries of the text-search steps: the shared ones and words of this pool.
STEP_QUERIES = [*QUERIES, "again", "report again", "ref7", "ref31 again", "ticket 3 again"]


@dataclass(frozen=True)
class Write:
    new: int  # records never written before
    again: tuple[int, ...]  # picks among the records written before (kept or dropped)
    repeat_in_batch: bool  # the batch holds one of its records twice


@dataclass(frozen=True)
class Search:
    query: str
    order: str
    page_size: int
    agent: str | None  # an agent filter (its tags join the full-text query)


@dataclass(frozen=True)
class Stats:
    query: str
    agent: str | None


@dataclass(frozen=True)
class Retain:
    percent: int  # the cutoff, as a share of the records written so far
    limit: int | None


@dataclass(frozen=True)
class Refresh:
    pass


@dataclass(frozen=True)
class Reopen:
    pass


@dataclass(frozen=True)
class Idle:
    write_meanwhile: Write | None  # a write that begins while the idle indexing runs


Step = Write | Search | Stats | Retain | Refresh | Reopen | Idle

writes = st.builds(
    Write,
    new=st.integers(0, 25),
    again=st.lists(st.integers(0, 10**6), max_size=6).map(tuple),
    repeat_in_batch=st.booleans(),
)
agents = st.none() | st.sampled_from([f"agent-{i}" for i in range(7)])
steps = st.one_of(
    writes,
    writes,
    st.builds(
        Search,
        query=st.sampled_from(STEP_QUERIES),
        order=st.sampled_from(["newest", "relevance"]),
        page_size=st.integers(1, 12),
        agent=agents,
    ),
    st.builds(Stats, query=st.sampled_from(STEP_QUERIES), agent=agents),
    st.builds(Retain, percent=st.integers(0, 100), limit=st.none() | st.integers(1, 10)),
    st.just(Refresh()),
    st.just(Reopen()),
    st.builds(Idle, write_meanwhile=st.none() | writes),
)


class Model:
    """The records a store should keep, in the order it stored them."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.kept: list[AuditRecord] = []
        self.written = 0  # POOL[:written] were sent at least once

    def batch(self, step: Write) -> list[AuditRecord]:
        new = POOL[self.written : self.written + step.new]
        old = [POOL[i % self.written] for i in step.again] if self.written else []
        self.written += len(new)
        batch = [*old, *new]
        if step.repeat_in_batch and batch:
            batch.append(batch[len(batch) // 2])
        return batch

    def write(self, batch: Sequence[AuditRecord]) -> None:
        held = {r.action_id for r in self.kept}
        for r in batch:  # first occurrence wins; ids held are duplicates
            if r.action_id not in held:
                held.add(r.action_id)
                self.kept.append(r)
        del self.kept[: max(0, len(self.kept) - self.bound)]

    def retain(self, cutoff_us: int, limit: int | None) -> int:
        """Drop the oldest stored records older than the cutoff, up to the first that is
        not (and at most ``limit``)."""
        n = 0
        while self.kept and self.kept[0].timestamp_us < cutoff_us and (limit is None or n < limit):
            n += 1
            del self.kept[0]
        return n


async def reference(
    records: Sequence[AuditRecord], path: Path | None = None
) -> SqliteFtsAuditStore:
    """A store that holds exactly ``records`` (in this order), refreshed."""
    store = await SqliteFtsAuditStore.open(REGION, None if path is None else str(path))
    if records:
        result = await store.index_audit_logs(records)
        assert result.indexed == len(records)
    await store.refresh()
    return store


def check_index(path: Path, kept: Sequence[AuditRecord]) -> None:
    """FTS5's integrity check passes, the table holds the kept records in order, and the
    full-text index and ranking tables hold exactly the kept records at or below
    ``audit_index_top`` (each with its terms and tags), read on a connection of its own."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("INSERT INTO audit_fts (audit_fts, rank) VALUES ('integrity-check', 1)")
        (upto,) = conn.execute("SELECT upto FROM audit_index_top").fetchone()
        held = conn.execute(
            "SELECT seq, action_id, agent_code, region_code, decision, risk_score "
            "FROM audit_records ORDER BY seq"
        ).fetchall()
        assert [aid for _, aid, *_ in held] == [r.action_id for r in kept]
        by_id = {r.action_id: r for r in kept}
        indexed = [row for row in held if row[0] <= upto]
        docsize = [s for (s,) in conn.execute("SELECT id FROM audit_fts_docsize ORDER BY id")]
        assert docsize == [row[0] for row in indexed]

        df: Counter[str] = Counter()
        counts: set[tuple[str, int, int]] = set()
        holding: dict[str, set[int]] = {}  # term or tag -> seqs
        for seq, aid, agent, region, decision, risk in indexed:
            r = by_id[aid]
            tokens = Counter(text_tokens(f"{r.stated_intent} {r.action_text}"))
            df.update(tokens.keys())
            counts |= {(t, seq, c) for t, c in tokens.items() if c > 1}
            own = sqlite_fts._tags(agent, region, decision, sqlite_fts._risk_bucket(risk))
            for token in [*tokens, *(f"tags:{t}" for t in own.split())]:
                holding.setdefault(token, set()).add(seq)
        assert dict(conn.execute("SELECT term, df FROM audit_terms").fetchall()) == dict(df)
        assert set(conn.execute("SELECT term, seq, tf FROM audit_term_counts")) == counts
        # every term of the pool and every tag: the rowids FTS5 returns are those expected
        tags = [f"tags:d{d}" for d in range(4)] + [f"tags:k{b}" for b in range(10)]
        tags += [f"tags:a{code}" for (code,) in conn.execute("SELECT code FROM audit_agents")]
        tags += [f"tags:g{code}" for (code,) in conn.execute("SELECT code FROM audit_regions")]
        for token in [*POOL_TERMS, *tags]:
            if token.startswith("tags:"):
                expression = f"tags : {token[5:]}"
            else:
                expression = sqlite_fts.fts5_match_expression([token])
            got = {
                s
                for (s,) in conn.execute(
                    "SELECT rowid FROM audit_fts WHERE audit_fts MATCH ?", (expression,)
                )
            }
            assert got == holding.get(token, set()), token


POOL_TERMS = sorted({t for r in POOL for t in text_tokens(f"{r.stated_intent} {r.action_text}")})


async def relevance_hits(
    store: SqliteFtsAuditStore, text: str, page_size: int, **flt: Any
) -> list[tuple[str, float | None]]:
    pages = await all_pages(store, text, page_size=page_size, order="relevance", **flt)
    return [(h.record.action_id, h.score) for p in pages for h in p.hits]


async def run_steps(path: Path, bound: int, plan: Sequence[Step]) -> None:
    model = Model(bound)

    async def open_store() -> SqliteFtsAuditStore:
        return await SqliteFtsAuditStore.open(
            REGION, str(path), max_records=bound, retention_days=RETENTION_DAYS
        )

    store = await open_store()
    try:

        async def write(step: Write) -> None:
            batch = model.batch(step)
            if batch:
                await store.index_audit_logs(batch)
            model.write(batch)

        for step in plan:
            if isinstance(step, Write):
                await write(step)
            elif isinstance(step, Refresh):
                await store.refresh()
                with closing(sqlite3.connect(path)) as conn:
                    (upto,) = conn.execute("SELECT upto FROM audit_index_top").fetchone()
                    (top,) = conn.execute(
                        "SELECT coalesce(max(seq), 0) FROM audit_records"
                    ).fetchone()
                    assert upto >= top  # nothing waits
            elif isinstance(step, Reopen):  # audit_index_top and the waiting records persist
                await store.close()
                store = await open_store()
            elif isinstance(step, Idle):
                store._start_idle_indexing()  # the idle second, come now
                if step.write_meanwhile is not None:
                    await asyncio.sleep(0)  # the indexing has begun its first chunk
                    await write(step.write_meanwhile)
                assert store._indexing is not None
                await store._indexing
            elif isinstance(step, Retain):
                cut = min(model.written * step.percent // 100, len(POOL) - 1)
                now = POOL[cut].timestamp + timedelta(days=RETENTION_DAYS)
                expected = model.retain(POOL[cut].timestamp_us, step.limit)
                assert await store.apply_retention(now, limit=step.limit) == expected
            else:
                flt: dict[str, Any] = {} if step.agent is None else {"agent_id": step.agent}
                ref = await reference(model.kept)
                try:
                    if isinstance(step, Search):
                        if step.order == "newest":
                            pages = await all_pages(
                                store, step.query, page_size=step.page_size, order="newest", **flt
                            )
                            assert page_ids(pages) == oracle_ids(model.kept, step.query, **flt)
                        else:
                            size = step.page_size
                            got_hits = await relevance_hits(store, step.query, size, **flt)
                            assert got_hits == await relevance_hits(ref, step.query, size, **flt)
                    else:
                        stats = await store.get_audit_log_statistics(step.query, **flt)
                        assert stats == await ref.get_audit_log_statistics(step.query, **flt)
                finally:
                    await ref.close()
            check_index(path, model.kept)
            # a search and statistics without text read the table, never the index
            assert page_ids(await all_pages(store, page_size=50)) == oracle_ids(model.kept)

        ref_path = path.with_name("reference.db")
        ref = await reference(model.kept, ref_path)
        try:
            await store.refresh()
            assert await answers(store) == await answers(ref)
        finally:
            await ref.close()
    finally:
        await store.close()
    check_index(path, model.kept)
    if model.kept:
        assert index_tables(path) == index_tables(ref_path)
    else:  # everything expired: nothing left in the index either
        with closing(sqlite3.connect(path)) as conn:
            for table in ("audit_fts_docsize", "audit_terms", "audit_term_counts"):
                assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    bound=st.integers(3, 40),
    lag=st.integers(1, 30),
    chunk=st.integers(1, 16),
    retention_chunk=st.integers(1, 6),
    forget_after=st.integers(1, 8),
    plan=st.lists(steps, min_size=1, max_size=14),
)
def test_any_interleaving_answers_as_a_store_of_the_kept_records(
    bound: int,
    lag: int,
    chunk: int,
    retention_chunk: int,
    forget_after: int,
    plan: list[Step],
) -> None:
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as tmp:
        mp.setattr(sqlite_fts, "_INDEX_LAG", lag)
        mp.setattr(sqlite_fts, "_INDEX_CHUNK", chunk)
        mp.setattr(sqlite_fts, "_INDEX_IDLE_S", 3600.0)  # idle steps start it themselves
        mp.setattr(sqlite_fts, "_RETENTION_CHUNK", retention_chunk)
        mp.setattr(sqlite_fts, "_FORGET_AFTER_DROPS", forget_after)
        asyncio.run(run_steps(Path(tmp) / "store.db", bound, plan))


async def page_through(
    path: Path,
    bound: int,
    first: Write,
    query: str,
    order: str,
    page_size: int,
    between: Sequence[Write | Retain | Refresh | None],
) -> None:
    model = Model(bound)
    store = await SqliteFtsAuditStore.open(
        REGION, str(path), max_records=bound, retention_days=RETENTION_DAYS
    )
    try:
        batch = model.batch(first)
        await store.index_audit_logs(batch)
        model.write(batch)
        throughout = set(oracle_ids(model.kept, query))  # matching, kept at every page
        served: list[tuple[tuple[float, int, str], str]] = []
        page = await store.search_audit_logs(query, page_size=page_size, order=order)
        for i in range(10_000):
            held = {r.action_id for r in model.kept}
            for h in page.hits:
                assert h.record.action_id in held  # a record kept when its page was read
                score = 0.0 if h.score is None else h.score
                served.append(
                    ((score, h.record.timestamp_us, h.record.action_id), h.record.action_id)
                )
            if page.next_page_token is None:
                break
            step = between[i % len(between)] if between else None
            if isinstance(step, Write):
                batch = model.batch(step)
                if batch:
                    await store.index_audit_logs(batch)
                model.write(batch)
            elif isinstance(step, Retain):
                cut = min(model.written * step.percent // 100, len(POOL) - 1)
                now = POOL[cut].timestamp + timedelta(days=RETENTION_DAYS)
                expected = model.retain(POOL[cut].timestamp_us, step.limit)
                assert await store.apply_retention(now, limit=step.limit) == expected
            elif isinstance(step, Refresh):
                await store.refresh()
            throughout &= {r.action_id for r in model.kept}
            page = await store.search_audit_logs(
                query, page_size=page_size, order=order, page_token=page.next_page_token
            )
        keys = [key for key, _ in served]
        # (score,) timestamp, id strictly descending over every page: no hit twice
        assert all(a > b for a, b in itertools.pairwise(keys)), keys
        ids = [aid for _, aid in served]
        assert len(ids) == len(set(ids))
        assert throughout <= set(ids)  # none kept throughout was skipped
    finally:
        await store.close()
    check_index(path, model.kept)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bound=st.integers(5, 60),
    lag=st.integers(1, 30),
    chunk=st.integers(1, 16),
    first=st.builds(
        Write, new=st.integers(1, 60), again=st.just(()), repeat_in_batch=st.just(False)
    ),
    query=st.sampled_from(
        ["again", "report", "report again", "ticket", "customer users", "ref3 ref30"]
    ),
    order=st.sampled_from(["relevance", "newest"]),
    page_size=st.integers(1, 7),
    between=st.lists(
        st.none()
        | writes
        | st.builds(Retain, percent=st.integers(0, 100), limit=st.none() | st.integers(1, 5))
        | st.just(Refresh()),
        max_size=6,
    ),
)
def test_a_search_paged_while_records_come_and_go_serves_each_hit_once(
    bound: int,
    lag: int,
    chunk: int,
    first: Write,
    query: str,
    order: str,
    page_size: int,
    between: list[Write | Retain | Refresh | None],
) -> None:
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as tmp:
        mp.setattr(sqlite_fts, "_INDEX_LAG", lag)
        mp.setattr(sqlite_fts, "_INDEX_CHUNK", chunk)
        mp.setattr(sqlite_fts, "_INDEX_IDLE_S", 3600.0)
        asyncio.run(
            page_through(Path(tmp) / "store.db", bound, first, query, order, page_size, between)
        )


async def test_a_text_read_with_nothing_waiting_takes_no_write_lock(tmp_path: Path) -> None:
    # A text search indexes what waits first, on the writer.  With nothing waiting it must
    # not go there: it would queue behind this store's bulk writes and take the file's
    # write lock, so a search failed ("database is locked") while another process wrote.
    path = tmp_path / "s.db"
    store = await SqliteFtsAuditStore.open(REGION, str(path), busy_timeout_ms=200)
    try:
        records = POOL[:60]
        await store.index_audit_logs(records)
        await store.refresh()
        other = sqlite3.connect(path, isolation_level=None)  # another process, writing
        other.execute("BEGIN IMMEDIATE")
        try:
            got = page_ids(await all_pages(store, "report", page_size=25, order="relevance"))
            assert sorted(got) == sorted(oracle_ids(records, "report"))
            stats = await store.get_audit_log_statistics("again", agent_id="agent-3")
            assert stats.total_actions == len(oracle_ids(records, "again", agent_id="agent-3"))
        finally:
            other.execute("ROLLBACK")
            other.close()
    finally:
        await store.close()
