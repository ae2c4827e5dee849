"""What every mesh server shares: health, reflection, limits, and a graceful drain.

A server built here answers ``grpc.health.v1.Health`` truthfully (SERVING once started,
NOT_SERVING as soon as a drain begins) and exposes server reflection so grpcurl works
without .proto files.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nethical_grpc import reflection
from nethical_grpc.call_limit import WATCHES_UNDER_A_GATE, CallGate, grpc_limit
from nethical_grpc.grpc_options import DEFAULT_MAX_MESSAGE_BYTES, server_options
from nethical_grpc.health import NOT_SERVING, SERVING, HealthService
from nethical_grpc.request_parsing import RequestParsingInterceptor
from nethical_grpc.security.config import ServerSecurity
from nethical_grpc.telemetry import server_interceptors

log = logging.getLogger(__name__)

#: the collector's thresholds while serving (Python's defaults: 700, 10, 10)
GC_THRESHOLD = (20_000, 20, 20)


def tune_collector() -> None:
    """The collector's thresholds for a server, set before it builds anything.

    A global query makes a few thousand short-lived objects; collecting the young ones
    every 700 allocations cost the coordinator 0.26-0.38 ms of CPU per query at 10
    regions (two A/B runs of these thresholds against the defaults). Reference counting
    frees nearly all of them anyway: the collector only looks for cycles. Set before the
    start-up's restore and first load of the other instances' windows, which build
    hundreds of thousands of long-lived objects: under the defaults, full collections
    walking them took about 40% of a region-scope node's first load (``bench/peers.py``).
    """
    gc.set_threshold(*GC_THRESHOLD)


Registrar = Callable[[grpc.aio.Server], None]
T = TypeVar("T")


@dataclass
class MeshServer:
    """A started grpc.aio server with its health servicer and bound port."""

    server: grpc.aio.Server
    health: HealthService
    port: int
    service_names: Sequence[str]
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # run when the server stops accepting calls: end long-lived streams that would
    # otherwise hold the stop for the whole grace period
    on_drain: list[Callable[[], None]] = field(default_factory=list)
    # the bound on concurrent calls (it also counts the calls in progress)
    gate: CallGate | None = None
    # when a drain cancels the calls still running (time.monotonic), set before on_drain
    stop_deadline: float | None = None
    # the stop the first drain() began: later calls wait for it rather than return at once
    _drained: asyncio.Future[None] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def set_serving(self, serving: bool) -> None:
        for name in ("", *self.service_names):
            self.health.set(name, SERVING if serving else NOT_SERVING)

    async def drain(
        self,
        announce_s: float = 1.0,
        grace_s: float = 5.0,
        hurry: asyncio.Event | None = None,
    ) -> None:
        """NOT_SERVING first (so balancers move away), then stop accepting, then finish.

        ``hurry`` set (a second signal) cuts the announcement and the grace short: calls
        still running are cancelled at once. A second call waits until the first one's
        stop is done, stop hooks included (its own settings are not used); a caller
        cancelled meanwhile does not cut the stop short (the stores still close).
        """
        if self._drained is None:
            self._drained = asyncio.ensure_future(self._drain(announce_s, grace_s, hurry))
        await asyncio.shield(self._drained)

    async def _drain(self, announce_s: float, grace_s: float, hurry: asyncio.Event | None) -> None:
        log.info("draining: health NOT_SERVING, stopping in %.1fs", announce_s)
        await self.set_serving(False)
        if announce_s > 0:
            await _sleep_unless(hurry, announce_s)
        self.health.close()  # ends Watch streams so they do not hold the stop
        if hurry is not None and hurry.is_set():
            grace_s = 0.0
        self.stop_deadline = time.monotonic() + grace_s
        for end_streams in self.on_drain:
            end_streams()
        if self.gate is not None and self.gate.active:
            log.info(
                "stopping: %d calls in progress get up to %.1fs to finish",
                self.gate.active,
                grace_s,
            )
        stopping = asyncio.ensure_future(self.server.stop(grace_s))
        if hurry is not None and grace_s > 0:
            hurried = asyncio.ensure_future(hurry.wait())
            await asyncio.wait({stopping, hurried}, return_when=asyncio.FIRST_COMPLETED)
            if not stopping.done():
                await self.server.stop(0)  # a second stop shortens the first one's grace
            hurried.cancel()
        await stopping
        for hook in self.on_stop:
            try:
                await hook()
            except Exception:  # the other steps still run: the last writes, the stores
                log.exception("stopping: %s failed", getattr(hook, "__qualname__", hook))
        log.info("stopped")

    async def wait(self) -> None:
        await self.server.wait_for_termination()


async def start_server(
    registrars: Sequence[Registrar],
    service_full_names: Sequence[str],
    host: str = "127.0.0.1",
    port: int = 0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    reflection_enabled: bool = True,
    max_concurrent_rpcs: int | None = 1000,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] | None = None,
    serving: bool = True,
    security: ServerSecurity | None = None,
) -> MeshServer:
    """Create, bind (port 0 picks a free port) and start a server with health + reflection.

    ``interceptors`` default to the active telemetry's (none when telemetry is off).
    ``serving=False`` starts with health NOT_SERVING (until the caller is ready).
    ``security``: TLS (or mutual TLS) and bearer-token roles; default plaintext, no
    tokens (logged as such). Telemetry runs before the token check, so refused calls are
    traced and counted too.
    """
    security = security or ServerSecurity()
    chain = list(interceptors) if interceptors is not None else server_interceptors()
    chain.extend(security.interceptors())
    # innermost: undecodable requests are INVALID_ARGUMENT, and calls over the limit are
    # refused, health and reflection excepted (gRPC's own limit is a backstop above it)
    gate = CallGate(max_concurrent_rpcs) if max_concurrent_rpcs is not None else None
    chain.append(RequestParsingInterceptor(gate))
    server = grpc.aio.server(
        options=server_options(max_message_bytes),
        maximum_concurrent_rpcs=grpc_limit(max_concurrent_rpcs),
        interceptors=chain,
    )
    for register in registrars:
        register(server)
    # Watch streams are exempt from the gate, not from gRPC's bound behind it: under a
    # gate they may fill only part of its headroom, or they would lock out every call
    health = (
        HealthService(max_watches=WATCHES_UNDER_A_GATE) if gate is not None else HealthService()
    )
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = [*service_full_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
    if reflection_enabled:
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
    bound = await _listen(server, security, host, port)
    security.log(f"{', '.join(service_full_names)} on {bracket(host)}:{bound}", log)
    # gRPC's start runs to its end even when this one is cancelled: a stop of a start cut
    # short fails (InvalidStateError, in place of the cancel) and may leave the port bound
    starting = asyncio.ensure_future(server.start())
    try:
        await asyncio.shield(starting)
        mesh = MeshServer(
            server=server, health=health, port=bound, service_names=service_full_names, gate=gate
        )
        await mesh.set_serving(serving)
    except BaseException:  # cancelled, say: not left listening
        with contextlib.suppress(Exception):
            await starting
        await server.stop(None)
        raise
    return mesh


async def _listen(server: grpc.aio.Server, security: ServerSecurity, host: str, port: int) -> int:
    """Bind ``host:port`` (port 0: a free port) on every address of ``host``, the same
    port on each; returns it. ``OSError`` when one of them cannot be bound: a node that
    answered ``localhost`` on ::1 only, while another program holds 127.0.0.1 there,
    would be a trap (gRPC's own bind of a name takes any one of its addresses)."""
    bound = port
    for i, address in enumerate(await _addresses(host)):
        try:
            got = security.add_port(server, f"{bracket(address)}:{bound}")
        except RuntimeError:  # grpc's "Failed to bind to address ..."
            got = 0
        if got == 0:
            if i > 0:  # the addresses bound already are released by a stop
                await server.start()
                await server.stop(None)
            if address == unbracket(host):
                raise OSError(
                    f"cannot listen on {bracket(host)}:{port} (the port is in use, or "
                    f"{unbracket(host)} is not an address of this machine)"
                )
            raise OSError(
                f"cannot listen on {host}:{port}: not on {bracket(address)}:{bound}, one of "
                "its addresses (the port is in use there)"
            )
        bound = got
    return bound


async def _addresses(host: str) -> list[str]:
    """What to bind for ``host``: an IP address as it is; a name, each of its addresses
    that this machine has (``localhost`` names ::1 too in many a container without
    IPv6)."""
    name = unbracket(host)
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return [name]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(
            f"cannot listen on {host}: the name does not resolve ({exc.strerror})"
        ) from None
    resolved = {str(sockaddr[0]): (family, sockaddr) for family, _, _, _, sockaddr in infos}
    local = [address for address, found in resolved.items() if _is_local(*found)]
    if not local:
        raise OSError(
            f"cannot listen on {host}: none of its addresses ({', '.join(resolved)}) is an "
            "address of this machine"
        )
    return local


def _is_local(family: int, sockaddr: tuple[Any, ...]) -> bool:
    """This machine has the address (a socket binds to it)."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((sockaddr[0], 0, *sockaddr[2:]))
    except OSError:
        return False
    return True


async def _sleep_unless(event: asyncio.Event | None, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``event`` is set meanwhile."""
    if event is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


def bracket(host: str) -> str:
    """``host`` as it is written before ``:PORT``: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def unbracket(host: str) -> str:
    """``host`` without the brackets of ``[IPv6]``: as a socket's bind takes it."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


class StopSignals:
    """SIGTERM/SIGINT handlers for a foreground server: the first signal asks for a stop
    (a drain), a second one while draining for a hurry. Installed before the server
    starts (a start may restore its state for a while), so that a signal from then on
    stops it with its stop hooks instead of killing it without them (a SIGTERM's default
    action), or Ctrl-C interrupting the start wherever it is."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, self._on_signal, sig)

    async def unless_stopped(self, starting: Awaitable[T]) -> T | None:
        """What ``starting`` returns; None when a stop signal came first: it is cancelled
        then (a start stops what it started when cancelled). A signal while the start
        runs code that does not wait (a replay, say) is acted on once it waits."""
        start = asyncio.ensure_future(starting)
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            start.cancel()
            raise
        finally:
            stopper.cancel()
        if start.done():
            return start.result()
        start.cancel()
        try:
            return await start  # done before the cancel took: the stop drains it
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this wait was cancelled itself
            return None

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self.stop.is_set():
            self.stop.set()
            return
        if not self.hurry.is_set():
            log.warning("%s again: stopping now, cancelling the calls still running", sig.name)
            self.hurry.set()


async def serve_until_signalled(
    mesh: MeshServer,
    announce_s: float = 1.0,
    grace_s: float = 5.0,
    signals: StopSignals | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, then drain. For the CLI's foreground servers.

    A second signal while draining stops at once: calls still running are cancelled.
    ``signals``: the handlers installed earlier (a signal since then is acted on now).
    """
    signals = signals or StopSignals()
    waiter = asyncio.ensure_future(mesh.wait())
    stopper = asyncio.ensure_future(signals.stop.wait())
    done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if stopper in done:
        await mesh.drain(announce_s, grace_s, signals.hurry)
    waiter.cancel()
    stopper.cancel()
