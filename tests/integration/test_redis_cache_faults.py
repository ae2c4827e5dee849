"""The Redis cache under real faults: a server that stops answering mid-transaction, pooled
connections the server dropped, and a pool busier than its connections.

Faults are made on the real Redis at 127.0.0.1:6379 without disturbing other users of it:
a connection is killed by its own id (``CLIENT KILL ID``), and an unresponsive (or slow)
server is a :class:`tcpproxy.CuttableProxy` in front of it that stops forwarding (or holds
its answers back). Each test has a
namespace of its own, removed afterwards. Without Redis these tests skip, or fail when
``CI`` is set.
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

from nethical_grpc.storage.cache import MISSING, CacheUnavailableError, FailoverCache, open_cache

TIMEOUT_S = 0.25
GUARD_S = 10 * TIMEOUT_S  # a hang guard, not a speed check


@pytest.fixture
def namespace() -> str:
    require("Redis", lambda: redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping())
    return f"test:cache-faults:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def raw(namespace: str) -> AsyncIterator[aioredis.Redis]:
    """A separate client on the shared Redis; the test's namespace is removed afterwards."""
    async with redis_client(namespace) as client:
        yield client


@pytest.fixture
async def proxy() -> AsyncIterator[CuttableProxy]:
    async with redis_proxy() as p:
        yield p


async def _open(url: str, namespace: str, **options: Any) -> FailoverCache:
    cache, choice = await open_cache(
        url, namespace, socket_timeout=TIMEOUT_S, probe_initial=0.02, probe_max=0.1, **options
    )
    assert isinstance(cache, FailoverCache)
    assert choice.backend == "redis"
    return cache


async def test_update_multiple_gives_up_on_a_server_that_stops_answering(
    proxy: CuttableProxy, raw: aioredis.Redis, namespace: str
) -> None:
    """The server goes silent after WATCH: EXEC never answers. The call fails over within
    its timeout instead of waiting on the server to clean up the WATCH."""
    cache = await _open(f"redis://127.0.0.1:{proxy.port}/0", namespace)
    try:
        await cache.set("n", 1, ttl=0)

        def add_then_hang(found: dict[str, Any]) -> dict[str, Any]:
            proxy.stall()  # the server stops answering between the read and the write
            return {"n": found["n"] + 1}

        async with asyncio.timeout(GUARD_S):
            with pytest.raises(CacheUnavailableError, match="timeout"):
                await cache.update_multiple(["n"], add_then_hang)
        assert cache.backend == "memory"
        assert await raw.get(namespace + "n") == b"1"  # nothing written while it hangs

        # The abandoned EXEC is still in the proxy; it may reach Redis once it forwards
        # again (as a paused server would read it), the documented at-least-once limit.
        proxy.resume()
        async with asyncio.timeout(15):
            await cache.wait_recovered()
        before = int(await raw.get(namespace + "n"))
        assert await cache.update_multiple(["n"], lambda f: {"n": f["n"] + 10}) == {
            "n": before + 10
        }
        assert await raw.get(namespace + "n") == str(before + 10).encode()
    finally:
        await cache.close()


async def test_a_pooled_connection_the_server_dropped_is_replaced_not_an_outage(
    raw: aioredis.Redis, namespace: str
) -> None:
    """The server closes the cache's idle pooled connection (CLIENT KILL here; an idle
    timeout or a restart alike), and the next call, made before the event loop has noticed,
    goes to Redis on a fresh connection: no fallback to memory."""
    cache = await _open(REDIS_URL, namespace)
    killer = redis.Redis.from_url(REDIS_URL, socket_timeout=3)
    own = aioredis.Redis(connection_pool=cache.primary.pool)

    async def kill_pooled() -> None:
        # the pool holds one idle connection (calls are sequential): this is its id
        killer.client_kill_filter(_id=str(await own.client_id()))

    try:
        await kill_pooled()
        await cache.set("a", "after kill")
        assert await raw.get(namespace + "a") == b"safter kill"
        await raw.set(namespace + "b", b"sfrom redis")
        await kill_pooled()
        assert await cache.get("b", MISSING) == "from redis"
        await kill_pooled()
        await cache.set_multiple({"c": 1, "d": 2})
        assert await raw.mget(namespace + "c", namespace + "d") == [b"1", b"2"]
        await kill_pooled()
        assert await cache.update_multiple(["c"], lambda f: {"c": f["c"] + 1}) == {"c": 2}
        assert await raw.get(namespace + "c") == b"2"
        stats = await cache.stats()
        assert (stats.type, stats.fallbacks, stats.errors) == ("redis", 0, 0)
    finally:
        killer.close()
        await cache.close()


async def test_a_dead_server_still_fails_over_with_one_retry(
    proxy: CuttableProxy, namespace: str
) -> None:
    cache = await _open(f"redis://127.0.0.1:{proxy.port}/0", namespace)
    try:
        await cache.set("k", 1)
        proxy.cut()  # connections aborted, new ones refused
        async with asyncio.timeout(GUARD_S):
            assert await cache.get("k", MISSING) is MISSING
        assert cache.backend == "memory"
        assert cache.reason.startswith("unreachable")
    finally:
        await cache.close()


async def test_a_pool_busier_than_its_connections_is_no_outage(
    proxy: CuttableProxy, raw: aioredis.Redis, namespace: str
) -> None:
    """Far more concurrent calls than pooled connections, on a slow link: each answer comes
    a small part of the timeout late, so together they take many times the timeout; each
    call waits for the connection, none counts as an outage, and every write lands once."""
    cache = await _open(f"redis://127.0.0.1:{proxy.port}/0", namespace, max_connections=1)
    proxy.reply_delay_s = TIMEOUT_S / 10
    calls = 60  # about 6 timeouts' worth, one after another
    try:
        results = await asyncio.gather(*(cache.increment("n") for _ in range(calls)))
        assert sorted(results) == list(range(1, calls + 1))
        assert await raw.get(namespace + "n") == str(calls).encode()
        stats = await cache.stats()
        assert (stats.type, stats.fallbacks, stats.errors) == ("redis", 0, 0)
    finally:
        await cache.close()


async def test_calls_queued_for_a_connection_fail_over_together_when_the_server_hangs(
    proxy: CuttableProxy, namespace: str
) -> None:
    """Callers waiting for the one pooled connection when the server stops answering do
    not each wait out a timeout of their own: once one call finds the server unreachable,
    the others waiting fail over too."""
    cache = await _open(f"redis://127.0.0.1:{proxy.port}/0", namespace, max_connections=1)
    try:
        await cache.set("k", 1)
        proxy.stall()
        async with asyncio.timeout(GUARD_S):  # 50 timeouts one after another would be 12.5 s
            found = await asyncio.gather(*(cache.get("k", MISSING) for _ in range(50)))
        assert found == [MISSING] * 50
        assert cache.backend == "memory"
        assert (await cache.stats()).fallbacks == 1
    finally:
        await cache.close()
