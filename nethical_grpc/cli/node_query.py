"""``nethical-mesh query --node``: one region node's summaries turned into the answer a
coordinator of that node alone would give, so an operator can see what a single node
holds (the same table, JSON and coverage as a global query)."""

from __future__ import annotations

import argparse

import grpc

from coordinator.federation import DEFAULT_QUANTILES, one_node_result
from coordinator.servicer import global_metrics_response
from nethical_grpc import client, convert
from nethical_grpc.errors import MeshError
from nethical_grpc.v1 import coordinator_pb2, region_node_pb2, region_node_pb2_grpc
from nethical_grpc.validation import check_quantiles

#: The query flags only a coordinator honours: the argument each sets, and the flag.
COORDINATOR_ONLY = {
    "region": "--region",
    "weight": "--weight",
    "breakdown": "--breakdown",
    "region_timeout": "--region-timeout",
}


def coordinator_only_flag(args: argparse.Namespace) -> str | None:
    """The first flag given that a region node cannot honour, or None."""
    for attr, flag in COORDINATOR_ONLY.items():
        if getattr(args, attr):
            return flag
    return None


def summaries_request(opts: client.QueryOptions) -> region_node_pb2.GetSummariesRequest:
    """The GetSummaries call that asks a node what ``opts`` asks a coordinator."""
    request = region_node_pb2.GetSummariesRequest(
        metrics=list(opts.metrics),
        label_filter=dict(opts.label_filter or {}),
        group_by_labels=list(opts.group_by_labels),
    )
    if opts.start_ns is not None:
        request.start_time.FromNanoseconds(opts.start_ns)
    if opts.end_ns is not None:
        request.end_time.FromNanoseconds(opts.end_ns)
    return request


async def node_metrics(
    channel: grpc.aio.Channel, opts: client.QueryOptions, timeout: float
) -> coordinator_pb2.GetGlobalMetricsResponse:
    """The node's answer to ``opts`` as a coordinator of it alone would give it.

    Raises :class:`MeshError`: INVALID_ARGUMENT for quantiles outside [0, 1], as a
    coordinator refuses them, and INVALID_RESPONSE for summaries a coordinator would
    refuse."""
    quantiles = tuple(opts.quantiles) or DEFAULT_QUANTILES
    check_quantiles("quantiles", quantiles)
    stub = region_node_pb2_grpc.RegionNodeServiceStub(channel)
    message = await stub.GetSummaries(summaries_request(opts), timeout=timeout)
    try:
        result = one_node_result(message.region_id, convert.summaries_answer_from_proto(message))
    except ValueError as exc:
        raise MeshError(message=str(exc), reason="INVALID_RESPONSE") from None
    return global_metrics_response(result, quantiles, opts.include_summary)
