"""Rule-based governance of AI agents' actions: detectors and decisions.

* :mod:`nethical_grpc.governance.detectors`: domain types and the deterministic rule set
  (:func:`~nethical_grpc.governance.detectors.detect`).
* :mod:`nethical_grpc.governance.decision`: thresholds, blending with a model probability
  and the final decision (:func:`~nethical_grpc.governance.decision.evaluate_action`).
"""

from __future__ import annotations

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
from nethical_grpc.governance.detectors import (
    MAX_FINDINGS,
    RULES,
    Action,
    Severity,
    Violation,
    ViolationType,
    detect,
)

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
