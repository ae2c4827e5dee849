"""``demo`` refuses a mesh it cannot hold: more region processes than it allows, or more
values than it keeps for its exact quantiles; said before any process starts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from nethical_grpc.cli.demo import MAX_KEPT_VALUES, MAX_REGIONS, run_demo
from nethical_grpc.cli.main import build_parser


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--regions", str(MAX_REGIONS + 1)], "--regions is at most"),
        (["--regions", "100000"], "--regions is at most"),
        (["--rate", str(MAX_KEPT_VALUES), "--duration", "2"], "lower --rate or --duration"),
        (["--regions", "4", "--duration", "86400"], "lower --rate or --duration"),
    ],
)
async def test_demo_refuses_what_it_cannot_hold(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    named: str,
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    status = await run_demo(build_parser().parse_args(["demo", *args]))
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("demo: ") and named in err, err
    assert len(err.splitlines()) == 1
    assert not os.listdir(tmp_path)  # no work directory: nothing started
