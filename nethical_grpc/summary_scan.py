"""A node's summaries read straight from the bytes of a ``GetSummariesResponse``.

The coordinator turns every region's answer into domain summaries on each global query.
Through the protobuf API that costs a message tree per answer, a wrapper object per
sub-message touched and a NumPy copy of every bucket array, and it dominates the
coordinator's CPU on a fan-out (measured: ~25 µs per summary of ~1,100 buckets, about
a third of a 10-region query). :func:`scan` walks the encoded answer once in a compiled
kernel and returns it as columns: one row of numbers per series, the label pairs, and
every bucket count in one array.

The scan reads the canonical encoding that protobuf writers produce: each field of a
message at most once (a repeated field's elements aside), packed bucket counts, no
groups, no ``gaps`` (an answer that names some is rare, and protobuf reads it). Unknown
fields are skipped, as protobuf does. For anything else it answers
``None`` and the caller parses the message with protobuf instead, so the two paths
accept the same messages and give the same summaries (a property test holds them
equal). Without Numba there is no scan: ``None`` again.

The scan checks the encoding only, all of what protobuf checks: keys and length
prefixes of at most five bytes, strings in UTF-8, and the privacy field (parsed by
protobuf here). An answer protobuf would refuse is refused whatever its series hold,
as protobuf refuses it before any series is looked at.

:func:`values_valid` then tells, in one compiled pass over the columns, whether every
value passes the checks that :mod:`nethical_grpc.convert` applies to a parsed message
(the same conditions, by the same float arithmetic; a count of 2**53 or more, or a
histogram part over 2**62, is left to them): when it does, those per-series checks are
skipped; when not, they run and name what they refuse. A property test holds the two to
the same verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from nethical_grpc.jit import bits_float, is_jit_available, maybe_njit
from nethical_grpc.summary.exponential_histogram import (
    MAX_SCALE,
    MIN_MAX_BUCKETS,
    MIN_SCALE,
    index_limits,
)
from nethical_grpc.summary.moments import consistency_conditions
from nethical_grpc.v1 import summary_pb2
from nethical_grpc.validation import MAX_ABS_VALUE

__all__ = ["ScannedSummaries", "scan", "values_valid", "warmup"]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]
Buf = npt.NDArray[np.uint8]

# -- the columns of a series row (int64) ---------------------------------------------
METRIC_START: Final = 0
METRIC_END: Final = 1
LABELS_FIRST: Final = 2  # index of the series' first label pair
LABELS_COUNT: Final = 3
SCALE: Final = 4
MAX_BUCKETS: Final = 5
POS_OFFSET: Final = 6
POS_FIRST: Final = 7  # index of the side's first count in ``counts``
POS_LEN: Final = 8
NEG_OFFSET: Final = 9
NEG_FIRST: Final = 10
NEG_LEN: Final = 11
START_S: Final = 12
START_NS: Final = 13
END_S: Final = 14
END_NS: Final = 15
POS_LEAD: Final = 16  # position of the side's first non-zero count; -1 when none is
POS_TRAIL: Final = 17  # and of its last
NEG_LEAD: Final = 18
NEG_TRAIL: Final = 19
_INT_COLUMNS: Final = 20
# (uint64)
COUNT: Final = 0
ZERO_COUNT: Final = 1
POS_TOTAL: Final = 2  # the side's total count, or any value > 2**63 - 1 when it is larger
NEG_TOTAL: Final = 3
_UINT_COLUMNS: Final = 4
_COUNT_LIMIT: Final = 2**63 - 1
# (float64)
SUM: Final = 0
MIN: Final = 1
MAX: Final = 2
MEAN: Final = 3
M2: Final = 4
ZERO_THRESHOLD: Final = 5
MEAN_ERROR: Final = 6
SUM_COMPENSATION: Final = 7
_FLOAT_COLUMNS: Final = 8
# -- the answer's own fields (int64) ------------------------------------------------
REGION_START: Final = 0
REGION_END: Final = 1
INSTANCE_START: Final = 2
INSTANCE_END: Final = 3
SCOPE: Final = 4
AS_OF_SET: Final = 5
AS_OF_S: Final = 6
AS_OF_NS: Final = 7
PRIVACY_START: Final = 8  # -1: no privacy field
PRIVACY_END: Final = 9
_HEAD_COLUMNS: Final = 10

# -- scan outcomes --------------------------------------------------------------------
_OK: Final = 0
_UNSUPPORTED: Final = 1  # a valid encoding this scan leaves to protobuf
_MALFORMED: Final = 2

_VARINT: Final = 0
_I64: Final = 1
_LEN: Final = 2
_I32: Final = 5


@dataclass(frozen=True, slots=True)
class ScannedSummaries:
    """One answer as columns; byte offsets index the scanned buffer."""

    head: I64  # (_HEAD_COLUMNS,)
    ints: I64  # (series, _INT_COLUMNS)
    uints: U64  # (series, _UINT_COLUMNS)
    floats: F64  # (series, _FLOAT_COLUMNS)
    labels: I64  # (pairs, 4): key start, key end, value start, value end
    counts: U64  # every series' positive then negative bucket counts


@maybe_njit(cache=True)
def _varint(buf: Buf, pos: int, end: int) -> tuple[int, int]:  # pragma: no cover
    """(value as uint64 bits in an int64, position after it); position -1 if malformed."""
    result = np.uint64(0)
    shift = 0
    while pos < end:
        b = buf[pos]
        pos += 1
        if shift == 63 and b > 1:
            return 0, -1  # more than 64 bits
        result |= np.uint64(b & 0x7F) << np.uint64(shift)
        if b < 0x80:
            return np.int64(result), pos  # type: ignore[return-value]  # int64 under Numba
        shift += 7
        if shift > 63:
            return 0, -1
    return 0, -1


#: The most bytes protobuf reads in a field's key or a length prefix (a 32-bit varint):
#: it refuses a longer one, however small its value.
_SHORT_VARINT: Final = 5


@maybe_njit(cache=True)
def _key(buf: Buf, pos: int, end: int) -> tuple[int, int, int]:  # pragma: no cover
    """A field's (number, wire type, position after its key); position -1 if malformed
    (protobuf also refuses field number 0, keys beyond 32 bits and keys written in more
    than five bytes)."""
    if pos < end and 8 <= buf[pos] < 0x80:  # most keys: one byte, field number > 0
        b = np.int64(buf[pos])
        return b >> 3, b & 7, pos + 1  # type: ignore[return-value]  # int64 under Numba
    start = pos
    key, pos = _varint(buf, pos, end)
    if pos >= 0 and (key >> 3 == 0 or key > 0xFFFFFFFF or key < 0 or pos - start > _SHORT_VARINT):
        return 0, 0, -1
    return key >> 3, key & 7, pos


@maybe_njit(cache=True)
def _utf8(buf: Buf, pos: int, end: int) -> bool:  # pragma: no cover
    """Whether ``buf[pos:end]`` is well-formed UTF-8, as protobuf requires of a string
    field (no overlong forms, no surrogates, nothing past U+10FFFF)."""
    while pos < end:  # names are ASCII, as a rule: the rest out of line
        if buf[pos] >= 0x80:
            return _utf8_from(buf, pos, end)
        pos += 1
    return True


@maybe_njit(cache=True)
def _utf8_from(buf: Buf, pos: int, end: int) -> bool:  # pragma: no cover
    """:func:`_utf8` from ``pos`` on."""
    while pos < end:
        b = buf[pos]
        if b < 0x80:
            pos += 1
            continue
        lo = 0x80  # the range of the second byte; later ones are 0x80..0xBF
        hi = 0xBF
        if 0xC2 <= b <= 0xDF:
            n = 1
        elif 0xE0 <= b <= 0xEF:
            n = 2
            if b == 0xE0:
                lo = 0xA0
            elif b == 0xED:
                hi = 0x9F
        elif 0xF0 <= b <= 0xF4:
            n = 3
            if b == 0xF0:
                lo = 0x90
            elif b == 0xF4:
                hi = 0x8F
        else:
            return False
        if pos + n >= end:  # the sequence runs past the string
            return False
        c = buf[pos + 1]
        if c < lo or c > hi:
            return False
        for k in range(2, n + 1):
            c = buf[pos + k]
            if c < 0x80 or c > 0xBF:
                return False
        pos += n + 1
    return True


@maybe_njit(cache=True)
def _fixed64(buf: Buf, pos: int) -> float:  # pragma: no cover
    bits = np.uint64(0)
    for k in range(8):
        bits |= np.uint64(buf[pos + k]) << np.uint64(8 * k)
    return bits_float(np.int64(bits))  # type: ignore[arg-type]  # int64 under Numba


@maybe_njit(cache=True)
def _skip(buf: Buf, pos: int, end: int, wire: int) -> int:  # pragma: no cover
    """Position after an unknown field's value; -1 malformed, -2 unsupported (groups)."""
    if wire == _VARINT:
        _, pos = _varint(buf, pos, end)
        return pos
    if wire == _I64:
        return pos + 8 if pos + 8 <= end else -1
    if wire == _I32:
        return pos + 4 if pos + 4 <= end else -1
    if wire == _LEN:
        start, stop = _len_field(buf, pos, end)
        return stop if start >= 0 else -1
    return -2


@maybe_njit(cache=True)
def _zigzag32(v: int) -> int:  # pragma: no cover
    u = v & 0xFFFFFFFF
    return (u >> 1) ^ -(u & 1)


@maybe_njit(cache=True)
def _int32(v: int) -> int:  # pragma: no cover
    u = v & 0xFFFFFFFF
    return u - (1 << 32) if u >= (1 << 31) else u


@maybe_njit(cache=True)
def _timestamp(buf: Buf, pos: int, end: int) -> tuple[int, int, int]:  # pragma: no cover
    """(status, seconds, nanos) of an encoded google.protobuf.Timestamp."""
    seconds = 0
    nanos = 0
    seen = 0
    while pos < end:
        field, wire, pos = _key(buf, pos, end)
        if pos < 0:
            return _MALFORMED, 0, 0
        if field == 1 or field == 2:
            if wire != _VARINT or seen & (1 << field):
                return _UNSUPPORTED, 0, 0
            seen |= 1 << field
            v, pos = _varint(buf, pos, end)
            if pos < 0:
                return _MALFORMED, 0, 0
            if field == 1:
                seconds = v
            else:
                nanos = _int32(v)
        else:
            pos = _skip(buf, pos, end, wire)
            if pos < 0:
                return _MALFORMED if pos == -1 else _UNSUPPORTED, 0, 0
    return _OK, seconds, nanos


@maybe_njit(cache=True)
def _buckets(
    buf: Buf, pos: int, end: int, counts: U64, n_counts: int, row: I64, base: int, ends: int
) -> tuple[int, int, np.uint64]:  # pragma: no cover
    """(status, counts used after it, total) of one Buckets message. The series ``row``
    gets its offset, first count's index and count of counts from column ``base`` on,
    and its first and last non-zero position from column ``ends`` on."""
    offset = 0
    first = n_counts
    lead = -1
    trail = -1
    total = np.uint64(0)
    limit = np.uint64(_COUNT_LIMIT)
    seen = 0
    while pos < end:
        field, wire, pos = _key(buf, pos, end)
        if pos < 0:
            return _MALFORMED, n_counts, total
        if field == 1:
            if wire != _VARINT or seen & 2:
                return _UNSUPPORTED, n_counts, total
            seen |= 2
            v, pos = _varint(buf, pos, end)
            if pos < 0:
                return _MALFORMED, n_counts, total
            offset = _zigzag32(v)
        elif field == 2:
            if wire != _LEN or seen & 4:  # unpacked or split counts: left to protobuf
                return _UNSUPPORTED, n_counts, total
            seen |= 4
            pos, stop = _len_field(buf, pos, end)
            if pos < 0:
                return _MALFORMED, n_counts, total
            while pos < stop:  # decode first: a loop with nothing else in it
                b = buf[pos]
                if b < 0x80:  # most counts fit in one byte
                    counts[n_counts] = np.uint64(b)
                    pos += 1
                else:
                    v, pos = _varint(buf, pos, stop)
                    if pos < 0:
                        return _MALFORMED, n_counts, total
                    counts[n_counts] = np.uint64(v)
                n_counts += 1
            # then the first and last non-zero count and the total, in passes that
            # vectorise (the total's plain sum cannot wrap while every count and their
            # number stay below 2**31; otherwise it saturates just past the limit: only
            # "too large" matters then)
            j = first  # (the side's counts, one packed field: protobuf's if split)
            while j < n_counts and counts[j] == 0:
                j += 1
            if j < n_counts:
                lead = j - first
                j = n_counts - 1
                while counts[j] == 0:
                    j -= 1
                trail = j - first
                top = np.uint64(0)
                plain = np.uint64(0)
                for j in range(first, n_counts):
                    top = max(top, counts[j])
                    plain += counts[j]
                if top < np.uint64(2**31) and n_counts - first < 2**31:
                    total = plain
                else:
                    for j in range(first, n_counts):
                        value = counts[j]
                        total = limit + np.uint64(1) if value > limit - total else total + value
        else:
            pos = _skip(buf, pos, end, wire)
            if pos < 0:
                return (_MALFORMED if pos == -1 else _UNSUPPORTED), n_counts, total
    row[base] = offset
    row[base + 1] = first
    row[base + 2] = n_counts - first
    row[ends] = lead
    row[ends + 1] = trail
    return _OK, n_counts, total


@maybe_njit(cache=True)
def _len_field(buf: Buf, pos: int, end: int) -> tuple[int, int]:  # pragma: no cover
    """(start, end) of a length-delimited value; start -1 if malformed: past ``end``,
    or its length written in more than five bytes (which protobuf refuses)."""
    start = pos
    n, pos = _varint(buf, pos, end)
    if pos < 0 or n < 0 or n > end - pos or pos - start > _SHORT_VARINT:
        return -1, -1
    return pos, pos + n


@maybe_njit(cache=True)
def _series(
    buf: Buf,
    pos: int,
    end: int,
    ints: I64,
    uints: U64,
    floats: F64,
    labels: I64,
    n_labels: int,
    counts: U64,
    n_counts: int,
) -> tuple[int, int, int]:  # pragma: no cover
    """Fill one series row; (status, label pairs used, counts used) after it."""
    ints[LABELS_FIRST] = n_labels
    ints[POS_FIRST] = n_counts
    ints[NEG_FIRST] = n_counts
    ints[POS_LEAD] = -1
    ints[POS_TRAIL] = -1
    ints[NEG_LEAD] = -1
    ints[NEG_TRAIL] = -1
    seen = 0
    while pos < end:
        field, wire, pos = _key(buf, pos, end)
        if pos < 0:
            return _MALFORMED, n_labels, n_counts
        if field == 2:  # a label pair (map entry); repeated
            if wire != _LEN:
                return _UNSUPPORTED, n_labels, n_counts
            start, stop = _len_field(buf, pos, end)
            if start < 0:
                return _MALFORMED, n_labels, n_counts
            if n_labels == labels.shape[0]:
                return _UNSUPPORTED, n_labels, n_counts  # more pairs than room: protobuf
            labels[n_labels, 0] = 0
            labels[n_labels, 1] = 0
            labels[n_labels, 2] = 0
            labels[n_labels, 3] = 0
            entry_seen = 0
            p = start
            while p < stop:
                f2, w2, p = _key(buf, p, stop)
                if p < 0:
                    return _MALFORMED, n_labels, n_counts
                if f2 == 1 or f2 == 2:
                    if w2 != _LEN or entry_seen & (1 << f2):
                        return _UNSUPPORTED, n_labels, n_counts
                    entry_seen |= 1 << f2
                    s2, e2 = _len_field(buf, p, stop)
                    if s2 < 0 or not _utf8(buf, s2, e2):
                        return _MALFORMED, n_labels, n_counts
                    labels[n_labels, 2 * (f2 - 1)] = s2
                    labels[n_labels, 2 * (f2 - 1) + 1] = e2
                    p = e2
                else:
                    p = _skip(buf, p, stop, w2)
                    if p < 0:
                        return (_MALFORMED if p == -1 else _UNSUPPORTED), n_labels, n_counts
            n_labels += 1
            pos = stop
            continue
        if field < 1 or field > 6:
            pos = _skip(buf, pos, end, wire)
            if pos < 0:
                return (_MALFORMED if pos == -1 else _UNSUPPORTED), n_labels, n_counts
            continue
        if seen & (1 << field):
            return _UNSUPPORTED, n_labels, n_counts  # a singular field twice: protobuf merges
        seen |= 1 << field
        if field == 6:
            if wire != _I64 or pos + 8 > end:
                return _UNSUPPORTED if wire != _I64 else _MALFORMED, n_labels, n_counts
            floats[MEAN_ERROR] = _fixed64(buf, pos)
            pos += 8
            continue
        if wire != _LEN:
            return _UNSUPPORTED, n_labels, n_counts
        start, stop = _len_field(buf, pos, end)
        if start < 0:
            return _MALFORMED, n_labels, n_counts
        pos = stop
        if field == 1:
            if not _utf8(buf, start, stop):
                return _MALFORMED, n_labels, n_counts
            ints[METRIC_START] = start
            ints[METRIC_END] = stop
        elif field == 4 or field == 5:
            status, seconds, nanos = _timestamp(buf, start, stop)
            if status != _OK:
                return status, n_labels, n_counts
            ints[START_S if field == 4 else END_S] = seconds
            ints[START_NS if field == 4 else END_NS] = nanos
        else:  # field 3: Summary {1 moments, 2 histogram}
            summary_seen = 0
            p = start
            while p < stop:
                f2, w2, p = _key(buf, p, stop)
                if p < 0:
                    return _MALFORMED, n_labels, n_counts
                if f2 != 1 and f2 != 2:
                    p = _skip(buf, p, stop, w2)
                    if p < 0:
                        return (_MALFORMED if p == -1 else _UNSUPPORTED), n_labels, n_counts
                    continue
                if w2 != _LEN or summary_seen & (1 << f2):
                    return _UNSUPPORTED, n_labels, n_counts
                summary_seen |= 1 << f2
                s2, e2 = _len_field(buf, p, stop)
                if s2 < 0:
                    return _MALFORMED, n_labels, n_counts
                p = e2
                inner_seen = 0
                q = s2
                while q < e2:
                    f3, w3, q = _key(buf, q, e2)
                    if q < 0:
                        return _MALFORMED, n_labels, n_counts
                    if f3 < 1 or f3 > (7 if f2 == 1 else 6):
                        q = _skip(buf, q, e2, w3)
                        if q < 0:
                            return (_MALFORMED if q == -1 else _UNSUPPORTED), n_labels, n_counts
                        continue
                    if inner_seen & (1 << f3):
                        return _UNSUPPORTED, n_labels, n_counts
                    inner_seen |= 1 << f3
                    if f2 == 1:  # Moments: 1 count, 2..7 doubles
                        if f3 == 1:
                            if w3 != _VARINT:
                                return _UNSUPPORTED, n_labels, n_counts
                            v, q = _varint(buf, q, e2)
                            if q < 0:
                                return _MALFORMED, n_labels, n_counts
                            uints[COUNT] = np.uint64(v)
                        else:
                            if w3 != _I64:
                                return _UNSUPPORTED, n_labels, n_counts
                            if q + 8 > e2:
                                return _MALFORMED, n_labels, n_counts
                            # SUM .. M2, then SUM_COMPENSATION
                            floats[SUM_COMPENSATION if f3 == 7 else f3 - 2] = _fixed64(buf, q)
                            q += 8
                    elif f3 == 3:  # Histogram.zero_threshold
                        if w3 != _I64:
                            return _UNSUPPORTED, n_labels, n_counts
                        if q + 8 > e2:
                            return _MALFORMED, n_labels, n_counts
                        floats[ZERO_THRESHOLD] = _fixed64(buf, q)
                        q += 8
                    elif f3 == 4 or f3 == 5:  # Histogram.positive / negative
                        if w3 != _LEN:
                            return _UNSUPPORTED, n_labels, n_counts
                        s3, e3 = _len_field(buf, q, e2)
                        if s3 < 0:
                            return _MALFORMED, n_labels, n_counts
                        q = e3
                        positive = f3 == 4
                        status, n_counts, total = _buckets(
                            buf,
                            s3,
                            e3,
                            counts,
                            n_counts,
                            ints,
                            POS_OFFSET if positive else NEG_OFFSET,
                            POS_LEAD if positive else NEG_LEAD,
                        )
                        if status != _OK:
                            return status, n_labels, n_counts
                        uints[POS_TOTAL if positive else NEG_TOTAL] = total
                    else:  # 1 scale (sint32), 2 zero_count, 6 max_buckets (uint32)
                        if w3 != _VARINT:
                            return _UNSUPPORTED, n_labels, n_counts
                        v, q = _varint(buf, q, e2)
                        if q < 0:
                            return _MALFORMED, n_labels, n_counts
                        if f3 == 1:
                            ints[SCALE] = _zigzag32(v)
                        elif f3 == 2:
                            uints[ZERO_COUNT] = np.uint64(v)
                        else:
                            ints[MAX_BUCKETS] = v & 0xFFFFFFFF
    ints[LABELS_COUNT] = n_labels - ints[LABELS_FIRST]
    return _OK, n_labels, n_counts


@maybe_njit(cache=True)
def _scan(
    buf: Buf,
) -> tuple[int, int, int, int, I64, I64, U64, F64, I64, U64]:  # pragma: no cover
    """(status, series, label pairs, counts, then the arrays those fill)."""
    end = buf.shape[0]
    head = np.zeros(_HEAD_COLUMNS, np.int64)
    head[PRIVACY_START] = -1
    head[PRIVACY_END] = -1
    ints = np.zeros((16, _INT_COLUMNS), np.int64)
    uints = np.zeros((16, _UINT_COLUMNS), np.uint64)
    floats = np.zeros((16, _FLOAT_COLUMNS), np.float64)
    # a count takes >= 1 byte, so ``end`` counts are room for all; label pairs (>= 2 bytes
    # each) are few, and their rows grow before each series to what its bytes can hold
    labels = np.empty((64, 4), np.int64)  # each pair's row is written whole
    counts = np.empty(end, np.uint64)
    n_series = 0
    n_labels = 0
    n_counts = 0
    seen = 0
    pos = 0
    status = _OK
    while pos < end:
        field, wire, pos = _key(buf, pos, end)
        if pos < 0:
            status = _MALFORMED
            break
        if field == 7:  # gaps: rare, left to protobuf
            status = _UNSUPPORTED
            break
        if field < 1 or field > 7:
            pos = _skip(buf, pos, end, wire)
            if pos < 0:
                status = _MALFORMED if pos == -1 else _UNSUPPORTED
                break
            continue
        if field != 1:
            if seen & (1 << field):
                status = _UNSUPPORTED
                break
            seen |= 1 << field
        if field == 4:  # scope (enum)
            if wire != _VARINT:
                status = _UNSUPPORTED
                break
            v, pos = _varint(buf, pos, end)
            if pos < 0:
                status = _MALFORMED
                break
            head[SCOPE] = _int32(v)
            continue
        if wire != _LEN:
            status = _UNSUPPORTED
            break
        start, stop = _len_field(buf, pos, end)
        if start < 0:
            status = _MALFORMED
            break
        pos = stop
        if field == 1:
            if n_series == ints.shape[0]:
                grown = ints.shape[0] * 2
                ints2 = np.zeros((grown, _INT_COLUMNS), np.int64)
                ints2[:n_series] = ints[:n_series]
                ints = ints2
                uints2 = np.zeros((grown, _UINT_COLUMNS), np.uint64)
                uints2[:n_series] = uints[:n_series]
                uints = uints2
                floats2 = np.zeros((grown, _FLOAT_COLUMNS), np.float64)
                floats2[:n_series] = floats[:n_series]
                floats = floats2
            room = stop - start
            if n_labels + room // 2 > labels.shape[0]:
                labels2 = np.empty((max(2 * labels.shape[0], n_labels + room // 2), 4), np.int64)
                labels2[:n_labels] = labels[:n_labels]
                labels = labels2
            status, n_labels, n_counts = _series(
                buf,
                start,
                stop,
                ints[n_series],
                uints[n_series],
                floats[n_series],
                labels,
                n_labels,
                counts,
                n_counts,
            )
            if status != _OK:
                break
            n_series += 1
        elif field == 2 or field == 3:
            if not _utf8(buf, start, stop):  # refused by protobuf, whatever else is wrong
                status = _MALFORMED
                break
            head[REGION_START if field == 2 else INSTANCE_START] = start
            head[REGION_END if field == 2 else INSTANCE_END] = stop
        elif field == 5:
            status, seconds, nanos = _timestamp(buf, start, stop)
            if status != _OK:
                break
            head[AS_OF_SET] = 1
            head[AS_OF_S] = seconds
            head[AS_OF_NS] = nanos
        else:  # 6: privacy, parsed by protobuf when present
            head[PRIVACY_START] = start
            head[PRIVACY_END] = stop
    return status, n_series, n_labels, n_counts, head, ints, uints, floats, labels, counts


def scan(data: bytes) -> ScannedSummaries | None:
    """The columns of an encoded ``GetSummariesResponse``, or ``None`` when protobuf
    should parse it (an encoding the scan leaves alone, bytes that do not parse, or no
    Numba)."""
    if not is_jit_available():
        return None
    status, n_series, n_labels, n_counts, head, ints, uints, floats, labels, counts = _scan(
        np.frombuffer(data, np.uint8)
    )
    if status != _OK:
        return None
    if head[PRIVACY_START] >= 0:
        # read whole here, as protobuf reads the answer: a privacy field that does not
        # parse makes the answer one that does not parse, whatever its series hold
        try:
            summary_pb2.PrivacyInfo.FromString(data[head[PRIVACY_START] : head[PRIVACY_END]])
        except DecodeError:
            return None
    return ScannedSummaries(
        head,
        ints[:n_series],
        uints[:n_series],
        floats[:n_series],
        labels[:n_labels],
        counts[:n_counts],
    )


#: The moments' consistency conditions, compiled for :func:`_values_valid`.
_consistency = maybe_njit(cache=True)(consistency_conditions)
#: Counts below this convert to float64 exactly (as Python converts an int).
_EXACT_COUNT: Final = np.uint64(2**53)
#: Histogram parts whose sum cannot overflow uint64 (three of them stay below 2**64).
_SAFE_PART: Final = np.uint64(2**62)
_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1
#: Lowest and highest bucket index of a finite double, per scale from MIN_SCALE up, and
#: which of them are known: each is filled the first time an answer has its scale
#: (computing all of them took ~0.55 s, too long for start-up).
_INDEX_LIMITS: Final = np.zeros((MAX_SCALE - MIN_SCALE + 1, 2), np.int64)
_LIMITS_KNOWN: Final = np.zeros(MAX_SCALE - MIN_SCALE + 1, np.bool_)
#: What :func:`_values_valid` answers: every value passes, one does not, or (this plus
#: the scale's row) the limits of a scale are not known yet.
_VALID: Final = 0
_INVALID: Final = 1
_NEEDS_LIMITS: Final = 2


@maybe_njit(cache=True)
def _side_total(
    row: I64,
    offset_at: int,
    length_at: int,
    lead_at: int,
    max_buckets: int,
    lo_lim: int,
    hi_lim: int,
    total: np.uint64,
) -> tuple[bool, np.uint64]:  # pragma: no cover
    """(whether one side of a histogram passes its checks, its total count); its offset,
    length and lead are at ``offset_at``, ``length_at`` and ``lead_at`` of ``row`` (its
    trail next to its lead)."""
    offset, n = row[offset_at], row[length_at]
    lead, trail = row[lead_at], row[lead_at + 1]
    if n == 0:
        return True, np.uint64(0)
    if offset < _INT32_MIN or offset + n - 1 > _INT32_MAX:
        return False, np.uint64(0)
    if lead < 0:
        return True, np.uint64(0)
    first, last = offset + lead, offset + trail
    if last - first + 1 > max_buckets or first < lo_lim or last > hi_lim or total > _SAFE_PART:
        return False, np.uint64(0)
    return True, total


@maybe_njit(cache=True)
def _values_valid(
    ints: I64, uints: U64, floats: F64, limits: I64, known: npt.NDArray[np.bool_]
) -> int:  # pragma: no cover
    for i in range(ints.shape[0]):
        count = uints[i, COUNT]
        total, lo, hi = floats[i, SUM], floats[i, MIN], floats[i, MAX]
        mean, m2, comp = floats[i, MEAN], floats[i, M2], floats[i, SUM_COMPENSATION]
        if count == np.uint64(0):
            if total != 0.0 or lo != 0.0 or hi != 0.0 or mean != 0.0 or m2 != 0.0 or comp != 0.0:
                return _INVALID
        else:
            if count >= _EXACT_COUNT:
                return _INVALID
            if not (
                np.isfinite(total)
                and np.isfinite(lo)
                and np.isfinite(hi)
                and np.isfinite(mean)
                and np.isfinite(m2)
            ):
                return _INVALID
            if comp != 0.0 and not abs(comp) <= np.spacing(abs(total)):  # math.ulp
                return _INVALID
            mag = max(abs(lo), abs(hi))
            if mag > MAX_ABS_VALUE:
                return _INVALID
            ok, _ = _consistency(float(count), total, lo, hi, mean, m2, mag)
            if not (ok[0] and ok[1] and ok[2] and ok[3] and ok[4] and ok[5]):
                return _INVALID
        row = ints[i]
        scale, max_buckets = row[SCALE], row[MAX_BUCKETS]
        zero_threshold = floats[i, ZERO_THRESHOLD]
        if not (
            MIN_SCALE <= scale <= MAX_SCALE
            and max_buckets >= MIN_MAX_BUCKETS
            and 0.0 <= zero_threshold < np.inf
        ):
            return _INVALID
        zero = uints[i, ZERO_COUNT]
        if zero > _SAFE_PART:
            return _INVALID
        if not known[scale - MIN_SCALE]:
            return int(_NEEDS_LIMITS + scale - MIN_SCALE)
        lo_lim, hi_lim = limits[scale - MIN_SCALE, 0], limits[scale - MIN_SCALE, 1]
        pos_ok, pos = _side_total(
            row, POS_OFFSET, POS_LEN, POS_LEAD, max_buckets, lo_lim, hi_lim, uints[i, POS_TOTAL]
        )
        neg_ok, neg = _side_total(
            row, NEG_OFFSET, NEG_LEN, NEG_LEAD, max_buckets, lo_lim, hi_lim, uints[i, NEG_TOTAL]
        )
        if not (pos_ok and neg_ok) or zero + pos + neg != count:
            return _INVALID
    return _VALID


def values_valid(scanned: ScannedSummaries) -> bool:
    """Whether every series of ``scanned`` passes the value checks of
    :mod:`nethical_grpc.convert` (moments, histogram, and their counts agreeing); False
    whenever one of them would refuse a series (see the module docstring)."""
    while True:
        verdict = _values_valid(
            scanned.ints, scanned.uints, scanned.floats, _INDEX_LIMITS, _LIMITS_KNOWN
        )
        if verdict < _NEEDS_LIMITS:
            return bool(verdict == _VALID)
        row = verdict - _NEEDS_LIMITS
        _INDEX_LIMITS[row] = index_limits(row + MIN_SCALE)
        _LIMITS_KNOWN[row] = True


def warmup() -> None:
    """Compile the scan (or load it from Numba's cache) before the first answer arrives:
    compiling takes seconds, longer than a global query's deadline."""
    scan(b"")
    values_valid(  # one all-zero series (refused: max_buckets 0)
        ScannedSummaries(
            np.zeros(_HEAD_COLUMNS, np.int64),
            np.zeros((1, _INT_COLUMNS), np.int64),
            np.zeros((1, _UINT_COLUMNS), np.uint64),
            np.zeros((1, _FLOAT_COLUMNS)),
            np.zeros((0, 4), np.int64),
            np.zeros(0, np.uint64),
        )
    )
