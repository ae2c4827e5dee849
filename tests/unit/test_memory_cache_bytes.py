"""The memory cache's byte bound (``max_bytes``): LRU eviction by size, refusal of an entry
larger than the bound, exact accounting through every write and removal, memory:// URLs.

An entry's size is the key's length plus the value's: the length of a str or bytes, of a
list's or dict's compact JSON text, 8 for a float, bool, None or 64-bit int. ``size_of``
below restates that rule independently of the implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nethical_grpc.storage.cache import MISSING, MemoryCache, open_cache
from nethical_grpc.storage.cache.memory import DEFAULT_MAX_BYTES


def size_of(key: str, value: Any) -> int:
    if isinstance(value, str | bytes):
        return len(key) + len(value)
    if isinstance(value, list | dict):
        return len(key) + len(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
    return len(key) + 8


async def live_total(cache: MemoryCache) -> int:
    """The summed sizes of the unexpired entries, read through the public API."""
    found = await cache.get_multiple(cache._keys())
    return sum(size_of(k, v) for k, v in found.items())


def test_default_byte_bound_is_256_mib() -> None:
    cache = MemoryCache()
    assert cache.max_bytes == DEFAULT_MAX_BYTES == 256 * 1024 * 1024
    assert cache.nbytes == 0


async def test_byte_bound_evicts_least_recently_used_in_order() -> None:
    # each entry is 1 + 9 = 10 bytes; 35 bytes hold three of them
    cache = MemoryCache(max_bytes=35)
    await cache.set_multiple({"a": "a" * 9, "b": "b" * 9, "c": "c" * 9})
    assert cache.nbytes == 30
    assert await cache.get("a") == "a" * 9  # a is now the most recently used
    await cache.set("d", "d" * 9)
    assert await cache.get_multiple(["a", "b", "c", "d"]) == {
        "a": "a" * 9,
        "c": "c" * 9,
        "d": "d" * 9,
    }
    # a 21-byte entry needs two more evictions, least recently used first: c, then a
    await cache.set("e", b"e" * 20)
    assert await cache.get_multiple(["a", "c", "d", "e"]) == {"d": "d" * 9, "e": b"e" * 20}
    assert cache.nbytes == 31
    stats = await cache.stats()
    assert (stats.size, stats.evictions) == (2, 3)


async def test_many_large_values_stay_within_the_byte_bound() -> None:
    cache = MemoryCache(max_bytes=10_000)
    for i in range(200):
        await cache.set(f"k{i:03d}", "x" * 996)  # 4 + 996 = 1000 bytes each
    assert cache.nbytes == 10_000
    assert len(cache) == 10
    assert cache._keys() == [f"k{i:03d}" for i in range(190, 200)]
    assert (await cache.stats()).evictions == 190


@pytest.mark.parametrize(
    "value",
    ["x" * 100, b"x" * 100, list(range(40)), {"blob": "y" * 100}],
    ids=["str", "bytes", "list", "dict"],
)
async def test_an_entry_larger_than_max_bytes_is_refused_and_nothing_changes(
    value: Any,
) -> None:
    cache = MemoryCache(max_bytes=64)
    await cache.set_multiple({"a": 1, "v": "old"})
    before = (cache.nbytes, cache._keys(), (await cache.stats()).evictions)
    with pytest.raises(ValueError, match="max_bytes"):
        await cache.set("v", value)
    with pytest.raises(ValueError, match="max_bytes"):
        await cache.set_multiple({"b": 2, "v": value})  # b is not written either
    assert (cache.nbytes, cache._keys(), (await cache.stats()).evictions) == before
    assert await cache.get_multiple(["a", "b", "v"]) == {"a": 1, "v": "old"}


async def test_an_entry_exactly_max_bytes_fits_and_evicts_everything_else() -> None:
    cache = MemoryCache(max_bytes=64)
    await cache.set_multiple({"a": 1, "b": 2})
    await cache.set("v", "z" * 63)
    assert cache._keys() == ["v"]
    assert cache.nbytes == 64


async def test_increment_of_a_new_key_too_long_for_the_bound_is_refused() -> None:
    cache = MemoryCache(max_bytes=16)
    await cache.set("a", 1)
    with pytest.raises(ValueError, match="max_bytes"):
        await cache.increment("k" * 9)  # 9 + 8 > 16
    assert (cache._keys(), cache.nbytes) == (["a"], 9)


async def test_accounting_is_exact_under_overwrite_delete_increment_and_update() -> None:
    cache = MemoryCache(max_bytes=10_000)
    await cache.set("s", "abc")
    await cache.set("s", "abcdefghij")  # overwrite: the old size is subtracted
    assert cache.nbytes == 11
    await cache.set("s", [1, 2, 3])
    assert cache.nbytes == 1 + len("[1,2,3]")
    await cache.set("n", 5)
    assert await cache.increment("n", 10) == 15
    assert await cache.increment("fresh") == 1
    assert cache.nbytes == size_of("s", [1, 2, 3]) + 9 + size_of("fresh", 1)
    await cache.update_multiple(
        ["s", "u"], lambda found: {"s": "x" * 50, "u": {"k": found.get("s")}}
    )
    assert await cache.delete("n")
    assert not await cache.delete("n")
    assert cache.nbytes == await live_total(cache)
    assert cache.nbytes == size_of("s", "x" * 50) + size_of("fresh", 1) + size_of(
        "u", {"k": [1, 2, 3]}
    )
    assert await cache.clear() == 3
    assert cache.nbytes == 0


async def test_expired_entries_give_back_their_bytes() -> None:
    cache = MemoryCache(max_bytes=1_000)
    await cache.set("keep", "k" * 10, ttl=0)
    await cache.set_multiple({"t1": "a" * 100, "t2": b"b" * 100}, ttl=0.05)
    await cache.set("t3", "c" * 100, ttl=0.05)
    assert cache.nbytes == 14 + 3 * 102
    await asyncio.sleep(0.1)
    assert await cache.get("t1", MISSING) is MISSING  # dropped when touched
    assert cache.nbytes == 14 + 2 * 102
    assert not await cache.exists("t2")  # dropped by exists
    assert cache.nbytes == 14 + 102
    await cache.stats()  # purges the rest
    assert cache.nbytes == 14
    await cache.set("t4", "d", ttl=0.05)
    await asyncio.sleep(0.1)
    assert await cache.increment("t4") == 1  # expired value dropped, counter restarts
    assert cache.nbytes == 14 + 10
    await cache.close()
    assert cache.nbytes == 0


async def test_memory_url_sets_the_byte_bound() -> None:
    cache, _ = await open_cache("memory://?max_entries=50&max_bytes=25", "nethical:r1:")
    assert isinstance(cache, MemoryCache)
    assert (cache.max_entries, cache.max_bytes) == (50, 25)
    await cache.set_multiple({"a": "a" * 9, "b": "b" * 9, "c": "c" * 9})  # 10 bytes each
    assert cache._keys() == ["b", "c"]
    only, _ = await open_cache("memory://?max_bytes=1000", "nethical:r1:")
    assert isinstance(only, MemoryCache)
    assert (only.max_entries, only.max_bytes) == (100_000, 1000)
    keyword, _ = await open_cache("memory://", "nethical:r1:", max_bytes=77)
    assert isinstance(keyword, MemoryCache)
    assert keyword.max_bytes == 77
    url_wins, _ = await open_cache("memory://?max_bytes=88", "nethical:r1:", max_bytes=77)
    assert isinstance(url_wins, MemoryCache)
    assert url_wins.max_bytes == 88


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memory://?max_bytes=lots", "max_bytes must be an integer, got 'lots'"),
        ("memory://?max_bytes=1.5", "max_bytes must be an integer"),
        ("memory://?max_bytes=0", "max_bytes must be an int >= 1, got 0"),
        ("memory://?max_bytes=-5", "max_bytes must be an int >= 1, got -5"),
        ("memory://?max_entries=10&max_byte=5", "max_entries and max_bytes only"),
    ],
)
async def test_bad_max_bytes_options_raise(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await open_cache(url, "nethical:r1:")


@pytest.mark.parametrize("bad", [0, -1, 1.5, "256", True, None])
def test_bad_max_bytes_argument_raises(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_bytes must be an int >= 1"):
        MemoryCache(max_bytes=bad)


async def test_failover_memory_tier_gets_the_byte_bound() -> None:
    pytest.importorskip("redis")
    # port 1: nothing listens, so the cache starts in memory mode at once
    cache, choice = await open_cache(
        "redis://127.0.0.1:1/0",
        "nethical:r1:",
        max_bytes=25,
        connect_timeout=0.2,
        socket_timeout=0.2,
    )
    try:
        assert choice.backend == "memory"
        memory = cache.memory  # type: ignore[attr-defined]
        assert memory.max_bytes == 25
        await cache.set_multiple({"a": "a" * 9, "b": "b" * 9, "c": "c" * 9})
        assert memory._keys() == ["b", "c"]
        with pytest.raises(ValueError, match="max_bytes"):
            await cache.set("big", "x" * 100)
    finally:
        await cache.close()


# -- property: accounting equals the live entries' sizes, never above the bound ----------

_keys = st.sampled_from(["a", "bb", "ccc", "dddd", "k" * 12])
_values = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.lists(st.integers(0, 999), max_size=8),
    st.dictionaries(st.text(max_size=4), st.text(max_size=6), max_size=4),
)
_ops = st.one_of(
    st.tuples(st.just("set"), _keys, _values),
    st.tuples(st.just("set_short"), _keys, _values),
    st.tuples(st.just("set_multiple"), st.dictionaries(_keys, _values, max_size=4)),
    st.tuples(st.just("delete"), _keys),
    st.tuples(st.just("increment"), _keys, st.integers(-1000, 1000)),
    st.tuples(st.just("get"), _keys),
    st.tuples(st.just("update"), st.lists(_keys, max_size=3), _values),
    st.tuples(
        st.just("expire"),
    ),
    st.tuples(
        st.just("clear"),
    ),
)


async def _apply(cache: MemoryCache, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "set":
        await cache.set(op[1], op[2], ttl=0)
    elif kind == "set_short":
        await cache.set(op[1], op[2], ttl=1e-9)  # expired by the next operation
    elif kind == "set_multiple":
        await cache.set_multiple(op[1], ttl=0)
    elif kind == "delete":
        await cache.delete(op[1])
    elif kind == "increment":
        await cache.increment(op[1], op[2])
    elif kind == "get":
        await cache.get(op[1])
    elif kind == "update":
        value = op[2]
        await cache.update_multiple(op[1], lambda found: dict.fromkeys(found, value), ttl=0)
    elif kind == "expire":
        cache.purge_expired()
    else:
        await cache.clear()


@settings(max_examples=300, deadline=None)
@given(max_bytes=st.integers(20, 200), ops=st.lists(_ops, max_size=40))
def test_accounted_bytes_equal_the_live_entries_and_stay_within_the_bound(
    max_bytes: int, ops: list[tuple[Any, ...]]
) -> None:
    async def run() -> None:
        cache = MemoryCache(max_entries=1000, max_bytes=max_bytes)
        for op in ops:
            # ValueError: an oversized entry or an increment of a non-int; nothing changes
            with contextlib.suppress(ValueError):
                await _apply(cache, op)
            assert 0 <= cache.nbytes <= max_bytes
            # every held entry (expired ones included) counts, and only those
            assert cache.nbytes == sum(entry[2] for entry in cache._data.values())
            cache.purge_expired()
            assert cache.nbytes == await live_total(cache)
        await cache.clear()
        assert cache.nbytes == 0

    asyncio.run(run())
