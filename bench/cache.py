"""What the region cache costs: Redis get/set/get_multiple latency and the memory backend.

Redis figures are through the cache the node uses (``open_cache("redis://…")``, a
FailoverCache over RedisCache) against the local server at 127.0.0.1:6379, one call at a
time, each timed on its own; plain redis-py ``GET`` on the same server is timed in the
same run, interleaved, as the floor. ``round_trips`` counts the writes a real redis-py
connection sends for one ``get_multiple``/``set_multiple`` of 10 keys. Memory figures are
ns per awaited call over batches of many calls (median and best batch; the loop is
included), for the memory cache and for the failover cache while Redis is unreachable.
The 1-minute load average is recorded: on a shared machine it explains the tails.

    python bench/cache.py [--ops 5000] [--quick]

Targets: Redis get and set p99 ≤ 0.5 ms, get_multiple(10) p99 ≤ 1 ms, memory get ≤ 2 µs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import common
import redis.asyncio as aioredis

from nethical_grpc.storage.cache import FailoverCache, MemoryCache, RedisCache, open_cache

REDIS_URL = "redis://127.0.0.1:6379/0"
PROFILE = {"score": 0.75, "decision": "allow", "violations": ["pii"], "n": 12}


class CountingConnection(aioredis.Connection):
    sends = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        await super().send_packed_command(command, check_health)


def pct(samples_ns: list[int], q: float) -> float:
    """The q-quantile of ``samples_ns`` in ms (nearest rank)."""
    return round(float(common.nearest_rank(samples_ns, q)) / 1e6, 4)


def summary(samples_ns: list[int]) -> dict[str, float]:
    return {
        "p50_ms": pct(samples_ns, 0.50),
        "p99_ms": pct(samples_ns, 0.99),
        "mean_ms": round(statistics.fmean(samples_ns) / 1e6, 4),
    }


async def time_calls(calls: dict[str, Callable[[int], Awaitable[Any]]], ops: int) -> dict[str, Any]:
    """Each call ``ops`` times, interleaved call by call, each timed alone (ns)."""
    samples: dict[str, list[int]] = {name: [] for name in calls}
    for call in calls.values():  # warm up connections and code paths
        for i in range(50):
            await call(i)
    clock = time.perf_counter_ns
    for i in range(ops):
        for name, call in calls.items():
            started = clock()
            await call(i)
            samples[name].append(clock() - started)
    return {name: summary(s) for name, s in samples.items()}


async def ns_per_call(
    call: Callable[[int], Awaitable[Any]], batch: int, batches: int
) -> dict[str, float]:
    """Mean ns per call in each of ``batches`` batches of ``batch`` calls: the median
    batch, and the best one (timeit's convention: the least disturbed by other load)."""
    for i in range(batch):
        await call(i)
    per_call = []
    for _ in range(batches):
        started = time.perf_counter_ns()
        for i in range(batch):
            await call(i)
        per_call.append((time.perf_counter_ns() - started) / batch)
    return {"median_ns": round(statistics.median(per_call), 1), "best_ns": round(min(per_call), 1)}


async def bench_memory(batch: int, batches: int) -> dict[str, Any]:
    cache = MemoryCache("bench:", max_entries=100_000)
    keys = [f"risk_profile:agent-{i}" for i in range(1000)]
    for k in keys:
        await cache.set(k, 0.75, ttl=600)
    await cache.set("profile", PROFILE, ttl=600)
    n = len(keys)
    results = {
        "get_hit_float": await ns_per_call(lambda i: cache.get(keys[i % n]), batch, batches),
        "get_hit_dict": await ns_per_call(lambda i: cache.get("profile"), batch, batches),
        "get_miss": await ns_per_call(lambda i: cache.get("absent"), batch, batches),
        "set_float": await ns_per_call(
            lambda i: cache.set(keys[i % n], 0.5, ttl=600), batch, batches
        ),
        "increment": await ns_per_call(lambda i: cache.increment("count"), batch, batches),
        "get_multiple_10": await ns_per_call(
            lambda i: cache.get_multiple(keys[:10]), batch // 10, batches
        ),
    }
    # The failover cache while Redis is unreachable (what a node serves during an outage).
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    degraded, choice = await open_cache(f"redis://127.0.0.1:{dead_port}/0", "bench:", probe_max=60)
    assert isinstance(degraded, FailoverCache) and choice.backend == "memory"
    for k in keys:
        await degraded.set(k, 0.75, ttl=600)
    results["failover_in_memory_mode_get"] = await ns_per_call(
        lambda i: degraded.get(keys[i % n]), batch, batches
    )
    await degraded.close()
    return results


async def bench_redis(ops: int) -> dict[str, Any]:
    namespace = f"bench:cache:{uuid.uuid4().hex[:8]}:"
    cache, choice = await open_cache(
        REDIS_URL, namespace, connection_class=CountingConnection, max_connections=4
    )
    assert choice.backend == "redis", choice.describe()
    assert isinstance(cache, FailoverCache)
    direct = RedisCache.from_url(REDIS_URL, namespace=namespace)
    raw = aioredis.Redis.from_url(REDIS_URL)
    keys = [f"risk_profile:agent-{i}" for i in range(1000)]
    n = len(keys)
    try:
        await cache.set_multiple({k: PROFILE for k in keys}, ttl=600)
        await raw.set(namespace + "raw", b"j" + b"x" * 60)
        ten = keys[:10]
        figures = await time_calls(
            {
                "get": lambda i: cache.get(keys[i % n]),
                "set": lambda i: cache.set(keys[i % n], PROFILE, ttl=600),
                "get_multiple_10": lambda i: cache.get_multiple(keys[i % 990 : i % 990 + 10]),
                "set_multiple_10": lambda i: cache.set_multiple({k: i for k in ten}, ttl=600),
                "increment": lambda i: cache.increment("count"),
                "redis_cache_get_without_failover": lambda i: direct.get(keys[i % n]),
                "redis_py_get_floor": lambda i: raw.get(namespace + "raw"),
            },
            ops,
        )
        trips = {}
        for name, call in (
            ("get_multiple_10", lambda: cache.get_multiple(ten)),
            ("set_multiple_10", lambda: cache.set_multiple({k: 1 for k in ten}, ttl=600)),
        ):
            before = CountingConnection.sends
            await call()
            trips[name] = CountingConnection.sends - before
        figures["round_trips"] = trips
        figures["value"] = "dict of 4 fields (~70 bytes encoded)"
        return figures
    finally:
        await cache.clear()
        await cache.close()
        await direct.close()
        await raw.aclose()


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=5000, help="timed calls per Redis operation")
    parser.add_argument("--quick", action="store_true", help="a tiny run (500 ops)")
    args = parser.parse_args()
    ops = 500 if args.quick else args.ops
    batch, batches = (2000, 5) if args.quick else (20_000, 15)
    load_before = load_average()
    memory = await bench_memory(batch, batches)
    redis_figures = await bench_redis(ops)
    meets = {
        "redis_get_p99_le_0_5_ms": redis_figures["get"]["p99_ms"] <= 0.5,
        "redis_set_p99_le_0_5_ms": redis_figures["set"]["p99_ms"] <= 0.5,
        "redis_get_multiple_10_p99_le_1_ms": redis_figures["get_multiple_10"]["p99_ms"] <= 1.0,
        "memory_get_median_le_2_us": memory["get_hit_float"]["median_ns"] <= 2000,
    }
    common.emit(
        "cache",
        {
            "ops_per_redis_operation": ops,
            "load_average_1m": {"before": load_before, "after": load_average()},
            "redis": redis_figures,
            "memory": memory,
            "targets": {
                "redis_get_set_p99_ms": 0.5,
                "redis_get_multiple_10_p99_ms": 1.0,
                "memory_get_ns": 2000,
            },
            "meets_targets": meets,
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
