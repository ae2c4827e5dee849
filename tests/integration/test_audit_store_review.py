"""Review findings on the SQLite FTS5 audit store (memory:// and a file), each a case that
answered wrongly before its fix, and a brute-force check of search, ranking, paging and
statistics under the memory bound."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nethical_grpc.storage.audit import (
    AuditHit,
    AuditRecord,
    AuditStoreError,
    Decision,
    SqliteFtsAuditStore,
    query_terms,
    sqlite_fts,
)
from nethical_grpc.storage.audit.model import fold_token, text_tokens

REGION = "eu-west-1"
T0 = datetime(2025, 3, 1, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SqliteFtsAuditStore]:
    path = None if request.param == "memory" else str(tmp_path / "audit.db")
    opened = await SqliteFtsAuditStore.open(REGION, path, retention_days=30)
    yield opened
    await opened.close()


def _record(i: int, text: str = "hello world", **kwargs: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "agent_id": "a",
        "decision": Decision.ALLOW,
        "risk_score": 0.1,
        "action_text": text,
        "action_id": f"act-{i:05d}",
        "timestamp": T0 + timedelta(seconds=i),
    }
    fields.update(kwargs)
    return AuditRecord(**fields)


# ---------------------------------------------------------------------- the column mirror


async def test_a_reader_whose_snapshot_predates_the_first_write_forgets_nothing(
    tmp_path: Path,
) -> None:
    """Before: a reader thread whose read transaction began on the still empty table took
    the emptiness for a retention that had deleted everything, and cut every record a
    newer snapshot had mirrored: from then on the store searched and counted none of
    them, for good."""
    path = str(tmp_path / "audit.db")
    store = await SqliteFtsAuditStore.open(REGION, path)
    older = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        older.execute("BEGIN")
        older.execute("SELECT count(*) FROM audit_records").fetchone()  # snapshot: empty
        await store.index_audit_logs([_record(i) for i in range(3)])
        assert (await store.search_audit_logs("hello")).total == 3
        # what one of the store's reader threads does when its snapshot is that old one
        view = store._mirror.view(older)
        assert view.n == view.base  # it sees no record, as its snapshot holds none
        older.execute("COMMIT")
        assert (await store.search_audit_logs("hello")).total == 3
        assert (await store.search_audit_logs()).total == 3
        assert (await store.get_audit_log_statistics()).total_actions == 3
    finally:
        older.close()
        await store.close()


async def test_a_table_emptied_by_the_retention_is_still_forgotten(tmp_path: Path) -> None:
    """The other empty table, one the retention emptied, still cuts the mirror."""
    store = await SqliteFtsAuditStore.open(REGION, str(tmp_path / "audit.db"), retention_days=1)
    try:
        await store.index_audit_logs([_record(i) for i in range(5)])
        assert (await store.search_audit_logs()).total == 5
        assert await store.apply_retention(T0 + timedelta(days=3)) == 5
        assert (await store.search_audit_logs()).total == 0
        await store.index_audit_logs([_record(10 + i) for i in range(2)])
        page = await store.search_audit_logs("hello")
        assert [h.record.action_id for h in page.hits] == ["act-00011", "act-00010"]
    finally:
        await store.close()


# ---------------------------------------------------------------------- retention


@pytest.mark.parametrize("bad", ["2025-03-01", 1_700_000_000, 1.5])
async def test_retention_refuses_a_now_that_is_not_a_datetime(
    store: SqliteFtsAuditStore, bad: object
) -> None:
    """Before: a TypeError from the date arithmetic, not the documented ValueError."""
    with pytest.raises(ValueError, match="now must be a datetime"):
        await store.apply_retention(bad)  # type: ignore[arg-type]


async def test_retention_as_of_the_earliest_dates_deletes_nothing(
    store: SqliteFtsAuditStore,
) -> None:
    """Before: an OverflowError subtracting 30 days from a time in year 1."""
    await store.index_audit_logs([_record(0)])
    assert await store.apply_retention(datetime(1, 1, 2, tzinfo=UTC)) == 0
    assert (await store.search_audit_logs()).total == 1


async def test_closing_during_a_retention_gives_the_stores_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: the retention's next chunk went to the shut-down worker pool and raised
    RuntimeError("cannot schedule new futures after shutdown")."""
    monkeypatch.setattr(sqlite_fts, "_RETENTION_CHUNK", 3)
    store = await SqliteFtsAuditStore.open(REGION, retention_days=1)
    await store.index_audit_logs([_record(i) for i in range(20)])
    retention = asyncio.create_task(store.apply_retention(T0 + timedelta(days=5)))
    await asyncio.sleep(0)  # its first chunk is now running on the writer thread
    await store.close()
    with pytest.raises(AuditStoreError, match="closed"):
        await retention


# ---------------------------------------------------------------------- index_audit_log


@pytest.mark.parametrize(
    "extra",
    [
        {"timestamp": T0 + timedelta(days=1)},
        {"region_id": "us-east-1"},
        {"violations": [{"type": "PII", "severity": 2, "confidence": 0.5}]},
    ],
)
async def test_a_record_given_with_fields_too_is_refused(
    store: SqliteFtsAuditStore, extra: dict[str, Any]
) -> None:
    """Before: these fields were silently ignored beside a record (the record stored with
    its own timestamp, region and violations), where the others were refused."""
    with pytest.raises(ValueError, match="either a record or its fields"):
        await store.index_audit_log(_record(0), **extra)
    assert (await store.search_audit_logs()).total == 0
    assert await store.index_audit_log(_record(0), violations=())
    assert await store.index_audit_log(
        timestamp=T0, agent_id="b", decision="BLOCK", risk_score=0.5, region_id=REGION
    )


# ---------------------------------------------------------------------- brute force

WORDS = ["alpha", "Beta", "café", "cafe", "AND", "or", "NEAR", "text:beta", '"q"', "x*", "a-b"]
RISKS = [0.0, 0.1, 0.25, 0.3, 0.7, 1.0]


def _tokens(r: AuditRecord) -> list[str]:
    return text_tokens(f"{r.stated_intent} {r.action_text}")


def _bm25(records: list[AuditRecord], terms: tuple[str, ...]) -> dict[str, float]:
    """The module docstring's BM25, computed record by record."""
    tokens = {r.action_id: _tokens(r) for r in records}
    avg = sum(len(t) for t in tokens.values()) / len(records)
    ranked = list(dict.fromkeys(fold_token(t) for t in terms))
    out = {}
    for r in records:
        counts = Counter(tokens[r.action_id])
        score = 0.0
        for term in ranked:
            df = sum(1 for t in tokens.values() if term in t)
            idf = math.log(1 + (len(records) - df + 0.5) / (df + 0.5))
            tf = counts[term] or 1
            norm = 1.2 * (1 - 0.75 + 0.75 * len(tokens[r.action_id]) / avg)
            score += idf * tf * 2.2 / (tf + norm)
        out[r.action_id] = score
    return out


_RECORD = st.tuples(
    st.lists(st.sampled_from(WORDS), max_size=5),  # stated intent
    st.lists(st.sampled_from(WORDS), max_size=4),  # action text
    st.integers(0, 3),  # agent
    st.sampled_from(list(Decision)),
    st.sampled_from(RISKS),
    st.integers(0, 12),  # seconds after T0 (ties)
    st.integers(0, 25),  # action id (repeats)
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.lists(_RECORD, min_size=1, max_size=8), min_size=1, max_size=4),
    bound=st.one_of(st.none(), st.integers(1, 12)),
    words=st.lists(st.sampled_from(WORDS), max_size=3),
    page_size=st.integers(1, 4),
    min_risk=st.sampled_from([None, 0.0, 0.25, 0.3, 1.0]),
    decision=st.sampled_from([None, *Decision]),
    agent=st.sampled_from([None, "agent-0", "agent-1"]),
    window=st.sampled_from([(None, None), (0, 6), (6, None), (None, 6), (3, 4)]),
)
def test_search_and_statistics_match_a_brute_force_computation(
    batches: list[list[tuple[Any, ...]]],
    bound: int | None,
    words: list[str],
    page_size: int,
    min_risk: float | None,
    decision: Decision | None,
    agent: str | None,
    window: tuple[int | None, int | None],
) -> None:
    """Hits (every page, both orders), totals, BM25 scores and statistics of a bounded
    store against the same computed over the records it should hold (the newest
    ``bound`` distinct ids in the order first written)."""
    start = None if window[0] is None else T0 + timedelta(seconds=window[0])
    end = None if window[1] is None else T0 + timedelta(seconds=window[1])
    text = " ".join(words)
    terms = {fold_token(t) for t in query_terms(text)}

    def covered(r: AuditRecord) -> bool:
        return (
            terms <= set(_tokens(r))
            and (min_risk is None or r.risk_score >= min_risk)
            and (decision is None or r.decision == decision)
            and (agent is None or r.agent_id == agent)
            and (start is None or r.timestamp >= start)
            and (end is None or r.timestamp < end)
        )

    async def check() -> None:
        store = await SqliteFtsAuditStore.open(REGION, max_records=bound)
        kept: dict[str, AuditRecord] = {}
        try:
            for batch in batches:
                records = [
                    AuditRecord(
                        agent_id=f"agent-{agent_no}",
                        decision=dec,
                        risk_score=risk,
                        stated_intent=" ".join(intent),
                        action_text=" ".join(action),
                        action_id=f"id-{aid}",
                        timestamp=T0 + timedelta(seconds=second),
                    )
                    for intent, action, agent_no, dec, risk, second, aid in batch
                ]
                await store.index_audit_logs(records)
                for r in records:
                    kept.setdefault(r.action_id, r)
                while bound is not None and len(kept) > bound:
                    del kept[next(iter(kept))]
            held = list(kept.values())
            match = [r for r in held if covered(r)]
            flt: dict[str, Any] = {
                "min_risk_score": min_risk,
                "decision": decision,
                "agent_id": agent,
                "start_time": start,
                "end_time": end,
            }
            newest = sorted(match, key=lambda r: (r.timestamp, r.action_id), reverse=True)
            orders = ["newest", "relevance"] if terms and match else ["newest"]
            for order in orders:
                hits: list[AuditHit] = []
                token = None
                while True:
                    page = await store.search_audit_logs(
                        text, page_size=page_size, page_token=token, order=order, **flt
                    )
                    assert page.total == len(match)
                    hits += page.hits
                    token = page.next_page_token
                    if token is None:
                        break
                if order == "newest":
                    assert [h.record.action_id for h in hits] == [r.action_id for r in newest]
                    continue
                assert sorted(h.record.action_id for h in hits) == sorted(
                    r.action_id for r in newest
                )
                scores = _bm25(held, query_terms(text))
                for h in hits:
                    assert h.score == pytest.approx(scores[h.record.action_id], rel=1e-9)
                keys = [(h.score, h.record.timestamp, h.record.action_id) for h in hits]
                assert keys == sorted(keys, reverse=True)
            stats = await store.get_audit_log_statistics(text, **flt)
            assert stats.total_actions == len(match)
            assert stats.unique_agents == len({r.agent_id for r in match})
            if match:
                mean = sum(r.risk_score for r in match) / len(match)
                assert stats.avg_risk_score == pytest.approx(mean)
            else:
                assert stats.avg_risk_score is None
            assert dict(stats.decision_counts) == {
                d.value: sum(r.decision == d for r in match) for d in Decision
            }
        finally:
            await store.close()

    asyncio.run(check())


async def test_size_and_a_different_page_size_are_refused(store: SqliteFtsAuditStore) -> None:
    """``size`` is the guide's name for ``page_size``: given both, one of them was dropped
    without a word."""
    with pytest.raises(ValueError, match="not both"):
        await store.search_audit_logs("hello", size=5, page_size=7)
    page = await store.search_audit_logs("hello", size=5)
    assert page.hits == ()
