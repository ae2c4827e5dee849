"""Servers started from the CLI (real ``nethical-mesh region`` / ``coordinator``
processes): their port file, their log lines, their start-up failures and their stop."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from nethical_grpc.cli.processes import mesh_command, spawn

pytestmark = pytest.mark.e2e

NODE = ["region", "--region-id", "r1", "--no-evaluate", "--drain-announce", "0"]

#: ``2026-11-29T10:11:12.345Z INFO name: message``
LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: "
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        mesh_command(*args), capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )


@pytest.mark.parametrize("role", ["region", "coordinator"])
def test_a_metrics_port_in_use_is_named(role: str, taken_port: int) -> None:
    """The error names the flag and the address it could not listen on, not only the
    system's "Address already in use"."""
    extra = NODE[1:] if role == "region" else ["--region", "r1=127.0.0.1:1"]
    out = run(role, *extra, "--port", "0", "--metrics-port", str(taken_port))
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "serving on" not in out.stderr
    assert f"--metrics-port: cannot listen on 127.0.0.1:{taken_port}" in out.stderr, out.stderr


def test_a_stale_port_file_goes_at_start(tmp_path: Path, taken_port: int) -> None:
    """A port file a killed server left behind is not read as this server's port: it
    goes before the start, so a server that then fails to listen leaves none."""
    port_file = tmp_path / "node.port"
    port_file.write_text("12345")
    out = run(*NODE, "--port", str(taken_port), "--port-file", str(port_file))
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{taken_port}" in out.stderr
    assert not port_file.exists(), port_file.read_text()
    assert not (tmp_path / "node.port.tmp").exists()


def test_a_port_file_removed_while_serving_is_no_warning_at_stop(tmp_path: Path) -> None:
    node = spawn("gone", [*NODE, "--port", "0"], tmp_path)
    try:
        node.port(120)
        node.port_file.unlink()
        assert node.stop() == 0, node.tail()
        log = node.log_path.read_text()
        assert "cannot remove --port-file" not in log, log[-2000:]
        assert "stopped" in log
    finally:
        node.stop()


def test_port_file_and_log_lines_of_a_start_and_a_stop(tmp_path: Path) -> None:
    """The port file holds the port the log says the node serves on, nothing is left
    beside it, every log line has the documented form, and SIGINT exits 0."""
    node = spawn("lines", [*NODE, "--port", "0"], tmp_path)
    try:
        port = node.port(120)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["lines.log", "lines.port"]
        assert f"region node r1 serving on 127.0.0.1:{port} " in node.log_path.read_text()
        node.signal(signal.SIGINT)
        assert node.proc.wait(30) == 0, node.tail()
        lines = node.log_path.read_text().splitlines()
        assert lines and all(LOG_LINE.match(line) for line in lines), lines
        assert not node.port_file.exists()
    finally:
        node.stop()


def redis_is_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not redis_is_up(), reason="no Redis on 127.0.0.1:6379")
def test_a_store_that_refuses_what_its_url_asks_is_one_line() -> None:
    """A Redis that answers but refuses the URL's database (no server has a million):
    exit 2 and one line naming the error, no traceback."""
    out = run(*NODE, "--port", "0", "--cache-url", "redis://127.0.0.1:6379/1000000")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "serving on" not in out.stderr, out.stderr[-3000:]
    assert "cannot start the region node: " in out.stderr, out.stderr[-3000:]
    assert "DB index is out of range" in out.stderr, out.stderr[-3000:]
    assert all(LOG_LINE.match(line) for line in out.stderr.splitlines()), out.stderr


def test_an_empty_ingest_from_stdin_names_stdin() -> None:
    """Nothing on stdin: the error says stdin, as every other mistake in it does, not
    '-'; nothing is sent (no server needed: port 1 listens nowhere)."""
    out = subprocess.run(
        mesh_command("ingest", "m", "--target", "127.0.0.1:1"),
        input="  \n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == "error: no values in stdin", out.stderr
