"""Review findings in client-side balancing: weighted retries, weight bounds, retry policy."""

from __future__ import annotations

import collections

import pytest

from nethical_grpc.balancing import (
    LoadBalancer,
    LoadBalancingStrategy,
    RetryPolicy,
    parse_target,
)

S = LoadBalancingStrategy


def _weighted(weights: dict[str, int]) -> LoadBalancer:
    lb = LoadBalancer(strategy=S.WEIGHTED_ROUND_ROBIN, seed=3)
    for i, (name, w) in enumerate(weights.items()):
        lb.add_instance(name, "r", f"127.0.0.1:{20000 + i}", weight=w)
    return lb


def test_weighted_retries_leave_the_first_attempt_order_alone() -> None:
    """A retry's pick (excluding the instance tried) does not eat into the smooth
    weighted sequence first attempts follow: they keep the nginx order and shares."""
    lb = _weighted({"a": 5, "b": 1, "c": 1})
    first: list[str] = []
    for _ in range(14):
        inst = lb.get_instance()
        assert inst is not None
        first.append(inst.instance_id)
        retry = lb.get_instance(exclude=[inst])
        assert retry is not None and retry is not inst
    assert first == ["a", "a", "b", "a", "c", "a", "a"] * 2


def test_weighted_retry_picks_follow_the_candidates_weights() -> None:
    """Retries among the instances not tried yet share picks by weight, smoothly."""
    lb = _weighted({"a": 1_000_000, "b": 1, "c": 3})
    got = [lb.get_instance(exclude=["a"]) for _ in range(8)]
    ids = [g.instance_id for g in got if g is not None]
    assert collections.Counter(ids) == {"c": 6, "b": 2}
    assert ids == ["c", "b", "c", "c"] * 2  # the smooth order of weights 1 and 3


@pytest.mark.parametrize("weight", [2**32, 2**62 + 1, 10**20])
def test_weights_past_uint32_are_refused(weight: int) -> None:
    """int64 sums of huge weights overflowed and skewed the weighted order; like gRPC
    and Envoy, a weight is at most 2**32 - 1."""
    lb = LoadBalancer(strategy=S.WEIGHTED_ROUND_ROBIN)
    with pytest.raises(ValueError, match="weight"):
        lb.add_instance("a", "r", "127.0.0.1:1", weight=weight)
    with pytest.raises(ValueError, match="weight"):
        parse_target(f"127.0.0.1:1@{weight}")
    assert parse_target(f"127.0.0.1:1@{2**32 - 1}").weight == 2**32 - 1


def test_huge_equal_weights_still_alternate() -> None:
    lb = _weighted({"a": 2**32 - 2, "b": 2**32 - 1})
    ids = [i.instance_id for i in (lb.get_instance() for _ in range(4)) if i is not None]
    assert sorted(ids) == ["a", "a", "b", "b"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"jitter": 1.5}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
        ({"backoff_initial_s": -0.01}, "backoff_initial_s"),
        ({"backoff_initial_s": 2.0, "backoff_max_s": 1.0}, "backoff_max_s"),
        ({"backoff_multiplier": 0.5}, "backoff_multiplier"),
        ({"attempt_timeout_s": 0.0}, "attempt_timeout_s"),
        ({"total_timeout_s": -1.0}, "total_timeout_s"),
    ],
)
def test_retry_policy_refuses_bad_settings(kwargs: dict[str, float], field: str) -> None:
    """A jitter past 1 made the backoff negative (time.sleep raised ValueError in the
    middle of a call's retries); every setting is checked when the policy is made."""
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_retry_policy_backoff_stays_within_bounds() -> None:
    import random

    policy = RetryPolicy(backoff_initial_s=0.01, backoff_max_s=0.05, jitter=1.0)
    rng = random.Random(1)
    for retry in range(20):
        assert 0.0 <= policy.backoff_s(retry, rng) <= 0.05


def test_gateway_flags_name_the_flag_at_fault() -> None:
    import argparse

    from coordinator.gateway_config import add_arguments, from_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ValueError, match="--max-retries"):
        from_arguments(parser.parse_args(["--max-retries", "-1"]))
    assert from_arguments(parser.parse_args(["--max-retries", "0"])).max_retries == 0


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [({"ejection_threshold": 0}, "ejection_threshold"), ({"default_timeout_s": 0.0}, "timeout")],
)
def test_gateway_config_is_checked_when_made(kwargs: dict[str, float], text: str) -> None:
    """Refused when the config is made, not later when the coordinator builds from it."""
    from coordinator.gateway_config import GatewayConfig

    with pytest.raises(ValueError, match=text):
        GatewayConfig(**kwargs)  # type: ignore[arg-type]
