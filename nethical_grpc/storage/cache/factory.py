"""Open the region cache from a URL and report which backend it landed on."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from nethical_grpc.storage.backend import BackendChoice, redact_url, url_scheme
from nethical_grpc.storage.cache.base import DEFAULT_TTL_S, Cache, CacheUnavailableError
from nethical_grpc.storage.cache.memory import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, MemoryCache

__all__ = ["REDIS_SCHEMES", "open_cache"]

log = logging.getLogger(__name__)

REDIS_SCHEMES = frozenset({"redis", "rediss"})


async def open_cache(
    url: str,
    namespace: str,
    *,
    default_ttl: float = DEFAULT_TTL_S,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_connections: int = 50,
    socket_timeout: float = 1.0,
    connect_timeout: float = 1.0,
    probe_initial: float = 0.2,
    probe_max: float = 10.0,
    **redis_options: Any,
) -> tuple[Cache, BackendChoice]:
    """The cache for ``url`` and how it was opened.

    * ``memory://`` (optionally ``memory://?max_entries=N&max_bytes=M``, either or
      both): a :class:`MemoryCache`.
    * ``redis://[[user]:password@]host[:port][/db]`` or ``rediss://…``: a
      :class:`~nethical_grpc.storage.cache.failover.FailoverCache` over Redis, pinged once
      here. When Redis does not answer, the cache starts in memory mode and the choice says
      why (``redis: unreachable (connection refused) → memory``); it keeps probing and
      moves to Redis once it answers (``FailoverCache.choice()`` tells the current state).
      Without redis-py (the ``redis`` extra) it is a :class:`MemoryCache`, and the choice
      and a warning say so.

    ``namespace`` prefixes every key (see
    :func:`~nethical_grpc.storage.cache.base.region_namespace`); ``default_ttl`` is the TTL
    in seconds when ``set`` gets none; ``max_entries`` and ``max_bytes`` (the URL's,
    when a ``memory://`` URL gives them) bound the memory cache or tier;
    timeouts and probe waits are seconds. ``redis_options`` go to
    :meth:`RedisCache.from_url` (e.g. ``connection_class``). ``ValueError`` for an unknown
    scheme or a malformed URL or option (passwords are never echoed).
    """
    scheme = url_scheme(url)
    requested = redact_url(url)
    if not namespace or type(namespace) is not str:
        raise ValueError("cache namespace must be a non-empty str")
    if scheme == "memory":
        max_entries, max_bytes = _memory_options(url, max_entries, max_bytes)
        cache = MemoryCache(
            namespace, max_entries=max_entries, max_bytes=max_bytes, default_ttl=default_ttl
        )
        return cache, BackendChoice("cache", requested, "memory")
    if scheme not in REDIS_SCHEMES:
        raise ValueError(
            f"cache URL scheme must be redis, rediss or memory, got {scheme!r} in {requested!r}"
        )
    try:
        from nethical_grpc.storage.cache.failover import FailoverCache
        from nethical_grpc.storage.cache.redis_cache import RedisCache
    except ImportError:  # redis-py is the optional extra "redis"
        choice = BackendChoice(
            "cache",
            requested,
            "memory",
            "redis-py not installed (pip install 'nethical-mesh[redis]')",
        )
        log.warning("cache: %s", choice.describe())
        cache = MemoryCache(
            namespace, max_entries=max_entries, max_bytes=max_bytes, default_ttl=default_ttl
        )
        return cache, choice
    primary = RedisCache.from_url(
        url,
        namespace=namespace,
        default_ttl=default_ttl,
        max_connections=max_connections,
        socket_timeout=socket_timeout,
        connect_timeout=connect_timeout,
        **redis_options,
    )
    failover = FailoverCache(
        primary,
        max_entries=max_entries,
        max_bytes=max_bytes,
        probe_initial=probe_initial,
        probe_max=probe_max,
        requested=requested,
    )
    try:
        await primary.ping()
    except CacheUnavailableError:
        failover.fall_back(primary.last_error)
    return failover, failover.choice()


def _memory_options(url: str, max_entries: int, max_bytes: int) -> tuple[int, int]:
    """``max_entries`` and ``max_bytes`` as a ``memory://`` URL's query overrides them."""
    query = dict(parse_qsl(urlsplit(url).query))
    unknown = set(query) - {"max_entries", "max_bytes"}
    if unknown:
        raise ValueError(
            f"memory:// cache options are max_entries and max_bytes only, got {sorted(unknown)}"
        )
    max_entries = _int_option(query, "max_entries", max_entries)
    return max_entries, _int_option(query, "max_bytes", max_bytes)


def _int_option(query: dict[str, str], name: str, default: int) -> int:
    if name not in query:
        return default
    try:
        return int(query[name])
    except ValueError:
        raise ValueError(f"memory:// {name} must be an integer, got {query[name]!r}") from None
