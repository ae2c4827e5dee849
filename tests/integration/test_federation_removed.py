"""A region whose every replica leaves the registry while a global query is on its way to
them is reported missing, not silently left out of both lists."""

from __future__ import annotations

import asyncio

import numpy as np
from meshutil import Mesh, add_coordinator, add_region

from coordinator.federation import GlobalQuery, Missing
from nethical_grpc.series import SummaryQuery


async def test_replicas_removed_before_they_are_asked_leave_their_region_missing(
    mesh: Mesh,
) -> None:
    await add_region(mesh, "eu", instances=2, region_scope=True, evaluate=False)
    await add_region(mesh, "us", evaluate=False)
    await mesh.ingest("eu", "m", np.array([1.0, 2.0]))
    await mesh.ingest("us", "m", np.array([3.0]))
    federation = await add_coordinator(mesh)
    assert all(i.region_scope for i in federation.registry.instances("eu"))
    first = await federation.global_metrics(GlobalQuery(SummaryQuery()))
    assert sorted(first.coverage.regions_answered) == ["eu", "us"]

    # the query takes its view of the registry, then (before its region tasks run) both
    # replicas are removed, as a DNS refresh or an operator would
    query = asyncio.ensure_future(
        federation.global_metrics(GlobalQuery(SummaryQuery(), regions=("eu", "us")))
    )
    await asyncio.sleep(0)
    for server, _ in mesh.regions["eu"]:
        assert federation.registry.remove(server.address)
    result = await query

    coverage = result.coverage
    assert coverage.regions_answered == ["us"]
    assert [g.summary.count for g in result.groups] == [1]
    assert not coverage.complete
    eu = [m for m in coverage.missing if m.region_id == "eu"]
    assert len(eu) == 1, coverage.missing
    assert eu[0].reason is Missing.UNAVAILABLE
    assert "removed" in eu[0].message
