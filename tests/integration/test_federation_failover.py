"""Federation over replicas that each hold the whole region (``--region-scope``): a broken
replica is failed over, and two replicas' answers are never merged.

Real servers on loopback; the faulty replica is a small servicer that behaves as the
fault does (its stream ends with INTERNAL, the status grpc.aio gives a call whose write
failed on a dead connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from meshutil import Mesh, add_coordinator, add_region, serve_region_servicer, wait_for

from coordinator.federation import Federation, GlobalQuery, SummaryTransport
from coordinator.instances import InstanceRegistry
from coordinator.server import CoordinatorConfig, start_coordinator
from coordinator.summary_stream import SummaryCallError, SummaryStream
from nethical_grpc import client
from nethical_grpc.series import SummaryQuery
from nethical_grpc.server_runtime import MeshServer
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc

Request = region_node_pb2.GetSummariesRequest
Context = grpc.aio.ServicerContext[object, object]


class _BreakingReplica(region_node_pb2_grpc.RegionNodeServiceServicer):
    """A region-scope replica whose summary stream ends with INTERNAL once a query is on
    it (what a node killed mid-query looks like from the coordinator's side)."""

    def __init__(self, region_id: str) -> None:
        self.region_id = region_id
        self.queries = 0

    async def GetNodeInfo(  # noqa: N802
        self, request: region_node_pb2.GetNodeInfoRequest, context: Context
    ) -> region_node_pb2.GetNodeInfoResponse:
        return region_node_pb2.GetNodeInfoResponse(
            region_id=self.region_id,
            instance_id=f"{self.region_id}-broken",
            scope=region_node_pb2.DATA_SCOPE_REGION,
        )

    async def StreamSummaries(  # noqa: N802
        self,
        request_iterator: AsyncIterator[region_node_pb2.StreamSummariesRequest],
        context: Context,
    ) -> AsyncIterator[region_node_pb2.StreamSummariesResponse]:
        async for _ in request_iterator:
            self.queries += 1
            await context.abort(grpc.StatusCode.INTERNAL, "Internal error from Core")
        if False:  # pragma: no cover (an async generator that yields nothing)
            yield region_node_pb2.StreamSummariesResponse()


@pytest.fixture
async def breaking(mesh: Mesh) -> AsyncIterator[tuple[MeshServer, _BreakingReplica]]:
    replica = _BreakingReplica("eu")
    server = await serve_region_servicer(replica)
    yield server, replica
    await server.drain(0, 0)


async def test_a_stream_that_ends_with_internal_fails_its_queries_as_unavailable(
    mesh: Mesh, breaking: tuple[MeshServer, _BreakingReplica]
) -> None:
    server, _ = breaking
    channel = mesh.channel(server.address)
    stream = SummaryStream(lambda: channel)
    try:
        with pytest.raises(SummaryCallError) as err:
            await stream.query(Request(), 5.0)
        # the stream's own status, not an answer to the query: another replica may answer
        assert err.value.code is grpc.StatusCode.UNAVAILABLE
        assert "INTERNAL" in err.value.details
    finally:
        await stream.close()


async def test_a_replica_whose_stream_breaks_is_failed_over(
    mesh: Mesh, breaking: tuple[MeshServer, _BreakingReplica]
) -> None:
    server, replica = breaking
    await add_region(mesh, "eu", region_scope=True, evaluate=False)
    await mesh.ingest("eu", "m", np.array([5.0, 5.0, 5.0]))
    mesh.regions["eu"].insert(0, (server, None))  # type: ignore[arg-type]
    federation = await add_coordinator(mesh)
    assert all(i.region_scope for i in federation.registry.instances("eu"))
    for _ in range(4):  # round robin: the broken replica is asked first every other time
        result = await federation.global_metrics(GlobalQuery(SummaryQuery()))
        assert result.coverage.regions_answered == ["eu"], result.coverage.missing
        assert result.coverage.missing == []
        assert [g.summary.count for g in result.groups] == [3]
    assert replica.queries >= 1  # it was asked, and its failure failed over
    mesh.regions["eu"].pop(0)  # drained by the fixture


async def test_replicas_not_yet_known_as_region_scope_are_not_counted_twice(mesh: Mesh) -> None:
    """Right after the coordinator starts, before health and identity arrive: the replicas
    look like instances of disjoint data, and both are asked; their answers say they hold
    the whole region, so one of them is the region's answer."""
    await add_region(mesh, "eu", instances=2, region_scope=True, evaluate=False)
    for i in range(2):  # the same region data on both (a shared store, as far as asked)
        await mesh.ingest("eu", "m", np.array([10.0, 20.0, 30.0]), instance=i)
    registry = InstanceRegistry({"eu": [s.address for s, _ in mesh.regions["eu"]]})
    try:  # no health watching started: health stays UNKNOWN, scope unknown
        federation = Federation(registry)
        assert not any(i.region_scope for i in registry.instances("eu"))
        first = await federation.global_metrics(GlobalQuery(SummaryQuery()))
        assert [g.summary.count for g in first.groups] == [3]
        assert first.coverage.regions_answered == ["eu"] and first.coverage.complete
        assert (first.coverage.instances_queried, first.coverage.instances_answered) == (1, 1)
        # learned from the answer: the next query asks one replica
        assert any(i.region_scope for i in registry.instances("eu"))
        second = await federation.global_metrics(GlobalQuery(SummaryQuery()))
        assert [g.summary.count for g in second.groups] == [3]
    finally:
        await registry.close()


async def test_each_region_asks_its_replicas_in_turn(mesh: Mesh) -> None:
    """Two regions of two region-scope replicas each: every replica is asked, about as
    often as the other of its region (a counter shared by the regions had each region
    ask one replica every time)."""
    for region in ("eu", "us"):
        await add_region(mesh, region, instances=2, region_scope=True, evaluate=False)
    spec = {r: [s.address for s, _ in mesh.regions[r]] for r in ("eu", "us")}
    mesh.coordinator, mesh.federation = await start_coordinator(CoordinatorConfig(spec))
    federation = mesh.federation
    assert await federation.registry.wait_ready(10.0)
    assert all(i.region_scope for r in spec for i in federation.registry.instances(r))
    for _ in range(8):
        result = await federation.global_metrics(GlobalQuery(SummaryQuery()))
        assert result.coverage.complete and result.coverage.instances_answered == 2
    stats = federation.registry.balancer.get_statistics()["instances"]
    assert {a: stats[a]["requests"] for r in spec for a in spec[r]} == {
        a: 4 for r in spec for a in spec[r]
    }


async def test_a_replica_that_answers_for_itself_only_is_not_taken_as_the_region(
    mesh: Mesh,
) -> None:
    """The coordinator still takes both instances for replicas of the whole region, but
    they restarted without --region-scope: each answer says it holds its own data only.
    The other replica is asked at once; when none answers for the region, the answer is
    kept and the coverage says it is incomplete, instead of presenting one instance's
    data as the region's."""
    await add_region(mesh, "eu", instances=2, evaluate=False)
    for i in range(2):
        await mesh.ingest("eu", "m", np.array([1.0, 2.0, 3.0]), instance=i)
    registry = InstanceRegistry({"eu": [s.address for s, _ in mesh.regions["eu"]]})
    try:
        for view in registry.instances("eu"):
            view.region_scope = True  # as known before the restart
        federation = Federation(registry)
        result = await federation.global_metrics(GlobalQuery(SummaryQuery()))
        assert [g.summary.count for g in result.groups] == [3]  # one instance's answer
        assert not result.coverage.complete
        [missing] = result.coverage.missing
        assert missing.reason.value == "incomplete" and "own data only" in missing.message
        # learned from the answers: the next query asks both, and merges them
        again = await federation.global_metrics(GlobalQuery(SummaryQuery()))
        assert [g.summary.count for g in again.groups] == [6] and again.coverage.complete
    finally:
        await registry.close()


class _HungReplica(_BreakingReplica):
    """A region-scope replica that takes summary queries and never answers (a node that
    stopped running: its health stream stays open and says SERVING)."""

    async def StreamSummaries(  # noqa: N802
        self,
        request_iterator: AsyncIterator[region_node_pb2.StreamSummariesRequest],
        context: Context,
    ) -> AsyncIterator[region_node_pb2.StreamSummariesResponse]:
        async for _ in request_iterator:
            self.queries += 1
        if False:  # pragma: no cover (an async generator that yields nothing)
            yield region_node_pb2.StreamSummariesResponse()


async def test_a_hung_replica_is_hedged_and_then_ejected(mesh: Mesh) -> None:
    """The try at a replica that does not answer gets half the region timeout; then the
    other replica is asked and its answer wins. The timeouts are reported to the balancer,
    which ejects the hung replica, so it is not asked first any more."""
    hung = _HungReplica("eu")
    server = await serve_region_servicer(hung)
    try:
        await add_region(mesh, "eu", region_scope=True, evaluate=False)
        await mesh.ingest("eu", "m", np.array([5.0, 5.0, 5.0]))
        spec = {"eu": [server.address, mesh.regions["eu"][0][0].address]}
        mesh.coordinator, mesh.federation = await start_coordinator(CoordinatorConfig(spec))
        federation = mesh.federation
        assert await federation.registry.wait_ready(10.0)
        assert all(i.region_scope for i in federation.registry.instances("eu"))
        loop = asyncio.get_running_loop()
        region_timeout_s = 2.0
        took = []
        for _ in range(8):
            t0 = loop.time()
            result = await federation.global_metrics(
                GlobalQuery(SummaryQuery(), region_timeout_s=region_timeout_s)
            )
            took.append(loop.time() - t0)
            assert result.coverage.complete, result.coverage.missing
            assert [g.summary.count for g in result.groups] == [3]  # one answer, not two
        assert hung.queries >= 1
        # every query answered before the region timeout (before: every other one missed
        # the region after the whole 2 s), the hedged ones at about half of it
        assert max(took) < 0.9 * region_timeout_s, took
        stats = federation.registry.balancer.get_statistics()["instances"][server.address]
        assert stats["failures"] >= 3 and stats["in_flight"] == 0, stats
        assert stats["ejected"]  # asked last from now on
        t0 = loop.time()
        await federation.global_metrics(GlobalQuery(SummaryQuery()))
        assert loop.time() - t0 < 0.25 * region_timeout_s  # not hedged: asked the other
    finally:
        await server.drain(0, 0)


async def test_a_replica_removed_during_a_query_is_not_asked(mesh: Mesh) -> None:
    """Two region-scope replicas, the first hung: while a query waits on it, the second
    leaves the registry (DNS stopped resolving to it). The query does not turn to it, nor
    open a channel to it that nothing would close."""
    hung, other = _HungReplica("eu"), _HungReplica("eu")
    servers = [await serve_region_servicer(hung), await serve_region_servicer(other)]
    registry = InstanceRegistry({"eu": [s.address for s in servers]})
    try:
        views = {v.endpoint: v for v in registry.instances("eu")}
        for view in views.values():
            view.region_scope = True
        federation = Federation(registry)
        query = asyncio.ensure_future(
            federation.global_metrics(GlobalQuery(SummaryQuery(), region_timeout_s=1.0))
        )
        await wait_for(lambda: hung.queries + other.queries == 1)
        asked, left = (0, 1) if hung.queries else (1, 0)
        removed = views[servers[left].address]
        assert registry.remove(removed.endpoint)
        result = await query
        assert [hung, other][left].queries == 0 and not removed.inst.has_channel
        assert [(m.instance_id, m.reason.value) for m in result.coverage.missing] == [
            (views[servers[asked].address].name, "deadline_exceeded")
        ]
    finally:
        await registry.close()
        for server in servers:
            await server.drain(0, 0)


async def test_a_query_in_flight_when_the_coordinator_drains_answers_partially(
    mesh: Mesh,
) -> None:
    """Its region timeout (8 s) outlasts the drain's grace (1 s): it stops waiting for the
    hung region just before the server's stop and answers with the region that answered
    (before: the stop cancelled it, UNAVAILABLE "Cancelling all calls")."""
    hung = _HungReplica("hung")
    server = await serve_region_servicer(hung)
    try:
        await add_region(mesh, "us", evaluate=False)
        await mesh.ingest("us", "m", np.array([1.0, 2.0, 3.0]))
        spec = {"us": [mesh.regions["us"][0][0].address], "hung": [server.address]}
        mesh.coordinator, mesh.federation = await start_coordinator(CoordinatorConfig(spec))
        assert await mesh.federation.registry.wait_ready(10.0)
        channel = mesh.coordinator_channel()
        query = asyncio.ensure_future(
            client.global_metrics(
                channel, client.QueryOptions(region_timeout_s=8.0, include_region_breakdown=True)
            )
        )
        await wait_for(lambda: hung.queries > 0)  # the query waits for the hung region
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await mesh.coordinator.drain(announce_s=0, grace_s=1.0)
        response = await query
        assert loop.time() - t0 < 5.0
        assert list(response.coverage.regions_answered) == ["us"]
        assert [m.region_id for m in response.coverage.missing] == ["hung"]
        assert (response.coverage.instances_queried, response.coverage.instances_answered) == (
            2,
            1,
        )
        assert [r.statistics.count for r in response.results] == [3]
    finally:
        await server.drain(0, 0)


class _RefusingReplica(_BreakingReplica):
    """A region-scope replica that refuses each summary query with ``code``: in its
    stream (as a node's answer to that query) and on the unary call."""

    def __init__(self, region_id: str, code: grpc.StatusCode) -> None:
        super().__init__(region_id)
        self.code = code

    async def GetSummaries(  # noqa: N802
        self, request: region_node_pb2.GetSummariesRequest, context: Context
    ) -> region_node_pb2.GetSummariesResponse:
        self.queries += 1
        await context.abort(self.code, f"refused with {self.code.name}")
        raise AssertionError("unreachable")

    async def StreamSummaries(  # noqa: N802
        self,
        request_iterator: AsyncIterator[region_node_pb2.StreamSummariesRequest],
        context: Context,
    ) -> AsyncIterator[region_node_pb2.StreamSummariesResponse]:
        async for message in request_iterator:
            self.queries += 1
            yield region_node_pb2.StreamSummariesResponse(
                query_id=message.query_id,
                error=region_node_pb2.SummaryQueryError(
                    code=self.code.value[0], message=f"refused with {self.code.name}"
                ),
            )


@pytest.mark.parametrize("transport", [SummaryTransport.STREAM, SummaryTransport.UNARY])
@pytest.mark.parametrize(
    ("code", "fails_over"),
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, True),  # at its call limit
        (grpc.StatusCode.INTERNAL, True),
        (grpc.StatusCode.INVALID_ARGUMENT, False),  # the query's fault: every replica's
        (grpc.StatusCode.PERMISSION_DENIED, False),  # the coordinator's credentials
    ],
)
async def test_a_replica_refusing_a_query_for_its_own_reasons_is_failed_over(
    mesh: Mesh, transport: SummaryTransport, code: grpc.StatusCode, fails_over: bool
) -> None:
    """A replica at its call limit, or failing inside, answers with a status; the region's
    other replica holds the same data and is asked at once (before, the region went
    missing after any status but UNAVAILABLE). A refusal every replica would give is
    not sent to the others."""
    refusing = _RefusingReplica("eu", code)
    server = await serve_region_servicer(refusing)
    try:
        await add_region(mesh, "eu", region_scope=True, evaluate=False)
        await mesh.ingest("eu", "m", np.array([5.0, 5.0, 5.0]))
        spec = {"eu": [server.address, mesh.regions["eu"][0][0].address]}
        mesh.coordinator, mesh.federation = await start_coordinator(
            CoordinatorConfig(spec, summary_transport=transport)
        )
        federation = mesh.federation
        assert await federation.registry.wait_ready(10.0)
        assert all(i.region_scope for i in federation.registry.instances("eu"))
        answered = 0
        for _ in range(4):  # round robin: the refusing replica is asked first twice
            result = await federation.global_metrics(GlobalQuery(SummaryQuery()))
            assert result.coverage.instances_queried == 1
            if result.coverage.complete:
                assert [g.summary.count for g in result.groups] == [3]
                answered += 1
            else:
                [missing] = result.coverage.missing
                assert missing.code is code and not result.groups
        assert refusing.queries == 2  # asked first twice, never after the other answered
        assert answered == (4 if fails_over else 2)
    finally:
        await server.drain(0, 0)
