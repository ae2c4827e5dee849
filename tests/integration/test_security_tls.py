"""TLS and mutual TLS on real grpc.aio servers, with certificates made at test time.

A throwaway CA (``openssl``) issues the server and client certificates into a
temporary directory; nothing is committed. Certificate reloading is checked on the
wire: after the server's files are replaced, a new TLS connection (Python's ``ssl``
client) is served the new certificate's serial number.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshutil import peer_serial, require_openssl

from nethical_grpc.errors import details_from_error
from nethical_grpc.health import HealthService
from nethical_grpc.security.auth import ROLE_NOT_ALLOWED
from nethical_grpc.security.channels import channel_factory, mesh_channel
from nethical_grpc.security.config import ServerSecurity
from nethical_grpc.security.devcerts import DevCA, IssuedCert
from nethical_grpc.security.roles import Role
from nethical_grpc.security.tls import TlsConfig
from nethical_grpc.security.tokens import BearerToken, TokenStore
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc

COORDINATOR_TOKEN = BearerToken("coordinator-token-tls-0123456789")
FRESH = [("grpc.use_local_subchannel_pool", 1)]  # every channel dials its own connection


@dataclass
class Pki:
    root: Path
    ca: DevCA
    other_ca: DevCA
    server: IssuedCert
    client: IssuedCert
    stranger: IssuedCert  # a client certificate from another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    require_openssl()
    root = tmp_path_factory.mktemp("pki")
    ca = DevCA.create(root / "ca", "mesh-ca")
    other = DevCA.create(root / "other", "other-ca")
    return Pki(
        root,
        ca,
        other,
        server=ca.issue(root / "server", "region-node", serial=1001),
        client=ca.issue(root / "client", "coordinator"),
        stranger=other.issue(root / "stranger", "coordinator"),
    )


class RecordingRegion(region_node_pb2_grpc.RegionNodeServiceServicer):
    """Answers GetNodeInfo and GetSummaries; remembers who called (certificate CN)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[bytes]]] = []

    def _record(self, method: str, context: Any) -> None:
        self.calls.append((method, list(context.auth_context().get("x509_common_name", []))))

    async def GetNodeInfo(  # noqa: N802
        self, request: Any, context: Any
    ) -> region_node_pb2.GetNodeInfoResponse:
        self._record("GetNodeInfo", context)
        return region_node_pb2.GetNodeInfoResponse(region_id="eu-west-1")

    async def GetSummaries(  # noqa: N802
        self, request: Any, context: Any
    ) -> region_node_pb2.GetSummariesResponse:
        self._record("GetSummaries", context)
        return region_node_pb2.GetSummariesResponse()


@dataclass
class TlsServer:
    server: grpc.aio.Server
    port: int
    servicer: RecordingRegion
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self, tls: TlsConfig | None, token: BearerToken | None = None) -> grpc.aio.Channel:
        ch = mesh_channel(self.address, tls, token, options=FRESH)
        self.channels.append(ch)
        return ch

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()
        await self.server.stop(0)


async def start_tls_server(security: ServerSecurity) -> TlsServer:
    servicer = RecordingRegion()
    server = grpc.aio.server(interceptors=security.interceptors())
    region_node_pb2_grpc.add_RegionNodeServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(HealthService(), server)
    port = security.add_port(server, "127.0.0.1:0")
    assert port
    await server.start()
    return TlsServer(server, port, servicer)


@pytest.fixture
async def mtls_server(pki: Pki) -> AsyncIterator[TlsServer]:
    tokens = TokenStore.from_tokens({"coord": ([Role.COORDINATOR], COORDINATOR_TOKEN)})
    s = await start_tls_server(ServerSecurity(pki.ca.server_tls(pki.server, True), tokens))
    yield s
    await s.close()


async def check(ch: grpc.aio.Channel) -> int:
    response = await health_pb2_grpc.HealthStub(ch).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    return int(response.status)


async def node_info(ch: grpc.aio.Channel) -> str:
    stub = region_node_pb2_grpc.RegionNodeServiceStub(ch)
    info = await stub.GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=5)
    return str(info.region_id)


@pytest.mark.parametrize("call_credentials", [False, True], ids=["interceptor", "callcreds"])
async def test_mutual_tls_with_a_ca_signed_client_certificate(
    pki: Pki, mtls_server: TlsServer, call_credentials: bool
) -> None:
    ch = mesh_channel(
        mtls_server.address,
        pki.ca.client_tls(pki.client),
        COORDINATOR_TOKEN,
        options=FRESH,
        call_credentials=call_credentials,
    )
    mtls_server.channels.append(ch)
    assert await check(ch) == health_pb2.HealthCheckResponse.SERVING
    assert await node_info(ch) == "eu-west-1"
    # the server saw the client's certificate
    assert mtls_server.servicer.calls == [("GetNodeInfo", [b"coordinator"])]


@pytest.mark.parametrize("client", ["none", "stranger", "plaintext"])
async def test_handshake_fails_without_a_trusted_client_certificate(
    pki: Pki, mtls_server: TlsServer, client: str
) -> None:
    tls = {
        "none": pki.ca.client_tls(None),
        "stranger": TlsConfig(pki.stranger.cert_file, pki.stranger.key_file, pki.ca.cert_file),
        "plaintext": None,
    }[client]
    ch = mtls_server.channel(tls, COORDINATOR_TOKEN)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await node_info(ch)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await check(ch)  # not even health: the connection itself is refused
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert mtls_server.servicer.calls == []


async def test_client_refuses_a_server_it_does_not_trust(pki: Pki, mtls_server: TlsServer) -> None:
    tls = TlsConfig(pki.client.cert_file, pki.client.key_file, pki.other_ca.cert_file)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await check(mtls_server.channel(tls))
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_server_tls_without_client_certificates(pki: Pki) -> None:
    s = await start_tls_server(ServerSecurity(pki.ca.server_tls(pki.server)))
    try:
        assert await node_info(s.channel(pki.ca.client_tls(None))) == "eu-west-1"
        assert s.servicer.calls == [("GetNodeInfo", [])]
    finally:
        await s.close()


async def test_server_name_override(pki: Pki, tmp_path: Path) -> None:
    named = pki.ca.issue(tmp_path, "named", hosts=["region.mesh.internal"])
    s = await start_tls_server(ServerSecurity(pki.ca.server_tls(named)))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await check(s.channel(pki.ca.client_tls(None)))  # 127.0.0.1 is not in its SANs
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        tls = pki.ca.client_tls(None, server_name="region.mesh.internal")
        assert await check(s.channel(tls)) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await s.close()


async def test_coordinator_channels_carry_mtls_and_the_coordinator_token(
    pki: Pki, mtls_server: TlsServer
) -> None:
    """What the coordinator's balancer gets from channel_factory: summaries yes, raw no."""
    make = channel_factory(pki.ca.client_tls(pki.client), COORDINATOR_TOKEN)
    ch = make(mtls_server.address)
    mtls_server.channels.append(ch)
    stub = region_node_pb2_grpc.RegionNodeServiceStub(ch)
    await stub.GetSummaries(region_node_pb2.GetSummariesRequest(), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SearchAudit(region_node_pb2.SearchAuditRequest(), timeout=5)
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert details_from_error(info.value).reason == ROLE_NOT_ALLOWED
    # the same mTLS channel without a token is unauthenticated
    bare = mtls_server.channel(pki.ca.client_tls(pki.client))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await node_info(bare)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert [m for m, _ in mtls_server.servicer.calls] == ["GetSummaries"]


def _peer_serial(port: int, pki: Pki) -> int:
    """The serial of the certificate a fresh mutual-TLS connection is served."""
    return peer_serial(port, pki.ca.cert_file, (pki.client.cert_file, pki.client.key_file))


def _install(src: IssuedCert, cert: Path, key: Path, *, parts: str = "both") -> None:
    """Replace the live files atomically (a new inode each, as a secret update does)."""
    pairs = {"cert": [(src.cert_file, cert)], "key": [(src.key_file, key)]}
    chosen = pairs["cert"] + pairs["key"] if parts == "both" else pairs[parts]
    for s, d in chosen:
        tmp = d.with_name(d.name + ".new")
        shutil.copy(s, tmp)
        os.replace(tmp, d)


async def test_certificate_rotation_reaches_new_connections_without_restart(
    pki: Pki, tmp_path: Path
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "tls.crt", live / "tls.key"
    _install(pki.server, cert, key)
    tls = TlsConfig(cert, key, pki.ca.cert_file, require_client_cert=True)
    s = await start_tls_server(ServerSecurity(tls))
    try:
        client_tls = pki.ca.client_tls(pki.client)
        assert await asyncio.to_thread(_peer_serial, s.port, pki) == 1001
        old = s.channel(client_tls)
        assert await node_info(old) == "eu-west-1"

        rotated = pki.ca.issue(tmp_path / "rotated", "region-node", serial=2002)
        _install(rotated, cert, key)
        assert await asyncio.to_thread(_peer_serial, s.port, pki) == 2002
        assert await node_info(s.channel(client_tls)) == "eu-west-1"  # new connection
        assert await node_info(old) == "eu-west-1"  # the established one carries on

        # half a rotation (new certificate, old key) is not served ...
        third = pki.ca.issue(tmp_path / "third", "region-node", serial=3003)
        _install(third, cert, key, parts="cert")
        assert await asyncio.to_thread(_peer_serial, s.port, pki) == 2002
        assert await node_info(s.channel(client_tls)) == "eu-west-1"
        # ... until its key arrives
        _install(third, cert, key, parts="key")
        assert await asyncio.to_thread(_peer_serial, s.port, pki) == 3003
    finally:
        await s.close()
