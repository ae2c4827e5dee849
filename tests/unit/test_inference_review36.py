"""Review fixes in model inference: what a failing TorchScript model's message says, models
saved with fp16 / bf16 / fp64 weights, and a ``validate`` that changes the row count."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from nethical_grpc.inference import (
    DISABLE_TORCH_ENV_VAR,
    FEATURE_WIDTH,
    InferenceEngine,
    InferenceError,
    MicroBatcher,
    ModelLoadError,
    action_features,
)

# ------------------------------------------------------------------ micro-batcher


async def test_a_validate_that_changes_the_row_count_is_that_callers_error() -> None:
    """A row count other than the caller's would land other answers on it (or, past
    ``max_batch``, make an entry that never fits a batch and spin the worker)."""
    calls: list[int] = []

    def fn(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return np.asarray(x[:, 0], dtype=np.float64)

    async with MicroBatcher(
        fn, max_batch=8, max_delay_s=0.001, validate=lambda a: np.repeat(a, 3, axis=0)
    ) as batcher:
        with pytest.raises(ValueError, match=r"validate returned shape \(3, 2\) for 1 row"):
            await batcher.submit([1.0, 2.0])
        answers = await batcher.submit_apart(np.ones((2, 2)))
        assert all(isinstance(a, ValueError) for a in answers)
    assert calls == []
    # a validate that keeps the row count still converts the rows
    async with MicroBatcher(fn, max_batch=4, max_delay_s=0.001, validate=lambda a: a + 1.0) as ok:
        assert await ok.submit([1.0, 5.0]) == 2.0
        assert list(await ok.submit_many([[0.0, 0.0], [2.0, 0.0]])) == [1.0, 3.0]


# ------------------------------------------------------------------ torch models

if os.environ.get(DISABLE_TORCH_ENV_VAR, "").strip().lower() in {"1", "true", "yes"}:
    pytest.skip(f"torch disabled by {DISABLE_TORCH_ENV_VAR}", allow_module_level=True)
pytest.importorskip("torch")
import torch  # noqa: E402
from torch import nn  # noqa: E402


class _Linear(nn.Module):
    def __init__(self, width: int = FEATURE_WIDTH) -> None:
        super().__init__()
        self.lin = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.lin(x))


class _RefusesLargeValues(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.max() > 0.5):
            raise ValueError("feature value above one half")
        return torch.sigmoid(x.sum(dim=1))


def _save(module: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def test_a_model_of_the_wrong_width_says_why_it_fails(tmp_path: Path) -> None:
    """TorchScript's message starts with "The following operation failed in the TorchScript
    interpreter." and ends with the error; the first line alone said nothing."""
    path = _save(_Linear(width=10), tmp_path / "narrow.pt")
    with pytest.raises(ModelLoadError) as info:
        InferenceEngine(path, device="cpu")
    text = str(info.value)
    assert "mat1 and mat2 shapes cannot be multiplied (2x590 and 10x1)" in text
    assert "TorchScript interpreter" not in text


def test_an_error_raised_inside_the_model_reaches_the_inference_error(tmp_path: Path) -> None:
    path = _save(_RefusesLargeValues(), tmp_path / "picky.pt")
    engine = InferenceEngine(path, device="cpu")
    assert engine.predict_batch(np.zeros((3, FEATURE_WIDTH), dtype=np.float32)).shape == (3,)
    with pytest.raises(InferenceError, match="feature value above one half"):
        engine.predict_batch(np.ones((3, FEATURE_WIDTH), dtype=np.float32))


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16", "float64"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_a_model_saved_with_other_float_weights_runs_like_its_fp32_copy(
    tmp_path: Path, dtype_name: str, precision: str
) -> None:
    torch.manual_seed(0)
    saved = _Linear().to(getattr(torch, dtype_name))
    reference = _Linear()
    reference.load_state_dict({k: v.float() for k, v in saved.state_dict().items()})
    engine = InferenceEngine(_save(saved, tmp_path / "m.pt"), device="cpu", precision=precision)
    fp32 = InferenceEngine(_save(reference, tmp_path / "ref.pt"), device="cpu", precision=precision)
    assert engine.input_kind == "float"
    x = action_features(
        ["rm -rf / --no-preserve-root", "Summarize the notes", "", "ünïcödé ✓ 😀"],
        ["", "help", "", "x"],
    )
    got = engine.predict_batch(x)
    np.testing.assert_allclose(got, fp32.predict_batch(x), rtol=0, atol=1e-6)
    assert engine.predict(x[0]) == pytest.approx(float(got[0]), abs=1e-6)
    assert engine.benchmark_throughput(batch_size=4, iterations=2, warmup=1)["precision"] == (
        precision
    )


def test_only_a_model_whose_weights_are_all_of_one_other_type_is_converted(
    tmp_path: Path,
) -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(FEATURE_WIDTH, 1)
            self.scale = nn.Parameter(torch.tensor([0.5], dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.lin(x).double() * self.scale).float()

    zeros = np.zeros((2, FEATURE_WIDTH), dtype=np.float32)
    half = InferenceEngine(_save(_Linear().half(), tmp_path / "half.pt"), device="cpu")
    assert half.model_bytes() == (FEATURE_WIDTH + 1) * 4  # float32 now
    assert half.predict_batch(zeros).shape == (2,)
    mixed = InferenceEngine(_save(Mixed(), tmp_path / "mixed.pt"), device="cpu")
    assert mixed.predict_batch(zeros).shape == (2,)
