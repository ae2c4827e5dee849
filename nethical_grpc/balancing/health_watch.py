"""One ``grpc.health.v1.Health/Watch`` stream per instance, feeding the balancer.

Each update takes effect the moment it arrives: SERVING makes the instance usable,
anything else (NOT_SERVING, SERVICE_UNKNOWN), a failed stream or a stream the server
ended makes it unusable at once. Broken streams reconnect with jittered exponential
backoff; a server without the health service (UNIMPLEMENTED) is assumed SERVING. A watch
that fails otherwise (its channel cannot be made) marks the instance UNREACHABLE and is
restarted with the same backoff. A watch ends (it is not restarted) once its instance
was removed from the balancer, or the balancer closed: it would only fail again.

A watcher runs once: :meth:`HealthWatcher.start` after its :meth:`~HealthWatcher.close`,
or after its balancer's close (which closes it), raises RuntimeError saying which was
closed, as :meth:`LoadBalancer.start` does; a watch started then could never connect
(the instances make no channel) and would retry until the watcher's next close.

An optional ``on_serving`` hook is awaited when an instance turns SERVING, before the
balancer routes to it (the coordinator asks the node who it is there). Meanwhile the
instance is UNKNOWN, picked only where no SERVING instance could take the call (at a
start, before any watch reported, calls still go out).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from nethical_grpc import telemetry
from nethical_grpc.balancing.instance import HealthState, Instance
from nethical_grpc.balancing.retry import BALANCER_CLOSED
from nethical_grpc.health import Watched, follow_health

if TYPE_CHECKING:
    from nethical_grpc.balancing.balancer import LoadBalancer

log = logging.getLogger(__name__)

ServingHook = Callable[[Instance], Awaitable[None]]

_STATE = {
    Watched.SERVING: HealthState.SERVING,
    Watched.NOT_SERVING: HealthState.NOT_SERVING,
    Watched.UNREACHABLE: HealthState.UNREACHABLE,
}


class HealthWatcher:
    """Keeps a Watch stream open on every instance of a :class:`LoadBalancer`."""

    def __init__(
        self,
        balancer: LoadBalancer,
        service: str = "",
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        rng: random.Random | None = None,
        on_serving: ServingHook | None = None,
    ) -> None:
        self._lb = balancer
        self.service = service
        self._on_serving = on_serving
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._rng = rng or random.Random()
        self._tasks: dict[Instance, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False  # set by close(): not started again
        self.updates = 0  # health updates received, all instances

    @property
    def running(self) -> bool:
        return self._loop is not None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (it is not started again)."""
        return self._closed

    def start(self) -> None:
        """Start watching every current and future instance (call inside the loop).

        Again while running: nothing more. RuntimeError once this watcher or its
        balancer was closed (the balancer's close closes its watcher)."""
        if self._lb.closed:
            raise RuntimeError(f"{BALANCER_CLOSED}: its health watcher is not started again")
        if self._closed:
            raise RuntimeError("the health watcher is closed: it is not started again")
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._lb.add_listener(self)
        for inst in self._lb.instances():
            self.instance_added(inst)

    async def close(self) -> None:
        """Stop every watch (idempotent); the watcher is not started again."""
        self._closed = True
        self._lb.remove_listener(self)
        self._loop = None
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        # a watch that had already failed (its channel could not be made, say) is not a
        # failure of the close: the balancer's channels must still be closed after it
        await asyncio.gather(*tasks, return_exceptions=True)

    def instance_added(self, inst: Instance) -> None:
        if self._loop is None or inst in self._tasks or inst.removed:
            return  # a removed instance (or a closed balancer's) makes no channel
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
            named = f" ({inst.instance_id})" if inst.instance_id != inst.endpoint else ""
            log.info(
                "%s %s%s: %s -> %s",
                inst.region_id,
                inst.endpoint,
                named,
                inst.health.value,
                health.value,
            )
            telemetry.get_recorder().record_health_transition(
                inst.region_id, inst.endpoint, health.value
            )
        self._lb.set_health(inst, health)

    async def _watch(self, inst: Instance) -> None:
        async def report(state: Watched) -> None:
            health = _STATE[state]
            if (
                health is HealthState.SERVING
                and inst.health is not HealthState.SERVING
                and self._on_serving is not None
            ):
                try:
                    await self._on_serving(inst)
                except Exception:  # the hook is advisory: the instance still serves
                    log.exception("on_serving hook failed for %s", inst.instance_id)
            self._report(inst, health)

        # follow_health reopens broken streams itself; this loop restarts the watch when
        # anything else fails (the channel cannot be made: a TLS file mid-rotation, say),
        # which left the instance UNKNOWN, picked, and never watched again
        delay, backoff_max = self._backoff
        last_failure = ""
        while not inst.removed:
            try:
                await follow_health(
                    inst.channel,
                    self.service,
                    report,
                    *self._backoff,
                    rng=self._rng,
                    name=f"{inst.instance_id} ({inst.endpoint})",
                )
                return  # no health service: assumed SERVING, nothing more to watch
            except Exception as exc:
                if inst.removed:  # removed, or its balancer closed: no channel to watch
                    log.debug(
                        "health watch of %s (%s) ends: %s", inst.instance_id, inst.endpoint, exc
                    )
                    return
                failure = f"{type(exc).__name__}: {exc}"
                if failure != last_failure:
                    log.warning(
                        "health watch of %s (%s) failed, retrying: %s",
                        inst.instance_id,
                        inst.endpoint,
                        failure,
                    )
                    last_failure = failure
                self._report(inst, HealthState.UNREACHABLE)
            await asyncio.sleep(delay * self._rng.uniform(0.5, 1.5))
            delay = min(delay * 2.0, backoff_max)
