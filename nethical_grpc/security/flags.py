"""CLI flags and environment variables of transport security; imports nothing heavy.

Servers (region node, coordinator) take :func:`add_server_arguments`:

=============================  ===================================  =====================
flag                           environment                          meaning
=============================  ===================================  =====================
``--tls-cert PATH``            ``NETHICAL_TLS_CERT``                server certificate
``--tls-key PATH``             ``NETHICAL_TLS_KEY``                 its private key
``--tls-ca PATH``              ``NETHICAL_TLS_CA``                  CA for client certs
``--tls-require-client-cert``  ``NETHICAL_TLS_REQUIRE_CLIENT_CERT``  mutual TLS
``--auth-tokens-file PATH``    ``NETHICAL_AUTH_TOKENS_FILE``        known token hashes
(none)                         ``NETHICAL_AUTH_TOKEN_HASHES``       same lines, inline
=============================  ===================================  =====================

Clients (``query``, ``regions``, ``health``) take :func:`add_client_arguments`:
``--tls-ca``, ``--tls-cert``, ``--tls-key``, ``--tls-server-name``, ``--tls`` (env
``NETHICAL_TLS_*``) and ``--token-file`` (env ``NETHICAL_TOKEN_FILE``, or the token
itself in ``NETHICAL_TOKEN``). The coordinator's channels to region nodes take the same
with the prefix ``region-`` (``--region-tls-ca``, ``--region-token-file``,
``NETHICAL_REGION_TLS_CA``, ``NETHICAL_REGION_TOKEN``, ...).

Turn parsed flags into settings with :mod:`nethical_grpc.security.config`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ENV_TLS_CERT = "NETHICAL_TLS_CERT"
ENV_TLS_KEY = "NETHICAL_TLS_KEY"
ENV_TLS_CA = "NETHICAL_TLS_CA"
ENV_TLS_REQUIRE_CLIENT_CERT = "NETHICAL_TLS_REQUIRE_CLIENT_CERT"
ENV_TLS_SERVER_NAME = "NETHICAL_TLS_SERVER_NAME"
ENV_TOKENS_FILE = "NETHICAL_AUTH_TOKENS_FILE"
ENV_TOKEN_HASHES = "NETHICAL_AUTH_TOKEN_HASHES"
ENV_CLIENT_TOKEN = "NETHICAL_TOKEN"
ENV_CLIENT_TOKEN_FILE = "NETHICAL_TOKEN_FILE"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def parse_bool(text: str, what: str) -> bool:
    """``1/true/yes/on`` → True, ``0/false/no/off/""`` → False; else ValueError."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{what}: expected true/false, got {text!r}")


def env_name(prefix: str, flag: str) -> str:
    """``("region-", "tls-ca")`` → ``NETHICAL_REGION_TLS_CA``."""
    return "NETHICAL_" + (prefix + flag).upper().replace("-", "_")


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the TLS and token flags of a server (defaults from the environment).

    Raises ValueError when ``NETHICAL_TLS_REQUIRE_CLIENT_CERT`` is not a boolean.
    """
    env = os.environ
    group = parser.add_argument_group("transport security")
    group.add_argument(
        "--tls-cert",
        type=Path,
        default=env.get(ENV_TLS_CERT) or None,
        help=f"PEM certificate; enables TLS, re-read when it changes (env {ENV_TLS_CERT})",
    )
    group.add_argument(
        "--tls-key",
        type=Path,
        default=env.get(ENV_TLS_KEY) or None,
        help=f"PEM private key of --tls-cert (env {ENV_TLS_KEY})",
    )
    group.add_argument(
        "--tls-ca",
        type=Path,
        default=env.get(ENV_TLS_CA) or None,
        help="PEM CA that client certificates must chain to, checked with "
        f"--tls-require-client-cert (env {ENV_TLS_CA})",
    )
    group.add_argument(
        "--tls-require-client-cert",
        action=argparse.BooleanOptionalAction,
        default=parse_bool(env.get(ENV_TLS_REQUIRE_CLIENT_CERT, ""), ENV_TLS_REQUIRE_CLIENT_CERT),
        help="mutual TLS: refuse clients without a certificate from --tls-ca "
        f"(env {ENV_TLS_REQUIRE_CLIENT_CERT}; --no-tls-require-client-cert overrides it)",
    )
    group.add_argument(
        "--auth-tokens-file",
        type=Path,
        default=env.get(ENV_TOKENS_FILE) or None,
        help="lines 'ROLE[,ROLE] NAME SHA256HEX'; enables bearer-token auth, re-read when it "
        f"changes (env {ENV_TOKENS_FILE}, or the lines inline in {ENV_TOKEN_HASHES})",
    )


def add_client_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """Add a client's TLS and token flags; ``prefix`` (e.g. ``"region-"``) names a set
    for one kind of peer. Defaults come from ``NETHICAL_<PREFIX>TLS_*`` and
    ``NETHICAL_<PREFIX>TOKEN_FILE``."""
    env = os.environ
    group = parser.add_argument_group(f"{prefix}transport security".strip())
    for flag, what in (
        ("tls-ca", "PEM CA the server certificate must chain to (default: system roots)"),
        ("tls-cert", "PEM client certificate for mutual TLS"),
        ("tls-key", "PEM private key of the client certificate"),
    ):
        name = env_name(prefix, flag)
        group.add_argument(
            f"--{prefix}{flag}",
            type=Path,
            default=env.get(name) or None,
            help=f"{what}; enables TLS (env {name})",
        )
    name = env_name(prefix, "tls-server-name")
    group.add_argument(
        f"--{prefix}tls-server-name",
        default=env.get(name) or None,
        help=f"name to check the server certificate against (env {name})",
    )
    group.add_argument(
        f"--{prefix}tls",
        action="store_true",
        help="TLS with the system roots (when no other TLS flag is given)",
    )
    name = env_name(prefix, "token-file")
    group.add_argument(
        f"--{prefix}token-file",
        type=Path,
        default=env.get(name) or None,
        help=f"file whose first line is the bearer token (env {name}, "
        f"or the token itself in {env_name(prefix, 'token')})",
    )
