"""Federation coverage over real region nodes: one node listed at two addresses is merged
once, and the instances skipped as unhealthy are counted the same way on every path."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from meshutil import Mesh, add_coordinator, add_region, wait_for

from coordinator.federation import Federation, GlobalQuery
from coordinator.instances import Health, InstanceRegistry
from coordinator.server import CoordinatorConfig, start_coordinator
from nethical_grpc.series import SummaryQuery


async def test_a_node_listed_at_two_addresses_is_counted_once(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    """Two addresses of one node (a host name that resolves to 127.0.0.1 and ::1, say)
    are two instances to the coordinator, and both answer: the node's id says they are
    one node, and its data is merged once (it was merged twice)."""
    [(eu, _)] = await add_region(mesh, "eu", evaluate=False)
    await add_region(mesh, "us", evaluate=False)
    await mesh.ingest("eu", "m", np.array([1.0, 2.0, 3.0]))
    await mesh.ingest("us", "m", np.array([4.0, 5.0]))
    port = eu.address.rpartition(":")[2]
    twice = [f"127.0.0.1:{port}", f"localhost:{port}"]
    spec = {"eu": twice, "us": [mesh.regions["us"][0][0].address]}
    mesh.coordinator, mesh.federation = await start_coordinator(CoordinatorConfig(spec))
    federation = mesh.federation
    assert await federation.registry.wait_ready(10.0)
    assert len(federation.registry.instances("eu")) == 2
    caplog.set_level(logging.WARNING, logger="coordinator.federation")
    for _ in range(2):
        result = await federation.global_metrics(GlobalQuery(SummaryQuery()))
        assert [g.summary.count for g in result.groups] == [5]
        c = result.coverage
        assert c.complete and sorted(c.regions_answered) == ["eu", "us"]
        assert (c.instances_queried, c.instances_answered) == (2, 2)
    [warning] = [r.getMessage() for r in caplog.records if "eu-0" in r.getMessage()]
    assert all(address in warning for address in twice)


async def test_replicas_skipped_as_unhealthy_are_counted_as_queried(mesh: Mesh) -> None:
    """Coverage.instances_queried is the instances asked plus those skipped as
    unhealthy: a region of replicas counts its unhealthy replica as a region of disjoint
    instances does (it left it out)."""
    await add_region(mesh, "eu", instances=2, region_scope=True, evaluate=False)
    await add_region(mesh, "us", instances=2, evaluate=False)
    for region in ("eu", "us"):
        for i in range(2):
            await mesh.ingest(region, "m", np.array([1.0, 2.0, 3.0]), instance=i)
    federation = await add_coordinator(mesh)
    eu = federation.registry.instances("eu")
    await wait_for(lambda: all(i.region_scope for i in eu))
    down = [mesh.regions[r][0][0] for r in ("eu", "us")]
    for server in down:
        await server.set_serving(False)
    addresses = {server.address for server in down}
    insts = [i for i in federation.registry.all_instances() if i.endpoint in addresses]
    await wait_for(lambda: all(i.health is Health.NOT_SERVING for i in insts))
    result = await federation.global_metrics(GlobalQuery(SummaryQuery(), regions=("eu",)))
    assert [g.summary.count for g in result.groups] == [3]
    assert result.coverage.complete  # a replica holds the whole region
    assert (result.coverage.instances_queried, result.coverage.instances_answered) == (2, 1)
    result = await federation.global_metrics(GlobalQuery(SummaryQuery(), regions=("us",)))
    assert [g.summary.count for g in result.groups] == [3]
    assert not result.coverage.complete  # the unhealthy instance's data is left out
    assert (result.coverage.instances_queried, result.coverage.instances_answered) == (2, 1)


async def test_an_unhealthy_replica_not_yet_known_as_one_is_counted_as_queried(
    mesh: Mesh,
) -> None:
    """Before the replicas' scope is known they are asked as disjoint instances; the
    region's answer then comes from one of them, and the one skipped as unhealthy is
    still counted."""
    await add_region(mesh, "eu", instances=3, region_scope=True, evaluate=False)
    for i in range(3):
        await mesh.ingest("eu", "m", np.array([1.0, 2.0, 3.0]), instance=i)
    registry = InstanceRegistry({"eu": [s.address for s, _ in mesh.regions["eu"]]})
    try:  # no health watching started: health is what the test sets
        federation = Federation(registry)
        registry.instances("eu")[0].health = Health.NOT_SERVING
        assert not any(i.region_scope for i in registry.instances("eu"))
        result = await federation.global_metrics(GlobalQuery(SummaryQuery()))
        assert [g.summary.count for g in result.groups] == [3]
        assert result.coverage.complete
        assert (result.coverage.instances_queried, result.coverage.instances_answered) == (2, 1)
    finally:
        await registry.close()
