"""Hand-encoded packed varints equal what protobuf writes, on both kernel paths."""

from __future__ import annotations

import numpy as np
import pytest
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
