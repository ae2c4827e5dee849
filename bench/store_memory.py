"""Region node RSS as evaluations pile up in its in-memory (``memory://``) stores.

Every evaluation leaves a row in the time-series store and a record in the audit store.
Two real node processes, one after the other, on the embedded default stores: one with
``--memory-store-records`` (the newest that many records are kept) and one with no bound
(``0``). Each is sent the same ``--evaluations`` actions through ``EvaluateStream`` in
messages of 512 (texts from bench/evaluate.py, each with its own number, so the full-text
index sees new terms as real traffic does), and its RSS is read after each checkpoint
once the stores have taken everything sent (the newest action's record is found by a
SearchAudit; on the bounded node the record just past the bound must be gone).

    python bench/store_memory.py [--evaluations 1200000] [--bound 100000]
                                 [--checkpoints 12]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import common
import psutil
from evaluate import TEXTS

from nethical_grpc import client
from nethical_grpc.cli.processes import spawn
from nethical_grpc.v1 import governance_pb2, region_node_pb2, region_node_pb2_grpc

PER_MESSAGE = 512


def message(start: int) -> region_node_pb2.EvaluateStreamRequest:
    return region_node_pb2.EvaluateStreamRequest(
        actions=[
            governance_pb2.AgentAction(
                agent_id=f"agent-{i % 5000}",
                action_text=f"{TEXTS[i % len(TEXTS)]} ref{i}",
                action_type="query",
                stated_intent="routine work",
                request_id=f"r{i}",
            )
            for i in range(start, start + PER_MESSAGE)
        ]
    )


async def requests(first: int, count: int) -> AsyncIterator[region_node_pb2.EvaluateStreamRequest]:
    for start in range(first, first + count, PER_MESSAGE):
        yield message(start)


async def stored(stub: region_node_pb2_grpc.RegionNodeServiceStub, i: int) -> bool:
    """Whether the node's audit store holds the record of action ``i``."""
    page = await stub.SearchAudit(
        region_node_pb2.SearchAuditRequest(query=f"ref{i}", page_size=1), timeout=60
    )
    return len(page.records) == 1


async def until_stored(stub: region_node_pb2_grpc.RegionNodeServiceStub, i: int) -> None:
    """Wait for the record of action ``i`` (the stores write in the background)."""
    for _ in range(3000):
        if await stored(stub, i):
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"the record of action {i} never reached the audit store")


async def run_node(bound: int, evaluations: int, checkpoints: int) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-store-memory-"))
    node = spawn("node", [*common.BENCH_REGION, "--memory-store-records", str(bound)], workdir)
    points: list[dict[str, object]] = []
    try:
        port = node.port()
        proc = psutil.Process(node.pid)
        step = evaluations // checkpoints // PER_MESSAGE * PER_MESSAGE
        async with client.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = region_node_pb2_grpc.RegionNodeServiceStub(ch)
            await asyncio.sleep(0.5)
            points.append({"evaluations": 0, "rss_mib": round(proc.memory_info().rss / 2**20, 1)})
            sent = 0
            t0 = time.perf_counter()
            for _ in range(checkpoints):
                async for _answer in stub.EvaluateStream(requests(sent, step), timeout=3600):
                    pass
                sent += step
                await until_stored(stub, sent - 1)
                if bound and sent > bound and await stored(stub, sent - bound - 1):
                    raise SystemExit(f"the record of action {sent - bound - 1} was not dropped")
                points.append(
                    {"evaluations": sent, "rss_mib": round(proc.memory_info().rss / 2**20, 1)}
                )
            elapsed = time.perf_counter() - t0
    finally:
        node.stop()
    first, last = points[1], points[-1]
    grown = float(last["rss_mib"]) - float(first["rss_mib"])  # type: ignore[arg-type]
    return {
        "memory_store_records": bound or None,
        "evaluations_per_s": round(sent / elapsed),
        "checkpoints": points,
        "rss_growth_after_first_checkpoint_mib": round(grown, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--evaluations", type=int, default=1_200_000)
    parser.add_argument("--bound", type=int, default=100_000)
    parser.add_argument("--checkpoints", type=int, default=12)
    args = parser.parse_args()
    bounded = await run_node(args.bound, args.evaluations, args.checkpoints)
    unbounded = await run_node(0, args.evaluations, args.checkpoints)
    common.emit(
        "store_memory",
        {
            "evaluations": args.evaluations,
            "actions_per_message": PER_MESSAGE,
            "bounded": bounded,
            "unbounded": unbounded,
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
