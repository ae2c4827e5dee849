"""The coordinator's balancing flags: parsing, checks, and what reaches the balancer."""

from __future__ import annotations

import pytest

from coordinator.gateway import EvaluateRetry
from coordinator.gateway_config import GatewayConfig, from_arguments, parse_region_orders
from coordinator.server import CoordinatorConfig, start_coordinator
from nethical_grpc.balancing import LoadBalancingStrategy
from nethical_grpc.cli.main import build_parser


def test_region_orders_per_home_and_from_the_local_region() -> None:
    got = parse_region_orders(
        ["us-east-1,us-east-2,eu-west-1", "eu-west-1=eu-central-1,us-east-1"], "us-east-1"
    )
    assert got == {
        "us-east-1": ["us-east-2", "eu-west-1"],
        "eu-west-1": ["eu-central-1", "us-east-1"],
    }


@pytest.mark.parametrize(
    ("specs", "local", "complaint"),
    [
        (["a,b"], "", "needs --local-region"),
        (["a="], "", "expected HOME="),
        (["a=b,a"], "", "fall over to itself"),
        (["a=b,b"], "", "listed twice"),
        (["a=b", "a=c"], "", "given twice"),
    ],
)
def test_bad_region_orders_are_named(specs: list[str], local: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_region_orders(specs, local)


def test_cli_flags_reach_the_balancer() -> None:
    args = build_parser().parse_args(
        [
            "coordinator",
            "--region=us-east-1=127.0.0.1:1@3,dns:///nodes:2",
            "--region=eu-west-1=127.0.0.1:3",
            "--strategy",
            "weighted_round_robin",
            "--local-region",
            "us-east-1",
            "--region-order",
            "eu-west-1",
            "--evaluate-retry",
            "connection-lost",
            "--max-retries",
            "4",
            "--dns-interval",
            "2s",
            "--ejection-time",
            "500ms",
            "--stay-in-region",
        ]
    )
    config = from_arguments(args)
    assert config.resolve_interval_s == 2.0
    lb = config.balancer()
    assert lb.strategy is LoadBalancingStrategy.WEIGHTED_ROUND_ROBIN
    assert lb.proximity == {"us-east-1": ("eu-west-1",)}
    assert lb.retry_policy.max_retries == 4
    assert (lb.ejection_base_s, lb.ejection_max_s) == (0.5, 30.0)
    settings = config.gateway_settings()
    assert settings.local_region == "us-east-1"
    assert settings.evaluate_retry is EvaluateRetry.CONNECTION_LOST
    assert settings.stay_in_region


def test_cli_defaults_are_region_aware_and_not_sent() -> None:
    config = from_arguments(build_parser().parse_args(["coordinator", "--region=r=h:1"]))
    assert config.strategy == "region_aware" and config.evaluate_retry == "connection-lost"
    assert config.resolve_interval_s == 10.0 and config.max_retries == 2
    assert not config.stay_in_region and not config.gateway_settings().stay_in_region


@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({"strategy": "fastest"}, "strategy must be one of"),
        ({"evaluate_retry": "always"}, "evaluate_retry must be one of"),
        ({"max_retries": -1}, "max_retries"),
        ({"resolve_interval_s": 0}, "interval"),
        ({"resolve_interval_s": float("nan")}, "interval"),
        ({"ejection_base_s": 5, "ejection_max_s": 1}, "ejection"),
    ],
)
def test_bad_settings_are_named(kwargs: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        GatewayConfig(**kwargs)  # type: ignore[arg-type]


async def test_unknown_local_region_stops_the_start() -> None:
    with pytest.raises(ValueError, match="local region 'mars-1'"):
        await start_coordinator(
            CoordinatorConfig(
                regions={"r1": ["127.0.0.1:9"]}, gateway=GatewayConfig(local_region="mars-1")
            )
        )


async def test_bad_target_stops_the_start() -> None:
    with pytest.raises(ValueError, match="port is required"):
        await start_coordinator(CoordinatorConfig(regions={"r1": ["dns:///nodes"]}))
