"""Answers over a server's message limit: refused alone, with a reason, never by breaking
the shared summary stream (real servers on loopback, small limits)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from meshutil import Mesh, add_coordinator, add_region, serve_region_servicer

from coordinator.summary_stream import SummaryCallError, SummaryStream
from nethical_grpc import client
from nethical_grpc.errors import details_from_error
from nethical_grpc.v1 import coordinator_pb2, region_node_pb2, region_node_pb2_grpc
from region_node import servicer as servicer_module
from region_node.node import NodeIdentity, RegionNode
from region_node.servicer import RegionNodeServicer

LIMIT = 32 * 1024
SHARDS = 300

Request = region_node_pb2.GetSummariesRequest
WIDE = Request(metrics=["wide"], group_by_labels=["shard"])
SMALL = Request(metrics=["small"])
#: every metric of the cache test, grouped by shard: over LIMIT
WIDE_ALL = Request(metrics=[f"m{k}" for k in range(8)], group_by_labels=["shard"])


async def _fill(mesh: Mesh, region: str) -> None:
    """A metric with ``SHARDS`` label sets (one series each, well over LIMIT when grouped
    by shard, ~1 KB when not), and a small metric."""
    rng = np.random.default_rng(7)
    server, _ = mesh.regions[region][0]
    batches = [
        client.encode_ingest_request("wide", rng.lognormal(0, 2, 50), {"shard": str(k)})
        for k in range(SHARDS)
    ]
    batches.append(client.encode_ingest_request("small", np.arange(1.0, 11.0)))
    await client.ingest(mesh.channel(server.address), batches)


async def test_a_node_refuses_an_answer_over_its_limit_with_a_reason(mesh: Mesh) -> None:
    [(server, _)] = await add_region(mesh, "us-east-1", max_message_bytes=LIMIT)
    await _fill(mesh, "us-east-1")
    stub = region_node_pb2_grpc.RegionNodeServiceStub(mesh.channel(server.address))
    for _ in range(2):  # the second time from the node's cache of answers
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetSummaries(WIDE, timeout=5)
        found = details_from_error(err.value)
        assert found.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert found.reason == "ANSWER_TOO_LARGE"
        assert f"holds {SHARDS} series" in found.message
        assert int(found.metadata["answer_bytes"]) > LIMIT
        assert found.metadata["max_message_bytes"] == str(LIMIT)
    # the same metric without the grouping fits
    answer = await stub.GetSummaries(Request(metrics=["wide"]), timeout=5)
    assert answer.series[0].summary.moments.count == 50 * SHARDS


async def test_an_oversized_answer_fails_its_query_alone_on_the_stream(mesh: Mesh) -> None:
    [(server, _)] = await add_region(mesh, "us-east-1", max_message_bytes=LIMIT)
    await _fill(mesh, "us-east-1")
    channel = mesh.channel(server.address)
    stream = SummaryStream(lambda: channel)
    try:
        wide, small = await asyncio.gather(
            stream.query(WIDE, 5.0), stream.query(SMALL, 5.0), return_exceptions=True
        )
        assert isinstance(wide, SummaryCallError)
        assert wide.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "message limit" in wide.details
        assert isinstance(small, bytes)
        parsed = region_node_pb2.GetSummariesResponse.FromString(small)
        assert parsed.series[0].summary.moments.count == 10
        # the stream lives on: the next query is answered on it
        again = await stream.query(SMALL, 5.0)
        assert again == small
        assert stream.opened == 1
    finally:
        await stream.close()


async def test_a_global_query_too_large_for_a_region_leaves_other_queries_whole(
    mesh: Mesh,
) -> None:
    await add_region(mesh, "us-east-1", max_message_bytes=LIMIT)
    await add_region(mesh, "eu-west-1")
    await _fill(mesh, "us-east-1")
    await mesh.ingest("eu-west-1", "small", np.arange(1.0, 6.0))
    await add_coordinator(mesh)
    ch = mesh.coordinator_channel()
    wide = client.QueryOptions(metrics=("wide",), group_by_labels=("shard",))
    small = client.QueryOptions(metrics=("small",))
    answers = await asyncio.gather(
        *(client.global_metrics(ch, wide, timeout=10) for _ in range(3)),
        *(client.global_metrics(ch, small, timeout=10) for _ in range(3)),
    )
    for big in answers[:3]:
        assert not big.coverage.complete
        [missing] = big.coverage.missing
        assert missing.region_id == "us-east-1"
        assert missing.reason == coordinator_pb2.MISSING_REASON_ERROR
        assert missing.message.startswith("RESOURCE_EXHAUSTED: the answer holds")
    for ok in answers[3:]:
        assert ok.coverage.complete
        assert ok.results[0].statistics.count == 15


async def test_the_coordinator_refuses_an_answer_over_its_own_limit(mesh: Mesh) -> None:
    await add_region(mesh, "us-east-1")
    await _fill(mesh, "us-east-1")
    await add_coordinator(mesh, max_message_bytes=LIMIT)
    ch = mesh.coordinator_channel()
    wide = client.QueryOptions(metrics=("wide",), group_by_labels=("shard",), include_summary=True)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.global_metrics(ch, wide, timeout=10)
    found = details_from_error(err.value)
    assert found.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert found.reason == "ANSWER_TOO_LARGE"
    assert f"holds {SHARDS} results" in found.message
    assert "include_summary" in found.message
    # a narrower query fits, and the coordinator keeps serving
    fits = await client.global_metrics(
        ch, client.QueryOptions(metrics=("wide",), include_summary=True), timeout=10
    )
    assert fits.coverage.complete and fits.results[0].statistics.count == 50 * SHARDS


async def test_the_nodes_cache_of_answers_stays_within_its_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The node caches GetSummaries answers between changes of its data within a bound on
    their bytes, not only on their count (64 answers near the message limit held over a
    GiB); an answer over the message limit is refused and not kept."""
    cap = 3 * 16 * 1024
    monkeypatch.setattr(servicer_module, "_MAX_CACHED_RESPONSE_BYTES", cap)
    servicer = RegionNodeServicer(RegionNode(NodeIdentity("r1", "r1-0")), max_message_bytes=LIMIT)
    server = await serve_region_servicer(servicer)
    channel = grpc.aio.insecure_channel(server.address)
    try:
        rng = np.random.default_rng(3)
        await client.ingest(
            channel,
            [
                client.encode_ingest_request(
                    f"m{k % 8}", rng.lognormal(0, 2, 50), {"shard": str(k)}
                )
                for k in range(8 * 30)
            ],
        )
        stub = region_node_pb2_grpc.RegionNodeServiceStub(channel)
        sizes = []
        for k in range(8):  # eight answers of ~28 KB: more than the cap holds together
            answer = await stub.GetSummaries(
                Request(metrics=[f"m{k}"], group_by_labels=["shard"]), timeout=5
            )
            sizes.append(answer.ByteSize())
            held = servicer._responses
            assert sum(e.size for e in held.values()) == servicer._responses_bytes <= cap
            assert held, "the answer just given is kept"
        assert sum(sizes) > cap and max(sizes) < LIMIT
        # over the message limit: refused, and not kept
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetSummaries(WIDE_ALL, timeout=5)
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert all(e.size <= LIMIT for e in servicer._responses.values())
    finally:
        await channel.close()
        await server.drain(0, 0)


async def test_a_coordinator_with_a_raised_limit_takes_node_answers_that_large(
    mesh: Mesh,
) -> None:
    """Nodes and the coordinator given the same raised --max-message-bytes: a node's
    answer past gRPC's default 8 MiB reaches the coordinator (its channels to the nodes
    took 8 MiB whatever its own limit, and the region was missing)."""
    raised = 16 * 1024 * 1024
    [(server, _)] = await add_region(mesh, "us-east-1", max_message_bytes=raised)
    rng = np.random.default_rng(5)
    await client.ingest(
        mesh.channel(server.address),
        [
            client.encode_ingest_request(
                f"m{k % 10}", rng.lognormal(0, 2, 50), {"shard": str(k // 10)}
            )
            for k in range(10_000)
        ],
    )
    await add_coordinator(mesh, max_message_bytes=raised)
    metrics = tuple(f"m{i}" for i in range(10))
    answer = await client.global_metrics(
        mesh.coordinator_channel(),
        # an answer of over 8 MiB: a slow machine built it past the 2 s a region has by
        # default (the size is what this test is about, not the speed)
        client.QueryOptions(metrics=metrics, group_by_labels=("shard",), region_timeout_s=30),
        timeout=60,
    )
    assert answer.coverage.complete, answer.coverage
    assert len(answer.results) == 10_000
    assert sum(r.statistics.count for r in answer.results) == 50 * 10_000
