"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from meshutil import Mesh, mesh_fixture

from region_node.stores import NodeStores, StoreConfig


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    async for m in mesh_fixture():
        yield m


@pytest.fixture
async def stores() -> AsyncIterator[NodeStores]:
    """A region node's default stores (in memory, region ``r1``)."""
    s = await NodeStores.open(StoreConfig(), "r1")
    try:
        yield s
    finally:
        await s.close()
