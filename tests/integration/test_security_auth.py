"""Bearer tokens and roles on real grpc.aio servers (127.0.0.1, port 0).

The server under test registers a recording handler for every method of
RegionNodeService and CoordinatorService (taken from the service descriptors, so a new
RPC is covered without editing this file) behind :class:`BearerAuthInterceptor`, with
the real health and reflection services of ``start_server``. A refused call must leave
the recorder untouched: the handler never ran.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from nethical_grpc.errors import details_from_error
from nethical_grpc.security.auth import (
    ROLE_NOT_ALLOWED,
    TOKEN_MALFORMED,
    TOKEN_MISSING,
    TOKEN_UNKNOWN,
    BearerAuthInterceptor,
    redact_metadata,
)
from nethical_grpc.security.channels import mesh_channel
from nethical_grpc.security.roles import DEFAULT_POLICY, MESH_SERVICES, AccessPolicy, Role
from nethical_grpc.security.tokens import BearerToken, TokenFile, TokenStore, hash_token
from nethical_grpc.server_runtime import MeshServer, start_server
from nethical_grpc.telemetry.setup import configure_telemetry
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc

TOKENS = {
    Role.COORDINATOR: BearerToken("coordinator-token-0123456789abcdef"),
    Role.OPERATOR: BearerToken("operator-token-0123456789abcdef"),
    Role.CLIENT: BearerToken("client-token-0123456789abcdef"),
}
WRONG = "definitely-wrong-token-4c7a1e9b2f"

# What each role may call: the documented table (tests/unit/test_security_roles.py
# checks it against DEFAULT_POLICY).
ALLOWED: dict[str, set[Role]] = {
    "RegionNodeService/Ingest": {Role.CLIENT},
    "RegionNodeService/GetSummaries": {Role.COORDINATOR, Role.OPERATOR},
    "RegionNodeService/StreamSummaries": {Role.COORDINATOR, Role.OPERATOR},
    "RegionNodeService/GetNodeInfo": {Role.COORDINATOR, Role.OPERATOR, Role.CLIENT},
    "RegionNodeService/Evaluate": {Role.COORDINATOR, Role.CLIENT},
    "RegionNodeService/EvaluateStream": {Role.COORDINATOR, Role.CLIENT},
    "RegionNodeService/Score": {Role.CLIENT},
    "RegionNodeService/GetRiskProfile": {Role.OPERATOR},
    "RegionNodeService/QueryMetrics": {Role.OPERATOR},
    "RegionNodeService/AggregateMetrics": {Role.OPERATOR},
    "RegionNodeService/SearchAudit": {Role.OPERATOR},
    "CoordinatorService/GetGlobalMetrics": {Role.OPERATOR, Role.CLIENT},
    "CoordinatorService/ListRegions": {Role.OPERATOR, Role.CLIENT},
    "CoordinatorService/Evaluate": {Role.CLIENT},
    "CoordinatorService/EvaluateStream": {Role.CLIENT},
}

METHODS: list[tuple[str, MethodDescriptor]] = [
    (f"/{s.full_name}/{m.name}", m) for s in MESH_SERVICES for m in s.methods
]


def _short(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def store() -> TokenStore:
    return TokenStore.from_tokens({r.value: ([r], t) for r, t in TOKENS.items()})


@dataclass
class Recorder:
    calls: list[str] = field(default_factory=list)

    def handlers(self) -> list[grpc.GenericRpcHandler[Any, Any]]:
        out = []
        for service in MESH_SERVICES:
            table = {
                m.name: self._handler(f"/{service.full_name}/{m.name}", m) for m in service.methods
            }
            out.append(grpc.method_handlers_generic_handler(service.full_name, table))
        return out

    def _handler(self, path: str, m: MethodDescriptor) -> grpc.RpcMethodHandler[Any, Any]:
        calls = self.calls

        async def unary_unary(request: bytes, context: Any) -> bytes:
            calls.append(path)
            return b""

        async def unary_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
            calls.append(path)
            yield b""

        async def stream_unary(requests: AsyncIterator[bytes], context: Any) -> bytes:
            calls.append(path)
            async for _ in requests:
                pass
            return b""

        async def stream_stream(
            requests: AsyncIterator[bytes], context: Any
        ) -> AsyncIterator[bytes]:
            calls.append(path)
            async for _ in requests:
                yield b""

        if m.client_streaming and m.server_streaming:
            return grpc.stream_stream_rpc_method_handler(stream_stream)
        if m.client_streaming:
            return grpc.stream_unary_rpc_method_handler(stream_unary)
        if m.server_streaming:
            return grpc.unary_stream_rpc_method_handler(unary_stream)
        return grpc.unary_unary_rpc_method_handler(unary_unary)


async def call(
    channel: grpc.aio.Channel,
    path: str,
    m: MethodDescriptor,
    metadata: Iterable[tuple[str, str]] | None = None,
    payload: bytes = b"",
) -> grpc.aio.AioRpcError | None:
    """Call ``path`` with raw bytes; None when it succeeded, else the error.

    A client stream carries no message: the tokens ride in the metadata. A message
    written after the server refused the call can fail on the client, and grpc's asyncio
    client then reports INTERNAL ("Failed execute_batch") instead of the server's status
    (grpc/grpc#36066), which is what these tests read."""
    md = tuple(metadata) if metadata is not None else None
    try:
        if m.client_streaming and m.server_streaming:
            stream = channel.stream_stream(path)(iter(()), metadata=md, timeout=10)
            [_ async for _ in stream]
        elif m.client_streaming:
            await channel.stream_unary(path)(iter(()), metadata=md, timeout=10)
        elif m.server_streaming:
            [_ async for _ in channel.unary_stream(path)(payload, metadata=md, timeout=10)]
        else:
            await channel.unary_unary(path)(payload, metadata=md, timeout=10)
    except grpc.aio.AioRpcError as err:
        return err
    return None


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@dataclass
class Secured:
    server: MeshServer
    recorder: Recorder
    auth: BearerAuthInterceptor
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def channel(self, token: BearerToken | None = None) -> grpc.aio.Channel:
        ch = mesh_channel(self.server.address, None, token)
        self.channels.append(ch)
        return ch


async def secured_server(
    tokens: TokenStore | None = None,
    policy: AccessPolicy = DEFAULT_POLICY,
    log_interval_s: float = 0.0,
) -> Secured:
    recorder = Recorder()
    auth = BearerAuthInterceptor(tokens if tokens is not None else store(), policy, log_interval_s)
    names = [s.full_name for s in MESH_SERVICES]
    server = await start_server(
        [lambda s: s.add_generic_rpc_handlers(tuple(recorder.handlers()))],
        names,
        interceptors=[auth],
    )
    return Secured(server, recorder, auth)


@pytest.fixture
async def secured() -> AsyncIterator[Secured]:
    s = await secured_server()
    yield s
    for ch in s.channels:
        await ch.close()
    await s.server.drain(announce_s=0, grace_s=0)


def test_the_expectations_cover_every_method() -> None:
    assert {p.split(".v1.", 1)[1] for p, _ in METHODS} == set(ALLOWED)


@pytest.mark.parametrize(("path", "method"), METHODS, ids=[_short(p) for p, _ in METHODS])
async def test_roles_table_is_enforced(
    secured: Secured, path: str, method: MethodDescriptor
) -> None:
    allowed = ALLOWED[path.split(".v1.", 1)[1]]
    ch = secured.channel()
    for role, token in TOKENS.items():
        before = len(secured.recorder.calls)
        err = await call(ch, path, method, bearer(token.value))
        if role in allowed:
            assert err is None, f"{role} should reach {path}: {err}"
            assert secured.recorder.calls[before:] == [path]
        else:
            assert err is not None, f"{role} must not reach {path}"
            assert err.code() is grpc.StatusCode.PERMISSION_DENIED
            details = details_from_error(err)
            assert details.reason == ROLE_NOT_ALLOWED
            assert details.metadata == {
                "method": path,
                "principal": role.value,
                "roles": role.value,
            }
            assert secured.recorder.calls[before:] == []  # the handler never ran

    for metadata, reason in ((None, TOKEN_MISSING), (bearer(WRONG), TOKEN_UNKNOWN)):
        before = len(secured.recorder.calls)
        err = await call(ch, path, method, metadata)
        assert err is not None
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED
        assert details_from_error(err).reason == reason
        assert secured.recorder.calls[before:] == []


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ([("authorization", "Basic dXNlcjpwYXNz")], TOKEN_MALFORMED),
        ([("authorization", "Bearer")], TOKEN_MALFORMED),
        ([("authorization", "Bearer   ")], TOKEN_MALFORMED),
        (
            [
                ("authorization", f"Bearer {TOKENS[Role.CLIENT].value}"),
                ("authorization", f"Bearer {TOKENS[Role.OPERATOR].value}"),
            ],
            TOKEN_MALFORMED,
        ),
        ([("x-token", TOKENS[Role.CLIENT].value)], TOKEN_MISSING),
    ],
)
async def test_malformed_credentials_are_unauthenticated(
    secured: Secured, metadata: list[tuple[str, str]], reason: str
) -> None:
    path, m = METHODS[0]  # Ingest
    err = await call(secured.channel(), path, m, metadata)
    assert err is not None
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    assert details_from_error(err).reason == reason
    assert secured.recorder.calls == []
    assert secured.auth.denied == {reason: 1}


async def test_scheme_is_case_insensitive(secured: Secured) -> None:
    path, m = METHODS[0]
    err = await call(
        secured.channel(), path, m, [("authorization", f"bearer {TOKENS[Role.CLIENT].value}")]
    )
    assert err is None
    assert secured.recorder.calls == [path]


async def test_health_and_reflection_need_no_token(secured: Secured) -> None:
    ch = secured.channel()
    health = health_pb2_grpc.HealthStub(ch)
    response = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=5)
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()

    stub = reflection_pb2_grpc.ServerReflectionStub(ch)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    [answer] = [r async for r in stub.ServerReflectionInfo(iter([request]), timeout=5)]
    names = {s.name for s in answer.list_services_response.service}
    assert "nethical_grpc.v1.RegionNodeService" in names
    # a wrong token on a public service is ignored, not refused
    response = await health.Check(
        health_pb2.HealthCheckRequest(), metadata=bearer(WRONG), timeout=5
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert secured.auth.denied == {}


async def test_closed_health_refuses_a_server_streaming_call_without_running_it() -> None:
    s = await secured_server(policy=AccessPolicy(DEFAULT_POLICY.method_roles, frozenset()))
    try:
        ch = s.channel()
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await watch.read()
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        # a token with any role: the health methods are in no role's table
        authed = s.channel(TOKENS[Role.OPERATOR])
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health_pb2_grpc.HealthStub(authed).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        await ch.close()
        await authed.close()
    finally:
        await s.server.drain(announce_s=0, grace_s=0)


async def test_a_method_missing_from_the_table_is_denied_even_to_a_valid_token() -> None:
    path = "/nethical_grpc.v1.RegionNodeService/GetSummaries"
    table = {k: v for k, v in DEFAULT_POLICY.method_roles.items() if k != path}
    s = await secured_server(policy=AccessPolicy(table))
    try:
        m = dict(METHODS)[path]
        for token in TOKENS.values():
            err = await call(s.channel(), path, m, bearer(token.value))
            assert err is not None
            assert err.code() is grpc.StatusCode.PERMISSION_DENIED
        assert s.recorder.calls == []
    finally:
        for ch in s.channels:
            await ch.close()
        await s.server.drain(announce_s=0, grace_s=0)


async def test_plaintext_channel_attaches_the_token_by_interceptor(secured: Secured) -> None:
    """gRPC refuses call credentials on insecure channels; mesh_channel uses metadata."""
    ch = secured.channel(TOKENS[Role.CLIENT])
    for path, m in METHODS:
        if path.endswith(("/Ingest", "/EvaluateStream", "/Score")) and "Region" in path:
            assert await call(ch, path, m) is None
    assert len(secured.recorder.calls) == 3
    # caller metadata with another authorization is replaced, not duplicated
    path, m = METHODS[0]
    assert await call(ch, path, m, bearer(WRONG)) is None
    with pytest.raises(ValueError, match="only over TLS"):
        mesh_channel(secured.server.address, None, TOKENS[Role.CLIENT], call_credentials=True)


async def test_unauthenticated_requests_are_not_parsed() -> None:
    """A refused unary call's payload is never deserialised; garbage gets the auth status."""
    servicer = region_node_pb2_grpc.RegionNodeServiceServicer()
    server = await start_server(
        [lambda s: region_node_pb2_grpc.add_RegionNodeServiceServicer_to_server(servicer, s)],
        ["nethical_grpc.v1.RegionNodeService"],
        interceptors=[BearerAuthInterceptor(store())],
    )
    ch = mesh_channel(server.address)
    try:
        path = "/nethical_grpc.v1.RegionNodeService/GetSummaries"
        garbage = b"\xff\xff\xff\xff"
        unary = ch.unary_unary(path)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await unary(garbage, timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        # the same bytes with a coordinator token reach the deserializer and fail there
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await unary(garbage, metadata=bearer(TOKENS[Role.COORDINATOR].value), timeout=5)
        assert info.value.code() is not grpc.StatusCode.UNAUTHENTICATED
        # a well-formed request with a token passes auth and gets the base class's answer
        stub = region_node_pb2_grpc.RegionNodeServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetSummaries(
                region_node_pb2.GetSummariesRequest(),
                metadata=bearer(TOKENS[Role.OPERATOR].value),
                timeout=5,
            )
        assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
    finally:
        await ch.close()
        await server.drain(announce_s=0, grace_s=0)


async def test_secrets_never_reach_errors_or_logs(
    secured: Secured, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ch = secured.channel()
    path, m = METHODS[0]  # Ingest: clients only
    errors = [
        await call(ch, path, m, bearer(WRONG)),
        await call(ch, path, m, [("authorization", f"Token {WRONG}")]),
        await call(ch, path, m, bearer(TOKENS[Role.OPERATOR].value)),  # known, wrong role
    ]
    secrets = [WRONG, TOKENS[Role.OPERATOR].value, hash_token(WRONG)]
    for err in errors:
        assert err is not None
        text = " ".join(
            [
                err.details() or "",
                err.debug_error_string() or "",
                repr(err.trailing_metadata()),
                repr(details_from_error(err)),
            ]
        )
        for secret in secrets:
            assert secret not in text
    assert "refused" in caplog.text  # the refusals were logged ...
    for secret in secrets:
        assert secret not in caplog.text  # ... without the tokens


async def test_token_file_revocation_applies_to_the_next_call(tmp_path: Any) -> None:
    tokens_path = tmp_path / "tokens"
    client = TOKENS[Role.CLIENT]
    tokens_path.write_text(f"client app {client.sha256_hex()}\n")
    s = await secured_server(TokenFile(tokens_path, check_interval_s=0.0))
    try:
        path, m = METHODS[0]
        ch = s.channel(client)
        assert await call(ch, path, m) is None
        replacement = tmp_path / "tokens.new"
        replacement.write_text(f"operator ops {TOKENS[Role.OPERATOR].sha256_hex()}\n")
        replacement.replace(tokens_path)
        err = await call(ch, path, m)
        assert err is not None
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED
        assert s.recorder.calls == [path]
    finally:
        for c in s.channels:
            await c.close()
        await s.server.drain(announce_s=0, grace_s=0)


def test_redact_metadata() -> None:
    md = [
        ("authorization", "Bearer abc-secret"),
        ("Proxy-Authorization", "Basic xyz"),
        ("traceparent", "00-abc-def-01"),
        ("grpc-status-details-bin", b"\x00\x01\x02"),
    ]
    assert redact_metadata(md) == [
        ("authorization", "<redacted>"),
        ("Proxy-Authorization", "<redacted>"),
        ("traceparent", "00-abc-def-01"),
        ("grpc-status-details-bin", "<3 bytes>"),
    ]
    assert redact_metadata(None) == []


async def test_refusals_are_logged_at_most_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="nethical_grpc.security.auth")
    s = await secured_server(log_interval_s=3600.0)
    try:
        path, m = METHODS[0]
        ch = s.channel()
        for _ in range(3):
            assert await call(ch, path, m, bearer(WRONG)) is not None
        assert await call(ch, path, m) is not None  # another reason: its own line
        lines = [r.getMessage() for r in caplog.records if r.name == "nethical_grpc.security.auth"]
        assert len(lines) == 2
        assert "TOKEN_UNKNOWN" in lines[0]
        assert "TOKEN_MISSING" in lines[1]
        # each names the caller's address, so an operator knows whom to look at
        assert all(" from ipv4:127.0.0.1:" in line for line in lines), lines
        s.auth._log_interval_s = 0.0
        assert await call(ch, path, m, bearer(WRONG)) is not None
        assert "2 more TOKEN_UNKNOWN" in caplog.records[-1].getMessage()
        assert s.auth.denied == {"TOKEN_UNKNOWN": 4, "TOKEN_MISSING": 1}
        assert s.recorder.calls == []
    finally:
        for c in s.channels:
            await c.close()
        await s.server.drain(announce_s=0, grace_s=0)


async def test_refused_calls_are_traced_without_secrets() -> None:
    """Telemetry first, auth second: refused calls get spans, and no span holds a token."""
    spans = InMemorySpanExporter()
    tel = configure_telemetry("security-test", span_exporters=[spans], activate=False)
    recorder = Recorder()
    auth = BearerAuthInterceptor(store())
    server = await start_server(
        [lambda s: s.add_generic_rpc_handlers(tuple(recorder.handlers()))],
        [s.full_name for s in MESH_SERVICES],
        interceptors=[*tel.server_interceptors(), auth],
    )
    path, m = METHODS[0]  # Ingest
    wrong = mesh_channel(
        server.address,
        None,
        BearerToken(WRONG),
        interceptors=tel.client_interceptors(server.address),
    )
    operator = mesh_channel(
        server.address,
        None,
        TOKENS[Role.OPERATOR],
        interceptors=tel.client_interceptors(server.address),
    )
    client = mesh_channel(
        server.address,
        None,
        TOKENS[Role.CLIENT],
        interceptors=tel.client_interceptors(server.address),
    )
    try:
        err = await call(wrong, path, m)
        assert err is not None
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED
        err = await call(operator, path, m)
        assert err is not None
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED
        assert await call(client, path, m) is None
        tel.force_flush()
        finished = [s for s in spans.get_finished_spans() if "RegionNodeService" in s.name]
        server_spans = [s for s in finished if s.kind is SpanKind.SERVER]
        assert len(server_spans) == 3  # the refused calls were traced too
        dump = "\n".join(s.to_json() for s in finished)
        codes = sorted(int(str((s.attributes or {})["rpc.grpc.status_code"])) for s in server_spans)
        assert codes == [0, 7, 16]  # OK, PERMISSION_DENIED, UNAUTHENTICATED
        for secret in (WRONG, *(t.value for t in TOKENS.values()), hash_token(WRONG)):
            assert secret not in dump
        assert recorder.calls == [path]
    finally:
        for ch in (wrong, operator, client):
            await ch.close()
        await server.drain(announce_s=0, grace_s=0)
        tel.shutdown()
