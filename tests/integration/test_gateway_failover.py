"""Gateway failover with injected faults: refusals, ejection and return, broken calls.

The nodes here are real grpc.aio servers whose Evaluate is scripted (refuse, hold a
call until the server dies), the faults a real region node cannot be told to make.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from meshutil import wait_for

from coordinator.gateway import evaluate_retryable
from coordinator.gateway_config import GatewayConfig
from coordinator.instances import Health
from coordinator.server import CoordinatorConfig, start_coordinator
from nethical_grpc import client
from nethical_grpc.errors import Unavailable, details_from_error, to_status
from nethical_grpc.server_runtime import MeshServer, start_server
from nethical_grpc.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    governance_pb2,
    region_node_pb2,
    region_node_pb2_grpc,
)

SERVICE = "nethical_grpc.v1.RegionNodeService"
Context = grpc.aio.ServicerContext[Any, Any]


class ScriptedNode(region_node_pb2_grpc.RegionNodeServiceServicer):  # type: ignore[misc]
    """Answers Evaluate with its own id; can refuse (UNAVAILABLE) or hold calls."""

    def __init__(self, name: str, region: str) -> None:
        self.name = name
        self.region = region
        self.hits = 0
        self.refuse = False
        self.hold: asyncio.Event | None = None
        self.stream_seen: list[str] = []
        self.stream_answer_limit: int | None = None  # then hold the stream
        # past the limit, end the stream with this bare status (no google.rpc.Status)
        self.stream_abort: grpc.StatusCode | None = None

    def _evaluation(self, request_id: str) -> governance_pb2.ActionEvaluation:
        return governance_pb2.ActionEvaluation(
            request_id=request_id,
            decision=governance_pb2.DECISION_ALLOW,
            region_id=self.region,
            instance_id=self.name,
        )

    async def GetNodeInfo(  # noqa: N802
        self, request: region_node_pb2.GetNodeInfoRequest, context: Context
    ) -> region_node_pb2.GetNodeInfoResponse:
        return region_node_pb2.GetNodeInfoResponse(region_id=self.region, instance_id=self.name)

    async def Evaluate(  # noqa: N802
        self, request: region_node_pb2.EvaluateRequest, context: Context
    ) -> region_node_pb2.EvaluateResponse:
        self.hits += 1
        if self.refuse:
            await context.abort_with_status(
                to_status(Unavailable(message="not now", reason="TEST_REFUSAL"))
            )
        if self.hold is not None:
            await self.hold.wait()
        return region_node_pb2.EvaluateResponse(
            evaluation=self._evaluation(request.action.request_id)
        )

    async def EvaluateStream(  # noqa: N802
        self,
        request_iterator: AsyncIterator[region_node_pb2.EvaluateStreamRequest],
        context: Context,
    ) -> AsyncIterator[region_node_pb2.EvaluateStreamResponse]:
        async for message in request_iterator:
            self.stream_seen.append(message.action.request_id)
            limit = self.stream_answer_limit
            if limit is not None and len(self.stream_seen) > limit:
                if self.stream_abort is not None:
                    await context.abort(self.stream_abort, "the stream broke")
                await asyncio.Event().wait()  # hold until the server dies
            yield region_node_pb2.EvaluateStreamResponse(
                evaluation=self._evaluation(message.action.request_id)
            )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self) -> None:
        self.nodes: dict[str, ScriptedNode] = {}
        self.servers: dict[str, MeshServer] = {}
        self.coordinator: MeshServer | None = None
        self.channels: list[grpc.aio.Channel] = []
        self.registry: Any = None

    async def node(self, name: str, region: str = "r1") -> ScriptedNode:
        node = ScriptedNode(name, region)
        self.servers[name] = await start_server(
            [lambda s: region_node_pb2_grpc.add_RegionNodeServiceServicer_to_server(node, s)],
            [SERVICE],
        )
        self.nodes[name] = node
        return node

    async def gateway(self, **settings: Any) -> coordinator_pb2_grpc.CoordinatorServiceStub:
        spec: dict[str, list[str]] = {}
        for name, node in self.nodes.items():
            spec.setdefault(node.region, []).append(self.servers[name].address)
        self.coordinator, federation = await start_coordinator(
            CoordinatorConfig(regions=spec, gateway=GatewayConfig(**settings))
        )
        self.registry = federation.registry
        assert await self.registry.wait_ready(10.0)
        channel = client.insecure_channel(self.coordinator.address)
        self.channels.append(channel)
        return coordinator_pb2_grpc.CoordinatorServiceStub(channel)

    def health(self, name: str) -> Health:
        address = self.servers[name].address
        [inst] = [v for v in self.registry.all_instances() if v.endpoint == address]
        health: Health = inst.health
        return health

    async def kill(self, name: str) -> None:
        """Stop at once: calls in flight break, nothing is announced."""
        await self.servers[name].server.stop(0)

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()
        if self.coordinator is not None:
            await self.coordinator.drain(0, 0)
        for server in self.servers.values():
            await server.drain(0, 0)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    yield r
    await r.close()


def request(region: str = "", request_id: str = "") -> Any:
    return coordinator_pb2.CoordinatorServiceEvaluateRequest(
        action=governance_pb2.AgentAction(agent_id="a", action_text="ls", request_id=request_id),
        region_id=region,
    )


async def instance_info(
    stub: coordinator_pb2_grpc.CoordinatorServiceStub, name: str
) -> coordinator_pb2.InstanceInfo:
    resp = await stub.ListRegions(coordinator_pb2.ListRegionsRequest(), timeout=5)
    [info] = [i for r in resp.regions for i in r.instances if i.instance_id == name]
    return info


async def test_refusals_are_retried_ejected_and_the_instance_returns(rig: Rig) -> None:
    for name in ("n0", "n1", "n2"):
        await rig.node(name)
    clock = FakeClock()
    stub = await rig.gateway(strategy="round_robin", clock=clock, ejection_base_s=1.0)
    rig.nodes["n1"].refuse = True
    answers = [await stub.Evaluate(request(), timeout=5) for _ in range(30)]  # none fails
    assert {a.evaluation.instance_id for a in answers} == {"n0", "n2"}
    assert sum(a.attempts == 2 for a in answers) == 3  # each refusal went elsewhere
    assert rig.nodes["n1"].hits == 3  # three in a row: ejected
    info = await instance_info(stub, "n1")
    assert info.ejected and not info.routable and info.failures == 3
    assert info.ejected_for.ToNanoseconds() > 0
    assert info.health == coordinator_pb2.INSTANCE_HEALTH_SERVING  # healthy, just ejected
    for _ in range(10):
        await stub.Evaluate(request(), timeout=5)
    assert rig.nodes["n1"].hits == 3  # no traffic while ejected
    rig.nodes["n1"].refuse = False
    clock.now += 1.5  # the ejection is over
    served = {(await stub.Evaluate(request(), timeout=5)).evaluation.instance_id for _ in range(9)}
    assert served == {"n0", "n1", "n2"}
    info = await instance_info(stub, "n1")
    assert not info.ejected and info.routable


async def test_broken_call_is_in_doubt_and_not_sent_again_with_not_sent_policy(rig: Rig) -> None:
    a = await rig.node("a", "ra")
    b = await rig.node("b", "rb")
    stub = await rig.gateway(strategy="round_robin", evaluate_retry="not-sent")
    a.hold = asyncio.Event()
    call = asyncio.ensure_future(stub.Evaluate(request("ra"), timeout=10))
    await wait_for(lambda: a.hits == 1)
    await rig.kill("a")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    details = details_from_error(info.value)
    assert details.code is grpc.StatusCode.UNAVAILABLE
    assert details.reason == "EVALUATION_IN_DOUBT"
    assert details.metadata["endpoint"] == rig.servers["a"].address
    assert details.metadata["attempts"] == "1"
    assert b.hits == 0
    # new calls for "ra" go elsewhere once the break is seen, and are not in doubt
    await wait_for(lambda: rig.health("a") is Health.UNREACHABLE)
    answer = await stub.Evaluate(request("ra"), timeout=5)
    assert answer.evaluation.instance_id == "b" and answer.attempts == 1


async def test_broken_call_moves_on_with_connection_lost_policy(rig: Rig) -> None:
    a = await rig.node("a", "ra")
    b = await rig.node("b", "rb")
    stub = await rig.gateway(strategy="round_robin", evaluate_retry="connection-lost")
    a.hold = asyncio.Event()
    call = asyncio.ensure_future(stub.Evaluate(request("ra", "req-1"), timeout=10))
    await wait_for(lambda: a.hits == 1)
    await rig.kill("a")
    answer = await call
    assert answer.evaluation.instance_id == "b" and answer.evaluation.request_id == "req-1"
    assert answer.attempts == 2 and answer.endpoint == rig.servers["b"].address
    assert (a.hits, b.hits) == (1, 1)


async def test_a_call_whose_every_attempt_broke_says_each_may_have_recorded_it(
    rig: Rig,
) -> None:
    """connection-lost with one retry: both nodes had the action when their connections
    broke. The call is in doubt on both, and says so (it said "not sent again")."""
    nodes = [await rig.node("n0"), await rig.node("n1")]
    for node in nodes:
        node.hold = asyncio.Event()
    stub = await rig.gateway(
        strategy="round_robin", evaluate_retry="connection-lost", max_retries=1
    )
    call = asyncio.ensure_future(stub.Evaluate(request(), timeout=10))
    await wait_for(lambda: sum(n.hits for n in nodes) == 1)
    first, second = ("n0", "n1") if nodes[0].hits else ("n1", "n0")
    await rig.kill(first)
    await wait_for(lambda: sum(n.hits for n in nodes) == 2)
    await rig.kill(second)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    details = details_from_error(info.value)
    assert details.reason == "EVALUATION_IN_DOUBT" and details.metadata["attempts"] == "2"
    assert "not sent again" not in details.message
    assert "recorded on any of the 2" in details.message


async def test_calls_to_a_dead_instance_move_without_failing(rig: Rig) -> None:
    for name in ("n0", "n1", "n2"):
        await rig.node(name)
    stub = await rig.gateway(strategy="round_robin")
    await rig.kill("n1")
    # sent at once, before or while the health stream reports the break
    answers = await asyncio.gather(*(stub.Evaluate(request(), timeout=5) for _ in range(30)))
    assert {a.evaluation.instance_id for a in answers} <= {"n0", "n2"}
    await wait_for(lambda: rig.health("n1") is Health.UNREACHABLE)
    info = await instance_info(stub, "n1")
    assert info.health == coordinator_pb2.INSTANCE_HEALTH_UNREACHABLE and not info.routable


def rpc_error(code: grpc.StatusCode, details: str, status: bool = False) -> grpc.aio.AioRpcError:
    trailing = (
        grpc.aio.Metadata(("grpc-status-details-bin", b"\x08\x0e"))
        if status
        else grpc.aio.Metadata()
    )
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=details)


@pytest.mark.parametrize(
    ("error", "not_sent", "connection_lost"),
    [
        # never reached a node
        (rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"), True, True),
        (ConnectionRefusedError(), True, True),
        # the node itself refused (its own google.rpc.Status): it did nothing
        (rpc_error(grpc.StatusCode.UNAVAILABLE, "not now", status=True), True, True),
        # the connection broke while the node had the call
        (rpc_error(grpc.StatusCode.UNAVAILABLE, "Socket closed"), False, True),
        (rpc_error(grpc.StatusCode.UNAVAILABLE, "Cancelling all calls"), False, True),
        # never retried
        (rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad", status=True), False, False),
        (rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), False, False),
        (rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", status=True), False, False),
        (rpc_error(grpc.StatusCode.INTERNAL, "boom"), False, False),
    ],
)
def test_evaluate_retry_classification(
    error: BaseException, not_sent: bool, connection_lost: bool
) -> None:
    from coordinator.gateway import EvaluateRetry

    assert evaluate_retryable(error, EvaluateRetry.NOT_SENT) is not_sent
    assert evaluate_retryable(error, EvaluateRetry.CONNECTION_LOST) is connection_lost


async def test_no_healthy_instance_is_unavailable_with_a_reason(rig: Rig) -> None:
    await rig.node("n0")
    stub = await rig.gateway(strategy="round_robin")
    await rig.servers["n0"].set_serving(False)
    await wait_for(lambda: rig.health("n0") is Health.NOT_SERVING)
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await stub.Evaluate(request("r1"), timeout=5)
    details = details_from_error(unary.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "NO_HEALTHY_INSTANCE")
    assert details.metadata["region_id"] == "r1"
    # the message says why: the instance the call could have gone to, and its state
    assert f"{rig.servers['n0'].address} not_serving" in details.message
    assert "attempts" not in details.metadata  # nothing was sent
    call = stub.EvaluateStream(timeout=5)
    await call.write(
        coordinator_pb2.CoordinatorServiceEvaluateStreamRequest(action=request().action)
    )
    with pytest.raises(grpc.aio.AioRpcError) as stream:
        await call.read()
    assert details_from_error(stream.value).reason == "NO_HEALTHY_INSTANCE"
    assert rig.nodes["n0"].hits == 0 and rig.nodes["n0"].stream_seen == []
