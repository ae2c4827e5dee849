"""A day of windows in a region node's memory, with rollup on and off.

Each mode runs in a fresh process that holds only a ``WindowStore`` (the node's windows)
on a simulated clock: every series gets a batch in every 10 s window for ``--hours``
(values log-uniform over four decades), windows are taken as flushed after each step,
and the maintenance pass the node runs every few seconds (rollup, then retention) runs
after each step. Reported per mode: the process's RSS growth and bytes per series, the
windows held, the time to fill the day, the maintenance pass's time (mean and worst) and
its longest rollup step (the node serves calls between steps), and a query over the
whole day and over the last five minutes (median of repeated calls).

    python bench/rollup.py [--series 100] [--hours 24] [--values-per-window 64]
                           [--rollup-after 3600] [--rollup-window 300]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common
import numpy as np
import psutil

from nethical_grpc.series import IngestBatch, SeriesKey, SummaryQuery
from region_node.node import ROLLUP_STEP
from region_node.windows import WindowConfig, WindowStore

S = 1_000_000_000
WINDOW_NS = 10 * S


def run_mode(args: argparse.Namespace) -> dict[str, object]:
    rollup = args.child == "on"
    config = WindowConfig(
        window_ns=WINDOW_NS,
        retention_ns=int(args.hours * 3600 * S),
        rollup_after_ns=int(args.rollup_after * S) if rollup else 0,
        rollup_window_ns=int(args.rollup_window * S),
        max_label_sets_per_metric=args.series,
        max_series=args.series,
    )
    rng = np.random.default_rng(0)
    pool = [10 ** rng.uniform(0, 4, args.values_per_window) for _ in range(997)]
    keys = [SeriesKey("latency_ms", (("series", str(s)),)) for s in range(args.series)]
    steps = int(args.hours * 3600 * S // WINDOW_NS)
    t0 = (1_800_000_000 * S // (args.rollup_window * S)) * (args.rollup_window * S)
    now = [t0]
    store = WindowStore(config, clock=lambda: now[0])
    proc = psutil.Process()
    gc.collect()
    rss_before = proc.memory_info().rss
    passes: list[float] = []
    stalls: list[float] = []
    fill_start = time.perf_counter()
    k = 0
    for step in range(steps):
        now[0] = t0 + step * WINDOW_NS + WINDOW_NS // 2
        for key in keys:
            store.apply(IngestBatch(key, pool[k % len(pool)], None, now[0]))
            k += 1
        store.take_dirty()  # flushed, as the node's store loop does every 10 s
        # the node's maintenance pass: rollup a step at a time (the event loop serves
        # calls between steps), then retention
        began = time.perf_counter()
        while True:
            step_began = time.perf_counter()
            merged = store.roll_up(now[0], limit=ROLLUP_STEP)
            if merged:
                stalls.append(time.perf_counter() - step_began)
            if merged < ROLLUP_STEP:
                break
        store.evict_expired(now[0])
        passes.append(time.perf_counter() - began)
    fill_s = time.perf_counter() - fill_start
    gc.collect()
    rss_after = proc.memory_info().rss

    def median_ms(query: SummaryQuery, repeats: int) -> float:
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            [group] = store.summaries(query)
            times.append(time.perf_counter() - began)
        assert group.summary.count > 0
        return round(statistics.median(times) * 1e3, 3)

    whole_day = median_ms(SummaryQuery(metrics=frozenset({"latency_ms"})), args.day_repeats)
    last_5m = median_ms(
        SummaryQuery(
            metrics=frozenset({"latency_ms"}), start_ns=now[0] - 300 * S, end_ns=now[0] + S
        ),
        args.repeats,
    )
    [day] = store.summaries(SummaryQuery())
    return {
        "rollup": rollup,
        "windows_held": store.window_count,
        "rollup_windows_held": store.rollup_count,
        "values_held": day.summary.count,
        "rss_growth_mb": round((rss_after - rss_before) / 2**20, 1),
        "bytes_per_series": round((rss_after - rss_before) / args.series),
        "fill_s": round(fill_s, 1),
        "maintenance_pass_mean_ms": round(statistics.fmean(passes) * 1e3, 3),
        "maintenance_pass_max_ms": round(max(passes) * 1e3, 3),
        "rollup_steps": len(stalls),
        "rollup_step_p50_ms": round(float(np.percentile(stalls, 50)) * 1e3, 3) if stalls else None,
        "rollup_step_p99_ms": round(float(np.percentile(stalls, 99)) * 1e3, 3) if stalls else None,
        "longest_rollup_step_ms": round(max(stalls) * 1e3, 3) if stalls else None,
        "query_whole_day_ms": whole_day,
        "query_last_5m_ms": last_5m,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=100)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--values-per-window", type=int, default=64)
    parser.add_argument("--rollup-after", type=int, default=3600, help="seconds (1h)")
    parser.add_argument("--rollup-window", type=int, default=300, help="seconds (5m)")
    parser.add_argument("--repeats", type=int, default=50, help="of the 5-minute query")
    parser.add_argument("--day-repeats", type=int, default=5, help="of the whole-day query")
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_mode(args)))
        return
    modes = {}
    for mode in ("off", "on"):
        out = subprocess.run(
            [sys.executable, str(Path(__file__)), *sys.argv[1:], "--child", mode],
            check=True,
            capture_output=True,
            text=True,
        )
        modes[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    off, on = modes["off"], modes["on"]
    common.emit(
        "rollup",
        {
            "series": args.series,
            "hours": args.hours,
            "window_s": WINDOW_NS // S,
            "rollup_after_s": args.rollup_after,
            "rollup_window_s": args.rollup_window,
            "values_per_window": args.values_per_window,
            "value_range": "log-uniform [1, 1e4]",
            "off": off,
            "on": on,
            "memory_ratio": round(off["rss_growth_mb"] / max(on["rss_growth_mb"], 0.1), 1),
            "whole_day_query_speedup": round(
                off["query_whole_day_ms"] / max(on["query_whole_day_ms"], 1e-3), 1
            ),
        },
    )


if __name__ == "__main__":
    main()
