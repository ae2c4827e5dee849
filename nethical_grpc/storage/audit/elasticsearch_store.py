"""Audit store on Elasticsearch 9 through the official ``elasticsearch`` client.

Layout (created by :meth:`ElasticsearchAuditStore.open`, idempotently)
----------------------------------------------------------------------
* ILM policy ``{prefix}-audit-policy``: hot phase rolls the write index over at
  ``rollover_max_age`` or ``rollover_max_primary_shard_size``; delete phase removes
  backing indices ``retention_days`` after rollover.
* Index template ``{prefix}-audit`` (priority 500) for ``{prefix}-audit-*`` with
  ``data_stream: {}``, the ILM policy, strict mappings (keyword ids and decision,
  ``date_nanos`` ``@timestamp``, ``double`` risk) and an ``audit_text`` analyzer on
  ``stated_intent`` and ``action_text``: split on anything but letters/digits
  (``[^\\p{L}\\p{N}]+``), lowercase, ASCII-fold, which is the tokenisation of the SQLite
  backend (``unicode61 remove_diacritics 2``), then cut tokens to 256 characters (so
  terms longer than that match on their first 256 characters here, exactly in SQLite).
* Data stream ``{prefix}-audit-{region}`` (lower-cased): one per region, shared by every
  node of the region (``region_scope``).  Regions that differ only in case share a
  stream, so every search and statistics call also filters on the store's region.

Several nodes may open the store at once: policy and template PUTs are idempotent and
"resource already exists" on the data stream counts as success.

Writes are bulk requests of ``create`` operations with ``_id = action_id``: a retried
record answers 409 and is counted as a duplicate, never stored twice.  (A data stream
enforces ``_id`` uniqueness per backing index: a retry that lands after a rollover would
be stored again.)  A record is searchable after the next refresh (about 1 s) or
:meth:`refresh`.

Searches: ``bool`` filters (``term`` on agent/decision/region, ``range`` on
``@timestamp`` and ``risk_score``) plus, with terms, a ``multi_match`` of type
``cross_fields`` with ``operator: and`` over both texts (every term in either field).
The user's text is passed only as the terms of
:func:`~nethical_grpc.storage.audit.model.query_terms`, never as query syntax.  Ranking:
Lucene BM25 ``_score`` descending, then ``@timestamp`` descending, then ``action_id``
descending.  Every search opens a point in time and pages with ``search_after`` (the
page token carries the PIT id and the last sort values), so paging past 10,000 hits
works and pages are consistent with the first; the PIT is kept alive ``pit_keep_alive``
between pages and closed after the last page.  ``total`` is exact
(``track_total_hits``).  Statistics use ``cardinality`` (HyperLogLog++,
``precision_threshold`` 40,000: near-exact below that many agents), ``avg`` and
``terms`` aggregations.

The client is synchronous (the async one needs aiohttp, not a dependency here); every
call runs on the store's worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Final, TypeVar

from elasticsearch import (
    ApiError,
    BadRequestError,
    Elasticsearch,
    NotFoundError,
    TransportError,
)

from nethical_grpc.storage.audit.model import (
    DECISIONS,
    AuditFilter,
    AuditHit,
    AuditRecord,
    AuditStatistics,
    AuditViolation,
    SearchOrder,
    SearchPage,
    SearchQuery,
    check_region_id,
    datetime_from_us,
)
from nethical_grpc.storage.audit.paging import (
    MAX_PIT_TOKEN_CHARS,
    PageCursor,
    decode_page_token,
    encode_page_token,
)
from nethical_grpc.storage.audit.store import AuditStore, AuditStoreError, PageTokenExpiredError
from nethical_grpc.storage.backend import (
    DEFAULT_AUDIT_RETENTION_DAYS,
    check_retention_days,
    redact_url,
)

__all__ = ["ElasticsearchAuditStore", "index_template", "lifecycle_policy"]

T = TypeVar("T")

_PREFIX_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
#: Bulk requests hold at most this many records (and roughly 8 MiB of source).
BULK_RECORDS: Final = 1000
_BULK_BYTES: Final = 8 * 1024 * 1024
_TEXT_FIELDS: Final = ("stated_intent", "action_text")

_MAPPINGS: Final[dict[str, Any]] = {
    "dynamic": "strict",
    "properties": {
        "@timestamp": {"type": "date_nanos"},
        "action_id": {"type": "keyword"},
        "agent_id": {"type": "keyword"},
        "region_id": {"type": "keyword"},
        "decision": {"type": "keyword"},
        "risk_score": {"type": "double"},
        "action_type": {"type": "keyword"},
        "stated_intent": {"type": "text", "analyzer": "audit_text"},
        "action_text": {"type": "text", "analyzer": "audit_text"},
        "violations": {
            "properties": {
                "type": {"type": "keyword"},
                "severity": {"type": "byte"},
                "confidence": {"type": "double"},
                "message": {"type": "text", "index": False},
            }
        },
    },
}

#: Longest token kept whole: Lucene rejects a document with a term over 32,766 bytes
#: (a base64 blob in an action would), so longer runs are cut to their first 256 chars.
MAX_TOKEN_CHARS: Final = 256

_ANALYSIS: Final[dict[str, Any]] = {
    "tokenizer": {"audit_words": {"type": "pattern", "pattern": "[^\\p{L}\\p{N}]+"}},
    "filter": {"audit_truncate": {"type": "truncate", "length": MAX_TOKEN_CHARS}},
    "analyzer": {
        "audit_text": {
            "type": "custom",
            "tokenizer": "audit_words",
            "filter": ["lowercase", "asciifolding", "audit_truncate"],
        }
    },
}


def lifecycle_policy(
    retention_days: int, rollover_max_age: str, rollover_max_primary_shard_size: str
) -> dict[str, Any]:
    """The ILM policy body: roll over in the hot phase, delete after the retention."""
    return {
        "_meta": {"managed_by": "nethical-mesh"},
        "phases": {
            "hot": {
                "actions": {
                    "rollover": {
                        "max_age": rollover_max_age,
                        "max_primary_shard_size": rollover_max_primary_shard_size,
                    }
                }
            },
            "delete": {"min_age": f"{retention_days}d", "actions": {"delete": {}}},
        },
    }


def index_template(policy: str, shards: int, replicas: int | None) -> dict[str, Any]:
    """The ``template`` part of the index template: settings (ILM policy, analysis) and
    mappings."""
    settings: dict[str, Any] = {
        "index.lifecycle.name": policy,
        "number_of_shards": shards,
        "analysis": _ANALYSIS,
    }
    if replicas is not None:
        settings["number_of_replicas"] = replicas
    return {"settings": settings, "mappings": _MAPPINGS}


def _iso(us: int) -> str:
    return datetime_from_us(us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _document(record: AuditRecord) -> dict[str, Any]:
    return {
        "@timestamp": _iso(record.timestamp_us),
        "action_id": record.action_id,
        "agent_id": record.agent_id,
        "region_id": record.region_id,
        "decision": record.decision.value,
        "risk_score": record.risk_score,
        "action_type": record.action_type,
        "stated_intent": record.stated_intent,
        "action_text": record.action_text,
        "violations": [v.to_dict() for v in record.violations],
    }


def _record(source: Mapping[str, Any]) -> AuditRecord:
    return AuditRecord(
        action_id=source["action_id"],
        agent_id=source["agent_id"],
        region_id=source["region_id"],
        decision=source["decision"],
        risk_score=source["risk_score"],
        timestamp=datetime.fromisoformat(source["@timestamp"]),
        action_type=source.get("action_type", ""),
        stated_intent=source.get("stated_intent", ""),
        action_text=source["action_text"],
        violations=tuple(AuditViolation.from_dict(v) for v in source.get("violations", ())),
    )


def _query(flt: AuditFilter, store_region: str) -> dict[str, Any]:
    """The ``query`` of a search or statistics request of the store of ``store_region``.

    The store's own region is always a filter: the data stream name is lower-cased, so
    regions ``EU`` and ``eu`` share one stream, and each store must see only its records
    (as a SQLite store, which holds one region, does)."""
    filters: list[dict[str, Any]] = [{"term": {"region_id": store_region}}]
    if flt.agent_id is not None:
        filters.append({"term": {"agent_id": flt.agent_id}})
    if flt.decision is not None:
        filters.append({"term": {"decision": flt.decision.value}})
    if flt.region_id is not None and flt.region_id != store_region:
        filters.append({"term": {"region_id": flt.region_id}})
    if flt.start_us is not None or flt.end_us is not None:
        rng: dict[str, Any] = {"format": "strict_date_optional_time_nanos"}
        if flt.start_us is not None:
            rng["gte"] = _iso(flt.start_us)
        if flt.end_us is not None:
            rng["lt"] = _iso(flt.end_us)
        filters.append({"range": {"@timestamp": rng}})
    if flt.min_risk_score is not None:
        filters.append({"range": {"risk_score": {"gte": flt.min_risk_score}}})
    must: list[dict[str, Any]] = []
    if flt.terms:
        must.append(
            {
                "multi_match": {
                    "query": " ".join(flt.terms),
                    "type": "cross_fields",
                    "fields": list(_TEXT_FIELDS),
                    "operator": "and",
                }
            }
        )
    return {"bool": {"filter": filters, "must": must}}


def _sort(order: SearchOrder) -> list[dict[str, Any]]:
    by_time: list[dict[str, Any]] = [{"@timestamp": "desc"}, {"action_id": "desc"}]
    if order is SearchOrder.RELEVANCE:
        return [{"_score": "desc"}, *by_time]
    return by_time


def _error_type(exc: ApiError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    return str(error.get("type", "")) if isinstance(error, dict) else ""


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:300]}"


class ElasticsearchAuditStore(AuditStore):
    """Audit store on an Elasticsearch 9 data stream; see the module docstring.

    Open with :meth:`open` (or the factory).  ``AuditStoreError`` on server failures;
    :class:`PageTokenExpiredError` when a page token's point in time has expired.
    """

    region_scope = True

    def __init__(
        self,
        region_id: str,
        client: Elasticsearch,
        data_stream: str,
        *,
        pit_keep_alive: str,
        workers: int,
    ) -> None:
        super().__init__(region_id)
        self.client = client
        self.data_stream = data_stream
        self.pit_keep_alive = pit_keep_alive
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="audit-es")

    @property
    def backend(self) -> str:
        return "elasticsearch"

    @staticmethod
    def names(index_prefix: str, region_id: str) -> tuple[str, str, str]:
        """``(policy, template, data stream)`` names for a prefix and region."""
        return (
            f"{index_prefix}-audit-policy",
            f"{index_prefix}-audit",
            f"{index_prefix}-audit-{region_id.lower()}",
        )

    @classmethod
    async def open(
        cls,
        region_id: str,
        hosts: Sequence[str],
        *,
        index_prefix: str = "nethical",
        retention_days: int = DEFAULT_AUDIT_RETENTION_DAYS,
        rollover_max_age: str = "7d",
        rollover_max_primary_shard_size: str = "50gb",
        number_of_shards: int = 1,
        number_of_replicas: int | None = None,
        request_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        pit_keep_alive: str = "2m",
        workers: int = 4,
    ) -> ElasticsearchAuditStore:
        """Connect, check the server answers, and create (or update) the ILM policy, the
        index template and the region's data stream.

        ``hosts``: URLs with scheme and port (``http://es:9200``; credentials in the URL
        become basic auth).  ``AuditStoreError`` when the server is unreachable or the
        setup fails (the message never contains a password); ``ValueError`` for bad
        arguments.
        """
        check_region_id("region_id", region_id, allow_empty=False)
        if not _PREFIX_RE.fullmatch(index_prefix):
            raise ValueError(
                "index_prefix must be 1-64 characters from a-z, 0-9, '_', '.', '-', starting "
                "with a letter or digit"
            )
        check_retention_days(retention_days)
        if not hosts:
            raise ValueError("at least one Elasticsearch host URL is needed")
        for url in hosts:
            if not url.lower().startswith(("http://", "https://")):
                raise ValueError(f"Elasticsearch hosts need a scheme: {redact_url(url)!r}")
        policy, template, stream = cls.names(index_prefix, region_id)
        try:
            client = Elasticsearch(
                list(hosts),
                request_timeout=request_timeout_s,
                max_retries=2,
                retry_on_timeout=True,
            )
        except ValueError as exc:
            raise ValueError(f"bad Elasticsearch host URL: {exc}") from None

        def setup() -> None:
            client.options(request_timeout=connect_timeout_s, max_retries=0).info()
            client.ilm.put_lifecycle(
                name=policy,
                policy=lifecycle_policy(
                    retention_days, rollover_max_age, rollover_max_primary_shard_size
                ),
            )
            client.indices.put_index_template(
                name=template,
                index_patterns=[f"{index_prefix}-audit-*"],
                data_stream={},
                priority=500,
                template=index_template(policy, number_of_shards, number_of_replicas),
                meta={"managed_by": "nethical-mesh"},
            )
            try:
                client.indices.create_data_stream(name=stream)
            except ApiError as exc:
                if _error_type(exc) != "resource_already_exists_exception":
                    raise

        try:
            await asyncio.to_thread(setup)
        except (ApiError, TransportError) as exc:
            client.close()
            raise AuditStoreError(_describe(exc)) from exc
        return cls(region_id, client, stream, pit_keep_alive=pit_keep_alive, workers=workers)

    async def _run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn)
        except (ApiError, TransportError) as exc:
            raise AuditStoreError(f"Elasticsearch audit store: {_describe(exc)}") from exc

    # ------------------------------------------------------------------ writes

    async def _index(self, records: Sequence[AuditRecord]) -> int:
        return await self._run(lambda: self._index_sync(records))

    def _index_sync(self, records: Sequence[AuditRecord]) -> int:
        stored = 0
        failures: list[str] = []
        batch: list[dict[str, Any]] = []
        size = 0

        def flush() -> None:
            nonlocal stored, batch, size
            if not batch:
                return
            resp = self.client.bulk(operations=batch)
            for item in resp["items"]:
                result = item.get("create", {})
                status = int(result.get("status", 0))
                if status in (200, 201):
                    stored += 1
                elif status != 409:
                    err = result.get("error", {})
                    failures.append(f"{result.get('_id')}: {err.get('type')}: {err.get('reason')}")
            batch, size = [], 0

        for r in records:
            doc = _document(r)
            batch.append({"create": {"_index": self.data_stream, "_id": r.action_id}})
            batch.append(doc)
            size += len(r.action_text) + len(r.stated_intent) + 512
            if len(batch) >= 2 * BULK_RECORDS or size >= _BULK_BYTES:
                flush()
        flush()
        if failures:
            raise AuditStoreError(
                f"Elasticsearch rejected {len(failures)} of {len(records)} records "
                f"({stored} stored); first: {failures[0][:300]}"
            )
        return stored

    async def refresh(self) -> None:
        self._check_open()
        await self._run(lambda: self.client.indices.refresh(index=self.data_stream))

    # ------------------------------------------------------------------ reads

    async def _search(self, query: SearchQuery) -> SearchPage:
        cursor = decode_page_token(self.backend, query, max_chars=MAX_PIT_TOKEN_CHARS)
        if cursor is not None:
            _check_sort_values(cursor.position)
            if not cursor.context:
                raise ValueError("page_token is not valid: no point in time")
        return await self._run(lambda: self._search_sync(query, cursor))

    def _search_sync(self, query: SearchQuery, cursor: PageCursor | None) -> SearchPage:
        order = query.effective_order
        if cursor is None:
            opened = self.client.open_point_in_time(
                index=self.data_stream, keep_alive=self.pit_keep_alive
            )
            pit_id = str(opened["id"])
        else:
            assert cursor.context is not None
            pit_id = cursor.context
        kwargs: dict[str, Any] = {
            "pit": {"id": pit_id, "keep_alive": self.pit_keep_alive},
            "query": _query(query.filter, self.region_id),
            "sort": _sort(order),
            "size": query.page_size + 1,
            "track_total_hits": cursor is None,
        }
        if cursor is not None:
            kwargs["search_after"] = cursor.position
        try:
            resp = self.client.search(**kwargs)
        except BaseException as exc:
            if cursor is None:
                self._close_pit(pit_id)
            elif isinstance(exc, NotFoundError):
                raise PageTokenExpiredError(
                    "page_token expired (its point in time is gone): search again from the "
                    "first page"
                ) from exc
            elif isinstance(exc, BadRequestError):  # e.g. search_after values of a bad type
                raise ValueError(f"page_token is not valid: {_describe(exc)}") from exc
            raise
        pit_id = str(resp.get("pit_id") or pit_id)
        raw_hits = resp["hits"]["hits"]
        more = len(raw_hits) > query.page_size
        raw_hits = raw_hits[: query.page_size]
        total = int(resp["hits"]["total"]["value"]) if cursor is None else cursor.total
        hits = tuple(
            AuditHit(
                record=_record(h["_source"]),
                score=(
                    float(h["sort"][0])
                    if order is SearchOrder.RELEVANCE and h["sort"][0] is not None
                    else None
                ),
            )
            for h in raw_hits
        )
        token = None
        if more:
            token = encode_page_token(
                self.backend,
                query,
                PageCursor(total=total, position=list(raw_hits[-1]["sort"]), context=pit_id),
            )
        else:
            self._close_pit(pit_id)
        return SearchPage(hits=hits, total=total, next_page_token=token)

    def _close_pit(self, pit_id: str) -> None:
        with contextlib.suppress(ApiError, TransportError):  # else it expires by itself
            self.client.close_point_in_time(id=pit_id)

    async def _statistics(self, flt: AuditFilter) -> AuditStatistics:
        resp = await self._run(
            lambda: self.client.search(
                index=self.data_stream,
                size=0,
                query=_query(flt, self.region_id),
                track_total_hits=True,
                aggregations={
                    "agents": {"cardinality": {"field": "agent_id", "precision_threshold": 40000}},
                    "risk": {"avg": {"field": "risk_score"}},
                    "decisions": {"terms": {"field": "decision", "size": len(DECISIONS) + 1}},
                },
            )
        )
        aggs = resp["aggregations"]
        counts = {d.value: 0 for d in DECISIONS}
        for bucket in aggs["decisions"]["buckets"]:
            if bucket["key"] in counts:
                counts[bucket["key"]] = int(bucket["doc_count"])
        total = int(resp["hits"]["total"]["value"])
        avg = aggs["risk"]["value"]
        return AuditStatistics(
            total_actions=total,
            unique_agents=int(aggs["agents"]["value"]),
            avg_risk_score=None if avg is None or total == 0 else float(avg),
            decision_counts=counts,
        )

    async def _close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self.client.close()


def _check_sort_values(position: list[Any]) -> None:
    if not 2 <= len(position) <= 5:
        raise ValueError("page_token is not valid: bad position")
    for value in position:
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float | str)
        ):
            raise ValueError("page_token is not valid: bad position")
