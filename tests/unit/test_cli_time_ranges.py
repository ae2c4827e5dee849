"""``--since`` and ``--until``: a duration back from now or a time, on every command
that reads a range, as the requests carry them."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nethical_grpc import client
from nethical_grpc.cli.args import When, parse_when, parse_when_or_all
from nethical_grpc.cli.client_commands import _query_options
from nethical_grpc.cli.main import build_parser
from nethical_grpc.cli.region_commands import audit_request
from nethical_grpc.cli.timeseries_commands import aggregate_request, metrics_request

NOW_NS = 1_796_090_400_000_000_000  # 2026-12-01T02:00:00Z
HOUR_NS = 3_600 * 10**9


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_a_duration_counts_back_and_a_time_is_that_time() -> None:
    assert parse_when("15m") == When(ago_ns=15 * 60 * 10**9)
    assert parse_when("15m").ns(NOW_NS) == NOW_NS - 15 * 60 * 10**9
    for text in (
        "2026-12-01T02:00:00Z",
        "2026-12-01T03:00:00+01:00",
        "2026-12-01T02:00:00",  # no offset: UTC
        "2026-12-01 02:00",
    ):
        assert parse_when(text) == When(at_ns=NOW_NS), text
    assert parse_when("2026-12-01T02:00:00.000250Z").ns(0) == NOW_NS + 250_000


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1)))
def test_a_time_keeps_every_microsecond(moment: datetime) -> None:
    at = parse_when(moment.isoformat() + "Z").ns(0)
    back = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=at // 1_000)
    assert back == moment.replace(tzinfo=UTC) and at % 1_000 == 0


@pytest.mark.parametrize("text", ["yesterday", "", "-5m", "2026-13-01T00:00:00Z", "0"])
def test_what_is_neither_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_when(text)


def test_zero_or_off_means_no_bound_where_there_is_a_default() -> None:
    assert parse_when_or_all("0") is None and parse_when_or_all("off") is None
    assert parse_when_or_all("0s") is None
    assert parse_when_or_all("2h") == When(ago_ns=2 * HOUR_NS)


def test_query_takes_a_range_of_durations_or_times() -> None:
    opts = _query_options(_args("query", "--since", "2h", "--until", "1h"))
    assert opts.start_ns is not None and opts.end_ns is not None
    assert opts.end_ns - opts.start_ns == HOUR_NS
    fixed = _query_options(
        _args("query", "--since", "2026-12-01T01:00:00Z", "--until", "2026-12-01T02:00:00Z")
    )
    assert (fixed.start_ns, fixed.end_ns) == (NOW_NS - HOUR_NS, NOW_NS)
    assert _query_options(_args("query")).start_ns is None  # everything the regions keep


def test_audit_metrics_and_aggregate_carry_the_range() -> None:
    since, until = "2026-12-01T01:00:00Z", "2026-12-01T01:30:00Z"
    audit = audit_request(_args("audit", "--since", since, "--until", until))
    metrics = metrics_request(_args("metrics", "--since", since, "--until", until), NOW_NS)
    aggregate = aggregate_request(
        _args("aggregate", "risk_score", "--since", since, "--until", until), NOW_NS
    )
    for request in (audit, metrics, aggregate):
        assert request.start_time.ToNanoseconds() == NOW_NS - HOUR_NS
        assert request.end_time.ToNanoseconds() == NOW_NS - HOUR_NS // 2
    # the defaults: aggregate and metrics the last hour up to now; audit everything
    default = aggregate_request(_args("aggregate", "risk_score"), NOW_NS)
    assert default.end_time.ToNanoseconds() == NOW_NS
    assert default.start_time.ToNanoseconds() == NOW_NS - HOUR_NS
    assert not metrics_request(_args("metrics"), NOW_NS).HasField("end_time")
    assert not audit_request(_args("audit")).HasField("start_time")
    # aggregate needs a start: no "0" there
    with pytest.raises(SystemExit):
        _args("aggregate", "risk_score", "--since", "0")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["query", "--since", "9999-12-31T23:59:59-05:00"], "--since"),  # 10000-01-01 in UTC
        (["query", "--until", "0001-01-01T00:00:00+05:00"], "--until"),  # year 0 in UTC
        (["metrics", "--since", "800000d"], "--since"),  # back before the year 1
        (["audit", "--until", "99999999999999999999d"], "--until"),
        (["aggregate", "m", "--since", "9" * 400 + "h"], "--since"),  # a float's infinity
        (["metrics", "--since", "0001-01-01T00:00:00+00:01"], "--since"),
    ],
)
def test_a_time_no_request_can_carry_is_a_usage_error(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, a ValueError or OverflowError traceback once the time was put in a
    Timestamp (or, for --since of a query, a request with a time no Timestamp holds)."""
    with pytest.raises(SystemExit) as stop:
        _args(*argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: " in err and "0001-01-01 to 9999-12-31" in err, err


def test_the_first_and_last_times_a_timestamp_holds_are_kept() -> None:
    first, last = "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"
    request = metrics_request(_args("metrics", "--since", first, "--until", last), NOW_NS)
    assert request.start_time.ToDatetime() == datetime(1, 1, 1)
    assert request.end_time.ToDatetime() == datetime(9999, 12, 31, 23, 59, 59, 999999)
    assert parse_when("700000d").ns(NOW_NS) < 0  # a duration back to the 18th century


@pytest.mark.parametrize(
    ("field", "ns"),
    [
        ("start", -62_135_596_801 * 10**9),  # a second before 0001-01-01
        ("end", 253_402_300_800 * 10**9),  # 10000-01-01
        ("start", -(10**30)),  # past what an int64 holds
    ],
)
def test_the_client_refuses_a_time_no_timestamp_holds(field: str, ns: int) -> None:
    """Before, a bare "Value out of range" ValueError, or no error at all and a request
    with a Timestamp no server accepts."""
    opts = client.QueryOptions(**{f"{field}_ns": ns})
    with pytest.raises(ValueError, match=rf"^{field}_ns .*\(0001-01-01 to 9999-12-31"):
        client.global_metrics_request(opts)
    edge = client.QueryOptions(start_ns=-62_135_596_800 * 10**9, end_ns=253_402_300_800 * 10**9 - 1)
    request = client.global_metrics_request(edge)
    assert request.end_time.ToDatetime() == datetime(9999, 12, 31, 23, 59, 59, 999999)
