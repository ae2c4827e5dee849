"""Review 36 of the region node's evaluation path: risk profiles in Redis and what
GetRiskProfile answers, on real servers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest
from meshutil import Mesh, add_region, wait_for
from services import REDIS_URL, fresh_redis_region

from nethical_grpc.v1 import governance_pb2, region_node_pb2, region_node_pb2_grpc
from region_node.profile_writes import PROFILE_PREFIX
from region_node.stores import StoreConfig

BENIGN = "SELECT title FROM books WHERE id = 42"


def stub(mesh: Mesh, region: str = "r1") -> region_node_pb2_grpc.RegionNodeServiceStub:
    server, _ = mesh.regions[region][0]
    return region_node_pb2_grpc.RegionNodeServiceStub(mesh.channel(server.address))


def action(text: str, agent: str, i: int, action_type: str = "query") -> governance_pb2.AgentAction:
    return governance_pb2.AgentAction(
        agent_id=agent, action_text=text, action_type=action_type, request_id=f"q-{i}"
    )


@pytest.fixture
def redis_region() -> Iterator[str]:
    with fresh_redis_region() as region:
        yield region


def cache_key(region: str, agent: str) -> str:
    return f"nethical:{region}:{PROFILE_PREFIX}{agent}"


async def test_get_risk_profile_ignores_malformed_or_foreign_cached_profiles(
    mesh: Mesh, redis_region: str
) -> None:
    """A cached profile whose ``decision_counts`` is not a mapping failed GetRiskProfile
    with INTERNAL (an AttributeError the reader did not expect), and one under the
    agent's key naming another agent was answered as the asked agent's (another agent's
    counts), or, merged with this node's own, failed with INTERNAL."""
    redis = pytest.importorskip("redis")
    from nethical_grpc.governance.profiles import Profile
    from nethical_grpc.storage.cache.codec import encode_value

    broken = Profile("broken", evaluations=3).to_dict()
    broken["decision_counts"] = [1, 2]
    r = redis.Redis.from_url(REDIS_URL)
    try:
        r.set(cache_key(redis_region, "broken"), encode_value(broken))
        for agent in ("moved", "moved-too"):
            other = Profile("someone-else", evaluations=9).to_dict()
            r.set(cache_key(redis_region, agent), encode_value(other))
    finally:
        r.close()
    await add_region(mesh, redis_region, stores=StoreConfig(cache_url=REDIS_URL))
    s = stub(mesh, redis_region)
    for agent in ("broken", "moved"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.GetRiskProfile(region_node_pb2.GetRiskProfileRequest(agent_id=agent), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, agent
    # this node's own evaluations of the agent (not merged with the cache yet)
    await s.Evaluate(
        region_node_pb2.EvaluateRequest(action=action(BENIGN, "moved-too", 1)), timeout=10
    )
    got = await s.GetRiskProfile(
        region_node_pb2.GetRiskProfileRequest(agent_id="moved-too"), timeout=5
    )
    assert got.agent_id == "moved-too" and got.evaluations == 1


async def test_a_malformed_cached_profile_does_not_hold_back_other_agents_writes(
    mesh: Mesh, redis_region: str
) -> None:
    """The profiles merged in one cache update with a malformed one (``decision_counts``
    not a mapping) were never written: each round's merge raised, and every agent of that
    chunk stayed in doubt for good."""
    redis = pytest.importorskip("redis")
    from nethical_grpc.governance.profiles import Profile
    from nethical_grpc.storage.cache.codec import decode_value, encode_value

    broken = Profile("broken", evaluations=3).to_dict()
    broken["decision_counts"] = "ALLOW"
    r = redis.Redis.from_url(REDIS_URL)
    try:
        r.set(cache_key(redis_region, "broken"), encode_value(broken))
        await add_region(mesh, redis_region, stores=StoreConfig(cache_url=REDIS_URL))
        s = stub(mesh, redis_region)
        agents = ["broken", "fine-1", "fine-2"]
        await asyncio.gather(
            *(
                s.Evaluate(region_node_pb2.EvaluateRequest(action=action(BENIGN, a, i)), timeout=10)
                for i, a in enumerate(agents)
            )
        )

        def written() -> bool:
            found = [r.get(cache_key(redis_region, a)) for a in agents]
            return all(v is not None and decode_value(v).get("evaluations") == 1 for v in found)

        await wait_for(written, timeout_s=8.0)
        cached = decode_value(r.get(cache_key(redis_region, "broken")))
        assert cached["agent_id"] == "broken" and cached["decision_counts"] == {"ALLOW": 1}
    finally:
        r.close()
