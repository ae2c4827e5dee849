"""The deployment's own command lines start real servers that its health checks accept.

The region node and coordinator are started with docker-compose.yml's commands (only the
bind address and port swapped for 127.0.0.1:0, stores in memory); then compose's
healthcheck commands and the image's HEALTHCHECK script (through sh, with the target
compose gives the coordinator) run against them, as Docker would. Marked e2e: it starts
processes and takes seconds.
The Kubernetes probes ask for the same service names (test_deploy_k8s checks that).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STARTUP_BOUND_S = 120.0  # a bound on waiting, not an assertion about speed


def _compose_service(name: str) -> dict[str, Any]:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    service: dict[str, Any] = services[name]
    return service


def _dockerfile_healthcheck_script() -> str:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("HEALTHCHECK "))
    argv = json.loads(line.split(" CMD ", 1)[1])
    assert argv[:2] == ["sh", "-c"]
    script: str = argv[2]
    return script


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        NETHICAL_CACHE_URL="memory://",
        NETHICAL_TIMESERIES_URL="memory://",
        NETHICAL_AUDIT_URL="memory://",
        NETHICAL_LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


class Server:
    """A `nethical-mesh` server process started from a compose command."""

    def __init__(self, command: list[str], port_file: Path) -> None:
        self.port_file = port_file
        argv = [
            str(BIN / "nethical-mesh"),
            *command,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(port_file),
        ]
        self.proc = subprocess.Popen(
            argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

    def port(self) -> int:
        deadline = time.monotonic() + STARTUP_BOUND_S
        while not self.port_file.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise AssertionError("server never wrote its port")
            time.sleep(0.05)
        return int(self.port_file.read_text())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STARTUP_BOUND_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[dict[str, Server]]:
    started = {
        name: Server(_compose_service(name)["command"], tmp_path / f"{name}.port")
        for name in ("region-us-east-1", "coordinator")
    }
    try:
        yield started
    finally:
        for server in started.values():
            if server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait()


def _with_port(argv: list[str], port: int) -> list[str]:
    return [f"127.0.0.1:{port}" if a.startswith("127.0.0.1:") else a for a in argv]


def test_compose_commands_serve_and_pass_their_healthchecks(servers: dict[str, Server]) -> None:
    ports = {name: server.port() for name, server in servers.items()}
    checks: list[tuple[str, int, subprocess.Popen[str]]] = []
    for name, port in ports.items():
        test = _compose_service(name)["healthcheck"]["test"]
        assert test[0] == "CMD"
        argv = _with_port(test[1:], port)
        checks.append((f"{name} compose", 0, subprocess.Popen(argv, env=_env(), **_PIPES)))
    # The image's HEALTHCHECK through sh, pointed at the coordinator as compose does.
    image_check = ["sh", "-c", _dockerfile_healthcheck_script()]
    target = _compose_service("coordinator")["environment"]["NETHICAL_HEALTH_TARGET"]
    env = _env(NETHICAL_HEALTH_TARGET=_with_port([target], ports["coordinator"])[0])
    checks.append(("coordinator image", 0, subprocess.Popen(image_check, env=env, **_PIPES)))
    # The coordinator is not a region node: the region's healthcheck must fail against it.
    region_check = _with_port(
        _compose_service("region-us-east-1")["healthcheck"]["test"][1:], ports["coordinator"]
    )
    checks.append(
        ("region check on coordinator", 1, subprocess.Popen(region_check, env=_env(), **_PIPES))
    )
    for label, want_rc, proc in checks:
        out, err = proc.communicate(timeout=STARTUP_BOUND_S)
        assert proc.returncode == want_rc, f"{label}: {out} {err}"
        if want_rc == 0:
            assert json.loads(out) == {"status": "SERVING"}, label
        else:
            assert json.loads(out)["code"] == "NOT_FOUND", label
    for server in servers.values():
        server.proc.send_signal(signal.SIGTERM)
    for name, server in servers.items():
        assert server.stop() == 0, f"{name} did not drain and exit cleanly on SIGTERM"


_PIPES: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
