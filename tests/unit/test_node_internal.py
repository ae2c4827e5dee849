"""The node's own observations (evaluations' metrics) reach the windows in bulk, exactly."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nethical_grpc.errors import MeshError
from nethical_grpc.series import IngestBatch, SeriesKey, SummaryQuery
from region_node.node import INTERNAL_DELAY_S, INTERNAL_PENDING_VALUES, NodeIdentity, RegionNode
from region_node.windows import WindowConfig

NANOS = 1_000_000_000
T0 = 1_700_000_000 * NANOS  # a window boundary for 10 s windows


def node(**config: int) -> RegionNode:
    return RegionNode(NodeIdentity("r1", "r1-a"), WindowConfig(**config), clock=lambda: T0)


def key(decision: str) -> SeriesKey:
    return SeriesKey("risk_score", (("decision", decision),))


def by_window(n: RegionNode) -> dict[tuple[str, int], tuple[int, float, list[float]]]:
    """Per (decision, window start): count, sum and a few quantiles."""
    out = {}
    for window in range(3):
        start = T0 + window * 10 * NANOS
        q = SummaryQuery(start_ns=start, end_ns=start + 10 * NANOS, group_by=("decision",))
        for g in n.summaries(q):
            s = g.summary
            out[(dict(g.labels)["decision"], window)] = (
                s.count,
                s.moments.sum,
                s.quantiles([0.1, 0.5, 0.9]).tolist(),
            )
    return out


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["allow", "block"]),
            st.integers(0, 2),  # window
            st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_bulk_application_gives_the_windows_of_applying_each_batch(
    batches: list[tuple[str, int, list[float]]],
) -> None:
    buffered, direct = node(), node()

    async def record_all() -> int:
        # inside a running loop, so the batches wait and are applied together on the read
        for decision, window, values in batches:
            batch = IngestBatch(
                key(decision), np.array(values), None, T0 + window * 10 * NANOS + 5 * NANOS
            )
            buffered.record_internal([batch])
            direct.store.apply(batch)
        return buffered.store.version

    assert asyncio.run(record_all()) == 0  # nothing applied before the read
    got, want = by_window(buffered), by_window(direct)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k][0] == want[k][0]
        assert got[k][1] == pytest.approx(want[k][1], rel=1e-12, abs=1e-12)
        assert got[k][2] == want[k][2]


async def test_observations_wait_for_a_read_or_the_delay() -> None:
    n = node()
    before = n.store.version
    n.record_internal([IngestBatch(key("allow"), np.array([0.2, 0.4]), None, T0)])
    assert n.store.version == before  # waiting, not applied yet
    await asyncio.sleep(INTERNAL_DELAY_S * 4)
    assert n.store.version > before  # the timer applied them, no read needed
    assert n.store.series_count == 1

    n.record_internal([IngestBatch(key("block"), np.array([0.9]), None, T0)])
    version = n.version  # reading the version applies what waits
    assert n.store.series_count == 2 and version[0] == n.store.version


async def test_many_waiting_values_are_applied_at_once() -> None:
    n = node()
    values = np.full(INTERNAL_PENDING_VALUES, 0.5)
    n.record_internal([IngestBatch(key("allow"), values, None, T0)])
    assert n.store.series_count == 1  # over the bound: applied without waiting


async def test_a_batch_over_the_label_cap_is_refused_whole() -> None:
    n = node(max_label_sets_per_metric=1)
    n.record_internal([IngestBatch(key("allow"), np.array([0.1]), None, T0)])
    n.apply_pending()
    with pytest.raises(MeshError):
        n.record_internal(
            [
                IngestBatch(key("allow"), np.array([0.3]), None, T0),
                IngestBatch(key("block"), np.array([0.9]), None, T0),
            ]
        )
    groups = n.summaries(SummaryQuery(group_by=("decision",)))
    assert [(dict(g.labels)["decision"], g.summary.count) for g in groups] == [("allow", 1)]


async def test_series_still_waiting_count_against_the_caps() -> None:
    """Each call, and an Ingest between them, sees the series recorded before and not
    applied yet: the caps hold (each call admitted one more new series while they
    waited)."""
    n = node(max_label_sets_per_metric=2, max_series=3)
    refused = 0
    for decision in ("allow", "restrict", "block", "terminate"):
        try:
            n.record_internal([IngestBatch(key(decision), np.array([0.5]), None, T0)])
        except MeshError:
            refused += 1
    assert refused == 2
    with pytest.raises(MeshError):  # risk_score has its two label sets, one still waiting
        n.ingest(IngestBatch(SeriesKey("risk_score", (("decision", "x"),)), np.ones(1), None, T0))
    n.ingest(IngestBatch(SeriesKey("other", ()), np.ones(1), None, T0))  # the third series
    with pytest.raises(MeshError):
        n.ingest(IngestBatch(SeriesKey("more", ()), np.ones(1), None, T0))
    n.apply_pending()
    assert n.store.series_count == 3
