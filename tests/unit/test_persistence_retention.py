"""The node's store loop applies the audit store's retention with the time series'."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.storage.audit import AuditRecord
from region_node.node import NodeIdentity, RegionNode
from region_node.persistence import Persister
from region_node.stores import NodeStores, StoreConfig


def record(agent: str, age: timedelta) -> AuditRecord:
    return AuditRecord(
        agent_id=agent,
        decision="ALLOW",
        risk_score=0.1,
        action_text="list files",
        timestamp=datetime.now(UTC) - age,
    )


async def test_a_retention_round_deletes_old_audit_records(tmp_path: Path) -> None:
    config = StoreConfig(audit_url=f"sqlite:///{tmp_path}/audit.db", audit_retention_days=2)
    stores = await NodeStores.open(config, "r1")
    try:
        await stores.audit.index_audit_logs(
            [record("old", timedelta(days=3)), record("new", timedelta(hours=1))]
        )
        p = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, ProfileBook(), 60.0)
        await p.apply_retention()
        page = await stores.audit.search_audit_logs(page_size=10)
        assert [h.record.agent_id for h in page.hits] == ["new"]
    finally:
        await stores.close()


async def test_an_audit_retention_failure_is_logged_and_the_time_series_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stores = await NodeStores.open(StoreConfig(), "r1")
    try:

        async def fail(now: datetime | None = None) -> int:
            raise OSError("disk I/O error")

        applied = []

        async def timeseries_retention(now: datetime | None = None) -> datetime | None:
            applied.append(True)
            return None

        monkeypatch.setattr(stores.audit, "apply_retention", fail)
        monkeypatch.setattr(stores.timeseries, "apply_retention", timeseries_retention)
        p = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, ProfileBook(), 60.0)
        with caplog.at_level(logging.WARNING):
            await p.apply_retention()
        assert "applying the audit store's retention failed: disk I/O error" in caplog.text
        assert applied == [True]
    finally:
        await stores.close()
