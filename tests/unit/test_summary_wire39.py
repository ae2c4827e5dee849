"""A node's summaries written straight to bytes (``convert.group_summaries_to_wire``)
against the messages ``convert.group_summary_to_proto`` builds: the same bytes, whatever
the series (labels, summaries of any values, times before 1970, an empty window, any
mean error), and so the same answer once parsed. And ``wire.varint`` against protobuf's
own encoding of the same numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nethical_grpc import convert, wire
from nethical_grpc.series import GroupSummary
from nethical_grpc.summary import Summary
from nethical_grpc.v1 import region_node_pb2, summary_pb2

Response = region_node_pb2.GetSummariesResponse

names = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True)
texts = st.text(max_size=12)  # any text a label value may hold, the empty one too
finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)


@st.composite
def summaries(draw: st.DrawFn) -> Summary:
    values = draw(st.lists(st.one_of(finite, st.just(0.0), st.just(-0.0)), max_size=40))
    scale = draw(st.integers(-4, 8))
    max_buckets = draw(st.sampled_from([16, 160, 2048]))
    zero_threshold = draw(st.sampled_from([0.0, 1e-9, 0.5]))
    return Summary.from_values(
        np.array(values, dtype=np.float64), scale, max_buckets, zero_threshold
    )


@st.composite
def groups(draw: st.DrawFn) -> GroupSummary:
    labels = draw(st.dictionaries(names, texts, max_size=4))
    start = draw(st.integers(-(10**18), 10**18))
    return GroupSummary(
        metric=draw(st.one_of(names, st.just(""))),
        labels=tuple(sorted(labels.items())),
        summary=draw(summaries()),
        start_ns=start,
        end_ns=start + draw(st.integers(0, 10**15)),
        data_as_of_ns=0,
    )


errors = st.one_of(st.just(0.0), st.just(-0.0), st.floats(allow_nan=False), st.just(math.inf))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(groups(), errors), max_size=6), st.sampled_from([1, 3, 17]))
def test_the_bytes_are_those_of_the_messages(
    pairs: list[tuple[GroupSummary, float]], field_number: int
) -> None:
    gs, es = [g for g, _ in pairs], [e for _, e in pairs]
    encoded = convert.group_summaries_to_wire(field_number, gs, es)
    messages = [convert.group_summary_to_proto(g, mean_error=e) for g, e in pairs]
    # the same series, once parsed (as the answer's, whatever the field's number)
    as_series = b"".join(
        wire.packed_field(1, body)
        for _, body in wire.top_level_fields(encoded)  # type: ignore[arg-type]
    )
    assert [n for n, _ in wire.top_level_fields(encoded)] == [field_number] * len(gs)
    assert list(Response.FromString(as_series).series) == messages
    if all(len(g.labels) <= 1 for g in gs):
        # byte for byte (protobuf writes a map's entries in an order of its own)
        expected = b"".join(
            wire.packed_field(field_number, m.SerializeToString()) for m in messages
        )
        assert encoded == expected


def test_an_answer_of_series_and_the_rest_is_the_message_serialised() -> None:
    """Series first, then the other fields: what serialising the whole message gives."""
    g = GroupSummary("m", (("a", "1"),), Summary.from_values([1.0, -2.5, 0.0]), 0, 10, 0)
    head = Response(region_id="eu", instance_id="eu-1", gaps=[region_node_pb2.DataGap()])
    whole = Response(series=[convert.group_summary_to_proto(g)])
    whole.MergeFrom(head)
    encoded = convert.group_summaries_to_wire(1, [g], [0.0]) + head.SerializeToString()
    assert encoded == whole.SerializeToString()


def test_a_group_count_other_than_the_errors_is_refused() -> None:
    g = GroupSummary("m", (), Summary(), 0, 10, 0)
    with pytest.raises(ValueError):
        convert.group_summaries_to_wire(1, [g, g], [0.0])


@given(st.integers(0, 2**64 - 1))
def test_varint_is_protobufs(n: int) -> None:
    # a packed repeated uint64 of one value: its tag and length (one byte each), the varint
    packed = summary_pb2.ExponentialHistogram.Buckets(bucket_counts=[n]).SerializeToString()
    assert wire.varint(n) == packed[2:]


def test_a_negative_varint_is_refused() -> None:
    with pytest.raises(ValueError):
        wire.varint(-1)
