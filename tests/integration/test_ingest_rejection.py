"""A rejected Ingest stream: the node reads what the client still sends (and applies
none of it) before it answers, so a client still writing gets the error and its applied
counts whole, not grpc's INTERNAL "Internal error from Core"; and only for a while."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from meshutil import Mesh, add_region

from nethical_grpc import client
from nethical_grpc.errors import details_from_error
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc
from region_node import servicer

GOOD = client.encode_ingest_request("kept", np.array([1.0, 2.0]))
LATER = client.encode_ingest_request("dropped", np.array([3.0]))
BAD = client.encode_ingest_request("kept", np.array([np.nan]))


async def counts(mesh: Mesh, address: str) -> dict[str, int]:
    stub = region_node_pb2_grpc.RegionNodeServiceStub(mesh.channel(address))
    answer = await stub.GetSummaries(region_node_pb2.GetSummariesRequest(), timeout=10)
    return {s.metric: s.summary.moments.count for s in answer.series}


async def rejected(call: asyncio.Future[object]) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError("the stream was accepted")


async def test_the_rest_of_a_rejected_stream_is_read_and_dropped(mesh: Mesh) -> None:
    [(server, _)] = await add_region(mesh, "r1")
    sent_all = asyncio.Event()

    async def batches() -> AsyncIterator[bytes]:
        yield GOOD
        yield BAD
        for _ in range(5):  # still writing after the rejection
            await asyncio.sleep(0.05)
            yield LATER
        sent_all.set()

    err = await rejected(
        asyncio.ensure_future(client.ingest(mesh.channel(server.address), batches()))
    )
    assert sent_all.is_set()  # the answer came once the client had sent everything
    details = details_from_error(err)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.metadata["applied_batches"] == "1"
    assert details.metadata["message_index"] == "1"
    assert await counts(mesh, server.address) == {"kept": 2}  # nothing after the bad one


async def test_a_client_that_never_stops_gets_the_error_after_the_bound(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(servicer, "INGEST_DRAIN_S", 0.3)
    [(server, _)] = await add_region(mesh, "r1")

    async def endless() -> AsyncIterator[bytes]:
        yield BAD
        while True:
            await asyncio.sleep(0.01)
            yield LATER

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    call = asyncio.ensure_future(client.ingest(mesh.channel(server.address), endless()))
    err = await asyncio.wait_for(rejected(call), 10)  # a hang bound
    assert loop.time() - t0 >= 0.3
    code = details_from_error(err).code
    if code == grpc.StatusCode.INTERNAL:
        # a write of this client met the finished call: grpc's client then reports its
        # own failed send instead of the node's status (see servicer._drain), which a
        # client that never stops writing cannot always avoid; never an error of the node
        assert "SendMessageOperation" in (err.debug_error_string() or "")
    else:
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert await counts(mesh, server.address) == {}


@pytest.mark.parametrize(
    ("labels", "field", "says"),
    [
        ({"a": "x\x00y"}, 'labels["a"]', "control characters"),
        ({"a": "tab\there"}, 'labels["a"]', "control characters"),
        # 16 labels of 256 two-byte characters: 8,327 bytes as JSON, more than stores keep
        ({f"k{i}": "é" * 256 for i in range(16)}, "labels", "8327 bytes as JSON"),
    ],
)
async def test_labels_the_stores_cannot_keep_are_refused_at_ingest(
    mesh: Mesh, labels: dict[str, str], field: str, says: str
) -> None:
    """Such labels were accepted, then refused by the store at every flush, and every
    window flushed with them was lost with them."""
    [(server, _)] = await add_region(mesh, "r1")
    batches = [GOOD, client.encode_ingest_request("bad", np.array([1.0]), labels)]
    err = await rejected(
        asyncio.ensure_future(client.ingest(mesh.channel(server.address), batches))
    )
    details = details_from_error(err)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = details.field_violations
    assert violation.field == field and says in violation.description
    assert await counts(mesh, server.address) == {"kept": 2}


async def test_labels_just_within_the_stores_limit_are_kept(mesh: Mesh) -> None:
    [(server, _)] = await add_region(mesh, "r1")
    labels = {f"k{i:02d}": "é" * 240 for i in range(16)}  # 7,825 bytes as JSON
    reply = await client.ingest(
        mesh.channel(server.address),
        [client.encode_ingest_request("wide", np.array([1.0]), labels)],
    )
    assert reply.accepted_values == 1
    assert await counts(mesh, server.address) == {"wide": 1}
