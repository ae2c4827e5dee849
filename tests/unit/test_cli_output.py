"""What the client commands print and read: a weighted mean per group, the rows of
``evaluate --actions`` named by their lines, input that is not UTF-8, and the demo's
traffic per tick."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from meshutil import Mesh, add_coordinator, add_region

from nethical_grpc.cli.client_commands import _print_answer, read_input, regions_table
from nethical_grpc.cli.demo import METRICS, TICKS_PER_S, per_tick
from nethical_grpc.cli.evaluate_command import (
    results_text,
    run_evaluate,
    stream_batches,
    verdict_text,
)
from nethical_grpc.cli.main import build_parser, main
from nethical_grpc.grpc_options import DEFAULT_MAX_MESSAGE_BYTES
from nethical_grpc.v1 import coordinator_pb2, governance_pb2


def test_each_groups_weighted_mean_names_its_labels(capsys: pytest.CaptureFixture[str]) -> None:
    response = coordinator_pb2.GetGlobalMetricsResponse(
        results=[
            coordinator_pb2.MetricResult(metric="lat", labels={"route": "/x"}, weighted_mean=500.5),
            coordinator_pb2.MetricResult(
                metric="lat", labels={"route": "/y", "code": "200"}, weighted_mean=7
            ),
            coordinator_pb2.MetricResult(metric="lat", weighted_mean=1.5),
            coordinator_pb2.MetricResult(metric="other"),  # no weights: no line
        ]
    )
    _print_answer(argparse.Namespace(json=False, watch=None), response)
    means = [line for line in capsys.readouterr().out.splitlines() if "weighted" in line]
    assert means == [
        "weighted mean of lat{route=/x}: 500.5",
        "weighted mean of lat{code=200,route=/y}: 7",
        "weighted mean of lat: 1.5",
    ]


def test_actions_are_named_by_their_line_in_the_file() -> None:
    """Line 1, a blank line, line 3 refused, line 4 with a request id."""
    numbered = [
        (1, governance_pb2.AgentAction(agent_id="a", action_text="hello")),
        (3, governance_pb2.AgentAction(agent_id="b")),
        (4, governance_pb2.AgentAction(agent_id="c", action_text="x", request_id="req-9")),
    ]
    refused = governance_pb2.ActionError(message="bad action")
    refused.field_errors.add(field="actions[0].action_text", description="must not be empty")
    allowed = governance_pb2.ActionEvaluation(decision=governance_pb2.DECISION_ALLOW)
    results = [
        governance_pb2.ActionResult(evaluation=allowed),
        governance_pb2.ActionResult(error=refused),
        governance_pb2.ActionResult(evaluation=allowed),
    ]
    rows = [line.split() for line in results_text(numbered, results).splitlines()[2:-1]]
    assert [row[:3] for row in rows] == [["#1", "a", "ALLOW"], ["#3", "b", "ERROR"],
                                         ["req-9", "c", "ALLOW"]]  # fmt: skip
    assert "action_text: must not be empty" in " ".join(rows[1])
    assert "actions[0]" not in results_text(numbered, results)


def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "actions.txt"
    path.write_bytes(b"fine\nalso fine\ncaf\xe9\n")
    with pytest.raises(ValueError, match=r"actions.txt, line 3: not valid UTF-8"):
        read_input(str(path))
    path.write_bytes("café\n".encode())
    assert read_input(str(path)) == "café\n"


@pytest.mark.parametrize("rate", [1, 6, 59, 60, 61, 1_000, 200_000, 123_457])
def test_the_demo_sends_the_rate_it_was_asked(rate: int) -> None:
    """Every second holds ``rate`` observations per region, none floored away (the rate
    was at least 60 a second, and 1,000 gave 960)."""
    for second in range(3):
        ticks = range(second * TICKS_PER_S, (second + 1) * TICKS_PER_S)
        assert sum(per_tick(rate, t) for t in ticks) * len(METRICS) == pytest.approx(
            rate, abs=len(METRICS)
        )
    three_seconds = sum(per_tick(rate, t) for t in range(3 * TICKS_PER_S)) * len(METRICS)
    assert three_seconds == 3 * rate


def test_a_tick_sends_whole_values_the_fraction_carried() -> None:
    counts = [per_tick(1_000, t) for t in range(6)]
    assert counts == [16, 17, 17, 16, 17, 17]  # 16.67 a metric a tick
    assert all(per_tick(6, t) in (0, 1) for t in range(100))


def test_values_this_client_does_not_know_are_named_by_their_number() -> None:
    """A newer server's decision, severity or balancing strategy: before, a ValueError
    traceback from the enum's Name()."""
    unknown = governance_pb2.ActionEvaluation(
        decision=9, violations=[governance_pb2.Violation(severity=42, rule_id="r", message="m")]
    )
    verdict = verdict_text(unknown, "h:1", 1).splitlines()
    assert verdict[0] == "decision    UNKNOWN(9)"
    assert verdict[-1].split()[:2] == ["UNKNOWN(42)", "r"]
    numbered = [(1, governance_pb2.AgentAction(agent_id="a")), (2, governance_pb2.AgentAction())]
    allowed = governance_pb2.ActionEvaluation(decision=governance_pb2.DECISION_ALLOW)
    results = [
        governance_pb2.ActionResult(evaluation=unknown),
        governance_pb2.ActionResult(evaluation=allowed),
    ]
    text = results_text(numbered, results).splitlines()
    assert text[2].split()[2] == "UNKNOWN(9)"
    assert text[-1] == "2 actions: ALLOW 1, UNKNOWN(9) 1"
    regions = coordinator_pb2.ListRegionsResponse(strategy=42)
    assert regions_table(regions).splitlines()[-1] == "gateway: unknown(42)"


def _actions_file(tmp_path: Path, texts: list[str]) -> Path:
    path = tmp_path / "actions.jsonl"
    path.write_text("".join(json.dumps({"action_text": t}) + "\n" for t in texts))
    return path


def test_a_request_id_with_a_file_of_actions_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, --request-id was left out without a word (and the call was made)."""
    path = _actions_file(tmp_path, ["hello"])
    argv = ["evaluate", "--actions", str(path), "--request-id", "r1", "--target", "127.0.0.1:1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--request-id" in err and "request_id" in err, err


def test_stream_messages_are_cut_by_size_as_well_as_count() -> None:
    """Each message at most ``--batch`` actions and ``budget`` bytes, the actions in
    their order; an action alone over the message limit is refused by its line."""
    numbered = [
        (i + 1, governance_pb2.AgentAction(agent_id="a", action_text="x" * n))
        for i, n in enumerate([10, 3_000, 10, 2_500, 3_000, 9_000, 10])
    ]

    def request_of(
        actions: list[governance_pb2.AgentAction],
    ) -> coordinator_pb2.CoordinatorServiceEvaluateStreamRequest:
        return coordinator_pb2.CoordinatorServiceEvaluateStreamRequest(
            actions=actions, region_id="eu-west-1"
        )

    batches = stream_batches(numbered, 3, request_of, "f", budget=5_000)
    assert [len(b) for b in batches] == [3, 1, 1, 1, 1]  # cut by count, then by size
    assert [a for b in batches for a in b] == [a for _, a in numbered]
    sizes = [request_of(b).ByteSize() for b in batches]
    assert max(sizes) > 5_000 and sorted(sizes)[-2] <= 5_000  # the 9,000 alone
    huge = [*numbered, (12, governance_pb2.AgentAction(action_text="x" * 9 * 2**20))]
    with pytest.raises(ValueError, match=r"^f, line 12: .*9,437,\d+ bytes.*8,388,608"):
        stream_batches(huge, 3, request_of, "f")


@pytest.mark.parametrize("gateway", [False, True])
async def test_a_file_of_large_actions_is_sent_in_messages_that_fit(
    mesh: Mesh, tmp_path: Path, capsys: pytest.CaptureFixture[str], gateway: bool
) -> None:
    """150 actions of 60 kB, more than the 8 MiB a message may hold when sent in one
    (the default --batch, 512), to a region node or through a coordinator's gateway:
    before, the stream failed with RESOURCE_EXHAUSTED and no action was evaluated."""
    [(server, _)] = await add_region(mesh, "r1")
    if gateway:
        await add_coordinator(mesh)
        assert mesh.coordinator is not None
        where = ["--region", "r1", "--target", mesh.coordinator.address]
    else:
        where = ["--node", "--target", server.address]
    texts = [
        f"summarise report {i}: " + "the quarterly figures look fine. " * 1_800 for i in range(150)
    ]
    assert sum(map(len, texts)) > DEFAULT_MAX_MESSAGE_BYTES
    path = _actions_file(tmp_path, texts)
    args = build_parser().parse_args(["evaluate", "--actions", str(path), *where])
    assert await run_evaluate(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("150 actions: ")
    assert [row.split()[0] for row in out[2:-1]] == [f"#{i}" for i in range(1, 151)]
