"""The audit-search store contract, run against every reachable backend.

Backends: SQLite FTS5 in memory, SQLite FTS5 in a WAL file, and Elasticsearch when
``ELASTICSEARCH_URL`` is set (skipped otherwise; each test then uses its own index prefix
and deletes its data stream, template and policy afterwards).  Every answer is checked
against a plain-Python oracle over the same records, so backends that pass agree with
each other: same hit sets, totals, statistics, and for newest-first order the same
sequence.  Relevance order may differ between BM25 implementations, so there the suite
checks each backend's documented rule (score descending, then timestamp and id
descending) and a few orderings every BM25 must give.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import os
import re
import sqlite3
import unicodedata
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nethical_grpc.governance.decision import evaluate_action
from nethical_grpc.governance.detectors import Action
from nethical_grpc.storage.audit import (
    MAX_TEXT_BYTES,
    AuditRecord,
    AuditStore,
    AuditStoreError,
    AuditViolation,
    Decision,
    ElasticsearchAuditStore,
    IndexResult,
    SearchOrder,
    SearchPage,
    SearchQuery,
    SqliteFtsAuditStore,
    open_audit_store,
)
from nethical_grpc.storage.audit.model import AuditFilter, query_terms, text_tokens
from nethical_grpc.storage.audit.paging import MAX_PIT_TOKEN_CHARS, PageCursor, encode_page_token

ES_URL = os.environ.get("ELASTICSEARCH_URL", "")
REGION = "eu-west-1"
T0 = datetime(2025, 3, 1, tzinfo=UTC)
BACKENDS = ["memory", "sqlite", "elasticsearch"]

OpenStore = Callable[..., Awaitable[AuditStore]]


# ---------------------------------------------------------------------- fixtures


async def _drop_es(store: ElasticsearchAuditStore, prefix: str) -> None:
    client = store.client

    def drop() -> None:
        client.options(ignore_status=404).indices.delete_data_stream(name=f"{prefix}-audit-*")
        client.options(ignore_status=404).indices.delete_index_template(name=f"{prefix}-audit")
        client.options(ignore_status=404).ilm.delete_lifecycle(name=f"{prefix}-audit-policy")

    await asyncio.to_thread(drop)


@pytest.fixture(params=BACKENDS)
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """A function opening stores of the parametrised backend (``region`` defaults to
    :data:`REGION`); everything opened is closed and, for Elasticsearch, deleted."""
    backend: str = request.param
    if backend == "elasticsearch" and not ES_URL:
        pytest.skip("ELASTICSEARCH_URL is not set: no Elasticsearch server to test against")
    opened: list[AuditStore] = []
    prefix = f"nethical-test-{uuid.uuid4().hex[:10]}"

    async def open_one(region: str = REGION) -> AuditStore:
        store: AuditStore
        if backend == "memory":
            store = await SqliteFtsAuditStore.open(region)
        elif backend == "sqlite":
            store = await SqliteFtsAuditStore.open(region, str(tmp_path / "audit.db"))
        else:
            hosts = [h.strip() for h in ES_URL.split(",")]
            store = await ElasticsearchAuditStore.open(region, hosts, index_prefix=prefix)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        if isinstance(store, ElasticsearchAuditStore) and store is opened[0]:
            await _drop_es(store, prefix)
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_store: OpenStore) -> AuditStore:
    return await open_store()


# ---------------------------------------------------------------------- data and oracle

INTENTS = [
    "export customer data for the quarterly report",
    "debug failing nightly job",
    "Prepare the QUARTERLY report",
    "rotate leaked credentials",
    "summarize café feedback",
    "",
]
TEXTS = [
    "SELECT * FROM users WHERE id = 1",
    "rm -rf /tmp/cache && echo done",
    "curl https://example.com/upload?file=db.dump",
    "send email to partner about the report",
    "DROP TABLE invoices; -- cleanup",
    "copy report to s3 bucket",
    "translate naïve résumé text",
    'don\'t stop: "quoted" AND(or) NEAR(x y) col:value *star*',
]


def dataset(n: int = 240) -> list[AuditRecord]:
    """Deterministic records: 7 agents, every decision, risks on a 0.01 grid, timestamps
    a minute apart with some exact ties (to exercise id tie-breaks), varied texts."""
    out = []
    for i in range(n):
        tick = i - (i % 10 == 1)  # records 1, 11, 21, ... share the previous timestamp
        violations = ()
        if i % 5 == 0:
            violations = (AuditViolation("PERSONAL_DATA", 3, 0.9, "PII columns selected"),)
        out.append(
            AuditRecord(
                action_id=f"act-{i:04d}",
                agent_id=f"agent-{i % 7}",
                decision=list(Decision)[(i * 3) % 4],
                risk_score=((i * 37) % 101) / 100,
                stated_intent=INTENTS[i % len(INTENTS)],
                action_text=f"{TEXTS[(i * 5) % len(TEXTS)]} ticket {i % 13}",
                action_type="database_query" if i % 2 else "shell",
                violations=violations,
                region_id=REGION if i % 3 else "",
                timestamp=T0 + timedelta(minutes=tick, microseconds=i % 3),
            )
        )
    return out


def _fold(token: str) -> str:
    decomposed = unicodedata.normalize("NFKD", token.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def oracle_tokens(text: str) -> set[str]:
    return {_fold(t) for t in re.findall(r"[^\W_]+", text)}


def oracle_ids(records: Sequence[AuditRecord], text: str | None = None, **flt: Any) -> list[str]:
    """Ids of matching records, newest first (timestamp then id, descending)."""
    terms = oracle_tokens(text or "")
    start, end = flt.get("start_time"), flt.get("end_time")
    out = []
    for r in records:
        if terms and not terms <= oracle_tokens(r.stated_intent) | oracle_tokens(r.action_text):
            continue
        if "agent_id" in flt and r.agent_id != flt["agent_id"]:
            continue
        if "decision" in flt and r.decision != Decision(flt["decision"].upper()):
            continue
        if "region_id" in flt and (r.region_id or REGION) != flt["region_id"]:
            continue
        if start is not None and r.timestamp < start:
            continue
        if end is not None and r.timestamp >= end:
            continue
        if "min_risk_score" in flt and r.risk_score < flt["min_risk_score"]:
            continue
        out.append(r)
    out.sort(key=lambda r: (r.timestamp, r.action_id), reverse=True)
    return [r.action_id for r in out]


async def load(store: AuditStore, records: Sequence[AuditRecord]) -> None:
    result = await store.index_audit_logs(records)
    assert result == IndexResult(indexed=len(records), duplicates=0)
    await store.refresh()


async def all_pages(store: AuditStore, text: str | None = None, **kwargs: Any) -> list[SearchPage]:
    pages = [await store.search_audit_logs(text, **kwargs)]
    while pages[-1].next_page_token is not None:
        assert len(pages) < 10_000
        pages.append(
            await store.search_audit_logs(text, **kwargs, page_token=pages[-1].next_page_token)
        )
    return pages


def page_ids(pages: Sequence[SearchPage]) -> list[str]:
    return [h.record.action_id for p in pages for h in p.hits]


def assert_relevance_rule(pages: Sequence[SearchPage]) -> None:
    """Score descending; equal scores by timestamp then id, descending."""
    hits = [h for p in pages for h in p.hits]
    for a, b in itertools.pairwise(hits):
        assert a.score is not None and b.score is not None
        assert a.score >= b.score
        if a.score == b.score:
            assert (a.record.timestamp, a.record.action_id) > (
                b.record.timestamp,
                b.record.action_id,
            )


# ---------------------------------------------------------------------- search contract

QUERIES = [
    "report",
    "REPORT quarterly",  # case, and terms in either field
    "customer users",  # one term from each field
    "cafe",  # diacritics folded on both sides
    "Café feedback",
    "naive resume",
    "ticket 7",
    "zzz-not-there",
    "dump db https",
    "don t stop",
]


async def test_text_search_finds_the_oracles_records(store: AuditStore) -> None:
    records = dataset()
    await load(store, records)
    for text in QUERIES:
        pages = await all_pages(store, text, page_size=100)
        expected = oracle_ids(records, text)
        ids = page_ids(pages)
        assert sorted(ids) == sorted(expected), text
        assert len(ids) == len(set(ids))
        assert all(p.total == len(expected) for p in pages)
        assert_relevance_rule(pages)


FILTERS: list[dict[str, Any]] = [
    {"agent_id": "agent-3"},
    {"decision": "BLOCK"},
    {"decision": "terminate"},  # decision names are case-insensitive
    {"region_id": REGION},
    {"region_id": "us-east-1"},
    {"agent_id": "agent-404"},
    {"start_time": T0 + timedelta(minutes=30), "end_time": T0 + timedelta(minutes=90)},
    {"start_time": T0 + timedelta(minutes=200)},
    {"end_time": T0 + timedelta(minutes=11)},  # exclusive: the record at minute 11 is out
    {"min_risk_score": 0.8},
    {"min_risk_score": 1.0},
    {"agent_id": "agent-1", "decision": "ALLOW", "min_risk_score": 0.2},
    {"decision": "RESTRICT", "start_time": T0, "end_time": T0 + timedelta(hours=2)},
]


async def test_filters_match_the_oracle(store: AuditStore) -> None:
    records = dataset()
    await load(store, records)
    for text in (None, "report", "ticket"):
        for flt in FILTERS:
            pages = await all_pages(store, text, page_size=37, **flt)
            expected = oracle_ids(records, text, **flt)
            if text is None:
                assert page_ids(pages) == expected, flt  # newest first, exactly
            else:
                assert sorted(page_ids(pages)) == sorted(expected), (text, flt)
                assert_relevance_rule(pages)
            assert {p.total for p in pages} == {len(expected)}
            stats = await store.get_audit_log_statistics(text, **flt)
            assert stats.total_actions == len(expected)


async def test_records_come_back_as_indexed(store: AuditStore) -> None:
    records = dataset(30)
    await load(store, records)
    pages = await all_pages(store, page_size=8)
    got = {h.record.action_id: h.record for p in pages for h in p.hits}
    for r in records:
        assert got[r.action_id] == (r if r.region_id else replace(r, region_id=REGION))
    assert all(h.score is None for p in pages for h in p.hits)


async def test_newest_order_is_exact_and_pages_tile(store: AuditStore) -> None:
    records = dataset()
    await load(store, records)
    pages = await all_pages(store, page_size=7)
    assert page_ids(pages) == oracle_ids(records)
    assert [len(p.hits) for p in pages[:-1]] == [7] * (len(pages) - 1)
    assert pages[-1].next_page_token is None
    ordered = await all_pages(store, "report", page_size=9, order=SearchOrder.NEWEST)
    assert page_ids(ordered) == oracle_ids(records, "report")


async def test_relevance_ranks_by_bm25(store: AuditStore) -> None:
    base = {"agent_id": "a", "decision": "ALLOW", "risk_score": 0.1}
    records = [
        # same length, the term twice beats once
        AuditRecord(action_id="tf2", action_text="zebra zebra quagga", timestamp=T0, **base),
        AuditRecord(action_id="tf1", action_text="zebra quagga lion", timestamp=T0, **base),
        # shorter beats longer at one occurrence
        AuditRecord(action_id="short", action_text="yak", timestamp=T0, **base),
        AuditRecord(
            action_id="long",
            action_text="yak grazing beside the long winding mountain road today",
            timestamp=T0 + timedelta(hours=1),
            **base,
        ),
        # a rarer term weighs more: "okapi" is in 1 record, "gnu" in 3
        AuditRecord(action_id="rare", action_text="okapi one two", timestamp=T0, **base),
        AuditRecord(action_id="common1", action_text="gnu one two", timestamp=T0, **base),
        AuditRecord(action_id="common2", action_text="gnu three four", timestamp=T0, **base),
        AuditRecord(action_id="common3", action_text="gnu okapi five", timestamp=T0, **base),
    ]
    await load(store, records)
    page = await store.search_audit_logs("zebra")
    assert [h.record.action_id for h in page.hits] == ["tf2", "tf1"]
    page = await store.search_audit_logs("yak")
    assert [h.record.action_id for h in page.hits] == ["short", "long"]
    okapi = await store.search_audit_logs("okapi")
    gnu = await store.search_audit_logs("gnu")
    rare = next(h for h in okapi.hits if h.record.action_id == "rare")
    common = next(h for h in gnu.hits if h.record.action_id == "common1")
    assert rare.score is not None and common.score is not None and rare.score > common.score


async def test_paging_past_10000_hits(store: AuditStore) -> None:
    records = [
        AuditRecord(
            action_id=f"p{i:05d}",
            agent_id=f"agent-{i % 3}",
            decision="ALLOW",
            risk_score=0.5,
            action_text="ping" if i % 50 else "ping pong",
            timestamp=T0 + timedelta(seconds=i // 2),  # pairs share a timestamp
        )
        for i in range(10_500)
    ]
    for i in range(0, len(records), 5000):
        await store.index_audit_logs(records[i : i + 5000])
    await store.refresh()
    every = {r.action_id for r in records}
    for text in ("ping", None):
        pages = await all_pages(store, text, page_size=1000)
        ids = page_ids(pages)
        assert len(pages) == 11 and pages[-1].total == 10_500
        assert len(ids) == len(set(ids)) == 10_500 and set(ids) == every
    pages = await all_pages(store, "ping", page_size=1000)
    assert_relevance_rule(pages)
    # the 210 "ping pong" records are longer, so they rank last
    assert {h.record.action_id for h in pages[-1].hits[-210:]} == {
        f"p{i:05d}" for i in range(0, 10_500, 50)
    }
    deep = await all_pages(store, page_size=1000, agent_id="agent-1")
    assert page_ids(deep) == [
        r.action_id
        for r in sorted(records, key=lambda r: (r.timestamp, r.action_id), reverse=True)
        if r.agent_id == "agent-1"
    ]


async def test_retried_index_is_not_a_duplicate(store: AuditStore) -> None:
    records = dataset(20)
    assert await store.index_audit_log(records[0]) is True
    assert await store.index_audit_log(records[0]) is False
    changed = replace(records[0], action_text="something else entirely")
    assert await store.index_audit_log(changed) is False  # first write wins
    result = await store.index_audit_logs([*records, records[3], records[3]])
    assert result == IndexResult(indexed=19, duplicates=3)
    await store.refresh()
    stats = await store.get_audit_log_statistics()
    assert stats.total_actions == 20
    page = await store.search_audit_logs("entirely")
    assert page.total == 0


async def test_the_guides_calls(store: AuditStore) -> None:
    """index_audit_log with the guide's fields, search with its ``size``, statistics read
    by key, as the guide writes them (naive UTC datetimes included)."""
    stored = await store.index_audit_log(
        action_id="act_123",
        agent_id="agent_123",
        decision="BLOCK",
        action_data={
            "stated_intent": "Access sensitive data",
            "actual_action": "SELECT * FROM users",
            "action_type": "database_query",
        },
        violations=[
            {"type": "privacy", "severity": 4, "confidence": 0.9, "message": "Unauthorized PII"}
        ],
        region_id=REGION,
        risk_score=0.85,
    )
    assert stored is True
    await store.refresh()
    week_ago = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=7)
    page = await store.search_audit_logs(
        query="sensitive data",
        agent_id="agent_123",
        decision="BLOCK",
        start_time=week_ago,
        region_id=REGION,
        min_risk_score=0.7,
        size=100,
    )
    [hit] = page.hits
    record = hit.record
    assert (record.action_id, record.action_text, record.action_type) == (
        "act_123",
        "SELECT * FROM users",
        "database_query",
    )
    assert [(v.type, v.severity) for v in record.violations] == [("privacy", 4)]
    stats = await store.get_audit_log_statistics(start_time=week_ago, region_id=REGION)
    assert (stats["total_actions"], stats["unique_agents"]) == (1, 1)
    assert stats["avg_risk_score"] == pytest.approx(0.85)
    with pytest.raises(KeyError):
        stats["nope"]
    with pytest.raises(ValueError, match="action_data has unknown keys"):
        await store.index_audit_log(
            agent_id="a", decision="ALLOW", risk_score=0.1, action_data={"text": "x"}
        )
    with pytest.raises(ValueError, match="violations\\[0\\] needs type"):
        await store.index_audit_log(
            agent_id="a", decision="ALLOW", risk_score=0.1, violations=[{"kind": "x"}]
        )


async def test_generated_ids_are_unique_and_kept() -> None:
    a = AuditRecord(agent_id="x", decision="ALLOW", risk_score=0, action_text="t")
    b = AuditRecord(agent_id="x", decision="ALLOW", risk_score=0, action_text="t")
    assert a.action_id != b.action_id and re.fullmatch(r"[0-9a-f]{32}", a.action_id)
    assert a.timestamp.tzinfo is not None


async def test_statistics_match_the_oracle(store: AuditStore) -> None:
    records = dataset()
    await load(store, records)
    for text, flt in [
        (None, {}),
        ("report", {}),
        (None, {"decision": "BLOCK"}),
        ("ticket", {"min_risk_score": 0.5, "agent_id": "agent-2"}),
        (None, {"start_time": T0, "end_time": T0 + timedelta(minutes=100)}),
    ]:
        ids = set(oracle_ids(records, text, **flt))
        chosen = [r for r in records if r.action_id in ids]
        stats = await store.get_audit_log_statistics(text, **flt)
        assert stats.total_actions == len(chosen)
        assert stats.unique_agents == len({r.agent_id for r in chosen})
        assert stats.avg_risk_score == pytest.approx(
            math.fsum(r.risk_score for r in chosen) / len(chosen), rel=1e-12
        )
        assert stats.decision_counts == {
            d.value: sum(r.decision == d for r in chosen) for d in Decision
        }
    empty = await store.get_audit_log_statistics("zzz-nothing")
    assert empty.total_actions == 0 and empty.unique_agents == 0
    assert empty.avg_risk_score is None
    assert empty.decision_counts == {d.value: 0 for d in Decision}


NASTY = [
    '"',
    '""',
    '"unterminated report',
    "AND(",
    "report AND(",
    "*",
    "report*",
    "NEAR(a b)",
    "stated_intent:report",
    "action_text : users",
    "a OR b",
    "NOT report",
    "-report",
    "^report",
    "+report",
    "report)",
    "(((",
    "{report}",
    "[report]",
    "report:*",
    "'",
    "\\",
    "%",
    "_",
    "report_users",
    "col:value",
    "x y z w",
    "\x00report",
    "report\n\tusers",
    "🙂 report",
    "SELECT * FROM users",
    "don't",
]


async def test_query_text_is_never_syntax(store: AuditStore) -> None:
    records = dataset()
    await load(store, records)
    for text in NASTY:
        page = await store.search_audit_logs(text, page_size=1000)
        expected = oracle_ids(records, text)
        assert sorted(h.record.action_id for h in page.hits) == sorted(expected), text
        assert page.total == len(expected)


async def test_concurrent_writes_and_reads(store: AuditStore) -> None:
    records = dataset(200)
    batches = [records[i : i + 20] for i in range(0, 200, 20)]
    results = await asyncio.gather(
        *(store.index_audit_logs(b) for b in batches),
        *(store.search_audit_logs("report") for _ in range(5)),
    )
    assert sum(r.indexed for r in results[:10] if isinstance(r, IndexResult)) == 200
    await store.refresh()
    stats = await store.get_audit_log_statistics()
    assert stats.total_actions == 200


async def test_evaluated_actions_are_searchable(store: AuditStore) -> None:
    action = Action(
        agent_id="agent-x",
        action_text="SELECT ssn, credit_card FROM customers",
        action_type="database_query",
        stated_intent="Access sensitive data",
    )
    evaluation = evaluate_action(action)
    record = AuditRecord.from_evaluation(action, evaluation, action_id="eval-1")
    assert await store.index_audit_log(record)
    await store.refresh()
    page = await store.search_audit_logs("sensitive data", decision=evaluation.decision)
    assert [h.record.action_id for h in page.hits] == ["eval-1"]
    assert page.hits[0].record.violations == record.violations


# ---------------------------------------------------------------------- bad input


async def test_bad_queries_are_rejected(store: AuditStore) -> None:
    await load(store, dataset(10))
    bad: list[dict[str, Any]] = [
        {"start_time": T0 + timedelta(hours=1), "end_time": T0},
        {"start_time": T0, "end_time": T0},
        {"min_risk_score": -0.01},
        {"min_risk_score": 1.01},
        {"min_risk_score": float("nan")},
        {"decision": "MAYBE"},
        {"decision": ""},
        {"agent_id": ""},
        {"region_id": "bad region!"},
        {"query": "x " * 33 + "".join(f"w{i} " for i in range(40))},
        {"query": "a" * 1025},
        {"start_time": "yesterday"},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            await store.search_audit_logs(**kwargs)
        with pytest.raises(ValueError):
            await store.get_audit_log_statistics(**kwargs)
    for size in (0, -1, 1001, True, 2.5):
        with pytest.raises(ValueError, match="page_size"):
            await store.search_audit_logs("report", page_size=size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="order"):
        await store.search_audit_logs("report", order="oldest")


async def test_bad_page_tokens_are_rejected(store: AuditStore) -> None:
    await load(store, dataset())
    first = await store.search_audit_logs("report", page_size=5)
    token = first.next_page_token
    assert token is not None
    doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))

    def forge(**changes: Any) -> str:
        raw = json.dumps({**doc, **changes}).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    query = SearchQuery(filter=AuditFilter(text="report"), page_size=5)
    other_backend = "sqlite" if store.backend != "sqlite" else "memory"
    bad = {
        "!!!not base64!!!": "not valid",
        base64.urlsafe_b64encode(b"not json").decode(): "not valid",
        forge(v=99): "unknown format",
        forge(p="nope"): "bad position",
        forge(p=[1, 2, 3, 4, 5, 6, 7]): "bad position",
        forge(p=[{"x": 1}, 2, "a"]): "bad position",
        forge(n=-1): "bad total",
        encode_page_token(other_backend, query, PageCursor(1, [1.0, 1, "a"])): "another",
        # longer than any token the backend issues (Elasticsearch's carry a point in
        # time, which grows with its shards: its bound is far higher)
        "x" * ((MAX_PIT_TOKEN_CHARS if store.backend == "elasticsearch" else 16_384) + 1): (
            "too long"
        ),
        # numbers no position holds, and JSON nested past Python's recursion limit
        forge(p=[10**400, 1, "a"]): "bad position",
        forge(p=[1.0, 10**30, "a"]): "bad position",
        base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode(): "not valid",
    }
    for bad_token, message in bad.items():
        with pytest.raises(ValueError, match=message):
            await store.search_audit_logs("report", page_size=5, page_token=bad_token)
    with pytest.raises(ValueError, match="does not belong"):
        await store.search_audit_logs("users", page_size=5, page_token=token)
    with pytest.raises(ValueError, match="does not belong"):
        await store.search_audit_logs("report", decision="BLOCK", page_token=token)
    # a token may change the page size, nothing else
    nxt = await store.search_audit_logs("report", page_size=50, page_token=token)
    assert nxt.total == first.total


async def test_bad_records_write_nothing(store: AuditStore) -> None:
    good = dataset(5)
    big = "x" * (MAX_TEXT_BYTES + 1)
    euro = "€" * (MAX_TEXT_BYTES // 3 + 1)  # 3 bytes each: over the limit in bytes
    assert len(euro) < MAX_TEXT_BYTES
    base = {"agent_id": "a", "decision": "ALLOW", "risk_score": 0.5}
    for bad in [
        {"action_text": big},
        {"action_text": "ok", "stated_intent": euro},
        {"action_text": "ok", "risk_score": 1.5},
        {"action_text": "ok", "risk_score": float("nan")},
        {"action_text": "ok", "decision": "MAYBE"},
        {"action_text": "ok", "agent_id": " "},
        {"action_text": "ok", "action_id": "has space"},
        {"action_text": "ok", "action_id": "x" * 129},
        {"action_text": "ok", "region_id": "bad region"},
        {"action_text": "ok", "timestamp": datetime(1969, 12, 31, tzinfo=UTC)},
        {"action_text": "ok", "violations": (AuditViolation("PII", 3, 0.5),) * 65},
    ]:
        with pytest.raises(ValueError):
            await store.index_audit_logs([*good, AuditRecord(**{**base, **bad})])
    with pytest.raises(ValueError):
        AuditViolation("PII", 6, 0.5)
    with pytest.raises(ValueError, match="region"):
        await store.index_audit_logs([*good, replace(good[0], action_id="o", region_id="other")])
    with pytest.raises(ValueError, match="AuditRecord"):
        await store.index_audit_logs([*good, "junk"])  # type: ignore[list-item]
    await store.refresh()
    assert (await store.get_audit_log_statistics()).total_actions == 0
    ok = AuditRecord(**{**base, "action_text": "y" * MAX_TEXT_BYTES})  # exactly the limit
    assert await store.index_audit_log(ok)


async def test_closed_store_refuses_calls(open_store: OpenStore) -> None:
    store = await open_store()
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await store.search_audit_logs("x")


# ---------------------------------------------------------------------- hypothesis

_WORDS = ["AND", "OR", "NOT", "NEAR", "report", "users", "ticket", "7", "café", "s3", "é", "x"]
_ALPHABET = st.sampled_from([*"\"*()^:-+_ '\\{}[]~&|!?.,;", *_WORDS])


_SHARED_RECORDS = dataset()


@pytest.fixture(scope="module")
def loaded_memory_store() -> Iterator[tuple[asyncio.AbstractEventLoop, AuditStore]]:
    """One loaded in-memory store and the event loop it runs on, for property tests."""
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(SqliteFtsAuditStore.open(REGION))
    loop.run_until_complete(store.index_audit_logs(_SHARED_RECORDS))
    yield loop, store
    loop.run_until_complete(store.close())
    loop.close()


@settings(max_examples=80, deadline=None)
@given(parts=st.lists(_ALPHABET, max_size=12))
def test_any_query_text_matches_the_oracle(
    loaded_memory_store: tuple[asyncio.AbstractEventLoop, AuditStore], parts: list[str]
) -> None:
    loop, store = loaded_memory_store
    text = "".join(parts)
    page = loop.run_until_complete(store.search_audit_logs(text, page_size=1000))
    expected = oracle_ids(_SHARED_RECORDS, text)
    assert sorted(h.record.action_id for h in page.hits) == sorted(expected)
    assert page.total == len(expected)


# ---------------------------------------------------------------------- factory and SQLite


async def test_factory_memory_and_sqlite(tmp_path: Path) -> None:
    store, choice = await open_audit_store("memory://", REGION)
    assert (choice.store, choice.backend, choice.fallback) == ("audit", "memory", False)
    await store.close()
    path = tmp_path / "a.db"
    store, choice = await open_audit_store(f"sqlite://{path}", REGION)
    assert choice.backend == "sqlite" and choice.describe() == "sqlite"
    await load(store, dataset(25))
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again, _ = await open_audit_store(f"sqlite://{path}", REGION)
    page = await again.search_audit_logs(page_size=100)
    assert page_ids([page]) == oracle_ids(dataset(25))
    await again.close()


def _cache_kib(conn: sqlite3.Connection) -> int:
    (size,) = conn.execute("PRAGMA cache_size").fetchone()
    return -int(size)  # negative: KiB


@pytest.mark.parametrize(("query", "mib"), [("", 64), ("?cache_mib=8", 8)])
async def test_a_sqlite_url_sets_every_connections_page_cache(
    tmp_path: Path, query: str, mib: int
) -> None:
    store, _ = await open_audit_store(f"sqlite://{tmp_path / 'a.db'}{query}", REGION)
    assert isinstance(store, SqliteFtsAuditStore)
    try:
        assert await store._writer.run(_cache_kib) == mib * 1024
        readers = store._readers._connections  # the writer's pool is another one
        assert len(readers) == 2
        assert [_cache_kib(c) for c in readers] == [mib * 1024] * 2
        await load(store, dataset(5))  # and the store works with it
        assert page_ids([await store.search_audit_logs(page_size=10)]) == oracle_ids(dataset(5))
    finally:
        await store.close()


async def test_factory_rejects_unknown_urls() -> None:
    for url in ["redis://127.0.0.1:6379", "postgresql://x/y", "no-scheme", "sqlite://", ""]:
        with pytest.raises(ValueError):
            await open_audit_store(url, REGION)
    with pytest.raises(ValueError, match="use memory://"):  # not a file named ":memory:"
        await open_audit_store("sqlite:///:memory:", REGION)
    with pytest.raises(ValueError, match="cache_mib must be"):
        await open_audit_store("sqlite:///tmp/a.db?cache_mib=0", REGION)
    with pytest.raises(ValueError, match="cache_mib must be"):
        await SqliteFtsAuditStore.open(REGION, None, cache_mib=0)
    with pytest.raises(ValueError):
        await open_audit_store("memory://", "bad region!")
    with pytest.raises(AuditStoreError, match="cannot open"):  # a bad path is not a fallback
        await open_audit_store("sqlite:///nonexistent-dir/audit.db", REGION)


async def test_unreachable_elasticsearch_falls_back_to_memory() -> None:
    url = "http://elastic:s3cret@127.0.0.1:9"  # nothing listens on the discard port
    store, choice = await open_audit_store(url, REGION, connect_timeout_s=1.0)
    try:
        assert choice.backend == "memory" and choice.fallback
        assert choice.reason.startswith("unavailable")
        assert "s3cret" not in choice.describe() and "s3cret" not in choice.requested
        assert await store.index_audit_log(dataset(1)[0])
    finally:
        await store.close()


async def test_two_sqlite_stores_share_one_file(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    a, b = await asyncio.gather(
        SqliteFtsAuditStore.open(REGION, path), SqliteFtsAuditStore.open(REGION, path)
    )
    try:
        records = dataset(60)
        await asyncio.gather(a.index_audit_logs(records[:30]), b.index_audit_logs(records[30:]))
        for s in (a, b):
            pages = await all_pages(s, "report", page_size=10, order="newest")
            assert page_ids(pages) == oracle_ids(records, "report")
        assert (await b.index_audit_logs(records[:5])).duplicates == 5
    finally:
        await a.close()
        await b.close()


async def test_elasticsearch_nodes_start_together() -> None:
    if not ES_URL:
        pytest.skip("ELASTICSEARCH_URL is not set: no Elasticsearch server to test against")
    prefix = f"nethical-test-{uuid.uuid4().hex[:10]}"
    hosts = [h.strip() for h in ES_URL.split(",")]
    stores = await asyncio.gather(
        *(ElasticsearchAuditStore.open(REGION, hosts, index_prefix=prefix) for _ in range(4))
    )
    try:
        await stores[0].index_audit_logs(dataset(10))
        await stores[1].refresh()
        assert (await stores[2].get_audit_log_statistics()).total_actions == 10
    finally:
        await _drop_es(stores[0], prefix)
        for s in stores:
            await s.close()


async def test_a_word_whose_lower_case_adds_a_mark_is_found_whole(store: AuditStore) -> None:
    """ "İ" lower-cases to "i" and a combining dot: taken from the lower-cased text, the
    word split in two ("i", "stanbul") where the full-text index keeps it whole, so a
    search for it found nothing."""
    await store.index_audit_logs(
        [
            AuditRecord(
                agent_id="a", decision="ALLOW", risk_score=0.1, action_text=text, action_id=i
            )
            for i, text in (("x1", "flight to İstanbul"), ("x2", "İSTANBUL İstanbul again"))
        ]
    )
    for query in ("İstanbul", "istanbul", "ISTANBUL"):
        page = await store.search_audit_logs(query)
        assert page.total == 2, query
    assert text_tokens("İSTANBUL İstanbul") == ["istanbul", "istanbul"]
    assert query_terms("İstanbul") == ("i\u0307stanbul",)  # folded where it is looked up
