"""Argument parsing helpers: durations, key=value pairs."""

from __future__ import annotations

import argparse
import re

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
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 10s, 250ms, 5m, 24h)")
    value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive: {text!r}")
    return int(value)


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
