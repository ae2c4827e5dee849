"""Review findings in the command line's data commands: tables of wide or control
characters, and ``ingest`` reading large input."""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import time
import tracemalloc
import unicodedata
import warnings
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from meshutil import Mesh, add_region

from nethical_grpc.cli import observations
from nethical_grpc.cli.client_commands import read_input
from nethical_grpc.cli.ingest_stream import run_ingest_stream
from nethical_grpc.cli.main import build_parser
from nethical_grpc.cli.observations import parse_timed, read_observations
from nethical_grpc.cli.table import render
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc


@contextlib.contextmanager
def mock_piece_size(chars: int) -> Iterator[None]:
    """Input read ``chars`` characters at a time (pieces cut anywhere)."""
    was = observations.PIECE_CHARS
    observations.PIECE_CHARS = chars
    try:
        yield
    finally:
        observations.PIECE_CHARS = was


def _columns(text: str) -> int:
    """How many terminal columns ``text`` takes (wide East Asian characters two,
    combining and format characters none)."""
    return sum(
        0
        if unicodedata.combining(c) or unicodedata.category(c) in ("Mn", "Me", "Cf")
        else 2
        if unicodedata.east_asian_width(c) in ("W", "F")
        else 1
        for c in text
    )


def test_wide_characters_keep_the_columns_aligned() -> None:
    """An agent id in Japanese took twice the columns it was counted for, and every
    column after it was pushed right."""
    out = render(["agent", "risk"], [["エージェント", "0.244"], ["a", "0.5"]]).splitlines()
    assert out[2] == "エージェント  0.244"
    assert out[3] == "a" + " " * 11 + "    0.5"
    # every line but the header (left-aligned, its end cut) as wide as the rule
    assert [_columns(line) for line in out[1:]] == [12 + 2 + 5] * 3
    assert out[0] == "agent" + " " * 7 + "  risk"


def test_zero_width_characters_take_no_column() -> None:
    out = render(["agent", "n"], [["a\u200bb\u200dc", "1"], ["abc", "2"]]).splitlines()
    assert _columns(out[2]) == _columns(out[3])


def test_control_characters_are_shown_not_sent_to_the_terminal() -> None:
    """An action text with an escape sequence (or a newline) went to the terminal as it
    was: colours changed, the screen cleared, or the row split in two."""
    out = render(["action", "n"], [["日本\x1b[31m語", "1"], ["a\nb\tc\x9b", "2"]])
    assert "\x1b" not in out and "\x9b" not in out and "\t" not in out
    lines = out.splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("日本\\x1b[31m語")
    assert lines[3].startswith("a\\nb\\tc\\x9b")
    assert len({_columns(line) for line in lines[1:]}) == 1


@given(
    st.lists(
        st.tuples(
            st.text(max_size=8),
            st.text(min_size=1, max_size=8).filter(lambda t: not t[-1].isspace()),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_every_line_of_a_table_is_as_wide_as_its_rule(rows: list[tuple[str, str]]) -> None:
    lines = render(["a", "b"], rows).split("\n")
    assert len(lines) == 2 + len(rows)  # no cell breaks a line
    rule = _columns(lines[1])
    # the last column (right-aligned) ends where the rule ends on every line
    assert [_columns(line) for line in lines[2:]] == [rule] * len(rows)


def _read_traced(path: Path) -> tuple[observations.Observations, int]:
    """The observations of ``path``, and the most memory reading them held at once."""
    tracemalloc.start()
    try:
        read = read_observations(str(path))
        return read, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_large_file_is_read_in_little_more_memory_than_its_values(tmp_path: Path) -> None:
    """A million values (7 MB of text) took 78 MB to read: the whole text, then a Python
    string per number. Read a piece at a time, it takes about the values' 8 MB."""
    path = tmp_path / "big.txt"
    path.write_text("\n".join(map(str, range(1_000_000))) + "\n")
    read, peak = _read_traced(path)
    assert np.array_equal(read.values, np.arange(1_000_000.0))
    assert peak < 3 * read.values.nbytes, f"{peak / 1e6:.0f} MB"


def test_one_long_line_is_read_in_pieces_too(tmp_path: Path) -> None:
    path = tmp_path / "line.txt"
    path.write_text(" ".join(map(str, range(1_000_000))) + ",7")
    read, peak = _read_traced(path)
    assert np.array_equal(read.values, np.append(np.arange(1_000_000.0), 7.0))
    assert peak < 3 * read.values.nbytes, f"{peak / 1e6:.0f} MB"


@pytest.mark.parametrize("timed", [False, True])
def test_a_mistake_far_into_a_large_file_is_named_by_its_line(tmp_path: Path, timed: bool) -> None:
    path = tmp_path / "big.txt"
    lines = [f"{1796097600 + i} {i}" if timed else f"{i} {i}" for i in range(300_000)]
    lines[250_001] = "1796097600 x" if timed else "1 x"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        ValueError, match=r"big.txt, line 250,?002: could not convert string to float: 'x'$"
    ):
        read_observations(str(path), timed=timed)


def test_bytes_that_are_not_utf8_far_into_a_file_are_named_by_their_line(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(b"1 2\n" * 300_000 + b"3 \xff\n")
    with pytest.raises(ValueError, match=r"big.txt, line 300001: not valid UTF-8$"):
        read_observations(str(path))
    with path.open("rb") as raw, mock.patch.object(sys, "stdin", io.TextIOWrapper(raw)):
        with pytest.raises(ValueError, match=r"^stdin, line 300001: not valid UTF-8$"):
            read_observations("-")


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["1", "-2.5", "3e2", "", "123456"]),
            st.sampled_from([" ", "\n", ",", "\t", "\n\n", " , "]),
        ),
        max_size=40,
    )
)
def test_pieces_read_what_the_whole_text_reads(tokens: list[tuple[str, str]]) -> None:
    text = "".join(a + b for a, b in tokens)
    expected = np.asarray(text.replace(",", " ").split(), dtype=np.float64)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.txt"
        path.write_text(text)
        with mock_piece_size(3):
            assert np.array_equal(read_observations(str(path)).values, expected)


@pytest.mark.parametrize("piece_chars", [1, 7, 1 << 20])
def test_timed_lines_across_pieces_keep_their_line_numbers(
    tmp_path: Path, piece_chars: int
) -> None:
    path = tmp_path / "t.csv"
    path.write_text("1796097600 1\n\n1796097601,2\n1796097602 3\n2026-12-01T04:00:00Z\n")
    with mock_piece_size(piece_chars):
        with pytest.raises(ValueError, match=r"t.csv, line 5: expected TIME VALUE, got 1 token$"):
            read_observations(str(path), timed=True)
        path.write_text("1796097600 1\n\n1796097601,2\n1796097602 3")
        read = read_observations(str(path), timed=True)
    assert read.values.tolist() == [1.0, 2.0, 3.0]
    assert read.times_ns is not None
    assert read.times_ns.tolist() == [1796097600 * 10**9 + i * 10**9 for i in range(3)]


def test_the_first_mistake_is_named_before_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "v.txt"
    path.write_bytes(b"1 2\nx\n3 \xff\n")
    with pytest.raises(ValueError, match=r"v.txt, line 2: could not convert string to float: 'x'$"):
        read_observations(str(path))


async def _stream_file(mesh: Mesh, path: Path, metric: str, *flags: str) -> tuple[int, int]:
    """``ingest METRIC PATH --stream`` against a node of ``mesh``: the exit status and
    how many values the node then holds of ``metric``."""
    [(server, _)] = mesh.regions["r1"]
    argv = ["ingest", metric, str(path), "--stream", "--target", server.address, *flags]
    status = await run_ingest_stream(build_parser().parse_args(argv))
    stub = region_node_pb2_grpc.RegionNodeServiceStub(mesh.channel(server.address))
    answer = await stub.GetSummaries(region_node_pb2.GetSummariesRequest(metrics=[metric]))
    return status, sum(s.summary.moments.count for s in answer.series)


async def test_a_streamed_file_is_not_read_ahead_into_memory(
    mesh: Mesh, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ingest --stream FILE``: a thread read the whole file ahead of the node, a Python
    string a line in a queue (56 MB for a million lines), and the event loop parsed a
    line at a time (20 µs each). Now what waits is bounded and parsed a run at a time."""
    await add_region(mesh, "r1", evaluate=False)
    path = tmp_path / "big.txt"
    path.write_text("\n".join(map(str, range(1_000_000))) + "\n")
    tracemalloc.start()
    try:
        status, held = await _stream_file(mesh, path, "big", "--batch-values", "50000")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    out = capsys.readouterr().out
    assert status == 0 and held == 1_000_000
    assert out.endswith(
        f"applied 1,000,000 values in 20 batches to big on {mesh.regions['r1'][0][0].address}\n"
    )
    assert peak < 24e6, f"{peak / 1e6:.0f} MB"


async def test_a_streamed_line_of_plain_values_is_sent_in_pieces(
    mesh: Mesh, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await add_region(mesh, "r1", evaluate=False)
    path = tmp_path / "line.txt"
    path.write_text(" ".join(map(str, range(100_000))) + ",7")
    with mock_piece_size(4096):
        status, held = await _stream_file(mesh, path, "line", "--batch-values", "1000")
    assert status == 0 and held == 100_001
    assert "applied 100,001 values in 101 batches" in capsys.readouterr().out


@pytest.mark.parametrize("timed", [False, True])
async def test_a_streamed_mistake_is_named_by_its_line_after_the_values_before_it(
    mesh: Mesh, tmp_path: Path, capsys: pytest.CaptureFixture[str], timed: bool
) -> None:
    await add_region(mesh, "r1", evaluate=False)
    now = int(time.time())
    lines = [f"{now - 60} {i}" if timed else f"{i} {i}" for i in range(5_000)]
    lines[4_321] = f"{now} x" if timed else "x 1"
    path = tmp_path / "v.txt"
    path.write_text("\n".join(lines) + "\n")
    flags = ["--batch-values", "1000", *(["--timed"] if timed else [])]
    with mock_piece_size(1000):
        status, held = await _stream_file(mesh, path, "m", *flags)
    err = capsys.readouterr().err
    assert status == 2
    assert f"{path}, line 4322: could not convert string to float: 'x'" in err
    before = 4_321 * (1 if timed else 2)
    assert f"before it: applied {before:,} values" in err
    assert held == before


@pytest.mark.parametrize(
    "token", ["2026-12-01T04:00:000", "2026-12-01T041", "2026-12-01T04:00:00.5:"]
)
def test_a_time_numpy_reads_as_a_zone_is_refused_without_a_warning(token: str) -> None:
    """NumPy read a trailing digit as a time zone, and said so on stderr (a UserWarning
    that it has no representation for one) above the command's own error line."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=rf"^-: not a time: '{token}'"):
            parse_timed(f"{token} 1\n", "-")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_byte_order_mark_at_the_start_is_not_a_value(
    mesh: Mesh, tmp_path: Path, capsys: pytest.CaptureFixture[str], stream: bool
) -> None:
    """Spreadsheet programs start a UTF-8 CSV with a byte-order mark; it was read as
    part of the first number ("could not convert string to float: '\\ufeff1'")."""
    await add_region(mesh, "r1", evaluate=False)
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf1,2\n3,4\n")
    if stream:
        status, held = await _stream_file(mesh, path, "bom")
        assert (status, held) == (0, 4)
    else:
        assert read_observations(str(path)).values.tolist() == [1.0, 2.0, 3.0, 4.0]
        now = int(time.time())
        path.write_bytes(f"\ufeff{now - 60},5\n".encode())
        timed = read_observations(str(path), timed=True)
        assert timed.values.tolist() == [5.0]
        assert timed.times_ns is not None and timed.times_ns.tolist() == [(now - 60) * 10**9]
    assert "\\ufeff" not in capsys.readouterr().err


def test_score_and_evaluate_input_leaves_a_byte_order_mark_out(tmp_path: Path) -> None:
    path = tmp_path / "rows.txt"
    path.write_bytes(b"\xef\xbb\xbf0.5 1\n")
    assert read_input(str(path)) == "0.5 1\n"


@pytest.mark.parametrize(
    ("text", "cut"),
    [("漢字" * 40, True), ("a" * 100, True), ("e\u0301" * 55, False), ("漢" * 30, False)],
)
def test_audit_texts_are_clipped_to_their_columns(text: str, cut: bool) -> None:
    """The audit table cut action texts at 60 characters: 120 columns of wide ones."""
    from nethical_grpc.cli.region_commands import TEXT_COLUMN_CHARS, _clipped
    from nethical_grpc.cli.table import _width

    out = _clipped(text)
    assert _width(out) <= TEXT_COLUMN_CHARS
    if cut:
        assert out.endswith("…") and text.startswith(out[:-1])
        assert _width(out) >= TEXT_COLUMN_CHARS - 1  # no more cut than needed
    else:
        assert out == text
