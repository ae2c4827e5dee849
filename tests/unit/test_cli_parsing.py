"""The command line's order: a command's positional arguments may follow its flags."""

from __future__ import annotations

import argparse

import pytest

from nethical_grpc.cli.args import parse_duration_ns
from nethical_grpc.cli.main import build_parser


@pytest.mark.parametrize(
    ("argv", "field", "want"),
    [
        (["ingest", "m", "--label", "a=b", "--timed", "f.csv"], "file", "f.csv"),
        (["ingest", "m", "f.csv", "--label", "a=b"], "file", "f.csv"),
        (["ingest", "m", "--label", "a=b"], "file", "-"),
        (["query", "m1", "--since", "5m", "m2"], "metrics", ["m1", "m2"]),
        (["audit", "drop", "--decision", "block", "table"], "query", ["drop", "table"]),
        (["score", "--timeout", "3", "rows.txt"], "file", "rows.txt"),
        # after "--", everything is positional, a leading "-" included
        (["evaluate", "--node", "--", "--rm -rf /"], "text", "--rm -rf /"),
        (["query", "--since", "5m", "--", "-odd"], "metrics", ["-odd"]),
    ],
)
def test_positionals_anywhere(argv: list[str], field: str, want: object) -> None:
    assert getattr(build_parser().parse_args(argv), field) == want


def test_flags_keep_their_values_when_parsed_again() -> None:
    args = build_parser().parse_args(
        ["ingest", "m", "--label", "a=b", "--label", "c=d", "--batch-values", "7", "f.csv"]
    )
    assert (args.metric, args.file, args.label, args.batch_values) == (
        "m",
        "f.csv",
        [("a", "b"), ("c", "d")],
        7,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ingest", "m", "a", "b"], "unrecognized arguments: b"),
        (["ingest", "m", "--label", "a=b", "f", "g"], "unrecognized arguments: g"),
        (["query", "--bogus"], "unrecognized arguments: --bogus"),
        (["ingest", "--timed"], "the following arguments are required: METRIC"),
    ],
)
def test_what_is_left_over_is_still_an_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "fields"),
    [
        # the words before "--" parsed intermixed, those after it positional
        (["audit", "drop", "--decision", "block", "--", "-rf"], {"query": ["drop", "-rf"]}),
        (["ingest", "lat", "--label", "a=b", "--", "data.txt"], {"file": "data.txt"}),
        (["ingest", "--label", "a=b", "lat", "--", "-"], {"metric": "lat", "file": "-"}),
        (
            ["query", "m1", "--since", "5m", "--", "--json", "-x"],
            {"metrics": ["m1", "--json", "-x"], "json": False},
        ),
        (
            ["evaluate", "--context", "a=b", "--node", "--", "--agent-id"],
            {"text": "--agent-id", "agent_id": "cli", "context": [("a", "b")]},
        ),
    ],
)
def test_after_a_double_dash_every_word_is_positional(
    argv: list[str], fields: dict[str, object]
) -> None:
    args = build_parser().parse_args(argv)
    assert {name: getattr(args, name) for name in fields} == fields


def test_a_double_dash_does_not_hide_a_word_too_many(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["evaluate", "x", "--context", "a=b", "--", "y"])
    assert stop.value.code == 2
    assert "unrecognized arguments: y" in capsys.readouterr().err


LATIN1 = "caf\udce9"  # b"caf\xe9" as Python keeps it from argv: not UTF-8


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["ingest", "lat", "--label", f"k={LATIN1}"], "argument --label"),
        (["ingest", LATIN1], "argument METRIC"),
        (["audit", "drop", LATIN1], "argument QUERY"),
        (["query", LATIN1, "--since", "5m"], "argument METRIC"),
        (["query", "--group-by", LATIN1], "argument --group-by"),
        (["evaluate", LATIN1, "--node"], "argument TEXT"),
        (["evaluate", "x", "--agent-id", LATIN1], "argument --agent-id"),
        (["profile", LATIN1], "argument AGENT"),
    ],
)
def test_a_word_that_is_not_utf8_is_a_usage_error(
    argv: list[str], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"{name}: not valid UTF-8: 'caf\\xe9'" in err, err


def test_a_file_name_that_is_not_utf8_is_a_file_name() -> None:
    args = build_parser().parse_args(["ingest", "lat", f"{LATIN1}.txt"])
    assert args.file == f"{LATIN1}.txt"
    assert build_parser().parse_args(["evaluate", "--actions", LATIN1]).actions == LATIN1


@pytest.mark.parametrize("text", ["0.5ns", "0.9ns", "0.0000000001", "0.0005us"])
def test_a_duration_under_a_nanosecond_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="under 1ns"):
        parse_duration_ns(text)


def test_durations_of_a_nanosecond_and_more_are_kept() -> None:
    assert parse_duration_ns("1ns") == 1
    assert parse_duration_ns("1.5ns") == 1
    assert parse_duration_ns("0.001us") == 1
    assert parse_duration_ns("2s") == 2_000_000_000
    with pytest.raises(argparse.ArgumentTypeError, match="must be positive"):
        parse_duration_ns("0")


@pytest.mark.parametrize("role", ["region", "coordinator"])
def test_a_drain_can_be_at_once(role: str) -> None:
    """0 turns the announcement or the grace off (they had to be positive, though a drain
    of 0 and 0 is what a server does when its port file cannot be written)."""
    extra = ["--region-id", "r1"] if role == "region" else []
    args = build_parser().parse_args([role, *extra, "--drain-announce", "0s", "--drain-grace", "0"])
    assert (args.drain_announce, args.drain_grace) == (0, 0)
    assert build_parser().parse_args([role, *extra]).drain_grace == 5_000_000_000


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The usage error ``argv`` gets (exit status 2): its stderr."""
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("command", [["query"], ["evaluate", "x"], ["health", "h:1"], ["info"]])
@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1", "-inf", "1e300", "soon"])
def test_a_timeout_is_a_positive_finite_number_of_seconds(
    command: list[str], value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, inf, nan, 0 and negative timeouts were taken (a call that failed at once
    with DEADLINE_EXCEEDED, or never ended), and so was 1e300, past what a gRPC deadline
    holds (DEADLINE_EXCEEDED at once)."""
    err = _usage_error([*command, f"--timeout={value}"], capsys)
    assert "argument --timeout: " in err and len(err.strip().splitlines()[-1]) < 120, err


def test_a_timeout_in_range_is_kept() -> None:
    assert build_parser().parse_args(["query", "--timeout", "0.25"]).timeout == 0.25
    assert build_parser().parse_args(["health", "h:1", "--timeout", "1e6"]).timeout == 1e6
    assert build_parser().parse_args(["query"]).timeout == 10.0


@pytest.mark.parametrize(
    "argv",
    [
        ["query", "--target", "127.0.0.1:99999"],
        ["evaluate", "x", "--target", "[::1]:70000"],  # gRPC took it as port 4464
        ["info", "--target", "node:0"],
        ["metrics", "--target", "node:-1"],
        ["regions", "--target", "node:http"],
        ["audit", "--target", "dns:///nodes.ns.svc:65536"],
        ["health", "127.0.0.1:99999"],
        ["health", "--target", "127.0.0.1:99999"],
    ],
)
def test_a_target_port_out_of_range_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, such a target went to gRPC: a port past 65535 wrapped around (70000 is
    4464) or failed later as a name that does not resolve."""
    err = _usage_error(argv, capsys)
    assert "argument " in err and "port" in err, err


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1:50050",
        "[::1]:65535",
        "node.ns.svc:1",
        "dns:///nodes.ns.svc:50051",
        "dns:nodes:50051",
        "unix:/tmp/mesh.sock",
        "unix:///tmp/mesh.sock",
        "localhost",  # gRPC's default port
        "::1",
    ],
)
def test_a_target_gRPC_takes_is_kept(target: str) -> None:  # noqa: N802
    assert build_parser().parse_args(["query", "--target", target]).target == target
    assert build_parser().parse_args(["health", target]).target == target


@pytest.mark.parametrize(
    "argv",
    [
        ["aggregate", "m", "--bucket", "9" * 30 + "d"],
        ["query", "--region-timeout", "9" * 30 + "d"],
        ["query", "--watch", "9" * 400 + "s"],
    ],
)
def test_a_duration_too_long_for_a_request_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, a ValueError ("Value out of range") or OverflowError traceback."""
    err = _usage_error(argv, capsys)
    assert f"argument {argv[-2]}: " in err and "too long" in err, err


def test_a_batch_id_with_stream_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Streamed batches end with time: a second run numbers other values alike, and the
    node would skip them as applied."""
    from nethical_grpc.cli.main import _main

    with pytest.raises(SystemExit) as stop:
        _main(["ingest", "m", "--stream", "--batch-id", "run1", "--target", "127.0.0.1:1"])
    assert stop.value.code == 2
    assert "--batch-id does not go with --stream" in capsys.readouterr().err
