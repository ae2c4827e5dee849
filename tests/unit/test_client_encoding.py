"""The SDK's direct encoding is a valid IngestRequest, equal to the protobuf API's."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nethical_grpc.client import encode_ingest_request
from nethical_grpc.v1 import region_node_pb2


@settings(max_examples=200, deadline=None)
@given(
    metric=st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True),
    values=hnp.arrays(np.float64, st.integers(0, 300), elements=st.floats(allow_nan=False)),
    labels=st.dictionaries(
        st.from_regex(r"[a-z]{1,5}", fullmatch=True), st.text(max_size=10), max_size=3
    ),
    with_ts=st.booleans(),
    time_ns=st.none() | st.integers(0, 2**62),
)
def test_encoding_matches_protobuf(
    metric: str, values: np.ndarray, labels: dict[str, str], with_ts: bool, time_ns: int | None
) -> None:
    ts = np.arange(values.size, dtype=np.int64) * 7 - 3 if with_ts else None
    raw = encode_ingest_request(metric, values, labels, timestamps_unix_nano=ts, time_ns=time_ns)
    parsed = region_node_pb2.IngestRequest.FromString(raw)
    assert parsed.metric == metric
    assert dict(parsed.labels) == labels
    np.testing.assert_array_equal(np.asarray(parsed.values), values)
    if ts is not None and ts.size:
        np.testing.assert_array_equal(np.asarray(parsed.timestamps_unix_nano), ts)
    assert parsed.HasField("time") == (time_ns is not None)
    expected = region_node_pb2.IngestRequest(metric=metric, labels=labels, values=values.tolist())
    if ts is not None:
        expected.timestamps_unix_nano.extend(ts.tolist())
    if time_ns is not None:
        expected.time.FromNanoseconds(time_ns)
    assert parsed == expected
