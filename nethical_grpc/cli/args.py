"""Argument parsing helpers: durations, key=value pairs, ports, log levels."""

from __future__ import annotations

import argparse
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from nethical_grpc.proto_limits import FIRST_TIMESTAMP_NS, LAST_TIMESTAMP_NS, MAX_DURATION_SECONDS
from nethical_grpc.target_names import PATH_SCHEMES, addresses_of, host_and_port

T = TypeVar("T")

_UNITS = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h|d)?\s*$")


def parse_duration_ns(text: str) -> int:
    """'10s', '250ms', '5m', '24h', '1.5' (seconds) → nanoseconds."""
    value = _duration_ns(text)
    if math.isinf(value):  # more digits than a float holds
        raise argparse.ArgumentTypeError(f"duration too long: {text!r}")
    return int(value)


def _duration_ns(text: str) -> float:
    """The nanoseconds of a duration, at least 1 (infinity for more digits than a float
    holds)."""
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 10s, 250ms, 5m, 24h)")
    value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive: {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"duration under 1ns, the smallest there is: {text!r}")
    return value


#: The longest a protobuf Duration holds: 10,000 years.
MAX_PROTO_DURATION_NS = MAX_DURATION_SECONDS * 1_000_000_000


def parse_proto_duration_ns(text: str) -> int:
    """Like :func:`parse_duration_ns`, at most what a protobuf Duration holds (a
    duration a request carries)."""
    value = parse_duration_ns(text)
    if value > MAX_PROTO_DURATION_NS:
        raise argparse.ArgumentTypeError(
            f"duration too long: {text!r} (at most 10,000 years, what a request can carry)"
        )
    return value


def parse_duration_or_zero_ns(text: str) -> int:
    """Like :func:`parse_duration_ns`, and '0' (or '0s', 'off') for "never" → 0."""
    if text.strip().lower() == "off":
        return 0
    m = _DURATION.match(text)
    if m and float(m.group(1)) == 0:
        return 0
    return parse_duration_ns(text)


@dataclass(frozen=True, slots=True)
class When:
    """A time a flag gives: a duration back from now (``ago_ns``) or a moment
    (``at_ns``, Unix nanoseconds)."""

    ago_ns: int | None = None
    at_ns: int | None = None

    def ns(self, now_ns: int) -> int:
        """The time in Unix nanoseconds, a duration counted back from ``now_ns``."""
        if self.at_ns is not None:
            return self.at_ns
        assert self.ago_ns is not None
        return now_ns - self.ago_ns


def parse_when(text: str) -> When:
    """'15m', '2h' (that long ago) or a time, RFC 3339 ('2026-12-01T02:00:00Z', with an
    offset, or without one: UTC); either within the times a protobuf Timestamp holds,
    0001-01-01 to 9999-12-31 (UTC)."""
    if _DURATION.match(text):
        ago = _duration_ns(text)
        # counted back from now (later each time a watch asks again: never earlier)
        if math.isinf(ago) or time.time_ns() - int(ago) < FIRST_TIMESTAMP_NS:
            raise _out_of_range(text)
        return When(ago_ns=int(ago))
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration or a time: {text!r} (e.g. 15m, 2h, 2026-12-01T02:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    since_epoch = moment - _EPOCH
    seconds = since_epoch.days * 86_400 + since_epoch.seconds
    at_ns = seconds * 1_000_000_000 + since_epoch.microseconds * 1_000
    if (
        not FIRST_TIMESTAMP_NS <= at_ns <= LAST_TIMESTAMP_NS
    ):  # an offset can take it past either end
        raise _out_of_range(text)
    return When(at_ns=at_ns)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _out_of_range(text: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(
        f"not a time a request can carry (0001-01-01 to 9999-12-31, UTC): {text!r}"
    )


def parse_when_or_all(text: str) -> When | None:
    """Like :func:`parse_when`, and '0' (or 'off') for "no bound" → None."""
    m = _DURATION.match(text)
    if text.strip().lower() == "off" or (m and float(m.group(1)) == 0):
        return None
    return parse_when(text)


def shown_bytes(text: str) -> str:
    """``text`` as it can be printed, the bytes that are not UTF-8 (kept by Python as
    surrogate escapes) shown as ``\\xNN``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        return text.encode("utf-8", "backslashreplace").decode("ascii")


def check_utf8(text: str, where: str) -> str:
    """``text``, or a ``ValueError`` naming ``where`` and the line when it holds bytes
    that are not UTF-8 (from stdin or a file Python read with surrogate escapes), which
    no protobuf string field can carry."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        raise ValueError(f"{where}, line {line}: not valid UTF-8") from None
    return text


def parse_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_weight(text: str) -> tuple[str, float]:
    key, value = parse_pair(text)
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"weight must be a number: {text!r}") from None


def _number(text: str, convert: Callable[[str], T], what: str) -> T:
    """``convert(text)``, or the parser's error saying ``text`` is not ``what``."""
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None


def parse_port(text: str) -> int:
    """A TCP port, 0 to 65535 (0: any free port)."""
    port = _number(text, int, "a port number")
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {port}")
    return port


#: Where a server's ``--metrics-port`` default comes from.
METRICS_PORT_ENV = "NETHICAL_METRICS_PORT"
#: What ``--metrics-port`` (or :data:`METRICS_PORT_ENV`) takes for "no metrics".
METRICS_OFF = "off"


def parse_metrics_port(text: str) -> int | None:
    """A port for Prometheus metrics, 0 to 65535 (0: any free port), or ``off`` → None:
    no metrics (to turn off, for one command, a port the environment sets)."""
    if text.strip().lower() == METRICS_OFF:
        return None
    try:
        int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a port number (0 to 65535) or {METRICS_OFF!r}: {text!r}"
        ) from None
    return parse_port(text)


def parse_target(text: str) -> str:
    """A gRPC target, as given: ``HOST:PORT``, ``[IPV6]:PORT``, ``dns:///NAME:PORT``,
    ``unix:PATH`` ...; a port it names must be 1 to 65535 (gRPC wraps a larger one
    around: 70000 is 4464)."""
    scheme, addresses = addresses_of(text)
    if scheme in PATH_SCHEMES:
        return text
    for address in addresses:
        port = host_and_port(address)[1]
        if port is not None and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise argparse.ArgumentTypeError(f"port must be 1 to 65535, got {port!r} in {text!r}")
    return text


#: The longest ``--timeout``: far more than any call needs, and well within what a
#: gRPC deadline holds (one of about 8e9 s was already past and failed at once).
MAX_TIMEOUT_S = 1e9


def parse_timeout_s(text: str) -> float:
    """A call's deadline in seconds: a positive finite number, at most
    :data:`MAX_TIMEOUT_S`."""
    value = _number(text, float, "a number of seconds")
    if not 0 < value <= MAX_TIMEOUT_S:  # NaN is neither
        raise argparse.ArgumentTypeError(f"must be over 0 s and at most 1e9 s, got {text}")
    return value


def parse_positive_int(text: str) -> int:
    """A whole number of at least 1 (a size or a count limit)."""
    value = _number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def bounded_int(most: int) -> Callable[[str], int]:
    """A parser of whole numbers from 1 to ``most``."""

    def parse(text: str) -> int:
        value = parse_positive_int(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"at most {most:,}, got {value:,}")
        return value

    return parse


#: The most rows a region node's QueryMetrics answers (``convert.MAX_QUERY_LIMIT``).
QUERY_LIMIT_MAX = 10_000

#: How ``nethical-mesh aggregate --by`` combines a bucket's rows.
AGGREGATION_CHOICES = ("avg", "sum", "min", "max", "count")

#: The decisions, least severe first (``nethical-mesh audit --decision``).
DECISION_CHOICES = ("allow", "restrict", "block", "terminate")
#: The decisions ``nethical-mesh evaluate --fail-at`` takes.
FAIL_AT_CHOICES = DECISION_CHOICES[1:]


def parse_unit_interval(text: str) -> float:
    """A number from 0 to 1 (a risk)."""
    value = _number(text, float, "a number")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"unknown log level {text!r} (one of {', '.join(LOG_LEVELS)})"
        )
    return level
