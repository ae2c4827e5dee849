"""How the coordinator balances: strategy, proximity, retries, discovery, ejection.

Also the ``nethical-mesh coordinator`` flags that set it (:func:`add_arguments`,
:func:`from_arguments`); this module imports nothing heavy at load time, so building
the CLI parser stays cheap.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nethical_grpc.cli.args import parse_duration_ns
from nethical_grpc.grpc_options import DEFAULT_MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from coordinator.gateway import GatewaySettings
    from nethical_grpc.balancing import LoadBalancer, Resolver
    from nethical_grpc.balancing.instance import ChannelFactory

STRATEGIES = (
    "round_robin",
    "least_connections",
    "weighted_round_robin",
    "random",
    "region_aware",
)
EVALUATE_RETRY = ("not-sent", "connection-lost")


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The coordinator's balancer and gateway settings (defaults are the CLI's).

    ``proximity`` maps a home region to the regions to fall over to, nearest first
    (region aware); regions it does not list are ordered by measured latency.
    ``resolver``, ``channel_factory`` and ``clock`` (monotonic seconds, for ejection
    intervals) are for tests and interceptors.
    """

    strategy: str = "region_aware"
    local_region: str = ""
    stay_in_region: bool = False
    proximity: Mapping[str, Sequence[str]] = field(default_factory=dict)
    evaluate_retry: str = "connection-lost"
    max_retries: int = 2
    default_timeout_s: float = 10.0
    resolve_interval_s: float = 10.0
    ejection_threshold: int = 3
    ejection_base_s: float = 1.0
    ejection_max_s: float = 30.0
    resolver: Resolver | None = None
    channel_factory: ChannelFactory | None = None
    clock: Callable[[], float] | None = None
    #: the largest answer a default channel to a node takes (the coordinator's own limit)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}")
        if self.evaluate_retry not in EVALUATE_RETRY:
            raise ValueError(f"evaluate_retry must be one of {', '.join(EVALUATE_RETRY)}")
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if not self.resolve_interval_s > 0:  # NaN too
            raise ValueError("the DNS re-resolution interval must be > 0")
        if not 0 < self.ejection_base_s <= self.ejection_max_s:
            raise ValueError("ejection times must satisfy 0 < base <= max")
        if self.ejection_threshold < 1:
            raise ValueError("ejection_threshold must be >= 1")
        if not self.default_timeout_s > 0:
            raise ValueError("the default Evaluate timeout must be > 0 seconds")

    def balancer(self) -> LoadBalancer:
        from nethical_grpc.balancing import LoadBalancer, LoadBalancingStrategy, RetryPolicy

        return LoadBalancer(
            strategy=LoadBalancingStrategy(self.strategy),
            proximity=self.proximity,
            retry_policy=RetryPolicy(max_retries=self.max_retries),
            ejection_threshold=self.ejection_threshold,
            ejection_base_s=self.ejection_base_s,
            ejection_max_s=self.ejection_max_s,
            channel_factory=self.channel_factory,
            clock=self.clock or time.monotonic,
            max_message_bytes=self.max_message_bytes,
        )

    def gateway_settings(self) -> GatewaySettings:
        from coordinator.gateway import EvaluateRetry, GatewaySettings

        return GatewaySettings(
            local_region=self.local_region,
            stay_in_region=self.stay_in_region,
            evaluate_retry=EvaluateRetry(self.evaluate_retry),
            default_timeout_s=self.default_timeout_s,
        )


def parse_region_orders(specs: Sequence[str], local_region: str) -> dict[str, list[str]]:
    """``--region-order`` values → proximity map.

    ``HOME=R1,R2`` gives HOME's fallback order; a bare ``R1,R2,...`` is the order seen
    from the local region (which must then be set; a leading local region is skipped).
    Raises ValueError for an empty list, a region listed twice, or a home listing itself.
    """
    proximity: dict[str, list[str]] = {}
    for spec in specs:
        home, sep, rest = spec.partition("=")
        if not sep:
            home, rest = local_region, spec
            if not home:
                raise ValueError(f"{spec!r}: a bare order needs --local-region (or HOME=R1,R2)")
        home = home.strip()
        order = [r.strip() for r in rest.split(",") if r.strip()]
        if order and order[0] == home and not sep:
            order = order[1:]
        if not home or not order:
            raise ValueError(f"{spec!r}: expected HOME=REGION[,REGION...] or REGION[,REGION...]")
        if home in order:
            raise ValueError(f"{spec!r}: {home!r} cannot fall over to itself")
        if len(set(order)) != len(order):
            raise ValueError(f"{spec!r}: a region is listed twice")
        if home in proximity:
            raise ValueError(f"{spec!r}: the order of {home!r} is given twice")
        proximity[home] = order
    return proximity


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The coordinator's balancing flags."""
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="region_aware",
        help="how Evaluate picks an instance (region_aware)",
    )
    p.add_argument(
        "--local-region",
        default="",
        help="region that Evaluate calls without a region_id go to first (region_aware)",
    )
    p.add_argument(
        "--stay-in-region",
        action="store_true",
        help="every Evaluate stays in its region (the call's region_id, else "
        "--local-region): when that region has no usable instance the call fails "
        "(UNAVAILABLE) instead of going to another region, so actions and their audit "
        "records stay in their region",
    )
    p.add_argument(
        "--region-order",
        action="append",
        default=[],
        metavar="[HOME=]REGION,REGION,...",
        help="fallback regions, nearest first: HOME=... for HOME, bare for --local-region; "
        "repeat; regions not listed go by measured latency",
    )
    p.add_argument(
        "--evaluate-retry",
        choices=EVALUATE_RETRY,
        default="connection-lost",
        help="retry an Evaluate elsewhere also when the connection broke while the node had "
        "it (connection-lost, the default: callers see no failure, the action may be "
        "recorded twice), or only when it never reached a node (not-sent)",
    )
    p.add_argument("--max-retries", type=int, default=2, help="retries per call on UNAVAILABLE (2)")
    p.add_argument(
        "--dns-interval",
        type=parse_duration_ns,
        default=10_000_000_000,
        help="how often dns:/// targets are re-resolved (10s)",
    )
    p.add_argument(
        "--ejection-time",
        type=parse_duration_ns,
        default=1_000_000_000,
        help="first ejection after 3 consecutive failures; doubles per repeat, max 30s (1s)",
    )


def from_arguments(args: Any) -> GatewayConfig:
    """Build the config from parsed flags; raises ValueError with the flag's problem."""
    try:
        proximity = parse_region_orders(args.region_order, args.local_region)
    except ValueError as exc:
        raise ValueError(f"--region-order: {exc}") from None
    if args.max_retries < 0:
        raise ValueError(f"--max-retries: must be >= 0, not {args.max_retries}")
    return GatewayConfig(
        strategy=args.strategy,
        local_region=args.local_region,
        stay_in_region=args.stay_in_region,
        proximity=proximity,
        evaluate_retry=args.evaluate_retry,
        max_retries=args.max_retries,
        resolve_interval_s=args.dns_interval / 1e9,
        ejection_base_s=args.ejection_time / 1e9,
        ejection_max_s=max(30.0, args.ejection_time / 1e9),
    )
