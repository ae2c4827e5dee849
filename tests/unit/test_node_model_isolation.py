"""A region node's model on TorchScript files that fail on some actions: only the callers
whose actions fail get the error, whichever way their rows reach the model."""

from __future__ import annotations

import asyncio
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from nethical_grpc.governance.detectors import Action
from nethical_grpc.governance.requests import EvaluationRequest, Outcome
from nethical_grpc.inference import DISABLE_TORCH_ENV_VAR, InferenceError
from nethical_grpc.inference.features import NUMERIC_OFFSET
from nethical_grpc.series import SummaryQuery
from region_node.evaluation import RISK_METRIC, Evaluator
from region_node.model import ModelConfig, NodeModel
from region_node.node import NodeIdentity, RegionNode

if os.environ.get(DISABLE_TORCH_ENV_VAR, "").strip().lower() in {"1", "true", "yes"}:
    pytest.skip(f"torch disabled by {DISABLE_TORCH_ENV_VAR}", allow_module_level=True)
pytest.importorskip("torch")
import torch
from torch import Tensor, nn

LOG_LENGTH = NUMERIC_OFFSET  # min(log1p(len(text)) / log1p(65536), 1)
LONG = "x" * 1000  # log_length ~0.62
SHORT = ["ls -la", "cat /etc/hosts", "git status", "SELECT 1"]  # log_length < 0.3


class NaNOnLong(nn.Module):
    """A probability (0.25), but NaN on long texts; 0.25 on the zero probe batch."""

    def __init__(self) -> None:
        super().__init__()
        self.column = LOG_LENGTH

    def forward(self, x: Tensor) -> Tensor:
        return torch.sqrt(0.5 - x[:, self.column]) * 0.0 + 0.25


class LogitOnLong(nn.Module):
    """A probability on the zero probe batch and on short texts, a logit (>1) on long ones."""

    def __init__(self) -> None:
        super().__init__()
        self.column = LOG_LENGTH

    def forward(self, x: Tensor) -> Tensor:
        return x[:, self.column] * 4.0


def node_model(module: nn.Module, path: Path) -> NodeModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.* is deprecated
        torch.jit.save(torch.jit.script(module), str(path))
    return NodeModel.load(ModelConfig(model_path=path, device="cpu"))


def request(text: str, i: int) -> EvaluationRequest:
    return EvaluationRequest(Action(f"agent-{i}", text, "query", ""), f"req-{i}", "query")


@pytest.mark.parametrize("module", [NaNOnLong(), LogitOnLong()], ids=["nan", "logit"])
async def test_coalesced_calls_fail_only_the_caller_whose_action_fails(
    tmp_path: Path, module: nn.Module
) -> None:
    model = node_model(module, tmp_path / "model.pt")
    node = RegionNode(NodeIdentity("r1", "r1-a"))
    audited: list[str] = []
    evaluator = Evaluator(
        model, node, sink=lambda outs: audited.extend(o.request.request_id for o in outs)
    )
    texts = [SHORT[0], LONG, SHORT[1], SHORT[2]]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                *(evaluator.evaluate(request(t, i)) for i, t in enumerate(texts)),
                return_exceptions=True,
            ),
            5.0,
        )
    finally:
        await model.close()
    assert evaluator.coalesced_batches == 1  # they shared one model call
    assert isinstance(results[1], InferenceError)
    answered = [r for r in results if isinstance(r, Outcome)]
    assert [o.request.request_id for o in answered] == ["req-0", "req-2", "req-3"]
    expected = 0.25 if isinstance(module, NaNOnLong) else None
    for o in answered:
        assert 0.0 <= o.model_probability <= 1.0
        if expected is not None:
            assert o.model_probability == pytest.approx(expected)
    # the failed caller is not recorded; the others are, once each
    groups = node.summaries(SummaryQuery(metrics=frozenset({RISK_METRIC})))
    assert sum(g.summary.moments.count for g in groups) == 3 == evaluator.evaluated
    assert audited == ["req-0", "req-2", "req-3"]


async def test_probabilities_apart_answers_each_row_or_its_own_error(tmp_path: Path) -> None:
    model = node_model(NaNOnLong(), tmp_path / "nan.pt")
    rows = model.features([Action("a", t, "query", "") for t in [SHORT[0], LONG, SHORT[1]]])
    try:
        answers = await model.probabilities_apart(rows)
        # the same rows through the micro-batcher (Score calls), one caller each
        each = await asyncio.gather(
            *(model.probabilities(rows[i : i + 1]) for i in range(3)), return_exceptions=True
        )
        # and as one caller's batch (a stream's): its one error
        with pytest.raises(InferenceError, match="non-finite"):
            await model.probabilities(rows, batched=True)
    finally:
        await model.close()
    assert answers[0] == pytest.approx(0.25) and answers[2] == pytest.approx(0.25)
    assert isinstance(answers[1], InferenceError)
    assert isinstance(each[1], InferenceError)
    assert [float(np.asarray(each[i])[0]) for i in (0, 2)] == pytest.approx([0.25, 0.25])


async def test_a_logit_fails_only_its_caller_in_the_micro_batcher(tmp_path: Path) -> None:
    model = node_model(LogitOnLong(), tmp_path / "logit.pt")
    rows = model.features([Action("a", t, "query", "") for t in [SHORT[0], LONG, SHORT[1]]])
    try:
        each = await asyncio.gather(
            *(model.probabilities(rows[i : i + 1]) for i in range(3)), return_exceptions=True
        )
    finally:
        await model.close()
    assert isinstance(each[1], InferenceError)
    assert "not probabilities in [0, 1]" in str(each[1])
    for i in (0, 2):
        value = float(np.asarray(each[i])[0])
        assert value == pytest.approx(4.0 * float(rows[i, LOG_LENGTH]), abs=1e-6)
        assert 0.0 < value < 1.0
