"""What telemetry costs per unary RPC: baseline, off, Prometheus metrics, metrics + traces.

One process, one event loop, six real grpc.aio servers on 127.0.0.1 port 0, each
serving the real RegionNodeService (GetNodeInfo), each called over its own channel:

* ``baseline``: server and channel built without the telemetry module in the path;
* ``off``: built the way the mesh builds them while telemetry is not configured:
  ``server_interceptors()`` and ``client_interceptors()`` (both ``[]``), and each call
  inside ``with traced_call(...)`` (the shared do-nothing scope);
* ``metrics_*``: a handle with only the Prometheus endpoint (spans are not recorded,
  trace context is still passed on) and its server interceptor; the client side either
  through the channel's client ``interceptors`` or per call with ``traced_call``;
* ``traces_*``: the same plus a span exporter that drops what it gets (the cost of
  recording spans, not of shipping them).

Rounds interleave the modes (shuffled order per round) so drift hits every mode alike;
each round times ``--calls`` sequential calls per mode, in wall time and in process
CPU time (less disturbed by other processes on a shared machine). Overheads are
medians of the per-round differences to baseline. Also times the off-mode helpers
(no-op recorder call, no-op ``traced_call`` scope) and one recorder call when on.

    python bench/telemetry.py [--rounds 40] [--calls 150] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import common
import grpc
from grpc_health.v1 import health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

import nethical_grpc.telemetry as telemetry
from nethical_grpc.health import HealthService
from nethical_grpc.telemetry.setup import Telemetry, configure_telemetry
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc
from region_node.node import NodeIdentity, RegionNode
from region_node.servicer import RegionNodeServicer, add_to_server

MODES = (
    "baseline",
    "off",
    "metrics_interceptors",
    "metrics_traced_call",
    "traces_interceptors",
    "traces_traced_call",
)
METHOD = "/nethical_grpc.v1.RegionNodeService/GetNodeInfo"
REGION = "bench-region"

Call = Callable[[], Awaitable[object]]


class DropSpans(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def start(interceptors: list[Any] | None) -> tuple[grpc.aio.Server, str]:
    if interceptors is None:
        server = grpc.aio.server()
    else:
        server = grpc.aio.server(interceptors=interceptors)
    servicer = RegionNodeServicer(RegionNode(NodeIdentity(REGION, "bench-0")))
    add_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(HealthService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def plain_call(ch: grpc.aio.Channel) -> Call:
    stub = region_node_pb2_grpc.RegionNodeServiceStub(ch)
    request = region_node_pb2.GetNodeInfoRequest()

    async def call() -> object:
        return await stub.GetNodeInfo(request, timeout=5)

    return call


def scoped_call(
    ch: grpc.aio.Channel, target: str, scope: Callable[..., telemetry.CallScope]
) -> Call:
    stub = region_node_pb2_grpc.RegionNodeServiceStub(ch)
    request = region_node_pb2.GetNodeInfoRequest()

    async def call() -> object:
        with scope(METHOD, target, REGION) as c:
            return await stub.GetNodeInfo(request, timeout=5, metadata=c.metadata)

    return call


async def timed_calls(call: Call, calls: int) -> tuple[float, float]:
    """(wall µs, process CPU µs) per call; CPU time is less hurt by other processes."""
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
        await call()
    return (
        (time.perf_counter() - w0) / calls * 1e6,
        (time.process_time() - c0) / calls * 1e6,
    )


def recorder_ns(rec: telemetry.Recorder, n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        rec.record_coverage(3, 2)
    return (time.perf_counter_ns() - t0) / n


def traced_call_ns(n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        with telemetry.traced_call(METHOD, "127.0.0.1:1", REGION):
            pass
    return (time.perf_counter_ns() - t0) / n


async def build(mode: str, handles: dict[str, Telemetry]) -> tuple[grpc.aio.Server, Call, Any]:
    if mode == "baseline":  # the telemetry module is not in the path at all
        server, target = await start(None)
        ch = grpc.aio.insecure_channel(target)
        return server, plain_call(ch), ch
    if mode == "off":  # built as the mesh builds them, with telemetry not configured
        server, target = await start(telemetry.server_interceptors())
        ch = grpc.aio.insecure_channel(
            target, interceptors=telemetry.client_interceptors(target, REGION)
        )
        return server, scoped_call(ch, target, telemetry.traced_call), ch
    tel = handles[mode.split("_", 1)[0]]
    server, target = await start(tel.server_interceptors())
    if mode.endswith("interceptors"):
        ch = grpc.aio.insecure_channel(target, interceptors=tel.client_interceptors(target, REGION))
        return server, plain_call(ch), ch
    ch = grpc.aio.insecure_channel(target)
    return server, scoped_call(ch, target, tel.traced_call), ch


def summarize(xs: list[float], base: list[float]) -> dict[str, float]:
    diffs = [x - b for x, b in zip(xs, base, strict=True)]
    q = statistics.quantiles(xs, n=4)
    return {
        "median": round(statistics.median(xs), 2),
        "p25": round(q[0], 2),
        "p75": round(q[2], 2),
        "overhead_median": round(statistics.median(diffs), 2),
        "ratio_to_baseline": round(statistics.median(xs) / statistics.median(base), 3),
    }


async def run(rounds: int, calls: int) -> dict[str, Any]:
    assert telemetry.active_telemetry() is None
    n_noop = 200_000
    noop_rec = recorder_ns(telemetry.get_recorder(), n_noop)
    noop_scope = traced_call_ns(n_noop)
    handles: dict[str, Telemetry] = {
        "metrics": configure_telemetry(
            "bench-metrics", metrics_port=0, metrics_host="127.0.0.1", activate=False
        ),
        "traces": configure_telemetry(
            "bench-traces",
            metrics_port=0,
            metrics_host="127.0.0.1",
            span_exporters=[DropSpans()],
            activate=False,
        ),
    }
    servers: list[grpc.aio.Server] = []
    channels: list[grpc.aio.Channel] = []
    fns: dict[str, Call] = {}
    try:
        for mode in MODES:
            server, fn, ch = await build(mode, handles)
            servers.append(server)
            channels.append(ch)
            fns[mode] = fn
        for mode in MODES:  # warm up connections and caches
            await timed_calls(fns[mode], max(50, calls // 5))
        wall: dict[str, list[float]] = {m: [] for m in MODES}
        cpu: dict[str, list[float]] = {m: [] for m in MODES}
        rng = random.Random(7)
        for _ in range(rounds):
            order = list(MODES)
            rng.shuffle(order)
            for mode in order:
                w, c = await timed_calls(fns[mode], calls)
                wall[mode].append(w)
                cpu[mode].append(c)
    finally:
        for ch in channels:
            await ch.close(None)
        for server in servers:
            await server.stop(0)
    on_rec = recorder_ns(handles["metrics"].recorder, 20_000)
    for tel in handles.values():
        tel.shutdown()
    return {
        "rpc": "RegionNodeService/GetNodeInfo, unary, client and server in one process",
        "rounds": rounds,
        "calls_per_round": calls,
        "wall_us_per_call": {m: summarize(wall[m], wall["baseline"]) for m in MODES},
        "cpu_us_per_call": {m: summarize(cpu[m], cpu["baseline"]) for m in MODES},
        "off_ns_per_call": {"recorder": round(noop_rec, 1), "traced_call": round(noop_scope, 1)},
        "on_recorder_ns_per_record_coverage": round(on_rec, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=150)
    parser.add_argument("--quick", action="store_true", help="4 rounds of 100 calls")
    args = parser.parse_args()
    rounds, calls = (4, 100) if args.quick else (args.rounds, args.calls)
    if rounds < 2 or calls < 1:
        parser.error("need --rounds >= 2 and --calls >= 1")
    common.emit("telemetry", asyncio.run(run(rounds, calls)))


if __name__ == "__main__":
    main()
