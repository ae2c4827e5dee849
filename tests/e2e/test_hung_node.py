"""A region node that stops running (SIGSTOP) keeps its TCP connection and its health
stream open: only the coordinator's keepalive pings, left unanswered, tell. A real
``nethical-mesh region`` process and an in-process coordinator (its channels to nodes
are the balancer's default ones)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.gateway_config import GatewayConfig
from coordinator.instances import Health
from coordinator.server import CoordinatorConfig, start_coordinator
from nethical_grpc.cli.processes import Child, spawn
from nethical_grpc.grpc_options import NODE_KEEPALIVE_TIME_MS, NODE_KEEPALIVE_TIMEOUT_MS
from nethical_grpc.security.channels import channel_factory

pytestmark = pytest.mark.e2e


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Child]:
    child = spawn(
        "hung-0",
        ["region", "--region-id", "hung", "--instance-id", "hung-0", "--port", "0"],
        tmp_path,
    )
    try:
        yield child
    finally:
        child.signal(signal.SIGCONT)
        child.stop()


@pytest.mark.parametrize("channels", ["balancer", "security"])
async def test_a_stopped_node_is_unreachable_within_one_keepalive_round(
    node: Child, channels: str
) -> None:
    """``security``: the channels a coordinator with mTLS or a token makes (plaintext
    here; the same options)."""
    port = await node.aport()
    gateway = GatewayConfig(channel_factory=channel_factory() if channels == "security" else None)
    mesh, federation = await start_coordinator(
        CoordinatorConfig(regions={"hung": [f"127.0.0.1:{port}"]}, gateway=gateway)
    )
    try:
        [inst] = federation.registry.instances("hung")
        deadline = time.monotonic() + 30
        while inst.health is not Health.SERVING:
            assert time.monotonic() < deadline, inst.health
            await asyncio.sleep(0.05)
        node.signal(signal.SIGSTOP)
        stopped = time.monotonic()
        # a ping at most one keepalive interval after the stop, unanswered for the
        # keepalive timeout (with the channels' former 30 s + 10 s: ~40-62 s)
        bound = (NODE_KEEPALIVE_TIME_MS + NODE_KEEPALIVE_TIMEOUT_MS) / 1000 + 3.0
        while inst.health is Health.SERVING:
            assert time.monotonic() - stopped < bound, "the hung node still SERVING"
            await asyncio.sleep(0.05)
        assert inst.health is Health.UNREACHABLE
        node.signal(signal.SIGCONT)
        deadline = time.monotonic() + 30
        while inst.health is not Health.SERVING:  # and back once it runs again
            assert time.monotonic() < deadline, inst.health
            await asyncio.sleep(0.05)
    finally:
        await mesh.drain(0, 0)
