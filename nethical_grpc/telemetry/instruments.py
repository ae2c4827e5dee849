"""The mesh's named OpenTelemetry instruments, and the recorder that writes to them.

Names follow OpenTelemetry conventions; the Prometheus exporter turns dots into
underscores, appends the unit (``_seconds``) and ``_total`` to counters. The exported
Prometheus names are listed in :data:`PROMETHEUS_METRICS` (the Grafana dashboard uses
only those).

Metric attributes (Prometheus labels) are bounded by construction: RPC method and
status code, peer region (one per configured region), health status, fan-out level.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.metrics import Meter

from nethical_grpc.telemetry.recorder import CoverageLevel, Recorder

RPC_SERVER_DURATION = "rpc.server.duration"
RPC_CLIENT_DURATION = "rpc.client.duration"
INGEST_BATCHES = "nethical.ingest.batches"
INGEST_OBSERVATIONS = "nethical.ingest.observations"
HEALTH_TRANSITIONS = "nethical.health.transitions"
FANOUT_QUERIED = "nethical.fanout.queried"
FANOUT_ANSWERED = "nethical.fanout.answered"
FANOUT_COVERAGE = "nethical.fanout.coverage"

PROMETHEUS_METRICS: Mapping[str, str] = {
    RPC_SERVER_DURATION: "rpc_server_duration_seconds",
    RPC_CLIENT_DURATION: "rpc_client_duration_seconds",
    INGEST_BATCHES: "nethical_ingest_batches_total",
    INGEST_OBSERVATIONS: "nethical_ingest_observations_total",
    HEALTH_TRANSITIONS: "nethical_health_transitions_total",
    FANOUT_QUERIED: "nethical_fanout_queried_total",
    FANOUT_ANSWERED: "nethical_fanout_answered_total",
    FANOUT_COVERAGE: "nethical_fanout_coverage",
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
