"""A region node process restarted over a day of stored windows: how long until it
serves, and until its answers are whole, by default and with ``--serve-while-restoring``.

The parent writes a day of 10 s windows (23.5 hours: all inside the node's retention)
for ``--series`` series into a SQLite
time-series file, as a node's flushes would (``bench/restore.py``'s fill). It then starts
``nethical-mesh region`` on that file, in rounds that alternate the two modes, and from
the moment it spawns the process it asks, every 20 ms: the health of the node's service
(until SERVING), then one ``Ingest`` of 1,000 values (its latency: the node takes
batches while it restores, or not), then ``GetSummaries`` of the stored metric every
100 ms until the answer names no gap and holds every stored window's values.
Reported per mode (medians over the rounds): seconds to the first health answer (the
process up), to SERVING, and to a whole answer; whether an answer named a gap before.

    python bench/restart.py [--series 50] [--hours 23.5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import tempfile
import time
from pathlib import Path

import common
import grpc
import numpy as np
import restore
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nethical_grpc import client
from nethical_grpc.cli.processes import spawn
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc

SERVICE = "nethical_grpc.v1.RegionNodeService"
MODES = {"default": [], "serve_while_restoring": ["--serve-while-restoring"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def one_restart(
    db: Path, workdir: Path, flags: list[str], expected: int
) -> dict[str, object]:
    port = free_port()
    args = [
        "region",
        "--region-id",
        "r1",
        "--instance-id",
        "r1-a",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--timeseries-url",
        f"sqlite:///{db}",
        "--no-evaluate",
        "--log-level",
        "WARNING",
        *flags,
    ]
    began = time.monotonic()
    child = spawn("region", args, workdir)
    up_s = serving_s = whole_s = None
    ingest_ms = None
    gap_seen = False
    try:
        async with client.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            node = region_node_pb2_grpc.RegionNodeServiceStub(ch)
            while serving_s is None:
                try:
                    status = (
                        await health.Check(
                            health_pb2.HealthCheckRequest(service=SERVICE), timeout=1
                        )
                    ).status
                except grpc.aio.AioRpcError:
                    status = None
                now = time.monotonic() - began
                if status is not None and up_s is None:
                    up_s = now
                if status == health_pb2.HealthCheckResponse.SERVING:
                    serving_s = now
                else:
                    if now > 900:
                        raise SystemExit("the node never answered SERVING")
                    await asyncio.sleep(0.02)
            t0 = time.perf_counter()
            await client.ingest(ch, [client.encode_ingest_request("fresh", np.ones(1_000))])
            ingest_ms = (time.perf_counter() - t0) * 1e3
            request = region_node_pb2.GetSummariesRequest(metrics=["latency_ms"])
            while whole_s is None:
                answer = await node.GetSummaries(request, timeout=60)
                count = sum(s.summary.moments.count for s in answer.series)
                gap_seen = gap_seen or bool(answer.gaps)
                if not answer.gaps and count == expected:
                    whole_s = time.monotonic() - began
                elif not answer.gaps:
                    raise SystemExit(f"an answer without a gap held {count} of {expected}")
                else:
                    await asyncio.sleep(0.1)
    finally:
        await asyncio.to_thread(child.stop)
    return {
        "up_s": round(up_s or 0.0, 2),
        "serving_s": round(serving_s, 2),
        "whole_s": round(whole_s, 2),
        "ingest_ms": round(ingest_ms, 1),
        "gap_named_before_whole": gap_seen,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=50)
    # inside the node's 24 h retention, so every stored window is restored
    parser.add_argument("--hours", type=float, default=23.5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as tmp:
        db = Path(tmp) / "ts.db"
        written = asyncio.run(restore.fill(db, args.series, args.hours))
        expected = written * 64  # each stored window summarises 64 values
        runs: dict[str, list[dict[str, object]]] = {m: [] for m in MODES}
        for r in range(args.rounds):
            for mode, flags in MODES.items():
                runs[mode].append(
                    asyncio.run(one_restart(db, Path(tmp) / f"{mode}-{r}", flags, expected))
                )

    def median(mode: str, key: str) -> float:
        return round(float(np.median([float(run[key]) for run in runs[mode]])), 2)  # type: ignore[arg-type]

    common.emit(
        "restart",
        {
            "series": args.series,
            "hours": args.hours,
            "windows_stored": written,
            "rounds": args.rounds,
            **{
                mode: {
                    "up_s": median(mode, "up_s"),
                    "serving_s": median(mode, "serving_s"),
                    "whole_s": median(mode, "whole_s"),
                    "ingest_ms": median(mode, "ingest_ms"),
                    "gap_named_before_whole": all(
                        bool(run["gap_named_before_whole"]) for run in runs[mode]
                    ),
                    "runs": runs[mode],
                }
                for mode in MODES
            },
        },
    )


if __name__ == "__main__":
    main()
