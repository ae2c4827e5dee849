"""Faults with real processes during global queries: a region killed and restarted,
a region cut off (SIGSTOP) and resumed, a region stalled briefly.

Three ``nethical-mesh region`` processes and a ``nethical-mesh coordinator``. While a
fault is on, a client keeps asking the coordinator for global metrics, every call with
its own deadline; the properties are behaviours, not timings:

* every global query answers OK before the caller's deadline (an exception, such as
  DEADLINE_EXCEEDED, fails the test), whatever the faulty region does;
* while the fault is on, coverage is incomplete and names exactly the faulty region
  (and the per-region breakdown holds only the regions that answered);
* once the region is back (restarted on the same port, or SIGCONT), coverage is full
  again.

"Slowed past the deadline" is SIGSTOP: a stopped process accepts TCP data and answers
nothing, exactly like a node too slow for the region deadline (the coordinator's call
ends with DEADLINE_EXCEEDED and the region is reported missing). A stall shorter than the
region deadline is waited for: the region is then covered.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from nethical_grpc import client
from nethical_grpc.cli.processes import Child, mesh_command
from nethical_grpc.v1 import coordinator_pb2

pytestmark = pytest.mark.e2e

REGIONS = ("f-us", "f-eu", "f-ap")
METRIC = "fault_latency_ms"
CALL_DEADLINE_S = 5.0  # each global query's own deadline
RECOVERY_S = 60.0  # how long a recovery may take before the test gives up

Response = coordinator_pb2.GetGlobalMetricsResponse

# Runs in the child after exec, so no Python code runs between fork and exec in this
# (multi-threaded, gRPC-using) test process: ask for SIGTERM when the parent dies,
# make sure the parent is still there, then become the real command.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)


def launch(name: str, args: Sequence[str], workdir: Path) -> Child:
    """Start ``nethical-mesh ARGS --port-file ...`` logging to ``workdir/NAME.log``.

    What :func:`nethical_grpc.cli.processes.spawn` does, without its ``preexec_fn``:
    Python code between fork and exec of a process whose gRPC threads are busy may
    deadlock the child (the subprocess documentation warns against ``preexec_fn`` with
    threads), so the child sets its parent-death signal itself, after exec.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    port_file = workdir / f"{name}.port"
    port_file.unlink(missing_ok=True)
    command = mesh_command(*args, "--port-file", str(port_file))
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *command[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return Child(name, proc, log_path, port_file)


@dataclass
class Cluster:
    workdir: Path
    nodes: dict[str, Child]
    ports: dict[str, int]
    coordinator: Child
    coordinator_port: int
    spare: list[Child] = field(default_factory=list)

    def region_args(self, region: str) -> list[str]:
        port = str(self.ports[region])
        return ["region", "--region-id", region, "--instance-id", region, "--port", port]

    def restart(self, region: str) -> Child:
        """Start the region again on its old port (same flags)."""
        child = launch(f"{region}-again-{len(self.spare)}", self.region_args(region), self.workdir)
        self.spare.append(child)
        self.nodes[region] = child
        assert child.port(120) == self.ports[region]
        return child


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("faults")
    nodes: dict[str, Child] = {}
    children: list[Child] = []
    coordinator: Child | None = None
    cluster: Cluster | None = None
    try:
        for region in REGIONS:
            nodes[region] = launch(
                region,
                ["region", "--region-id", region, "--instance-id", region, "--port", "0"],
                workdir,
            )
            children.append(nodes[region])
        ports = {r: c.port(120) for r, c in nodes.items()}
        specs = [f"--region={r}=127.0.0.1:{ports[r]}" for r in REGIONS]
        coordinator = launch("coordinator", ["coordinator", "--port", "0", *specs], workdir)
        children.append(coordinator)
        cluster = Cluster(workdir, nodes, ports, coordinator, coordinator.port(60))
        asyncio.run(_feed(cluster, REGIONS))
        asyncio.run(_until_complete(cluster))
        yield cluster
    finally:
        extra = cluster.spare if cluster is not None else []
        for child in [*children, *extra]:
            child.signal(signal.SIGCONT)  # a stopped child cannot act on SIGTERM
            child.stop()


async def _feed(cluster: Cluster, regions: tuple[str, ...]) -> None:
    for i, region in enumerate(regions):
        values = np.random.default_rng(i).lognormal(size=2_000)
        async with client.insecure_channel(f"127.0.0.1:{cluster.ports[region]}") as ch:
            await client.ingest(ch, [client.encode_ingest_request(METRIC, values)], timeout=30)


async def _query(
    ch: grpc.aio.Channel, region_timeout_s: float, deadline_s: float = CALL_DEADLINE_S
) -> Response:
    """One global query; raises (failing the test) unless it answers before its deadline."""
    return await client.global_metrics(
        ch,
        client.QueryOptions(
            metrics=[METRIC], include_region_breakdown=True, region_timeout_s=region_timeout_s
        ),
        timeout=deadline_s,
    )


async def _until_complete(cluster: Cluster, timeout_s: float = RECOVERY_S) -> Response:
    deadline = time.monotonic() + timeout_s
    async with client.insecure_channel(f"127.0.0.1:{cluster.coordinator_port}") as ch:
        while True:
            resp = await _query(ch, region_timeout_s=1.0)
            if resp.coverage.complete:
                return resp
            assert time.monotonic() < deadline, f"coverage never came back: {resp.coverage}"
            await asyncio.sleep(0.2)


def _missing(resp: Response) -> set[str]:
    return {m.region_id for m in resp.coverage.missing}


def _breakdown(resp: Response) -> set[str]:
    return {r.region_id for result in resp.results for r in result.regions}


def _check_degraded_or_full(resp: Response, faulty: str) -> None:
    """Either every region answered, or exactly the faulty one is missing and named."""
    cov = resp.coverage
    assert set(cov.regions_requested) == set(REGIONS)
    if cov.complete:
        assert set(cov.regions_answered) == set(REGIONS)
        return
    assert _missing(resp) == {faulty}
    assert set(cov.regions_answered) == set(REGIONS) - {faulty}
    assert _breakdown(resp) == set(REGIONS) - {faulty}
    assert all(m.message for m in cov.missing)


@dataclass
class QueryLoop:
    """Global queries back to back on one channel while a fault is on."""

    port: int
    region_timeout_s: float
    answers: list[Response] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with client.insecure_channel(f"127.0.0.1:{self.port}") as ch:
            while not self._stop.is_set():
                self.answers.append(await _query(ch, self.region_timeout_s))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def until(
        self, predicate: Callable[[Response], bool], timeout_s: float = RECOVERY_S
    ) -> Response:
        """Wait for a new answer that satisfies ``predicate``; re-raises the loop's error."""
        assert self._task is not None
        deadline = time.monotonic() + timeout_s
        seen = len(self.answers)  # only answers to queries from now on
        while time.monotonic() < deadline:
            if self._task.done():
                self._task.result()  # raises what the loop hit
            for resp in self.answers[seen:]:
                if predicate(resp):
                    return resp
            seen = len(self.answers)
            await asyncio.sleep(0.05)
        raise AssertionError("no answer of the expected kind in time")

    async def stop(self) -> list[Response]:
        self._stop.set()
        assert self._task is not None
        await self._task
        return self.answers


async def test_a_killed_region_is_missing_then_back_after_a_restart(cluster: Cluster) -> None:
    faulty = REGIONS[1]
    loop = QueryLoop(cluster.coordinator_port, region_timeout_s=1.0)
    loop.start()
    await loop.until(lambda r: r.coverage.complete)
    cluster.nodes[faulty].signal(signal.SIGKILL)
    cluster.nodes[faulty].proc.wait(10)
    degraded = await loop.until(lambda r: not r.coverage.complete)
    [reason] = [m.reason for m in degraded.coverage.missing]
    assert reason in (
        coordinator_pb2.MISSING_REASON_UNAVAILABLE,
        coordinator_pb2.MISSING_REASON_UNHEALTHY,
    )
    cluster.restart(faulty)
    await _feed(cluster, (faulty,))  # a restarted memory-only node starts empty
    await loop.until(lambda r: r.coverage.complete and _breakdown(r) == set(REGIONS))
    answers = await loop.stop()
    for resp in answers:
        _check_degraded_or_full(resp, faulty)
    assert answers[-1].coverage.complete


async def test_a_stopped_region_is_missing_within_the_deadline_then_back(
    cluster: Cluster,
) -> None:
    """SIGSTOP: the connection stays up and nothing answers (a node slowed past the
    region deadline); every query still answers in time, naming the region as
    DEADLINE_EXCEEDED; after SIGCONT coverage is full again."""
    faulty = REGIONS[2]
    node = cluster.nodes[faulty]
    loop = QueryLoop(cluster.coordinator_port, region_timeout_s=0.5)
    loop.start()
    await loop.until(lambda r: r.coverage.complete)
    node.signal(signal.SIGSTOP)
    try:
        degraded = await loop.until(lambda r: not r.coverage.complete)
        [missing] = degraded.coverage.missing
        assert missing.region_id == faulty
        assert missing.reason == coordinator_pb2.MISSING_REASON_DEADLINE_EXCEEDED
        # several queries in a row while it stays stopped: all answer, all degraded
        count = len(loop.answers)
        await loop.until(lambda r: len(loop.answers) >= count + 3)
        assert all(not r.coverage.complete for r in loop.answers[count:])
    finally:
        node.signal(signal.SIGCONT)
    await loop.until(lambda r: r.coverage.complete)
    answers = await loop.stop()
    for resp in answers:
        _check_degraded_or_full(resp, faulty)


async def test_a_stall_shorter_than_the_region_deadline_is_waited_for(cluster: Cluster) -> None:
    """A query issued while a region is stopped, with a region deadline far longer than
    the stall, covers every region once the process resumes."""
    await _until_complete(cluster)
    faulty = REGIONS[0]
    node = cluster.nodes[faulty]
    async with client.insecure_channel(f"127.0.0.1:{cluster.coordinator_port}") as ch:
        node.signal(signal.SIGSTOP)
        try:
            pending = asyncio.ensure_future(_query(ch, region_timeout_s=20.0, deadline_s=30.0))
            await asyncio.sleep(0.5)
            assert not pending.done()  # it waits for the stopped region...
        finally:
            node.signal(signal.SIGCONT)
        resp = await pending  # ...which answers once resumed
    assert resp.coverage.complete
    assert _breakdown(resp) == set(REGIONS)
