"""The mesh's own measurements, as calls the mesh code makes: a no-op unless configured.

The region node, the health follower and the federation call :func:`get_recorder` and
record through what it returns. With telemetry not configured that is :data:`NOOP`,
whose methods do nothing (no validation, no allocation, no OpenTelemetry import), so
the instrumented code costs a global lookup and an empty call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Literal

CoverageLevel = Literal["region", "instance"]
#: (region, instance name, up) for every instance the coordinator knows
InstanceStates = Callable[[], Iterable[tuple[str, str, bool]]]
#: (store, backend in use, up: its last write did not fail, fallback: not the backend
#: asked for) for every store of a node
StoreStates = Callable[[], Iterable[tuple[str, str, bool, bool]]]
#: (store, backend in use, records it dropped for its in-memory bound since the start)
StoreEvictions = Callable[[], Iterable[tuple[str, str, int]]]
#: (series, full-width windows, rollup windows) a node holds in memory
WindowCounts = Callable[[], tuple[int, int, int]]
#: the reasons of the gaps a node's answers may name now (see DataGap)
GapReasons = Callable[[], Iterable[str]]
#: (segments, bytes) of a node's write-ahead log on disk
LogSize = Callable[[], tuple[int, int]]


class Recorder:
    """Records the mesh's own metrics. This base class is the no-op recorder.

    Subclasses (see :class:`nethical_grpc.telemetry.instruments.MeterRecorder`) validate
    their arguments and raise ``ValueError`` for impossible counts.
    """

    enabled = False

    def record_ingest(self, batches: int, values: int) -> None:
        """Count ``batches`` accepted ingest messages holding ``values`` observations."""

    def record_health_transition(self, region: str, instance: str, status: str) -> None:
        """Count one change of an instance's health to ``status`` (e.g. ``"serving"``)."""

    def record_coverage(self, queried: int, answered: int, level: CoverageLevel = "region") -> None:
        """Record one fan-out: ``answered`` of ``queried`` regions (or instances) replied."""

    def record_region_query(self, region: str, seconds: float, outcome: str) -> None:
        """One summary query of the fan-out to ``region`` (either transport) took
        ``seconds`` and ended ``outcome`` ("ok", "deadline_exceeded", "unavailable",
        "error", "invalid_response")."""

    def record_evaluations(self, decisions: Mapping[str, int]) -> None:
        """Count evaluations by decision name (e.g. ``{"ALLOW": 7, "BLOCK": 1}``)."""

    def record_gateway_call(
        self, region: str, served_region: str, outcome: str, calls: int = 1
    ) -> None:
        """Count ``calls`` Evaluate calls (or stream messages) the gateway routed for
        ``region`` (empty: none named, no local region) to an instance of
        ``served_region`` (the last one tried; empty: none), ending ``outcome``
        ("answered", "no_instance", "failed"). A call answered in another region than
        its own moved the action there."""

    def record_dropped_records(self, records: int) -> None:
        """Count records (evaluations', window summaries) a node dropped instead of
        storing them."""

    def observe_instances(self, states: InstanceStates) -> None:
        """Export whether each instance is up (health SERVING), read at each scrape."""

    def observe_stores(self, states: StoreStates) -> None:
        """Export whether each store works and whether it is a fallback, at each scrape."""

    def observe_store_evictions(self, evictions: StoreEvictions) -> None:
        """Export, at each scrape, how many records each store dropped to stay within its
        in-memory bound (a counter: the oldest records went, newer ones were kept)."""

    def observe_windows(self, counts: WindowCounts) -> None:
        """Export, at each scrape, the series and the windows (full-width and rollup) a
        node holds in memory: what its memory grows with."""

    def observe_gaps(self, reasons: GapReasons) -> None:
        """Export, at each scrape, 1 for each reason of the data a node keeps but leaves
        out of its answers now (alertable: its answers undercount)."""

    def observe_wal(self, size: LogSize) -> None:
        """Export, at each scrape, the bytes a node's write-ahead log takes on disk
        (alertable: on an in-memory store it holds the whole retention's batches)."""


NOOP = Recorder()
"""The recorder in use while telemetry is not configured."""
