"""RegionNodeService: parse and validate, call the node, map errors. Nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from nethical_grpc import __version__, convert
from nethical_grpc.components import components
from nethical_grpc.errors import MeshError, rpc_errors
from nethical_grpc.series import SummaryQuery
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc
from region_node.node import RegionNode

Context = grpc.aio.ServicerContext[Any, Any]


_MAX_CACHED_RESPONSES = 64


class RegionNodeServicer(region_node_pb2_grpc.RegionNodeServiceServicer):
    def __init__(self, node: RegionNode) -> None:
        self.node = node
        # identical queries between two changes of the store get the same response
        self._responses: dict[SummaryQuery, tuple[int, region_node_pb2.GetSummariesResponse]] = {}

    @rpc_errors
    async def Ingest(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[region_node_pb2.IngestRequest], context: Context
    ) -> region_node_pb2.IngestResponse:
        batches = 0
        values = 0
        async for request in request_iterator:
            try:
                batch = convert.ingest_batch_from_proto(request, self.node.clock())
                self.node.ingest(batch)
            except MeshError as exc:
                exc.metadata = {
                    **exc.metadata,
                    "message_index": str(batches),
                    "applied_batches": str(batches),
                    "applied_values": str(values),
                }
                raise
            batches += 1
            values += int(batch.values.size)
        return region_node_pb2.IngestResponse(accepted_batches=batches, accepted_values=values)

    @rpc_errors
    async def GetSummaries(  # noqa: N802
        self, request: region_node_pb2.GetSummariesRequest, context: Context
    ) -> region_node_pb2.GetSummariesResponse:
        query = convert.summary_query_from_proto(request)
        version = self.node.store.version
        cached = self._responses.get(query)
        if cached is not None and cached[0] == version:
            return cached[1]
        groups = self.node.summaries(query)
        ident = self.node.identity
        response = region_node_pb2.GetSummariesResponse(
            series=[convert.group_summary_to_proto(g) for g in groups],
            region_id=ident.region_id,
            instance_id=ident.instance_id,
            scope=_scope(self.node),
        )
        as_of = max((g.data_as_of_ns for g in groups), default=0)
        if as_of:
            response.data_as_of.CopyFrom(convert.ns_to_timestamp(as_of))
        if len(self._responses) >= _MAX_CACHED_RESPONSES:
            self._responses.clear()
        self._responses[query] = (version, response)
        return response

    @rpc_errors
    async def GetNodeInfo(  # noqa: N802
        self, request: region_node_pb2.GetNodeInfoRequest, context: Context
    ) -> region_node_pb2.GetNodeInfoResponse:
        cfg = self.node.store.config
        ident = self.node.identity
        return region_node_pb2.GetNodeInfoResponse(
            region_id=ident.region_id,
            instance_id=ident.instance_id,
            scope=_scope(self.node),
            window=convert.ns_to_duration(cfg.window_ns),
            retention=convert.ns_to_duration(cfg.retention_ns),
            series_count=self.node.store.series_count,
            window_count=self.node.store.window_count,
            histogram_scale=cfg.histogram_scale,
            version=__version__,
            components=components(),
        )


def _scope(node: RegionNode) -> region_node_pb2.DataScope:
    if node.identity.region_scope:
        return region_node_pb2.DATA_SCOPE_REGION
    return region_node_pb2.DATA_SCOPE_INSTANCE
