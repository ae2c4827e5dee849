"""The benchmarks' figures: percentiles of the right rank, streams counted whole, the
peak RSS of the work measured, rates over the operations in the time measured."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

# the scripts import their helpers as ``import common`` (run from bench/): so do these tests
_BENCH = str(Path(__file__).resolve().parents[2] / "bench")
if _BENCH not in sys.path:
    sys.path.insert(0, _BENCH)

import cache  # noqa: E402
import common  # noqa: E402
import evaluate  # noqa: E402
import failover  # noqa: E402
import soak  # noqa: E402
from meshutil import Mesh, add_region  # noqa: E402

from nethical_grpc.v1 import governance_pb2, region_node_pb2, region_node_pb2_grpc  # noqa: E402


@given(
    st.lists(st.floats(-1e9, 1e9, allow_nan=False), min_size=1, max_size=300),
    st.floats(0.0, 1.0),
)
def test_nearest_rank_is_the_smallest_value_with_q_of_the_samples_at_or_below(
    values: list[float], q: float
) -> None:
    got = common.nearest_rank(values, q)
    n = len(values)
    assert got in values
    # at least a q share of the samples is at or below it, and fewer than that below it
    assert sum(v <= got for v in values) >= q * n - 1e-6
    if q > 0:
        assert sum(v < got for v in values) < q * n + 1e-6
    else:
        assert got == min(values)


def test_nearest_rank_of_known_samples() -> None:
    hundred = list(range(1, 101))
    assert common.nearest_rank(hundred, 0.99) == 99  # not the maximum
    assert common.nearest_rank(hundred, 0.5) == 50
    assert common.nearest_rank(hundred, 1.0) == 100
    assert common.nearest_rank(hundred, 0.0) == 1
    five = [5, 1, 4, 2, 3]
    assert common.nearest_rank(five, 0.5) == 3  # the median, whatever the rounding
    assert common.nearest_rank([7.0], 0.99) == 7.0
    assert common.nearest_rank(hundred, 0.07) == 7  # 0.07 * 100 is 7.000000000000001


def test_failover_p99_of_a_hundred_calls_is_not_the_slowest() -> None:
    calls = [failover.Call(sent_ns=0, ended_ns=ms * 1_000_000) for ms in range(1, 101)]
    figures = failover.latency_ms(calls)
    assert figures["p99"] == 99.0
    assert figures["max"] == 100.0
    assert figures["p50"] == 50.5


def test_cache_percentiles_take_the_nearest_rank() -> None:
    five = [1_000_000 * ms for ms in (5, 1, 4, 2, 3)]
    assert cache.pct(five, 0.50) == 3.0
    thousand_and_one = [1_000_000 * ms for ms in range(1, 1002)]
    assert cache.pct(thousand_and_one, 0.50) == 501.0
    assert cache.pct(thousand_and_one, 0.99) == 991.0


def _evaluation() -> governance_pb2.ActionEvaluation:
    return governance_pb2.ActionEvaluation()


def test_answers_of_one_action_messages_count_as_evaluations() -> None:
    single = region_node_pb2.EvaluateStreamResponse(evaluation=_evaluation())
    assert evaluate.evaluations(single) == 1
    error = region_node_pb2.EvaluateStreamResponse(error=governance_pb2.ActionError())
    assert evaluate.evaluations(error) == 0


def test_answers_of_batches_count_each_evaluation() -> None:
    answer = region_node_pb2.EvaluateStreamResponse(
        results=[
            governance_pb2.ActionResult(evaluation=_evaluation()),
            governance_pb2.ActionResult(error=governance_pb2.ActionError()),
            governance_pb2.ActionResult(evaluation=_evaluation()),
        ]
    )
    assert evaluate.evaluations(answer) == 2
    assert np.asarray(evaluate.evaluations(region_node_pb2.EvaluateStreamResponse())) == 0


async def test_a_sustained_stream_of_one_action_messages_counts_its_answers(mesh: Mesh) -> None:
    await add_region(mesh, "r1")
    server, _ = mesh.regions["r1"][0]
    stub = region_node_pb2_grpc.RegionNodeServiceStub(mesh.channel(server.address))
    for per_message in (1, 4):
        rate, answered = await evaluate.sustained_rate(stub, evaluate.actions(8), per_message, 0.3)
        assert answered > 0, per_message
        assert rate > 0
        if per_message > 1:
            assert answered % per_message == 0


@pytest.mark.skipif(sys.platform != "linux", reason="Linux's clear_refs")
def test_a_peak_rss_reset_forgets_what_was_freed_before() -> None:
    block = np.ones(40_000_000)  # 320 MB, touched
    block.sum()
    del block
    high = common.peak_rss_bytes()
    assert common.reset_peak_rss()
    after = common.peak_rss_bytes()
    assert after <= high - 200 * 2**20
    # and it still tracks what comes after the reset
    block = np.ones(20_000_000)
    block.sum()
    assert common.peak_rss_bytes() >= after + 100 * 2**20
    del block


async def test_soak_counts_no_operation_that_ends_after_the_measurement() -> None:
    async def op(i: int) -> int:
        await asyncio.sleep(0.05)
        return 10

    kind = soak.Kind("x")
    stop = asyncio.Event()
    task = asyncio.ensure_future(soak.loop(kind, stop, op))
    await asyncio.sleep(0.12)
    done = len(kind.latencies)  # the figures are taken here, over the time until now
    stop.set()
    await task
    assert len(kind.latencies) == done
    assert kind.units == 10 * done


async def test_soak_counts_no_error_that_ends_after_the_measurement() -> None:
    async def op(i: int) -> int:
        await asyncio.sleep(0.03)
        raise RuntimeError("down")

    kind = soak.Kind("x")
    stop = asyncio.Event()
    task = asyncio.ensure_future(soak.loop(kind, stop, op))
    await asyncio.sleep(0.095)  # one call failed (and backed off); the next is in flight
    errors = kind.errors
    stop.set()
    await task
    assert kind.errors == errors


def test_soak_latency_of_a_kind_with_no_answer_is_unknown_not_zero() -> None:
    kind = soak.Kind("query")
    kind.errors = 12
    report = kind.report(60.0)
    assert report["operations"] == 0 and report["errors"] == 12
    assert report["p50_ms"] is None and report["p99_ms"] is None
    kind.latencies = [float(ms) for ms in range(1, 101)]
    report = kind.report(10.0)
    assert report["per_s"] == 10.0
    assert report["p50_ms"] == 50.5
