"""Rule-based governance of AI agents' actions: detectors and decisions.

* :mod:`nethical_grpc.governance.detectors`: domain types and the deterministic rule set
  (:func:`~nethical_grpc.governance.detectors.detect`).
* :mod:`nethical_grpc.governance.decision`: thresholds, blending with a model probability
  and the final decision (:func:`~nethical_grpc.governance.decision.evaluate_action`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nethical_grpc.governance.detectors import (
    MAX_FINDINGS,
    RULES,
    Action,
    Severity,
    Violation,
    ViolationType,
    detect,
)

if TYPE_CHECKING:
    from nethical_grpc.governance.decision import (
        MAX_ACTION_TEXT_BYTES,
        Decision,
        Evaluation,
        Thresholds,
        blend,
        decide,
        evaluate_action,
        rule_risk,
        validate_action,
    )


def __getattr__(name: str) -> Any:
    # the decision module's names are imported when first used: it brings NumPy and the
    # JIT kernels, which the rule-detection workers (governance.detect_pool) do not need
    decision = importlib.import_module("nethical_grpc.governance.decision")
    if name in decision.__all__:
        return getattr(decision, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MAX_ACTION_TEXT_BYTES",
    "MAX_FINDINGS",
    "RULES",
    "Action",
    "Decision",
    "Evaluation",
    "Severity",
    "Thresholds",
    "Violation",
    "ViolationType",
    "blend",
    "decide",
    "detect",
    "evaluate_action",
    "rule_risk",
    "validate_action",
]
