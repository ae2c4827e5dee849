"""deploy/k8s: the three-regions overlay renders, validates, and its objects fit together.

``kubectl kustomize`` runs once per module (kubectl is required under CI); the rendered
objects are validated strictly against the Kubernetes OpenAPI schemas bundled with
``kubernetes-validate`` (offline), then held against each other and against the CLI:
selectors against pod labels, probes against ports and service names, the coordinator's
region addresses against the StatefulSets and their headless Services.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
import yaml
from deploy_sizes import restore_peak_bytes, start_s, steady_bytes

from coordinator.instances import parse_region_spec
from coordinator.server import SERVICE_NAME as COORDINATOR_SERVICE
from nethical_grpc.cli.main import build_parser
from nethical_grpc.grpc_options import channel_options
from region_node.server import SERVICE_NAME as REGION_SERVICE

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "deploy" / "k8s" / "overlays" / "three-regions"
NAMESPACE = "nethical"
REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-1")
REGION_LABEL = "nethical.io/region"
# Oldest release these manifests support (native gRPC probes are GA in 1.27; 1.29 is an
# old release still run by managed offerings), and the newest schema bundled.
SCHEMA_FLOOR = "1.29.0"
MARGIN_S = 5.0

Obj = dict[str, Any]


def _required_tool(name: str, hint: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} not found: {hint}")
        pytest.skip(f"{name} not found: {hint}")
    return found


@pytest.fixture(scope="module")
def rendered() -> list[Obj]:
    kubectl = _required_tool("kubectl", "install kubectl (it bundles kustomize)")
    result = subprocess.run(
        [kubectl, "kustomize", str(OVERLAY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert all(isinstance(d, dict) for d in docs)
    return docs


def _of(docs: list[Obj], kind: str) -> list[Obj]:
    return [d for d in docs if d["kind"] == kind]


def _one(docs: list[Obj], kind: str, name: str) -> Obj:
    (found,) = [d for d in _of(docs, kind) if d["metadata"]["name"] == name]
    return found


def _workloads(docs: list[Obj]) -> list[Obj]:
    return _of(docs, "Deployment") + _of(docs, "StatefulSet")


def _pod_labels(workload: Obj) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def _container(workload: Obj) -> Obj:
    containers: list[Obj] = workload["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    if selector is None:
        return False
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _env(docs: list[Obj], workload: Obj) -> dict[str, str]:
    """Variables the kubelet can expand in args: ConfigMap envFrom values, literal values,
    Downward API labels and namespace; other sources (Secrets, pod name) as <NAME>."""
    container = _container(workload)
    out: dict[str, str] = {}
    for source in container.get("envFrom", []):
        out.update(_one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        path = var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "")
        label = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
        if "value" in var:
            out[var["name"]] = var["value"]
        elif label is not None:
            out[var["name"]] = _pod_labels(workload)[label.group(1)]
        elif path == "metadata.namespace":
            out[var["name"]] = workload["metadata"]["namespace"]
        else:
            out[var["name"]] = f"<{var['name']}>"
    return out


def _expand(args: list[str], env: Mapping[str, str]) -> list[str]:
    def one(m: re.Match[str]) -> str:
        assert m.group(1) in env, f"$({m.group(1)}) is not defined: the kubelet leaves it as is"
        return env[m.group(1)]

    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, a) for a in args]


def _parsed_args(docs: list[Obj], workload: Obj) -> Any:
    """The container's args as the CLI reads them, with the container's environment set
    (the parser takes defaults such as --metrics-port from it)."""
    container = _container(workload)
    env = _env(docs, workload)
    with patch.dict(os.environ, env):
        return build_parser().parse_args(_expand(container["args"], env))


def _region_sets(docs: list[Obj]) -> dict[str, Obj]:
    return {s["metadata"]["labels"][REGION_LABEL]: s for s in _of(docs, "StatefulSet")}


def _probes(container: Obj) -> Iterator[tuple[str, Obj]]:
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert kind in container, f"{container['name']} has no {kind}"
        yield kind, container[kind]


def _quantity(text: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "": 1.0}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|)", str(text))
    assert m, f"unexpected quantity {text!r}"
    return float(m.group(1)) * units[m.group(2)]


def test_selector_semantics() -> None:
    labels = {"a": "1", "b": "2"}
    assert selects({"matchLabels": {"a": "1"}}, labels)
    assert not selects({"matchLabels": {"a": "2"}}, labels)
    assert selects({"matchExpressions": [{"key": "b", "operator": "In", "values": ["2"]}]}, labels)
    assert not selects({"matchExpressions": [{"key": "c", "operator": "Exists"}]}, labels)
    assert not selects(
        {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, labels
    )
    assert selects({}, labels)  # the empty selector selects everything
    assert not selects(None, labels)


def test_objects_validate_strictly_against_the_schemas(rendered: list[Obj]) -> None:
    try:
        import kubernetes_validate  # type: ignore[import-untyped]
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("kubernetes-validate is not installed")
        pytest.skip("kubernetes-validate is not installed")
    for version in (SCHEMA_FLOOR, kubernetes_validate.latest_version()):
        for doc in rendered:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                name = f"{doc['kind']}/{doc['metadata']['name']}"
                pytest.fail(f"{name} is invalid for Kubernetes {version}: {err.message}")


def test_renders_the_expected_objects(rendered: list[Obj]) -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    expected = {
        ("Namespace", NAMESPACE),
        ("ServiceAccount", "nethical-mesh"),
        ("Deployment", "coordinator"),
        ("Service", "coordinator"),
        ("PodDisruptionBudget", "coordinator"),
    }
    for region in REGIONS:
        for kind in ("StatefulSet", "Service", "PodDisruptionBudget", "NetworkPolicy"):
            expected.add((kind, f"region-{region}"))
    assert expected <= names
    (config,) = _of(rendered, "ConfigMap")
    assert config["metadata"]["name"].startswith("nethical-config-")  # hashed: rolls pods
    assert not _of(rendered, "Secret"), "no secret values are shipped"
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE


def test_namespace_enforces_the_restricted_pod_security_standard(rendered: list[Obj]) -> None:
    labels = _one(rendered, "Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_recommended_labels_on_objects_and_pods(rendered: list[Obj]) -> None:
    wanted = ("name", "part-of", "instance", "version", "managed-by")
    for doc in rendered:
        if doc["kind"] in ("Namespace", "ConfigMap"):
            continue
        labels = doc["metadata"]["labels"]
        for key in wanted:
            assert f"app.kubernetes.io/{key}" in labels, (doc["metadata"]["name"], key)
    for workload in _workloads(rendered):
        pod = _pod_labels(workload)
        for key in (*wanted, "component"):
            assert f"app.kubernetes.io/{key}" in pod


def test_each_region_has_a_statefulset_of_its_own(rendered: list[Obj]) -> None:
    sets = _region_sets(rendered)
    assert set(sets) == set(REGIONS)
    for region, sts in sets.items():
        assert sts["metadata"]["name"] == f"region-{region}"
        assert selects(sts["spec"]["selector"], _pod_labels(sts))
        for other_region, other in sets.items():
            if other_region != region:
                assert not selects(sts["spec"]["selector"], _pod_labels(other))
        assert sts["spec"]["replicas"] >= 2
        args = _parsed_args(rendered, sts)
        assert args.command == "region"
        assert args.region_id == region  # read from the pod's own region label
        env = {v["name"]: v for v in _container(sts)["env"]}
        field = env["NETHICAL_REGION_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert field == f"metadata.labels['{REGION_LABEL}']"
        assert _pod_labels(sts)[REGION_LABEL] == region
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert _container(sts)["args"][_container(sts)["args"].index("--instance-id") + 1] == (
            "$(POD_NAME)"
        )


def test_each_region_has_a_headless_service_selecting_its_pods(rendered: list[Obj]) -> None:
    sets = _region_sets(rendered)
    for region, sts in sets.items():
        service = _one(rendered, "Service", sts["spec"]["serviceName"])
        assert service["spec"]["clusterIP"] == "None"
        assert not service["spec"].get("publishNotReadyAddresses", False)
        assert selects({"matchLabels": service["spec"]["selector"]}, _pod_labels(sts))
        for other_region, other in sets.items():
            if other_region != region:
                assert not selects({"matchLabels": service["spec"]["selector"]}, _pod_labels(other))
        ports = {p["name"]: p for p in _container(sts)["ports"]}
        grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert grpc["targetPort"] in ports
        assert grpc["port"] == ports["grpc"]["containerPort"] == _parsed_args(rendered, sts).port


def test_coordinator_addresses_every_region_pod(rendered: list[Obj]) -> None:
    coordinator = _one(rendered, "Deployment", "coordinator")
    container = _container(coordinator)
    env = _env(rendered, coordinator)
    assert env["CLUSTER_DOMAIN"] == "cluster.local"
    fields = {v["name"]: v.get("valueFrom", {}).get("fieldRef", {}) for v in container["env"]}
    assert fields["POD_NAMESPACE"]["fieldPath"] == "metadata.namespace"
    args = build_parser().parse_args(container["args"])  # parses with $(..) unexpanded too
    assert args.command == "coordinator"
    sets = _region_sets(rendered)
    seen: dict[str, list[str]] = {}
    for spec in args.region:
        region, endpoints = parse_region_spec(spec)
        assert region in sets, f"--region {region}: no such region"
        seen[region] = endpoints
    assert set(seen) == set(REGIONS)
    for region, endpoints in seen.items():
        sts = sets[region]
        name, service = sts["metadata"]["name"], sts["spec"]["serviceName"]
        port = _parsed_args(rendered, sts).port
        suffix = f"{service}.$(POD_NAMESPACE).svc.$(CLUSTER_DOMAIN):{port}"
        per_pod = [f"{name}-{i}.{suffix}" for i in range(sts["spec"]["replicas"])]
        # Either every pod by its stable name (kept in step with replicas) or the headless
        # Service as one re-resolved DNS target.
        assert endpoints in (per_pod, [f"dns:///{suffix}"]), endpoints
    expanded = build_parser().parse_args(_expand(container["args"], env))
    first = parse_region_spec(expanded.region[0])[1][0]
    assert first.endswith(f"region-{REGIONS[0]}.{NAMESPACE}.svc.cluster.local:50051")


def test_coordinator_service_selects_coordinator_pods(rendered: list[Obj]) -> None:
    coordinator = _one(rendered, "Deployment", "coordinator")
    service = _one(rendered, "Service", "coordinator")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert selects({"matchLabels": service["spec"]["selector"]}, _pod_labels(coordinator))
    for sts in _of(rendered, "StatefulSet"):
        assert not selects({"matchLabels": service["spec"]["selector"]}, _pod_labels(sts))
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc["port"] == _parsed_args(rendered, coordinator).port
    assert grpc["targetPort"] == "grpc"


def test_probes_are_native_grpc_on_the_served_port(rendered: list[Obj]) -> None:
    for workload in _workloads(rendered):
        container = _container(workload)
        args = _parsed_args(rendered, workload)
        service = REGION_SERVICE if args.command == "region" else COORDINATOR_SERVICE
        grpc_port = next(p for p in container["ports"] if p["name"] == "grpc")["containerPort"]
        assert grpc_port == args.port
        for kind, probe in _probes(container):
            assert set(probe) & {"exec", "httpGet", "tcpSocket", "grpc"} == {"grpc"}, kind
            assert probe["grpc"]["port"] == args.port
            if kind == "livenessProbe":
                assert probe["grpc"].get("service", "") == ""
            else:
                assert probe["grpc"]["service"] == service, kind


def test_region_startup_allows_restoring_every_window_the_node_keeps(
    rendered: list[Obj],
) -> None:
    """A restarted node answers NOT_SERVING while it restores its flushed windows: with
    a startup probe shorter than that restore (two minutes, when the restore of the
    StatefulSet's 540,000 windows takes 73 s of a core and the pod may have only the 0.5
    core it requests), the kubelet kills it mid-restore, again and again."""
    for sts in _of(rendered, "StatefulSet"):
        args = _parsed_args(rendered, sts)
        need = start_s(args, _quantity(_container(sts)["resources"]["requests"]["cpu"]))
        startup = _container(sts)["startupProbe"]
        allowed = startup["periodSeconds"] * startup["failureThreshold"]
        assert need <= allowed, (sts["metadata"]["name"], need, allowed)


def test_termination_grace_covers_the_drain(rendered: list[Obj]) -> None:
    for workload in _workloads(rendered):
        args = _parsed_args(rendered, workload)
        drain_s = (args.drain_announce + args.drain_grace) / 1e9
        grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= drain_s + MARGIN_S, workload["metadata"]["name"]
        assert "lifecycle" not in _container(workload), "the node drains on SIGTERM itself"
        liveness = _container(workload)["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] > drain_s


def test_disruption_budgets_match_their_pods_and_allow_drains(rendered: list[Obj]) -> None:
    budgets = _of(rendered, "PodDisruptionBudget")
    for workload in _workloads(rendered):
        pods = _pod_labels(workload)
        (budget,) = [b for b in budgets if selects(b["spec"]["selector"], pods)]
        assert budget["spec"]["maxUnavailable"] == 1
        assert "minAvailable" not in budget["spec"]
        for other in _workloads(rendered):
            if other is not workload:
                assert not selects(budget["spec"]["selector"], _pod_labels(other))


def test_pods_spread_across_zones(rendered: list[Obj]) -> None:
    for workload in _workloads(rendered):
        spec = workload["spec"]["template"]["spec"]
        zone = [
            c
            for c in spec["topologySpreadConstraints"]
            if c["topologyKey"] == "topology.kubernetes.io/zone"
        ]
        assert len(zone) == 1
        assert zone[0]["whenUnsatisfiable"] == "ScheduleAnyway"
        for constraint in spec["topologySpreadConstraints"]:
            assert selects(constraint["labelSelector"], _pod_labels(workload))
            for other in _workloads(rendered):
                if other is not workload:
                    assert not selects(constraint["labelSelector"], _pod_labels(other))


def test_network_policies_admit_only_the_coordinator_and_in_region_clients(
    rendered: list[Obj],
) -> None:
    coordinator = _pod_labels(_one(rendered, "Deployment", "coordinator"))
    policies = _of(rendered, "NetworkPolicy")
    sets = _region_sets(rendered)
    for region, sts in sets.items():
        pods = _pod_labels(sts)
        (policy,) = [p for p in policies if selects(p["spec"]["podSelector"], pods)]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        for other_region, other in sets.items():
            if other_region != region:
                assert not selects(policy["spec"]["podSelector"], _pod_labels(other))
        named_ports = {p["name"] for p in _container(sts)["ports"]}
        grpc_rules = [
            r
            for r in policy["spec"]["ingress"]
            if {"port": "grpc", "protocol": "TCP"} in r["ports"]
        ]
        for rule in policy["spec"]["ingress"]:
            assert {p["port"] for p in rule["ports"]} <= named_ports
            assert rule.get("from"), "a rule without peers would admit every source"

        def admits(labels: Mapping[str, str], rules: list[Obj] = grpc_rules) -> bool:
            return any(
                selects(peer.get("podSelector"), labels) and "namespaceSelector" not in peer
                for rule in rules
                for peer in rule["from"]
            )

        assert admits(coordinator)
        assert admits({"nethical.io/region-client": "true", REGION_LABEL: region})
        others = [r for r in REGIONS if r != region]
        assert not admits({"nethical.io/region-client": "true", REGION_LABEL: others[0]})
        assert not admits({"nethical.io/region-client": "true"})
        assert not admits({"app.kubernetes.io/name": "something-else"})
        assert not admits(_pod_labels(sets[others[0]]))


def test_storage_urls_come_from_the_regions_own_secret(rendered: list[Obj]) -> None:
    keys = {
        "NETHICAL_CACHE_URL": "cache-url",
        "NETHICAL_TIMESERIES_URL": "timeseries-url",
        "NETHICAL_AUDIT_URL": "audit-url",
    }
    for region, sts in _region_sets(rendered).items():
        env = {v["name"]: v for v in _container(sts)["env"]}
        for name, key in keys.items():
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": f"nethical-storage-{region}", "key": key}
    for workload in _workloads(rendered):
        for var in _container(workload).get("env", []):
            assert "://" not in var.get("value", ""), "connection URLs belong in Secrets"


def test_containers_are_locked_down(rendered: list[Obj]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = re.search(r"^ARG APP_UID=(\d+)$", dockerfile, re.MULTILINE)
    assert uid is not None
    for workload in _workloads(rendered):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == int(uid.group(1))
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        container = _container(workload)
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
        assert "emptyDir" in volume  # Numba's cache (NUMBA_CACHE_DIR=/tmp/...) is writable
        assert re.search(r"NUMBA_CACHE_DIR=/tmp/", dockerfile)


def test_resources_have_requests_within_limits(rendered: list[Obj]) -> None:
    for workload in _workloads(rendered):
        resources = _container(workload)["resources"]
        for resource in ("cpu", "memory"):
            request = _quantity(resources["requests"][resource])
            limit = _quantity(resources["limits"][resource])
            assert 0 < request <= limit, (workload["metadata"]["name"], resource)


def test_one_pinned_image_and_metrics_port_from_config(rendered: list[Obj]) -> None:
    images = {_container(w)["image"] for w in _workloads(rendered)}
    (image,) = images
    name, _, tag = image.rpartition(":")
    assert name and tag and tag != "latest"
    for workload in _workloads(rendered):
        container = _container(workload)
        env = _env(rendered, workload)
        metrics = next(p for p in container["ports"] if p["name"] == "metrics")
        assert int(env["NETHICAL_METRICS_PORT"]) == metrics["containerPort"]
        assert _parsed_args(rendered, workload).metrics_port == metrics["containerPort"]
        assert _parsed_args(rendered, workload).host == "0.0.0.0"


def test_quantities() -> None:
    assert _quantity("500m") == 0.5
    assert _quantity("1Gi") == 2**30
    assert _quantity(2) == 2.0


def _memory(workload: Obj) -> tuple[float, float]:
    """The container's memory (request, limit), bytes."""
    resources = _container(workload)["resources"]
    return _quantity(resources["requests"]["memory"]), _quantity(resources["limits"]["memory"])


def test_region_memory_request_and_limit_hold_every_window_the_node_may_keep(
    rendered: list[Obj],
) -> None:
    """A node keeps one window per --window per live series up to --rollup-after, then
    rollup windows for the rest of --retention: with the defaults (24h, 100,000 series)
    no pod limit would do, and the kubelet would kill the pod after hours of steady
    traffic. The request holds them too: the windows are in memory all the time, and a
    lower request (1Gi, before) let the scheduler place the pod where that memory is not,
    and made it the first evicted under node memory pressure (each time a restore)."""
    for sts in _of(rendered, "StatefulSet"):
        args = _parsed_args(rendered, sts)
        need = steady_bytes(args)
        request, limit = _memory(sts)
        assert need <= request <= limit, (sts["metadata"]["name"], need / 2**30, request / 2**30)


def test_region_memory_request_and_limit_hold_the_restore_of_every_window(
    rendered: list[Obj],
) -> None:
    """A restarted node restores its flushed windows, and the restore's peak is above
    the windows' steady size: a limit that only just held the windows had the kubelet
    kill the node while it restored, again at every restart."""
    for sts in _of(rendered, "StatefulSet"):
        args = _parsed_args(rendered, sts)
        peak = restore_peak_bytes(args)
        request, limit = _memory(sts)
        assert peak <= request <= limit, (sts["metadata"]["name"], peak / 2**30, limit / 2**30)


def test_a_rollout_waits_for_the_coordinator_to_reach_a_replaced_pod(
    rendered: list[Obj],
) -> None:
    """The coordinator re-resolves a failing node name within about a second (channel
    option); a replaced pod stays ready a while before the next pod of its region drains."""
    assert ("grpc.dns_min_time_between_resolutions_ms", 1000) in channel_options()
    for sts in _of(rendered, "StatefulSet"):
        assert sts["spec"]["minReadySeconds"] >= 5


def _secret_file(workload: Obj, path: str) -> tuple[str, str]:
    """(Secret name, key) of the file at ``path`` in the workload's container."""
    pod = workload["spec"]["template"]["spec"]
    mounts = [m for m in _container(workload)["volumeMounts"] if path.startswith(m["mountPath"])]
    assert len(mounts) == 1, f"{path} is not on one mounted volume"
    (mount,) = mounts
    assert mount.get("readOnly") is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    secret = volume["secret"]
    (item,) = [i for i in secret["items"] if path == f"{mount['mountPath']}/{i['path']}"]
    # the process (uid 10001, group fsGroup) reads it: owner or group read permission
    mode = secret.get("defaultMode", 0o644)
    assert mode & 0o440, oct(mode)
    return secret["secretName"], item["key"]


def test_every_server_checks_bearer_tokens_from_a_secret(rendered: list[Obj]) -> None:
    for workload in _workloads(rendered):
        env = _env(rendered, workload)
        name, key = _secret_file(workload, env["NETHICAL_AUTH_TOKENS_FILE"])
        assert (name, key) == ("nethical-tokens", "tokens")
    coordinator = _one(rendered, "Deployment", "coordinator")
    env = _env(rendered, coordinator)
    name, key = _secret_file(coordinator, env["NETHICAL_REGION_TOKEN_FILE"])
    assert (name, key) == ("nethical-region-token", "token")
    # and what reads them: the servers' flags and the coordinator's upstream settings
    with patch.dict(os.environ, env):
        args = _parsed_args(rendered, coordinator)
    assert str(args.auth_tokens_file) == env["NETHICAL_AUTH_TOKENS_FILE"]
    assert str(args.region_token_file) == env["NETHICAL_REGION_TOKEN_FILE"]


# --------------------------------------------------------------------------- Grafana dashboard
# deploy/grafana/nethical-mesh-dashboard.json, as the operator imports it next to this
# deployment (two coordinator replicas; tests/integration/test_telemetry.py checks that
# every metric and label it queries is exported).

DASHBOARD = ROOT / "deploy" / "grafana" / "nethical-mesh-dashboard.json"
# Grafana units that read "per second": on a series that is not a rate they mislabel it
PER_SECOND_UNITS = {"reqps", "rps", "ops", "wps", "iops", "opm", "Bps", "bps", "KBs", "MBs"}
BYTE_UNITS = {"bytes", "decbytes"}
# gauges and counters that every coordinator replica reports about the same region node:
# summed across replicas, two coordinators show each node (and each change) twice
PER_COORDINATOR_VIEWS = ("nethical_instance_up", "nethical_health_transitions_total")


def _dashboard_panels() -> list[Obj]:
    doc = json.loads(DASHBOARD.read_text())
    out: list[Obj] = []

    def walk(panels: list[Obj]) -> None:
        for panel in panels:
            if panel.get("type") != "row":
                out.append(panel)
            walk(panel.get("panels", []))

    walk(doc["panels"])
    return out


def _target_unit(panel: Obj, ref_id: str) -> str:
    """The unit Grafana shows a target's series in: a byFrameRefID override, else the
    panel's default."""
    config = panel.get("fieldConfig", {})
    unit: str = config.get("defaults", {}).get("unit", "")
    for override in config.get("overrides", []):
        matcher = override.get("matcher", {})
        if matcher.get("id") == "byFrameRefID" and matcher.get("options") == ref_id:
            for prop in override.get("properties", []):
                if prop.get("id") == "unit":
                    unit = prop["value"]
    return unit


def test_dashboard_units_match_what_each_query_returns() -> None:
    """A gauge (instances up, 0/1 flags) drawn in ops/s, or a process's resident memory
    drawn in ops/s beside record rates, tells the operator the wrong thing."""
    for panel in _dashboard_panels():
        for target in panel.get("targets", []):
            expr, unit = target["expr"], _target_unit(panel, target["refId"])
            where = f"{panel['title']!r} {target['refId']}: {expr} in {unit!r}"
            is_rate = re.search(r"\b(?:i?rate)\(", expr) is not None
            if unit in PER_SECOND_UNITS:
                assert is_rate, f"not a rate, shown per second: {where}"
                assert "histogram_quantile" not in expr and " / " not in expr, where
            if re.search(r"[a-z_]+_bytes\b(?!_)", expr) and not is_rate:
                assert unit in BYTE_UNITS, f"bytes shown as {unit!r}: {where}"


def test_dashboard_counts_each_region_node_once_across_coordinator_replicas(
    rendered: list[Obj],
) -> None:
    """Every coordinator replica reports each region node's health: a panel must take
    one replica's view per node (max/min by the node), not their sum."""
    replicas = _one(rendered, "Deployment", "coordinator")["spec"]["replicas"]
    assert replicas > 1, "the check below matters because coordinators are replicated"
    seen = set()
    for panel in _dashboard_panels():
        for target in panel.get("targets", []):
            expr = target["expr"]
            for metric in PER_COORDINATOR_VIEWS:
                if metric not in expr:
                    continue
                seen.add(metric)
                # the aggregation applied to the metric itself (through rate/increase)
                inner = re.search(
                    r"(\w+)\s+by\s*\(([^)]*)\)\s*\(\s*(?:\w+\(\s*)?" + metric + r"\b", expr
                )
                where = f"{panel['title']!r}: {expr}"
                assert inner is not None, f"{metric} not aggregated per node: {where}"
                op, labels = inner[1], {x.strip() for x in inner[2].split(",")}
                assert op in ("max", "min"), f"{op} adds up the coordinators' views: {where}"
                assert {"region", "node_instance"} <= labels, where
    assert seen == set(PER_COORDINATOR_VIEWS)
