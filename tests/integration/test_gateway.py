"""The coordinator as a gateway over real region nodes: routing, health, errors, figures."""

from __future__ import annotations

import collections
from typing import Any

import grpc
import pytest
from meshutil import Mesh, add_region, wait_for

from coordinator.gateway_config import GatewayConfig
from coordinator.instances import Health
from coordinator.server import CoordinatorConfig, start_coordinator
from nethical_grpc.errors import details_from_error
from nethical_grpc.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    governance_pb2,
    region_node_pb2,
    region_node_pb2_grpc,
)

BENIGN = "SELECT title FROM books WHERE id = 42"


def action(request_id: str = "", agent: str = "agent-1") -> governance_pb2.AgentAction:
    return governance_pb2.AgentAction(
        agent_id=agent, action_text=BENIGN, action_type="query", request_id=request_id
    )


async def start_gateway(mesh: Mesh, **settings: Any) -> coordinator_pb2_grpc.CoordinatorServiceStub:
    spec = {r: [s.address for s, _ in servers] for r, servers in mesh.regions.items()}
    mesh.coordinator, mesh.federation = await start_coordinator(
        CoordinatorConfig(regions=spec, gateway=GatewayConfig(**settings))
    )
    assert await mesh.federation.registry.wait_ready(10.0)
    return coordinator_pb2_grpc.CoordinatorServiceStub(mesh.coordinator_channel())


async def evaluate(
    stub: coordinator_pb2_grpc.CoordinatorServiceStub, region_id: str = "", request_id: str = ""
) -> coordinator_pb2.CoordinatorServiceEvaluateResponse:
    return await stub.Evaluate(
        coordinator_pb2.CoordinatorServiceEvaluateRequest(
            action=action(request_id), region_id=region_id
        ),
        timeout=10,
    )


async def served_by(stub: coordinator_pb2_grpc.CoordinatorServiceStub, n: int, **kw: str) -> Any:
    return collections.Counter(
        [(await evaluate(stub, **kw)).evaluation.instance_id for _ in range(n)]
    )


async def evaluations_recorded(mesh: Mesh, region: str, instance: int) -> int:
    """How many evaluations the node itself counted (its risk_score metric)."""
    server, _ = mesh.regions[region][instance]
    node = region_node_pb2_grpc.RegionNodeServiceStub(mesh.channel(server.address))
    resp = await node.GetSummaries(
        region_node_pb2.GetSummariesRequest(metrics=["risk_score"]), timeout=5
    )
    return sum(s.summary.moments.count for s in resp.series)


def view(mesh: Mesh, region: str, instance: int) -> Any:
    assert mesh.federation is not None
    server, _ = mesh.regions[region][instance]
    [found] = [
        v
        for v in mesh.federation.registry.instances(region)
        if v.endpoint.endswith(f":{server.port}")
    ]
    return found


async def test_evaluate_is_spread_and_names_who_served(mesh: Mesh) -> None:
    await add_region(mesh, "r1", instances=3)
    stub = await start_gateway(mesh, strategy="round_robin")
    answers = [await evaluate(stub, request_id=f"req-{i}") for i in range(30)]
    assert [a.evaluation.request_id for a in answers] == [f"req-{i}" for i in range(30)]
    assert all(a.evaluation.region_id == "r1" and a.attempts == 1 for a in answers)
    counts = collections.Counter(a.evaluation.instance_id for a in answers)
    assert counts == {"r1-0": 10, "r1-1": 10, "r1-2": 10}
    ports = {a.evaluation.instance_id: a.endpoint for a in answers}
    for i, (server, _) in enumerate(mesh.regions["r1"]):
        assert ports[f"r1-{i}"] == server.address
        assert await evaluations_recorded(mesh, "r1", i) == 10


async def test_not_serving_instance_gets_no_new_requests(mesh: Mesh) -> None:
    await add_region(mesh, "r1", instances=3)
    stub = await start_gateway(mesh, strategy="least_connections")
    assert set(await served_by(stub, 12)) == {"r1-0", "r1-1", "r1-2"}
    server, _ = mesh.regions["r1"][1]
    before = await evaluations_recorded(mesh, "r1", 1)
    await server.set_serving(False)
    inst = view(mesh, "r1", 1)
    await wait_for(lambda: inst.health is Health.NOT_SERVING)  # the Watch update arrived
    counts = await served_by(stub, 40)
    assert "r1-1" not in counts and sum(counts.values()) == 40
    assert await evaluations_recorded(mesh, "r1", 1) == before
    regions = await stub.ListRegions(coordinator_pb2.ListRegionsRequest(), timeout=5)
    [info] = [i for i in regions.regions[0].instances if i.instance_id == "r1-1"]
    assert info.health == coordinator_pb2.INSTANCE_HEALTH_NOT_SERVING and not info.routable
    await server.set_serving(True)
    await wait_for(lambda: inst.health is Health.SERVING)
    assert "r1-1" in await served_by(stub, 30)


async def test_node_invalid_argument_passes_through_unchanged(mesh: Mesh) -> None:
    await add_region(mesh, "r1", instances=2)
    stub = await start_gateway(mesh, strategy="round_robin")
    bad = governance_pb2.AgentAction(agent_id="", action_text="", request_id="x" * 500)
    with pytest.raises(grpc.aio.AioRpcError) as via_gateway:
        await stub.Evaluate(
            coordinator_pb2.CoordinatorServiceEvaluateRequest(action=bad), timeout=5
        )
    server, _ = mesh.regions["r1"][0]
    node = region_node_pb2_grpc.RegionNodeServiceStub(mesh.channel(server.address))
    with pytest.raises(grpc.aio.AioRpcError) as direct:
        await node.Evaluate(region_node_pb2.EvaluateRequest(action=bad), timeout=5)
    got, want = details_from_error(via_gateway.value), details_from_error(direct.value)
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT
    assert (got.message, got.field_violations, got.reason) == (
        want.message,
        want.field_violations,
        want.reason,
    )
    assert len(got.field_violations) >= 2  # every problem at once, as the node said
    assert mesh.federation is not None
    total = mesh.federation.registry.balancer.get_statistics()["total"]
    assert (total["requests"], total["retries"], total["failed_calls"]) == (1, 0, 1)
    assert total["ejected_instances"] == 0


async def test_unknown_region_is_invalid_argument(mesh: Mesh) -> None:
    await add_region(mesh, "r1")
    stub = await start_gateway(mesh)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await evaluate(stub, region_id="nowhere-1")
    details = details_from_error(info.value)
    assert details.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details.field_violations] == ["region_id"]
    assert details.metadata["known_regions"] == "r1"
    # the region is shown JSON-quoted, not as a Python repr
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await evaluate(stub, region_id="it's\x01")
    details = details_from_error(info.value)
    assert details.field_violations[0].description == 'unknown region "it\'s\\u0001"'


async def test_region_aware_follows_the_configured_order(mesh: Mesh) -> None:
    for region in ("eu-west-1", "us-east-1", "us-east-2"):
        await add_region(mesh, region)
    stub = await start_gateway(
        mesh,
        strategy="region_aware",
        local_region="us-east-1",
        proximity={"us-east-1": ["us-east-2", "eu-west-1"]},
    )
    assert set(await served_by(stub, 6)) == {"us-east-1-0"}  # no region: the local one
    assert set(await served_by(stub, 6, region_id="eu-west-1")) == {"eu-west-1-0"}
    order = []
    for region in ("us-east-1", "us-east-2"):
        server, _ = mesh.regions[region][0]
        await server.set_serving(False)
        inst = view(mesh, region, 0)
        await wait_for(lambda inst=inst: inst.health is Health.NOT_SERVING)
        order.append(set(await served_by(stub, 6, region_id="us-east-1")))
    assert order == [{"us-east-2-0"}, {"eu-west-1-0"}]
    regions = await stub.ListRegions(coordinator_pb2.ListRegionsRequest(), timeout=5)
    assert regions.strategy == coordinator_pb2.BALANCING_STRATEGY_REGION_AWARE
    assert regions.local_region == "us-east-1"


async def test_list_regions_shows_the_balancer_figures(mesh: Mesh) -> None:
    await add_region(mesh, "r1", instances=2)
    stub = await start_gateway(mesh, strategy="round_robin")
    await served_by(stub, 10)
    resp = await stub.ListRegions(coordinator_pb2.ListRegionsRequest(), timeout=5)
    assert resp.strategy == coordinator_pb2.BALANCING_STRATEGY_ROUND_ROBIN
    [region] = resp.regions
    assert region.healthy
    for info in region.instances:
        assert info.health == coordinator_pb2.INSTANCE_HEALTH_SERVING and info.routable
        assert (info.requests, info.failures, info.error_rate, info.in_flight) == (5, 0, 0.0, 0)
        assert info.HasField("ewma_latency") and info.ewma_latency.ToNanoseconds() > 0
        assert not info.ejected and not info.HasField("ejected_for")
        assert info.weight == 1 and info.resolved_from == ""


async def mark_not_serving(mesh: Mesh, region: str, instance: int = 0) -> None:
    """The instance reports NOT_SERVING, and the coordinator knows it."""
    server, _ = mesh.regions[region][instance]
    await server.set_serving(False)
    inst = view(mesh, region, instance)
    await wait_for(lambda: inst.health is Health.NOT_SERVING)


@pytest.mark.parametrize("strategy", ["region_aware", "round_robin"])
async def test_a_call_that_stays_in_its_region_is_never_evaluated_elsewhere(
    mesh: Mesh, strategy: str
) -> None:
    for region in ("eu-west-1", "us-east-1"):
        await add_region(mesh, region, instances=2)
    stub = await start_gateway(mesh, strategy=strategy)

    async def stay(region_id: str) -> coordinator_pb2.CoordinatorServiceEvaluateResponse:
        return await stub.Evaluate(
            coordinator_pb2.CoordinatorServiceEvaluateRequest(
                action=action(), region_id=region_id, stay_in_region=True
            ),
            timeout=10,
        )

    # while the region has an instance, its other one takes the calls
    await mark_not_serving(mesh, "eu-west-1", 0)
    answers = [await stay("eu-west-1") for _ in range(6)]
    assert {a.evaluation.instance_id for a in answers} == {"eu-west-1-1"}
    # with none left the call fails, and nothing is evaluated in the other region
    await mark_not_serving(mesh, "eu-west-1", 1)
    before = [await evaluations_recorded(mesh, "us-east-1", i) for i in range(2)]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stay("eu-west-1")
    details = details_from_error(info.value)
    assert details.code is grpc.StatusCode.UNAVAILABLE
    assert details.reason == "NO_HEALTHY_INSTANCE"
    assert details.metadata == {"region_id": "eu-west-1", "stay_in_region": "true"}
    assert '"eu-west-1"' in details.message and "stays in its region" in details.message
    assert [await evaluations_recorded(mesh, "us-east-1", i) for i in range(2)] == before
    # without it, the same call goes to the other region, as before
    assert (await evaluate(stub, region_id="eu-west-1")).evaluation.region_id == "us-east-1"


async def test_a_coordinator_that_keeps_every_call_in_its_region(mesh: Mesh) -> None:
    for region in ("eu-west-1", "us-east-1"):
        await add_region(mesh, region)
    stub = await start_gateway(mesh, local_region="eu-west-1", stay_in_region=True)
    regions = await stub.ListRegions(coordinator_pb2.ListRegionsRequest(), timeout=5)
    assert regions.stay_in_region and regions.local_region == "eu-west-1"
    assert (await evaluate(stub)).evaluation.region_id == "eu-west-1"
    await mark_not_serving(mesh, "eu-west-1")
    for region_id in ("", "eu-west-1"):  # the local region, or named
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await evaluate(stub, region_id=region_id)
        assert details_from_error(info.value).reason == "NO_HEALTHY_INSTANCE"
    assert (await evaluate(stub, region_id="us-east-1")).evaluation.region_id == "us-east-1"


async def test_staying_in_a_region_needs_a_region(mesh: Mesh) -> None:
    await add_region(mesh, "r1")
    stub = await start_gateway(mesh)  # no local region
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Evaluate(
            coordinator_pb2.CoordinatorServiceEvaluateRequest(action=action(), stay_in_region=True),
            timeout=5,
        )
    details = details_from_error(info.value)
    assert details.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details.field_violations] == ["region_id"]
    regions = await stub.ListRegions(coordinator_pb2.ListRegionsRequest(), timeout=5)
    assert not regions.stay_in_region


async def test_a_callers_short_deadline_does_not_eject_a_healthy_instance(mesh: Mesh) -> None:
    """Calls whose own deadline is a few milliseconds miss it; that says nothing of the
    node, which stays routable (three such misses ejected it, and region_aware then sent
    every other caller's actions for its region to another region)."""
    await add_region(mesh, "a")
    await add_region(mesh, "b")
    stub = await start_gateway(mesh, strategy="region_aware")
    slow = governance_pb2.AgentAction(
        agent_id="agent-1", action_text=f"{BENIGN} " * 1500, action_type="query"
    )
    codes = []
    for _ in range(8):
        try:
            await stub.Evaluate(
                coordinator_pb2.CoordinatorServiceEvaluateRequest(action=slow, region_id="a"),
                timeout=0.008,
            )
        except grpc.aio.AioRpcError as err:
            codes.append(err.code())
    assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED} and len(codes) >= 3
    a = view(mesh, "a", 0)
    stats = mesh.federation.registry.balancer.get_statistics()["instances"][a.endpoint]  # type: ignore[union-attr]
    assert (stats["failures"], stats["ejected"]) == (0, False), stats
    assert (await evaluate(stub, region_id="a")).evaluation.region_id == "a"
