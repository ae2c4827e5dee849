"""Security settings for servers and clients, from parsed flags and the environment.

The flags themselves are added by :mod:`nethical_grpc.security.flags` (cheap to
import); this module turns them into :class:`ServerSecurity` (credentials,
interceptors, binding, the transport log line) and :class:`ClientSecurity` (channels,
the balancer's channel factory). When none of the coordinator's ``--region-tls-*``
flags is given and the coordinator itself serves TLS, its own certificate, key and CA
are used towards the regions too (one PKI, certificates valid for server and client
auth). Nothing set means plaintext without tokens, as before, logged as such.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

import grpc

from nethical_grpc.security.auth import BearerAuthInterceptor
from nethical_grpc.security.channels import channel_factory, mesh_channel
from nethical_grpc.security.roles import DEFAULT_POLICY, AccessPolicy
from nethical_grpc.security.tls import (
    ServerTls,
    TlsConfig,
    log_transport_security,
    server_credentials,
)
from nethical_grpc.security.tokens import BearerToken, TokenStore, client_token, server_tokens

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    ServerInterceptor = grpc.aio.ServerInterceptor


@dataclass(frozen=True, slots=True)
class ServerSecurity:
    """A server's transport and call security. Defaults: plaintext, no tokens."""

    tls: TlsConfig | None = None
    tokens: TokenStore | None = None
    policy: AccessPolicy = DEFAULT_POLICY
    # each server's TLS files, loaded once and shared by its ports (see add_port)
    _loaders: WeakKeyDictionary[grpc.aio.Server, ServerTls] = field(
        default_factory=WeakKeyDictionary, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.tls is not None and not self.tls.has_identity:
            raise ValueError("a TLS server needs --tls-cert and --tls-key")

    @property
    def auth_enabled(self) -> bool:
        return self.tokens is not None

    def credentials(self, server: grpc.aio.Server | None = None) -> grpc.ServerCredentials | None:
        """Reloading TLS credentials for one port, or None for plaintext. With
        ``server``, all of its ports share one loader of the files (read, checked and
        warned about once per change); the first port of a server reads them. Raises
        ValueError for bad files."""
        if self.tls is None:
            return None
        if server is None:
            return server_credentials(self.tls)
        loader = self._loaders.get(server)
        if loader is None:
            loader = self._loaders[server] = ServerTls(self.tls)
        return loader.credentials()

    def interceptors(self) -> list[ServerInterceptor]:
        """``[BearerAuthInterceptor]`` when tokens are configured, else ``[]``."""
        if self.tokens is None:
            return []
        return [BearerAuthInterceptor(self.tokens, self.policy)]

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        """Bind ``address`` on ``server`` (secure when TLS is set); returns the port.
        Raises RuntimeError (gRPC's "Failed to bind to address ...") when the address
        cannot be bound, as ``add_*_port`` do; older gRPC releases returned 0 instead."""
        creds = self.credentials(server)
        if creds is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, creds)

    def log(self, what: str, logger: logging.Logger | None = None) -> str:
        """Log (and return) how this server talks; a WARNING when plaintext."""
        return log_transport_security(what, self.tls, self.auth_enabled, "server", logger)


@dataclass(frozen=True, slots=True)
class ClientSecurity:
    """A client's TLS settings and token. Defaults: plaintext, no token."""

    tls: TlsConfig | None = None
    token: BearerToken | None = field(default=None, repr=False)

    def channel(self, target: str, **kwargs: Any) -> grpc.aio.Channel:
        """A channel to ``target`` (see :func:`nethical_grpc.security.channels.mesh_channel`)."""
        return mesh_channel(target, self.tls, self.token, **kwargs)

    def channel_factory(self, **kwargs: Any) -> Callable[[str], grpc.aio.Channel]:
        return channel_factory(self.tls, self.token, **kwargs)

    def log(self, what: str, logger: logging.Logger | None = None) -> str:
        return log_transport_security(what, self.tls, self.token is not None, "client", logger)


def server_security_from_args(
    args: argparse.Namespace,
    policy: AccessPolicy = DEFAULT_POLICY,
    env: Mapping[str, str] | None = None,
) -> ServerSecurity:
    """The :class:`ServerSecurity` asked for by the flags of
    :func:`nethical_grpc.security.flags.add_server_arguments`.

    Raises ValueError (bad combination, unparsable tokens) or OSError (unreadable file).
    """
    env = os.environ if env is None else env
    tls = None
    if args.tls_cert or args.tls_key or args.tls_ca or args.tls_require_client_cert:
        tls = TlsConfig(
            cert_file=args.tls_cert,
            key_file=args.tls_key,
            ca_file=args.tls_ca,
            require_client_cert=bool(args.tls_require_client_cert),
        )
        if args.tls_ca and not args.tls_require_client_cert:
            log.warning(
                "--tls-ca is set without --tls-require-client-cert: this server does not "
                "check client certificates (the CA serves only as the coordinator's default "
                "for verifying region nodes)"
            )
    tokens = server_tokens(args.auth_tokens_file, env)
    return ServerSecurity(tls, tokens, policy)


def client_security_from_args(
    args: argparse.Namespace,
    prefix: str = "",
    fallback_tls: TlsConfig | None = None,
    env: Mapping[str, str] | None = None,
) -> ClientSecurity:
    """The :class:`ClientSecurity` asked for by the flags of
    :func:`nethical_grpc.security.flags.add_client_arguments` (with ``prefix``).

    ``fallback_tls`` is used when none of the TLS flags of this prefix is set (the
    coordinator passes its server TLS files). Raises ValueError or OSError.
    """
    env = os.environ if env is None else env
    attr = prefix.replace("-", "_")
    ca = getattr(args, f"{attr}tls_ca")
    cert = getattr(args, f"{attr}tls_cert")
    key = getattr(args, f"{attr}tls_key")
    server_name = getattr(args, f"{attr}tls_server_name")
    plain_tls = getattr(args, f"{attr}tls")
    if (cert is None) != (key is None):  # TlsConfig's own message names the unprefixed flags
        raise ValueError(
            f"TLS needs both a client certificate and its key (--{prefix}tls-cert, "
            f"--{prefix}tls-key)"
        )
    tls: TlsConfig | None
    if ca or cert or key or server_name or plain_tls:
        tls = TlsConfig(cert_file=cert, key_file=key, ca_file=ca, server_name=server_name)
    elif fallback_tls is not None:
        tls = TlsConfig(
            cert_file=fallback_tls.cert_file,
            key_file=fallback_tls.key_file,
            ca_file=fallback_tls.ca_file,
            server_name=fallback_tls.server_name,
        )
    else:
        tls = None
    token = client_token(getattr(args, f"{attr}token_file"), env, prefix)
    return ClientSecurity(tls, token)
