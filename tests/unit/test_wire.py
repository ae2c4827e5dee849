"""Hand-encoded packed varints equal what protobuf writes, on both kernel paths."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nethical_grpc import wire
from nethical_grpc.v1 import region_node_pb2, summary_pb2

counts = hnp.arrays(np.uint64, st.integers(0, 300), elements=st.integers(0, 2**64 - 1))

KERNELS = [wire._varints_numpy, wire._varints_numba]


@pytest.mark.parametrize("kernel", KERNELS)
@settings(max_examples=200, deadline=None)
@given(values=counts)
def test_packed_counts_match_protobuf(kernel, values: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    expected = summary_pb2.ExponentialHistogram.Buckets(bucket_counts=values.tolist())
    got = summary_pb2.ExponentialHistogram.Buckets()
    payload = kernel(values).tobytes()
    if values.size:
        got.MergeFromString(wire.packed_field(2, payload))
    assert got == expected
    assert got.SerializeToString() == expected.SerializeToString()


@settings(max_examples=200, deadline=None)
@given(
    query_id=st.integers(0, 2**64 - 1),
    metrics=st.lists(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), max_size=4),
)
def test_an_encoded_stream_answer_is_the_message_protobuf_writes(
    query_id: int, metrics: list[str]
) -> None:
    """What a node sends on StreamSummaries: the query id's field, then the answer's."""
    answer = region_node_pb2.GetSummariesResponse(
        series=[summary_pb2.SeriesSummary(metric=m) for m in metrics], region_id="r1"
    )
    encoded = wire.varint_field(1, query_id) + wire.packed_field(2, answer.SerializeToString())
    expected = region_node_pb2.StreamSummariesResponse(query_id=query_id, summaries=answer)
    assert encoded == expected.SerializeToString()
    assert region_node_pb2.StreamSummariesResponse.FromString(encoded) == expected


def _fixed_field(number: int, wire_type: int, value: int) -> bytes:
    size = 8 if wire_type == 1 else 4
    return wire.varint((number << 3) | wire_type) + value.to_bytes(size, "little")


@settings(max_examples=200, deadline=None)
@given(
    query_id=st.integers(0, 2**64 - 1),
    unknown=st.lists(
        st.tuples(st.integers(100, 2**29 - 1), st.sampled_from([1, 5]), st.integers(0, 2**32 - 1)),
        max_size=4,
    ),
    at_end=st.booleans(),
)
def test_fixed_width_fields_protobuf_skips_are_skipped(
    query_id: int, unknown: list[tuple[int, int, int]], at_end: bool
) -> None:
    """An envelope from a newer writer, with a fixed32/fixed64 field this reader does not
    know: protobuf parses it and skips the field; before, top_level_fields raised
    ValueError, so the coordinator could read no answer of such a node."""
    answer = region_node_pb2.GetSummariesResponse(region_id="r1")
    envelope = region_node_pb2.StreamSummariesResponse(query_id=query_id, summaries=answer)
    known = envelope.SerializeToString()
    extra = b"".join(_fixed_field(n, t, v) for n, t, v in unknown)
    encoded = known + extra if at_end else extra + known
    parsed = region_node_pb2.StreamSummariesResponse.FromString(encoded)
    assert (parsed.query_id, parsed.summaries) == (query_id, answer)
    assert wire.top_level_fields(encoded) == wire.top_level_fields(known)


@pytest.mark.parametrize(
    "data",
    [
        b"\x09\x00\x00",  # field 1, fixed64, 2 of its 8 bytes
        b"\x0d\x00",  # field 1, fixed32, 1 of its 4 bytes
        b"\x00\x01",  # field number 0
        b"\x0b",  # a group (wire type 3)
        b"\x0e\x00",  # wire type 6: none
    ],
)
def test_bytes_protobuf_rejects_are_value_errors(data: bytes) -> None:
    with pytest.raises(DecodeError):
        region_node_pb2.StreamSummariesResponse.FromString(data)
    with pytest.raises(ValueError):
        wire.top_level_fields(data)
