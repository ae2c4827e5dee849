"""Reading observations for ``nethical-mesh ingest``: plain values, and ``--timed``
lines of a time and a value, as they reach the node's Ingest messages."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nethical_grpc.cli.args import parse_when
from nethical_grpc.cli.observations import (
    Observations,
    parse_timed,
    read_observations,
    times_ns,
)
from nethical_grpc.cli.region_commands import _batches
from nethical_grpc.v1 import region_node_pb2

AT = 1_796_097_600_000_000_000  # 2026-12-01T04:00:00Z


def test_values_split_on_whitespace_and_commas(tmp_path: Path) -> None:
    path = tmp_path / "v.txt"
    path.write_text("1, 2.5,-3\n\t4e2   5\r\n,\n")
    read = read_observations(str(path))
    np.testing.assert_array_equal(read.values, [1.0, 2.5, -3.0, 400.0, 5.0])
    assert read.times_ns is None


def test_a_token_that_is_no_number_is_named(tmp_path: Path) -> None:
    path = tmp_path / "v.txt"
    path.write_text("1 2 3,x4")
    with pytest.raises(ValueError, match=r"v.txt, line 1: could not convert string to float: 'x4'"):
        read_observations(str(path))
    path.write_text("1 2\n\n3, 4\r\n5 six 7\n8 nine\n")  # the first bad line is named
    with pytest.raises(
        ValueError, match=r"^\S+v.txt, line 4: could not convert string to float: 'six'$"
    ):
        read_observations(str(path))


def test_timed_lines_in_every_form() -> None:
    text = (
        "1796097600.25, 1.5\n"  # Unix seconds, a comma
        "\n"
        "2026-12-01T04:00:00.25Z 2\n"
        "2026-12-01t05:00:00.25+01:00\t3\n"  # an offset east, lower-case t, a tab
        "2026-11-30T23:00:00.25-05:00,4\n"  # west
        "2026-12-01T04:00:00.123456789 5\n"  # no offset: UTC; every nanosecond kept
        "2026-12-01 6\r\n"  # a date: its midnight
        "2026-12-01T04:00:00.25z   7"
    )
    read = parse_timed(text, "-")
    np.testing.assert_array_equal(read.values, [1.5, 2, 3, 4, 5, 6, 7])
    quarter = AT + 250_000_000
    assert read.times_ns is not None
    assert read.times_ns.tolist() == [
        quarter,
        quarter,
        quarter,
        quarter,
        AT + 123_456_789,
        AT - 4 * 3_600_000_000_000,
        quarter,
    ]


def test_unix_seconds_are_read_exactly() -> None:
    decimals = ["1796097600.000000001", "1796097600.0000014999", "1796097600.", "0", "-1.5"]
    # past the ninth digit, a fraction is cut
    assert times_ns(np.asarray(decimals)).tolist() == [AT + 1, AT + 1_499, AT, 0, -1_500_000_000]
    # other forms of a number go through a double, to the microsecond
    others = ["1.796097600000001e9", ".5", "+2"]
    assert times_ns(np.asarray(others)).tolist() == [AT + 1_000, 500_000_000, 2_000_000_000]


@given(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
    st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
    st.sampled_from(["T", "t"]),
)
def test_a_time_reads_as_the_query_flags_read_it(
    moment: datetime, east_minutes: int, separator: str
) -> None:
    """The same RFC 3339 text means the same instant to ``ingest --timed`` as to
    ``--since``/``--until`` (which Python's own parser reads)."""
    zone = timezone(timedelta(minutes=east_minutes))
    text = moment.replace(tzinfo=zone).isoformat(sep=separator)
    assert times_ns(np.asarray([text])).tolist() == [parse_when(text).ns(0)]
    zulu = moment.isoformat() + "Z"
    assert times_ns(np.asarray([zulu])).tolist() == [parse_when(zulu).ns(0)]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1 2 3", "expected TIME VALUE, got 3 tokens"),
        ("1796097600", "expected TIME VALUE, got 1 token"),
        ("yesterday 2", "not a time: 'yesterday'"),
        ("nan 2", "not a time: 'nan'"),
        ("1e20 2", "not a time: '1e20'"),  # past 2262: no 64-bit nanoseconds hold it
        ("2026-13-01T00:00:00Z 2", "not a time: '2026-13-01T00:00:00Z'"),
        ("2026-12-01T04:00:00+5:00 2", "not a time: '2026-12-01T04:00:00+5:00'"),
        ("2026-12-01T04:00:00+0500 2", "not a time: '2026-12-01T04:00:00+0500'"),
        ("2026-12-01T04:00:00-05 2", "not a time: '2026-12-01T04:00:00-05'"),
        ("2026-12-01T04:00:00+ab:00 2", "not a time: '2026-12-01T04:00:00+ab:00'"),
        ("2026-12-01T04:00:00ZZ 2", "not a time: '2026-12-01T04:00:00ZZ'"),
        ("9999-12-31T00:00:00Z 2", "not a time: '9999-12-31T00:00:00Z'"),
        ("2026-12-01T04:00:00é 2", "not a time: '2026-12-01T04:00:00é'"),
        ("2026-12-01T04:00:00Z two", "could not convert string to float: 'two'"),
    ],
)
def test_a_mistake_is_named(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^where: {re.escape(message)}"):
        parse_timed(f"1796097600 1\n{line}\n", "where")


def test_a_header_line_is_named_by_its_first_word() -> None:
    with pytest.raises(ValueError, match=r"^-: not a time: 'time'"):
        parse_timed("time,value\n", "-")


def test_a_mistake_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("2026-12-01T04:00:00Z,1\n\n1796097600 2\n2026-12-01T04:00:00Z 3 4\n")
    with pytest.raises(ValueError, match=r"t.csv, line 4: expected TIME VALUE, got 3 tokens$"):
        read_observations(str(path), timed=True)
    path.write_text("2026-12-01T04:00:00Z,1\n1796097600 2\n2026-12-0x 3\n")
    with pytest.raises(ValueError, match=r"t.csv, line 3: not a time: '2026-12-0x'"):
        read_observations(str(path), timed=True)


def _ingest_args(batch_values: int) -> argparse.Namespace:
    return argparse.Namespace(
        metric="m", label=[("k", "v")], batch_id="", batch_values=batch_values
    )


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=2**62),
            st.floats(allow_nan=False, allow_infinity=False),
        ),
        min_size=1,
        max_size=60,
    ),
    st.integers(min_value=1, max_value=16),
)
def test_every_observation_reaches_a_batch_once_with_its_time(
    pairs: list[tuple[int, float]], batch_values: int
) -> None:
    observations = Observations(
        np.array([v for _, v in pairs]), np.array([t for t, _ in pairs], dtype=np.int64)
    )
    sent = [
        region_node_pb2.IngestRequest.FromString(b)
        for b in _batches(_ingest_args(batch_values), observations)
    ]
    assert all(0 < len(r.values) <= batch_values for r in sent)
    got = [zip(r.timestamps_unix_nano, r.values, strict=True) for r in sent]
    assert [pair for batch in got for pair in batch] == pairs


def test_plain_batches_carry_no_times() -> None:
    sent = list(_batches(_ingest_args(2), Observations(np.array([1.0, 2.0, 3.0]))))
    requests = [region_node_pb2.IngestRequest.FromString(b) for b in sent]
    assert [list(r.values) for r in requests] == [[1.0, 2.0], [3.0]]
    assert not any(r.timestamps_unix_nano for r in requests)


def test_joined_parts_keep_their_order() -> None:
    parts = [
        Observations(np.array([1.0]), np.array([5], dtype=np.int64)),
        Observations(np.array([2.0, 3.0]), np.array([4, 3], dtype=np.int64)),
    ]
    joined = Observations.joined(parts)
    assert joined.values.tolist() == [1.0, 2.0, 3.0]
    assert joined.times_ns is not None and joined.times_ns.tolist() == [5, 4, 3]
    assert len(joined[1:]) == 2 and joined[1:].times_ns.tolist() == [4, 3]  # type: ignore[union-attr]
    assert Observations.joined([Observations(np.array([1.0]))]).times_ns is None


def test_a_utc_moment() -> None:
    assert datetime.fromtimestamp(AT / 1e9, UTC) == datetime(2026, 12, 1, 4, tzinfo=UTC)
