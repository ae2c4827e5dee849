"""Review findings in ``nethical-mesh evaluate`` and ``demo``: a stream that fails part
way through still says which actions were evaluated, and demo options that make no
sense are refused before anything starts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from nethical_grpc.cli.demo import run_demo
from nethical_grpc.cli.evaluate_command import run_evaluate
from nethical_grpc.cli.main import build_parser
from nethical_grpc.cli.processes import mesh_command
from nethical_grpc.v1 import governance_pb2, region_node_pb2, region_node_pb2_grpc


def _action_line(agent: str, text: str) -> str:
    return json.dumps({"agentId": agent, "actionText": text})


def _answer(
    message: region_node_pb2.EvaluateStreamRequest, decision: int
) -> region_node_pb2.EvaluateStreamResponse:
    """An answer of ``decision`` for every action of ``message``."""
    return region_node_pb2.EvaluateStreamResponse(
        results=[
            governance_pb2.ActionResult(
                evaluation=governance_pb2.ActionEvaluation(decision=decision, region_id="r1")  # type: ignore[arg-type]
            )
            for _ in message.actions
        ]
    )


class _BreaksAfterOneBatch(region_node_pb2_grpc.RegionNodeServiceServicer):
    """A node whose stream answers its first message and then breaks (a node drained or
    killed part way through a file of actions)."""

    async def EvaluateStream(  # noqa: N802
        self,
        request_iterator: AsyncIterator[region_node_pb2.EvaluateStreamRequest],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[region_node_pb2.EvaluateStreamResponse]:
        async for message in request_iterator:
            yield _answer(message, governance_pb2.DECISION_BLOCK)
            await asyncio.sleep(0.2)  # the answer reaches the client first
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the node is going away")


@pytest.fixture
async def breaking_node() -> AsyncIterator[str]:
    server = grpc.aio.server()
    region_node_pb2_grpc.add_RegionNodeServiceServicer_to_server(_BreaksAfterOneBatch(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


@pytest.mark.parametrize("json_out", [False, True])
async def test_a_stream_that_fails_part_way_keeps_what_was_evaluated(
    breaking_node: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], json_out: bool
) -> None:
    """``evaluate --actions``: when the stream failed after some batches were answered,
    every answer was thrown away and only the error said: the user could not tell that
    line 1 had been evaluated (and audited). Now its result is printed and the lines
    without a result are named."""
    path = tmp_path / "actions.jsonl"
    lines = ["DROP TABLE customers; --", "list the files", "hello"]
    path.write_text("\n".join(_action_line("a", t) for t in lines) + "\n")
    argv = ["evaluate", "--target", breaking_node, "--node", "--actions", str(path)]
    argv += ["--batch", "1", *(["--json"] if json_out else [])]
    status = await run_evaluate(build_parser().parse_args(argv))
    out, err = capsys.readouterr()
    assert status == 1
    assert "UNAVAILABLE: the node is going away" in err
    assert f"{path}, lines 2-3: no result" in err
    if json_out:
        answers = [json.loads(line) for line in out.splitlines()]
        assert len(answers) == 1 and answers[0]["evaluation"]["decision"] == "DECISION_BLOCK"
    else:
        assert "#1" in out and "BLOCK" in out and "#2" not in out
        assert out.rstrip().endswith("1 action: BLOCK 1")


@pytest.mark.parametrize(
    "flag",
    [
        ("--duration", "nan"),
        ("--duration", "inf"),
        ("--refresh", "0"),
        ("--refresh", "-1"),
        ("--refresh", "nan"),
        ("--refresh", "inf"),
    ],
)
async def test_demo_refuses_durations_that_are_no_number_of_seconds(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flag: tuple[str, str],
) -> None:
    """``demo --duration nan`` ran no live table and ended at once; ``--refresh 0``,
    negative or nan asked the coordinator in a busy loop. Each is now a usage error, said
    before any process starts (no work directory is made)."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    status = await run_demo(build_parser().parse_args(["demo", *flag]))
    err = capsys.readouterr().err
    assert status == 2
    assert flag[0] in err
    assert not os.listdir(tmp_path)


def _demo_children(workdir: Path) -> list[int]:
    """The processes whose command line names ``workdir`` (the demo's children)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(workdir).encode() in cmdline:
            pids.append(int(proc.name))
    return pids


def test_ctrl_c_while_the_mesh_starts_ends_the_demo_at_once(tmp_path: Path) -> None:
    """Ctrl-C while a region node was still starting (seconds, while its JIT kernels
    compile) was only noted: the demo waited for every node and the coordinator to start
    (up to two minutes each) before it ended. Now it stops its children and ends at
    once, with status 130."""
    slow = tmp_path / "slow"
    slow.mkdir()
    # each child (a mesh server: it has --port-file) starts as slowly as a first start
    (slow / "sitecustomize.py").write_text(
        "import sys, time\nif '--port-file' in sys.argv:\n    time.sleep(60)\n"
    )
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(slow), "TMPDIR": str(tmp)}
    demo = subprocess.Popen(
        mesh_command("demo", "--regions", "2", "--duration", "5"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    workdir: Path | None = None
    try:
        deadline = time.monotonic() + 30
        while not list(tmp.glob("nethical-demo-*/*.log")):
            assert time.monotonic() < deadline and demo.poll() is None
            time.sleep(0.1)
        [workdir] = list(tmp.glob("nethical-demo-*"))
        time.sleep(1.0)  # the demo waits for its first node
        demo.send_signal(signal.SIGINT)
        began = time.monotonic()
        _, err = demo.communicate(timeout=20)
        took = time.monotonic() - began
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        left = _demo_children(workdir) if workdir is not None else []
        for pid in left:  # a failed run's children, still in their slow start
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert left == []
    assert took < 12, took  # each child is given SIGTERM; none waits for its start
    assert demo.returncode == 130, err
    assert "interrupted while the mesh was starting" in err


class _AnswersTwice(region_node_pb2_grpc.RegionNodeServiceServicer):
    """A server whose stream answers every message twice (not a mesh server)."""

    async def EvaluateStream(  # noqa: N802
        self,
        request_iterator: AsyncIterator[region_node_pb2.EvaluateStreamRequest],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[region_node_pb2.EvaluateStreamResponse]:
        async for message in request_iterator:
            answer = _answer(message, governance_pb2.DECISION_ALLOW)
            yield answer
            yield answer


async def test_answers_that_match_no_message_are_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """More answers than messages ended the command with an IndexError traceback."""
    server = grpc.aio.server()
    region_node_pb2_grpc.add_RegionNodeServiceServicer_to_server(_AnswersTwice(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        path = tmp_path / "actions.jsonl"
        path.write_text(_action_line("a", "hello") + "\n")
        argv = ["evaluate", "--target", f"127.0.0.1:{port}", "--node", "--actions", str(path)]
        status = await run_evaluate(build_parser().parse_args(argv))
    finally:
        await server.stop(None)
    out, err = capsys.readouterr()
    assert status == 1
    assert "does not match the 1 messages sent" in err
    assert "Traceback" not in err
    assert "answer #2 does not match" in err
    assert out.splitlines()[-1].startswith("1 action")  # the one answer that fit, counted
