"""The region-node client commands' pure parts: a node's info for a terminal."""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2

from nethical_grpc.cli.region_commands import node_info_text, profile_text
from nethical_grpc.v1 import governance_pb2, region_node_pb2


def _seconds(s: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=s)


def test_node_info_names_its_windows_model_stores_and_components() -> None:
    info = region_node_pb2.GetNodeInfoResponse(
        region_id="eu-west-1",
        instance_id="eu-west-1-0",
        scope=region_node_pb2.DATA_SCOPE_REGION,
        window=_seconds(10),
        retention=_seconds(86_400),
        rollup_after=_seconds(3_600),
        rollup_window=_seconds(300),
        series_count=1_500,
        window_count=541_500,
        histogram_scale=6,
        version="0.1.0",
        components={"jit": "numba", "detection": "1 worker"},
        stores=[
            region_node_pb2.StoreStatus(
                store="cache", backend="redis", requested="redis://r:6379/0"
            ),
            region_node_pb2.StoreStatus(
                store="timeseries",
                backend="sqlite (memory)",
                requested="postgresql://pg:5432/nethical",
                reason="unreachable (connection refused)",
            ),
            region_node_pb2.StoreStatus(
                store="audit", backend="memory", requested="memory://", problem="disk full"
            ),
        ],
        model=region_node_pb2.ModelInfo(name="default-mlp", feature_width=590, engine="numpy"),
        started_at=timestamp_pb2.Timestamp(seconds=1_000),
    )
    assert node_info_text(info, now_s=1_090.4).splitlines() == [
        "region       eu-west-1, instance eu-west-1-0 (data scope: region)",
        "version      0.1.0",
        "serving for  90 s (since 1970-01-01T00:16:40.000Z)",
        "windows      10s windows kept 1d, rolled up into 5m past 1h; sketch scale 6",
        "holds        1,500 series, 541,500 windows",
        "model        default-mlp, 590 features, numpy",
        "store        cache: redis (redis://r:6379/0)",
        "store        timeseries: sqlite (memory) (postgresql://pg:5432/nethical), in its "
        "place: unreachable (connection refused)",
        "store        audit: memory; failing: disk full",
        "component    detection: 1 worker",
        "component    jit: numba",
    ]


def test_node_info_without_rollup_model_or_start() -> None:
    info = region_node_pb2.GetNodeInfoResponse(
        region_id="r", instance_id="i", window=_seconds(15), retention=_seconds(5_400)
    )
    text = node_info_text(info, now_s=0.0)
    assert "windows      15s windows kept 90m; sketch scale 0" in text
    assert "model" not in text and "serving for" not in text and "rolled up" not in text


def test_node_info_names_what_the_node_leaves_out() -> None:
    info = region_node_pb2.GetNodeInfoResponse(
        region_id="r1",
        instance_id="r1-0",
        gaps=[
            region_node_pb2.DataGap(
                reason="STORE_FALLBACK",
                end_time=timestamp_pb2.Timestamp(seconds=1_000),
                message="the time-series store did not answer",
            ),
            region_node_pb2.DataGap(
                reason="STORED_WINDOWS_NOT_LOADED",
                start_time=timestamp_pb2.Timestamp(seconds=400),
                end_time=timestamp_pb2.Timestamp(seconds=1_000),
                message="not back yet",
            ),
            region_node_pb2.DataGap(reason="PEERS_NOT_LOADED", message="peers"),
        ],
    )
    assert [line for line in node_info_text(info, 0).splitlines() if "left out" in line] == [
        "left out     before 1970-01-01T00:16:40.000Z: STORE_FALLBACK: the time-series "
        "store did not answer",
        "left out     1970-01-01T00:06:40.000Z to 1970-01-01T00:16:40.000Z: "
        "STORED_WINDOWS_NOT_LOADED: not back yet",
        "left out     any time: PEERS_NOT_LOADED: peers",
    ]


def test_a_scope_this_client_does_not_know_is_named_by_its_number() -> None:
    """Before, a ValueError traceback from DataScope.Name (a newer server's scope)."""
    info = region_node_pb2.GetNodeInfoResponse(region_id="r", instance_id="i", scope=7)
    assert "(data scope: unknown(7))" in node_info_text(info, 0).splitlines()[0]


def test_a_profile_with_decisions_this_client_does_not_know() -> None:
    """A newer server's decision, by name in the counts and by number in the recent
    evaluations: before, a ValueError traceback (Decision.Value, Decision.Name)."""
    profile = region_node_pb2.GetRiskProfileResponse(
        agent_id="a1",
        evaluations=6,
        decision_counts={"DECISION_ESCALATE": 1, "DECISION_BLOCK": 2, "DECISION_ALLOW": 3},
        recent=[
            governance_pb2.ProfileEntry(
                time=timestamp_pb2.Timestamp(seconds=60), decision=9, risk_score=0.5
            )
        ],
    )
    lines = profile_text(profile).splitlines()
    assert lines[1] == "evaluations  6 (ALLOW 3, BLOCK 2, ESCALATE 1)"
    assert lines[-1].split()[:2] == ["1970-01-01T00:01:00.000Z", "UNKNOWN(9)"]
