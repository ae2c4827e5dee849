"""What every benchmark shares: the machine description and JSON output."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


#: ``nethical-mesh`` arguments of a quiet region node on a free port, for benchmarks.
BENCH_REGION = ("region", "--region-id", "bench", "--port", "0", "--log-level", "WARNING")


def window_payloads(kinds: int = 97) -> list[bytes]:
    """Serialised summaries of 64 values each, log-uniform over four decades (fixed seed),
    as a node's flushes store windows: ``kinds`` of them, for benchmarks to cycle through."""
    import numpy as np

    from nethical_grpc import convert
    from nethical_grpc.summary import Summary

    rng = np.random.default_rng(0)
    out = []
    for _ in range(kinds):
        summary = Summary()
        summary.update(10 ** rng.uniform(0, 4, 64))
        out.append(convert.summary_to_proto(summary).SerializeToString())
    return out


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import grpc
    import numpy

    from nethical_grpc.jit import is_jit_available

    mem_gib = None
    with contextlib.suppress(ValueError, OSError):
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "grpcio": grpc.__version__,
        "jit": "numba" if is_jit_available() else "numpy",
    }


def peak_rss_bytes() -> int:
    """This process's peak RSS so far (since it started, or since :func:`reset_peak_rss`).

    On Linux, its memory's high-water mark (``VmHWM``): ``getrusage``'s ``ru_maxrss``
    also keeps the RSS of what the process was before it exec'd (a benchmark's child
    started by a parent of 600 MB says 600 MB at once), and a reset does not clear it."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes; Linux: KiB


def reset_peak_rss() -> bool:
    """Start this process's peak RSS afresh from what it holds now (Linux's
    ``/proc/self/clear_refs``), so that :func:`peak_rss_bytes` tells the peak of what
    follows, not of what came before (a benchmark's setup); whether it could."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _family(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and every live process it started (none if it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pids: Iterable[int]) -> float:
    """CPU seconds (user + system) used so far by the processes ``pids`` and every live
    process they started (a region node's rule-detection workers, say), each counted
    once; a pid with no process counts nothing. Differences of two readings give the CPU
    a stretch of work cost them; a process that ends in between takes its part with it."""
    seen: set[int] = set()
    total = 0.0
    for pid in pids:
        for proc in _family(pid):
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:  # ended meanwhile
                continue
            total += times.user + times.system
    return total


def thread_usage(pids: Iterable[int]) -> tuple[float, int]:
    """CPU seconds and voluntary context switches (each a sleep: a wake-up once the
    thread runs again) so far, summed over every thread of the processes ``pids`` (the
    processes alone, not their children); a pid with no process counts nothing. Linux's
    per-thread scheduler counts (nanoseconds) where ``/proc`` has them, else psutil's
    (clock ticks, and the main thread's switches only)."""
    cpu, switches = 0.0, 0
    for pid in pids:
        tasks = list(Path(f"/proc/{pid}/task").glob("*"))
        if not tasks:
            try:
                proc = psutil.Process(pid)
                times = proc.cpu_times()
                cpu += times.user + times.system
                switches += proc.num_ctx_switches().voluntary
            except psutil.NoSuchProcess:
                pass
            continue
        for task in tasks:
            try:
                ran_ns = int((task / "schedstat").read_text().split()[0])
                status = (task / "status").read_text()
            except OSError:  # the thread ended meanwhile
                continue
            cpu += ran_ns / 1e9
            switches += int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
    return cpu, switches


def _cpu_by_process() -> dict[int, tuple[str, float]]:
    """Every process's name and CPU seconds so far (kernel threads included)."""
    out: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["name", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is not None:  # None: it ended, or we may not read it
            out[proc.pid] = (proc.info["name"] or "?", times.user + times.system)
    return out


class OtherProcesses:
    """The CPU that processes outside a benchmark spend while it measures.

    On these shared two-core machines, services and the kernel's own threads wake
    periodically and take a core for a few milliseconds (a latency figure's tail shows
    them); a benchmark reports them beside its figures. Started with the measurement;
    :meth:`report` reads them at its end, before the benchmark stops its processes. The
    benchmark's own processes are this one and every process it started (the region
    nodes, their workers), as they are at the end; a process that started or ended in
    between is left out."""

    def __init__(self) -> None:
        self._start = _cpu_by_process()
        self._began = time.monotonic()

    def report(self, top: int = 5) -> dict[str, Any]:
        """``cpu_ms_per_s`` of all of them together, and of the ``top`` busiest
        (``name``, ``cpu_ms_per_s``), over the time since the start."""
        end = _cpu_by_process()
        seconds = max(time.monotonic() - self._began, 1e-9)
        ours = {p.pid for p in _family(os.getpid())}
        spent = sorted(
            (
                (end[pid][1] - self._start[pid][1], end[pid][0])
                for pid in end.keys() & self._start.keys()
                if pid not in ours
            ),
            reverse=True,
        )
        return {
            "cpu_ms_per_s": round(sum(cpu for cpu, _ in spent) / seconds * 1e3, 1),
            "busiest": [
                {"name": name, "cpu_ms_per_s": round(cpu / seconds * 1e3, 1)}
                for cpu, name in spent[:top]
                if cpu > 0
            ],
        }


def environment(items: Iterable[str]) -> dict[str, str]:
    """``NAME=VALUE`` arguments as a mapping (a later name wins); ``ValueError`` for an
    item without a name or an ``=``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"expected NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def add_environment_option(parser: argparse.ArgumentParser, flag: str, processes: str) -> None:
    """A repeatable ``flag NAME=VALUE`` option: an environment variable for ``processes``
    (not the benchmark's client); a malformed item is a usage error. Read it with
    :func:`environment`."""
    parser.add_argument(
        flag,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        type=_environment_item,
        help=f"an environment variable for {processes} (not this client), e.g. gRPC's "
        "GRPC_EXPERIMENTS (repeatable)",
    )


def _environment_item(item: str) -> str:
    try:
        environment([item])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return item


def cpu_per(before: float, after: float, count: int, unit: float) -> float | None:
    """``(after - before) / count`` in ``unit`` (1e6: µs), rounded; ``None`` without a
    count."""
    if count <= 0:
        return None
    return round((after - before) / count * unit, 1)


def nearest_rank(samples: Iterable[float], q: float) -> float:
    """The ``q``-quantile (0 to 1) of ``samples`` by nearest rank: the smallest sample
    with at least a ``q`` share of them at or below it (the ``ceil(q * n)``-th in order;
    the least for ``q`` 0). ``q * n`` a hair above a whole number by floating point
    (0.07 * 100) counts as that number. ``ValueError`` without samples."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("no samples")
    rank = math.ceil(q * len(ordered) - 1e-9)
    return ordered[min(len(ordered), max(rank, 1)) - 1]


def emit(name: str, results: dict[str, Any]) -> None:
    """Print one JSON document; also keep it under bench/results/NAME.json."""
    doc = {"benchmark": name, "machine": machine(), **results}
    text = json.dumps(doc, indent=2, sort_keys=False)
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(text + "\n")
