"""The region node's model: what it reports about the backend it runs on."""

from __future__ import annotations

from region_node.model import ModelConfig, NodeModel


def test_the_node_says_why_its_model_runs_in_numpy() -> None:
    # GetNodeInfo and Score report this line: the node's own choice reads as one
    chosen = NodeModel.load(ModelConfig(device="cpu"))
    assert chosen.describe() == (
        "numpy (the bundled model on a CPU runs in NumPy; --model-backend torch for PyTorch)"
    )
    asked = NodeModel.load(ModelConfig(device="cpu", backend="numpy"))
    assert asked.describe() == "numpy (requested with --model-backend numpy)"
