"""An instance-scope node with a write-ahead log, killed between a flush and the log's
checkpoint, restarted under a new instance id on the same log (a pod's generated name):
every reader of the region's store must count each logged batch once.

PostgreSQL is the real server on this machine (a schema per test, dropped afterwards).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from meshutil import count_and_gaps
from services import PG_URL, fresh_schema

from nethical_grpc import client
from region_node.server import RegionServerConfig, start_region_server
from region_node.stores import StoreConfig


@pytest.fixture
def pg_schema() -> Iterator[str]:
    with fresh_schema("inst39") as schema:
        yield schema


async def _region_count(cfg: StoreConfig, metric: str) -> int:
    """What a region-scope reader of the store (no log of its own) counts, once its peers
    are read."""
    reader, _ = await start_region_server(
        RegionServerConfig(
            region_id="eu", instance_id="eu-reader", region_scope=True, stores=cfg, model=None
        )
    )
    try:
        for _ in range(100):
            count, gaps = await count_and_gaps(reader.address, metric)
            if not gaps:
                return count
            await asyncio.sleep(0.05)
        raise AssertionError(f"the reader's answers still name gaps: {gaps}")
    finally:
        await reader.drain(announce_s=0, grace_s=0)


@pytest.mark.parametrize("killed_before_checkpoint", [True, False])
async def test_a_restart_under_a_new_id_in_instance_scope_counts_each_batch_once(
    pg_schema: str, tmp_path: Path, killed_before_checkpoint: bool
) -> None:
    """The old id's flushed windows stay in the store (every region reader counts them):
    the new id must not replay the segments their mark names into its own windows too.
    Its own answers then hold what they hold after a clean stop (whose checkpoint drops
    those segments): the batches since, not the old id's."""
    cfg = StoreConfig(timeseries_url=f"{PG_URL}?schema={pg_schema}", flush_interval_s=60.0)

    def config(instance: str) -> RegionServerConfig:
        return RegionServerConfig(
            region_id="eu", instance_id=instance, stores=cfg, model=None, wal_dir=tmp_path / "w"
        )

    server, node = await start_region_server(config("eu-old"))
    async with client.insecure_channel(server.address) as ch:
        sent = [client.encode_ingest_request("m", np.arange(100.0), batch_id="b1")]
        assert (await client.ingest(ch, sent)).accepted_batches == 1
    assert node.wal is not None
    if killed_before_checkpoint:
        # the stop's flush commits the windows with the log's mark; the process dies
        # before the checkpoint (SIGKILL between the two): the segments stay as they were
        node.wal.checkpoint = lambda *args, **kwargs: 0  # type: ignore[method-assign]
    await server.drain(announce_s=0, grace_s=0)

    server, _ = await start_region_server(config("eu-new"))
    try:
        assert await count_and_gaps(server.address, "m") == (0, [])
        async with client.insecure_channel(server.address) as ch:
            # the log still knows the batch: its retry is a duplicate, not applied again
            retry = await client.ingest(ch, sent)
            assert (retry.accepted_batches, retry.duplicate_batches) == (0, 1)
            more = [client.encode_ingest_request("m", np.arange(5.0), batch_id="b2")]
            assert (await client.ingest(ch, more)).accepted_batches == 1
        assert await count_and_gaps(server.address, "m") == (5, [])
    finally:
        await server.drain(announce_s=0, grace_s=0)  # flushes the new id's windows
    assert await _region_count(cfg, "m") == 105
