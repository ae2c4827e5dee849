"""The embedded cache: a bounded, in-process LRU dictionary with per-entry TTL."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from time import monotonic
from typing import Any, Final

from nethical_grpc.storage.cache.base import (
    DEFAULT_TTL_S,
    MISSING,
    Cache,
    CacheStats,
    check_amount,
    check_key,
    check_keys,
    check_ttl,
    hit_rate,
)
from nethical_grpc.storage.cache.codec import (
    INT64_MAX,
    INT64_MIN,
    container_from_json,
    container_to_json,
    encode_value,
)

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_ENTRIES", "MemoryCache"]

DEFAULT_MAX_ENTRIES: Final = 100_000
DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024
"""The memory cache's default byte bound: 256 MiB of keys and values, sized as
:class:`MemoryCache` says."""
_SCALAR_SIZE: Final = 8  # what a float, bool, None or 64-bit int counts for
_NEVER: Final = math.inf
_IMMUTABLE: Final = frozenset({int, float, bool, type(None), bytes})


class _Encoded:
    """A list or dict kept as its JSON text, so callers never share mutable state."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


# (value or _Encoded, monotonic expiry time or inf, its _entry_size)
_Entry = tuple[object, float, int]


class MemoryCache(Cache):
    """A bounded in-memory cache: LRU eviction past ``max_entries`` entries or
    ``max_bytes`` bytes, TTL per entry.

    ``get`` is O(1) (a dict lookup, an expiry check, an LRU touch). Scalars are held as
    they are (they are immutable); lists and dicts are held encoded and decoded on every
    ``get``, so mutating a value after ``set`` or after ``get`` never changes the cache, and
    the accepted types are exactly Redis's (see the codec). Expired entries are dropped when
    touched, when evicted as least recently used, and by ``stats``/``purge_expired``.

    An entry's size is the key's length plus the value's (the length of a str or bytes or
    of a list's or dict's JSON text; 8 for other scalars, more for an int past 64 bits): an
    approximation of its payload, computed once per write. Every write evicts least
    recently used entries until both bounds hold; a single entry larger than ``max_bytes``
    is refused with ``ValueError`` and changes nothing. ``nbytes`` is the running total.

    Use from one event loop (it is not thread-safe). ``namespace`` is recorded for
    reporting only: each instance is its own namespace, and ``clear`` empties it.
    """

    def __init__(
        self,
        namespace: str = "nethical:",
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        default_ttl: float = DEFAULT_TTL_S,
    ) -> None:
        if type(max_entries) is not int or max_entries < 1:
            raise ValueError(f"max_entries must be an int >= 1, got {max_entries!r}")
        if type(max_bytes) is not int or max_bytes < 1:
            raise ValueError(f"max_bytes must be an int >= 1, got {max_bytes!r}")
        self.namespace = namespace
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._nbytes = 0
        self.default_ttl = check_ttl(default_ttl, "default_ttl")
        self._data: OrderedDict[str, _Entry] = OrderedDict()
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    @property
    def backend(self) -> str:
        return "memory"

    @property
    def nbytes(self) -> int:
        """The summed sizes of the entries held (expired ones not yet dropped
        included); never above ``max_bytes``."""
        return self._nbytes

    @staticmethod
    def _entry_size(key: str, stored: object) -> int:
        """The bytes an entry counts toward ``max_bytes`` (O(1)): ``len(key)`` plus the
        length of a str or bytes value or of a list's or dict's JSON text, 8 for a float,
        bool or None, and the byte length of an int (at least 8)."""
        if isinstance(stored, _Encoded):
            return len(key) + len(stored.text)
        if isinstance(stored, str | bytes):
            return len(key) + len(stored)
        if isinstance(stored, int):  # a bool too: 1 bit, so 8
            return len(key) + max(_SCALAR_SIZE, (stored.bit_length() + 7) // 8)
        return len(key) + _SCALAR_SIZE

    def _sized(self, key: str, stored: object) -> int:
        """The entry's size, or ``ValueError`` when the entry alone exceeds ``max_bytes``."""
        size = self._entry_size(key, stored)
        if size > self.max_bytes:
            raise ValueError(
                f"cache value: entry {key[:64]!r} counts {size} bytes, more than the memory "
                f"cache's max_bytes ({self.max_bytes})"
            )
        return size

    def _drop(self, key: str) -> None:
        """Remove the entry at ``key`` (which must be held) and its bytes."""
        self._nbytes -= self._data.pop(key)[2]

    # -- synchronous core (also used by the failover cache) ---------------------------------

    def _get(self, key: str, default: Any) -> Any:
        try:
            entry = self._data.get(key)
        except TypeError:
            entry = None
        if entry is None:
            check_key(key)
            self._misses += 1
            return default
        stored, expires, _ = entry
        if expires <= monotonic():
            self._drop(key)
            self._misses += 1
            return default
        self._data.move_to_end(key)
        self._hits += 1
        if type(stored) is _Encoded:
            return container_from_json(stored.text)
        return stored

    def _ttl(self, ttl: float | None) -> float:
        return self.default_ttl if ttl is None else check_ttl(ttl)

    @staticmethod
    def _prepare(value: Any) -> object:
        kind = type(value)
        if kind in _IMMUTABLE:
            if kind is int and value.bit_length() > 64:
                encode_value(value)  # ValueError past the digits Python writes, as Redis
            return value
        if kind is list or kind is dict:
            return _Encoded(container_to_json(value))
        encode_value(value)  # str: refuses lone surrogates; others: ValueError
        return value

    def _put(self, key: str, stored: object, expires: float, size: int) -> None:
        """Store an entry of ``size`` bytes (at most ``max_bytes``), then evict least
        recently used entries until both bounds hold (never this one: it fits alone)."""
        data = self._data
        old = data.get(key)
        if old is not None:
            self._nbytes -= old[2]
        data[key] = (stored, expires, size)
        data.move_to_end(key)
        self._nbytes += size
        while len(data) > self.max_entries or self._nbytes > self.max_bytes:
            self._nbytes -= data.popitem(last=False)[1][2]
            self._evictions += 1

    def _set(self, key: str, value: Any, ttl: float | None) -> None:
        check_key(key)
        seconds = self._ttl(ttl)
        stored = self._prepare(value)
        size = self._sized(key, stored)
        self._put(key, stored, monotonic() + seconds if seconds else _NEVER, size)

    def _set_many(self, mapping: Mapping[str, Any], ttl: float | None) -> None:
        seconds = self._ttl(ttl)
        prepared = [(check_key(k), self._prepare(v)) for k, v in mapping.items()]
        sized = [(key, stored, self._sized(key, stored)) for key, stored in prepared]
        expires = monotonic() + seconds if seconds else _NEVER
        for key, stored, size in sized:
            self._put(key, stored, expires, size)

    def _live(self, key: str) -> _Entry | None:
        """The unexpired entry at ``key`` (dropping an expired one); no stats, no LRU touch."""
        entry = self._data.get(key)
        if entry is not None and entry[1] <= monotonic():
            self._drop(key)
            return None
        return entry

    def _delete(self, key: str) -> bool:
        check_key(key)
        entry = self._live(key)
        if entry is None:
            return False
        self._drop(key)
        return True

    def _exists(self, key: str) -> bool:
        return self._live(check_key(key)) is not None

    def _increment(self, key: str, amount: int) -> int:
        check_key(key)
        check_amount(amount)
        entry = self._live(key)
        if entry is None:
            current, expires = 0, _NEVER
        else:
            stored, expires, _ = entry
            if type(stored) is not int:
                raise ValueError(f"cannot increment {key!r}: it holds a {type(stored).__name__}")
            current = stored
            if not INT64_MIN <= current <= INT64_MAX:
                raise ValueError(f"cannot increment {key!r}: value is outside 64-bit range")
        result = current + amount
        if not INT64_MIN <= result <= INT64_MAX:
            raise ValueError(f"cannot increment {key!r}: result would overflow 64 bits")
        self._put(key, result, expires, self._sized(key, result))
        return result

    def _get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        get = self._get
        for key in check_keys(keys):
            value = get(key, MISSING)
            if value is not MISSING:
                found[key] = value
        return found

    def _clear(self) -> int:
        self.purge_expired()
        removed = len(self._data)
        self._data.clear()
        self._nbytes = 0
        return removed

    def purge_expired(self) -> int:
        """Drop every expired entry (O(entries)); returns how many were dropped."""
        now = monotonic()
        expired = [k for k, (_, exp, _) in self._data.items() if exp <= now]
        for key in expired:
            self._drop(key)
        return len(expired)

    def _peek_encoded(self, key: str) -> tuple[bytes, float] | None:
        """The encoded value at ``key`` and its remaining TTL in seconds (0: none), without
        counting a lookup or touching the LRU order; None when absent or expired."""
        entry = self._live(key)
        if entry is None:
            return None
        stored, expires, _ = entry
        if type(stored) is _Encoded:
            data = b"j" + stored.text.encode("utf-8")
        else:
            data = encode_value(stored)
        remaining = 0.0 if expires == _NEVER else max(expires - monotonic(), 0.001)
        return data, remaining

    def _keys(self) -> list[str]:
        return list(self._data)

    def _stats(self, type_name: str = "memory") -> CacheStats:
        self.purge_expired()
        return CacheStats(
            type=type_name,
            hits=self._hits,
            misses=self._misses,
            hit_rate=hit_rate(self._hits, self._misses),
            errors=0,
            size=len(self._data),
            evictions=self._evictions,
        )

    def __len__(self) -> int:
        """Entries held, including expired ones not yet dropped."""
        return len(self._data)

    # -- the async Cache API -----------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        # _get inlined: this is the hot path (one call less per lookup).
        try:
            entry = self._data.get(key)
        except TypeError:
            entry = None
        if entry is not None:
            stored, expires, _ = entry
            if expires > monotonic():
                self._data.move_to_end(key)
                self._hits += 1
                if type(stored) is _Encoded:
                    return container_from_json(stored.text)
                return stored
        return self._get(key, default)  # a miss or an expired entry: the slow path

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        self._set(key, value, ttl)

    async def delete(self, key: str) -> bool:
        return self._delete(key)

    async def exists(self, key: str) -> bool:
        return self._exists(key)

    async def increment(self, key: str, amount: int = 1) -> int:
        return self._increment(key, amount)

    async def get_multiple(self, keys: Iterable[str]) -> dict[str, Any]:
        return self._get_many(keys)

    async def set_multiple(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        self._set_many(mapping, ttl)

    async def clear(self) -> int:
        return self._clear()

    async def stats(self) -> CacheStats:
        return self._stats()

    async def close(self) -> None:
        self._data.clear()
        self._nbytes = 0
