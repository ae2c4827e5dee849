"""Review tests of the region cache: values and TTLs that one backend took and the other
refused (or that hung both), and the namespaces of regions.

Redis is the real server at 127.0.0.1:6379 (database 9, a fresh namespace per test,
removed afterwards); an outage is a :class:`tcpproxy.CuttableProxy` in front of it. Without
Redis the Redis cases skip, or fail when ``CI`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from services import REDIS_URL, redis_client, redis_proxy, require
from tcpproxy import CuttableProxy

from nethical_grpc.storage.cache import (
    MISSING,
    Cache,
    CacheStats,
    FailoverCache,
    MemoryCache,
    RedisCache,
    decode_value,
    encode_value,
    open_cache,
    region_namespace,
)
from nethical_grpc.storage.cache.base import MAX_TTL_S
from nethical_grpc.storage.cache.codec import MAX_DEPTH

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


async def _in_memory_mode(proxy: CuttableProxy, namespace: str) -> FailoverCache:
    """A failover cache through ``proxy`` that wrote a key, then lost Redis: in memory
    mode now, quick to probe for Redis again."""
    cache, _ = await open_cache(
        f"redis://127.0.0.1:{proxy.port}/0",
        namespace,
        socket_timeout=0.25,
        probe_initial=0.02,
        probe_max=0.05,
    )
    assert isinstance(cache, FailoverCache)
    await cache.set("before", 1)
    proxy.cut()
    assert await cache.get("before", MISSING) is MISSING
    assert cache.backend == "memory"
    return cache


async def test_an_unstorable_outage_write_does_not_keep_the_cache_in_memory_mode(
    proxy: CuttableProxy, raw: aioredis.Redis, namespace: str
) -> None:
    cache = await _in_memory_mode(proxy, namespace)
    try:
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


# -- round 36: keys Redis cannot be sent, values nested too deeply, keys of another
# Redis type, byte strings as key lists, entries an update cannot read

SURROGATE_KEYS = ["\ud800", "agent-\udfff", "profile:é\ud83d"]


async def _on_redis(kind: str, namespace: str) -> Cache:
    """A cache on the real Redis: ``RedisCache`` itself, or ``open_cache``'s failover."""
    if kind == "redis":
        return RedisCache.from_url(REDIS_URL, namespace=namespace)
    cache, _ = await open_cache(REDIS_URL, namespace)
    return cache


def _nested(depth: int, leaf: Any = 1) -> Any:
    """``leaf`` inside ``depth`` lists (``depth`` 0: the leaf itself)."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


# -- keys that UTF-8 cannot encode --------------------------------------------------------


@pytest.mark.parametrize("key", SURROGATE_KEYS)
async def test_a_key_utf8_cannot_encode_is_a_clear_value_error_on_every_backend(
    cache: Cache, key: str
) -> None:
    """The memory cache took such a key; Redis raised UnicodeEncodeError from inside
    redis-py (after the call had taken a connection)."""
    calls = [
        cache.set(key, 1),
        cache.get(key),
        cache.exists(key),
        cache.delete(key),
        cache.increment(key),
        cache.set_multiple({"ok": 1, key: 2}),
        cache.get_multiple(["ok", key]),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="cache key must be valid Unicode"):
            await call
    assert await cache.get("ok", MISSING) is MISSING  # set_multiple wrote nothing
    assert cache.backend in ("memory", "redis")
    if isinstance(cache, FailoverCache):
        assert cache.healthy  # a bad key is no outage


async def test_an_outage_write_to_a_surrogate_key_does_not_strand_memory_mode(
    proxy: CuttableProxy, raw: aioredis.Redis, namespace: str
) -> None:
    """The memory tier took the key, and every write-back attempt then failed on it, so
    the cache stayed in memory mode for good and no outage write reached Redis."""
    cache = await _in_memory_mode(proxy, namespace)
    try:
        with contextlib.suppress(ValueError):
            await cache.set("\ud800", "lone surrogate")
        await cache.set("during", "outage")
        proxy.restore()
        async with asyncio.timeout(10):  # a hang guard: recovery takes a few probes
            await cache.wait_recovered()
        assert await raw.get(namespace + "during") == b"soutage"
        assert (await cache.stats()).pending_writes == 0
    finally:
        await cache.close()


# -- nesting depth ------------------------------------------------------------------------


@given(depth=st.integers(min_value=1, max_value=3 * MAX_DEPTH), as_dict=st.booleans())
def test_values_are_stored_exactly_up_to_the_depth_limit(depth: int, as_dict: bool) -> None:
    """Property: a value nested ``depth`` deep is encoded iff ``depth <= MAX_DEPTH``, and
    what is encoded decodes to the same value (from a stack deeper than the caller's)."""
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value} if as_dict else [value]
    if depth > MAX_DEPTH:
        with pytest.raises(ValueError, match=f"nested more than {MAX_DEPTH} deep"):
            encode_value(value)
        return

    def deep(frames: int) -> Any:
        return decode_value(encode_value(value)) if frames == 0 else deep(frames - 1)

    assert deep(300) == value


async def test_a_value_too_deep_to_decode_is_refused_when_written(cache: Cache) -> None:
    """A list 990 deep was stored by every backend and then every get of it raised
    RecursionError (json's decoder shares the interpreter's recursion limit)."""
    for depth in (MAX_DEPTH + 1, 990):
        with pytest.raises(ValueError, match="nested more than"):
            await cache.set("deep", _nested(depth))
        with pytest.raises(ValueError, match="nested more than"):
            await cache.set_multiple({"ok": 1, "deep": {"d": _nested(depth - 1)}})
    assert await cache.get_multiple(["deep", "ok"]) == {}
    await cache.set("deepest", _nested(MAX_DEPTH - 2, {"x": [1.5]}))
    assert await cache.get("deepest") == _nested(MAX_DEPTH - 2, {"x": [1.5]})


async def test_depth_counts_through_shared_containers(cache: Cache) -> None:
    """A 59-deep piece inside another 59 deep, in a list, is 119 deep, however shared."""
    inner = _nested(59, "x")
    outer = _nested(59, inner)
    with pytest.raises(ValueError, match="nested more than"):
        await cache.set("shared", [inner, outer])
    await cache.set("wide", [inner, inner, [inner]])  # shared, yet 61 deep: stored
    assert await cache.get("wide") == [inner, inner, [inner]]


async def test_a_foreign_entry_too_deep_to_decode_is_a_value_error(
    raw: aioredis.Redis, namespace: str
) -> None:
    await raw.set(namespace + "deep", b"j" + b"[" * 5000 + b"]" * 5000)
    cache = RedisCache.from_url(REDIS_URL, namespace=namespace)
    try:
        with pytest.raises(ValueError, match="nested too deeply"):
            await cache.get("deep")
        with pytest.raises(ValueError, match="nested too deeply"):
            await cache.get_multiple(["deep"])
    finally:
        await cache.close()


# -- a key of another Redis type in the namespace -----------------------------------------


@pytest.mark.parametrize("kind", ["redis", "failover"])
async def test_a_key_of_another_redis_type_reads_as_a_clear_value_error(
    raw: aioredis.Redis, namespace: str, kind: str
) -> None:
    """GET of a list raised redis-py's untyped ResponseError (WRONGTYPE …) through the
    cache's API; a value error names the key, as for any entry this cache did not write."""
    await raw.rpush(namespace + "list", "a")
    await raw.hset(namespace + "hash", "f", "v")
    cache = await _on_redis(kind, namespace)
    try:
        for key in ("list", "hash"):
            with pytest.raises(ValueError, match=f"'{key}' is a Redis key of another type"):
                await cache.get(key)
            with pytest.raises(ValueError, match=f"cannot increment '{key}'"):
                await cache.increment(key)
        assert await cache.get_multiple(["list", "hash"]) == {}  # MGET: nil for them
        assert cache.backend == "redis"  # no outage
        await cache.set("list", [1, 2])  # SET replaces a key of any type, as memory does
        assert await cache.get("list") == [1, 2]
    finally:
        await cache.close()


# -- key lists ----------------------------------------------------------------------------


async def test_bytes_for_a_key_list_is_refused_as_a_single_string(
    proxy: CuttableProxy, raw: aioredis.Redis, namespace: str
) -> None:
    """The failover cache turned ``b"ab"`` into ``[97, 98]`` first, so the error named
    the int 97 instead of the slip."""
    cache, _ = await open_cache(
        f"redis://127.0.0.1:{proxy.port}/0", namespace, socket_timeout=0.25, probe_max=5
    )
    assert isinstance(cache, FailoverCache)
    try:
        with pytest.raises(ValueError, match="not a single string"):
            await cache.get_multiple(b"ab")  # type: ignore[arg-type]
        proxy.cut()
        await cache.get("k")
        assert cache.backend == "memory"
        with pytest.raises(ValueError, match="not a single string"):
            await cache.get_multiple(b"ab")  # type: ignore[arg-type]
    finally:
        await cache.close()


# -- an entry another writer left under a key an update merges ------------------------------


@pytest.mark.parametrize("kind", ["redis", "failover"])
async def test_an_update_replaces_an_entry_it_cannot_read(
    raw: aioredis.Redis, namespace: str, kind: str
) -> None:
    """A string this cache did not write under a key of an update_multiple (a region's
    risk profiles, merged in chunks of 256 agents) failed that update at every try: the
    chunk's profiles never reached Redis again. It counts as missing and is replaced."""
    await raw.set(namespace + "foreign", b"\x00not this cache's")
    cache = await _on_redis(kind, namespace)
    try:
        await cache.set("mine", 1)
        seen: list[dict[str, Any]] = []

        def update(found: dict[str, Any]) -> dict[str, Any]:
            seen.append(dict(found))
            return {k: found.get(k, 0) + 1 for k in ("foreign", "mine")}

        written = await cache.on_primary(lambda c: c.update_multiple(["foreign", "mine"], update))
        assert seen[-1] == {"mine": 1}
        assert written == {"foreign": 1, "mine": 2}
        assert await cache.get_multiple(["foreign", "mine"]) == {"foreign": 1, "mine": 2}
    finally:
        await cache.close()
