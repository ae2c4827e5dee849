"""Client subcommands that read a region node's time-series store: ``metrics`` (its raw
rows, QueryMetrics) and ``aggregate`` (one metric per time bucket, AggregateMetrics).
Both answer with in-region data (agent ids, single values), which no coordinator RPC
returns."""

from __future__ import annotations

import argparse
import time

import grpc

from nethical_grpc.cli.client_commands import set_time_range, show
from nethical_grpc.cli.table import counted, fmt_number, fmt_time, render
from nethical_grpc.convert import MAX_QUERY_LIMIT
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc


def metrics_request(args: argparse.Namespace, now_ns: int) -> region_node_pb2.QueryMetricsRequest:
    """The rows ``metrics`` asks for: one more than ``--limit`` (when the node allows it),
    so that the answer tells whether the range holds more."""
    request = region_node_pb2.QueryMetricsRequest(
        agent_id=args.agent_id,
        metric=args.metric or "",
        limit=min(args.limit + 1, MAX_QUERY_LIMIT),
    )
    set_time_range(request, args, now_ns)
    return request


def metrics_text(response: region_node_pb2.QueryMetricsResponse, limit: int) -> str:
    """The rows as a table (the first ``limit``), with a line that counts them."""
    records = response.records[:limit]
    rows = [
        [
            fmt_time(r.time),
            r.agent_id or "-",
            r.metric,
            fmt_number(r.value),
            " ".join(f"{k}={v}" for k, v in sorted(r.labels.items())) or "-",
        ]
        for r in records
    ]
    if not rows:
        return "no rows matched (a node keeps each evaluation's risk_score; --since, --agent-id)"
    headers = ["time (UTC)", "agent", "metric", "value", "labels"]
    table = render(headers, rows, text_columns=(1, 2, 4))
    found = counted(len(records), "row", "rows") + ", oldest first"
    if len(response.records) > limit or len(records) == MAX_QUERY_LIMIT:
        found += f" (the first {limit:,}; a shorter --since for later ones)"
    return f"{table}\n{found}"


async def run_metrics(args: argparse.Namespace) -> int:
    request = metrics_request(args, time.time_ns())

    async def rows(channel: grpc.aio.Channel) -> region_node_pb2.QueryMetricsResponse:
        stub = region_node_pb2_grpc.RegionNodeServiceStub(channel)
        answer: region_node_pb2.QueryMetricsResponse = await stub.QueryMetrics(
            request, timeout=args.timeout
        )
        if args.json:  # what the table shows: --limit rows
            del answer.records[args.limit :]
        return answer

    return await show(args, rows, lambda answer: metrics_text(answer, args.limit))


def aggregate_request(
    args: argparse.Namespace, now_ns: int
) -> region_node_pb2.AggregateMetricsRequest:
    """``--by`` of ``METRIC`` per ``--bucket`` from ``--since`` up to ``--until`` (now)."""
    request = region_node_pb2.AggregateMetricsRequest(
        metric=args.metric, aggregation=f"AGGREGATION_{args.by.upper()}", agent_id=args.agent_id
    )
    request.bucket.FromNanoseconds(args.bucket)
    set_time_range(request, args, now_ns, end_now=True)
    return request


def aggregate_text(
    response: region_node_pb2.AggregateMetricsResponse, args: argparse.Namespace
) -> str:
    """The buckets as a table, with a line that says what they hold."""
    if not response.buckets:
        return f"no rows of {args.metric} in the range (--since, --agent-id)"
    rows = [[fmt_time(b.start_time), fmt_number(b.value), f"{b.count:,}"] for b in response.buckets]
    table = render(["bucket start (UTC)", args.by, "rows"], rows)
    total = sum(b.count for b in response.buckets)
    of = f" of {args.agent_id}" if args.agent_id else ""
    return (
        f"{table}\n{counted(len(rows), 'bucket', 'buckets')} with rows "
        f"({counted(total, 'row', 'rows')} of {args.metric}{of}); empty buckets left out"
    )


async def run_aggregate(args: argparse.Namespace) -> int:
    request = aggregate_request(args, time.time_ns())
    return await show(
        args,
        lambda ch: region_node_pb2_grpc.RegionNodeServiceStub(ch).AggregateMetrics(
            request, timeout=args.timeout
        ),
        lambda answer: aggregate_text(answer, args),
    )
