"""Review (37) of the coordinator's gateway and summary streams, against real servers on
loopback (port 0)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from meshutil import wait_for
from test_gateway_failover import Rig

from coordinator.gateway import EvaluateRetry, Gateway, GatewaySettings
from nethical_grpc.errors import Unavailable
from nethical_grpc.v1 import coordinator_pb2, governance_pb2

StreamReq = coordinator_pb2.CoordinatorServiceEvaluateStreamRequest


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    yield r
    await r.close()


def stream_request(i: int, region: str = "", text: str = "") -> StreamReq:
    return StreamReq(
        action=governance_pb2.AgentAction(
            agent_id="a",
            action_text=f"SELECT {i} {text}",
            action_type="query",
            request_id=f"req-{i}",
        ),
        region_id=region,
    )


async def test_a_stream_that_fails_while_the_client_is_far_ahead_ends_with_its_status(
    rig: Rig,
) -> None:
    """The client has sent far more actions than the gateway reads ahead when the relay
    fails: the node holds the stream (reads no more, so flow control holds the gateway's
    writes and the gateway's inbox of the client's actions fills), then dies. Before, the
    gateway's reader of the client's stream, cancelled while waiting for room in that
    inbox, waited for room again to say "done", which nobody would ever make: the call
    hung (and its tasks leaked) until the client's deadline. Now STREAM_INTERRUPTED
    reaches the client at once.

    The coordinator's own gateway over its real registry and a real node, fed as its
    servicer feeds it: the client's stream as an async iterator, here one that always
    has the next action ready (as gRPC has, once the client's messages arrived)."""
    node = await rig.node("n0")
    node.stream_answer_limit = 0  # holds the stream after its first action
    await rig.gateway(strategy="round_robin")
    gateway = Gateway(rig.registry, GatewaySettings(evaluate_retry=EvaluateRetry.NOT_SENT))
    text = "x" * 256 * 1024
    sent = 0

    async def requests() -> AsyncIterator[StreamReq]:
        nonlocal sent
        for i in range(400):
            sent += 1
            yield stream_request(i, "r1" if i == 0 else "", text)

    async def relay() -> list[object]:
        return [a async for a in gateway.evaluate_stream(requests(), 20.0)]

    relaying = asyncio.ensure_future(relay())
    try:
        await wait_for(lambda: bool(node.stream_seen), 5.0)
        await asyncio.sleep(0.5)
        assert sent < 400  # the writes are held: the client is ahead
        await rig.kill("n0")
        done, _ = await asyncio.wait([relaying], timeout=3.0)
        assert done, "the relay hung after its node died"
    finally:
        relaying.cancel()
        await asyncio.wait([relaying])
    with pytest.raises(Unavailable) as caught:
        relaying.result()
    assert caught.value.reason == "STREAM_INTERRUPTED"
