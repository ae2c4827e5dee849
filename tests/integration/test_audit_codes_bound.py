"""The embedded audit store forgets the agent and region codes no kept record uses: a node
whose records are bounded (``max_records``, or the retention) but that sees ever-new agent
ids holds a bounded number of codes, in its tables and in memory, and a code is never given
to another name.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_storage_audit import REGION, all_pages, dataset, page_ids

from nethical_grpc.storage.audit import AuditRecord, SqliteFtsAuditStore

BOUND = 100
AGENT = "agent-x-"
Opener = Callable[..., Awaitable[SqliteFtsAuditStore]]


@pytest.fixture(params=["memory", "sqlite"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens stores of the parametrised kind; file stores share one file."""
    opened: list[SqliteFtsAuditStore] = []

    async def open_one(**kwargs: object) -> SqliteFtsAuditStore:
        path = None if request.param == "memory" else str(tmp_path / "codes.db")
        store = await SqliteFtsAuditStore.open(REGION, path, **kwargs)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


def distinct_agents(n: int, start: int = 0, when: datetime | None = None) -> list[AuditRecord]:
    """``n`` records, each of an agent of its own (``agent-x-<i>``)."""
    base = dataset(240)
    return [
        replace(
            base[i % len(base)],
            action_id=f"act-{i:06d}",
            agent_id=f"{AGENT}{i:06d}",
            region_id=REGION,
            timestamp=(when or base[i % len(base)].timestamp) + timedelta(seconds=i),
        )
        for i in range(start, start + n)
    ]


async def table_rows(store: SqliteFtsAuditStore, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` as the store's own writer connection sees them (a ``memory://``
    database is private to it)."""

    def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
        return conn.execute(sql).fetchall()

    return await store._writer.run(run)


async def codes_held(store: SqliteFtsAuditStore) -> tuple[int, int]:
    """Rows of the agent code table, and its highest code."""
    ((n, top),) = await table_rows(store, "SELECT count(*), max(code) FROM audit_agents")
    return int(n), int(top)


async def agent_code(store: SqliteFtsAuditStore, agent: str) -> int | None:
    rows = await table_rows(store, f"SELECT code FROM audit_agents WHERE agent_id = '{agent}'")
    return int(rows[0][0]) if rows else None


def names_in_memory(root: object, prefix: str = AGENT) -> int:
    """Agent ids (strings starting with ``prefix``) reachable from ``root`` through
    containers and this project's objects: what the store keeps in memory."""
    seen: set[int] = set()
    stack = [root]
    found = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            found += obj.startswith(prefix)
        elif isinstance(obj, dict):
            stack += [*obj.keys(), *obj.values()]
        elif isinstance(obj, list | tuple | set | frozenset):
            stack += list(obj)
        elif type(obj).__module__.startswith("nethical_grpc") and not isinstance(obj, type):
            stack += list(getattr(obj, "__dict__", {}).values())
            for cls in type(obj).__mro__:
                for slot in getattr(cls, "__slots__", ()):
                    if hasattr(obj, slot):
                        stack.append(getattr(obj, slot))
    return found


async def load(store: SqliteFtsAuditStore, records: Sequence[AuditRecord], size: int) -> None:
    for i in range(0, len(records), size):
        result = await store.index_audit_logs(records[i : i + size])
        assert result.indexed == len(records[i : i + size])


async def test_codes_stay_bounded_with_the_records(open_store: Opener) -> None:
    store = await open_store(max_records=BOUND)
    records = distinct_agents(10_000)
    most = 0
    for i in range(0, len(records), 50):
        await load(store, records[i : i + 50], 50)
        # a reader between writes: the mirror tops itself up and is cut
        if i % 1000 == 0:
            await store.get_audit_log_statistics()
        most = max(most, (await codes_held(store))[0])
    assert store.records_dropped == 10_000 - BOUND
    assert most <= 3 * BOUND  # not one per agent ever seen (10,000)
    assert names_in_memory(store) <= 3 * BOUND

    kept = records[-BOUND:]
    stats = await store.get_audit_log_statistics()
    assert (stats.total_actions, stats.unique_agents) == (BOUND, BOUND)
    # every kept record comes back with its own agent
    pages = await all_pages(store, page_size=30)
    assert {(h.record.action_id, h.record.agent_id) for p in pages for h in p.hits} == {
        (r.action_id, r.agent_id) for r in kept
    }
    for r in (kept[0], kept[57], kept[-1]):
        assert page_ids(await all_pages(store, agent_id=r.agent_id)) == [r.action_id]
        text = r.stated_intent.split()[0] if r.stated_intent else None
        hits = await all_pages(store, text, agent_id=r.agent_id, order="relevance")
        assert [h.record.agent_id for p in hits for h in p.hits] == [r.agent_id]
        one = await store.get_audit_log_statistics(agent_id=r.agent_id)
        assert (one.total_actions, one.unique_agents) == (1, 1)
    # an agent whose records were all dropped is simply not found
    gone = records[0].agent_id
    assert await agent_code(store, gone) is None
    assert page_ids(await all_pages(store, agent_id=gone)) == []
    assert (await store.get_audit_log_statistics(agent_id=gone)).total_actions == 0

    # seen again, it gets a code never given before
    _, top = await codes_held(store)
    back = replace(records[0], action_id="act-back")
    await load(store, [back], 1)
    code = await agent_code(store, gone)
    assert code is not None and code > top
    assert page_ids(await all_pages(store, agent_id=gone)) == ["act-back"]
    (hit,) = (await store.search_audit_logs(agent_id=gone)).hits
    assert hit.record == back
    assert (await store.get_audit_log_statistics(agent_id=gone)).total_actions == 1


async def test_retention_forgets_the_codes_of_expired_records(open_store: Opener) -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    store = await open_store(retention_days=1)
    old = distinct_agents(2_000, when=now - timedelta(days=10))
    recent = distinct_agents(50, start=2_000, when=now - timedelta(hours=2))
    await load(store, [*old, *recent], 500)
    assert (await codes_held(store))[0] == 2_050

    assert await store.apply_retention(now) == 2_000
    held, _ = await codes_held(store)
    assert held <= 51  # the recent agents' codes, and at most the highest
    assert names_in_memory(store) <= 51
    stats = await store.get_audit_log_statistics()
    assert (stats.total_actions, stats.unique_agents) == (50, 50)
    assert page_ids(await all_pages(store, agent_id=old[5].agent_id)) == []
    r = recent[7]
    assert page_ids(await all_pages(store, agent_id=r.agent_id)) == [r.action_id]


@pytest.mark.parametrize("open_store", ["sqlite"], indirect=True)
async def test_stores_sharing_a_file_never_use_a_forgotten_code(open_store: Opener) -> None:
    """Two stores on one file (as two processes): one forgets a code the other had used;
    the other's writes and reads must not rely on it."""
    a = await open_store(max_records=BOUND)
    b = await open_store(max_records=BOUND)
    first = replace(distinct_agents(1)[0], agent_id="agent-shared", action_id="shared-1")
    await load(a, [first], 1)
    assert page_ids(await all_pages(b, agent_id="agent-shared")) == ["shared-1"]
    old_code = await agent_code(a, "agent-shared")

    await load(b, distinct_agents(1_000, start=1), 50)  # drops it, forgets its code
    assert await agent_code(b, "agent-shared") is None
    assert page_ids(await all_pages(a, agent_id="agent-shared")) == []

    again = replace(first, action_id="shared-2")
    await load(a, [again], 1)
    new_code = await agent_code(a, "agent-shared")
    assert new_code is not None and old_code is not None and new_code > old_code
    for store in (a, b):
        (hit,) = (await store.search_audit_logs(agent_id="agent-shared")).hits
        assert hit.record == again
        stats = await store.get_audit_log_statistics(agent_id="agent-shared")
        assert (stats.total_actions, stats.unique_agents) == (1, 1)
        everything = await all_pages(store, page_size=40)
        assert {h.record.agent_id for p in everything for h in p.hits} >= {"agent-shared"}
        assert all(h.record.agent_id for p in everything for h in p.hits)
