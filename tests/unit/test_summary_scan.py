"""The compiled scan of a node's answer against protobuf's parse of the same bytes.

``convert.summaries_answer_from_bytes`` reads an encoded ``GetSummariesResponse`` with
:mod:`nethical_grpc.summary_scan` and falls back to protobuf for encodings the scan
leaves alone. Whatever the bytes, it must give what the protobuf path gives: the same
summaries, or the same refusal with the same message.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.summary_stream import _open_answer
from nethical_grpc import convert, summary_scan, wire
from nethical_grpc.jit import is_jit_available
from nethical_grpc.summary import Summary
from nethical_grpc.summary.exponential_histogram import index_limits
from nethical_grpc.v1 import region_node_pb2, summary_pb2

Response = region_node_pb2.GetSummariesResponse

needs_jit = pytest.mark.skipif(not is_jit_available(), reason="the scan is compiled")


def same_answer(a: convert.SummariesAnswer, b: convert.SummariesAnswer) -> None:
    assert (a.instance_id, a.scope, a.data_as_of_ns, a.invalid) == (
        b.instance_id,
        b.scope,
        b.data_as_of_ns,
        b.invalid,
    )
    assert a.privacy == b.privacy
    assert len(a.groups) == len(b.groups)
    for x, y in zip(a.groups, b.groups, strict=True):
        assert (x.metric, x.labels, x.start_ns, x.end_ns) == (
            y.metric,
            y.labels,
            y.start_ns,
            y.end_ns,
        )
        assert x.summary.moments == y.summary.moments
        assert x.summary.histogram == y.summary.histogram
        assert x.summary.histogram.scale == y.summary.histogram.scale


def both_ways(data: bytes) -> convert.SummariesAnswer:
    """The answer through the scan (when it takes the bytes), checked against protobuf."""
    try:
        parsed = Response.FromString(data)
    except Exception:
        parsed = None
    answer = convert.summaries_answer_from_bytes(data)
    if parsed is None:  # refused by protobuf: refused as protobuf refuses it
        assert (answer.invalid, answer.groups) == ("the answer is not a GetSummariesResponse", [])
    else:
        same_answer(answer, convert._answer_from_message(parsed))
    return answer


# -- answers with valid and broken summaries ------------------------------------------

values = st.lists(
    st.one_of(
        st.floats(-1e6, 1e6, allow_nan=False),
        st.floats(1e-300, 1e300).map(lambda v: v * (-1) ** int(v * 7 % 2)),
        st.just(0.0),
    ),
    max_size=60,
)

BREAKS: dict[str, Callable[[summary_pb2.Summary], None]] = {
    "none": lambda s: None,
    "count": lambda s: setattr(s.moments, "count", s.moments.count + 1),
    "nan_sum": lambda s: setattr(s.moments, "sum", math.nan),
    "negative_m2": lambda s: setattr(s.moments, "m2", -1.0),
    "min_over_max": lambda s: (setattr(s.moments, "min", 5.0), setattr(s.moments, "max", 1.0)),
    "scale": lambda s: setattr(s.histogram, "scale", 21),
    "max_buckets": lambda s: setattr(s.histogram, "max_buckets", 3),
    "threshold": lambda s: setattr(s.histogram, "zero_threshold", -1.0),
    "narrow": lambda s: setattr(s.histogram, "max_buckets", 4),
    "zero_edges": lambda s: (
        s.histogram.positive.bucket_counts.insert(0, 0),
        s.histogram.positive.bucket_counts.append(0),
        setattr(s.histogram.positive, "offset", s.histogram.positive.offset - 1),
    ),
    "int32_edge": lambda s: setattr(s.histogram.negative, "offset", 2**31 - 1),
    "huge_count": lambda s: s.histogram.positive.bucket_counts.append(2**64 - 1),
    "zero_count": lambda s: setattr(s.histogram, "zero_count", s.histogram.zero_count + 3),
}


def drawn_summary(draw: st.DrawFn) -> summary_pb2.Summary:
    """A summary of drawn values and parameters, perhaps broken by one of :data:`BREAKS`."""
    summary = Summary.from_values(
        np.array(draw(values), dtype=np.float64),
        scale=draw(st.integers(-2, 8)),
        max_buckets=draw(st.sampled_from([8, 64, 2048])),
        zero_threshold=draw(st.sampled_from([0.0, 1e-3])),
    )
    msg = convert.summary_to_proto(summary)
    BREAKS[draw(st.sampled_from(sorted(BREAKS)))](msg)
    return msg


@st.composite
def answers(draw: st.DrawFn) -> Response:
    series = []
    for _ in range(draw(st.integers(0, 4))):
        msg = drawn_summary(draw)
        series.append(
            summary_pb2.SeriesSummary(
                metric=draw(st.sampled_from(["latency_ms", "risk.score", "", "bad name", "é"])),
                labels=draw(
                    st.dictionaries(
                        st.sampled_from(["region", "shard", "ünï"]), st.text(max_size=5), max_size=3
                    )
                ),
                summary=msg,
                start_time=convert.ns_to_timestamp(draw(st.integers(0, 2**62))),
                end_time=convert.ns_to_timestamp(draw(st.integers(0, 2**62))),
                mean_error=draw(st.sampled_from([0.0, 0.25])),
            )
        )
    msg = Response(
        series=series,
        region_id=draw(st.sampled_from(["", "eu-west-1"])),
        instance_id=draw(st.sampled_from(["", "node-a"])),
        scope=draw(st.sampled_from([0, 1, 2, 7])),
    )
    if draw(st.booleans()):
        msg.data_as_of.CopyFrom(convert.ns_to_timestamp(draw(st.integers(0, 2**62))))
    if draw(st.booleans()):
        msg.privacy.CopyFrom(
            summary_pb2.PrivacyInfo(
                noised=True,
                epsilon=draw(st.sampled_from([0.5, -1.0])),
                mechanism=summary_pb2.NOISE_MECHANISM_LAPLACE,
                count_error=summary_pb2.NoiseError(stddev=1.0, expected_abs=0.8),
                sum_error=summary_pb2.NoiseError(stddev=1.0, expected_abs=0.8),
                bucket_error=summary_pb2.NoiseError(stddev=1.0, expected_abs=0.8),
                upper_bound=10.0,
            )
        )
    return msg


@needs_jit
@settings(max_examples=300, deadline=None)
@given(msg=answers())
def test_the_scan_gives_what_protobuf_gives(msg: Response) -> None:
    data = msg.SerializeToString()
    assert summary_scan.scan(data) is not None  # what protobuf writes, the scan reads
    both_ways(data)
    same_answer(convert.summaries_answer_from_proto(msg), convert._answer_from_message(msg))


@needs_jit
def test_a_total_count_at_the_int64_limit_is_kept_and_one_past_it_refused() -> None:
    for total, refused in ((2**63 - 1, False), (2**63, True)):
        summary = summary_pb2.Summary(
            moments=summary_pb2.Moments(count=total, sum=float(total), min=1.0, max=1.0, mean=1.0),
            histogram=summary_pb2.ExponentialHistogram(
                scale=0,
                max_buckets=160,
                positive=summary_pb2.ExponentialHistogram.Buckets(
                    offset=-1, bucket_counts=[total - 5, 5]
                ),
            ),
        )
        answer = both_ways(
            Response(
                series=[summary_pb2.SeriesSummary(metric="m", summary=summary)]
            ).SerializeToString()
        )
        assert (answer.invalid is not None) is refused
        if refused:
            assert "overflows int64" in answer.invalid  # type: ignore[operator]
        else:
            assert answer.groups[0].summary.count == total


# -- encodings the scan leaves to protobuf, and bytes that do not parse ---------------


def one_series(**histogram: object) -> Response:
    summary = convert.summary_to_proto(Summary.from_values(np.array([1.0, 2.0, 4.0, -3.0])))
    for name, value in histogram.items():
        setattr(summary.histogram, name, value)
    return Response(series=[summary_pb2.SeriesSummary(metric="m", summary=summary)])


def tag(number: int, wire_type: int) -> bytes:
    return wire.varint(number << 3 | wire_type)


@needs_jit
def test_unknown_fields_are_skipped_at_every_level() -> None:
    msg = one_series()
    unknown = (
        tag(99, 0) + wire.varint(7) + tag(98, 2) + wire.varint(2) + b"xy" + tag(97, 5) + b"abcd"
    )
    msg.series[0].summary.histogram.positive.MergeFromString(unknown)
    msg.series[0].summary.moments.MergeFromString(unknown)
    msg.series[0].MergeFromString(unknown)
    msg.MergeFromString(unknown)
    data = msg.SerializeToString()
    assert summary_scan.scan(data) is not None
    answer = both_ways(data)
    assert answer.invalid is None and answer.groups[0].summary.count == 4


def test_a_series_field_unknown_here_is_skipped_wherever_it_stands() -> None:
    """Field 7 of a series (the next one it may get; the answer's own field 7, its gaps,
    goes to protobuf) before the series' other fields: skipped, the rest read."""
    msg = one_series()
    series = tag(7, 0) + wire.varint(3) + msg.series[0].SerializeToString()
    del msg.series[:]
    data = wire.packed_field(1, series) + msg.SerializeToString()
    if is_jit_available():
        assert summary_scan.scan(data) is not None
    answer = both_ways(data)
    assert answer.invalid is None and answer.groups[0].summary.count == 4
    assert answer.groups[0].metric == "m"


def series_bytes(summary: bytes) -> bytes:
    return wire.packed_field(1, wire.packed_field(1, b"m") + summary)


@needs_jit
def test_unpacked_bucket_counts_go_through_protobuf() -> None:
    """Parsers must accept a repeated number written one field per element."""
    msg = one_series()
    histogram = msg.series[0].summary.histogram
    pos = histogram.positive
    counts = list(pos.bucket_counts)
    buckets = tag(1, 0) + wire.varint((pos.offset << 1) ^ (pos.offset >> 31))
    buckets += b"".join(tag(2, 0) + wire.varint(c) for c in counts)
    histogram.ClearField("positive")
    summary = summary_pb2.Summary(moments=msg.series[0].summary.moments)
    histogram_bytes = histogram.SerializeToString() + wire.packed_field(4, buckets)
    data = series_bytes(
        wire.packed_field(3, summary.SerializeToString() + wire.packed_field(2, histogram_bytes))
    )
    assert Response.FromString(data).series[0].summary.histogram.positive.bucket_counts == counts
    assert summary_scan.scan(data) is None
    answer = both_ways(data)
    assert answer.invalid is None and answer.groups[0].summary.count == 4


@needs_jit
def test_a_message_field_written_twice_goes_through_protobuf() -> None:
    """Protobuf merges the occurrences: here moments in one, the histogram in the other."""
    summary = one_series().series[0].summary
    first = summary_pb2.Summary(moments=summary.moments).SerializeToString()
    second = summary_pb2.Summary(histogram=summary.histogram).SerializeToString()
    data = series_bytes(wire.packed_field(3, first) + wire.packed_field(3, second))
    assert summary_scan.scan(data) is None
    answer = both_ways(data)
    assert answer.invalid is None and answer.groups[0].summary.count == 4


@needs_jit
@given(msg=answers(), cut=st.integers(1, 300), at=st.integers(0, 10**6), flip=st.integers(1, 255))
@settings(max_examples=500, deadline=None)
def test_damaged_bytes_give_the_protobuf_verdict(
    msg: Response, cut: int, at: int, flip: int
) -> None:
    data = bytearray(msg.SerializeToString())
    both_ways(bytes(data[: max(0, len(data) - cut)]))
    if data:
        data[at % len(data)] ^= flip
        both_ways(bytes(data))


def test_without_numba_the_answer_comes_from_protobuf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(summary_scan, "is_jit_available", lambda: False)
    data = one_series().SerializeToString()
    assert summary_scan.scan(data) is None
    answer = convert.summaries_answer_from_bytes(data)
    assert answer.invalid is None and answer.groups[0].summary.count == 4


# -- the stream's envelope -------------------------------------------------------------


@given(
    query_id=st.integers(0, 2**64 - 1),
    parts=st.lists(st.sampled_from(["summaries", "error", "unknown"]), max_size=4),
)
@settings(max_examples=200, deadline=None)
def test_the_envelope_reads_as_protobuf_reads_it(query_id: int, parts: list[str]) -> None:
    """Occurrences merge, the last oneof member wins, unknown fields are skipped."""
    data = region_node_pb2.StreamSummariesResponse(query_id=query_id).SerializeToString()
    for i, part in enumerate(parts):
        if part == "summaries":
            body = Response(region_id=f"r{i}", series=[summary_pb2.SeriesSummary(metric=f"m{i}")])
            data += wire.packed_field(2, body.SerializeToString())
        elif part == "error":
            err = region_node_pb2.SummaryQueryError(code=3 + i, message=f"bad {i}")
            data += wire.packed_field(3, err.SerializeToString())
        else:
            data += tag(50, 0) + wire.varint(i)
    expected = region_node_pb2.StreamSummariesResponse.FromString(data)
    got_id, error, summaries = _open_answer(data)
    assert got_id == expected.query_id
    if expected.WhichOneof("result") == "error":
        assert error is not None
        assert region_node_pb2.SummaryQueryError.FromString(error) == expected.error
    else:
        assert error is None
        assert Response.FromString(summaries) == expected.summaries


def test_an_envelope_that_does_not_parse_is_an_error() -> None:
    with pytest.raises(ValueError):
        _open_answer(tag(2, 2) + wire.varint(10) + b"short")
    with pytest.raises(ValueError):
        _open_answer(tag(1, 1) + b"1234567")  # a fixed64 cut short (protobuf refuses it)
    # a whole fixed64 where the id is a varint: skipped, as protobuf skips it
    assert _open_answer(tag(1, 1) + b"12345678") == (0, None, b"")


@needs_jit
def test_an_answer_of_many_labelled_series_reads_whole() -> None:
    """Past the scan's first row and label capacity: every series and pair is kept."""
    rng = np.random.default_rng(7)
    series = [
        summary_pb2.SeriesSummary(
            metric=f"metric_{i % 7}",
            labels={"shard": str(i), "zone": f"z{i % 3}", "host": f"h{i}"},
            summary=convert.summary_to_proto(Summary.from_values(rng.lognormal(size=50))),
        )
        for i in range(300)
    ]
    data = Response(series=series, instance_id="node-a").SerializeToString()
    assert summary_scan.scan(data) is not None
    answer = both_ways(data)
    assert len(answer.groups) == 300 and answer.invalid is None
    assert answer.groups[299].labels == (("host", "h299"), ("shard", "299"), ("zone", "z2"))


# -- the compiled value checks against the per-series checks -------------------------

#: Changes that put one value of a valid summary at or just across the edge of a check.
EDGES: dict[str, Callable[[summary_pb2.Summary, int], None]] = {
    "mean_past_max": lambda s, k: setattr(
        s.moments, "mean", s.moments.max + k * 1e-9 * max(abs(s.moments.min), abs(s.moments.max))
    ),
    "mean_past_min": lambda s, k: setattr(
        s.moments, "mean", s.moments.min - k * 1e-9 * max(abs(s.moments.min), abs(s.moments.max))
    ),
    "m2_at_bound": lambda s, k: setattr(
        s.moments,
        "m2",
        s.moments.count
        * ((s.moments.max - s.moments.min) * (s.moments.max - s.moments.min) / 4)
        * (1 + k * 1e-9),
    ),
    "sum_at_count_max": lambda s, k: setattr(
        s.moments, "sum", s.moments.count * (s.moments.max + k * 5e-10 * magnitude(s.moments))
    ),
    "sum_at_count_min": lambda s, k: setattr(
        s.moments, "sum", s.moments.count * (s.moments.min - k * 5e-10 * magnitude(s.moments))
    ),
    "compensation_ulps": lambda s, k: setattr(
        s.moments, "sum_compensation", k * 0.5 * math.ulp(s.moments.sum)
    ),
    "single_spread": lambda s, k: single_value(s, k),
    "min_over_max": lambda s, k: equal_values_min_moved(s.moments, k),
    "huge_min": lambda s, k: setattr(s.moments, "min", -(10.0 ** (99 + k))),
    "infinite_max": lambda s, k: setattr(s.moments, "max", math.inf * k if k else s.moments.max),
    "empty_moments": lambda s, k: (
        s.moments.Clear(),
        setattr(s.moments, ["m2", "sum", "mean", "sum_compensation", "min"][k], 0.5),
        s.histogram.ClearField("positive"),
        s.histogram.ClearField("negative"),
        setattr(s.histogram, "zero_count", 0),
    ),
    "zero_buckets_int32": lambda s, k: zero_buckets_near_int32(s.histogram, k),
    "count_near_2_53": lambda s, k: (
        setattr(s.moments, "count", 2**53 + k - 2),
        s.histogram.Clear(),
        setattr(s.histogram, "max_buckets", 160),
        s.histogram.positive.bucket_counts.extend([2**53 + k - 2]),
        setattr(s.moments, "min", 1.0),
        setattr(s.moments, "max", 1.0),
        setattr(s.moments, "mean", 1.0),
        setattr(s.moments, "m2", 0.0),
        setattr(s.moments, "sum", float(2**53 + k - 2)),
        setattr(s.moments, "sum_compensation", 0.0),
    ),
    "span_at_max_buckets": lambda s, k: setattr(
        s.histogram,
        "max_buckets",
        max(4, len(s.histogram.positive.bucket_counts) + k - 2),
    ),
    "index_at_limit": lambda s, k: at_index_limit(s.histogram, k),
    "offset_int32": lambda s, k: setattr(s.histogram.negative, "offset", 2**31 - 1 - k),
    "scale_edges": lambda s, k: setattr(s.histogram, "scale", [-11, -10, 20, 21][k % 4]),
    "threshold_edges": lambda s, k: setattr(
        s.histogram, "zero_threshold", [-0.0, -1e-300, math.inf, math.nan][k % 4]
    ),
    "zero_count_off": lambda s, k: setattr(
        s.histogram, "zero_count", max(0, s.histogram.zero_count + k - 2)
    ),
}


def magnitude(m: summary_pb2.Moments) -> float:
    return max(abs(m.min), abs(m.max))


def equal_values_min_moved(m: summary_pb2.Moments, k: int) -> None:
    """Moments of ``count`` equal values, then the min moved below, to, or just above
    the max (within the checks' tolerance of the mean)."""
    v = m.max if m.max else 1.0
    m.max = m.mean = v
    m.sum = m.count * v
    m.sum_compensation = m.m2 = 0.0
    m.min = v + (k - 2) * 1e-12 * abs(v)


def single_value(s: summary_pb2.Summary, k: int) -> None:
    """One observation, with a max ``k`` steps above its min (a spread only when k > 0)."""
    value = 1.5
    top = value
    for _ in range(k):
        top = math.nextafter(top, math.inf)
    s.moments.CopyFrom(summary_pb2.Moments(count=1, sum=value, min=value, max=top, mean=value))
    s.histogram.ClearField("negative")
    s.histogram.zero_count = 0
    s.histogram.positive.CopyFrom(
        summary_pb2.ExponentialHistogram.Buckets(offset=0, bucket_counts=[1])
    )
    s.histogram.scale = 0


def zero_buckets_near_int32(h: summary_pb2.ExponentialHistogram, k: int) -> None:
    """Negative buckets of zero counts only, ending below, at or past the int32 limit
    (their observations move to the zero bucket)."""
    h.zero_count += sum(h.negative.bucket_counts)
    h.negative.ClearField("bucket_counts")
    h.negative.bucket_counts.extend([0] * k)
    h.negative.offset = 2**31 - 3


def at_index_limit(h: summary_pb2.ExponentialHistogram, k: int) -> None:
    """Move the positive buckets to the lowest or highest index of a finite double at the
    histogram's scale, or one past it."""
    lo_lim, hi_lim = index_limits(h.scale)
    n = len(h.positive.bucket_counts)
    h.positive.offset = [lo_lim, lo_lim - 1, hi_lim - n + 1, hi_lim - n + 2, 0][k]


def per_series_verdict(msg: Response) -> bool:
    """Whether the per-series checks accept every series."""
    return convert._answer_from_message(msg).invalid is None


@needs_jit
@pytest.mark.parametrize("edge", sorted(EDGES))
@pytest.mark.parametrize("k", range(5))
@settings(max_examples=12, deadline=None)
@given(data=values.filter(lambda v: len(v) >= 2), scale=st.integers(-2, 8))
def test_the_compiled_value_checks_agree_with_the_per_series_checks(
    edge: str, k: int, data: list[float], scale: int
) -> None:
    """At the edge of every value check, just inside and just past it: the compiled
    checks pass an answer exactly when the per-series checks accept it (counts of 2**53
    and more are left to them), and the answer is the same either way."""
    summary = convert.summary_to_proto(
        Summary.from_values(np.array(data, dtype=np.float64), scale=scale, max_buckets=64)
    )
    EDGES[edge](summary, k)
    msg = Response(series=[summary_pb2.SeriesSummary(metric="m", summary=summary)])
    scanned = summary_scan.scan(msg.SerializeToString())
    assert scanned is not None
    fast = summary_scan.values_valid(scanned)
    if summary.moments.count >= 2**53:
        assert not fast  # left to the per-series checks
    else:
        assert fast == per_series_verdict(msg)
    both_ways(msg.SerializeToString())


@needs_jit
def test_every_summary_a_node_sends_passes_the_compiled_checks() -> None:
    """The compiled checks are the usual path: real summaries (negatives, zeros, wide
    spreads, one value, none) pass them, so their per-series checks are skipped."""
    rng = np.random.default_rng(5)
    parts = [
        rng.lognormal(0.0, 2.0, 5_000),
        -rng.lognormal(3.0, 1.0, 100),
        np.zeros(7),
        np.array([42.0]),
        np.array([]),
        rng.normal(0.0, 1e90, 50),
    ]
    series = [
        summary_pb2.SeriesSummary(
            metric=f"m{i}", summary=convert.summary_to_proto(Summary.from_values(v))
        )
        for i, v in enumerate([*parts, np.concatenate(parts)])
    ]
    scanned = summary_scan.scan(Response(series=series).SerializeToString())
    assert scanned is not None and summary_scan.values_valid(scanned)


@needs_jit
def test_metric_names_are_checked_every_time_and_remembered_within_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(convert, "_CHECKED_METRICS", {})
    monkeypatch.setattr(convert, "_CHECKED_METRICS_BOUND", 3)
    summary = convert.summary_to_proto(Summary.from_values(np.array([1.0, 2.0])))

    def answer(*metrics: str) -> convert.SummariesAnswer:
        series = [summary_pb2.SeriesSummary(metric=m, summary=summary) for m in metrics]
        return convert.summaries_answer_from_bytes(Response(series=series).SerializeToString())

    for _ in range(2):  # a refused name is refused again, never remembered
        refused = answer("latency_ms", "bad name")
        assert (
            refused.groups == []
            and refused.invalid
            and '"bad name" is not a valid name' in refused.invalid
        )
    assert convert._CHECKED_METRICS == {b"latency_ms": "latency_ms"}
    names = [f"m{i}" for i in range(5)]
    assert [g.metric for g in answer(*names).groups] == names
    assert 0 < len(convert._CHECKED_METRICS) <= 3  # cleared when full, not grown


# -- stored windows, decoded many at a time ---------------------------------------------


@st.composite
def stored(draw: st.DrawFn) -> list[bytes]:
    """Encoded summaries as a node stores its windows, some perhaps broken."""
    out = []
    for _ in range(draw(st.integers(0, 6))):
        out.append(drawn_summary(draw).SerializeToString())
    return out


def one_by_one(payloads: list[bytes]) -> list[Summary] | None:
    try:
        return [convert.summary_from_proto(summary_pb2.Summary.FromString(p)) for p in payloads]
    except Exception:
        return None


@settings(max_examples=300, deadline=None)
@given(payloads=stored(), batch=st.integers(1, 4))
def test_stored_summaries_decode_together_as_one_by_one(payloads: list[bytes], batch: int) -> None:
    """The same summaries, or None where decoding them one by one refuses any; in
    batches of any size."""
    together = convert.summaries_from_stored(payloads, batch)
    alone = one_by_one(payloads)
    if alone is None:
        assert together is None
        return
    assert together is not None and len(together) == len(alone)
    for x, y in zip(together, alone, strict=True):
        assert x.moments == y.moments
        assert x.histogram == y.histogram and x.histogram.scale == y.histogram.scale


@settings(max_examples=150, deadline=None)
@given(
    payloads=stored(),
    more=st.lists(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), max_size=20),
)
def test_stored_summaries_take_new_data_as_any_summary_does(
    payloads: list[bytes], more: list[float]
) -> None:
    """A restored window may be the open one, and new data goes into it. Decoded in a
    batch (whose empty sides share one read-only array) and compacted as a restore
    leaves it, a summary takes an update as the same summary decoded alone does (a
    restored window with an empty side failed every update with Numba's typing error)."""
    together = convert.summaries_from_stored(payloads)
    alone = one_by_one(payloads)
    if together is None or alone is None:
        return
    values = np.array(more, dtype=np.float64)
    for x, y in zip(together, alone, strict=True):
        x.compact()
        x.update(values)
        y.update(values)
        assert x.moments == y.moments
        assert x.histogram == y.histogram and x.histogram.scale == y.histogram.scale


def test_a_stored_payload_that_is_no_summary_is_refused() -> None:
    good = convert.summary_to_proto(Summary.from_values(np.arange(1.0, 9.0))).SerializeToString()
    assert convert.summaries_from_stored([]) == []
    assert convert.summaries_from_stored([good, b"\xff\xff\xff"]) is None
    [decoded] = convert.summaries_from_stored([good]) or []
    assert decoded.count == 8
