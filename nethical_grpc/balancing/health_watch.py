"""One ``grpc.health.v1.Health/Watch`` stream per instance, feeding the balancer.

Each update takes effect the moment it arrives: SERVING makes the instance usable,
anything else (NOT_SERVING, SERVICE_UNKNOWN), a failed stream or a stream the server
ended makes it unusable at once. Broken streams reconnect with jittered exponential
backoff; a server without the health service (UNIMPLEMENTED) is assumed SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nethical_grpc.balancing.instance import HealthState, Instance

if TYPE_CHECKING:
    from nethical_grpc.balancing.balancer import LoadBalancer

log = logging.getLogger(__name__)

_SERVING = health_pb2.HealthCheckResponse.SERVING


class HealthWatcher:
    """Keeps a Watch stream open on every instance of a :class:`LoadBalancer`."""

    def __init__(
        self,
        balancer: LoadBalancer,
        service: str = "",
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self._lb = balancer
        self.service = service
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._rng = rng or random.Random()
        self._tasks: dict[Instance, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.updates = 0  # health updates received, all instances

    @property
    def running(self) -> bool:
        return self._loop is not None

    def start(self) -> None:
        """Start watching every current and future instance (call inside the loop)."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._lb.add_listener(self)
        for inst in self._lb.instances():
            self.instance_added(inst)

    async def close(self) -> None:
        self._lb.remove_listener(self)
        self._loop = None
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def instance_added(self, inst: Instance) -> None:
        if self._loop is None or inst in self._tasks:
            return
        self._tasks[inst] = self._loop.create_task(self._watch(inst))

    def instance_removed(self, inst: Instance) -> None:
        task = self._tasks.pop(inst, None)
        if task is not None:
            task.cancel()

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until every instance has reported (any state but UNKNOWN)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while any(i.health is HealthState.UNKNOWN for i in self._lb.instances()):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def _report(self, inst: Instance, health: HealthState) -> None:
        self.updates += 1
        if inst.health is not health:
            log.info("%s (%s): %s -> %s", inst.instance_id, inst.endpoint, inst.health, health)
        self._lb.set_health(inst, health)

    async def _watch(self, inst: Instance) -> None:
        delay = self._backoff[0]
        request = health_pb2.HealthCheckRequest(service=self.service)
        while True:
            try:
                stub = health_pb2_grpc.HealthStub(inst.channel)
                async for update in stub.Watch(request):
                    delay = self._backoff[0]
                    serving = update.status == _SERVING
                    self._report(inst, HealthState.SERVING if serving else HealthState.NOT_SERVING)
                self._report(inst, HealthState.UNREACHABLE)  # the server ended the stream
            except asyncio.CancelledError:
                raise
            except grpc.RpcError as err:
                code = err.code() if isinstance(err, grpc.aio.AioRpcError) else None
                if code is grpc.StatusCode.UNIMPLEMENTED:
                    log.warning("%s has no health service; assuming SERVING", inst.endpoint)
                    self._report(inst, HealthState.SERVING)
                    return
                self._report(inst, HealthState.UNREACHABLE)
            await asyncio.sleep(delay * self._rng.uniform(0.5, 1.5))
            delay = min(delay * 2.0, self._backoff[1])
