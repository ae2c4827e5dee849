"""Observations/s one region node accepts over gRPC (client streaming, 10k-value batches),
beside a bare sink with the same transport and parsing but no aggregation, and beside the
same node with its write-ahead log on (every batch logged, fsync before each stream's
acknowledgement; windows flushed to a SQLite file every 10 s, checkpointing the log).

Both servers are separate processes; the client runs here, on the same machine.
Rounds alternate node/sink so both see the same machine conditions.

    python bench/ingest.py [--seconds 5] [--rounds 3] [--streams 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import common
import numpy as np

from nethical_grpc import client
from nethical_grpc.cli.processes import PARENT_PID_ENV, Child, spawn

BATCH = 10_000


def make_batches(n: int, seed: int = 1) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        values = rng.lognormal(mean=2.0, sigma=2.0, size=BATCH)  # spans many decades
        labels = {"decision": ("ALLOW", "RESTRICT", "BLOCK", "TERMINATE")[i % 4]}
        out.append(client.encode_ingest_request(f"metric_{i % 4}", values, labels))
    return out


async def _stream(target: str, batches: list[bytes], seconds: float) -> int:
    async def gen() -> AsyncIterator[bytes]:
        end = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < end:
            for _ in range(16):
                yield batches[i % len(batches)]
                i += 1

    async with client.insecure_channel(target) as ch:
        resp = await client.ingest(ch, gen(), timeout=seconds + 60)
    return int(resp.accepted_values)


async def measure(target: str, batches: list[bytes], seconds: float, streams: int) -> float:
    # warm up (JIT compilation, connection)
    await _stream(target, batches, 0.5)
    started = time.perf_counter()
    totals = await asyncio.gather(*(_stream(target, batches, seconds) for _ in range(streams)))
    elapsed = time.perf_counter() - started
    return sum(totals) / elapsed


def start_sink(workdir: Path, timeout_s: float = 30.0) -> tuple[subprocess.Popen[bytes], int]:
    """The bare sink process (stopped when this process dies) and its port; one that does
    not say its port within ``timeout_s`` is stopped, and ``RuntimeError``."""
    port_file = workdir / "sink.port"
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "sink.py"), "--port-file", str(port_file)],
        env={**os.environ, PARENT_PID_ENV: str(os.getpid())},
    )
    deadline = time.monotonic() + timeout_s
    while not port_file.exists() or not port_file.read_text():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            proc.wait()
            raise RuntimeError("sink did not start")
        time.sleep(0.02)
    return proc, int(port_file.read_text())


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=2)
    args = parser.parse_args()
    batches = make_batches(64)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    node: Child = spawn("node", list(common.BENCH_REGION), workdir)
    durable: Child = spawn(
        "durable",
        [
            *common.BENCH_REGION,
            "--wal-dir",
            str(workdir / "wal"),
            "--timeseries-url",
            f"sqlite:///{workdir / 'ts.db'}",
        ],
        workdir,
    )
    sink, sink_port = start_sink(workdir)
    try:
        node_target = f"127.0.0.1:{node.port()}"
        wal_target = f"127.0.0.1:{durable.port()}"
        sink_target = f"127.0.0.1:{sink_port}"
        node_rates, wal_rates, sink_rates = [], [], []
        for _ in range(args.rounds):
            node_rates.append(await measure(node_target, batches, args.seconds, args.streams))
            wal_rates.append(await measure(wal_target, batches, args.seconds, args.streams))
            sink_rates.append(await measure(sink_target, batches, args.seconds, args.streams))
    finally:
        node.stop()
        durable.stop()
        sink.terminate()
        sink.wait(10)
    node_rate = statistics.median(node_rates)
    wal_rate = statistics.median(wal_rates)
    sink_rate = statistics.median(sink_rates)
    common.emit(
        "ingest",
        {
            "batch_values": BATCH,
            "streams": args.streams,
            "seconds_per_round": args.seconds,
            "rounds": args.rounds,
            "node_obs_per_s": round(node_rate),
            "bare_transport_obs_per_s": round(sink_rate),
            "node_over_bare": round(node_rate / sink_rate, 3),
            "node_with_wal_obs_per_s": round(wal_rate),
            "wal_over_node": round(wal_rate / node_rate, 3),
            "node_with_wal_obs_per_s_rounds": [round(r) for r in wal_rates],
            "node_obs_per_s_rounds": [round(r) for r in node_rates],
            "bare_obs_per_s_rounds": [round(r) for r in sink_rates],
            "target_obs_per_s": 20_000_000,
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
