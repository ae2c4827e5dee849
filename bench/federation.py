"""GetGlobalMetrics latency over 10 and 50 region processes (~100 series each).

Each region node is its own process with 10 metrics x 10 label sets. Two coordinator
processes serve the same regions, one per summary transport: ``stream`` (the default,
one long-lived StreamSummaries stream per instance) and ``unary`` (a GetSummaries call
per region per query, what the coordinator uses while telemetry is on). The client asks
for every metric (grouped by metric) with p50, p90 and p99 and the per-region breakdown
off, alternating between the two coordinators query by query, so both are measured in
the same conditions. In the same run, the client also times a bare parallel fan-out of
health Checks straight to the same region processes: the cost of N unary calls on this
machine, with no coordinator and no summaries. It also reports the CPU each global query
costs the coordinator and the region processes, and what the machine's other processes
(services, kernel threads) spent while the queries ran.

    python bench/federation.py [--regions 10 50] [--queries 300] [--mesh-env NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import common
import grpc
import numpy as np

from nethical_grpc import client
from nethical_grpc.cli.processes import Child, spawn

METRICS = 10
TRANSPORTS = ("stream", "unary")
LABEL_SETS = 10
VALUES_PER_SERIES = 2_000


def pct(x: np.ndarray, q: float) -> float:
    return round(float(np.percentile(x, q)), 2)


async def load_region(port: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    batches = [
        client.encode_ingest_request(
            f"metric_{m}", rng.lognormal(1.0, 1.5, size=VALUES_PER_SERIES), {"shard": str(k)}
        )
        for m in range(METRICS)
        for k in range(LABEL_SETS)
    ]
    async with client.insecure_channel(f"127.0.0.1:{port}") as ch:
        await client.ingest(ch, batches)


async def start_regions(
    children: list[Child],
    n_regions: int,
    workdir: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> tuple[list[int], list[str]]:
    """Start ``n_regions`` region node processes (``args`` added to each command line,
    ``env`` to each environment), appended to ``children`` as they start (the caller
    stops them), and load each with 100 series; their ports, and the coordinator's
    ``--region`` arguments for them."""
    names = [f"region-{i:02d}" for i in range(n_regions)]
    for name in names:
        command = ["region", "--region-id", name, "--port", "0", *args]
        children.append(spawn(name, command, workdir, env))
    ports = [c.port(120) for c in children[-n_regions:]]
    await asyncio.gather(*(load_region(p, i) for i, p in enumerate(ports)))
    return ports, [f"--region={n}=127.0.0.1:{p}" for n, p in zip(names, ports, strict=True)]


async def until_covered(ch: grpc.aio.Channel, opts: client.QueryOptions) -> None:
    """Ask for global metrics until the answer covers every region (each region's health
    known to the coordinator), for at most a minute."""
    deadline = time.monotonic() + 60
    while True:
        resp = await client.global_metrics(ch, opts, timeout=10)
        if resp.coverage.complete or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert resp.coverage.complete, resp.coverage


async def bare_fanout(ports: list[int], rounds: int) -> np.ndarray:
    channels = [client.insecure_channel(f"127.0.0.1:{p}") for p in ports]
    try:
        for _ in range(20):
            await asyncio.gather(*(client.check_health(ch) for ch in channels))
        out = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            await asyncio.gather(*(client.check_health(ch) for ch in channels))
            out.append((time.perf_counter() - t0) * 1e3)
        return np.array(out)
    finally:
        for ch in channels:
            await ch.close(None)


async def run(
    n_regions: int, queries: int, workdir: Path, mesh_env: dict[str, str]
) -> dict[str, object]:
    children: list[Child] = []
    try:
        ports, specs = await start_regions(
            children, n_regions, workdir, "--log-level", "WARNING", "--no-evaluate", env=mesh_env
        )
        targets, coordinator_pids = {}, {}
        for transport in TRANSPORTS:
            coord = spawn(
                f"coordinator-{n_regions}-{transport}",
                [
                    "coordinator",
                    "--port",
                    "0",
                    "--log-level",
                    "WARNING",
                    "--summary-transport",
                    transport,
                    *specs,
                ],
                workdir,
                mesh_env,
            )
            children.append(coord)
            targets[transport] = f"127.0.0.1:{coord.port(60)}"
            coordinator_pids[transport] = coord.pid
        opts = client.QueryOptions(quantiles=(0.5, 0.9, 0.99), region_timeout_s=5.0)
        latencies: dict[str, list[float]] = {t: [] for t in TRANSPORTS}
        channels = {t: client.insecure_channel(target) for t, target in targets.items()}
        try:
            for ch in channels.values():
                await until_covered(ch, opts)
                for _ in range(20):  # warm up
                    await client.global_metrics(ch, opts, timeout=10)
            node_pids = [c.pid for c in children[:n_regions]]
            cpu_before = {t: common.cpu_seconds([pid]) for t, pid in coordinator_pids.items()}
            nodes_before = common.cpu_seconds(node_pids)
            others = common.OtherProcesses()
            for _ in range(queries):
                for transport, ch in channels.items():
                    t0 = time.perf_counter()
                    resp = await client.global_metrics(ch, opts, timeout=10)
                    latencies[transport].append((time.perf_counter() - t0) * 1e3)
                    assert resp.coverage.complete
            coordinator_cpu = {
                t: common.cpu_per(cpu_before[t], common.cpu_seconds([pid]), queries, 1e3)
                for t, pid in coordinator_pids.items()
            }
            nodes_cpu = common.cpu_per(
                nodes_before, common.cpu_seconds(node_pids), queries * len(TRANSPORTS), 1e3
            )
            background = others.report()
        finally:
            for ch in channels.values():
                await ch.close(None)
        # the floor in the same run: a bare parallel fan-out of grpc.health.v1 Check from
        # this client straight to the same region processes (no coordinator, no summaries)
        bare = await bare_fanout(ports, queries)
        stream = np.array(latencies["stream"])
        unary = np.array(latencies["unary"])
        return {
            "regions": n_regions,
            "series_per_region": METRICS * LABEL_SETS,
            "results_per_query": len(resp.results),
            "queries": queries,
            "p50_ms": pct(stream, 50),
            "p99_ms": pct(stream, 99),
            "mean_ms": round(float(stream.mean()), 2),
            # ms of CPU per global query: the coordinator's process (each transport its
            # own), and the region processes' together over both transports' queries
            "coordinator_cpu_ms_per_query": coordinator_cpu["stream"],
            "regions_cpu_ms_per_query": nodes_cpu,
            "unary_transport": {
                "p50_ms": pct(unary, 50),
                "p99_ms": pct(unary, 99),
                "mean_ms": round(float(unary.mean()), 2),
                "coordinator_cpu_ms_per_query": coordinator_cpu["unary"],
            },
            "bare_health_fanout_p50_ms": pct(bare, 50),
            "bare_health_fanout_p99_ms": pct(bare, 99),
            # what the machine's other processes spent meanwhile (services, kernel threads)
            "other_processes": background,
        }
    finally:
        for c in reversed(children):
            c.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--regions", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--queries", type=int, default=300)
    common.add_environment_option(parser, "--mesh-env", "the region and coordinator processes")
    args = parser.parse_args()
    mesh_env = common.environment(args.mesh_env)
    workdir = Path(tempfile.mkdtemp(prefix="bench-federation-"))
    results = [await run(n, args.queries, workdir, mesh_env) for n in args.regions]
    common.emit(
        "federation",
        {"mesh_env": mesh_env, "runs": results, "targets_p99_ms": {"10": 10, "50": 30}},
    )


if __name__ == "__main__":
    asyncio.run(main())
