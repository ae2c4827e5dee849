"""Child processes for the demo, benchmarks and end-to-end tests: start, wait, stop.

Children get SIGTERM if the parent dies (Linux PR_SET_PDEATHSIG), so no orphan
servers are left behind even when the parent is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from nethical_grpc.parent_death import exit_with_parent

#: A child started by :func:`spawn` finds its parent's pid here and asks the kernel for
#: SIGTERM when that parent dies (set by the child itself at start: a ``preexec_fn`` is
#: not safe in a parent that runs threads, as every gRPC process does).
PARENT_PID_ENV = "NETHICAL_PARENT_PID"


def die_with_parent() -> None:
    """In a child of :func:`spawn`: SIGTERM when the parent dies (Linux; else nothing)."""
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and expected.isdigit():
        exit_with_parent(int(expected))


def mesh_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "nethical_grpc.cli.main", *args]


#: How long a child may take to start: the first start on a machine compiles the JIT
#: kernels (a region node ~15 s on a slow 2-core machine, more when several start at once).
START_TIMEOUT_S: Final = 120.0


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    port_file: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def port(self, timeout_s: float = START_TIMEOUT_S) -> int:
        """Wait for the child to write its bound port (it fails at once if the child
        exits; the bound only stops a child that hangs)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.port_file.exists():
                text = self.port_file.read_text().strip()
                if text:
                    return int(text)
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}"
                )
            time.sleep(0.02)
        raise TimeoutError(
            f"{self.name} did not report its port within {timeout_s}s:\n{self.tail()}"
        )

    async def aport(self, timeout_s: float = START_TIMEOUT_S) -> int:
        return await asyncio.to_thread(self.port, timeout_s)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def spawn(
    name: str, args: Sequence[str], workdir: Path, env: dict[str, str] | None = None
) -> Child:
    """Start ``nethical-mesh ARGS --port-file ...`` logging to a file in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    port_file = workdir / f"{name}.port"
    port_file.unlink(missing_ok=True)
    log_file: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 (owned by the child)
    full_env = {**os.environ, **(env or {}), PARENT_PID_ENV: str(os.getpid())}
    proc = subprocess.Popen(
        [*mesh_command(*args), "--port-file", str(port_file)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=full_env,
        # its own session: a Ctrl-C at the terminal reaches the parent, which stops its
        # children itself (in order, after its last query), not the children first
        start_new_session=True,
    )
    log_file.close()
    return Child(name, proc, log_path, port_file)
