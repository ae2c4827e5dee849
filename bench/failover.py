"""Failover through the coordinator's gateway, with real processes.

Three ``nethical-mesh region`` processes (one region) and a ``nethical-mesh
coordinator`` process; this client keeps ``--concurrency`` Evaluate calls in flight
through the gateway and records, per call, when it was sent, when it ended, which
instance answered, how many instances the gateway tried, and any error.

* kill: SIGKILL one instance under load, once per ``--evaluate-retry`` policy (the
  killed node is restarted on its port between runs). The connection does not break at
  the kill but when the kernel has torn the process down and closes its sockets (tens
  of ms for a node with the model loaded, more in a sandbox), so this client keeps its
  own ``Health/Watch`` stream to the victim, on a thread, and takes the moment that
  stream breaks as the break. Figures: failed client calls; ``connection_broke_ms``
  (kill to break); ``health_update_after_break_ms``, from the break to the coordinator
  marking the instance UNREACHABLE (its ListRegions ``health_changed_at``);
  ``last_rerouted_after_break_ms``, from the break to the send time of the last call
  the gateway first routed to the dead instance (a call answered after more than one
  attempt; clamped at 0, so 0 means no call sent after the break went there).
* not_serving: SIGTERM one instance (the node says NOT_SERVING at once and keeps
  serving for ``--drain-announce``). Figures: ``health_update_ms`` (SIGTERM to the
  coordinator's NOT_SERVING) and ``last_routed_ms``, from the SIGTERM to the send time
  of the last call that instance answered (``last_routed_upper_ms`` uses that call's
  end instead: an upper bound).

Both clocks are this machine's wall clock (all processes share it).

    python bench/failover.py [--concurrency 4] [--before 2] [--after 2] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nethical_grpc import client
from nethical_grpc.cli.processes import Child, spawn
from nethical_grpc.errors import details_from_error
from nethical_grpc.v1 import coordinator_pb2, coordinator_pb2_grpc, governance_pb2

REGION = "r1"
INSTANCES = 3
TEXTS = [
    "SELECT title FROM books WHERE id = 42",
    "list the files in the project directory",
    "summarise the quarterly report for the team",
    "DROP TABLE users; rm -rf /",
]


@dataclass(slots=True)
class Call:
    sent_ns: int
    ended_ns: int
    instance_id: str = ""
    attempts: int = 0
    error: str = ""


class Load:
    """``concurrency`` callers looping Evaluate through the gateway until stopped."""

    def __init__(self, port: int, concurrency: int) -> None:
        self.channel = client.insecure_channel(f"127.0.0.1:{port}")
        self.stub = coordinator_pb2_grpc.CoordinatorServiceStub(self.channel)
        self.concurrency = concurrency
        self.calls: list[Call] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _caller(self, k: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            request = coordinator_pb2.CoordinatorServiceEvaluateRequest(
                action=governance_pb2.AgentAction(
                    agent_id=f"agent-{k}",
                    action_text=TEXTS[i % len(TEXTS)],
                    action_type="query",
                    request_id=f"{k}-{i}",
                )
            )
            sent = time.time_ns()
            try:
                reply = await self.stub.Evaluate(request, timeout=5.0)
            except grpc.aio.AioRpcError as err:
                d = details_from_error(err)
                self.calls.append(Call(sent, time.time_ns(), error=f"{d.code.name}:{d.reason}"))
                continue
            self.calls.append(
                Call(sent, time.time_ns(), reply.evaluation.instance_id, reply.attempts)
            )

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._caller(k)) for k in range(self.concurrency)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self.channel.close(None)


async def instance_health(port: int, instance_id: str) -> tuple[int, int] | None:
    """(InstanceHealth, health_changed_at in ns) of one instance, from ListRegions; None
    while the coordinator does not know the instance by that id yet."""
    async with client.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(ch)
        resp = await stub.ListRegions(coordinator_pb2.ListRegionsRequest(), timeout=5)
    for region in resp.regions:
        for info in region.instances:
            if info.instance_id == instance_id:
                return info.health, info.health_changed_at.ToNanoseconds()
    return None


async def wait_health(port: int, instance_id: str, health: int, timeout_s: float = 30) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        found = await instance_health(port, instance_id)
        if found is not None and found[0] == health:
            return found[1]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{instance_id} never reached health {health}")
        await asyncio.sleep(0.02)


class BreakWatch:
    """A blocking Health/Watch stream to one node, on a thread: when did it break?"""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stream = health_pb2_grpc.HealthStub(self.channel).Watch(
            health_pb2.HealthCheckRequest()
        )
        next(self.stream)  # the stream is up
        self.broke_ns = 0
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            for _ in self.stream:
                pass
        except grpc.RpcError:
            pass
        self.broke_ns = time.time_ns()

    def wait(self) -> int:
        self._thread.join(30)
        self.channel.close()
        return self.broke_ns


def latency_ms(calls: list[Call]) -> dict[str, float]:
    if not calls:
        return {}
    ms = sorted((c.ended_ns - c.sent_ns) / 1e6 for c in calls)
    return {
        "p50": round(statistics.median(ms), 2),
        "p99": round(common.nearest_rank(ms, 0.99), 2),
        "max": round(ms[-1], 2),
    }


def region_args(i: int, port: int, drain_announce: str) -> list[str]:
    return [
        "region",
        "--region-id",
        REGION,
        "--instance-id",
        f"{REGION}-{i}",
        "--port",
        str(port),
        "--drain-announce",
        drain_announce,
        "--log-level",
        "WARNING",
    ]


class Cluster:
    def __init__(self, workdir: Path, drain_announce: str) -> None:
        self.workdir = workdir
        self.drain_announce = drain_announce
        self.nodes: dict[int, Child] = {}
        self.ports: dict[int, int] = {}
        self.coordinator: Child | None = None
        self.coordinator_port = 0
        self._runs = 0

    def start_node(self, i: int, port: int = 0) -> None:
        self._runs += 1
        self.nodes[i] = spawn(
            f"region-{i}-{self._runs}", region_args(i, port, self.drain_announce), self.workdir
        )

    def start_nodes(self) -> None:
        for i in range(INSTANCES):
            self.start_node(i)
        for i in range(INSTANCES):
            self.ports[i] = self.nodes[i].port(120)

    def start_coordinator(self, policy: str) -> None:
        self._runs += 1
        targets = ",".join(f"127.0.0.1:{self.ports[i]}" for i in range(INSTANCES))
        self.coordinator = spawn(
            f"coordinator-{self._runs}",
            [
                "coordinator",
                "--port",
                "0",
                f"--region={REGION}={targets}",
                "--strategy",
                "round_robin",
                "--evaluate-retry",
                policy,
                "--log-level",
                "WARNING",
            ],
            self.workdir,
        )
        self.coordinator_port = self.coordinator.port(60)

    async def wait_all_serving(self) -> None:
        for i in range(INSTANCES):
            await wait_health(
                self.coordinator_port, f"{REGION}-{i}", coordinator_pb2.INSTANCE_HEALTH_SERVING
            )

    def stop(self) -> None:
        if self.coordinator is not None:
            self.coordinator.stop()
        for node in self.nodes.values():
            node.stop()


async def kill_run(
    cluster: Cluster, policy: str, victim: int, concurrency: int, before_s: float, after_s: float
) -> dict[str, Any]:
    cluster.start_coordinator(policy)
    await cluster.wait_all_serving()
    name = f"{REGION}-{victim}"
    watch = BreakWatch(cluster.ports[victim])
    load = Load(cluster.coordinator_port, concurrency)
    load.start()
    await asyncio.sleep(before_s)
    killed_ns = time.time_ns()
    cluster.nodes[victim].signal(signal.SIGKILL)
    await asyncio.sleep(after_s)
    broke_ns = await asyncio.to_thread(watch.wait)
    await load.stop()
    changed_ns = await wait_health(
        cluster.coordinator_port, name, coordinator_pb2.INSTANCE_HEALTH_UNREACHABLE
    )
    assert cluster.coordinator is not None
    cluster.coordinator.stop()
    cluster.nodes[victim].proc.wait(10)
    calls = load.calls
    failed = [c for c in calls if c.error]
    rerouted = [c for c in calls if c.attempts > 1]
    steady = [c for c in calls if c.ended_ns < killed_ns]
    around = [c for c in calls if c.sent_ns <= killed_ns + 100_000_000 and c.ended_ns >= killed_ns]
    last_rerouted = max((c.sent_ns for c in rerouted), default=broke_ns)
    reasons: dict[str, int] = {}
    for c in failed:
        reasons[c.error] = reasons.get(c.error, 0) + 1
    # restart the killed node on its port for the next run
    cluster.start_node(victim, cluster.ports[victim])
    cluster.nodes[victim].port(120)
    return {
        "evaluate_retry": policy,
        "calls": len(calls),
        "failed_calls": len(failed),
        "failed_by_reason": reasons,
        "rerouted_calls": len(rerouted),
        "connection_broke_ms": round((broke_ns - killed_ns) / 1e6, 3),
        "health_update_after_break_ms": round((changed_ns - broke_ns) / 1e6, 3),
        "last_rerouted_after_break_ms": round(max(0, last_rerouted - broke_ns) / 1e6, 3),
        "health_update_after_kill_ms": round((changed_ns - killed_ns) / 1e6, 3),
        "served_by_killed_after_kill": sum(
            1 for c in calls if c.instance_id == name and c.sent_ns > killed_ns
        ),
        "latency_ms_before": latency_ms(steady),
        "latency_ms_calls_in_flight_at_kill": latency_ms(around),
        "calls_per_s": round(len(calls) / (before_s + after_s), 1),
    }


async def not_serving_run(
    cluster: Cluster, victim: int, concurrency: int, before_s: float, after_s: float
) -> dict[str, Any]:
    cluster.start_coordinator("not-sent")
    await cluster.wait_all_serving()
    name = f"{REGION}-{victim}"
    load = Load(cluster.coordinator_port, concurrency)
    load.start()
    await asyncio.sleep(before_s)
    signalled_ns = time.time_ns()
    cluster.nodes[victim].signal(signal.SIGTERM)
    changed_ns = await wait_health(
        cluster.coordinator_port, name, coordinator_pb2.INSTANCE_HEALTH_NOT_SERVING, 10
    )
    await asyncio.sleep(after_s)
    await load.stop()
    calls = load.calls
    served_after = [c for c in calls if c.instance_id == name and c.sent_ns >= signalled_ns]
    return {
        "calls": len(calls),
        "failed_calls": sum(1 for c in calls if c.error),
        "health_update_ms": round((changed_ns - signalled_ns) / 1e6, 3),
        "calls_it_answered_after_sigterm": len(served_after),
        "last_routed_ms": round(
            max((c.sent_ns - signalled_ns for c in served_after), default=0) / 1e6, 3
        ),
        "last_routed_upper_ms": round(
            max((c.ended_ns - signalled_ns for c in served_after), default=0) / 1e6, 3
        ),
        "sent_after_health_update_and_answered_by_it": sum(
            1 for c in served_after if c.sent_ns > changed_ns
        ),
        "calls_per_s": round(len(calls) / (before_s + after_s), 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--before", type=float, default=2.0, help="seconds of load before")
    parser.add_argument("--after", type=float, default=2.0, help="seconds of load after")
    parser.add_argument("--quick", action="store_true", help="short runs (1 s + 1 s)")
    args = parser.parse_args()
    if args.quick:
        args.before = args.after = 1.0
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp:
        cluster = Cluster(Path(tmp), drain_announce="3s")
        try:
            cluster.start_nodes()
            kills = [
                await kill_run(cluster, policy, 1, args.concurrency, args.before, args.after)
                for policy in ("not-sent", "connection-lost")
            ]
            drain = await not_serving_run(cluster, 2, args.concurrency, args.before, args.after)
        finally:
            cluster.stop()
    common.emit(
        "failover",
        {
            "setup": (
                f"{INSTANCES} region node processes of one region, a coordinator process "
                f"(round_robin), {args.concurrency} concurrent Evaluate callers through it"
            ),
            "concurrency": args.concurrency,
            "load_s_before_and_after": [args.before, args.after],
            "kill": kills,
            "not_serving": drain,
            "load_avg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "targets": {
                "failed_calls_on_kill": 0,
                "traffic_moved_after_kill_ms": 10,
                "no_new_requests_after_not_serving_ms": 100,
            },
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
