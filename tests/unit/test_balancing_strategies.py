"""Load balancer strategies, ejection, retry classification and statistics (no network)."""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nethical_grpc.balancing import (
    HealthState,
    Instance,
    LoadBalancer,
    LoadBalancingStrategy,
    NoAvailableInstanceError,
    NotSentError,
    RetryPolicy,
    failed_before_send,
    is_backend_fault,
    is_retryable,
    remaining_timeout,
)
from nethical_grpc.balancing.strategies import smooth_wrr_sequence

S = LoadBalancingStrategy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


UNAVAILABLE = rpc_error(grpc.StatusCode.UNAVAILABLE, "Socket closed")
NOT_SENT = rpc_error(
    grpc.StatusCode.UNAVAILABLE,
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:9: "
    "Failed to connect to remote host: Connection refused",
)
INVALID = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad metric name")


def balancer(strategy: S, n: int = 5, regions: int = 1, **kw: object) -> LoadBalancer:
    lb = LoadBalancer(strategy=strategy, seed=7, retry_policy=FAST_RETRY, **kw)  # type: ignore[arg-type]
    for i in range(n):
        region = f"r{i % regions}"
        lb.add_instance(f"i{i}", region, f"127.0.0.1:{10000 + i}")
    return lb


FAST_RETRY = RetryPolicy(max_retries=2, backoff_initial_s=0.0001, backoff_max_s=0.001)


def picks(lb: LoadBalancer, n: int, region_id: str | None = None) -> list[str]:
    out = []
    for _ in range(n):
        inst = lb.get_instance(region_id)
        assert inst is not None
        out.append(inst.instance_id)
    return out


def longest_run(seq: list[str], item: str) -> int:
    return max((len(list(g)) for k, g in itertools.groupby(seq) if k == item), default=0)


# -- strategies ------------------------------------------------------------------------


def test_round_robin_is_exactly_even_and_cyclic() -> None:
    lb = balancer(S.ROUND_ROBIN, n=10)
    seq = picks(lb, 10_000)
    assert set(collections.Counter(seq).values()) == {1000}
    assert seq[:10] == [f"i{i}" for i in range(10)]
    assert seq[10:20] == seq[:10]


def test_weighted_matches_nginx_smooth_sequence() -> None:
    lb = LoadBalancer(strategy=S.WEIGHTED_ROUND_ROBIN)
    lb.add_instance("a", "r", "h:1", weight=5)
    lb.add_instance("b", "r", "h:2", weight=1)
    lb.add_instance("c", "r", "h:3", weight=1)
    # the sequence documented for nginx's smooth weighted round robin
    assert picks(lb, 14) == ["a", "a", "b", "a", "c", "a", "a"] * 2


def test_weighted_distribution_and_smoothness() -> None:
    lb = LoadBalancer(strategy=S.WEIGHTED_ROUND_ROBIN)
    weights = {"a": 1, "b": 2, "c": 3, "d": 4}
    for name, w in weights.items():
        lb.add_instance(name, "r", f"h:{w}", weight=w)
    seq = picks(lb, 10_000)
    counts = collections.Counter(seq)
    for name, w in weights.items():
        assert abs(counts[name] / 10_000 - w / 10) < 0.02
    # smooth: the heaviest (40%) never gets two picks in a row more than twice over
    assert longest_run(seq, "d") <= 2
    assert all(longest_run(seq, n) == 1 for n in "abc")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=12))
def test_smooth_wrr_cycle_gives_each_exactly_its_weight(weights: list[int]) -> None:
    idx, state = smooth_wrr_sequence(weights, sum(weights))
    assert collections.Counter(idx) == {i: w for i, w in enumerate(weights)}
    assert not state.any()  # a whole cycle returns the state to zero


def test_weighted_long_cycles_are_generated_in_chunks() -> None:
    lb = LoadBalancer(strategy=S.WEIGHTED_ROUND_ROBIN)
    lb.add_instance("a", "r", "h:1", weight=3001)
    lb.add_instance("b", "r", "h:2", weight=2000)  # cycle 5001 > one chunk
    counts = collections.Counter(picks(lb, 5001 * 2))
    assert counts == {"a": 6002, "b": 4000}


def test_random_is_roughly_uniform() -> None:
    lb = balancer(S.RANDOM, n=10)
    counts = collections.Counter(picks(lb, 10_000))
    assert len(counts) == 10
    chi2 = sum((c - 1000) ** 2 / 1000 for c in counts.values())
    assert chi2 < 27.9  # df=9, p=0.001
    again = balancer(S.RANDOM, n=10)
    assert picks(again, 50) == picks(balancer(S.RANDOM, n=10), 50)  # seeded


def test_least_connections_prefers_idle_instances() -> None:
    lb = balancer(S.LEAST_CONNECTIONS, n=3)
    a, b, c = (lb.instance(f"i{i}") for i in range(3))
    assert a is not None and b is not None and c is not None
    for _ in range(3):
        lb.begin(a)
    lb.begin(b)
    assert set(picks(lb, 10)) == {"i2"}
    lb.begin(c)
    lb.begin(c)  # c: 2, b: 1, a: 3
    assert set(picks(lb, 10)) == {"i1"}
    for _ in range(3):
        lb.record_success(a, 0.001)  # a: 0
    assert set(picks(lb, 10)) == {"i0"}
    lb.record_success(b, 0.001)
    lb.record_success(c, 0.001)
    lb.record_success(c, 0.001)
    assert collections.Counter(picks(lb, 30)) == {"i0": 10, "i1": 10, "i2": 10}  # ties rotate


def test_least_connections_balances_in_flight_calls() -> None:
    lb = balancer(S.LEAST_CONNECTIONS, n=4)
    held: list[Instance] = []
    for _ in range(40):
        inst = lb.get_instance()
        assert inst is not None
        lb.begin(inst)
        held.append(inst)
    assert {i.in_flight for i in lb.instances()} == {10}


def test_other_strategies_stay_in_the_region_when_they_can() -> None:
    lb = balancer(S.ROUND_ROBIN, n=6, regions=3)  # r0: i0,i3  r1: i1,i4  r2: i2,i5
    assert set(picks(lb, 10, "r1")) == {"i1", "i4"}
    lb.set_health("i1", HealthState.NOT_SERVING)
    lb.set_health("i4", HealthState.NOT_SERVING)
    assert set(picks(lb, 12, "r1")) == {"i0", "i3", "i2", "i5"}


def region_aware(**kw: object) -> LoadBalancer:
    lb = LoadBalancer(strategy=S.REGION_AWARE, seed=1, **kw)  # type: ignore[arg-type]
    for region in ("us-east-1", "us-east-2", "eu-west-1", "ap-south-1"):
        for k in range(2):
            lb.add_instance(f"{region}-{k}", region, f"{region}:{k}")
    return lb


def test_region_aware_follows_configured_proximity() -> None:
    lb = region_aware(proximity={"us-east-1": ["us-east-2", "eu-west-1", "ap-south-1"]})
    assert set(picks(lb, 10, "us-east-1")) == {"us-east-1-0", "us-east-1-1"}
    lb.set_health("us-east-1-0", HealthState.NOT_SERVING)
    assert set(picks(lb, 10, "us-east-1")) == {"us-east-1-1"}
    lb.set_health("us-east-1-1", HealthState.UNREACHABLE)
    assert set(picks(lb, 10, "us-east-1")) == {"us-east-2-0", "us-east-2-1"}
    lb.set_health("us-east-2-0", HealthState.NOT_SERVING)
    lb.set_health("us-east-2-1", HealthState.NOT_SERVING)
    assert set(picks(lb, 10, "us-east-1")) == {"eu-west-1-0", "eu-west-1-1"}
    lb.set_health("us-east-1-1", HealthState.SERVING)  # home is back
    assert set(picks(lb, 10, "us-east-1")) == {"us-east-1-1"}
    assert lb.region_order("us-east-1")[:4] == [
        "us-east-1",
        "us-east-2",
        "eu-west-1",
        "ap-south-1",
    ]


def test_region_aware_uses_ewma_latency_without_proximity() -> None:
    clock = FakeClock()
    lb = region_aware(clock=clock, latency_refresh_s=1.0)
    latency_ms = {"us-east-2": 40.0, "eu-west-1": 5.0, "ap-south-1": 90.0}
    for inst in lb.instances():
        if inst.region_id in latency_ms:
            lb.begin(inst)
            lb.record_success(inst, latency_ms[inst.region_id] / 1000)
    for k in range(2):
        lb.set_health(f"us-east-1-{k}", HealthState.NOT_SERVING)
    assert set(picks(lb, 10, "us-east-1")) == {"eu-west-1-0", "eu-west-1-1"}
    assert lb.region_order("us-east-1") == ["us-east-1", "eu-west-1", "us-east-2", "ap-south-1"]
    # eu-west-1 gets slow; the order follows once the cached route is refreshed
    for inst in lb.instances():
        if inst.region_id == "eu-west-1":
            for _ in range(30):
                lb.begin(inst)
                lb.record_success(inst, 0.2)
    assert set(picks(lb, 5, "us-east-1")) == {"eu-west-1-0", "eu-west-1-1"}  # cached
    clock.now += 1.5
    assert set(picks(lb, 10, "us-east-1")) == {"us-east-2-0", "us-east-2-1"}


def test_region_aware_proximity_then_latency_for_unlisted_regions() -> None:
    lb = region_aware(proximity={"us-east-1": ["us-east-2"]})
    for inst in lb.instances():
        lb.begin(inst)
        lb.record_success(inst, 0.001 if inst.region_id == "ap-south-1" else 0.05)
    for r in ("us-east-1", "us-east-2"):
        for k in range(2):
            lb.set_health(f"{r}-{k}", HealthState.NOT_SERVING)
    assert set(picks(lb, 10, "us-east-1")) == {"ap-south-1-0", "ap-south-1-1"}


def test_no_usable_instance_gives_none() -> None:
    lb = balancer(S.REGION_AWARE, n=2)
    for inst in lb.instances():
        lb.set_health(inst, HealthState.NOT_SERVING)
    assert lb.get_instance() is None
    assert lb.get_instance("r0") is None
    with pytest.raises(NoAvailableInstanceError):
        lb.execute_request(lambda inst: inst.instance_id)


@pytest.mark.parametrize("strategy", list(S))
def test_unhealthy_and_removed_instances_are_never_picked(strategy: S) -> None:
    lb = balancer(strategy, n=6, regions=2)
    lb.set_health("i2", HealthState.NOT_SERVING)
    lb.remove_instance("i3")
    for region in (None, "r0", "r1"):
        seen = set(picks(lb, 200, region))
        assert "i2" not in seen and "i3" not in seen
    lb.set_health("i2", HealthState.SERVING)
    assert "i2" in set(picks(lb, 200))


def test_adding_the_same_instance_twice_updates_it() -> None:
    lb = LoadBalancer(strategy=S.WEIGHTED_ROUND_ROBIN)
    first = lb.add_instance("a", "r", "h:1", weight=1)
    lb.add_instance("b", "r", "h:2", weight=1)
    again = lb.add_instance("a", "r", "h:1", weight=3)
    assert first is again
    assert [i.instance_id for i in lb.instances()] == ["a", "b"]
    assert collections.Counter(picks(lb, 400)) == {"a": 300, "b": 100}
    moved = lb.add_instance("a", "r2", "h:9", weight=3)
    assert moved.endpoint == "h:9" and moved.region_id == "r2"
    assert len(lb.get_statistics()["instances"]) == 2
    assert set(picks(lb, 10, "r")) == {"b"}


def test_exclude_picks_another_instance_when_one_exists() -> None:
    for strategy in S:
        lb = balancer(strategy, n=3)
        for _ in range(20):
            inst = lb.get_instance(exclude=["i0", "i1"])
            assert inst is not None and inst.instance_id == "i2"
        assert lb.get_instance(exclude=["i0", "i1", "i2"]) is None


# -- ejection --------------------------------------------------------------------------


def test_ejection_after_consecutive_failures_and_return_after_interval() -> None:
    clock = FakeClock()
    lb = balancer(S.ROUND_ROBIN, n=3, clock=clock)
    bad = lb.instance("i0")
    assert bad is not None
    for _ in range(2):
        lb.begin(bad)
        lb.record_failure(bad, UNAVAILABLE)
    assert "i0" in picks(lb, 3)  # two failures: still in
    lb.begin(bad)
    lb.record_failure(bad, UNAVAILABLE)
    assert "i0" not in picks(lb, 30)
    assert lb.get_statistics()["instances"]["i0"]["ejected"]
    clock.now += 0.99
    assert "i0" not in picks(lb, 30)
    clock.now += 0.02  # 1 s base interval passed
    assert "i0" in picks(lb, 3)
    # fails again: ejected for twice as long
    for _ in range(3):
        lb.begin(bad)
        lb.record_failure(bad, UNAVAILABLE)
    clock.now += 1.5
    assert "i0" not in picks(lb, 30)
    clock.now += 0.6
    assert "i0" in picks(lb, 3)
    # a success resets the growth: the next ejection is 1 s again
    lb.begin(bad)
    lb.record_success(bad, 0.001)
    for _ in range(3):
        lb.begin(bad)
        lb.record_failure(bad, UNAVAILABLE)
    clock.now += 1.01
    assert "i0" in picks(lb, 3)


def test_failures_during_an_ejection_are_not_held_against_the_return() -> None:
    """Calls in flight when the instance was ejected fail after it; once back, it takes
    the threshold's failures again to be ejected (one had re-ejected it, for twice as
    long)."""
    clock = FakeClock()
    lb = balancer(S.ROUND_ROBIN, n=2, clock=clock)
    bad = lb.instance("i0")
    assert bad is not None
    for _ in range(8):
        lb.begin(bad)
    for _ in range(8):  # the third ejects it; five more end while it is out
        lb.record_failure(bad, UNAVAILABLE)
    assert bad.ejected
    clock.now += 1.01
    assert "i0" in picks(lb, 2)
    for _ in range(2):
        lb.begin(bad)
        lb.record_failure(bad, UNAVAILABLE)
        assert not bad.ejected
    lb.begin(bad)
    lb.record_failure(bad, UNAVAILABLE)
    assert bad.ejected and bad.ejected_until == pytest.approx(clock.now + 2.0)


def test_a_retry_that_tried_every_usable_instance_does_not_go_to_an_ejected_one() -> None:
    """With one usable instance left and it already tried, a retry asks it again before
    an instance ejected for its failures (Envoy's panic routing is for when nothing is
    usable)."""
    clock = FakeClock()
    lb = balancer(S.ROUND_ROBIN, n=2, clock=clock)
    ejected = lb.instance("i1")
    assert ejected is not None
    for _ in range(3):
        lb.begin(ejected)
        lb.record_failure(ejected, UNAVAILABLE)
    assert ejected.ejected
    assert lb.get_instance(exclude=["i0"]) is None  # nothing usable but i0
    visits: list[str] = []

    def call(inst: Instance) -> str:
        visits.append(inst.instance_id)
        if len(visits) == 1:
            raise UNAVAILABLE
        return inst.instance_id

    assert lb.execute_request(call) == "i0" and visits == ["i0", "i0"]
    assert lb.get_statistics()["total"]["panic_picks"] == 0
    # with nothing usable, the ejected one is still used rather than nothing
    lb.set_health("i0", HealthState.NOT_SERVING)
    assert lb.execute_request(lambda inst: inst.instance_id) == "i1"


def test_ejection_interval_is_capped() -> None:
    clock = FakeClock()
    lb = balancer(S.RANDOM, n=2, clock=clock, ejection_max_s=30.0)
    bad = lb.instance("i1")
    assert bad is not None
    for _ in range(8):  # 1, 2, 4, 8, 16, 30, 30, 30
        for _ in range(3):
            lb.begin(bad)
            lb.record_failure(bad, NOT_SENT)
        assert lb.get_statistics()["instances"]["i1"]["ejected_for_s"] <= 30.0
        clock.now += 30.0
        lb.get_instance()
    assert bad.ejections == 8 and not bad.ejected


def test_an_instance_ejected_thousands_of_times_is_still_ejected_for_the_cap() -> None:
    """The backoff's doublings stop growing: 2.0 ** ejections overflowed (OverflowError
    in record_failure) from the 1025th ejection on."""
    clock = FakeClock()
    lb = balancer(S.RANDOM, n=2, clock=clock, ejection_max_s=30.0)
    bad = lb.instance("i1")
    assert bad is not None
    for _ in range(2000):
        for _ in range(3):
            lb.begin(bad)
            lb.record_failure(bad, NOT_SENT)
        want = 2.0 ** (bad.ejections - 1) if bad.ejections <= 5 else 30.0  # 1, 2 .. 16, 30
        assert bad.ejected_until == clock.now + want
        clock.now += 30.0
        lb.get_instance()
    assert bad.ejections == 2000 and not bad.ejected
    for _ in range(3):
        lb.begin(bad)
        lb.record_failure(bad, NOT_SENT)
    assert bad.ejected_until == clock.now + 30.0


def test_caller_errors_do_not_eject() -> None:
    lb = balancer(S.ROUND_ROBIN, n=2)
    inst = lb.instance("i0")
    assert inst is not None
    for _ in range(10):
        lb.begin(inst)
        lb.record_failure(inst, INVALID)
    assert not inst.ejected
    # the caller's mistakes say nothing of the instance: not failures, not its error rate
    assert (inst.failures, inst.rejected, inst.error_rate) == (0, 10, 0.0)
    assert lb.get_statistics()["instances"]["i0"]["rejected"] == 10


# -- retries ---------------------------------------------------------------------------


def test_retry_classification() -> None:
    assert is_retryable(UNAVAILABLE)
    assert is_retryable(NOT_SENT)
    assert not is_retryable(INVALID)
    for code in (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.CANCELLED,
    ):
        assert not is_retryable(rpc_error(code))
    assert not is_retryable(ValueError("x"))
    assert is_retryable(ConnectionRefusedError())
    assert is_retryable(NotSentError())
    # non-idempotent: only when the call never left the client
    assert not is_retryable(UNAVAILABLE, idempotent=False)
    assert is_retryable(NOT_SENT, idempotent=False)
    assert is_retryable(ConnectionRefusedError(), idempotent=False)
    assert failed_before_send(NOT_SENT) and not failed_before_send(UNAVAILABLE)
    # a server's own words are not the client's: it ran the call, then answered
    store_down = rpc_error(grpc.StatusCode.UNAVAILABLE, "audit store: Connection refused")
    assert not failed_before_send(store_down)
    assert not is_retryable(store_down, idempotent=False)
    with_trailers = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-status-details-bin", b"x")),
        details=NOT_SENT.details(),
    )
    assert not failed_before_send(with_trailers)
    assert is_backend_fault(UNAVAILABLE) and not is_backend_fault(INVALID)


def failing_on(bad: set[str], error: BaseException, visits: list[str]) -> object:
    def call(inst: Instance) -> str:
        visits.append(inst.instance_id)
        if inst.instance_id in bad:
            raise error
        return inst.instance_id

    return call


async def test_the_guides_keywords_work() -> None:
    """As the guide calls it: ``execute_request(request_func=..., region_id=...)``."""
    lb = balancer(S.ROUND_ROBIN, n=3)

    def governance_request(inst: Instance) -> str:
        return inst.region_id

    async def governance_request_async(inst: Instance) -> str:
        return inst.instance_id

    region = lb.instances()[0].region_id
    assert lb.execute_request(request_func=governance_request, region_id=region) == region
    picked = await lb.execute_request_async(request_func=governance_request_async)
    assert picked in {i.instance_id for i in lb.instances()}


def test_retry_goes_to_a_different_instance() -> None:
    lb = balancer(S.ROUND_ROBIN, n=3)
    visits: list[str] = []

    def call(inst: Instance) -> str:
        visits.append(inst.instance_id)
        if len(visits) < 3:
            raise UNAVAILABLE
        return inst.instance_id

    assert lb.execute_request(call) == visits[-1]
    assert len(visits) == 3 and len(set(visits)) == 3
    stats = lb.get_statistics()["total"]
    assert stats["retries"] == 2 and stats["failed_calls"] == 0 and stats["failures"] == 2


def test_retries_are_bounded_and_then_the_error_surfaces() -> None:
    lb = balancer(S.ROUND_ROBIN, n=5)
    visits: list[str] = []

    def call(inst: Instance) -> str:
        visits.append(inst.instance_id)
        raise UNAVAILABLE

    with pytest.raises(grpc.RpcError):
        lb.execute_request(call)
    assert len(visits) == 3  # 1 + max_retries
    assert lb.get_statistics()["total"]["failed_calls"] == 1


@pytest.mark.parametrize(
    ("error", "idempotent", "attempts"),
    [
        (INVALID, True, 1),
        (rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED), True, 1),
        (UNAVAILABLE, False, 1),
        (NOT_SENT, False, 3),
        (UNAVAILABLE, True, 3),
    ],
)
def test_what_is_retried(error: BaseException, idempotent: bool, attempts: int) -> None:
    lb = balancer(S.RANDOM, n=4)
    visits: list[str] = []

    def call(inst: Instance) -> str:
        visits.append(inst.instance_id)
        raise error

    with pytest.raises(type(error)):
        lb.execute_request(call, idempotent=idempotent)
    assert len(visits) == attempts


def test_single_instance_is_retried_in_place() -> None:
    lb = balancer(S.ROUND_ROBIN, n=1)
    visits: list[str] = []

    def call(inst: Instance) -> str:
        visits.append(inst.instance_id)
        if len(visits) == 1:
            raise UNAVAILABLE
        return "ok"

    assert lb.execute_request(call) == "ok"
    assert visits == ["i0", "i0"]


def test_total_deadline_stops_retries() -> None:
    policy = RetryPolicy(max_retries=10, backoff_initial_s=0.05, backoff_max_s=0.05, jitter=0.0)
    lb = LoadBalancer(retry_policy=policy)
    lb.add_instance("a", "r", "h:1")
    visits: list[float | None] = []

    def call(inst: Instance) -> str:
        visits.append(remaining_timeout())
        raise UNAVAILABLE

    with pytest.raises(grpc.RpcError):
        lb.execute_request(call, timeout=0.12)
    assert 2 <= len(visits) <= 3
    assert all(v is not None and v <= 0.12 for v in visits)
    assert remaining_timeout(7.0) == 7.0  # outside a call


def test_attempt_deadline_is_published_to_the_call() -> None:
    lb = balancer(S.ROUND_ROBIN, n=2)
    seen: list[float | None] = []

    def call(inst: Instance) -> str:
        seen.append(remaining_timeout())
        return "ok"

    lb.execute_request(call, timeout=5.0, attempt_timeout=0.5)
    lb.execute_request(call)
    assert seen[0] is not None and 0.4 < seen[0] <= 0.5
    assert seen[1] is None


async def test_async_attempt_is_cut_off_at_its_deadline() -> None:
    lb = balancer(S.ROUND_ROBIN, n=2, fault_timeout_s=0.01)

    async def slow(inst: Instance) -> str:
        await asyncio.sleep(5)
        return "late"

    with pytest.raises(TimeoutError):
        await lb.execute_request_async(slow, attempt_timeout=0.05)
    stats = lb.get_statistics()["total"]
    assert stats["requests"] == 1 and stats["failures"] == 1 and stats["in_flight"] == 0


@pytest.mark.parametrize("sync", [False, True])
async def test_a_deadline_too_short_to_be_fair_is_not_the_instances_fault(sync: bool) -> None:
    """An attempt that had under ``fault_timeout_s`` and missed its deadline is counted
    as rejected (the caller's doing), not as a failure towards ejection."""
    lb = balancer(S.ROUND_ROBIN, n=1, fault_timeout_s=0.5)

    async def slow(inst: Instance) -> str:
        await asyncio.sleep(5)
        return "late"

    def timed_out(inst: Instance) -> str:
        raise TimeoutError("deadline")

    async def short_call() -> str:
        if sync:
            return lb.execute_request(timed_out, timeout=0.05)
        return await lb.execute_request_async(slow, attempt_timeout=0.05)

    for _ in range(lb.ejection_threshold + 1):
        with pytest.raises(TimeoutError):
            await short_call()
    [inst] = lb.instances()
    assert (inst.failures, inst.rejected, inst.ejected) == (0, 4, False)
    with pytest.raises(TimeoutError):  # with the time it should have been enough
        lb.execute_request(timed_out, timeout=1.0)
    assert inst.failures == 1


async def test_async_retries_and_concurrency() -> None:
    lb = balancer(S.LEAST_CONNECTIONS, n=4)

    async def call(inst: Instance) -> str:
        await asyncio.sleep(0.001)
        if inst.instance_id == "i0":
            raise UNAVAILABLE
        return inst.instance_id

    results = await asyncio.gather(*(lb.execute_request_async(call) for _ in range(200)))
    assert len(results) == 200 and "i0" not in results
    stats = lb.get_statistics()
    assert stats["total"]["in_flight"] == 0 and stats["total"]["failed_calls"] == 0
    assert stats["total"]["requests"] == 200 + stats["total"]["retries"]
    assert stats["total"]["retries"] == stats["instances"]["i0"]["failures"] >= 3
    assert stats["instances"]["i0"]["ejected"]
    assert all(stats["instances"][f"i{k}"]["requests"] > 40 for k in (1, 2, 3))


# -- statistics and threads ------------------------------------------------------------


def test_statistics_counts_and_ewma() -> None:
    lb = balancer(S.ROUND_ROBIN, n=2, ewma_alpha=0.5)
    a = lb.instance("i0")
    assert a is not None
    for latency_s in (0.010, 0.020, 0.040):
        lb.begin(a)
        lb.record_success(a, latency_s)
    lb.begin(a)
    lb.record_failure(a, UNAVAILABLE)
    lb.begin(a)  # still in flight
    s = lb.get_statistics()
    ia = s["instances"]["i0"]
    assert ia["requests"] == 5 and ia["failures"] == 1 and ia["in_flight"] == 1
    assert ia["error_rate"] == pytest.approx(0.2)
    assert ia["ewma_latency_ms"] == pytest.approx(27.5)  # 10 -> 15 -> 27.5
    assert ia["health"] == "unknown" and ia["available"]
    t = s["total"]
    assert t["requests"] == 5 and t["failures"] == 1 and t["in_flight"] == 1
    assert t["error_rate"] == pytest.approx(0.2)
    assert s["instances"]["i1"]["ewma_latency_ms"] is None


def test_default_ewma_alpha() -> None:
    lb = balancer(S.ROUND_ROBIN, n=1)
    inst = lb.instance("i0")
    assert inst is not None
    for latency_s in (0.010, 0.020):
        lb.begin(inst)
        lb.record_success(inst, latency_s)
    assert inst.ewma_latency_ms == pytest.approx(12.0)


def test_thread_safe_under_concurrent_sync_callers() -> None:
    lb = balancer(S.LEAST_CONNECTIONS, n=8, regions=2)

    def worker() -> None:
        for k in range(2000):
            lb.execute_request(lambda inst: inst.region_id, region_id=f"r{k % 2}")
            if k % 500 == 0:
                lb.set_health("i3", HealthState.NOT_SERVING if k % 1000 else HealthState.SERVING)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = lb.get_statistics()["total"]
    assert total["requests"] == 8000 and total["in_flight"] == 0 and total["calls"] == 8000


@pytest.mark.parametrize("strategy", list(S))
def test_picks_after_excluding_picks_stay_valid(strategy: S) -> None:
    lb = balancer(strategy, n=3)
    for k in range(50):
        assert lb.get_instance(exclude=[f"i{k % 3}"]) is not None
        assert lb.get_instance() is not None
        if k == 25:
            lb.remove_instance("i2")
            lb.add_instance("i2", "r0", "h:2")


def test_when_every_healthy_instance_is_ejected_the_soonest_back_is_used() -> None:
    clock = FakeClock()
    lb = balancer(S.ROUND_ROBIN, n=2, clock=clock)
    first, second = lb.instance("i0"), lb.instance("i1")
    assert first is not None and second is not None
    for inst in (first, second):
        for _ in range(3):
            lb.begin(inst)
            lb.record_failure(inst, UNAVAILABLE)
        clock.now += 0.1
    assert set(picks(lb, 5)) == {"i0"}  # due back first
    lb.set_health("i0", HealthState.NOT_SERVING)
    assert set(picks(lb, 5)) == {"i1"}  # never an unhealthy one
    assert lb.get_statistics()["total"]["panic_picks"] == 10


async def test_outside_cancellation_is_not_a_timeout() -> None:
    lb = balancer(S.ROUND_ROBIN, n=2)
    started = asyncio.Event()

    async def slow(inst: Instance) -> str:
        started.set()
        await asyncio.sleep(5)
        return "late"

    task = asyncio.ensure_future(lb.execute_request_async(slow, timeout=10.0))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    total = lb.get_statistics()["total"]
    assert total["in_flight"] == 0 and total["failures"] == 0 and total["retries"] == 0


@pytest.mark.parametrize("strategy", list(S))
def test_a_pick_that_stays_in_its_region_never_leaves_it(strategy: S) -> None:
    lb = balancer(strategy, n=6, regions=3)  # r0: i0,i3  r1: i1,i4  r2: i2,i5
    stay = {"stay_in_region": True}
    assert {lb.get_instance("r1", **stay).instance_id for _ in range(10)} == {"i1", "i4"}  # type: ignore[union-attr]
    lb.set_health("i1", HealthState.NOT_SERVING)
    assert {lb.get_instance("r1", **stay).instance_id for _ in range(10)} == {"i4"}  # type: ignore[union-attr]
    # a retry that excludes the region's last instance gets no other region's (the
    # balancer then retries it in place)
    assert lb.get_instance("r1", ["i4"], **stay) is None
    assert lb.get_instance("r1", ["i4"]).region_id != "r1"  # type: ignore[union-attr]
    lb.set_health("i4", HealthState.NOT_SERVING)
    assert lb.get_instance("r1", **stay) is None
    assert lb.get_instance("r1", ["i1"], **stay) is None
    assert lb.get_instance("r1").region_id != "r1"  # type: ignore[union-attr]  # as before
    with pytest.raises(NoAvailableInstanceError, match='region "r1"\\), and the call stays'):
        lb.execute_request(lambda inst: inst.instance_id, "r1", stay_in_region=True)
    # without a region there is nothing to stay in: any instance
    assert lb.get_instance(None, **stay) is not None


def test_retries_that_stay_in_the_region_go_to_its_other_instances_only() -> None:
    lb = balancer(S.REGION_AWARE, n=6, regions=3)
    visits: list[str] = []

    def call(inst: Instance) -> str:
        visits.append(inst.instance_id)
        raise UNAVAILABLE

    with pytest.raises(grpc.aio.AioRpcError):
        lb.execute_request(call, "r2", stay_in_region=True)
    assert len(visits) == 3 and set(visits) == {"i2", "i5"}


def test_panic_routing_that_stays_in_the_region_uses_only_its_ejected_instances() -> None:
    clock = FakeClock()
    lb = balancer(S.ROUND_ROBIN, n=4, regions=2, clock=clock)  # r0: i0,i2  r1: i1,i3
    for name in ("i0", "i2"):
        inst = lb.instance(name)
        assert inst is not None
        for _ in range(3):
            lb.begin(inst)
            lb.record_failure(inst, UNAVAILABLE)
    home = lb.get_instance("r0", stay_in_region=True)
    assert home is not None and home.region_id == "r0"  # ejected, but the region's own
    lb.set_health("i0", HealthState.NOT_SERVING)
    lb.set_health("i2", HealthState.NOT_SERVING)
    assert lb.get_instance("r0", stay_in_region=True) is None
    assert lb.get_instance("r0", stay_in_region=False) is not None


async def test_a_failed_health_watch_does_not_stop_the_balancer_closing() -> None:
    """One instance's channel cannot be made, so its watch fails (and is retried); the
    balancer's close still closes the other instances' channels."""

    def channel_for(endpoint: str) -> grpc.aio.Channel:
        if endpoint.startswith("10.0.0.66"):
            raise RuntimeError("no channel for this one")
        return grpc.aio.insecure_channel(endpoint)

    lb = LoadBalancer(channel_factory=channel_for)
    lb.attach_health_watcher(backoff_initial_s=0.01, backoff_max_s=0.01)
    lb.add_instance("bad", "r1", "10.0.0.66:1")
    good = lb.add_instance("good", "r1", "127.0.0.1:9")
    await lb.start()
    watcher = lb.health_watcher
    assert watcher is not None
    bad = lb.instance("bad")
    assert bad is not None
    for _ in range(200):  # the failed watch marks it unreachable (and is retried)
        if bad.health is HealthState.UNREACHABLE:
            break
        await asyncio.sleep(0.01)
    assert bad.health is HealthState.UNREACHABLE
    assert good.has_channel
    await lb.close()
    assert not good.has_channel
