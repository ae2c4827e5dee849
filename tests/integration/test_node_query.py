"""``nethical-mesh query --node``: one region node's summaries give the answer a real
coordinator of that node alone gives, figure for figure."""

from __future__ import annotations

import numpy as np
import pytest
from meshutil import Mesh, add_coordinator, add_region

from coordinator.federation import Missing, one_node_result
from nethical_grpc import client, convert
from nethical_grpc.cli.node_query import node_metrics
from nethical_grpc.errors import InvalidArgument
from nethical_grpc.series import DataGap, GroupSummary
from nethical_grpc.summary import Summary
from nethical_grpc.v1 import coordinator_pb2

OPTIONS = [
    client.QueryOptions(),
    client.QueryOptions(metrics=["latency_ms"], quantiles=[0.5, 0.999], group_by_labels=["route"]),
    client.QueryOptions(label_filter={"route": "/b"}, quantiles=[0.0, 1.0]),
    client.QueryOptions(metrics=["errors", "nothing"], include_summary=True),
]


def _comparable(
    response: coordinator_pb2.GetGlobalMetricsResponse,
) -> coordinator_pb2.GetGlobalMetricsResponse:
    """The answer less what depends on when it was computed."""
    out = coordinator_pb2.GetGlobalMetricsResponse()
    out.CopyFrom(response)
    out.ClearField("computed_at")
    out.coverage.ClearField("max_staleness")
    return out


@pytest.mark.parametrize("opts", OPTIONS, ids=["all", "grouped", "filtered", "named"])
async def test_a_node_answers_as_a_coordinator_of_it_alone(
    mesh: Mesh, opts: client.QueryOptions
) -> None:
    [(server, _)] = await add_region(mesh, "eu-west-1", evaluate=False)
    rng = np.random.default_rng(11)
    await mesh.ingest("eu-west-1", "latency_ms", rng.lognormal(2, 1.5, 5_000), {"route": "/a"})
    await mesh.ingest("eu-west-1", "latency_ms", -rng.lognormal(0, 1, 3_000), {"route": "/b"})
    await mesh.ingest("eu-west-1", "errors", np.zeros(100), {"route": "/b"})
    await add_coordinator(mesh)

    from_node = await node_metrics(mesh.channel(server.address), opts, timeout=10)
    from_coordinator = await client.global_metrics(mesh.coordinator_channel(), opts, timeout=10)
    assert _comparable(from_node) == _comparable(from_coordinator)
    assert from_node.results  # a real comparison: every option matches some series
    assert list(from_node.coverage.regions_answered) == ["eu-west-1"]
    assert from_node.coverage.complete and from_node.coverage.instances_answered == 1
    assert from_node.coverage.HasField("oldest_data_as_of")


async def test_quantiles_outside_zero_to_one_are_refused_before_any_call(mesh: Mesh) -> None:
    [(server, _)] = await add_region(mesh, "eu-west-1", evaluate=False)
    with pytest.raises(InvalidArgument) as err:
        await node_metrics(
            mesh.channel(server.address), client.QueryOptions(quantiles=[0.5, 1.5]), timeout=5
        )
    assert [v.field for v in err.value.violations()] == ["quantiles[1]"]


def _answer(**changes: object) -> convert.SummariesAnswer:
    summary = Summary.from_values(np.array([1.0, 2.0, 4.0]))
    group = GroupSummary("m", (), summary, start_ns=0, end_ns=10, data_as_of_ns=7)
    fields: dict[str, object] = {
        "instance_id": "eu-west-1-0",
        "scope": 1,
        "data_as_of_ns": 7,
        "groups": [group],
        "privacy": None,
    }
    fields.update(changes)
    return convert.SummariesAnswer(**fields)  # type: ignore[arg-type]


def test_a_nodes_gaps_make_its_answer_incomplete() -> None:
    gap = DataGap(reason="STORE_FALLBACK", start_ns=None, end_ns=5, message="store unreachable")
    result = one_node_result("eu-west-1", _answer(gaps=(gap,)))
    c = result.coverage
    assert (c.regions_requested, c.regions_answered) == (["eu-west-1"], ["eu-west-1"])
    assert (c.instances_queried, c.instances_answered, c.oldest_data_as_of_ns) == (1, 1, 7)
    [missing] = c.missing
    assert (missing.region_id, missing.instance_id) == ("eu-west-1", "eu-west-1-0")
    assert missing.reason is Missing.INCOMPLETE
    assert missing.message == "STORE_FALLBACK: store unreachable"
    assert not c.complete
    [group] = result.groups
    assert group.summary.count == 3 and group.per_region == {}
    whole = one_node_result("eu-west-1", _answer())
    assert whole.coverage.complete and not whole.coverage.missing


def test_invalid_summaries_are_refused() -> None:
    with pytest.raises(ValueError, match="the node's summaries are invalid: series\\[0\\]"):
        one_node_result("eu-west-1", _answer(groups=[], invalid="series[0]: bad buckets"))
