"""Region scope review: instances of one region sharing a real PostgreSQL schema, each
answering for the whole region (its own windows and the others' from the store).

PostgreSQL is the real server on this machine (a schema per test, dropped afterwards).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from meshutil import count_and_gaps
from services import PG_URL, fresh_schema

from nethical_grpc import client
from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.series import SummaryQuery
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import Persister
from region_node.server import RegionServerConfig, start_region_server
from region_node.stores import NodeStores, StoreConfig


@pytest.fixture
def pg_schema() -> Iterator[str]:
    with fresh_schema("scope37") as schema:
        yield schema


async def test_the_peers_are_a_gap_from_the_start_until_they_are_read(pg_schema: str) -> None:
    """A region-scope instance reads its peers' windows only after its own restore, which
    may take long (--serve-while-restoring) or fail. Until they are read, an answer about
    the time since its start holds its own windows only: it must name the peers' as
    missing (PEERS_NOT_LOADED), or the coordinator takes it as the whole region's."""
    cfg = StoreConfig(timeseries_url=f"{PG_URL}?schema={pg_schema}", flush_interval_s=60.0)
    # another instance of the region flushed 100 values (a clean stop flushes)
    peer, _ = await start_region_server(
        RegionServerConfig(
            region_id="eu", instance_id="eu-a", region_scope=True, stores=cfg, model=None
        )
    )
    async with client.insecure_channel(peer.address) as ch:
        await client.ingest(ch, [client.encode_ingest_request("m", np.arange(100.0))])
    await peer.drain(announce_s=0, grace_s=0)

    stores = await NodeStores.open(cfg, "eu")
    blocker = await psycopg.AsyncConnection.connect(PG_URL)
    node = RegionNode(NodeIdentity("eu", "eu-b", region_scope=True))
    persister = Persister(node, stores, ProfileBook(), 60.0)
    try:
        # the instance's own restore is held up by the store (a long restore)
        await blocker.execute(f'LOCK TABLE "{pg_schema}".window_summaries IN ACCESS EXCLUSIVE MODE')
        persister.start_soon()
        await asyncio.sleep(0.5)
        assert not persister.restored and node.peers is None
        # from the first window after the start (its own windows are whole there)
        window_ns = node.store.config.window_ns
        since_start = SummaryQuery(start_ns=(persister.started_ns // window_ns + 1) * window_ns)
        assert sum(g.summary.count for g in node.summaries(since_start)) == 0
        assert [g.reason for g in node.gaps_for(since_start)] == ["PEERS_NOT_LOADED"]
        await blocker.rollback()  # the store answers
        for _ in range(200):
            if node.peers is not None and not node.gap_reasons():
                break
            await asyncio.sleep(0.05)
        assert node.gaps_for(SummaryQuery()) == []
        assert sum(g.summary.count for g in node.summaries(SummaryQuery())) == 100
    finally:
        await blocker.close()
        await persister.stop()
        await stores.close()


async def test_a_restart_under_a_new_instance_id_counts_its_logged_batches_once(
    pg_schema: str, tmp_path: Path
) -> None:
    """An instance with a write-ahead log flushed its windows (and the log's mark) and was
    killed before it checkpointed the log; it comes back under a new instance id. Its old
    windows are now a peer's, in every region-scope answer: the segments the mark names
    must not be replayed into its own windows too (each value counted twice)."""
    cfg = StoreConfig(timeseries_url=f"{PG_URL}?schema={pg_schema}", flush_interval_s=60.0)

    def config(instance: str) -> RegionServerConfig:
        return RegionServerConfig(
            region_id="eu",
            instance_id=instance,
            region_scope=True,
            stores=cfg,
            model=None,
            wal_dir=tmp_path / "wal",
        )

    server, node = await start_region_server(config("eu-old"))
    async with client.insecure_channel(server.address) as ch:
        sent = [client.encode_ingest_request("m", np.arange(100.0), batch_id="b1")]
        assert (await client.ingest(ch, sent)).accepted_batches == 1
    assert node.wal is not None
    # the stop's flush commits the windows with the log's mark; the process dies before
    # the log's checkpoint (SIGKILL between the two): its segments stay as they were
    node.wal.checkpoint = lambda *args, **kwargs: 0  # type: ignore[method-assign]
    await server.drain(announce_s=0, grace_s=0)

    server, _ = await start_region_server(config("eu-new"))
    try:
        for _ in range(100):
            count, gaps = await count_and_gaps(server.address, "m")
            if not gaps:
                break
            await asyncio.sleep(0.05)
        assert (count, gaps) == (100, [])
        # and stays so (later refreshes and flushes change nothing)
        await asyncio.sleep(0.3)
        assert await count_and_gaps(server.address, "m") == (100, [])
    finally:
        await server.drain(announce_s=0, grace_s=0)
