"""The coordinator's instance registry: instances grouped by region, as a query reads them."""

from __future__ import annotations

from coordinator.instances import InstanceRegistry


async def test_instances_are_grouped_by_region_and_sorted_by_endpoint() -> None:
    registry = InstanceRegistry(
        {
            "eu": ["127.0.0.1:7003", "127.0.0.1:7001"],
            "us": ["127.0.0.1:7002"],
        }
    )
    try:
        grouped = registry.by_region()
        assert {r: [v.endpoint for v in vs] for r, vs in grouped.items()} == {
            "eu": ["127.0.0.1:7001", "127.0.0.1:7003"],
            "us": ["127.0.0.1:7002"],
        }
        for region in ("eu", "us", "ap"):
            assert registry.instances(region) == grouped.get(region, [])
        assert registry.instances("ap") == []
    finally:
        await registry.close()


async def test_an_instance_the_balancer_moves_is_grouped_under_its_new_region() -> None:
    registry = InstanceRegistry({"eu": ["127.0.0.1:7001", "127.0.0.1:7002"]})
    try:
        # a discovered instance re-announced in another region moves in place
        registry.balancer.add_instance("127.0.0.1:7002", "us", "127.0.0.1:7002")
        grouped = registry.by_region()
        assert [v.endpoint for v in grouped["eu"]] == ["127.0.0.1:7001"]
        assert [v.endpoint for v in grouped["us"]] == ["127.0.0.1:7002"]
        registry.remove("127.0.0.1:7001")
        assert "eu" not in registry.by_region()
        assert registry.instances("eu") == []
    finally:
        await registry.close()
