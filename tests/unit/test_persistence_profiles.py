"""Which caches the node writes agents' risk profiles to, and how (merged, not replaced)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from services import REDIS_URL, fresh_redis_region
from tcpproxy import CuttableProxy

from nethical_grpc.governance.decision import Decision, Evaluation
from nethical_grpc.governance.detectors import Action
from nethical_grpc.governance.profiles import Profile, ProfileBook
from nethical_grpc.governance.requests import EvaluationRequest, Outcome
from region_node import persistence
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import Persister
from region_node.profile_writes import (
    MAX_IN_DOUBT,
    MAX_WRITERS,
    PROFILE_PREFIX,
    WRITES_FIELD,
    ProfileWriter,
)
from region_node.stores import NodeStores, StoreConfig

#: nothing listens on port 9 (discard) on loopback: the cache starts in memory mode, and is
#: still a shared cache (its journal goes to Redis once it answers)
DOWN_REDIS = "redis://127.0.0.1:9/0"


@pytest.fixture
def redis_region() -> Iterator[str]:
    with fresh_redis_region() as region:
        yield region


@dataclass
class ProxiedRedis:
    """A node's stores reaching Redis through a proxy, and stores that reach it directly
    (another instance's view, which the proxy's faults do not touch)."""

    proxy: CuttableProxy
    stores: NodeStores
    direct: NodeStores


@pytest.fixture
async def proxied(redis_region: str) -> AsyncIterator[ProxiedRedis]:
    pytest.importorskip("redis")
    proxy = CuttableProxy("127.0.0.1", int(REDIS_URL.rsplit(":", 1)[1].split("/")[0]))
    await proxy.start()
    stores = await NodeStores.open(
        StoreConfig(cache_url=f"redis://127.0.0.1:{proxy.port}/0"), redis_region
    )
    direct = await NodeStores.open(StoreConfig(cache_url=REDIS_URL), redis_region)
    try:
        yield ProxiedRedis(proxy, stores, direct)
    finally:
        await direct.close()
        await stores.close()
        await proxy.close()


def outcomes(agent: str, n: int, risk: float = 0.45, start_ns: int = 1_000) -> list[Outcome]:
    request = EvaluationRequest(Action(agent, "SELECT 1", "query"), "req", "query")
    return [
        Outcome(request, Evaluation(Decision.ALLOW, risk, 0.9), 0.5, 1_000, start_ns + i)
        for i in range(n)
    ]


async def cached_profile(stores: NodeStores, agent: str) -> dict[str, Any]:
    value = await stores.cache.get(PROFILE_PREFIX + agent)
    assert isinstance(value, dict)
    return value


async def until_redis_is_back(stores: NodeStores) -> None:
    for _ in range(200):
        if not stores.cache_choice.fallback:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the cache did not find Redis again")


async def test_profiles_stay_out_of_a_memory_cache() -> None:
    stores = await NodeStores.open(StoreConfig(cache_url="memory://"), "r1")
    try:
        assert not stores.shared_cache
        book = ProfileBook()
        persister = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, book, 1.0)
        book.update(outcomes("carol", 2))
        await persister.round(windows=False, profiles=True)
        # no other instance sees a memory:// cache: nothing to write, no deltas kept
        assert await stores.cache.get(PROFILE_PREFIX + "carol") is None
        assert book.deltas is None
        found = book.get("carol")
        assert found is not None and found.evaluations == 2  # the node still answers
        assert await persister.profile_writer.load("carol") is None
    finally:
        await stores.close()


async def test_while_redis_is_down_profile_deltas_wait_for_it() -> None:
    """A redis:// cache is shared even while Redis is down, but what the node adds is not
    merged into the memory copy: written back over Redis when it returns, that copy would
    replace what Redis holds. The deltas are kept (bounded) for Redis instead."""
    pytest.importorskip("redis")  # without redis-py a redis:// URL is a memory cache
    stores = await NodeStores.open(StoreConfig(cache_url=DOWN_REDIS), "r1")
    try:
        assert stores.cache_choice.backend == "memory" and stores.cache_choice.fallback
        assert stores.shared_cache
        book = ProfileBook()
        persister = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, book, 1.0)
        book.update(outcomes("dave", 2))
        await persister.round(windows=False, profiles=True)
        assert await stores.cache.get(PROFILE_PREFIX + "dave") is None
        assert book.deltas is not None and book.deltas["dave"].evaluations == 2
        found = book.get("dave")
        assert found is not None and found.evaluations == 2  # the node still answers
    finally:
        await stores.close()


async def test_a_write_merges_the_nodes_evaluations_into_the_cached_profile(
    redis_region: str,
) -> None:
    pytest.importorskip("redis")
    stores = await NodeStores.open(StoreConfig(cache_url=REDIS_URL), redis_region)
    try:
        # written before this node started (by another instance, or before a restart)
        before = ProfileBook()
        before.update(outcomes("erin", 20, risk=0.9))
        earlier = before.get("erin")
        assert earlier is not None
        await stores.cache.set(PROFILE_PREFIX + "erin", earlier.to_dict())
        book = ProfileBook()
        persister = Persister(RegionNode(NodeIdentity("r1", "r1-b")), stores, book, 1.0)
        book.update(outcomes("erin", 1, risk=0.1, start_ns=5_000))
        await persister.round(windows=False, profiles=True)
        cached = await stores.cache.get(PROFILE_PREFIX + "erin")
        assert isinstance(cached, dict)
        assert cached["evaluations"] == 21 and cached["max_risk"] == 0.9
        assert cached["decision_counts"] == {"ALLOW": 21}
        assert cached["recent"][-1][0] == 5_000 and len(cached["recent"]) == book.recent
        local = book.get("erin")
        assert local is not None and local.evaluations == 21  # the node counts on from 21
        assert not book.unmerged("erin")
        # nothing new: nothing written again (a second round would count twice)
        await persister.round(windows=False, profiles=True)
        again = await stores.cache.get(PROFILE_PREFIX + "erin")
        assert isinstance(again, dict) and again["evaluations"] == 21
    finally:
        await stores.close()


async def test_failed_writes_keep_their_deltas_in_doubt_for_the_next_round(
    monkeypatch: pytest.MonkeyPatch, redis_region: str
) -> None:
    """Writes that fail before reaching Redis: their deltas wait in doubt (at most
    MAX_IN_DOUBT per agent, every evaluation kept), and the next write that gets through
    merges them all in, once."""
    pytest.importorskip("redis")
    stores = await NodeStores.open(StoreConfig(cache_url=REDIS_URL), redis_region)
    try:
        book = ProfileBook()
        persister = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, book, 1.0)
        writer = persister.profile_writer
        redis_cache = stores.cache.primary  # type: ignore[attr-defined]  # a failover cache
        real = redis_cache.update_multiple

        async def refuse(*args: object, **kwargs: object) -> dict[str, Any]:
            raise ConnectionError("down")

        monkeypatch.setattr(redis_cache, "update_multiple", refuse)
        added = 0
        for i in range(MAX_IN_DOUBT + 3):
            book.update(outcomes("frank", i + 1, start_ns=i * 1_000))
            added += i + 1
            await persister.round(windows=False, profiles=True)
            assert await stores.cache.get(PROFILE_PREFIX + "frank") is None
        kept = writer.in_doubt["frank"]
        assert len(kept) == MAX_IN_DOUBT
        assert sum(delta.evaluations for _, delta in kept) == added
        assert [seq for seq, _ in kept] == sorted({seq for seq, _ in kept})
        book.update(outcomes("frank", 2, start_ns=90_000))
        monkeypatch.setattr(redis_cache, "update_multiple", real)
        await persister.round(windows=False, profiles=True)
        assert (await cached_profile(stores, "frank"))["evaluations"] == added + 2
        local = book.get("frank")
        assert local is not None and local.evaluations == added + 2
        assert writer.in_doubt == {}
    finally:
        await stores.close()


async def test_a_malformed_cached_profile_is_replaced_by_the_nodes(redis_region: str) -> None:
    pytest.importorskip("redis")
    stores = await NodeStores.open(StoreConfig(cache_url=REDIS_URL), redis_region)
    try:
        await stores.cache.set(PROFILE_PREFIX + "gina", {"agent_id": "gina", "junk": 1})
        other = Profile("someone-else", evaluations=9).to_dict()
        await stores.cache.set(PROFILE_PREFIX + "hal", other)
        book = ProfileBook()
        persister = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, book, 1.0)
        book.update(outcomes("gina", 2) + outcomes("hal", 1))
        await persister.round(windows=False, profiles=True)
        for agent, n in (("gina", 2), ("hal", 1)):
            cached = await stores.cache.get(PROFILE_PREFIX + agent)
            assert isinstance(cached, dict)
            assert cached["agent_id"] == agent and cached["evaluations"] == n
    finally:
        await stores.close()


async def test_deltas_kept_through_a_redis_outage_are_merged_when_it_returns(
    proxied: ProxiedRedis,
) -> None:
    """Another instance wrote the agent's profile while this node's Redis was away: the
    node's own evaluations of that time are added to it, not written over it."""
    stores, direct = proxied.stores, proxied.direct
    book = ProfileBook()
    persister = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, book, 1.0)
    book.update(outcomes("ivy", 20))
    await persister.round(windows=False, profiles=True)
    proxied.proxy.cut()
    book.update(outcomes("ivy", 1, start_ns=50_000))
    for _ in range(3):  # the round that meets the outage, and rounds during it
        await persister.round(windows=False, profiles=True)
    # the failed merge told the cache: it reports memory mode, as operators see it
    assert stores.cache_choice.fallback
    # meanwhile another instance of the region, which reaches Redis, adds 5
    other = await cached_profile(direct, "ivy")
    assert other["evaluations"] == 20
    other["evaluations"] = 25
    await direct.cache.set(PROFILE_PREFIX + "ivy", other)
    proxied.proxy.restore()
    await until_redis_is_back(stores)
    await persister.round(windows=False, profiles=True)
    assert (await cached_profile(direct, "ivy"))["evaluations"] == 26
    await asyncio.sleep(1.0)  # nothing written back over it afterwards
    assert (await cached_profile(direct, "ivy"))["evaluations"] == 26


async def test_instances_writing_the_same_agents_at_once_lose_no_evaluations(
    redis_region: str,
) -> None:
    """Two instances of a region merge their deltas for the same agents in the same
    moment (their reads both before either write): each merge is atomic, so the cached
    profiles count every evaluation of both."""
    pytest.importorskip("redis")
    stores = [
        await NodeStores.open(StoreConfig(cache_url=REDIS_URL), redis_region) for _ in range(2)
    ]
    try:
        books = [ProfileBook(), ProfileBook()]
        persisters = [
            Persister(RegionNode(NodeIdentity("r1", f"r1-{i}")), s, b, 1.0)
            for i, (s, b) in enumerate(zip(stores, books, strict=True))
        ]
        agents = [f"agent-{i}" for i in range(300)]  # more than one atomic chunk
        for round_ in range(3):
            for n, book in enumerate(books, start=1):
                for agent in agents:
                    book.update(outcomes(agent, n, start_ns=round_ * 1_000 + n * 100))
            await asyncio.gather(*(p.round(windows=False, profiles=True) for p in persisters))
        cached = await stores[0].cache.get_multiple([PROFILE_PREFIX + a for a in agents])
        assert {a: cached[PROFILE_PREFIX + a]["evaluations"] for a in agents} == dict.fromkeys(
            agents, 3 * (1 + 2)
        )
        assert all(b.deltas == {} for b in books)  # nothing left waiting
    finally:
        for s in stores:
            await s.close()


@pytest.mark.parametrize(
    ("lost_after", "applied"),
    [
        (b"EXEC", True),  # Redis ran the write; its answer was lost
        (b"WATCH", False),  # the write broke off before it was sent
    ],
)
async def test_a_write_whose_answer_was_lost_counts_its_evaluations_once(
    proxied: ProxiedRedis, lost_after: bytes, applied: bool
) -> None:
    proxy, stores, direct = proxied.proxy, proxied.stores, proxied.direct
    book = ProfileBook()
    writer = ProfileWriter(stores, book)
    book.update(outcomes("jo", 3))
    await writer.write()
    assert (await cached_profile(direct, "jo"))["evaluations"] == 3
    proxy.lose_replies_after(lost_after)
    book.update(outcomes("jo", 2, start_ns=10_000))
    await writer.write()  # fails: the node cannot tell whether Redis applied it
    assert stores.cache_choice.fallback
    assert [len(kept) for kept in writer.in_doubt.values()] == [1]
    assert (await cached_profile(direct, "jo"))["evaluations"] == (5 if applied else 3)
    proxy.restore()
    await until_redis_is_back(stores)
    book.update(outcomes("jo", 1, start_ns=20_000))
    await writer.write()
    assert (await cached_profile(direct, "jo"))["evaluations"] == 6
    local = book.get("jo")
    assert local is not None and local.evaluations == 6
    assert writer.in_doubt == {}
    await writer.write()  # nothing new, nothing in doubt: nothing changes
    assert (await cached_profile(direct, "jo"))["evaluations"] == 6


async def test_other_writers_keep_a_writers_token_and_a_profile_keeps_the_latest(
    proxied: ProxiedRedis,
) -> None:
    """Another instance writes the agent between this node's lost write and its next: the
    token survives that write, so the lost one is still recognised; a profile keeps the
    tokens of its latest MAX_WRITERS writers."""
    proxy, stores, direct = proxied.proxy, proxied.stores, proxied.direct
    book = ProfileBook()
    writer = ProfileWriter(stores, book)
    book.update(outcomes("kim", 3))
    await writer.write()
    proxy.lose_replies_after(b"EXEC")
    book.update(outcomes("kim", 2, start_ns=10_000))
    await writer.write()
    assert (await cached_profile(direct, "kim"))["evaluations"] == 5
    other_book = ProfileBook()
    other = ProfileWriter(direct, other_book)
    other_book.update(outcomes("kim", 4, start_ns=30_000))
    await other.write()
    tokens = (await cached_profile(direct, "kim"))[WRITES_FIELD]
    assert set(tokens) == {writer.writer_id, other.writer_id}
    proxy.restore()
    await until_redis_is_back(stores)
    book.update(outcomes("kim", 1, start_ns=40_000))
    await writer.write()
    assert (await cached_profile(direct, "kim"))["evaluations"] == 3 + 2 + 4 + 1

    later = [ProfileWriter(direct, ProfileBook()) for _ in range(MAX_WRITERS + 2)]
    for w in later:
        w.profiles.update(outcomes("kim", 1, start_ns=50_000))
        await w.write()
    value = await cached_profile(direct, "kim")
    assert value["evaluations"] == 10 + len(later)
    assert set(value[WRITES_FIELD]) == {w.writer_id for w in later[-MAX_WRITERS:]}


class RoundCounter:
    """Counts a persister's store rounds (and which of them wrote profiles)."""

    def __init__(self, persister: Persister) -> None:
        self.rounds = self.profile_rounds = 0
        original = persister.round

        async def counted(windows: bool, profiles: bool = True) -> None:
            self.rounds += 1
            self.profile_rounds += profiles
            await original(windows, profiles)

        persister.round = counted  # type: ignore[method-assign]


async def test_an_idle_loop_sleeps_through_profile_writes_with_nothing_to_write(
    redis_region: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no records and no deltas the store loop wakes only for flushes and retention:
    not every PROFILE_INTERVAL_S (an idle node spent a wake-up a second on nothing)."""
    pytest.importorskip("redis")
    monkeypatch.setattr(persistence, "PROFILE_INTERVAL_S", 0.05)
    stores = await NodeStores.open(StoreConfig(cache_url=REDIS_URL), redis_region)
    book = ProfileBook()
    p = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, book, 60.0)
    counter = RoundCounter(p)
    await p.start()
    try:
        await asyncio.sleep(0.5)  # ten profile intervals
        # the first round may come from the retention's start; none after it
        assert counter.rounds <= 1
        assert not p.profile_writer.pending()
        # an evaluation's records wake the loop; its delta is written within an interval
        book.update(outcomes("erin", 3))
        assert p.profile_writer.pending()
        p.enqueue(outcomes("erin", 3))
        for _ in range(100):
            if not p.profile_writer.pending():
                break
            await asyncio.sleep(0.02)
        assert not p.profile_writer.pending()
        assert (await cached_profile(stores, "erin"))["evaluations"] == 3
        rounds = counter.rounds
        await asyncio.sleep(0.5)
        assert counter.rounds == rounds  # idle again: asleep
    finally:
        await p.stop()
        await stores.close()


async def test_deltas_in_doubt_wake_the_idle_loop_until_they_are_written(
    proxied: ProxiedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A profile write that failed leaves deltas in doubt and no records to wake the loop:
    it still retries them every PROFILE_INTERVAL_S, and stops once they are written."""
    monkeypatch.setattr(persistence, "PROFILE_INTERVAL_S", 0.05)
    book = ProfileBook()
    p = Persister(RegionNode(NodeIdentity("r1", "r1-a")), proxied.stores, book, 60.0)
    counter = RoundCounter(p)
    proxied.proxy.cut()
    await p.start()
    try:
        book.update(outcomes("frank", 2))
        p.enqueue(outcomes("frank", 2))
        for _ in range(100):  # the write fails while the proxy is cut
            if counter.profile_rounds >= 3:
                break
            await asyncio.sleep(0.02)
        assert counter.profile_rounds >= 3 and p.profile_writer.pending()
        proxied.proxy.restore()
        await until_redis_is_back(proxied.stores)
        for _ in range(200):
            if not p.profile_writer.pending():
                break
            await asyncio.sleep(0.02)
        assert not p.profile_writer.pending()
        assert (await cached_profile(proxied.direct, "frank"))["evaluations"] == 2
    finally:
        await p.stop()


async def test_a_transaction_retried_after_its_lost_answer_counts_its_evaluations_once(
    proxied: ProxiedRedis,
) -> None:
    """Redis runs the EXEC, its answer is lost, and the connection breaks: redis-py turns
    the break of a watched transaction into a WatchError, so the cache runs the update
    again at once, on a fresh connection that works. The second run finds this write's
    own token in the cached profile: the write was applied, and its delta is not added
    again."""
    proxy, stores, direct = proxied.proxy, proxied.stores, proxied.direct
    book = ProfileBook()
    writer = ProfileWriter(stores, book)
    book.update(outcomes("lee", 3))
    await writer.write()
    assert (await cached_profile(direct, "lee"))["evaluations"] == 3

    def cut_then_reconnect() -> None:
        # the broken connection's answer is gone; a new connection reaches Redis
        CuttableProxy.cut(proxy)
        proxy.restore()

    proxy.cut = cut_then_reconnect  # type: ignore[method-assign]
    proxy.lose_replies_after(b"EXEC")
    book.update(outcomes("lee", 2, start_ns=10_000))
    await writer.write()
    assert not stores.cache_choice.fallback  # the retry succeeded
    assert writer.in_doubt == {}
    assert (await cached_profile(direct, "lee"))["evaluations"] == 5
    local = book.get("lee")
    assert local is not None and local.evaluations == 5
