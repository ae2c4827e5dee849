"""Deployment review: what the scheduler reserves for a region node, and how long the
image's own HEALTHCHECK lets a fresh container start.

The Kubernetes objects are rendered with ``kubectl kustomize``, as in test_deploy_k8s.py;
the Dockerfile and docker-compose.yml are read as text and YAML.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_sizes import COMPILE_S, restore_peak_bytes, start_s, steady_bytes

from nethical_grpc.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "deploy" / "k8s" / "overlays" / "three-regions"

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def rendered() -> list[Obj]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl not found: install kubectl (it bundles kustomize)")
        pytest.skip("kubectl not found")
    result = subprocess.run(
        [kubectl, "kustomize", str(OVERLAY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _quantity(text: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "": 1.0}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|)", str(text))
    assert m, f"unexpected quantity {text!r}"
    return float(m.group(1)) * units[m.group(2)]


def _duration_s(text: str) -> float:
    """Docker durations: ``240s``, ``1m30s``, ``10s``."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def test_quantity_and_duration_reading() -> None:
    assert _quantity("2560Mi") == 2560 * 2**20
    assert _quantity("500m") == 0.5
    assert _duration_s("1m30s") == 90.0
    with pytest.raises(AssertionError):
        _duration_s("30 seconds")


def test_region_memory_request_reserves_what_the_node_keeps(rendered: list[Obj]) -> None:
    """A node keeps its windows in memory all the time (about 1.8Gi at the StatefulSet's
    sizing, 2.0Gi while it restores them): with a 1Gi request the scheduler placed region
    pods on nodes without that memory, and under node memory pressure the kubelet evicts
    first the pods furthest above their request, each eviction a restore."""
    sets = [d for d in rendered if d["kind"] == "StatefulSet"]
    assert sets
    for sts in sets:
        (container,) = sts["spec"]["template"]["spec"]["containers"]
        args = build_parser().parse_args(container["args"])  # $(..) unexpanded: ids only
        assert args.command == "region"
        memory = container["resources"]
        request = _quantity(memory["requests"]["memory"])
        limit = _quantity(memory["limits"]["memory"])
        name = sts["metadata"]["name"]
        assert steady_bytes(args) <= request, (name, steady_bytes(args) / 2**30, request / 2**30)
        assert restore_peak_bytes(args) <= request, (name, restore_peak_bytes(args) / 2**30)
        assert request <= limit


def _image_healthcheck() -> dict[str, str]:
    """The Dockerfile's HEALTHCHECK options (``--start-period=240s`` → ``start-period``)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("HEALTHCHECK ")]
    options = line.partition(" CMD ")[0]
    return dict(re.findall(r"--([a-z-]+)=(\S+)", options))


def test_image_healthcheck_waits_for_a_fresh_container_to_start() -> None:
    """A new container's Numba cache (in its own /tmp) is empty: it compiles the kernels
    (up to two minutes) and a region node then restores its windows, NOT_SERVING until
    then. The image's HEALTHCHECK gave 60s + 3 x 10s: a node still compiling was marked
    unhealthy, and Swarm replaced it with another fresh container, which compiled again.
    It must wait as long as docker-compose.yml's region healthcheck does."""
    options = _image_healthcheck()
    allowed = _duration_s(options["start-period"]) + _duration_s(options["interval"]) * int(
        options["retries"]
    )
    assert allowed >= COMPILE_S, (allowed, COMPILE_S)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    regions = {
        name: service
        for name, service in compose["services"].items()
        if service.get("command", [None])[0] == "region"
    }
    assert regions
    for name, service in regions.items():
        args = build_parser().parse_args(service["command"])
        assert start_s(args, cores=1.0) <= allowed, (name, start_s(args, cores=1.0), allowed)
        start_period = _duration_s(service["healthcheck"]["start_period"])
        assert _duration_s(options["start-period"]) >= start_period, name
