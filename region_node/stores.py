"""The region node's three stores, opened by URL, with which backend each one got and why."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from typing import Final

from nethical_grpc.errors import first_line
from nethical_grpc.storage.audit import (
    DEFAULT_MEMORY_MAX_RECORDS,
    DEFAULT_RETENTION_DAYS,
    AuditStore,
    check_retention_days,
    open_audit_store,
)
from nethical_grpc.storage.backend import BackendChoice, check_row_bound
from nethical_grpc.storage.cache import Cache, FailoverCache, open_cache, region_namespace
from nethical_grpc.storage.timeseries import TimeSeriesStore, open_timeseries

log = logging.getLogger(__name__)

#: A store's problem, as the node reports it, is clipped to this many characters.
MAX_PROBLEM_CHARS: Final = 200
# a quoted piece of an error's text: a value (an identifier, at best) in the style of
# PostgreSQL's and Elasticsearch's messages; an apostrophe inside a word opens none. From
# the first quote to the last of its kind: a value may hold that quote itself (an agent
# id ``a" SECRET "b``), and a piece cut short at one would leave the rest of it out
_QUOTED: Final = re.compile(r"""(?<!\w)(["'`]).*\1(?!\w)""")
# a quote left open: what follows may be a value clipped in the middle
_OPEN_QUOTE: Final = re.compile(r"""(?<!\w)["'`]""")
# where a message goes on with the row or key it is about (PostgreSQL's DETAIL, put on
# the first line by some drivers)
_ROW_PARTS: Final = re.compile(r"\b(?:DETAIL|HINT|CONTEXT|WHERE):|Failing row contains|\bKey \(")


def reportable_problem(exc: BaseException) -> str:
    """What a store's failure is called beyond the node (GetNodeInfo, answers' gaps): the
    first line of ``exc``'s message, without quoted pieces (drivers echo the values they
    refused: PostgreSQL in quotes and in ``DETAIL``'s "Failing row contains (...)",
    Elasticsearch in quotes), nor what follows a row's details, clipped to
    :data:`MAX_PROBLEM_CHARS`. The node's log keeps the whole message, in-region."""
    text = _ROW_PARTS.split(first_line(exc), maxsplit=1)[0]
    text = _QUOTED.sub("\0", text)
    text = _OPEN_QUOTE.split(text, maxsplit=1)[0].strip().rstrip(":,;(").strip()
    text = text.replace("\0", '"…"')
    if len(text) > MAX_PROBLEM_CHARS:
        text = text[: MAX_PROBLEM_CHARS - 1] + "…"
    return text or type(exc).__name__


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Store URLs (``memory://`` is the embedded default of each) and the flush interval.

    ``timeseries_schema`` overrides a PostgreSQL URL's ``?schema=`` (tests isolate by it).
    ``memory_records`` bounds the stores held in this process's memory (``memory://``, or
    the stand-in for a server that could not be used): the audit store keeps the newest
    that many records, the time-series store that many rows per table; ``None``: no bound.
    ``audit_retention_days``: how long the audit store keeps records (every backend).
    """

    cache_url: str = "memory://"
    timeseries_url: str = "memory://"
    audit_url: str = "memory://"
    flush_interval_s: float = 10.0
    timeseries_schema: str | None = None
    memory_records: int | None = DEFAULT_MEMORY_MAX_RECORDS
    audit_retention_days: int = DEFAULT_RETENTION_DAYS

    def __post_init__(self) -> None:
        if not 0.05 <= self.flush_interval_s <= 3600:
            raise ValueError("flush interval must be between 50 ms and 1 h")
        check_row_bound("memory_records", self.memory_records)
        check_retention_days(self.audit_retention_days)


@dataclass(slots=True)
class NodeStores:
    cache: Cache
    timeseries: TimeSeriesStore
    audit: AuditStore
    _cache_choice: BackendChoice
    timeseries_choice: BackendChoice
    audit_choice: BackendChoice
    #: why the last write to the store failed, while writes fail (set by the persister),
    #: as :func:`reportable_problem` says it: GetNodeInfo reports it beyond the region
    problems: dict[str, str] = field(default_factory=dict)

    @classmethod
    async def open(cls, config: StoreConfig, region_id: str) -> NodeStores:
        """Open all three; an unreachable server falls back to the embedded default."""
        cache, cache_choice = await open_cache(config.cache_url, region_namespace(region_id))
        try:
            ts, ts_choice = await open_timeseries(
                config.timeseries_url,
                region_id,
                schema=config.timeseries_schema,
                memory_max_rows=config.memory_records,
            )
            try:
                audit, audit_choice = await open_audit_store(
                    config.audit_url,
                    region_id,
                    memory_max_records=config.memory_records,
                    retention_days=config.audit_retention_days,
                )
            except BaseException:
                await ts.close()
                raise
        except BaseException:
            await cache.close()
            raise
        stores = cls(cache, ts, audit, cache_choice, ts_choice, audit_choice)
        for choice in stores.choices():
            if choice.fallback:
                # not what the operator asked for: a warning, naming the URL tried (its
                # secrets redacted), as a typo or an environment's value would have it
                log.warning("%s: %s (%s)", choice.store, choice.describe(), choice.requested)
            else:
                log.info("%s: %s", choice.store, choice.describe())
        return stores

    @property
    def keeps_windows(self) -> bool:
        """Windows flushed to the time-series store survive a restart (not an in-memory
        SQLite)."""
        return "memory" not in self.timeseries_choice.backend

    @property
    def cache_choice(self) -> BackendChoice:
        """Current, not only at startup: the cache moves between Redis and memory."""
        if isinstance(self.cache, FailoverCache):
            return self.cache.choice()
        return self._cache_choice

    def choices(self) -> list[BackendChoice]:
        """Each store's backend, with the problem its writes have now, if any."""
        return [
            replace(c, problem=self.problems[c.store]) if self.problems.get(c.store) else c
            for c in (self.cache_choice, self.timeseries_choice, self.audit_choice)
        ]

    def evictions(self) -> list[tuple[str, str, int]]:
        """(store, backend, records dropped for its bound since the start) of the
        time-series and audit stores: the in-memory bound, or a SQLite audit file's
        ``max_records`` (0 for a store without a bound)."""
        return [
            ("timeseries", self.timeseries_choice.backend, self.timeseries.rows_dropped),
            ("audit", self.audit_choice.backend, self.audit.records_dropped),
        ]

    def write_failed(self, store: str, exc: BaseException) -> None:
        self.problems[store] = reportable_problem(exc)

    def write_succeeded(self, store: str) -> None:
        if self.problems.pop(store, None) is not None:
            log.info("%s store: writes succeed again", store)

    @property
    def shared_cache(self) -> bool:
        """True when other instances can reach the cache (Redis, even while it is down);
        a ``memory://`` cache lives and dies with this process."""
        return isinstance(self.cache, FailoverCache)

    @property
    def shared_timeseries(self) -> bool:
        """True when the time-series store is a server other instances can reach too."""
        return self.timeseries_choice.backend.startswith("postgresql")

    async def close(self) -> None:
        for close in (self.audit.close, self.timeseries.close, self.cache.close):
            try:
                await close()
            except Exception:  # closing the others matters more than one failure
                log.exception("closing a store failed")
