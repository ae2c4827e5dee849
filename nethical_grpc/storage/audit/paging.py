"""Opaque page tokens for keyset (cursor) paging.

A token is URL-safe base64 (no padding) of a compact JSON object: format version, the
backend that issued it, a fingerprint of the query it belongs to (filter + order), the
total from the first page, and the backend's cursor (the sort key of the last hit
returned: e.g. ``[score, timestamp_us, action_id]`` for SQLite, with the BM25 statistics
of the first page for relevance order, the ``search_after`` values and point-in-time id
for Elasticsearch).  Tokens are not secret and not signed:
their values are only ever bound as query parameters, so a forged token can at most move
the cursor.  :func:`decode_page_token` raises ``ValueError`` for anything malformed, for a
token from another backend and for one from a different query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

from nethical_grpc.storage.audit.model import SearchQuery

__all__ = [
    "MAX_PIT_TOKEN_CHARS",
    "MAX_TOKEN_CHARS",
    "PageCursor",
    "decode_page_token",
    "encode_page_token",
    "query_fingerprint",
]

_VERSION: Final = 1
#: Tokens longer than this are rejected before decoding (a SQLite token is at most a few
#: KiB: the sort key and, in relevance order, 32 document frequencies).
MAX_TOKEN_CHARS: Final = 16_384
#: The limit for tokens that carry an Elasticsearch point-in-time id.  The id names every
#: shard it covers (index name, uuids, context id: about 170 characters a shard), so a
#: data stream of a year of weekly backing indices with two shards each needs more than
#: 16,384; 1 MiB (about 4,000 shards) stays well inside the service's 8 MiB messages and
#: decodes in milliseconds.
MAX_PIT_TOKEN_CHARS: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class PageCursor:
    """What a page token carries: ``total`` from the first page and the backend's
    ``position`` (a JSON list) plus optional ``context`` (e.g. a point-in-time id)."""

    total: int
    position: list[Any]
    context: str | None = None


def query_fingerprint(query: SearchQuery) -> str:
    """16 hex digits identifying ``query``'s filter and order (not its page size)."""
    doc = {**query.filter.fingerprint_fields(), "order": query.effective_order.value}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_page_token(backend: str, query: SearchQuery, cursor: PageCursor) -> str:
    doc: dict[str, Any] = {
        "v": _VERSION,
        "b": backend,
        "f": query_fingerprint(query),
        "n": cursor.total,
        "p": cursor.position,
    }
    if cursor.context is not None:
        doc["c"] = cursor.context
    raw = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_page_token(
    backend: str, query: SearchQuery, *, max_chars: int = MAX_TOKEN_CHARS
) -> PageCursor | None:
    """The cursor in ``query.page_token`` (``None`` when there is no token).

    ``ValueError`` when the token is longer than ``max_chars``, is malformed, was issued
    by another backend or for a different filter/order.  The position's element types
    are the backend's to check.
    """
    token = query.page_token
    if token is None:
        return None
    if len(token) > max_chars:
        raise ValueError("page_token is not valid: too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        doc = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):  # nested deep
        raise ValueError("page_token is not valid: not a token this service issued") from None
    if not isinstance(doc, dict) or doc.get("v") != _VERSION:
        raise ValueError("page_token is not valid: unknown format")
    if doc.get("b") != backend:
        raise ValueError("page_token is not valid: it was issued by another audit store backend")
    if doc.get("f") != query_fingerprint(query):
        raise ValueError(
            "page_token does not belong to this query: keep the filter and order of the "
            "request that returned it"
        )
    total, position, context = doc.get("n"), doc.get("p"), doc.get("c")
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError("page_token is not valid: bad total")
    if not isinstance(position, list):
        raise ValueError("page_token is not valid: bad position")
    if context is not None and not isinstance(context, str):
        raise ValueError("page_token is not valid: bad context")
    return PageCursor(total=total, position=position, context=context)
