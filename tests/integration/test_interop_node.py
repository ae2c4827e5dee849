"""A Node.js client (@grpc/grpc-js + @grpc/proto-loader) against a real region node and
coordinator, built from the .proto files alone (tests/interop/client.mjs).

The session fixture installs the client's locked npm dependencies (``npm ci``) when
``tests/interop/node_modules`` is missing or older than the lock file. Without ``node`` or
``npm``, or when the install fails, the tests skip; when ``CI`` is set they fail instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from meshutil import Mesh, add_coordinator, add_region, free_port

REPO = Path(__file__).resolve().parents[2]
INTEROP = REPO / "tests" / "interop"
CLIENT = INTEROP / "client.mjs"
PROTOS = REPO / "protos"
COUNT = 1000
REGION = "us-east-1"


def _unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{why} (required when CI is set)")
    pytest.skip(why)


def _needs_install() -> bool:
    installed = INTEROP / "node_modules" / ".package-lock.json"  # npm's record of the tree
    lock = INTEROP / "package-lock.json"
    return not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime


@pytest.fixture(scope="session")
def node_client() -> list[str]:
    """The command that runs the client, with its npm dependencies installed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are needed for the Node.js interop client")
    assert node is not None and npm is not None
    if _needs_install():
        done = subprocess.run(
            [npm, "ci", "--prefix", str(INTEROP), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            _unavailable(f"npm ci in {INTEROP} failed:\n{done.stderr[-2000:]}")
    return [node, str(CLIENT)]


async def run_client(command: list[str], *args: str) -> tuple[int, str, str]:
    """Runs the client beside the in-process servers (same event loop); rc, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        *command,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_node_client_ingests_evaluates_and_queries(
    mesh: Mesh, node_client: list[str]
) -> None:
    [(region, _)] = await add_region(mesh, REGION)
    await add_coordinator(mesh)
    assert mesh.coordinator is not None
    rc, out, err = await run_client(
        node_client,
        "--region",
        region.address,
        "--coordinator",
        mesh.coordinator.address,
        "--protos",
        str(PROTOS),
        "--count",
        str(COUNT),
    )
    assert rc == 0, err
    doc: dict[str, Any] = json.loads(out)

    assert doc["health"] == {
        "region": {"": "SERVING", "nethical_grpc.v1.RegionNodeService": "SERVING"},
        "coordinator": {"": "SERVING", "nethical_grpc.v1.CoordinatorService": "SERVING"},
    }
    ingest = doc["ingest"]
    assert ingest["metric"] == "interop_latency_ms"
    assert (ingest["accepted_batches"], ingest["accepted_values"]) == (2, COUNT)

    benign, harmful = doc["evaluate"]["benign"], doc["evaluate"]["harmful"]
    assert benign["decision"] == "DECISION_ALLOW"
    assert benign["violations"] == []
    assert (benign["region_id"], benign["request_id"]) == (REGION, "node-benign")
    assert harmful["decision"] in ("DECISION_BLOCK", "DECISION_TERMINATE")
    assert "destructive_database" in {v["type"] for v in harmful["violations"]}
    assert harmful["risk_score"] > benign["risk_score"]

    [listed] = doc["regions"]
    assert (listed["region_id"], listed["healthy"]) == (REGION, True)

    result = doc["global"]
    assert result["labels"] == {"client": "node"}
    stats = result["statistics"]
    values = np.arange(1, COUNT + 1, dtype=np.float64)
    assert stats["count"] == COUNT
    assert stats["sum"] == 500_500.0
    assert stats["mean"] == 500.5
    assert (stats["min"], stats["max"]) == (1.0, float(COUNT))
    assert stats["stddev"] == pytest.approx(values.std(), rel=1e-12)
    assert 0 < stats["relative_error"] <= 0.0055
    assert [q["quantile"] for q in stats["quantiles"]] == [0.5, 0.99]
    for q in stats["quantiles"]:
        exact = float(np.quantile(values, q["quantile"], method="lower"))
        assert abs(q["value"] - exact) <= stats["relative_error"] * exact * (1 + 1e-9)
    [by_region] = result["regions"]
    assert (by_region["region_id"], by_region["statistics"]["count"]) == (REGION, COUNT)

    coverage = result["coverage"]
    assert coverage["regions_answered"] == [REGION]
    assert coverage["missing"] == []
    assert coverage["complete"] is True


async def test_node_client_fails_on_a_region_that_is_not_serving(
    mesh: Mesh, node_client: list[str]
) -> None:
    [(region, _)] = await add_region(mesh, REGION)
    await add_coordinator(mesh)
    assert mesh.coordinator is not None
    await region.set_serving(False)
    rc, out, err = await run_client(
        node_client, "--region", region.address, "--coordinator", mesh.coordinator.address
    )
    assert rc == 1
    assert out == ""
    assert 'health of "" is NOT_SERVING' in err


async def test_node_client_gives_up_on_an_unreachable_server_by_its_deadline(
    node_client: list[str],
) -> None:
    port = free_port()
    rc, out, err = await run_client(
        node_client,
        "--region",
        f"127.0.0.1:{port}",
        "--coordinator",
        f"127.0.0.1:{port}",
        "--deadline-ms",
        "1500",
    )
    assert rc == 1
    assert out == ""
    assert "Check failed:" in err
    assert "UNAVAILABLE" in err or "DEADLINE_EXCEEDED" in err
