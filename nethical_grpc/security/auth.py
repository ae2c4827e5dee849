"""Bearer-token authentication and role checks, as a ``grpc.aio`` server interceptor.

Every call to a method outside the public services (health, reflection) must carry
``authorization: Bearer <token>`` metadata. The interceptor resolves the token to a
principal (:class:`~nethical_grpc.security.tokens.TokenStore`) and checks the method
against the :class:`~nethical_grpc.security.roles.AccessPolicy`:

==========================================  =================  ==================
situation                                   status             ErrorInfo reason
==========================================  =================  ==================
no ``authorization`` metadata               UNAUTHENTICATED    TOKEN_MISSING
not ``Bearer <token>``, or given twice      UNAUTHENTICATED    TOKEN_MALFORMED
a token no one holds                        UNAUTHENTICATED    TOKEN_UNKNOWN
a known token whose roles may not call it   PERMISSION_DENIED  ROLE_NOT_ALLOWED
==========================================  =================  ==================

A refused call is answered by a stand-in handler of the same arity that aborts at
once: the service's handler never runs, the request is neither read (streams) nor
parsed (unary requests arrive as raw bytes), nothing changes. The status carries a
``google.rpc.Status`` with an ``ErrorInfo`` (domain ``nethical-mesh``) like every mesh
error. Neither the status, the logs nor the ErrorInfo ever contain the presented
token; only the principal's name and roles (not secret) appear.

A call with a request stream (Ingest, EvaluateStream, StreamSummaries) is checked again
as its messages arrive, at most every ``stream_recheck_s`` seconds (a clock read per
message; the token store reloads as for a new call): once the token is revoked or its
roles no longer allow the method, the message that found it is not handed on and the
handler's request iterator raises the refusal (the error a new call would get), so the
handler ends the call from its own task after answering the messages before it, as it
does for any error of its input (Ingest's says what it applied). No later message
reaches the handler. Unary calls are checked once, as before.

Put this interceptor after the telemetry interceptor so refused calls are still traced
and counted (a span records the method and status code, never metadata).
"""

from __future__ import annotations

import copy
import inspect
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc

from nethical_grpc import interceptor_types
from nethical_grpc.errors import MeshError, to_status
from nethical_grpc.security.roles import DEFAULT_POLICY, AccessPolicy
from nethical_grpc.security.tokens import Principal, TokenStore

_ServerInterceptor = interceptor_types.ServerInterceptor
Handler = interceptor_types.Handler
Context = interceptor_types.Context

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
REDACTED = "<redacted>"
_SENSITIVE_KEYS = frozenset({AUTHORIZATION, "proxy-authorization", "cookie", "x-api-key"})

_MAX_CACHED_REFUSALS = 4096

TOKEN_MISSING = "TOKEN_MISSING"
TOKEN_MALFORMED = "TOKEN_MALFORMED"
TOKEN_UNKNOWN = "TOKEN_UNKNOWN"
ROLE_NOT_ALLOWED = "ROLE_NOT_ALLOWED"


class Unauthenticated(MeshError):
    """No usable credentials: missing, malformed or unknown token."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message=message, reason=reason, code=grpc.StatusCode.UNAUTHENTICATED)


class PermissionDenied(MeshError):
    """Known credentials whose roles may not call the method."""

    def __init__(self, message: str, metadata: dict[str, str]) -> None:
        super().__init__(
            message=message,
            reason=ROLE_NOT_ALLOWED,
            metadata=metadata,
            code=grpc.StatusCode.PERMISSION_DENIED,
        )


def redact_metadata(
    metadata: Iterable[tuple[str, str | bytes]] | None,
) -> list[tuple[str, str | bytes]]:
    """A copy of ``metadata`` safe to log: credential headers' values replaced by
    ``<redacted>``, binary (``-bin``) values by their length."""
    out: list[tuple[str, str | bytes]] = []
    for key, value in metadata or ():
        lowered = key.lower()
        if lowered in _SENSITIVE_KEYS:
            out.append((key, REDACTED))
        elif lowered.endswith("-bin"):
            out.append((key, f"<{len(value)} bytes>"))
        else:
            out.append((key, value))
    return out


def bearer_token_of(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The token in ``authorization: Bearer <token>`` metadata.

    Raises :class:`Unauthenticated` (TOKEN_MISSING or TOKEN_MALFORMED); the message
    never includes what was sent.
    """
    values = [v for k, v in (metadata or ()) if k.lower() == AUTHORIZATION]
    if not values:
        raise Unauthenticated(
            "missing credentials: send metadata 'authorization: Bearer TOKEN'", TOKEN_MISSING
        )
    if len(values) > 1:
        raise Unauthenticated("more than one authorization metadata entry", TOKEN_MALFORMED)
    value = values[0]
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    scheme, _, token = text.strip().partition(" ")
    token = token.strip()
    # a token holds no whitespace: "Bearer a b" (or two headers folded into one by a
    # proxy, "Bearer a, Bearer b") is not 'Bearer TOKEN'
    if scheme.lower() != "bearer" or not token or len(token.split()) != 1:
        raise Unauthenticated(
            "malformed authorization metadata: expected 'Bearer TOKEN'", TOKEN_MALFORMED
        )
    return token


class BearerAuthInterceptor(_ServerInterceptor):
    """Authenticates bearer tokens and enforces ``policy`` on every call (see module doc).

    ``tokens`` is consulted on each call, so a :class:`~nethical_grpc.security.tokens.
    TokenFile` that reloads takes effect for the next call, and again in calls with a
    request stream, at most every ``stream_recheck_s`` seconds as their messages
    arrive (see the module doc). ``denied`` counts refusals
    by reason (for tests and metrics). Refusals are logged at INFO, at most one line
    per reason every ``log_interval_s`` seconds (the next line says how many were
    skipped), so a flood of bad calls cannot flood the log.
    """

    def __init__(
        self,
        tokens: TokenStore,
        policy: AccessPolicy = DEFAULT_POLICY,
        log_interval_s: float = 10.0,
        stream_recheck_s: float = 1.0,
    ) -> None:
        self.tokens = tokens
        self.policy = policy
        self.stream_recheck_s = stream_recheck_s
        self.denied: dict[str, int] = {}
        self._log_interval_s = log_interval_s
        self._last_log: dict[str, float] = {}  # reason -> monotonic time of its last line
        self._unlogged: dict[str, int] = {}
        # stand-ins by (method, reason, message, arity); bounded by methods x principals
        self._refusals: dict[tuple[str, str, str, bool, bool], Handler] = {}
        # method -> (the handler seen, its re-checking wrapper), for request streams
        self._rechecking: dict[str, tuple[Handler, Handler]] = {}

    def check(
        self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> Principal | None:
        """The caller's principal (None for a public method).

        Raises :class:`Unauthenticated` or :class:`PermissionDenied`.
        """
        if self.policy.is_public(method):
            return None
        token = bearer_token_of(metadata)
        principal = self.tokens.authenticate(token)
        if principal is None:
            raise Unauthenticated("unknown bearer token", TOKEN_UNKNOWN)
        if not self.policy.allows(method, principal.roles):
            roles = principal.roles_text()
            raise PermissionDenied(
                f"{principal.name!r} (roles: {roles}) may not call {method}",
                {"method": method, "principal": principal.name, "roles": roles},
            )
        return principal

    async def intercept_service(  # type: ignore[override]
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # no such method: UNIMPLEMENTED, as without the interceptor
        method = handler_call_details.method
        try:
            principal = self.check(method, handler_call_details.invocation_metadata)
        except MeshError as exc:
            self.denied[exc.reason] = self.denied.get(exc.reason, 0) + 1
            return self._refusal(handler, method, exc)
        if principal is None or not handler.request_streaming:
            return handler
        cached = self._rechecking.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._rechecked(handler, method)
        if len(self._rechecking) >= _MAX_CACHED_REFUSALS:  # handlers made per call
            self._rechecking.clear()
        self._rechecking[method] = (handler, wrapped)
        return wrapped

    def _rechecked(self, handler: Handler, method: str) -> Handler:
        """``handler`` (with a request stream) reading its requests through
        :class:`_RecheckedRequests`; ``handler`` itself when it is not async."""
        auth = self
        if handler.response_streaming:
            inner: Any = handler.stream_stream
            factory: Callable[..., Handler] = grpc.stream_stream_rpc_method_handler
        else:
            inner = handler.stream_unary
            factory = grpc.stream_unary_rpc_method_handler
        new: Any
        if inspect.isasyncgenfunction(inner):

            async def generator(requests: AsyncIterable[Any], context: Context) -> Any:
                checked = _RecheckedRequests(auth, method, requests, context)
                async for response in inner(checked, context):
                    yield response
                await checked.refuse_if_refused()

            new = generator
        elif inspect.iscoroutinefunction(inner):

            async def coroutine(requests: AsyncIterable[Any], context: Context) -> Any:
                checked = _RecheckedRequests(auth, method, requests, context)
                response = await inner(checked, context)
                await checked.refuse_if_refused()
                return response

            new = coroutine
        else:
            return handler
        return factory(
            new,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _refusal(self, like: Handler, method: str, exc: MeshError) -> Handler:
        key = (method, exc.reason, exc.message, like.request_streaming, like.response_streaming)
        found = self._refusals.get(key)
        if found is None:
            if len(self._refusals) >= _MAX_CACHED_REFUSALS:
                self._refusals.clear()
            found = self._refusals[key] = refusing_handler(
                like,
                to_status(exc),
                lambda context: self._log_refusal(method, exc, context.peer()),
            )
        return found

    def _log_refusal(self, method: str, exc: MeshError, peer: str = "") -> None:
        """One INFO line per reason per ``log_interval_s``, counting the ones skipped;
        the line names the caller's address (``peer``: gRPC's ``ipv4:ADDR:PORT``)."""
        now = time.monotonic()
        last = self._last_log.get(exc.reason)
        if last is not None and now - last < self._log_interval_s:
            self._unlogged[exc.reason] = self._unlogged.get(exc.reason, 0) + 1
            return
        self._last_log[exc.reason] = now
        skipped = self._unlogged.pop(exc.reason, 0)
        more = f"; {skipped} more {exc.reason} since the last line" if skipped else ""
        who = f" from {peer}" if peer else ""
        log.info("refused %s%s: %s (%s)%s", method, who, exc.reason, exc.message, more)


class _RecheckedRequests:
    """A call's request stream, its token checked again (:meth:`BearerAuthInterceptor.
    check`) on a message arriving ``stream_recheck_s`` or more after the last check.

    A failed check raises the refusal in place of that message; every later read drops
    one more message and raises it again (a handler that reads on past an error of its
    input, to drop the rest, ends with the client's stream), so no message after it
    reaches the handler.
    """

    __slots__ = ("_auth", "_context", "_due", "_method", "_raw", "_reader", "refused")

    def __init__(
        self,
        auth: BearerAuthInterceptor,
        method: str,
        raw: AsyncIterable[Any],
        context: Context,
    ) -> None:
        self._auth = auth
        self._method = method
        self._raw = raw
        self._context = context
        # made on the first read: grpc's reader warns, unread, when a handler never reads
        self._reader: AsyncIterator[Any] | None = None
        self._due = time.monotonic() + auth.stream_recheck_s
        self.refused: MeshError | None = None

    def __aiter__(self) -> _RecheckedRequests:
        return self

    async def __anext__(self) -> Any:
        if self._reader is None:
            self._reader = aiter(self._raw)
        item = await anext(self._reader)
        if self.refused is not None:
            raise copy.copy(self.refused)
        if time.monotonic() < self._due:
            return item
        auth = self._auth
        try:
            auth.check(self._method, self._context.invocation_metadata())
        except MeshError as exc:
            self.refused = exc
            auth.denied[exc.reason] = auth.denied.get(exc.reason, 0) + 1
            auth._log_refusal(self._method, exc, self._context.peer())
            raise copy.copy(exc) from None
        self._due = time.monotonic() + auth.stream_recheck_s
        return item

    async def refuse_if_refused(self) -> None:
        """End the call with the refusal when the handler finished as if it had not
        seen it (a handler that swallowed its input's error)."""
        if self.refused is not None:
            status = to_status(self.refused)
            await self._context.abort(status.code, status.details, status.trailing_metadata)


def refusing_handler(
    like: Handler, status: grpc.Status, on_refuse: Callable[[Context], None] | None = None
) -> Handler:
    """A handler with ``like``'s arity that aborts with ``status`` before reading anything
    (after calling ``on_refuse`` with the call's context, e.g. to log who was refused).

    Requests are not deserialised (the stand-in takes raw bytes) and request streams are
    never read.
    """

    async def refuse(_request: Any, context: Context) -> None:
        if on_refuse is not None:
            on_refuse(context)
        await context.abort(status.code, status.details, status.trailing_metadata)

    if like.request_streaming and like.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if like.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if like.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)
