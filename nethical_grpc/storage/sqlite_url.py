"""``sqlite://`` store URLs, read the same way by the time-series and audit stores.

``sqlite:///var/lib/nethical/ts.db`` is the file ``/var/lib/nethical/ts.db``;
``sqlite://ts.db`` is ``ts.db`` relative to the working directory; ``sqlite:///:memory:``
is a private in-memory database. Query parameters:

``cache_mib`` (every SQLite store)
    The SQLite page cache each of the store's connections may fill, in MiB (default
    :data:`DEFAULT_CACHE_MIB`). A node on SQLite files keeps four such connections (the
    audit store's writer and two readers, the time-series store's one), and its memory
    grows by up to their sum as the files grow; a smaller cache costs index inserts and
    searches more reads from the file.
``max_records`` (the audit store only)
    The most records the file keeps (1 to :data:`MAX_RECORDS`; default: no bound, only the
    retention in days): past it a write drops the oldest. It bounds the file and the
    memory the store keeps for its searches (about 29 bytes a record, up to twice that).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl

from nethical_grpc.storage.backend import check_whole_number

__all__ = [
    "DEFAULT_CACHE_MIB",
    "MAX_CACHE_MIB",
    "MAX_RECORDS",
    "SqliteUrl",
    "cache_size_pragma",
    "check_cache_mib",
    "check_max_records",
    "parse_sqlite_url",
]

#: Page cache per connection, MiB (SQLite's own default is 2 MiB): index inserts and
#: per-agent reads touch pages all over a large file. A bound, not an allocation.
DEFAULT_CACHE_MIB: Final = 64
MAX_CACHE_MIB: Final = 65_536
#: Largest ``max_records`` (a trillion records: far past what one file holds).
MAX_RECORDS: Final = 10**12
_MEMORY_PATHS: Final = ("/:memory:", ":memory:")


@dataclass(frozen=True, slots=True)
class SqliteUrl:
    """A parsed ``sqlite://`` URL: the file (``None``: in memory), the page cache each
    connection may fill, and the most records an audit store keeps (``None``: no bound)."""

    path: str | None
    cache_mib: int = DEFAULT_CACHE_MIB
    max_records: int | None = None


def check_cache_mib(value: object) -> int:
    """``value`` if it is an int in 1..:data:`MAX_CACHE_MIB` (``ValueError`` otherwise; a
    bool is refused, though it is an int)."""
    return check_whole_number("cache_mib", value, 1, MAX_CACHE_MIB)


def check_max_records(value: object) -> int:
    """``value`` if it is an int in 1..:data:`MAX_RECORDS` (``ValueError`` otherwise)."""
    return check_whole_number("max_records", value, 1, MAX_RECORDS)


def cache_size_pragma(cache_mib: int) -> str:
    """The statement that bounds a connection's page cache at ``cache_mib`` MiB."""
    return f"PRAGMA cache_size = -{cache_mib * 1024}"  # negative: KiB


def parse_sqlite_url(url: str, store: str, *, record_bound: bool = False) -> SqliteUrl:
    """Read a ``sqlite://`` URL for ``store`` (named in errors, e.g. ``"timeseries"``);
    ``max_records`` is understood only when ``record_bound`` (the audit store).

    ``ValueError`` for a missing path, a fragment, an unknown or repeated query parameter,
    or a value that is not a whole number in its range.
    """
    rest = url.partition("://")[2]
    if "#" in rest:
        raise ValueError(f"{store} URL: sqlite:// URLs take no fragment")
    body, _, query = rest.partition("?")
    if not body or body == "/":
        raise ValueError(
            f"{store} URL: sqlite:// needs a path, e.g. sqlite:///var/lib/nethical/{store}.db"
        )
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"{store} URL: malformed query string {query!r}") from None
    known: dict[str, Callable[[object], int]] = {"cache_mib": check_cache_mib}
    if record_bound:
        known["max_records"] = check_max_records
    values: dict[str, int] = {}
    for key, value in pairs:
        if key not in known:
            raise ValueError(
                f"{store} URL: unknown parameter {key!r} for sqlite:// (known: {', '.join(known)})"
            )
        if key in values:
            raise ValueError(f"{store} URL: {key} is given twice")
        number = int(value) if value.isascii() and value.isdigit() else value
        try:
            values[key] = known[key](number)
        except ValueError as exc:
            raise ValueError(f"{store} URL: {exc}") from None
    return SqliteUrl(
        None if body in _MEMORY_PATHS else body,
        values.get("cache_mib", DEFAULT_CACHE_MIB),
        values.get("max_records"),
    )
