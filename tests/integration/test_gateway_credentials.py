"""A region node that refuses the coordinator's own credentials: the client is not told
its token was wrong, nor the coordinator's principal; the coordinator's log says why."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from test_security_auth import TOKENS, WRONG, store

from coordinator import instances
from coordinator.gateway_config import GatewayConfig
from coordinator.server import CoordinatorConfig, start_coordinator
from nethical_grpc import client
from nethical_grpc.errors import details_from_error
from nethical_grpc.security.channels import channel_factory
from nethical_grpc.security.config import ServerSecurity
from nethical_grpc.security.roles import Role
from nethical_grpc.security.tokens import BearerToken
from nethical_grpc.server_runtime import MeshServer
from nethical_grpc.v1 import coordinator_pb2, coordinator_pb2_grpc, governance_pb2
from region_node.server import RegionServerConfig, start_region_server


@pytest.fixture(params=["unknown token", "operator token"])
async def coordinator(request: pytest.FixtureRequest) -> AsyncIterator[tuple[MeshServer, str]]:
    token = BearerToken(WRONG) if request.param == "unknown token" else TOKENS[Role.OPERATOR]
    node, _ = await start_region_server(
        RegionServerConfig(region_id="r1", security=ServerSecurity(None, store()))
    )
    coord, federation = await start_coordinator(
        CoordinatorConfig(
            regions={"r1": [node.address]},
            gateway=GatewayConfig(channel_factory=channel_factory(None, token)),
        )
    )
    assert await federation.registry.wait_ready(10.0)  # health needs no token
    yield coord, request.param
    await coord.drain(announce_s=0, grace_s=0)
    await node.drain(announce_s=0, grace_s=0)


async def test_the_client_is_not_blamed(
    coordinator: tuple[MeshServer, str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, token = coordinator
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(instances, "_credentials_logged", {})  # not limited by other tests
    async with client.insecure_channel(server.address) as ch:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(ch)
        action = governance_pb2.AgentAction(agent_id="a", action_text="list files")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Evaluate(
                coordinator_pb2.CoordinatorServiceEvaluateRequest(action=action), timeout=10
            )
        details = details_from_error(err.value)
        assert details.code is grpc.StatusCode.INTERNAL
        assert details.reason == "UPSTREAM_CREDENTIALS_REFUSED"
        assert "token" not in details.message and "operator" not in details.message
        assert "principal" not in details.metadata
        answer = await client.global_metrics(ch, client.QueryOptions(), timeout=10)
    if token == "unknown token":  # (an operator may read summaries: then nothing is missing)
        [missing] = answer.coverage.missing
        assert missing.message.endswith("the node refused the coordinator's credentials")
        assert "unknown" not in missing.message
    assert "refused the coordinator's credentials" in caplog.text  # the operator's view
