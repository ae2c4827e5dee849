"""An evaluation request as the node receives it, and its outcome."""

from __future__ import annotations

from dataclasses import dataclass

from nethical_grpc.governance.decision import Evaluation
from nethical_grpc.governance.detectors import Action

__all__ = ["EvaluationRequest", "Outcome"]


@dataclass(frozen=True, slots=True)
class EvaluationRequest:
    """A validated action with the caller's request id and its normalised action type."""

    action: Action
    request_id: str
    action_type: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """The verdict on one action, with what the node measured."""

    request: EvaluationRequest
    evaluation: Evaluation
    model_probability: float
    latency_ns: int
    time_ns: int
