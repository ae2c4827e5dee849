"""CoordinatorService: parse and validate, call the federation or the gateway, build
responses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from coordinator.federation import (
    DEFAULT_QUANTILES,
    DEFAULT_REGION_TIMEOUT_S,
    Coverage,
    Federation,
    GlobalQuery,
    GlobalResult,
    Missing,
    check_region_timeout,
)
from coordinator.gateway import Gateway, UpstreamError
from coordinator.instances import Health, RegionInstance
from nethical_grpc import convert
from nethical_grpc.balancing import LoadBalancingStrategy
from nethical_grpc.errors import ResourceExhausted, rpc_errors, rpc_stream_errors
from nethical_grpc.grpc_options import DEFAULT_MAX_MESSAGE_BYTES
from nethical_grpc.series import SummaryQuery
from nethical_grpc.summary import Summary
from nethical_grpc.v1 import coordinator_pb2, coordinator_pb2_grpc
from nethical_grpc.validation import check_quantiles

Context = grpc.aio.ServicerContext[Any, Any]

_MISSING = {
    Missing.UNHEALTHY: coordinator_pb2.MISSING_REASON_UNHEALTHY,
    Missing.DEADLINE_EXCEEDED: coordinator_pb2.MISSING_REASON_DEADLINE_EXCEEDED,
    Missing.UNAVAILABLE: coordinator_pb2.MISSING_REASON_UNAVAILABLE,
    Missing.ERROR: coordinator_pb2.MISSING_REASON_ERROR,
    Missing.INVALID_RESPONSE: coordinator_pb2.MISSING_REASON_INVALID_RESPONSE,
    Missing.INCOMPLETE: coordinator_pb2.MISSING_REASON_INCOMPLETE,
}

_HEALTH = {
    Health.UNKNOWN: coordinator_pb2.INSTANCE_HEALTH_UNSPECIFIED,
    Health.SERVING: coordinator_pb2.INSTANCE_HEALTH_SERVING,
    Health.NOT_SERVING: coordinator_pb2.INSTANCE_HEALTH_NOT_SERVING,
    Health.UNREACHABLE: coordinator_pb2.INSTANCE_HEALTH_UNREACHABLE,
}

_STRATEGY = {
    LoadBalancingStrategy.ROUND_ROBIN: coordinator_pb2.BALANCING_STRATEGY_ROUND_ROBIN,
    LoadBalancingStrategy.LEAST_CONNECTIONS: coordinator_pb2.BALANCING_STRATEGY_LEAST_CONNECTIONS,
    LoadBalancingStrategy.WEIGHTED_ROUND_ROBIN: (
        coordinator_pb2.BALANCING_STRATEGY_WEIGHTED_ROUND_ROBIN
    ),
    LoadBalancingStrategy.RANDOM: coordinator_pb2.BALANCING_STRATEGY_RANDOM,
    LoadBalancingStrategy.REGION_AWARE: coordinator_pb2.BALANCING_STRATEGY_REGION_AWARE,
}

# leave the caller's own deadline some room for the merge and the reply
_DEADLINE_MARGIN_S = 0.05


async def _pass_through(context: Context, err: UpstreamError) -> None:
    """Abort with a node's status as it was: code, message and rich details."""
    await context.abort(err.code(), err.details(), trailing_metadata=err.trailing_metadata())


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServiceServicer):
    def __init__(
        self,
        federation: Federation,
        gateway: Gateway | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.federation = federation
        self.gateway = gateway if gateway is not None else Gateway(federation.registry)
        # the server's send limit: a larger answer is refused with a reason, not cut off
        self.max_message_bytes = max_message_bytes

    @rpc_errors
    async def GetGlobalMetrics(  # noqa: N802 (gRPC method name)
        self, request: coordinator_pb2.GetGlobalMetricsRequest, context: Context
    ) -> coordinator_pb2.GetGlobalMetricsResponse:
        query, quantiles = global_query_parts(request)
        timeout_s = (
            convert.checked_duration_ns(request.region_timeout, "region_timeout") / 1e9
            if request.HasField("region_timeout")
            else DEFAULT_REGION_TIMEOUT_S
        )
        check_region_timeout(timeout_s)
        remaining = context.time_remaining()
        if remaining is not None:
            # answer within the caller's own deadline, leaving room for the merge
            timeout_s = max(0.001, min(timeout_s, remaining - _DEADLINE_MARGIN_S))
        result = await self.federation.global_metrics(
            GlobalQuery(
                query=query,
                quantiles=quantiles,
                regions=tuple(request.regions),
                region_weights=dict(request.region_weights),
                include_breakdown=request.include_region_breakdown,
                region_timeout_s=timeout_s,
            )
        )
        response = global_metrics_response(result, quantiles, request.include_summary)
        _check_answer_size(response, self.max_message_bytes)
        return response

    @rpc_errors
    async def ListRegions(  # noqa: N802
        self, request: coordinator_pb2.ListRegionsRequest, context: Context
    ) -> coordinator_pb2.ListRegionsResponse:
        registry = self.federation.registry
        balancer = registry.balancer
        stats = balancer.get_statistics()["instances"]
        response = coordinator_pb2.ListRegionsResponse(
            strategy=_STRATEGY[balancer.strategy],
            local_region=self.gateway.settings.local_region,
            stay_in_region=self.gateway.settings.stay_in_region,
        )
        by_region = registry.by_region()
        for region_id in registry.region_ids:
            instances = by_region.get(region_id, [])
            response.regions.add(
                region_id=region_id,
                healthy=any(i.health is Health.SERVING for i in instances),
                instances=[_instance_info(i, stats.get(i.inst.instance_id)) for i in instances],
            )
        return response

    @rpc_errors
    async def Evaluate(  # noqa: N802
        self, request: coordinator_pb2.CoordinatorServiceEvaluateRequest, context: Context
    ) -> coordinator_pb2.CoordinatorServiceEvaluateResponse:
        timeout_s = self.gateway.timeout_for(context.time_remaining())
        try:
            return await self.gateway.evaluate(request, timeout_s)
        except UpstreamError as err:
            await _pass_through(context, err)
            raise AssertionError("unreachable") from None  # abort raises

    @rpc_stream_errors
    async def EvaluateStream(  # noqa: N802
        self,
        request_iterator: AsyncIterator[coordinator_pb2.CoordinatorServiceEvaluateStreamRequest],
        context: Context,
    ) -> AsyncIterator[coordinator_pb2.CoordinatorServiceEvaluateStreamResponse]:
        try:
            async for answer in self.gateway.evaluate_stream(
                request_iterator, context.time_remaining()
            ):
                yield answer
        except UpstreamError as err:
            await _pass_through(context, err)


def _instance_info(
    inst: RegionInstance, stats: dict[str, Any] | None
) -> coordinator_pb2.InstanceInfo:
    info = coordinator_pb2.InstanceInfo(
        instance_id=inst.name,
        endpoint=inst.endpoint,
        health=_HEALTH[inst.health],
        health_changed_at=convert.ns_to_timestamp(inst.health_changed_ns),
        resolved_from=inst.inst.resolved_from,
        version=inst.version,
        region_scope=inst.region_scope,
    )
    if stats is None:
        return info
    info.requests = stats["requests"]
    info.failures = stats["failures"]
    info.rejected = stats["rejected"]
    info.error_rate = stats["error_rate"]
    info.in_flight = max(0, stats["in_flight"])
    info.ejected = stats["ejected"]
    info.weight = stats["weight"]
    info.routable = stats["available"]
    if stats["ewma_latency_ms"] is not None:
        info.ewma_latency.CopyFrom(convert.ns_to_duration(round(stats["ewma_latency_ms"] * 1e6)))
    if stats["ejected"]:
        info.ejected_for.CopyFrom(convert.ns_to_duration(round(stats["ejected_for_s"] * 1e9)))
    return info


def global_query_parts(
    request: coordinator_pb2.GetGlobalMetricsRequest,
) -> tuple[SummaryQuery, tuple[float, ...]]:
    """What a GetGlobalMetrics request asks the regions' nodes, and its quantiles
    (default 0.5, 0.9, 0.99); INVALID_ARGUMENT when malformed."""
    query = convert.summary_query_from_proto(request)
    quantiles = tuple(request.quantiles) or DEFAULT_QUANTILES
    check_quantiles("quantiles", quantiles)
    return query, quantiles


def global_metrics_response(
    result: GlobalResult, quantiles: tuple[float, ...], include_summary: bool = False
) -> coordinator_pb2.GetGlobalMetricsResponse:
    """``result`` as GetGlobalMetrics answers it: each group's statistics (and its
    regions', when broken down) with ``quantiles``, privacy, and the coverage."""
    response = coordinator_pb2.GetGlobalMetricsResponse(
        coverage=_coverage_to_proto(result.coverage, result.computed_at_ns),
        computed_at=convert.ns_to_timestamp(result.computed_at_ns),
    )
    for group in result.groups:
        item = response.results.add(
            metric=group.metric,
            labels=dict(group.labels),
            statistics=_statistics(group.summary, quantiles),
            regions=[
                coordinator_pb2.RegionStatistics(region_id=r, statistics=_statistics(s, quantiles))
                for r, s in group.per_region.items()
            ],
        )
        if group.weighted_mean is not None:
            item.weighted_mean = group.weighted_mean
        noise = group.privacy()
        if noise is not None:
            item.privacy.CopyFrom(
                coordinator_pb2.MetricPrivacy(
                    noised=True,
                    noised_regions=sorted(group.noised),
                    count_error=convert.noise_error_to_proto(noise.count_error),
                    sum_error=convert.noise_error_to_proto(noise.sum_error),
                    mean_error=noise.mean_error,
                    max_epsilon=max(i.epsilon for r in group.noised.values() for i in r),
                )
            )
        if include_summary:
            item.summary.CopyFrom(convert.summary_to_proto(group.summary))
    return response


def _check_answer_size(response: coordinator_pb2.GetGlobalMetricsResponse, limit: int) -> None:
    size = response.ByteSize()
    if size <= limit:
        return
    raise ResourceExhausted(
        message=(
            f"the answer holds {len(response.results)} results, {size:,} bytes encoded, over "
            f"this coordinator's {limit:,}-byte message limit; narrow the query (fewer "
            "metrics, a label filter, fewer group_by labels), leave out include_summary or "
            "include_region_breakdown, or raise --max-message-bytes"
        ),
        reason="ANSWER_TOO_LARGE",
        metadata={"answer_bytes": str(size), "max_message_bytes": str(limit)},
    )


def _statistics(s: Summary, quantiles: tuple[float, ...]) -> coordinator_pb2.SeriesStatistics:
    if s.count == 0:
        return coordinator_pb2.SeriesStatistics()
    estimates = s.quantiles(quantiles)
    return coordinator_pb2.SeriesStatistics(
        count=s.count,
        sum=s.total,
        mean=s.mean,
        min=s.min,
        max=s.max,
        stddev=s.stddev,
        quantiles=[
            coordinator_pb2.QuantileValue(quantile=q, value=float(v))
            for q, v in zip(quantiles, estimates, strict=True)
        ],
        relative_error=s.relative_error,
    )


def _coverage_to_proto(c: Coverage, now_ns: int) -> coordinator_pb2.Coverage:
    msg = coordinator_pb2.Coverage(
        regions_requested=c.regions_requested,
        regions_answered=c.regions_answered,
        missing=[
            coordinator_pb2.MissingRegion(
                region_id=m.region_id,
                instance_id=m.instance_id,
                reason=_MISSING[m.reason],
                message=m.message,
            )
            for m in c.missing
        ],
        instances_queried=c.instances_queried,
        instances_answered=c.instances_answered,
        complete=c.complete,
    )
    if c.oldest_data_as_of_ns:
        msg.oldest_data_as_of.CopyFrom(convert.ns_to_timestamp(c.oldest_data_as_of_ns))
        msg.max_staleness.CopyFrom(convert.ns_to_duration(max(0, now_ns - c.oldest_data_as_of_ns)))
    return msg
