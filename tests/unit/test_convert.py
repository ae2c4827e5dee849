"""Proto round trips preserve every summary; malformed sketches are rejected clearly."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import duration_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nethical_grpc import convert
from nethical_grpc.errors import InvalidArgument
from nethical_grpc.summary import Summary
from nethical_grpc.v1 import region_node_pb2, summary_pb2

# the node accepts magnitudes up to 1e100 (MAX_ABS_VALUE), so moments cannot overflow
finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e100, max_value=1e100)


@settings(max_examples=150, deadline=None)
@given(
    values=hnp.arrays(np.float64, st.integers(0, 400), elements=finite),
    scale=st.integers(-4, 10),
    max_buckets=st.integers(8, 512),
)
def test_summary_round_trip(values: np.ndarray, scale: int, max_buckets: int) -> None:
    s = Summary.from_values(values, scale=scale, max_buckets=max_buckets)
    wire = convert.summary_to_proto(s).SerializeToString()
    back = convert.summary_from_proto(summary_pb2.Summary.FromString(wire))
    assert back.histogram == s.histogram
    assert back.count == s.count
    if s.count:
        assert (back.min, back.max, back.mean, back.moments.m2) == (
            s.min,
            s.max,
            s.mean,
            s.moments.m2,
        )
        assert back.total == s.total
        qs = [0.0, 0.1, 0.5, 0.9, 1.0]
        np.testing.assert_array_equal(back.quantiles(qs), s.quantiles(qs))


def _valid() -> summary_pb2.Summary:
    return convert.summary_to_proto(Summary.from_values(np.array([1.0, 2.0, 3.0])))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: setattr(m.histogram, "scale", 99),
        lambda m: setattr(m.histogram, "max_buckets", 0),
        lambda m: setattr(m.moments, "count", 4),  # disagrees with the histogram
        lambda m: setattr(m.moments, "min", float("nan")),
        lambda m: setattr(m.moments, "m2", -1.0),
        lambda m: (setattr(m.moments, "min", 5.0), setattr(m.moments, "max", 1.0)),
        lambda m: setattr(m.histogram, "zero_threshold", -1.0),
        lambda m: m.histogram.positive.bucket_counts.extend([1] * 5000),  # span > max_buckets
    ],
)
def test_malformed_summaries_are_invalid_argument(mutate) -> None:  # type: ignore[no-untyped-def]
    msg = _valid()
    mutate(msg)
    with pytest.raises(InvalidArgument) as info:
        convert.summary_from_proto(msg)
    assert info.value.violations()[0].field.startswith("summary")


def test_empty_summary_round_trips() -> None:
    back = convert.summary_from_proto(convert.summary_to_proto(Summary.from_values(np.empty(0))))
    assert back.count == 0
    assert np.isnan(back.quantile(0.5))


# -- action text limits: counted in UTF-8 bytes, whatever the characters -------------------

_WIDE = st.sampled_from(["a", "é", "€", "\U0001f600", "\udc80"])  # 1 to 4 bytes, a lone surrogate


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.tuples(_WIDE, st.integers(1, 40)), max_size=6), limit=st.integers(0, 300))
def test_utf8_limit_check_agrees_with_the_encoded_length(
    parts: list[tuple[str, int]], limit: int
) -> None:
    text = "".join(ch * k for ch, k in parts)
    n = len(text.encode("utf-8", "surrogatepass"))
    assert convert._utf8_over(text, limit) == (n if n > limit else None)


def test_an_action_text_over_the_byte_limit_is_refused_and_one_at_it_accepted() -> None:
    from nethical_grpc.governance import MAX_ACTION_TEXT_BYTES
    from nethical_grpc.v1 import governance_pb2

    def act(text: str) -> governance_pb2.AgentAction:
        return governance_pb2.AgentAction(agent_id="a", action_text=text, stated_intent=text)

    at_limit = "é" * (MAX_ACTION_TEXT_BYTES // 2)  # 2 bytes each: exactly at the limit
    assert convert.action_from_proto(act(at_limit)).action.action_text == at_limit
    with pytest.raises(InvalidArgument) as refused:
        convert.action_from_proto(act(at_limit + "é"))
    fields = {v.field for v in refused.value.field_violations}
    assert fields == {"action.action_text", "action.stated_intent"}


@pytest.mark.parametrize("name", ["latency\n", "latency\nrisk", "\nlatency", "a" * 129])
def test_a_metric_or_label_name_must_be_the_whole_text(name: str) -> None:
    """A trailing newline once passed the name rule (``$`` also matches before it)."""
    from nethical_grpc.v1 import region_node_pb2

    for req in (
        region_node_pb2.IngestRequest(metric=name, values=[1.0]),
        region_node_pb2.IngestRequest(metric="latency", labels={name: "v"}, values=[1.0]),
    ):
        with pytest.raises(InvalidArgument) as err:
            convert.ingest_batch_from_proto(req, 0)
        assert "is not a valid name" in err.value.field_violations[0].description
    ok = convert.ingest_batch_from_proto(
        region_node_pb2.IngestRequest(metric="latency", labels={"a" * 128: "v"}, values=[1.0]), 0
    )
    assert ok.key.metric == "latency"


def test_an_action_type_must_be_the_whole_text() -> None:
    from nethical_grpc.v1 import governance_pb2

    with pytest.raises(InvalidArgument) as err:
        convert.action_from_proto(
            governance_pb2.AgentAction(agent_id="a", action_text="t", action_type="query\n")
        )
    assert err.value.field_violations[0].field == "action.action_type"
    assert convert.action_from_proto(
        governance_pb2.AgentAction(agent_id="a", action_text="t", action_type="query")
    )


@pytest.mark.parametrize("schema", ["metrics\n", "1metrics", "Metrics", ""])
def test_a_postgres_schema_must_be_a_whole_plain_identifier(schema: str) -> None:
    from nethical_grpc.storage.timeseries.postgres import check_schema

    with pytest.raises(ValueError, match="schema"):
        check_schema(schema)
    assert check_schema("metrics_2") == "metrics_2"


@given(ns=st.integers(-(10**18), 10**18))
def test_durations_round_trip_and_are_valid(ns: int) -> None:
    d = convert.ns_to_duration(ns)
    # the Duration rules: |nanos| < 1e9, nanos of the seconds' sign
    assert -(10**9) < d.nanos < 10**9
    assert d.seconds * d.nanos >= 0
    assert convert.checked_duration_ns(d, "f") == ns == convert.duration_to_ns(d)


@pytest.mark.parametrize(
    ("seconds", "nanos", "says"),
    [
        (1, -5, "same sign"),
        (-1, 5, "same sign"),
        (0, 10**9, "999,999,999"),
        (0, -(10**9), "999,999,999"),
        (315_576_000_001, 0, "range"),
    ],
)
def test_invalid_durations_are_refused(seconds: int, nanos: int, says: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        convert.checked_duration_ns(duration_pb2.Duration(seconds=seconds, nanos=nanos), "bucket")
    [violation] = err.value.violations()
    assert violation.field == "bucket" and says in violation.description


def test_an_aggregation_bucket_that_is_no_valid_duration_is_refused() -> None:
    req = region_node_pb2.AggregateMetricsRequest(
        metric="risk_score",
        aggregation=region_node_pb2.AGGREGATION_AVG,
        bucket=duration_pb2.Duration(seconds=1, nanos=-1),
    )
    req.start_time.FromSeconds(1_700_000_000)
    req.end_time.FromSeconds(1_700_003_600)
    with pytest.raises(InvalidArgument) as err:
        convert.aggregate_query_from_proto(req)
    assert [v.field for v in err.value.violations()] == ["bucket"]
    req.bucket.nanos = 0  # one second: accepted
    assert convert.aggregate_query_from_proto(req).bucket.total_seconds() == 1.0
