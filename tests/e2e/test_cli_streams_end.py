"""How real ``nethical-mesh`` processes end when what they talk to goes away: a reader
of their output that stops reading (``| head``), a coordinator that dies under the demo;
and ``evaluate --actions`` naming each action by its line in the file."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from nethical_grpc.cli.processes import mesh_command, spawn

pytestmark = pytest.mark.e2e

#: A shell's exit status for a program that SIGPIPE ended.
BROKEN_PIPE = 141


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A region node that has taken some observations."""
    child = spawn(
        "ends-node", ["region", "--region-id", "r1", "--port", "0"], tmp_path_factory.mktemp("e")
    )
    try:
        port = child.port()
        target = f"127.0.0.1:{port}"
        fed = subprocess.run(
            mesh_command("ingest", "lat", "--label", "route=/x", "--target", target),
            input="\n".join(str(i) for i in range(1, 2001)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert fed.returncode == 0, fed.stderr
        yield port
    finally:
        child.stop()


def _with_reader_gone(*args: str) -> tuple[int, str]:
    """``nethical-mesh ARGS`` writing to a pipe nobody reads any more: its exit status
    and stderr."""
    proc = subprocess.Popen(mesh_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `head` does once it has its lines
    err = proc.stderr.read().decode(errors="replace")
    return proc.wait(timeout=60), err


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["info"],  # a short answer: it fails at the last flush
        ["query", "--node", "--json"],
        ["evaluate", "DROP TABLE users", "--node"],
    ],
)
def test_a_reader_that_stops_reading_ends_the_command_quietly(port: int, args: list[str]) -> None:
    """Before, a BrokenPipeError traceback (and "Exception ignored" at exit)."""
    target = [] if args == ["--version"] else ["--target", f"127.0.0.1:{port}"]
    status, err = _with_reader_gone(*args, *target)
    assert status == BROKEN_PIPE, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception" not in err, err


def test_a_long_answer_whose_reader_stops_reading(port: int, tmp_path: Path) -> None:
    """An answer far larger than stdout's buffer: the pipe breaks in the middle of it."""
    path = tmp_path / "many.jsonl"
    path.write_text(
        "".join(f'{{"action_text": "list the files, take {i}"}}\n' for i in range(3000))
    )
    target = f"127.0.0.1:{port}"
    status, err = _with_reader_gone(
        "evaluate", "--actions", str(path), "--node", "--json", "--target", target
    )
    assert status == BROKEN_PIPE, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_actions_are_named_by_their_line_in_the_file(port: int, tmp_path: Path) -> None:
    """Before, the table counted the non-blank lines (#2 for line 3) and stderr named the
    action within its stream message (actions[0])."""
    path = tmp_path / "actions.jsonl"
    lines = [{"action_text": "hello"}, None, {"agent_id": "a", "action_text": ""}]
    path.write_text("\n".join("" if line is None else json.dumps(line) for line in lines) + "\n")
    out = subprocess.run(
        mesh_command(
            "evaluate", "--actions", str(path), "--batch", "1", "--node",
            "--target", f"127.0.0.1:{port}",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[2:-1]]
    assert [row[:3] for row in rows] == [["#1", "cli", "ALLOW"], ["#3", "a", "ERROR"]], out.stdout
    assert f"error: {path}, line 3: " in out.stderr, out.stderr
    assert "  action_text: must not be empty" in out.stderr, out.stderr
    assert "actions[" not in out.stderr + out.stdout


def test_a_demo_whose_coordinator_dies() -> None:
    """Before, a grpc traceback and "Task exception was never retrieved" for the ingest
    streams. Now a line, exit 1, and the regions stopped."""
    demo = subprocess.Popen(
        mesh_command("demo", "--regions", "1", "--duration", "90", "--rate", "1000"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert demo.stdout is not None
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "mesh up" not in line:
            line = demo.stdout.readline()
            assert line and time.monotonic() < deadline, line
        children = psutil.Process(demo.pid).children()
        coordinator = [c for c in children if "coordinator" in c.cmdline()]
        assert len(coordinator) == 1, [c.cmdline() for c in children]
        assert demo.stdout.readline()  # the try line; then a table or two
        time.sleep(1.5)
        coordinator[0].send_signal(signal.SIGKILL)
        _, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 1, err[-2000:]
    assert re.fullmatch(
        r"demo: the coordinator did not answer: UNAVAILABLE: .* \(logs in \S+\)\n", err
    ), err[-2000:]
    gone = psutil.wait_procs([c for c in children if c.is_running()], timeout=15)[1]
    assert gone == [], gone
