"""What client-side balancing costs: per-pick decision time for every strategy, and the
overhead the balancer adds to real unary calls.

Picks: 150 instances over 50 regions (3 each, weights 1-3), median over repeats of many
picks (the figure includes the Python loop). Calls: ``Evaluate`` (rules, JIT kernel and
the risk model; the issue's figure) and the much cheaper ``GetNodeInfo`` of a real
region node started in-process, each called directly through its stub and through
``LoadBalancer.execute_request_async`` over the same channel, interleaved call by call
(order rotated) in the same run. ``bookkeeping`` is the balancer's own cost around a
call that does nothing.

    python bench/balancing.py [--picks 50000] [--repeats 7] [--calls 3000] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import common
import grpc

from nethical_grpc.balancing import (
    HealthState,
    Instance,
    LoadBalancer,
    LoadBalancingStrategy,
    remaining_timeout,
)
from nethical_grpc.grpc_options import channel_options
from nethical_grpc.v1 import governance_pb2, region_node_pb2, region_node_pb2_grpc
from region_node.server import RegionServerConfig, start_region_server

REGIONS = 50
PER_REGION = 3


def build(strategy: LoadBalancingStrategy) -> tuple[LoadBalancer, list[str]]:
    regions = [f"region-{r:02d}" for r in range(REGIONS)]
    proximity = {
        r: [regions[(i + k) % REGIONS] for k in range(1, 6)] for i, r in enumerate(regions)
    }
    lb = LoadBalancer(strategy=strategy, proximity=proximity, seed=1)
    for r in regions:
        for k in range(PER_REGION):
            lb.add_instance(f"{r}-{k}", r, f"10.0.{regions.index(r)}.{k}:50051", weight=1 + k)
    return lb, regions


def time_picks(
    get: Callable[[str | None], object], regions: list[str | None], repeats: int
) -> float:
    """Median µs per ``get(region)`` over ``repeats`` passes through ``regions``."""
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for region in regions:
            get(region)
        runs.append((time.perf_counter() - started) / len(regions) * 1e6)
    return round(statistics.median(runs), 3)


def strategy_pick_cost(strategy: LoadBalancingStrategy, n: int, repeats: int) -> dict[str, float]:
    lb, regions = build(strategy)
    get = lb.get_instance
    anywhere: list[str | None] = [None] * n
    homes: list[str | None] = [regions[i % REGIONS] for i in range(n)]
    figures = {
        "any_region_us": time_picks(get, anywhere, repeats),
        "home_region_us": time_picks(get, homes, repeats),
    }
    # every 5th region has no healthy instance: those callers are routed elsewhere
    for r in regions[::5]:
        for k in range(PER_REGION):
            lb.set_health(f"{r}-{k}", HealthState.NOT_SERVING)
    figures["home_down_for_1_in_5_us"] = time_picks(get, homes, repeats)
    return figures


def pick_costs(n: int, repeats: int) -> dict[str, dict[str, float]]:
    return {s.value: strategy_pick_cost(s, n, repeats) for s in LoadBalancingStrategy}


async def time_calls(call: Callable[[], Awaitable[Any]], n: int) -> float:
    """Mean µs per call of ``n`` sequential calls."""
    started = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - started) / n * 1e6


async def bookkeeping_cost(n: int, rounds: int) -> dict[str, float]:
    """µs the balancer adds around a call that does nothing (no network at all)."""
    lb, _ = build(LoadBalancingStrategy.ROUND_ROBIN)
    lb_grpc_deadline, _ = build(LoadBalancingStrategy.ROUND_ROBIN)
    lb_grpc_deadline.enforce_deadlines = False

    async def nothing(inst: Instance | None = None) -> None:
        return None

    bare, enforced, grpc_only, no_deadline = [], [], [], []
    for _ in range(rounds):
        bare.append(await time_calls(nothing, n))
        enforced.append(await time_calls(lambda: lb.execute_request_async(nothing, timeout=5.0), n))
        grpc_only.append(
            await time_calls(
                lambda: lb_grpc_deadline.execute_request_async(nothing, timeout=5.0), n
            )
        )
        no_deadline.append(await time_calls(lambda: lb.execute_request_async(nothing), n))
    base = statistics.median(bare)
    return {
        "added_us_deadline_enforced": round(statistics.median(enforced) - base, 2),
        "added_us_deadline_to_grpc_only": round(statistics.median(grpc_only) - base, 2),
        "added_us_no_deadline": round(statistics.median(no_deadline) - base, 2),
    }


EVALUATE_REQUEST = region_node_pb2.EvaluateRequest(
    action=governance_pb2.AgentAction(
        agent_id="bench-agent",
        action_text="SELECT title FROM books WHERE id = 42",
        action_type="query",
        stated_intent="look something up",
    )
)


async def call_overhead(n: int, rpc: str) -> dict[str, Any]:
    """Direct and balanced calls interleaved call by call, so drift hits all alike."""
    server, _node = await start_region_server(RegionServerConfig(region_id="bench"))
    channel = grpc.aio.insecure_channel(server.address, options=channel_options())
    stub = region_node_pb2_grpc.RegionNodeServiceStub(channel)
    method: Callable[..., Awaitable[Any]]
    request: Any
    if rpc == "Evaluate":
        method, request = stub.Evaluate, EVALUATE_REQUEST
    else:
        method, request = stub.GetNodeInfo, region_node_pb2.GetNodeInfoRequest()
    balancers = {}
    for name, enforce in (("enforced", True), ("grpc_only", False)):
        lb = LoadBalancer(
            LoadBalancingStrategy.ROUND_ROBIN,
            channel_factory=lambda _ep: channel,
            enforce_deadlines=enforce,
        )
        lb.add_instance("bench-0", "bench", server.address)
        balancers[name] = lb

    def via_stub(inst: Instance) -> Awaitable[Any]:
        return method(request, timeout=remaining_timeout())

    variants: dict[str, Callable[[], Awaitable[Any]]] = {
        "direct": lambda: method(request, timeout=5.0),
        "balanced": lambda: balancers["enforced"].execute_request_async(via_stub, timeout=5.0),
        "balanced_grpc_deadline_only": lambda: balancers["grpc_only"].execute_request_async(
            via_stub, timeout=5.0
        ),
    }
    samples: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for _ in range(200):  # warm up the connection and every path
            for call in variants.values():
                await call()
        perf = time.perf_counter
        order = list(variants.items())
        for i in range(n):
            k = i % len(order)  # rotate, so no variant always runs first
            for name, call in order[k:] + order[:k]:
                started = perf()
                await call()
                samples[name].append(perf() - started)
        assert all(b.get_statistics()["total"]["failures"] == 0 for b in balancers.values())
    finally:
        for lb in balancers.values():
            await lb.close()
        server.health.close()
        await server.server.stop(0)
    out: dict[str, Any] = {
        "server": f"region node {rpc}, in-process grpc.aio server on 127.0.0.1",
        "calls_per_variant": n,
    }
    mean_direct = statistics.fmean(samples["direct"]) * 1e6
    median_direct = statistics.median(samples["direct"]) * 1e6
    for name, values in samples.items():
        mean = statistics.fmean(values) * 1e6
        median = statistics.median(values) * 1e6
        out[name] = {"mean_us": round(mean, 1), "median_us": round(median, 1)}
        if name != "direct":
            out[name]["overhead_pct_mean"] = round((mean - mean_direct) / mean_direct * 100, 2)
            out[name]["overhead_pct_median"] = round(
                (median - median_direct) / median_direct * 100, 2
            )
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--picks", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a tiny run")
    args = parser.parse_args()
    if args.quick:
        args.picks, args.repeats, args.calls, args.rounds = 5_000, 3, 300, 2
    load_before = os.getloadavg()[0]
    picks = pick_costs(args.picks, args.repeats)
    worst = max(v for figures in picks.values() for v in figures.values())
    common.emit(
        "balancing",
        {
            "instances": REGIONS * PER_REGION,
            "regions": REGIONS,
            "picks_per_repeat": args.picks,
            "repeats": args.repeats,
            "pick_us": picks,
            "worst_pick_us": worst,
            "target_pick_us": 2.0,
            "bookkeeping": await bookkeeping_cost(20_000, args.rounds),
            "evaluate_call": await call_overhead(args.calls, "Evaluate"),
            "unary_call": await call_overhead(args.calls, "GetNodeInfo"),
            "target_overhead_pct": 5.0,
            # other work on this machine inflates every figure; this says how much there was
            "load_avg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
