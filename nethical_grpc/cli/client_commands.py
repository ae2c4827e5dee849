"""Client subcommands asked of a coordinator (query, regions) or any server (health),
and what every client subcommand shares: the channel its flags describe, one call on it
with its errors said on stderr (:func:`ask`), and its answer printed as JSON or text
(:func:`show`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TextIO, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from nethical_grpc import client
from nethical_grpc.cli.args import check_utf8
from nethical_grpc.cli.table import enum_name, fmt_number, render, shown
from nethical_grpc.errors import (
    ErrorDetails,
    InvalidArgument,
    MeshError,
    details_from_error,
    details_of,
)
from nethical_grpc.security.config import client_security_from_args
from nethical_grpc.v1 import coordinator_pb2, coordinator_pb2_grpc

T = TypeVar("T")
M = TypeVar("M", bound=Message)

_REASONS = {
    v: k.removeprefix("MISSING_REASON_").lower() for k, v in coordinator_pb2.MissingReason.items()
}
_HEALTH = {
    v: k.removeprefix("INSTANCE_HEALTH_").lower() for k, v in coordinator_pb2.InstanceHealth.items()
}


def report_rpc_error(err: grpc.RpcError | MeshError) -> int:
    """A failed call (or a refusal on this side, as a server would say it) on stderr:
    the status, each field violation, the reason; returns exit status 1."""
    _print_details(details_from_error(err) if isinstance(err, grpc.RpcError) else details_of(err))
    return 1


def _print_details(d: ErrorDetails) -> None:
    # a line each, whatever the server sent: its control characters (a line break, a
    # terminal's escape sequence) as escapes
    print(f"error: {d.code.name}: {shown(d.message)}", file=sys.stderr)
    for v in d.field_violations:
        print(f"  {shown(v.field)}: {shown(v.description)}", file=sys.stderr)
    if d.reason and (d.reason != d.code.name or d.metadata):
        facts = "".join(f", {k}={v}" for k, v in sorted(d.metadata.items()))
        print(f"  reason: {shown(d.reason + facts)}", file=sys.stderr)


def _uses_tls(args: argparse.Namespace) -> bool:
    """Whether the flags (or their environment variables) ask for TLS."""
    flags = ("tls", "tls_ca", "tls_cert", "tls_key", "tls_server_name")
    return any(getattr(args, flag, None) for flag in flags)


def transport_hint(args: argparse.Namespace, d: ErrorDetails) -> str | None:
    """For a call that failed as one does when the client and the server do not agree on
    TLS (``d``, its status), what to change (gRPC says only "Socket closed", or an
    OpenSSL code)."""
    if d.code != grpc.StatusCode.UNAVAILABLE:
        return None
    if "WRONG_VERSION_NUMBER" in d.message:  # a TLS hello answered in plaintext
        return f"hint: {args.target} does not speak TLS: leave out --tls and the --tls-* flags"
    if not d.message.endswith("Socket closed"):
        return None
    if not _uses_tls(args):  # what a TLS server does with a plaintext hello
        return (
            f"hint: {args.target} closed the connection at once: if it uses TLS, add --tls "
            "(system roots) or --tls-ca CA"
        )
    if not getattr(args, "tls_cert", None):  # what a server that wants a client's does
        return (
            f"hint: {args.target} closed the connection at once: if it wants a client "
            "certificate, add --tls-cert and --tls-key"
        )
    return None


async def report_call_error(
    args: argparse.Namespace, channel: grpc.aio.Channel, err: grpc.RpcError | MeshError
) -> int:
    """:func:`report_rpc_error`, and for an UNIMPLEMENTED answer which kind of server the
    target is instead, when its health service says (a node's port given to a
    coordinator command, say); returns exit status 1."""
    if not isinstance(err, grpc.RpcError):  # refused on this side: no server's answer
        return report_rpc_error(err)
    d = details_from_error(err)
    _print_details(d)
    hint = transport_hint(args, d)
    if hint is None and d.code == grpc.StatusCode.UNIMPLEMENTED:
        from nethical_grpc.cli.wrong_server import wrong_server_hint

        hint = await wrong_server_hint(args, channel)
    if hint is not None:
        print(f"  {hint}", file=sys.stderr)
    return 1


def results_table(response: coordinator_pb2.GetGlobalMetricsResponse) -> str:
    if not response.results:  # not a table with no rows
        return "no series matched the query in the regions that answered"
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


def series_name(result: coordinator_pb2.MetricResult) -> str:
    """A result's metric with its labels, as Prometheus writes a series:
    ``latency_ms{route=/x}`` (the metric alone when it has none)."""
    labels = ",".join(f"{k}={v}" for k, v in sorted(result.labels.items()))
    return f"{result.metric}{{{labels}}}" if labels else result.metric


def coverage_line(c: coordinator_pb2.Coverage) -> str:
    text = (
        f"coverage: {len(c.regions_answered)}/{len(c.regions_requested)} regions "
        f"({c.instances_answered}/{c.instances_queried} instances)"
    )
    if c.complete:
        text += ", complete"
    for m in c.missing:
        where = m.region_id + (f"/{m.instance_id}" if m.instance_id else "")
        if m.reason == coordinator_pb2.MISSING_REASON_INCOMPLETE:  # answered, in part
            text += f"\n  incomplete {where}: {m.message}"
        else:
            text += f"\n  missing {where}: {_REASONS.get(m.reason, '?')} ({m.message})"
    if c.HasField("max_staleness"):
        text += (
            f"\n  newest data is at most {c.max_staleness.ToTimedelta().total_seconds():.1f}s old"
        )
    return text


def _query_options(args: argparse.Namespace) -> client.QueryOptions:
    """The query the flags ask for; ``--since`` and ``--until`` count back from now (each
    time, when watching)."""
    now = time.time_ns()
    return client.QueryOptions(
        metrics=[*args.metrics, *args.metric],
        quantiles=args.quantile,
        regions=args.region,
        region_weights=dict(args.weight),
        label_filter=dict(args.label),
        group_by_labels=args.group_by,
        start_ns=args.since.ns(now) if args.since else None,
        end_ns=args.until.ns(now) if args.until else None,
        include_region_breakdown=args.breakdown,
        region_timeout_s=args.region_timeout / 1e9 if args.region_timeout else None,
    )


def _print_answer(
    args: argparse.Namespace, response: coordinator_pb2.GetGlobalMetricsResponse
) -> None:
    if args.json:
        # watching: one answer per line (JSON Lines)
        print_json(response, indent=None if args.watch else 2)
        sys.stdout.flush()
        return
    print(results_table(response))
    for r in response.results:
        if r.HasField("weighted_mean"):
            print(f"weighted mean of {series_name(r)}: {fmt_number(r.weighted_mean)}")
    print(coverage_line(response.coverage), flush=True)


def _metrics_of(
    args: argparse.Namespace, channel: grpc.aio.Channel
) -> Awaitable[coordinator_pb2.GetGlobalMetricsResponse]:
    """The query the flags ask for: of a coordinator, or with ``--node`` of one region
    node (its summaries, as a coordinator of it alone would answer)."""
    if args.node:
        from nethical_grpc.cli.node_query import node_metrics

        return node_metrics(channel, _query_options(args), timeout=args.timeout)
    return client.global_metrics(channel, _query_options(args), timeout=args.timeout)


async def run_query(args: argparse.Namespace) -> int:
    if args.node:
        from nethical_grpc.cli.node_query import coordinator_only_flag

        flag = coordinator_only_flag(args)
        if flag is not None:
            print(f"error: {flag} is for a coordinator, not --node", file=sys.stderr)
            return 2
    if args.watch:
        async with open_channel(args) as channel:
            return await watch(
                args, channel, lambda ch: _metrics_of(args, ch), lambda r: _print_answer(args, r)
            )
    response = await ask(args, lambda ch: _metrics_of(args, ch))
    if response is None:
        return 1
    _print_answer(args, response)
    return 0


async def watch(
    args: argparse.Namespace,
    channel: grpc.aio.Channel,
    call: Callable[[grpc.aio.Channel], Awaitable[M]],
    print_answer: Callable[[M], None],
) -> int:
    """``call`` again every ``--watch`` until Ctrl-C or SIGTERM (exit 0), each answer
    printed (the screen cleared first on a terminal; with ``--json`` a line each). A
    failed call is reported and the watch goes on (a server restarting, say), but for
    bad input or a server of the other kind, which asking again cannot mend (exit 1)."""
    stop = stop_on_signals()
    interval_s = args.watch / 1e9
    tty = sys.stdout.isatty() and not args.json
    stopped = asyncio.ensure_future(stop.wait())
    while not stop.is_set():
        began = time.monotonic()
        stamp = utc_now()
        asked = asyncio.ensure_future(call(channel))
        # Ctrl-C during a slow call stops at once, not at its deadline
        if not await unless_stopped(asked, stop, stopped):
            break
        try:
            response = asked.result()
        except (grpc.RpcError, MeshError) as err:
            if isinstance(err, InvalidArgument) or (
                isinstance(err, grpc.RpcError)
                and details_from_error(err).code
                in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED)
            ):
                return await report_call_error(args, channel, err)
            print(f"{stamp} ", end="", file=sys.stderr)
            report_rpc_error(err)
        else:
            if tty:
                print("\x1b[H\x1b[2J", end="")
            if not args.json:
                print(f"{stamp}, every {interval_s:g}s (Ctrl-C stops)")
            print_answer(response)
        await asyncio.wait({stopped}, timeout=max(0.0, began + interval_s - time.monotonic()))
    stopped.cancel()
    return 0


def utc_now() -> str:
    """The time now, in UTC to the second: ``2026-12-01T02:30:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def unless_stopped(
    task: asyncio.Future[Any], stop: asyncio.Event, stopped: asyncio.Future[Any]
) -> bool:
    """Waits for ``task`` or for ``stop`` (``stopped``: its wait), whichever comes first:
    True when ``task`` is done; when ``stop`` came first, ``task`` is cancelled (and its
    end waited for) and the answer is False."""
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not stop.is_set():
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):  # its outcome is moot now
        await task
    return False


def stop_on_signals(on_first: Callable[[], None] | None = None) -> asyncio.Event:
    """An event Ctrl-C or SIGTERM sets (instead of ending the command at once; then
    ``on_first`` is called). A second one ends the command at once, as a Ctrl-C does
    any other (exit 130): a command that still finishes what it began after the first
    (a call to a server that does not answer) is not left to its deadline."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def signalled() -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        if on_first is not None:
            on_first()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signalled)
    return stop


#: A byte-order mark, as spreadsheet programs start a UTF-8 file with: not the input's.
BOM = "\ufeff"


def stdin() -> TextIO:
    """The command's stdin; an ``OSError`` when it has none (closed: ``<&-``, or a
    service started without one), which Python gives as None."""
    if sys.stdin is None:
        raise OSError("stdin is closed: there is no input to read")
    return sys.stdin


@contextlib.contextmanager
def open_input(source: str) -> Iterator[TextIO]:
    """The file ``source``, or stdin for ``-``, as UTF-8 text whose bytes that are not
    UTF-8 are kept as surrogate escapes (for a message naming their line)."""
    if source == "-":
        stream = stdin()
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(encoding="utf-8", errors="surrogateescape")
        yield stream
        return
    with open(source, encoding="utf-8", errors="surrogateescape") as f:
        yield f


def read_input(source: str) -> str:
    """The text of the file ``source``, or of stdin for ``-``, without a leading
    byte-order mark; a ``ValueError`` naming the line when it is not UTF-8."""
    with open_input(source) as f:
        return check_utf8(f.read(), "stdin" if source == "-" else source).removeprefix(BOM)


def open_channel(args: argparse.Namespace) -> grpc.aio.Channel:
    """A channel with the TLS and token the flags (or environment) ask for; a file that
    cannot be read or used ends the command with one line and exit status 2."""
    try:
        return client_security_from_args(args).channel(args.target)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def ask(
    args: argparse.Namespace, call: Callable[[grpc.aio.Channel], Awaitable[T]]
) -> T | None:
    """``call`` on a channel the flags describe: its answer, or None when it failed or
    was refused on this side (the error then said on stderr, as :func:`report_rpc_error`
    says it)."""
    async with open_channel(args) as channel:
        try:
            return await call(channel)
        except (grpc.RpcError, MeshError) as err:
            await report_call_error(args, channel, err)
            return None


def set_time_range(
    request: Any, args: argparse.Namespace, now_ns: int, *, end_now: bool = False
) -> None:
    """``request.start_time`` and ``end_time`` from ``--since`` and ``--until`` (each
    counted back from ``now_ns`` when a duration); ``end_now``: no ``--until`` is now."""
    if args.since:
        request.start_time.FromNanoseconds(args.since.ns(now_ns))
    if args.until:
        request.end_time.FromNanoseconds(args.until.ns(now_ns))
    elif end_now:
        request.end_time.FromNanoseconds(now_ns)


def print_json(message: Message, **options: Any) -> None:
    """``message`` in protobuf's JSON mapping (``options``: ``MessageToJson``'s), its
    keys sorted: a map's entries come in an order that changes from run to run (a
    node's components, a series' labels), and the same answer should print the same."""
    options.setdefault("sort_keys", True)
    print(json_format.MessageToJson(message, **options))


async def show(
    args: argparse.Namespace,
    call: Callable[[grpc.aio.Channel], Awaitable[M]],
    text_of: Callable[[M], str],
    **json_options: Any,
) -> int:
    """The answer to ``call`` printed as ``--json`` asks (as JSON, else ``text_of`` it):
    exit status 0, or 1 when the call failed."""
    answer = await ask(args, call)
    if answer is None:
        return 1
    if args.json:
        print_json(answer, **json_options)
    else:
        print(text_of(answer))
    return 0


async def run_regions(args: argparse.Namespace) -> int:
    def regions(ch: grpc.aio.Channel) -> Awaitable[coordinator_pb2.ListRegionsResponse]:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(ch)
        answer: Awaitable[coordinator_pb2.ListRegionsResponse] = stub.ListRegions(
            coordinator_pb2.ListRegionsRequest(), timeout=args.timeout
        )
        return answer

    if args.watch:

        def print_answer(answer: coordinator_pb2.ListRegionsResponse) -> None:
            if args.json:  # a line each
                print_json(answer, indent=None)
            else:
                print(regions_table(answer))
            sys.stdout.flush()

        async with open_channel(args) as channel:
            return await watch(args, channel, regions, print_answer)
    return await show(args, regions, regions_table)


def regions_table(response: coordinator_pb2.ListRegionsResponse) -> str:
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
    table = render([*headers, "in-flight", "ejected"], rows, text_columns=(1, 2, 3, 8))
    strategy = enum_name(
        coordinator_pb2.BalancingStrategy, response.strategy, "BALANCING_STRATEGY_"
    )
    gateway = f"gateway: {strategy.lower()}"
    if response.local_region:
        gateway += f", local region {response.local_region}"
    if response.stay_in_region:
        gateway += ", every call stays in its region"
    return f"{table}\n{gateway}"


async def run_health(args: argparse.Namespace) -> int:
    if args.watch:
        async with open_channel(args) as channel:
            return await _watch_health(args, channel)
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


#: How long ``health --watch`` waits before it asks again a server it could not reach.
HEALTH_RETRY_S = 1.0


async def _watch_health(args: argparse.Namespace, channel: grpc.aio.Channel) -> int:
    """``health --watch``: the server's status (grpc.health.v1 Watch) as a JSON line
    with its time whenever it changes, UNREACHABLE while the server cannot be reached
    (asked again every :data:`HEALTH_RETRY_S`), until Ctrl-C or SIGTERM (exit 0)."""
    stop = stop_on_signals()
    stopped = asyncio.ensure_future(stop.wait())
    last = ""

    def say(status: str, **facts: str) -> None:
        nonlocal last
        if status == last:
            return
        last = status
        print(json.dumps({"time": utc_now(), "status": status, **facts}), flush=True)

    async def follow() -> None:
        async for status in client.watch_health(channel, args.service):
            say(health_pb2.HealthCheckResponse.ServingStatus.Name(status))

    while not stop.is_set():
        following = asyncio.ensure_future(follow())
        if not await unless_stopped(following, stop, stopped):
            break
        try:
            following.result()
        except grpc.RpcError as err:
            d = details_from_error(err)
            say("UNREACHABLE", code=d.code.name, message=d.message)
        await asyncio.wait({stopped}, timeout=HEALTH_RETRY_S)
    stopped.cancel()
    return 0
