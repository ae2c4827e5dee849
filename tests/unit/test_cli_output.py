"""What the client commands print and read: a weighted mean per group, the rows of
``evaluate --actions`` named by their lines, input that is not UTF-8, and the demo's
traffic per tick."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from nethical_grpc.cli.client_commands import _print_answer, read_input
from nethical_grpc.cli.demo import METRICS, TICKS_PER_S, per_tick
from nethical_grpc.cli.evaluate_command import results_text
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
