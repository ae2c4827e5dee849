"""The embedded cache alone: LRU bound, TTL, isolation from caller mutation, memory:// URLs.

The shared get/set/increment contract is run against memory *and* Redis in
tests/integration/test_storage_cache.py; this file holds what only the memory cache has.
"""

from __future__ import annotations

import asyncio

import pytest

from nethical_grpc.storage.cache import MISSING, MemoryCache, open_cache


async def test_least_recently_used_entry_is_evicted_past_max_entries() -> None:
    cache = MemoryCache(max_entries=3)
    await cache.set_multiple({"a": 1, "b": 2, "c": 3})
    assert await cache.get("a") == 1  # a is now the most recently used
    await cache.set("d", 4)
    assert await cache.get_multiple(["a", "b", "c", "d"]) == {"a": 1, "c": 3, "d": 4}
    stats = await cache.stats()
    assert (stats.size, stats.evictions) == (3, 1)


async def test_overwriting_a_key_does_not_evict() -> None:
    cache = MemoryCache(max_entries=2)
    await cache.set("a", 1)
    await cache.set("b", 2)
    await cache.set("a", 10)
    assert await cache.get_multiple(["a", "b"]) == {"a": 10, "b": 2}
    assert (await cache.stats()).evictions == 0


async def test_held_containers_are_not_shared_with_the_caller() -> None:
    cache = MemoryCache()
    tags = ["a"]
    profile = {"score": 0.75, "tags": tags}
    await cache.set("p", profile)
    tags.append("mutated")
    first = await cache.get("p")
    first["score"] = 0.0
    assert await cache.get("p") == {"score": 0.75, "tags": ["a"]}


async def test_stats_purge_expired_entries_and_count_hits_and_misses() -> None:
    cache = MemoryCache(default_ttl=0.05)
    await cache.set("short", 1)
    await cache.set("long", 2, ttl=0)
    await cache.get("long")
    await cache.get("nope")
    await asyncio.sleep(0.1)
    stats = await cache.stats()
    assert stats.type == "memory"
    assert (stats.size, stats.hits, stats.misses, stats.hit_rate) == (1, 1, 1, 50.0)
    assert await cache.get_stats() == stats.as_dict()


async def test_increment_keeps_the_ttl_of_an_existing_counter() -> None:
    cache = MemoryCache()
    await cache.set("c", 5, ttl=0.05)
    assert await cache.increment("c") == 6
    await asyncio.sleep(0.1)
    assert await cache.get("c", MISSING) is MISSING


async def test_memory_url_opens_a_bounded_memory_cache() -> None:
    cache, choice = await open_cache("memory://?max_entries=2", "nethical:r1:")
    assert isinstance(cache, MemoryCache)
    assert (choice.backend, choice.reason, choice.describe()) == ("memory", "", "memory")
    await cache.set_multiple({"a": 1, "b": 2, "c": 3})
    assert len(cache) == 2


@pytest.mark.parametrize(
    "url", ["memory://?bogus=1", "memory://?max_entries=x", "memory://?max_entries=0"]
)
async def test_bad_memory_options_raise(url: str) -> None:
    with pytest.raises(ValueError):
        await open_cache(url, "nethical:r1:")


@pytest.mark.parametrize("url", ["http://localhost:6379", "memcached://x", "no-scheme"])
async def test_unknown_scheme_raises(url: str) -> None:
    with pytest.raises(ValueError, match="scheme"):
        await open_cache(url, "nethical:r1:")


def test_bad_construction_arguments_raise() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        MemoryCache(max_entries=0)
    with pytest.raises(ValueError, match="default_ttl"):
        MemoryCache(default_ttl=-1)
