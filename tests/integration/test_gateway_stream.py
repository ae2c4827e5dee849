"""EvaluateStream through the gateway: order, inline errors, failover, interruption."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from meshutil import Mesh, add_region, until_error, wait_for
from test_gateway import start_gateway
from test_gateway_failover import Rig, ScriptedNode

from coordinator.instances import Health
from nethical_grpc.errors import ErrorDetails, details_from_error
from nethical_grpc.v1 import coordinator_pb2, governance_pb2

Req = coordinator_pb2.CoordinatorServiceEvaluateStreamRequest
Resp = coordinator_pb2.CoordinatorServiceEvaluateStreamResponse


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    yield r
    await r.close()


def stream_request(i: int, region: str = "", valid: bool = True) -> Any:
    return Req(
        action=governance_pb2.AgentAction(
            agent_id="agent-1" if valid else "",
            action_text=f"SELECT {i} FROM t",
            action_type="query",
            request_id=f"req-{i}",
        ),
        region_id=region,
    )


async def test_stream_answers_in_order_with_inline_errors(mesh: Mesh) -> None:
    await add_region(mesh, "r1", instances=2)
    await add_region(mesh, "r2", instances=1)
    stub = await start_gateway(mesh, strategy="round_robin")
    requests = [stream_request(i, "r2" if i == 0 else "", valid=i % 7 != 3) for i in range(40)]
    answers = [a async for a in stub.EvaluateStream(iter(requests), timeout=20)]
    assert [
        a.evaluation.request_id if a.HasField("evaluation") else a.error.request_id for a in answers
    ] == [f"req-{i}" for i in range(40)]
    errors = [i for i, a in enumerate(answers) if a.HasField("error")]
    assert errors == [i for i in range(40) if i % 7 == 3]
    assert all(answers[i].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] for i in errors)
    assert all(answers[i].error.field_errors for i in errors)
    served = {a.evaluation.instance_id for a in answers if a.HasField("evaluation")}
    assert served == {"r2-0"}  # one upstream stream, in the first message's region


async def test_a_later_message_naming_another_region_ends_the_stream(mesh: Mesh) -> None:
    """Only the first message picks the region; later ones may repeat it or leave it
    empty. One that names another region (known or not) is not relayed to the stream's
    region as if it were meant there: the stream ends with INVALID_ARGUMENT naming it,
    after the answers to the messages before it."""
    await add_region(mesh, "r1")
    await add_region(mesh, "r2")
    stub = await start_gateway(mesh, strategy="round_robin")
    for other in ("r2", "nowhere-1"):
        requests = [stream_request(0, "r1"), stream_request(1, "r1"), stream_request(2)]
        requests.append(stream_request(3, other))
        requests.append(stream_request(4, "r1"))
        answers, err = await until_error(stub.EvaluateStream(iter(requests), timeout=20))
        assert [a.evaluation.request_id for a in answers] == ["req-0", "req-1", "req-2"]
        assert {a.evaluation.instance_id for a in answers} == {"r1-0"}
        details = details_from_error(err)
        assert details.code is grpc.StatusCode.INVALID_ARGUMENT, details.message
        [violation] = details.field_violations
        assert violation.field == "request[3].region_id"
        assert violation.description.startswith(f'"{other}" differs from the stream\'s region "r1"')
    # a stream without a region: any region named later is another one
    requests = [stream_request(0), stream_request(1, "r1")]
    answers, err = await until_error(stub.EvaluateStream(iter(requests), timeout=20))
    assert [a.evaluation.request_id for a in answers] == ["req-0"]
    [violation] = details_from_error(err).field_violations
    assert violation.field == "request[1].region_id"
    assert "the stream has no region" in violation.description
    # an unknown region in the first message is named as that message's
    answers, err = await until_error(
        stub.EvaluateStream(iter([stream_request(0, "nowhere-1")]), timeout=20)
    )
    assert answers == []
    [violation] = details_from_error(err).field_violations
    assert violation.field == "request[0].region_id"
    assert violation.description.startswith('unknown region "nowhere-1"')


async def test_batches_pass_through_the_gateway_in_order(mesh: Mesh) -> None:
    """A message with ``actions`` goes to the node as one batch and comes back as one
    answer whose ``results`` follow it; single actions and a malformed message (both
    fields set) on the same stream keep their places."""
    await add_region(mesh, "r1", instances=1)
    await add_region(mesh, "r2", instances=1)
    stub = await start_gateway(mesh, strategy="round_robin")
    batch = [stream_request(i).action for i in range(10)]
    batch[4].agent_id = ""  # one bad action in the batch
    both = stream_request(99)
    both.actions.append(stream_request(100).action)
    requests = [
        Req(actions=batch[:6], region_id="r2"),
        stream_request(50),
        both,
        Req(actions=batch[6:], region_id="r2"),  # the stream's region again: fine
    ]
    answers = [a async for a in stub.EvaluateStream(iter(requests), timeout=20)]
    assert len(answers) == 4
    first, single, malformed, last = answers
    assert [r.WhichOneof("result") for r in first.results] == ["evaluation"] * 4 + [
        "error",
        "evaluation",
    ]
    assert first.results[4].error.request_id == "req-4"
    assert first.results[4].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [r.evaluation.request_id for r in last.results] == [f"req-{i}" for i in range(6, 10)]
    assert single.evaluation.request_id == "req-50"
    assert malformed.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    served = {
        r.evaluation.instance_id
        for a in (first, last)
        for r in a.results
        if r.evaluation.instance_id
    }
    assert served == {"r2-0"}  # the whole stream went to the first message's region


async def test_stream_moves_when_nothing_is_in_doubt(mesh: Mesh) -> None:
    await add_region(mesh, "r1", instances=2)
    stub = await start_gateway(mesh, strategy="round_robin")
    call = stub.EvaluateStream(timeout=20)
    first = []
    for i in range(5):
        await call.write(stream_request(i))
        first.append(await call.read())
    [serving] = {a.evaluation.instance_id for a in first}
    index = int(serving.rsplit("-", 1)[1])
    server = mesh.regions["r1"][index][0]
    await server.server.stop(0)  # every action sent was answered
    assert mesh.federation is not None
    [gone] = [v for v in mesh.federation.registry.instances("r1") if v.endpoint == server.address]
    await wait_for(lambda: gone.health is Health.UNREACHABLE)  # the break is known
    rest = []
    for i in range(5, 10):
        await call.write(stream_request(i))
        rest.append(await call.read())
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert [a.evaluation.request_id for a in first + rest] == [f"req-{i}" for i in range(10)]
    [other] = {a.evaluation.instance_id for a in rest}
    assert other != serving


async def _two_in_doubt(
    rig: Rig, policy: str, *, other_region: bool = True
) -> tuple[grpc.aio.StreamStreamCall[Req, Resp], list[Resp], ScriptedNode | None]:
    """A stream to node "a" (region "ra") that answers 3 of 5 actions and is then killed
    with 2 unanswered (in doubt); "b" in region "rb" when ``other_region``. The call,
    the answers read, and "b"."""
    a = await rig.node("a", "ra")
    b = await rig.node("b", "rb") if other_region else None
    a.stream_answer_limit = 3
    stub = await rig.gateway(strategy="round_robin", evaluate_retry=policy)
    call = stub.EvaluateStream(timeout=20)
    for i in range(5):
        await call.write(stream_request(i, "ra"))
    answers = [await call.read() for _ in range(3)]
    await wait_for(lambda: len(a.stream_seen) == 4)  # holds the 4th; the 5th is sent
    await rig.kill("a")
    return call, answers, b


async def _interrupted(call: grpc.aio.StreamStreamCall[Req, Resp]) -> ErrorDetails:
    """The stream's end: UNAVAILABLE STREAM_INTERRUPTED, 3 answered and 2 in doubt."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    details = details_from_error(info.value)
    assert details.code is grpc.StatusCode.UNAVAILABLE
    assert details.reason == "STREAM_INTERRUPTED"
    assert (details.metadata["answered"], details.metadata["in_doubt"]) == ("3", "2")
    return details


async def test_stream_with_actions_in_doubt_ends_and_counts_them(rig: Rig) -> None:
    call, answers, b = await _two_in_doubt(rig, "not-sent")
    await _interrupted(call)
    assert [x.evaluation.request_id for x in answers] == ["req-0", "req-1", "req-2"]
    assert b is not None and b.stream_seen == []


async def test_stream_resends_in_doubt_actions_with_connection_lost_policy(rig: Rig) -> None:
    call, answers, b = await _two_in_doubt(rig, "connection-lost")
    for i in range(5, 8):
        await call.write(stream_request(i))
    await call.done_writing()
    while (answer := await call.read()) is not grpc.aio.EOF:
        answers.append(answer)
    assert [x.evaluation.request_id for x in answers] == [f"req-{i}" for i in range(8)]
    assert [x.evaluation.instance_id for x in answers] == ["a"] * 3 + ["b"] * 5
    assert b is not None and b.stream_seen == [f"req-{i}" for i in range(3, 8)]


async def test_in_doubt_actions_with_no_node_left_to_resend_them_are_counted(rig: Rig) -> None:
    """connection-lost resends the actions a broken node had; with no node left to take
    them, the stream ends STREAM_INTERRUPTED counting them in doubt (that node may have
    evaluated them), not NO_HEALTHY_INSTANCE ("went nowhere")."""
    call, answers, _ = await _two_in_doubt(rig, "connection-lost", other_region=False)
    details = await _interrupted(call)
    assert details.metadata["endpoint"] == rig.servers["a"].address
    assert "may have been evaluated there" in details.message
    assert [x.evaluation.request_id for x in answers] == ["req-0", "req-1", "req-2"]


async def test_a_stream_that_grpc_itself_ends_fails_over_as_a_broken_one(rig: Rig) -> None:
    # an INTERNAL with no status from the node is gRPC's own (a write that met a
    # connection being torn down ends the call so): the stream goes on elsewhere
    a = await rig.node("a", "ra")
    b = await rig.node("b", "rb")
    a.stream_answer_limit = 3
    a.stream_abort = grpc.StatusCode.INTERNAL
    stub = await rig.gateway(strategy="round_robin", evaluate_retry="connection-lost")
    call = stub.EvaluateStream(timeout=20)
    for i in range(5):
        await call.write(stream_request(i, "ra"))
    await call.done_writing()
    answers = [answer async for answer in call]
    assert [x.evaluation.request_id for x in answers] == [f"req-{i}" for i in range(5)]
    assert [x.evaluation.instance_id for x in answers] == ["a"] * 3 + ["b"] * 2
    assert b.stream_seen[0] == "req-3"


async def test_client_cancel_ends_the_upstream_stream(rig: Rig) -> None:
    a = await rig.node("a")
    stub = await rig.gateway(strategy="round_robin")
    call = stub.EvaluateStream(timeout=20)
    await call.write(stream_request(0))
    await call.read()
    stats = rig.registry.balancer.get_statistics()
    assert stats["total"]["in_flight"] == 1  # the open stream
    call.cancel()
    await wait_for(lambda: rig.registry.balancer.get_statistics()["total"]["in_flight"] == 0)
    assert a.stream_seen == ["req-0"]
    await asyncio.sleep(0)


async def test_a_stream_that_stays_in_its_region_does_not_fail_over_to_another(
    mesh: Mesh,
) -> None:
    await add_region(mesh, "r1")
    await add_region(mesh, "r2")
    stub = await start_gateway(mesh, strategy="region_aware")
    call = stub.EvaluateStream(timeout=20)
    first = Req(action=stream_request(0).action, region_id="r1", stay_in_region=True)
    await call.write(first)
    answers = [await call.read()]
    for i in range(1, 4):  # later messages may repeat it, or leave it out
        later = stream_request(i)
        later.stay_in_region = i == 2
        await call.write(later)
        answers.append(await call.read())
    assert {a.evaluation.instance_id for a in answers} == {"r1-0"}
    server = mesh.regions["r1"][0][0]
    await server.server.stop(0)  # every action sent was answered: a failover is safe
    assert mesh.federation is not None
    [gone] = mesh.federation.registry.instances("r1")
    await wait_for(lambda: gone.health is Health.UNREACHABLE)
    # the relay ends the call by itself (no other instance of r1 to move to): nothing is
    # written meanwhile, since a write racing that end may fail in the transport instead
    # (INTERNAL "Internal error from Core"), the call's status with it
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    details = details_from_error(info.value)
    assert details.code is grpc.StatusCode.UNAVAILABLE, details.message
    assert details.reason == "NO_HEALTHY_INSTANCE"
    assert details.metadata == {"region_id": "r1", "stay_in_region": "true", "answered": "4"}


async def test_a_later_message_cannot_ask_to_stay_when_the_first_did_not(mesh: Mesh) -> None:
    await add_region(mesh, "r1")
    stub = await start_gateway(mesh, strategy="region_aware", local_region="r1")
    late = stream_request(1)
    late.stay_in_region = True
    answers, err = await until_error(
        stub.EvaluateStream(iter([stream_request(0), late, stream_request(2)]), timeout=20)
    )
    assert [a.evaluation.request_id for a in answers] == ["req-0"]
    details = details_from_error(err)
    assert details.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details.field_violations] == ["request[1].stay_in_region"]


async def test_later_messages_may_ask_to_stay_on_a_coordinator_that_always_does(
    mesh: Mesh,
) -> None:
    await add_region(mesh, "r1")
    stub = await start_gateway(mesh, local_region="r1", stay_in_region=True)
    late = stream_request(1)
    late.stay_in_region = True
    answers = [a async for a in stub.EvaluateStream(iter([stream_request(0), late]), timeout=20)]
    assert [a.evaluation.request_id for a in answers] == ["req-0", "req-1"]
