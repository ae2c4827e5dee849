"""The region node's model: what it reports about the backend it runs on."""

from __future__ import annotations

import pytest

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
