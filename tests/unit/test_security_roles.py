"""The access table: every mesh method is listed, as documented; unlisted means denied."""

from __future__ import annotations

import pytest

from nethical_grpc.security.roles import (
    COORDINATOR_SERVICE,
    DEFAULT_POLICY,
    MESH_SERVICES,
    REGION_NODE_SERVICE,
    AccessPolicy,
    Role,
    method_paths,
    service_of,
)

C, OP, L = Role.COORDINATOR, Role.OPERATOR, Role.CLIENT

# The table as documented in nethical_grpc/security/roles.py and the README. A new RPC
# must be added here and there on purpose: the tests below fail until it is.
DOCUMENTED = {
    "/nethical_grpc.v1.RegionNodeService/Ingest": {L},
    "/nethical_grpc.v1.RegionNodeService/GetSummaries": {C, OP},
    "/nethical_grpc.v1.RegionNodeService/StreamSummaries": {C, OP},
    "/nethical_grpc.v1.RegionNodeService/GetNodeInfo": {C, OP, L},
    "/nethical_grpc.v1.RegionNodeService/Evaluate": {C, L},
    "/nethical_grpc.v1.RegionNodeService/EvaluateStream": {C, L},
    "/nethical_grpc.v1.RegionNodeService/Score": {L},
    "/nethical_grpc.v1.RegionNodeService/GetRiskProfile": {OP},
    "/nethical_grpc.v1.RegionNodeService/QueryMetrics": {OP},
    "/nethical_grpc.v1.RegionNodeService/AggregateMetrics": {OP},
    "/nethical_grpc.v1.RegionNodeService/SearchAudit": {OP},
    "/nethical_grpc.v1.CoordinatorService/GetGlobalMetrics": {OP, L},
    "/nethical_grpc.v1.CoordinatorService/ListRegions": {OP, L},
    "/nethical_grpc.v1.CoordinatorService/Evaluate": {L},
    "/nethical_grpc.v1.CoordinatorService/EvaluateStream": {L},
}

RAW_DATA = ("GetRiskProfile", "QueryMetrics", "AggregateMetrics", "SearchAudit")


def test_every_method_of_both_services_is_in_the_table() -> None:
    paths = method_paths(MESH_SERVICES)
    assert len(paths) == len(REGION_NODE_SERVICE.methods) + len(COORDINATOR_SERVICE.methods)
    assert DEFAULT_POLICY.missing(MESH_SERVICES) == []
    for path in paths:
        assert DEFAULT_POLICY.roles_for(path), f"{path} is allowed to no role"


def test_the_table_is_the_documented_one() -> None:
    actual = {m: set(r) for m, r in DEFAULT_POLICY.method_roles.items()}
    assert actual == DOCUMENTED
    assert set(method_paths(MESH_SERVICES)) == set(DOCUMENTED)


def test_coordinator_reaches_no_raw_data_and_clients_no_raw_data() -> None:
    for name in RAW_DATA:
        path = f"/{REGION_NODE_SERVICE.full_name}/{name}"
        assert not DEFAULT_POLICY.allows(path, [C])
        assert not DEFAULT_POLICY.allows(path, [L])
        assert DEFAULT_POLICY.allows(path, [OP])


def test_operator_does_not_write() -> None:
    for name in ("Ingest", "Evaluate", "EvaluateStream", "Score"):
        assert not DEFAULT_POLICY.allows(f"/{REGION_NODE_SERVICE.full_name}/{name}", [OP])


def test_a_method_missing_from_the_table_is_denied_to_every_role() -> None:
    path = "/nethical_grpc.v1.RegionNodeService/SomethingNew"
    assert DEFAULT_POLICY.roles_for(path) == frozenset()
    assert not DEFAULT_POLICY.allows(path, list(Role))
    assert not DEFAULT_POLICY.allows("/no.Such/Method", list(Role))


def test_a_policy_without_a_method_reports_it_missing_and_denies_it() -> None:
    dropped = "/nethical_grpc.v1.RegionNodeService/GetSummaries"
    table = {m: r for m, r in DEFAULT_POLICY.method_roles.items() if m != dropped}
    policy = AccessPolicy(table)
    assert policy.missing(MESH_SERVICES) == [dropped]
    assert not policy.allows(dropped, list(Role))


def test_with_method_changes_one_entry_only() -> None:
    path = "/nethical_grpc.v1.RegionNodeService/Score"
    policy = DEFAULT_POLICY.with_method(path, [OP])
    assert policy.allows(path, [OP])
    assert not policy.allows(path, [L])
    assert DEFAULT_POLICY.allows(path, [L])  # the default is untouched
    assert policy.roles_for("/nethical_grpc.v1.RegionNodeService/Ingest") == {L}


def test_the_table_cannot_be_changed_in_place() -> None:
    with pytest.raises(TypeError):
        DEFAULT_POLICY.method_roles["/x.Y/Z"] = frozenset({L})  # type: ignore[index]


def test_health_and_reflection_are_public_and_can_be_closed() -> None:
    for path in (
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ):
        assert DEFAULT_POLICY.is_public(path)
        assert DEFAULT_POLICY.allows(path, [])
    closed = AccessPolicy(DEFAULT_POLICY.method_roles, frozenset())
    assert not closed.allows("/grpc.health.v1.Health/Check", list(Role))


def test_no_mesh_method_is_public() -> None:
    for path in method_paths(MESH_SERVICES):
        assert not DEFAULT_POLICY.is_public(path)
        assert not DEFAULT_POLICY.allows(path, [])


def test_malformed_method_paths_are_rejected() -> None:
    with pytest.raises(ValueError, match="full path"):
        AccessPolicy({"Ingest": frozenset({L})})
    assert service_of("/a.B/C") == "a.B"
    assert service_of("nonsense") == ""


def test_role_parse() -> None:
    assert Role.parse(" Client ") is Role.CLIENT
    with pytest.raises(ValueError, match="coordinator, operator, client"):
        Role.parse("admin")
