"""Where instances come from: static endpoints, or DNS names re-resolved on an interval.

A target is written the way gRPC clients write theirs, plus an optional weight::

    10.0.0.7:50051                 one static instance (instance id "10.0.0.7:50051")
    10.0.0.7:50051@3               the same with weight 3 (weighted round robin)
    dns:///nodes.ns.svc:50051      every address the name resolves to, e.g. the pods
                                   behind a Kubernetes headless Service; instance id =
                                   the resolved "IP:PORT"
    dns:nodes.ns.svc:50051@2       the same form without the empty authority

:class:`DnsDiscovery` resolves each DNS target every ``interval_s`` and adds the
addresses that appeared to its :class:`~nethical_grpc.balancing.LoadBalancer` and
removes the ones that left. An address several targets resolve is the instance of the
target that added it; when that one lets go of it, another target that still resolves
it takes it over (its own region's first, else another region's): the instance stays,
with that target's region and weight. A failed resolution (NXDOMAIN, timeout) changes
nothing: the instances already known stay, and their health streams keep traffic off
dead ones.
The resolver is injectable: any ``async (host, port) -> [(ip, port), ...]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nethical_grpc.balancing.instance import MAX_WEIGHT
from nethical_grpc.balancing.retry import BALANCER_CLOSED

if TYPE_CHECKING:
    from nethical_grpc.balancing.balancer import LoadBalancer

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[Sequence[tuple[str, int]]]]

DEFAULT_RESOLVE_INTERVAL_S = 10.0
DEFAULT_RESOLVE_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed target: a static ``host:port`` or a ``dns:`` name with its port."""

    text: str  # as written, without the weight suffix
    host: str
    port: int
    weight: int = 1
    dns: bool = False

    @property
    def endpoint(self) -> str:
        """``host:port`` (IPv6 literals in brackets)."""
        return format_endpoint(self.host, self.port)


def format_endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_host_port(text: str, whole: str) -> tuple[str, int]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{whole!r}: expected [IPV6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"{whole!r}: expected HOST:PORT (a port is required)")
    if not host:
        raise ValueError(f"{whole!r}: empty host")
    if any(c.isspace() for c in host):
        raise ValueError(f"{whole!r}: the host {host!r} holds whitespace")
    # digits only: int() also takes a sign, spaces and underscores ("+50", " 50", "5_0")
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"{whole!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"{whole!r}: port {port} is out of range 1-65535")
    return host, port


def parse_target(text: str) -> Target:
    """Parse ``HOST:PORT[@W]``, ``dns:///NAME:PORT[@W]`` or ``dns:NAME:PORT[@W]``.

    Raises ValueError naming what is wrong (no port, a DNS authority, a bad weight).
    """
    whole = text.strip()
    body, at, weight_text = whole.rpartition("@")
    if not at:
        body, weight_text = whole, ""
    weight = 1
    if at:
        if not (weight_text.isascii() and weight_text.isdigit()):
            raise ValueError(f"{whole!r}: weight {weight_text!r} is not an integer")
        weight = int(weight_text)
        if weight < 1:
            raise ValueError(f"{whole!r}: weight must be >= 1")
        if weight > MAX_WEIGHT:
            raise ValueError(f"{whole!r}: weight must be <= {MAX_WEIGHT}")
    if body.startswith("dns:"):
        rest = body[len("dns:") :]
        if rest.startswith("//"):
            authority, slash, rest = rest[2:].partition("/")
            if authority or not slash:
                raise ValueError(
                    f"{whole!r}: a DNS server authority is not supported; write dns:///NAME:PORT"
                )
        host, port = _split_host_port(rest, whole)
        return Target(body, host, port, weight, dns=True)
    if "://" in body or body.startswith(("ipv4:", "ipv6:", "unix:")):
        raise ValueError(f"{whole!r}: expected HOST:PORT or dns:///NAME:PORT")
    host, port = _split_host_port(body, whole)
    return Target(body, host, port, weight, dns=False)


async def getaddrinfo_resolver(host: str, port: int) -> list[tuple[str, int]]:
    """The system resolver (``loop.getaddrinfo``): unique (ip, port) pairs, TCP only."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    pairs = dict.fromkeys((str(info[4][0]), int(info[4][1])) for info in infos)
    return list(pairs)


@dataclass(slots=True)
class TargetState:
    """One DNS target and what it resolved to last."""

    region_id: str
    target: Target
    instances: set[str] = field(default_factory=set)
    # the instances this target added to the balancer (or was handed): its to remove
    added: set[str] = field(default_factory=set)
    resolutions: int = 0
    failures: int = 0
    last_error: str = ""


class DnsDiscovery:
    """Keeps a balancer's instances in step with what DNS targets resolve to."""

    def __init__(
        self,
        balancer: LoadBalancer,
        interval_s: float = DEFAULT_RESOLVE_INTERVAL_S,
        resolver: Resolver | None = None,
        resolve_timeout_s: float = DEFAULT_RESOLVE_TIMEOUT_S,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("the re-resolution interval must be > 0 seconds")
        if resolve_timeout_s <= 0:
            raise ValueError("the resolve timeout must be > 0 seconds")
        self._lb = balancer
        self.interval_s = interval_s
        self.resolve_timeout_s = resolve_timeout_s
        self._resolve = resolver or getaddrinfo_resolver
        self._targets: dict[tuple[str, str], TargetState] = {}
        # the instances discovery added (endpoint -> the target that owns it): only those
        # are its to hand over or remove; one it finds in the balancer already is static
        # (or another target's), and stays as it is
        self._owner: dict[str, TargetState] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False  # set by close(): not started again

    def add_target(self, region_id: str, target: Target) -> None:
        """Follow a ``dns:`` target for ``region_id`` (resolved on the next refresh)."""
        if not target.dns:
            raise ValueError(f"{target.text!r} is not a dns: target")
        self._targets.setdefault((region_id, target.text), TargetState(region_id, target))

    @property
    def targets(self) -> list[TargetState]:
        return list(self._targets.values())

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (it is not started again)."""
        return self._closed

    def start(self) -> None:
        """Resolve every target now and then every ``interval_s`` (inside the loop),
        until this discovery or its balancer closes.

        Again while running: nothing more. RuntimeError once this discovery or its
        balancer was closed (what it resolved could only be added closed)."""
        if self._lb.closed:
            raise RuntimeError(f"{BALANCER_CLOSED}: its DNS discovery is not started again")
        if self._closed:
            raise RuntimeError("the DNS discovery is closed: it is not started again")
        if self._task is None and self._targets:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop re-resolving (idempotent); the discovery is not started again."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while not self._lb.closed:  # its close ends the re-resolution
            await self.refresh()
            await asyncio.sleep(self.interval_s)

    async def refresh(self) -> None:
        """Resolve every target once, concurrently, and apply the changes.

        Nothing once the balancer is closed: it keeps its instances listed, with their
        statistics, and adds none."""
        if self._lb.closed:
            return
        states = list(self._targets.values())
        await asyncio.gather(*(self._refresh_one(s) for s in states))

    async def _refresh_one(self, state: TargetState) -> None:
        t = state.target
        try:
            resolved = await asyncio.wait_for(self._resolve(t.host, t.port), self.resolve_timeout_s)
        except Exception as exc:  # any resolver's failure: the refreshes must go on
            state.failures += 1
            state.last_error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "%s (%s): resolution failed, keeping %d known instance(s): %s",
                t.text,
                state.region_id,
                len(state.instances),
                state.last_error,
            )
            return
        if self._lb.closed:  # closed while resolving: nothing to apply the answer to
            return
        state.resolutions += 1
        state.last_error = ""
        now = {format_endpoint(_normal_ip(ip), port) for ip, port in resolved}
        gone = state.instances - now
        came = now - state.instances
        state.instances = now
        for endpoint in sorted(came):
            known = self._lb.instance(endpoint)
            if known is not None:
                if known.region_id != state.region_id:
                    log.warning(
                        "%s (%s): %s is an instance of region %s already; it stays there "
                        "(a region node serves one region)",
                        t.text,
                        state.region_id,
                        endpoint,
                        known.region_id,
                    )
                # listed statically, or another target's: handed over when that one
                # lets go of it
                continue
            self._own(state, endpoint)
        for endpoint in sorted(gone):
            if self._owner.get(endpoint) is not state:
                continue  # not added by this target
            heir = self._heir(state, endpoint)
            if heir is not None:
                self._own(heir, endpoint)
                continue
            del self._owner[endpoint]
            state.added.discard(endpoint)
            self._lb.remove_instance(endpoint)
        if came or gone:
            log.info(
                "%s (%s): +%d -%d instance(s), now %d",
                t.text,
                state.region_id,
                len(came),
                len(gone),
                len(now),
            )

    def _heir(self, owner: TargetState, endpoint: str) -> TargetState | None:
        """Another target that resolved ``endpoint`` last time, its own region's first."""
        others = [s for s in self._targets.values() if s is not owner and endpoint in s.instances]
        same = [s for s in others if s.region_id == owner.region_id]
        return next(iter(same or others), None)

    def _own(self, state: TargetState, endpoint: str) -> None:
        """Add ``endpoint`` as ``state``'s instance, or hand it over to ``state`` (the
        instance stays, with its health, and takes that target's region and weight)."""
        before = self._owner.get(endpoint)
        if before is not None:
            before.added.discard(endpoint)
            log.info(
                "%s (%s): %s handed over to %s (%s), which still resolves it",
                before.target.text,
                before.region_id,
                endpoint,
                state.target.text,
                state.region_id,
            )
        t = state.target
        inst = self._lb.add_instance(endpoint, state.region_id, endpoint, t.weight)
        inst.resolved_from = t.text
        self._owner[endpoint] = state
        state.added.add(endpoint)


def _normal_ip(ip: str) -> str:
    """One spelling per address (``::0:1`` and ``::1`` are the same instance)."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(ip))
    return ip
