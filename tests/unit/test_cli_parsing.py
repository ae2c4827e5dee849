"""The command line's order: a command's positional arguments may follow its flags."""

from __future__ import annotations

import pytest

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
