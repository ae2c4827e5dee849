"""The benchmarks' figures, again: a child's peak RSS is its own, the percentiles the
docstrings name, and the ingest benchmark's bare sink is never left running."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
# the scripts import their helpers as ``import common`` (run from bench/): so do these tests
_BENCH = str(ROOT / "bench")
if _BENCH not in sys.path:
    sys.path.insert(0, _BENCH)

import audit  # noqa: E402
import ingest  # noqa: E402
import timeseries  # noqa: E402

from nethical_grpc.storage.timeseries import open_timeseries  # noqa: E402

_PEAK = "from bench import common; print(common.peak_rss_bytes())"


@pytest.mark.skipif(sys.platform != "linux", reason="Linux's /proc")
def test_a_childs_peak_rss_is_not_its_parents() -> None:
    block = np.ones(50_000_000)  # 400 MB, touched, held while the child starts
    block.sum()
    try:
        out = subprocess.run(
            [sys.executable, "-c", _PEAK], cwd=ROOT, capture_output=True, text=True, check=True
        )
    finally:
        del block
    # an interpreter with psutil imported: tens of MB, not the 400 MB this process holds
    assert int(out.stdout) < 150 * 2**20


def test_audit_p99_is_the_nearest_rank_its_docstring_names() -> None:
    fifty = [float(ms) for ms in range(1, 51)]
    assert audit.pct(fifty, 99) == 50.0  # of 50, the slowest
    two_hundred = [float(ms) for ms in range(200, 0, -1)]
    assert audit.pct(two_hundred, 99) == 198.0  # of 200, the third slowest
    assert audit.pct(two_hundred, 50) == 100.0


@given(st.lists(st.floats(0.0, 1e4, allow_nan=False), min_size=1, max_size=300))
def test_timeseries_p99_has_99_percent_of_the_samples_at_or_below_it(ms: list[float]) -> None:
    figures = timeseries.percentiles(ms)
    p99 = figures["p99_ms"]
    assert sum(v <= p99 + 5e-4 for v in ms) >= 0.99 * len(ms)
    assert figures["n"] == len(ms)
    assert p99 >= figures["p50_ms"] - 5e-4


def test_timeseries_p99_of_ninety_queries_is_the_slowest() -> None:
    ninety = [float(ms) for ms in range(1, 91)]
    assert timeseries.percentiles(ninety)["p99_ms"] == 90.0  # 89 of 90 is under 99%


async def test_timeseries_backend_figures_are_plain_json(tmp_path: Path) -> None:
    store, _ = await open_timeseries(f"sqlite://{tmp_path}/ts.db", "bench", retention=None)
    args = argparse.Namespace(rows=3000, batch=1000, agents=10, repeats=4, columnar_rows=1000)
    try:
        out = await timeseries.run_backend(store, args)
    finally:
        await store.close()
    json.dumps(out, allow_nan=False)  # one JSON document: no NaN, no infinity
    assert out["insert_metrics"]["rows"] == 3000
    assert out["aggregate_per_minute_day"]["n"] == 4
    assert out["query_one_agent_day"]["n"] == 12
    assert out["aggregate_30s_raw_scan"]["n"] == 3
    for name in ("aggregate_per_minute_day", "query_one_agent_day"):
        figures = out[name]
        assert 0 < figures["p50_ms"] <= figures["p99_ms"]


def _sinks() -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if any(arg.endswith("sink.py") for arg in p.cmdline())
    ]


def test_a_sink_that_does_not_start_in_time_is_stopped() -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.raises(RuntimeError, match="did not start"):
        ingest.start_sink(Path(tmp), timeout_s=0.0)
    assert _sinks() == []


#: Starts the bench's sink, writes its pid once it serves, and dies without stopping it.
_ABANDON = """
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import ingest
proc, port = ingest.start_sink(Path(sys.argv[2]))
Path(sys.argv[3]).write_text(str(proc.pid))
os._exit(0)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="Linux's PR_SET_PDEATHSIG")
def test_the_sink_stops_when_the_benchmark_dies(tmp_path: Path) -> None:
    pid_file = tmp_path / "sink.pid"
    subprocess.run(
        [sys.executable, "-c", _ABANDON, _BENCH, str(tmp_path), str(pid_file)],
        stdout=subprocess.DEVNULL,  # not a pipe: a sink left running would hold it open
        check=True,
        timeout=120,
    )
    try:
        sink = psutil.Process(int(pid_file.read_text()))
    except psutil.NoSuchProcess:
        return  # gone already
    try:
        deadline = time.monotonic() + 20
        while sink.is_running() and sink.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the sink outlived the benchmark"
            time.sleep(0.05)
    except psutil.NoSuchProcess:
        pass
    finally:
        if sink.is_running():
            sink.kill()
