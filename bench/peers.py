"""A region-scope node keeping up with another instance's windows on a shared PostgreSQL.

One instance ("r1-a") has flushed ``--hours`` of 10 s windows for ``--series`` series
(each a summary of 64 values, log-uniform over four decades) into a fresh schema. A
region-scope node of the same region ("r1-b") then loads them as its peers' windows:

* ``full_load``: everything, as it does at its start (and as every refresh did before
  refreshes read only what changed), ``--full-loads`` times;
* ``refresh``: after each of ``--refreshes`` flushes of the writer, each replacing the
  newest window of every series, the reader's refresh (the windows flushed since);
* ``idle_refresh``: a refresh with nothing flushed since.

Reported per step: seconds (median and max), rows read, and the reader's peak RSS. The
schema is dropped at the end.

    python bench/peers.py [--series 1500] [--hours 1] [--url postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
from typing import Any

import common
import psutil
import psycopg

from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.server_runtime import tune_collector
from nethical_grpc.storage.timeseries import WindowSummaryRow
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import Persister
from region_node.stores import NodeStores, StoreConfig

S = 1_000_000_000
WINDOW_NS = 10 * S
DEFAULT_URL = os.environ.get(
    "NETHICAL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def _rows(series: int, start: int, payloads: list[bytes], salt: int) -> list[WindowSummaryRow]:
    """One window starting at ``start`` for every series, as the writer flushes them."""
    return [
        WindowSummaryRow(
            "r1",
            "r1-a",
            "latency_ms",
            {"series": str(s)},
            start,
            WINDOW_NS,
            payloads[(salt + s) % len(payloads)],
            64,
        )
        for s in range(series)
    ]


async def fill(stores: NodeStores, series: int, hours: float, newest: int) -> int:
    payloads = common.window_payloads()
    steps = int(hours * 3600 * S // WINDOW_NS)
    written = 0
    rows: list[WindowSummaryRow] = []
    for step in range(steps):
        rows += _rows(series, newest - (steps - 1 - step) * WINDOW_NS, payloads, step)
        if len(rows) >= 20_000:
            written += await stores.timeseries.upsert_window_summaries(rows)
            rows = []
    return written + await stores.timeseries.upsert_window_summaries(rows)


class _Rows:
    """Counts the rows the reader's loads answer."""

    def __init__(self, stores: NodeStores) -> None:
        self.read = 0
        self._load = stores.timeseries.load_window_summaries
        stores.timeseries.load_window_summaries = self  # type: ignore[method-assign]

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        rows = await self._load(*args, **kwargs)
        self.read += len(rows)
        return rows


def _figures(seconds: list[float], rows: list[int]) -> dict[str, Any]:
    return {
        "runs": len(seconds),
        "median_ms": round(statistics.median(seconds) * 1000, 1),
        "max_ms": round(max(seconds) * 1000, 1),
        "rows_read": rows[0] if len(set(rows)) == 1 else rows,
    }


async def run(url: str, series: int, hours: float, full_loads: int, refreshes: int) -> None:
    schema = f"bench_peers_{os.getpid()}_{secrets.token_hex(3)}"
    config = StoreConfig(timeseries_url=f"{url}?schema={schema}")
    writer = await NodeStores.open(config, "r1")
    reader_stores = await NodeStores.open(config, "r1")
    try:
        newest = time.time_ns() // WINDOW_NS * WINDOW_NS
        began = time.perf_counter()
        written = await fill(writer, series, hours, newest)
        fill_s = time.perf_counter() - began

        node = RegionNode(NodeIdentity("r1", "r1-b", region_scope=True))
        reader = Persister(node, reader_stores, ProfileBook(), 10.0)
        counted = _Rows(reader_stores)
        # the peak of the reader's steps, not of the writer's fill in this same process
        peak_known = common.reset_peak_rss()
        rss_before = psutil.Process().memory_info().rss

        async def timed(step: Any) -> tuple[float, int]:
            counted.read = 0
            t0 = time.perf_counter()
            await step()
            return time.perf_counter() - t0, counted.read

        async def full() -> None:
            reader._peers_seen = None  # as every refresh did before
            await reader.refresh_peers()

        full_runs = [await timed(full) for _ in range(full_loads)]
        payloads = common.window_payloads()
        refresh_runs = []
        for n in range(refreshes):
            await writer.timeseries.upsert_window_summaries(_rows(series, newest, payloads, n))
            refresh_runs.append(await timed(reader.refresh_peers))
        idle_runs = [await timed(reader.refresh_peers) for _ in range(refreshes)]
        peak = common.peak_rss_bytes()
        assert node.peers is not None
        common.emit(
            "peers",
            {
                "store": "postgresql (partitioned), loopback",
                "series": series,
                "hours": hours,
                "window_s": WINDOW_NS // S,
                "windows_stored": written,
                "fill_s": round(fill_s, 1),
                "windows_held": node.peers.window_count,
                "full_load": _figures(*map(list, zip(*full_runs, strict=True))),
                "refresh": _figures(*map(list, zip(*refresh_runs, strict=True))),
                "idle_refresh": _figures(*map(list, zip(*idle_runs, strict=True))),
                # None: the peak could not be reset after the fill
                "peak_rss_above_start_mb": (
                    round((peak - rss_before) / 2**20, 1) if peak_known else None
                ),
            },
        )
    finally:
        await writer.close()
        await reader_stores.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=1500)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--full-loads", type=int, default=3)
    parser.add_argument("--refreshes", type=int, default=10)
    parser.add_argument("--url", default=DEFAULT_URL)
    args = parser.parse_args()
    tune_collector()  # as a serving node's process has it
    asyncio.run(run(args.url, args.series, args.hours, args.full_loads, args.refreshes))


if __name__ == "__main__":
    main()
