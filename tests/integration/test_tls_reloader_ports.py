"""One server bound to two ports shares one TLS loader: a rotation reaches both ports,
and the files are read, checked and warned about once, not once per port.

Real grpc.aio servers on port 0 and real TLS handshakes (Python's ``ssl`` client) with
certificates issued at test time by throwaway CAs (``openssl``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshutil import peer_serial, require_openssl

from nethical_grpc.health import HealthService
from nethical_grpc.security.config import ServerSecurity
from nethical_grpc.security.devcerts import DevCA, IssuedCert
from nethical_grpc.security.tls import TlsConfig

TLS_LOGGER = "nethical_grpc.security.tls"


@dataclass
class TwoPorts:
    server: grpc.aio.Server
    ports: tuple[int, int]
    cert: Path
    key: Path
    old_ca: DevCA
    new_ca: DevCA
    root: Path


def _install(src: IssuedCert, cert: Path, key: Path, *, parts: str = "both") -> None:
    """Replace the live files atomically (a new inode each, as a secret update does)."""
    chosen = []
    if parts in ("both", "cert"):
        chosen.append((src.cert_file, cert))
    if parts in ("both", "key"):
        chosen.append((src.key_file, key))
    for s, d in chosen:
        tmp = d.with_name(d.name + ".new")
        shutil.copy(s, tmp)
        os.replace(tmp, d)


async def serial(port: int, ca: DevCA) -> int:
    return await asyncio.to_thread(peer_serial, port, ca.cert_file)


@pytest.fixture
async def two_ports(tmp_path: Path) -> AsyncIterator[TwoPorts]:
    require_openssl()
    old_ca = DevCA.create(tmp_path / "old-ca", "old-ca")
    new_ca = DevCA.create(tmp_path / "new-ca", "new-ca")
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "tls.crt", live / "tls.key"
    _install(old_ca.issue(tmp_path / "first", "region-node", serial=1001), cert, key)
    security = ServerSecurity(TlsConfig(cert, key))
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(HealthService(), server)
    # what the runtime does for each address of the listening host
    first = security.add_port(server, "127.0.0.1:0")
    second = security.add_port(server, "127.0.0.1:0")
    assert first and second and first != second
    await server.start()
    try:
        yield TwoPorts(server, (first, second), cert, key, old_ca, new_ca, tmp_path)
    finally:
        await server.stop(0)


def _messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_a_rotation_reaches_both_ports_and_is_loaded_once(
    two_ports: TwoPorts, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = two_ports.ports
    assert await serial(a, two_ports.old_ca) == 1001
    assert await serial(b, two_ports.old_ca) == 1001

    with caplog.at_level(logging.INFO, logger=TLS_LOGGER):
        rotated = two_ports.new_ca.issue(two_ports.root / "rotated", "region-node", serial=2002)
        _install(rotated, two_ports.cert, two_ports.key)
        # the first port to handshake picks the change up; the second still gets it
        assert await serial(a, two_ports.new_ca) == 2002
        assert await serial(b, two_ports.new_ca) == 2002
        assert await serial(a, two_ports.new_ca) == 2002
        # a client trusting only the old CA is refused on both ports now
        for port in (a, b):
            with pytest.raises(ssl.SSLCertVerificationError):
                await serial(port, two_ports.old_ca)
        # read once for the server, not once per port
        assert len(_messages(caplog, "TLS certificates reloaded")) == 1

        # the next rotation, asked for by the other port first
        third = two_ports.new_ca.issue(two_ports.root / "third", "region-node", serial=3003)
        _install(third, two_ports.cert, two_ports.key)
        assert await serial(b, two_ports.new_ca) == 3003
        assert await serial(a, two_ports.new_ca) == 3003
        assert len(_messages(caplog, "TLS certificates reloaded")) == 2

    # gRPC itself serves both ports with the new certificate
    for port in (a, b):
        creds = grpc.ssl_channel_credentials(two_ports.new_ca.cert_file.read_bytes())
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{port}",
            creds,
            options=[("grpc.ssl_target_name_override", "localhost")],
        ) as ch:
            got = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert got.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_bad_replacement_is_warned_about_once_for_both_ports(
    two_ports: TwoPorts, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = two_ports.ports
    other = two_ports.new_ca.issue(two_ports.root / "other", "region-node", serial=4004)
    with caplog.at_level(logging.WARNING, logger=TLS_LOGGER):
        # half a rotation: the new certificate with the old key
        _install(other, two_ports.cert, two_ports.key, parts="cert")
        for _ in range(3):
            for port in (a, b):
                assert await serial(port, two_ports.old_ca) == 1001  # the old one stays
        warned = _messages(caplog, "not reloaded")
        assert len(warned) == 1, warned
        assert "does not match" in warned[0]

        # the key arrives: both ports serve the new certificate, nothing more is warned
        _install(other, two_ports.cert, two_ports.key, parts="key")
        assert await serial(b, two_ports.new_ca) == 4004
        assert await serial(a, two_ports.new_ca) == 4004
        assert len(_messages(caplog, "not reloaded")) == 1


async def test_credentials_made_after_a_rotation_start_from_the_current_certificate(
    tmp_path: Path,
) -> None:
    """A port whose credentials come from the shared loader after it reloaded serves
    the reloaded certificate at once (and keeps following later rotations)."""
    from nethical_grpc.security.tls import ServerTls

    require_openssl()
    ca = DevCA.create(tmp_path / "ca", "ca")
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "tls.crt", live / "tls.key"
    _install(ca.issue(tmp_path / "one", "region-node", serial=11), cert, key)
    loader = ServerTls(TlsConfig(cert, key))
    early, late = grpc.aio.server(), grpc.aio.server()
    try:
        first = early.add_secure_port("127.0.0.1:0", loader.credentials())
        await early.start()
        assert await serial(first, ca) == 11
        _install(ca.issue(tmp_path / "two", "region-node", serial=22), cert, key)
        assert await serial(first, ca) == 22
        second = late.add_secure_port("127.0.0.1:0", loader.credentials())
        await late.start()
        assert await serial(second, ca) == 22
        _install(ca.issue(tmp_path / "three", "region-node", serial=33), cert, key)
        assert await serial(second, ca) == 33
        assert await serial(first, ca) == 33
        assert loader.reloads == 2
    finally:
        await early.stop(0)
        await late.stop(0)


async def test_another_server_from_the_same_settings_reads_the_files_itself(
    tmp_path: Path,
) -> None:
    """Ports share a loader within one server only: a server started later from the same
    settings reads the files again, and bad files refuse its start, as before."""
    require_openssl()
    ca = DevCA.create(tmp_path / "ca", "ca")
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "tls.crt", live / "tls.key"
    _install(ca.issue(tmp_path / "one", "region-node", serial=11), cert, key)
    security = ServerSecurity(TlsConfig(cert, key))
    server = grpc.aio.server()
    first = security.add_port(server, "127.0.0.1:0")
    await server.start()
    try:
        assert await serial(first, ca) == 11
    finally:
        await server.stop(0)

    # half a rotation: the new certificate with the old key
    _install(ca.issue(tmp_path / "two", "region-node", serial=22), cert, key, parts="cert")
    with pytest.raises(ValueError, match="does not match"):
        security.add_port(grpc.aio.server(), "127.0.0.1:0")
