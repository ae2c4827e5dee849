"""Review fixes in model inference: the micro-batcher's shutdown and unlike rows, and how the
engine treats model files that are not TorchScript."""

from __future__ import annotations

import asyncio
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from nethical_grpc.inference import (
    DEFAULT_WEIGHTS,
    FEATURE_WIDTH,
    InferenceEngine,
    MicroBatcher,
    ModelLoadError,
    UnsupportedPrecisionError,
)
from nethical_grpc.inference.numpy_model import NumpyMLP
from nethical_grpc.inference.torch_support import torch_or_reason
from region_node.model import ModelConfig, NodeModel


def first_column(x: np.ndarray) -> np.ndarray:
    return np.asarray(x[:, 0], dtype=np.float64)


# ------------------------------------------------------------------ micro-batcher


async def test_close_returns_when_a_caller_queued_during_a_batch_went_away() -> None:
    """A caller queues while a batch runs, then is cancelled; close() must not wait forever
    (the worker found only that caller's dead entry and slept on its wake event)."""
    running = threading.Event()
    release = threading.Event()

    def slow(x: np.ndarray) -> np.ndarray:
        running.set()
        release.wait(timeout=10)
        return first_column(x)

    batcher = MicroBatcher(slow, max_batch=1, max_delay_s=0.0)
    first = asyncio.create_task(batcher.submit(np.array([1.0, 0.0])))
    assert await asyncio.to_thread(running.wait, 10)  # its batch runs in the worker thread
    gone = asyncio.create_task(batcher.submit(np.array([2.0, 0.0])))
    await asyncio.sleep(0)  # queued behind the running batch
    gone.cancel()
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(closing, 5.0)
    assert await first == 1.0
    assert gone.cancelled()
    assert batcher.stats.batches == 1  # the cancelled caller's row never ran


async def test_rows_that_do_not_stack_answer_each_caller_instead_of_hanging() -> None:
    """Without a ``validate``, callers' rows of different widths share a batch; they cannot
    be stacked into one array, so each caller's rows run on their own (the batcher's
    documented isolation) rather than leaving every caller in that batch waiting."""
    seen: list[tuple[int, ...]] = []

    def total(x: np.ndarray) -> np.ndarray:
        seen.append(x.shape)
        if x.shape[1] == 5:
            raise ValueError("five columns are not allowed")
        return np.asarray(x.sum(axis=1), dtype=np.float64)

    async with MicroBatcher(total, max_batch=8, max_delay_s=0.05) as batcher:
        results = await asyncio.wait_for(
            asyncio.gather(
                batcher.submit(np.ones(3)),
                batcher.submit(np.ones(4)),
                batcher.submit_many(np.ones((2, 3))),
                batcher.submit(np.ones(5)),
                batcher.submit(np.array(["a", "b", "c"])),
                return_exceptions=True,
            ),
            5.0,
        )
        # the worker still serves later callers
        assert await asyncio.wait_for(batcher.submit(np.ones(2)), 5.0) == 2.0
    assert results[0] == 3.0
    assert results[1] == 4.0
    assert isinstance(results[2], np.ndarray) and results[2].tolist() == [3.0, 3.0]
    assert isinstance(results[3], ValueError) and "five columns" in str(results[3])
    assert isinstance(results[4], Exception)  # strings: that caller's own error
    assert max(shape[0] for shape in seen) <= 8


# ------------------------------------------------------------------ model files


def test_an_npz_weights_file_runs_in_numpy_when_the_backend_is_auto() -> None:
    """The engine documents ``.npz`` weights as the NumPy backend's model; with torch
    installed, ``backend="auto"`` handed them to ``torch.jit.load`` and failed."""
    rows = np.random.default_rng(1).random((5, FEATURE_WIDTH), dtype=np.float32)
    engine = InferenceEngine(model_path=DEFAULT_WEIGHTS)
    assert engine.backend == "numpy"
    assert engine.model_path == DEFAULT_WEIGHTS
    assert "npz" in (engine.fallback_reason or "")
    want = InferenceEngine(backend="numpy").predict_batch(rows)
    assert np.array_equal(engine.predict_batch(rows), want)
    with pytest.raises(UnsupportedPrecisionError, match="fp32 only"):
        InferenceEngine(model_path=DEFAULT_WEIGHTS, precision="bf16")
    with pytest.raises(ValueError, match=r"\.npz weights file .*CPU only"):
        InferenceEngine(model_path=DEFAULT_WEIGHTS, device="cuda")
    # the region node's --model PATH takes it too
    node = NodeModel.load(ModelConfig(model_path=DEFAULT_WEIGHTS, device="cpu"))
    assert node.engine.backend == "numpy"
    assert node.label() == "default-mlp numpy"


def _torch_or_skip() -> object:
    torch, reason = torch_or_reason()
    if torch is None:
        pytest.skip(f"torch is not usable: {reason}")
    return torch


def test_an_npz_file_given_to_the_torch_backend_says_what_it_is(tmp_path: Path) -> None:
    _torch_or_skip()
    renamed = tmp_path / "risk.pt"  # the NumPy weights under a TorchScript name
    renamed.write_bytes(DEFAULT_WEIGHTS.read_bytes())
    for path in (DEFAULT_WEIGHTS, renamed):
        with pytest.raises(ModelLoadError) as info:
            InferenceEngine(model_path=path, backend="torch", device="cpu")
        message = str(info.value)
        assert "NumPy .npz weights file" in message, message
        assert "backend 'numpy'" in message
        assert "corrupted" not in message


def test_a_torch_save_checkpoint_is_named_as_such_not_as_a_corrupt_file(tmp_path: Path) -> None:
    """``torch.save`` of a state_dict or of a module is the usual mistake: torch's own
    message calls the file corrupted; the engine says it is a checkpoint and how to export
    TorchScript."""
    torch = _torch_or_skip()
    nn = torch.nn  # type: ignore[attr-defined]
    layer = nn.Sequential(nn.Linear(FEATURE_WIDTH, 1), nn.Sigmoid())
    state = tmp_path / "state.pt"
    torch.save(layer.state_dict(), state)  # type: ignore[attr-defined]
    whole = tmp_path / "module.pt"
    torch.save(layer, whole)  # type: ignore[attr-defined]
    legacy = tmp_path / "legacy.pt"  # the pre-zip format
    torch.save(  # type: ignore[attr-defined]
        layer.state_dict(), legacy, _use_new_zipfile_serialization=False
    )
    for path in (state, whole, legacy):
        with pytest.raises(ModelLoadError) as info:
            NodeModel.load(ModelConfig(model_path=path, device="cpu"))
        message = str(info.value)
        assert path.name in message
        assert "torch.save() checkpoint" in message, message
        assert "torch.jit.script" in message
        assert "corrupted" not in message
    # a real TorchScript file of the same layer loads
    scripted = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.* is deprecated
        torch.jit.save(torch.jit.script(layer), str(scripted))  # type: ignore[attr-defined]
    engine = NodeModel.load(ModelConfig(model_path=scripted, device="cpu")).engine
    assert engine.backend == "torch"
    assert engine.predict_batch(np.zeros((1, FEATURE_WIDTH), np.float32)).shape == (1,)


def test_a_file_that_is_not_a_zip_archive_keeps_a_clear_message(tmp_path: Path) -> None:
    _torch_or_skip()
    text = tmp_path / "notes.pt"
    text.write_text("not a model")
    with pytest.raises(ModelLoadError, match=r"cannot load .*notes\.pt as a TorchScript model"):
        InferenceEngine(model_path=text, backend="torch", device="cpu")


# ------------------------------------------------------------------ devices


@pytest.mark.parametrize("device", ["cuda:\u00b2", "cuda:\uff11", "cuda:-1", "cuda:1.0", "cuda:"])
def test_a_device_index_that_is_not_ascii_digits_is_refused_by_name(device: str) -> None:
    """``str.isdigit`` takes "²" (then ``int`` failed with "invalid literal") and "１"."""
    _torch_or_skip()
    with pytest.raises(ValueError, match=r"device must be 'cpu', 'cuda' or 'cuda:N'"):
        InferenceEngine(device=device, backend="torch")


# ------------------------------------------------------------------ numpy weights


def _layers(tmp_path: Path, indices: list[int], name: str = "w.npz") -> Path:
    """An .npz MLP whose layers carry ``indices`` (4 -> 4 -> ... -> 1)."""
    arrays: dict[str, np.ndarray] = {}
    for n, i in enumerate(indices):
        out = 1 if n == len(indices) - 1 else 4
        arrays[f"w{i}"] = np.ones((out, 4), np.float32)
        arrays[f"b{i}"] = np.zeros(out, np.float32)
    path = tmp_path / name
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize(
    ("indices", "stray"), [([0, 2], "b2"), ([0, 1, 3], "b3"), (list(range(17)), "b16")]
)
def test_layers_numbered_with_a_gap_or_past_the_limit_are_named(
    tmp_path: Path, indices: list[int], stray: str
) -> None:
    """Layers after a gap (or past the 16th) were dropped unsaid: the model loaded with
    the layers before them, or failed on a last layer with 4 outputs."""
    path = _layers(tmp_path, indices)
    with pytest.raises(ModelLoadError, match=rf"'{stray}' follows no layer"):
        NumpyMLP.load(path)


def test_sixteen_layers_numbered_without_gaps_load(tmp_path: Path) -> None:
    model = NumpyMLP.load(_layers(tmp_path, list(range(16))))
    assert model.layer_sizes == (4, *[4] * 15, 1)
    assert model.predict(np.ones((2, 4), np.float32)).shape == (2,)
