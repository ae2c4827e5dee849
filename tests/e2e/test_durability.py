"""Acknowledged ingest survives SIGKILL; retried batches are applied once.

A real region node process with a write-ahead log and a file-backed time-series store is
killed with SIGKILL at random points while a client streams batches. After each kill the
node is restarted with the same flags and the client retries every batch it holds no
acknowledgement for, under the same batch ids. At the end the node's count must equal
exactly what the client sent: nothing acknowledged lost, nothing retried counted twice.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest

from nethical_grpc import client
from nethical_grpc.cli.processes import Child, mesh_command, spawn
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc

pytestmark = pytest.mark.e2e

VALUES_PER_BATCH = 500
BATCHES_PER_STREAM = 25


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(mesh_command(*args), capture_output=True, text=True, timeout=60)


def start(workdir: Path, run: int) -> Child:
    return spawn(
        f"region-{run}",
        [
            "region",
            "--region-id",
            "dur",
            "--instance-id",
            "dur-0",
            "--port",
            "0",
            "--wal-dir",
            str(workdir / "wal"),
            "--timeseries-url",
            f"sqlite:///{workdir / 'ts.db'}",
            "--flush-interval",
            "300ms",
            "--log-level",
            "WARNING",
        ],
        workdir,
    )


def batch(batch_id: str, rng: np.random.Generator) -> bytes:
    values = rng.lognormal(size=VALUES_PER_BATCH)
    return client.encode_ingest_request("durable", values, {"k": "v"}, batch_id=batch_id)


async def count(port: int) -> int:
    async with client.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = region_node_pb2_grpc.RegionNodeServiceStub(ch)
        resp = await stub.GetSummaries(
            region_node_pb2.GetSummariesRequest(metrics=["durable"]), timeout=10
        )
    return sum(s.summary.moments.count for s in resp.series)


async def send(port: int, batches: list[tuple[str, bytes]]) -> region_node_pb2.IngestResponse:
    async with client.insecure_channel(f"127.0.0.1:{port}") as ch:
        return await client.ingest(ch, [b for _, b in batches], timeout=30)


async def test_acknowledged_batches_survive_kills_and_retries_apply_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    chooser = random.Random(5)
    unacked: list[tuple[str, bytes]] = []
    acknowledged = 0
    next_id = 0
    kills = 0
    failures: list[grpc.StatusCode] = []
    node = start(tmp_path, 0)
    port = await node.aport()
    try:
        for run in range(1, 7):
            # a stream of new batches (plus the retries); the node dies mid-way
            fresh = [
                (f"b{next_id + i}", batch(f"b{next_id + i}", rng))
                for i in range(BATCHES_PER_STREAM)
            ]
            next_id += BATCHES_PER_STREAM
            pending = unacked + fresh
            sender = asyncio.ensure_future(send(port, pending))
            await asyncio.sleep(chooser.uniform(0.0, 0.4))
            node.signal(signal.SIGKILL)
            kills += 1
            try:
                resp = await sender
                acknowledged += resp.accepted_batches + resp.duplicate_batches
                unacked = []
            except grpc.aio.AioRpcError as err:
                failures.append(err.code())
                unacked = pending  # no acknowledgement: all of them are retried
            await asyncio.to_thread(node.proc.wait)
            node = start(tmp_path, run)
            port = await node.aport()
        # the last retry, with nobody killing the node
        resp = await send(port, unacked)
        sent_batches = next_id
        assert resp.accepted_batches + resp.duplicate_batches == len(unacked)
        assert await count(port) == sent_batches * VALUES_PER_BATCH
        assert kills == 6
        assert set(failures) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    finally:
        node.stop()


async def test_a_retried_batch_is_applied_once_without_a_kill(tmp_path: Path) -> None:
    node = start(tmp_path, 0)
    port = await node.aport()
    try:
        rng = np.random.default_rng(2)
        batches = [(f"x{i}", batch(f"x{i}", rng)) for i in range(4)]
        first = await send(port, batches)
        again = await send(port, batches[1:3])
        assert (first.accepted_batches, first.duplicate_batches) == (4, 0)
        assert (again.accepted_batches, again.duplicate_batches) == (0, 2)
        assert await count(port) == 4 * VALUES_PER_BATCH
        info = run_cli("info", "--target", f"127.0.0.1:{port}")
        assert info.returncode == 0, info.stderr
        [logged] = [line for line in info.stdout.splitlines() if "write_ahead_log" in line]
        assert logged.startswith(f"component    write_ahead_log: {tmp_path / 'wal'}: ")
        assert logged.endswith("; trimmed by each flush to the time-series store")
    finally:
        node.stop()
    # and after a clean restart the ids are still known
    node = start(tmp_path, 1)
    port = await node.aport()
    try:
        resp = await send(port, batches)
        assert resp.duplicate_batches == 4
        assert await count(port) == 4 * VALUES_PER_BATCH
    finally:
        node.stop()


async def test_on_the_in_memory_store_the_rotated_log_is_replayed_whole(tmp_path: Path) -> None:
    """With no durable store the log is the only copy of the windows' data: the node says
    so at start, rotates the log as it runs, and after SIGKILL replays every segment."""

    def start_in_memory(run: int) -> Child:
        return spawn(
            f"memory-{run}",
            ["region", "--region-id", "mem", "--port", "0", "--wal-dir", str(tmp_path / "wal"),
             "--flush-interval", "200ms", "--window", "1s", "--retention", "30s",
             "--rollup-after", "0"],
            tmp_path,
        )  # fmt: skip

    rng = np.random.default_rng(4)
    batches = [(f"m{i}", batch(f"m{i}", rng)) for i in range(3)]
    node = start_in_memory(0)
    try:
        port = await node.aport()
        for one in batches:  # each in a segment of its own: a flush rotates between them
            assert (await send(port, [one])).accepted_batches == 1
            await asyncio.sleep(0.6)
        assert len(list((tmp_path / "wal").glob("wal-*.log"))) >= 3
        info = run_cli("info", "--target", f"127.0.0.1:{port}", "--json")
        assert info.returncode == 0, info.stderr
        logged = json.loads(info.stdout)["components"]["write_ahead_log"]
        assert logged.startswith(f"{tmp_path / 'wal'}: ") and " segments, " in logged
        assert logged.endswith(
            "the only copy of the windows' data (an in-memory time-series store): kept for "
            "the retention"
        )
        said = node.log_path.read_text()
        assert "on an in-memory time-series store: the log is the only copy" in said
    finally:
        node.signal(signal.SIGKILL)
        await asyncio.to_thread(node.proc.wait)
    node = start_in_memory(1)
    try:
        port = await node.aport()
        assert await count(port) == len(batches) * VALUES_PER_BATCH
        assert (await send(port, batches)).duplicate_batches == len(batches)
        assert f"({len(batches)} batches replayed)" in node.log_path.read_text()
    finally:
        node.stop()
