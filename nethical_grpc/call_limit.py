"""A server's bound on concurrent calls, which health checks and reflection do not count
against.

gRPC's own ``maximum_concurrent_rpcs`` counts every call: a node holding its limit of
long-lived Ingest or EvaluateStream streams then refuses the kubelet's health Check too,
readiness fails and liveness restarts a busy, healthy pod. So the limit is kept here
instead, for the mesh's own services: a call over it gets RESOURCE_EXHAUSTED with an
``ErrorInfo`` (reason ``TOO_MANY_CALLS``) before its handler runs, while health and
reflection calls pass. gRPC's limit stays as a backstop, :data:`EXEMPT_HEADROOM` calls
above this one, so that exempt calls too are bounded.

The request-parsing interceptor (the innermost, see :mod:`nethical_grpc.request_parsing`)
applies the gate in the wrapper it already puts around every handler, so the count costs
no further layer per call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

from nethical_grpc import interceptor_types
from nethical_grpc.errors import ResourceExhausted, to_status

Context = interceptor_types.Context

#: Services whose calls are never refused by the gate: probes and debugging tools must
#: get through to a busy server.
EXEMPT_SERVICES: Final = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
#: gRPC's own bound is the gate's limit plus this many calls (exempt ones, and refused
#: ones on their way out).
EXEMPT_HEADROOM: Final = 256


def service_of(method: str) -> str:
    """``/pkg.Service/Method`` -> ``pkg.Service``."""
    return method.rsplit("/", 2)[-2] if method.count("/") >= 2 else ""


class CallGate:
    """Counts a server's running calls and refuses those over ``limit``."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the concurrent call limit must be at least 1, got {limit}")
        self.limit = limit
        self.active = 0
        self.refused = 0
        self._status = to_status(
            ResourceExhausted(
                message=(
                    f"the server is at its limit of {limit} concurrent calls "
                    "(--max-concurrent-rpcs); retry later"
                ),
                reason="TOO_MANY_CALLS",
                metadata={"max_concurrent_rpcs": str(limit)},
            )
        )

    def covers(self, method: str) -> bool:
        """Whether calls of ``method`` count against the limit."""
        return service_of(method) not in EXEMPT_SERVICES

    async def _refuse(self, context: Context) -> None:
        self.refused += 1
        await context.abort_with_status(self._status)  # type: ignore[attr-defined]

    def coroutine(self, behavior: Any) -> Callable[[Any, Context], Awaitable[Any]]:
        """``behavior`` (a unary or client-streaming handler) counted."""

        async def counted(request: Any, context: Context) -> Any:
            if self.active >= self.limit:
                await self._refuse(context)
            self.active += 1
            try:
                return await behavior(request, context)
            finally:
                self.active -= 1

        return counted

    def generator(self, behavior: Any) -> Callable[[Any, Context], AsyncIterator[Any]]:
        """``behavior`` (a handler with a response stream) counted."""

        async def counted(request: Any, context: Context) -> AsyncIterator[Any]:
            if self.active >= self.limit:
                await self._refuse(context)
            self.active += 1
            try:
                async for item in behavior(request, context):
                    yield item
            finally:
                self.active -= 1

        return counted


#: Health Watch streams a server with a gate holds at once: exempt from the gate, each
#: holds a place in gRPC's own bound for as long as the caller likes, so they may take
#: half the headroom, no more (Checks, reflection and refused calls keep the rest).
WATCHES_UNDER_A_GATE: Final = EXEMPT_HEADROOM // 2


def grpc_limit(limit: int | None) -> int | None:
    """gRPC's own ``maximum_concurrent_rpcs`` behind a gate of ``limit`` (None: none)."""
    return None if limit is None else limit + EXEMPT_HEADROOM


__all__ = [
    "EXEMPT_HEADROOM",
    "EXEMPT_SERVICES",
    "WATCHES_UNDER_A_GATE",
    "CallGate",
    "grpc_limit",
    "service_of",
]
