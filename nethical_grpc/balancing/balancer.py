"""Client-side load balancer: pools of usable instances, routing, ejection, statistics.

Every membership change (add/remove, health flip, ejection and its end) rebuilds the
affected pools under the lock, so a pick is a dictionary lookup plus the strategy's
O(1) step. The lock is a ``threading.Lock`` held only for bookkeeping (never across a
call), so sync callers on many threads and asyncio tasks on one loop can share a
balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol, TypeVar

import grpc

from nethical_grpc.balancing.health_watch import HealthWatcher, ServingHook
from nethical_grpc.balancing.instance import (
    MAX_WEIGHT,
    ChannelCalls,
    ChannelFactory,
    HealthState,
    Instance,
)
from nethical_grpc.balancing.retry import (
    BALANCER_CLOSED,
    BalancerClosedError,
    InstanceRemovedError,
    NoAvailableInstanceError,
    RetryPolicy,
    RetryState,
    is_backend_fault,
    is_deadline,
    reset_attempt_deadline,
    set_attempt_deadline,
)
from nethical_grpc.balancing.strategies import LoadBalancingStrategy, Picker, make_picker
from nethical_grpc.grpc_options import DEFAULT_MAX_MESSAGE_BYTES
from nethical_grpc.validation import quoted

T = TypeVar("T")

log = logging.getLogger(__name__)

_DEADLINE_SLACK_S = 0.005
#: The most times an ejection interval doubles: past it, any sane base reached the max
#: long ago, and 2.0 ** ejections would overflow (OverflowError) after 1024 ejections
_MAX_EJECTION_DOUBLINGS = 64
#: Schemes of URLs that are no gRPC target (an endpoint written as for an HTTP client)
_URL_SCHEMES: Final = frozenset({"http", "https", "grpc", "grpcs"})
#: The most instances a NoAvailableInstanceError names (the rest are counted)
_MAX_NAMED_INSTANCES = 8
#: How long the channel of a removed (or moved) instance stays open for the calls already
#: on it: they finish with their answers, and only what still runs after it is cancelled
REMOVED_CHANNEL_GRACE_S: Final = 30.0


class InstanceListener(Protocol):
    """Told about membership changes (the health watcher starts/stops its streams)."""

    def instance_added(self, inst: Instance) -> None: ...

    def instance_removed(self, inst: Instance) -> None: ...


class _Expiry:
    """Timer callback that cancels the attempt's task and remembers it did."""

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        self.task.cancel()


def _bound_by(awaitable: Awaitable[Any], deadline: float) -> bool:
    """A gRPC call whose own deadline is no later than ``deadline`` needs no timer."""
    if not isinstance(awaitable, grpc.aio.Call):
        return False
    try:
        own = awaitable.time_remaining()
    except NotImplementedError:  # calls through client interceptors do not tell
        return False
    return own is not None and own <= deadline - time.monotonic() + _DEADLINE_SLACK_S


async def _with_deadline(
    loop: asyncio.AbstractEventLoop, awaitable: Awaitable[T], deadline: float
) -> T:
    """Await with a cut-off at ``deadline`` (time.monotonic); TimeoutError when hit.

    ``asyncio.timeout_at`` with one timer handle and nothing else: the attempt path is
    hot. A gRPC call already carrying a deadline no later than ours (a call that passed
    :func:`remaining_timeout` to the stub) skips this: gRPC enforces it (see _bound_by).
    """
    task = asyncio.current_task()
    if task is None:  # not inside a task (unusual): nothing to cancel
        return await awaitable
    expiry = _Expiry(task)
    handle = loop.call_at(loop.time() + (deadline - time.monotonic()), expiry)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if expiry.fired and task.uncancel() == 0:
            raise TimeoutError("attempt deadline exceeded") from None
        raise
    finally:
        handle.cancel()


class _Pool:
    __slots__ = ("members", "picker")

    def __init__(self, picker: Picker) -> None:
        self.members: list[Instance] = []
        self.picker = picker

    def reset(self, members: list[Instance]) -> None:
        self.members = members
        self.picker.reset(members)


def no_instance_text(region_id: str | None, stay_in_region: bool = False) -> str:
    """Why a call found no instance, e.g. ``no usable instance (region "eu-west-1")``."""
    if not region_id:
        return "no usable instance"
    where = f"no usable instance (region {quoted(region_id)})"
    return f"{where}, and the call stays in its region" if stay_in_region else where


#: The least time an attempt must have had for its missed deadline to count against
#: the instance (a healthy node answers an Evaluate or a summary query in milliseconds).
DEFAULT_FAULT_TIMEOUT_S: Final = 0.25


def _instance_name(instance_id: str, endpoint: str) -> str:
    """``id (endpoint)``, or the endpoint alone where it is the id."""
    return endpoint if instance_id == endpoint else f"{instance_id} ({endpoint})"


class LoadBalancer:
    """Picks instances for calls and runs calls with retries, ejection and statistics.

    Outlier ejection never takes the last instances away: when every healthy instance
    is ejected, the one due back soonest is used (and counted as a panic pick).

    Deadlines: ``timeout`` bounds the whole call (attempts and backoff), and each
    attempt's deadline (the earlier of ``attempt_timeout`` and what is left) is handed to
    the call as :func:`remaining_timeout`, for gRPC's own ``timeout=``. Async attempts
    are also cut off by the balancer (a timer that cancels the attempt) unless the call
    returns a gRPC call already bound by that deadline, or ``enforce_deadlines=False``.

    ``region_id`` on a pick: REGION_AWARE routes to that region, else to the nearest
    region with a usable instance (the configured ``proximity`` order for that region,
    then measured EWMA latency); the other strategies restrict the pick to that region
    when it has a usable instance and use every instance otherwise. Without a
    ``region_id`` every strategy picks among all usable instances (REGION_AWARE rotates).
    With ``stay_in_region`` a pick (and every retry) stays in ``region_id``, whatever the
    strategy: a region with no usable instance gives none (data residency: an action
    for a region is evaluated, and recorded, there or not at all).

    A deadline an attempt missed counts against the instance only when the attempt had
    ``fault_timeout_s`` or more: a caller's own short deadline (a few milliseconds) says
    nothing of the instance, and would otherwise let any caller have healthy instances
    ejected, and other callers' calls sent to another region.
    """

    def __init__(
        self,
        strategy: LoadBalancingStrategy = LoadBalancingStrategy.ROUND_ROBIN,
        max_retries: int = 2,
        proximity: Mapping[str, Sequence[str]] | None = None,
        *,
        retry_policy: RetryPolicy | None = None,
        ewma_alpha: float = 0.2,
        ejection_threshold: int = 3,
        ejection_base_s: float = 1.0,
        ejection_max_s: float = 30.0,
        latency_refresh_s: float = 1.0,
        enforce_deadlines: bool = True,
        fault_timeout_s: float = DEFAULT_FAULT_TIMEOUT_S,
        channel_factory: ChannelFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if not 0.0 < ewma_alpha <= 1.0:
            raise ValueError("ewma_alpha must be in (0, 1]")
        if ejection_threshold < 1:
            raise ValueError("ejection_threshold must be >= 1")
        self.strategy = strategy
        self.retry_policy = retry_policy or RetryPolicy(max_retries=max_retries)
        self.proximity: dict[str, tuple[str, ...]] = {
            r: tuple(order) for r, order in (proximity or {}).items()
        }
        self.ewma_alpha = ewma_alpha
        self.ejection_threshold = ejection_threshold
        self.ejection_base_s = ejection_base_s
        self.ejection_max_s = ejection_max_s
        self.latency_refresh_s = latency_refresh_s
        self.enforce_deadlines = enforce_deadlines
        self.fault_timeout_s = fault_timeout_s
        self.channel_factory = channel_factory
        self.max_message_bytes = max_message_bytes
        self._clock = clock
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._instances: dict[str, Instance] = {}
        self._all = self._new_pool()
        self._regions: dict[str, _Pool] = {}
        self._track_load = strategy is LoadBalancingStrategy.LEAST_CONNECTIONS
        self._region_aware = strategy is LoadBalancingStrategy.REGION_AWARE
        # home region -> (pool routed to, valid until); cleared on every pool change
        self._fallback: dict[str, tuple[_Pool | None, float]] = {}
        self._ejected: set[Instance] = set()
        self._next_return = math.inf
        self._listeners: list[InstanceListener] = []
        self._watcher: HealthWatcher | None = None
        # removed instances' channels, closing once their calls end
        self._closing: set[asyncio.Task[None]] = set()
        # the replaced channels of each instance that wait for their own calls, oldest
        # first; each is let go once its calls and those of every older one have ended
        self._draining: dict[Instance, list[ChannelCalls]] = {}
        # set by close(): no pick, no new channel, no watch started again
        self._closed = False
        self._calls = 0
        self._call_failures = 0
        self._retries = 0
        self._panic_picks = 0

    def _new_pool(self) -> _Pool:
        return _Pool(make_picker(self.strategy, self._rng))

    # -- membership ------------------------------------------------------------------

    def add_instance(
        self, instance_id: str, region_id: str, endpoint: str, weight: int = 1
    ) -> Instance:
        """Add an instance; the same id again updates it in place (no duplicate).

        ``endpoint`` is a gRPC target (``HOST:PORT``, ``[IPV6]:PORT``, ``dns:///NAME:PORT``,
        ``unix:PATH``): a URL such as ``http://HOST:PORT`` is refused (ValueError), as
        gRPC would only fail its calls later. RuntimeError once the balancer is closed
        (its instances take no calls and make no channels: one added then never would)."""
        scheme, sep, _ = endpoint.partition("://")
        if sep and scheme.lower() in _URL_SCHEMES:
            raise ValueError(
                f"endpoint {endpoint!r} is a URL; a gRPC target is HOST:PORT (or dns:///NAME:PORT)"
            )
        if weight < 1:
            raise ValueError("weight must be >= 1")
        if weight > MAX_WEIGHT:
            raise ValueError(f"weight must be <= {MAX_WEIGHT}")
        old_channel: grpc.aio.Channel | None = None
        old_calls: ChannelCalls | None = None
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{BALANCER_CLOSED}: instance {instance_id!r} is not added")
            inst = self._instances.get(instance_id)
            created = inst is None
            if inst is None:
                inst = Instance(
                    instance_id,
                    region_id,
                    endpoint,
                    weight,
                    channel_factory=self.channel_factory,
                    max_message_bytes=self.max_message_bytes,
                )
                self._instances[instance_id] = inst
                moved_from = None
            else:
                moved_from = inst.region_id if inst.region_id != region_id else None
                if inst.endpoint != endpoint:
                    old_calls = inst.calls
                    old_channel = inst.take_channel()
                    inst.health = HealthState.UNKNOWN
                    inst.health_changed_ns = time.time_ns()
                inst.endpoint, inst.region_id, inst.weight = endpoint, region_id, weight
            self._rebuild(region_id, moved_from)
            listeners = list(self._listeners)
        if old_channel is not None or created:
            for listener in listeners:
                if not created:
                    listener.instance_removed(inst)
                listener.instance_added(inst)
        if old_channel is not None and old_calls is not None:
            self._close_later(old_channel, inst, old_calls)
        return inst

    def remove_instance(self, instance_id: str) -> bool:
        with self._lock:
            inst = self._instances.pop(instance_id, None)
            if inst is None:
                return False
            self._ejected.discard(inst)
            self._rebuild(inst.region_id)
            listeners = list(self._listeners)
            inst.removed = True  # a later access makes no channel that nothing closes
            calls = inst.calls
            channel = inst.take_channel()
        for listener in listeners:
            listener.instance_removed(inst)
        if channel is not None:
            self._close_later(channel, inst, calls)
        return True

    def instances(self) -> list[Instance]:
        with self._lock:
            return list(self._instances.values())

    def instance(self, instance_id: str) -> Instance | None:
        return self._instances.get(instance_id)

    def add_listener(self, listener: InstanceListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: InstanceListener) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def set_health(self, instance: str | Instance, health: HealthState) -> None:
        """Record a health report; takes effect for the very next pick."""
        with self._lock:
            inst = self._resolve(instance)
            if inst is None or inst.health is health:
                return
            was, was_serving = inst.available, inst.health is HealthState.SERVING
            inst.health = health
            inst.health_changed_ns = time.time_ns()
            # with a watcher, pools prefer SERVING instances (see _preferred)
            if inst.available != was or (
                self._watcher is not None and was_serving != (health is HealthState.SERVING)
            ):
                self._rebuild(inst.region_id)

    def _resolve(self, instance: str | Instance) -> Instance | None:
        if isinstance(instance, Instance):
            return instance if self._instances.get(instance.instance_id) is instance else None
        return self._instances.get(instance)

    def _rebuild(self, region_id: str, also: str | None = None) -> None:
        """Recompute the global pool and the named regions' pools (lock held)."""
        usable = [i for i in self._instances.values() if i.available]
        self._all.reset(self._preferred(usable))
        for rid in (region_id, also):
            if rid is None:
                continue
            pool = self._regions.get(rid)
            if pool is None:
                pool = self._regions[rid] = self._new_pool()
            pool.reset(self._preferred([i for i in usable if i.region_id == rid]))
            if not pool.members and not any(i.region_id == rid for i in self._instances.values()):
                del self._regions[rid]
        self._fallback.clear()

    def _preferred(self, usable: list[Instance]) -> list[Instance]:
        """A pool's members: with a health watcher, its SERVING instances when it has any
        (an UNKNOWN one has not reported yet, or its ``on_serving`` hook still runs);
        else every usable one, so calls do not fail while the first reports are due."""
        if self._watcher is None:
            return usable
        serving = [i for i in usable if i.health is HealthState.SERVING]
        return serving or usable

    def _rebuild_all(self) -> None:
        """Recompute every pool (lock held)."""
        regions = {i.region_id for i in self._instances.values()}
        if not regions:
            self._rebuild("")
        for rid in regions:
            self._rebuild(rid)

    # -- picking ---------------------------------------------------------------------

    def get_instance(
        self,
        region_id: str | None = None,
        exclude: Iterable[str | Instance] = (),
        *,
        stay_in_region: bool = False,
    ) -> Instance | None:
        """A usable instance by the strategy, or None when there is none.

        With ``exclude`` (instance ids or instances): a usable instance not in it, or None
        when every usable one is in it; retries pass the instances already tried, then
        ask again without them (so a tried instance is asked again before an ejected
        one). ``stay_in_region``: only ``region_id``'s instances (see the class
        docstring).
        """
        stay = stay_in_region and region_id is not None
        with self._lock:
            if self._closed:
                return None
            if self._ejected and self._next_return <= self._clock():
                self._return_ejected()
            if exclude:
                excluded = {e.instance_id if isinstance(e, Instance) else e for e in exclude}
                return self._pick_excluding(region_id, excluded, stay)
            if region_id is None:
                pool = self._all
            else:
                region = self._regions.get(region_id)
                if region is not None and region.members:
                    pool = region
                elif stay:
                    return self._panic(region_id, stay)
                elif self._region_aware:
                    routed = self._route(region_id)
                    if routed is None:
                        return self._panic(region_id)
                    pool = routed
                else:
                    pool = self._all
            if not pool.members:
                return self._panic(region_id)
            return pool.picker.pick()

    def is_available(self, inst: Instance) -> bool:
        """Whether ``inst`` is usable now (healthy, not ejected): for callers that choose
        among instances themselves and report with :meth:`begin` and ``record_*``. An
        ejection whose time is up ends here, as on a pick. False once the balancer
        is closed."""
        with self._lock:
            if self._closed:
                return False
            if self._ejected and self._next_return <= self._clock():
                self._return_ejected()
            return inst.available

    def _panic(self, region_id: str | None, stay: bool = False) -> Instance | None:
        """Nothing usable: rather than fail every call, use the healthy ejected instance
        (preferring ``region_id``; only its own with ``stay``) that is due back soonest
        (Envoy's "panic" routing).
        """
        ejected = [i for i in self._ejected if i.health.usable]
        home = [i for i in ejected if i.region_id == region_id]
        candidates = home if stay else home or ejected
        if not candidates:
            return None
        self._panic_picks += 1
        return min(candidates, key=lambda i: (i.ejected_until or 0.0, i.instance_id))

    def _route(self, region_id: str) -> _Pool | None:
        """The pool of the nearest region with usable instances (cached per change)."""
        cached = self._fallback.get(region_id)
        if cached is not None and (cached[1] == math.inf or cached[1] > self._clock()):
            return cached[0]
        order, by_latency = self._order(region_id)
        pool = next((self._regions[r] for r in order if self._regions[r].members), None)
        valid_until = self._clock() + self.latency_refresh_s if by_latency else math.inf
        self._fallback[region_id] = (pool, valid_until)
        return pool

    def _order(self, region_id: str) -> tuple[list[str], bool]:
        """Regions after ``region_id``: configured proximity, then by EWMA latency.

        Returns the order and whether it depended on latency (so must be refreshed).
        """
        configured = [r for r in self.proximity.get(region_id, ()) if r in self._regions]
        for r in configured:
            if self._regions[r].members:
                return configured, False
        seen = {region_id, *configured}
        rest = [r for r in self._regions if r not in seen]
        rest.sort(key=self._region_latency_key)
        return configured + rest, True

    def _region_latency_key(self, region_id: str) -> tuple[bool, float, str]:
        measured = [
            m.ewma_latency_ms
            for m in self._regions[region_id].members
            if m.ewma_latency_ms is not None
        ]
        if not measured:
            return (True, math.inf, region_id)  # unmeasured regions last, by name
        return (False, min(measured), region_id)

    def region_order(self, region_id: str) -> list[str]:
        """Where REGION_AWARE sends callers of ``region_id``: home first, then fallbacks."""
        with self._lock:
            order, _ = self._order(region_id)
            return [region_id, *order]

    def _pick_excluding(
        self, region_id: str | None, excluded: set[str], stay: bool = False
    ) -> Instance | None:
        """Slow path (retries): a usable instance not in ``excluded`` if one exists (in
        ``region_id`` only, with ``stay``)."""

        def allowed(pool: _Pool) -> list[Instance]:
            return [m for m in pool.members if m.instance_id not in excluded]

        pools: list[_Pool] = []
        if region_id is not None and region_id in self._regions:
            pools.append(self._regions[region_id])
        if not stay:
            if self._region_aware and region_id is not None:
                order, _ = self._order(region_id)
                pools.extend(self._regions[r] for r in order)
            pools.append(self._all)
        for pool in pools:
            candidates = allowed(pool)
            if candidates:
                return pool.picker.pick_among(candidates)
        return None

    # -- ejection --------------------------------------------------------------------

    def _eject(self, inst: Instance) -> None:
        doublings = min(inst.ejections, _MAX_EJECTION_DOUBLINGS)
        interval = min(self.ejection_base_s * 2.0**doublings, self.ejection_max_s)
        inst.ejections += 1
        inst.consecutive_failures = 0
        inst.ejected_until = self._clock() + interval
        self._ejected.add(inst)
        self._next_return = min(self._next_return, inst.ejected_until)
        self._rebuild(inst.region_id)

    def _return_ejected(self) -> None:
        now = self._clock()
        back = [i for i in self._ejected if i.ejected_until is not None and i.ejected_until <= now]
        for inst in back:
            inst.ejected_until = None
            # failures of calls that were in flight at the ejection, or that ended while
            # it lasted, are not held against its return (one more would eject it again)
            inst.consecutive_failures = 0
            self._ejected.discard(inst)
        self._next_return = min(
            (i.ejected_until for i in self._ejected if i.ejected_until is not None),
            default=math.inf,
        )
        for region_id in {i.region_id for i in back}:
            self._rebuild(region_id)

    # -- accounting ------------------------------------------------------------------

    def begin(self, inst: Instance) -> ChannelCalls:
        """A call to ``inst`` starts (for callers doing their own calls).

        Returns the calls of the instance's current channel: handed back to ``record_*``
        as ``calls``, it lets a channel replaced meanwhile (the instance moved, or was
        removed) close as soon as its own calls end, not only once every later one has.
        """
        with self._lock:
            inst.requests += 1
            old = inst.in_flight
            inst.in_flight = old + 1
            if self._track_load and inst.available:
                self._load_changed(inst, old, old + 1)
            calls = inst.calls
            calls.count += 1
            return calls

    def _load_changed(self, inst: Instance, old: int, new: int) -> None:
        self._all.picker.load_changed(inst, old, new)
        region = self._regions.get(inst.region_id)
        if region is not None:
            region.picker.load_changed(inst, old, new)

    def _end(self, inst: Instance, calls: ChannelCalls | None) -> None:
        old = inst.in_flight
        inst.in_flight = old - 1
        if self._track_load and inst.available:
            self._load_changed(inst, old, old - 1)
        if calls is None or calls.count <= 0:
            # not said: put down to the newest channel with calls, so that no older
            # channel's count drops below its own calls (they are let go in order)
            calls = inst.calls
            if calls.count <= 0:
                calls = next(
                    (c for c in reversed(self._draining.get(inst, ())) if c.count > 0), None
                )
                if calls is None:
                    return
        calls.count -= 1
        if calls.count == 0 and calls.drain is not None:
            self._let_go(inst)

    def _let_go(self, inst: Instance) -> None:
        """Let the replaced channels of ``inst`` close whose calls, and those of every
        older one, have all ended (lock held; a call may end on another thread)."""
        waiting = self._draining.get(inst)
        if waiting is None:
            return
        while waiting and waiting[0].count <= 0:
            drain = waiting.pop(0).drain
            if drain is not None:
                drain[0].call_soon_threadsafe(drain[1].set)
        if not waiting:
            del self._draining[inst]

    def record_success(
        self, inst: Instance, latency_s: float | None, *, calls: ChannelCalls | None = None
    ) -> None:
        """A call to ``inst`` succeeded; ``None`` latency (e.g. a long stream) leaves the
        EWMA alone. ``calls``: what :meth:`begin` returned, as for every ``record_*``."""
        with self._lock:
            self._end(inst, calls)
            if latency_s is not None:
                ms = latency_s * 1000.0
                prev = inst.ewma_latency_ms
                inst.ewma_latency_ms = ms if prev is None else prev + self.ewma_alpha * (ms - prev)
            inst.consecutive_failures = 0
            inst.ejections = 0

    def record_failure(
        self,
        inst: Instance,
        error: BaseException | grpc.StatusCode | None = None,
        budget_s: float | None = None,
        *,
        calls: ChannelCalls | None = None,
    ) -> None:
        """A failed call: a backend fault counts as a failure (and towards ejection); a
        caller's error (``error``, or the status the call ended with, not a backend
        fault) as ``rejected``, which says nothing of the instance. So does a deadline
        missed by a call that had less than ``fault_timeout_s`` (``budget_s``, its time)."""
        with self._lock:
            self._end(inst, calls)
            short = budget_s is not None and budget_s < self.fault_timeout_s
            if error is not None and (
                not is_backend_fault(error) or (short and is_deadline(error))
            ):
                inst.rejected += 1
                return
            inst.failures += 1
            inst.consecutive_failures += 1
            if (
                inst.consecutive_failures >= self.ejection_threshold
                and not inst.ejected
                and not self._closed
                and self._instances.get(inst.instance_id) is inst
            ):
                self._eject(inst)

    def record_cancelled(self, inst: Instance, *, calls: ChannelCalls | None = None) -> None:
        with self._lock:
            self._end(inst, calls)

    # -- calls -----------------------------------------------------------------------

    def _next_instance(
        self, region_id: str | None, state: RetryState, stay_in_region: bool = False
    ) -> Instance:
        stay = stay_in_region
        if self._closed:
            self._count_failed_call()
            raise BalancerClosedError(state.tried) from state.last_error
        inst = None
        if state.tried:
            inst = self.get_instance(region_id, state.tried, stay_in_region=stay)
        if inst is None:
            inst = self.get_instance(region_id, stay_in_region=stay)
        if inst is None:
            self._count_failed_call()
            if self._closed:  # closed since the check above
                raise BalancerClosedError(state.tried) from state.last_error
            raise NoAvailableInstanceError(
                self._no_instance_message(region_id, stay, state), state.tried
            ) from state.last_error
        return inst

    def _no_instance_message(self, region_id: str | None, stay: bool, state: RetryState) -> str:
        """Why a call found no instance: where it failed already, else the state of the
        instances it could have gone to (the first :data:`_MAX_NAMED_INSTANCES`)."""
        text = no_instance_text(region_id, stay)
        if state.tried:
            tried = "; ".join(f"{i} ({why})" for i, why in state.tried.items())
            return f"{text}; tried {tried}"
        with self._lock:
            now = self._clock()
            candidates = [
                i
                for i in self._instances.values()
                if not stay or region_id is None or i.region_id == region_id
            ]
        if not candidates:
            return f"{text}: no instances"
        states = [
            _instance_name(i.instance_id, i.endpoint)
            + " "
            + (
                f"ejected for {max(i.ejected_until - now, 0.0):.1f}s"
                if i.ejected_until is not None and i.health.usable
                else i.health.value
            )
            for i in candidates[:_MAX_NAMED_INSTANCES]
        ]
        more = len(candidates) - len(states)
        return f"{text}: " + ", ".join(states) + (f" and {more} more" if more > 0 else "")

    def execute_request(
        self,
        request_func: Callable[[Instance], T],
        region_id: str | None = None,
        timeout: float | None = None,
        *,
        attempt_timeout: float | None = None,
        idempotent: bool = True,
        retry_if: Callable[[BaseException], bool] | None = None,
        stay_in_region: bool = False,
    ) -> T:
        """Run ``request_func(instance)`` with retries (sync callers; backoff sleeps the thread).

        The attempt's deadline is available to ``request_func`` as ``remaining_timeout()``.
        ``retry_if`` replaces the default classification (:func:`is_retryable` with
        ``idempotent``); retries stay bounded by the policy and the deadline.
        ``stay_in_region``: every attempt goes to ``region_id``'s instances only.
        """
        state = RetryState(self.retry_policy, self._rng, timeout, idempotent, retry_if)
        with self._lock:
            self._calls += 1
        while True:
            inst = self._next_instance(region_id, state, stay_in_region)
            state.attempts += 1
            deadline = state.attempt_deadline(attempt_timeout)
            token = set_attempt_deadline(deadline)
            calls = self.begin(inst)
            started = time.perf_counter()
            budget = None if deadline is None else deadline - time.monotonic()
            try:
                result = request_func(inst)
            except Exception as err:
                self.record_failure(inst, err, budget, calls=calls)
                delay = state.retry_delay(err)
                if delay is None:
                    self._count_failed_call()
                    raise
                if self._closed:  # no retry: the next pick would be refused anyway
                    raise self._closed_error(state, inst, err) from err
                self._count_retry(state, inst, err)
                time.sleep(delay)
                continue
            except BaseException:
                self.record_cancelled(inst, calls=calls)
                raise
            finally:
                reset_attempt_deadline(token)
            self.record_success(inst, time.perf_counter() - started, calls=calls)
            return result

    async def execute_request_async(
        self,
        request_func: Callable[[Instance], Awaitable[T]],
        region_id: str | None = None,
        timeout: float | None = None,
        *,
        attempt_timeout: float | None = None,
        idempotent: bool = True,
        retry_if: Callable[[BaseException], bool] | None = None,
        stay_in_region: bool = False,
    ) -> T:
        """``await request_func(instance)`` with retries; each attempt is cut off at its deadline.

        ``retry_if`` as for :meth:`execute_request`.
        """
        state = RetryState(self.retry_policy, self._rng, timeout, idempotent, retry_if)
        with self._lock:
            self._calls += 1
        loop = asyncio.get_running_loop()
        while True:
            inst = self._next_instance(region_id, state, stay_in_region)
            state.attempts += 1
            deadline = state.attempt_deadline(attempt_timeout)
            token = set_attempt_deadline(deadline)
            calls = self.begin(inst)
            started = time.perf_counter()
            budget = None if deadline is None else deadline - time.monotonic()
            try:
                pending = request_func(inst)
                if deadline is None or not self.enforce_deadlines or _bound_by(pending, deadline):
                    result = await pending
                else:
                    result = await _with_deadline(loop, pending, deadline)
            except Exception as err:
                self.record_failure(inst, err, budget, calls=calls)
                delay = state.retry_delay(err)
                if delay is None:
                    self._count_failed_call()
                    raise
                if self._closed:  # no retry: the next pick would be refused anyway
                    raise self._closed_error(state, inst, err) from err
                self._count_retry(state, inst, err)
                await asyncio.sleep(delay)
                continue
            except BaseException:
                self.record_cancelled(inst, calls=calls)
                raise
            finally:
                reset_attempt_deadline(token)
            self.record_success(inst, time.perf_counter() - started, calls=calls)
            return result

    def _closed_error(
        self, state: RetryState, inst: Instance, error: BaseException
    ) -> BalancerClosedError:
        """The error of a call whose retry the balancer's close refused (counted as
        failed): ``error``, the attempt's own failure, is named in ``tried`` unless it
        is the closed instance's own refusal."""
        if not (isinstance(error, InstanceRemovedError) and error.balancer_closed):
            state.failed_on(inst.instance_id, inst.endpoint, error)
        self._count_failed_call()
        return BalancerClosedError(state.tried)

    def _count_failed_call(self) -> None:
        with self._lock:
            self._call_failures += 1

    def _count_retry(self, state: RetryState, inst: Instance, error: BaseException) -> None:
        state.failed_on(inst.instance_id, inst.endpoint, error)
        with self._lock:
            self._retries += 1

    # -- health watching and lifecycle -----------------------------------------------

    def attach_health_watcher(
        self,
        service: str = "",
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        on_serving: ServingHook | None = None,
    ) -> HealthWatcher:
        """Watch every instance's ``grpc.health.v1.Health`` (started by :meth:`start`).

        ``on_serving(instance)`` is awaited each time an instance turns SERVING, before
        it becomes routable (e.g. to ask the node who it is); its errors are logged.
        A second call returns the watcher already attached, unchanged.
        """
        if self._watcher is None:
            watcher = HealthWatcher(
                self, service, backoff_initial_s, backoff_max_s, on_serving=on_serving
            )
            with self._lock:
                self._watcher = watcher
                self._rebuild_all()  # pools now prefer SERVING instances
        return self._watcher

    @property
    def health_watcher(self) -> HealthWatcher | None:
        return self._watcher

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (calls are refused from then on)."""
        return self._closed

    async def start(self) -> None:
        """Start health watching (with a watcher attached); RuntimeError once closed."""
        if self._closed:
            raise RuntimeError(f"{BALANCER_CLOSED}: it is not started again")
        if self._watcher is not None:
            self._watcher.start()

    async def close(self) -> None:
        """Stop health watching and close every instance's channel. Idempotent: a second
        close waits for the channels that the first still closes.

        From its start every instance is marked ``removed`` and ``balancer_closed``: it
        makes no new channel (its :attr:`~Instance.channel` raises
        :class:`InstanceRemovedError`, UNAVAILABLE, saying the balancer is closed), no
        pick returns it, and calls through the balancer fail fast with
        :class:`BalancerClosedError` (a :class:`NoAvailableInstanceError`, UNAVAILABLE),
        not retried, rather than open channels that nothing would close. Calls still
        on a channel end when it closes, as gRPC ends them (an async call with a bare
        CancelledError: it was sent, so it is not reported as refused). The instances
        stay listed, with their statistics.

        The first close then tells every listener that each instance was removed (as
        :meth:`remove_instance` does), so that a listener of its own (a
        :class:`HealthWatcher` made directly, say) ends its work on them now; a
        listener's error is logged, and the close goes on. The attached watcher is
        closed instead (its watches awaited), as before.
        """
        with self._lock:
            first = not self._closed
            self._closed = True
            for inst in self._instances.values():
                inst.removed = inst.balancer_closed = True
            closed = list(self._instances.values()) if first else []
            listeners = [x for x in self._listeners if x is not self._watcher]
        for inst in closed:
            for listener in listeners:
                try:
                    listener.instance_removed(inst)
                except Exception:  # the channels must still be closed
                    log.exception(
                        "listener %r failed on the close of %s", listener, inst.instance_id
                    )
        if self._watcher is not None:
            await self._watcher.close()
        with self._lock:
            taken = [inst.take_channel() for inst in self._instances.values()]
            # replaced channels: their calls end now
            draining = [c.drain for waiting in self._draining.values() for c in waiting]
            self._draining.clear()
        for drain in draining:
            if drain is not None:
                drain[1].set()
        loop = asyncio.get_running_loop()
        for channel in taken:
            if channel is not None:  # closed concurrently, so that a second close waits
                self._track_closing(loop.create_task(channel.close(None)))
        while self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    async def __aenter__(self) -> LoadBalancer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _close_later(self, channel: grpc.aio.Channel, inst: Instance, calls: ChannelCalls) -> None:
        """Close the old channel of ``inst`` (removed, or moved to another endpoint) once
        its own calls (``calls``) through the balancer end: at most
        :data:`REMOVED_CHANNEL_GRACE_S`, or when the balancer closes; what still runs
        then is cancelled."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: nothing to schedule on; the channel is dropped
        drained = asyncio.Event()
        with self._lock:
            if self._closed:  # the balancer's close ends every call now
                drained.set()
            else:
                calls.drain = (loop, drained)
                self._draining.setdefault(inst, []).append(calls)
                self._let_go(inst)
        self._track_closing(loop.create_task(_close_when_drained(channel, drained)))

    def _track_closing(self, task: asyncio.Task[None]) -> None:
        """A channel closing: :meth:`close` waits for it."""
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- statistics ------------------------------------------------------------------

    def get_statistics(self) -> dict[str, Any]:
        """Per instance and total: requests, failures, error_rate, ewma_latency_ms, ..."""
        with self._lock:
            now = self._clock()
            per: dict[str, dict[str, Any]] = {}
            for inst in self._instances.values():
                per[inst.instance_id] = {
                    "region_id": inst.region_id,
                    "endpoint": inst.endpoint,
                    "weight": inst.weight,
                    "requests": inst.requests,
                    "failures": inst.failures,
                    "rejected": inst.rejected,
                    "error_rate": inst.error_rate,
                    "ewma_latency_ms": inst.ewma_latency_ms,
                    "in_flight": inst.in_flight,
                    "health": inst.health.value,
                    "available": inst.available,
                    "ejected": inst.ejected,
                    "ejected_for_s": (
                        max(inst.ejected_until - now, 0.0)
                        if inst.ejected_until is not None
                        else 0.0
                    ),
                    "consecutive_failures": inst.consecutive_failures,
                    "health_changed_ns": inst.health_changed_ns,
                    "resolved_from": inst.resolved_from,
                }
            requests = sum(s["requests"] for s in per.values())
            failures = sum(s["failures"] for s in per.values())
            rejected = sum(s["rejected"] for s in per.values())
            latencies = [s["ewma_latency_ms"] for s in per.values() if s["requests"]]
            measured = [x for x in latencies if x is not None]
            total = {
                "requests": requests,
                "failures": failures,
                "rejected": rejected,
                "error_rate": failures / requests if requests else 0.0,
                "ewma_latency_ms": self._weighted_latency(per) if measured else None,
                "in_flight": sum(s["in_flight"] for s in per.values()),
                "calls": self._calls,
                "failed_calls": self._call_failures,
                "retries": self._retries,
                "instances": len(per),
                "available_instances": sum(1 for s in per.values() if s["available"]),
                "ejected_instances": len(self._ejected),
                "panic_picks": self._panic_picks,
            }
            # the product guide's flat names, too
            return {
                "strategy": self.strategy.value,
                "total_requests": requests,
                "error_rate": total["error_rate"],
                "instances": per,
                "total": total,
            }

    @staticmethod
    def _weighted_latency(per: Mapping[str, Mapping[str, Any]]) -> float:
        """Request-weighted mean of the instances' EWMA latencies."""
        num = den = 0.0
        for s in per.values():
            if s["ewma_latency_ms"] is not None and s["requests"]:
                num += s["ewma_latency_ms"] * s["requests"]
                den += s["requests"]
        return num / den if den else 0.0


async def _close_when_drained(channel: grpc.aio.Channel, drained: asyncio.Event) -> None:
    """Close ``channel`` once ``drained`` is set, or after :data:`REMOVED_CHANNEL_GRACE_S`
    (cancelling what still runs on it)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(drained.wait(), REMOVED_CHANNEL_GRACE_S)
    await channel.close(None)
