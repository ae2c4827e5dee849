"""docker-compose.yml: it resolves, its commands parse, and its services agree.

Two readings of the file: ``docker-compose config`` (the real tool, run once with a
temporary env file; required under CI) and PyYAML with the same ``${VAR}`` rules applied
here, which the other tests use so they need no subprocess. A test checks that both
readings give the same commands and environments.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_sizes import restore_peak_bytes, start_s, steady_bytes

from coordinator.instances import parse_region_spec
from coordinator.server import SERVICE_NAME as COORDINATOR_SERVICE
from nethical_grpc.cli.args import parse_duration_ns
from nethical_grpc.cli.main import build_parser
from region_node.server import SERVICE_NAME as REGION_SERVICE

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
REQUIRED = ("REDIS_PASSWORD", "POSTGRES_PASSWORD", "ELASTIC_PASSWORD")
TEST_ENV = {
    "REDIS_PASSWORD": "redis-pw-1",
    "POSTGRES_PASSWORD": "pg-pw-2",
    "ELASTIC_PASSWORD": "es-pw-3",
}
REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-1")
STORE_PORTS = {"redis": 6379, "timescaledb": 5432, "elasticsearch": 9200}

_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:\?|:-)(?P<arg>[^}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$`` rules.

    Raises KeyError for a ``:?`` variable that is unset or empty, as compose refuses it.
    """
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        current = env.get(name, "")
        if op == ":?" and not current:
            raise KeyError(f"{name}: {arg}")
        if op == ":-" and not current:
            return str(arg)
        return current

    return _VAR.sub(one, value)


def _duration_s(text: str | int) -> float:
    """Compose durations ('20s', '1m', '1m30s') in seconds."""
    if isinstance(text, int):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert parts and "".join(a + u for a, u in parts) == text, f"not a duration: {text!r}"
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(a) * scale[u] for a, u in parts)


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    resolved = interpolate(raw["services"], TEST_ENV)
    assert isinstance(resolved, dict)
    return resolved


@pytest.fixture(scope="module")
def mesh_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services built from this repository's image."""
    return {n: s for n, s in services.items() if "build" in s}


def _compose_binary() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        message = "docker-compose not installed (apt-get install -y docker-compose)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def _compose_config(env_file: Path) -> subprocess.CompletedProcess[str]:
    # A clean environment: compose would otherwise take passwords from ours.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL")}
    return subprocess.run(
        [_compose_binary(), "-f", str(COMPOSE), "--env-file", str(env_file), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=env_file.parent,
        check=False,
    )


@pytest.fixture(scope="module")
def compose_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env_file = tmp_path_factory.mktemp("compose") / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in TEST_ENV.items()))
    result = _compose_config(env_file)
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load(result.stdout)
    assert isinstance(data, dict)
    return data


def test_interpolation_follows_compose_rules() -> None:
    env = {"A": "x", "E": ""}
    assert interpolate("${A}-${B:-d}-${E:-e}-$$A", env) == "x-d-e-$A"
    assert interpolate(["${A:?m}"], env) == ["x"]
    with pytest.raises(KeyError, match="E: set it"):
        interpolate({"k": "${E:?set it}"}, env)


def test_docker_compose_accepts_the_file(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    assert set(services) == {
        "redis",
        "timescaledb",
        "elasticsearch",
        "coordinator",
        *(f"region-{r}" for r in REGIONS),
    }
    assert set(compose_config["volumes"]) == {
        "redis-data",
        "timescaledb-data",
        "elasticsearch-data",
    }


def _unescape(value: Any) -> Any:
    """`config` writes a literal $ as $$ again; this reading has already unescaped it."""
    if isinstance(value, dict):
        return {k: _unescape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unescape(v) for v in value]
    return value.replace("$$", "$") if isinstance(value, str) else value


def test_docker_compose_and_this_reading_agree(
    compose_config: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    for name, service in compose_config["services"].items():
        for key in ("command", "environment", "image"):
            assert _unescape(service.get(key)) == services[name].get(key), (name, key)


def test_docker_compose_refuses_a_missing_password(tmp_path: Path) -> None:
    # One tool run (each takes seconds); every password is checked one by one below.
    env_file = tmp_path / "partial.env"
    env_file.write_text(
        "".join(f"{k}={v}\n" for k, v in TEST_ENV.items() if k != "POSTGRES_PASSWORD")
    )
    result = _compose_config(env_file)
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in result.stderr


def test_passwords_have_no_defaults(raw: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    for name in REQUIRED:
        uses = re.findall(r"(?<!\$)\$\{" + name + r"([^}]*)\}", text)  # $${..} is the shell's
        assert uses, f"{name} is never used"
        assert all(u.startswith(":?") for u in uses), f"{name} must be ${{{name}:?...}}"
        with pytest.raises(KeyError, match=name):
            interpolate(raw["services"], {k: v for k, v in TEST_ENV.items() if k != name})


def test_env_example_documents_every_variable() -> None:
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text()))
    example = ENV_EXAMPLE.read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example, re.MULTILINE))
    assert used == documented
    for name in REQUIRED:
        assert re.search(rf"^{name}=$", example, re.MULTILINE), f"{name} must be set, empty"


def test_mesh_commands_parse_with_the_cli(mesh_services: dict[str, dict[str, Any]]) -> None:
    parser = build_parser()
    roles = {}
    for name, service in mesh_services.items():
        args = parser.parse_args(service["command"])
        roles[name] = args.command
        assert args.host == "0.0.0.0", f"{name} must listen beyond loopback in a container"
        if args.command == "region":
            assert name == f"region-{args.region_id}"
    assert roles == {"coordinator": "coordinator", **{f"region-{r}": "region" for r in REGIONS}}


def test_coordinator_points_at_each_region_service_and_port(
    mesh_services: dict[str, dict[str, Any]],
) -> None:
    parser = build_parser()
    coordinator = parser.parse_args(mesh_services["coordinator"]["command"])
    seen = set()
    for spec in coordinator.region:
        region, endpoints = parse_region_spec(spec)
        for endpoint in endpoints:
            host, _, port = endpoint.rpartition(":")
            assert host in mesh_services, f"{endpoint}: no service {host}"
            node = parser.parse_args(mesh_services[host]["command"])
            assert node.command == "region"
            assert node.region_id == region
            assert int(port) == node.port
            seen.add(host)
    assert seen == {f"region-{r}" for r in REGIONS}


def test_region_store_urls_point_at_store_services(
    services: dict[str, dict[str, Any]], mesh_services: dict[str, dict[str, Any]]
) -> None:
    redis_dbs = set()
    pg_env = services["timescaledb"]["environment"]
    for region in REGIONS:
        env = mesh_services[f"region-{region}"]["environment"]
        cache = urlsplit(env["NETHICAL_CACHE_URL"])
        assert (cache.scheme, cache.hostname, cache.port) == ("redis", "redis", 6379)
        assert cache.password == TEST_ENV["REDIS_PASSWORD"]
        redis_dbs.add(cache.path)
        ts = urlsplit(env["NETHICAL_TIMESERIES_URL"])
        assert (ts.scheme, ts.hostname, ts.port) == ("postgresql", "timescaledb", 5432)
        assert (ts.username, ts.password) == (pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"])
        assert ts.path == "/" + pg_env["POSTGRES_DB"]
        audit = urlsplit(env["NETHICAL_AUDIT_URL"])
        assert (audit.scheme, audit.hostname, audit.port) == ("http", "elasticsearch", 9200)
        assert (audit.username, audit.password) == (
            "elastic",
            services["elasticsearch"]["environment"]["ELASTIC_PASSWORD"],
        )
    assert len(redis_dbs) == len(REGIONS), "each region keeps its own Redis database"
    assert services["redis"]["environment"]["REDIS_PASSWORD"] == TEST_ENV["REDIS_PASSWORD"]


def test_store_healthchecks_probe_the_ports_the_urls_use(
    services: dict[str, dict[str, Any]],
) -> None:
    checks = {name: " ".join(services[name]["healthcheck"]["test"]) for name in STORE_PORTS}
    assert "redis-cli" in checks["redis"] and "ping" in checks["redis"]
    assert "grep -q PONG" in checks["redis"]
    assert "REDISCLI_AUTH" in services["redis"]["environment"]
    assert "pg_isready" in checks["timescaledb"]
    assert "-U nethical -d nethical" in checks["timescaledb"]
    assert "curl -f" in checks["elasticsearch"] and "/_cluster/health" in checks["elasticsearch"]
    assert "$${ELASTIC_PASSWORD}" not in checks["elasticsearch"]  # $$ became $ for the shell
    assert "${ELASTIC_PASSWORD}" in checks["elasticsearch"]
    for name, port in STORE_PORTS.items():
        assert str(port) in checks[name], f"{name} healthcheck does not use port {port}"
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    es_env = services["elasticsearch"]["environment"]
    assert es_env["discovery.type"] == "single-node"
    assert es_env["xpack.security.enabled"] == "true"


def test_mesh_healthchecks_use_the_health_command_on_the_served_port(
    mesh_services: dict[str, dict[str, Any]],
) -> None:
    parser = build_parser()
    for name, service in mesh_services.items():
        served = parser.parse_args(service["command"])
        test = service["healthcheck"]["test"]
        assert test[:2] == ["CMD", "nethical-mesh"], name
        check = parser.parse_args(test[2:])
        assert check.command == "health"
        assert check.target == f"127.0.0.1:{served.port}", name
        want = REGION_SERVICE if served.command == "region" else COORDINATOR_SERVICE
        assert check.service == want
        image_target = service["environment"].get("NETHICAL_HEALTH_TARGET", "127.0.0.1:50051")
        assert image_target == check.target, f"{name}: the image's HEALTHCHECK would miss"


def test_startup_waits_for_healthy_dependencies(services: dict[str, dict[str, Any]]) -> None:
    for region in REGIONS:
        deps = services[f"region-{region}"]["depends_on"]
        assert set(deps) == set(STORE_PORTS)
    assert set(services["coordinator"]["depends_on"]) == {f"region-{r}" for r in REGIONS}
    for name, service in services.items():
        for dep, how in service.get("depends_on", {}).items():
            assert how == {"condition": "service_healthy"}, f"{name} -> {dep}"
            assert "healthcheck" in services[dep], f"{dep} has no healthcheck to wait for"


def test_stores_keep_data_in_named_volumes(
    raw: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    for name in STORE_PORTS:
        (mount,) = services[name]["volumes"]
        volume, _, target = mount.partition(":")
        assert volume in raw["volumes"], f"{name}: {volume} is not a named volume"
        assert target.startswith("/")


def test_mesh_containers_are_hardened_and_drain_in_time(
    mesh_services: dict[str, dict[str, Any]],
) -> None:
    parser = build_parser()
    for name, service in mesh_services.items():
        assert service["read_only"] is True
        assert service["tmpfs"] == ["/tmp"]
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert service["stop_signal"] == "SIGTERM"
        args = parser.parse_args(service["command"])
        drain_s = (args.drain_announce + args.drain_grace) / 1e9
        assert _duration_s(service["stop_grace_period"]) >= drain_s + 5, name
        for mapping in service["ports"]:
            assert mapping.startswith("127.0.0.1:"), f"{name} publishes beyond loopback"
            assert int(mapping.rsplit(":", 1)[1]) == args.port


def _bytes(text: str | int) -> float:
    """Compose byte values ('512m', '2g', 1024): binary units, as Docker reads them."""
    if isinstance(text, int):
        return float(text)
    m = re.fullmatch(r"(\d+)([bkmg]?)", text.lower())
    assert m, f"not a byte value: {text!r}"
    return float(m.group(1)) * {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m.group(2)]


def test_mesh_containers_have_memory_limits_their_nodes_fit(
    mesh_services: dict[str, dict[str, Any]],
) -> None:
    """A region node without --max-series and --retention bounds grows past any limit
    (and without a limit, past the host's memory); with them, every window it may keep
    and the peak of restoring them fit its mem_limit."""
    parser = build_parser()
    for name, service in mesh_services.items():
        limit = _bytes(service["mem_limit"])
        args = parser.parse_args(service["command"])
        if args.command == "region":
            assert steady_bytes(args) <= limit, (name, steady_bytes(args) / 2**30)
            assert restore_peak_bytes(args) <= limit, (name, restore_peak_bytes(args) / 2**30)


def test_region_healthchecks_wait_for_a_restart_to_restore(
    mesh_services: dict[str, dict[str, Any]],
) -> None:
    """A node is NOT_SERVING while it compiles and restores its windows: a healthcheck
    that gives up sooner marks it unhealthy, and the coordinator, which waits for healthy
    regions, never starts."""
    parser = build_parser()
    for name, service in mesh_services.items():
        args = parser.parse_args(service["command"])
        if args.command != "region":
            continue
        check = service["healthcheck"]
        allowed = _duration_s(check["start_period"]) + _duration_s(check["interval"]) * int(
            check["retries"]
        )
        assert start_s(args, cores=1.0) <= allowed, (name, start_s(args, cores=1.0), allowed)


def test_byte_reading() -> None:
    assert _bytes("2560m") == 2560 * 2**20
    assert _bytes("2g") == 2**31
    assert _bytes(512) == 512.0


def test_duration_reading() -> None:
    assert _duration_s("1m30s") == 90.0
    assert _duration_s("20s") == parse_duration_ns("20s") / 1e9
    with pytest.raises(AssertionError):
        _duration_s("20 seconds")
