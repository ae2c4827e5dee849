"""Plain-text tables for terminals."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Collection, Sequence

from google.protobuf import timestamp_pb2
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from nethical_grpc.v1 import governance_pb2


def enum_name(enum: EnumTypeWrapper, value: int, prefix: str) -> str:
    """The name of ``enum``'s ``value`` without ``prefix`` (``BLOCK`` for
    ``DECISION_BLOCK``), or ``UNKNOWN(n)`` for a value this client's stubs do not know
    (a newer server's)."""
    try:
        return enum.Name(value).removeprefix(prefix)
    except ValueError:
        return f"UNKNOWN({value})"


def decision_name(value: int) -> str:
    """``BLOCK`` for ``DECISION_BLOCK``."""
    return enum_name(governance_pb2.Decision, value, "DECISION_")


def severity_name(value: int) -> str:
    """``HIGH`` for ``SEVERITY_HIGH``."""
    return enum_name(governance_pb2.Severity, value, "SEVERITY_")


def counted(n: int, one: str, many: str) -> str:
    """``1 batch``, ``2,000 batches``."""
    return f"{n:,} {one if n == 1 else many}"


def fmt_number(x: float) -> str:
    """A value for a table: ``1,234`` and ``0.25`` (no trailing zeros, four decimals below
    1,000 and one above), ``1.5e+07`` past a million or below 0.001, ``-`` for NaN."""
    if isinstance(x, int):
        return f"{x:,}"
    if math.isnan(x):
        return "-"
    if x != 0 and (abs(x) >= 1e6 or abs(x) < 1e-3):
        return f"{x:.4g}"
    text = f"{x:,.4f}" if abs(x) < 1000 else f"{x:,.1f}"
    return text.rstrip("0").rstrip(".")


def fmt_time(ts: timestamp_pb2.Timestamp) -> str:
    """A time for a table, in UTC to the millisecond: ``2026-12-01T02:10:16.250Z``."""
    return ts.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


#: control characters (C0, DEL, C1) and the line and paragraph separators, each as its
#: escape (``\\x1b``, ``\\n``): sent as they are, a cell's escape sequence would reach the
#: terminal (colours, a cleared screen) and a line break would split its row
_ESCAPES = {c: ascii(chr(c))[1:-1] for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)}
#: categories a terminal shows in no column: combining marks and format characters
_ZERO_WIDTH = ("Mn", "Me", "Cf")


def shown(cell: str) -> str:
    """``cell`` with its control characters as escapes (text a server sent, before it
    reaches a terminal)."""
    return cell if cell.isprintable() else cell.translate(_ESCAPES)


def _width(cell: str) -> int:
    """The terminal columns ``cell`` takes: two for a wide (East Asian) character, none
    for a combining or format one."""
    if cell.isascii():
        return len(cell)
    return sum(map(_char_width, cell))


def _char_width(c: str) -> int:
    if unicodedata.category(c) in _ZERO_WIDTH:
        return 0
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1


def clip(text: str, columns: int) -> str:
    """``text`` cut to at most ``columns`` terminal columns, ending in "…" when cut."""
    if _width(text) <= columns:
        return text
    used, end = 0, 0
    for end, c in enumerate(text):  # noqa: B007 (end is read after the loop)
        w = _char_width(c)
        if used + w > columns - 1:
            break
        used += w
    return text[:end] + "…"


def render(
    headers: Sequence[str], rows: Sequence[Sequence[str]], text_columns: Collection[int] = ()
) -> str:
    """Columns padded to their widest cell, in terminal columns (a wide character counts
    two): the first and ``text_columns`` (indexes) aligned left, the others (numbers)
    right. Control characters in a cell are shown as escapes (``\\x1b``, ``\\n``)."""
    headers = [shown(h) for h in headers]
    rows = [[shown(c) for c in row] for row in rows]
    widths = [_width(h) for h in headers]
    for row in rows:
        widths = [max(w, _width(c)) for w, c in zip(widths, row, strict=True)]

    def pad(cell: str, width: int, left: bool) -> str:
        room = " " * (width - _width(cell))
        return cell + room if left else room + cell

    line = "  ".join(pad(h, w, True) for h, w in zip(headers, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = [
        "  ".join(
            pad(c, w, i == 0 or i in text_columns)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return "\n".join(text.rstrip() for text in (line, rule, *body))
