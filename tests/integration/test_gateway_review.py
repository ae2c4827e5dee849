"""Gateway review: what a caller is told when an Evaluate may already have been
evaluated, and coordinator settings that name regions it does not know."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from meshutil import wait_for
from test_gateway_failover import Rig, request

from coordinator.gateway_config import GatewayConfig
from coordinator.server import CoordinatorConfig, start_coordinator
from nethical_grpc.errors import details_from_error


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    yield r
    await r.close()


async def test_a_call_that_reached_a_node_before_its_retries_found_none_is_in_doubt(
    rig: Rig,
) -> None:
    """connection-lost: the only node of the region had the action when its connection
    broke, and the retries found no node to go to. The caller must not be told the
    action reached no node (NO_HEALTHY_INSTANCE / NO_REACHABLE_INSTANCE, which say it is
    safe to send again): it may have been evaluated and recorded there."""
    a = await rig.node("a", "ra")
    await rig.node("b", "rb")
    stub = await rig.gateway(strategy="round_robin", evaluate_retry="connection-lost")
    a.hold = asyncio.Event()
    req = request("ra", "req-1")
    req.stay_in_region = True
    call = asyncio.ensure_future(stub.Evaluate(req, timeout=10))
    await wait_for(lambda: a.hits == 1)
    await rig.kill("a")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    details = details_from_error(info.value)
    assert details.code is grpc.StatusCode.UNAVAILABLE, details.message
    assert details.reason == "EVALUATION_IN_DOUBT", (details.reason, details.message)
    assert details.metadata["endpoint"] == rig.servers["a"].address
    assert rig.nodes["b"].hits == 0


@pytest.mark.parametrize(
    ("proximity", "unknown"),
    [
        ({"r1": ["r3"]}, "r3"),
        ({"r1": ["r2", "eu-wset-1"]}, "eu-wset-1"),
        ({"mars-1": ["r1"]}, "mars-1"),
    ],
)
async def test_a_region_order_naming_an_unknown_region_stops_the_start(
    proximity: dict[str, list[str]], unknown: str
) -> None:
    """A typo in --region-order would be left out of the order without a word, and the
    calls it meant to keep near would go by measured latency, to any region."""
    config = CoordinatorConfig(
        regions={"r1": ["127.0.0.1:9"], "r2": ["127.0.0.1:10"]},
        gateway=GatewayConfig(local_region="r1", proximity=proximity),
    )
    with pytest.raises(ValueError, match=f"--region-order.*'{unknown}'"):
        await start_coordinator(config)
