"""The node's cache of GetSummaries answers goes stale when time moves the rollup horizon
past a query's range, with no new data: the answer merges whole rollup windows from then
on (other windows, other gaps). A real region node servicer on a loopback port, its
clock set by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from clocks import Clock
from meshutil import serve_region_servicer

from nethical_grpc import client
from nethical_grpc.convert import ns_to_timestamp
from nethical_grpc.series import DataGap
from nethical_grpc.server_runtime import MeshServer
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc
from region_node.node import NodeIdentity, RegionNode
from region_node.servicer import RegionNodeServicer
from region_node.windows import NANOS, WindowConfig, WindowStore

#: 10-second windows, rolled up into minute-long ones past a 10-minute horizon
CONFIG = WindowConfig(
    window_ns=10 * NANOS,
    retention_ns=3600 * NANOS,
    rollup_after_ns=600 * NANOS,
    rollup_window_ns=60 * NANOS,
)
#: the start of a rollup window
A = 1_700_000_040 * NANOS
assert A % CONFIG.rollup_window_ns == 0


def _query(start_ns: int, end_ns: int) -> region_node_pb2.GetSummariesRequest:
    return region_node_pb2.GetSummariesRequest(
        metrics=["m"], start_time=ns_to_timestamp(start_ns), end_time=ns_to_timestamp(end_ns)
    )


#: the second half of rollup window A: once A is past the horizon, the answer is A's whole
LATE_HALF = _query(A + 30 * NANOS, A + 60 * NANOS)


@dataclass
class Running:
    clock: Clock
    node: RegionNode
    servicer: RegionNodeServicer
    channel: grpc.aio.Channel
    stub: region_node_pb2_grpc.RegionNodeServiceStub


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    clock = Clock(A + 60 * NANOS)
    node = RegionNode(NodeIdentity("r1", "r1-0"), CONFIG, clock=clock)
    servicer = RegionNodeServicer(node)
    server: MeshServer = await serve_region_servicer(servicer)
    channel = grpc.aio.insecure_channel(server.address)
    try:
        stub = region_node_pb2_grpc.RegionNodeServiceStub(channel)
        yield Running(clock, node, servicer, channel, stub)
    finally:
        await channel.close(None)
        await server.drain(0, 0)


def _past_horizon(clock: Clock) -> None:
    """Move the clock so that rollup window A (and the one after) is past the horizon."""
    clock.t = A + CONFIG.rollup_after_ns + 3 * CONFIG.rollup_window_ns


async def test_an_answer_covers_a_whole_rollup_window_once_the_horizon_passes_it(
    running: Running,
) -> None:
    """A window not flushed yet is not rolled up, so the maintenance pass changes no data;
    yet from then on a range reaching into its rollup window merges that window too."""
    await client.ingest(
        running.channel, [client.encode_ingest_request("m", np.array([7.0]), time_ns=A + 5 * NANOS)]
    )
    before = await running.stub.GetSummaries(LATE_HALF, timeout=5)
    assert list(before.series) == []  # the observation is in the rollup window's first half

    _past_horizon(running.clock)
    await running.node.maintain_windows()
    assert running.node.store.rollup_count == 0  # nothing merged: the window is dirty

    after = await running.stub.GetSummaries(LATE_HALF, timeout=5)
    [series] = after.series
    assert series.summary.moments.count == 1
    assert series.start_time == ns_to_timestamp(A)
    assert after.data_as_of == ns_to_timestamp(A + 5 * NANOS)


async def test_a_gap_is_named_once_the_horizon_widens_the_range_into_it(
    running: Running,
) -> None:
    """No data at all: only the range the answer covers moves, into a gap's time."""
    running.node.set_gap(DataGap("STORE_FALLBACK", None, A + 20 * NANOS, "left out"))
    before = await running.stub.GetSummaries(LATE_HALF, timeout=5)
    assert list(before.gaps) == []

    _past_horizon(running.clock)
    await running.node.maintain_windows()

    after = await running.stub.GetSummaries(LATE_HALF, timeout=5)
    assert [g.reason for g in after.gaps] == ["STORE_FALLBACK"]


async def test_the_peers_horizon_counts_as_well(running: Running) -> None:
    """Region scope: the other instances' windows have a horizon of their own, moved by
    a refresh of them that found nothing to roll up or drop (the node's own maintenance
    has not run)."""
    peers = WindowStore(CONFIG, clock=running.clock)
    peers.roll_up()
    running.node.peers = peers
    running.node.set_gap(DataGap("STORE_FALLBACK", None, A + 20 * NANOS, "left out"))
    before = await running.stub.GetSummaries(LATE_HALF, timeout=5)
    assert list(before.gaps) == []

    _past_horizon(running.clock)
    assert peers.roll_up() + peers.evict_expired() == 0  # as a refresh of them does

    after = await running.stub.GetSummaries(LATE_HALF, timeout=5)
    assert [g.reason for g in after.gaps] == ["STORE_FALLBACK"]


async def test_identical_queries_still_share_one_answer_between_changes(
    running: Running,
) -> None:
    """The cache still serves: with no ingest in between, and after a maintenance pass
    that moves the horizon without reaching the query's range."""
    await client.ingest(
        running.channel,
        [client.encode_ingest_request("m", np.array([7.0]), time_ns=A + 35 * NANOS)],
    )
    recent = _query(A + 30 * NANOS, A + 60 * NANOS + CONFIG.rollup_after_ns)
    unbounded = region_node_pb2.GetSummariesRequest(metrics=["m"])
    first = await running.stub.GetSummaries(recent, timeout=5)
    first_unbounded = await running.stub.GetSummaries(unbounded, timeout=5)
    kept = dict(running.servicer._responses)
    assert len(kept) == 2

    assert await running.stub.GetSummaries(recent, timeout=5) == first
    assert await running.stub.GetSummaries(unbounded, timeout=5) == first_unbounded
    for query, entry in kept.items():
        assert running.servicer._responses[query] is entry  # answered from the cache

    # the horizon moves up to rollup window A, neither range's end: same answers, kept
    running.clock.t = A + CONFIG.rollup_after_ns + CONFIG.rollup_window_ns // 2
    await running.node.maintain_windows()
    assert running.node.store._rolled_through == A // CONFIG.window_ns - 1
    await running.stub.GetSummaries(recent, timeout=5)
    await running.stub.GetSummaries(unbounded, timeout=5)
    for query, entry in kept.items():
        assert running.servicer._responses[query] is entry
