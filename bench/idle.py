"""What an idle mesh costs: CPU and wake-ups per second of region nodes and a coordinator
that serve no request.

Region node processes (default stores, evaluation on) each get 100 series of data and
one coordinator process watches them (health Watch streams, keepalive pings, its summary
streams opened by a first global query). After ``--settle`` seconds (past the nodes'
first window flush), the script reads each process's CPU time and voluntary context
switches (a switch is a sleep: each one is a wake-up when the process sleeps again)
over ``--seconds`` seconds. On a machine whose cores the nodes share, every wake-up of
an idle node is time taken from the ones that work.

    python bench/idle.py [--regions 10] [--settle 12] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import common
import federation

from nethical_grpc import client
from nethical_grpc.cli.processes import Child, spawn


def rates(
    before: tuple[float, int], after: tuple[float, int], seconds: float, processes: int
) -> dict[str, float]:
    """Per process: ms of CPU per second, and wake-ups per second."""
    return {
        "cpu_ms_per_s": round((after[0] - before[0]) / seconds / processes * 1e3, 3),
        "wakeups_per_s": round((after[1] - before[1]) / seconds / processes, 2),
    }


async def run(n_regions: int, settle_s: float, seconds: float, workdir: Path) -> dict[str, object]:
    children: list[Child] = []
    try:
        _, specs = await federation.start_regions(children, n_regions, workdir)
        coordinator = spawn("coordinator", ["coordinator", "--port", "0", *specs], workdir)
        children.append(coordinator)
        async with client.insecure_channel(f"127.0.0.1:{coordinator.port(60)}") as ch:
            await federation.until_covered(
                ch, client.QueryOptions(quantiles=(0.5,), region_timeout_s=5.0)
            )
        await asyncio.sleep(settle_s)
        node_pids = [c.pid for c in children[:n_regions]]
        nodes_before = common.thread_usage(node_pids)
        coordinator_before = common.thread_usage([coordinator.pid])
        started = time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - started
        nodes_after = common.thread_usage(node_pids)
        coordinator_after = common.thread_usage([coordinator.pid])
        return {
            "regions": n_regions,
            "seconds": round(elapsed, 1),
            "region_node": rates(nodes_before, nodes_after, elapsed, n_regions),
            "coordinator": rates(coordinator_before, coordinator_after, elapsed, 1),
        }
    finally:
        for c in reversed(children):
            c.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--regions", type=int, default=10)
    parser.add_argument("--settle", type=float, default=12.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    result = asyncio.run(run(args.regions, args.settle, args.seconds, workdir))
    common.emit("idle", result)


if __name__ == "__main__":
    main()
