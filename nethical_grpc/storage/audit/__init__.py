"""Per-region audit-search store: full-text search, filters, cursor paging and statistics
over audit records, on Elasticsearch or on embedded SQLite FTS5.

Usage (asyncio; every method is a coroutine, blocking work runs on worker threads)::

    store, choice = await open_audit_store(url, region_id="us-east-1")
    print(choice.describe())                    # e.g. "memory" or "elasticsearch"
    await store.index_audit_log(AuditRecord(agent_id="a1", decision="BLOCK",
                                            risk_score=0.85, action_text="SELECT * FROM users",
                                            stated_intent="Access sensitive data"))
    page = await store.search_audit_logs("sensitive data", decision="BLOCK", page_size=100)
    more = await store.search_audit_logs("sensitive data", decision="BLOCK",
                                         page_size=100, page_token=page.next_page_token)
    stats = await store.get_audit_log_statistics(start_time=week_ago)
    await store.close()

Names follow the product guide (``index_audit_log``, ``search_audit_logs``,
``get_audit_log_statistics``, ``min_risk_score``); results are typed
(:class:`SearchPage`, :class:`AuditStatistics`) rather than raw Elasticsearch responses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from nethical_grpc.storage.audit.model import (
    DECISIONS,
    MAX_PAGE_SIZE,
    MAX_QUERY_TERMS,
    MAX_QUERY_TEXT_CHARS,
    MAX_TEXT_BYTES,
    MAX_VIOLATIONS,
    AuditFilter,
    AuditHit,
    AuditRecord,
    AuditStatistics,
    AuditViolation,
    Decision,
    IndexResult,
    SearchOrder,
    SearchPage,
    SearchQuery,
    check_region_id,
    query_terms,
)
from nethical_grpc.storage.audit.sqlite_fts import SqliteFtsAuditStore
from nethical_grpc.storage.audit.store import AuditStore, AuditStoreError, PageTokenExpiredError
from nethical_grpc.storage.backend import (
    DEFAULT_AUDIT_RETENTION_DAYS,
    DEFAULT_MEMORY_BOUND,
    BackendChoice,
    check_retention_days,
    check_row_bound,
    redact_url,
    url_scheme,
)
from nethical_grpc.storage.sqlite_url import SqliteUrl, parse_sqlite_url

if TYPE_CHECKING:
    from nethical_grpc.storage.audit.elasticsearch_store import ElasticsearchAuditStore

__all__ = [
    "DECISIONS",
    "DEFAULT_MEMORY_MAX_RECORDS",
    "DEFAULT_RETENTION_DAYS",
    "MAX_PAGE_SIZE",
    "MAX_QUERY_TERMS",
    "MAX_QUERY_TEXT_CHARS",
    "MAX_TEXT_BYTES",
    "MAX_VIOLATIONS",
    "AuditFilter",
    "AuditHit",
    "AuditRecord",
    "AuditStatistics",
    "AuditStore",
    "AuditStoreError",
    "AuditViolation",
    "Decision",
    "ElasticsearchAuditStore",
    "IndexResult",
    "PageTokenExpiredError",
    "SearchOrder",
    "SearchPage",
    "SearchQuery",
    "SqliteFtsAuditStore",
    "check_retention_days",
    "open_audit_store",
    "query_terms",
]

_STORE: Final = "audit"
#: Records an in-memory audit store keeps by default (the newest; see open_audit_store).
DEFAULT_MEMORY_MAX_RECORDS: Final = DEFAULT_MEMORY_BOUND
#: Days an audit record is kept by default (every backend; see open_audit_store).
DEFAULT_RETENTION_DAYS: Final = DEFAULT_AUDIT_RETENTION_DAYS


def __getattr__(name: str) -> Any:
    # The Elasticsearch client is an optional extra: import it only when asked for.
    if name == "ElasticsearchAuditStore":
        from nethical_grpc.storage.audit.elasticsearch_store import ElasticsearchAuditStore

        return ElasticsearchAuditStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _sqlite_file(url: str) -> SqliteUrl:
    """The file of a ``sqlite://`` audit URL and its parameters (see
    :mod:`nethical_grpc.storage.sqlite_url`); ``ValueError`` for ``:memory:`` (use
    ``memory://``) or a malformed URL."""
    parsed = parse_sqlite_url(url, _STORE, record_bound=True)
    if parsed.path is None:
        raise ValueError(f"audit URL: for an in-memory audit store use memory://, not {url!r}")
    return parsed


async def open_audit_store(
    url: str,
    region_id: str,
    *,
    index_prefix: str = "nethical",
    retention_days: int = DEFAULT_RETENTION_DAYS,
    connect_timeout_s: float = 5.0,
    pit_keep_alive: str = "2m",
    memory_max_records: int | None = DEFAULT_MEMORY_MAX_RECORDS,
) -> tuple[AuditStore, BackendChoice]:
    """Open the region's audit store named by ``url`` and say which backend it got.

    * ``http://HOST:9200`` / ``https://…`` (several comma-separated): Elasticsearch
      (:class:`ElasticsearchAuditStore`; ``index_prefix``, ``retention_days`` (its index
      lifecycle policy) and ``pit_keep_alive`` apply).  When it is unreachable, its setup
      fails or the ``elasticsearch`` client (an optional extra) is not installed, a private
      in-memory SQLite FTS5 store is used instead and the choice's ``reason`` says why.
    * ``sqlite:///path/to/file.db``: SQLite FTS5 in that file (created if missing); its
      records are kept ``retention_days`` (:meth:`SqliteFtsAuditStore.apply_retention`).
      ``?cache_mib=N``: the page cache each of its connections may fill (default 64);
      ``?max_records=N``: it keeps the newest ``N`` records, dropping the oldest past them
      (default: no bound but the retention; see :mod:`nethical_grpc.storage.sqlite_url`).
    * ``memory://``: SQLite FTS5 in memory, private to this process.

    An in-memory store (``memory://``, or the stand-in for an Elasticsearch it could not
    use) keeps the newest ``memory_max_records`` records, dropping the oldest past them
    (``None``: no bound; a long-running node would then grow until it runs out of memory).
    A SQLite file is bounded by its URL's ``max_records`` instead, and Elasticsearch by
    its retention alone.

    ``ValueError`` for an unknown scheme or a malformed URL or region id;
    ``AuditStoreError`` when a SQLite file cannot be opened.
    """
    check_region_id("region_id", region_id, allow_empty=False)
    check_row_bound("memory_max_records", memory_max_records)
    check_retention_days(retention_days)
    scheme = url_scheme(url)
    shown = redact_url(url)

    async def in_memory() -> SqliteFtsAuditStore:
        return await SqliteFtsAuditStore.open(
            region_id, None, max_records=memory_max_records, retention_days=retention_days
        )

    if scheme == "memory":
        store: AuditStore = await in_memory()
        return store, BackendChoice(_STORE, shown, store.backend)
    if scheme == "sqlite":
        file = _sqlite_file(url)
        store = await SqliteFtsAuditStore.open(
            region_id,
            file.path,
            max_records=file.max_records,
            retention_days=retention_days,
            cache_mib=file.cache_mib,
        )
        return store, BackendChoice(_STORE, shown, store.backend)
    if scheme in ("http", "https"):
        hosts = [h.strip() for h in url.split(",") if h.strip()]
        try:
            from nethical_grpc.storage.audit.elasticsearch_store import ElasticsearchAuditStore
        except ImportError as exc:
            fallback = await in_memory()
            reason = f"client not installed ({exc.name or exc}: pip install elasticsearch)"
            return fallback, BackendChoice(_STORE, shown, fallback.backend, reason)
        try:
            store = await ElasticsearchAuditStore.open(
                region_id,
                hosts,
                index_prefix=index_prefix,
                retention_days=retention_days,
                connect_timeout_s=connect_timeout_s,
                pit_keep_alive=pit_keep_alive,
            )
        except AuditStoreError as exc:
            fallback = await in_memory()
            reason = f"unavailable ({exc})".replace(url, shown)
            return fallback, BackendChoice(_STORE, shown, fallback.backend, reason)
        return store, BackendChoice(_STORE, shown, store.backend)
    raise ValueError(
        f"unsupported audit store URL scheme {scheme!r} in {shown!r}: use http(s)://HOST:PORT "
        "(Elasticsearch), sqlite:///PATH or memory://"
    )
