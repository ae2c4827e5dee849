"""Failover through the gateway with real processes: a node killed, a node draining.

Three ``nethical-mesh region`` processes and a ``nethical-mesh coordinator`` (round
robin, ``--evaluate-retry connection-lost``); callers keep Evaluate calls in flight
through the coordinator while one node is SIGKILLed or SIGTERMed.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from nethical_grpc import client
from nethical_grpc.cli.processes import Child, spawn
from nethical_grpc.errors import details_from_error
from nethical_grpc.v1 import coordinator_pb2, coordinator_pb2_grpc, governance_pb2

pytestmark = pytest.mark.e2e

REGION = "r1"


@dataclass
class Cluster:
    nodes: dict[str, Child]
    coordinator: Child
    port: int


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir: Path = tmp_path_factory.mktemp("failover")
    children: list[Child] = []
    try:
        nodes = {}
        for i in range(3):
            name = f"{REGION}-{i}"
            nodes[name] = spawn(
                name,
                [
                    "region",
                    "--region-id",
                    REGION,
                    "--instance-id",
                    name,
                    "--port",
                    "0",
                    "--drain-announce",
                    "3s",
                ],
                workdir,
            )
            children.append(nodes[name])
        targets = ",".join(f"127.0.0.1:{c.port(120)}" for c in nodes.values())
        coordinator = spawn(
            "coordinator",
            [
                "coordinator",
                "--port",
                "0",
                f"--region={REGION}={targets}",
                "--strategy",
                "round_robin",
                "--evaluate-retry",
                "connection-lost",
            ],
            workdir,
        )
        children.append(coordinator)
        yield Cluster(nodes, coordinator, coordinator.port(60))
    finally:
        for c in children:
            c.stop()


@dataclass
class Call:
    sent_ns: int
    instance_id: str = ""
    error: str = ""


class Load:
    def __init__(self, port: int, callers: int = 4) -> None:
        self.channel = client.insecure_channel(f"127.0.0.1:{port}")
        self.stub = coordinator_pb2_grpc.CoordinatorServiceStub(self.channel)
        self.calls: list[Call] = []
        self.stopped = asyncio.Event()
        self.tasks = [asyncio.ensure_future(self._caller(k)) for k in range(callers)]

    async def _caller(self, k: int) -> None:
        i = 0
        while not self.stopped.is_set():
            i += 1
            sent = time.time_ns()
            request = coordinator_pb2.CoordinatorServiceEvaluateRequest(
                action=governance_pb2.AgentAction(
                    agent_id=f"agent-{k}", action_text=f"SELECT {i} FROM t", request_id=f"{k}-{i}"
                )
            )
            try:
                reply = await self.stub.Evaluate(request, timeout=10)
            except grpc.aio.AioRpcError as err:
                d = details_from_error(err)
                self.calls.append(Call(sent, error=f"{d.code.name}:{d.reason}:{d.message}"))
            else:
                self.calls.append(Call(sent, reply.evaluation.instance_id))

    async def after(self, t_ns: int, n: int, timeout_s: float = 60.0) -> None:
        """Wait until ``n`` calls sent after ``t_ns`` have an answer (not a timing test)."""
        for _ in range(int(timeout_s / 0.05)):
            if sum(c.sent_ns > t_ns for c in self.calls) >= n:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"fewer than {n} calls answered after the event")

    async def stop(self) -> list[Call]:
        self.stopped.set()
        await asyncio.gather(*self.tasks)
        await self.channel.close(None)
        return self.calls


async def instance(port: int, instance_id: str) -> coordinator_pb2.InstanceInfo | None:
    async with client.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(ch)
        resp = await stub.ListRegions(coordinator_pb2.ListRegionsRequest(), timeout=5)
    found = [i for r in resp.regions for i in r.instances if i.instance_id == instance_id]
    return found[0] if found else None


async def wait_health(port: int, instance_id: str, health: int) -> coordinator_pb2.InstanceInfo:
    deadline = time.monotonic() + 60
    while True:
        info = await instance(port, instance_id)
        if info is not None and info.health == health:
            return info
        assert time.monotonic() < deadline, f"{instance_id} never reached {health}: {info}"
        await asyncio.sleep(0.05)


async def all_serving(c: Cluster) -> None:
    for name, node in c.nodes.items():
        if node.proc.poll() is None:
            await wait_health(c.port, name, coordinator_pb2.INSTANCE_HEALTH_SERVING)


async def test_killing_one_of_three_loses_no_call(cluster: Cluster) -> None:
    await all_serving(cluster)
    load = Load(cluster.port)
    await asyncio.sleep(1.0)
    cluster.nodes["r1-1"].signal(signal.SIGKILL)
    killed_ns = time.time_ns()
    info = await wait_health(cluster.port, "r1-1", coordinator_pb2.INSTANCE_HEALTH_UNREACHABLE)
    await load.after(killed_ns, 20)
    calls = await load.stop()
    assert [c.error for c in calls if c.error] == []
    assert not info.routable
    alive = {n for n in ("r1-0", "r1-2") if cluster.nodes[n].proc.poll() is None}
    assert {c.instance_id for c in calls if c.sent_ns > killed_ns} == alive  # traffic moved


async def test_not_serving_node_gets_no_new_requests(cluster: Cluster) -> None:
    await all_serving(cluster)
    victim = "r1-2"
    load = Load(cluster.port)
    await asyncio.sleep(1.0)
    cluster.nodes[victim].signal(signal.SIGTERM)  # NOT_SERVING now, stops 3 s later
    info = await wait_health(cluster.port, victim, coordinator_pb2.INSTANCE_HEALTH_NOT_SERVING)
    update_ns = info.health_changed_at.ToNanoseconds()
    await load.after(update_ns, 10)  # while the node is still up and would answer
    calls = await load.stop()
    assert [c.error for c in calls if c.error] == []
    # a call the gateway routed after the update was sent after it; none went there
    assert [c for c in calls if c.instance_id == victim and c.sent_ns > update_ns] == []
    assert any(c.sent_ns > update_ns for c in calls)
    assert cluster.nodes[victim].proc.wait(30) == 0  # drained and exited cleanly
