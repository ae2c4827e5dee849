"""Protobuf wire encoding of packed varint columns, straight from NumPy.

Building ``repeated uint64`` fields through the protobuf API converts every element
(~50 ns each); histogram buckets are hundreds to thousands of counts per summary. These
helpers write the packed field's bytes in one pass, and the message parses them with
``MergeFromString`` (C speed). Both paths give identical messages; a test checks it.

:func:`top_level_fields` reads the other way, for a small envelope whose inner message
should stay encoded (the coordinator's summary stream).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from nethical_grpc.jit import is_jit_available, maybe_njit

U64 = npt.NDArray[np.uint64]


@maybe_njit()
def _varints_numba(values: U64) -> npt.NDArray[np.uint8]:  # pragma: no cover (compiled)
    out = np.empty(values.size * 10, dtype=np.uint8)
    pos = 0
    for i in range(values.size):
        v = values[i]
        while v >= 0x80:
            out[pos] = (v & 0x7F) | 0x80
            v >>= 7
            pos += 1
        out[pos] = v
        pos += 1
    return out[:pos]


def _varints_numpy(values: U64) -> npt.NDArray[np.uint8]:
    v = values.astype(np.uint64, copy=False)
    nbytes = np.ones(v.size, dtype=np.int64)
    for k in range(1, 10):
        more = v >= np.uint64(1 << (7 * k))
        if not more.any():
            break
        nbytes += more
    ends = np.cumsum(nbytes)
    starts = ends - nbytes
    out = np.empty(int(ends[-1]) if v.size else 0, dtype=np.uint8)
    for j in range(int(nbytes.max()) if v.size else 0):
        has = nbytes > j
        cont = (nbytes > j + 1).astype(np.uint8) << np.uint8(7)
        byte = ((v >> np.uint64(7 * j)) & np.uint64(0x7F)).astype(np.uint8) | cont
        out[starts[has] + j] = byte[has]
    return out


encode_varints = _varints_numba if is_jit_available() else _varints_numpy


#: The one-byte varints (tags, lengths and small values: most of those a message holds).
_ONE_BYTE: Final = tuple(bytes((n,)) for n in range(0x80))


def varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _ONE_BYTE[n]
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def packed_field(field_number: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return packed_field_tagged(varint((field_number << 3) | 2), payload)


def packed_field_tagged(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field whose tag is encoded already: tag, length, payload."""
    return tag + varint(len(payload)) + payload


def varint_field(field_number: int, value: int) -> bytes:
    """A varint field (``uint64``, ``int64`` >= 0, ``bool``, enum): tag, value; nothing for 0,
    which proto3 leaves out."""
    return varint(field_number << 3) + varint(value) if value else b""


def packed_uint64(field_number: int, values: U64) -> bytes:
    if values.size == 0:
        return b""
    return packed_field(
        field_number, encode_varints(np.ascontiguousarray(values, np.uint64)).tobytes()
    )


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def top_level_fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """The top-level fields of an encoded message, in order: ``(number, value)`` with
    varints as ``int`` and length-delimited values as ``bytes``. Fixed-width fields
    (fixed32/fixed64, float/double) are skipped, as protobuf skips a field it does not
    know: an envelope's readers know none, and a newer writer may add one. ``ValueError``
    for groups and bytes that do not parse (field number 0, a field cut short)."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
            if pos > len(data):
                raise ValueError("truncated fixed-width field")
        elif wire_type == 0:
            value, pos = _read_varint(data, pos)
            out.append((number, value))
        elif wire_type == 2:
            n, pos = _read_varint(data, pos)
            if n > len(data) - pos:
                raise ValueError("truncated length-delimited field")
            out.append((number, data[pos : pos + n]))
            pos += n
        else:
            raise ValueError(f"wire type {wire_type} at the top level")
    return out
