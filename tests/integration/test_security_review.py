"""Review of the security package: metadata parsing on a real server, token-file reload
logging, error messages that name the flag or variable the user actually set, and dev
certificates (dates, SANs, key usage)."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from nethical_grpc.errors import details_from_error
from nethical_grpc.security.auth import TOKEN_MALFORMED, BearerAuthInterceptor
from nethical_grpc.security.cert_dates import certificate_validity
from nethical_grpc.security.client_auth import bearer_call_credentials
from nethical_grpc.security.config import ServerSecurity, client_security_from_args
from nethical_grpc.security.devcerts import DevCA, openssl_available
from nethical_grpc.security.flags import add_client_arguments
from nethical_grpc.security.roles import Role
from nethical_grpc.security.tls import channel_credentials
from nethical_grpc.security.tokens import BearerToken, TokenFile, TokenStore, hash_token
from nethical_grpc.server_runtime import MeshServer, start_server

SERVICE = "nethical_grpc.v1.RegionNodeService"
SCORE = f"/{SERVICE}/Score"  # unary, clients only
CLIENT = BearerToken("client-token-review-0123456789")
OTHER = BearerToken("operator-token-review-0123456789")

needs_openssl = pytest.mark.skipif(not openssl_available(), reason="needs the openssl command")


@dataclass
class Served:
    server: MeshServer
    auth: BearerAuthInterceptor
    calls: list[list[tuple[str, str]]]


async def _serve(security: ServerSecurity | None = None) -> Served:
    calls: list[list[tuple[str, str]]] = []

    async def score(_request: bytes, context: Any) -> bytes:
        calls.append([(k, v) for k, v in context.invocation_metadata() if k == "authorization"])
        return b""

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Score": grpc.unary_unary_rpc_method_handler(score)}
    )
    store = TokenStore.from_tokens(
        {"app": ([Role.CLIENT], CLIENT), "ops": ([Role.OPERATOR], OTHER)}
    )
    auth = BearerAuthInterceptor(store, log_interval_s=0.0)
    server = await start_server(
        [lambda s: s.add_generic_rpc_handlers((handler,))],
        [SERVICE],
        interceptors=[auth],
        security=security,  # TLS only: the tokens are ``auth``'s
    )
    return Served(server, auth, calls)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    s = await _serve()
    yield s
    await s.server.drain(announce_s=0, grace_s=0)


def _raw(data: bytes) -> bytes:
    return data


async def _score(channel: grpc.aio.Channel, metadata: Any = None) -> grpc.aio.AioRpcError | None:
    try:
        call = channel.unary_unary(SCORE, _raw, _raw)
        await call(b"", metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as err:
        return err
    return None


# --- metadata parsing -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        f"Bearer {CLIENT.value} extra",  # not 'Bearer <token>'
        f"Bearer {CLIENT.value}, Bearer {OTHER.value}",  # two headers folded into one
    ],
    ids=["trailing-word", "folded-headers"],
)
async def test_a_bearer_value_whose_token_holds_spaces_is_malformed(
    served: Served, value: str
) -> None:
    """A token never holds whitespace (BearerToken refuses it): such a value is not
    'Bearer <token>', so it is TOKEN_MALFORMED, as the module's table says."""
    async with grpc.aio.insecure_channel(served.server.address) as ch:
        err = await _score(ch, [("authorization", value)])
    assert err is not None
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    assert details_from_error(err).reason == TOKEN_MALFORMED
    for secret in (CLIENT.value, OTHER.value):
        assert secret not in (err.details() or "")
    assert served.calls == []
    assert served.auth.denied == {TOKEN_MALFORMED: 1}


async def test_extra_spaces_around_a_good_token_are_accepted(served: Served) -> None:
    async with grpc.aio.insecure_channel(served.server.address) as ch:
        assert await _score(ch, [("authorization", f"  bearer   {CLIENT.value}  ")]) is None
    assert len(served.calls) == 1


@needs_openssl
async def test_call_credentials_add_to_caller_metadata_they_do_not_replace_it(
    tmp_path: Path,
) -> None:
    """gRPC call credentials append their metadata: a caller's own ``authorization``
    stays, and the server refuses the call as carrying two (client_auth's doc says so)."""
    ca = DevCA.create(tmp_path)
    leaf = ca.issue(tmp_path, "node")
    s = await _serve(ServerSecurity(ca.server_tls(leaf)))
    creds = grpc.composite_channel_credentials(
        channel_credentials(ca.client_tls()), bearer_call_credentials(CLIENT)
    )
    target = s.server.address.replace("127.0.0.1", "localhost")
    try:
        async with grpc.aio.secure_channel(target, creds) as ch:
            assert await _score(ch) is None
            assert s.calls == [[("authorization", CLIENT.header())]]
            err = await _score(ch, [("authorization", OTHER.header())])
        assert err is not None
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED
        assert details_from_error(err).reason == TOKEN_MALFORMED
    finally:
        await s.server.drain(announce_s=0, grace_s=0)


# --- token file reload logging ------------------------------------------------------------


def _replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "nethical_grpc.security.tokens" and r.levelno >= logging.ERROR
    ]


def test_a_broken_token_file_is_reported_once_until_it_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every lookup past the interval checks the file; a file that stays broken must not
    add an error line (and a re-parse) on each of them."""
    caplog.set_level(logging.INFO, logger="nethical_grpc.security.tokens")
    path = tmp_path / "tokens"
    _replace(path, f"client app {hash_token(CLIENT.value)}\n")
    store = TokenFile(path, check_interval_s=0.0)
    _replace(path, "client app not-a-hash\n")
    for _ in range(5):
        assert store.authenticate(CLIENT.value) is not None  # previous tokens kept
    assert len(_errors(caplog)) == 1
    _replace(path, "client app also-not-a-hash-and-longer\n")  # changed, still broken
    for _ in range(3):
        assert store.authenticate(CLIENT.value) is not None
    assert len(_errors(caplog)) == 2
    path.unlink()  # gone: one line, not one per lookup
    for _ in range(3):
        assert store.authenticate(CLIENT.value) is not None
    assert len(_errors(caplog)) == 3
    _replace(path, f"operator ops {hash_token(OTHER.value)}\n")  # fixed: loaded at once
    assert store.authenticate(CLIENT.value) is None
    assert store.authenticate(OTHER.value) is not None
    _replace(path, "client app not-a-hash\n")  # the same breakage again is reported again
    assert store.authenticate(OTHER.value) is not None
    assert len(_errors(caplog)) == 4


def test_a_token_file_emptied_in_place_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nethical_grpc.security.tokens")
    path = tmp_path / "tokens"
    path.write_text(f"client app {hash_token(CLIENT.value)}\n")
    store = TokenFile(path, check_interval_s=0.0)
    with path.open("r+") as f:
        f.truncate(0)
        for _ in range(3):
            assert store.authenticate(CLIENT.value) is not None
        assert len(_errors(caplog)) == 1
        f.write(f"operator ops {hash_token(OTHER.value)}\n")
    assert store.authenticate(OTHER.value) is not None
    assert store.authenticate(CLIENT.value) is None


# --- flags and environment: errors name what the user set ---------------------------------


def _region_args(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> argparse.Namespace:
    for flag in ("tls-ca", "tls-cert", "tls-key", "tls-server-name", "token-file", "token"):
        monkeypatch.delenv("NETHICAL_REGION_" + flag.upper().replace("-", "_"), raising=False)
    parser = argparse.ArgumentParser()
    add_client_arguments(parser, prefix="region-")
    return parser.parse_args(argv)


@pytest.mark.parametrize("given", ["--region-tls-cert", "--region-tls-key"])
def test_a_half_region_client_certificate_names_the_region_flags(
    monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    args = _region_args(monkeypatch, [given, "/x.pem"])
    with pytest.raises(ValueError) as info:
        client_security_from_args(args, "region-", env={})
    message = str(info.value)
    assert "--region-tls-cert" in message
    assert "--region-tls-key" in message


def test_a_bad_region_token_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _region_args(monkeypatch, [])
    with pytest.raises(ValueError) as info:
        client_security_from_args(args, "region-", env={"NETHICAL_REGION_TOKEN": "too-short"})
    message = str(info.value)
    assert message.startswith("NETHICAL_REGION_TOKEN:"), message
    assert "too-short" not in message


def test_the_plain_client_token_variable_is_still_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETHICAL_TOKEN_FILE", raising=False)
    parser = argparse.ArgumentParser()
    add_client_arguments(parser)
    args = parser.parse_args([])
    with pytest.raises(ValueError, match=r"^NETHICAL_TOKEN: "):
        client_security_from_args(args, env={"NETHICAL_TOKEN": "short token"})
    client = client_security_from_args(args, env={"NETHICAL_TOKEN": CLIENT.value})
    assert client.token == CLIENT


async def test_add_port_raises_when_the_address_cannot_be_bound() -> None:
    """What ServerSecurity.add_port's doc says: gRPC raises RuntimeError."""
    server = grpc.aio.server()
    with pytest.raises(RuntimeError):
        ServerSecurity().add_port(server, "256.0.0.1:1")


# --- dev certificates ---------------------------------------------------------------------


@needs_openssl
def test_dev_certificates_dates_sans_and_key_usage(tmp_path: Path) -> None:
    ca = DevCA.create(tmp_path, days=30)
    leaf = ca.issue(tmp_path, "node", hosts=("localhost", "127.0.0.1", "::1"), days=5)
    dates = certificate_validity(leaf.cert_file.read_bytes())
    assert dates is not None
    not_before, not_after = dates
    assert not_after - not_before == timedelta(days=5)
    text = subprocess.run(
        ["openssl", "x509", "-in", str(leaf.cert_file), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:localhost" in text
    assert "IP Address:127.0.0.1" in text
    assert "IP Address:0:0:0:0:0:0:0:1" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert "CA:FALSE" in text
    assert f"{leaf.serial:x}".upper() in text.replace(":", "").upper()
    for purpose in ("sslserver", "sslclient"):
        subprocess.run(
            ["openssl", "verify", "-CAfile", str(ca.cert_file), "-purpose", purpose,
             str(leaf.cert_file)],
            capture_output=True,
            check=True,
        )  # fmt: skip
    assert leaf.key_file.stat().st_mode & 0o777 == 0o600
    assert ca.key_file.stat().st_mode & 0o777 == 0o600
