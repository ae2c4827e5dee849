"""A region node's restart: restoring a day of stored windows from its SQLite store.

The parent writes a day of 10 s windows for ``--series`` series (each a summary of 64
values, log-uniform over four decades) into a time-series file, as a node's flushes
would. A fresh process then opens that store as a node does at start and restores them
(``Persister.restore``). Reported: the restore's time, the process's peak RSS above what
it held before the restore, and the windows it ended with.

    python bench/restore.py [--series 50] [--hours 24]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import psutil

from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.server_runtime import tune_collector
from nethical_grpc.storage.timeseries import WindowSummaryRow
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import Persister
from region_node.stores import NodeStores, StoreConfig

S = 1_000_000_000
WINDOW_NS = 10 * S


async def fill(path: Path, series: int, hours: float) -> int:
    """A day of windows for ``series`` series, written as flushes write them."""
    stores = await NodeStores.open(StoreConfig(timeseries_url=f"sqlite:///{path}"), "r1")
    try:
        payloads = common.window_payloads()
        now = time.time_ns()
        steps = int(hours * 3600 * S // WINDOW_NS)
        first = (now // WINDOW_NS - steps + 1) * WINDOW_NS
        rows = []
        written = 0
        for step in range(steps):
            start = first + step * WINDOW_NS
            for s in range(series):
                payload = payloads[(step * series + s) % len(payloads)]
                labels = {"series": str(s)}
                rows.append(
                    WindowSummaryRow(
                        "r1", "r1-a", "latency_ms", labels, start, WINDOW_NS, payload, 64
                    )
                )
            if len(rows) >= 20_000:
                written += await stores.timeseries.upsert_window_summaries(rows)
                rows = []
        written += await stores.timeseries.upsert_window_summaries(rows)
        return written
    finally:
        await stores.close()


async def restore(path: Path) -> dict[str, object]:
    stores = await NodeStores.open(StoreConfig(timeseries_url=f"sqlite:///{path}"), "r1")
    try:
        node = RegionNode(NodeIdentity("r1", "r1-a"))
        persister = Persister(node, stores, ProfileBook(), 10.0)
        common.reset_peak_rss()  # the restore's peak, not the imports'
        rss_before = psutil.Process().memory_info().rss
        began = time.perf_counter()
        restored = await persister.restore()
        seconds = time.perf_counter() - began
        peak = common.peak_rss_bytes()
        rss_after = psutil.Process().memory_info().rss
        # the code before rollup has no rollup_count (this child also ran on it, for the
        # comparison in docs/performance.md)
        rollups = getattr(node.store, "rollup_count", 0)
        return {
            "windows_restored": restored,
            "windows_held": node.store.window_count,
            "rollup_windows_held": rollups,
            "restore_s": round(seconds, 1),
            "peak_rss_above_start_mb": round((peak - rss_before) / 2**20, 1),
            "rss_after_mb_above_start": round((rss_after - rss_before) / 2**20, 1),
        }
    finally:
        await stores.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=50)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        tune_collector()  # as a serving node's process has it
        print(json.dumps(asyncio.run(restore(args.child))))
        return
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as tmp:
        path = Path(tmp) / "ts.db"
        began = time.perf_counter()
        written = asyncio.run(fill(path, args.series, args.hours))
        fill_s = time.perf_counter() - began
        out = subprocess.run(
            [sys.executable, str(Path(__file__)), "--child", str(path)],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        common.emit(
            "restore",
            {
                "series": args.series,
                "hours": args.hours,
                "window_s": WINDOW_NS // S,
                "windows_stored": written,
                "store_mb": round(path.stat().st_size / 2**20, 1),
                "fill_s": round(fill_s, 1),
                **result,
            },
        )


if __name__ == "__main__":
    main()
