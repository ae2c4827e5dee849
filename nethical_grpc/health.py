"""``grpc.health.v1.Health``: the grpc.aio servicer, and the client that follows it.

Check answers the current status (NOT_FOUND for an unknown service); List, every known
service's status (the "" of the whole server included). Watch sends the
current status, then every change; when the server stops, :meth:`close` sends the final
status and ends each Watch stream, so long-lived watchers (the coordinator keeps one per
instance) do not hold the server's shutdown for its whole grace period.

Health is public (no token) and exempt from the server's call limit, and each Watch holds a
stream and a task for as long as the caller likes; so the Watch streams a server holds at
once are bounded (:data:`MAX_WATCH_STREAMS`), one over it refused RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nethical_grpc.errors import MAX_MESSAGE_BYTES, ResourceExhausted, clip, to_status

log = logging.getLogger(__name__)

Status = int  # grpc.health.v1.HealthCheckResponse.ServingStatus

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

#: Watch streams one server holds at once; one more is refused RESOURCE_EXHAUSTED (Check
#: and List still answer). Far above what the mesh opens: one per watching coordinator
#: or gateway, plus probes.
MAX_WATCH_STREAMS: Final = 1000


class HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self, max_watches: int = MAX_WATCH_STREAMS) -> None:
        if max_watches < 1:
            raise ValueError(f"the Watch stream limit must be at least 1, got {max_watches}")
        self._status: dict[str, Status] = {"": SERVING}
        self._changed = asyncio.Event()
        self._closed = False
        self._watches = 0
        self._too_many_watches = to_status(
            ResourceExhausted(
                message=(
                    f"the server is at its limit of {max_watches} concurrent health Watch "
                    "streams; use Check, or retry later"
                ),
                reason="TOO_MANY_WATCHES",
                metadata={"max_watch_streams": str(max_watches)},
            )
        )
        self._max_watches = max_watches

    def status(self, service: str = "") -> Status | None:
        return self._status.get(service)

    def set(self, service: str, status: Status) -> None:
        if self._closed:
            return
        self._status[service] = status
        self._notify()

    def close(self) -> None:
        """Every service NOT_SERVING for good, and every Watch stream ends."""
        for service in self._status:
            self._status[service] = NOT_SERVING
        self._closed = True
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def Check(  # noqa: N802 (gRPC method name)
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown service {clip(repr(request.service), MAX_MESSAGE_BYTES)}",
            )
        return health_pb2.HealthCheckResponse(status=status)

    async def List(  # noqa: N802
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={
                service: health_pb2.HealthCheckResponse(status=status)
                for service, status in self._status.items()
            }
        )

    async def Watch(  # noqa: N802
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        if self._watches >= self._max_watches:
            await context.abort_with_status(self._too_many_watches)  # type: ignore[attr-defined]
        self._watches += 1
        try:
            await self._watch(request.service, context)
        finally:
            self._watches -= 1

    async def _watch(self, service: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        last: Status | None = None
        while True:
            # read together: a close() while the write below waits is seen on the next
            # turn (``changed`` is set by then), its final status sent before the end
            changed, closed = self._changed, self._closed
            status = self._status.get(service, SERVICE_UNKNOWN)
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if closed:
                return
            await changed.wait()


class Watched(enum.Enum):
    """What a client following a server's health has just learned."""

    SERVING = "serving"
    NOT_SERVING = "not_serving"
    UNREACHABLE = "unreachable"


async def follow_health(
    channel: grpc.aio.Channel,
    service: str,
    report: Callable[[Watched], Awaitable[None]],
    backoff_initial_s: float = 0.05,
    backoff_max_s: float = 2.0,
    rng: random.Random | None = None,
    name: str = "",
) -> None:
    """Keep a ``Health/Watch`` stream open on ``channel`` and report every change.

    Each update is reported the moment it arrives; a broken stream, or one the server
    ended (it is stopping), is reported UNREACHABLE at once and reopened with jittered
    exponential backoff. The backoff starts over only after a stream that stayed up at
    least ``backoff_max_s``: a server that ends (or breaks) each stream right after its
    first answer is reopened at the backed-off pace, not every ``backoff_initial_s``,
    while a long-lived stream that breaks is reopened at once. A server without the health
    service (UNIMPLEMENTED) is taken as SERVING and no longer watched. Why a stream failed
    (a name that does not resolve, a refused connection) is logged with ``name`` when it
    differs from the last failure, so an address that never works says why once, not on
    every retry. Runs until cancelled.
    """
    uniform = (rng or random.Random()).uniform
    clock = asyncio.get_running_loop().time
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=service)
    delay = backoff_initial_s
    last_failure = ""
    while True:
        up_since: float | None = None  # when the stream's first answer came
        try:
            async for update in stub.Watch(request):
                if up_since is None:
                    up_since = clock()
                last_failure = ""
                await report(Watched.SERVING if update.status == SERVING else Watched.NOT_SERVING)
            await report(Watched.UNREACHABLE)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.aio.AioRpcError) else None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                log.warning("%s has no health service; assuming SERVING", name or channel)
                await report(Watched.SERVING)
                return
            failure = f"{code.name if code else 'ERROR'}: {_details(err)}"
            if failure != last_failure:
                log.warning("health of %s: %s", name or channel, failure)
                last_failure = failure
            await report(Watched.UNREACHABLE)
        if up_since is not None and clock() - up_since >= backoff_max_s:
            delay = backoff_initial_s  # it was up a while: not flapping, back at once
        await asyncio.sleep(delay * uniform(0.5, 1.5))
        delay = min(delay * 2.0, backoff_max_s)


def _details(err: grpc.RpcError) -> str:
    details = err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err)
    return clip(details or "no details", MAX_MESSAGE_BYTES)
