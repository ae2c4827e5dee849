"""The audit-search store interface shared by the SQLite FTS5 and Elasticsearch backends.

The API is asyncio (the region node is ``grpc.aio``): every method is a coroutine and
backends do their blocking work (SQLite calls, HTTP requests of the synchronous
Elasticsearch client) on their own worker threads, never on the event loop.

Public methods validate their arguments first (``ValueError``, nothing written) and then
call the backend's ``_index``, ``_search`` and ``_statistics``.  Backend failures (server
down, disk full) raise :class:`AuditStoreError`; an expired Elasticsearch paging context
raises :class:`PageTokenExpiredError` (a ``ValueError``: ask again from the first page).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar, Final

from nethical_grpc.storage.audit.model import (
    DEFAULT_PAGE_SIZE,
    AuditFilter,
    AuditRecord,
    AuditStatistics,
    AuditViolation,
    Decision,
    IndexResult,
    SearchOrder,
    SearchPage,
    SearchQuery,
    check_region_id,
    dedupe_records,
    record_from_fields,
)

__all__ = ["AuditStore", "AuditStoreError", "PageTokenExpiredError"]

#: ``index_audit_log``'s default ``violations`` (a record with other ones is refused).
_NO_VIOLATIONS: Final[tuple[AuditViolation, ...]] = ()


class AuditStoreError(RuntimeError):
    """The backend failed (unreachable, rejected a write, out of space)."""


class PageTokenExpiredError(ValueError):
    """The page token's server-side context (an Elasticsearch point in time) expired."""


class AuditStore(ABC):
    """Per-region audit log store with full-text search, filters, keyset paging and
    statistics.  Use :func:`nethical_grpc.storage.audit.open_audit_store` to get one.

    ``backend`` names the implementation (``"sqlite"``, ``"memory"``,
    ``"elasticsearch"``); ``region_id`` is the region whose records it holds: a record
    with an empty ``region_id`` gets it, one with another region is rejected.
    """

    #: Whether every instance of the region sees the same records (a shared server).
    region_scope: ClassVar[bool] = False

    def __init__(self, region_id: str) -> None:
        self.region_id = check_region_id("region_id", region_id, allow_empty=False)
        self._closed = False

    @property
    def records_dropped(self) -> int:
        """Records dropped to stay within an in-memory bound since the store was opened
        (0: a store without one)."""
        return 0

    # ------------------------------------------------------------------ public API

    async def index_audit_log(
        self,
        record: AuditRecord | None = None,
        /,
        *,
        action_id: str | None = None,
        agent_id: str | None = None,
        decision: Decision | str | None = None,
        action_data: Mapping[str, str] | None = None,
        violations: Iterable[Mapping[str, Any] | AuditViolation] = _NO_VIOLATIONS,
        region_id: str = "",
        risk_score: float | None = None,
        timestamp: datetime | None = None,
    ) -> bool:
        """Store one record; ``True`` if stored, ``False`` if its ``action_id`` already was
        (a retry).  ``ValueError`` for a record of another region.

        Either an :class:`AuditRecord`, or the guide's fields: ``action_id`` (a fresh one
        when omitted), ``agent_id``, ``decision``, ``risk_score``, ``action_data`` with
        ``actual_action`` (the action's text), ``stated_intent`` and ``action_type``,
        ``violations`` as dicts of ``type``, ``severity``, ``confidence`` and ``message``,
        ``region_id`` and ``timestamp`` (now when omitted)."""
        if record is None:
            record = record_from_fields(
                action_id=action_id,
                agent_id=agent_id,
                decision=decision,
                action_data=action_data or {},
                violations=violations,
                region_id=region_id,
                risk_score=risk_score,
                timestamp=timestamp,
            )
        elif (
            any(v is not None for v in (action_id, agent_id, decision, action_data, risk_score))
            or violations is not _NO_VIOLATIONS
            or region_id
            or timestamp is not None
        ):
            raise ValueError("give either a record or its fields, not both")
        result = await self.index_audit_logs([record])
        return result.indexed == 1

    async def index_audit_logs(self, records: Iterable[AuditRecord]) -> IndexResult:
        """Store many records (first occurrence of an ``action_id`` wins; repeats and ids
        already stored count as duplicates).  Every record is checked before anything is
        written.  SQLite writes one batch atomically; Elasticsearch writes in bulk
        requests (a failure part-way may leave earlier requests applied: retry the call,
        stored ids are skipped)."""
        self._check_open()
        batch = list(records)
        prepared: list[AuditRecord] = []
        for i, r in enumerate(batch):
            if not isinstance(r, AuditRecord):
                raise ValueError(f"records[{i}] is a {type(r).__name__}, not an AuditRecord")
            if not r.region_id:
                r = replace(r, region_id=self.region_id)
            elif r.region_id != self.region_id:
                raise ValueError(
                    f"records[{i}] belongs to region {r.region_id!r}; this store holds "
                    f"region {self.region_id!r}"
                )
            prepared.append(r)
        unique, repeated = dedupe_records(prepared)
        if not unique:
            return IndexResult(indexed=0, duplicates=repeated)
        stored = await self._index(unique)
        return IndexResult(indexed=stored, duplicates=repeated + len(unique) - stored)

    async def search_audit_logs(
        self,
        query: str | None = None,
        *,
        agent_id: str | None = None,
        decision: Decision | str | None = None,
        region_id: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        min_risk_score: float | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
        order: SearchOrder | str | None = None,
        size: int | None = None,
    ) -> SearchPage:
        """Full-text search with filters, one page at a time (see :class:`AuditFilter`,
        :class:`SearchQuery`).  Pass ``next_page_token`` back with the same filter to get
        the next page; paging is by cursor, so page 200 costs about what page 1 does.
        ``size`` is the guide's name for ``page_size``."""
        if size is not None:
            if page_size != DEFAULT_PAGE_SIZE and page_size != size:
                raise ValueError(
                    f"give size (the guide's name) or page_size, not both: {size} and {page_size}"
                )
            page_size = size
        flt = AuditFilter(
            text=query,
            agent_id=agent_id,
            decision=decision,  # type: ignore[arg-type]  # validated and converted
            region_id=region_id,
            start_time=start_time,
            end_time=end_time,
            min_risk_score=min_risk_score,
        )
        return await self.search(
            SearchQuery(
                filter=flt,
                page_size=page_size,
                page_token=page_token,
                order=order,  # type: ignore[arg-type]  # validated and converted
            )
        )

    async def search(self, query: SearchQuery) -> SearchPage:
        """:meth:`search_audit_logs` with a prepared :class:`SearchQuery`."""
        self._check_open()
        if not isinstance(query, SearchQuery):
            raise ValueError("query must be a SearchQuery")
        return await self._search(query)

    async def get_audit_log_statistics(
        self,
        query: str | None = None,
        *,
        agent_id: str | None = None,
        decision: Decision | str | None = None,
        region_id: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        min_risk_score: float | None = None,
    ) -> AuditStatistics:
        """Total actions, unique agents, mean risk and counts per decision over the
        records the filter covers (the same filter as :meth:`search_audit_logs`)."""
        flt = AuditFilter(
            text=query,
            agent_id=agent_id,
            decision=decision,  # type: ignore[arg-type]  # validated and converted
            region_id=region_id,
            start_time=start_time,
            end_time=end_time,
            min_risk_score=min_risk_score,
        )
        return await self.statistics(flt)

    async def statistics(self, flt: AuditFilter) -> AuditStatistics:
        """:meth:`get_audit_log_statistics` with a prepared :class:`AuditFilter`."""
        self._check_open()
        if not isinstance(flt, AuditFilter):
            raise ValueError("filter must be an AuditFilter")
        return await self._statistics(flt)

    async def apply_retention(self, now: datetime | None = None, limit: int | None = None) -> int:
        """Delete the records past the store's retention, as of ``now`` (default: the
        current time), at most ``limit`` (``None``: all); the number deleted.  A no-op
        here and for Elasticsearch, whose index lifecycle policy deletes them on the
        server."""
        self._check_open()
        return 0

    async def refresh(self) -> None:
        """Make every record indexed so far visible to searches (an index refresh for
        Elasticsearch; for SQLite, the records still waiting go into the full-text index,
        as a text search does first)."""
        self._check_open()

    async def close(self) -> None:
        """Release connections and worker threads.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._close()

    async def __aenter__(self) -> AuditStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ backend hooks

    @property
    @abstractmethod
    def backend(self) -> str:
        """The implementation in use: ``"sqlite"``, ``"memory"`` or ``"elasticsearch"``."""

    def _check_open(self) -> None:
        if self._closed:
            raise AuditStoreError("audit store is closed")

    @abstractmethod
    async def _index(self, records: Sequence[AuditRecord]) -> int:
        """Store ``records`` (distinct ids, region filled in); return how many were new."""

    @abstractmethod
    async def _search(self, query: SearchQuery) -> SearchPage: ...

    @abstractmethod
    async def _statistics(self, flt: AuditFilter) -> AuditStatistics: ...

    @abstractmethod
    async def _close(self) -> None: ...
