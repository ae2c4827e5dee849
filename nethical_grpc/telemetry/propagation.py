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

# the header names of each propagator in the global one (W3C trace context: traceparent
# and tracestate; baggage), computed once per propagator object
_groups: tuple[object, tuple[frozenset[str], ...]] = (None, ())


def _field_groups() -> tuple[frozenset[str], ...]:
    global _groups
    textmap = propagate.get_global_textmap()
    if _groups[0] is not textmap:
        parts = getattr(textmap, "_propagators", None) or (textmap,)
        _groups = (textmap, tuple(frozenset(p.fields) for p in parts))
    return _groups[1]


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

    Returns a new list: the caller's entries in order, then the headers injected. Headers
    a propagator writes replace the caller's entries of that propagator (a new
    ``traceparent`` drops a ``tracestate`` that went with the old one); headers nothing
    writes are kept (a caller's own ``baggage`` with no baggage in ``context``). With no
    recording or remote span and no baggage in ``context`` nothing is added or dropped.
    """
    added: list[tuple[str, str | bytes]] = []
    propagate.inject(added, context=context, setter=_SETTER)
    pairs = list(metadata or ())
    if not added:
        return pairs
    written = {k for k, _ in added}
    replaced = written.union(*(g for g in _field_groups() if not g.isdisjoint(written)))
    out = [(k, v) for k, v in pairs if k not in replaced]
    out.extend(added)
    return out
