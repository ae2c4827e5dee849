"""Chaos: SIGKILL a region node with ``--wal-dir`` at seeded random moments of ingest.

A real region node process is started on a write-ahead log, on the embedded in-memory
time-series store (the log is the only copy of the data) and on a SQLite file (flushes
every 100 ms checkpoint the log). In each round a client streams Ingest batches of known
integer values under unique batch ids, paced so that flushes, checkpoints and log
rotations happen while it streams, and the node is killed with SIGKILL: mid-stream, just
after the last message was sent (before the acknowledgement), right after a checkpoint
file was replaced, or after the acknowledgement. It is restarted on the same directory and
the client re-sends every batch it holds no acknowledgement for, under the same ids.

After every restart the node must hold at least every acknowledged batch and no batch
but those sent; at the end, once every batch is acknowledged, its count and sum must be
exactly those of every batch once: nothing acknowledged lost, nothing retried counted
twice. The schedule (kill moments, batch sizes, values) is fixed by the seeds.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from nethical_grpc import client
from nethical_grpc.cli.processes import Child, spawn
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc

pytestmark = pytest.mark.e2e

METRIC = "chaos"
ROUNDS = 9
BROKEN = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL}


@dataclass(frozen=True)
class Batch:
    batch_id: str
    encoded: bytes
    count: int
    total: int


@dataclass
class Ledger:
    """What the client sent and what the node acknowledged."""

    batches: list[Batch] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)

    def totals(self, ids: set[str] | None = None) -> tuple[int, int]:
        chosen = [b for b in self.batches if ids is None or b.batch_id in ids]
        return sum(b.count for b in chosen), sum(b.total for b in chosen)

    def unacked(self) -> list[Batch]:
        return [b for b in self.batches if b.batch_id not in self.acked]


def make_batch(n: int, rng: np.random.Generator) -> Batch:
    # mostly small batches (records wait in memory until a sync), now and then large
    # ones (past the log's 1 MiB they are written out before the sync)
    size = int(rng.integers(20, 200)) if rng.random() < 0.85 else int(rng.integers(20_000, 60_000))
    values = rng.integers(1, 1000, size=size).astype(np.float64)  # exact sums
    batch_id = f"c{n}"
    encoded = client.encode_ingest_request(METRIC, values, {"k": "v"}, batch_id=batch_id)
    return Batch(batch_id, encoded, size, int(values.sum()))


def start(workdir: Path, run: int, store: str) -> Child:
    args = [
        "region", "--region-id", "chaos", "--instance-id", "chaos-0", "--port", "0",
        "--wal-dir", str(workdir / "wal"), "--no-evaluate", "--log-level", "WARNING",
        "--flush-interval", "100ms", "--window", "1s", "--retention", "120s",
        "--rollup-after", "0",
    ]  # fmt: skip
    if store == "sqlite":
        args += ["--timeseries-url", f"sqlite:///{workdir / 'ts.db'}"]
    return spawn(f"node-{run}", args, workdir)


async def totals(port: int) -> tuple[int, int]:
    async with client.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = region_node_pb2_grpc.RegionNodeServiceStub(ch)
        resp = await stub.GetSummaries(
            region_node_pb2.GetSummariesRequest(metrics=[METRIC]), timeout=10
        )
    moments = [s.summary.moments for s in resp.series]
    return sum(m.count for m in moments), round(sum(m.sum for m in moments))


async def paced(
    batches: list[Batch], gaps: list[float], sent: asyncio.Event
) -> AsyncIterator[bytes]:
    for one, gap in zip(batches, gaps, strict=True):
        yield one.encoded
        if gap:
            await asyncio.sleep(gap)
    sent.set()


async def stream(port: int, batches: list[Batch], gaps: list[float], sent: asyncio.Event) -> int:
    async with client.insecure_channel(f"127.0.0.1:{port}") as ch:
        resp = await client.ingest(ch, paced(batches, gaps, sent), timeout=30)
    assert resp.accepted_batches + resp.duplicate_batches == len(batches)
    return int(resp.accepted_batches)


def checkpoint_version(wal: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(wal / "checkpoint")
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


async def kill_after_checkpoint(node: Child, wal: Path, limit_s: float) -> bool:
    """SIGKILL the node as soon as its checkpoint file is replaced (within ``limit_s``)."""
    seen = checkpoint_version(wal)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while loop.time() < deadline:
        if checkpoint_version(wal) != seen:
            node.signal(signal.SIGKILL)
            return True
        await asyncio.sleep(0.0005)
    return False


async def chaos(workdir: Path, store: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    chooser = random.Random(seed)
    wal = workdir / "wal"
    ledger = Ledger()
    modes = ["mid-stream", "sent", "acked"] + (["checkpoint"] * 3 if store == "sqlite" else [])
    kills: list[str] = []
    node = start(workdir, 0, store)
    try:
        port = await node.aport()
        for run in range(1, ROUNDS + 1):
            fresh = [
                make_batch(len(ledger.batches) + i, rng) for i in range(chooser.randint(30, 90))
            ]
            ledger.batches += fresh
            pending = ledger.unacked()  # the retries first, then the new batches
            mode = chooser.choice(modes)
            # around a checkpoint, batches arrive back to back: some while the flush before
            # it writes to the store (their records wait in memory until the next sync)
            spacing = [0.0005, 0.001] if mode == "checkpoint" else [0.0, 0.002, 0.005, 0.01]
            gaps = [chooser.choice(spacing) for _ in pending]
            sent = asyncio.Event()
            sender = asyncio.ensure_future(stream(port, pending, gaps, sent))
            if mode == "mid-stream":
                await asyncio.sleep(chooser.uniform(0.0, sum(gaps)))
                node.signal(signal.SIGKILL)
            elif mode == "sent":  # the last message is out; its acknowledgement is not in
                await sent.wait()
                node.signal(signal.SIGKILL)
            elif mode == "checkpoint":  # the first checkpoint once the stream is under way
                await asyncio.sleep(chooser.uniform(0.02, 0.08))
                if not await kill_after_checkpoint(node, wal, sum(gaps) + 1.0):
                    node.signal(signal.SIGKILL)
                    mode = "checkpoint (none seen)"
            else:  # acknowledged, then killed a moment later
                await asyncio.wait([sender])
                await asyncio.sleep(chooser.uniform(0.0, 0.15))
                node.signal(signal.SIGKILL)
            kills.append(mode)
            failure: grpc.StatusCode | None = None
            try:
                await sender
            except grpc.aio.AioRpcError as err:
                failure = err.code()
            # the connection went away: INTERNAL when it broke under a message being sent
            # ("Failed execute_batch"), the client's word, not the node's
            assert failure is None or failure in BROKEN, (run, failure)
            if failure is None:
                ledger.acked.update(b.batch_id for b in pending)
            assert await asyncio.to_thread(node.proc.wait, 30) == -signal.SIGKILL
            node = start(workdir, run, store)
            port = await node.aport()
            # before any retry: every acknowledged batch is back, nothing not sent is there
            count, total = await totals(port)
            acked_count, acked_total = ledger.totals(ledger.acked)
            sent_count, sent_total = ledger.totals()
            assert acked_count <= count <= sent_count, (run, kills)
            assert acked_total <= total <= sent_total, (run, kills)
        # the last retry, with nobody killing the node: then every batch is acknowledged
        pending = ledger.unacked()
        await stream(port, pending, [0.0] * len(pending), asyncio.Event())
        ledger.acked.update(b.batch_id for b in pending)
        assert await totals(port) == ledger.totals(), kills
        # and a retry of everything now is a duplicate throughout
        everything = ledger.batches
        accepted = await stream(port, everything, [0.0] * len(everything), asyncio.Event())
        assert accepted == 0
        assert await totals(port) == ledger.totals(), kills
        assert len(kills) == ROUNDS
    finally:
        node.signal(signal.SIGKILL)
        await asyncio.to_thread(node.proc.wait, 30)


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_kill9_during_ingest_loses_no_acknowledged_batch_and_applies_each_once(
    tmp_path: Path, store: str
) -> None:
    await chaos(tmp_path, store, seed=37 if store == "memory" else 3737)
