"""Which caches the node writes agents' risk profiles to."""

from __future__ import annotations

from collections import deque

import pytest

from nethical_grpc.governance.profiles import Profile, ProfileBook
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import PROFILE_PREFIX, Persister
from region_node.stores import NodeStores, StoreConfig


def _profile(agent: str) -> Profile:
    return Profile(agent, evaluations=2, risk_sum=0.9, max_risk=0.7, recent=deque(maxlen=4))


async def test_profiles_stay_out_of_a_memory_cache() -> None:
    stores = await NodeStores.open(StoreConfig(cache_url="memory://"), "r1")
    try:
        assert not stores.shared_cache
        book = ProfileBook()
        persister = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, book, 1.0)
        book.put(_profile("carol"))
        book.changed.add("carol")
        await persister.round(windows=False, profiles=True)
        # no other instance sees a memory:// cache: nothing to write, nothing left to do
        assert await stores.cache.get(PROFILE_PREFIX + "carol") is None
        assert book.changed == set()
        assert book.get("carol") is not None  # the node itself still answers for carol
    finally:
        await stores.close()


async def test_a_redis_url_is_a_shared_cache_even_while_redis_is_down() -> None:
    pytest.importorskip("redis")  # without redis-py a redis:// URL is a memory cache
    # port 9 (discard) on loopback: nothing listens, so the cache starts in memory mode
    stores = await NodeStores.open(StoreConfig(cache_url="redis://127.0.0.1:9/0"), "r1")
    try:
        assert stores.cache_choice.backend == "memory" and stores.cache_choice.fallback
        assert stores.shared_cache  # its journal goes to Redis once it answers
        book = ProfileBook()
        persister = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, book, 1.0)
        book.put(_profile("dave"))
        book.changed.add("dave")
        await persister.round(windows=False, profiles=True)
        cached = await stores.cache.get(PROFILE_PREFIX + "dave")
        assert isinstance(cached, dict) and cached["evaluations"] == 2
    finally:
        await stores.close()
