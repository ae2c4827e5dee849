"""Review of the security package (round 36), on real gRPC servers with real certificates:
a rotated key that the server could not read at first is served once its permissions
are fixed, and the dev CA's default certificate serves clients dialling ::1."""

from __future__ import annotations

import asyncio
import encodings.idna  # noqa: F401  (socket's lazy import: unreadable to nobody under /root)
import logging
import os
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshutil import require_openssl

from nethical_grpc.health import HealthService
from nethical_grpc.security.config import ServerSecurity
from nethical_grpc.security.devcerts import DevCA, IssuedCert
from nethical_grpc.security.tls import TlsConfig

NOBODY = 65534


async def _serve(security: ServerSecurity, address: str) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(interceptors=security.interceptors())
    health_pb2_grpc.add_HealthServicer_to_server(HealthService(), server)
    port = security.add_port(server, address)
    assert port
    await server.start()
    return server, port


# --- certificate rotation: a key made readable by chmod/chown -----------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the unprivileged server user can enter (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="nethical-review36-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _server_uid() -> int:
    """Who the server's file reads run as: ``nobody`` when the tests run as root (root
    reads any file whatever its mode), else the tests' own user."""
    return NOBODY if os.geteuid() == 0 else os.geteuid()


def _place(src: Path, dst: Path, mode: int, uid: int) -> None:
    """Install ``src`` at ``dst`` as a new inode (a secret update's rename), owned by
    ``uid`` with ``mode``."""
    tmp = dst.with_name(dst.name + ".new")
    shutil.copy(src, tmp)
    if os.geteuid() == 0:
        os.chown(tmp, uid, -1)
    tmp.chmod(mode)
    os.replace(tmp, dst)


def _served_serial(port: int, ca: DevCA, uid: int) -> int:
    """The serial of the certificate a new TLS connection is served, with the process's
    effective user ``uid`` while it is made (gRPC re-reads its files in that handshake)."""
    ctx = ssl.create_default_context(cafile=str(ca.cert_file))
    ctx.set_alpn_protocols(["h2"])
    switch = os.geteuid() != uid
    if switch:
        os.seteuid(uid)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as conn:
                cert = conn.getpeercert()
    finally:
        if switch:
            os.seteuid(0)
    assert cert is not None
    return int(str(cert["serialNumber"]), 16)


async def test_a_rotated_key_made_readable_afterwards_is_served(
    tmp_path: Path, shared_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rotation that lands the new key unreadable to the server (root's 0600, say) is
    not applied; the operator's chmod/chown that fixes it changes the file's ctime only.
    The server used to compare device, inode, size and mtime, so it never tried the key
    again and served the old certificate until it expired."""
    require_openssl()
    uid = _server_uid()
    ca = DevCA.create(tmp_path / "ca")
    first = ca.issue(tmp_path / "first", "node", serial=1001)
    second = ca.issue(tmp_path / "second", "node", serial=2002)
    cert, key = shared_dir / "tls.crt", shared_dir / "tls.key"

    def install(leaf: IssuedCert, key_mode: int) -> None:
        _place(leaf.cert_file, cert, 0o644, uid)
        _place(leaf.key_file, key, key_mode, uid)

    install(first, 0o600)
    server, port = await _serve(ServerSecurity(TlsConfig(cert, key)), "127.0.0.1:0")
    try:
        assert await asyncio.to_thread(_served_serial, port, ca, uid) == 1001
        install(second, 0o000)  # the new key arrives unreadable to the server
        with caplog.at_level(logging.WARNING, "nethical_grpc.security.tls"):
            assert await asyncio.to_thread(_served_serial, port, ca, uid) == 1001
        assert any("Permission denied" in r.getMessage() for r in caplog.records)
        key.chmod(0o600)  # fixed in place: only the ctime changes
        assert await asyncio.to_thread(_served_serial, port, ca, uid) == 2002
    finally:
        await server.stop(0)


# --- dev certificates ---------------------------------------------------------------------


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_a_default_dev_certificate_serves_clients_dialling_ipv6_loopback(
    tmp_path: Path,
) -> None:
    """A server on ``localhost`` listens on ::1 too (server_runtime binds every loopback
    address); its default dev certificate named 127.0.0.1 but not ::1, so a client
    dialling ``[::1]:PORT`` failed the handshake (UNAVAILABLE)."""
    require_openssl()
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    ca = DevCA.create(tmp_path / "ca")
    leaf = ca.issue(tmp_path / "leaf", "node")
    server, port = await _serve(ServerSecurity(ca.server_tls(leaf)), "[::1]:0")
    try:
        # no server-name override: the address dialled is what the certificate must name
        async with grpc.aio.secure_channel(
            f"[::1]:{port}", grpc.ssl_channel_credentials(ca.cert_file.read_bytes())
        ) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(0)
