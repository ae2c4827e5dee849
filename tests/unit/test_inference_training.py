"""``scripts/train_default_model.py`` is reproducible, and the shipped model is its output."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from nethical_grpc.inference import (
    DEFAULT_TORCHSCRIPT,
    DEFAULT_WEIGHTS,
    DISABLE_TORCH_ENV_VAR,
    FEATURE_VERSION,
    FEATURE_WIDTH,
    InferenceEngine,
    action_features,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "train_default_model.py"


def test_shipped_model_files_match_their_metadata() -> None:
    folder = DEFAULT_WEIGHTS.parent
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["feature_version"] == FEATURE_VERSION
    assert meta["feature_width"] == FEATURE_WIDTH
    assert meta["layers"] == [FEATURE_WIDTH, 64, 32, 1]
    assert "SYNTHETIC" in meta["data"]
    for path in (DEFAULT_WEIGHTS, DEFAULT_TORCHSCRIPT):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"][path.name]
    assert DEFAULT_WEIGHTS.stat().st_size + DEFAULT_TORCHSCRIPT.stat().st_size < 1_000_000
    with np.load(DEFAULT_WEIGHTS) as data:
        assert str(data["feature_version"]) == FEATURE_VERSION
        assert data["w0"].shape == (64, FEATURE_WIDTH)


@pytest.fixture(scope="module")
def trainer() -> ModuleType:
    if os.environ.get(DISABLE_TORCH_ENV_VAR, "").strip().lower() in {"1", "true", "yes"}:
        pytest.skip("torch disabled")
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("train_default_model", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


def test_training_twice_gives_identical_weights(trainer: ModuleType, tmp_path: Path) -> None:
    logs: list[str] = []
    metas = [
        trainer.train(tmp_path / name, epochs=2, samples=400, seed=5, log=logs.append)
        for name in ("a", "b")
    ]
    with np.load(tmp_path / "a" / "weights.npz") as a, np.load(tmp_path / "b" / "weights.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        assert {"w0", "b0", "w1", "b1", "w2", "b2"} <= set(a.files)
        for key in a.files:
            assert np.array_equal(a[key], b[key]), key
    assert metas[0]["sha256"]["weights.npz"] == metas[1]["sha256"]["weights.npz"]
    assert metas[0]["held_out_accuracy"] == metas[1]["held_out_accuracy"]
    assert 0.5 < metas[0]["held_out_accuracy"] <= 1.0
    assert any("epoch" in line for line in logs)

    other = trainer.train(tmp_path / "c", epochs=2, samples=400, seed=6, log=logs.append)
    assert other["sha256"]["weights.npz"] != metas[0]["sha256"]["weights.npz"]


def test_trained_files_load_and_agree(trainer: ModuleType, tmp_path: Path) -> None:
    trainer.train(tmp_path, epochs=2, samples=300, seed=9, log=lambda _: None)
    x = action_features(["DROP TABLE users;", "git status", "Summarize the notes"], ["", "", ""])
    scripted = InferenceEngine(model_path=tmp_path / "model.pt", device="cpu")
    numpy_path = InferenceEngine(model_path=tmp_path / "weights.npz", backend="numpy")
    np.testing.assert_allclose(scripted.predict_batch(x), numpy_path.predict_batch(x), atol=1e-5)


def test_synthetic_data_is_balanced_and_split_by_slot_values(trainer: ModuleType) -> None:
    rng = np.random.default_rng(0)
    train_vocab, held_vocab = trainer._split_slots(rng)
    for name in train_vocab:
        assert not set(train_vocab[name]) & set(held_vocab[name]), name
        assert held_vocab[name]
    data = trainer.generate(100, train_vocab, rng)
    assert len(data.texts) == len(data.intents) == 100
    assert data.labels.sum() == 50
