"""Metric points to columns: metadata shared by many points is serialised per mapping."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest

from nethical_grpc.storage.timeseries import MetricPoint
from nethical_grpc.storage.timeseries.model import labels_text, metric_columns, window_rows

BASE = datetime(2026, 3, 1, tzinfo=UTC)


def test_points_sharing_a_mapping_each_get_its_json() -> None:
    allow = {"decision": "ALLOW", "action_type": "query"}
    block = {"decision": "BLOCK", "action_type": "command"}
    same_content = dict(allow)
    metas = [allow, block, None, allow, same_content, block, allow]
    points = [MetricPoint(f"agent-{i}", "risk", i / 8, BASE, None, m) for i, m in enumerate(metas)]
    cols = metric_columns(points, "r1", 0)
    assert [None if m is None else json.loads(m) for m in cols.metadata] == metas
    # the same mapping, serialised once, is the same string in every row it labels
    assert cols.metadata[0] is cols.metadata[3] is cols.metadata[6]
    assert cols.metadata[4] == cols.metadata[0]
    assert cols.agent_ids == [f"agent-{i}" for i in range(len(metas))]


def test_a_bad_shared_mapping_is_refused_at_its_first_point() -> None:
    bad = {"score": math.nan}
    points = [MetricPoint("a", "risk", 1.0, BASE)] * 3 + [
        MetricPoint("a", "risk", 1.0, BASE, None, bad)
    ] * 2
    with pytest.raises(ValueError, match=r"points\[3\]\.metadata: .*not JSON-serialisable"):
        metric_columns(points, "r1", 0)


def test_window_rows_parse_each_label_text_once_and_copy_it_per_row() -> None:
    texts = [labels_text({"series": str(i % 3), "zone": "a"}) for i in range(7)]
    read = [
        ("r1", "r1-a", "latency_ms", t, i * 10, 10, memoryview(b"\x08\x01"), 1, i)
        for i, t in enumerate(texts)
    ]
    rows = window_rows(read)
    assert [r.labels for r in rows] == [json.loads(t) for t in texts]
    assert [(r.window_start_ns, r.payload, r.change_seq) for r in rows] == [
        (i * 10, b"\x08\x01", i) for i in range(7)
    ]
    assert all(type(r.payload) is bytes for r in rows)
    # rows of the same series hold equal labels, never the same dict: one row's change
    # would otherwise show in every other row of its series
    rows[0].labels["series"] = "changed"
    assert rows[3].labels == {"series": "0", "zone": "a"}
