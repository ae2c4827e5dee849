"""The pure parts of ``nethical-mesh metrics``, ``aggregate`` and ``score``: their
requests, their tables, and reading feature rows."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nethical_grpc.cli.args import QUERY_LIMIT_MAX, bounded_int
from nethical_grpc.cli.main import build_parser
from nethical_grpc.cli.score_command import VALUES_PER_CALL, read_rows, score_requests
from nethical_grpc.cli.timeseries_commands import (
    aggregate_request,
    aggregate_text,
    metrics_request,
    metrics_text,
)
from nethical_grpc.convert import MAX_QUERY_LIMIT
from nethical_grpc.v1 import region_node_pb2

NOW_NS = 1_764_553_200_000_000_000  # 2025-12-01T01:40:00Z


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_the_cli_limit_is_the_nodes() -> None:
    assert QUERY_LIMIT_MAX == MAX_QUERY_LIMIT


def test_bounded_int_refuses_what_is_out_of_range() -> None:
    parse = bounded_int(10)
    assert parse("1") == 1 and parse("10") == 10
    for text, message in (("0", "at least 1"), ("11", "at most 10, got 11"), ("x", "not a")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse(text)


def test_metrics_asks_one_row_more_than_it_prints_and_the_range() -> None:
    args = _args("metrics", "risk_score", "--agent-id", "a", "--since", "5m", "--limit", "20")
    request = metrics_request(args, NOW_NS)
    assert (request.metric, request.agent_id, request.limit) == ("risk_score", "a", 21)
    assert request.start_time.ToNanoseconds() == NOW_NS - 300_000_000_000
    assert not request.HasField("end_time")
    hour = metrics_request(_args("metrics"), NOW_NS)  # the last hour by default
    assert hour.start_time.ToNanoseconds() == NOW_NS - 3_600 * 10**9 and hour.limit == 101
    whole = metrics_request(
        _args("metrics", "--since", "0", "--limit", str(QUERY_LIMIT_MAX)), NOW_NS
    )
    assert whole.limit == MAX_QUERY_LIMIT  # never more than the node answers
    assert not whole.HasField("start_time") and whole.metric == ""


def _record(second: int, value: float, **labels: str) -> region_node_pb2.MetricRecord:
    r = region_node_pb2.MetricRecord(agent_id="agent-7", metric="risk_score", value=value)
    r.time.FromSeconds(NOW_NS // 1_000_000_000 + second)
    r.labels.update(labels)
    return r


def test_metrics_table_counts_its_rows_and_says_when_more_are_left() -> None:
    records = [_record(i, 0.25 * i, decision="BLOCK", action_type="query") for i in range(3)]
    full = metrics_text(region_node_pb2.QueryMetricsResponse(records=records), limit=5)
    lines = full.splitlines()
    assert lines[0].split() == ["time", "(UTC)", "agent", "metric", "value", "labels"]
    assert lines[2].split() == [
        "2025-12-01T01:40:00.000Z",
        "agent-7",
        "risk_score",
        "0",
        "action_type=query",
        "decision=BLOCK",
    ]
    assert lines[-1] == "3 rows, oldest first"
    cut = metrics_text(region_node_pb2.QueryMetricsResponse(records=records), limit=2)
    assert len(cut.splitlines()) == 2 + 2 + 1  # header, rule, two rows, the count
    assert (
        cut.splitlines()[-1]
        == "2 rows, oldest first (the first 2; a shorter --since for later ones)"
    )
    assert "0.5" not in cut  # the third row is not printed
    none = metrics_text(region_node_pb2.QueryMetricsResponse(), limit=5)
    assert none.startswith("no rows matched")


def test_aggregate_asks_for_its_buckets_over_the_last_duration() -> None:
    args = _args("aggregate", "risk_score", "--by", "max", "--bucket", "5m", "--since", "2h")
    request = aggregate_request(args, NOW_NS)
    assert request.aggregation == region_node_pb2.AGGREGATION_MAX
    assert request.bucket.ToNanoseconds() == 300_000_000_000
    assert request.end_time.ToNanoseconds() == NOW_NS
    assert request.start_time.ToNanoseconds() == NOW_NS - 7_200_000_000_000
    defaults = aggregate_request(_args("aggregate", "latency_ms"), NOW_NS)
    assert defaults.aggregation == region_node_pb2.AGGREGATION_AVG
    assert defaults.bucket.ToSeconds() == 60
    assert defaults.end_time.ToNanoseconds() - defaults.start_time.ToNanoseconds() == 3_600 * 10**9
    for by in ("avg", "sum", "min", "max", "count"):  # each choice names an aggregation
        chosen = aggregate_request(_args("aggregate", "m", "--by", by), NOW_NS)
        assert region_node_pb2.Aggregation.Name(chosen.aggregation) == f"AGGREGATION_{by.upper()}"


def test_aggregate_table_names_its_buckets_and_rows() -> None:
    args = _args("aggregate", "risk_score", "--by", "sum", "--agent-id", "agent-7")
    buckets = []
    for i, (value, count) in enumerate(((1.5, 3), (2_000.0, 1_200))):
        b = region_node_pb2.MetricBucket(value=value, count=count)
        b.start_time.FromSeconds(NOW_NS // 1_000_000_000 + 60 * i)
        buckets.append(b)
    text = aggregate_text(region_node_pb2.AggregateMetricsResponse(buckets=buckets), args)
    lines = text.splitlines()
    assert lines[0].split() == ["bucket", "start", "(UTC)", "sum", "rows"]
    assert lines[2].split() == ["2025-12-01T01:40:00.000Z", "1.5", "3"]
    assert lines[3].split() == ["2025-12-01T01:41:00.000Z", "2,000", "1,200"]
    assert lines[-1] == (
        "2 buckets with rows (1,203 rows of risk_score of agent-7); empty buckets left out"
    )
    empty = aggregate_text(region_node_pb2.AggregateMetricsResponse(), args)
    assert empty.startswith("no rows of risk_score in the range")


def test_feature_rows_skip_blank_lines_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "rows.txt"
    path.write_text("# features\n1, 2, 3\n\n4 5 6  # a note\n\t7,8,9\r\n")
    np.testing.assert_array_equal(read_rows(str(path)), [[1, 2, 3], [4, 5, 6], [7, 8, 9]])


def test_feature_rows_of_different_widths_or_no_rows_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "rows.txt"
    path.write_text("\n1 2 3\n4 5\n")
    with pytest.raises(ValueError, match=r"rows.txt, line 3: 2 values, but line 2 has 3"):
        read_rows(str(path))
    path.write_text("1 2\n3 x\n")
    with pytest.raises(ValueError, match=r"rows.txt, line 2: could not convert .*'x'"):
        read_rows(str(path))
    path.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match=r"no feature rows in \S+rows.txt"):
        read_rows(str(path))


@pytest.mark.parametrize("bad", ["nan", "inf", "-Infinity", "1e999"])
def test_a_feature_that_is_not_finite_is_refused_by_its_line(tmp_path: Path, bad: str) -> None:
    """The node refuses it as well, but would name the row within its call's rows (a file
    of several calls): here it is named by its line."""
    path = tmp_path / "rows.txt"
    path.write_text(f"1 2 3\n# a note\n4 {bad} 6\n")
    with pytest.raises(ValueError, match=r"rows.txt, line 3: value 2 is (-?inf|nan), not a finite"):
        read_rows(str(path))


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 1_500), width=st.integers(1, 400))
def test_score_calls_carry_every_row_once_in_order(rows: int, width: int) -> None:
    data = np.arange(rows * width, dtype=np.float64).reshape(rows, width)
    calls = list(score_requests(data))
    assert all(c.columns == width for c in calls)
    assert all(len(c.features) <= max(VALUES_PER_CALL, width) for c in calls)
    assert all(len(c.features) % width == 0 for c in calls)
    sent = np.concatenate([np.asarray(c.features) for c in calls])
    np.testing.assert_array_equal(sent, data.ravel())


def test_a_wide_file_takes_several_calls() -> None:
    data = np.ones((3 * VALUES_PER_CALL // 64 + 1, 64))
    assert len(list(score_requests(data))) == 4


@pytest.mark.parametrize("content", [",\n", "1 2\n, ,\n", ",,\n1 2\n"])
def test_a_row_of_only_commas_is_refused_by_its_line(tmp_path: Path, content: str) -> None:
    """Before, a row of no values was a ZeroDivisionError when the calls were cut."""
    path = tmp_path / "rows.txt"
    path.write_text(content)
    line = next(n for n, text in enumerate(content.splitlines(), 1) if not text.strip(", "))
    with pytest.raises(ValueError, match=rf"rows.txt, line {line}: a row with no values"):
        read_rows(str(path))
