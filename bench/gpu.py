"""Inference throughput and latency: the engine on the device it finds, every precision,
the NumPy fallback, feature extraction, and the micro-batcher's effect, in one run.

For each backend/precision (torch fp32, fp16, bf16 on CUDA when a GPU is usable, else on
the CPU; then the NumPy fallback) and each batch size, :meth:`InferenceEngine.
benchmark_throughput` times separate ``predict_batch`` calls (on CUDA synchronised, results
copied back to the host) after a warm-up, with the batch in an ordinary NumPy array
(``points``) and, on CUDA, also in page-locked memory from ``engine.input_buffer``
(``points_pinned_input``, copied by DMA): samples/s and latency p50/p99 in ms per call,
plus the process CPU time per call (all threads: on a shared machine it is steadier than
wall time, and it shows threads that spin).
The number of timed calls per point is chosen from a first timing so that each point lasts
about ``--seconds`` (at least 10 calls, at most 2000).  A precision the device cannot run is
reported as ``{"unsupported": reason}``, not crashed.

On the CPU, fp32 is also measured with one torch intra-op thread against torch's default
count (``cpu_threads``), to show whether ``InferenceEngine(num_threads=...)`` helps.

Feature extraction (:func:`action_features`) is timed at a few batch sizes, since the
region node pays it before every model call.

Where a call's time goes (``call_breakdown``, fp32, batches 128, 1,024 and 8,192): each
part of a ``predict_batch`` call timed alone (median): the host's finiteness pass, the
copy of an ordinary array to the device, on CUDA also filling page-locked memory, copying
from it and the finiteness check on the device, the bundled model on an input already on
the device, and reading the answers back.

Micro-batcher effect: ``N`` single-row requests (distinct rows) answered (a) one by one
with ``engine.predict(row)`` in a loop and (b) as ``N`` concurrent ``MicroBatcher.submit``
coroutines (``max_batch`` 256, ``max_delay_s`` 2 ms, ``fn = engine.predict_batch``):
requests/s of each, their ratio, the batches formed and per-request latency percentiles
(submit to answer), plus the process CPU time per request of each path (all threads;
less sensitive than wall time to other load on a shared machine).  Both paths must give
the same answers (checked).

    python bench/gpu.py [--quick] [--seconds 0.4] [--requests 4000]

Runs unchanged on a CUDA machine (torch with CUDA installed): the device is found, named
and recorded with the torch version.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import common
import numpy as np

from nethical_grpc.inference import (
    DEFAULT_TORCHSCRIPT,
    FEATURE_WIDTH,
    PRECISIONS,
    InferenceEngine,
    MicroBatcher,
    UnsupportedPrecisionError,
    action_features,
    get_device_info,
)
from nethical_grpc.inference.torch_support import (
    quiet_torchscript,
    torch_or_reason,
    torch_version,
)

BATCHES = (1, 32, 128, 1024, 8192)
BREAKDOWN_BATCHES = (128, 1024, 8192)
QUICK_BATCHES = (1, 32, 1024)
MIN_ITERATIONS = 10
MAX_ITERATIONS = 2000


def point(
    engine: InferenceEngine, batch: int, seconds: float, pinned: bool = False
) -> dict[str, Any]:
    """One batch size: pick the call count from a first timing, then measure."""
    probe = engine.benchmark_throughput(batch_size=batch, iterations=3, warmup=2, pinned=pinned)
    per_call = max(probe["latency_p50_ms"] / 1e3, 1e-6)
    iterations = int(min(MAX_ITERATIONS, max(MIN_ITERATIONS, seconds / per_call)))
    c0 = time.process_time()
    r = engine.benchmark_throughput(
        batch_size=batch, iterations=iterations, warmup=3, pinned=pinned
    )
    cpu_ms = (time.process_time() - c0) / (iterations + 3) * 1e3
    return {
        "batch": batch,
        "iterations": iterations,
        "samples_per_s": round(r["throughput_samples_per_sec"], 1),
        "p50_ms": round(r["latency_p50_ms"], 4),
        "p99_ms": round(r["latency_p99_ms"], 4),
        "mean_ms": round(r["latency_ms"], 4),
        "cpu_ms_per_call": round(cpu_ms, 4),
    }


def sweep(engine: InferenceEngine, batches: tuple[int, ...], seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "describe": engine.describe(),
        "points": [point(engine, b, seconds) for b in batches],
    }
    if engine.device.startswith("cuda"):
        # the same batches from page-locked host memory (engine.input_buffer): DMA copies
        out["points_pinned_input"] = [point(engine, b, seconds, pinned=True) for b in batches]
    out["memory"] = {k: v for k, v in engine.memory_usage().items() if k != "rss_kind"}
    return out


def _no_sync() -> None:
    pass


def timed_calls(
    fn: Any, seconds: float, *, sync: Any = _no_sync, fewest: int = 10, most: int = 400
) -> tuple[list[float], float]:
    """Call ``fn`` (``sync`` after each call) for about ``seconds``, after a warm-up: the
    wall time of each call in seconds, and the process CPU seconds per call."""
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    once = time.perf_counter() - t0
    reps = int(min(most, max(fewest, seconds / max(once, 1e-6))))
    samples = []
    c0 = time.process_time()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
    return samples, (time.process_time() - c0) / reps


def _median_ms(fn: Any, sync: Any, seconds: float) -> float:
    samples, _ = timed_calls(fn, seconds, sync=sync)
    return round(statistics.median(samples) * 1e3, 4)


def call_breakdown(torch: Any, device: str, seconds: float) -> list[dict[str, Any]]:
    """Where a predict_batch call's time goes, part by part, on ``device`` (fp32).

    Each part is timed alone: the host's finiteness pass, the copy to the device from an
    ordinary array, and on CUDA filling page-locked memory, the copy from it and the
    finiteness check on the device; then the bundled model on an input already there, and
    reading the answers back.
    """
    with quiet_torchscript():
        model = torch.jit.load(str(DEFAULT_TORCHSCRIPT), map_location=device).eval()

    def sync() -> None:
        if device != "cpu":
            torch.cuda.synchronize(device)

    rows = []
    for batch in BREAKDOWN_BATCHES:
        x = np.random.default_rng(0).random((batch, FEATURE_WIDTH), dtype=np.float32)
        on_device = torch.from_numpy(x).to(device)
        with torch.inference_mode():
            answers = model(on_device)
        row: dict[str, Any] = {
            "batch": batch,
            "host_finiteness_ms": _median_ms(lambda x=x: np.isfinite(x).all(), sync, seconds),
            "copy_from_array_ms": _median_ms(
                lambda x=x: torch.from_numpy(x).to(device), sync, seconds
            ),
        }
        if device != "cpu":
            buffer = torch.empty((batch, FEATURE_WIDTH), dtype=torch.float32, pin_memory=True)
            view = buffer.numpy()
            row["fill_page_locked_ms"] = _median_ms(
                lambda v=view, x=x: np.copyto(v, x), sync, seconds
            )
            row["copy_from_page_locked_ms"] = _median_ms(
                lambda b=buffer: b.to(device, non_blocking=True), sync, seconds
            )
            # on the CPU the engine checks finiteness on the host
            row["device_finiteness_ms"] = _median_ms(
                lambda d=on_device: bool(torch.isfinite(d).all()), sync, seconds
            )

        def run_model(d: Any = on_device) -> None:
            with torch.inference_mode():
                model(d)

        row["model_ms"] = _median_ms(run_model, sync, seconds)
        row["read_back_ms"] = _median_ms(lambda a=answers: a.float().cpu(), sync, seconds)
        rows.append(row)
    return rows


def feature_timings(batches: tuple[int, ...], seconds: float) -> list[dict[str, Any]]:
    templates = [
        "SELECT name FROM users WHERE id = {i}",
        "curl -s https://api.internal/v1/items?page={i}",
        "Summarize the meeting notes from week {i} for the team",
        "rm -rf /tmp/build-{i} && make",
    ]
    out = []
    for batch in batches:
        texts = [templates[i % 4].format(i=i) for i in range(batch)]
        intents = ["routine maintenance"] * batch
        action_features(texts, intents)
        samples, cpu_s = timed_calls(
            lambda t=texts, n=intents: action_features(t, n), seconds, fewest=3, most=500
        )
        p50 = statistics.median(samples)
        out.append(
            {
                "batch": batch,
                "reps": len(samples),
                "p50_ms": round(p50 * 1e3, 4),
                "rows_per_s": round(batch / p50, 1),
                "cpu_ms_per_call": round(cpu_s * 1e3, 4),
            }
        )
    return out


def cpu_threads(engine: InferenceEngine, torch: Any, seconds: float) -> dict[str, Any]:
    """fp32 on the CPU with 1 intra-op thread vs torch's default, same run."""
    default_threads = int(torch.get_num_threads())
    out: dict[str, Any] = {"default_threads": default_threads}
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        out[f"threads_{threads}"] = [point(engine, b, seconds) for b in (1, 256, 8192)]
    torch.set_num_threads(default_threads)
    return out


async def _concurrent(engine: InferenceEngine, rows: np.ndarray) -> tuple[float, Any, Any]:
    latencies = np.empty(rows.shape[0])
    loop = asyncio.get_running_loop()

    async def one(i: int, batcher: MicroBatcher) -> float:
        t0 = loop.time()
        value = await batcher.submit(rows[i])
        latencies[i] = loop.time() - t0
        return value

    batcher = MicroBatcher(engine.predict_batch, max_batch=256, max_delay_s=0.002)
    await batcher.submit(rows[0])  # start the worker thread outside the timing
    t0 = time.perf_counter()
    answers = await asyncio.gather(*(one(i, batcher) for i in range(rows.shape[0])))
    elapsed = time.perf_counter() - t0
    await batcher.close()
    return elapsed, (np.array(answers), latencies), batcher.stats


def microbatch_effect(engine: InferenceEngine, requests: int) -> dict[str, Any]:
    rows = np.random.default_rng(1).random((requests, FEATURE_WIDTH), dtype=np.float32)
    for r in rows[:20]:
        engine.predict(r)
    c0 = time.process_time()
    t0 = time.perf_counter()
    sequential = np.array([engine.predict(r) for r in rows])
    seq_s = time.perf_counter() - t0
    seq_cpu = time.process_time() - c0
    c0 = time.process_time()
    conc_s, (answers, latencies), stats = asyncio.run(_concurrent(engine, rows))
    conc_cpu = time.process_time() - c0
    if not np.allclose(answers, sequential, atol=1e-5):
        raise AssertionError("micro-batched answers differ from one-by-one answers")
    ms = latencies * 1e3
    return {
        "engine": engine.describe(),
        "requests": requests,
        "one_by_one_requests_per_s": round(requests / seq_s, 1),
        "microbatched_requests_per_s": round(requests / conc_s, 1),
        "speedup": round(seq_s / conc_s, 2),
        "one_by_one_cpu_us_per_request": round(seq_cpu / requests * 1e6, 1),
        "microbatched_cpu_us_per_request": round(conc_cpu / requests * 1e6, 1),
        "batches": stats.batches,
        "mean_batch": round(stats.mean_batch, 1),
        "max_batch_seen": stats.max_batch_seen,
        "request_latency_p50_ms": round(float(np.percentile(ms, 50)), 3),
        "request_latency_p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer batch sizes, short points")
    parser.add_argument("--seconds", type=float, default=None, help="target seconds per point")
    parser.add_argument("--requests", type=int, default=None, help="micro-batcher requests")
    args = parser.parse_args()
    batches = QUICK_BATCHES if args.quick else BATCHES
    seconds = args.seconds if args.seconds is not None else (0.1 if args.quick else 0.4)
    requests = args.requests if args.requests is not None else (1000 if args.quick else 4000)

    torch, reason = torch_or_reason()
    results: dict[str, Any] = {
        "torch": None if torch is None else torch_version(torch),
        "torch_unavailable_reason": reason,
        "torch_threads": None if torch is None else int(torch.get_num_threads()),
        "device_info": get_device_info(),
        "seconds_per_point": seconds,
        "feature_width": FEATURE_WIDTH,
        "features": feature_timings(tuple(b for b in batches if b <= 1024), seconds),
        "engines": {},
    }
    default: InferenceEngine | None = None
    if torch is not None:
        for precision in PRECISIONS:
            try:
                engine = InferenceEngine(precision=precision, backend="torch")
            except UnsupportedPrecisionError as exc:
                results["engines"][f"torch-{precision}"] = {"unsupported": str(exc)}
                continue
            results["engines"][f"torch-{precision}"] = sweep(engine, batches, seconds)
            if precision == "fp32":
                default = engine
    if default is not None and default.device == "cpu":
        results["cpu_threads"] = cpu_threads(default, torch, seconds)
    if default is not None:
        results["call_breakdown"] = call_breakdown(torch, default.device, seconds / 4)
    numpy_engine = InferenceEngine(backend="numpy")
    results["engines"]["numpy"] = sweep(numpy_engine, batches, seconds)
    results["microbatch"] = [microbatch_effect(default or numpy_engine, requests)]
    if default is not None:
        results["microbatch"].append(microbatch_effect(numpy_engine, requests))
    common.emit("gpu", results)


if __name__ == "__main__":
    main()
