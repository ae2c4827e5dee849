"""Client side of bearer-token authentication: attach ``authorization: Bearer <token>``.

* :func:`bearer_interceptors` adds the metadata with client interceptors; it works on
  TLS and plaintext channels alike (gRPC refuses call credentials on plaintext ones)
  and is what :func:`nethical_grpc.security.channels.mesh_channel` uses.
* :func:`bearer_call_credentials` is the same as gRPC call credentials, for secure
  channels built elsewhere (gRPC sends them only over TLS). They cost more per call:
  the plugin runs on a gRPC thread for every call.

The interceptors replace any ``authorization`` metadata the caller set. Call
credentials cannot: gRPC appends their metadata to the caller's, so a call that also
sets its own ``authorization`` carries two and the server refuses it (TOKEN_MALFORMED).
Either way the token object's repr stays ``<redacted>``.
"""

from __future__ import annotations

from typing import Any, cast

import grpc

from nethical_grpc import interceptor_types
from nethical_grpc.security.auth import AUTHORIZATION
from nethical_grpc.security.tokens import BearerToken

_UnaryUnary = interceptor_types.UnaryUnaryClient
_UnaryStream = interceptor_types.UnaryStreamClient
_StreamUnary = interceptor_types.StreamUnaryClient
_StreamStream = interceptor_types.StreamStreamClient
Continuation = interceptor_types.Continuation


class BearerTokenPlugin(grpc.AuthMetadataPlugin):
    """gRPC auth metadata plugin sending one bearer token with every call."""

    def __init__(self, token: BearerToken) -> None:
        self._metadata = ((AUTHORIZATION, token.header()),)

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        callback(self._metadata, None)

    def __repr__(self) -> str:
        return "BearerTokenPlugin(<redacted>)"


def bearer_call_credentials(token: BearerToken) -> grpc.CallCredentials:
    """Call credentials attaching ``token`` (secure channels only)."""
    return grpc.metadata_call_credentials(BearerTokenPlugin(token), name="nethical-bearer")


class _Attach:
    """Shared by the four interceptors: the details with the token's metadata."""

    def __init__(self, token: BearerToken) -> None:
        self._header = token.header()

    def __repr__(self) -> str:
        return "BearerInterceptor(<redacted>)"

    def details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        pairs = [(k, v) for k, v in (details.metadata or ()) if k.lower() != AUTHORIZATION]
        pairs.append((AUTHORIZATION, self._header))
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*pairs),
            details.credentials,
            details.wait_for_ready,
        )


class _UnaryUnaryBearer(_Attach, _UnaryUnary):
    async def intercept_unary_unary(
        self,
        continuation: Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self.details(client_call_details), request)


class _UnaryStreamBearer(_Attach, _UnaryStream):
    async def intercept_unary_stream(
        self,
        continuation: Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self.details(client_call_details), request)


class _StreamUnaryBearer(_Attach, _StreamUnary):
    async def intercept_stream_unary(
        self,
        continuation: Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self.details(client_call_details), request_iterator)


class _StreamStreamBearer(_Attach, _StreamStream):
    async def intercept_stream_stream(
        self,
        continuation: Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self.details(client_call_details), request_iterator)


def bearer_interceptors(token: BearerToken) -> list[grpc.aio.ClientInterceptor]:
    """Four client interceptors (grpc.aio files each under one arity) adding ``token``
    to every call; for plaintext channels, where call credentials are refused."""
    made: list[object] = [
        _UnaryUnaryBearer(token),
        _UnaryStreamBearer(token),
        _StreamUnaryBearer(token),
        _StreamStreamBearer(token),
    ]
    return [cast("grpc.aio.ClientInterceptor", i) for i in made]
