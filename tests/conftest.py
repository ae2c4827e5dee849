"""Fixtures shared by every test directory."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from info_servers import InfoServers
from meshutil import Mesh, mesh_fixture

from region_node.stores import NodeStores, StoreConfig


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    async for m in mesh_fixture():
        yield m


@pytest.fixture
async def servers() -> AsyncIterator[InfoServers]:
    """Two InfoServers (``n0``, ``n1`` of region ``r1``) on loopback port 0; a test file
    that needs others defines its own ``servers``."""
    s = InfoServers()
    await s.start(2)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def stores() -> AsyncIterator[NodeStores]:
    """A region node's default stores (in memory, region ``r1``)."""
    s = await NodeStores.open(StoreConfig(), "r1")
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def sqlite_stores(tmp_path: Path) -> AsyncIterator[NodeStores]:
    """A region node's stores (region ``r1``) with its time-series store in a SQLite file
    (``tmp_path / "ts.db"``): durable, so windows are flushed and restored."""
    s = await NodeStores.open(StoreConfig(timeseries_url=f"sqlite:///{tmp_path / 'ts.db'}"), "r1")
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]
