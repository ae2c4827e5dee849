"""The numbers and layout of the command line's tables."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nethical_grpc.cli.table import decision_name, fmt_number, render, severity_name
from nethical_grpc.v1 import governance_pb2


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1000.0, "1,000"),  # was "1,000.0" beside "1" for the same kind of value
        (12_345.0, "12,345"),
        (1159.8, "1,159.8"),
        (1159.84, "1,159.8"),
        (100.0, "100"),
        (0.25, "0.25"),
        (417.16666, "417.1667"),
        (-2500.5, "-2,500.5"),
        (0.0, "0"),
        (1.5e7, "1.5e+07"),
        (0.0004, "0.0004"),
        (7, "7"),
        (1_234_567, "1,234,567"),
        (math.nan, "-"),
    ],
)
def test_table_numbers(value: float, text: str) -> None:
    assert fmt_number(value) == text


@given(st.floats(min_value=-999_999, max_value=999_999, allow_nan=False))
def test_a_table_number_reads_back_close_to_its_value(value: float) -> None:
    text = fmt_number(value)
    assert not text.endswith((".", ".0"))
    back = float(text.replace(",", ""))
    # four decimals below 1,000, one above (and 4 significant digits below 0.001)
    tolerance = 0.05 if abs(value) >= 1000 else 5e-5 if abs(value) >= 1e-3 else abs(value) * 1e-3
    assert abs(back - value) <= tolerance + 1e-12


def test_render_pads_columns_and_aligns_numbers_right() -> None:
    out = render(["name", "count"], [["a", "1"], ["long name", "1,000"]])
    assert out.splitlines() == [
        "name       count",
        "---------  -----",
        "a              1",
        "long name  1,000",
    ]


def test_an_enum_value_this_client_does_not_know_is_named_by_its_number() -> None:
    """A newer server's decision or severity: before, a ValueError from the enum's
    Name() ended the command with a traceback."""
    assert decision_name(governance_pb2.DECISION_BLOCK) == "BLOCK"
    assert severity_name(governance_pb2.SEVERITY_HIGH) == "HIGH"
    assert decision_name(9) == "UNKNOWN(9)"
    assert severity_name(42) == "UNKNOWN(42)"
