"""The mesh's own measurements, as calls the mesh code makes: a no-op unless configured.

The region node, the health follower and the federation call :func:`get_recorder` and
record through what it returns. With telemetry not configured that is :data:`NOOP`,
whose methods do nothing (no validation, no allocation, no OpenTelemetry import), so
the instrumented code costs a global lookup and an empty call.
"""

from __future__ import annotations

from typing import Literal

CoverageLevel = Literal["region", "instance"]


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


NOOP = Recorder()
"""The recorder in use while telemetry is not configured."""
