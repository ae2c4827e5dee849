"""A region node's answer over many series: building it, in-process and over gRPC.

A node holding ``--metrics`` metrics of ``--label-values`` label sets each (50 values a
series, fixed seed) answers a query grouped by that label. In-process, in alternated
rounds on the same groups, it times the two ways of encoding the answer's series: as
protobuf messages (``convert.group_summary_to_proto`` for each, then the response
serialised; what the node did before) and straight to bytes
(``convert.group_summaries_to_wire``, what it does now), and the merge of the windows into
the groups before either. Then a node process (``nethical-mesh region``) answers the same
query by ``GetSummaries``: one value more is ingested into each series between rounds, so
no answer comes from the node's cache; the client's message limit is raised to the
answer's size.

    python bench/wide_answer.py [--metrics 4] [--label-values 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import common
import grpc
import numpy as np

from nethical_grpc import client, convert
from nethical_grpc.cli.processes import spawn
from nethical_grpc.series import IngestBatch, SeriesKey, SummaryQuery
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc
from region_node.node import NodeIdentity, RegionNode

VALUES_PER_SERIES = 50


def _series(metrics: int, label_values: int) -> list[tuple[str, str]]:
    return [(f"m{m}", str(v)) for m in range(metrics) for v in range(label_values)]


def in_process(metrics: int, label_values: int, rounds: int) -> dict[str, object]:
    node = RegionNode(NodeIdentity("bench", "bench-1"))
    rng = np.random.default_rng(5)
    now = time.time_ns()
    node.record_internal(
        [
            IngestBatch(
                SeriesKey(m, (("shard", v),)), rng.lognormal(0, 2, VALUES_PER_SERIES), None, now
            )
            for m, v in _series(metrics, label_values)
        ]
    )
    node.apply_pending()
    query = SummaryQuery(metrics=tuple(f"m{m}" for m in range(metrics)), group_by=("shard",))
    head = region_node_pb2.GetSummariesResponse(region_id="bench", instance_id="bench-1")
    merge_s, messages_s, wire_s = [], [], []
    size = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        groups = node.summaries(query)
        t1 = time.perf_counter()
        errors = [0.0] * len(groups)
        built = region_node_pb2.GetSummariesResponse(
            series=[convert.group_summary_to_proto(g) for g in groups]
        )
        built.MergeFrom(head)
        by_messages = built.SerializeToString()
        t2 = time.perf_counter()
        by_wire = convert.group_summaries_to_wire(1, groups, errors) + head.SerializeToString()
        t3 = time.perf_counter()
        if region_node_pb2.GetSummariesResponse.FromString(by_wire) != built:
            raise SystemExit("the two encodings differ")
        merge_s.append(t1 - t0)
        messages_s.append(t2 - t1)
        wire_s.append(t3 - t2)
        size = len(by_messages)
    return {
        "series": len(groups),
        "answer_bytes": size,
        # medians over the rounds, seconds
        "merge_s": round(statistics.median(merge_s), 4),
        "encode_messages_s": round(statistics.median(messages_s), 4),
        "encode_wire_s": round(statistics.median(wire_s), 4),
        "wire_over_messages": round(statistics.median(wire_s) / statistics.median(messages_s), 3),
    }


async def over_grpc(port: int, metrics: int, label_values: int, rounds: int) -> dict[str, object]:
    series = _series(metrics, label_values)
    rng = np.random.default_rng(6)
    request = region_node_pb2.GetSummariesRequest(
        metrics=[f"m{m}" for m in range(metrics)], group_by_labels=["shard"]
    )
    limit = 256 << 20
    options = [("grpc.max_receive_message_length", limit)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as ch:
        stub = region_node_pb2_grpc.RegionNodeServiceStub(ch)
        answers: list[float] = []
        count = 0
        for r in range(rounds + 1):
            n = VALUES_PER_SERIES if r == 0 else 1
            await client.ingest(
                ch,
                [
                    client.encode_ingest_request(m, rng.lognormal(0, 2, n), {"shard": v})
                    for m, v in series
                ],
            )
            t = time.perf_counter()
            answer = await stub.GetSummaries(request, timeout=120)
            elapsed = time.perf_counter() - t
            count = len(answer.series)
            if r:  # the first round warms the node's paths
                answers.append(elapsed)
    return {
        "series": count,
        "get_summaries_s": {
            "p50": round(statistics.median(answers), 4),
            "max": round(max(answers), 4),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", type=int, default=4)
    parser.add_argument("--label-values", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    local = in_process(args.metrics, args.label_values, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        child = spawn(
            "region",
            [*common.BENCH_REGION, "--max-label-sets", str(args.label_values), "--no-evaluate"],
            Path(tmp),
            {},
        )
        try:
            remote = asyncio.run(
                over_grpc(child.port(), args.metrics, args.label_values, args.rounds)
            )
        finally:
            child.stop()
    common.emit(
        "wide_answer",
        {
            "metrics": args.metrics,
            "label_values": args.label_values,
            "values_per_series": VALUES_PER_SERIES,
            "rounds": args.rounds,
            "in_process": local,
            "node_process": remote,
        },
    )


if __name__ == "__main__":
    main()
