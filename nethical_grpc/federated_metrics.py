"""The guide's ``FederatedMetricsAggregator``, on the mesh.

The guide aggregates metrics across regions in one Python object. The mesh keeps the
same calls but does the work where it belongs: observations go to a region node of their
region (``Ingest``) and stay there; aggregates come from the coordinator
(``GetGlobalMetrics``), merged from summaries only (counts, moments, quantile sketches),
with the regions that answered in :attr:`FederatedMetricsAggregator.last_coverage`.

This is a blocking client, for scripts and notebooks, as the guide calls it; asyncio code
uses :mod:`nethical_grpc.client`.

    agg = FederatedMetricsAggregator(
        regions=["us-east-1", "eu-west-1"],
        coordinator="127.0.0.1:50050",
        region_nodes={"us-east-1": "127.0.0.1:50051", "eu-west-1": "127.0.0.1:50052"},
    )
    agg.submit_regional_metrics("us-east-1", {"latency_ms": latencies})
    agg.aggregate_metrics(["latency_ms"], aggregation_type="mean")
    agg.aggregate_by_region("latency_ms", "p99")
    agg.compute_percentiles("latency_ms", [50, 90, 95, 99])
"""

from __future__ import annotations

import math
import numbers
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import grpc
import numpy as np
import numpy.typing as npt

from nethical_grpc.client import QueryOptions, encode_ingest_request, global_metrics_request
from nethical_grpc.grpc_options import channel_options
from nethical_grpc.proto_limits import FIRST_TIMESTAMP_NS
from nethical_grpc.v1 import coordinator_pb2, coordinator_pb2_grpc, region_node_pb2

__all__ = ["AGGREGATION_TYPES", "FederatedMetricsAggregator"]

#: What ``aggregation_type`` may name, besides a percentile such as ``"p99"`` or ``"p99.9"``.
AGGREGATION_TYPES: Final = ("mean", "sum", "count", "min", "max", "std", "median")
_PERCENTILE = re.compile(r"^p(\d+(?:\.\d+)?)$")
#: The most copies of one pre-aggregated value a submission may stand for.
MAX_SUBMITTED_COUNT: Final = 10_000_000
#: The most values one Ingest message carries (1 MiB of doubles): a metric with more goes in
#: several messages, as one message may be at most the node's message limit (8 MiB by
#: default), which a pre-aggregated ``count`` or a large array would otherwise pass.
VALUES_PER_MESSAGE: Final = 1 << 17

ChannelFactory = Callable[[str], grpc.Channel]


def _insecure(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=channel_options())


class FederatedMetricsAggregator:
    """Submit a region's observations and read global and per-region aggregates.

    ``regions``: the regions aggregated (``None``: every region the coordinator knows).
    ``aggregation_interval`` (seconds): how long an answer is reused for the same question,
    so a dashboard polling every second does not fan out to every region each time (0:
    always ask; a submission through this object forgets the answers).
    ``retention_period`` (seconds): aggregates cover the data of the last
    ``retention_period`` seconds (the nodes keep what their own ``--retention`` allows).
    ``coordinator``: the coordinator's address. ``region_nodes``: a region node's address
    per region, needed only to submit. ``channel``: builds a channel for an address (for
    TLS and tokens, e.g. ``ClientSecurity.sync_channel``); default plaintext.
    """

    def __init__(
        self,
        regions: Sequence[str] | None = None,
        aggregation_interval: float = 60.0,
        retention_period: float = 86_400.0,
        *,
        coordinator: str = "127.0.0.1:50050",
        region_nodes: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        channel: ChannelFactory = _insecure,
    ) -> None:
        if regions is not None and (isinstance(regions, str) or not regions or not all(regions)):
            # an empty list would be sent as no filter: every region's figures
            raise ValueError("regions must be a non-empty sequence of region ids (or None for all)")
        if not math.isfinite(aggregation_interval) or aggregation_interval < 0:
            raise ValueError(f"aggregation_interval must be >= 0 s, got {aggregation_interval!r}")
        if not math.isfinite(retention_period) or retention_period <= 0:
            raise ValueError(f"retention_period must be > 0 s, got {retention_period!r}")
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not (math.isfinite(timeout) and timeout > 0)
        ):
            # None would send calls with no deadline; <= 0 would fail every call
            raise ValueError(f"timeout must be > 0 s, got {timeout!r}")
        self.regions = list(regions) if regions is not None else None
        self.aggregation_interval = float(aggregation_interval)
        self.retention_period = float(retention_period)
        self.timeout = float(timeout)
        self._channel_factory = channel
        self._coordinator_channel = channel(coordinator)
        self._coordinator = coordinator_pb2_grpc.CoordinatorServiceStub(self._coordinator_channel)
        self._region_nodes = dict(region_nodes or {})
        self._node_channels: dict[str, grpc.Channel] = {}
        # (metrics, quantiles, breakdown) -> (monotonic time asked, answer)
        self._answers: dict[
            tuple[tuple[str, ...], tuple[float, ...], bool],
            tuple[float, coordinator_pb2.GetGlobalMetricsResponse],
        ] = {}
        #: The coverage of the last answer: regions asked, answered, missing and why.
        self.last_coverage: coordinator_pb2.Coverage | None = None

    # ------------------------------------------------------------------ submitting

    def submit_regional_metrics(
        self,
        region_id: str,
        metrics: Mapping[str, float | Sequence[float] | np.ndarray],
        count: int = 1,
        labels: Mapping[str, str] | None = None,
    ) -> int:
        """Send observations to a node of ``region_id``; returns how many were accepted.

        Each metric maps to its observations (an array), or to one value. With
        ``count`` > 1 a single value stands for ``count`` observations of that value (a
        region's mean over ``count`` observations, as in the guide): counts, sums and
        means aggregate exactly, but quantiles can only see the values they are given,
        so send the observations themselves when percentiles matter. One ``Ingest``
        stream per call, applied message by message (a metric's values in messages of at
        most :data:`VALUES_PER_MESSAGE`); a rejected message raises ``grpc.RpcError``
        (INVALID_ARGUMENT) after the messages before it were applied.
        """
        if isinstance(count, bool | np.bool_) or not isinstance(count, numbers.Integral):
            raise ValueError(f"count must be a positive integer, got {count!r}")
        count = int(count)  # a NumPy integer too
        if count < 1:
            raise ValueError(f"count must be a positive integer, got {count!r}")
        if count > MAX_SUBMITTED_COUNT:
            raise ValueError(f"count must be at most {MAX_SUBMITTED_COUNT}, got {count}")
        columns: list[tuple[str, npt.NDArray[np.float64], int]] = []
        for name, value in metrics.items():
            values = np.asarray(value, dtype=np.float64)
            if values.ndim != 0 and count != 1:
                raise ValueError(
                    f"metrics[{name!r}]: count applies to single values, not to arrays"
                )
            columns.append((name, values.reshape(-1), count if values.ndim == 0 else 1))
        ingest = self._node(region_id).stream_unary(
            "/nethical_grpc.v1.RegionNodeService/Ingest",
            request_serializer=None,
            response_deserializer=region_node_pb2.IngestResponse.FromString,
        )
        response: region_node_pb2.IngestResponse = ingest(
            iter(_messages(columns, labels)), timeout=self.timeout
        )
        self._answers.clear()  # what this object asks next includes what it just sent
        return int(response.accepted_values)

    # ------------------------------------------------------------------ aggregating

    def aggregate_metrics(
        self, metric_names: Sequence[str] | None = None, aggregation_type: str = "mean"
    ) -> dict[str, float]:
        """``{metric: value}`` across the regions, for each of ``metric_names`` (``None``:
        every metric with data); NaN for a metric no region has data for."""
        quantile = _quantile_of(aggregation_type)
        names = _names(metric_names)
        if metric_names is not None and not names:
            return {}  # none asked for (an empty list would be sent as "every metric")
        answer = self._ask(names, () if quantile is None else (quantile,), breakdown=False)
        found = {r.metric: _pick(r.statistics, aggregation_type) for r in answer.results}
        return {name: found.get(name, math.nan) for name in names} if names else found

    def aggregate_by_region(
        self, metric_name: str, aggregation_type: str = "mean"
    ) -> dict[str, float]:
        """``{region: value}`` of one metric, for each region that has data for it."""
        quantile = _quantile_of(aggregation_type)
        answer = self._ask((metric_name,), () if quantile is None else (quantile,), breakdown=True)
        out: dict[str, float] = {}
        for result in answer.results:
            for region in result.regions:
                out[region.region_id] = _pick(region.statistics, aggregation_type)
        return dict(sorted(out.items()))

    def compute_percentiles(
        self,
        metric_name: str,
        percentiles: Sequence[float | np.number[Any]] | npt.NDArray[np.number[Any]] = (
            50,
            90,
            95,
            99,
        ),
    ) -> dict[float, float]:
        """``{percentile: value}`` of one metric across the regions (percentiles in
        [0, 100]); each within the sketch's relative-error bound of the exact one."""
        ps = list(percentiles)
        if not ps or not all(
            isinstance(p, int | float | np.integer | np.floating)
            and not isinstance(p, bool)
            and 0 <= p <= 100
            for p in ps
        ):
            raise ValueError(f"percentiles must be numbers in [0, 100], got {ps!r}")
        answer = self._ask((metric_name,), tuple(p / 100 for p in ps), breakdown=False)
        if not answer.results or not answer.results[0].statistics.count:
            return {p: math.nan for p in ps}
        values = [q.value for q in answer.results[0].statistics.quantiles]
        return dict(zip(ps, values, strict=True))

    def close(self) -> None:
        self._coordinator_channel.close()
        for ch in self._node_channels.values():
            ch.close()
        self._node_channels.clear()

    def __enter__(self) -> FederatedMetricsAggregator:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _node(self, region_id: str) -> grpc.Channel:
        target = self._region_nodes.get(region_id)
        if target is None:
            known = ", ".join(sorted(self._region_nodes)) or "none"
            raise ValueError(
                f"no region node address for {region_id!r} (region_nodes has: {known})"
            )
        if region_id not in self._node_channels:
            self._node_channels[region_id] = self._channel_factory(target)
        return self._node_channels[region_id]

    def _ask(
        self, metrics: tuple[str, ...], quantiles: tuple[float, ...], breakdown: bool
    ) -> coordinator_pb2.GetGlobalMetricsResponse:
        key = (metrics, quantiles, breakdown)
        now = time.monotonic()
        kept = self._answers.get(key)
        if kept is not None and now - kept[0] < self.aggregation_interval:
            self.last_coverage = kept[1].coverage  # the coverage of the answer given
            return kept[1]
        opts = QueryOptions(
            metrics=metrics,
            quantiles=quantiles,
            regions=self.regions or (),
            start_ns=_start_ns(self.retention_period),
            include_region_breakdown=breakdown,
        )
        answer: coordinator_pb2.GetGlobalMetricsResponse = self._coordinator.GetGlobalMetrics(
            global_metrics_request(opts), timeout=self.timeout
        )
        self.last_coverage = answer.coverage
        if self.aggregation_interval > 0:
            # answers past the interval are of no more use: dropped, so that the cache
            # holds only the questions of the last interval, not every one ever asked
            interval = self.aggregation_interval
            self._answers = {k: v for k, v in self._answers.items() if now - v[0] < interval}
            self._answers[key] = (now, answer)
        return answer


def _messages(
    columns: Sequence[tuple[str, npt.NDArray[np.float64], int]],
    labels: Mapping[str, str] | None,
) -> list[bytes]:
    """The Ingest messages of ``(metric, values, copies)`` columns, encoded before the call
    starts (so a bad label fails here, not mid-stream): each at most
    :data:`VALUES_PER_MESSAGE` values. A single value standing for ``copies`` observations
    is one message of a whole chunk, encoded once and sent as often as it fits, and one of
    the rest: ``copies`` never makes an array of its size."""
    step = VALUES_PER_MESSAGE
    out: list[bytes] = []
    for name, values, copies in columns:
        if copies == 1:
            out += [
                encode_ingest_request(name, values[at : at + step], labels)
                for at in range(0, max(values.size, 1), step)
            ]
            continue
        full, rest = divmod(copies, step)
        if full:
            out += [encode_ingest_request(name, np.full(step, values[0]), labels)] * full
        if rest:
            out.append(encode_ingest_request(name, np.full(rest, values[0]), labels))
    return out


def _start_ns(retention_period: float) -> int:
    """Where aggregates start: ``retention_period`` seconds ago. A period longer than a
    Timestamp reaches back covers everything (compared as floats: past 1.8e299 s the
    period in nanoseconds is infinite, which ``int`` refuses)."""
    now = time.time_ns()
    back_ns = retention_period * 1e9
    if back_ns >= now - FIRST_TIMESTAMP_NS:
        return FIRST_TIMESTAMP_NS
    return max(FIRST_TIMESTAMP_NS, now - int(back_ns))


def _names(metric_names: Sequence[str] | None) -> tuple[str, ...]:
    if metric_names is None:
        return ()
    if isinstance(metric_names, str):
        return (metric_names,)
    return tuple(metric_names)


def _quantile_of(aggregation_type: str) -> float | None:
    """The quantile an aggregation asks for (``None``: a moment); ``ValueError`` if
    unknown."""
    if aggregation_type == "median":
        return 0.5
    m = _PERCENTILE.match(aggregation_type)
    if m is not None:
        p = float(m.group(1))
        if p <= 100:
            return p / 100
    if aggregation_type not in AGGREGATION_TYPES:
        raise ValueError(
            f"aggregation_type must be one of {', '.join(AGGREGATION_TYPES)} or a "
            f"percentile such as 'p99', got {aggregation_type!r}"
        )
    return None


def _pick(s: coordinator_pb2.SeriesStatistics, aggregation_type: str) -> float:
    if not s.count:
        return math.nan
    if aggregation_type == "count":
        return float(s.count)
    moments = {"mean": s.mean, "sum": s.sum, "min": s.min, "max": s.max, "std": s.stddev}
    if aggregation_type in moments:
        return float(moments[aggregation_type])
    return float(s.quantiles[0].value)  # the one quantile asked for
