"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from meshutil import Mesh, mesh_fixture


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    async for m in mesh_fixture():
        yield m
