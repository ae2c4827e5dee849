"""Per-kernel timings of :mod:`nethical_grpc.jit_optimizations`: pure Python vs NumPy vs Numba.

For each kernel, on the same data in one run: a straightforward per-element Python reference,
the NumPy implementation and the Numba implementation (both called directly with the same
validated, converted inputs; the Numba one after a warm-up call, so compile time is excluded).
Each NumPy and Numba figure is the median over ``--repeats`` repeats of the mean time per
call, in µs; the pure-Python reference, seconds a call at full size, takes the median of 2
repeats (1 with ``--quick``). Where the Python reference is too slow to run at full size it
is timed on a slice and scaled (``python_scaled_from`` says how); everything else runs at
the stated size.

    python bench/jit.py [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import common
import numpy as np

from nethical_grpc import jit_optimizations as jo
from nethical_grpc.jit import jit_unavailable_reason

_MIN_REPEAT_S = 0.02


def per_call_us(fn: Callable[[], object], repeats: int) -> float:
    """Median over ``repeats`` of the mean µs per call (each repeat lasts >= ~20 ms)."""
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    loops = max(1, math.ceil(_MIN_REPEAT_S / max(once, 1e-7)))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - t0) / loops)
    return statistics.median(samples) * 1e6


# --- straightforward pure-Python references (per element, over lists) -----------------------


def py_risk(sev: list[float], conf: list[float]) -> float:
    q = 1.0
    for s, c in zip(sev, conf, strict=True):
        if math.isfinite(s) and math.isfinite(c):
            p = min(max(s / 5.0, 0.0), 1.0) * min(max(c, 0.0), 1.0)
            q *= 1.0 - p
    return 1.0 - q


def py_stats(values: list[float]) -> tuple[float, float, float, float, float]:
    v = [x for x in values if x == x]
    n = len(v)
    total = 0.0
    lo = math.inf
    hi = -math.inf
    for x in v:
        total += x
        if x < lo:
            lo = x
        if x > hi:
            hi = x
    mean = total / n
    sq = 0.0
    for x in v:
        sq += (x - mean) * (x - mean)
    s = sorted(v)
    med = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2.0
    return mean, math.sqrt(sq / n), lo, hi, med


def py_decay(scores: list[float], ages: list[float], half_life: float) -> list[float]:
    return [s * 0.5 ** (a / half_life) for s, a in zip(scores, ages, strict=True)]


def py_moving_average(values: list[float], window: int) -> list[float]:
    out = []
    total = 0.0
    count = 0
    for i, v in enumerate(values):
        if math.isfinite(v):
            total += v
            count += 1
        if i >= window:
            old = values[i - window]
            if math.isfinite(old):
                total -= old
                count -= 1
        out.append(total / count if count else math.nan)
    return out


def py_cosine(a: list[float], b: list[float]) -> float:
    ab = aa = bb = 0.0
    for x, y in zip(a, b, strict=True):
        ab += x * y
        aa += x * x
        bb += y * y
    if aa == 0.0 or bb == 0.0:
        return 0.0
    return ab / (math.sqrt(aa) * math.sqrt(bb))


def py_euclidean(a: list[float], b: list[float]) -> float:
    s = 0.0
    for x, y in zip(a, b, strict=True):
        s += (x - y) * (x - y)
    return math.sqrt(s)


def py_batch_cosine(q: list[float], rows: list[list[float]]) -> list[float]:
    return [py_cosine(q, r) for r in rows]


def py_quantile(s: list[float], q: float) -> float:
    pos = (len(s) - 1) * q
    i = math.floor(pos)
    j = min(i + 1, len(s) - 1)
    return s[i] + (s[j] - s[i]) * (pos - i)


def py_iqr(values: list[float], k: float) -> list[bool]:
    s = sorted(x for x in values if x == x)
    q1 = py_quantile(s, 0.25)
    q3 = py_quantile(s, 0.75)
    lo = q1 - k * (q3 - q1)
    hi = q3 + k * (q3 - q1)
    return [x < lo or x > hi for x in values]


def py_zscore(values: list[float], t: float) -> list[bool]:
    v = [x for x in values if x == x]
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / len(v))
    return [abs(x - mean) > t * std for x in values]


def py_ngram(text: str, n: int, dim: int) -> list[float]:
    out = [0.0] * dim
    cps = [ord(c) for c in text]
    for start in range(len(cps) - n + 1):
        h = 2166136261
        for cp in cps[start : start + n]:
            for shift in (0, 8, 16, 24):
                h = ((h ^ ((cp >> shift) & 0xFF)) * 16777619) & 0xFFFFFFFF
        h ^= h >> 16
        out[h % dim] += 1.0
    return out


def py_matmul(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    bt = list(zip(*b, strict=True))
    return [[sum(x * y for x, y in zip(row, col, strict=True)) for col in bt] for row in a]


# --- the benchmark -----------------------------------------------------------------------------


def entry(
    name: str,
    size: str,
    args: tuple[Any, ...],
    python: Callable[[], object],
    python_scale: float,
    python_note: str | None,
    repeats: int,
    python_repeats: int,
) -> dict[str, Any]:
    numba_fn, numpy_fn = jo.IMPLEMENTATIONS[name]
    res: dict[str, Any] = {"kernel": name, "size": size, "live": jo.LIVE[name]}
    py_us = per_call_us(python, python_repeats) * python_scale
    res["python_us"] = round(py_us, 3)
    if python_note:
        res["python_scaled_from"] = python_note
    np_us = per_call_us(lambda: numpy_fn(*args), repeats)
    res["numpy_us"] = round(np_us, 3)
    if name == "matrix_multiply_jit" and not jo.NUMBA_BLAS_AVAILABLE:
        res["numba_us"] = None
        res["numba_note"] = "numba np.dot needs SciPy's BLAS bindings; SciPy is not installed"
    elif not jo.is_jit_available():
        res["numba_us"] = None
        res["numba_note"] = f"JIT unavailable: {jit_unavailable_reason()}"
    else:
        numba_fn(*args)  # warm-up: compile (or load from cache) outside the timing
        nb_us = per_call_us(lambda: numba_fn(*args), repeats)
        res["numba_us"] = round(nb_us, 3)
        res["numba_over_numpy"] = round(nb_us / np_us, 3)
        res["speedup_numba_vs_python"] = round(py_us / nb_us, 1)
    res["speedup_numpy_vs_python"] = round(py_us / np_us, 1)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    opts = parser.parse_args()
    rep = opts.repeats
    big = 100_000 if opts.quick else 1_000_000
    sl = min(big, 100_000)
    scale = big / sl
    slice_note = f"first {sl:,} of {big:,} values, x{scale:g}" if scale != 1 else None
    rng = np.random.default_rng(7)

    sev = rng.uniform(1.0, 5.0, big)
    conf = rng.uniform(0.0, 1.0, big)
    sev[::1000] = np.nan
    values = rng.normal(100.0, 15.0, big)
    values[::997] = np.nan
    values[::10_007] = 400.0
    ages = rng.uniform(0.0, 7 * 86_400.0, big)
    sev_l, conf_l, values_l = sev.tolist(), conf.tolist(), values.tolist()
    ages_l = ages.tolist()
    va = rng.normal(size=256)
    vb = rng.normal(size=256)
    va_l, vb_l = va.tolist(), vb.tolist()
    mat = rng.normal(size=(10_000, 256))
    mat_l = mat[:1000].tolist()
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz      .,;'éü🙂ABCDEFG0123456789"))
    texts = ["".join(rng.choice(alphabet, size=int(rng.integers(150, 250)))) for _ in range(1000)]
    cps = jo._code_points(texts[0], "text")
    all_cps = np.concatenate([jo._code_points(t, "t") for t in texts])
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum([len(t) for t in texts], out=offsets[1:])
    ma = rng.normal(size=(1000, 1000))
    mb = rng.normal(size=(1000, 1000))
    ma_l, mb_l = ma[:100, :100].tolist(), mb[:100, :100].tolist()

    ref_reps = 1 if opts.quick else 2
    results = [
        entry(
            "calculate_risk_score_jit",
            f"{big:,} pairs",
            (sev, conf),
            lambda: py_risk(sev_l, conf_l),
            1.0,
            None,
            rep,
            ref_reps,
        ),
        entry(
            "calculate_statistics_jit",
            f"{big:,} values",
            (values,),
            lambda: py_stats(values_l),
            1.0,
            None,
            rep,
            ref_reps,
        ),
        entry(
            "calculate_temporal_decay_jit",
            f"{big:,} values",
            (values, ages, 86_400.0),
            lambda: py_decay(values_l[:sl], ages_l[:sl], 86_400.0),
            scale,
            slice_note,
            rep,
            ref_reps,
        ),
        entry(
            "calculate_moving_average_jit",
            f"{big:,} values, window 50",
            (values, 50),
            lambda: py_moving_average(values_l[:sl], 50),
            scale,
            slice_note,
            rep,
            ref_reps,
        ),
        entry(
            "detect_outliers_iqr_jit",
            f"{big:,} values",
            (values, 1.5),
            lambda: py_iqr(values_l[:sl], 1.5),
            scale,
            slice_note + " (sort-based, so slightly optimistic)" if slice_note else None,
            rep,
            ref_reps,
        ),
        entry(
            "detect_outliers_zscore_jit",
            f"{big:,} values",
            (values, 3.0),
            lambda: py_zscore(values_l[:sl], 3.0),
            scale,
            slice_note,
            rep,
            ref_reps,
        ),
        entry(
            "cosine_similarity_jit",
            "d=256",
            (va, vb),
            lambda: py_cosine(va_l, vb_l),
            1.0,
            None,
            rep,
            rep,
        ),
        entry(
            "euclidean_distance_jit",
            "d=256",
            (va, vb),
            lambda: py_euclidean(va_l, vb_l),
            1.0,
            None,
            rep,
            rep,
        ),
        entry(
            "batch_cosine_similarity_jit",
            "10,000 x 256",
            (va, mat),
            lambda: py_batch_cosine(va_l, mat_l),
            10.0,
            "first 1,000 of 10,000 rows, x10",
            rep,
            ref_reps,
        ),
        entry(
            "extract_ngram_features_jit",
            f"1 text of {len(texts[0])} chars, n=3, dim=1024",
            (cps, 3, 1024),
            lambda: py_ngram(texts[0], 3, 1024),
            1.0,
            None,
            rep,
            rep,
        ),
        entry(
            "extract_ngram_features_batch",
            f"{len(texts):,} texts, {int(offsets[-1]):,} chars, n=3, dim=1024",
            (all_cps, offsets, 3, 1024),
            lambda: [py_ngram(t, 3, 1024) for t in texts[:100]],
            10.0,
            "first 100 of 1,000 texts, x10",
            rep,
            ref_reps,
        ),
        entry(
            "matrix_multiply_jit",
            "1000x1000 @ 1000x1000",
            (ma, mb),
            lambda: py_matmul(ma_l, mb_l),
            1000.0,
            "100x100 @ 100x100, x1000 (n**3)",
            rep,
            ref_reps,
        ),
    ]
    targets = {
        "numba_100x_python_risk_and_statistics": all(
            r["numba_us"] is not None and r["speedup_numba_vs_python"] >= 100
            for r in results
            if r["kernel"] in ("calculate_risk_score_jit", "calculate_statistics_jit")
        ),
        "numba_within_10pct_of_numpy": {
            r["kernel"]: r["numba_over_numpy"] <= 1.10
            for r in results
            if r.get("numba_over_numpy") is not None
        },
    }
    common.emit(
        "jit",
        {
            "backend": jo.BACKEND,
            "numba_blas": jo.NUMBA_BLAS_AVAILABLE,
            "timing": f"median of {rep} repeats of mean µs/call (each repeat >= 20 ms); "
            f"python reference: median of {ref_reps}, see python_scaled_from where scaled",
            "kernels": results,
            "targets": targets,
        },
    )


if __name__ == "__main__":
    main()
