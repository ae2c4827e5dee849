"""The PostgreSQL and Redis servers the tests use, and namespaces of their own on them."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING

import psycopg
import pytest

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from tcpproxy import CuttableProxy

PG_URL = os.environ.get("NETHICAL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("NETHICAL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def require(name: str, check: Callable[[], object]) -> None:
    """Skip the test when ``check`` fails, except under CI, where a missing service fails."""
    try:
        check()
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required under CI: {exc}")
        pytest.skip(f"{name} not available: {exc}")


def require_postgres() -> None:
    require("PostgreSQL", lambda: psycopg.connect(PG_URL, connect_timeout=3).close())


@contextlib.contextmanager
def fresh_schema(prefix: str) -> Iterator[str]:
    """A schema name of the test's own (``PREFIX_PID_RANDOM``; whoever uses it creates
    it), dropped with everything in it afterwards."""
    require_postgres()
    schema = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        yield schema
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.contextmanager
def fresh_redis_region() -> Iterator[str]:
    """A region id of the test's own (a node's cache namespace is derived from it); its
    keys are deleted afterwards."""
    import redis

    r = redis.Redis.from_url(REDIS_URL, socket_timeout=3)
    try:
        require("Redis", r.ping)
        region = f"rs-{secrets.token_hex(4)}"
        try:
            yield region
        finally:
            for key in r.scan_iter(match=f"nethical:{region}:*"):
                r.delete(key)
    finally:
        r.close()


@contextlib.asynccontextmanager
async def redis_client(namespace: str) -> AsyncIterator[aioredis.Redis]:
    """A client of its own on the shared Redis; the keys under ``namespace`` are removed
    afterwards."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        names = [k async for k in client.scan_iter(match=namespace + "*", count=500)]
        if names:
            await client.unlink(*names)
        await client.aclose()


@contextlib.asynccontextmanager
async def redis_proxy() -> AsyncIterator[CuttableProxy]:
    """A proxy in front of the shared Redis whose connections a test can cut."""
    from tcpproxy import CuttableProxy

    host, port = REDIS_URL.removeprefix("redis://").split("/")[0].split(":")
    proxy = CuttableProxy(host, int(port))
    await proxy.start()
    try:
        yield proxy
    finally:
        proxy.resume()
        await proxy.close()
