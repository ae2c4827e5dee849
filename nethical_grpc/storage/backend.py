"""Which backend a store uses, and why: reported at startup and by GetNodeInfo."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "DEFAULT_AUDIT_RETENTION_DAYS",
    "DEFAULT_MEMORY_BOUND",
    "BackendChoice",
    "check_retention_days",
    "check_row_bound",
    "check_whole_number",
    "redact_url",
    "url_scheme",
]

#: Records (audit) or rows per table (time series) an in-memory store keeps by default:
#: the newest; a node levelled off near 500 MiB of RSS with it (bench/store_memory.py).
DEFAULT_MEMORY_BOUND: Final = 100_000
#: Days an audit record is kept by default (Elasticsearch's index lifecycle policy, the
#: SQLite store's retention).
DEFAULT_AUDIT_RETENTION_DAYS: Final = 90


def check_row_bound(name: str, value: object) -> int | None:
    """``value`` if it is None (no bound) or an int of at least 1: how many records or rows
    an in-memory store keeps; ``ValueError`` naming ``name`` otherwise (a bool is refused,
    though it is an int)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: must be an int or None, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: must be at least 1 (or None for no cap), got {value}")
    return value


def check_whole_number(name: str, value: object, low: int, high: int) -> int:
    """``value`` if it is an int in ``low..high`` (a bool is refused, though it is an int);
    ``ValueError`` naming ``name`` otherwise: a store setting from a URL or the command
    line."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number in {low}..{high}, got {value!r}")
    return value


def check_retention_days(value: object) -> int:
    """``value`` if it is a whole number of days in 1..36500 (``ValueError`` otherwise)."""
    return check_whole_number("retention_days", value, 1, 36_500)


def url_scheme(url: str) -> str:
    """The lower-cased scheme of a store URL (``"memory"`` for ``memory://``).

    ``ValueError`` when the URL has no ``scheme://`` part.
    """
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        raise ValueError(f"store URL must look like scheme://..., got {redact_url(url)!r}")
    return scheme.lower()


#: Query parameters whose values are secrets (compared lower-cased, ``-`` as ``_``):
#: ``redis://h/0?password=…``, ``postgresql://h/db?user=u&password=…``,
#: ``https://h:9200?api_key=…``, libpq's ``sslpassword``, tokens of any kind.
_SECRET_PARAMS: Final = ("password", "passwd", "pwd", "secret", "token", "api_key", "apikey")


def _secret_param(name: str) -> bool:
    key = name.lower().replace("-", "_")
    return any(word in key for word in _SECRET_PARAMS)


#: ``key=value`` pairs of a libpq-style connection string (``host=h password='x y'``),
#: which is no URL: its secret values are hidden too when one is given where a URL goes
_KEYWORD_PAIR: Final = re.compile(r"""([A-Za-z_][\w-]*)(\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)""")


def _redact_keywords(text: str) -> str:
    return _KEYWORD_PAIR.sub(lambda m: f"{m[1]}{m[2]}***" if _secret_param(m[1]) else m[0], text)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, in the user part or in the query
    string (safe for logs, errors and RPCs); in text that is no ``scheme://`` URL (a
    libpq connection string, say) the values of secret ``key=value`` pairs."""
    if "://" not in url:
        return _redact_keywords(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc, query = parts.netloc, parts.query
    if parts.password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        # the text after the host as written: a port that does not parse stays visible
        # (and raises nothing here), the password never does
        hostport = parts.netloc.rpartition("@")[2]
        after_host = hostport.rpartition("]")[2] if hostport.startswith("[") else hostport
        port = after_host.partition(":")[2]
        netloc = f"{user}:***@{host}" + (f":{port}" if port else "")
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_secret_param(k) for k, _ in pairs):
            query = urlencode([(k, "***" if _secret_param(k) else v) for k, v in pairs], safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    if not url.startswith(f"{parts.scheme}://"):
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    # put together as written: urlunsplit drops an empty authority's "//" for schemes it
    # does not know (postgresql:///db) and makes sqlite:////abs/path relative
    return (
        f"{parts.scheme}://{netloc}{parts.path}"
        + (f"?{query}" if query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )


@dataclass(frozen=True, slots=True)
class BackendChoice:
    """The outcome of opening one store.

    ``store`` names the store (``"cache"``, ``"timeseries"``, ``"audit"``), ``requested``
    the configured URL with secrets redacted, ``backend`` what is in use (``"redis"``,
    ``"memory"``, ``"postgresql"``, ``"sqlite"``, ``"elasticsearch"``…), and ``reason`` why
    it differs from what was requested (empty when it does not). ``problem``: why the
    last write to the backend in use failed, while it fails (empty otherwise).
    """

    store: str
    requested: str
    backend: str
    reason: str = ""
    problem: str = ""

    @property
    def fallback(self) -> bool:
        return bool(self.reason)

    def describe(self) -> str:
        """One line, e.g. ``redis: unreachable (connection refused) → memory``."""
        if not self.reason:
            return self.backend
        wanted = self.requested.partition("://")[0] or self.requested
        return f"{wanted}: {self.reason} → {self.backend}"
