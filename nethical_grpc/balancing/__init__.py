"""Client-side load balancing over region-node instances.

Five strategies (round robin, least connections, smooth weighted round robin, random,
region aware with a proximity order), live health from ``grpc.health.v1.Health/Watch``,
outlier ejection, retries on UNAVAILABLE only, and per-instance statistics::

    lb = LoadBalancer(strategy=LoadBalancingStrategy.REGION_AWARE, max_retries=2,
                      proximity={"us-east-1": ["us-east-2", "eu-west-1"]})
    lb.add_instance("use1-a", "us-east-1", "10.0.0.1:50051")
    lb.attach_health_watcher()
    await lb.start()
    reply = await lb.execute_request_async(
        lambda inst: Stub(inst.channel).GetNodeInfo(req, timeout=remaining_timeout()),
        region_id="us-east-1", timeout=2.0)

Instances can also follow DNS (a headless Service), re-resolved on an interval::

    discovery = DnsDiscovery(lb, interval_s=10.0)
    discovery.add_target("us-east-1", parse_target("dns:///nodes.ns.svc:50051"))
    discovery.start()
"""

from nethical_grpc.balancing.balancer import LoadBalancer
from nethical_grpc.balancing.discovery import (
    DnsDiscovery,
    Resolver,
    Target,
    getaddrinfo_resolver,
    parse_target,
)
from nethical_grpc.balancing.health_watch import HealthWatcher
from nethical_grpc.balancing.instance import HealthState, Instance
from nethical_grpc.balancing.retry import (
    BalancerClosedError,
    InstanceRemovedError,
    NoAvailableInstanceError,
    NotSentError,
    RetryPolicy,
    failed_before_send,
    is_backend_fault,
    is_retryable,
    remaining_timeout,
)
from nethical_grpc.balancing.strategies import LoadBalancingStrategy

__all__ = [
    "BalancerClosedError",
    "DnsDiscovery",
    "HealthState",
    "HealthWatcher",
    "Instance",
    "InstanceRemovedError",
    "LoadBalancer",
    "LoadBalancingStrategy",
    "NoAvailableInstanceError",
    "NotSentError",
    "Resolver",
    "RetryPolicy",
    "Target",
    "failed_before_send",
    "getaddrinfo_resolver",
    "is_backend_fault",
    "is_retryable",
    "parse_target",
    "remaining_timeout",
]
