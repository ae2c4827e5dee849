"""The region node's model: what it reports about the backend it runs on."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from nethical_grpc.inference.errors import ModelLoadError
from nethical_grpc.inference.torch_support import torch_or_reason
from region_node.model import ModelConfig, NodeModel


def test_the_node_says_why_its_model_runs_in_numpy() -> None:
    # GetNodeInfo and Score report this line: the node's own choice reads as one
    reason = (
        "numpy (the bundled model runs in NumPy, faster per Evaluate than PyTorch on a CPU or "
        "a GPU; --device cuda or --model-backend torch for PyTorch)"
    )
    for device in ("auto", "cpu"):  # a GPU, where there is one, does not change the choice
        chosen = NodeModel.load(ModelConfig(device=device))
        assert chosen.engine.backend == "numpy"
        assert chosen.describe() == reason
    asked = NodeModel.load(ModelConfig(device="cpu", backend="numpy"))
    assert asked.describe() == "numpy (requested with --model-backend numpy)"


def test_pytorch_where_asked_for_or_where_numpy_cannot_run() -> None:
    torch, reason = torch_or_reason()
    if torch is None:
        pytest.skip(f"torch is not usable: {reason}")
    for config in (
        ModelConfig(backend="torch"),
        ModelConfig(precision="bf16"),  # the NumPy path runs fp32 only
    ):
        assert NodeModel.load(config).engine.backend == "torch", config


def test_a_model_that_takes_integer_ids_is_refused_with_the_reason(tmp_path: Path) -> None:
    torch, reason = torch_or_reason()
    if torch is None:
        pytest.skip(f"torch is not usable: {reason}")

    class Ids(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(8, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:  # type: ignore[name-defined]
            return torch.sigmoid(self.emb(ids).mean(dim=(1, 2)))

    path = tmp_path / "ids.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.* is deprecated
        torch.jit.save(torch.jit.script(Ids()), str(path))
    with pytest.raises(ModelLoadError, match=r"ids\.pt takes integer ids, but a region node"):
        NodeModel.load(ModelConfig(model_path=path, device="cpu"))
