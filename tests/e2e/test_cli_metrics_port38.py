"""`--metrics-port off` and the demo beside NETHICAL_METRICS_PORT, on real processes.

Before: with NETHICAL_METRICS_PORT set, no command could turn metrics off (`off` was
"not a port number"), and the demo's children all inherited the one port, so all but
one failed to listen on it and the demo failed."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import psutil
import pytest
from meshutil import free_port

from nethical_grpc.cli.processes import mesh_command, spawn

pytestmark = pytest.mark.e2e


def listening_ports(pid: int) -> set[int]:
    return {
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


def nothing_listens_on(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize(
    ("flag", "env_value"),
    [(["--metrics-port", "off"], "port"), ([], "off"), (["--metrics-port", "OFF"], "off")],
    ids=["flag-over-env-port", "env-off", "flag-and-env-off"],
)
def test_metrics_off_whatever_the_environment_says(
    tmp_path: Path, flag: list[str], env_value: str
) -> None:
    metrics = free_port()
    env = {"NETHICAL_METRICS_PORT": str(metrics) if env_value == "port" else env_value}
    args = ["region", "--region-id", "r1", "--port", "0", "--no-evaluate", *flag]
    child = spawn("r1", args, tmp_path, env=env)
    try:
        port = child.port(120)
        assert child.proc.poll() is None, child.tail()
        assert listening_ports(child.pid) == {port}, child.tail()
        assert nothing_listens_on(metrics)
        assert "Prometheus metrics" not in child.log_path.read_text()
    finally:
        assert child.stop() == 0, child.tail()


def test_port_zero_still_picks_a_free_port_over_the_environment(tmp_path: Path) -> None:
    fixed = free_port()
    args = ["region", "--region-id", "r1", "--port", "0", "--no-evaluate", "--metrics-port", "0"]
    child = spawn("r1", args, tmp_path, env={"NETHICAL_METRICS_PORT": str(fixed)})
    try:
        port = child.port(120)
        said = re.search(r"Prometheus metrics on port (\d+)", child.log_path.read_text())
        assert said is not None, child.tail()
        picked = int(said.group(1))
        assert picked not in (0, fixed)
        assert listening_ports(child.pid) == {port, picked}
    finally:
        child.stop()


@pytest.mark.parametrize(
    ("how", "words"),
    [
        (["--metrics-port", "nope"], "argument --metrics-port: not a port number (0 to 65535) or"),
        (["--metrics-port", "65536"], "argument --metrics-port: port must be in 0..65535"),
        (["env:of"], "argument --metrics-port: not a port number (0 to 65535) or 'off': 'of'"),
    ],
)
def test_a_bad_metrics_port_names_the_option(how: list[str], words: str) -> None:
    env = dict(os.environ)
    if how[0].startswith("env:"):
        env["NETHICAL_METRICS_PORT"] = how[0].removeprefix("env:")
        how = []
    out = subprocess.run(
        mesh_command("region", "--region-id", "r1", "--port", "0", *how),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert words in out.stderr, out.stderr[-2000:]
    assert "PORT|off" in out.stderr  # the usage says what it takes


def test_the_demo_runs_with_a_metrics_port_in_the_environment() -> None:
    metrics = free_port()
    out = subprocess.run(
        mesh_command(
            "demo", "--regions", "2", "--duration", "2", "--rate", "3000", "--refresh", "1"
        ),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NETHICAL_METRICS_PORT": str(metrics)},
    )
    workdir = re.search(r"logs in (\S+)\)", out.stdout + out.stderr)
    try:
        assert out.returncode == 0, out.stderr[-2000:]
        assert "final (complete; every batch acknowledged)" in out.stdout
        assert "regions covered: 2/2" in out.stdout
        assert workdir is not None
        logs = list(Path(workdir.group(1)).glob("*.log"))
        assert len(logs) == 3
        for log in logs:  # no child served metrics, on that port or any
            assert "Prometheus metrics" not in log.read_text(), log
    finally:
        if workdir is not None:
            shutil.rmtree(workdir.group(1), ignore_errors=True)
    assert nothing_listens_on(metrics)


def test_the_demo_help_says_what_becomes_of_metrics() -> None:
    out = subprocess.run(mesh_command("demo", "--help"), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "NETHICAL_METRICS_PORT" in text
    assert "serve no Prometheus metrics" in text
