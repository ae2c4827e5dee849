"""What an operator sees from the client commands (real ``nethical-mesh`` processes):
input that cannot be read, a second Ctrl-C while a node does not answer, JSON that
prints the same each time, a server's error text that cannot take over the terminal,
a file of actions with lines that are no JSON objects, and TLS that client and server
do not agree on."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from nethical_grpc.cli.processes import Child, mesh_command, spawn
from nethical_grpc.security.devcerts import DevCA, openssl_available

pytestmark = pytest.mark.e2e


def run(
    *args: str, stdin: bytes | None = b"", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``nethical-mesh ARGS``; ``stdin`` None: with stdin closed (``<&-``)."""
    command = mesh_command(*args)
    if stdin is None:
        command = ["sh", "-c", 'exec "$@" <&-', "sh", *command]
    out = subprocess.run(command, input=stdin, capture_output=True, timeout=timeout)
    return subprocess.CompletedProcess(
        out.args, out.returncode, out.stdout.decode(errors="replace"), out.stderr.decode()
    )


@pytest.mark.parametrize(
    "args",
    [
        ["score"],
        ["evaluate", "-"],
        ["evaluate", "--actions", "-"],
        ["ingest", "m"],
        # the input's reader thread died, and the command waited for input forever
        ["ingest", "m", "--stream"],
    ],
)
def test_a_closed_stdin_is_one_line_and_a_usage_error(args: list[str]) -> None:
    out = run(*args, "--target", "127.0.0.1:1", stdin=None, timeout=30)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr == "error: stdin is closed: there is no input to read\n"
    assert out.stdout == ""


def test_a_second_ctrl_c_stops_a_stream_whose_node_does_not_answer() -> None:
    """The first Ctrl-C sends what was read and stops; while a batch waits on a node that
    never answers, that took until the call failed (its deadline, here a minute). The
    second stops at once (130), saying what the node applied and what is unknown."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        proc = subprocess.Popen(
            mesh_command(
                "ingest", "m", "--stream", "--flush-after", "100ms",
                "--target", f"127.0.0.1:{port}", "--timeout", "60",
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdin is not None
        try:
            proc.stdin.write(b"1 2 3\n")
            proc.stdin.flush()
            silent.settimeout(60)
            conn, _ = silent.accept()  # the batch is on its way, and will get no answer
            with conn:
                time.sleep(0.5)
                proc.send_signal(signal.SIGINT)
                time.sleep(0.5)
                proc.send_signal(signal.SIGINT)
                started = time.monotonic()
                out, err = proc.communicate(timeout=30)
                took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = err.decode()
    assert proc.returncode == 130, (proc.returncode, text)
    assert took < 10, took
    assert "Traceback" not in text, text
    assert "Ctrl-C again stops at once" in text
    assert "stopped at once: applied 0 values in 0 batches" in text
    assert "a batch of 3 values got no answer: it may be applied" in text
    assert out == b""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Child, str]]:
    child = spawn(
        "r1",
        ["region", "--region-id", "r1", "--port", "0", "--no-evaluate"],
        tmp_path_factory.mktemp("node"),
    )
    try:
        yield child, f"127.0.0.1:{child.port()}"
    finally:
        child.stop()


def test_json_prints_a_maps_keys_in_order(node: tuple[Child, str], tmp_path: Path) -> None:
    """A map's entries came in an order that changed from run to run (a series' labels,
    a node's components): the same answer printed differently each time."""
    _, target = node
    names = list("hcafbged")
    values = tmp_path / "values.txt"
    values.write_text("1 2 3\n")
    labels = [f"--label={k}=v{k}" for k in names]
    applied = run("ingest", "labelled", str(values), *labels, "--target", target)
    assert applied.returncode == 0, applied.stderr
    group = [f"--group-by={k}" for k in names]
    out = run("query", "--node", "--metric", "labelled", *group, "--target", target, "--json")
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)  # one document
    (result,) = answer["results"]
    assert list(result["labels"]) == sorted(names)
    assert result["labels"] == {k: f"v{k}" for k in names}


async def _refuse(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    """Every call refused with INVALID_ARGUMENT, its message and a field violation
    carrying a line break and terminal escapes (a server that is no mesh server)."""
    violation = error_details_pb2.BadRequest.FieldViolation(
        field="agent\x1b[31m_id", description="too\nlong\x1b]0;owned\x07"
    )
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    status = status_pb2.Status(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
        message="refused\x1b[2J\nerror: forged line",
        details=[detail],
    )
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        status.message,
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
    )
    raise AssertionError("abort returns no answer")


async def _refusing_server(
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    handler = grpc.unary_unary_rpc_method_handler(_refuse)
    methods = {"GetNodeInfo": handler, "GetRiskProfile": handler}
    server = grpc.aio.server(
        handlers=[
            grpc.method_handlers_generic_handler("nethical_grpc.v1.RegionNodeService", methods)
        ]
    )
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, port


async def test_a_servers_error_text_is_shown_a_line_each_not_sent_to_the_terminal() -> None:
    server, port = await _refusing_server()
    try:
        out = await asyncio.to_thread(run, "profile", "a1", "--target", f"127.0.0.1:{port}")
    finally:
        await server.stop(None)
    assert out.returncode == 1, out.stderr
    assert "\x1b" not in out.stderr and "\x07" not in out.stderr, ascii(out.stderr)
    assert out.stderr.splitlines() == [
        "error: INVALID_ARGUMENT: refused\\x1b[2J\\nerror: forged line",
        "  agent\\x1b[31m_id: too\\nlong\\x1b]0;owned\\x07",
    ]
    assert out.stdout == ""


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("[1, 2]", "not a JSON object"),  # was "Failed to parse 1 field"
        ('"hello"', "not a JSON object"),  # was: no field named "h"
        ("null", "not a JSON object"),  # was a TypeError's text
        ('  {"actionText": "a", "riskScore": 1}', 'no field named "riskScore"'),
    ],
)
def test_a_line_of_actions_that_is_no_action_is_one_line_naming_it(
    tmp_path: Path, line: str, words: str
) -> None:
    actions = tmp_path / "actions.jsonl"
    actions.write_text('{"actionText": "fine"}\n' + line + "\n")
    out = run("evaluate", "--actions", str(actions), "--target", "127.0.0.1:1")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    (said,) = out.stderr.splitlines()  # the unknown field's list of fields was a 2nd line
    assert said.startswith(f"error: {actions}, line 2: "), said
    assert words in said, said


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[DevCA, Path]:
    if not openssl_available():
        if os.environ.get("CI"):
            pytest.fail("openssl is required under CI")
        pytest.skip("openssl not available")
    directory = tmp_path_factory.mktemp("pki")
    return DevCA.create(directory), directory


async def test_tls_that_client_and_server_do_not_agree_on_is_named(
    pki: tuple[DevCA, Path],
) -> None:
    """gRPC says only "Socket closed" (a TLS server given plaintext, or a client
    certificate it wants and did not get) or an OpenSSL code (a TLS hello to plaintext)."""
    ca, directory = pki
    leaf = ca.issue(directory, "server")
    mtls = grpc.ssl_server_credentials(
        [(leaf.key_file.read_bytes(), leaf.cert_file.read_bytes())],
        root_certificates=ca.cert_file.read_bytes(),
        require_client_auth=True,
    )
    tls_server, tls_port = await _refusing_server(mtls)
    plain_server, plain_port = await _refusing_server()
    target = f"localhost:{tls_port}"
    try:
        plaintext, no_client_cert, tls_to_plaintext = await asyncio.gather(
            asyncio.to_thread(run, "info", "--target", target, "--timeout", "5"),
            asyncio.to_thread(
                run, "info", "--target", target, "--tls-ca", str(ca.cert_file), "--timeout", "5"
            ),
            asyncio.to_thread(
                run, "info", "--target", f"127.0.0.1:{plain_port}", "--tls", "--timeout", "5"
            ),
        )
    finally:
        await tls_server.stop(None)
        await plain_server.stop(None)
    for out in (plaintext, no_client_cert, tls_to_plaintext):
        assert out.returncode == 1, out.stderr
        assert "error: UNAVAILABLE" in out.stderr and "Traceback" not in out.stderr
        # gRPC's own log lines (its INFO "Handshake failed") are not the command's
        assert "ssl_transport_security" not in out.stderr, out.stderr
    assert f"hint: {target} closed the connection at once: if it uses TLS, add --tls" in (
        plaintext.stderr
    ), plaintext.stderr
    assert "if it wants a client certificate, add --tls-cert and --tls-key" in (
        no_client_cert.stderr
    ), no_client_cert.stderr
    assert f"hint: 127.0.0.1:{plain_port} does not speak TLS: leave out --tls" in (
        tls_to_plaintext.stderr
    ), tls_to_plaintext.stderr
