"""What every benchmark shares: the machine description and JSON output."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


#: ``nethical-mesh`` arguments of a quiet region node on a free port, for benchmarks.
BENCH_REGION = ("region", "--region-id", "bench", "--port", "0", "--log-level", "WARNING")


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


def emit(name: str, results: dict[str, Any]) -> None:
    """Print one JSON document; also keep it under bench/results/NAME.json."""
    doc = {"benchmark": name, "machine": machine(), **results}
    text = json.dumps(doc, indent=2, sort_keys=False)
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(text + "\n")
