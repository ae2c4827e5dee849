"""Region node over real gRPC: ingest, summaries, bad input, health, reflection."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from meshutil import Mesh, add_region, wait_for

from nethical_grpc import client, convert
from nethical_grpc.errors import details_from_error
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc
from region_node.server import RegionServerConfig, start_region_server
from region_node.stores import StoreConfig
from region_node.windows import WindowConfig

NANOS = 1_000_000_000


def stub(mesh: Mesh, region: str = "r1") -> region_node_pb2_grpc.RegionNodeServiceStub:
    server, _ = mesh.regions[region][0]
    return region_node_pb2_grpc.RegionNodeServiceStub(mesh.channel(server.address))


async def summaries(mesh: Mesh, **kwargs: object) -> region_node_pb2.GetSummariesResponse:
    return await stub(mesh).GetSummaries(region_node_pb2.GetSummariesRequest(**kwargs), timeout=5)


async def total_count(mesh: Mesh) -> int:
    resp = await summaries(mesh)
    return sum(s.summary.moments.count for s in resp.series)


async def test_ingest_then_summaries_are_exact(mesh: Mesh) -> None:
    await add_region(mesh, "r1")
    rng = np.random.default_rng(1)
    a, b = rng.lognormal(size=5000), rng.lognormal(size=3000)
    await mesh.ingest("r1", "latency_ms", a, {"decision": "ALLOW"})
    await mesh.ingest("r1", "latency_ms", b, {"decision": "BLOCK"})
    resp = await summaries(mesh, metrics=["latency_ms"])
    assert resp.region_id == "r1"
    assert resp.scope == region_node_pb2.DATA_SCOPE_INSTANCE
    assert len(resp.series) == 1  # grouped by metric only
    s = convert.summary_from_proto(resp.series[0].summary)
    pooled = np.concatenate([a, b])
    assert s.count == pooled.size
    assert s.total == pytest.approx(pooled.sum(), rel=1e-12)
    assert s.min == pooled.min() and s.max == pooled.max()
    assert s.stddev == pytest.approx(pooled.std(), rel=1e-9)
    for q in (0.01, 0.5, 0.99):
        exact = np.quantile(pooled, q, method="lower")
        assert abs(s.quantile(q) - exact) <= s.relative_error * exact * (1 + 1e-9)
    assert resp.HasField("data_as_of")


async def test_group_by_and_label_filter(mesh: Mesh) -> None:
    await add_region(mesh, "r1")
    await mesh.ingest("r1", "risk", np.full(10, 0.5), {"decision": "ALLOW", "type": "a"})
    await mesh.ingest("r1", "risk", np.full(4, 0.9), {"decision": "BLOCK", "type": "a"})
    await mesh.ingest("r1", "other", np.ones(7))
    grouped = await summaries(mesh, metrics=["risk"], group_by_labels=["decision"])
    counts = {s.labels["decision"]: s.summary.moments.count for s in grouped.series}
    assert counts == {"ALLOW": 10, "BLOCK": 4}
    filtered = await summaries(mesh, label_filter={"decision": "BLOCK"})
    assert [(s.metric, s.summary.moments.count) for s in filtered.series] == [("risk", 4)]
    everything = await summaries(mesh)
    assert {s.metric: s.summary.moments.count for s in everything.series} == {
        "other": 7,
        "risk": 14,
    }


async def test_time_range_selects_windows(mesh: Mesh) -> None:
    await add_region(mesh, "r1", windows=WindowConfig(window_ns=10 * NANOS))
    now = time.time_ns()
    old = now - 120 * NANOS
    ch = mesh.channel(mesh.regions["r1"][0][0].address)
    await client.ingest(
        ch,
        [
            client.encode_ingest_request("m", np.ones(3), time_ns=old),
            client.encode_ingest_request("m", np.ones(5), time_ns=now),
            client.encode_ingest_request(
                "m", np.ones(2), timestamps_unix_nano=np.array([old, now], dtype=np.int64)
            ),
        ],
    )
    recent = await summaries(mesh, start_time=convert.ns_to_timestamp(now - 30 * NANOS))
    assert recent.series[0].summary.moments.count == 6
    older = await summaries(mesh, end_time=convert.ns_to_timestamp(now - 60 * NANOS))
    assert older.series[0].summary.moments.count == 4
    start = convert.timestamp_to_ns(older.series[0].start_time)
    assert start == (old // (10 * NANOS)) * 10 * NANOS


async def test_old_windows_roll_up_keeping_every_value_and_refuse_late_data(mesh: Mesh) -> None:
    # 1 s windows, merged in pairs once older than 1 s (flushed every 0.1 s)
    windows = WindowConfig(window_ns=NANOS, rollup_after_ns=NANOS, rollup_window_ns=2 * NANOS)
    [(_, node)] = await add_region(
        mesh, "r1", windows=windows, stores=StoreConfig(flush_interval_s=0.1)
    )
    info = await stub(mesh).GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=5)
    assert convert.duration_to_ns(info.rollup_after) == NANOS
    assert convert.duration_to_ns(info.rollup_window) == 2 * NANOS
    first = time.time_ns()
    ch = mesh.channel(mesh.regions["r1"][0][0].address)
    await client.ingest(ch, [client.encode_ingest_request("m", np.arange(10.0), time_ns=first)])
    await asyncio.sleep(1.1)
    await mesh.ingest("r1", "m", np.arange(5.0))
    deadline = time.monotonic() + 8
    while node.store.rollup_count == 0:
        assert time.monotonic() < deadline, "no window was rolled up"
        await asyncio.sleep(0.2)
        await node.maintain_windows()
    assert await total_count(mesh) == 15
    info = await stub(mesh).GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=5)
    assert info.window_count == node.store.window_count
    # a range inside the first batch's window reaches its whole rollup window
    older = await summaries(
        mesh,
        start_time=convert.ns_to_timestamp(first),
        end_time=convert.ns_to_timestamp(first + 1),
    )
    [series] = older.series
    start, end = (convert.timestamp_to_ns(t) for t in (series.start_time, series.end_time))
    assert start <= first < end and end - start == 2 * NANOS
    assert series.summary.moments.count >= 10
    # the window is past the horizon now: a batch for it is refused whole, nothing lost
    err = await _rejected(mesh, [client.encode_ingest_request("m", np.ones(3), time_ns=first)])
    details = details_from_error(err)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = details.field_violations
    assert violation.field == "time" and "late-data horizon of 1 s" in violation.description
    assert await total_count(mesh) == 15


async def _rejected(mesh: Mesh, batches: list[bytes]) -> grpc.aio.AioRpcError:
    ch = mesh.channel(mesh.regions["r1"][0][0].address)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.ingest(ch, batches)
    return info.value


@pytest.mark.parametrize(
    ("batch", "field"),
    [
        (client.encode_ingest_request("m", np.array([1.0, np.nan, 2.0])), "values[1]"),
        (client.encode_ingest_request("m", np.array([np.inf])), "values[0]"),
        (client.encode_ingest_request("m", np.array([1.0, 2.0, -1e200])), "values[2]"),
        (client.encode_ingest_request("", np.ones(2)), "metric"),
        (client.encode_ingest_request("9bad name", np.ones(2)), "metric"),
        (client.encode_ingest_request("m", np.ones(2), {"bad key": "x"}), 'labels["bad key"]'),
        (
            client.encode_ingest_request(
                "m", np.ones(3), timestamps_unix_nano=np.array([1, 2], dtype=np.int64)
            ),
            "timestamps_unix_nano",
        ),
        (client.encode_ingest_request("m", np.ones(2), time_ns=1), "time"),
    ],
)
async def test_bad_batches_are_rejected_whole(mesh: Mesh, batch: bytes, field: str) -> None:
    await add_region(mesh, "r1")
    good = client.encode_ingest_request("m", np.ones(10))
    err = await _rejected(mesh, [good, batch, good])
    details = details_from_error(err)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [v.field for v in details.field_violations]
    assert details.metadata["applied_batches"] == "1"
    assert "Traceback" not in details.message
    # no Python spelling (np.float64(nan), a repr's 'quotes') of the input on the wire
    assert "np." not in details.message
    assert "'9bad" not in details.message and "'bad key'" not in details.message
    # the first batch was applied, the rejected one and everything after it were not
    assert await total_count(mesh) == 10
    # and the node keeps serving
    await mesh.ingest("r1", "m", np.ones(5))
    assert await total_count(mesh) == 15


async def test_label_cardinality_cap_is_resource_exhausted(mesh: Mesh) -> None:
    await add_region(mesh, "r1", windows=WindowConfig(max_label_sets_per_metric=3))
    for i in range(3):
        await mesh.ingest("r1", "m", np.ones(1), {"k": str(i)})
    err = await _rejected(mesh, [client.encode_ingest_request("m", np.ones(4), {"k": "new"})])
    details = details_from_error(err)
    assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.reason == "LABEL_CARDINALITY_EXCEEDED"
    assert await total_count(mesh) == 3
    # existing series still accept data, other metrics are unaffected
    await mesh.ingest("r1", "m", np.ones(2), {"k": "0"})
    await mesh.ingest("r1", "n", np.ones(2), {"k": "new"})
    assert await total_count(mesh) == 7


async def test_oversized_message_is_refused_and_node_keeps_serving(mesh: Mesh) -> None:
    await add_region(mesh, "r1")
    huge = client.encode_ingest_request("m", np.ones(2_000_000))  # 16 MB > 8 MiB limit
    err = await _rejected(mesh, [huge])
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await mesh.ingest("r1", "m", np.ones(3))
    assert await total_count(mesh) == 3


@pytest.mark.parametrize(
    ("request_kwargs", "field"),
    [
        (
            {
                "start_time": convert.ns_to_timestamp(2 * NANOS),
                "end_time": convert.ns_to_timestamp(NANOS),
            },
            "end_time",
        ),
        ({"metrics": ["ok", "not ok"]}, "metrics[1]"),
        ({"group_by_labels": [""]}, "group_by_labels[0]"),
    ],
)
async def test_bad_summary_queries(
    mesh: Mesh, request_kwargs: dict[str, object], field: str
) -> None:
    await add_region(mesh, "r1")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await summaries(mesh, **request_kwargs)
    details = details_from_error(info.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details.field_violations] == [field]


async def test_node_info(mesh: Mesh) -> None:
    await add_region(mesh, "r1", region_scope=True)
    await mesh.ingest("r1", "m", np.ones(3), {"a": "1"})
    info = await stub(mesh).GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=5)
    assert (info.region_id, info.instance_id) == ("r1", "r1-0")
    assert info.scope == region_node_pb2.DATA_SCOPE_REGION
    assert info.series_count == 1 and info.window_count == 1
    assert info.window.seconds == 10 and info.histogram_scale == 6
    assert "jit" in info.components


async def test_health_is_truthful_and_drain_flips_it(mesh: Mesh) -> None:
    [(server, _)] = await add_region(mesh, "r1")
    ch = mesh.channel(server.address)
    assert await client.check_health(ch) == health_pb2.HealthCheckResponse.SERVING
    assert (
        await client.check_health(ch, "nethical_grpc.v1.RegionNodeService")
        == health_pb2.HealthCheckResponse.SERVING
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.check_health(ch, "no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # a huge unknown name: still NOT_FOUND (the echo is clipped), not a refused trailer
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.check_health(ch, "x" * (1 << 20))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details().startswith("unknown service 'xxx")

    seen: list[int] = []

    async def watch() -> None:
        async for status in client.watch_health(ch, "nethical_grpc.v1.RegionNodeService"):
            seen.append(status)

    import asyncio

    watcher = asyncio.ensure_future(watch())
    await wait_for(lambda: seen == [health_pb2.HealthCheckResponse.SERVING])
    drain = asyncio.ensure_future(server.drain(announce_s=0.5, grace_s=1))
    await wait_for(lambda: health_pb2.HealthCheckResponse.NOT_SERVING in seen)
    # during the announce period the node still answers
    assert await client.check_health(ch) == health_pb2.HealthCheckResponse.NOT_SERVING
    await drain
    watcher.cancel()


async def test_reflection_lists_and_describes_services(mesh: Mesh) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    [(server, _)] = await add_region(mesh, "r1")
    import asyncio

    def reflect() -> tuple[list[str], list[str]]:
        with grpc.insecure_channel(server.address) as channel:
            db = ProtoReflectionDescriptorDatabase(channel)
            services = db.get_services()
            from google.protobuf.descriptor_pool import DescriptorPool

            pool = DescriptorPool(db)
            svc = pool.FindServiceByName("nethical_grpc.v1.RegionNodeService")
            return list(services), [m.name for m in svc.methods]

    services, methods = await asyncio.to_thread(reflect)
    assert "nethical_grpc.v1.RegionNodeService" in services
    assert "grpc.health.v1.Health" in services
    assert set(methods) == {
        "Ingest",
        "GetSummaries",
        "StreamSummaries",
        "GetNodeInfo",
        "Evaluate",
        "EvaluateStream",
        "Score",
        "GetRiskProfile",
        "QueryMetrics",
        "AggregateMetrics",
        "SearchAudit",
    }


async def test_reflection_resolves_method_and_field_names(mesh: Mesh) -> None:
    """What ``grpcurl describe Service.Method`` asks: the file holding a method's service."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    [(server, _)] = await add_region(mesh, "r1")
    stub = reflection_pb2_grpc.ServerReflectionStub(mesh.channel(server.address))

    async def file_of(symbol: str) -> reflection_pb2.ServerReflectionResponse:
        async def one() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)

        (answer,) = [r async for r in stub.ServerReflectionInfo(one(), timeout=5)]
        return answer

    method = await file_of("nethical_grpc.v1.RegionNodeService.Evaluate")
    assert method.WhichOneof("message_response") == "file_descriptor_response"
    field = await file_of("nethical_grpc.v1.IngestRequest.batch_id")
    assert field.WhichOneof("message_response") == "file_descriptor_response"
    missing = await file_of("nethical_grpc.v1.NoSuchService.Method")
    assert missing.WhichOneof("message_response") == "error_response"
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_a_draining_node_ends_open_ingest_streams_saying_what_they_applied(
    mesh: Mesh,
) -> None:
    """A stream still open when the node drains is ended after the announcement with
    UNAVAILABLE (NODE_DRAINING) and the counts applied, instead of being cut at the end
    of the grace period with no word of what it applied."""
    [(server, _)] = await add_region(mesh, "r1")
    sent = asyncio.Event()
    never = asyncio.Event()

    async def batches() -> AsyncIterator[bytes]:
        for i in range(3):
            yield client.encode_ingest_request("drained", np.ones(10), batch_id=f"b{i}")
        sent.set()
        await never.wait()

    call = asyncio.ensure_future(client.ingest(mesh.channel(server.address), batches(), 60))
    await sent.wait()
    for _ in range(200):  # the three messages applied
        if await total_count(mesh) == 30:
            break
        await asyncio.sleep(0.01)
    started = asyncio.get_running_loop().time()
    await server.drain(announce_s=0.2, grace_s=20)
    assert asyncio.get_running_loop().time() - started < 5  # not the 20 s grace
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    found = details_from_error(err.value)
    assert found.code is grpc.StatusCode.UNAVAILABLE
    assert found.reason == "NODE_DRAINING"
    assert (found.metadata["applied_batches"], found.metadata["applied_values"]) == ("3", "30")


async def test_a_stream_past_its_last_message_when_the_node_drains_is_answered(
    mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream whose batches are all applied, waiting for its write-ahead log's fsync
    when the drain begins, gets its acknowledgement, not CANCELLED with no counts (its
    client would send them again)."""
    config = RegionServerConfig("r1", instance_id="r1-0", wal_dir=tmp_path, model=None)
    server, node = await start_region_server(config)
    mesh.regions["r1"] = [(server, node)]
    assert node.wal is not None
    real_sync, syncing = node.wal.sync, threading.Event()

    def slow_sync() -> None:  # a busy disk
        syncing.set()
        time.sleep(0.5)
        real_sync()

    monkeypatch.setattr(node.wal, "sync", slow_sync)
    batch = client.encode_ingest_request("durable", np.ones(10))
    call = asyncio.ensure_future(client.ingest(mesh.channel(server.address), [batch], 30))
    assert await asyncio.to_thread(syncing.wait, 10)
    await server.drain(announce_s=0, grace_s=5)
    answer = await call
    assert (answer.accepted_batches, answer.accepted_values) == (1, 10)


async def test_a_rejected_stream_when_the_node_drains_still_says_what_it_applied(
    mesh: Mesh,
) -> None:
    """A stream the node refused, while the node reads what its client still sends: the
    drain lets it finish with the refusal and its counts, not CANCELLED."""
    [(server, _)] = await add_region(mesh, "r1", evaluate=False)
    refused = asyncio.Event()

    async def batches() -> AsyncIterator[bytes]:
        yield client.encode_ingest_request("kept", np.ones(2))
        yield client.encode_ingest_request("kept", np.array([np.nan]))
        for _ in range(10):  # still writing after the refusal
            await asyncio.sleep(0.05)
            refused.set()
            yield client.encode_ingest_request("later", np.ones(1))

    call = asyncio.ensure_future(client.ingest(mesh.channel(server.address), batches(), 30))
    await refused.wait()  # the node is reading the rest now
    await server.drain(announce_s=0, grace_s=5)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    found = details_from_error(err.value)
    assert found.code is grpc.StatusCode.INVALID_ARGUMENT, found
    assert (found.metadata["applied_batches"], found.metadata["applied_values"]) == ("1", "2")
