"""Client subcommands: query, regions, health."""

from __future__ import annotations

import argparse
import json
import sys
import time

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2

from nethical_grpc import client
from nethical_grpc.cli.table import fmt_number, render
from nethical_grpc.errors import details_from_error
from nethical_grpc.security.config import client_security_from_args
from nethical_grpc.v1 import coordinator_pb2, coordinator_pb2_grpc

_REASONS = {
    v: k.removeprefix("MISSING_REASON_").lower() for k, v in coordinator_pb2.MissingReason.items()
}
_HEALTH = {
    v: k.removeprefix("INSTANCE_HEALTH_").lower() for k, v in coordinator_pb2.InstanceHealth.items()
}


def report_rpc_error(err: grpc.RpcError) -> int:
    d = details_from_error(err)
    print(f"error: {d.code.name}: {d.message}", file=sys.stderr)
    for v in d.field_violations:
        print(f"  {v.field}: {v.description}", file=sys.stderr)
    if d.reason:
        facts = "".join(f", {k}={v}" for k, v in sorted(d.metadata.items()))
        print(f"  reason: {d.reason}{facts}", file=sys.stderr)
    return 1


def results_table(response: coordinator_pb2.GetGlobalMetricsResponse) -> str:
    quantiles = []
    for r in response.results:
        quantiles = [q.quantile for q in r.statistics.quantiles]
        if quantiles:
            break
    headers = [
        "metric",
        "labels",
        "count",
        "mean",
        "stddev",
        "min",
        "max",
        *(f"p{q * 100:g}" for q in quantiles),
    ]
    rows = []
    for r in response.results:
        rows.extend(_rows(r.metric, dict(r.labels), r.statistics, "", len(quantiles)))
        for reg in r.regions:
            rows.extend(_rows(f"  {reg.region_id}", {}, reg.statistics, "", len(quantiles)))
    return render(headers, rows, text_columns=(1,))


def _rows(
    name: str, labels: dict[str, str], s: coordinator_pb2.SeriesStatistics, _: str, nq: int
) -> list[list[str]]:
    qs = [fmt_number(q.value) for q in s.quantiles] or ["-"] * nq
    return [
        [
            name,
            ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-",
            f"{s.count:,}",
            fmt_number(s.mean),
            fmt_number(s.stddev),
            fmt_number(s.min),
            fmt_number(s.max),
            *qs,
        ]
    ]


def coverage_line(c: coordinator_pb2.Coverage) -> str:
    text = (
        f"coverage: {len(c.regions_answered)}/{len(c.regions_requested)} regions "
        f"({c.instances_answered}/{c.instances_queried} instances)"
    )
    if c.complete:
        text += ", complete"
    for m in c.missing:
        where = m.region_id + (f"/{m.instance_id}" if m.instance_id else "")
        text += f"\n  missing {where}: {_REASONS.get(m.reason, '?')} ({m.message})"
    if c.HasField("max_staleness"):
        text += (
            f"\n  newest data is at most {c.max_staleness.ToTimedelta().total_seconds():.1f}s old"
        )
    return text


async def run_query(args: argparse.Namespace) -> int:
    opts = client.QueryOptions(
        metrics=args.metric,
        quantiles=args.quantile,
        regions=args.region,
        region_weights=dict(args.weight),
        label_filter=dict(args.label),
        group_by_labels=args.group_by,
        start_ns=time.time_ns() - args.since if args.since else None,
        include_region_breakdown=args.breakdown,
        region_timeout_s=args.region_timeout / 1e9 if args.region_timeout else None,
    )
    async with open_channel(args) as channel:
        try:
            response = await client.global_metrics(channel, opts, timeout=args.timeout)
        except grpc.RpcError as err:
            return report_rpc_error(err)
    if args.json:
        print(json_format.MessageToJson(response))
        return 0
    print(results_table(response))
    if any(r.HasField("weighted_mean") for r in response.results):
        for r in response.results:
            if r.HasField("weighted_mean"):
                print(f"weighted mean of {r.metric}: {fmt_number(r.weighted_mean)}")
    print(coverage_line(response.coverage))
    return 0


def open_channel(args: argparse.Namespace) -> grpc.aio.Channel:
    """A channel with the TLS and token the flags (or environment) ask for; a file that
    cannot be read or used ends the command with one line and exit status 2."""
    try:
        return client_security_from_args(args).channel(args.target)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def run_regions(args: argparse.Namespace) -> int:
    async with open_channel(args) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        try:
            response = await stub.ListRegions(
                coordinator_pb2.ListRegionsRequest(), timeout=args.timeout
            )
        except grpc.RpcError as err:
            return report_rpc_error(err)
    if args.json:
        print(json_format.MessageToJson(response))
        return 0
    rows = [
        [
            r.region_id,
            i.instance_id,
            i.endpoint,
            _HEALTH.get(i.health, "?"),
            f"{i.requests:,}",
            f"{i.error_rate * 100:.1f}",
            f"{i.ewma_latency.ToNanoseconds() / 1e6:.2f}" if i.HasField("ewma_latency") else "-",
            str(i.in_flight),
            "yes" if i.ejected else "",
        ]
        for r in response.regions
        for i in r.instances
    ]
    headers = ["region", "instance", "endpoint", "health", "requests", "err%", "ewma ms"]
    print(render([*headers, "in-flight", "ejected"], rows, text_columns=(1, 2, 3, 8)))
    return 0


async def run_health(args: argparse.Namespace) -> int:
    async with open_channel(args) as channel:
        try:
            status = await client.check_health(channel, args.service, timeout=args.timeout)
        except grpc.RpcError as err:
            d = details_from_error(err)
            # the server answered that it does not know the service, or was not reached
            label = "SERVICE_UNKNOWN" if d.code == grpc.StatusCode.NOT_FOUND else "UNREACHABLE"
            print(json.dumps({"status": label, "code": d.code.name, "message": d.message}))
            return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(json.dumps({"status": name}))
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1
