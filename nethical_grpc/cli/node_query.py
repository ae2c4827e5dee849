"""``nethical-mesh query --node``: one region node's summaries turned into the answer a
coordinator of that node alone would give, so an operator can see what a single node
holds (the same table, JSON and coverage as a global query)."""

from __future__ import annotations

import argparse

import grpc

from coordinator.federation import one_node_result
from coordinator.servicer import global_metrics_response, global_query_parts
from nethical_grpc import client, convert
from nethical_grpc.errors import MeshError
from nethical_grpc.v1 import coordinator_pb2, region_node_pb2_grpc

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


async def node_metrics(
    channel: grpc.aio.Channel, opts: client.QueryOptions, timeout: float
) -> coordinator_pb2.GetGlobalMetricsResponse:
    """The node's answer to ``opts`` as a coordinator of it alone would give it.

    Raises :class:`MeshError`: INVALID_ARGUMENT for what a coordinator refuses (quantiles
    outside [0, 1], say), and INVALID_RESPONSE for summaries a coordinator would
    refuse."""
    # checked as a coordinator checks it, then asked as a coordinator asks its nodes
    query, quantiles = global_query_parts(client.global_metrics_request(opts))
    stub = region_node_pb2_grpc.RegionNodeServiceStub(channel)
    message = await stub.GetSummaries(convert.summary_query_to_proto(query), timeout=timeout)
    try:
        result = one_node_result(message.region_id, convert.summaries_answer_from_proto(message))
    except ValueError as exc:
        raise MeshError(message=str(exc), reason="INVALID_RESPONSE") from None
    return global_metrics_response(result, quantiles, opts.include_summary)
