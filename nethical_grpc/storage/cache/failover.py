"""Redis with a memory tier that takes over during outages and is written back on recovery.

Policy (what an operator can rely on):

* While Redis answers, every call goes to Redis; the memory tier is empty.
* The first call that finds Redis unreachable switches the cache to memory mode (counted
  in ``fallbacks``) and answers that call from memory. Calls in memory mode never wait on
  Redis. Reads then see only what was written since the outage began: older entries read
  as misses, which a cache may do.
* Writes in memory mode (``set``, ``set_multiple``, ``delete``, ``increment``, ``clear``)
  go to the memory tier and are journalled per key. A background task probes Redis with
  PING, backing off exponentially (``probe_initial`` doubling to ``probe_max`` seconds,
  ±20% jitter); it never gives up. When Redis answers, the journal is written back in
  ``MULTI``/``EXEC`` batches while calls keep being answered from memory, then the cache
  switches back to Redis (``recoveries``) and empties the memory tier. So no outage write
  is lost to readers: before the switch they read memory, after it Redis holds the writes.
* Write-back rules per key: a key set during the outage is ``SET`` with its remaining TTL;
  a key deleted (or evicted from the bounded memory tier, or expired) is ``DEL``-ed, so an
  old Redis value never comes back; a key only incremented gets ``INCRBY`` of the summed
  increments, so a counter keeps its pre-outage count. A ``clear`` during the outage, or
  more distinct journalled keys than ``max_entries``, makes recovery clear the namespace
  in Redis and then write every memory entry (a counter then restarts from its outage
  increments).
* Limits: while Redis is unreachable, increments count from what this node saw since the
  outage began; a write whose connection broke mid-call may have reached Redis and is
  written again on recovery (harmless for ``set``/``delete``; an ``increment`` can count
  twice); other nodes' writes to the same keys during the outage are overwritten on
  recovery (last writer wins). Writes still journalled when ``close`` is called are
  dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

from nethical_grpc.storage.backend import BackendChoice
from nethical_grpc.storage.cache.base import (
    Cache,
    CacheStats,
    CacheUnavailableError,
    hit_rate,
)
from nethical_grpc.storage.cache.memory import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, MemoryCache

if TYPE_CHECKING:  # redis is an extra: imported only where a Redis URL is given
    from nethical_grpc.storage.cache.redis_cache import RedisCache

T = TypeVar("T")

__all__ = ["WRITE_BACK_BATCH", "FailoverCache"]

log = logging.getLogger(__name__)

WRITE_BACK_BATCH: Final = 1000
"""Journalled keys written back per MULTI/EXEC round trip."""

_Journal = dict[str, int | None]  # key -> summed increments, or None: memory tier is the truth


class FailoverCache(Cache):
    """A :class:`RedisCache` that falls back to a bounded :class:`MemoryCache` (see module).

    ``max_entries`` bounds the memory tier and the journal, ``max_bytes`` the memory
    tier's keys and values (see :class:`MemoryCache`); ``probe_initial`` and
    ``probe_max`` are the first and the longest wait between Redis probes, in seconds.
    ``requested`` is the configured URL with secrets redacted, used by :meth:`choice`.
    """

    def __init__(
        self,
        primary: RedisCache,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        probe_initial: float = 0.2,
        probe_max: float = 10.0,
        requested: str = "redis://",
    ) -> None:
        if not 0 < probe_initial <= probe_max:
            raise ValueError(
                f"need 0 < probe_initial <= probe_max, got {probe_initial!r}, {probe_max!r}"
            )
        self.primary = primary
        self.memory = MemoryCache(
            primary.namespace,
            max_entries=max_entries,
            max_bytes=max_bytes,
            default_ttl=primary.default_ttl,
        )
        self.namespace = primary.namespace
        self.default_ttl = primary.default_ttl
        self.requested = requested
        self.probe_initial = float(probe_initial)
        self.probe_max = float(probe_max)
        self._healthy = True
        self._reason = ""
        self._journal: _Journal = {}
        self._clear_pending = False
        self._probe: asyncio.Task[None] | None = None
        self._fallbacks = 0
        self._recoveries = 0
        self._closed = False
        self._recovered = asyncio.Event()

    # -- state -------------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        return "redis" if self._healthy else "memory"

    @property
    def healthy(self) -> bool:
        """True while calls go to Redis."""
        return self._healthy

    @property
    def reason(self) -> str:
        """Why the cache is in memory mode (e.g. ``"unreachable (connection refused)"``)."""
        return self._reason

    @property
    def pending_writes(self) -> int:
        """Writes that still wait for Redis: journalled keys, or, when the namespace is to
        be rebuilt, the clear plus every memory entry."""
        if self._clear_pending:
            return len(self.memory) + 1
        return len(self._journal)

    def choice(self) -> BackendChoice:
        """The backend in use now and why, for startup logs and GetNodeInfo."""
        return BackendChoice("cache", self.requested, self.backend, self._reason)

    def fall_back(self, reason: str) -> None:
        """Switch to memory mode (if not there yet) and start probing Redis."""
        if self._closed:
            return
        self._reason = reason
        if not self._healthy:
            return
        self._healthy = False
        self._recovered.clear()
        self._fallbacks += 1
        self.memory._clear()
        log.warning("cache: redis %s; answering from memory until it returns", reason)
        self._probe = asyncio.get_running_loop().create_task(
            self._probe_until_recovered(), name=f"cache-probe:{self.namespace}"
        )

    async def wait_recovered(self) -> None:
        """Return once calls go to Redis again (at once when they already do)."""
        if not self._healthy:
            await self._recovered.wait()

    async def on_primary(self, call: Callable[[Cache], Awaitable[T]]) -> T:
        """``call`` on Redis itself (see :meth:`Cache.on_primary`): refused while in memory
        mode, and a failure switches to memory mode as any call's does."""
        if not self._healthy:
            raise CacheUnavailableError(f"redis {self._reason}; not asked (memory mode)")
        try:
            return await call(self.primary)
        except CacheUnavailableError as err:
            self._failed(err)
            raise

    def _failed(self, err: CacheUnavailableError) -> None:
        self.fall_back(self.primary.last_error or str(err))

    # -- journal -----------------------------------------------------------------------------

    def _journal_overwrite(self, key: str) -> None:
        if self._clear_pending:
            return
        self._journal[key] = None
        self._bound_journal()

    def _journal_increment(self, key: str, amount: int) -> None:
        if self._clear_pending:
            return
        journal = self._journal
        if key in journal:
            previous = journal[key]
            journal[key] = None if previous is None else previous + amount
        else:
            journal[key] = amount
            self._bound_journal()

    def _bound_journal(self) -> None:
        if len(self._journal) > self.memory.max_entries:
            log.warning("cache: outage journal full; the namespace will be rebuilt on recovery")
            self._journal.clear()
            self._clear_pending = True

    # -- recovery ----------------------------------------------------------------------------

    async def _probe_until_recovered(self) -> None:
        delay = self.probe_initial
        while not self._closed:
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.probe_max)
            try:
                await self.primary.ping()
                await self._write_back()
            except CacheUnavailableError:
                self._reason = self.primary.last_error or self._reason
                continue
            except Exception:  # keep probing: one odd failure must not strand memory mode
                log.exception("cache: write-back to redis failed; will retry")
                continue
            # No await between _write_back seeing an empty journal and this switch.
            self._healthy = True
            self._reason = ""
            self._recoveries += 1
            self.memory._clear()
            self._recovered.set()
            log.warning("cache: redis is back; outage writes written back")
            return

    async def _write_back(self) -> None:
        """Write the journal to Redis until it is empty; on failure keep what was not
        applied (merged under newer writes) and re-raise."""
        while self._journal or self._clear_pending:
            journal, self._journal = self._journal, {}
            rebuild, self._clear_pending = self._clear_pending, False
            try:
                if rebuild:
                    await self.primary.clear()
                    journal = dict.fromkeys(self.memory._keys())
                await self._apply(journal)
            except Exception:
                if rebuild:
                    self._journal.clear()
                    self._clear_pending = True
                else:
                    self._restore(journal)
                raise

    async def _apply(self, journal: _Journal) -> None:
        """Apply ``journal`` in batches, removing each applied batch from it."""
        keys = list(journal)
        for start in range(0, len(keys), WRITE_BACK_BATCH):
            batch = keys[start : start + WRITE_BACK_BATCH]
            sets: list[tuple[str, bytes, float]] = []
            deletes: list[str] = []
            increments: list[tuple[str, int]] = []
            for key in batch:
                amount = journal[key]
                if amount is not None:
                    increments.append((key, amount))
                    continue
                held = self.memory._peek_encoded(key)
                if held is None:
                    deletes.append(key)
                else:
                    sets.append((key, held[0], held[1]))
            rejected = await self.primary.apply_writes(sets, deletes, increments)
            if rejected:
                log.warning("cache: redis rejected %d outage writes: %s", len(rejected), rejected)
            for key in batch:
                del journal[key]

    def _restore(self, unapplied: _Journal) -> None:
        """Merge writes not yet applied back under the journal of newer writes."""
        newer = self._journal
        if self._clear_pending:
            return
        for key, amount in unapplied.items():
            if key in newer:
                later = newer[key]
                newer[key] = None if amount is None or later is None else amount + later
            else:
                newer[key] = amount
        self._bound_journal()

    # -- the Cache API -----------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        if self._healthy:
            try:
                return await self.primary.get(key, default)
            except CacheUnavailableError as err:
                self._failed(err)
        return self.memory._get(key, default)

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        if self._healthy:
            try:
                await self.primary.set(key, value, ttl)
                return
            except CacheUnavailableError as err:
                self._failed(err)
        self.memory._set(key, value, ttl)
        self._journal_overwrite(key)

    async def delete(self, key: str) -> bool:
        if self._healthy:
            try:
                return await self.primary.delete(key)
            except CacheUnavailableError as err:
                self._failed(err)
        removed = self.memory._delete(key)
        self._journal_overwrite(key)
        return removed

    async def exists(self, key: str) -> bool:
        if self._healthy:
            try:
                return await self.primary.exists(key)
            except CacheUnavailableError as err:
                self._failed(err)
        return self.memory._exists(key)

    async def increment(self, key: str, amount: int = 1) -> int:
        if self._healthy:
            try:
                return await self.primary.increment(key, amount)
            except CacheUnavailableError as err:
                self._failed(err)
        result = self.memory._increment(key, amount)
        self._journal_increment(key, amount)
        return result

    async def get_multiple(self, keys: Iterable[str]) -> dict[str, Any]:
        # a str or bytes goes on as it is: check_keys refuses it as a slip for [key]
        keys = keys if isinstance(keys, str | bytes) else list(keys)
        if self._healthy:
            try:
                return await self.primary.get_multiple(keys)
            except CacheUnavailableError as err:
                self._failed(err)
        return self.memory._get_many(keys)

    async def set_multiple(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        if self._healthy:
            try:
                await self.primary.set_multiple(mapping, ttl)
                return
            except CacheUnavailableError as err:
                self._failed(err)
        self.memory._set_many(mapping, ttl)
        for key in mapping:
            self._journal_overwrite(key)

    async def update_multiple(
        self,
        keys: Iterable[str],
        update: Callable[[dict[str, Any]], Mapping[str, Any]],
        ttl: float | None = None,
    ) -> dict[str, Any]:
        """Atomic on Redis only (:meth:`RedisCache.update_multiple`): in memory mode it
        raises ``CacheUnavailableError`` instead of updating the stand-in, whose values
        would be written back over what other instances wrote meanwhile."""
        return await self.on_primary(lambda cache: cache.update_multiple(keys, update, ttl))

    async def clear(self) -> int:
        """Remove the namespace. In memory mode: empties the memory tier, returns how many
        entries it held, and clears the namespace in Redis on recovery."""
        if self._healthy:
            try:
                return await self.primary.clear()
            except CacheUnavailableError as err:
                self._failed(err)
        removed = self.memory._clear()
        self._journal.clear()
        self._clear_pending = True
        return removed

    async def stats(self) -> CacheStats:
        size = -1
        if self._healthy:
            try:
                size = await self.primary.size()
            except CacheUnavailableError as err:
                self._failed(err)
        memory = self.memory._stats()
        hits = self.primary._hits + memory.hits
        misses = self.primary._misses + memory.misses
        return CacheStats(
            type=self.backend,
            hits=hits,
            misses=misses,
            hit_rate=hit_rate(hits, misses),
            errors=self.primary._errors,
            size=memory.size if size < 0 else size,
            evictions=memory.evictions,
            fallbacks=self._fallbacks,
            recoveries=self._recoveries,
            pending_writes=self.pending_writes,
            last_error=self.primary.last_error,
        )

    async def close(self) -> None:
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        if self.pending_writes:
            log.warning("cache: closing; %d outage writes not written back", self.pending_writes)
        await self.primary.close()
        await self.memory.close()
