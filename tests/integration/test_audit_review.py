"""Review findings on the SQLite FTS5 audit store (memory:// and a file), each a case that
answered wrongly before its fix."""

from __future__ import annotations

import base64
import json
import unicodedata
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nethical_grpc.storage.audit import AuditRecord, Decision, SqliteFtsAuditStore, query_terms
from nethical_grpc.storage.audit.model import text_tokens

REGION = "eu-west-1"
T0 = datetime(2025, 3, 1, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SqliteFtsAuditStore]:
    path = None if request.param == "memory" else str(tmp_path / "audit.db")
    opened = await SqliteFtsAuditStore.open(REGION, path)
    yield opened
    await opened.close()


def _record(action_id: str, text: str) -> AuditRecord:
    return AuditRecord(
        agent_id="a", decision=Decision.ALLOW, risk_score=0.1, action_text=text, action_id=action_id
    )


# Words written with combining marks: decomposed (NFD) Latin, and Yoruba tone marks, which
# stay combining even in NFC (there is no precomposed "ọ̀"). The full-text index keeps
# such a word whole, so the query must not split it at its marks.
MARKED = {
    "nfd": unicodedata.normalize("NFD", "résumé"),
    "yoruba": "ọ̀rọ̀",
    "nfd-cafe": unicodedata.normalize("NFD", "Crème brûlée"),
}


async def test_a_word_with_combining_marks_finds_its_record(store: SqliteFtsAuditStore) -> None:
    """Before: the query "résumé" typed decomposed became the terms "re" and "sume",
    neither a token of the index, so it found nothing, not even the record holding
    exactly that text."""
    await store.index_audit_logs(
        [_record(key, f"sent {text} today") for key, text in MARKED.items()]
    )
    for key, text in MARKED.items():
        for form in (text, unicodedata.normalize("NFC", text)):
            page = await store.search_audit_logs(form)
            assert [h.record.action_id for h in page.hits] == [key], (key, form)
            assert page.hits[0].score is not None and page.hits[0].score > 0
    # the folded word, without its marks, finds it too
    page = await store.search_audit_logs("resume")
    assert [h.record.action_id for h in page.hits] == ["nfd"]
    assert len(query_terms(MARKED["yoruba"])) == 1
    assert text_tokens(MARKED["nfd"]) == ["resume"]


def _timed(i: int, text: str) -> AuditRecord:
    return AuditRecord(
        agent_id=f"agent-{i % 3}",
        decision=Decision.ALLOW,
        risk_score=0.1,
        action_text=text,
        timestamp=T0 + timedelta(seconds=i // 4),  # equal timestamps in fours
        action_id=f"id{i:05d}",
    )


@pytest.mark.parametrize("between", ["unrelated", "matching"])
async def test_relevance_pages_tile_while_records_arrive(
    store: SqliteFtsAuditStore, between: str
) -> None:
    """Before: a later page scored the records anew, with the statistics of a store that
    had changed since the first page; the cursor's score no longer lay among them. One
    record not matching the query written between two pages ended the paging after the
    first page (10 of 100 hits), one matching it served the first page again."""
    texts = ["export report", "report on the export of data", "report"]
    records = [_timed(i, texts[i % 3]) for i in range(100)]
    await store.index_audit_logs(records)
    full = await store.search_audit_logs("report export", page_size=1000)
    page = await store.search_audit_logs("report export", page_size=7)
    seen = [h.record.action_id for h in page.hits]
    n = 1000
    while page.next_page_token is not None:
        assert n < 1100
        text = "unrelated write" if between == "unrelated" else "export report again"
        await store.index_audit_log(_timed(n, text))
        n += 1
        page = await store.search_audit_logs(
            "report export", page_size=7, page_token=page.next_page_token
        )
        seen += [h.record.action_id for h in page.hits]
    assert len(seen) == len(set(seen))
    original = [i for i in seen if int(i[2:]) < 1000]
    # every record of the first page's answer, once, in its order
    assert original == [h.record.action_id for h in full.hits]


async def test_forged_ranking_statistics_in_a_token_are_rejected(
    store: SqliteFtsAuditStore,
) -> None:
    await store.index_audit_logs([_timed(i, "export report") for i in range(20)])
    first = await store.search_audit_logs("report export", page_size=5)
    token = first.next_page_token
    assert token is not None
    doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    score, ts_us, action_id, n_docs, avg_len, dfs = doc["p"]
    assert (n_docs, avg_len, dfs) == (20, 2.0, [20, 20])

    def forge(*stats: Any) -> str:
        raw = json.dumps({**doc, "p": [score, ts_us, action_id, *stats]}).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    for stats in [
        (0, 2.0, [0, 0]),  # no records
        (20, 0.0, [1, 1]),  # no length
        (20, float("inf"), [1, 1]),
        (20, True, [1, 1]),
        (20, 2.0, [1]),  # one df per distinct term
        (20, 2.0, [1, 21]),  # more records with a term than records
        (20, 2.0, [-1, 1]),
        (20, 2.0, [True, 1]),
        (2**60, 2.0, [1, 1]),
        (20, 10**400, [1, 1]),
        (20, 2.0, "x"),
    ]:
        with pytest.raises(ValueError, match="bad position"):
            await store.search_audit_logs("report export", page_size=5, page_token=forge(*stats))
    # the token as issued goes on where the first page ended
    rest = await store.search_audit_logs("report export", page_size=100, page_token=token)
    ids = [h.record.action_id for h in (*first.hits, *rest.hits)]
    assert sorted(ids) == sorted(f"id{i:05d}" for i in range(20))
