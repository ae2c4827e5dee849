"""Which telemetry handle is active in this process, and what the mesh code asks of it.

Nothing here imports OpenTelemetry: with telemetry off (the default) the functions below
return an empty interceptor list and the no-op recorder, so servers and channels are
built exactly as they would be without this package.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from nethical_grpc.telemetry.recorder import NOOP, Recorder

if TYPE_CHECKING:
    import grpc


MetadataPairs = Sequence[tuple[str, str | bytes]]


class CallScope:
    """One outgoing call traced without interceptors; this base class does nothing.

    Use as ``with traced_call(method, ...) as call:`` around the call and pass
    ``metadata=call.metadata``. Here ``metadata`` is the caller's own, unchanged.
    """

    __slots__ = ("metadata",)

    def __init__(self, metadata: MetadataPairs | None = None) -> None:
        self.metadata: MetadataPairs | None = metadata

    def __enter__(self) -> CallScope:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


_NO_CALL = CallScope()


class ActiveTelemetry(Protocol):
    """What the process-wide functions need from a configured telemetry handle."""

    @property
    def recorder(self) -> Recorder: ...

    @property
    def tracing(self) -> bool:
        """Whether spans are exported."""
        ...

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor[Any, Any]]: ...

    def client_interceptors(
        self, target: str | None = None, region: str | None = None
    ) -> list[grpc.aio.ClientInterceptor]: ...

    def traced_call(
        self,
        method: str,
        target: str | None = None,
        region: str | None = None,
        metadata: MetadataPairs | None = None,
    ) -> CallScope: ...


_active: ActiveTelemetry | None = None


def activate(telemetry: ActiveTelemetry) -> None:
    """Make ``telemetry`` the process's active handle.

    Raises ``RuntimeError`` when another handle is active (shut it down first).
    """
    global _active
    if _active is not None and _active is not telemetry:
        raise RuntimeError("telemetry is already configured in this process; shut it down first")
    _active = telemetry


def deactivate(telemetry: ActiveTelemetry) -> None:
    """Forget ``telemetry`` if it is the active handle (otherwise do nothing)."""
    global _active
    if _active is telemetry:
        _active = None


def active_telemetry() -> ActiveTelemetry | None:
    """The active handle, or ``None`` while telemetry is off."""
    return _active


def get_recorder() -> Recorder:
    """The active handle's recorder, or :data:`NOOP` while telemetry is off."""
    active = _active
    return NOOP if active is None else active.recorder


def server_interceptors() -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    """Interceptors for ``grpc.aio.server(interceptors=...)``; ``[]`` while telemetry is off."""
    active = _active
    return [] if active is None else active.server_interceptors()


def client_interceptors(
    target: str | None = None, region: str | None = None
) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for ``grpc.aio.insecure_channel(..., interceptors=...)``.

    ``[]`` while telemetry is off. ``target`` (``host:port``) becomes the client spans'
    ``server.address``/``server.port``; ``region`` labels the client RPC metrics with
    ``nethical.peer.region`` (bounded: one value per configured region).
    """
    active = _active
    return [] if active is None else active.client_interceptors(target, region)


def traced_call(
    method: str,
    target: str | None = None,
    region: str | None = None,
    metadata: MetadataPairs | None = None,
) -> CallScope:
    """Trace one outgoing call on a channel without client interceptors.

    ``method`` is the full name (``/package.Service/Method``); ``target`` and ``region``
    label it as for :func:`client_interceptors`. On entering, the returned scope opens a
    CLIENT span and sets ``metadata`` to the caller's ``metadata`` plus the trace
    headers; on leaving, it records the outcome: OK, or the code of the exception that
    escaped (``AioRpcError``; CANCELLED for a cancellation; UNKNOWN otherwise). For a
    streaming call, keep the ``with`` around the whole stream.

    While telemetry is off this returns a shared do-nothing scope (the caller's
    ``metadata`` is passed through), so the call costs one function call.

    Cheaper than the interceptors: grpc.aio routes every call on a channel that has
    client interceptors through its interception machinery (an extra task per call).
    """
    active = _active
    if active is None:
        return _NO_CALL if metadata is None else CallScope(metadata)
    return active.traced_call(method, target, region, metadata)
