"""A bare Ingest sink: the same transport and message parsing as a region node, no
aggregation. bench/ingest.py measures it beside the real node to show what aggregation
costs. Run: python bench/sink.py --port-file FILE."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from nethical_grpc.cli.processes import die_with_parent
from nethical_grpc.server_runtime import serve_until_signalled, start_server
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc


class Sink(region_node_pb2_grpc.RegionNodeServiceServicer):
    async def Ingest(self, request_iterator, context):  # type: ignore[no-untyped-def]  # noqa: N802
        batches = values = 0
        async for req in request_iterator:
            values += np.asarray(req.values).size
            batches += 1
        return region_node_pb2.IngestResponse(accepted_batches=batches, accepted_values=values)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    die_with_parent()  # no sink left serving when bench/ingest.py is killed
    sink = Sink()
    mesh = await start_server(
        [lambda s: region_node_pb2_grpc.add_RegionNodeServiceServicer_to_server(sink, s)],
        ["nethical_grpc.v1.RegionNodeService"],
    )
    args.port_file.write_text(str(mesh.port))
    await serve_until_signalled(mesh, 0, 1)


if __name__ == "__main__":
    asyncio.run(main())
