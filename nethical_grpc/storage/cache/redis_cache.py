"""The Redis cache backend: redis.asyncio over one connection pool, namespaced keys.

Every error that means "the server is not there" (refused or reset connections, timeouts,
failed authentication) is raised as :class:`CacheUnavailableError`, and the failover cache
decides what happens next. A broken connection is tried once more on a fresh one (redis-py
``Retry`` of one, on connection errors only), so a pooled connection the server dropped
(idle timeout, ``CLIENT KILL``, a restart) costs a reconnect, not an outage; a dead
server fails that reconnect too.

Each call runs under ``asyncio.timeout(socket_timeout)`` (cheaper than redis-py's own
per-write ``wait_for``, which starts a task per command), and nothing after a failure
waits on the server: a transaction's connection is dropped rather than sent ``UNWATCH``.
Calls first take one of ``max_connections`` slots, so a burst waits for a pooled
connection instead of failing with "too many connections"; that wait is not under the
timeout (a busy pool is no outage), but a call that queued before another call found the
server unreachable fails at once instead of waiting out a timeout of its own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, cast

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from nethical_grpc.errors import first_line
from nethical_grpc.storage.backend import redact_url
from nethical_grpc.storage.cache.base import (
    DEFAULT_TTL_S,
    Cache,
    CacheConflictError,
    CacheStats,
    CacheUnavailableError,
    check_amount,
    check_key,
    check_keys,
    check_ttl,
    check_within,
    hit_rate,
)
from nethical_grpc.storage.cache.codec import decode_value, encode_value

log = logging.getLogger(__name__)

__all__ = ["UNAVAILABLE_ERRORS", "RedisCache", "describe_error", "glob_escape"]

SCAN_BATCH: Final = 500
"""Keys asked per SCAN call and removed per UNLINK call by ``clear``."""

UPDATE_ATTEMPTS: Final = 8
"""Tries of one ``update_multiple`` whose keys other writers keep changing."""

#: Answers of a server that is up but cannot take the call now, whatever the call: a
#: replica (READONLY: writes go to the primary, e.g. right after a failover), a full one
#: (OOM: maxmemory reached, under ``noeviction``), a cluster in trouble (TRYAGAIN,
#: CLUSTERDOWN, MASTERDOWN). An outage, as an unreachable server is: a failover cache
#: answers from memory meanwhile and writes back when the server takes writes again.
SERVER_STATE_ERRORS: Final = (
    redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError,
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,  # includes MasterDownError
)

UNAVAILABLE_ERRORS: Final = (
    redis_errors.ConnectionError,  # includes AuthenticationError, BusyLoadingError
    redis_errors.TimeoutError,
    asyncio.TimeoutError,
    OSError,
    *SERVER_STATE_ERRORS,
)

_GLOB_SPECIAL: Final = re.compile(r"([\\*?\[\]])")


def glob_escape(text: str) -> str:
    """``text`` with Redis glob characters escaped, for an exact-prefix ``SCAN MATCH``."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def describe_error(err: BaseException, secret: str | None = None) -> str:
    """A short reason for a failed server call, e.g. ``"unreachable (connection refused)"``.

    ``secret`` (a password) is removed from the text if the error happens to quote it.
    """
    chain: list[BaseException] = [err]
    while len(chain) < 5:
        nxt = chain[-1].__cause__ or chain[-1].__context__
        if nxt is None:
            break
        chain.append(nxt)
    text = str(err)
    if isinstance(err, redis_errors.AuthenticationError) or "NOAUTH" in text:
        reason = "authentication failed"
    elif any(isinstance(e, ConnectionRefusedError) for e in chain) or "refused" in text:
        reason = "unreachable (connection refused)"
    elif isinstance(err, redis_errors.TimeoutError | asyncio.TimeoutError | TimeoutError):
        reason = "unreachable (timeout)"
    elif "Name or service not known" in text or "getaddrinfo" in text:
        reason = "unreachable (unknown host)"
    elif isinstance(err, redis_errors.BusyLoadingError):
        reason = "unavailable (loading dataset)"
    elif isinstance(err, redis_errors.ReadOnlyError):
        reason = "unavailable (a read-only replica)"
    elif isinstance(err, redis_errors.OutOfMemoryError):
        reason = "unavailable (out of memory: maxmemory reached)"
    elif isinstance(err, SERVER_STATE_ERRORS):
        reason = f"unavailable ({first_line(err)[:160]})"
    else:
        reason = f"unreachable ({first_line(err)[:160]})"
    if secret:
        reason = reason.replace(secret, "***")
    return reason


class _Transaction(Pipeline):
    """A ``WATCH``/``MULTI``/``EXEC`` pipeline whose cleanup never waits on the server.

    redis-py resets a pipeline that is still watching (the transaction failed, timed out
    or was abandoned before ``EXEC``) by sending ``UNWATCH`` and reading the answer, with
    no deadline, reconnecting first if the failure closed the connection: on a server that
    stopped answering that waits forever. Here the connection is dropped instead, which
    ends the ``WATCH`` as well; the pool connects afresh for the next call.
    """

    async def reset(self) -> None:  # type: ignore[override]  # Pipeline.reset's own type
        if self.watching and self.connection is not None:
            self.watching = False
            await self.connection.disconnect(nowait=True)
        await super().reset()  # type: ignore[no-untyped-call]


def _readable(keys: list[str], stored: list[bytes | None]) -> dict[str, Any]:
    """The decoded values of ``keys`` found in ``stored`` (MGET's answer); an entry that
    does not decode (another writer's under this namespace) is left out, logged."""
    found: dict[str, Any] = {}
    for key, data in zip(keys, stored, strict=True):
        if data is None:
            continue
        try:
            found[key] = decode_value(data)
        except ValueError as err:
            log.warning("cache entry %r is not this cache's (%s): the update replaces it", key, err)
    return found


class RedisCache(Cache):
    """A namespaced cache on Redis (asyncio, pooled connections, no pickle).

    Keys are stored as ``namespace + key``; values with the tagged codec, so ints are plain
    decimal strings and ``increment`` is ``INCRBY``. ``set`` is one ``SET … PX``,
    ``get_multiple`` one ``MGET``, ``set_multiple`` one pipelined batch of ``SET … PX``
    (``transaction=False``): each one round trip. ``clear`` walks the namespace with
    ``SCAN MATCH`` and removes it with ``UNLINK`` in batches of :data:`SCAN_BATCH` (never
    ``KEYS`` or ``FLUSHDB``). Server outages raise :class:`CacheUnavailableError`;
    :class:`~nethical_grpc.storage.cache.failover.FailoverCache` turns them into memory
    fallback.

    Build it with the guide's parameters (``host``, ``port``, ``db``, ``password``,
    ``default_ttl``, ``max_connections``) or with :meth:`from_url`. ``socket_timeout`` and
    ``connect_timeout`` are seconds.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        *,
        namespace: str = "nethical:",
        default_ttl: float = DEFAULT_TTL_S,
        max_connections: int = 50,
        socket_timeout: float = 1.0,
        connect_timeout: float = 1.0,
        pool: aioredis.ConnectionPool | None = None,
    ) -> None:
        if not namespace or type(namespace) is not str:
            raise ValueError("namespace must be a non-empty str (clear() removes the namespace)")
        self.namespace = namespace
        self.default_ttl = check_ttl(default_ttl, "default_ttl")
        if pool is None:
            pool = aioredis.ConnectionPool(
                host=host,
                port=port,
                db=db,
                password=password,
                **_pool_options(max_connections, connect_timeout),
            )
        self.timeout = _seconds("socket_timeout", socket_timeout)
        self._slots = asyncio.Semaphore(pool.max_connections)
        self._pool = pool
        self._secret: str | None = pool.connection_kwargs.get("password")
        self._client = aioredis.Redis(connection_pool=pool)
        self._execute = cast(Callable[..., Awaitable[Any]], self._client.execute_command)
        self._match = glob_escape(namespace) + "*"
        self._hits = 0
        self._misses = 0
        self._errors = 0
        #: calls that found the server unreachable; ``_down``: the latest call did
        self._outages = 0
        self._down = False
        #: update_multiple attempts that another writer's change made Redis refuse
        self._conflicts = 0
        self.last_error = ""

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str,
        default_ttl: float = DEFAULT_TTL_S,
        max_connections: int = 50,
        socket_timeout: float = 1.0,
        connect_timeout: float = 1.0,
        connection_class: type[AbstractConnection] | None = None,
    ) -> RedisCache:
        """A cache for ``redis://[[user]:password@]host[:port][/db]`` or ``rediss://…``.

        Query options of redis-py (``?ssl_cert_reqs=none`` …) are honoured.
        ``connection_class`` replaces redis-py's TCP connection class (for ``redis://``).
        ``ValueError`` (password redacted) when the URL cannot be parsed.
        """
        options = _pool_options(max_connections, connect_timeout)
        if connection_class is not None:
            options["connection_class"] = connection_class
        try:
            pool = aioredis.ConnectionPool.from_url(url, **options)
        except (ValueError, TypeError) as err:
            raise ValueError(f"bad Redis URL {redact_url(url)!r}: {err}") from None
        return cls(
            namespace=namespace, default_ttl=default_ttl, socket_timeout=socket_timeout, pool=pool
        )

    @property
    def backend(self) -> str:
        return "redis"

    @property
    def conflicts(self) -> int:
        """Attempts of :meth:`update_multiple` that Redis refused because another client
        wrote a watched key (each was tried again)."""
        return self._conflicts

    @property
    def pool(self) -> aioredis.ConnectionPool:
        """The connection pool (shared by every call of this cache)."""
        return self._pool

    # -- plumbing ----------------------------------------------------------------------------

    def _unavailable(self, err: BaseException) -> CacheUnavailableError:
        self._errors += 1
        self._outages += 1
        self._down = True
        self.last_error = describe_error(err, self._secret)
        return CacheUnavailableError(f"redis {self.last_error}")

    def _check_not_down_since(self, outages: int) -> None:
        """Raise if a call found the server unreachable while this one waited for a slot
        (and no call has reached it since): it would only wait out its own timeout."""
        if self._down and self._outages != outages:
            raise CacheUnavailableError(f"redis {self.last_error}")

    async def _call(self, *args: Any) -> Any:
        outages = self._outages
        async with self._slots:  # waiting here is a busy pool, not an outage
            self._check_not_down_since(outages)
            try:
                async with asyncio.timeout(self.timeout):
                    result = await self._execute(*args)
            except UNAVAILABLE_ERRORS as err:
                raise self._unavailable(err) from err
        self._down = False
        return result

    async def _run(self, pipe: Pipeline, raise_on_error: bool = True) -> list[Any]:
        outages = self._outages
        async with self._slots:
            self._check_not_down_since(outages)
            try:
                async with asyncio.timeout(self.timeout):
                    result: list[Any] = await pipe.execute(raise_on_error=raise_on_error)
            except UNAVAILABLE_ERRORS as err:
                raise self._unavailable(err) from err
        self._down = False
        return result

    def _px(self, ttl: float | None) -> tuple[Any, ...]:
        """The ``PX ms`` arguments for ``ttl`` seconds (none for no expiry)."""
        seconds = self.default_ttl if ttl is None else check_ttl(ttl)
        if not seconds:
            return ()
        return ("PX", max(1, math.ceil(seconds * 1000)))

    # -- the Cache API -----------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        try:
            data = await self._call("GET", self.namespace + check_key(key))
        except redis_errors.ResponseError as err:
            if not str(err).startswith("WRONGTYPE"):
                raise
            # a list, hash, set … under the namespace: as foreign as a string the codec
            # cannot read (get_multiple's MGET reads such a key as missing)
            raise ValueError(
                f"cache entry {key!r} is a Redis key of another type than string: "
                "not written by this cache"
            ) from None
        if data is None:
            self._misses += 1
            return default
        self._hits += 1
        return decode_value(data)

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        name = self.namespace + check_key(key)
        await self._call("SET", name, encode_value(value), *self._px(ttl))

    async def delete(self, key: str) -> bool:
        return bool(await self._call("DEL", self.namespace + check_key(key)))

    async def exists(self, key: str) -> bool:
        return bool(await self._call("EXISTS", self.namespace + check_key(key)))

    async def increment(self, key: str, amount: int = 1) -> int:
        name = self.namespace + check_key(key)
        try:
            result: int = await self._call("INCRBY", name, check_amount(amount))
        except redis_errors.ResponseError as err:
            raise ValueError(f"cannot increment {key!r}: {err}") from None
        return result

    async def get_multiple(self, keys: Iterable[str]) -> dict[str, Any]:
        wanted = check_keys(keys)
        if not wanted:
            return {}
        ns = self.namespace
        values: list[bytes | None] = await self._call("MGET", *[ns + k for k in wanted])
        found = {k: decode_value(v) for k, v in zip(wanted, values, strict=True) if v is not None}
        self._hits += len(found)
        self._misses += len(wanted) - len(found)
        return found

    async def set_multiple(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        px = self._px(ttl)
        ns = self.namespace
        encoded = [(ns + check_key(k), encode_value(v)) for k, v in mapping.items()]
        if not encoded:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for name, data in encoded:
                pipe.execute_command("SET", name, data, *px)
            await self._run(pipe)

    async def update_multiple(
        self,
        keys: Iterable[str],
        update: Callable[[dict[str, Any]], Mapping[str, Any]],
        ttl: float | None = None,
    ) -> dict[str, Any]:
        """An optimistic transaction: ``WATCH`` the keys, ``MGET`` them, and ``SET`` what
        ``update`` returns in ``MULTI``/``EXEC``, which Redis refuses when another client
        wrote one of the keys since the ``WATCH``: then again, up to
        :data:`UPDATE_ATTEMPTS` times (see :meth:`Cache.update_multiple`). An entry this
        cache cannot read (another writer's) counts as missing, logged: the update
        replaces it, rather than failing on it at every try."""
        wanted = check_keys(keys)
        if not wanted:
            return {}
        px = self._px(ttl)
        ns = self.namespace
        names = [ns + k for k in wanted]
        for _ in range(UPDATE_ATTEMPTS):
            outages = self._outages
            async with self._slots:
                self._check_not_down_since(outages)
                try:
                    async with (
                        asyncio.timeout(self.timeout),
                        _Transaction(
                            self._pool, self._client.response_callbacks, True, None
                        ) as pipe,
                    ):
                        await pipe.watch(*names)
                        # immediate mode until multi(): the MGET answers now
                        stored = cast(
                            "list[bytes | None]", await pipe.execute_command("MGET", *names)
                        )
                        found = _readable(wanted, stored)
                        values = dict(update(found))
                        check_within(values, wanted)
                        encoded = [(ns + k, encode_value(v)) for k, v in values.items()]
                        pipe.multi()  # type: ignore[no-untyped-call]
                        for name, data in encoded:
                            pipe.execute_command("SET", name, data, *px)
                        await pipe.execute()
                except redis_errors.WatchError:
                    self._conflicts += 1
                    continue
                except UNAVAILABLE_ERRORS as err:
                    raise self._unavailable(err) from err
            self._down = False
            self._hits += len(found)
            self._misses += len(wanted) - len(found)
            return values
        raise CacheConflictError(
            f"{len(wanted)} keys were changed by other writers on each of {UPDATE_ATTEMPTS} "
            "attempts; nothing written"
        )

    async def _scan_namespace(self, unlink: bool) -> int:
        count = 0
        cursor = b"0"
        while True:
            cursor, names = await self._call(
                "SCAN", cursor, "MATCH", self._match, "COUNT", SCAN_BATCH
            )
            if names:
                count += await self._call("UNLINK", *names) if unlink else len(names)
            if cursor in (b"0", 0):
                return count

    async def clear(self) -> int:
        return await self._scan_namespace(unlink=True)

    async def size(self) -> int:
        """Keys in this namespace (a SCAN of the database: O(all keys), for stats only)."""
        return await self._scan_namespace(unlink=False)

    async def stats(self) -> CacheStats:
        return CacheStats(
            type="redis",
            hits=self._hits,
            misses=self._misses,
            hit_rate=hit_rate(self._hits, self._misses),
            errors=self._errors,
            size=await self.size(),
            last_error=self.last_error,
        )

    async def ping(self) -> None:
        """Return when the server answers PING; ``CacheUnavailableError`` otherwise."""
        await self._call("PING")

    async def apply_writes(
        self,
        sets: Sequence[tuple[str, bytes, float]],
        deletes: Sequence[str],
        increments: Sequence[tuple[str, int]],
    ) -> list[str]:
        """Apply already-encoded writes in one ``MULTI``/``EXEC`` round trip.

        ``sets`` holds (key, encoded value, ttl seconds, 0 for none), ``deletes`` keys to
        remove, ``increments`` (key, amount) for ``INCRBY``. Returns the keys whose command
        the server rejected (e.g. ``INCRBY`` on a non-integer); ``CacheUnavailableError``
        when the server cannot be reached (then nothing was applied, unless the connection
        broke after ``EXEC`` was sent).
        """
        if not (sets or deletes or increments):
            return []
        ns = self.namespace
        order: list[str] = []
        async with self._client.pipeline(transaction=True) as pipe:
            for key, data, ttl in sets:
                px = ("PX", max(1, math.ceil(ttl * 1000))) if ttl else ()
                pipe.execute_command("SET", ns + key, data, *px)
                order.append(key)
            for key in deletes:
                pipe.execute_command("DEL", ns + key)
                order.append(key)
            for key, amount in increments:
                pipe.execute_command("INCRBY", ns + key, amount)
                order.append(key)
            results = await self._run(pipe, raise_on_error=False)
        return [k for k, r in zip(order, results, strict=True) if isinstance(r, Exception)]

    async def disconnect(self) -> None:
        """Drop every pooled connection (new calls reconnect)."""
        await self._pool.disconnect()

    async def close(self) -> None:
        await self._client.aclose(close_connection_pool=True)


def _seconds(name: str, value: object) -> float:
    if type(value) not in (int, float) or not 0 < value < math.inf:  # type: ignore[operator]
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _pool_options(max_connections: int, connect_timeout: float) -> dict[str, Any]:
    if type(max_connections) is not int or max_connections < 1:
        raise ValueError(f"max_connections must be an int >= 1, got {max_connections!r}")
    return {
        "max_connections": max_connections,
        "socket_timeout": None,  # each call runs under asyncio.timeout instead
        "socket_connect_timeout": _seconds("connect_timeout", connect_timeout),
        # one more try on a fresh connection after a broken one (not after a timeout)
        "retry": Retry(NoBackoff(), 1, (redis_errors.ConnectionError,)),
        "decode_responses": False,
    }
