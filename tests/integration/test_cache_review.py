"""Review tests of the region cache: values and TTLs that one backend took and the other
refused (or that hung both), and the namespaces of regions.

Redis is the real server at 127.0.0.1:6379 (database 9, a fresh namespace per test,
removed afterwards); an outage is a :class:`tcpproxy.CuttableProxy` in front of it. Without
Redis the Redis cases skip, or fail when ``CI`` is set.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from services import REDIS_URL, redis_client, redis_proxy, require
from tcpproxy import CuttableProxy

from nethical_grpc.storage.cache import (
    MISSING,
    Cache,
    CacheStats,
    FailoverCache,
    MemoryCache,
    RedisCache,
    open_cache,
    region_namespace,
)
from nethical_grpc.storage.cache.base import MAX_TTL_S

BIG_INT = 10**5000  # more digits than Python turns into decimal text by default


@pytest.fixture
def namespace() -> str:
    return f"test:cache-review:{uuid.uuid4().hex[:12]}:"


def _require_redis() -> None:
    require("Redis", lambda: redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping())


@pytest.fixture
async def raw(namespace: str) -> AsyncIterator[aioredis.Redis]:
    _require_redis()
    async with redis_client(namespace) as client:
        yield client


@pytest.fixture(params=["memory", "redis", "failover"])
async def cache(
    request: pytest.FixtureRequest, namespace: str, raw: aioredis.Redis
) -> AsyncIterator[Cache]:
    opened: Cache
    if request.param == "memory":
        opened = MemoryCache(namespace)
    elif request.param == "redis":
        opened = RedisCache.from_url(REDIS_URL, namespace=namespace)
    else:
        opened, choice = await open_cache(REDIS_URL, namespace)
        assert choice.backend == "redis"
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def proxy() -> AsyncIterator[CuttableProxy]:
    async with redis_proxy() as p:
        yield p


# -- values every backend refuses alike ----------------------------------------------------


@pytest.mark.timeout(20, method="signal")
async def test_a_circular_container_is_refused_not_walked_forever(cache: Cache) -> None:
    looped: list[Any] = [1]
    looped.append(looped)
    nested: dict[str, Any] = {"a": {"b": []}}
    nested["a"]["b"].append(nested)
    for value in (looped, nested):
        with pytest.raises(ValueError, match=r"cache value.*circular"):
            await cache.set("loop", value)
        with pytest.raises(ValueError, match=r"cache value.*circular"):
            await cache.set_multiple({"ok": 1, "loop": value})
    assert await cache.get_multiple(["loop", "ok"]) == {}

    # the same list twice (not inside itself) is a value like any other
    shared = [1, {"x": "y"}]
    await cache.set("shared", {"p": shared, "q": [shared, shared]})
    assert await cache.get("shared") == {"p": shared, "q": [shared, shared]}


async def test_an_int_too_long_for_decimal_text_is_refused_by_every_backend(
    cache: Cache,
) -> None:
    with pytest.raises(ValueError, match="cache value"):
        await cache.set("big", BIG_INT)
    with pytest.raises(ValueError, match="cache value"):
        await cache.set_multiple({"ok": 1, "big": -BIG_INT})
    with pytest.raises(ValueError, match="cache value"):
        await cache.set("nested", {"n": [BIG_INT]})
    assert await cache.get_multiple(["big", "ok", "nested"]) == {}
    # large ints that decimal text holds are stored (as before)
    await cache.set("large", 2**200)
    assert await cache.get("large") == 2**200


async def test_an_unstorable_outage_write_does_not_keep_the_cache_in_memory_mode(
    proxy: CuttableProxy, raw: aioredis.Redis, namespace: str
) -> None:
    cache, _ = await open_cache(
        f"redis://127.0.0.1:{proxy.port}/0",
        namespace,
        socket_timeout=0.25,
        probe_initial=0.02,
        probe_max=0.05,
    )
    assert isinstance(cache, FailoverCache)
    try:
        await cache.set("before", 1)
        proxy.cut()
        assert await cache.get("before", MISSING) is MISSING  # memory mode now
        assert cache.backend == "memory"
        with pytest.raises(ValueError, match="cache value"):
            await cache.set("big", BIG_INT)
        await cache.set("during", "outage")
        proxy.restore()
        async with asyncio.timeout(10):  # a hang guard: recovery takes a few probes
            await cache.wait_recovered()
        assert await raw.get(namespace + "during") == b"soutage"
        assert await raw.get(namespace + "big") is None
        stats: CacheStats = await cache.stats()
        assert (stats.type, stats.pending_writes) == ("redis", 0)
    finally:
        await cache.close()


# -- TTLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [MAX_TTL_S * 2, 1e16, 1e300, 2**62, 10**400])
async def test_a_ttl_beyond_the_limit_is_a_value_error_on_every_backend(
    cache: Cache, ttl: float
) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await cache.set("k", 1, ttl=ttl)
    with pytest.raises(ValueError, match="ttl"):
        await cache.set_multiple({"k": 1}, ttl=ttl)
    assert not await cache.exists("k")


async def test_the_longest_ttl_is_kept_by_every_backend(
    cache: Cache, raw: aioredis.Redis, namespace: str
) -> None:
    await cache.set("k", "v", ttl=MAX_TTL_S)
    await cache.set_multiple({"m": 2}, ttl=int(MAX_TTL_S))
    assert await cache.get_multiple(["k", "m"]) == {"k": "v", "m": 2}
    if cache.backend == "redis":
        assert await raw.pttl(namespace + "k") > (MAX_TTL_S - 60) * 1000


def test_a_default_ttl_beyond_the_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="default_ttl"):
        MemoryCache(default_ttl=1e16)
    with pytest.raises(ValueError, match="default_ttl"):
        RedisCache(default_ttl=1e16)


# -- namespaces ---------------------------------------------------------------------------


def test_region_namespaces_never_hold_one_another() -> None:
    """``nethical:a:`` would hold every key of region ``a:b`` (``nethical:a:b:…``), and its
    ``clear`` would remove them."""
    assert region_namespace("us-east-1") == "nethical:us-east-1:"
    with pytest.raises(ValueError, match="region"):
        region_namespace("us:east")
