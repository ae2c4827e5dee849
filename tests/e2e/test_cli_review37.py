"""The command line as an operator runs it (review 37): real ``nethical-mesh``
processes for the demo's flags and ``health --json`` against a real region node."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import psutil
import pytest

from nethical_grpc.cli.processes import mesh_command, spawn

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def node_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    child = spawn(
        "review37-node",
        ["region", "--region-id", "r1", "--port", "0", "--no-evaluate"],
        tmp_path_factory.mktemp("review37"),
    )
    try:
        yield f"127.0.0.1:{child.port()}"
    finally:
        child.stop()


def test_a_negative_demo_seed_is_a_usage_error() -> None:
    """Before, the demo started its mesh, showed empty tables (every ingest stream had
    failed on numpy's refusal of the seed) and ended in a CancelledError traceback, exit
    1. Now one line, exit 2, before any process starts."""
    demo = subprocess.Popen(
        mesh_command("demo", "--regions", "1", "--rate", "10", "--duration", "2", "--seed", "-1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = demo.communicate(timeout=60)
        children = []
    finally:
        if demo.poll() is None:
            children = psutil.Process(demo.pid).children(recursive=True)
            demo.kill()
            demo.wait()
            psutil.wait_procs(children, timeout=15)
    assert demo.returncode == 2, err[-2000:]
    assert err == "demo: --seed must be 0 or more\n", err[-2000:]
    assert "mesh up" not in out
    assert not children


def test_a_refresh_longer_than_the_duration_ends_at_the_duration() -> None:
    """``demo --duration 2 --refresh 600``: before, the live loop waited the whole
    --refresh before it looked at the clock, so the demo ran ten minutes, not two
    seconds. Now the wait ends when --duration is up, and the final table follows."""
    demo = subprocess.Popen(
        mesh_command(
            "demo", "--regions", "1", "--rate", "30", "--duration", "2", "--refresh", "600"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert demo.stdout is not None
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "mesh up" not in line:  # the start (JIT compiles) is not the --duration
            line = demo.stdout.readline()
            assert line and time.monotonic() < deadline, line
        children = psutil.Process(demo.pid).children()
        up = time.monotonic()
        out, err = demo.communicate(timeout=60)
        took = time.monotonic() - up
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        psutil.wait_procs([c for c in children if c.is_running()], timeout=15)
    assert demo.returncode == 0, err[-2000:]
    assert "final (complete; every batch acknowledged)" in out, out[-2000:]
    assert "2.0s of 2s" in out, out[-2000:]  # one live table, at the end of --duration
    # the query and the region's drain at the end take a few seconds, not 600
    assert took < 30, took
    assert all(not c.is_running() for c in children)


def test_health_takes_json_as_every_other_client_command_does(node_target: str) -> None:
    """``health --json`` (a probe written as the other commands are) was "unrecognized
    arguments", exit 2: a liveness probe that always fails. health always prints JSON;
    --json is now accepted, and its answer is the same line."""
    plain = subprocess.run(
        mesh_command("health", node_target), capture_output=True, text=True, timeout=60
    )
    given = subprocess.run(
        mesh_command("health", "--json", "--target", node_target),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert given.returncode == 0, given.stderr[-2000:]
    assert json.loads(given.stdout) == json.loads(plain.stdout) == {"status": "SERVING"}
    # a server that is not there: still one JSON line, exit 1
    gone = subprocess.run(
        mesh_command("health", "--json", "127.0.0.1:1", "--timeout", "2"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gone.returncode == 1, gone.stderr[-2000:]
    assert json.loads(gone.stdout)["status"] == "UNREACHABLE"


def test_the_demo_help_names_its_real_region_bound_and_the_servers_their_ports() -> None:
    from nethical_grpc.cli.demo import MAX_REGIONS
    from nethical_grpc.cli.main import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "demo" in a.choices)
    assert subparsers.choices is not None
    demo = subparsers.choices["demo"].format_help()
    assert f"at most {MAX_REGIONS} (3)" in " ".join(demo.split())
    for command, port in (("region", 50051), ("coordinator", 50050)):
        text = " ".join(subparsers.choices[command].format_help().split())
        assert f"0 picks a free one ({port})" in text
