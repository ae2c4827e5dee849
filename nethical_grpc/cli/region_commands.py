"""Client subcommands asked of a region node: ``info`` (what it is and runs on),
``ingest`` (observations from a file or stdin), ``audit`` (its audit search) and
``profile`` (an agent's risk profile). The last two answer with in-region data (action
texts, agent ids), which no coordinator RPC returns."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator

import grpc
from google.protobuf import duration_pb2

from nethical_grpc import client, convert
from nethical_grpc.cli.client_commands import ask, print_json, set_time_range, show
from nethical_grpc.cli.observations import Observations, read_observations
from nethical_grpc.cli.table import clip, counted, decision_name, enum_name, fmt_time, render
from nethical_grpc.v1 import governance_pb2, region_node_pb2, region_node_pb2_grpc

#: Most terminal columns of an action text in the audit table (the whole text is in --json).
TEXT_COLUMN_CHARS = 60


def _clipped(text: str) -> str:
    return clip(" ".join(text.split()), TEXT_COLUMN_CHARS)


def audit_request(args: argparse.Namespace) -> region_node_pb2.SearchAuditRequest:
    request = region_node_pb2.SearchAuditRequest(
        query=" ".join(args.query),
        agent_id=args.agent_id,
        page_size=min(args.limit, 1000),
    )
    if args.decision:
        request.decision = convert.decision_to_proto(args.decision.upper())
    set_time_range(request, args, time.time_ns())
    if args.min_risk is not None:
        request.min_risk = args.min_risk
    return request


async def run_audit(args: argparse.Namespace) -> int:
    request = audit_request(args)
    records: list[region_node_pb2.AuditRecord] = []

    async def pages(channel: grpc.aio.Channel) -> bool:
        """Pages until --limit records or the last; whether more were left."""
        stub = region_node_pb2_grpc.RegionNodeServiceStub(channel)
        while True:
            page = await stub.SearchAudit(request, timeout=args.timeout)
            room = args.limit - len(records)
            records.extend(page.records[:room])
            if len(page.records) > room:
                return True
            if not page.next_page_token:
                return False
            if len(records) >= args.limit:
                return True
            request.page_token = page.next_page_token

    more = await ask(args, pages)
    if more is None:
        return 1
    if args.json:
        print_json(region_node_pb2.SearchAuditResponse(records=records))
        return 0
    rows = [
        [
            fmt_time(r.time),
            r.agent_id,
            decision_name(r.decision),
            f"{r.risk_score:.3f}",
            r.action_type or "-",
            _clipped(r.action_text),
        ]
        for r in records
    ]
    headers = ["time (UTC)", "agent", "decision", "risk", "type", "action"]
    print(render(headers, rows, text_columns=(1, 2, 4, 5)))
    found = counted(len(records), "record", "records")
    print(found + (f" (the first {args.limit}; --limit for more)" if more else ""))
    return 0


async def run_profile(args: argparse.Namespace) -> int:
    return await show(
        args,
        lambda ch: region_node_pb2_grpc.RegionNodeServiceStub(ch).GetRiskProfile(
            region_node_pb2.GetRiskProfileRequest(agent_id=args.agent_id), timeout=args.timeout
        ),
        profile_text,
    )


def profile_text(profile: region_node_pb2.GetRiskProfileResponse) -> str:
    """An agent's counts, risk, last time seen and recent decisions for a terminal."""
    # least severe first; a decision this client does not know (a newer server's) last
    order = dict(governance_pb2.Decision.items())
    by_severity = sorted(
        profile.decision_counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])
    )
    counts = ", ".join(f"{name.removeprefix('DECISION_')} {n:,}" for name, n in by_severity)
    lines = [
        f"agent        {profile.agent_id}",
        f"evaluations  {profile.evaluations:,} ({counts or 'none'})",
        f"risk         mean {profile.mean_risk:.4f}, max {profile.max_risk:.4f}",
    ]
    if profile.HasField("last_seen"):
        lines.append(f"last seen    {fmt_time(profile.last_seen)}")
    if profile.recent:
        rows = [
            [
                fmt_time(e.time),
                decision_name(e.decision),
                f"{e.risk_score:.3f}",
                e.action_type or "-",
                e.request_id or "-",
            ]
            for e in profile.recent
        ]
        headers = ["time (UTC)", "decision", "risk", "type", "request id"]
        lines += ["", render(headers, rows, text_columns=(1, 3, 4))]
    return "\n".join(lines)


def ingest_request(args: argparse.Namespace, batch: Observations, n: int) -> bytes:
    """Batch ``n`` of the command's series (``--batch-id`` names it ``PREFIX-n``)."""
    return client.encode_ingest_request(
        args.metric,
        batch.values,
        dict(args.label),
        timestamps_unix_nano=batch.times_ns,
        batch_id=f"{args.batch_id}-{n}" if args.batch_id else "",
    )


def _batches(args: argparse.Namespace, observations: Observations) -> Iterator[bytes]:
    for n, at in enumerate(range(0, len(observations), args.batch_values)):
        yield ingest_request(args, observations[at : at + args.batch_values], n)


def applied_text(values: int, batches: int, duplicates: int, where: str = "") -> str:
    """What an ingest applied, e.g. ``applied 3 values in 1 batch to m on HOST:PORT; 1
    batch applied before, skipped``."""
    text = (
        f"applied {counted(values, 'value', 'values')} in "
        f"{counted(batches, 'batch', 'batches')}{where}"
    )
    if duplicates:
        text += f"; {counted(duplicates, 'batch', 'batches')} applied before, skipped"
    return text


async def run_ingest(args: argparse.Namespace) -> int:
    if args.stream:
        from nethical_grpc.cli.ingest_stream import run_ingest_stream

        return await run_ingest_stream(args)
    try:
        observations = read_observations(args.file, args.timed)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not len(observations):
        where = "stdin" if args.file == "-" else args.file  # as read_observations names it
        print(f"error: no values in {where}", file=sys.stderr)
        return 2

    def text_of(answer: region_node_pb2.IngestResponse) -> str:
        return applied_text(
            answer.accepted_values,
            answer.accepted_batches,
            answer.duplicate_batches,
            f" to {args.metric} on {args.target}",
        )

    return await show(
        args,
        lambda ch: client.ingest(ch, _batches(args, observations), timeout=args.timeout),
        text_of,
        always_print_fields_with_no_presence=True,
    )


def _duration(d: duration_pb2.Duration) -> str:
    seconds = d.ToTimedelta().total_seconds()
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def node_info_text(info: region_node_pb2.GetNodeInfoResponse, now_s: float) -> str:
    """A node's identity, windows, model, stores and components for a terminal."""
    scope = enum_name(region_node_pb2.DataScope, info.scope, "DATA_SCOPE_").lower()
    windows = f"{_duration(info.window)} windows kept {_duration(info.retention)}"
    if info.HasField("rollup_after"):
        windows += (
            f", rolled up into {_duration(info.rollup_window)} past {_duration(info.rollup_after)}"
        )
    lines = [
        f"region       {info.region_id}, instance {info.instance_id} (data scope: {scope})",
        f"version      {info.version}",
    ]
    if info.HasField("started_at"):
        up = max(0.0, now_s - info.started_at.ToNanoseconds() / 1e9)
        lines.append(f"serving for  {up:,.0f} s (since {fmt_time(info.started_at)})")
    lines += [
        f"windows      {windows}; sketch scale {info.histogram_scale}",
        f"holds        {info.series_count:,} series, {info.window_count:,} windows",
    ]
    if info.HasField("model"):
        m = info.model
        lines.append(f"model        {m.name}, {m.feature_width} features, {m.engine}")
    for st in info.stores:
        line = f"store        {st.store}: {st.backend}"
        if st.requested and not st.requested.startswith("memory:"):
            line += f" ({st.requested})"
        if st.reason:
            line += f", in its place: {st.reason}"
        if st.problem:
            line += f"; failing: {st.problem}"
        lines.append(line)
    for gap in info.gaps:
        lines.append(f"left out     {_gap_span(gap)}: {gap.reason}: {gap.message}")
    lines += [f"component    {k}: {v}" for k, v in sorted(info.components.items())]
    return "\n".join(lines)


def _gap_span(gap: region_node_pb2.DataGap) -> str:
    """The time a gap covers, e.g. ``before 2026-11-30T21:20:05.000Z``."""
    start = fmt_time(gap.start_time) if gap.HasField("start_time") else None
    end = fmt_time(gap.end_time) if gap.HasField("end_time") else None
    if start and end:
        return f"{start} to {end}"
    if end:
        return f"before {end}"
    return f"from {start}" if start else "any time"


async def run_info(args: argparse.Namespace) -> int:
    return await show(
        args,
        lambda ch: region_node_pb2_grpc.RegionNodeServiceStub(ch).GetNodeInfo(
            region_node_pb2.GetNodeInfoRequest(), timeout=args.timeout
        ),
        lambda info: node_info_text(info, time.time()),
    )
