"""The active :class:`~nethical_grpc.telemetry.state.CallScope`: a CLIENT span and a
latency sample for one call made without interceptors."""

from __future__ import annotations

from types import TracebackType

import grpc
from opentelemetry import trace

from nethical_grpc.telemetry.client_interceptor import ClientTelemetry, OpenCall
from nethical_grpc.telemetry.propagation import inject_metadata
from nethical_grpc.telemetry.rpc_attributes import code_of
from nethical_grpc.telemetry.state import CallScope, MetadataPairs


class TracedCall(CallScope):
    """Opens the span on ``__enter__`` (and fills ``metadata``), ends it on ``__exit__``."""

    __slots__ = ("_call", "_client", "_method")

    def __init__(
        self, client: ClientTelemetry, method: str, metadata: MetadataPairs | None
    ) -> None:
        super().__init__(metadata)
        self._client = client
        self._method = method
        self._call: OpenCall | None = None

    def __enter__(self) -> TracedCall:
        if self._call is not None:
            raise RuntimeError("a TracedCall covers one call; make a new one per call")
        self._call = self._client.start(self._method)
        if self._call is not None:
            self.metadata = inject_metadata(
                self.metadata, trace.set_span_in_context(self._call.span)
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._call is None:
            return
        code = grpc.StatusCode.OK if exc is None else code_of(exc)
        self._client.finish(self._call, code, exc)
