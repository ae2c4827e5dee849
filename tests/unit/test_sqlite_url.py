"""``sqlite://`` store URLs: the path, an in-memory database, the page-cache parameter and
the audit store's record bound."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nethical_grpc.storage.sqlite_url import (
    DEFAULT_CACHE_MIB,
    MAX_CACHE_MIB,
    MAX_RECORDS,
    SqliteUrl,
    cache_size_pragma,
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


def test_the_default_cache_and_its_pragma() -> None:
    parsed = parse_sqlite_url("sqlite:///a.db", "audit")
    assert parsed.cache_mib == DEFAULT_CACHE_MIB == 64
    # negative: a size in KiB, not in pages
    assert cache_size_pragma(parsed.cache_mib) == "PRAGMA cache_size = -65536"


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


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///a.db?max_records=500", SqliteUrl("/a.db", DEFAULT_CACHE_MIB, 500)),
        ("sqlite:///a.db?max_records=500&cache_mib=8", SqliteUrl("/a.db", 8, 500)),
        ("sqlite:///a.db?cache_mib=8&max_records=1", SqliteUrl("/a.db", 8, 1)),
        (f"sqlite:///a.db?max_records={MAX_RECORDS}", SqliteUrl("/a.db", 64, MAX_RECORDS)),
        ("sqlite:///a.db", SqliteUrl("/a.db", 64, None)),
    ],
)
def test_the_audit_store_reads_a_record_bound(url: str, expected: SqliteUrl) -> None:
    assert parse_sqlite_url(url, "audit", record_bound=True) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///a.db?max_records=0", "max_records must be a whole number"),
        ("sqlite:///a.db?max_records=-5", "max_records must be a whole number"),
        ("sqlite:///a.db?max_records=1e6", "max_records must be a whole number"),
        ("sqlite:///a.db?max_records=", "max_records must be a whole number"),
        (f"sqlite:///a.db?max_records={MAX_RECORDS + 1}", "max_records must be a whole number"),
        ("sqlite:///a.db?max_records=5&max_records=6", "max_records is given twice"),
        ("sqlite:///a.db?cache_mib=8&max_records=6&cache_mib=8", "cache_mib is given twice"),
        ("sqlite:///a.db?rows=5", r"unknown parameter 'rows' .*known: cache_mib, max_records"),
    ],
)
def test_a_bad_record_bound_is_refused_by_name(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        parse_sqlite_url(url, "audit", record_bound=True)
    assert str(err.value).startswith("audit URL: ")


def test_stores_without_a_record_bound_refuse_one() -> None:
    # the time-series store has no max_records: an operator who gives it one learns so
    with pytest.raises(ValueError, match=r"unknown parameter 'max_records' .*known: cache_mib\)"):
        parse_sqlite_url("sqlite:///ts.db?max_records=10", "timeseries")


@given(st.integers(min_value=1, max_value=MAX_RECORDS), st.integers(1, MAX_CACHE_MIB))
def test_any_record_bound_in_range_round_trips(records: int, mib: int) -> None:
    url = f"sqlite:///x.db?max_records={records}&cache_mib={mib}"
    assert parse_sqlite_url(url, "audit", record_bound=True) == SqliteUrl("/x.db", mib, records)
