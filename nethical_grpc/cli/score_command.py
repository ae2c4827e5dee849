"""``nethical-mesh score``: feature rows from a file or stdin scored by a region node's
model (the Score RPC), for clients that bring their own features."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

import grpc
import numpy as np

from nethical_grpc.cli.client_commands import ask, print_json, read_input
from nethical_grpc.cli.observations import parse_values
from nethical_grpc.cli.table import counted, render
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc

#: Most values a Score call carries: 4 MiB of doubles, half a node's message limit.
VALUES_PER_CALL = 512 * 1024


def read_rows(source: str) -> np.ndarray:
    """The feature rows of ``source`` (a file, or ``-`` for stdin): a line each, its
    numbers separated by whitespace or commas; blank lines and ``#`` comments are left
    out. Rows of different widths, a row with no values, a token that is no number or a
    value that is not finite (nan, inf) are a ``ValueError`` that names the line."""
    rows: list[np.ndarray] = []
    first = 0
    for number, line in enumerate(read_input(source).splitlines(), start=1):
        text = line.partition("#")[0]
        if not text.strip():
            continue
        row = parse_values(text, f"{source}, line {number}")
        if not row.size:  # only commas
            raise ValueError(f"{source}, line {number}: a row with no values")
        bad = np.flatnonzero(~np.isfinite(row))
        if bad.size:  # the node refuses it too, but numbered within its call's rows
            raise ValueError(
                f"{source}, line {number}: value {bad[0] + 1} is {row[bad[0]]}, not a finite "
                "number (features must be)"
            )
        if not rows:
            first = number
        elif row.size != rows[0].size:
            raise ValueError(
                f"{source}, line {number}: {counted(row.size, 'value', 'values')}, "
                f"but line {first} has {rows[0].size:,} (a row's features)"
            )
        rows.append(row)
    if not rows:
        raise ValueError(f"no feature rows in {source}")
    return np.vstack(rows)


def score_requests(rows: np.ndarray) -> Iterator[region_node_pb2.ScoreRequest]:
    """``rows`` in calls of at most :data:`VALUES_PER_CALL` values (at least a row)."""
    per_call = max(1, VALUES_PER_CALL // rows.shape[1])
    for at in range(0, len(rows), per_call):
        chunk = rows[at : at + per_call]
        yield region_node_pb2.ScoreRequest(features=chunk.ravel().tolist(), columns=rows.shape[1])


def score_text(response: region_node_pb2.ScoreResponse) -> str:
    """A row number and probability per row, then the model and the node's time."""
    rows = [[f"{i:,}", f"{p:.4f}"] for i, p in enumerate(response.probabilities, start=1)]
    table = render(["row", "probability of harm"], rows)
    ms = response.latency.ToNanoseconds() / 1e6
    scored = counted(len(rows), "row", "rows")
    return f"{table}\n{scored} scored by {response.model} in {ms:,.2f} ms on the node"


async def run_score(args: argparse.Namespace) -> int:
    try:
        rows = read_rows(args.file)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def scored(channel: grpc.aio.Channel) -> region_node_pb2.ScoreResponse:
        stub = region_node_pb2_grpc.RegionNodeServiceStub(channel)
        total = region_node_pb2.ScoreResponse()
        latency_ns = 0
        for request in score_requests(rows):
            answer: region_node_pb2.ScoreResponse = await stub.Score(request, timeout=args.timeout)
            total.probabilities.extend(answer.probabilities)
            total.model = answer.model
            latency_ns += answer.latency.ToNanoseconds()
        total.latency.FromNanoseconds(latency_ns)
        return total

    answer = await ask(args, scored)
    if answer is None:
        return 1
    if args.json:
        print_json(answer)
    else:
        print(score_text(answer))
    return 0
