"""Review (36) of the coordinator's global merge and coverage, and of the blocking
aggregator on it, against real servers on loopback (port 0)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import numpy as np
import pytest
from google.protobuf import timestamp_pb2
from meshutil import LoopThread, Mesh, add_coordinator, add_region, serve_region_servicer, stop_mesh

from coordinator.federation import SummaryTransport, one_node_result
from coordinator.server import CoordinatorConfig, start_coordinator
from nethical_grpc import client, convert
from nethical_grpc.federated_metrics import FederatedMetricsAggregator
from nethical_grpc.proto_limits import MAX_TIMESTAMP_SECONDS, MIN_TIMESTAMP_SECONDS
from nethical_grpc.series import GroupSummary
from nethical_grpc.summary import Summary
from nethical_grpc.v1 import coordinator_pb2, region_node_pb2, region_node_pb2_grpc

Context = grpc.aio.ServicerContext[object, object]

#: seconds of a data_as_of no Timestamp holds: the least int64, before year 0001, after 9999
IMPOSSIBLE_AS_OF_S = (-(2**63), -(10**12), 2**62)


class _Skewed(region_node_pb2_grpc.RegionNodeServiceServicer):
    """A node of region "odd" whose answers are valid but for their ``data_as_of``."""

    def __init__(self, as_of_s: int) -> None:
        self.as_of_s = as_of_s

    def answer(self) -> region_node_pb2.GetSummariesResponse:
        return region_node_pb2.GetSummariesResponse(
            region_id="odd",
            series=[
                convert.group_summary_to_proto(
                    GroupSummary("m", (), Summary.from_values([5.0, 6.0]), 0, 10**9, 0)
                )
            ],
            data_as_of=timestamp_pb2.Timestamp(seconds=self.as_of_s),
        )

    async def GetSummaries(  # noqa: N802
        self, request: region_node_pb2.GetSummariesRequest, context: Context
    ) -> region_node_pb2.GetSummariesResponse:
        return self.answer()

    async def StreamSummaries(  # noqa: N802
        self,
        request_iterator: AsyncIterator[region_node_pb2.StreamSummariesRequest],
        context: Context,
    ) -> AsyncIterator[region_node_pb2.StreamSummariesResponse]:
        async for message in request_iterator:
            yield region_node_pb2.StreamSummariesResponse(
                query_id=message.query_id, summaries=self.answer()
            )


@pytest.mark.parametrize("as_of_s", IMPOSSIBLE_AS_OF_S)
@pytest.mark.parametrize("transport", [SummaryTransport.STREAM, SummaryTransport.UNARY])
async def test_a_region_s_impossible_data_as_of_is_named_not_fatal(
    mesh: Mesh, transport: SummaryTransport, as_of_s: int
) -> None:
    """One region's node says its data is as of a time no Timestamp holds. Before, the
    coverage repeated it: with the least int64 the staleness overflowed a Duration and
    the whole global query failed with INTERNAL; before year 0001 the answer carried a
    Timestamp and a Duration out of their ranges (grpcurl and JSON clients refuse them)
    and called itself complete; past 9999 it was merged as if nothing were wrong. Now the
    region is missing, INVALID_RESPONSE, and the other regions' answer stands."""
    server = await serve_region_servicer(_Skewed(as_of_s))
    try:
        await add_region(mesh, "a", evaluate=False)
        await mesh.ingest("a", "m", np.arange(10.0))
        spec = {"a": [mesh.regions["a"][0][0].address], "odd": [server.address]}
        mesh.coordinator, mesh.federation = await start_coordinator(
            CoordinatorConfig(spec, summary_transport=transport)
        )
        assert await mesh.federation.registry.wait_ready(10.0)
        response = await client.global_metrics(mesh.coordinator_channel(), client.QueryOptions())
        [result] = response.results
        assert (result.statistics.count, result.statistics.sum) == (10, 45.0)
        c = response.coverage
        assert not c.complete
        assert list(c.regions_answered) == ["a"]
        [missing] = c.missing
        assert missing.region_id == "odd"
        assert missing.reason == coordinator_pb2.MISSING_REASON_INVALID_RESPONSE
        assert "data_as_of" in missing.message
        assert (c.instances_queried, c.instances_answered) == (2, 1)
        # what the coverage says is within what its types hold: region a's own time
        assert MIN_TIMESTAMP_SECONDS <= c.oldest_data_as_of.seconds <= MAX_TIMESTAMP_SECONDS
        assert 0 <= c.max_staleness.seconds < 60
    finally:
        await server.drain(0, 0)


def test_one_node_s_impossible_data_as_of_is_refused() -> None:
    """``nethical-mesh query --node`` refuses such an answer as a coordinator does (its
    caller turns the ValueError into INVALID_RESPONSE) instead of failing to build the
    coverage."""
    group = GroupSummary("m", (), Summary.from_values([1.0]), 0, 10**9, 0)
    for as_of_s in IMPOSSIBLE_AS_OF_S:
        answer = convert.SummariesAnswer("n-0", 0, as_of_s * 10**9, [group], None)
        with pytest.raises(ValueError, match="data_as_of"):
            one_node_result("eu", answer)
    fine = one_node_result("eu", convert.SummariesAnswer("n-0", 0, 10**18, [group], None))
    assert fine.coverage.oldest_data_as_of_ns == 10**18


@pytest.fixture
def served() -> Iterator[tuple[LoopThread, Mesh]]:
    loop, mesh = LoopThread(), Mesh()

    async def start() -> None:
        await add_region(mesh, "us", evaluate=False)
        await add_coordinator(mesh)

    try:
        loop.run(start())
        yield loop, mesh
    finally:
        loop.run(stop_mesh(mesh))
        loop.close()


@pytest.mark.parametrize("retention_period", [1e300, 1.7976931348623157e308])
def test_a_retention_period_whose_nanoseconds_overflow_covers_everything(
    served: tuple[LoopThread, Mesh], retention_period: float
) -> None:
    """A finite retention_period past 1.8e299 s is infinite in nanoseconds: every
    aggregate failed with OverflowError (cannot convert float infinity to integer)."""
    _, mesh = served
    assert mesh.coordinator is not None
    with FederatedMetricsAggregator(
        aggregation_interval=0,
        retention_period=retention_period,
        coordinator=mesh.coordinator.address,
        region_nodes={"us": mesh.regions["us"][0][0].address},
    ) as agg:
        assert agg.submit_regional_metrics("us", {"m": np.ones(3)}) == 3
        assert agg.aggregate_metrics(["m"], "count") == {"m": 3}
        assert agg.compute_percentiles("m", [50]) == {50: pytest.approx(1.0, rel=0.01)}
