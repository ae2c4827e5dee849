"""The performance guide's Python examples, run as the guide writes them (module paths
``nethical_grpc.*``; the differences the README documents), on real servers where they
need one: the calls no other test makes as the guide does."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from meshutil import LoopThread, Mesh, add_coordinator, add_region, stop_mesh

from nethical_grpc.balancing import Instance, LoadBalancer, LoadBalancingStrategy
from nethical_grpc.federated_metrics import VALUES_PER_MESSAGE, FederatedMetricsAggregator
from nethical_grpc.grpc_options import DEFAULT_MAX_MESSAGE_BYTES
from nethical_grpc.inference import get_gpu_info, is_gpu_available
from nethical_grpc.jit_optimizations import calculate_risk_score_jit, detect_outliers_iqr_jit
from nethical_grpc.v1 import governance_pb2, region_node_pb2, region_node_pb2_grpc

REGIONS = ("us-east-1", "eu-west-1", "ap-south-1")


@dataclass
class Rig:
    loop: LoopThread
    mesh: Mesh

    def node(self, region: str) -> str:
        return str(self.mesh.regions[region][0][0].address)

    def aggregator(self, **kwargs: object) -> FederatedMetricsAggregator:
        assert self.mesh.coordinator is not None
        return FederatedMetricsAggregator(
            coordinator=self.mesh.coordinator.address,
            region_nodes={r: self.node(r) for r in self.mesh.regions},
            **kwargs,  # type: ignore[arg-type]
        )


@pytest.fixture
def rig() -> Iterator[Rig]:
    loop, mesh = LoopThread(), Mesh()

    async def start() -> None:
        for region in REGIONS:
            await add_region(mesh, region)
        await add_coordinator(mesh)

    try:
        loop.run(start())
        yield Rig(loop, mesh)
    finally:
        loop.run(stop_mesh(mesh))
        loop.close()


def test_the_guides_aggregator_example(rig: Rig) -> None:
    """The guide's three regions, its pre-aggregated submission and its three queries."""
    with rig.aggregator(
        regions=list(REGIONS), aggregation_interval=60, retention_period=86400
    ) as agg:
        accepted = agg.submit_regional_metrics(
            region_id="us-east-1",
            metrics={"risk_score": 0.45, "latency_ms": 120.0, "throughput": 1500},
            count=1000,
        )
        assert accepted == 3000
        agg.submit_regional_metrics("eu-west-1", {"latency_ms": 40.0}, count=3000)
        global_metrics = agg.aggregate_metrics(
            metric_names=["risk_score", "latency_ms"], aggregation_type="mean"
        )
        assert global_metrics == {
            "risk_score": pytest.approx(0.45),
            "latency_ms": pytest.approx(60.0),  # (1000 * 120 + 3000 * 40) / 4000
        }
        assert f"{global_metrics['risk_score']:.3f}" == "0.450"
        regional_latency = agg.aggregate_by_region(
            metric_name="latency_ms", aggregation_type="mean"
        )
        # ap-south-1 has no latency data: it has no entry
        assert regional_latency == {"eu-west-1": 40.0, "us-east-1": 120.0}
        percentiles = agg.compute_percentiles(
            metric_name="latency_ms", percentiles=[50, 90, 95, 99]
        )
        assert list(percentiles) == [50, 90, 95, 99]
        assert percentiles[50] == pytest.approx(40.0, rel=0.01)
        assert percentiles[90] == pytest.approx(120.0, rel=0.01)
        assert agg.last_coverage is not None and agg.last_coverage.complete
        assert sorted(agg.last_coverage.regions_answered) == sorted(REGIONS)


def test_a_count_or_array_larger_than_one_message_is_taken(rig: Rig) -> None:
    """A pre-aggregated ``count`` up to the documented bound, or an array, whose values
    are more than one message may carry (8 MiB: about a million values) is sent in
    several messages, not refused by the client with RESOURCE_EXHAUSTED."""
    count = 2_000_000
    assert count * 8 > DEFAULT_MAX_MESSAGE_BYTES  # one message could not carry it
    observed = np.arange(1_500_000, dtype=np.float64) % 1000.0
    with rig.aggregator(regions=["us-east-1", "eu-west-1"], aggregation_interval=0) as agg:
        accepted = agg.submit_regional_metrics("us-east-1", {"risk_score": 0.25}, count=count)
        assert accepted == count
        accepted = agg.submit_regional_metrics("eu-west-1", {"latency_ms": observed})
        assert accepted == observed.size
        counts = agg.aggregate_metrics(["risk_score", "latency_ms"], "count")
        assert counts == {"risk_score": count, "latency_ms": observed.size}
        assert agg.aggregate_metrics(["risk_score"], "sum") == {
            "risk_score": pytest.approx(0.25 * count)
        }
        assert agg.aggregate_metrics(["latency_ms"], "mean")["latency_ms"] == pytest.approx(
            observed.mean(), rel=1e-12
        )
        assert agg.aggregate_metrics(["latency_ms"], "max") == {"latency_ms": 999.0}
        # a count that is not a whole number of messages: every copy arrives, once
        odd = 2 * VALUES_PER_MESSAGE + 7
        assert agg.submit_regional_metrics("eu-west-1", {"throughput": 3.0}, count=odd) == odd
        assert agg.aggregate_metrics(["throughput"], "count") == {"throughput": odd}


def test_a_numpy_integer_count_is_a_count(rig: Rig) -> None:
    """A count computed with NumPy (``np.int64``) is taken as the int it is; a bool or a
    float is not a count."""
    with rig.aggregator(regions=["us-east-1"], aggregation_interval=0) as agg:
        assert agg.submit_regional_metrics("us-east-1", {"qps": 2.0}, count=np.int64(1000)) == 1000
        assert agg.aggregate_metrics(["qps"], "count") == {"qps": 1000}
        for bad in (True, np.bool_(True), 2.0, np.float64(3)):
            with pytest.raises(ValueError, match="count must be a positive integer"):
                agg.submit_regional_metrics("us-east-1", {"qps": 2.0}, count=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="count must be a positive integer"):
            agg.submit_regional_metrics("us-east-1", {"qps": 2.0}, count=np.int64(0))


def test_an_endpoint_written_as_a_url_is_refused_at_once() -> None:
    """The guide's ``http://host:8000`` is no gRPC target: refused when added, naming
    what a target looks like, instead of every call failing later."""
    lb = LoadBalancer()
    for url in ("http://10.0.0.1:8000", "HTTPS://h:443", "grpc://h:50051"):
        with pytest.raises(ValueError, match="is a URL; a gRPC target is HOST:PORT"):
            lb.add_instance("a", "r1", url)
    assert lb.instances() == []
    assert lb.add_instance("b", "r1", "dns:///nodes.example:50051").endpoint.startswith("dns:")


def test_the_guides_load_balancer_example(rig: Rig) -> None:
    """The guide's balancer (no ``health_check_interval``: health comes from Watch
    streams), its weighted instances and its request, on real region nodes; the
    statistics' flat ``total_requests`` and ``error_rate`` (a fraction)."""
    lb = LoadBalancer(strategy=LoadBalancingStrategy.REGION_AWARE, max_retries=2)
    lb.add_instance(
        instance_id="us-east-1-primary",
        region_id="us-east-1",
        endpoint=rig.node("us-east-1"),
        weight=2,
    )
    lb.add_instance(
        instance_id="eu-west-1-primary",
        region_id="eu-west-1",
        endpoint=rig.node("eu-west-1"),
        weight=1,
    )

    def governance_request(endpoint: Instance) -> dict[str, str]:
        with grpc.insecure_channel(endpoint.endpoint) as channel:
            answer = region_node_pb2_grpc.RegionNodeServiceStub(channel).Evaluate(
                region_node_pb2.EvaluateRequest(
                    action=governance_pb2.AgentAction(
                        agent_id="agent_123", action_text="list files in the workspace"
                    )
                ),
                timeout=10,
            )
        return {
            "decision": governance_pb2.Decision.Name(answer.evaluation.decision),
            "region": answer.evaluation.region_id,
        }

    for _ in range(3):
        result = lb.execute_request(request_func=governance_request, region_id="us-east-1")
        assert result == {"decision": "DECISION_ALLOW", "region": "us-east-1"}
    result = lb.execute_request(request_func=governance_request, region_id="eu-west-1")
    assert result["region"] == "eu-west-1"
    stats = lb.get_statistics()
    assert stats["total_requests"] == 4
    assert stats["error_rate"] == 0.0
    assert f"{stats['error_rate']:.2f}%" == "0.00%"
    assert stats["instances"]["us-east-1-primary"]["requests"] == 3
    assert stats["instances"]["us-east-1-primary"]["weight"] == 2


def test_the_guides_gpu_checks() -> None:
    """``get_gpu_info()`` has the keys the guide reads: ``device_name`` and
    ``total_memory_gb`` with a GPU, ``reason`` without one."""
    info = get_gpu_info()
    if is_gpu_available():
        assert isinstance(info["device_name"], str) and info["device_name"]
        assert info["total_memory_gb"] > 0
        assert f"{info['total_memory_gb']:.2f}"
    else:
        reason = info.get("reason", "Unknown")
        assert isinstance(reason, str) and reason and reason != "Unknown"
        assert info["available"] is False and info["backend"] == "cpu"


def test_the_guides_jit_example_values() -> None:
    """The guide's risk score and its integer outlier data, as written."""
    severities = np.array([3.0, 4.0, 5.0])
    confidences = np.array([0.8, 0.9, 0.95])
    # noisy-OR of 0.6 * 0.8, 0.8 * 0.9 and 1.0 * 0.95
    expected = 1 - (1 - 0.48) * (1 - 0.72) * (1 - 0.95)
    assert calculate_risk_score_jit(severities, confidences) == pytest.approx(expected, 1e-12)
    data = np.array([1, 2, 3, 4, 5, 100, 200])
    outliers = detect_outliers_iqr_jit(data)
    # Q1 2.5, Q3 52.5: the upper fence is 127.5
    assert outliers.dtype == np.bool_ and outliers.tolist() == [False] * 6 + [True]
