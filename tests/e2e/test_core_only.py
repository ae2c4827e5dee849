"""The core runs without any optional extra: every missing part falls back and says so.

The processes run with a ``sitecustomize`` on ``PYTHONPATH`` that marks each extra's
packages as absent (``sys.modules[name] = None``: ``import`` raises ModuleNotFoundError and
``importlib.util.find_spec`` answers None, as for a package that is not installed), so
the test covers what a user with only the core dependencies gets, child processes too.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from nethical_grpc import client
from nethical_grpc.cli.processes import mesh_command, spawn
from nethical_grpc.v1 import governance_pb2, region_node_pb2, region_node_pb2_grpc

pytestmark = pytest.mark.e2e

#: The top-level packages of the extras jit, gpu, redis, postgres, elasticsearch, telemetry.
EXTRA_PACKAGES = (
    "numba",
    "llvmlite",
    "torch",
    "redis",
    "psycopg",
    "psycopg_pool",
    "elasticsearch",
    "opentelemetry",
    "prometheus_client",
)


@pytest.fixture
def core_only_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        f"for _name in {EXTRA_PACKAGES!r}:\n"
        "    sys.modules[_name] = None  # absent, as if never installed\n"
    )
    return {"PYTHONPATH": str(site)}


def test_the_marker_hides_every_extra(core_only_env: dict[str, str]) -> None:
    probe = (
        "import importlib, importlib.util\n"
        f"for n in {EXTRA_PACKAGES!r}:\n"
        "    assert importlib.util.find_spec(n) is None, n\n"
        "    try:\n"
        "        importlib.import_module(n)\n"
        "    except ModuleNotFoundError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit(n + ' imported')\n"
        "print('hidden')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **core_only_env},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hidden"


def test_demo_runs_on_the_core_alone(core_only_env: dict[str, str]) -> None:
    out = subprocess.run(
        mesh_command("demo", "--duration", "3", "--rate", "20000", "--refresh", "1"),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **core_only_env},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "final (complete; every batch acknowledged)" in out.stdout
    assert "regions covered: 3/3" in out.stdout
    workdir = re.search(r"logs in (\S+)\)", out.stdout)
    assert workdir is not None
    logs = sorted(Path(workdir.group(1)).glob("*.log"))
    assert len(logs) == 4  # three regions and the coordinator
    for log in logs:
        text = log.read_text()
        # each missing part is named once, at startup
        assert text.count("component gpu: unavailable (torch not installed)") == 1, log
        assert text.count("component jit: numpy (numba not installed)") == 1, log


async def _evaluate_once(port: int) -> governance_pb2.ActionEvaluation:
    async with client.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert await client.check_health(channel) == 1  # SERVING
        stub = region_node_pb2_grpc.RegionNodeServiceStub(channel)
        action = governance_pb2.AgentAction(
            agent_id="agent-1",
            action_text="DROP TABLE users; rm -rf / --no-preserve-root",
            action_type="query",
        )
        resp = await stub.Evaluate(region_node_pb2.EvaluateRequest(action=action), timeout=10)
        return resp.evaluation


def test_store_urls_without_their_clients_fall_back_and_say_why(
    core_only_env: dict[str, str], tmp_path: Path
) -> None:
    node = spawn(
        "r1",
        [
            "region",
            "--region-id",
            "r1",
            "--port",
            "0",
            "--cache-url",
            "redis://127.0.0.1:6379/0",
            "--timeseries-url",
            "postgresql://postgres@127.0.0.1:5432/test",
            "--audit-url",
            "http://127.0.0.1:9200",
        ],
        tmp_path,
        env=core_only_env,
    )
    try:
        port = node.port()
        evaluation = asyncio.run(_evaluate_once(port))
        assert evaluation.decision in (
            governance_pb2.DECISION_BLOCK,
            governance_pb2.DECISION_TERMINATE,
        )
        assert evaluation.violations
    except grpc.aio.AioRpcError as err:  # pragma: no cover - the failure's message
        pytest.fail(f"{err.code()}: {err.details()}\n{node.log_path.read_text()[-3000:]}")
    finally:
        node.stop()
    log = node.log_path.read_text()
    assert (
        "cache: redis: redis-py not installed (pip install 'nethical-mesh[redis]') → memory" in log
    )
    assert "timeseries: postgresql: psycopg not installed" in log
    assert re.search(r"audit: http: client not installed \(elasticsearch.*\) → memory", log)


@pytest.mark.parametrize("command", ["region", "coordinator"])
@pytest.mark.parametrize(
    "flag", [["--metrics-port", "0"], ["--otlp-endpoint", "http://127.0.0.1:4317"]]
)
def test_telemetry_flags_without_the_extra_say_what_to_install(
    core_only_env: dict[str, str], command: str, flag: list[str]
) -> None:
    """Asking for telemetry on the core alone is a one-line refusal naming the extra (exit
    2), not a traceback."""
    args = ["--region-id", "r1"] if command == "region" else ["--region", "r1=127.0.0.1:1"]
    done = subprocess.run(
        mesh_command(command, *args, "--port", "0", *flag),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **core_only_env},
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "pip install 'nethical-mesh[telemetry]'" in done.stderr
