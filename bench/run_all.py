"""Run every benchmark (each prints JSON and keeps it in bench/results/), then print the
README's table from the results.

    python bench/run_all.py [--table-only]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    "ingest",
    "federation",
    "memory",
    "store_memory",
    "rollup",
    "restore",
    "restart",
    "wal_replay",
    "peers",
    "wide_answer",
    "evaluate",
    "jit",
    "gpu",
    "balancing",
    "failover",
    "cache",
    "timeseries",
    "audit",
    "telemetry",
    "idle",
]


def load(name: str) -> dict:  # type: ignore[type-arg]
    return json.loads((HERE / "results" / f"{name}.json").read_text())  # type: ignore[no-any-return]


def table() -> str:
    rows = ["| figure | measured | target |", "|---|---|---|"]
    ing = load("ingest")
    rows.append(
        f"| ingest, one region node, 10k-value batches over gRPC | "
        f"{ing['node_obs_per_s'] / 1e6:.1f} M obs/s (bare transport "
        f"{ing['bare_transport_obs_per_s'] / 1e6:.1f} M obs/s, ratio {ing['node_over_bare']}) "
        f"| ≥ 20 M obs/s |"
    )
    fed = load("federation")
    targets = fed["targets_p99_ms"]
    for run in fed["runs"]:
        rows.append(
            f"| GetGlobalMetrics, {run['regions']} region processes × "
            f"{run['series_per_region']} series | p50 {run['p50_ms']} ms, "
            f"p99 {run['p99_ms']} ms | p99 ≤ {targets[str(run['regions'])]} ms |"
        )
    mem = load("memory")
    rows.append(
        f"| region node RSS, {mem['series']:,} series × {mem['windows_per_series']} windows, "
        f"values over four decades | {mem['rss_loaded_mb']} MB (idle {mem['rss_idle_mb']} MB) "
        f"| ≤ 512 MB |"
    )
    sm = load("store_memory")
    bounded, unbounded = sm["bounded"], sm["unbounded"]
    rows.append(
        f"| region node RSS after {sm['evaluations']:,} evaluations on `memory://` stores | "
        f"{bounded['checkpoints'][-1]['rss_mib']} MiB keeping the newest "
        f"{bounded['memory_store_records']:,} (no bound: "
        f"{unbounded['checkpoints'][-1]['rss_mib']} MiB) | bounded |"
    )
    ru = load("rollup")
    rows.append(
        f"| a day of 10 s windows, {ru['series']} series: memory with rollup on / off | "
        f"{ru['on']['rss_growth_mb']} / {ru['off']['rss_growth_mb']} MB (×{ru['memory_ratio']}); "
        f"whole-day query {ru['on']['query_whole_day_ms']} / {ru['off']['query_whole_day_ms']} ms "
        f"| |"
    )
    pe = load("peers")
    rows.append(
        f"| region scope: another instance's {pe['windows_stored']:,} windows on PostgreSQL, "
        f"a refresh after its flush / a full load | {pe['refresh']['median_ms']} / "
        f"{pe['full_load']['median_ms']} ms | |"
    )
    rs = load("restart")
    rows.append(
        f"| a restart over a day of {rs['series']} series' stored windows: SERVING / whole "
        f"answers, by default and with `--serve-while-restoring` | "
        f"{rs['default']['serving_s']} / {rs['default']['whole_s']} s and "
        f"{rs['serve_while_restoring']['serving_s']} / "
        f"{rs['serve_while_restoring']['whole_s']} s | |"
    )
    m = ing["machine"]
    rows.append("")
    rows.append(
        f"Measured on {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python "
        f"{m['python']}, NumPy {m['numpy']}, grpcio {m['grpcio']}, kernels: {m['jit']}."
    )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if not args.table_only:
        for name in BENCHES:
            subprocess.run([sys.executable, str(HERE / f"{name}.py")], check=True)
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
