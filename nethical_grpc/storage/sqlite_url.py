"""``sqlite://`` store URLs, read the same way by the time-series and audit stores.

``sqlite:///var/lib/nethical/ts.db`` is the file ``/var/lib/nethical/ts.db``;
``sqlite://ts.db`` is ``ts.db`` relative to the working directory; ``sqlite:///:memory:``
is a private in-memory database. One query parameter is understood:

``cache_mib``
    The SQLite page cache each of the store's connections may fill, in MiB (default
    :data:`DEFAULT_CACHE_MIB`). A node on SQLite files keeps four such connections (the
    audit store's writer and two readers, the time-series store's one), and its memory
    grows by up to their sum as the files grow; a smaller cache costs index inserts and
    searches more reads from the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl

__all__ = ["DEFAULT_CACHE_MIB", "MAX_CACHE_MIB", "SqliteUrl", "check_cache_mib", "parse_sqlite_url"]

#: Page cache per connection, MiB (SQLite's own default is 2 MiB): index inserts and
#: per-agent reads touch pages all over a large file. A bound, not an allocation.
DEFAULT_CACHE_MIB: Final = 64
MAX_CACHE_MIB: Final = 65_536
_MEMORY_PATHS: Final = ("/:memory:", ":memory:")


@dataclass(frozen=True, slots=True)
class SqliteUrl:
    """A parsed ``sqlite://`` URL: the file (``None``: in memory) and the page cache each
    connection may fill."""

    path: str | None
    cache_mib: int = DEFAULT_CACHE_MIB

    @property
    def cache_kib(self) -> int:
        return self.cache_mib * 1024


def check_cache_mib(value: object) -> int:
    """``value`` if it is an int in 1..:data:`MAX_CACHE_MIB` (``ValueError`` otherwise; a
    bool is refused, though it is an int)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"cache_mib must be an int, got {type(value).__name__}")
    if not 1 <= value <= MAX_CACHE_MIB:
        raise ValueError(f"cache_mib must be in 1..{MAX_CACHE_MIB}, got {value}")
    return value


def parse_sqlite_url(url: str, store: str) -> SqliteUrl:
    """Read a ``sqlite://`` URL for ``store`` (named in errors, e.g. ``"timeseries"``).

    ``ValueError`` for a missing path, a fragment, an unknown or repeated query parameter,
    or a ``cache_mib`` that is not a whole number in 1..:data:`MAX_CACHE_MIB`.
    """
    rest = url.partition("://")[2]
    if "#" in rest:
        raise ValueError(f"{store} URL: sqlite:// URLs take no fragment")
    body, _, query = rest.partition("?")
    if not body or body == "/":
        raise ValueError(
            f"{store} URL: sqlite:// needs a path, e.g. sqlite:///var/lib/nethical/{store}.db"
        )
    cache_mib = DEFAULT_CACHE_MIB
    seen: set[str] = set()
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"{store} URL: malformed query string {query!r}") from None
    for key, value in pairs:
        if key != "cache_mib":
            raise ValueError(
                f"{store} URL: unknown parameter {key!r} for sqlite:// (known: cache_mib)"
            )
        if key in seen:
            raise ValueError(f"{store} URL: {key} is given twice")
        seen.add(key)
        if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_CACHE_MIB:
            raise ValueError(
                f"{store} URL: cache_mib must be a whole number of MiB in 1..{MAX_CACHE_MIB}, "
                f"got {value!r}"
            )
        cache_mib = int(value)
    return SqliteUrl(None if body in _MEMORY_PATHS else body, cache_mib)
