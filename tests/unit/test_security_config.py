"""Flags and environment to server/client security settings."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from nethical_grpc.security.auth import BearerAuthInterceptor
from nethical_grpc.security.config import (
    ClientSecurity,
    ServerSecurity,
    client_security_from_args,
    server_security_from_args,
)
from nethical_grpc.security.flags import add_client_arguments, add_server_arguments
from nethical_grpc.security.tls import TlsConfig
from nethical_grpc.security.tokens import BearerToken, hash_token

TOKEN = "tok-config-0123456789abcdef"


def _parser(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> argparse.ArgumentParser:
    for key in (
        "NETHICAL_TLS_CERT", "NETHICAL_TLS_KEY", "NETHICAL_TLS_CA",
        "NETHICAL_TLS_REQUIRE_CLIENT_CERT", "NETHICAL_AUTH_TOKENS_FILE",
        "NETHICAL_AUTH_TOKEN_HASHES", "NETHICAL_TOKEN", "NETHICAL_TOKEN_FILE",
        "NETHICAL_REGION_TLS_CA", "NETHICAL_REGION_TOKEN", "NETHICAL_REGION_TOKEN_FILE",
    ):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    add_client_arguments(parser, prefix="region-")
    return parser


def test_nothing_set_is_plaintext_without_tokens(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    args = _parser(monkeypatch, {}).parse_args([])
    server = server_security_from_args(args, env={})
    assert server == ServerSecurity()
    assert server.credentials() is None
    assert server.interceptors() == []
    client = client_security_from_args(args, "region-", env={})
    assert client == ClientSecurity()
    with caplog.at_level(logging.WARNING):
        server.log("region node on 127.0.0.1:50051")
    assert "PLAINTEXT" in caplog.text


def test_server_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"coordinator coord {hash_token(TOKEN)}\n")
    args = _parser(monkeypatch, {}).parse_args(
        [
            "--tls-cert", "/s.crt", "--tls-key", "/s.key", "--tls-ca", "/ca.crt",
            "--tls-require-client-cert", "--auth-tokens-file", str(tokens),
        ]
    )  # fmt: skip
    security = server_security_from_args(args, env={})
    assert security.tls == TlsConfig(Path("/s.crt"), Path("/s.key"), Path("/ca.crt"), True)
    assert security.tokens is not None
    assert security.tokens.authenticate(TOKEN) is not None
    [interceptor] = security.interceptors()
    assert isinstance(interceptor, BearerAuthInterceptor)


def test_server_flags_default_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "NETHICAL_TLS_CERT": "/e.crt",
        "NETHICAL_TLS_KEY": "/e.key",
        "NETHICAL_TLS_CA": "/eca.crt",
        "NETHICAL_TLS_REQUIRE_CLIENT_CERT": "true",
    }
    args = _parser(monkeypatch, env).parse_args([])
    security = server_security_from_args(
        args, env={"NETHICAL_AUTH_TOKEN_HASHES": f"client app {hash_token(TOKEN)}"}
    )
    assert security.tls == TlsConfig(Path("/e.crt"), Path("/e.key"), Path("/eca.crt"), True)
    assert security.auth_enabled


def test_a_flag_turns_off_client_certificates_the_environment_requires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The environment sets the default; a flag on the command line wins either way."""
    parser = _parser(monkeypatch, {"NETHICAL_TLS_REQUIRE_CLIENT_CERT": "true"})
    assert parser.parse_args([]).tls_require_client_cert is True
    assert parser.parse_args(["--no-tls-require-client-cert"]).tls_require_client_cert is False
    parser = _parser(monkeypatch, {})
    assert parser.parse_args(["--tls-require-client-cert"]).tls_require_client_cert is True


def test_server_tls_without_a_certificate_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _parser(monkeypatch, {}).parse_args(["--tls-ca", "/ca.crt"])
    with pytest.raises(ValueError, match="--tls-cert"):
        server_security_from_args(args, env={})


def test_region_channels_inherit_the_coordinator_tls_and_take_their_token(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    token_file = tmp_path / "coord.token"
    token_file.write_text(TOKEN + "\n")
    args = _parser(monkeypatch, {}).parse_args(
        ["--tls-cert", "/s.crt", "--tls-key", "/s.key", "--tls-ca", "/ca.crt",
         "--region-token-file", str(token_file)]
    )  # fmt: skip
    server = server_security_from_args(args, env={})
    client = client_security_from_args(args, "region-", fallback_tls=server.tls, env={})
    assert client.tls == TlsConfig(Path("/s.crt"), Path("/s.key"), Path("/ca.crt"))
    assert client.token == BearerToken(TOKEN)
    assert TOKEN not in repr(client)


def test_explicit_region_tls_wins_and_env_token_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _parser(monkeypatch, {"NETHICAL_REGION_TLS_CA": "/region-ca.crt"}).parse_args(
        ["--tls-cert", "/s.crt", "--tls-key", "/s.key", "--region-tls-server-name", "nodes"]
    )
    client = client_security_from_args(
        args, "region-", fallback_tls=TlsConfig(Path("/s.crt"), Path("/s.key")),
        env={"NETHICAL_REGION_TOKEN": TOKEN},
    )  # fmt: skip
    assert client.tls == TlsConfig(ca_file=Path("/region-ca.crt"), server_name="nodes")
    assert client.token == BearerToken(TOKEN)


def test_plain_client_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETHICAL_TLS_CA", raising=False)
    parser = argparse.ArgumentParser()
    add_client_arguments(parser)
    args = parser.parse_args(["--tls"])
    client = client_security_from_args(args, env={"NETHICAL_TOKEN": TOKEN})
    assert client.tls == TlsConfig()  # TLS with the system roots
    assert client.token == BearerToken(TOKEN)


def test_a_ca_without_required_client_certificates_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The server does not check client certificates then: the operator is told."""
    parser = _parser(monkeypatch, {})
    with caplog.at_level(logging.WARNING):
        server_security_from_args(
            parser.parse_args(["--tls-cert", "/s.crt", "--tls-key", "/s.key", "--tls-ca", "/c"]),
            env={},
        )
    assert "does not check client certificates" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        server_security_from_args(
            parser.parse_args(
                [
                    "--tls-cert",
                    "/s.crt",
                    "--tls-key",
                    "/s.key",
                    "--tls-ca",
                    "/c",
                    "--tls-require-client-cert",
                ]
            ),
            env={},
        )
    assert "does not check client certificates" not in caplog.text
