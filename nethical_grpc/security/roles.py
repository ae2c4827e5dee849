"""Which role may call which method: the mesh's access policy.

Three roles exist. A bearer token maps to a principal holding one or more of them
(see :mod:`nethical_grpc.security.tokens`).

================================  ===========  ========  ======
method                            coordinator  operator  client
================================  ===========  ========  ======
RegionNodeService/Ingest                                 yes
RegionNodeService/GetSummaries    yes          yes
RegionNodeService/StreamSummaries yes          yes
RegionNodeService/GetNodeInfo     yes          yes       yes
RegionNodeService/Evaluate        yes                    yes
RegionNodeService/EvaluateStream  yes                    yes
RegionNodeService/Score                                  yes
RegionNodeService/GetRiskProfile               yes
RegionNodeService/QueryMetrics                 yes
RegionNodeService/AggregateMetrics             yes
RegionNodeService/SearchAudit                  yes
CoordinatorService/GetGlobalMetrics            yes       yes
CoordinatorService/ListRegions                 yes       yes
CoordinatorService/Evaluate                              yes
CoordinatorService/EvaluateStream                        yes
================================  ===========  ========  ======

* ``coordinator`` is the credential a coordinator presents to region nodes. It reaches
  summaries and node identity, and Evaluate/EvaluateStream because the coordinator is
  a gateway that forwards its own clients' evaluations (it authenticates those clients
  itself, with the ``client`` role). It reaches no raw-data RPC.
* ``operator`` is an in-region credential: the raw-data RPCs (risk profiles, metric
  rows, aggregates, audit search) plus everything read-only (summaries, node identity,
  global metrics, the region list). It does not write: no Ingest, Evaluate or Score.
* ``client`` is an application: Ingest, Evaluate, EvaluateStream and Score on region
  nodes; on the coordinator the gateway's Evaluate/EvaluateStream and the global
  (summary-only) metrics and region list.

``grpc.health.v1.Health`` and server reflection are public: probes and grpcurl need no
token. Any method absent from the table is denied to every role (deny by default).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf.descriptor import ServiceDescriptor

from nethical_grpc.v1 import coordinator_pb2, region_node_pb2


class Role(enum.StrEnum):
    """A role a token may hold; its value is how it is spelled in token files."""

    COORDINATOR = "coordinator"
    OPERATOR = "operator"
    CLIENT = "client"

    @classmethod
    def parse(cls, text: str) -> Role:
        """``"client"`` → ``Role.CLIENT``; raises ValueError naming the known roles."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            known = ", ".join(r.value for r in cls)
            raise ValueError(f"unknown role {text!r} (known: {known})") from None


REGION_NODE_SERVICE = region_node_pb2.DESCRIPTOR.services_by_name["RegionNodeService"]
COORDINATOR_SERVICE = coordinator_pb2.DESCRIPTOR.services_by_name["CoordinatorService"]

HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = (
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
PUBLIC_SERVICES = frozenset({HEALTH_SERVICE, *REFLECTION_SERVICES})


def method_path(service: ServiceDescriptor, method_name: str) -> str:
    """The full gRPC path ``/package.Service/Method``; raises KeyError for no such method."""
    return f"/{service.full_name}/{service.methods_by_name[method_name].name}"


def method_paths(services: Iterable[ServiceDescriptor]) -> list[str]:
    """Every method of ``services`` as a full gRPC path, in declaration order."""
    return [f"/{s.full_name}/{m.name}" for s in services for m in s.methods]


def service_of(method: str) -> str:
    """``/pkg.Service/Method`` → ``pkg.Service`` (``""`` when the path is malformed)."""
    service, sep, _ = method.lstrip("/").rpartition("/")
    return service if sep else ""


_C, _O, _L = Role.COORDINATOR, Role.OPERATOR, Role.CLIENT

_REGION_ROLES: dict[str, frozenset[Role]] = {
    "Ingest": frozenset({_L}),
    "GetSummaries": frozenset({_C, _O}),
    "StreamSummaries": frozenset({_C, _O}),
    "GetNodeInfo": frozenset({_C, _O, _L}),
    "Evaluate": frozenset({_C, _L}),
    "EvaluateStream": frozenset({_C, _L}),
    "Score": frozenset({_L}),
    "GetRiskProfile": frozenset({_O}),
    "QueryMetrics": frozenset({_O}),
    "AggregateMetrics": frozenset({_O}),
    "SearchAudit": frozenset({_O}),
}

_COORDINATOR_ROLES: dict[str, frozenset[Role]] = {
    "GetGlobalMetrics": frozenset({_O, _L}),
    "ListRegions": frozenset({_O, _L}),
    "Evaluate": frozenset({_L}),
    "EvaluateStream": frozenset({_L}),
}


def _table() -> dict[str, frozenset[Role]]:
    table: dict[str, frozenset[Role]] = {}
    for service, roles in (
        (REGION_NODE_SERVICE, _REGION_ROLES),
        (COORDINATOR_SERVICE, _COORDINATOR_ROLES),
    ):
        for name, allowed in roles.items():
            if name in service.methods_by_name:  # a method dropped from the contract
                table[method_path(service, name)] = allowed
    return table


DEFAULT_METHOD_ROLES: Mapping[str, frozenset[Role]] = _table()


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Roles allowed per method (full gRPC path), and the services open to everyone.

    A method not in ``method_roles`` and not in a public service is denied to every
    role. Build variants with :meth:`with_method`.
    """

    method_roles: Mapping[str, frozenset[Role]] = field(
        default_factory=lambda: dict(DEFAULT_METHOD_ROLES)
    )
    public_services: frozenset[str] = PUBLIC_SERVICES

    def __post_init__(self) -> None:
        # a read-only copy: a policy cannot change under a running server
        object.__setattr__(self, "method_roles", MappingProxyType(dict(self.method_roles)))
        for method in self.method_roles:
            if not method.startswith("/") or not service_of(method):
                raise ValueError(f"method {method!r} is not a full path /package.Service/Method")

    def is_public(self, method: str) -> bool:
        """True when ``method`` needs no token (health, reflection by default)."""
        return service_of(method) in self.public_services

    def roles_for(self, method: str) -> frozenset[Role]:
        """The roles that may call ``method``; empty (deny) for an unlisted method."""
        return self.method_roles.get(method, frozenset())

    def allows(self, method: str, roles: Collection[Role]) -> bool:
        """Whether a principal holding ``roles`` may call ``method``."""
        if self.is_public(method):
            return True
        allowed = self.roles_for(method)
        return any(role in allowed for role in roles)

    def with_method(self, method: str, roles: Iterable[Role]) -> AccessPolicy:
        """A copy with ``method`` allowed to exactly ``roles`` (empty: denied)."""
        table = dict(self.method_roles)
        table[method] = frozenset(roles)
        return AccessPolicy(table, self.public_services)

    def missing(self, services: Iterable[ServiceDescriptor]) -> list[str]:
        """Methods of ``services`` with no entry in the table (they are denied)."""
        return [m for m in method_paths(services) if m not in self.method_roles]


DEFAULT_POLICY = AccessPolicy()
MESH_SERVICES = (REGION_NODE_SERVICE, COORDINATOR_SERVICE)
