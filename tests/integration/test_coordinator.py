"""Coordinator over real gRPC: fan-out, exact merge, coverage, failover, bad input."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
from google.protobuf import duration_pb2
from meshutil import Mesh, add_coordinator, add_region, wait_for

from coordinator.federation import SummaryTransport
from coordinator.instances import Health
from coordinator.server import CoordinatorConfig, start_coordinator
from nethical_grpc import __version__, client, convert
from nethical_grpc.cli.client_commands import coverage_line
from nethical_grpc.errors import details_from_error
from nethical_grpc.server_runtime import start_server
from nethical_grpc.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    region_node_pb2,
    region_node_pb2_grpc,
    summary_pb2,
)
from region_node.stores import StoreConfig
from region_node.windows import WindowConfig


async def query(
    mesh: Mesh, timeout: float = 10.0, **kwargs: object
) -> coordinator_pb2.GetGlobalMetricsResponse:
    return await client.global_metrics(
        mesh.coordinator_channel(), client.QueryOptions(**kwargs), timeout=timeout
    )


def within_bound(estimate: float, exact: float, rel: float) -> bool:
    return abs(estimate - exact) <= rel * abs(exact) * (1 + 1e-9) + 1e-300


async def three_regions(mesh: Mesh) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    data = {}
    for i, region in enumerate(["us-east-1", "eu-west-1", "ap-south-1"]):
        await add_region(mesh, region)
        data[region] = rng.lognormal(mean=i, sigma=1.0 + i * 0.5, size=20_000)
        await mesh.ingest(region, "latency_ms", data[region])
    await add_coordinator(mesh)
    return data


async def test_global_metrics_merge_exactly(mesh: Mesh) -> None:
    data = await three_regions(mesh)
    pooled = np.concatenate(list(data.values()))
    resp = await query(mesh, quantiles=[0.5, 0.9, 0.99, 0.999], include_region_breakdown=True)
    [result] = resp.results
    s = result.statistics
    assert s.count == pooled.size
    assert s.sum == pytest.approx(pooled.sum(), rel=1e-12)
    assert s.mean == pytest.approx(pooled.mean(), rel=1e-12)
    assert s.stddev == pytest.approx(pooled.std(), rel=1e-9)
    assert (s.min, s.max) == (pooled.min(), pooled.max())
    for qv in s.quantiles:
        assert within_bound(
            qv.value, np.quantile(pooled, qv.quantile, method="lower"), s.relative_error
        )
    assert {r.region_id: r.statistics.count for r in result.regions} == {
        k: v.size for k, v in data.items()
    }
    cov = resp.coverage
    assert cov.complete and sorted(cov.regions_answered) == sorted(data)
    assert (cov.instances_queried, cov.instances_answered) == (3, 3)
    assert cov.max_staleness.ToTimedelta().total_seconds() < 60


async def test_weighted_mean_and_region_filter(mesh: Mesh) -> None:
    data = await three_regions(mesh)
    resp = await query(mesh, region_weights={"us-east-1": 3.0, "eu-west-1": 1.0})
    [r] = resp.results
    expected = (3 * data["us-east-1"].mean() + data["eu-west-1"].mean()) / 4
    assert r.weighted_mean == pytest.approx(expected, rel=1e-12)
    # weights whose sum is beyond a double: only their ratio matters
    huge = await query(mesh, region_weights={"us-east-1": 1.5e308, "eu-west-1": 0.5e308})
    assert huge.results[0].weighted_mean == pytest.approx(expected, rel=1e-12)
    only = await query(mesh, regions=["eu-west-1"])
    assert only.results[0].statistics.count == data["eu-west-1"].size
    assert list(only.coverage.regions_requested) == ["eu-west-1"]
    assert not only.results[0].HasField("weighted_mean")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"metrics": ["1"] * 200}, "metrics[0]"),  # 200 violations: some left out
        ({"regions": ["x" * 20_000]}, "regions[0]"),
        ({"region_weights": {"w" * 20_000: 1.0}}, 'region_weights["www'),
    ],
)
async def test_large_bad_input_keeps_its_details(mesh: Mesh, kwargs: dict, field: str) -> None:
    """Bad input that the error echoes is clipped, and many violations are cut to a
    budget, so the client gets INVALID_ARGUMENT with details, not a status its gRPC
    library refused for the size of its trailers."""
    await add_region(mesh, "us-east-1")
    await add_coordinator(mesh)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await query(mesh, **kwargs)
    details = details_from_error(err.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details.message
    assert details.field_violations[0].field.startswith(field)
    if "metrics" in kwargs:
        listed = len(details.field_violations)
        assert 0 < listed < 200
        assert int(details.metadata["omitted_field_violations"]) == 200 - listed


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"regions": ["us-east-1", "mars-1"]}, "regions[1]"),
        ({"quantiles": [0.5, 1.5]}, "quantiles[1]"),
        ({"quantiles": [float("nan")]}, "quantiles[0]"),
        ({"region_weights": {"us-east-1": -1.0}}, 'region_weights["us-east-1"]'),
        ({"region_weights": {"nowhere": 1.0}}, 'region_weights["nowhere"]'),
        ({"start_ns": 2_000_000_000, "end_ns": 1_000_000_000}, "end_time"),
        ({"region_timeout_s": 0.0}, "region_timeout"),
        ({"metrics": ["bad metric"]}, "metrics[0]"),
        ({"quantiles": [0.5] * 65}, "quantiles"),
        ({"group_by_labels": [f"l{i}" for i in range(17)]}, "group_by_labels"),
    ],
)
async def test_bad_global_queries(mesh: Mesh, kwargs: dict[str, object], field: str) -> None:
    await three_regions(mesh)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await query(mesh, **kwargs)
    details = details_from_error(info.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [v.field for v in details.field_violations]


async def test_a_region_asked_twice_is_refused(mesh: Mesh) -> None:
    """A repeated region would be queried, counted and merged once per mention."""
    await three_regions(mesh)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await query(mesh, regions=["us-east-1", "us-east-1", "eu-west-1", "us-east-1"])
    details = details_from_error(info.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.description) for v in details.field_violations] == [
        ("regions[1]", '"us-east-1" is a duplicate of regions[0]'),
        ("regions[3]", '"us-east-1" is a duplicate of regions[0]'),
    ]


@pytest.mark.parametrize(
    ("seconds", "nanos"), [(1, -5), (-1, 5), (0, 1_500_000_000), (0, -1_000_000_000)]
)
async def test_an_invalid_duration_is_refused_naming_the_field(
    mesh: Mesh, seconds: int, nanos: int
) -> None:
    """Durations other runtimes would refuse to build (nanos of the other sign than the
    seconds, or a whole second or more) are refused, as invalid Timestamps are."""
    await add_region(mesh, "us-east-1")
    await add_coordinator(mesh)
    request = client.global_metrics_request(client.QueryOptions())
    request.region_timeout.CopyFrom(duration_pb2.Duration(seconds=seconds, nanos=nanos))
    stub = coordinator_pb2_grpc.CoordinatorServiceStub(mesh.coordinator_channel())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetGlobalMetrics(request, timeout=5)
    details = details_from_error(info.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details.field_violations] == ["region_timeout"]


async def test_down_region_gives_partial_answer_fast(mesh: Mesh) -> None:
    data = await three_regions(mesh)
    server, _ = mesh.regions["eu-west-1"][0]
    await server.server.stop(0)
    started = time.monotonic()
    resp = await query(mesh, region_timeout_s=1.0)
    assert time.monotonic() - started < 1.5
    assert not resp.coverage.complete
    assert [m.region_id for m in resp.coverage.missing] == ["eu-west-1"]
    assert resp.results[0].statistics.count == data["us-east-1"].size + data["ap-south-1"].size


async def test_unhealthy_instance_is_not_asked_and_named(mesh: Mesh) -> None:
    await three_regions(mesh)
    server, _ = mesh.regions["ap-south-1"][0]
    await server.set_serving(False)
    assert mesh.federation is not None
    inst = mesh.federation.registry.instances("ap-south-1")[0]
    await wait_for(lambda: inst.health is Health.NOT_SERVING)
    resp = await query(mesh)
    [missing] = resp.coverage.missing
    assert missing.region_id == "ap-south-1"
    assert missing.reason == coordinator_pb2.MISSING_REASON_UNHEALTHY
    await server.set_serving(True)
    await wait_for(lambda: inst.health is Health.SERVING)
    assert (await query(mesh)).coverage.complete


async def test_disjoint_instances_are_all_queried(mesh: Mesh) -> None:
    await add_region(mesh, "r1", instances=2)
    await mesh.ingest("r1", "m", np.ones(10), instance=0)
    await mesh.ingest("r1", "m", np.ones(5), instance=1)
    await add_coordinator(mesh)
    resp = await query(mesh)
    assert resp.results[0].statistics.count == 15
    assert (resp.coverage.instances_queried, resp.coverage.instances_answered) == (2, 2)
    await mesh.regions["r1"][1][0].server.stop(0)
    resp = await query(mesh, region_timeout_s=1.0)
    # one instance's data is never presented as the region's
    assert resp.results[0].statistics.count == 10
    assert not resp.coverage.complete
    assert list(resp.coverage.regions_answered) == ["r1"]
    [missing] = resp.coverage.missing
    assert missing.instance_id == "r1-1"


async def test_region_scope_replicas_fail_over_on_unavailable(mesh: Mesh) -> None:
    await add_region(mesh, "r1", instances=2, region_scope=True)
    for i in range(2):  # replicas fed the same stream
        await mesh.ingest("r1", "m", np.arange(1.0, 101.0), instance=i)
    fed = await add_coordinator(mesh)
    insts = fed.registry.instances("r1")
    await wait_for(lambda: all(i.region_scope for i in insts))
    for _ in range(4):  # each query asks exactly one replica
        resp = await query(mesh)
        assert resp.results[0].statistics.count == 100
        assert resp.coverage.instances_queried == 1 and resp.coverage.complete
    # stop both servers' first replica; keep the health view stale so the call itself fails
    await mesh.regions["r1"][0][0].server.stop(0)
    for _ in range(4):
        for inst in insts:
            inst.health = Health.SERVING
        resp = await query(mesh)
        assert resp.results[0].statistics.count == 100
        assert resp.coverage.complete


async def test_malformed_sketch_from_a_region_is_reported_not_merged(mesh: Mesh) -> None:
    await three_regions(mesh)

    class BrokenRegion(region_node_pb2_grpc.RegionNodeServiceServicer):
        async def GetSummaries(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
            bad = summary_pb2.Summary(
                moments=summary_pb2.Moments(count=5, sum=5, min=1, max=1, mean=1),
                histogram=summary_pb2.ExponentialHistogram(scale=99, max_buckets=160),
            )
            return region_node_pb2.GetSummariesResponse(
                series=[summary_pb2.SeriesSummary(metric="latency_ms", summary=bad)],
                region_id="evil-1",
            )

    broken = await start_server(
        [lambda s: region_node_pb2_grpc.add_RegionNodeServiceServicer_to_server(BrokenRegion(), s)],
        ["nethical_grpc.v1.RegionNodeService"],
    )
    try:
        assert mesh.federation is not None
        mesh.federation.registry.add("evil-1", broken.address)
        mesh.federation.registry.start()
        resp = await query(mesh)
        missing = {m.region_id: m.reason for m in resp.coverage.missing}
        assert missing == {"evil-1": coordinator_pb2.MISSING_REASON_INVALID_RESPONSE}
        assert len(resp.coverage.regions_answered) == 3
    finally:
        await broken.drain(0, 0)


async def test_list_regions_reports_health(mesh: Mesh) -> None:
    await three_regions(mesh)
    stub = coordinator_pb2_grpc.CoordinatorServiceStub(mesh.coordinator_channel())
    resp = await stub.ListRegions(coordinator_pb2.ListRegionsRequest(), timeout=5)
    assert [r.region_id for r in resp.regions] == ["ap-south-1", "eu-west-1", "us-east-1"]
    assert all(r.healthy for r in resp.regions)
    assert {r.instances[0].instance_id for r in resp.regions} == {
        "us-east-1-0",
        "eu-west-1-0",
        "ap-south-1-0",
    }
    # what each node said of itself when it turned SERVING
    assert {i.version for r in resp.regions for i in r.instances} == {__version__}
    assert not any(i.region_scope for r in resp.regions for i in r.instances)
    await mesh.regions["us-east-1"][0][0].server.stop(0)
    assert mesh.federation is not None
    inst = mesh.federation.registry.instances("us-east-1")[0]
    await wait_for(lambda: inst.health is Health.UNREACHABLE)
    resp = await stub.ListRegions(coordinator_pb2.ListRegionsRequest(), timeout=5)
    us = next(r for r in resp.regions if r.region_id == "us-east-1")
    assert not us.healthy
    assert us.instances[0].health == coordinator_pb2.INSTANCE_HEALTH_UNREACHABLE


async def test_accuracy_50_regions_heavy_tailed(mesh: Mesh) -> None:
    """Every global quantile is within the sketch bound of the pooled exact quantile,
    where per-region means would be far off."""
    rng = np.random.default_rng(50)
    latency, delta = [], []
    for i in range(50):
        region = f"region-{i:02d}"
        await add_region(mesh, region)
        lat = rng.lognormal(mean=rng.uniform(0, 3), sigma=0.5 + 2.5 * i / 49, size=4000)
        d = rng.standard_normal(4000) * rng.lognormal(0, 1.5, size=4000)
        d[rng.random(4000) < 0.2] = 0.0
        latency.append(lat)
        delta.append(d)
        await mesh.ingest(region, "latency_ms", lat)
        await mesh.ingest(region, "score_delta", d)
    await add_coordinator(mesh)
    qs = [0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999]
    resp = await query(mesh, quantiles=qs, timeout=30)
    assert resp.coverage.complete and len(resp.coverage.regions_answered) == 50
    by_metric = {r.metric: r.statistics for r in resp.results}
    for metric, parts in (("latency_ms", latency), ("score_delta", delta)):
        pooled = np.concatenate(parts)
        stats = by_metric[metric]
        assert stats.count == pooled.size
        for qv in stats.quantiles:
            exact = float(np.quantile(pooled, qv.quantile, method="lower"))
            assert within_bound(qv.value, exact, stats.relative_error), (metric, qv, exact)
    # what a naive aggregator does: percentiles of the regions' means
    pooled = np.concatenate(latency)
    naive = np.percentile([p.mean() for p in latency], 50)
    assert abs(naive - np.quantile(pooled, 0.5)) / np.quantile(pooled, 0.5) > 0.3


async def test_deadline_of_the_caller_bounds_the_fan_out(mesh: Mesh) -> None:
    await three_regions(mesh)
    started = time.monotonic()
    resp = await query(mesh, timeout=0.5)
    assert time.monotonic() - started < 0.5
    assert resp.coverage.complete


async def test_an_instance_listed_in_two_regions_is_refused() -> None:
    """A node serves one region: the same address under two regions is a configuration
    mistake, refused at start rather than leaving one region empty for good."""
    with pytest.raises(
        ValueError, match=r"127\.0\.0\.1:1 is listed in region 'a' and in region 'b'"
    ):
        await start_coordinator(
            CoordinatorConfig(regions={"a": ["127.0.0.1:1"], "b": ["127.0.0.1:2", "127.0.0.1:1"]})
        )
    # the same address twice in one region is one instance
    server, federation = await start_coordinator(
        CoordinatorConfig(regions={"a": ["127.0.0.1:1", "127.0.0.1:1"]})
    )
    try:
        assert [i.endpoint for i in federation.registry.all_instances()] == ["127.0.0.1:1"]
    finally:
        await server.drain(announce_s=0, grace_s=0)


async def test_an_address_that_never_works_says_why_once(caplog: pytest.LogCaptureFixture) -> None:
    """A host name that does not resolve: the coordinator logs the reason when it first
    sees it, not on every retry of the health stream."""
    caplog.set_level("WARNING", logger="nethical_grpc.health")
    server, federation = await start_coordinator(
        CoordinatorConfig(regions={"a": ["no-such-host.invalid:50051"]})
    )
    try:
        [inst] = federation.registry.all_instances()

        def said() -> list[str]:
            return [r.getMessage() for r in caplog.records if "no-such-host" in r.getMessage()]

        await wait_for(lambda: inst.health is Health.UNREACHABLE and bool(said()), 10.0)
        await asyncio.sleep(1.0)  # several retries of the stream (backoff from 50 ms)
        [message] = said()
        assert message.startswith("health of no-such-host.invalid:50051")
        assert "UNAVAILABLE" in message
    finally:
        await server.drain(announce_s=0, grace_s=0)


@pytest.mark.parametrize("transport", [SummaryTransport.STREAM, SummaryTransport.UNARY])
async def test_totals_that_cancel_across_regions_stay_exact(
    mesh: Mesh, transport: SummaryTransport
) -> None:
    """Each region's sum travels with its compensation (what rounding it to one double
    left out): 1e16 + 1 in one region and -1e16 in another add up to 1, not 0."""
    await add_region(mesh, "a")
    await add_region(mesh, "b")
    await mesh.ingest("a", "m", np.array([1e16, 1.0]))
    await mesh.ingest("b", "m", np.array([-1e16]))
    spec = {r: [s.address for s, _ in mesh.regions[r]] for r in ("a", "b")}
    server, federation = await start_coordinator(
        CoordinatorConfig(regions=spec, summary_transport=transport)
    )
    try:
        assert await federation.registry.wait_ready(10.0)
        resp = await client.global_metrics(
            mesh.channel(server.address), client.QueryOptions(metrics=("m",)), timeout=10
        )
    finally:
        await server.drain(announce_s=0, grace_s=0)
    stats = resp.results[0].statistics
    assert (stats.count, stats.sum) == (3, 1.0)
    assert stats.mean == pytest.approx(1 / 3, rel=1e-15)


@pytest.mark.parametrize("transport", [SummaryTransport.STREAM, SummaryTransport.UNARY])
async def test_a_region_that_answers_without_part_of_its_data_is_named_incomplete(
    mesh: Mesh, transport: SummaryTransport
) -> None:
    """Region "b" started while its PostgreSQL did not answer (nothing listens on port
    1): it keeps its windows in memory, so what it flushed there before its start is
    left out. Its answers about that time name the gap; the coordinator merges what it
    sent, counts the region as answered and the coverage as incomplete, saying why. A
    query from the first window after its start is complete; one from within the start's
    window is not (that window holds what was flushed before the start)."""
    await add_region(mesh, "a")
    await add_region(
        mesh, "b", stores=StoreConfig(timeseries_url="postgresql://postgres@127.0.0.1:1/test")
    )
    started_ns = time.time_ns()
    await mesh.ingest("a", "m", np.arange(10.0))
    await mesh.ingest("b", "m", np.arange(5.0))
    node = region_node_pb2_grpc.RegionNodeServiceStub(mesh.channel(mesh.regions["b"][0][0].address))
    answer = await node.GetSummaries(region_node_pb2.GetSummariesRequest(), timeout=10)
    [gap] = answer.gaps
    assert gap.reason == "STORE_FALLBACK"
    assert not gap.HasField("start_time")
    assert convert.timestamp_to_ns(gap.end_time) <= started_ns
    assert "postgresql://" in gap.message
    info = await node.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=10)
    assert list(info.gaps) == [gap]  # what the node leaves out, whatever the range
    spec = {r: [s.address for s, _ in mesh.regions[r]] for r in ("a", "b")}
    server, federation = await start_coordinator(
        CoordinatorConfig(regions=spec, summary_transport=transport)
    )
    try:
        assert await federation.registry.wait_ready(10.0)
        channel = mesh.channel(server.address)
        resp = await client.global_metrics(channel, client.QueryOptions(metrics=("m",)), timeout=10)
        window_ns = WindowConfig().window_ns
        after = -(-started_ns // window_ns) * window_ns
        since = await client.global_metrics(
            channel, client.QueryOptions(metrics=("m",), start_ns=after), timeout=10
        )
        within = await client.global_metrics(
            channel, client.QueryOptions(metrics=("m",), start_ns=after - 1), timeout=10
        )
    finally:
        await server.drain(announce_s=0, grace_s=0)
    assert resp.results[0].statistics.count == 15
    c = resp.coverage
    assert sorted(c.regions_answered) == ["a", "b"]
    assert (c.instances_queried, c.instances_answered) == (2, 2)
    assert not c.complete
    [part] = c.missing
    assert (part.region_id, part.instance_id) == ("b", "b-0")
    assert part.reason == coordinator_pb2.MISSING_REASON_INCOMPLETE
    assert part.message.startswith("STORE_FALLBACK: the time-series store postgresql://")
    assert "incomplete b/b-0: STORE_FALLBACK" in coverage_line(c)
    assert since.coverage.complete and not since.coverage.missing
    assert not within.coverage.complete
    assert [(p.region_id, p.reason) for p in within.coverage.missing] == [
        ("b", coordinator_pb2.MISSING_REASON_INCOMPLETE)
    ]
