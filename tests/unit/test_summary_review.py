"""Review of the summaries: the compiled scan against protobuf on encodings protobuf
refuses, and the histogram's quantiles of very large counts."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import given, settings
from hypothesis import strategies as st

from nethical_grpc import convert, summary_scan, wire
from nethical_grpc.jit import is_jit_available
from nethical_grpc.summary import Buckets, ExponentialHistogram, Summary
from nethical_grpc.v1 import region_node_pb2, summary_pb2

Response = region_node_pb2.GetSummariesResponse
NOT_AN_ANSWER = "the answer is not a GetSummariesResponse"

needs_jit = pytest.mark.skipif(not is_jit_available(), reason="the scan is compiled")


def padded_varint(value: int, length: int) -> bytes:
    """``value`` as a varint of at least ``length`` bytes (non-canonical when longer)."""
    canonical = wire.varint(value)
    if length <= len(canonical):
        return canonical
    out = bytearray()
    for i in range(length):
        out.append((value & 0x7F) | (0x80 if i < length - 1 else 0))
        value >>= 7
    return bytes(out)


Pad = Callable[[], int]
Spoil = Callable[[bytes], bytes]


def reencode(msg: Message, pad: Pad, spoil: Spoil) -> bytes:
    """``msg`` encoded field by field, each tag and length prefix ``pad()`` bytes long at
    least, each string's bytes passed through ``spoil``."""
    out = bytearray()
    for field, value in msg.ListFields():
        wire_type = 2 if field.type in (field.TYPE_MESSAGE, field.TYPE_STRING) else None
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                entry = (
                    padded_varint(1 << 3 | 2, pad())
                    + _length_delimited(spoil(key.encode()), pad)
                    + padded_varint(2 << 3 | 2, pad())
                    + _length_delimited(spoil(item.encode()), pad)
                )
                out += padded_varint(field.number << 3 | 2, pad()) + _length_delimited(entry, pad)
            continue
        items = value if field.is_repeated else [value]
        if field.type == field.TYPE_MESSAGE:
            for item in items:
                out += padded_varint(field.number << 3 | 2, pad())
                out += _length_delimited(reencode(item, pad, spoil), pad)
        elif wire_type == 2:  # a string
            out += padded_varint(field.number << 3 | 2, pad())
            out += _length_delimited(spoil(value.encode()), pad)
        else:  # numbers: protobuf's own encoding of the field alone, a padded tag
            alone = type(msg)()
            if field.is_repeated:
                getattr(alone, field.name).extend(value)
            else:
                setattr(alone, field.name, value)
            encoded = alone.SerializeToString()
            tag = wire.varint(encoded[0] & 0x7 | field.number << 3)
            rest = encoded[len(tag) :]
            if encoded[0] & 0x7 == 2:  # packed: its length too
                n = 0
                shift = 0
                at = 0
                while True:
                    n |= (rest[at] & 0x7F) << shift
                    shift += 7
                    at += 1
                    if rest[at - 1] < 0x80:
                        break
                rest = _length_delimited(rest[at:], pad)
                assert len(rest) >= n
            out += padded_varint(encoded[0] & 0x7 | field.number << 3, pad()) + rest
    return bytes(out)


def _length_delimited(payload: bytes, pad: Pad) -> bytes:
    return padded_varint(len(payload), pad()) + payload


BAD_UTF8 = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\xe2\x82", b"\x80"]


def verdicts_agree(data: bytes) -> None:
    """The answer from the bytes is protobuf's: its summaries, or its refusal, by name."""
    answer = convert.summaries_answer_from_bytes(data)
    try:
        parsed = Response.FromString(data)
    except DecodeError:
        if is_jit_available():
            assert summary_scan.scan(data) is None
        assert (answer.invalid, answer.groups) == (NOT_AN_ANSWER, [])
        return
    expected = convert._answer_from_message(parsed)
    assert answer.invalid == expected.invalid
    assert [(g.metric, g.labels, g.summary) for g in answer.groups] == [
        (g.metric, g.labels, g.summary) for g in expected.groups
    ]
    assert answer.privacy == expected.privacy


def series(metric: str, labels: dict[str, str], values: list[float]) -> summary_pb2.SeriesSummary:
    return summary_pb2.SeriesSummary(
        metric=metric,
        labels=labels,
        summary=convert.summary_to_proto(Summary.from_values(np.array(values, dtype=np.float64))),
        start_time=convert.ns_to_timestamp(10**18),
        end_time=convert.ns_to_timestamp(2 * 10**18),
    )


@st.composite
def spoilt_answers(draw: st.DrawFn) -> bytes:
    """An answer whose first series is refused (a bad metric name), re-encoded with long
    tags and length prefixes here and there and perhaps a string not in UTF-8."""
    msg = Response(
        series=[
            series("bad name", {}, [1.0]),
            series("latency_ms", {"region": "eu", "zone": "a"}, [1.0, -2.5, 0.0, 1e100]),
        ],
        region_id="eu-west-1",
        instance_id="node-a",
    )
    msg.data_as_of.CopyFrom(convert.ns_to_timestamp(3 * 10**18))
    if draw(st.booleans()):
        msg.privacy.CopyFrom(
            summary_pb2.PrivacyInfo(
                noised=True,
                epsilon=0.5,
                count_error=summary_pb2.NoiseError(stddev=1.0, expected_abs=0.8),
            )
        )
    long_every = draw(st.sampled_from([0, 3, 10, 30]))
    lengths = draw(st.lists(st.integers(1, 10), min_size=1, max_size=40))
    counter = iter(range(10**6))

    def pad() -> int:
        k = next(counter)
        return lengths[k % len(lengths)] if long_every and k % long_every == 0 else 1

    spoil_at = draw(st.integers(-1, 12))
    bad = draw(st.sampled_from(BAD_UTF8))
    strings = iter(range(10**6))

    def spoil(text: bytes) -> bytes:
        return text + bad if next(strings) == spoil_at else text

    return reencode(msg, pad, spoil)


@given(data=spoilt_answers())
@settings(max_examples=300, deadline=None)
def test_the_scan_refuses_what_protobuf_refuses_by_the_same_words(data: bytes) -> None:
    verdicts_agree(data)


def test_the_reencoding_keeps_the_message() -> None:
    msg = Response(series=[series("m", {"k": "v"}, [1.0, 2.0, -3.0])], region_id="r")
    data = reencode(msg, lambda: 1, lambda b: b)
    assert Response.FromString(data) == msg


@needs_jit
@pytest.mark.parametrize("length", [6, 7, 10])
@pytest.mark.parametrize("where", ["tag", "length"])
def test_tags_and_lengths_longer_than_five_bytes_are_refused_as_protobuf_does(
    length: int, where: str
) -> None:
    """Protobuf refuses a tag or a length prefix of more than five bytes; the scan
    read them, and a refused first series then named that series instead."""
    msg = Response(series=[series("bad name", {}, [1.0])])
    calls = iter(range(10**6))
    long_one = 0 if where == "tag" else 2  # the first key, or the first name's length

    def pad() -> int:
        return length if next(calls) == long_one else 1

    data = reencode(msg, pad, lambda b: b)
    with pytest.raises(DecodeError):
        Response.FromString(data)
    assert summary_scan.scan(data) is None
    verdicts_agree(data)


@needs_jit
@pytest.mark.parametrize("bad", BAD_UTF8)
@pytest.mark.parametrize("where", ["metric", "key", "value", "region", "instance"])
def test_a_string_not_in_utf8_after_a_refused_series_is_refused_as_protobuf_does(
    bad: bytes, where: str
) -> None:
    msg = Response(
        series=[series("bad name", {}, [1.0]), series("m", {"k": "v"}, [2.0])],
        region_id="r",
        instance_id="i",
    )
    target = {"metric": b"m", "key": b"k", "value": b"v", "region": b"r", "instance": b"i"}[where]
    data = reencode(msg, lambda: 1, lambda b: b + bad if b == target else b)
    with pytest.raises(DecodeError):
        Response.FromString(data)
    assert summary_scan.scan(data) is None
    verdicts_agree(data)


#: bytes at the edges of UTF-8's ranges (lead bytes, continuation bytes, never-valid ones)
UTF8_EDGES = [0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0]
UTF8_EDGES += [0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF]


@needs_jit
@given(
    text=st.binary(max_size=12)
    | st.text(max_size=6).map(str.encode)
    | st.lists(st.sampled_from(UTF8_EDGES), max_size=8).map(bytes)
)
@settings(max_examples=1000, deadline=None)
def test_the_scan_takes_the_strings_protobuf_takes(text: bytes) -> None:
    """Any bytes as a metric name and an instance id: the scan reads them where
    protobuf does, and refuses them where protobuf does."""
    data = wire.packed_field(1, wire.packed_field(1, text)) + wire.packed_field(3, text)
    try:
        Response.FromString(data)
        takes = True
    except DecodeError:
        takes = False
    assert (summary_scan.scan(data) is not None) is takes


@needs_jit
def test_a_damaged_privacy_field_after_a_refused_series_is_refused_as_protobuf_does() -> None:
    head = Response(series=[series("bad name", {}, [1.0])]).SerializeToString()
    for privacy in (b"\x08", b"\x2a\x02\x09\x00", b"\x11\x00\x00"):
        data = head + wire.packed_field(6, privacy)
        with pytest.raises(DecodeError):
            Response.FromString(data)
        assert summary_scan.scan(data) is None
        verdicts_agree(data)


# -- the histogram's quantiles of very large counts -----------------------------------


@given(
    n=st.integers(2**53, 2**63 - 1),
    zero=st.integers(0, 3),
    negative=st.booleans(),
    compiled=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_quantiles_of_huge_counts_stay_in_the_buckets_that_hold_values(
    n: int, zero: int, negative: bool, compiled: bool
) -> None:
    """``floor(q * (count - 1))`` in doubles rounds past the last rank for counts above
    2**53: the highest quantiles named a bucket beyond the last one with a count."""
    counts = np.array([n - zero - 1, 1], dtype=np.uint64)
    side = Buckets(3, counts)
    h = ExponentialHistogram.from_parts(
        scale=0,
        zero_count=zero,
        positive=Buckets() if negative else side,
        negative=side if negative else Buckets(),
    )
    qs = np.array([0.0, 0.5, 1.0 - 2**-53, 1.0])
    got = h.quantiles(qs) if compiled else h._quantiles_numpy(qs)
    # values lie in buckets 3 and 4 ((8, 16] and (16, 32]) of their sign, or at zero
    mags = np.abs(got)
    assert bool(np.all((mags == 0.0) | ((mags > 8.0) & (mags <= 32.0)))), got
    top = got[-1] if not negative else got[0]
    assert math.isclose(abs(top), 16.0 * (1.0 + h.relative_error)), got
