"""The region cache: Redis with an in-memory fallback, or memory alone (asyncio API).

::

    cache, choice = await open_cache(args.cache_url, region_namespace("us-east-1"))
    log.info("cache: %s", choice.describe())      # "redis" or "redis: unreachable … → memory"
    await cache.set("risk_profile:agent-7", {"score": 0.75}, ttl=600)
    profile = await cache.get("risk_profile:agent-7")          # None on a miss
    if await cache.get("flag", MISSING) is MISSING: ...        # tell a miss from None
    await cache.increment("request_count")
    await cache.set_multiple({"m1": 10.5, "m2": 20.3})
    metrics = await cache.get_multiple(["m1", "m2", "m3"])    # {"m1": 10.5, "m2": 20.3}
    stats = await cache.stats()                                # type, hits, hit_rate, …
    await cache.close()

The API is asyncio only (the region node runs on ``grpc.aio``); the memory backend
never awaits anything, so it costs no more than a dict lookup. :class:`RedisCache` and
:class:`FailoverCache` need redis-py (the ``redis`` extra) and are imported lazily.
"""

from typing import TYPE_CHECKING, Any

from nethical_grpc.storage.cache.base import (
    DEFAULT_TTL_S,
    MISSING,
    Cache,
    CacheConflictError,
    CacheStats,
    CacheUnavailableError,
    Missing,
    region_namespace,
)
from nethical_grpc.storage.cache.codec import decode_value, encode_value
from nethical_grpc.storage.cache.factory import open_cache
from nethical_grpc.storage.cache.memory import DEFAULT_MAX_ENTRIES, MemoryCache

if TYPE_CHECKING:
    from nethical_grpc.storage.cache.failover import FailoverCache
    from nethical_grpc.storage.cache.redis_cache import RedisCache

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_TTL_S",
    "MISSING",
    "Cache",
    "CacheConflictError",
    "CacheStats",
    "CacheUnavailableError",
    "FailoverCache",
    "MemoryCache",
    "Missing",
    "RedisCache",
    "decode_value",
    "encode_value",
    "open_cache",
    "region_namespace",
]


def __getattr__(name: str) -> Any:
    if name == "RedisCache":
        from nethical_grpc.storage.cache.redis_cache import RedisCache

        return RedisCache
    if name == "FailoverCache":
        from nethical_grpc.storage.cache.failover import FailoverCache

        return FailoverCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
