"""The node's store loop applies the audit store's retention, a bounded step a round, so
that a large backlog never holds up the evaluations' records."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nethical_grpc.governance.decision import Decision, Evaluation
from nethical_grpc.governance.detectors import Action
from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.governance.requests import EvaluationRequest, Outcome
from nethical_grpc.storage.audit import AuditRecord
from region_node import persistence
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


def outcomes_of(agent: str, n: int) -> list[Outcome]:
    request = EvaluationRequest(Action(agent, "SELECT 1", "query"), "req", "query")
    evaluation = Evaluation(Decision.ALLOW, 0.1, 0.9)
    now_ns = time.time_ns()  # inside the retention
    return [Outcome(request, evaluation, 0.5, 1_000, now_ns + i) for i in range(n)]


async def test_a_retention_round_deletes_old_audit_records(tmp_path: Path) -> None:
    config = StoreConfig(audit_url=f"sqlite:///{tmp_path}/audit.db", audit_retention_days=2)
    stores = await NodeStores.open(config, "r1")
    try:
        await stores.audit.index_audit_logs(
            [record("old", timedelta(days=3)), record("new", timedelta(hours=1))]
        )
        p = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, ProfileBook(), 60.0)
        assert await p.apply_audit_retention() is False  # all that was due
        page = await stores.audit.search_audit_logs(page_size=10)
        assert [h.record.agent_id for h in page.hits] == ["new"]
    finally:
        await stores.close()


async def test_an_audit_retention_failure_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stores = await NodeStores.open(StoreConfig(), "r1")
    try:

        async def fail(now: datetime | None = None, limit: int | None = None) -> int:
            raise OSError("disk I/O error")

        monkeypatch.setattr(stores.audit, "apply_retention", fail)
        p = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, ProfileBook(), 60.0)
        with caplog.at_level(logging.WARNING):
            assert await p.apply_audit_retention() is False
        assert "applying the audit store's retention failed: disk I/O error" in caplog.text
    finally:
        await stores.close()


async def test_a_backlog_goes_a_step_a_round_with_records_written_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(persistence, "AUDIT_RETENTION_STEP", 5)
    monkeypatch.setattr(persistence, "AUDIT_RETENTION_CATCH_UP_S", 0.2)
    config = StoreConfig(audit_url=f"sqlite:///{tmp_path}/audit.db", audit_retention_days=2)
    stores = await NodeStores.open(config, "r1")
    steps: list[int] = []
    try:
        await stores.audit.index_audit_logs([record("old", timedelta(days=3)) for _ in range(12)])
        real = stores.audit.apply_retention

        async def counted(now: datetime | None = None, limit: int | None = None) -> int:
            deleted = await real(now, limit)
            steps.append(deleted)
            return deleted

        monkeypatch.setattr(stores.audit, "apply_retention", counted)
        p = Persister(RegionNode(NodeIdentity("r1", "r1-a")), stores, ProfileBook(), 60.0)
        await p.start()
        try:
            # a node's evaluations, queued while the backlog is being deleted
            p.enqueue(outcomes_of("busy", 3))
            for _ in range(100):
                if sum(steps) == 12 and not p.backlog():
                    break
                await asyncio.sleep(0.05)
        finally:
            await p.stop()
        assert steps[:3] == [5, 5, 2]  # a step a round, until less than a step was due
        page = await stores.audit.search_audit_logs(page_size=20)
        assert sorted(h.record.agent_id for h in page.hits) == ["busy"] * 3
    finally:
        await stores.close()


async def test_a_node_keeps_the_record_bound_of_its_audit_url(tmp_path: Path) -> None:
    # ?max_records=N bounds a node's audit file (and the memory its searches keep) by
    # count, beside the retention in days
    config = StoreConfig(audit_url=f"sqlite:///{tmp_path}/audit.db?max_records=5")
    stores = await NodeStores.open(config, "r1")
    try:
        await stores.audit.index_audit_logs(
            [record(f"agent-{i}", timedelta(minutes=10 - i)) for i in range(8)]
        )
        page = await stores.audit.search_audit_logs(page_size=10)
        assert sorted(h.record.agent_id for h in page.hits) == [f"agent-{i}" for i in range(3, 8)]
        # counted where operators read evictions (nethical_store_records_evicted_total)
        assert ("audit", "sqlite", 3) in stores.evictions()
    finally:
        await stores.close()
