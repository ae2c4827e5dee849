"""Region node ingest and windows over real gRPC: what an answer says about the data it
merged, and what a metric leaves behind once its data is gone."""

from __future__ import annotations

import time

import numpy as np
from meshutil import Mesh, add_region

from nethical_grpc import client, convert
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc

NANOS = 1_000_000_000


def stub(mesh: Mesh) -> region_node_pb2_grpc.RegionNodeServiceStub:
    server, _ = mesh.regions["r1"][0]
    return region_node_pb2_grpc.RegionNodeServiceStub(mesh.channel(server.address))


async def test_data_as_of_is_within_the_windows_an_answer_merged(mesh: Mesh) -> None:
    """``data_as_of`` is the time of the newest observation included: an answer about an
    older range never names a newer observation it left out."""
    [(server, _)] = await add_region(mesh, "r1")
    now = time.time_ns()
    old = now - 120 * NANOS
    await client.ingest(
        mesh.channel(server.address),
        [
            client.encode_ingest_request("m", np.ones(3), time_ns=old),
            client.encode_ingest_request("m", np.ones(5), time_ns=now),
        ],
    )
    older = await stub(mesh).GetSummaries(
        region_node_pb2.GetSummariesRequest(end_time=convert.ns_to_timestamp(now - 60 * NANOS)),
        timeout=5,
    )
    [series] = older.series
    assert series.summary.moments.count == 3
    end = convert.timestamp_to_ns(series.end_time)
    as_of = convert.timestamp_to_ns(older.data_as_of)
    assert old <= as_of < end
    # the range holding the newest observation says its time exactly
    everything = await stub(mesh).GetSummaries(region_node_pb2.GetSummariesRequest(), timeout=5)
    assert convert.timestamp_to_ns(everything.data_as_of) == now


async def test_a_metric_gone_past_retention_leaves_nothing_behind(mesh: Mesh) -> None:
    """Metrics come and go (a name per deployment, per job): once a metric's windows are
    past retention the node keeps nothing of it, and a metric that comes back is answered
    afresh, not from an answer cached before it went."""
    [(server, node)] = await add_region(mesh, "r1")
    metrics = [f"job_{i}" for i in range(50)]
    await client.ingest(
        mesh.channel(server.address),
        [client.encode_ingest_request(m, np.ones(1)) for m in metrics],
    )
    query = region_node_pb2.GetSummariesRequest(metrics=["job_0"])
    [series] = (await stub(mesh).GetSummaries(query, timeout=5)).series
    assert series.summary.moments.count == 1
    later = time.time_ns() + 2 * node.store.config.retention_ns
    assert node.store.evict_expired(later) == len(metrics)
    assert node.store.series_count == 0
    assert node.store._metric_versions == {}  # no per-metric state is left behind
    assert not (await stub(mesh).GetSummaries(query, timeout=5)).series
    await mesh.ingest("r1", "job_0", np.ones(2))
    [series] = (await stub(mesh).GetSummaries(query, timeout=5)).series
    assert series.summary.moments.count == 2
