"""Region node RSS with 10,000 live series x 6 windows, values spanning four decades.

A real node process is loaded over gRPC: every series gets values in each of the last
six 10 s windows (per-value timestamps), drawn log-uniformly from [1, 10^4].

    python bench/memory.py [--series 10000] [--windows 6] [--values-per-window 200]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import psutil

from nethical_grpc import client
from nethical_grpc.cli.processes import spawn

WINDOW_NS = 10_000_000_000


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--values-per-window", type=int, default=200)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    node = spawn(
        "node",
        [
            "region",
            "--region-id",
            "mem",
            "--port",
            "0",
            "--log-level",
            "WARNING",
            "--no-evaluate",  # windows only: no model, no PyTorch in the process
            "--max-label-sets",
            str(args.series),
            "--max-series",
            str(args.series),
        ],
        workdir,
    )
    try:
        port = node.port()
        proc = psutil.Process(node.pid)
        await asyncio.sleep(0.5)
        rss_idle = proc.memory_info().rss
        rng = np.random.default_rng(0)
        now = time.time_ns()
        window_starts = [(now // WINDOW_NS - k) * WINDOW_NS for k in range(args.windows)]
        per_series = args.windows * args.values_per_window
        ts = np.repeat(np.array(window_starts, dtype=np.int64), args.values_per_window)
        ts = ts + rng.integers(0, WINDOW_NS, size=ts.size)

        def batches() -> list[bytes]:
            return [
                client.encode_ingest_request(
                    f"metric_{s % 100}",
                    10 ** rng.uniform(0, 4, size=per_series),
                    {"series": str(s // 100)},
                    timestamps_unix_nano=ts,
                )
                for s in range(args.series)
            ]

        async with client.insecure_channel(f"127.0.0.1:{port}") as ch:
            chunk = batches()
            resp = await client.ingest(ch, chunk, timeout=600)
        await asyncio.sleep(0.5)
        rss = proc.memory_info().rss
        common.emit(
            "memory",
            {
                "series": args.series,
                "windows_per_series": args.windows,
                "values_per_window": args.values_per_window,
                "values_ingested": int(resp.accepted_values),
                "value_range": "log-uniform [1, 1e4]",
                "rss_idle_mb": round(rss_idle / 2**20, 1),
                "rss_loaded_mb": round(rss / 2**20, 1),
                "bytes_per_window": round((rss - rss_idle) / (args.series * args.windows)),
                "target_rss_mb": 512,
            },
        )
    finally:
        node.stop()


if __name__ == "__main__":
    asyncio.run(main())
