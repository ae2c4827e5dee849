"""The cache value codec: exact type round trips, integers Redis can INCRBY, clear errors."""

from __future__ import annotations

import enum
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nethical_grpc.storage.cache.codec import decode_value, encode_value

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
VALUES = JSON_VALUES | st.binary(max_size=40)


def same(a: Any, b: Any) -> bool:
    """Equal with exactly the same types at every level (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@given(VALUES)
def test_every_supported_value_round_trips_with_its_type(value: Any) -> None:
    assert same(decode_value(encode_value(value)), value)


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_ints_are_plain_decimal_so_redis_can_incrby_them(n: int) -> None:
    assert encode_value(n) == str(n).encode()


@pytest.mark.parametrize(
    ("value", "encoded"),
    [("123", b"s123"), (123, b"123"), (True, b"T"), (False, b"F"), (None, b"N"), (1.0, b"f1.0")],
)
def test_lookalike_values_keep_distinct_encodings(value: Any, encoded: bytes) -> None:
    assert encode_value(value) == encoded
    assert same(decode_value(encoded), value)


class Colour(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize(
    "value",
    [
        (1, 2),
        {1, 2},
        object(),
        bytearray(b"x"),
        Colour.RED,
        {1: "int key"},
        {"nested": b"bytes"},
        [1, (2, 3)],
        {"deep": [{"x": {4}}]},
        "\ud800",  # a lone surrogate cannot be stored as UTF-8
    ],
)
def test_values_that_would_not_round_trip_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="cache value"):
        encode_value(value)


@pytest.mark.parametrize("data", [b"", b"hello", b"x1", b"j{not json", b"s\xff", b"-x"])
def test_foreign_or_corrupt_bytes_are_refused_on_decode(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_value(data)


class _Tag(enum.Enum):
    A = "a"


# containers that may hold what the codec refuses somewhere deep inside
MIXED = st.recursive(
    JSON_SCALARS | st.tuples(st.integers()) | st.sampled_from([_Tag.A, b"x", frozenset()]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.lists(MIXED, max_size=4) | st.dictionaries(st.text(max_size=6), MIXED, max_size=4))
def test_the_fast_check_refuses_exactly_what_the_named_check_refuses(value: Any) -> None:
    # a container is encoded after a quick walk; only a refused one is walked again to
    # name the offending item, so the two walks must agree on every value
    from nethical_grpc.storage.cache.codec import _is_exact, _problem

    problem = _problem(value)
    assert _is_exact(value) is (problem is None)
    if problem is not None:
        assert problem.startswith("cache value: ") and "value" in problem[13:]
        with pytest.raises(ValueError) as refused:
            encode_value(value)
        assert str(refused.value) == problem
