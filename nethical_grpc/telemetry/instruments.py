"""The mesh's named OpenTelemetry instruments, and the recorder that writes to them.

Names follow OpenTelemetry conventions; the Prometheus exporter turns dots into
underscores, appends the unit (``_seconds``) and ``_total`` to counters. The exported
Prometheus names are listed in :data:`PROMETHEUS_METRICS` (the Grafana dashboard uses
only those).

Metric attributes (Prometheus labels) are bounded by construction: RPC method and
status code, peer region and region (one per configured region), instance address (one
per configured or resolved instance), health status, fan-out level and outcome,
decision (four), store and backend (three stores), data-gap reason (four).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping

from opentelemetry.metrics import Meter, Observation

from nethical_grpc.telemetry.recorder import (
    CoverageLevel,
    GapReasons,
    InstanceStates,
    LogSize,
    Recorder,
    StoreEvictions,
    StoreStates,
    WindowCounts,
)

RPC_SERVER_DURATION = "rpc.server.duration"
RPC_CLIENT_DURATION = "rpc.client.duration"
INGEST_BATCHES = "nethical.ingest.batches"
INGEST_OBSERVATIONS = "nethical.ingest.observations"
HEALTH_TRANSITIONS = "nethical.health.transitions"
FANOUT_QUERIED = "nethical.fanout.queried"
FANOUT_ANSWERED = "nethical.fanout.answered"
FANOUT_COVERAGE = "nethical.fanout.coverage"
FANOUT_REGION_DURATION = "nethical.fanout.region.duration"
EVALUATIONS = "nethical.evaluations"
STORE_RECORDS_DROPPED = "nethical.store.records_dropped"
STORE_RECORDS_EVICTED = "nethical.store.records_evicted"
INSTANCE_UP = "nethical.instance.up"
STORE_UP = "nethical.store.up"
STORE_FALLBACK = "nethical.store.fallback"
SERIES_HELD = "nethical.series.held"
WINDOWS_HELD = "nethical.windows.held"
DATA_GAPS = "nethical.data.gaps"
WAL_SIZE = "nethical.wal.size"
GATEWAY_CALLS = "nethical.gateway.calls"

PROMETHEUS_METRICS: Mapping[str, str] = {
    RPC_SERVER_DURATION: "rpc_server_duration_seconds",
    RPC_CLIENT_DURATION: "rpc_client_duration_seconds",
    INGEST_BATCHES: "nethical_ingest_batches_total",
    INGEST_OBSERVATIONS: "nethical_ingest_observations_total",
    HEALTH_TRANSITIONS: "nethical_health_transitions_total",
    FANOUT_QUERIED: "nethical_fanout_queried_total",
    FANOUT_ANSWERED: "nethical_fanout_answered_total",
    FANOUT_COVERAGE: "nethical_fanout_coverage",
    FANOUT_REGION_DURATION: "nethical_fanout_region_duration_seconds",
    EVALUATIONS: "nethical_evaluations_total",
    STORE_RECORDS_DROPPED: "nethical_store_records_dropped_total",
    STORE_RECORDS_EVICTED: "nethical_store_records_evicted_total",
    INSTANCE_UP: "nethical_instance_up",
    STORE_UP: "nethical_store_up",
    STORE_FALLBACK: "nethical_store_fallback",
    SERIES_HELD: "nethical_series_held",
    WINDOWS_HELD: "nethical_windows_held",
    DATA_GAPS: "nethical_data_gaps",
    WAL_SIZE: "nethical_wal_size_bytes",
    GATEWAY_CALLS: "nethical_gateway_calls_total",
}
"""OpenTelemetry instrument name → Prometheus family name (histograms add
``_bucket``/``_count``/``_sum``)."""

# seconds: 100 µs (an in-process unary call) up to 30 s (a slow fan-out deadline)
RPC_DURATION_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: How a gateway call ended: a node answered it (its verdict or its own error status),
#: no usable instance was there to send it to, or no answer came (unreachable, in doubt,
#: deadline).
GATEWAY_OUTCOMES = ("answered", "no_instance", "failed")
#: The gateway labels of a call that named no region and had no local one, and of one
#: that went to no instance.
ANY_REGION = "any"
NO_REGION = "none"
# fraction answered; `le="1"` holds the complete answers, `le="0"` the empty ones
COVERAGE_BUCKETS = (0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)

ATTR_PEER_REGION = "nethical.peer.region"
_LEVELS: tuple[CoverageLevel, ...] = ("region", "instance")


class RpcInstruments:
    """Latency histograms (seconds) of served and sent RPCs; their counts are the RPC counts."""

    def __init__(self, meter: Meter) -> None:
        self.server_duration = meter.create_histogram(
            RPC_SERVER_DURATION,
            unit="s",
            description="Duration of RPCs served, by method and status code",
            explicit_bucket_boundaries_advisory=RPC_DURATION_BUCKETS_S,
        )
        self.client_duration = meter.create_histogram(
            RPC_CLIENT_DURATION,
            unit="s",
            description="Duration of RPCs sent (fan-out calls), by method, status code, peer",
            explicit_bucket_boundaries_advisory=RPC_DURATION_BUCKETS_S,
        )


class MeterRecorder(Recorder):
    """A :class:`Recorder` that writes to OpenTelemetry instruments on ``meter``."""

    enabled = True

    def __init__(self, meter: Meter) -> None:
        self._batches = meter.create_counter(
            INGEST_BATCHES, unit="{batch}", description="Ingest messages accepted"
        )
        self._observations = meter.create_counter(
            INGEST_OBSERVATIONS, unit="{observation}", description="Observations accepted"
        )
        self._transitions = meter.create_counter(
            HEALTH_TRANSITIONS,
            unit="{transition}",
            description="Health changes of region node instances, by new status",
        )
        self._queried = meter.create_counter(
            FANOUT_QUERIED,
            unit="{target}",
            description="Regions (or instances) a global query asked",
        )
        self._answered = meter.create_counter(
            FANOUT_ANSWERED,
            unit="{target}",
            description="Regions (or instances) that answered a global query",
        )
        self._coverage = meter.create_histogram(
            FANOUT_COVERAGE,
            unit="1",
            description="Fraction of the regions (or instances) asked that answered, per query",
            explicit_bucket_boundaries_advisory=COVERAGE_BUCKETS,
        )
        self._level_attrs = {level: {"level": level} for level in _LEVELS}
        self._region_duration = meter.create_histogram(
            FANOUT_REGION_DURATION,
            unit="s",
            description="Duration of each region's summary query in global queries, by "
            "region and outcome (either transport)",
            explicit_bucket_boundaries_advisory=RPC_DURATION_BUCKETS_S,
        )
        self._evaluations = meter.create_counter(
            EVALUATIONS, unit="{evaluation}", description="Actions evaluated, by decision"
        )
        self._dropped = meter.create_counter(
            STORE_RECORDS_DROPPED,
            unit="{record}",
            description="Records a node dropped instead of storing (evaluations' records "
            "or window summaries the stores refused, or writes fell too far behind)",
        )
        self._gateway = meter.create_counter(
            GATEWAY_CALLS,
            unit="{call}",
            description="Evaluate calls (and stream messages) the gateway routed, by the "
            "region asked for, the region they went to and outcome",
        )
        self._meter = meter
        # observable gauges are made on the first observe_* call (one callback each)
        self._instances: InstanceStates | None = None
        self._stores: StoreStates | None = None
        self._evictions: StoreEvictions | None = None
        self._windows: WindowCounts | None = None
        self._gaps: GapReasons | None = None
        self._wal: LogSize | None = None

    def record_ingest(self, batches: int, values: int) -> None:
        """Raises ``ValueError`` for a negative count."""
        if batches < 0 or values < 0:
            raise ValueError(f"ingest counts must be >= 0, got {batches} batches, {values} values")
        if batches:
            self._batches.add(batches)
        if values:
            self._observations.add(values)

    def record_health_transition(self, region: str, instance: str, status: str) -> None:
        """Raises ``ValueError`` when ``region``, ``instance`` or ``status`` is empty."""
        if not (region and instance and status):
            raise ValueError(
                "region, instance and status must be non-empty, got "
                f"{region!r}, {instance!r}, {status!r}"
            )
        # "node_instance", not "instance": Prometheus sets "instance" to the scraped
        # target (the coordinator) and renames a metric's own to "exported_instance"
        self._transitions.add(1, {"region": region, "node_instance": instance, "status": status})

    def record_coverage(self, queried: int, answered: int, level: CoverageLevel = "region") -> None:
        """Raises ``ValueError`` unless ``0 <= answered <= queried`` and ``level`` is known.

        A query that asked nobody (``queried == 0``) adds to the counters but not to the
        coverage histogram (its fraction is undefined).
        """
        attrs = self._level_attrs.get(level)
        if attrs is None:
            raise ValueError(f"level must be one of {_LEVELS}, got {level!r}")
        if not 0 <= answered <= queried:
            raise ValueError(f"need 0 <= answered <= queried, got {answered} of {queried}")
        self._queried.add(queried, attrs)
        self._answered.add(answered, attrs)
        if queried:
            self._coverage.record(answered / queried, attrs)

    def record_region_query(self, region: str, seconds: float, outcome: str) -> None:
        self._region_duration.record(seconds, {"region": region, "outcome": outcome})

    def record_evaluations(self, decisions: Mapping[str, int]) -> None:
        for decision, n in decisions.items():
            if n:
                self._evaluations.add(n, {"decision": decision})

    def record_gateway_call(
        self, region: str, served_region: str, outcome: str, calls: int = 1
    ) -> None:
        """Raises ``ValueError`` for an unknown ``outcome`` or a negative count."""
        if outcome not in GATEWAY_OUTCOMES:
            raise ValueError(f"outcome must be one of {GATEWAY_OUTCOMES}, got {outcome!r}")
        if calls < 0:
            raise ValueError(f"calls must be >= 0, got {calls}")
        if calls:
            attrs = {
                "region": region or ANY_REGION,
                "served_region": served_region or NO_REGION,
                "outcome": outcome,
            }
            self._gateway.add(calls, attrs)

    def record_dropped_records(self, records: int) -> None:
        if records < 0:
            raise ValueError(f"records must be >= 0, got {records}")
        if records:
            self._dropped.add(records)

    def observe_instances(self, states: InstanceStates) -> None:
        first = self._instances is None
        self._instances = states
        if first:
            self._gauge(
                INSTANCE_UP,
                "1 while a region node instance is SERVING to the coordinator",
                self._instance_flags,
            )

    def observe_stores(self, states: StoreStates) -> None:
        first = self._stores is None
        self._stores = states
        if first:
            self._gauge(
                STORE_UP,
                "1 while the node's last write to the store succeeded (or none failed yet)",
                functools.partial(self._store_flags, 2),
            )
            self._gauge(
                STORE_FALLBACK,
                "1 when the store runs on a fallback, not the backend asked for",
                functools.partial(self._store_flags, 3),
            )

    def observe_store_evictions(self, evictions: StoreEvictions) -> None:
        first = self._evictions is None
        self._evictions = evictions
        if first:
            self._meter.create_observable_counter(
                STORE_RECORDS_EVICTED,
                callbacks=[lambda _options: self._store_evictions()],
                unit="{record}",
                description="Records a store dropped, oldest first, to stay within its "
                "bound (--memory-store-records, or a SQLite audit file's max_records)",
            )

    def observe_windows(self, counts: WindowCounts) -> None:
        first = self._windows is None
        self._windows = counts
        if first:
            self._gauge(
                SERIES_HELD,
                "Series the node holds windows of",
                self._series_held,
                unit="{series}",
            )
            self._gauge(
                WINDOWS_HELD,
                "Windows the node holds in memory, by kind: full-width (window) or merged "
                "past --rollup-after (rollup)",
                self._windows_held,
                unit="{window}",
            )

    def observe_gaps(self, reasons: GapReasons) -> None:
        first = self._gaps is None
        self._gaps = reasons
        if first:
            self._gauge(
                DATA_GAPS,
                "1 for each reason the node's answers leave out data it keeps now "
                "(STORED_WINDOWS_NOT_LOADED, STORE_FALLBACK, PEERS_NOT_LOADED, PEERS_STALE)",
                self._gaps_now,
            )

    def observe_wal(self, size: LogSize) -> None:
        first = self._wal is None
        self._wal = size
        if first:
            self._gauge(
                WAL_SIZE,
                "Bytes the node's write-ahead log takes on disk (--wal-dir): a flush "
                "interval's batches on a durable store, the retention's on an in-memory one",
                lambda: [] if self._wal is None else [Observation(self._wal()[1])],
                unit="By",
            )

    def _gaps_now(self) -> list[Observation]:
        if self._gaps is None:
            return []
        return [Observation(1, {"reason": r}) for r in self._gaps()]

    def _series_held(self) -> list[Observation]:
        return [] if self._windows is None else [Observation(self._windows()[0])]

    def _windows_held(self) -> list[Observation]:
        if self._windows is None:
            return []
        _, windows, rollups = self._windows()
        return [Observation(windows, {"kind": "window"}), Observation(rollups, {"kind": "rollup"})]

    def _store_evictions(self) -> list[Observation]:
        rows = self._evictions() if self._evictions is not None else ()
        return [Observation(n, {"store": store, "backend": backend}) for store, backend, n in rows]

    def _gauge(
        self,
        name: str,
        description: str,
        read: Callable[[], Iterable[Observation]],
        unit: str = "1",
    ) -> None:
        """A gauge ``read`` at each export (scrape); 0/1 values unless ``unit`` says."""
        self._meter.create_observable_gauge(
            name, callbacks=[lambda _options: read()], unit=unit, description=description
        )

    def _instance_flags(self) -> list[Observation]:
        rows = self._instances() if self._instances is not None else ()
        return [
            Observation(int(up), {"region": region, "node_instance": name})
            for region, name, up in rows
        ]

    def _store_flags(self, column: int) -> list[Observation]:
        """One observation per store of column ``column`` of its state (2: up,
        3: fallback)."""
        rows = self._stores() if self._stores is not None else ()
        return [Observation(int(row[column]), {"store": row[0], "backend": row[1]}) for row in rows]
