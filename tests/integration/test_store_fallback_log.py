"""A store that falls back to its embedded default is not what the operator asked for:
the node says so as a warning; the stores it got as asked are information."""

from __future__ import annotations

import logging
import socket

import pytest

from region_node.stores import NodeStores, StoreConfig


async def test_a_fallback_is_a_warning_and_a_store_as_asked_is_information(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    caplog.set_level(logging.INFO, logger="region_node.stores")
    stores = await NodeStores.open(
        StoreConfig(cache_url=f"redis://127.0.0.1:{port}/0"), "fallback-log"
    )
    try:
        levels = {
            r.getMessage().split(":", 1)[0]: r.levelno
            for r in caplog.records
            if r.name == "region_node.stores"
        }
        assert levels == {
            "cache": logging.WARNING,  # redis unreachable → memory
            "timeseries": logging.INFO,
            "audit": logging.INFO,
        }, caplog.text
    finally:
        await stores.close()
