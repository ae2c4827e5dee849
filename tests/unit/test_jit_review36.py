"""Review 36 of the JIT kernels: both paths alike, import and threads robust."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nethical_grpc import jit_optimizations as jo
from nethical_grpc.jit import is_jit_available

ROOT = Path(__file__).resolve().parents[2]

needs_numba = pytest.mark.skipif(not is_jit_available(), reason="numba not installed/enabled")


def _run(
    code: str, env: dict[str, str], timeout: float = 240.0
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --------------------------------------------------------------------------------------------
# Import with no writable Numba cache location
# --------------------------------------------------------------------------------------------


@needs_numba
def test_import_without_a_writable_cache_dir_falls_back(tmp_path: Path) -> None:
    """A read-only install whose user has no writable cache directory: Numba raises
    ``RuntimeError: cannot cache function ...`` at decoration, so importing the kernels
    failed.  Now they compile without the on-disk cache and give the same answers."""
    import numba

    if not hasattr(numba.config, "CACHE_LOCATOR_CLASSES"):
        pytest.skip("this numba cannot restrict its cache locators")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {
        # the only locator allowed is the user-provided directory, and it cannot be created
        # (below a regular file: fails even for root)
        "NUMBA_CACHE_DIR": str(blocker / "cache"),
        "NUMBA_CACHE_LOCATOR_CLASSES": "UserProvidedCacheLocator",
    }
    proc = _run(
        """
        from nethical_grpc import jit_optimizations as jo
        from nethical_grpc.jit import is_jit_available
        assert is_jit_available()
        print(jo.calculate_statistics_jit([1.0, 2.0, 3.0, 4.0]))
        print(jo.extract_ngram_features_batch(["abc", "abd"], 2, 8).sum())
        """,
        env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:2] == ["(2.5, 1.118033988749895, 1.0, 4.0, 2.5)", "4.0"]
    assert "cache unavailable" in proc.stderr


# --------------------------------------------------------------------------------------------
# Parallel n-gram batches from several threads
# --------------------------------------------------------------------------------------------


@needs_numba
def test_parallel_ngram_batch_from_threads_under_workqueue_layer() -> None:
    """Numba's ``workqueue`` threading layer (what it uses without TBB or libgomp, e.g. on
    python:3.11-slim) terminates the process when two threads launch a parallel kernel at
    once.  ``extract_ngram_features_batch`` is documented as callable concurrently (nogil):
    it killed the whole process; now it serialises when the layer is not thread-safe."""
    proc = _run(
        """
        import threading
        import numpy as np
        from nethical_grpc import jit_optimizations as jo
        texts = [f"hello world {i} " * 40 for i in range(1500)]
        cps = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
        offsets = np.concatenate([[0], np.cumsum([len(t) for t in texts])])
        ref = jo._ngram_batch_numpy(cps.astype(np.int64), offsets.astype(np.int64), 3, 256)
        bad = []
        start = threading.Barrier(8)
        def work():
            start.wait()
            for _ in range(15):
                if not np.array_equal(jo.extract_ngram_features_batch(texts, 3, 256), ref):
                    bad.append(1)
        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        import numba
        print(numba.threading_layer(), len(bad))
        """,
        {"NUMBA_THREADING_LAYER": "workqueue"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["workqueue", "0"]


@needs_numba
def test_parallel_ngram_batch_threads_agree_with_numpy() -> None:
    """In-process (whatever layer loads): concurrent batches equal the NumPy counts."""
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"row {i} ünïcødé 😀 " * (i % 7 + 1) for i in range(400)]
    ref = jo.extract_ngram_features_batch(texts, 3, 64)
    cps = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum([len(t) for t in texts], out=offsets[1:])
    assert np.array_equal(ref, jo._ngram_batch_numpy(cps, offsets, 3, 64))
    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(lambda _: jo.extract_ngram_features_batch(texts, 3, 64), range(24)))
    assert all(np.array_equal(o, ref) for o in outs)


# --------------------------------------------------------------------------------------------
# Temporal decay: ages of None
# --------------------------------------------------------------------------------------------


def test_decay_ages_none_is_refused_not_read_as_nan() -> None:
    """``np.asarray(None, float)`` is NaN: every decayed score came back NaN."""
    with pytest.raises(ValueError, match="ages_seconds must be numbers, got None"):
        jo.calculate_temporal_decay_jit([1.0, 2.0], None, 10.0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# The NumPy path raises no floating-point warnings the Numba path does not
# --------------------------------------------------------------------------------------------


def test_numpy_path_is_warning_free_under_w_error() -> None:
    """With ``NETHICAL_DISABLE_JIT=1`` and warnings as errors (``-W error``, a common test
    setting), a z-score over data holding an infinity and a decay whose ``age / half_life``
    overflows raised ``RuntimeWarning`` where the Numba path returns a result."""
    proc = _run(
        """
        import warnings
        warnings.simplefilter("error")
        import numpy as np
        from nethical_grpc import jit_optimizations as jo
        from nethical_grpc.jit import is_jit_available
        assert not is_jit_available()
        print(jo.detect_outliers_zscore_jit([np.inf, 1.0, 2.0]).tolist())
        print(jo.calculate_temporal_decay_jit([1.0, 2.0], [1e300, -1e300], 1e-10).tolist())
        """,
        {"NETHICAL_DISABLE_JIT": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:2] == ["[False, False, False]", "[0.0, inf]"]


_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def _both(name: str, *args: object) -> tuple[object, object]:
    """Both implementations; the NumPy one with warnings as errors (the uncompiled loops of
    the Numba one warn on NumPy scalars without JIT, but are never live then)."""
    numba_impl, numpy_impl = jo.IMPLEMENTATIONS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = numba_impl(*args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return first, numpy_impl(*args)


@_SETTINGS
@given(hnp.arrays(np.float64, st.integers(0, 70), elements=_floats), st.floats(0.1, 10.0))
@example(np.array([np.inf, 5.2e16, 5.5e16]), 2.0)
@example(np.array([-np.inf, np.inf]), 1.0)
def test_zscore_paths_identical_and_silent(x: np.ndarray, threshold: float) -> None:
    a, b = _both("detect_outliers_zscore_jit", x, threshold)
    assert np.array_equal(np.asarray(a), np.asarray(b))


@_SETTINGS
@given(
    st.integers(0, 40).flatmap(
        lambda n: st.tuples(
            hnp.arrays(np.float64, n, elements=_floats),
            hnp.arrays(np.float64, n, elements=_floats),
        )
    ),
    st.floats(1e-300, 1e300),
)
@example((np.array([1.0, 2.0]), np.array([1e300, -1e300])), 1e-10)
def test_decay_paths_agree_and_silent(pair: tuple[np.ndarray, np.ndarray], hl: float) -> None:
    scores, ages = pair
    a, b = _both("calculate_temporal_decay_jit", scores, ages, hl)
    assert np.allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=0.0, equal_nan=True)


@pytest.mark.parametrize("dim", [2**32 + 1, 2**70])
def test_an_ngram_dim_past_the_hash_range_is_a_value_error(dim: int) -> None:
    from nethical_grpc.jit_optimizations import (
        extract_ngram_features_batch,
        extract_ngram_features_jit,
    )

    with pytest.raises(ValueError, match=r"dim must be at most 2\*\*32"):
        extract_ngram_features_jit("abc", dim=dim)
    with pytest.raises(ValueError, match=r"dim must be at most 2\*\*32"):
        extract_ngram_features_batch(["abc"], dim=dim)
