"""A request stream whose message does not parse ends with INVALID_ARGUMENT, after the
answers to the messages before it, on every streaming method of both servers.

The calls are raw (bytes in, bytes out), so a message can be bytes no protobuf writer
would produce: a string field that is not UTF-8.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from meshutil import Mesh, add_region, until_error
from test_gateway import start_gateway

from nethical_grpc import client
from nethical_grpc.errors import details_from_error
from nethical_grpc.v1 import coordinator_pb2, governance_pb2, region_node_pb2, region_node_pb2_grpc

#: field 1 (``action``) holding field 1 (``agent_id``) = "a" and field 2 (``action_text``)
#: = b"\xff": not UTF-8, so the message does not parse
NOT_UTF8_ACTION = b"\x0a\x06\x0a\x01a\x12\x01\xff"
CALL_TIMEOUT_S = 15.0


def action(i: int) -> governance_pb2.AgentAction:
    return governance_pb2.AgentAction(
        agent_id="agent-1",
        action_text=f"SELECT {i} FROM t",
        action_type="query",
        request_id=f"r{i}",
    )


def assert_unparsable(err: grpc.aio.AioRpcError, index: int) -> None:
    details = details_from_error(err)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, (details.code, details.message)
    assert [v.field for v in details.field_violations] == [f"request[{index}]"]
    assert "not a valid message" in details.field_violations[0].description


@pytest.mark.parametrize("good_before", [0, 1, 3])
async def test_region_evaluate_stream(mesh: Mesh, good_before: int) -> None:
    """The bad message right behind good ones (while their answers are being written):
    the good ones are answered, then the call ends with a status, not a hang."""
    [(server, _)] = await add_region(mesh, "r1")
    call = mesh.channel(server.address).stream_stream(
        "/nethical_grpc.v1.RegionNodeService/EvaluateStream"
    )
    payloads = [
        region_node_pb2.EvaluateStreamRequest(action=action(i)).SerializeToString()
        for i in range(good_before)
    ]
    raws, err = await until_error(call(iter([*payloads, NOT_UTF8_ACTION]), timeout=CALL_TIMEOUT_S))
    assert_unparsable(err, good_before)
    answers = [region_node_pb2.EvaluateStreamResponse.FromString(r) for r in raws]
    assert [a.evaluation.request_id for a in answers] == [f"r{i}" for i in range(good_before)]


async def test_ingest_reports_what_it_applied(mesh: Mesh) -> None:
    """Ingest's error carries the applied counts, as for any rejected message, and the
    batch before the bad message stays applied."""
    [(server, _)] = await add_region(mesh, "r1")
    ch = mesh.channel(server.address)
    good = client.encode_ingest_request("kept", np.array([1.0, 2.0, 3.0]))
    bad = b"\x0a\x01\xff"  # field 1 (metric) = b"\xff": not UTF-8
    ingest = ch.stream_unary("/nethical_grpc.v1.RegionNodeService/Ingest")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest(iter([good, bad]), timeout=CALL_TIMEOUT_S)
    assert_unparsable(caught.value, 1)
    metadata = details_from_error(caught.value).metadata
    assert metadata["applied_batches"] == "1"
    assert metadata["applied_values"] == "3"
    assert metadata["message_index"] == "1"
    stub = region_node_pb2_grpc.RegionNodeServiceStub(ch)
    summaries = await stub.GetSummaries(region_node_pb2.GetSummariesRequest(), timeout=10)
    assert [(s.metric, s.summary.moments.count) for s in summaries.series] == [("kept", 3)]


async def test_region_stream_summaries(mesh: Mesh) -> None:
    [(server, _)] = await add_region(mesh, "r1")
    call = mesh.channel(server.address).stream_stream(
        "/nethical_grpc.v1.RegionNodeService/StreamSummaries"
    )
    good = region_node_pb2.StreamSummariesRequest(query_id=7).SerializeToString()
    bad = b"\x12\x03\x1a\x01\xff"  # query.metrics[0] = b"\xff"
    raws, err = await until_error(call(iter([good, bad]), timeout=CALL_TIMEOUT_S))
    assert_unparsable(err, 1)
    answers = [region_node_pb2.StreamSummariesResponse.FromString(r) for r in raws]
    assert [a.query_id for a in answers] == [7]


@pytest.mark.parametrize("good_before", [0, 2])
async def test_gateway_evaluate_stream(mesh: Mesh, good_before: int) -> None:
    """Through the coordinator: the actions before the bad message are relayed and
    answered, then the client gets the coordinator's INVALID_ARGUMENT."""
    await add_region(mesh, "r1")
    await start_gateway(mesh, strategy="round_robin")
    call = mesh.coordinator_channel().stream_stream(
        "/nethical_grpc.v1.CoordinatorService/EvaluateStream"
    )
    payloads = [
        coordinator_pb2.CoordinatorServiceEvaluateStreamRequest(
            action=action(i), region_id="r1"
        ).SerializeToString()
        for i in range(good_before)
    ]
    raws, err = await until_error(call(iter([*payloads, NOT_UTF8_ACTION]), timeout=CALL_TIMEOUT_S))
    assert_unparsable(err, good_before)
    answers = [coordinator_pb2.CoordinatorServiceEvaluateStreamResponse.FromString(r) for r in raws]
    assert [a.evaluation.request_id for a in answers] == [f"r{i}" for i in range(good_before)]
