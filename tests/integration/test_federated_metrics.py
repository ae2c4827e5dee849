"""The guide's FederatedMetricsAggregator, called as the guide calls it (blocking), on a
real mesh: two region nodes and a coordinator on a loop in another thread."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from meshutil import LoopThread, Mesh, add_coordinator, add_region, stop_mesh

from nethical_grpc.federated_metrics import FederatedMetricsAggregator

REGIONS = ("us-east-1", "eu-west-1")


@dataclass
class Rig:
    loop: LoopThread
    mesh: Mesh

    def aggregator(self, **kwargs: object) -> FederatedMetricsAggregator:
        assert self.mesh.coordinator is not None
        nodes = {r: servers[0][0].address for r, servers in self.mesh.regions.items()}
        return FederatedMetricsAggregator(
            coordinator=self.mesh.coordinator.address,
            region_nodes=nodes,
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


def test_the_guides_calls_give_exact_moments_and_bounded_percentiles(rig: Rig) -> None:
    rng = np.random.default_rng(5)
    data = {
        "us-east-1": rng.lognormal(3.0, 0.6, 20_000),
        "eu-west-1": rng.lognormal(4.0, 1.2, 30_000),
    }
    with rig.aggregator(regions=list(REGIONS), aggregation_interval=60) as agg:
        for region, values in data.items():
            accepted = agg.submit_regional_metrics(
                region_id=region, metrics={"latency_ms": values, "risk_score": 0.25}
            )
            assert accepted == values.size + 1
        pooled = np.concatenate(list(data.values()))

        means = agg.aggregate_metrics(
            metric_names=["latency_ms", "risk_score", "missing"], aggregation_type="mean"
        )
        assert means["latency_ms"] == pytest.approx(pooled.mean(), rel=1e-12)
        assert means["risk_score"] == pytest.approx(0.25)
        assert math.isnan(means["missing"])
        assert agg.aggregate_metrics(["latency_ms"], "count") == {"latency_ms": pooled.size}
        assert agg.last_coverage is not None
        assert sorted(agg.last_coverage.regions_answered) == sorted(REGIONS)

        by_region = agg.aggregate_by_region(metric_name="latency_ms", aggregation_type="max")
        assert by_region == {r: pytest.approx(v.max()) for r, v in sorted(data.items())}

        percentiles = agg.compute_percentiles(metric_name="latency_ms", percentiles=[50, 90, 99])
        assert list(percentiles) == [50, 90, 99]
        for p, value in percentiles.items():
            exact = np.quantile(pooled, p / 100, method="lower")
            assert abs(value - exact) <= 0.0055 * exact  # the sketch's bound at scale 6
        median = agg.aggregate_metrics(["latency_ms"], "median")["latency_ms"]
        assert median == percentiles[50]


def test_a_pre_aggregated_mean_counts_as_its_observations(rig: Rig) -> None:
    """The guide's submission: a region's mean over ``count`` observations."""
    with rig.aggregator(aggregation_interval=0) as agg:
        agg.submit_regional_metrics("us-east-1", {"risk_score": 0.45}, count=1000)
        agg.submit_regional_metrics("eu-west-1", {"risk_score": 0.15}, count=3000)
        [(name, mean)] = agg.aggregate_metrics(["risk_score"]).items()
        assert name == "risk_score"
        assert mean == pytest.approx((0.45 * 1000 + 0.15 * 3000) / 4000, rel=1e-12)
        assert agg.aggregate_metrics(["risk_score"], "sum")["risk_score"] == pytest.approx(900)


def test_answers_are_reused_within_the_interval_and_forgotten_on_submit(rig: Rig) -> None:
    with rig.aggregator(aggregation_interval=3600) as agg:
        agg.submit_regional_metrics("us-east-1", {"m": np.ones(10)})
        assert agg.aggregate_metrics(["m"], "count") == {"m": 10}
        # sent by someone else: this object answers from its last answer for an hour ...
        with rig.aggregator() as other:
            other.submit_regional_metrics("eu-west-1", {"m": np.ones(5)})
        assert agg.aggregate_metrics(["m"], "count") == {"m": 10}
        # ... unless it submits itself
        agg.submit_regional_metrics("us-east-1", {"m": np.ones(1)})
        assert agg.aggregate_metrics(["m"], "count") == {"m": 16}


def test_mistakes_get_clear_errors(rig: Rig) -> None:
    with rig.aggregator() as agg:
        with pytest.raises(ValueError, match="no region node address for 'ap-south-1'"):
            agg.submit_regional_metrics("ap-south-1", {"m": 1.0})
        with pytest.raises(ValueError, match="percentiles must be numbers in"):
            agg.compute_percentiles("m", [50, 150])
        with pytest.raises(ValueError, match="aggregation_type must be one of"):
            agg.aggregate_metrics(["m"], "mode")
        with pytest.raises(ValueError, match="count applies to single values"):
            agg.submit_regional_metrics("us-east-1", {"m": [1.0, 2.0]}, count=2)
        with pytest.raises(grpc.RpcError) as err:  # the node's own check, over the wire
            agg.submit_regional_metrics("us-east-1", {"m": [1.0, math.nan]})
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="retention_period"):
        FederatedMetricsAggregator(retention_period=0)
    # no deadline, or one every call fails at once
    for timeout in (None, 0, -1.0, math.nan, math.inf, True):
        with pytest.raises(ValueError, match=r"timeout must be > 0 s"):
            FederatedMetricsAggregator(timeout=timeout)  # type: ignore[arg-type]


def test_last_coverage_is_the_coverage_of_the_answer_given(rig: Rig) -> None:
    """An answer reused within the interval comes with its own coverage, not the one of
    the last question sent (before: a region down for another question made a reused,
    complete answer look partial, and the reverse)."""
    with rig.aggregator(aggregation_interval=3600) as agg:
        for region in REGIONS:
            agg.submit_regional_metrics(region, {"m": np.ones(4), "n": np.ones(2)})
        assert agg.aggregate_metrics(["m"], "count") == {"m": 8}
        assert agg.last_coverage is not None and agg.last_coverage.complete
        server = rig.mesh.regions["eu-west-1"][0][0]
        rig.loop.run(server.server.stop(0))
        assert agg.aggregate_metrics(["n"], "count") == {"n": 2}
        assert not agg.last_coverage.complete
        assert [m.region_id for m in agg.last_coverage.missing] == ["eu-west-1"]
        assert agg.aggregate_metrics(["m"], "count") == {"m": 8}  # reused
        assert agg.last_coverage.complete
        assert sorted(agg.last_coverage.regions_answered) == sorted(REGIONS)


def test_empty_selections_are_not_taken_for_everything(rig: Rig) -> None:
    """No metric names: no aggregates (before: every metric's); no regions: refused
    (before: every region's figures, as for None)."""
    with rig.aggregator(aggregation_interval=0) as agg:
        agg.submit_regional_metrics("us-east-1", {"m": np.ones(3)})
        assert agg.aggregate_metrics([], "count") == {}
        assert agg.aggregate_metrics(None, "count") == {"m": 3}
    with pytest.raises(ValueError, match="regions"):
        rig.aggregator(regions=[])


def test_percentiles_may_be_numpy_numbers(rig: Rig) -> None:
    with rig.aggregator(aggregation_interval=0) as agg:
        agg.submit_regional_metrics("us-east-1", {"m": np.arange(1.0, 101.0)})
        got = agg.compute_percentiles("m", np.array([0, 100]))
        assert got == {0: 1.0, 100: 100.0}
        assert agg.compute_percentiles("m", [np.float32(50)])[50] == pytest.approx(50, rel=0.01)
        with pytest.raises(ValueError, match="percentiles must be numbers"):
            agg.compute_percentiles("m", [True])


def test_a_retention_period_longer_than_timestamps_reach_covers_everything(rig: Rig) -> None:
    """retention_period=1e12 s (longer than a Timestamp reaches back): every observation
    is covered (before: every aggregate failed with a ValueError about start_ns, which
    the caller never gave)."""
    with rig.aggregator(aggregation_interval=0, retention_period=1e12) as agg:
        agg.submit_regional_metrics("us-east-1", {"m": np.ones(3)})
        assert agg.aggregate_metrics(["m"], "count") == {"m": 3}


def test_answers_past_the_interval_are_not_kept(rig: Rig) -> None:
    """The answer cache held every distinct question ever asked (a process asking for
    ever-changing percentiles grew without bound)."""
    with rig.aggregator(aggregation_interval=0.5) as agg:
        agg.submit_regional_metrics("us-east-1", {"m": np.arange(100.0)})
        for p in range(1, 21):
            agg.aggregate_metrics(["m"], f"p{p}")
        assert len(agg._answers) == 20  # each kept for the interval
        time.sleep(0.6)
        assert agg.aggregate_metrics(["m"], "count") == {"m": 100}
        assert len(agg._answers) == 1
