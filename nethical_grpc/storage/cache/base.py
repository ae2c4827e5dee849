"""What every cache backend shares: the async API, statistics, argument checks and errors."""

from __future__ import annotations

import abc
import enum
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final, Self, TypeVar

T = TypeVar("T")

__all__ = [
    "DEFAULT_TTL_S",
    "MAX_TTL_S",
    "MISSING",
    "Cache",
    "CacheConflictError",
    "CacheStats",
    "CacheUnavailableError",
    "Missing",
    "check_amount",
    "check_key",
    "check_keys",
    "check_ttl",
    "check_within",
    "region_namespace",
]

DEFAULT_TTL_S: Final = 300.0
"""The TTL ``set`` uses when none is given (the guide's ``default_ttl=300``)."""

MAX_TTL_S: Final = 1e12
"""The longest TTL, in seconds (about 31,700 years): Redis refuses an expiry time near
2**63 milliseconds, so a longer one would be taken by the memory cache and refused by Redis
(use ``0`` for no expiry)."""


class Missing(enum.Enum):
    """Type of :data:`MISSING`; falsy, so ``if not cache.get(k, MISSING)`` still reads well."""

    MISSING = enum.auto()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = Missing.MISSING
"""Pass as ``default`` to :meth:`Cache.get` to tell a miss from a stored ``None``."""


class CacheUnavailableError(ConnectionError):
    """The cache server could not be reached or did not answer in time.

    The message never contains a password. A plain :class:`RedisCache` raises it; the
    failover cache catches it and answers from memory instead.
    """


class CacheConflictError(RuntimeError):
    """An atomic :meth:`Cache.update_multiple` found its keys changed by another writer on
    every attempt; nothing of it was written."""


def region_namespace(region: str) -> str:
    """The key namespace for one region's cache: ``"nethical:{region}:"``.

    ``ValueError`` when ``region`` is empty or contains whitespace or ``:`` (the separator:
    region ``a``'s namespace would hold every key of region ``a:b``).
    """
    if not region or any(c.isspace() or c == ":" for c in region):
        raise ValueError(f"region must be non-empty with no whitespace or ':', got {region!r}")
    return f"nethical:{region}:"


def check_key(key: object) -> str:
    """``key`` if it is a non-empty ``str`` that UTF-8 can encode (no lone surrogates,
    which Redis cannot be sent); ``ValueError`` otherwise."""
    if type(key) is not str or not key:
        raise ValueError(f"cache key must be a non-empty str, got {key!r}")
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(
                f"cache key must be valid Unicode, got {key!r} ({err.reason})"
            ) from None
    return key


def check_keys(keys: Iterable[str]) -> list[str]:
    """``keys`` as a list without duplicates (first occurrence kept), each checked by
    :func:`check_key`; ``ValueError`` for a bare ``str`` (a common slip for ``[key]``)."""
    if isinstance(keys, str | bytes):
        raise ValueError("keys must be an iterable of str, not a single string")
    return list(dict.fromkeys(check_key(k) for k in keys))


def check_within(values: Mapping[str, Any], keys: Iterable[str]) -> None:
    """``ValueError`` unless every key of ``values`` is one of ``keys`` (what an atomic
    update read, and so the only keys it may write)."""
    extra = set(values) - set(keys)
    if extra:
        raise ValueError(f"update returned keys it was not given: {sorted(extra)[:5]}")


def check_amount(amount: object) -> int:
    """``amount`` if it is an int (not bool) in the signed 64-bit range; ``ValueError``
    otherwise."""
    if type(amount) is not int or not -(2**63) <= amount < 2**63:
        raise ValueError(f"increment amount must be a 64-bit int, got {amount!r}")
    return amount


def check_ttl(ttl: object, name: str = "ttl") -> float:
    """``ttl`` in seconds as a float: 0 means no expiry; ``ValueError`` if negative, above
    :data:`MAX_TTL_S` or not a number."""
    if type(ttl) not in (int, float):
        raise ValueError(f"{name} must be a number of seconds, got {ttl!r}")
    # compared before float(), which overflows on a huge int; also refuses NaN and infinity
    if not 0 <= ttl <= MAX_TTL_S:  # type: ignore[operator]
        raise ValueError(
            f"{name} must be a number of seconds from 0 to {MAX_TTL_S:.0e}, got {ttl!r}"
        )
    return float(ttl)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of one cache's counters.

    ``type`` is the backend answering now (``"redis"`` or ``"memory"``); ``hits`` and
    ``misses`` count keys looked up by ``get``/``get_multiple``; ``hit_rate`` is
    ``100 * hits / (hits + misses)`` in percent (0 before any lookup); ``errors`` counts
    failed server operations (each one answered from memory by the failover cache);
    ``fallbacks`` and ``recoveries`` count switches to memory and back to Redis;
    ``pending_writes`` is how many keys written during an outage still wait to be written
    back; ``size`` is the number of entries in this cache's namespace (memory: held
    entries, expired ones purged first); ``last_error`` is the latest server error, if any.
    """

    type: str
    hits: int
    misses: int
    hit_rate: float
    errors: int
    size: int
    evictions: int = 0
    fallbacks: int = 0
    recoveries: int = 0
    pending_writes: int = 0
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def hit_rate(hits: int, misses: int) -> float:
    """Hits as a percentage of lookups (0.0 before any lookup)."""
    total = hits + misses
    return 100.0 * hits / total if total else 0.0


class Cache(abc.ABC):
    """A key/value cache with per-entry TTL, asyncio API.

    Keys are non-empty ``str``; values are str, int, float, bool, None, bytes, or lists and
    dicts of JSON types, and come back with the type they were stored with (see
    :mod:`~nethical_grpc.storage.cache.codec`). ``ttl`` is in seconds (fractions allowed):
    ``None`` means the cache's ``default_ttl``, ``0`` means no expiry, negative or above
    :data:`MAX_TTL_S` raises ``ValueError``. Every key lives under the cache's namespace,
    and :meth:`clear` removes only that namespace.
    """

    namespace: str
    default_ttl: float

    @property
    @abc.abstractmethod
    def backend(self) -> str:
        """The backend answering now: ``"redis"`` or ``"memory"``."""

    @abc.abstractmethod
    async def get(self, key: str, default: Any = None) -> Any:
        """The value stored at ``key``, or ``default`` when absent or expired.

        Pass ``default=MISSING`` to tell a miss from a stored ``None``.
        """

    @abc.abstractmethod
    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` at ``key`` for ``ttl`` seconds (replacing any value and TTL)."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove ``key``; True when it was present."""

    @abc.abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether ``key`` holds an unexpired value (does not count as a hit or miss)."""

    @abc.abstractmethod
    async def increment(self, key: str, amount: int = 1) -> int:
        """Atomically add ``amount`` to the integer at ``key`` and return the new value.

        A missing key counts from 0 and is created with no expiry; an existing key keeps
        its TTL. ``ValueError`` when the stored value is not an int, or when ``amount`` or
        the result is outside the signed 64-bit range.
        """

    @abc.abstractmethod
    async def get_multiple(self, keys: Iterable[str]) -> dict[str, Any]:
        """The stored values of ``keys`` (one server round trip); missing keys are absent."""

    @abc.abstractmethod
    async def set_multiple(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        """Store every item of ``mapping`` with the same ``ttl`` (one server round trip).

        Every value is encoded before anything is written, so a bad value writes nothing.
        """

    @abc.abstractmethod
    async def clear(self) -> int:
        """Remove every entry in this cache's namespace; returns how many were removed."""

    @abc.abstractmethod
    async def stats(self) -> CacheStats:
        """Counters and size now (see :class:`CacheStats`)."""

    async def get_stats(self) -> dict[str, Any]:
        """:meth:`stats` as a dict (the guide's ``get_stats()``; ``hit_rate`` in percent)."""
        return (await self.stats()).as_dict()

    async def update_multiple(
        self,
        keys: Iterable[str],
        update: Callable[[dict[str, Any]], Mapping[str, Any]],
        ttl: float | None = None,
    ) -> dict[str, Any]:
        """Read ``keys``, and store what ``update(found)`` returns (values for some of
        ``keys``), with no other write to those keys in between; returns what it stored.

        ``update`` gets the stored values of ``keys`` (missing keys absent) and may be
        called more than once (after another writer changed a key): it must depend only on
        what it is given. Here (a cache no other process shares, whose calls do not yield
        to other tasks) it is a read and a write; :class:`RedisCache` watches the keys and
        retries (``CacheConflictError`` when they change on every attempt)."""
        wanted = check_keys(keys)
        values = dict(update(await self.get_multiple(wanted)))
        check_within(values, wanted)
        await self.set_multiple(values, ttl)
        return values

    async def on_primary(self, call: Callable[[Cache], Awaitable[T]]) -> T:
        """``call(cache)`` on the backend that shares data with other processes, never on
        a stand-in kept while it is away (the failover cache's memory tier, whose writes
        are written back over Redis when it returns): for read-merge-write updates that
        must not overwrite what others wrote meanwhile. ``CacheUnavailableError`` while
        that backend is away. A plain cache is its own primary."""
        return await call(self)

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and background tasks; the cache must not be used after."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
