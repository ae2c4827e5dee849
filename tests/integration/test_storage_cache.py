"""The cache contract on the real backends, and Redis outages made real.

Every contract test runs on the memory cache, on Redis at 127.0.0.1:6379 (a fresh
namespace per test, removed afterwards) and on the failover cache over that Redis. Outage
tests start a private ``redis-server`` on a free port, kill it and start it again, so the
shared server is never disturbed. Without Redis (or redis-py, or the redis-server binary)
these tests skip, or fail when ``CI`` is set.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def _unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{why} (required when CI is set)")
    pytest.skip(why)


try:
    import redis.asyncio as aioredis
except ImportError:  # pragma: no cover - depends on the environment
    _unavailable("redis-py is not installed")

from nethical_grpc.storage.cache import (  # noqa: E402
    MISSING,
    Cache,
    CacheConflictError,
    CacheUnavailableError,
    FailoverCache,
    MemoryCache,
    RedisCache,
    open_cache,
)

SHARED_REDIS = "redis://127.0.0.1:6379/0"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
BACKENDS = ["memory", "redis", "failover"]


def _redis_is_up(port: int = 6379) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def namespace() -> str:
    return f"test:cache:{uuid.uuid4().hex[:12]}:"


async def _raw(url: str = SHARED_REDIS) -> aioredis.Redis:
    return aioredis.Redis.from_url(url)


async def _count_keys(raw: aioredis.Redis, namespace: str) -> int:
    return len([k async for k in raw.scan_iter(match=namespace + "*", count=500)])


@pytest.fixture(params=BACKENDS)
async def cache(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[Cache]:
    kind: str = request.param
    if kind == "memory":
        opened: Cache = MemoryCache(namespace)
    else:
        if not _redis_is_up():
            _unavailable("Redis is not reachable at 127.0.0.1:6379")
        if kind == "redis":
            opened = RedisCache.from_url(SHARED_REDIS, namespace=namespace)
        else:
            opened, choice = await open_cache(SHARED_REDIS, namespace)
            assert isinstance(opened, FailoverCache)
            assert choice.backend == "redis"
    yield opened
    await opened.clear()
    await opened.close()


# -- values and types ---------------------------------------------------------------------

TRICKY_VALUES: list[Any] = [
    "123",
    123,
    -(2**63),
    2**80,
    0,
    1.0,
    -0.0,
    math.inf,
    True,
    False,
    None,
    "",
    "ünïcødé ✓",
    b"\x00\xffraw",
    b"",
    [],
    {},
    [1, "1", 1.0, True, None, [2], {"k": "v"}],
    {"score": 0.75, "labels": {"decision": "allow"}, "n": 3},
]


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


async def test_values_come_back_with_their_types(cache: Cache) -> None:
    for i, value in enumerate(TRICKY_VALUES):
        await cache.set(f"v{i}", value)
        assert _same(await cache.get(f"v{i}", MISSING), value), value
    many = await cache.get_multiple([f"v{i}" for i in range(len(TRICKY_VALUES))])
    assert all(_same(many[f"v{i}"], v) for i, v in enumerate(TRICKY_VALUES))


VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
) | st.binary(max_size=20)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=VALUES)
async def test_any_supported_value_round_trips(cache: Cache, value: Any) -> None:
    await cache.set("prop", value)
    assert _same(await cache.get("prop", MISSING), value)


async def test_none_and_false_are_values_not_misses(cache: Cache) -> None:
    assert await cache.get("absent") is None
    assert await cache.get("absent", MISSING) is MISSING
    assert await cache.get("absent", "fallback") == "fallback"
    await cache.set("none", None)
    await cache.set("false", False)
    assert await cache.get("none", MISSING) is None
    assert await cache.get("false", MISSING) is False
    assert await cache.exists("none")
    assert await cache.get_multiple(["none", "false", "absent"]) == {"none": None, "false": False}


async def test_unsupported_values_raise_and_write_nothing(cache: Cache) -> None:
    with pytest.raises(ValueError, match="cache value"):
        await cache.set("t", (1, 2))
    with pytest.raises(ValueError, match="cache value"):
        await cache.set_multiple({"ok": 1, "bad": {1: "int key"}})
    assert await cache.get_multiple(["t", "ok", "bad"]) == {}


@pytest.mark.parametrize("key", ["", 5, None, b"bytes"])
async def test_bad_keys_raise(cache: Cache, key: Any) -> None:
    with pytest.raises(ValueError, match="key"):
        await cache.set(key, 1)
    with pytest.raises(ValueError, match="key"):
        await cache.get(key)


# -- TTL ----------------------------------------------------------------------------------


async def test_entries_expire_after_their_ttl(cache: Cache) -> None:
    await cache.set("short", "x", ttl=0.05)
    await cache.set_multiple({"m1": 1, "m2": 2}, ttl=0.05)
    await cache.set("long", "y", ttl=60)
    assert await cache.get("short") == "x"
    await asyncio.sleep(0.15)
    assert await cache.get("short", MISSING) is MISSING
    assert not await cache.exists("short")
    assert await cache.get_multiple(["m1", "m2", "long"]) == {"long": "y"}


async def test_ttl_zero_never_expires_and_none_means_default(namespace: str) -> None:
    caches: list[Cache] = [MemoryCache(namespace, default_ttl=0.05)]
    if _redis_is_up():
        caches.append(RedisCache.from_url(SHARED_REDIS, namespace=namespace, default_ttl=0.05))
    for cache in caches:
        await cache.set("forever", 1, ttl=0)
        await cache.set("default", 2)
        await asyncio.sleep(0.15)
        assert await cache.get_multiple(["forever", "default"]) == {"forever": 1}, cache.backend
        await cache.clear()
        await cache.close()


@pytest.mark.parametrize("ttl", [-1, -0.001, math.nan, math.inf, True, "10"])
async def test_bad_ttl_raises(cache: Cache, ttl: Any) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await cache.set("k", 1, ttl=ttl)
    with pytest.raises(ValueError, match="ttl"):
        await cache.set_multiple({"k": 1}, ttl=ttl)
    assert not await cache.exists("k")


# -- delete, exists, increment ------------------------------------------------------------


async def test_delete_and_exists(cache: Cache) -> None:
    await cache.set("k", "v")
    assert await cache.exists("k")
    assert await cache.delete("k") is True
    assert await cache.delete("k") is False
    assert not await cache.exists("k")


async def test_increment_counts_atomically_and_stays_an_int(cache: Cache) -> None:
    assert await cache.increment("hits") == 1
    assert await cache.increment("hits", 41) == 42
    assert await cache.increment("hits", -2) == 40
    results = await asyncio.gather(*(cache.increment("burst") for _ in range(50)))
    assert sorted(results) == list(range(1, 51))
    value = await cache.get("hits")
    assert type(value) is int
    assert value == 40
    await cache.set("preset", 7)
    assert await cache.increment("preset", 3) == 10


async def test_increment_refuses_non_integers_and_overflow(cache: Cache) -> None:
    await cache.set("text", "123")
    await cache.set("float", 1.0)
    await cache.set("flag", True)
    await cache.set("top", 2**63 - 1)
    for key in ("text", "float", "flag", "top"):
        with pytest.raises(ValueError):
            await cache.increment(key)
    assert await cache.get_multiple(["text", "float", "flag", "top"]) == {
        "text": "123",
        "float": 1.0,
        "flag": True,
        "top": 2**63 - 1,
    }
    for amount in (True, 1.5, 2**63):
        with pytest.raises(ValueError, match="amount"):
            await cache.increment("n", amount)  # type: ignore[arg-type]


# -- multiple keys, clear, stats ----------------------------------------------------------


async def test_get_multiple_returns_found_keys_only(cache: Cache) -> None:
    await cache.set_multiple({"metric1": 10.5, "metric2": 20.3, "metric3": 30.7})
    assert await cache.get_multiple(["metric1", "metric3", "metric9", "metric1"]) == {
        "metric1": 10.5,
        "metric3": 30.7,
    }
    assert await cache.get_multiple([]) == {}
    await cache.set_multiple({})
    with pytest.raises(ValueError, match="single string"):
        await cache.get_multiple("metric1")


async def test_stats_count_hits_misses_and_size(cache: Cache) -> None:
    await cache.set_multiple({"a": 1, "b": 2, "c": 3})
    await cache.get("a")
    await cache.get("zz")
    await cache.get_multiple(["b", "c", "yy"])
    stats = await cache.stats()
    assert stats.type == cache.backend
    assert (stats.hits, stats.misses, stats.size, stats.errors) == (3, 2, 3, 0)
    assert stats.hit_rate == pytest.approx(60.0)
    as_dict = await cache.get_stats()
    assert as_dict["type"] == stats.type
    assert as_dict["hit_rate"] == pytest.approx(60.0)


async def test_clear_removes_only_this_namespace(cache: Cache) -> None:
    await cache.set_multiple({f"k{i}": i for i in range(20)})
    assert await cache.clear() == 20
    assert await cache.get_multiple([f"k{i}" for i in range(20)]) == {}
    assert (await cache.stats()).size == 0


async def test_redis_clear_spares_neighbours_and_glob_lookalikes() -> None:
    if not _redis_is_up():
        _unavailable("Redis is not reachable at 127.0.0.1:6379")
    tag = uuid.uuid4().hex[:8]
    target = RedisCache.from_url(SHARED_REDIS, namespace=f"test:{tag}:[ab]*?:")
    lookalike = RedisCache.from_url(SHARED_REDIS, namespace=f"test:{tag}:a-x:")
    neighbour = RedisCache.from_url(SHARED_REDIS, namespace=f"test:{tag}:other:")
    try:
        await target.set_multiple({f"k{i}": i for i in range(1200)})  # > one SCAN batch
        await lookalike.set("k1", "keep")
        await neighbour.set("k1", "keep")
        assert await target.clear() == 1200
        assert await target.size() == 0
        assert await lookalike.get("k1") == "keep"
        assert await neighbour.get("k1") == "keep"
    finally:
        for c in (target, lookalike, neighbour):
            await c.clear()
            await c.close()


async def test_redis_stores_tagged_bytes_not_pickles(namespace: str) -> None:
    if not _redis_is_up():
        _unavailable("Redis is not reachable at 127.0.0.1:6379")
    cache = RedisCache.from_url(SHARED_REDIS, namespace=namespace)
    raw = await _raw()
    try:
        await cache.set_multiple({"int": 42, "str": "42", "dict": {"a": 1}}, ttl=30)
        stored = await raw.mget([namespace + k for k in ("int", "str", "dict")])
        assert stored == [b"42", b"s42", b'j{"a":1}']
        ttl_ms = await raw.pttl(namespace + "int")
        assert 0 < ttl_ms <= 30_000
    finally:
        await cache.clear()
        await cache.close()
        await raw.aclose()


async def test_a_burst_beyond_the_pool_waits_for_connections(namespace: str) -> None:
    if not _redis_is_up():
        _unavailable("Redis is not reachable at 127.0.0.1:6379")
    cache, _ = await open_cache(SHARED_REDIS, namespace, max_connections=2)
    try:
        results = await asyncio.gather(*(cache.increment("n") for _ in range(100)))
        assert sorted(results) == list(range(1, 101))
        stats = await cache.stats()
        assert (stats.type, stats.errors, stats.fallbacks) == ("redis", 0, 0)
    finally:
        await cache.clear()
        await cache.close()


class CountingConnection(aioredis.Connection):
    """A real redis-py connection that counts the writes it sends (one per round trip)."""

    sends = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        await super().send_packed_command(command, check_health)


async def test_multi_key_calls_are_one_round_trip(namespace: str) -> None:
    if not _redis_is_up():
        _unavailable("Redis is not reachable at 127.0.0.1:6379")
    cache = RedisCache.from_url(
        SHARED_REDIS, namespace=namespace, connection_class=CountingConnection
    )
    try:
        await cache.ping()  # connect (the handshake sends too)
        keys = [f"m{i}" for i in range(10)]
        before = CountingConnection.sends
        await cache.set_multiple({k: i * 1.5 for i, k in enumerate(keys)}, ttl=60)
        assert CountingConnection.sends - before == 1
        before = CountingConnection.sends
        found = await cache.get_multiple(keys)
        assert CountingConnection.sends - before == 1
        assert found == {k: i * 1.5 for i, k in enumerate(keys)}
        before = CountingConnection.sends
        await cache.get("m0")
        await cache.set("m0", 1)
        assert CountingConnection.sends - before == 2
    finally:
        await cache.clear()
        await cache.close()


# -- outages on a private redis-server ----------------------------------------------------


class PrivateRedis:
    """A redis-server of our own on a free port; ``kill`` and ``start`` make outages real.

    Persistence is off except for an explicit ``SAVE`` (``save_and_kill``), so a restart
    can bring the pre-outage data back, as a persistent production server would.
    """

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self.workdir = workdir
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, *extra: str) -> None:
        args = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--dbfilename", "dump.rdb",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        args += extra
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                subprocess.run(["sleep", "0.02"], check=False)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    async def save_and_kill(self) -> None:
        raw = await _raw(self.url)
        await raw.save()
        await raw.aclose()
        self.kill()

    async def raw(self) -> aioredis.Redis:
        return await _raw(self.url)


def _require_redis_server() -> None:
    if not Path(REDIS_SERVER).exists():
        _unavailable("redis-server is not installed")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    _require_redis_server()
    server = PrivateRedis(tmp_path)
    try:
        yield server
    finally:
        server.kill()


async def _open_fast(url: str, namespace: str, **options: Any) -> FailoverCache:
    cache, _ = await open_cache(url, namespace, probe_initial=0.02, probe_max=0.1, **options)
    assert isinstance(cache, FailoverCache)
    return cache


async def _recovered(cache: FailoverCache) -> None:
    async with asyncio.timeout(15):  # a hang guard, not a speed check
        await cache.wait_recovered()


async def test_unreachable_at_startup_answers_from_memory_then_moves_to_redis(
    private_redis: PrivateRedis, namespace: str
) -> None:
    cache, choice = await open_cache(
        private_redis.url, namespace, probe_initial=0.02, probe_max=0.1
    )
    assert isinstance(cache, FailoverCache)
    try:
        assert (choice.backend, choice.reason) == ("memory", "unreachable (connection refused)")
        assert choice.describe() == "redis: unreachable (connection refused) → memory"
        await cache.set("early", {"written": "before redis existed"})
        assert await cache.increment("count", 3) == 3
        assert await cache.get("early") == {"written": "before redis existed"}
        assert (await cache.stats()).type == "memory"

        private_redis.start()
        await _recovered(cache)
        assert cache.backend == "redis"
        assert cache.choice().describe() == "redis"
        raw = await private_redis.raw()
        assert await raw.get(namespace + "early") == b'j{"written":"before redis existed"}'
        assert await raw.get(namespace + "count") == b"3"
        await raw.aclose()
        stats = await cache.stats()
        assert (stats.type, stats.fallbacks, stats.recoveries) == ("redis", 1, 1)
        assert (stats.pending_writes, stats.size) == (0, 2)
    finally:
        await cache.close()


async def test_outage_writes_survive_and_deletes_do_not_resurrect(
    private_redis: PrivateRedis, namespace: str
) -> None:
    private_redis.start()
    cache = await _open_fast(private_redis.url, namespace)
    try:
        assert cache.backend == "redis"
        await cache.set_multiple({"kept": "old", "overwritten": "old", "deleted": "old"}, ttl=0)
        await cache.increment("counter", 10)
        await private_redis.save_and_kill()

        # The first call finds Redis gone and is answered from memory.
        assert await cache.get("kept", MISSING) is MISSING
        assert cache.backend == "memory"
        assert cache.reason.startswith("unreachable")
        await cache.set("overwritten", "new")
        assert await cache.delete("deleted") is False  # memory never held it
        assert await cache.increment("counter", 5) == 5  # counted since the outage
        await cache.set("fresh", {"x": [1, 2]}, ttl=60)
        await cache.set("expiring", "soon", ttl=0.01)
        assert await cache.get("fresh") == {"x": [1, 2]}
        assert await cache.get("overwritten") == "new"
        stats = await cache.stats()
        assert (stats.type, stats.fallbacks, stats.pending_writes) == ("memory", 1, 5)
        assert stats.errors >= 1

        await asyncio.sleep(0.05)
        private_redis.start()  # loads the pre-outage dump
        await _recovered(cache)

        assert cache.backend == "redis"
        assert await cache.get_multiple(
            ["kept", "overwritten", "deleted", "counter", "fresh", "expiring"]
        ) == {"kept": "old", "overwritten": "new", "counter": 15, "fresh": {"x": [1, 2]}}
        raw = await private_redis.raw()
        assert 0 < await raw.pttl(namespace + "fresh") <= 60_000
        assert await raw.pttl(namespace + "overwritten") > 0  # the default TTL applied
        await raw.aclose()
        stats = await cache.stats()
        assert (stats.recoveries, stats.pending_writes, stats.size) == (1, 0, 4)
    finally:
        await cache.close()


async def test_clear_during_outage_clears_redis_on_recovery(
    private_redis: PrivateRedis, namespace: str
) -> None:
    private_redis.start()
    cache = await _open_fast(private_redis.url, namespace)
    raw = await private_redis.raw()
    try:
        await cache.set_multiple({"a": 1, "b": 2}, ttl=0)
        await raw.set("other:ns:key", b"untouched")
        await raw.aclose()
        await private_redis.save_and_kill()
        assert await cache.clear() == 0
        await cache.set("after", "outage")
        private_redis.start()
        await _recovered(cache)
        assert await cache.get_multiple(["a", "b", "after"]) == {"after": "outage"}
        raw = await private_redis.raw()
        assert await raw.get("other:ns:key") == b"untouched"
        info = await raw.info("commandstats")
        assert "cmdstat_flushdb" not in info
        assert "cmdstat_keys" not in info
        assert "cmdstat_scan" in info
    finally:
        await raw.aclose()
        await cache.close()


async def test_journal_overflow_rebuilds_the_namespace(
    private_redis: PrivateRedis, namespace: str
) -> None:
    private_redis.start()
    cache = await _open_fast(private_redis.url, namespace, max_entries=3)
    try:
        await cache.set("stale", "from before", ttl=0)
        await private_redis.save_and_kill()
        for i in range(5):  # more distinct keys than the memory tier holds
            await cache.set(f"k{i}", i)
        private_redis.start()
        await _recovered(cache)
        # Evicted outage writes are gone, but nothing stale came back either.
        assert await cache.get_multiple(["stale"] + [f"k{i}" for i in range(5)]) == {
            "k2": 2,
            "k3": 3,
            "k4": 4,
        }
    finally:
        await cache.close()


async def test_failed_write_back_keeps_every_outage_write_for_the_next_attempt(
    private_redis: PrivateRedis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    private_redis.start()
    cache = await _open_fast(private_redis.url, namespace)
    try:
        await cache.set("gone", "old", ttl=0)
        await private_redis.save_and_kill()
        await cache.set("a", 1)
        assert await cache.increment("c", 2) == 2
        await cache.delete("gone")
        # A server that answers PING but refuses MULTI: every write-back attempt fails.
        private_redis.start("--rename-command", "MULTI", "")
        await asyncio.sleep(0.3)
        assert cache.backend == "memory"
        assert cache.pending_writes == 3
        assert "write-back to redis failed" in caplog.text
        await cache.set("b", 2)
        assert await cache.increment("c", 1) == 3
        private_redis.kill()
        private_redis.start()
        await _recovered(cache)
        assert await cache.get_multiple(["a", "b", "c", "gone"]) == {"a": 1, "b": 2, "c": 3}
    finally:
        await cache.close()


async def test_a_hung_server_times_out_into_memory_mode_and_recovers(
    private_redis: PrivateRedis, namespace: str
) -> None:
    private_redis.start()
    cache = await _open_fast(private_redis.url, namespace, socket_timeout=0.2)
    assert private_redis.proc is not None
    try:
        await cache.set("before", 1)
        private_redis.proc.send_signal(signal.SIGSTOP)  # accepts nothing, answers nothing
        try:
            assert await cache.get("before", MISSING) is MISSING
            assert (cache.backend, cache.reason) == ("memory", "unreachable (timeout)")
            await cache.set("during", 2)
        finally:
            private_redis.proc.send_signal(signal.SIGCONT)
        await _recovered(cache)
        assert await cache.get_multiple(["before", "during"]) == {"before": 1, "during": 2}
    finally:
        await cache.close()


async def test_repeated_outages_never_disable_redis(
    private_redis: PrivateRedis, namespace: str
) -> None:
    private_redis.start()
    cache = await _open_fast(private_redis.url, namespace)
    try:
        for round_ in range(1, 3):
            private_redis.kill()
            await cache.set("round", round_)
            assert cache.backend == "memory"
            await asyncio.sleep(0.15)  # several failed probes while it is down
            private_redis.start()
            await _recovered(cache)
            assert await cache.get("round") == round_
        stats = await cache.stats()
        assert (stats.fallbacks, stats.recoveries, stats.type) == (2, 2, "redis")
    finally:
        await cache.close()


async def test_wrong_password_falls_back_and_is_never_echoed(
    tmp_path: Path, namespace: str
) -> None:
    _require_redis_server()
    server = PrivateRedis(tmp_path, password="right-secret")
    server.start()
    try:
        url = f"redis://:wrong-secret@127.0.0.1:{server.port}/0"
        cache, choice = await open_cache(url, namespace, probe_initial=0.02, probe_max=0.1)
        try:
            assert (choice.backend, choice.reason) == ("memory", "authentication failed")
            assert "wrong-secret" not in repr(choice)
            assert "wrong-secret" not in str(await cache.get_stats())
            assert choice.requested == f"redis://:***@127.0.0.1:{server.port}/0"
        finally:
            await cache.close()
        good, choice = await open_cache(server.url, namespace)
        assert choice.backend == "redis"
        await good.set("k", 1)
        assert await good.get("k") == 1
        await good.close()
    finally:
        server.kill()


async def test_malformed_redis_url_is_a_value_error_without_the_password() -> None:
    with pytest.raises(ValueError) as info:
        await open_cache("redis://:pw-1234@127.0.0.1:notaport/0", "ns:")
    assert "pw-1234" not in str(info.value)


# -- atomic read-modify-write ---------------------------------------------------------------


async def test_update_multiple_reads_then_writes_what_update_returns(cache: Cache) -> None:
    await cache.set("a", 1)
    seen: list[dict[str, Any]] = []

    def update(found: dict[str, Any]) -> dict[str, Any]:
        seen.append(dict(found))
        return {k: found.get(k, 0) + 10 for k in ("a", "b")}

    assert await cache.update_multiple(["a", "b", "c"], update, ttl=0) == {"a": 11, "b": 10}
    assert seen == [{"a": 1}]  # missing keys absent, called once without contention
    assert await cache.get_multiple(["a", "b", "c"]) == {"a": 11, "b": 10}
    with pytest.raises(ValueError, match="keys it was not given"):
        await cache.update_multiple(["a"], lambda found: {"a": 0, "z": 1})
    assert await cache.get_multiple(["a", "z"]) == {"a": 11}  # nothing written


async def test_a_key_written_meanwhile_makes_redis_merge_again(namespace: str) -> None:
    if not _redis_is_up():
        _unavailable("Redis is not reachable at 127.0.0.1:6379")
    import redis

    other = redis.Redis.from_url(SHARED_REDIS)
    cache = RedisCache.from_url(SHARED_REDIS, namespace=namespace)
    try:
        await cache.set("n", 1, ttl=0)
        calls: list[int] = []

        def add_five(found: dict[str, Any]) -> dict[str, Any]:
            calls.append(found["n"])
            if len(calls) == 1:  # another instance adds 100 between our read and write
                other.set(namespace + "n", b"101")
            return {"n": found["n"] + 5}

        assert await cache.update_multiple(["n"], add_five) == {"n": 106}
        assert calls == [1, 101]  # refused once, merged again with the other's write
        assert await cache.get("n") == 106
        assert cache.conflicts == 1

        def always_overtaken(found: dict[str, Any]) -> dict[str, Any]:
            other.set(namespace + "n", b"7")
            return {"n": -1}

        with pytest.raises(CacheConflictError, match="nothing written"):
            await cache.update_multiple(["n"], always_overtaken)
        assert await cache.get("n") == 7  # the other writer's, never ours
    finally:
        await cache.clear()
        await cache.close()
        other.close()


async def test_a_failover_cache_in_memory_mode_refuses_updates(namespace: str) -> None:
    cache, choice = await open_cache("redis://127.0.0.1:9/0", namespace)
    try:
        assert choice.fallback
        with pytest.raises(CacheUnavailableError):
            await cache.update_multiple(["k"], lambda found: {"k": 1})
        assert await cache.get("k") is None
    finally:
        await cache.close()


async def test_a_read_only_replica_is_an_outage_and_its_writes_wait_for_the_primary(
    private_redis: PrivateRedis, namespace: str
) -> None:
    """A Redis that became a replica (as after a failover the client has not followed)
    answers writes READONLY: the cache answers from memory meanwhile, keeps the writes
    (its pings still succeed, its write-backs are refused, and nothing is dropped), and
    writes them back once the server takes writes again."""
    private_redis.start()
    cache = await _open_fast(private_redis.url, namespace)
    raw = await private_redis.raw()
    try:
        await cache.set("before", 1, ttl=0)
        with socket.socket() as sock:  # a primary that is not there: never synced from
            sock.bind(("127.0.0.1", 0))
            nowhere = sock.getsockname()[1]
        await raw.replicaof("127.0.0.1", nowhere)

        await cache.set("during", {"kept": True}, ttl=0)  # not an error to the caller
        assert cache.backend == "memory"
        assert cache.reason == "unavailable (a read-only replica)"
        assert await cache.increment("count", 2) == 2
        assert await cache.get("during") == {"kept": True}
        await asyncio.sleep(0.3)  # several probes: pings answered, write-backs refused
        assert cache.backend == "memory"
        assert (await cache.stats()).pending_writes == 2

        await raw.replicaof("NO", "ONE")
        await _recovered(cache)
        assert cache.backend == "redis"
        assert await raw.get(namespace + "during") == b'j{"kept":true}'
        assert await raw.get(namespace + "count") == b"2"
        assert await cache.get("before") == 1
    finally:
        await raw.aclose()
        await cache.close()


async def test_a_full_server_is_an_outage_not_an_error(
    private_redis: PrivateRedis, namespace: str
) -> None:
    """maxmemory reached under noeviction: writes answer OOM, which is the server's state,
    not the value's fault."""
    private_redis.start("--maxmemory-policy", "noeviction")
    cache = await _open_fast(private_redis.url, namespace)
    raw = await private_redis.raw()
    try:
        await raw.config_set("maxmemory", 1)
        await cache.set("k", "v")
        assert cache.backend == "memory"
        assert cache.reason == "unavailable (out of memory: maxmemory reached)"
        await raw.config_set("maxmemory", 0)
        await _recovered(cache)
        assert await raw.get(namespace + "k") == b"sv"
    finally:
        await raw.aclose()
        await cache.close()
