"""Behaviours the .proto comments promise (served through reflection, read by callers in
any language), each checked on real servers on loopback: what ListRegions counts, what
an Ingest error's metadata says, and the limits and refusals of the region node's RPCs."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from meshutil import Mesh, add_coordinator, add_region

from nethical_grpc import client
from nethical_grpc.errors import details_from_error
from nethical_grpc.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    governance_pb2,
    region_node_pb2,
    region_node_pb2_grpc,
)


def _node(mesh: Mesh, region: str) -> region_node_pb2_grpc.RegionNodeServiceStub:
    server, _ = mesh.regions[region][0]
    return region_node_pb2_grpc.RegionNodeServiceStub(mesh.channel(server.address))


async def _refusal(call: object) -> grpc.aio.AioRpcError:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError("the call was accepted")


async def test_list_regions_counts_summary_tries_of_region_scope_instances_only(
    mesh: Mesh,
) -> None:
    """InstanceInfo: the federation's summary queries count in a region-scope instance's
    figures (one per try), not in those of an instance of its own data."""
    await add_region(mesh, "eu", region_scope=True, evaluate=False)
    await add_region(mesh, "us", evaluate=False)
    await add_coordinator(mesh)
    stub = coordinator_pb2_grpc.CoordinatorServiceStub(mesh.coordinator_channel())
    for _ in range(3):
        answer = await stub.GetGlobalMetrics(coordinator_pb2.GetGlobalMetricsRequest(), timeout=10)
        assert answer.coverage.complete, answer.coverage
    regions = await stub.ListRegions(coordinator_pb2.ListRegionsRequest(), timeout=10)
    by_region = {r.region_id: list(r.instances) for r in regions.regions}
    [eu] = by_region["eu"]
    [us] = by_region["us"]
    assert eu.region_scope and not us.region_scope
    assert (eu.requests, eu.failures, eu.in_flight) == (3, 0, 0)
    assert eu.HasField("ewma_latency")
    assert (us.requests, us.in_flight) == (0, 0)
    assert not us.HasField("ewma_latency")


async def test_ingest_error_counts_duplicates_in_message_index_not_applied_batches(
    mesh: Mesh,
) -> None:
    """IngestRequest's error metadata: message_index is the rejected message's index
    (duplicates skipped before it included), applied_batches only what was applied."""
    [(server, _)] = await add_region(mesh, "r1", evaluate=False)
    good = client.encode_ingest_request("m", np.array([1.0]), batch_id="b-1")
    bad = client.encode_ingest_request("m", np.array([np.inf]))
    err = await _refusal(client.ingest(mesh.channel(server.address), [good, good, bad]))
    details = details_from_error(err)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.metadata["message_index"] == "2"
    assert details.metadata["applied_batches"] == "1"
    assert details.metadata["applied_values"] == "1"


def _aggregate(**fields: object) -> region_node_pb2.AggregateMetricsRequest:
    base: dict[str, object] = {
        "metric": "m",
        "aggregation": region_node_pb2.AGGREGATION_AVG,
        "bucket": duration_pb2.Duration(seconds=60),
        "start_time": timestamp_pb2.Timestamp(seconds=1_000),
        "end_time": timestamp_pb2.Timestamp(seconds=2_000),
    }
    base.update(fields)
    return region_node_pb2.AggregateMetricsRequest(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"bucket": duration_pb2.Duration(nanos=999)}, "bucket"),  # under 1 µs
        ({"bucket": duration_pb2.Duration(seconds=367 * 86_400)}, "bucket"),  # over 366 days
        ({"aggregation": region_node_pb2.AGGREGATION_UNSPECIFIED}, "aggregation"),
        ({"metric": ""}, "metric"),
    ],
)
async def test_aggregate_metrics_refuses_what_its_comments_rule_out(
    mesh: Mesh, fields: dict[str, object], field: str
) -> None:
    await add_region(mesh, "r1", evaluate=False)
    stub = _node(mesh, "r1")
    assert not (await stub.AggregateMetrics(_aggregate(), timeout=10)).buckets  # well-formed
    err = await _refusal(stub.AggregateMetrics(_aggregate(**fields), timeout=10))
    details = details_from_error(err)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details.field_violations] == [field]


async def test_risk_profile_of_an_agent_never_evaluated_is_not_found(mesh: Mesh) -> None:
    await add_region(mesh, "r1")
    err = await _refusal(
        _node(mesh, "r1").GetRiskProfile(
            region_node_pb2.GetRiskProfileRequest(agent_id="nobody"), timeout=10
        )
    )
    details = details_from_error(err)
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.reason == "AGENT_NOT_FOUND"


@pytest.mark.parametrize(
    ("action", "field"),
    [
        ({"agent_id": "   "}, "action.agent_id"),  # blank
        ({"agent_id": "a\x07b"}, "action.agent_id"),  # a control character
        ({"action_text": " \n "}, "action.action_text"),  # blank
        ({"request_id": "r\x00"}, "action.request_id"),
        ({"context": {f"k{i}": "v" for i in range(65)}}, "action.context"),  # 65 entries
        ({"context": {"": "v"}}, 'action.context[""]'),  # an empty key, named
        # a key over 256 characters, named by its first 64
        ({"context": {"k" * 257: "v"}}, 'action.context["' + "k" * 64 + '…"]'),
    ],
)
async def test_evaluate_refuses_actions_as_agent_action_says(
    mesh: Mesh, action: dict[str, object], field: str
) -> None:
    await add_region(mesh, "r1")
    fields: dict[str, object] = {"agent_id": "agent", "action_text": "SELECT 1"}
    fields.update(action)
    err = await _refusal(
        _node(mesh, "r1").Evaluate(
            region_node_pb2.EvaluateRequest(action=governance_pb2.AgentAction(**fields)),  # type: ignore[arg-type]
            timeout=10,
        )
    )
    details = details_from_error(err)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details.field_violations] == [field]


async def test_score_refuses_no_rows(mesh: Mesh) -> None:
    await add_region(mesh, "r1")
    stub = _node(mesh, "r1")
    info = await stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=10)
    err = await _refusal(
        stub.Score(region_node_pb2.ScoreRequest(columns=info.model.feature_width), timeout=10)
    )
    details = details_from_error(err)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details.field_violations] == ["features"]


async def test_weighted_mean_is_unset_when_no_answering_region_weighs_anything(
    mesh: Mesh,
) -> None:
    await add_region(mesh, "eu", evaluate=False)
    await add_region(mesh, "us", evaluate=False)
    await mesh.ingest("eu", "m", np.array([1.0, 3.0]))
    await add_coordinator(mesh)
    stub = coordinator_pb2_grpc.CoordinatorServiceStub(mesh.coordinator_channel())

    async def weighted(weights: dict[str, float]) -> coordinator_pb2.MetricResult:
        answer = await stub.GetGlobalMetrics(
            coordinator_pb2.GetGlobalMetricsRequest(metrics=["m"], region_weights=weights),
            timeout=10,
        )
        [result] = answer.results
        found: coordinator_pb2.MetricResult = result
        return found

    assert (await weighted({"eu": 2.0})).weighted_mean == 2.0
    # "us" has no data of the metric, and "eu" weighs 0: no weighted mean
    assert not (await weighted({"us": 1.0, "eu": 0.0})).HasField("weighted_mean")
    err = await _refusal(
        stub.GetGlobalMetrics(
            coordinator_pb2.GetGlobalMetricsRequest(region_weights={"eu": -1.0}), timeout=10
        )
    )
    details = details_from_error(err)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details.field_violations] == ['region_weights["eu"]']
