"""The CLI's log lines: one line per record, stamped in UTC (ISO 8601)."""

from __future__ import annotations

import logging
import re
import sys

from nethical_grpc.cli.main import LogFormatter


def _record(msg: str, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("bad")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("psycopg.pool", logging.WARNING, __file__, 1, msg, (), info)


def test_a_multi_line_message_becomes_one_line_in_utc() -> None:
    record = _record("error connecting: refused\n\tIs the server running on that host?\n")
    record.created = 1_800_000_000.25  # 2027-01-15T08:00:00.250Z
    record.msecs = 250.0
    line = LogFormatter().format(record)
    assert line == (
        "2027-01-15T08:00:00.250Z WARNING psycopg.pool: error connecting: refused | "
        "Is the server running on that host?"
    )


def test_a_traceback_still_follows_on_its_own_lines() -> None:
    text = LogFormatter().format(_record("it failed", exc=True))
    first, *rest = text.splitlines()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING psycopg\.pool: it failed", first
    )
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: bad"
