"""Time-series store on PostgreSQL and SQLite, in one run, on the same data.

For each backend: insert ``--rows`` metric rows (one metric, ``--agents`` agents, spread
evenly over one UTC day) with ``insert_metrics`` in batches of ``--batch``; then time

* ``aggregate_metrics`` with per-minute buckets over the whole day (all rows), over the
  day minus 30 s at each end (whole minutes from the rollup plus raw edges), and with
  30-second buckets (not whole minutes: a raw scan, for comparison);
* ``query_metrics`` for one agent over the day (random agent each time, limit 1000);
* ``insert_metric_values`` (the columnar path an ingest batch takes) for
  ``--columnar-rows`` more rows, into another region.

Latencies are p50/p99 (nearest rank) over ``--repeats`` calls (three times as many
queries; a tenth as many raw scans, at least 3: ``n`` says) after two warm-up calls (one
for the raw scan). Targets (from the issue): aggregate ≤ 50 ms, query ≤ 10 ms; insert
rows/s is reported. PostgreSQL uses a fresh schema, dropped at the end, and is ANALYZEd
after the load (what autovacuum does on a production server; this one may have it off);
SQLite a WAL file in a temporary directory.
The machine's load average is recorded before and after: these figures are only comparable
on a quiet machine.

    python bench/timeseries.py [--rows 1000000] [--batch 10000] [--repeats 30] [--quick]
                               [--postgres-url URL] [--no-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import common
import numpy as np

from nethical_grpc.storage.timeseries import MetricPoint, TimeSeriesStore, open_timeseries

DAY = datetime(2026, 1, 1, tzinfo=UTC)
US_PER_DAY = 86_400_000_000
TARGET_AGGREGATE_MS = 50.0
TARGET_QUERY_MS = 10.0


def percentiles(samples: list[float]) -> dict[str, float]:
    """The median and the p99 (nearest rank) of ``samples``, ms, and their count."""
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(common.nearest_rank(ordered, 0.99), 3),
        "n": len(ordered),
    }


async def timed(
    fn: Callable[[], Awaitable[Any]], repeats: int, warmups: int = 2
) -> tuple[dict[str, float], Any]:
    result = None
    for _ in range(warmups):
        result = await fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = await fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return percentiles(samples), result


def batch_points(
    start: int, stop: int, rows: int, agents: int, rng: np.random.Generator
) -> list[MetricPoint]:
    idx = np.arange(start, stop, dtype=np.int64)
    offsets = (idx * US_PER_DAY) // rows
    values = rng.random(stop - start).tolist()
    return [
        MetricPoint(f"agent-{i % agents}", "risk_score", v, DAY + timedelta(microseconds=o))
        for i, o, v in zip(idx.tolist(), offsets.tolist(), values, strict=True)
    ]


async def run_backend(
    store: TimeSeriesStore,
    args: argparse.Namespace,
    after_load: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    out: dict[str, Any] = {}

    insert_s = build_s = 0.0
    for start in range(0, args.rows, args.batch):
        t0 = time.perf_counter()
        batch = batch_points(start, min(start + args.batch, args.rows), args.rows, args.agents, rng)
        t1 = time.perf_counter()
        await store.insert_metrics(batch)
        t2 = time.perf_counter()
        build_s += t1 - t0
        insert_s += t2 - t1
    out["insert_metrics"] = {
        "rows": args.rows,
        "batch": args.batch,
        "seconds": round(insert_s, 2),
        "rows_per_s": round(args.rows / insert_s),
        "building_points_s": round(build_s, 2),
    }
    if after_load is not None:
        out["after_load"] = after_load()

    end = DAY + timedelta(days=1)
    agg_full, rows = await timed(
        lambda: store.aggregate_metrics("risk_score", "avg", "1 minute", DAY, end), args.repeats
    )
    assert sum(r.count for r in rows) == args.rows, "aggregate must cover every row"
    agg_full["buckets"] = len(rows)
    agg_edges, rows = await timed(
        lambda: store.aggregate_metrics(
            "risk_score",
            "avg",
            "1 minute",
            DAY + timedelta(seconds=30),
            end - timedelta(seconds=30),
        ),
        args.repeats,
    )
    agg_edges["buckets"] = len(rows)
    agg_raw, rows = await timed(
        lambda: store.aggregate_metrics("risk_score", "avg", 30, DAY, end),
        max(3, args.repeats // 10),
        warmups=1,
    )
    agg_raw["buckets"] = len(rows)
    out["aggregate_per_minute_day"] = agg_full
    out["aggregate_per_minute_unaligned"] = agg_edges
    out["aggregate_30s_raw_scan"] = agg_raw

    agents = iter(rng.integers(0, args.agents, size=args.repeats * 3 + 10).tolist())
    query, rows = await timed(
        lambda: store.query_metrics(
            agent_id=f"agent-{next(agents)}", start_time=DAY, end_time=end, limit=1000
        ),
        args.repeats * 3,
    )
    query["rows_returned"] = len(rows)
    out["query_one_agent_day"] = query

    n_col = args.columnar_rows
    ts_ns = DAY.timestamp() * 1e9 + np.arange(n_col, dtype=np.int64) * (86_400 * 10**9 // n_col)
    values = rng.random(n_col)
    t0 = time.perf_counter()
    for start in range(0, n_col, args.batch):
        sl = slice(start, start + args.batch)
        await store.insert_metric_values(
            "latency_ms",
            values[sl],
            ts_ns[sl].astype(np.int64),
            agent_id=f"agent-{start // args.batch % args.agents}",
            region_id="bench-columnar",
            metadata={"decision": "ALLOW"},
        )
    col_s = time.perf_counter() - t0
    out["insert_metric_values"] = {
        "rows": n_col,
        "batch": args.batch,
        "seconds": round(col_s, 2),
        "rows_per_s": round(n_col / col_s),
    }
    out["targets_met"] = {
        "aggregate_p50_le_50ms": agg_full["p50_ms"] <= TARGET_AGGREGATE_MS,
        "aggregate_p99_le_50ms": agg_full["p99_ms"] <= TARGET_AGGREGATE_MS,
        "unaligned_aggregate_p99_le_50ms": agg_edges["p99_ms"] <= TARGET_AGGREGATE_MS,
        "query_p50_le_10ms": query["p50_ms"] <= TARGET_QUERY_MS,
        "query_p99_le_10ms": query["p99_ms"] <= TARGET_QUERY_MS,
    }
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if not args.no_postgres:
        import psycopg

        schema = f"bench_timeseries_{os.getpid()}"
        url = f"{args.postgres_url}?schema={schema}"
        store, choice = await open_timeseries(url, "bench", retention=None)
        try:
            if choice.fallback:
                results["postgresql"] = {"skipped": choice.describe()}
            else:

                def analyze() -> dict[str, Any]:
                    # Production servers run autovacuum, which analyzes new partitions; when
                    # it is off (as on some test servers) plans are made with no statistics.
                    with psycopg.connect(args.postgres_url, autocommit=True) as conn:
                        row = conn.execute("SHOW autovacuum").fetchone()
                        autovacuum = str(row[0]) if row else "unknown"
                        t0 = time.perf_counter()
                        conn.execute(f'ANALYZE "{schema}".metrics, "{schema}".metric_rollup')
                        return {
                            "server_autovacuum": autovacuum,
                            "analyze_s": round(time.perf_counter() - t0, 2),
                        }

                res = await run_backend(store, args, analyze)
                results["postgresql"] = {"backend": choice.backend, **res}
        finally:
            await store.close()
            with psycopg.connect(args.postgres_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    with tempfile.TemporaryDirectory() as tmp:
        store, choice = await open_timeseries(f"sqlite://{tmp}/bench.db", "bench", retention=None)
        try:
            res = await run_backend(store, args)
            results["sqlite"] = {"backend": choice.backend + " (file, WAL)", **res}
        finally:
            await store.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--columnar-rows", type=int, default=200_000)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "NETHICAL_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--quick", action="store_true", help="50k rows, 10 repeats")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeats, args.columnar_rows = 50_000, 10, 20_000
    t0 = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    backends = asyncio.run(main_async(args))
    common.emit(
        "timeseries",
        {
            "rows": args.rows,
            "agents": args.agents,
            "span": "one UTC day",
            "targets_ms": {"aggregate": TARGET_AGGREGATE_MS, "query": TARGET_QUERY_MS},
            "backends": backends,
            "wall_s": round(time.perf_counter() - t0, 1),
            "load_avg_before": load_before,
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        },
    )


if __name__ == "__main__":
    main()
