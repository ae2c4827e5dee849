"""Observations read from text for ``nethical-mesh ingest``: values alone, or, with
``--timed``, each with its own time.

Plain input is numbers separated by whitespace or commas, any number to a line. Timed
input is one observation a line, ``TIME VALUE`` (or ``TIME,VALUE``), where TIME is
either seconds since the Unix epoch (``1796097600.25``, to the nanosecond) or an
RFC 3339 time (``2026-12-01T04:00:00.25Z``, ``2026-12-01T05:00:00+01:00``; without an
offset: UTC; to the nanosecond). Blank lines are skipped. Both forms are read by NumPy
a piece of text at a time (:data:`PIECE_CHARS`, cut between tokens; a Python string a
token for a whole file took ten times its size); only a piece with a mistake is read
again a line at a time, to name the first line that has one.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from nethical_grpc.cli.client_commands import BOM, open_input
from nethical_grpc.cli.table import counted

#: what stands for a line's end among the tokens: no whitespace, so ``split`` keeps it
_LINE_END = "\0"
#: a time since the epoch past this many seconds (about the year 2262) does not fit
#: in signed 64-bit nanoseconds
_MAX_SECONDS = 9.2e9


@dataclass(frozen=True)
class Observations:
    """Values, and with timed input the time of each (Unix nanoseconds)."""

    values: np.ndarray
    times_ns: np.ndarray | None = None  # None: each batch at the time the node gets it

    def __len__(self) -> int:
        return int(self.values.size)

    def __getitem__(self, part: slice) -> Observations:
        times = None if self.times_ns is None else self.times_ns[part]
        return Observations(self.values[part], times)

    @staticmethod
    def joined(parts: Sequence[Observations], timed: bool = False) -> Observations:
        """``parts`` one after the other (all timed, or none; ``timed`` says which
        when there are none)."""
        if not parts:
            return Observations(np.empty(0), np.empty(0, np.int64) if timed else None)
        values = np.concatenate([p.values for p in parts])
        if parts[0].times_ns is None:
            return Observations(values)
        return Observations(values, np.concatenate([p.times_ns for p in parts]))


def parse_values(text: str, where: str) -> np.ndarray:
    """The numbers of ``text``, separated by whitespace or commas. A token that is not a
    number is a ``ValueError`` naming it, after ``where``."""
    try:
        return np.asarray(text.replace(",", " ").split(), dtype=np.float64)
    except ValueError as exc:  # "could not convert string to float: 'x'"
        raise ValueError(f"{where}: {exc}") from None


def parse_timed(text: str, where: str) -> Observations:
    """The ``TIME VALUE`` lines of ``text`` (see the module docstring). A line with
    other than two tokens, a time or value that cannot be read, is a ``ValueError``
    after ``where``."""
    tokens = np.asarray(
        text.replace(",", " ").replace("\n", f" {_LINE_END} ").split(), dtype=np.str_
    )
    ends = np.flatnonzero(tokens == _LINE_END)
    per_line = np.diff(np.concatenate(([-1], ends, [tokens.size]))) - 1
    wrong = np.flatnonzero((per_line != 0) & (per_line != 2))
    if wrong.size:
        got = int(per_line[wrong[0]])
        raise ValueError(f"{where}: expected TIME VALUE, got {counted(got, 'token', 'tokens')}")
    pairs = tokens[tokens != _LINE_END].reshape(-1, 2)
    try:  # the time first: a header line ("time,value") is named by its first word
        times = times_ns(pairs[:, 0])
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    try:
        values = np.asarray(pairs[:, 1], dtype=np.float64)
    except ValueError:
        bad = pairs[_first_unreadable(pairs[:, 1], np.float64), 1]
        raise ValueError(f"{where}: could not convert string to float: {str(bad)!r}") from None
    return Observations(values, times)


def times_ns(tokens: np.ndarray) -> np.ndarray:
    """Unix nanoseconds of time tokens (a string array): Unix seconds or RFC 3339."""
    out = np.empty(tokens.size, dtype=np.int64)
    # an RFC 3339 time starts YYYY-MM-; a number of seconds never does
    rfc3339 = (np.strings.slice(tokens, 4, 5) == "-") & (np.strings.slice(tokens, 7, 8) == "-")
    if rfc3339.any():
        out[rfc3339] = _rfc3339_ns(tokens[rfc3339])
    if not rfc3339.all():
        out[~rfc3339] = _seconds_ns(tokens[~rfc3339])
    return out


def _seconds_ns(tokens: np.ndarray) -> np.ndarray:
    """Unix seconds: a decimal is read exactly (to the nanosecond), a number in other
    forms (``1.7964e9``) through a double, to the microsecond."""
    whole, _, fraction = np.strings.partition(tokens, ".")
    if not np.all(np.strings.isdigit(fraction) | (fraction == "")):
        return _double_seconds_ns(tokens)
    try:
        seconds = np.asarray(whole, dtype=np.int64)
        nanos = np.asarray(np.strings.ljust(np.strings.slice(fraction, 0, 9), 9, "0"), np.int64)
    except (ValueError, OverflowError):
        return _double_seconds_ns(tokens)
    if np.any(np.abs(seconds) >= _MAX_SECONDS):
        raise _not_a_time(tokens[np.argmax(np.abs(seconds) >= _MAX_SECONDS)])
    negative = np.strings.startswith(whole, "-")
    return seconds * 1_000_000_000 + np.where(negative, -nanos, nanos)


def _double_seconds_ns(tokens: np.ndarray) -> np.ndarray:
    try:
        seconds = np.asarray(tokens, dtype=np.float64)
    except ValueError:
        raise _not_a_time(tokens[_first_unreadable(tokens, np.float64)]) from None
    outside = ~(np.abs(seconds) < _MAX_SECONDS)  # NaN too
    if outside.any():
        raise _not_a_time(tokens[np.argmax(outside)])
    return np.round(seconds * 1e6).astype(np.int64) * 1_000


def _rfc3339_ns(tokens: np.ndarray) -> np.ndarray:
    """RFC 3339 times: ``Z``/``z``, an offset ``±HH:MM`` or none (UTC); ``t`` or ``T``.

    Worked on as a matrix of bytes, a row a token: NumPy's string functions took
    seconds a million rows; these array operations take a fraction of one."""
    try:
        raw = np.asarray(tokens, dtype=np.bytes_)
    except UnicodeEncodeError:  # not ASCII
        raise _not_a_time(next(t for t in tokens if not str(t).isascii())) from None
    width = raw.dtype.itemsize
    text = raw.view(np.uint8).reshape(-1, width).copy()
    text[(text == ord("t")) | (text == ord("z"))] -= ord("a") - ord("A")
    rows = np.arange(len(text))
    length = width - np.argmax(text[:, ::-1] != 0, axis=1)  # a token is never empty

    def back(k: int) -> np.ndarray:
        """Each row's k-th byte from its end (k ≤ 6; rows are 10 bytes or more)."""
        picked: np.ndarray = text[rows, length - k]
        return picked

    sign = back(6)
    zulu = back(1) == ord("Z")
    offset = (
        ~zulu
        & (length > 16)  # past the date and the hour: not a date's "-DD"
        & ((sign == ord("+")) | (sign == ord("-")))
        & (back(3) == ord(":"))
    )
    local = length - zulu - 6 * offset
    columns = np.arange(width)
    body = np.where(columns < local[:, None], text, 0).astype(np.uint8)
    # what is left must be a local time: any other zone (NumPy reads some, warning that
    # it is deprecated) is a mistake, as is an offset that is not HH:MM in digits
    digits = [back(k) for k in (5, 4, 2, 1)]
    bad = ((body == ord("+")) | (body == ord("Z")) | ((body == ord("-")) & (columns >= 10))).any(
        axis=1
    )
    bad |= offset & np.any([(d < ord("0")) | (d > ord("9")) for d in digits], axis=0)
    if bad.any():
        raise _not_a_time(tokens[np.argmax(bad)])
    local_text = body.view(f"S{width}").ravel()
    try:
        with warnings.catch_warnings():  # what NumPy would read as a zone: a mistake
            warnings.simplefilter("error", UserWarning)
            moments = local_text.astype("datetime64[ns]").astype(np.int64)
    except (ValueError, UserWarning):
        raise _not_a_time(tokens[_first_unreadable(local_text, "datetime64[ns]")]) from None
    # NumPy wraps a time outside signed 64-bit nanoseconds (1678 to 2261) round
    years = (body[:, :4].astype(np.int64) - ord("0")) @ np.array([1000, 100, 10, 1])
    outside = (years < 1678) | (years > 2261)
    if outside.any():
        raise _not_a_time(tokens[np.argmax(outside)])
    h1, h2, m1, m2 = (d.astype(np.int64) - ord("0") for d in digits)
    east = np.where(offset, (h1 * 10 + h2) * 60 + m1 * 10 + m2, 0)
    east = np.where(sign == ord("-"), -east, east)
    utc: np.ndarray = moments - east * 60_000_000_000
    return utc


def _not_a_time(token: object) -> ValueError:
    return ValueError(
        f"not a time: {str(token)!r} (Unix seconds, or RFC 3339 as 2026-12-01T04:00:00Z)"
    )


def _first_unreadable(tokens: np.ndarray, dtype: object) -> int:
    """Where the first of ``tokens`` is that NumPy cannot read as ``dtype`` (an error
    path: after the whole array failed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for at, token in enumerate(tokens):
            try:
                np.asarray(token, dtype=dtype)  # type: ignore[call-overload]
            except (ValueError, OverflowError, UserWarning):
                return at
    return 0


def parse_observations(text: str, where: str, timed: bool) -> Observations:
    """Plain or timed observations of ``text`` (see :func:`parse_values`,
    :func:`parse_timed`)."""
    if timed:
        return parse_timed(text, where)
    return Observations(parse_values(text, where))


#: Characters of input read and parsed at a time.
PIECE_CHARS = 1 << 20
#: where plain input may be cut: between tokens
PLAIN_CUTS = (" ", "\t", "\n", ",")


def pieces(stream: TextIO, timed: bool) -> Iterator[str]:
    """The text of ``stream`` in pieces of about :data:`PIECE_CHARS`, each cut after a
    line's end (``timed``: a line is an observation) or between tokens; a leading
    byte-order mark is left out."""
    cuts = ("\n",) if timed else PLAIN_CUTS
    rest = ""
    first = True
    while text := stream.read(PIECE_CHARS):
        if first:
            text, first = text.removeprefix(BOM), False
        text = rest + text
        end = max(text.rfind(c) for c in cuts) + 1  # 0: no cut in it yet
        rest = text[end:]
        if end:
            yield text[:end]
    if rest:
        yield rest


def parse_piece(
    text: str, source: str, first_line: int, timed: bool
) -> tuple[Observations, ValueError | None]:
    """The observations of ``text``, a piece of ``source`` that starts on line
    ``first_line``; with a mistake, those of the lines before the first that has one and
    a ``ValueError`` naming that line."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # read with surrogate escapes
        number = first_line + text.count("\n", 0, exc.start)
        before = text[: exc.start].rpartition("\n")[0]  # the lines before its line
        good, earlier = parse_piece(before, source, first_line, timed)
        name = "stdin" if source == "-" else source  # as every command names it here
        return good, earlier or ValueError(f"{name}, line {number}: not valid UTF-8")
    try:
        return parse_observations(text, source, timed), None
    except ValueError as whole:
        lines: list[Observations] = []
        for number, line in enumerate(text.split("\n"), start=first_line):
            try:
                lines.append(parse_observations(line, f"{source}, line {number}", timed))
            except ValueError as exc:
                return Observations.joined(lines, timed), exc
        return Observations.joined(lines, timed), whole


def read_observations(source: str, timed: bool = False) -> Observations:
    """The observations of ``source`` (a file, or ``-`` for stdin); a mistake is named
    with its line, as ``ingest --stream`` names it."""
    with open_input(source) as stream:
        return _read(stream, source, timed)


def _read(stream: TextIO, source: str, timed: bool) -> Observations:
    parts, line = [], 1
    for text in pieces(stream, timed):
        part, mistake = parse_piece(text, source, line, timed)
        if mistake is not None:
            raise mistake
        parts.append(part)
        line += text.count("\n")
    return Observations.joined(parts, timed)
