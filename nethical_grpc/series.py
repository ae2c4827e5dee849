"""Domain types for series: keys, ingest batches, summary queries and results."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from nethical_grpc.summary import Summary

Labels = tuple[tuple[str, str], ...]


def freeze_labels(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """A series: a metric and its label values."""

    metric: str
    labels: Labels


@dataclass(slots=True)
class IngestBatch:
    """A validated batch of one series: values and either one time or one per value."""

    key: SeriesKey
    values: np.ndarray
    timestamps_ns: np.ndarray | None
    time_ns: int
    batch_id: str = ""


@dataclass(frozen=True, slots=True)
class SummaryQuery:
    """Which series and time range to summarise, grouped how."""

    start_ns: int | None = None
    end_ns: int | None = None
    metrics: frozenset[str] = frozenset()
    label_filter: Labels = ()
    group_by: tuple[str, ...] = ()


@dataclass(slots=True)
class GroupSummary:
    """The merged summary of one metric and label group over a time range."""

    metric: str
    labels: Labels
    summary: Summary
    start_ns: int
    end_ns: int
    data_as_of_ns: int


@dataclass(frozen=True, slots=True)
class DataGap:
    """Data a node keeps but cannot put in its answers for now (see ``DataGap`` in
    region_node.proto): their summaries of ``[start_ns, end_ns)`` may undercount."""

    #: in capitals: STORED_WINDOWS_NOT_LOADED, STORE_FALLBACK, PEERS_NOT_LOADED, PEERS_STALE,
    #: PEERS_WINDOW_MISMATCH, STORED_WINDOWS_OTHER_WIDTH
    reason: str
    #: None: from the start of the node's retention
    start_ns: int | None
    #: None: open-ended
    end_ns: int | None
    message: str

    def overlaps(self, start_ns: int | None, end_ns: int | None) -> bool:
        """Whether the gap and the range ``[start_ns, end_ns)`` (None: unbounded on that
        side) share a moment."""
        starts = [t for t in (self.start_ns, start_ns) if t is not None]
        ends = [t for t in (self.end_ns, end_ns) if t is not None]
        return not starts or not ends or max(starts) < min(ends)
