"""Trace context over gRPC metadata, through OpenTelemetry's global text-map propagator.

The propagator is whatever ``opentelemetry.propagate`` is configured with (W3C
``traceparent``/``tracestate`` and ``baggage`` unless ``OTEL_PROPAGATORS`` says
otherwise). gRPC metadata keys are lowercase ASCII, which those headers already are;
binary (``-bin``) entries are never read or written here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter

MetadataPairs = Sequence[tuple[str, str | bytes]]


class _MetadataGetter(Getter[MetadataPairs]):
    def get(self, carrier: MetadataPairs, key: str) -> list[str] | None:
        found = [value for k, value in carrier if k == key and isinstance(value, str)]
        return found or None

    def keys(self, carrier: MetadataPairs) -> list[str]:
        return [k for k, _ in carrier]


class _MetadataSetter(Setter[list[tuple[str, str | bytes]]]):
    def set(self, carrier: list[tuple[str, str | bytes]], key: str, value: str) -> None:
        carrier.append((key, value))


_GETTER = _MetadataGetter()
_SETTER = _MetadataSetter()

# the header names the global propagator owns, computed once per propagator object
_owned: tuple[object, frozenset[str]] = (None, frozenset())


def _owned_fields() -> frozenset[str]:
    global _owned
    textmap = propagate.get_global_textmap()
    if _owned[0] is not textmap:
        _owned = (textmap, frozenset(textmap.fields))
    return _owned[1]


def extract_context(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The context (remote parent span, baggage) carried by incoming ``metadata``.

    Metadata without (or with malformed) trace headers gives a context with no parent,
    so the server span starts a new trace.
    """
    pairs: MetadataPairs = () if metadata is None else tuple(metadata)
    return propagate.extract(pairs, getter=_GETTER)


def inject_metadata(
    metadata: Iterable[tuple[str, str | bytes]] | None = None, context: Context | None = None
) -> list[tuple[str, str | bytes]]:
    """``metadata`` plus the trace headers for ``context`` (default: the current one).

    Returns a new list; entries the propagator owns (``traceparent`` and the like) that
    were already present are replaced, everything else is kept in order. With no
    recording or remote span in ``context`` nothing is added.
    """
    owned = _owned_fields()
    out: list[tuple[str, str | bytes]] = [(k, v) for k, v in (metadata or ()) if k not in owned]
    propagate.inject(out, context=context, setter=_SETTER)
    return out
