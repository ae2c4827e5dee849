"""Review of the region node's RPC boundary (round 37), as a client in another language
calls it: a bad field is INVALID_ARGUMENT whose BadRequest names it exactly and says what
is wrong with it, in the words every RPC uses."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from meshutil import Mesh, add_region

from nethical_grpc.errors import ErrorDetails, details_from_error
from nethical_grpc.v1 import governance_pb2, region_node_pb2, region_node_pb2_grpc


async def _stub(mesh: Mesh) -> region_node_pb2_grpc.RegionNodeServiceStub:
    [(server, _)] = await add_region(mesh, "r1")
    return region_node_pb2_grpc.RegionNodeServiceStub(mesh.channel(server.address))


async def _refusal(call: object) -> ErrorDetails:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    details = details_from_error(err.value)
    assert details.code is grpc.StatusCode.INVALID_ARGUMENT, details
    return details


@pytest.mark.parametrize("key", ["", "k" * 300], ids=["empty", "too-long"])
async def test_a_bad_context_key_is_named_as_a_map_entry(mesh: Mesh, key: str) -> None:
    """``action.context["k"]``, as labels' keys are named, not ``action.context``: in a
    batch the path holds the action's index too."""
    stub = await _stub(mesh)
    action = governance_pb2.AgentAction(
        agent_id="a", action_text="ls", context={"tool": "shell", key: "v"}
    )
    shown = '""' if not key else '"' + "k" * 64 + '…"'
    details = await _refusal(stub.Evaluate(region_node_pb2.EvaluateRequest(action=action)))
    assert [v.field for v in details.field_violations] == [f"action.context[{shown}]"]

    good = governance_pb2.AgentAction(agent_id="a", action_text="ls", request_id="ok")
    answers = [
        a
        async for a in stub.EvaluateStream(
            iter([region_node_pb2.EvaluateStreamRequest(actions=[good, good, good, action])]),
            timeout=20,
        )
    ]
    [answer] = answers
    assert [r.WhichOneof("result") for r in answer.results] == ["evaluation"] * 3 + ["error"]
    error = answer.results[3].error
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [f.field for f in error.field_errors] == [f"actions[3].context[{shown}]"]


@pytest.mark.parametrize("value", [1e200, -1e101], ids=["1e200", "-1e101"])
async def test_a_finite_score_feature_beyond_float32_is_not_called_not_finite(
    mesh: Mesh, value: float
) -> None:
    """A finite feature the model cannot take is refused for being beyond the float32
    range (as 1e39 is), not as "must be finite"."""
    stub = await _stub(mesh)
    info = await stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=10)
    width = info.model.feature_width
    features = [0.0] * width + [0.0] * (width - 1) + [value]
    details = await _refusal(
        stub.Score(region_node_pb2.ScoreRequest(features=features, columns=width), timeout=10)
    )
    [violation] = details.field_violations
    assert violation.field == f"features[{2 * width - 1}]"
    assert "finite" not in violation.description
    assert "beyond the float32 range" in violation.description


async def test_a_non_finite_score_feature_says_so(mesh: Mesh) -> None:
    stub = await _stub(mesh)
    info = await stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=10)
    width = info.model.feature_width
    details = await _refusal(
        stub.Score(
            region_node_pb2.ScoreRequest(
                features=[0.0] * (width - 2) + [float("-inf"), float("nan")], columns=width
            ),
            timeout=10,
        )
    )
    [violation] = details.field_violations
    assert (violation.field, violation.description) == (
        f"features[{width - 2}]",
        "-inf is not a finite number",
    )


async def test_store_refusals_do_not_repeat_the_field_name(mesh: Mesh) -> None:
    """A store's refusal of a field says what is wrong with it, after the path (not
    ``page_token: page_token is not valid``), as the node's own checks do."""
    stub = await _stub(mesh)
    token = await _refusal(
        stub.SearchAudit(region_node_pb2.SearchAuditRequest(page_token="garbage"), timeout=10)
    )
    [violation] = token.field_violations
    assert violation.field == "page_token"
    assert violation.description.startswith("is not valid"), violation
    assert token.message.startswith("page_token: is not valid"), token.message

    query = await _refusal(
        stub.SearchAudit(region_node_pb2.SearchAuditRequest(query="word " * 300), timeout=10)
    )
    [violation] = query.field_violations
    assert violation.field == "query"
    assert violation.description.startswith("is 1500 characters"), violation


async def test_an_aggregation_without_a_bucket_is_told_it_is_required(mesh: Mesh) -> None:
    """An unset bucket (a proto3 default) is "required", as an unset start_time or
    end_time is, not a zero-length bucket the caller never sent."""
    stub = await _stub(mesh)
    details = await _refusal(
        stub.AggregateMetrics(
            region_node_pb2.AggregateMetricsRequest(
                metric="risk_score", aggregation=region_node_pb2.AGGREGATION_AVG
            ),
            timeout=10,
        )
    )
    assert {(v.field, v.description) for v in details.field_violations} == {
        ("bucket", "required"),
        ("start_time", "required"),
        ("end_time", "required"),
    }
    # a bucket that is set but zero still says so
    zero = await _refusal(
        stub.AggregateMetrics(
            region_node_pb2.AggregateMetricsRequest(
                metric="risk_score",
                aggregation=region_node_pb2.AGGREGATION_AVG,
                bucket=duration_pb2.Duration(),
                start_time=timestamp_pb2.Timestamp(seconds=0),
                end_time=timestamp_pb2.Timestamp(seconds=60),
            ),
            timeout=10,
        )
    )
    assert [(v.field, v.description) for v in zero.field_violations] == [
        ("bucket", "must be longer than zero")
    ]


async def test_of_several_bad_context_keys_the_first_in_order_is_named(mesh: Mesh) -> None:
    """A map's order on the wire is not the sender's: the key named is the same however
    the entries arrive (the least, as labels' are checked in sorted order)."""
    stub = await _stub(mesh)
    for context in ({"z" * 300: "v", "": "v"}, {"": "v", "z" * 300: "v"}):
        action = governance_pb2.AgentAction(agent_id="a", action_text="ls", context=context)
        details = await _refusal(stub.Evaluate(region_node_pb2.EvaluateRequest(action=action)))
        assert [v.field for v in details.field_violations] == ['action.context[""]']
