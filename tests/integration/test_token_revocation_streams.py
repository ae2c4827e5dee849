"""A long-lived stream whose token is revoked, or whose roles no longer allow its method,
ends: a real region node behind :class:`BearerAuthInterceptor` with a tokens file
(127.0.0.1, port 0), the file rewritten while the streams are open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from nethical_grpc import client
from nethical_grpc.errors import details_from_error
from nethical_grpc.security.auth import ROLE_NOT_ALLOWED, TOKEN_UNKNOWN, BearerAuthInterceptor
from nethical_grpc.security.roles import Role
from nethical_grpc.security.tokens import BearerToken, TokenFile, token_line
from nethical_grpc.series import SummaryQuery
from nethical_grpc.server_runtime import MeshServer, start_server
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc
from region_node.node import NodeIdentity, RegionNode
from region_node.servicer import RegionNodeServicer, add_to_server

SERVICE = "nethical_grpc.v1.RegionNodeService"
INGEST = f"/{SERVICE}/Ingest"
RECHECK_S = 0.2

APP_A = BearerToken("app-a-token-0123456789abcdef")
APP_B = BearerToken("app-b-token-0123456789abcdef")
COORD_A = BearerToken("coord-a-token-0123456789abcdef")
COORD_B = BearerToken("coord-b-token-0123456789abcdef")

ALL = [
    (Role.CLIENT, "app-a", APP_A),
    (Role.CLIENT, "app-b", APP_B),
    (Role.COORDINATOR, "coord-a", COORD_A),
    (Role.COORDINATOR, "coord-b", COORD_B),
]


@dataclass
class Node:
    server: MeshServer
    auth: BearerAuthInterceptor
    tokens_path: Path
    channel: grpc.aio.Channel
    region: RegionNode

    @property
    def stub(self) -> Any:
        return region_node_pb2_grpc.RegionNodeServiceStub(self.channel)

    async def applied(self, values: int) -> None:
        """Wait until the node holds ``values`` values (the batches sent were handled)."""
        for _ in range(500):
            if sum(g.summary.count for g in self.region.summaries(SummaryQuery())) >= values:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the node never held {values} values")

    def write_tokens(self, lines: list[tuple[Role, str, BearerToken]]) -> None:
        """Replace the tokens file as a deployment would (write aside, rename)."""
        fresh = self.tokens_path.with_suffix(".new")
        fresh.write_text("".join(token_line(r, n, t) + "\n" for r, n, t in lines))
        fresh.replace(self.tokens_path)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    tokens_path = tmp_path / "tokens"
    tokens_path.write_text("".join(token_line(r, n, t) + "\n" for r, n, t in ALL))
    auth = BearerAuthInterceptor(
        TokenFile(tokens_path, check_interval_s=0.0), log_interval_s=0.0, stream_recheck_s=RECHECK_S
    )
    region = RegionNode(NodeIdentity("r1", "r1-0"))
    servicer = RegionNodeServicer(region)
    server = await start_server(
        [lambda s: add_to_server(servicer, s)],
        [SERVICE],
        interceptors=[auth],
    )
    channel = grpc.aio.insecure_channel(server.address)
    try:
        yield Node(server, auth, tokens_path, channel, region)
    finally:
        await channel.close(None)
        await server.drain(announce_s=0, grace_s=0)


def bearer(token: BearerToken) -> tuple[tuple[str, str], ...]:
    return (("authorization", token.header()),)


def batch(k: int) -> region_node_pb2.IngestRequest:
    return region_node_pb2.IngestRequest.FromString(
        client.encode_ingest_request("latency_ms", np.arange(1.0, 11.0) + k)
    )


def ingest(node: Node, token: BearerToken) -> Any:
    return node.stub.Ingest(metadata=bearer(token), timeout=20)


async def test_a_revoked_tokens_ingest_stream_ends_unauthenticated(node: Node) -> None:
    revoked, kept = ingest(node, APP_A), ingest(node, APP_B)
    await revoked.write(batch(0))
    await kept.write(batch(0))
    await node.applied(20)  # both let in (checked at their start), read and applied
    node.write_tokens([t for t in ALL if t[2] is not APP_A])
    await asyncio.sleep(RECHECK_S * 1.5)  # past the re-check interval
    await revoked.write(batch(1))  # the message that finds the token revoked
    await kept.write(batch(1))
    await revoked.done_writing()
    await kept.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await revoked
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    details = details_from_error(err.value)
    # the per-call refusal's details, and what was applied before it: the first batch only
    assert details.reason == TOKEN_UNKNOWN
    assert details.message == "unknown bearer token"
    assert details.metadata["applied_batches"] == "1"
    assert details.metadata["applied_values"] == "10"
    answer = await kept  # token B still holds: its stream went on
    assert answer.accepted_batches == 2
    assert answer.accepted_values == 20
    assert node.auth.denied == {TOKEN_UNKNOWN: 1}


async def test_a_stream_whose_roles_no_longer_allow_it_is_permission_denied(node: Node) -> None:
    call = ingest(node, APP_A)
    await call.write(batch(0))
    await node.applied(10)
    # app-a stays known, but as an operator, which may not ingest
    node.write_tokens([(Role.OPERATOR, "app-a", APP_A), *ALL[1:]])
    await asyncio.sleep(RECHECK_S * 1.5)
    await call.write(batch(1))
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    details = details_from_error(err.value)
    assert details.reason == ROLE_NOT_ALLOWED
    assert details.metadata["principal"] == "app-a"
    assert details.metadata["roles"] == "operator"
    assert details.metadata["method"] == INGEST
    assert details.metadata["applied_batches"] == "1"


def query(query_id: int) -> region_node_pb2.StreamSummariesRequest:
    return region_node_pb2.StreamSummariesRequest(
        query_id=query_id, query=region_node_pb2.GetSummariesRequest()
    )


async def ask(call: Any, query_id: int) -> None:
    await call.write(query(query_id))
    answer = await call.read()
    assert isinstance(answer, region_node_pb2.StreamSummariesResponse)
    assert answer.query_id == query_id
    assert not answer.HasField("error")


async def test_a_revoked_coordinators_summary_stream_ends_within_the_recheck_interval(
    node: Node,
) -> None:
    revoked = node.stub.StreamSummaries(metadata=bearer(COORD_A), timeout=20)
    kept = node.stub.StreamSummaries(metadata=bearer(COORD_B), timeout=20)
    await ask(revoked, 1)
    await ask(kept, 1)
    node.write_tokens([t for t in ALL if t[2] is not COORD_A])
    revoked_at = time.monotonic()
    error: grpc.aio.AioRpcError | None = None
    query_id = 2
    while time.monotonic() - revoked_at < 10:  # the client keeps asking
        try:
            await ask(revoked, query_id)
        except grpc.aio.AioRpcError as exc:
            error = exc
            break
        query_id += 1
        await asyncio.sleep(RECHECK_S / 10)
    ended_after = time.monotonic() - revoked_at
    assert error is not None, "the revoked token's stream went on"
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert details_from_error(error).reason == TOKEN_UNKNOWN
    assert ended_after < RECHECK_S + 1.0
    # the still-valid token's stream goes on past several re-checks
    for n in range(2, 6):
        await ask(kept, n)
        await asyncio.sleep(RECHECK_S / 2)
    await kept.done_writing()
    assert await kept.read() is grpc.aio.EOF  # type: ignore[attr-defined]
    assert await kept.code() is grpc.StatusCode.OK
