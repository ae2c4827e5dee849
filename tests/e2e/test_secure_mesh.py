"""A mesh of real processes with mutual TLS and bearer-token roles, driven by the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nethical_grpc.cli.processes import spawn
from nethical_grpc.security.devcerts import DevCA, openssl_available
from nethical_grpc.security.roles import Role
from nethical_grpc.security.tokens import generate_token, token_line

pytestmark = pytest.mark.e2e


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nethical_grpc.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    if not openssl_available():
        if os.environ.get("CI"):
            pytest.fail("openssl is required under CI")
        pytest.skip("openssl not available")
    ca = DevCA.create(tmp_path / "pki")
    region = ca.issue(tmp_path / "pki", "region")
    coord = ca.issue(tmp_path / "pki", "coordinator")
    user = ca.issue(tmp_path / "pki", "user")
    return {
        "ca": ca.cert_file,
        "region_cert": region.cert_file,
        "region_key": region.key_file,
        "coord_cert": coord.cert_file,
        "coord_key": coord.key_file,
        "user_cert": user.cert_file,
        "user_key": user.key_file,
    }


async def test_mtls_and_roles_end_to_end(tmp_path: Path, pki: dict[str, Path]) -> None:
    client_token, coord_token, operator_token = generate_token(), generate_token(), generate_token()
    region_tokens = tmp_path / "region-tokens"
    region_tokens.write_text(
        "\n".join(
            [
                token_line(Role.CLIENT, "app", client_token),
                token_line(Role.COORDINATOR, "coordinator", coord_token),
                token_line(Role.OPERATOR, "ops", operator_token),
            ]
        )
        + "\n"
    )
    coord_tokens = tmp_path / "coord-tokens"
    coord_tokens.write_text(token_line(Role.CLIENT, "app", client_token) + "\n")
    (tmp_path / "coord.token").write_text(coord_token.value)
    (tmp_path / "client.token").write_text(client_token.value)
    tls = ["--tls-ca", str(pki["ca"]), "--tls-require-client-cert"]
    region = spawn(
        "region",
        [
            "region", "--region-id", "sec", "--port", "0",
            "--tls-cert", str(pki["region_cert"]), "--tls-key", str(pki["region_key"]), *tls,
            "--auth-tokens-file", str(region_tokens),
        ],
        tmp_path,
    )  # fmt: skip
    try:
        rport = await region.aport()
        coord = spawn(
            "coordinator",
            [
                "coordinator", "--port", "0", "--region", f"sec=localhost:{rport}",
                "--tls-cert", str(pki["coord_cert"]), "--tls-key", str(pki["coord_key"]), *tls,
                "--auth-tokens-file", str(coord_tokens),
                "--region-token-file", str(tmp_path / "coord.token"),
            ],
            tmp_path,
        )  # fmt: skip
        try:
            cport = await coord.aport()
            user = [
                "--tls-ca", str(pki["ca"]), "--tls-cert", str(pki["user_cert"]),
                "--tls-key", str(pki["user_key"]),
            ]  # fmt: skip
            # health needs no token, but still TLS with a client certificate
            ok = cli("health", f"localhost:{rport}", *user)
            assert ok.returncode == 0, ok.stdout + ok.stderr
            plain = cli("health", f"localhost:{rport}", "--timeout", "2")
            assert plain.returncode != 0
            # a client token reaches the coordinator, which reaches the region with its own
            ingest_ok = await _ingest(rport, pki, client_token.value)
            assert ingest_ok
            query = cli(
                "query", "--target", f"localhost:{cport}", "--json", *user,
                "--token-file", str(tmp_path / "client.token"),
            )  # fmt: skip
            assert query.returncode == 0, query.stdout + query.stderr
            answer = json.loads(query.stdout)
            assert answer["coverage"]["regionsAnswered"] == ["sec"]
            # no token: UNAUTHENTICATED, and nothing else happens
            denied = cli("query", "--target", f"localhost:{cport}", "--json", *user)
            assert denied.returncode != 0
            assert "UNAUTHENTICATED" in denied.stdout + denied.stderr
            assert client_token.value not in denied.stdout + denied.stderr
            await _evaluate_and_read_back(tmp_path, cport, rport, user, operator_token.value)
        finally:
            coord.stop()
            logs = coord.log_path.read_text()
            assert client_token.value not in logs and coord_token.value not in logs
    finally:
        region.stop()


async def _evaluate_and_read_back(
    tmp_path: Path, cport: int, rport: int, user: list[str], operator_token: str
) -> None:
    """The CLI's evaluate through the gateway with the client's token; its audit record
    read back from the node with the operator's, and refused with the client's."""
    client_token = ["--token-file", str(tmp_path / "client.token")]
    verdict = cli(
        "evaluate", "DROP TABLE users", "--agent-id", "a9", "--target", f"localhost:{cport}",
        "--json", *user, *client_token,
    )  # fmt: skip
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    assert json.loads(verdict.stdout)["evaluation"]["regionId"] == "sec"
    node = ["--target", f"localhost:{rport}", *user]
    refused = cli("audit", *node, *client_token)
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr, refused.stderr
    (tmp_path / "ops.token").write_text(operator_token)
    operator = ["--token-file", str(tmp_path / "ops.token")]
    deadline = time.monotonic() + 15
    while True:  # the record reaches the audit store a moment after the answer
        found = cli("audit", "--agent-id", "a9", "--json", *node, *operator)
        assert found.returncode == 0, found.stderr
        records = json.loads(found.stdout).get("records", [])
        if records or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    assert [r["actionText"] for r in records] == ["DROP TABLE users"]
    profile = cli("profile", "a9", "--json", *node, *operator)
    assert profile.returncode == 0 and int(json.loads(profile.stdout)["evaluations"]) == 1


async def _ingest(port: int, pki: dict[str, Path], token: str) -> bool:
    from nethical_grpc import client
    from nethical_grpc.security.channels import mesh_channel
    from nethical_grpc.security.tls import TlsConfig
    from nethical_grpc.security.tokens import BearerToken

    tls = TlsConfig(pki["user_cert"], pki["user_key"], pki["ca"])
    async with mesh_channel(f"localhost:{port}", tls, BearerToken(token)) as ch:
        resp = await client.ingest(ch, [client.encode_ingest_request("m", np.arange(10.0))])
    return resp.accepted_values == 10
