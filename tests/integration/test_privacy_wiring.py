"""Differential privacy on a real region node and coordinator."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from meshutil import Mesh, add_coordinator, add_region

from nethical_grpc import client, convert
from nethical_grpc.errors import details_from_error
from nethical_grpc.privacy import PrivacyConfig
from nethical_grpc.v1 import region_node_pb2, region_node_pb2_grpc, summary_pb2
from region_node.privacy_accounts import ACCOUNTS_FILE, JOURNAL_FILE
from region_node.server import RegionServerConfig, start_region_server

DP = PrivacyConfig(
    epsilon_per_release=1.0, window_budget=3.0, value_bound=100.0, min_count=5, nonnegative=True
)


def stub(mesh: Mesh, region: str) -> region_node_pb2_grpc.RegionNodeServiceStub:
    server, _ = mesh.regions[region][0]
    return region_node_pb2_grpc.RegionNodeServiceStub(mesh.channel(server.address))


async def test_noised_summaries_withhold_extremes_and_spend_a_budget(mesh: Mesh) -> None:
    await add_region(mesh, "dp", privacy=DP)
    values = np.concatenate([np.random.default_rng(3).uniform(10, 90, 9_990), [1e6] * 10])
    await mesh.ingest("dp", "score", values)
    s = stub(mesh, "dp")
    req = region_node_pb2.GetSummariesRequest(metrics=["score"])
    first = await s.GetSummaries(req, timeout=5)
    assert first.privacy.noised
    assert first.privacy.mechanism == summary_pb2.NOISE_MECHANISM_LAPLACE
    assert first.privacy.count_error.expected_abs > 0
    summary = convert.summary_from_proto(first.series[0].summary)
    # extremes are the public bounds, never the data's own (1e6 was clipped to the bound)
    assert (summary.min, summary.max) == (0.0, 100.0)
    assert abs(summary.count - values.size) < 60
    assert abs(summary.mean - np.clip(values, 0, 100).mean()) < 1.0
    assert first.series[0].mean_error > 0
    # the same question at the same data gets the same noise and costs nothing more
    again = await s.GetSummaries(req, timeout=5)
    assert again.SerializeToString() == first.SerializeToString()
    # each new answer over the same window spends from its budget until it is gone
    refused = None
    for i in range(5):
        await mesh.ingest("dp", "score", np.array([50.0 + i]))
        try:
            await s.GetSummaries(req, timeout=5)
        except grpc.aio.AioRpcError as err:
            refused = err
            break
    assert refused is not None and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details_from_error(refused).reason == "PRIVACY_BUDGET_EXHAUSTED"


async def test_coordinator_reports_which_regions_were_noised_and_the_error(mesh: Mesh) -> None:
    await add_region(mesh, "dp", privacy=DP)
    await add_region(mesh, "exact")
    await mesh.ingest("dp", "score", np.random.default_rng(1).uniform(0, 100, 5_000))
    await mesh.ingest("exact", "score", np.random.default_rng(2).uniform(0, 100, 5_000))
    await add_coordinator(mesh)
    result = await client.global_metrics(
        mesh.coordinator_channel(), client.QueryOptions(metrics=["score"])
    )
    (item,) = result.results
    assert item.privacy.noised
    assert list(item.privacy.noised_regions) == ["dp"]
    assert item.privacy.count_error.expected_abs > 0
    assert item.privacy.mean_error > 0
    assert item.privacy.max_epsilon == pytest.approx(1.0)
    assert abs(item.statistics.count - 10_000) < 60


async def test_node_info_does_not_count_series_when_noised(mesh: Mesh) -> None:
    """An exact series count would tell that a group the noise suppresses exists."""
    await add_region(mesh, "dp", privacy=DP)
    await add_region(mesh, "plain")
    for region in ("dp", "plain"):
        await mesh.ingest(region, "score", np.array([1.0]), {"agent": "only-one"})
    noised = await stub(mesh, "dp").GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=5)
    plain = await stub(mesh, "plain").GetNodeInfo(region_node_pb2.GetNodeInfoRequest(), timeout=5)
    assert (noised.series_count, noised.window_count) == (0, 0)
    assert (plain.series_count, plain.window_count) == (1, 1)


async def test_whether_a_filtered_group_exists_does_not_change_the_charge(mesh: Mesh) -> None:
    """Once a metric's windows have spent their budget, a filter for a group that exists
    and one for a group that does not are refused alike; before, the second was answered
    (empty, at no cost), which told that the first exists."""
    await add_region(mesh, "dp", privacy=DP)  # 3 releases per window
    await mesh.ingest("dp", "lat", np.full(50, 10.0), {"agent": "common"})
    await mesh.ingest("dp", "lat", np.array([1.0, 2.0]), {"agent": "rare"})
    s = stub(mesh, "dp")
    filtered = region_node_pb2.GetSummariesRequest(metrics=["lat"], label_filter={"agent": "x"})
    # a filter matching nothing is charged too: three of them spend the budget
    for i in range(3):
        filtered.label_filter["agent"] = f"nobody-{i}"
        assert len((await s.GetSummaries(filtered, timeout=5)).series) == 0
    for agent in ("rare", "never-seen", "common"):
        filtered.label_filter["agent"] = agent
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.GetSummaries(filtered, timeout=5)
        assert details_from_error(err.value).reason == "PRIVACY_BUDGET_EXHAUSTED", agent


async def test_traffic_on_other_metrics_does_not_renoise_an_answer(mesh: Mesh) -> None:
    """A repeated query is answered from its cache while its own metrics are unchanged:
    evaluations or ingest into other metrics no longer buy fresh noise (and spend the
    budget) each time."""
    await add_region(mesh, "dp", privacy=DP)  # 3 releases per window
    await mesh.ingest("dp", "lat", np.full(100, 10.0))
    s = stub(mesh, "dp")
    req = region_node_pb2.GetSummariesRequest(metrics=["lat"])
    first = await s.GetSummaries(req, timeout=5)
    for i in range(5):  # more than the budget allows, were each one charged
        await mesh.ingest("dp", "other", np.array([float(i)]))
        again = await s.GetSummaries(req, timeout=5)
        assert again.SerializeToString() == first.SerializeToString()
    # a change to the query's own metric is a new answer, charged
    await mesh.ingest("dp", "lat", np.array([11.0]))
    changed = await s.GetSummaries(req, timeout=5)
    assert changed.SerializeToString() != first.SerializeToString()


async def test_noised_groups_carry_only_the_metrics_public_times(mesh: Mesh) -> None:
    """A group's own time range, or its newest observation's time, would tell whether one
    more observation fell in a later window: under privacy every group of a metric has
    the metric's range, and no data-as-of time leaves the region."""
    [(server, node)] = await add_region(mesh, "dp", privacy=DP)
    window = node.store.config.window_ns
    now = time.time_ns()
    base = (now // window - 5) * window
    ch = mesh.channel(server.address)
    rng = np.random.default_rng(4)
    batches = [
        # "early": all in the first window; "late": spread over four windows
        client.encode_ingest_request(
            "score", rng.uniform(0, 100, 400), {"who": "early"},
            timestamps_unix_nano=np.full(400, base + 1, np.int64),
        ),
        client.encode_ingest_request(
            "score", rng.uniform(0, 100, 400), {"who": "late"},
            timestamps_unix_nano=base + (np.arange(400) % 4) * window + 1,
        ),
    ]  # fmt: skip
    await client.ingest(ch, batches)
    s = stub(mesh, "dp")
    answer = await s.GetSummaries(
        region_node_pb2.GetSummariesRequest(metrics=["score"], group_by_labels=["who"]),
        timeout=5,
    )
    assert [dict(g.labels)["who"] for g in answer.series] == ["early", "late"]
    ranges = {(g.start_time.ToNanoseconds(), g.end_time.ToNanoseconds()) for g in answer.series}
    assert ranges == {(base, base + 4 * window)}  # the metric's windows, for both groups
    assert not answer.HasField("data_as_of")
    # the exact node, for contrast, tells the groups' own ranges
    [(plain, _)] = await add_region(mesh, "exact")
    await client.ingest(mesh.channel(plain.address), batches)
    exact = await stub(mesh, "exact").GetSummaries(
        region_node_pb2.GetSummariesRequest(metrics=["score"], group_by_labels=["who"]),
        timeout=5,
    )
    assert exact.series[0].end_time.ToNanoseconds() == base + window
    assert exact.HasField("data_as_of")


async def test_error_bars_count_one_noisy_summary_per_answering_instance(mesh: Mesh) -> None:
    """A region of two disjoint instances merges two noisy summaries: its count's noise
    has twice the variance of a one-instance region's (it was reported as one)."""
    await add_region(mesh, "one", privacy=DP)
    await add_region(mesh, "two", instances=2, privacy=DP)
    rng = np.random.default_rng(5)
    await mesh.ingest("one", "score", rng.uniform(0, 100, 4_000))
    for instance in (0, 1):
        await mesh.ingest("two", "score", rng.uniform(0, 100, 2_000), instance=instance)
    await add_coordinator(mesh)
    ch = mesh.coordinator_channel()
    found = []
    for region in ("one", "two"):
        opts = client.QueryOptions(metrics=["score"], regions=[region])
        found.append((await client.global_metrics(ch, opts)).results[0].privacy)
    single, double = found
    assert list(double.noised_regions) == ["two"]
    ratio = double.count_error.stddev / single.count_error.stddev
    assert ratio == pytest.approx(2**0.5, rel=1e-9)


async def test_spent_budgets_outlive_a_restart(tmp_path: Path) -> None:
    """The windows come back from the write-ahead log, and so does what their releases
    spent: a restart no longer refills every window's budget."""
    config = RegionServerConfig(region_id="dp", privacy=DP, wal_dir=tmp_path, model=None)
    server, _ = await start_region_server(config)
    try:
        ch = client.insecure_channel(server.address)
        s = region_node_pb2_grpc.RegionNodeServiceStub(ch)
        req = region_node_pb2.GetSummariesRequest(metrics=["score"])
        reasons = []
        for i in range(4):  # new data each time: a fresh release, charged
            await client.ingest(ch, [client.encode_ingest_request("score", np.full(50, i + 1.0))])
            try:
                await s.GetSummaries(req, timeout=5)
                reasons.append("OK")
            except grpc.aio.AioRpcError as exc:
                reasons.append(details_from_error(exc).reason or "")
        # window budget 3, epsilon 1 a release
        assert reasons == ["OK", "OK", "OK", "PRIVACY_BUDGET_EXHAUSTED"]
        await ch.close(None)
    finally:
        await server.drain(announce_s=0, grace_s=0)
    assert (tmp_path / ACCOUNTS_FILE).exists()
    again, _ = await start_region_server(config)
    try:
        ch = client.insecure_channel(again.address)
        s = region_node_pb2_grpc.RegionNodeServiceStub(ch)
        await client.ingest(ch, [client.encode_ingest_request("score", np.full(50, 99.0))])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.GetSummaries(req, timeout=5)
        assert details_from_error(err.value).reason == "PRIVACY_BUDGET_EXHAUSTED"
        await ch.close(None)
    finally:
        await again.drain(announce_s=0, grace_s=0)
    # accounts that do not parse stop the start, rather than starting afresh
    (tmp_path / ACCOUNTS_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="privacy accounts"):
        await start_region_server(config)


async def test_an_answer_whose_accounts_cannot_be_saved_is_refused_and_spends_nothing(
    tmp_path: Path,
) -> None:
    """A node that cannot save its accounts (disk full, say) refuses the answer with
    UNAVAILABLE and a reason; each refused retry used to spend the windows' budget in
    memory (an INTERNAL error each time) until they were spent with nothing released."""
    config = RegionServerConfig(region_id="dp", privacy=DP, wal_dir=tmp_path, model=None)
    server, _ = await start_region_server(config)
    try:
        ch = client.insecure_channel(server.address)
        s = region_node_pb2_grpc.RegionNodeServiceStub(ch)
        req = region_node_pb2.GetSummariesRequest(metrics=["score"])
        await client.ingest(ch, [client.encode_ingest_request("score", np.full(50, 7.0))])
        blocker = tmp_path / JOURNAL_FILE
        blocker.mkdir()  # the accounts cannot be written
        for _ in range(4):  # more than the budget (3) allows
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await s.GetSummaries(req, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            details = details_from_error(err.value)
            assert details.reason == "PRIVACY_ACCOUNTS_UNSAVED"
            assert "nothing was released or charged" in details.message
        blocker.rmdir()
        reasons = []
        for i in range(4):
            if i:
                await client.ingest(ch, [client.encode_ingest_request("score", np.full(5, 1.0))])
            try:
                await s.GetSummaries(req, timeout=5)
                reasons.append("OK")
            except grpc.aio.AioRpcError as exc:
                reasons.append(details_from_error(exc).reason or "")
        assert reasons == ["OK", "OK", "OK", "PRIVACY_BUDGET_EXHAUSTED"]
        await ch.close(None)
    finally:
        await server.drain(announce_s=0, grace_s=0)


async def test_a_range_reaching_into_empty_windows_is_the_same_release(mesh: Mesh) -> None:
    """A dashboard asking for "the last N minutes" moves its start every tick; while the
    data stays the same, the answer does too, and costs nothing more (each new start
    used to be a fresh release, and spent the window's budget in a few ticks)."""
    await add_region(mesh, "dp", privacy=DP)
    await mesh.ingest("dp", "score", np.random.default_rng(6).uniform(0, 100, 2_000))
    s = stub(mesh, "dp")
    now = time.time_ns()
    answers = []
    for minutes in range(10, 70, 10):  # six starts, all before the data; budget: 3
        req = region_node_pb2.GetSummariesRequest(metrics=["score"])
        req.start_time.FromNanoseconds(now - minutes * 60 * 10**9)
        answers.append(await s.GetSummaries(req, timeout=5))
    counts = {a.series[0].summary.moments.count for a in answers}
    assert len(counts) == 1  # the same noise every time
    assert all(a.privacy.epsilon == answers[0].privacy.epsilon for a in answers)


TIGHT_DP = PrivacyConfig(
    epsilon_per_release=1.0, window_budget=1.5, value_bound=100.0, min_count=5, nonnegative=True
)
SMALL_LIMIT = 64 * 1024
SHARDS = 900


async def _tight_node(mesh: Mesh) -> region_node_pb2_grpc.RegionNodeServiceStub:
    """A noised node with a 64 KiB message limit and 900 series of ``lat`` (one per
    shard): grouped by shard its answer is over the limit, ungrouped ~1 KB."""
    [(server, _)] = await add_region(mesh, "dp", privacy=TIGHT_DP, max_message_bytes=SMALL_LIMIT)
    rng = np.random.default_rng(5)
    batches = [
        client.encode_ingest_request("lat", rng.uniform(1, 90, 40), {"shard": str(k)})
        for k in range(SHARDS)
    ]
    await client.ingest(mesh.channel(server.address), batches)
    return stub(mesh, "dp")


def _assert_too_large(err: grpc.aio.AioRpcError) -> None:
    found = details_from_error(err)
    assert found.code is grpc.StatusCode.RESOURCE_EXHAUSTED, found.message
    assert found.reason == "ANSWER_TOO_LARGE", found.message


async def test_an_answer_refused_as_too_large_spends_no_budget(mesh: Mesh) -> None:
    """The budget allows one release per window: the refused wide answer must not take
    it, so the narrower query the refusal suggests is answered."""
    s = await _tight_node(mesh)
    wide = region_node_pb2.GetSummariesRequest(metrics=["lat"], group_by_labels=["shard"])
    for _ in range(2):  # asked again: refused the same way, not for a spent budget
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.GetSummaries(wide, timeout=5)
        _assert_too_large(err.value)
    answer = await s.GetSummaries(region_node_pb2.GetSummariesRequest(metrics=["lat"]), timeout=5)
    assert answer.privacy.noised
    assert abs(answer.series[0].summary.moments.count - 40 * SHARDS) < 60
    # that one did spend it: another release over the same windows is refused
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.GetSummaries(
            region_node_pb2.GetSummariesRequest(metrics=["lat"], group_by_labels=["zone"]),
            timeout=5,
        )
    assert details_from_error(err.value).reason == "PRIVACY_BUDGET_EXHAUSTED"


async def test_a_streamed_answer_refused_as_too_large_spends_no_budget(mesh: Mesh) -> None:
    s = await _tight_node(mesh)
    queries = [
        region_node_pb2.StreamSummariesRequest(
            query_id=1,
            query=region_node_pb2.GetSummariesRequest(metrics=["lat"], group_by_labels=["shard"]),
        ),
        region_node_pb2.StreamSummariesRequest(
            query_id=2, query=region_node_pb2.GetSummariesRequest(metrics=["lat"])
        ),
    ]
    answers = [a async for a in s.StreamSummaries(iter(queries), timeout=5)]
    assert [a.query_id for a in answers] == [1, 2]
    assert answers[0].error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "message limit" in answers[0].error.message
    assert not answers[1].HasField("error")
    assert abs(answers[1].summaries.series[0].summary.moments.count - 40 * SHARDS) < 60
