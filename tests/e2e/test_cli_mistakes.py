"""A user's mistakes on the command line get one clear line and an exit status, never a
Python traceback: real `nethical-mesh` processes, as an operator runs them."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from nethical_grpc.cli.processes import Child, mesh_command, spawn
from nethical_grpc.privacy import PrivacyConfig, min_count_for_delta

pytestmark = pytest.mark.e2e


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        mesh_command(*args),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def assert_clear_failure(out: subprocess.CompletedProcess[str], *expected: str) -> None:
    """Exit status 2, no traceback, and the expected words on stderr."""
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    for text in expected:
        assert text in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize("role", ["region", "coordinator"])
def test_a_port_in_use(role: str, taken_port: int) -> None:
    extra = (
        ["--region-id", "r1", "--no-evaluate"]
        if role == "region"
        else ["--region", "r1=127.0.0.1:1"]
    )
    out = run(role, *extra, "--port", str(taken_port))
    assert_clear_failure(out, f"cannot listen on 127.0.0.1:{taken_port}")


@pytest.mark.parametrize("store", ["cache", "timeseries", "audit"])
def test_an_empty_store_url_in_the_environment_names_its_store(store: str) -> None:
    variable = f"NETHICAL_{store.upper()}_URL"
    out = run("region", "--region-id", "r1", "--port", "0", "--no-evaluate", env={variable: ""})
    assert_clear_failure(out, "bad configuration", f"--{store}-url (env {variable}): store URL")


def test_a_wal_dir_that_is_a_file(tmp_path: Path) -> None:
    taken = tmp_path / "wal"
    taken.write_text("not a directory")
    out = run(
        "region", "--region-id", "r1", "--port", "0", "--no-evaluate", "--wal-dir", str(taken)
    )
    assert_clear_failure(out, "bad configuration", f"--wal-dir {taken} is not a directory")


@pytest.mark.parametrize("port", ["70000", "-5", "http"])
def test_a_port_out_of_range(port: str) -> None:
    out = run("region", "--region-id", "r1", "--port", port)
    assert_clear_failure(out, "--port")


# the smallest min count that keeps the presence delta at epsilon 0.1 within the cap
NEEDED = min_count_for_delta(PrivacyConfig(0.1, 1.0, 100.0, min_count=50))


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--dp-value-bound", "100"], "--dp-value-bound without --dp-epsilon"),
        (["--dp-min-count", "100", "--dp-nonnegative"], "without --dp-epsilon"),
        (
            ["--dp-epsilon", "1", "--dp-value-bound", "100", "--dp-window-budget", "0"],
            "--dp-window-budget must be",
        ),
        # named by the flags given (the configuration's field names are no flags)
        (
            ["--dp-epsilon", "1e308", "--dp-value-bound", "100"],
            "--dp-window-budget (by default 10 × --dp-epsilon) must be",
        ),
        (["--dp-epsilon", "1", "--dp-value-bound", "1e200"], "--dp-value-bound must be"),
        (["--dp-epsilon", "0.1", "--dp-value-bound", "100"], f"use --dp-min-count {NEEDED} or"),
        (["--dp-epsilon", "1", "--dp-value-bound", "100", "--dp-min-count", "0"], "probability 1"),
        (["--dp-epsilon", "1e-19", "--dp-value-bound", "100"], "too large to represent"),
    ],
)
def test_privacy_flags_that_would_not_protect(flags: list[str], words: str) -> None:
    """Each of these used to start: with privacy silently off, a budget of 10x epsilon for
    0, a presence delta near 0.15 or 1, or samplers that overflowed."""
    out = run("region", "--region-id", "r1", "--port", "0", "--no-evaluate", *flags)
    assert_clear_failure(out, "bad configuration", words)


def test_a_bad_otlp_endpoint() -> None:
    out = run(
        "region", "--region-id", "r1", "--port", "0", "--no-evaluate",
        "--otlp-endpoint", "http://otel:S3cr3t@collector:notaport",
    )  # fmt: skip
    assert_clear_failure(out, "bad OTLP endpoint")
    assert "S3cr3t" not in out.stderr + out.stdout


@pytest.mark.parametrize("flag", ["--max-concurrent-rpcs", "--max-message-bytes"])
@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_a_limit_that_is_no_positive_number(flag: str, value: str) -> None:
    out = run("region", "--region-id", "r1", "--port", "0", f"{flag}={value}")
    assert_clear_failure(out, flag)


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--histogram-scale", "99", "scale"),
        ("--histogram-scale", "-20", "scale"),
        ("--max-buckets", "0", "max_buckets"),
        ("--max-series", "0", "max series"),
    ],
)
def test_sketch_settings_are_checked_at_start(flag: str, value: str, words: str) -> None:
    """Before, such a node started and then answered every Ingest with INTERNAL."""
    out = run("region", "--region-id", "r1", "--port", "0", "--no-evaluate", flag, value)
    assert_clear_failure(out, "bad configuration", words)


@pytest.mark.parametrize("store", ["timeseries", "audit"])
@pytest.mark.parametrize("problem", ["missing directory", "not a database", "a directory"])
def test_sqlite_stores_that_cannot_open(tmp_path: Path, store: str, problem: str) -> None:
    path = tmp_path / "no-such-dir" / "db.sqlite"
    if problem == "not a database":
        path = tmp_path / "db.sqlite"
        path.write_bytes(b"\x13\x37" * 4096)
    elif problem == "a directory":
        path = tmp_path
    out = run(
        "region", "--region-id", "r1", "--port", "0", "--no-evaluate",
        f"--{store}-url", f"sqlite:///{path}",
    )  # fmt: skip
    assert_clear_failure(out, "cannot start the region node", str(path))


def test_a_metrics_port_in_use(taken_port: int) -> None:
    out = run(
        "region", "--region-id", "r1", "--port", "0", "--no-evaluate",
        "--metrics-port", str(taken_port),
    )  # fmt: skip
    assert_clear_failure(out, "cannot serve metrics")


def test_a_bad_metrics_port_in_the_environment() -> None:
    out = run("region", "--region-id", "r1", "--port", "0", env={"NETHICAL_METRICS_PORT": "abc"})
    assert_clear_failure(out, "--metrics-port", "not a port number")
    # other commands do not read it
    assert run("--help", env={"NETHICAL_METRICS_PORT": "abc"}).returncode == 0


def test_a_bad_tls_switch_in_the_environment() -> None:
    out = run("region", "--region-id", "r1", env={"NETHICAL_TLS_REQUIRE_CLIENT_CERT": "maybe"})
    assert_clear_failure(out, "NETHICAL_TLS_REQUIRE_CLIENT_CERT")


def test_metrics_listen_on_the_servers_own_address(tmp_path: Path) -> None:
    """A node bound to loopback keeps its (unauthenticated) metrics on loopback. An empty
    OTEL_EXPORTER_OTLP_ENDPOINT (a manifest's placeholder) is unset, as OpenTelemetry
    reads it, not an endpoint refused."""
    child = spawn(
        "m",
        ["region", "--region-id", "r1", "--port", "0", "--metrics-port", "0"],
        tmp_path,
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": ""},
    )
    try:
        child.port(120)
        said = re.search(r"Prometheus metrics on port (\d+)", child.log_path.read_text())
        assert said is not None
        port = int(said.group(1))
        listening = [
            c.laddr.ip
            for c in psutil.Process(child.pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        ]
        assert listening == ["127.0.0.1"]
    finally:
        child.stop()


@pytest.mark.parametrize("command", ["region", "query", "health"])
def test_an_unknown_log_level(command: str) -> None:
    extra = {"region": ["--region-id", "r1"], "query": [], "health": ["127.0.0.1:1"]}[command]
    out = run(command, *extra, "--log-level", "LOUD")
    assert_clear_failure(out, "unknown log level 'LOUD'")


def test_client_credentials_that_cannot_be_used(tmp_path: Path) -> None:
    missing = run("query", "--target", "127.0.0.1:1", "--token-file", str(tmp_path / "nope"))
    assert_clear_failure(missing, "error:", "nope")
    short = tmp_path / "short.token"
    short.write_text("abcde")
    assert_clear_failure(run("regions", "--token-file", str(short)), "error:", "16 to 4096")
    no_ca = run("health", "127.0.0.1:1", "--tls-ca", str(tmp_path / "ca.crt"))
    assert_clear_failure(no_ca, "error:", "ca.crt")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Child, int]]:
    child = spawn("r1", ["region", "--region-id", "r1", "--port", "0", "--no-reflection"], tmp_path)
    try:
        yield child, child.port(120)
    finally:
        child.stop()


def test_health_of_an_unknown_service_and_the_start_up_line(node: tuple[Child, int]) -> None:
    child, port = node
    out = run("health", f"127.0.0.1:{port}", "--service", "no.such.Service")
    assert out.returncode == 1
    assert json.loads(out.stdout)["status"] == "SERVICE_UNKNOWN"  # reached, service unknown
    unreachable = run("health", "127.0.0.1:1", "--timeout", "2")
    assert json.loads(unreachable.stdout)["status"] == "UNREACHABLE"
    # --target, as every other client command takes it
    flag = run("health", "--target", f"127.0.0.1:{port}")
    assert flag.returncode == 0 and json.loads(flag.stdout)["status"] == "SERVING"
    assert_clear_failure(run("health"), "a target is needed")
    assert_clear_failure(
        run("health", f"127.0.0.1:{port}", "--target", "127.0.0.1:1"), "two targets"
    )
    log = child.log_path.read_text()
    assert "(health on)" in log and "reflection on" not in log


def test_a_privacy_configuration_that_starts_is_announced(tmp_path: Path) -> None:
    node = spawn(
        "dp-node",
        ["region", "--region-id", "r1", "--port", "0", "--no-evaluate",
         "--dp-epsilon", "1", "--dp-value-bound", "100", "--dp-nonnegative"],
        tmp_path,
    )  # fmt: skip
    try:
        node.port()
        said = node.log_path.read_text()
    finally:
        node.stop()
    assert "differential privacy on: epsilon 1 per release, 10 per window" in said
    assert "values in [0, 100]" in said and "under a noisy count of 50" in said


def test_a_coordinator_that_keeps_calls_in_their_region_says_so(tmp_path: Path) -> None:
    said = []
    for extra in ([], ["--local-region", "r1"]):
        coordinator = spawn(
            f"coordinator{len(said)}",
            ["coordinator", "--port", "0", "--region", "r1=127.0.0.1:1", "--stay-in-region",
             *extra],
            tmp_path,
        )  # fmt: skip
        try:
            coordinator.port()
            said.append(coordinator.log_path.read_text())
        finally:
            coordinator.stop()
    assert "every Evaluate stays in its region (each call must name its region_id" in said[0]
    assert "every Evaluate stays in its region (its region_id, else r1)" in said[1]


def test_a_command_sent_to_the_other_kind_of_server_says_which_it_reached(
    node: tuple[Child, int], tmp_path: Path
) -> None:
    _, port = node
    coordinator = spawn(
        "wrong-coordinator",
        ["coordinator", "--port", "0", "--region", f"r1=127.0.0.1:{port}"],
        tmp_path,
    )
    try:
        cport = coordinator.port()
        at_node, at_coordinator = f"127.0.0.1:{port}", f"127.0.0.1:{cport}"
        for args, reached, advice in [
            (["query", "--target", at_node], f"{at_node} is a region node", "add --node"),
            (["evaluate", "x", "--target", at_node], f"{at_node} is a region node", "add --node"),
            (
                ["info", "--target", at_coordinator],
                f"{at_coordinator} is a coordinator",
                "a region node",
            ),
            (
                ["query", "--node", "--target", at_coordinator],
                f"{at_coordinator} is a coordinator",
                "leave out --node",
            ),
        ]:
            out = run(*args)
            assert out.returncode == 1, out.stderr
            assert "error: UNIMPLEMENTED" in out.stderr, out.stderr
            assert f"hint: {reached}" in out.stderr and advice in out.stderr, out.stderr
            assert "Traceback" not in out.stderr
    finally:
        coordinator.stop()


def test_the_version_is_the_one_a_node_reports(node: tuple[Child, int]) -> None:
    _, port = node
    out = run("--version")
    assert out.returncode == 0, out.stderr
    m = re.fullmatch(
        r"nethical-mesh (\S+) \(Python 3\.\d+\.\d+, grpcio [\d.]+, protobuf [\d.]+\)\n", out.stdout
    )
    assert m is not None, out.stdout
    info = json.loads(run("info", "--target", f"127.0.0.1:{port}", "--json").stdout)
    assert info["version"] == m.group(1)


def run_input(data: bytes, *args: str) -> subprocess.CompletedProcess[str]:
    """``nethical-mesh ARGS`` with ``data`` on stdin (bytes, as a pipe brings them)."""
    out = subprocess.run(mesh_command(*args), input=data, capture_output=True, timeout=60)
    return subprocess.CompletedProcess(
        out.args, out.returncode, out.stdout.decode(errors="replace"), out.stderr.decode()
    )


@pytest.mark.parametrize("role", ["region", "coordinator"])
def test_a_port_file_that_cannot_be_written(role: str, tmp_path: Path) -> None:
    """Before, the server started, then the port file's write was a traceback."""
    extra = (
        ["--region-id", "r1", "--no-evaluate"]
        if role == "region"
        else ["--region", "r1=127.0.0.1:1"]
    )
    port_file = tmp_path / "no-such-dir" / "port"
    out = run(role, *extra, "--port", "0", "--port-file", str(port_file))
    assert_clear_failure(out, f"cannot write --port-file {port_file}: No such file")
    assert "serving on" not in out.stderr  # refused before it served
    assert_clear_failure(
        run(role, *extra, "--port", "0", "--port-file", str(tmp_path)), "is a directory"
    )


def test_a_score_row_of_only_commas() -> None:
    """Before, a ZeroDivisionError traceback."""
    out = run_input(b"# rows\n,\n", "score", "--target", "127.0.0.1:1")
    assert_clear_failure(out, "-, line 2: a row with no values")


NOT_UTF8 = b"caf\xe9 DROP TABLE x\n"  # Latin-1


@pytest.mark.parametrize(
    ("data", "args", "words"),
    [
        (NOT_UTF8, ["evaluate", "-", "--node"], "stdin, line 1: not valid UTF-8"),
        (b"ok\n" + NOT_UTF8, ["evaluate", "--actions", "-"], "stdin, line 2: not valid UTF-8"),
        (b"1 2\n3 \xe9\n", ["ingest", "lat"], "stdin, line 2: not valid UTF-8"),
        (b"1 2\n\xff\n", ["score"], "stdin, line 2: not valid UTF-8"),
        (b"1\n", ["ingest", "lat", "--label", "k=caf\udce9"], "argument --label: not valid UTF-8"),
        (b"", ["audit", "caf\udce9"], "argument QUERY: not valid UTF-8: 'caf\\xe9'"),
        (b"", ["query", "caf\udce9"], "argument METRIC: not valid UTF-8"),
        (b"", ["metrics", "--agent-id", "\udcff"], "argument --agent-id: not valid UTF-8"),
    ],
)
def test_input_that_is_not_utf8(data: bytes, args: list[str], words: str) -> None:
    """Bytes that are not UTF-8, from stdin or the command line (where Python keeps them
    as surrogate escapes): before, a UnicodeEncodeError traceback (or, from --label, a
    bare CancelledError) once protobuf met them."""
    out = run_input(data, *args, "--target", "127.0.0.1:1")
    assert_clear_failure(out, words)


def test_a_demo_whose_region_does_not_start() -> None:
    """Before, the child's RuntimeError was a traceback."""
    out = run("demo", "--regions", "1", "--duration", "2", env={"NETHICAL_METRICS_PORT": "99999"})
    assert out.returncode == 1, out.stderr[-2000:]
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith("demo: us-east-1 exited with 2: "), lines
    assert "--metrics-port: port must be in 0..65535" in lines[0]
    assert "(logs in " in lines[0]


@pytest.mark.parametrize(
    ("data", "args", "words"),
    [
        (b"", ["query", "--since", "800000d"], "argument --since: not a time a request"),
        (b"", ["audit", "--until", "9999-12-31T23:59:59-05:00"], "0001-01-01 to 9999-12-31"),
        (b"", ["aggregate", "m", "--bucket", "9" * 30 + "d"], "argument --bucket: duration too"),
        (b"", ["query", "--timeout", "nan"], "argument --timeout: must be over 0 s"),
        (b"", ["health", "127.0.0.1:99999"], "argument target: port must be 1 to 65535"),
        (b'{"action_text": "x"}\n', ["evaluate", "--actions", "-", "--request-id", "r"], "each"),
    ],
)
def test_client_flags_out_of_range(data: bytes, args: list[str], words: str) -> None:
    """Before: a ValueError or OverflowError traceback (times, durations), a call made
    with a NaN deadline or a port gRPC wrapped around, --request-id left out unsaid."""
    target = [] if args[0] == "health" else ["--target", "127.0.0.1:1"]
    out = run_input(data, *args, *target)
    assert_clear_failure(out, words)
