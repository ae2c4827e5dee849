"""The answer to an EvaluateStream batch message, written as protobuf bytes from columns.

A batch answer (``EvaluateStreamResponse.results``) holds one ``ActionResult`` per action,
each an ``ActionEvaluation`` of ten fields.  Built through the protobuf API, a field at a
time, it cost about 6 µs a result on a slow two-core machine, on the event loop; written
by the compiled kernel here from the batch's columns, most of it is the Python that
gathers the columns (:func:`nethical_grpc.convert.stream_results_encoded`).

The bytes are exactly those of ``SerializeToString`` of the same message (tests compare
them): fields in field-number order; a string left out when empty; a double left out
only when all its bits are zero (``-0.0`` is written, as protobuf writes it); the
latency always written, its zero fields left out.

Field numbers (``protos/nethical_grpc/v1/governance.proto``): ``ActionEvaluation`` 1
``request_id``, 2 ``decision``, 3 ``risk_score``, 4 ``confidence``, 5 ``violations``, 6
``rule_risk``, 7 ``model_probability``, 8 ``latency``, 9 ``region_id``, 10
``instance_id``; ``ActionResult`` 1 ``evaluation``; ``EvaluateStreamResponse`` 3
``results``; ``Duration`` 1 ``seconds``, 2 ``nanos``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from nethical_grpc.jit import maybe_njit

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]


@maybe_njit()
def _varint_size(v: int) -> int:  # pragma: no cover (compiled)
    n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


@maybe_njit()
def _put_varint(out: U8, pos: int, v: int) -> int:  # pragma: no cover (compiled)
    while v >= 0x80:
        out[pos] = (v & 0x7F) | 0x80
        v >>= 7
        pos += 1
    out[pos] = v
    return pos + 1


@maybe_njit()
def _put_double(out: U8, pos: int, tag: int, bits: int) -> int:  # pragma: no cover
    out[pos] = tag
    for k in range(8):
        out[pos + 1 + k] = (bits >> (8 * k)) & 0xFF
    return pos + 9


@maybe_njit()
def _duration_size(ns: int) -> int:  # pragma: no cover (compiled)
    seconds = ns // 1_000_000_000
    nanos = ns - seconds * 1_000_000_000
    size = 0
    if seconds:
        size += 1 + _varint_size(seconds)
    if nanos:
        size += 1 + _varint_size(nanos)
    return size


@maybe_njit()
def _evaluation_size(
    i: int,
    request_ids: I64,
    decisions: I64,
    bits: npt.NDArray[np.uint64],
    found: I64,
    latency_ns: I64,
    tail: int,
) -> int:  # pragma: no cover (compiled)
    size = 1 + _varint_size(decisions[i]) + tail
    n_id = request_ids[i + 1] - request_ids[i]
    if n_id:
        size += 1 + _varint_size(n_id) + n_id
    for k in range(4):
        if bits[i, k] != 0:
            size += 9
    size += found[i + 1] - found[i]
    d = _duration_size(latency_ns[i])
    return int(size + 1 + _varint_size(d) + d)


@maybe_njit()
def write_results(
    id_bytes: U8,
    request_ids: I64,
    decisions: I64,
    doubles: npt.NDArray[np.float64],
    found_bytes: U8,
    found: I64,
    latency_ns: I64,
    tail: U8,
) -> U8:  # pragma: no cover (compiled)
    """The ``results`` entries of an EvaluateStreamResponse, one per row: request id
    ``i`` is ``id_bytes[request_ids[i]:request_ids[i + 1]]`` (UTF-8), its decision's enum
    number ``decisions[i]`` (not 0), its doubles ``doubles[i]`` (risk score, confidence,
    rule risk, model probability), its violations' fields (tags and lengths included)
    ``found_bytes[found[i]:found[i + 1]]``, its latency ``latency_ns[i]`` (not negative),
    and ``tail`` the region and instance id fields, the same in every row."""
    n = decisions.shape[0]
    bits = doubles.view(np.uint64)
    sizes = np.empty(n, np.int64)
    total = 0
    for i in range(n):
        e = _evaluation_size(i, request_ids, decisions, bits, found, latency_ns, tail.shape[0])
        r = 1 + _varint_size(e) + e
        sizes[i] = e
        total += 1 + _varint_size(r) + r
    out = np.empty(total, np.uint8)
    pos = 0
    for i in range(n):
        e = sizes[i]
        out[pos] = 0x1A
        pos = _put_varint(out, pos + 1, 1 + _varint_size(e) + e)
        out[pos] = 0x0A
        pos = _put_varint(out, pos + 1, e)
        start, end = request_ids[i], request_ids[i + 1]
        if end > start:
            out[pos] = 0x0A
            pos = _put_varint(out, pos + 1, end - start)
            out[pos : pos + end - start] = id_bytes[start:end]
            pos += end - start
        out[pos] = 0x10
        pos = _put_varint(out, pos + 1, decisions[i])
        for k in range(2):
            if bits[i, k] != 0:
                pos = _put_double(out, pos, 0x19 + 8 * k, bits[i, k])
        start, end = found[i], found[i + 1]
        out[pos : pos + end - start] = found_bytes[start:end]
        pos += end - start
        for k in range(2, 4):
            if bits[i, k] != 0:
                pos = _put_double(out, pos, 0x31 + 8 * (k - 2), bits[i, k])
        ns = latency_ns[i]
        seconds = ns // 1_000_000_000
        nanos = ns - seconds * 1_000_000_000
        out[pos] = 0x42
        pos = _put_varint(out, pos + 1, _duration_size(ns))
        if seconds:
            out[pos] = 0x08
            pos = _put_varint(out, pos + 1, seconds)
        if nanos:
            out[pos] = 0x10
            pos = _put_varint(out, pos + 1, nanos)
        out[pos : pos + tail.shape[0]] = tail
        pos += tail.shape[0]
    if pos != total:  # the sizes and the writes disagree: a bug here, never bad bytes out
        raise AssertionError("write_results: sizes and writes disagree")
    return out


def warm_up() -> None:
    """Compile :func:`write_results` (or load it from Numba's cache) before a node serves,
    not inside its first stream's answer."""
    no_bytes = np.zeros(0, np.uint8)
    write_results(
        no_bytes,
        np.zeros(2, np.int64),
        np.ones(1, np.int64),
        np.full((1, 4), 0.5),
        no_bytes,
        np.zeros(2, np.int64),
        np.ones(1, np.int64),
        no_bytes,
    )
