"""A server's life in the CLI: a stop that comes while it starts, the addresses it binds
and names, what it leaves behind when it stops. Real processes (``nethical-mesh``) where
an operator would see the difference, real in-process servers for the rest."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import socket
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from meshutil import free_port, port_is_free

from nethical_grpc import client
from nethical_grpc.cli.processes import Child, spawn
from nethical_grpc.server_runtime import start_server
from region_node.server import RegionServerConfig, start_region_server
from region_node.stores import StoreConfig
from region_node.wal import WriteAheadLog

#: batches in the write-ahead log of a node that must take a while to start: replaying
#: them takes seconds (about 3 on a 2-core machine)
SLOW_START_BATCHES = 40_000


def write_log(wal_dir: Path, batches: int = SLOW_START_BATCHES) -> None:
    """A write-ahead log of ``batches`` small batches, all within the retention."""
    wal = WriteAheadLog(wal_dir)
    rng = np.random.default_rng(3)
    now = time.time_ns()
    for i in range(batches):
        values = rng.lognormal(size=20)
        wal.append(client.encode_ingest_request(f"m{i % 50}", values, batch_id=f"b{i}"), now)
    wal.sync()
    wal.close()


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def wait_for_line(child: Child, text: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in child.log_path.read_text(errors="replace"):
        assert child.proc.poll() is None, child.tail()
        assert time.monotonic() < deadline, child.tail()
        time.sleep(0.005)


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_while_the_node_restores_stops_it_cleanly(tmp_path: Path, sig: int) -> None:
    """SIGTERM (or Ctrl-C) while the node replays its log: it stops what it started and
    exits 0, no traceback, as a stop while serving does; it never says it serves."""
    write_log(tmp_path / "wal")
    port = free_port()
    node = spawn(
        "slow",
        [
            "region", "--region-id", "slow", "--instance-id", "slow-0", "--no-evaluate",
            "--port", str(port), "--wal-dir", str(tmp_path / "wal"),
            "--timeseries-url", f"sqlite:///{tmp_path / 'ts.db'}",
        ],
        tmp_path,
    )  # fmt: skip
    try:
        wait_for_line(node, "batches to replay")
        node.signal(sig)
        assert node.proc.wait(60) == 0, node.tail()
        log = node.log_path.read_text()
        assert "Traceback" not in log, log[-3000:]
        assert "stopped while starting" in log, log[-3000:]
        assert "serving on" not in log and not node.port_file.exists()
        assert port_is_free(port)
    finally:
        node.stop()


async def test_a_start_cancelled_while_restoring_releases_the_port(tmp_path: Path) -> None:
    """The node's start cancelled once its server listens (the log's replay still to
    come): the server is stopped and its port released, not left listening."""
    write_log(tmp_path / "wal")
    port = free_port()
    config = RegionServerConfig(
        region_id="slow",
        instance_id="slow-0",
        port=port,
        model=None,
        wal_dir=tmp_path / "wal",
        stores=StoreConfig(timeseries_url=f"sqlite:///{tmp_path / 'ts.db'}"),
    )
    starting = asyncio.ensure_future(start_region_server(config))
    deadline = time.monotonic() + 60
    while port_is_free(port):
        assert not starting.done() and time.monotonic() < deadline
        await asyncio.sleep(0.001)
    assert not starting.done()  # listening, the restore not done
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert port_is_free(port)


@pytest.mark.e2e
def test_a_host_whose_port_is_taken_on_one_of_its_addresses_is_refused(tmp_path: Path) -> None:
    """``--host localhost`` while another program holds 127.0.0.1:PORT: a clear failure,
    not a node that answers on ::1 only."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["region", "--region-id", "r1", "--no-evaluate", "--host", "localhost"]
        node = spawn("taken", [*args, "--port", str(port)], tmp_path)
        try:
            deadline = time.monotonic() + 120
            while node.proc.poll() is None:
                assert not node.port_file.exists(), f"it serves:\n{node.tail()}"
                assert time.monotonic() < deadline, node.tail()
                time.sleep(0.02)
            log = node.log_path.read_text()
            assert node.proc.returncode == 2, log[-3000:]
            assert f"cannot listen on localhost:{port}" in log and "Traceback" not in log
        finally:
            node.stop()


async def test_localhost_is_bound_on_every_address_it_names() -> None:
    """Port 0 on ``localhost``: one port, on each of its addresses."""
    mesh = await start_server([], [], host="localhost", port=0, reflection_enabled=False)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            "localhost", mesh.port, type=socket.SOCK_STREAM
        )
        assert infos
        for family, _, _, _, address in infos:
            with socket.socket(family) as sock:
                sock.settimeout(5)
                sock.connect(address)
    finally:
        await mesh.drain(0.0, 0.0)


@pytest.mark.e2e
@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize("host", ["[::1]", "::1"])
def test_an_ipv6_host_serves_metrics_and_is_named_in_brackets(tmp_path: Path, host: str) -> None:
    node = spawn(
        "v6",
        ["region", "--region-id", "r1", "--no-evaluate", "--host", host, "--port", "0",
         "--metrics-port", "0"],
        tmp_path,
    )  # fmt: skip
    try:
        port = node.port(120)
        log = node.log_path.read_text()
        assert f"region node r1 serving on [::1]:{port} " in log, log[-3000:]
        assert f"RegionNodeService on [::1]:{port}:" in log, log[-3000:]
        said = re.search(r"Prometheus metrics on port (\d+)", log)
        assert said is not None, log[-3000:]
        listening = [
            c.laddr.ip
            for c in psutil.Process(node.pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == int(said.group(1))
        ]
        assert listening == ["::1"]
    finally:
        assert node.stop() == 0


@pytest.mark.e2e
def test_a_stopped_server_removes_its_port_file(tmp_path: Path) -> None:
    """The port file says where a server serves: gone once it stopped, so that nobody
    reads a stopped server's port from it."""
    node = spawn("pf", ["region", "--region-id", "r1", "--no-evaluate", "--port", "0"], tmp_path)
    try:
        node.port(120)
        assert node.stop() == 0, node.tail()
        assert not node.port_file.exists()
    finally:
        node.stop()


async def test_a_failing_stop_hook_does_not_skip_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mesh = await start_server([], [], port=0, reflection_enabled=False)
    ran: list[str] = []

    async def failing() -> None:
        ran.append("failing")
        raise RuntimeError("the store went away")

    async def last() -> None:
        ran.append("last")

    mesh.on_stop.extend([failing, last])
    with caplog.at_level(logging.ERROR, logger="nethical_grpc.server_runtime"):
        await mesh.drain(0.0, 0.0)
    assert ran == ["failing", "last"]
    assert "the store went away" in caplog.text


async def test_a_start_that_fails_lets_go_of_its_write_ahead_log(tmp_path: Path) -> None:
    """A node whose server cannot listen (its port taken) after it opened its log: the
    log's directory is free again at once, for a retried start (not held until the failed
    start's frames are collected)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = RegionServerConfig(
            region_id="taken",
            instance_id="taken-0",
            host="127.0.0.1",
            port=taken.getsockname()[1],
            model=None,
            wal_dir=tmp_path / "wal",
            stores=StoreConfig(timeseries_url=f"sqlite:///{tmp_path / 'ts.db'}"),
        )
        with pytest.raises(OSError, match="cannot listen") as failed:
            await start_region_server(config)
        assert failed.value.__traceback__ is not None  # its frames are still alive here
        WriteAheadLog(tmp_path / "wal").close()
