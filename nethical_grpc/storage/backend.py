"""Which backend a store uses, and why: reported at startup and by GetNodeInfo."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

__all__ = ["BackendChoice", "redact_url", "url_scheme"]


def url_scheme(url: str) -> str:
    """The lower-cased scheme of a store URL (``"memory"`` for ``memory://``).

    ``ValueError`` when the URL has no ``scheme://`` part.
    """
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        raise ValueError(f"store URL must look like scheme://..., got {redact_url(url)!r}")
    return scheme.lower()


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe for logs, errors and RPCs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True, slots=True)
class BackendChoice:
    """The outcome of opening one store.

    ``store`` names the store (``"cache"``, ``"timeseries"``, ``"audit"``), ``requested``
    the configured URL with secrets redacted, ``backend`` what is in use (``"redis"``,
    ``"memory"``, ``"postgresql"``, ``"sqlite"``, ``"elasticsearch"``…), and ``reason`` why
    it differs from what was requested (empty when it does not).
    """

    store: str
    requested: str
    backend: str
    reason: str = ""

    @property
    def fallback(self) -> bool:
        return bool(self.reason)

    def describe(self) -> str:
        """One line, e.g. ``redis: unreachable (connection refused) → memory``."""
        if not self.reason:
            return self.backend
        wanted = self.requested.partition("://")[0] or self.requested
        return f"{wanted}: {self.reason} → {self.backend}"
