"""One backend as the balancer sees it: identity, health, ejection state and counters."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from nethical_grpc import telemetry
from nethical_grpc.balancing.retry import InstanceRemovedError
from nethical_grpc.grpc_options import DEFAULT_MAX_MESSAGE_BYTES, node_channel_options

ChannelFactory = Callable[[str], grpc.aio.Channel]

#: The largest instance weight (a uint32, as in gRPC and Envoy): the weighted picker sums
#: weights in int64, which heavier ones would overflow
MAX_WEIGHT = 2**32 - 1


class HealthState(enum.Enum):
    """Health as reported by ``grpc.health.v1.Health/Watch`` (or set by the caller).

    ``UNKNOWN`` (nothing reported yet, or no health watching) counts as usable: an
    instance added without a watcher is picked; a watcher flips it within one update.
    With a watcher attached, the balancer picks an UNKNOWN instance only where no
    SERVING one could take the call (not yet reported, or its ``on_serving`` hook runs).
    """

    UNKNOWN = "unknown"
    SERVING = "serving"
    NOT_SERVING = "not_serving"
    UNREACHABLE = "unreachable"

    @property
    def usable(self) -> bool:
        return self is HealthState.SERVING or self is HealthState.UNKNOWN


@dataclass(eq=False, slots=True)
class ChannelCalls:
    """The calls begun on one channel of an instance that have not ended yet (kept by
    the balancer under its lock): a replaced channel is closed once its own calls end."""

    count: int = 0
    #: set once the channel was replaced (or its instance removed): the loop and the
    #: event that the channel's closing waits for
    drain: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None


@dataclass(eq=False, slots=True)
class Instance:
    """A backend endpoint. Counters are updated by the balancer under its lock."""

    instance_id: str
    region_id: str
    endpoint: str
    weight: int = 1
    health: HealthState = HealthState.UNKNOWN
    requests: int = 0
    # calls that failed through the node's fault (unreachable, UNAVAILABLE, INTERNAL...)
    failures: int = 0
    # calls the node refused as the caller's mistake (INVALID_ARGUMENT, ...): not its fault
    rejected: int = 0
    in_flight: int = 0
    ewma_latency_ms: float | None = None
    consecutive_failures: int = 0
    ejections: int = 0  # consecutive ejections; sets the next ejection's length
    ejected_until: float | None = None
    health_changed_ns: int = field(default_factory=time.time_ns)  # wall clock
    resolved_from: str = ""  # the dns:/// target it came from; "" for a static instance
    channel_factory: ChannelFactory | None = field(default=None, repr=False)
    #: the largest answer the default channel takes (a channel_factory sets its own)
    max_message_bytes: int = field(default=DEFAULT_MAX_MESSAGE_BYTES, repr=False)
    _channel: grpc.aio.Channel | None = field(default=None, repr=False)
    #: the calls on the current channel (``in_flight`` counts those on replaced ones too)
    calls: ChannelCalls = field(default_factory=ChannelCalls, repr=False)
    #: removed from its balancer: it makes no new channel (nothing would close it)
    removed: bool = field(default=False, repr=False)
    #: its balancer was closed: it makes no new channel either (set with ``removed``)
    balancer_closed: bool = field(default=False, repr=False)

    @property
    def ejected(self) -> bool:
        return self.ejected_until is not None

    @property
    def available(self) -> bool:
        """Eligible for picks: healthy and not ejected."""
        return self.ejected_until is None and self.health.usable

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @property
    def channel(self) -> grpc.aio.Channel:
        """This instance's grpc.aio channel, created on first use (inside an event loop).

        :class:`InstanceRemovedError` (UNAVAILABLE) once the instance was removed, or its
        balancer closed (``balancer_closed``), and its channel taken for closing."""
        if self._channel is None:
            if self.removed:
                name = (
                    self.endpoint
                    if self.instance_id == self.endpoint
                    else f"{self.instance_id} ({self.endpoint})"
                )
                raise InstanceRemovedError(name, balancer_closed=self.balancer_closed)
            if self.channel_factory is not None:
                self._channel = self.channel_factory(self.endpoint)
            else:
                self._channel = default_channel(
                    self.endpoint, self.region_id, self.max_message_bytes
                )
        return self._channel

    @property
    def has_channel(self) -> bool:
        return self._channel is not None

    def replace_channel(self, channel: grpc.aio.Channel) -> grpc.aio.Channel | None:
        """Use ``channel`` from now on (e.g. one with interceptors); returns the old one.

        Call before health watching starts: a running Watch stream stays on the old one.
        """
        old, self._channel = self._channel, channel
        return old

    def take_channel(self) -> grpc.aio.Channel | None:
        """Detach the channel (for closing); the next access creates a fresh one (unless
        the instance is ``removed``). Its calls stay counted in the old ``calls``; with
        no channel yet, the calls begun go on to the next one, and stay counted."""
        channel, self._channel = self._channel, None
        if channel is not None:
            self.calls = ChannelCalls()
        return channel


def default_channel(
    endpoint: str,
    region_id: str | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> grpc.aio.Channel:
    """A channel to one instance, taking answers up to ``max_message_bytes``; traced and
    measured when telemetry is on. A hung instance is noticed by keepalive within ~15 s
    (``node_channel_options``)."""
    interceptors = telemetry.client_interceptors(endpoint, region_id)
    return grpc.aio.insecure_channel(
        endpoint,
        options=node_channel_options(max_message_bytes),
        interceptors=interceptors or None,
    )
