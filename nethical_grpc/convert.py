"""The one place where protobuf messages and domain objects meet.

``*_to_proto`` builds messages from domain objects; ``*_from_proto`` parses and
validates, raising :class:`~nethical_grpc.errors.InvalidArgument` with field paths.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import chain
from operator import attrgetter
from typing import Final

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message

from nethical_grpc import evaluation_wire, summary_scan
from nethical_grpc.errors import FieldViolation, InvalidArgument, MeshError, described
from nethical_grpc.governance.decision import MAX_ACTION_TEXT_BYTES, Decision
from nethical_grpc.governance.detectors import FINDINGS, Action, Violation, ViolationType
from nethical_grpc.governance.profiles import Profile
from nethical_grpc.governance.requests import EvaluationRequest, Outcome
from nethical_grpc.jit import is_jit_available
from nethical_grpc.model_info import ModelSummary
from nethical_grpc.privacy import NoiseError, ReleaseInfo
from nethical_grpc.proto_limits import (
    MAX_DURATION_SECONDS,
    MAX_TIMESTAMP_SECONDS,
    MIN_TIMESTAMP_SECONDS,
)
from nethical_grpc.series import (
    DataGap,
    GroupSummary,
    IngestBatch,
    Labels,
    SeriesKey,
    SummaryQuery,
    freeze_labels,
)
from nethical_grpc.storage.audit import AuditFilter, SearchPage, SearchQuery
from nethical_grpc.storage.backend import BackendChoice
from nethical_grpc.storage.timeseries import AggregateRow, MetricRecord
from nethical_grpc.storage.timeseries.model import check_text
from nethical_grpc.summary import Buckets, ExponentialHistogram, Moments, Summary
from nethical_grpc.summary._kernels import two_sum
from nethical_grpc.summary.exponential_histogram import CountArray, CountedSide, counted_side
from nethical_grpc.summary.moments import check_consistent
from nethical_grpc.v1 import coordinator_pb2, governance_pb2, region_node_pb2, summary_pb2
from nethical_grpc.validation import (
    CONTROL_RE,
    MAX_ABS_VALUE,
    MAX_LABELS,
    NAME_RE,
    check_names,
    check_time_range,
    first_out_of_range,
    keyed_path,
    label_violations,
    name_violation,
    utf8_length,
)
from nethical_grpc.wire import packed_field, packed_field_tagged, packed_uint64, varint

NANOS = 1_000_000_000

_NO_COUNTS: CountArray = np.zeros(0, dtype=np.uint64)
_NO_COUNTS.flags.writeable = False


# -- time ---------------------------------------------------------------------------


def timestamp_to_ns(ts: timestamp_pb2.Timestamp) -> int:
    return int(ts.seconds) * NANOS + int(ts.nanos)


def ns_to_timestamp(ns: int) -> timestamp_pb2.Timestamp:
    seconds, nanos = divmod(int(ns), NANOS)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def optional_timestamp_ns(message: object, field: str) -> int | None:
    """Nanoseconds of a Timestamp field, or None when unset."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    ts: timestamp_pb2.Timestamp = getattr(message, field)
    if not (0 <= ts.nanos < NANOS):
        raise InvalidArgument.single(field, "nanos must be in [0, 1e9)")
    if not (MIN_TIMESTAMP_SECONDS <= ts.seconds <= MAX_TIMESTAMP_SECONDS):
        raise InvalidArgument.single(field, "must be between years 0001 and 9999")
    return timestamp_to_ns(ts)


def duration_to_ns(d: duration_pb2.Duration) -> int:
    return int(d.seconds) * NANOS + int(d.nanos)


def checked_duration_ns(d: duration_pb2.Duration, field: str) -> int:
    """Nanoseconds of a Duration from a request; InvalidArgument naming ``field`` unless
    it is a valid Duration (nanos within +-999,999,999 and of the seconds' sign, seconds
    within the type's range), as every other language's runtime requires."""
    seconds, nanos = int(d.seconds), int(d.nanos)
    if not -NANOS < nanos < NANOS:
        raise InvalidArgument.single(field, "nanos must be within +-999,999,999")
    if (seconds > 0 and nanos < 0) or (seconds < 0 and nanos > 0):
        raise InvalidArgument.single(field, "seconds and nanos must have the same sign")
    if abs(seconds) > MAX_DURATION_SECONDS:
        raise InvalidArgument.single(field, "seconds out of the Duration range")
    return seconds * NANOS + nanos


def ns_to_duration(ns: int) -> duration_pb2.Duration:
    """A valid Duration: nanos carry the sign of the seconds (-1.5 s is -1 s, -5e8 ns)."""
    seconds, nanos = divmod(abs(int(ns)), NANOS)
    if ns < 0:
        seconds, nanos = -seconds, -nanos
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)


# -- summaries ----------------------------------------------------------------------


def moments_to_proto(m: Moments) -> summary_pb2.Moments:
    if m.count == 0:
        return summary_pb2.Moments()
    total, compensation = two_sum(m.sum, m.compensation)
    return summary_pb2.Moments(
        count=m.count,
        sum=total,
        min=m.min,
        max=m.max,
        mean=m.mean,
        m2=m.m2,
        sum_compensation=compensation,
    )


def moments_from_proto(msg: summary_pb2.Moments, field: str = "moments") -> Moments:
    return _checked_moments(
        msg.count, msg.sum, msg.min, msg.max, msg.mean, msg.m2, field, msg.sum_compensation
    )


def _checked_moments(
    count: int,
    total: float,
    lo: float,
    hi: float,
    mean: float,
    m2: float,
    field: str,
    compensation: float = 0.0,
) -> Moments:
    """Moments from a message's field values (validated)."""
    if count == 0:
        if (
            total != 0.0
            or lo != 0.0
            or hi != 0.0
            or mean != 0.0
            or m2 != 0.0
            or compensation != 0.0
        ):
            raise InvalidArgument.single(field, "an empty summary must have zero moments")
        return Moments()
    isfinite = math.isfinite
    if not (isfinite(total) and isfinite(lo) and isfinite(hi) and isfinite(mean) and isfinite(m2)):
        raise InvalidArgument.single(field, "moments must be finite")
    if compensation and not abs(compensation) <= math.ulp(total):
        raise InvalidArgument.single(
            field, "sum_compensation must be finite and at most one unit in the last place of sum"
        )
    if max(abs(lo), abs(hi)) > MAX_ABS_VALUE:
        raise InvalidArgument.single(field, f"min and max must be within +-{MAX_ABS_VALUE:g}")
    try:
        check_consistent(count, total, lo, hi, mean, m2)
    except (ValueError, ArithmeticError) as exc:
        raise InvalidArgument.single(field, str(exc)) from None
    return Moments(count, total, compensation, lo, hi, mean, m2)


def _write_buckets(target: summary_pb2.ExponentialHistogram.Buckets, b: Buckets) -> None:
    t = b.trimmed()
    if t.counts.size:
        target.offset = t.offset
        # bucket_counts (field 2) parsed from bytes encoded in one pass
        target.MergeFromString(packed_uint64(2, t.counts))


def _wire_side(msg: summary_pb2.ExponentialHistogram.Buckets) -> CountedSide:
    counts = msg.bucket_counts
    return counted_side(
        msg.offset, np.asarray(counts, dtype=np.uint64) if len(counts) else _NO_COUNTS
    )


def histogram_to_proto(h: ExponentialHistogram) -> summary_pb2.ExponentialHistogram:
    msg = summary_pb2.ExponentialHistogram(
        scale=h.scale,
        zero_count=h.zero_count,
        zero_threshold=h.zero_threshold,
        max_buckets=h.max_buckets,
    )
    _write_buckets(msg.positive, h.positive)
    _write_buckets(msg.negative, h.negative)
    return msg


def histogram_from_proto(
    msg: summary_pb2.ExponentialHistogram, field: str = "histogram"
) -> ExponentialHistogram:
    return _histogram_and_count(msg, field)[0]


def _histogram_and_count(
    msg: summary_pb2.ExponentialHistogram, field: str
) -> tuple[ExponentialHistogram, int]:
    """The histogram a message holds (validated) and its total count."""
    return _checked_histogram(
        msg.scale,
        msg.max_buckets,
        msg.zero_threshold,
        msg.zero_count,
        _wire_side(msg.positive),
        _wire_side(msg.negative),
        field,
    )


def _checked_histogram(
    scale: int,
    max_buckets: int,
    zero_threshold: float,
    zero_count: int,
    positive: CountedSide,
    negative: CountedSide,
    field: str,
) -> tuple[ExponentialHistogram, int]:
    """The histogram of decoded fields (validated) and its total count."""
    try:
        return ExponentialHistogram.from_counted(
            scale, max_buckets, zero_threshold, zero_count, positive, negative
        )
    except ValueError as exc:
        raise InvalidArgument.single(field, str(exc)) from None


def summary_to_proto(s: Summary) -> summary_pb2.Summary:
    return summary_pb2.Summary(
        moments=moments_to_proto(s.moments), histogram=histogram_to_proto(s.histogram)
    )


def summary_from_proto(msg: summary_pb2.Summary, field: str = "summary") -> Summary:
    moments = moments_from_proto(msg.moments, field + ".moments")
    return _checked_summary(
        moments, *_histogram_and_count(msg.histogram, field + ".histogram"), field
    )


#: A stored summary stands in an answer's series under this metric (field 1), no labels.
_STORED_SERIES_HEAD: Final = b"\x0a\x01s"
#: Stored summaries decoded in one pass at most: the pass holds every bucket count of
#: them in one uint64 array (about 7 KB a window of 64 values over four decades).
STORED_BATCH: Final = 1_000


def summaries_from_stored(
    payloads: Sequence[bytes], batch_size: int = STORED_BATCH
) -> list[Summary] | None:
    """Encoded ``Summary`` messages (a node's stored windows), decoded and validated as
    :func:`summary_from_proto` does, ``batch_size`` at a time: each batch is read
    as the series of one answer, in the compiled pass of
    :func:`summaries_answer_from_bytes` (about half the cost of one message at a time).
    None when one of them is refused: the caller decodes them one by one to name it."""
    out: list[Summary] = []
    for at in range(0, len(payloads), batch_size):
        batch = payloads[at : at + batch_size]
        answer = summaries_answer_from_bytes(
            b"".join(packed_field(1, _STORED_SERIES_HEAD + packed_field(3, p)) for p in batch)
        )
        if answer.invalid is not None or len(answer.groups) != len(batch):
            return None
        out.extend(g.summary for g in answer.groups)
    return out


def _checked_summary(
    moments: Moments, histogram: ExponentialHistogram, count: int, field: str
) -> Summary:
    if moments.count != count:
        raise InvalidArgument.single(
            field, f"moments count {moments.count} differs from histogram count {count}"
        )
    return Summary(moments, histogram)


# -- region node requests -------------------------------------------------------------


MAX_BATCH_ID_CHARS = 128


def ingest_batch_from_proto(req: region_node_pb2.IngestRequest, now_ns: int) -> IngestBatch:
    """Validate one Ingest message and turn it into a batch (columnar, no per-value loop)."""
    violations: list[FieldViolation] = []
    bad_name = name_violation("metric", req.metric)
    if bad_name is not None:
        violations.append(bad_name)
    violations.extend(label_violations("labels", req.labels))
    if len(req.batch_id) > MAX_BATCH_ID_CHARS:
        violations.append(FieldViolation("batch_id", f"at most {MAX_BATCH_ID_CHARS} characters"))
    values = np.asarray(req.values, dtype=np.float64)
    bad_index = first_out_of_range(values)
    if bad_index is not None:
        violations.append(
            FieldViolation(
                f"values[{bad_index}]",
                f"{float(values[bad_index])!r} is not a finite number of magnitude "
                f"<= {MAX_ABS_VALUE:g}",
            )
        )
    timestamps: np.ndarray | None = None
    if len(req.timestamps_unix_nano):
        timestamps = np.asarray(req.timestamps_unix_nano, dtype=np.int64)
        if timestamps.size != values.size:
            violations.append(
                FieldViolation(
                    "timestamps_unix_nano",
                    f"has {timestamps.size} entries for {values.size} values",
                )
            )
        if req.HasField("time"):
            violations.append(
                FieldViolation("time", "set either time or timestamps_unix_nano, not both")
            )
    time_ns = now_ns
    if req.HasField("time"):
        if not (0 <= req.time.nanos < NANOS):
            violations.append(FieldViolation("time.nanos", "must be in [0, 1e9)"))
        else:
            time_ns = timestamp_to_ns(req.time)
    if violations:
        raise InvalidArgument(
            message="Ingest batch rejected: "
            + "; ".join(f"{v.field}: {v.description}" for v in violations[:3]),
            field_violations=violations,
        )
    key = SeriesKey(req.metric, freeze_labels(req.labels))
    return IngestBatch(
        key=key, values=values, timestamps_ns=timestamps, time_ns=time_ns, batch_id=req.batch_id
    )


def summary_query_from_proto(
    req: region_node_pb2.GetSummariesRequest | coordinator_pb2.GetGlobalMetricsRequest,
) -> SummaryQuery:
    start_ns = optional_timestamp_ns(req, "start_time")
    end_ns = optional_timestamp_ns(req, "end_time")
    check_time_range(start_ns, end_ns)
    check_names("metrics", req.metrics)
    check_names("group_by_labels", req.group_by_labels, MAX_LABELS)
    bad_filter = label_violations("label_filter", req.label_filter)
    if bad_filter:
        raise InvalidArgument(message="label_filter: invalid labels", field_violations=bad_filter)
    return SummaryQuery(
        start_ns=start_ns,
        end_ns=end_ns,
        metrics=frozenset(req.metrics),
        label_filter=freeze_labels(req.label_filter),
        group_by=tuple(sorted(set(req.group_by_labels))),
    )


def summary_query_to_proto(q: SummaryQuery) -> region_node_pb2.GetSummariesRequest:
    msg = region_node_pb2.GetSummariesRequest(
        metrics=sorted(q.metrics),
        label_filter=dict(q.label_filter),
        group_by_labels=list(q.group_by),
    )
    if q.start_ns is not None:
        msg.start_time.CopyFrom(ns_to_timestamp(q.start_ns))
    if q.end_ns is not None:
        msg.end_time.CopyFrom(ns_to_timestamp(q.end_ns))
    return msg


def group_summary_to_proto(g: GroupSummary, mean_error: float = 0.0) -> summary_pb2.SeriesSummary:
    return summary_pb2.SeriesSummary(
        metric=g.metric,
        labels=dict(g.labels),
        summary=summary_to_proto(g.summary),
        start_time=ns_to_timestamp(g.start_ns),
        end_time=ns_to_timestamp(g.end_ns),
        mean_error=mean_error,
    )


#: A double's encoding, little-endian (the wire's fixed64).
_DOUBLE: Final = struct.Struct("<d")
_ZERO_DOUBLE: Final = bytes(8)


def _wire_double(tag: bytes, value: float) -> bytes:
    """A double field: nothing for +0.0, which proto3 leaves out (-0.0 is written)."""
    raw = _DOUBLE.pack(value)
    return b"" if raw == _ZERO_DOUBLE else tag + raw


def _wire_sint(tag: bytes, value: int) -> bytes:
    """A sint32 field (zigzag): nothing for 0."""
    return tag + varint((value << 1) ^ (value >> 63)) if value else b""


def _wire_int64(tag: bytes, value: int) -> bytes:
    """An int32/int64 field (a negative one in ten bytes, two's complement): nothing for 0."""
    return tag + varint(value & 0xFFFF_FFFF_FFFF_FFFF) if value else b""


def _wire_uint(tag: bytes, value: int) -> bytes:
    return tag + varint(value) if value else b""


def _wire_text(tag: bytes, text: str) -> bytes:
    return packed_field_tagged(tag, text.encode()) if text else b""


def _wire_timestamp(tag: bytes, ns: int) -> bytes:
    seconds, nanos = divmod(int(ns), NANOS)
    return packed_field_tagged(tag, _wire_int64(b"\x08", seconds) + _wire_int64(b"\x10", nanos))


def _wire_moments(m: Moments) -> bytes:
    if m.count == 0:
        return b""
    total, compensation = two_sum(m.sum, m.compensation)
    return b"".join(
        (
            _wire_uint(b"\x08", m.count),
            _wire_double(b"\x11", total),
            _wire_double(b"\x19", m.min),
            _wire_double(b"\x21", m.max),
            _wire_double(b"\x29", m.mean),
            _wire_double(b"\x31", m.m2),
            _wire_double(b"\x39", compensation),
        )
    )


def _wire_buckets(tag: bytes, b: Buckets) -> bytes:
    t = b.trimmed()
    if not t.counts.size:
        return b""  # (left unset, as histogram_to_proto leaves it)
    return packed_field_tagged(tag, _wire_sint(b"\x08", t.offset) + packed_uint64(2, t.counts))


def _wire_histogram(h: ExponentialHistogram) -> bytes:
    return b"".join(
        (
            _wire_sint(b"\x08", h.scale),
            _wire_uint(b"\x10", h.zero_count),
            _wire_double(b"\x19", h.zero_threshold),
            _wire_buckets(b"\x22", h.positive),
            _wire_buckets(b"\x2a", h.negative),
            _wire_uint(b"\x30", h.max_buckets),
        )
    )


def group_summaries_to_wire(
    field_number: int, groups: Sequence[GroupSummary], mean_errors: Sequence[float]
) -> bytes:
    """``groups`` encoded as the repeated ``SeriesSummary`` field ``field_number`` of the
    message they go into, each as :func:`group_summary_to_proto` builds it (a test checks
    that they parse to the same messages): written straight to bytes, about a third of
    the cost of building the messages (`bench/wide_answer.py`), which a node answering
    10,000 series paid for a second and more."""
    tag = varint((field_number << 3) | 2)
    out = []
    for g, error in zip(groups, mean_errors, strict=True):
        s = g.summary
        summary = packed_field_tagged(b"\x0a", _wire_moments(s.moments)) + packed_field_tagged(
            b"\x12", _wire_histogram(s.histogram)
        )
        # a map entry holds its key and value even when empty (as protobuf writes it)
        labels = b"".join(
            packed_field_tagged(
                b"\x12",
                packed_field_tagged(b"\x0a", k.encode()) + packed_field_tagged(b"\x12", v.encode()),
            )
            for k, v in g.labels
        )
        series = b"".join(
            (
                _wire_text(b"\x0a", g.metric),
                labels,
                packed_field_tagged(b"\x1a", summary),
                _wire_timestamp(b"\x22", g.start_ns),
                _wire_timestamp(b"\x2a", g.end_ns),
                _wire_double(b"\x31", error),
            )
        )
        out.append(packed_field_tagged(tag, series))
    return b"".join(out)


def group_summary_from_proto(msg: summary_pb2.SeriesSummary, field: str) -> GroupSummary:
    _check_metric(msg.metric, field)
    return GroupSummary(
        metric=msg.metric,
        labels=freeze_labels(msg.labels),
        summary=summary_from_proto(msg.summary, f"{field}.summary"),
        start_ns=timestamp_to_ns(msg.start_time),
        end_ns=timestamp_to_ns(msg.end_time),
        data_as_of_ns=0,
    )


def _check_metric(metric: str, field: str) -> None:
    if NAME_RE.fullmatch(metric) is not None:
        return
    bad = name_violation(f"{field}.metric", metric)
    if bad is not None:
        raise InvalidArgument(message=bad.description, field_violations=(bad,))


@dataclass(frozen=True, slots=True)
class SummariesAnswer:
    """A node's ``GetSummariesResponse`` as the coordinator uses it."""

    instance_id: str
    scope: int
    data_as_of_ns: int  # 0 when unset
    groups: list[GroupSummary]
    privacy: ReleaseInfo | None
    #: why the summaries were refused (then ``groups`` is empty); None when valid
    invalid: str | None = None
    #: data the node keeps but left out of this answer
    gaps: tuple[DataGap, ...] = ()
    #: the region the node says it serves ("" when it does not say)
    region_id: str = ""


def summaries_answer_from_proto(msg: region_node_pb2.GetSummariesResponse) -> SummariesAnswer:
    """The answer, every series validated as :func:`group_summary_from_proto` does."""
    return summaries_answer_from_bytes(msg.SerializeToString(), msg)


def summaries_answer_from_bytes(
    data: bytes, msg: region_node_pb2.GetSummariesResponse | None = None
) -> SummariesAnswer:
    """:func:`summaries_answer_from_proto` for an encoded answer (``msg``: the same,
    already parsed).

    The bytes are read in one compiled pass when they are in the usual encoding (see
    :mod:`nethical_grpc.summary_scan`), at a fraction of the cost of a message tree and
    series-by-series conversion; otherwise, and without Numba, through protobuf. Both
    give the same answer and refuse the same summaries with the same message.
    """
    scanned = summary_scan.scan(data)
    if scanned is not None:
        try:
            return _answer_from_scan(data, scanned)
        except (UnicodeDecodeError, DecodeError):
            pass  # not UTF-8 where protobuf wants it, or a bad privacy field: protobuf says
    if msg is None:
        try:
            msg = region_node_pb2.GetSummariesResponse.FromString(data)
        except DecodeError:
            return SummariesAnswer("", 0, 0, [], None, "the answer is not a GetSummariesResponse")
    return _answer_from_message(msg)


def _answer_from_message(msg: region_node_pb2.GetSummariesResponse) -> SummariesAnswer:
    as_of = timestamp_to_ns(msg.data_as_of) if msg.HasField("data_as_of") else 0
    try:
        groups = [group_summary_from_proto(s, f"series[{i}]") for i, s in enumerate(msg.series)]
        privacy = (
            privacy_info_from_proto(msg.privacy, "privacy") if msg.HasField("privacy") else None
        )
    except MeshError as exc:
        return SummariesAnswer(
            msg.instance_id, msg.scope, as_of, [], None, str(exc), region_id=msg.region_id
        )
    gaps = tuple(data_gap_from_proto(g) for g in msg.gaps)
    return SummariesAnswer(
        msg.instance_id, msg.scope, as_of, groups, privacy, gaps=gaps, region_id=msg.region_id
    )


def _answer_from_scan(data: bytes, scanned: summary_scan.ScannedSummaries) -> SummariesAnswer:
    sc = summary_scan
    head = scanned.head.tolist()
    region_id = data[head[sc.REGION_START] : head[sc.REGION_END]].decode()  # UTF-8 checked
    instance_id = data[head[sc.INSTANCE_START] : head[sc.INSTANCE_END]].decode()
    as_of = head[sc.AS_OF_S] * NANOS + head[sc.AS_OF_NS] if head[sc.AS_OF_SET] else 0
    try:
        groups = _scanned_groups(data, scanned)
        privacy = (
            privacy_info_from_proto(
                summary_pb2.PrivacyInfo.FromString(
                    data[head[sc.PRIVACY_START] : head[sc.PRIVACY_END]]
                ),
                "privacy",
            )
            if head[sc.PRIVACY_START] >= 0
            else None
        )
    except MeshError as exc:
        return SummariesAnswer(
            instance_id, head[sc.SCOPE], as_of, [], None, str(exc), region_id=region_id
        )
    return SummariesAnswer(instance_id, head[sc.SCOPE], as_of, groups, privacy, region_id=region_id)


def _scanned_side(counts: CountArray, offset: int, first: int, lead: int, trail: int) -> Buckets:
    """One side of a series that :func:`summary_scan.values_valid` passed: its trimmed buckets (its
    counts start at ``first`` in ``counts``; ``lead`` -1 when it has none)."""
    if lead < 0:
        return Buckets(0, _NO_COUNTS)
    return Buckets(offset + lead, counts[first + lead : first + trail + 1])


#: Metric names already checked, by their encoded bytes: a coordinator reads the same few
#: names in every answer (cleared when it grows past its bound).
_CHECKED_METRICS: dict[bytes, str] = {}
_CHECKED_METRICS_BOUND: Final = 4096
_NO_LABELS: Labels = ()


def _checked_metric(raw: bytes, field: str) -> str:
    metric = _CHECKED_METRICS.get(raw)
    if metric is None:
        metric = raw.decode()
        _check_metric(metric, field)
        if len(_CHECKED_METRICS) >= _CHECKED_METRICS_BOUND:
            _CHECKED_METRICS.clear()
        _CHECKED_METRICS[raw] = metric
    return metric


def _scanned_groups(data: bytes, scanned: summary_scan.ScannedSummaries) -> list[GroupSummary]:
    if summary_scan.values_valid(scanned):
        return _valid_scanned_groups(data, scanned)
    return _checked_scanned_groups(data, scanned)


def _valid_scanned_groups(
    data: bytes, scanned: summary_scan.ScannedSummaries
) -> list[GroupSummary]:
    """The series of an answer whose every value passed :func:`summary_scan.values_valid`
    (only the metric names and labels are left to check), built straight from the
    columns: a global query builds about a hundred of them."""
    # the rows unpacked in summary_scan's column order (METRIC_START .. NEG_TRAIL, SUM ..
    # SUM_COMPENSATION); a property test holds this path equal to protobuf's
    pairs = scanned.labels.tolist()
    counts = scanned.counts
    out: list[GroupSummary] = []
    for i, (row, (count, zero_count, _pt, _nt), f) in enumerate(
        zip(scanned.ints.tolist(), scanned.uints.tolist(), scanned.floats.tolist(), strict=True)
    ):
        (m0, m1, first, n_pairs, scale, max_buckets, pos_offset, pos, _pl, neg_offset, neg) = row[
            :11
        ]
        start_s, start_ns, end_s, end_ns, pos_lead, pos_trail, neg_lead, neg_trail = row[12:]
        total, lo, hi, mean, m2, zero_threshold, _me, compensation = f
        metric = _checked_metric(data[m0:m1], f"series[{i}]")
        labels = (
            freeze_labels(
                {
                    data[k0:k1].decode(): data[v0:v1].decode()
                    for k0, k1, v0, v1 in pairs[first : first + n_pairs]
                }
            )
            if n_pairs
            else _NO_LABELS
        )
        summary = Summary(
            Moments(count, total, compensation, lo, hi, mean, m2) if count else Moments(),
            ExponentialHistogram.from_checked(
                scale,
                max_buckets,
                zero_threshold,
                zero_count,
                _scanned_side(counts, pos_offset, pos, pos_lead, pos_trail),
                _scanned_side(counts, neg_offset, neg, neg_lead, neg_trail),
            ),
        )
        out.append(
            GroupSummary(
                metric=metric,
                labels=labels,
                summary=summary,
                start_ns=start_s * NANOS + start_ns,
                end_ns=end_s * NANOS + end_ns,
                data_as_of_ns=0,
            )
        )
    return out


def _checked_scanned_groups(
    data: bytes, scanned: summary_scan.ScannedSummaries
) -> list[GroupSummary]:
    """The series of an answer with a value :func:`summary_scan.values_valid` did not
    pass, each checked as a parsed message's would be (which names what is refused)."""
    sc = summary_scan
    pairs = scanned.labels.tolist()
    counts = scanned.counts
    out: list[GroupSummary] = []
    for i, (row, (count, zero_count, pos_total, neg_total), f) in enumerate(
        zip(
            scanned.ints.tolist(),
            scanned.uints.tolist(),
            scanned.floats.tolist(),
            strict=True,
        )
    ):
        field = f"series[{i}]"
        metric = data[row[sc.METRIC_START] : row[sc.METRIC_END]].decode()
        _check_metric(metric, field)
        first = row[sc.LABELS_FIRST]
        labels = {
            data[k0:k1].decode(): data[v0:v1].decode()
            for k0, k1, v0, v1 in pairs[first : first + row[sc.LABELS_COUNT]]
        }
        pos, neg = row[sc.POS_FIRST], row[sc.NEG_FIRST]
        moments = _checked_moments(
            count,
            f[sc.SUM],
            f[sc.MIN],
            f[sc.MAX],
            f[sc.MEAN],
            f[sc.M2],
            field + ".summary.moments",
            f[sc.SUM_COMPENSATION],
        )
        histogram, total = _checked_histogram(
            row[sc.SCALE],
            row[sc.MAX_BUCKETS],
            f[sc.ZERO_THRESHOLD],
            zero_count,
            (
                row[sc.POS_OFFSET],
                counts[pos : pos + row[sc.POS_LEN]],
                row[sc.POS_LEAD],
                row[sc.POS_TRAIL],
                pos_total,
            ),
            (
                row[sc.NEG_OFFSET],
                counts[neg : neg + row[sc.NEG_LEN]],
                row[sc.NEG_LEAD],
                row[sc.NEG_TRAIL],
                neg_total,
            ),
            field + ".summary.histogram",
        )
        summary = _checked_summary(moments, histogram, total, field + ".summary")
        out.append(
            GroupSummary(
                metric=metric,
                labels=freeze_labels(labels),
                summary=summary,
                start_ns=row[sc.START_S] * NANOS + row[sc.START_NS],
                end_ns=row[sc.END_S] * NANOS + row[sc.END_NS],
                data_as_of_ns=0,
            )
        )
    return out


# -- governance -------------------------------------------------------------------------

MAX_AGENT_ID_CHARS = 256
MAX_REQUEST_ID_CHARS = 128
MAX_CONTEXT_ENTRIES = 64
MAX_CONTEXT_KEY_CHARS = 256
_MAX_ACTION_TYPE_CHARS: Final = 64
_ACTION_TYPE_RE = re.compile(r"[a-z0-9_.\-]{0,64}")  # whole types: fullmatch
# action types joined by single spaces (see _screened_batch): fullmatch
_ACTION_TYPES_JOINED_RE = re.compile(r"[a-z0-9_. \-]*")

_DECISION_TO_PROTO: dict[Decision, governance_pb2.Decision] = {
    Decision.ALLOW: governance_pb2.DECISION_ALLOW,
    Decision.RESTRICT: governance_pb2.DECISION_RESTRICT,
    Decision.BLOCK: governance_pb2.DECISION_BLOCK,
    Decision.TERMINATE: governance_pb2.DECISION_TERMINATE,
}
_DECISION_FROM_PROTO: dict[int, Decision] = {int(v): k for k, v in _DECISION_TO_PROTO.items()}


def decision_to_proto(decision: Decision | str) -> governance_pb2.Decision:
    return _DECISION_TO_PROTO[Decision(decision)]


def decision_from_proto(value: int, field: str) -> Decision | None:
    """None for DECISION_UNSPECIFIED (no filter); INVALID_ARGUMENT for unknown values."""
    if value == governance_pb2.DECISION_UNSPECIFIED:
        return None
    found = _DECISION_FROM_PROTO.get(value)
    if found is None:
        raise InvalidArgument.single(field, f"unknown decision value {value}")
    return found


def _utf8_over(text: str, limit: int) -> int | None:
    """The UTF-8 length of ``text`` when it is over ``limit`` bytes, else None (a text of
    at most ``limit // 4`` characters is never over: no character takes more than 4)."""
    if len(text) <= limit // 4:
        return None
    n = utf8_length(text)
    return n if n > limit else None


#: Most actions one EvaluateStream message may carry (``EvaluateStreamRequest.actions``).
MAX_STREAM_BATCH_ACTIONS = 4096


def action_from_proto(msg: governance_pb2.AgentAction, field: str = "action") -> EvaluationRequest:
    """Validate an AgentAction; every problem is reported as a field violation at once."""
    return _checked_action(msg, field)


def batch_actions_from_proto(
    msgs: Sequence[governance_pb2.AgentAction], field: str = "actions"
) -> list[EvaluationRequest | governance_pb2.ActionError]:
    """Each action of a batch validated: its request, or the ActionError that answers it
    (field paths ``actions[i].action_text``); a bad action never affects the others."""
    screened = _screened_batch(msgs)
    if screened is not None:
        return screened
    out: list[EvaluationRequest | governance_pb2.ActionError] = []
    append = out.append
    for i, msg in enumerate(msgs):
        try:
            append(_checked_action(msg, f"{field}[{i}]"))
        except MeshError as exc:
            append(action_error_to_proto(msg.request_id, exc))
    return out


def _screened_batch(
    msgs: Sequence[governance_pb2.AgentAction],
) -> list[EvaluationRequest | governance_pb2.ActionError] | None:
    """Every action's request when the whole batch passes :func:`_checked_action`'s
    checks, tested a column at a time (one regex search over the joined agent ids, one
    over the request ids, one match of the joined action types); ``None`` when any
    action may fail one, and each is checked on its own to say which (so a list of
    requests only).

    Joining keeps each check exact: a control character is in the joined text exactly
    when it is in one of its parts, and the types, joined by single spaces, match the
    type characters and spaces with one space fewer than the types exactly when no type
    holds a space and every type holds only type characters."""
    if not msgs:
        return []
    msgs = list(msgs)  # one wrapper per message: iterating the field makes new ones
    agents = [m.agent_id for m in msgs]
    texts = [m.action_text for m in msgs]
    intents = [m.stated_intent for m in msgs]
    request_ids = [m.request_id for m in msgs]
    types = [m.action_type.lower() for m in msgs]
    joined_types = " ".join(types)
    if not (
        all(map(str.strip, agents))
        and all(map(str.strip, texts))
        and max(map(len, agents)) <= MAX_AGENT_ID_CHARS
        and max(map(len, request_ids)) <= MAX_REQUEST_ID_CHARS
        and max(map(len, types)) <= _MAX_ACTION_TYPE_CHARS
        and CONTROL_RE.search("".join(agents)) is None
        and CONTROL_RE.search("".join(request_ids)) is None
        and _ACTION_TYPES_JOINED_RE.fullmatch(joined_types) is not None
        and joined_types.count(" ") == len(types) - 1
        and _none_over(texts, MAX_ACTION_TEXT_BYTES)
        and _none_over(intents, MAX_ACTION_TEXT_BYTES)
    ):
        return None
    contexts = [dict(c) if c else {} for c in (m.context for m in msgs)]
    if any(_context_violation(c, "") is not None for c in contexts if c):
        return None
    requests: list[EvaluationRequest | governance_pb2.ActionError] = [
        _request(agent, text, action_type, intent, context, request_id)
        for agent, text, action_type, intent, context, request_id in zip(
            agents, texts, types, intents, contexts, request_ids, strict=True
        )
    ]
    return requests


def _none_over(texts: list[str], limit: int) -> bool:
    """Whether no text of ``texts`` is over ``limit`` bytes in UTF-8 (see _utf8_over)."""
    if max(map(len, texts)) <= limit // 4:
        return True
    return not any(_utf8_over(t, limit) for t in texts)


def _context_violation(context: dict[str, str], field: str) -> FieldViolation | None:
    """Why an action's ``context`` (at ``field``) is refused; None when it is not."""
    if len(context) > MAX_CONTEXT_ENTRIES:
        return FieldViolation(field, f"at most {MAX_CONTEXT_ENTRIES} entries")
    # the first bad key in sorted order (a map's order is not the sender's), named as
    # map entries are: context["k"]
    bad_key = min((k for k in context if not k or len(k) > MAX_CONTEXT_KEY_CHARS), default=None)
    if bad_key is not None:
        return FieldViolation(
            keyed_path(field, bad_key), f"keys must be 1 to {MAX_CONTEXT_KEY_CHARS} characters"
        )
    if (n := sum(utf8_length(v) for v in context.values())) > MAX_ACTION_TEXT_BYTES:
        return FieldViolation(
            field, f"values total {n} bytes, more than the {MAX_ACTION_TEXT_BYTES}-byte limit"
        )
    return None


def agent_id_violation(field_path: str, agent: str) -> FieldViolation | None:
    """Why ``agent`` is not an agent id (None: it is one): not blank, no control
    characters, at most :data:`MAX_AGENT_ID_CHARS` characters."""
    if not agent.strip():
        return FieldViolation(field_path, "must not be empty")
    if CONTROL_RE.search(agent):
        return FieldViolation(field_path, "must not contain control characters")
    if len(agent) > MAX_AGENT_ID_CHARS:
        return FieldViolation(field_path, f"at most {MAX_AGENT_ID_CHARS} characters")
    return None


def _checked_action(msg: governance_pb2.AgentAction, field: str) -> EvaluationRequest:
    bad: list[FieldViolation] = []
    agent = msg.agent_id
    if (agent_bad := agent_id_violation(f"{field}.agent_id", agent)) is not None:
        bad.append(agent_bad)
    text = msg.action_text
    if not text.strip():
        bad.append(FieldViolation(f"{field}.action_text", "must not be empty"))
    elif (n := _utf8_over(text, MAX_ACTION_TEXT_BYTES)) is not None:
        bad.append(
            FieldViolation(
                f"{field}.action_text",
                f"{n} bytes, more than the {MAX_ACTION_TEXT_BYTES}-byte limit",
            )
        )
    action_type = msg.action_type.lower()
    if not _ACTION_TYPE_RE.fullmatch(action_type):
        bad.append(
            FieldViolation(
                f"{field}.action_type", "at most 64 characters of letters, digits, '_', '.', '-'"
            )
        )
    intent = msg.stated_intent
    if (n := _utf8_over(intent, MAX_ACTION_TEXT_BYTES)) is not None:
        bad.append(
            FieldViolation(
                f"{field}.stated_intent",
                f"{n} bytes, more than the {MAX_ACTION_TEXT_BYTES}-byte limit",
            )
        )
    context = dict(msg.context) if msg.context else {}
    if context and (context_bad := _context_violation(context, f"{field}.context")) is not None:
        bad.append(context_bad)
    request_id = msg.request_id
    if request_id and CONTROL_RE.search(request_id):
        bad.append(FieldViolation(f"{field}.request_id", "must not contain control characters"))
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        bad.append(
            FieldViolation(f"{field}.request_id", f"at most {MAX_REQUEST_ID_CHARS} characters")
        )
    if bad:
        raise InvalidArgument(message=f"{field}: invalid action", field_violations=bad)
    return _request(agent, text, action_type, intent, context, request_id)


def _request(
    agent: str, text: str, action_type: str, intent: str, context: dict[str, str], request_id: str
) -> EvaluationRequest:
    """The request of a checked action (``action_type`` lower-cased)."""
    # positional: a frozen dataclass's keyword call costs about half as much again, and
    # this runs once per action of every batch
    action = Action(agent, text, action_type, intent, context)
    return EvaluationRequest(action, request_id, action_type)


_VIOLATION_TYPE_NAMES: dict[ViolationType, str] = {t: t.value.lower() for t in ViolationType}


def _fill_evaluation(
    m: governance_pb2.ActionEvaluation, outcome: Outcome, region_id: str, instance_id: str
) -> None:
    """Write ``outcome`` into an empty ActionEvaluation in place (no copies of
    sub-messages; unset fields stay at their defaults, as the constructor leaves them)."""
    ev = outcome.evaluation
    m.request_id = outcome.request.request_id
    m.decision = _DECISION_TO_PROTO[ev.decision]
    m.risk_score = ev.risk_score
    m.confidence = ev.confidence
    if ev.violations:
        add = m.violations.add
        for v in ev.violations:
            add(
                type=_VIOLATION_TYPE_NAMES[v.type],
                severity=int(v.severity),
                confidence=v.confidence,
                message=v.message,
                rule_id=v.detector,
            )
    m.rule_risk = ev.rule_risk
    m.model_probability = outcome.model_probability
    latency = m.latency
    latency.seconds, latency.nanos = divmod(outcome.latency_ns, NANOS)
    m.region_id = region_id
    m.instance_id = instance_id


def evaluate_response_to_proto(
    outcome: Outcome, region_id: str, instance_id: str
) -> region_node_pb2.EvaluateResponse:
    """The answer to a unary Evaluate (filled in place: no copy of the evaluation)."""
    answer = region_node_pb2.EvaluateResponse()
    _fill_evaluation(answer.evaluation, outcome, region_id, instance_id)
    return answer


def stream_evaluation_to_proto(
    outcome: Outcome, region_id: str, instance_id: str
) -> region_node_pb2.EvaluateStreamResponse:
    """The answer to a one-action EvaluateStream message that was evaluated."""
    answer = region_node_pb2.EvaluateStreamResponse()
    _fill_evaluation(answer.evaluation, outcome, region_id, instance_id)
    return answer


def stream_results_to_proto(
    results: Sequence[Outcome | governance_pb2.ActionError], region_id: str, instance_id: str
) -> region_node_pb2.EvaluateStreamResponse:
    """The answer to a batch message of an EvaluateStream: one ActionResult per action,
    in the batch's order (an evaluation, or the action's ActionError)."""
    answer = region_node_pb2.EvaluateStreamResponse()
    add = answer.results.add
    for item in results:
        if isinstance(item, Outcome):
            _fill_evaluation(add().evaluation, item, region_id, instance_id)
        else:
            add(error=item)
    return answer


def stream_results_encoded(
    results: Sequence[Outcome | governance_pb2.ActionError], region_id: str, instance_id: str
) -> bytes:
    """:func:`stream_results_to_proto`'s answer as the bytes its ``SerializeToString``
    gives, written by the compiled kernel of :mod:`nethical_grpc.evaluation_wire` from
    the batch's columns (a third or less of the protobuf API's time).  Without Numba, or
    for a batch holding an action's error, through the protobuf API."""
    n = len(results)
    if not _COMPILED_ANSWERS or not set(map(type, results)) <= {Outcome}:
        return stream_results_to_proto(results, region_id, instance_id).SerializeToString()
    outcomes: Sequence[Outcome] = results  # type: ignore[assignment]  # all Outcomes
    latency_ns = np.fromiter(map(_LATENCY_NS, outcomes), np.int64, n)
    if n and int(latency_ns.min()) < 0:  # (not from a monotonic clock) as protobuf does
        return stream_results_to_proto(results, region_id, instance_id).SerializeToString()
    ids = list(map(_REQUEST_ID, outcomes))
    joined = "".join(ids)
    if joined.isascii():
        id_bytes, lengths = joined.encode("ascii"), list(map(len, ids))
    else:
        encoded = [i.encode() for i in ids]
        id_bytes, lengths = b"".join(encoded), list(map(len, encoded))
    evaluations = list(map(_EVALUATION, outcomes))
    doubles = np.empty((n, 4), np.float64)
    doubles[:, 0] = np.fromiter(map(_RISK, evaluations), np.float64, n)
    doubles[:, 1] = np.fromiter(map(_CONFIDENCE, evaluations), np.float64, n)
    doubles[:, 2] = np.fromiter(map(_RULE_RISK, evaluations), np.float64, n)
    doubles[:, 3] = np.fromiter(map(_MODEL_PROBABILITY, outcomes), np.float64, n)
    decisions = np.fromiter(
        map(_DECISION_NUMBERS.__getitem__, map(_DECISION, evaluations)), np.int64, n
    )
    # the violations' fields, once per findings object (a batch's actions that found the
    # same share one, see detect_pool.decoded)
    found_by = list(map(_VIOLATIONS, evaluations))
    distinct = dict(zip(map(id, found_by), found_by, strict=True))
    fields = {key: b"".join(map(_violation_field, v)) for key, v in distinct.items()}
    found = list(map(fields.__getitem__, map(id, found_by)))
    return evaluation_wire.write_results(
        np.frombuffer(id_bytes, np.uint8),
        _offsets(lengths),
        decisions,
        doubles,
        np.frombuffer(b"".join(found), np.uint8),
        _offsets(list(map(len, found))),
        latency_ns,
        np.frombuffer(_ids_fields(region_id, instance_id), np.uint8),
    ).tobytes()


_COMPILED_ANSWERS: Final = is_jit_available()
_LATENCY_NS: Final = attrgetter("latency_ns")
_REQUEST_ID: Final = attrgetter("request.request_id")
_EVALUATION: Final = attrgetter("evaluation")
_RISK: Final = attrgetter("risk_score")
_CONFIDENCE: Final = attrgetter("confidence")
_RULE_RISK: Final = attrgetter("rule_risk")
_MODEL_PROBABILITY: Final = attrgetter("model_probability")
_DECISION: Final = attrgetter("decision")
_VIOLATIONS: Final = attrgetter("violations")


def _offsets(lengths: list[int]) -> npt.NDArray[np.int64]:
    out = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


#: ActionEvaluation.decision's enum number per decision (none is 0).
_DECISION_NUMBERS: Final[dict[Decision, int]] = {d: int(v) for d, v in _DECISION_TO_PROTO.items()}


def _string_field(tag: bytes, text: str) -> bytes:
    data = text.encode()
    return tag + varint(len(data)) + data


def _length_delimited(message: Message) -> bytes:
    data = message.SerializeToString()
    return varint(len(data)) + data


@lru_cache(maxsize=64)
def _ids_fields(region_id: str, instance_id: str) -> bytes:
    """ActionEvaluation's region_id and instance_id fields (left out when empty)."""
    return (_string_field(b"\x4a", region_id) if region_id else b"") + (
        _string_field(b"\x52", instance_id) if instance_id else b""
    )


@lru_cache(maxsize=4096)
def _violation_field(v: Violation) -> bytes:
    """``v`` as an entry of ActionEvaluation.violations (tag, length, message), as
    :func:`_fill_evaluation` writes it."""
    return b"\x2a" + _length_delimited(
        governance_pb2.Violation(
            type=_VIOLATION_TYPE_NAMES[v.type],
            severity=governance_pb2.Severity.Name(int(v.severity)),
            confidence=v.confidence,
            message=v.message,
            rule_id=v.detector,
        )
    )


#: Bytes of one evaluation in a batch answer besides its request id's, its region and
#: instance ids' and its findings', at most: the ``results`` entry's and the ActionResult's
#: tags and lengths (6 + 6), the request id's tag and length (3: at most 512 bytes), the
#: decision (2), four doubles (36) and the latency (19).
_EVALUATION_RESULT_BYTES: Final = 72
#: Bytes of one ActionError's framing in a batch answer: the ``results`` entry's and the
#: ActionResult's tags and lengths.
_ERROR_RESULT_BYTES: Final = 12
#: Bytes of the ``intent.mismatch`` finding, at most: its message names the claim (an
#: action type of ``READ_ONLY_ACTION_TYPES`` or a read-only word of the stated intent,
#: under 32 characters) and a finding type, so it is under 128 bytes; its fields, 24.
_MISMATCH_FINDING_BYTES: Final = 256


@lru_cache(maxsize=4096)
def _violation_bytes(v: Violation) -> int:
    """Bytes of ``v`` in an ActionEvaluation's ``violations``, its tag and length included
    (as :func:`_fill_evaluation` writes it)."""
    size = governance_pb2.Violation(
        type=_VIOLATION_TYPE_NAMES[v.type],
        severity=governance_pb2.Severity.Name(int(v.severity)),
        confidence=v.confidence,
        message=v.message,
        rule_id=v.detector,
    ).ByteSize()
    return 1 + len(varint(size)) + size


def _worst_findings_bytes() -> int:
    """Bytes of the most findings one action can get: one per rule (its longest, of the
    fields it reads), and ``intent.mismatch``."""
    per_rule: dict[str, int] = {}
    for v in FINDINGS:
        per_rule[v.detector] = max(per_rule.get(v.detector, 0), _violation_bytes(v))
    return sum(per_rule.values()) + _MISMATCH_FINDING_BYTES


_WORST_FINDINGS_BYTES: Final = _worst_findings_bytes()
_request_ids = attrgetter("request_id")


def _string_field_bytes(text: str) -> int:
    n = utf8_length(text)
    return 1 + len(varint(n)) + n


def batch_answer_bound(
    plan: Sequence[EvaluationRequest | governance_pb2.ActionError],
    requests: Sequence[EvaluationRequest],
    findings: Sequence[Sequence[Violation]] | None,
    region_id: str,
    instance_id: str,
) -> int:
    """The most bytes the answer to a batch message (:func:`stream_results_to_proto`)
    can take encoded: ``plan`` is the batch as :func:`batch_actions_from_proto` gave it,
    ``requests`` its actions to evaluate, in order, and ``findings`` their findings
    (``None``: unknown, the most any action can get)."""
    n = len(requests)
    size = n * (
        _EVALUATION_RESULT_BYTES + _string_field_bytes(region_id) + _string_field_bytes(instance_id)
    )
    size += utf8_length("".join(map(_request_ids, requests)))
    if findings is None:
        size += n * _WORST_FINDINGS_BYTES
    else:
        size += sum(map(_violation_bytes, chain.from_iterable(findings)))
    if len(plan) > n:  # the actions refused, answered by their ActionError
        errors = [e for e in plan if isinstance(e, governance_pb2.ActionError)]
        size += sum(_ERROR_RESULT_BYTES + e.ByteSize() for e in errors)
    return size


def stream_message_error_to_proto(error: MeshError) -> region_node_pb2.EvaluateStreamResponse:
    """The answer to a malformed EvaluateStream message, or to one refused whole (none of
    it was evaluated)."""
    return region_node_pb2.EvaluateStreamResponse(error=action_error_to_proto("", error))


def stream_message_problem(message: region_node_pb2.EvaluateStreamRequest) -> MeshError | None:
    """Why an EvaluateStream message is malformed (None: it is one action or a batch)."""
    n = len(message.actions)
    has_one = message.HasField("action")
    if has_one and n:
        return _malformed(
            "actions", "set either action (one action) or actions (a batch), not both"
        )
    if not has_one and not n:
        return _malformed(
            "action",
            f"set action (one action) or actions (a batch of 1 to {MAX_STREAM_BATCH_ACTIONS})",
        )
    if n > MAX_STREAM_BATCH_ACTIONS:
        return _malformed(
            "actions", f"at most {MAX_STREAM_BATCH_ACTIONS} actions in one message, got {n}"
        )
    return None


def _malformed(field: str, description: str) -> InvalidArgument:
    return InvalidArgument(
        message=f"malformed stream message: {field}: {description}",
        field_violations=(FieldViolation(field, description),),
    )


#: Characters of a refused, too long request_id that its ActionError echoes.
_ECHOED_REQUEST_ID_CHARS: Final = 64


def echoed_request_id(request_id: str) -> str:
    """``request_id`` as an ActionError echoes it: whole when it is a valid length, else
    its first :data:`_ECHOED_REQUEST_ID_CHARS` characters, an ellipsis and its length (a
    bad field never makes the answer larger than the request)."""
    if len(request_id) <= MAX_REQUEST_ID_CHARS:
        return request_id
    return f"{request_id[:_ECHOED_REQUEST_ID_CHARS]}… ({len(request_id):,} characters)"


def action_error_to_proto(request_id: str, error: MeshError) -> governance_pb2.ActionError:
    """Why an action of a stream was not evaluated; ``request_id`` is the action's (clipped
    when too long, see :func:`echoed_request_id`)."""
    return governance_pb2.ActionError(
        request_id=echoed_request_id(request_id),
        code=error.code.value[0],
        message=error.message,
        field_errors=[
            governance_pb2.FieldError(field=v.field, description=v.description)
            for v in error.violations()
        ],
    )


def summary_query_error_to_proto(error: MeshError) -> region_node_pb2.SummaryQueryError:
    return region_node_pb2.SummaryQueryError(
        code=error.code.value[0],
        message=error.message,
        field_errors=[
            governance_pb2.FieldError(field=v.field, description=v.description)
            for v in error.violations()
        ],
    )


_STATUS_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def status_code_from_number(value: int) -> grpc.StatusCode:
    """The status code of a ``google.rpc.Code`` number (UNKNOWN for one out of range)."""
    return _STATUS_BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)


MAX_SCORE_VALUES = 4 * 1024 * 1024


_FLOAT32_MAX: Final = float(np.finfo(np.float32).max)


def score_rows_from_proto(req: region_node_pb2.ScoreRequest, width: int) -> np.ndarray:
    """Feature rows as a (rows, columns) float32 array; INVALID_ARGUMENT when malformed."""
    if req.columns != width:
        raise InvalidArgument.single(
            "columns", f"the model takes rows of {width} features, got columns={req.columns}"
        )
    values = np.asarray(req.features, dtype=np.float64)
    if values.size == 0:
        raise InvalidArgument.single("features", "must not be empty")
    if values.size > MAX_SCORE_VALUES:
        raise InvalidArgument.single("features", f"at most {MAX_SCORE_VALUES} values")
    if values.size % width:
        raise InvalidArgument.single(
            "features", f"{values.size} values do not make whole rows of {width}"
        )
    finite = np.isfinite(values)
    if not finite.all():  # past the float32 range (finite ones): the check below
        bad = int(np.argmin(finite))
        raise InvalidArgument.single(
            f"features[{bad}]", f"{float(values[bad])!r} is not a finite number"
        )
    with np.errstate(over="ignore"):
        rows = values.reshape(-1, width).astype(np.float32)
    # the model takes float32: a value past its range (those that round to its largest,
    # 3.4028235e38 as written, are in it) would become infinite
    beyond = np.isinf(rows).ravel()
    if beyond.any():
        i = int(np.argmax(beyond))
        raise InvalidArgument.single(
            f"features[{i}]",
            f"{float(values[i])!r} is beyond the float32 range the model takes "
            f"(|x| <= {_FLOAT32_MAX:.8g})",
        )
    return rows


def profile_to_proto(profile: Profile) -> region_node_pb2.GetRiskProfileResponse:
    response = region_node_pb2.GetRiskProfileResponse(
        agent_id=profile.agent_id,
        evaluations=profile.evaluations,
        mean_risk=profile.mean_risk,
        max_risk=profile.max_risk,
        decision_counts={
            governance_pb2.Decision.Name(decision_to_proto(d)): n
            for d, n in profile.decision_counts.items()
        },
        recent=[
            governance_pb2.ProfileEntry(
                time=ns_to_timestamp(e.time_ns),
                decision=decision_to_proto(e.decision),
                risk_score=e.risk_score,
                request_id=e.request_id,
                action_type=e.action_type,
            )
            for e in reversed(profile.recent)
        ],
    )
    if profile.last_seen_ns:
        response.last_seen.CopyFrom(ns_to_timestamp(profile.last_seen_ns))
    return response


# -- in-region stores -------------------------------------------------------------------

_AGGREGATIONS = {
    region_node_pb2.AGGREGATION_AVG: "avg",
    region_node_pb2.AGGREGATION_SUM: "sum",
    region_node_pb2.AGGREGATION_MIN: "min",
    region_node_pb2.AGGREGATION_MAX: "max",
    region_node_pb2.AGGREGATION_COUNT: "count",
}
MAX_QUERY_LIMIT = 10_000
DEFAULT_QUERY_LIMIT = 1_000
DEFAULT_AUDIT_PAGE = 50
MAX_AUDIT_PAGE = 1_000


def ns_to_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // NANOS, tz=UTC) + timedelta(microseconds=ns % NANOS // 1000)


def utc_text(ns: int) -> str:
    """A time for a message, in UTC to the second: ``2026-12-01T02:30:00+00:00``."""
    return ns_to_datetime(ns).isoformat(timespec="seconds")


def datetime_to_timestamp(dt: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(dt)
    return ts


#: The last nanosecond a ``datetime`` holds to the microsecond (9999-12-31T23:59:59.999999).
_LAST_US_NS = MAX_TIMESTAMP_SECONDS * NANOS + NANOS - 1000


def _checked_range(msg: object) -> tuple[datetime | None, datetime | None]:
    """``[start_time, end_time)`` of a store read, to the stores' microsecond: the start
    cut down, the end rounded up (a range within one microsecond is that microsecond,
    not an empty or inverted one)."""
    start_ns = optional_timestamp_ns(msg, "start_time")
    end_ns = optional_timestamp_ns(msg, "end_time")
    if start_ns is not None and end_ns is not None and start_ns >= end_ns:
        raise InvalidArgument.single("end_time", "must be after start_time")
    start = None if start_ns is None else ns_to_datetime(start_ns)
    end = None if end_ns is None else ns_to_datetime(min(-(-end_ns // 1000) * 1000, _LAST_US_NS))
    return start, end


def _short_name(field: str, value: str) -> str | None:
    """``value`` (``None`` when empty) if the stores take it as a name: at most 256
    characters, no NUL; else INVALID_ARGUMENT naming ``field``."""
    if not value:
        return None
    try:
        check_text(field, value)
    except ValueError as exc:
        raise InvalidArgument.single(field, described(field, exc)) from None
    return value


@dataclass(frozen=True, slots=True)
class MetricsQuery:
    agent_id: str | None
    metric: str | None
    start: datetime | None
    end: datetime | None
    limit: int


def metrics_query_from_proto(req: region_node_pb2.QueryMetricsRequest) -> MetricsQuery:
    if req.limit > MAX_QUERY_LIMIT:
        raise InvalidArgument.single("limit", f"at most {MAX_QUERY_LIMIT}")
    start, end = _checked_range(req)
    return MetricsQuery(
        agent_id=_short_name("agent_id", req.agent_id),
        metric=_short_name("metric", req.metric),
        start=start,
        end=end,
        limit=req.limit or DEFAULT_QUERY_LIMIT,
    )


def metric_record_to_proto(r: MetricRecord) -> region_node_pb2.MetricRecord:
    labels = {str(k): str(v) for k, v in (r.metadata or {}).items()}
    return region_node_pb2.MetricRecord(
        time=datetime_to_timestamp(r.timestamp),
        agent_id=r.agent_id,
        metric=r.metric_name,
        value=r.metric_value,
        region_id=r.region_id,
        labels=labels,
    )


@dataclass(frozen=True, slots=True)
class AggregateQuery:
    metric: str
    aggregation: str
    bucket: timedelta
    start: datetime
    end: datetime
    agent_id: str | None


MAX_BUCKET_NS = 366 * 86_400 * NANOS


def _bucket_problem(bucket_ns: int, bad: list[FieldViolation]) -> None:
    """Add to ``bad`` what is wrong with an aggregation bucket of ``bucket_ns``."""
    if bucket_ns <= 0:
        bad.append(FieldViolation("bucket", "must be longer than zero"))
    elif bucket_ns < 1000:
        bad.append(FieldViolation("bucket", "at least 1 µs (the stores' resolution)"))
    elif bucket_ns > MAX_BUCKET_NS:
        bad.append(FieldViolation("bucket", "at most 366 days"))


def aggregate_query_from_proto(req: region_node_pb2.AggregateMetricsRequest) -> AggregateQuery:
    bad: list[FieldViolation] = []
    if not req.metric:
        bad.append(FieldViolation("metric", "must not be empty"))
    aggregation = _AGGREGATIONS.get(req.aggregation)
    if aggregation is None:
        bad.append(FieldViolation("aggregation", "one of AVG, SUM, MIN, MAX, COUNT"))
    bucket_ns = 0
    if not req.HasField("bucket"):  # as start_time and end_time below
        bad.append(FieldViolation("bucket", "required"))
    else:
        try:
            bucket_ns = checked_duration_ns(req.bucket, "bucket")
        except InvalidArgument as exc:
            bad.extend(exc.violations())
        else:
            _bucket_problem(bucket_ns, bad)
    for name in ("start_time", "end_time"):
        if not req.HasField(name):
            bad.append(FieldViolation(name, "required"))
    if bad:
        raise InvalidArgument(message="invalid aggregation request", field_violations=bad)
    start, end = _checked_range(req)
    assert start is not None and end is not None and aggregation is not None
    metric = _short_name("metric", req.metric)
    assert metric is not None  # not empty: checked above
    return AggregateQuery(
        metric=metric,
        aggregation=aggregation,
        bucket=timedelta(microseconds=bucket_ns / 1000),
        start=start,
        end=end,
        agent_id=_short_name("agent_id", req.agent_id),
    )


def aggregate_rows_to_proto(rows: list[AggregateRow]) -> region_node_pb2.AggregateMetricsResponse:
    return region_node_pb2.AggregateMetricsResponse(
        buckets=[
            region_node_pb2.MetricBucket(
                start_time=datetime_to_timestamp(r.bucket_start), value=r.value, count=r.count
            )
            for r in rows
        ]
    )


def audit_query_from_proto(req: region_node_pb2.SearchAuditRequest) -> SearchQuery:
    if req.page_size > MAX_AUDIT_PAGE:
        raise InvalidArgument.single("page_size", f"at most {MAX_AUDIT_PAGE}")
    start, end = _checked_range(req)
    decision = decision_from_proto(req.decision, "decision")
    min_risk = req.min_risk if req.HasField("min_risk") else None
    if min_risk is not None and not 0.0 <= min_risk <= 1.0:
        raise InvalidArgument.single("min_risk", "must be in [0, 1]")
    # empty: any agent; else an agent id (the filter's own check would be reported as
    # the query's)
    if req.agent_id and (bad := agent_id_violation("agent_id", req.agent_id)) is not None:
        raise InvalidArgument.single(bad.field, bad.description)
    try:
        flt = AuditFilter(
            text=req.query or None,
            agent_id=req.agent_id or None,
            decision=decision,
            start_time=start,
            end_time=end,
            min_risk_score=min_risk,
        )
        return SearchQuery(
            filter=flt,
            page_size=req.page_size or DEFAULT_AUDIT_PAGE,
            page_token=req.page_token or None,
        )
    except ValueError as exc:
        raise InvalidArgument.single("query", described("query", exc)) from None


def audit_page_to_proto(page: SearchPage) -> region_node_pb2.SearchAuditResponse:
    return region_node_pb2.SearchAuditResponse(
        records=[
            region_node_pb2.AuditRecord(
                id=r.action_id,
                time=datetime_to_timestamp(r.timestamp),
                agent_id=r.agent_id,
                action_type=r.action_type,
                action_text=r.action_text,
                stated_intent=r.stated_intent,
                decision=decision_to_proto(r.decision),
                risk_score=r.risk_score,
                region_id=r.region_id,
            )
            for r in page.records
        ],
        next_page_token=page.next_page_token or "",
    )


def store_status_to_proto(choice: BackendChoice) -> region_node_pb2.StoreStatus:
    return region_node_pb2.StoreStatus(
        store=choice.store,
        backend=choice.backend,
        requested=choice.requested,
        reason=choice.reason,
        problem=choice.problem,
    )


def model_summary_to_proto(summary: ModelSummary) -> region_node_pb2.ModelInfo:
    return region_node_pb2.ModelInfo(
        name=summary.name,
        feature_width=summary.feature_width,
        feature_version=summary.feature_version,
        engine=summary.engine,
    )


# -- privacy ----------------------------------------------------------------------------

_MECHANISMS = {
    "laplace": summary_pb2.NOISE_MECHANISM_LAPLACE,
    "geometric": summary_pb2.NOISE_MECHANISM_GEOMETRIC,
}


def noise_error_to_proto(e: NoiseError) -> summary_pb2.NoiseError:
    return summary_pb2.NoiseError(stddev=e.stddev, expected_abs=e.expected_abs)


def _noise_error_from_proto(msg: summary_pb2.NoiseError, field: str) -> NoiseError:
    if not (math.isfinite(msg.stddev) and math.isfinite(msg.expected_abs)):
        raise InvalidArgument.single(field, "must be finite")
    if msg.stddev < 0 or msg.expected_abs < 0:
        raise InvalidArgument.single(field, "must not be negative")
    return NoiseError(msg.stddev, msg.expected_abs)


def data_gap_to_proto(gap: DataGap) -> region_node_pb2.DataGap:
    msg = region_node_pb2.DataGap(reason=gap.reason, message=gap.message)
    if gap.start_ns is not None:
        msg.start_time.CopyFrom(ns_to_timestamp(gap.start_ns))
    if gap.end_ns is not None:
        msg.end_time.CopyFrom(ns_to_timestamp(gap.end_ns))
    return msg


def data_gap_from_proto(msg: region_node_pb2.DataGap) -> DataGap:
    return DataGap(
        reason=msg.reason,
        start_ns=timestamp_to_ns(msg.start_time) if msg.HasField("start_time") else None,
        end_ns=timestamp_to_ns(msg.end_time) if msg.HasField("end_time") else None,
        message=msg.message,
    )


def privacy_info_to_proto(info: ReleaseInfo) -> summary_pb2.PrivacyInfo:
    return summary_pb2.PrivacyInfo(
        noised=info.noised,
        epsilon=info.epsilon,
        delta=info.delta,
        mechanism=_MECHANISMS.get(info.mechanism, summary_pb2.NOISE_MECHANISM_UNSPECIFIED),
        count_error=noise_error_to_proto(info.count_error),
        sum_error=noise_error_to_proto(info.sum_error),
        bucket_error=noise_error_to_proto(info.bucket_error),
        min_count=info.min_count,
        lower_bound=info.lower_bound,
        upper_bound=info.upper_bound,
    )


def privacy_info_from_proto(msg: summary_pb2.PrivacyInfo, field: str) -> ReleaseInfo | None:
    """None when the summaries were not noised."""
    if not msg.noised:
        return None
    mechanism = {v: k for k, v in _MECHANISMS.items()}.get(msg.mechanism)
    if mechanism is None:
        raise InvalidArgument.single(f"{field}.mechanism", "unknown noise mechanism")
    return ReleaseInfo(
        noised=True,
        epsilon=msg.epsilon,
        delta=msg.delta,
        mechanism=mechanism,
        count_error=_noise_error_from_proto(msg.count_error, f"{field}.count_error"),
        sum_error=_noise_error_from_proto(msg.sum_error, f"{field}.sum_error"),
        bucket_error=_noise_error_from_proto(msg.bucket_error, f"{field}.bucket_error"),
        min_count=msg.min_count,
        lower_bound=msg.lower_bound,
        upper_bound=msg.upper_bound,
    )
