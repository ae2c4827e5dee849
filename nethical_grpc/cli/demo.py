"""The all-in-one demo: three region nodes and a coordinator as separate processes on
loopback, heavy-tailed traffic streamed into every region, and a live table of global
metrics beside the exact quantiles of the data the demo generated."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from nethical_grpc import client
from nethical_grpc.cli.args import METRICS_OFF, METRICS_PORT_ENV, parse_metrics_port
from nethical_grpc.cli.client_commands import stop_on_signals
from nethical_grpc.cli.processes import START_TIMEOUT_S, Child, spawn
from nethical_grpc.cli.table import fmt_number, render
from nethical_grpc.v1 import coordinator_pb2

REGION_NAMES = [
    "us-east-1",
    "eu-west-1",
    "ap-south-1",
    "us-west-2",
    "eu-central-1",
    "ap-northeast-1",
    "sa-east-1",
    "ca-central-1",
    "af-south-1",
    "me-south-1",
]
QUANTILES = (0.5, 0.9, 0.99)
METRICS = ("latency_ms", "risk_score", "score_delta")
TICKS_PER_S = 20
TICK_S = 1 / TICKS_PER_S
#: Each region is a process of its own (a region node holds a few hundred MB).
MAX_REGIONS = 16
#: The demo keeps every value it sends, for the exact quantiles it shows beside the
#: mesh's: this many at most (8 bytes each, 2 GB).
MAX_KEPT_VALUES = 250_000_000


def region_names(n: int) -> list[str]:
    return [REGION_NAMES[i] if i < len(REGION_NAMES) else f"region-{i}" for i in range(n)]


def generate(metric: str, region_index: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Synthetic heavy-tailed traffic; each region has its own spread."""
    if metric == "latency_ms":
        return rng.lognormal(
            mean=np.log(40.0 * (region_index + 1)), sigma=0.5 + 0.35 * region_index, size=n
        )
    if metric == "risk_score":
        return rng.beta(2.0, 5.0 + 2.0 * region_index, size=n)
    # score_delta: zeros, negatives and a heavy tail on both sides
    x = rng.standard_normal(n) * rng.lognormal(0.0, 1.0 + 0.3 * region_index, size=n)
    x[rng.random(n) < 0.15] = 0.0
    return x


@dataclass
class Sent:
    """Every value the demo sent, per region and metric, so exact quantiles can be shown."""

    chunks: dict[tuple[int, str], list[np.ndarray]] = field(default_factory=dict)

    def add(self, region_index: int, metric: str, values: np.ndarray) -> None:
        self.chunks.setdefault((region_index, metric), []).append(values)

    def sent(self, region_index: int, metric: str) -> np.ndarray:
        parts = self.chunks.get((region_index, metric), [])
        if len(parts) > 1:
            self.chunks[(region_index, metric)] = parts = [np.concatenate(parts)]
        return parts[0] if parts else np.empty(0)

    def total(self, metric: str) -> int:
        return sum(
            sum(p.size for p in parts) for (_, m), parts in self.chunks.items() if m == metric
        )

    def applied(self, metric: str, counts: dict[int, int]) -> np.ndarray:
        """The values of ``metric`` the mesh holds when region ``i`` has applied
        ``counts[i]`` of them: the first ones it was sent, as a region applies the
        batches of its stream in order and each one whole."""
        parts = [self.sent(i, metric)[:n] for i, n in sorted(counts.items())]
        return np.concatenate(parts) if parts else np.empty(0)


def per_tick(rate: int, tick: int) -> int:
    """How many values of each metric tick ``tick`` (0, 1, ...) sends for ``rate``
    observations a second per region: after any tick, what was sent is the whole part
    of what the rate asks by then (the fraction a tick leaves over is carried to the
    next), so a rate of 1,000 sends 1,000 a second and a rate of 6 sends 6."""
    per_second = TICKS_PER_S * len(METRICS)
    return ((tick + 1) * rate) // per_second - (tick * rate) // per_second


async def _traffic(
    region_index: int, rate: int, stop: asyncio.Event, sent: Sent, seed: int
) -> AsyncIterator[bytes]:
    rng = np.random.default_rng(seed + region_index)
    next_tick = time.monotonic()
    tick = 0
    while not stop.is_set():
        n = per_tick(rate, tick)
        tick += 1
        for metric in METRICS if n else ():
            values = generate(metric, region_index, n, rng)
            sent.add(region_index, metric, values)
            yield client.encode_ingest_request(metric, values, {"source": "demo"})
        next_tick += TICK_S
        delay = next_tick - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)


def _table(response: coordinator_pb2.GetGlobalMetricsResponse, sent: Sent, names: list[str]) -> str:
    """The mesh's figures beside the exact ones of the same data: the values each region
    had applied when it answered (its count in the per-region breakdown)."""
    headers = ["metric", "count (sent)", "mean"]
    for q in QUANTILES:
        headers += [f"p{q * 100:g} mesh", "exact", "err"]
    headers.append("bound")
    index = {name: i for i, name in enumerate(names)}
    rows = []
    for r in response.results:
        if r.metric not in METRICS:
            continue
        counts = {index[g.region_id]: g.statistics.count for g in r.regions if g.region_id in index}
        held = sent.applied(r.metric, counts)
        exact = np.quantile(held, QUANTILES, method="lower") if held.size else [np.nan] * 3
        s = r.statistics
        row = [r.metric, f"{s.count:,} ({sent.total(r.metric):,})", fmt_number(s.mean)]
        for qv, ex in zip(s.quantiles, exact, strict=True):
            err = abs(qv.value - ex) / abs(ex) if ex else abs(qv.value)
            row += [fmt_number(qv.value), fmt_number(float(ex)), f"{err * 100:.2f}%"]
        row.append(f"{s.relative_error * 100:.2f}%")
        rows.append(row)
    return render(headers, rows)


def _command_path() -> str:
    """How to run ``nethical-mesh`` from here: its name when the shell finds this one,
    else its path (say, ``.venv/bin/nethical-mesh`` after ``make demo``)."""
    beside = Path(sys.executable).with_name("nethical-mesh")
    if not beside.exists():
        return "nethical-mesh"
    on_path = shutil.which("nethical-mesh")
    if on_path is not None and Path(on_path).resolve() == beside.resolve():
        return "nethical-mesh"
    try:
        return str(beside.relative_to(Path.cwd()))
    except ValueError:
        return str(beside)


def _coverage(c: coordinator_pb2.Coverage) -> str:
    text = f"regions covered: {len(c.regions_answered)}/{len(c.regions_requested)}"
    text += f" [{', '.join(c.regions_answered)}]"
    if not c.complete:
        incomplete = coordinator_pb2.MISSING_REASON_INCOMPLETE
        parts = [
            f"{how} {', '.join(names)}"
            for how, names in (
                ("missing", [m.region_id for m in c.missing if m.reason != incomplete]),
                ("incomplete", [m.region_id for m in c.missing if m.reason == incomplete]),
            )
            if names
        ]
        text += "  (partial: " + "; ".join(parts) + ")"
    return text


def children_env() -> dict[str, str]:
    """What the demo changes in its children's environment: a metrics port
    :data:`METRICS_PORT_ENV` sets, which every child would try to listen on (all but
    one failing), turned off. A value that is no port is left, for the children to
    refuse as any server does."""
    value = os.environ.get(METRICS_PORT_ENV)
    if not value:
        return {}
    try:
        parse_metrics_port(value)
    except argparse.ArgumentTypeError:
        return {}
    return {METRICS_PORT_ENV: METRICS_OFF}


class DemoFailed(Exception):
    """What ends the demo early, in a line: a child that did not start, a coordinator
    that did not answer."""


async def _port_of(child: Child) -> int:
    """``child``'s port once it serves, or :class:`DemoFailed` saying why it did not
    start (the last line of its log: its own error)."""
    try:
        return await child.aport(START_TIMEOUT_S)
    except (RuntimeError, TimeoutError) as exc:
        said = str(exc).splitlines()[0].rstrip(":")
        last = child.tail(1).strip()
        raise DemoFailed(f"{said}: {last}" if last else said) from None


class DemoInterrupted(Exception):
    """Ctrl-C or SIGTERM while the mesh was starting."""


async def _port_unless_stopped(child: Child, stop: asyncio.Event) -> int:
    """:func:`_port_of`, or :class:`DemoInterrupted` as soon as ``stop`` is set (a start
    can take many seconds while the JIT kernels compile; Ctrl-C must not wait for it)."""
    waiting = asyncio.ensure_future(_port_of(child))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if waiting.done():
        return waiting.result()
    # the thread that polls the port file ends once the caller has stopped the child
    waiting.cancel()
    raise DemoInterrupted


async def _query(
    channel: grpc.aio.Channel, opts: client.QueryOptions
) -> coordinator_pb2.GetGlobalMetricsResponse:
    """The coordinator's answer, or :class:`DemoFailed` when it gave none."""
    try:
        return await client.global_metrics(channel, opts, timeout=5.0)
    except grpc.RpcError as err:
        code = err.code().name if isinstance(err, grpc.aio.AioRpcError) else "?"
        details = err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err)
        raise DemoFailed(f"the coordinator did not answer: {code}: {details}") from None


Streams = list[tuple[grpc.aio.Channel, "asyncio.Future[object]"]]


async def _drop_streams(streams: Streams) -> None:
    """Cancel the ingest streams still open and close their channels (their errors,
    moot now, retrieved)."""
    for _, task in streams:
        task.cancel()
    await asyncio.gather(*(task for _, task in streams), return_exceptions=True)
    for channel, _ in streams:
        await channel.close(None)
    streams.clear()


def _refused(args: argparse.Namespace) -> str:
    """Why the demo's arguments cannot run ("" when they can)."""
    if args.regions < 1 or args.rate < 1:
        return "--regions and --rate must be positive"
    for flag, seconds in (("--duration", args.duration), ("--refresh", args.refresh)):
        if not (math.isfinite(seconds) and seconds > 0):  # nan compares false to all
            return f"{flag} must be a positive number of seconds"
    if args.seed < 0:  # numpy takes no negative seed: the ingest streams failed on it
        return "--seed must be 0 or more"
    if args.regions > MAX_REGIONS:
        return f"--regions is at most {MAX_REGIONS} (each region node is a process of its own)"
    kept = args.regions * args.rate * args.duration
    if kept > MAX_KEPT_VALUES:
        return (
            f"--regions × --rate × --duration is {kept:,.0f} values, more than the "
            f"{MAX_KEPT_VALUES:,} the demo keeps for its exact quantiles: lower --rate or "
            "--duration"
        )
    return ""


async def run_demo(args: argparse.Namespace) -> int:
    refused = _refused(args)
    if refused:
        print(f"demo: {refused}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="nethical-demo-"))
    children: list[Child] = []
    streams: Streams = []
    try:
        return await _demo(args, workdir, children, streams)
    except DemoFailed as exc:
        print(f"demo: {exc} (logs in {workdir})", file=sys.stderr)
        return 1
    except DemoInterrupted:
        print("demo: interrupted while the mesh was starting", file=sys.stderr)
        return 130
    finally:
        await _drop_streams(streams)
        for child in reversed(children):
            await asyncio.to_thread(child.stop)


async def _demo(
    args: argparse.Namespace, workdir: Path, children: list[Child], streams: Streams
) -> int:
    """The demo: ``children`` started (the caller stops them), ``streams`` opened (the
    caller drops those left open)."""
    stop = stop_on_signals()
    tty = sys.stdout.isatty()
    names = region_names(args.regions)
    env = children_env()
    for name in names:
        region = ["region", "--region-id", name, "--port", "0"]
        children.append(spawn(name, region, workdir, env))
    # the first start on a machine compiles the JIT kernels (seconds; cached after)
    ports = [await _port_unless_stopped(c, stop) for c in children]
    specs = [f"--region={n}=127.0.0.1:{p}" for n, p in zip(names, ports, strict=True)]
    coord = spawn("coordinator", ["coordinator", "--port", "0", *specs], workdir, env)
    children.append(coord)
    coord_port = await _port_unless_stopped(coord, stop)
    print(
        f"mesh up: {len(names)} region nodes + coordinator on 127.0.0.1:{coord_port} "
        f"(logs in {workdir})",
        flush=True,
    )
    print(f"try: {_command_path()} query --target 127.0.0.1:{coord_port}", flush=True)

    sent = Sent()
    started_ns = time.time_ns() - 1
    for i, port in enumerate(ports):
        channel = client.insecure_channel(f"127.0.0.1:{port}")
        traffic = _traffic(i, args.rate, stop, sent, args.seed)
        streams.append(
            (channel, asyncio.ensure_future(client.ingest(channel, traffic, timeout=None)))
        )
    # the per-region counts say which of the values sent each region had applied
    opts = client.QueryOptions(
        quantiles=QUANTILES,
        start_ns=started_ns,
        metrics=list(METRICS),
        include_region_breakdown=True,
    )
    deadline = time.monotonic() + args.duration
    async with client.insecure_channel(f"127.0.0.1:{coord_port}") as coord_channel:
        while not stop.is_set() and time.monotonic() < deadline:
            # a --refresh longer than the time left waits only until --duration is up
            wait_s = min(args.refresh, max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait_s)
            response = await _query(coord_channel, opts)
            elapsed = args.duration - max(0.0, deadline - time.monotonic())
            if tty:
                print("\x1b[H\x1b[2J", end="")
            print(
                f"\nNethical mesh demo - {elapsed:4.1f}s of {args.duration:g}s, "
                "live (count: applied so far; exact: of the same values)"
            )
            print(_table(response, sent, names))
            print(_coverage(response.coverage), flush=True)
        interrupted = stop.is_set()
        stop.set()
        await _end_streams(streams)
        response = await _query(coord_channel, opts)
    print(
        f"\nfinal ({'interrupted' if interrupted else 'complete'}; every batch acknowledged)"
        " - err: relative error against the exact quantile; bound: the sketch's guarantee"
    )
    print(_table(response, sent, names))
    print(_coverage(response.coverage), flush=True)
    return 0


async def _end_streams(streams: Streams) -> None:
    """Wait for each ingest stream to send its last batch (``stop`` is set), and close
    it; a stream that failed is said on stderr."""
    while streams:
        channel, task = streams.pop(0)
        try:
            await task
        except grpc.RpcError as err:
            code = err.code().name if isinstance(err, grpc.aio.AioRpcError) else "?"
            print(f"ingest stream ended: {code}", file=sys.stderr)
        finally:
            await channel.close(None)
