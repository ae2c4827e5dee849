"""A restart's read of a write-ahead log: how long a node takes to get a log's batches
back into its windows.

A log of ``--batches`` Ingest messages of ``--values`` values each (20 metrics × 5 label
values, lognormal) is written once, then read back into a fresh node in the two ways a
restart does, alternated ``--rounds`` times:

* ``one_pass``: a node on a store that keeps no windows (the in-memory default) applies
  each batch as it reads it (``RegionNode.hold_wal(..., apply=True)``);
* ``held_then_replayed``: a node on a durable store first reads the log for its batch
  ids, and applies the batches once the store said which it holds (``hold_wal`` then
  ``replay_wal``; here the store holds none), as every restart did before.

    python bench/wal_replay.py [--batches 2000] [--values 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import common
import numpy as np

from nethical_grpc import client
from nethical_grpc.series import SummaryQuery
from region_node.node import NodeIdentity, RegionNode
from region_node.wal import WriteAheadLog


def write_log(directory: Path, batches: int, values: int) -> int:
    """The log's size in bytes."""
    wal = WriteAheadLog(directory)
    rng = np.random.default_rng(1)
    now = time.time_ns()
    for i in range(batches):
        raw = client.encode_ingest_request(
            f"metric_{i % 20}", rng.lognormal(size=values), {"k": str(i % 5)}, batch_id=f"b{i}"
        )
        wal.append(raw, now)
    wal.close()
    return sum(p.stat().st_size for p in directory.glob("wal-*.log"))


def read_back(directory: Path, one_pass: bool) -> tuple[float, int]:
    """Seconds to get the log into a fresh node's windows, and the values it holds."""
    node = RegionNode(NodeIdentity("bench", "bench-0"))
    started = time.perf_counter()
    wal = WriteAheadLog(directory)
    if one_pass:
        node.hold_wal(wal, apply=True)
    else:
        node.hold_wal(wal)
        node.replay_wal()
    elapsed = time.perf_counter() - started
    wal.close()
    held = sum(g.summary.count for g in node.summaries(SummaryQuery()))
    return elapsed, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=2_000)
    parser.add_argument("--values", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="bench-wal-"))
    try:
        size = write_log(directory, args.batches, args.values)
        times: dict[str, list[float]] = {"one_pass": [], "held_then_replayed": []}
        for _ in range(args.rounds):
            for mode in times:
                elapsed, held = read_back(directory, one_pass=mode == "one_pass")
                if held != args.batches * args.values:
                    raise SystemExit(
                        f"{mode}: {held} values back, not {args.batches * args.values}"
                    )
                times[mode].append(round(elapsed, 3))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    medians = {mode: statistics.median(t) for mode, t in times.items()}
    common.emit(
        "wal_replay",
        {
            "batches": args.batches,
            "values_per_batch": args.values,
            "log_mib": round(size / 2**20, 1),
            "rounds": args.rounds,
            "one_pass_s": times["one_pass"],
            "held_then_replayed_s": times["held_then_replayed"],
            "one_pass_median_s": medians["one_pass"],
            "held_then_replayed_median_s": medians["held_then_replayed"],
            "values_per_s_one_pass": round(args.batches * args.values / medians["one_pass"]),
        },
    )


if __name__ == "__main__":
    main()
