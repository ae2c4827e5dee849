"""``sqlite://`` store URLs: the path, an in-memory database, and the page-cache parameter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nethical_grpc.storage.sqlite_url import (
    DEFAULT_CACHE_MIB,
    MAX_CACHE_MIB,
    SqliteUrl,
    check_cache_mib,
    parse_sqlite_url,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///var/lib/nethical/ts.db", SqliteUrl("/var/lib/nethical/ts.db")),
        ("sqlite://data/ts.db", SqliteUrl("data/ts.db")),
        ("sqlite:///:memory:", SqliteUrl(None)),
        ("sqlite://:memory:", SqliteUrl(None)),
        ("sqlite:///var/ts.db?cache_mib=16", SqliteUrl("/var/ts.db", 16)),
        ("sqlite:///:memory:?cache_mib=1", SqliteUrl(None, 1)),
        (f"sqlite:///a.db?cache_mib={MAX_CACHE_MIB}", SqliteUrl("/a.db", MAX_CACHE_MIB)),
        ("sqlite:///a.db?", SqliteUrl("/a.db")),
    ],
)
def test_urls_give_their_path_and_cache(url: str, expected: SqliteUrl) -> None:
    assert parse_sqlite_url(url, "timeseries") == expected


def test_the_default_cache_and_its_kib() -> None:
    parsed = parse_sqlite_url("sqlite:///a.db", "audit")
    assert parsed.cache_mib == DEFAULT_CACHE_MIB == 64
    assert parsed.cache_kib == 64 * 1024


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "needs a path"),
        ("sqlite:///", "needs a path"),
        ("sqlite:///?cache_mib=8", "needs a path"),
        ("sqlite:///a.db#x", "no fragment"),
        ("sqlite:///a.db?mode=ro", "unknown parameter 'mode'"),
        ("sqlite:///a.db?cache_mib=8&cache_mib=9", "given twice"),
        ("sqlite:///a.db?cache_mib=0", "cache_mib must be a whole number"),
        ("sqlite:///a.db?cache_mib=-1", "cache_mib must be a whole number"),
        ("sqlite:///a.db?cache_mib=1.5", "cache_mib must be a whole number"),
        ("sqlite:///a.db?cache_mib=", "cache_mib must be a whole number"),
        ("sqlite:///a.db?cache_mib=%D9%A3", "cache_mib must be a whole number"),  # Arabic 3
        (f"sqlite:///a.db?cache_mib={MAX_CACHE_MIB + 1}", "cache_mib must be a whole number"),
        ("sqlite:///a.db?cache_mib", "malformed query string"),
    ],
)
def test_bad_urls_are_refused_by_name(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        parse_sqlite_url(url, "timeseries")
    assert str(err.value).startswith("timeseries URL: ")


@given(st.integers(min_value=1, max_value=MAX_CACHE_MIB))
def test_any_cache_in_range_round_trips(mib: int) -> None:
    assert parse_sqlite_url(f"sqlite:///x.db?cache_mib={mib}", "audit").cache_mib == mib
    assert check_cache_mib(mib) == mib


@pytest.mark.parametrize("value", [0, MAX_CACHE_MIB + 1, True, 8.0, "8", None])
def test_check_cache_mib_refuses_what_is_not_a_whole_mib_in_range(value: object) -> None:
    with pytest.raises(ValueError, match="cache_mib must be"):
        check_cache_mib(value)
