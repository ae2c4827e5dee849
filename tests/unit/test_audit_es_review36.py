"""Review findings on the Elasticsearch audit store and the backend-neutral audit model and
page tokens, each a case that answered wrongly before its fix.

No Elasticsearch server is needed: the tests call the functions that build request bodies
and page tokens directly."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from elasticsearch import Elasticsearch
from hypothesis import given, settings
from hypothesis import strategies as st

from nethical_grpc.storage.audit import AuditStoreError, Decision, SqliteFtsAuditStore
from nethical_grpc.storage.audit.elasticsearch_store import ElasticsearchAuditStore, _query
from nethical_grpc.storage.audit.model import AuditFilter, SearchQuery, record_from_fields
from nethical_grpc.storage.audit.paging import (
    MAX_PIT_TOKEN_CHARS,
    MAX_TOKEN_CHARS,
    PageCursor,
    decode_page_token,
    encode_page_token,
)

# A point-in-time id names each shard it covers; this is the length one shard adds (an
# index of a data stream: ".ds-nethical-audit-eu-2026.05.01-000012", its uuid, the node's
# id and the search context's id, base64).
_PIT_CHARS_PER_SHARD = 170

# ---------------------------------------------------------------------- page tokens


def _query_with(token: str | None = None) -> SearchQuery:
    return SearchQuery(filter=AuditFilter(text="disk usage"), page_token=token)


def _pit_token(shards: int) -> tuple[str, PageCursor]:
    pit = "A" * (shards * _PIT_CHARS_PER_SHARD)
    cursor = PageCursor(
        total=12_345, position=[3.25, 1_767_225_600_000_000_000, "act-9", 41], context=pit
    )
    return encode_page_token("elasticsearch", _query_with(), cursor), cursor


@settings(max_examples=25, deadline=None)
@given(shards=st.integers(min_value=1, max_value=4_000))
def test_a_token_this_store_issued_for_a_big_data_stream_decodes(shards: int) -> None:
    """A year of weekly backing indices with two shards each is about 100 shards: the PIT
    id alone was past the 16,384-character limit, so page 2 of a search answered
    ``page_token is not valid: too long`` to the token the service had just issued."""
    token, cursor = _pit_token(shards)
    assert (
        decode_page_token("elasticsearch", _query_with(token), max_chars=MAX_PIT_TOKEN_CHARS)
        == cursor
    )


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_the_store_takes_its_own_long_token_to_the_server(closed_port: int) -> None:
    """The store checks a token before any request: a long one it issued passes the check
    and the search goes to the server (here a closed port, so an ``AuditStoreError``; a
    ``ValueError`` saying "too long" before the fix)."""
    client = Elasticsearch(f"http://127.0.0.1:{closed_port}", max_retries=0, request_timeout=2)
    store = ElasticsearchAuditStore(
        "eu-west-1", client, "nethical-audit-eu-west-1", pit_keep_alive="1m", workers=1
    )
    try:
        token, _ = _pit_token(100)
        assert len(token) > MAX_TOKEN_CHARS
        with pytest.raises(AuditStoreError):
            await store.search(_query_with(token))
        with pytest.raises(ValueError, match="too long"):  # still bounded
            await store.search(_query_with("A" * (MAX_PIT_TOKEN_CHARS + 1)))
    finally:
        await store.close()


# ---------------------------------------------------------------------- region isolation


def test_regions_differing_in_case_share_a_stream_so_queries_filter_on_the_region() -> None:
    """``EU`` and ``eu`` are distinct valid regions with one data stream (its name is
    lower-cased): without a region filter the ``EU`` store searched and counted ``eu``'s
    records too."""
    assert ElasticsearchAuditStore.names("nethical", "EU") == ElasticsearchAuditStore.names(
        "nethical", "eu"
    )
    for flt in (
        AuditFilter(),
        AuditFilter(text="rm -rf", agent_id="agent-1", decision=Decision.BLOCK),
    ):
        filters: list[dict[str, Any]] = _query(flt, "EU")["bool"]["filter"]
        assert {"term": {"region_id": "EU"}} in filters
        assert {"term": {"region_id": "eu"}} not in filters
    # a filter naming another region matches nothing, as in a SQLite store of one region
    filters = _query(AuditFilter(region_id="eu"), "EU")["bool"]["filter"]
    assert {"term": {"region_id": "EU"}} in filters
    assert {"term": {"region_id": "eu"}} in filters


# ---------------------------------------------------------------------- record fields


_FIELDS: dict[str, Any] = {
    "action_id": None,
    "agent_id": "agent-1",
    "decision": "ALLOW",
    "action_data": {"actual_action": "ls"},
    "region_id": "",
    "risk_score": 0.1,
    "timestamp": None,
}


@pytest.mark.parametrize("violation", [None, 5, "abc", [("type", "x")]])
def test_a_violation_that_is_not_a_dict_is_a_value_error(violation: object) -> None:
    """``None`` or a number was a ``TypeError`` traceback (``sorted(None)`` in the error
    path); a string was reported as having the keys ``['a', 'b', 'c']``."""
    violations: list[Any] = [{"type": "t", "severity": 2, "confidence": 0.5}, violation]
    with pytest.raises(ValueError, match=r"violations\[1\] must be an AuditViolation or a dict"):
        record_from_fields(violations=violations, **_FIELDS)


def test_a_violation_with_a_non_string_key_is_a_value_error() -> None:
    """``{1: ...}`` was a ``TypeError`` (sorting ``1`` among strings in the error path)."""
    violations: list[Any] = [{"type": "t", "severity": 2, "confidence": 0.5, 1: "x"}]
    with pytest.raises(ValueError, match=r"violations\[0\] needs type.*'1'"):
        record_from_fields(violations=violations, **_FIELDS)


async def test_the_store_refuses_a_bad_violation_and_writes_nothing() -> None:
    store = await SqliteFtsAuditStore.open("eu-west-1", None)
    try:
        with pytest.raises(ValueError, match=r"violations\[0\]"):
            await store.index_audit_log(
                agent_id="agent-1",
                decision="ALLOW",
                risk_score=0.1,
                action_data={"actual_action": "ls"},
                violations=[None],  # type: ignore[list-item]
            )
        assert (await store.get_audit_log_statistics()).total_actions == 0
    finally:
        await store.close()
