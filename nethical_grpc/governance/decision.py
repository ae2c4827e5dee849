"""From findings to a decision: risk, blending with a model, thresholds.

Pipeline of :func:`evaluate_action`:

1. :func:`validate_action` (``ValueError`` on bad input; the RPC layer maps it to
   ``INVALID_ARGUMENT``).
2. :func:`~nethical_grpc.governance.detectors.detect` finds the violations.
3. :func:`rule_risk`: noisy-OR of the findings with
   :func:`nethical_grpc.jit_optimizations.calculate_risk_score_jit`,
   ``1 - prod(1 - severity / 5 * confidence)``; ``0.0`` with no findings.
4. :func:`blend` with the model probability, when one is given.
5. :func:`decide` against :class:`Thresholds`.

Confidence of an :class:`Evaluation`
------------------------------------
* With findings: the highest finding confidence (how sure the strongest evidence is).
* Without findings: ``1 - risk_score``; that is ``1.0`` when no model probability is given
  (nothing was found by deterministic rules), and falls as the model's probability of harm
  rises, since the ALLOW then rests on the rules' silence against the model's concern.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from nethical_grpc.governance.detectors import Action, Severity, Violation, detect
from nethical_grpc.jit_optimizations import calculate_risk_score_jit

__all__ = [
    "DEFAULT_MODEL_WEIGHT",
    "MAX_ACTION_TEXT_BYTES",
    "Decision",
    "Evaluation",
    "Thresholds",
    "blend",
    "decide",
    "evaluate_action",
    "rule_risk",
    "validate_action",
]

#: Largest accepted ``action_text`` (and ``stated_intent``, and all context values
#: together), in UTF-8 bytes: 64 KiB.
MAX_ACTION_TEXT_BYTES: Final = 64 * 1024
#: Default weight of the model probability in :func:`blend`.
DEFAULT_MODEL_WEIGHT: Final = 0.3


class Decision(StrEnum):
    """Outcome for an action, from least to most severe."""

    ALLOW = "ALLOW"
    RESTRICT = "RESTRICT"
    BLOCK = "BLOCK"
    TERMINATE = "TERMINATE"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Risk cut-offs (each inclusive: ``risk >= restrict`` restricts).

    Defaults: RESTRICT at ``0.3``, BLOCK at ``0.6``, TERMINATE at ``0.85``.  Independently
    of the risk, any EMERGENCY finding with confidence ``>= emergency_confidence``
    (default ``0.9``) terminates.  Requires ``0 <= restrict < block < terminate <= 1`` and
    ``0 <= emergency_confidence <= 1`` (``ValueError`` otherwise).
    """

    restrict: float = 0.3
    block: float = 0.6
    terminate: float = 0.85
    emergency_confidence: float = 0.9

    def __post_init__(self) -> None:
        for name in ("restrict", "block", "terminate", "emergency_confidence"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not 0.0 <= self.restrict < self.block < self.terminate <= 1.0:
            raise ValueError(
                "thresholds must satisfy 0 <= restrict < block < terminate <= 1, got "
                f"restrict={self.restrict}, block={self.block}, terminate={self.terminate}"
            )
        if not 0.0 <= self.emergency_confidence <= 1.0:
            raise ValueError(
                f"emergency_confidence must be in [0, 1], got {self.emergency_confidence}"
            )


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Result of :func:`evaluate_action`.

    ``risk_score`` is the blended risk in ``[0, 1]``, ``confidence`` as described in the
    module docstring, ``violations`` sorted as by ``detect``; ``rule_risk`` is the risk of
    the findings alone, before blending.
    """

    decision: Decision
    risk_score: float
    confidence: float
    violations: tuple[Violation, ...] = field(default_factory=tuple)
    rule_risk: float = 0.0


def _probability(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    f = float(value)
    if math.isnan(f):
        raise ValueError(f"{name} must not be NaN")
    return f


def rule_risk(violations: Sequence[Violation]) -> float:
    """Noisy-OR risk of ``violations`` via ``calculate_risk_score_jit`` (``0.0`` if none).

    Monotone: adding a finding, or raising a severity or confidence, never lowers it.
    """
    if not violations:
        return 0.0
    sev = [float(v.severity) for v in violations]
    conf = [v.confidence for v in violations]
    return min(1.0, max(0.0, calculate_risk_score_jit(sev, conf)))


def blend(
    rule_risk: float,
    model_probability: float | None,
    model_weight: float = DEFAULT_MODEL_WEIGHT,
) -> float:
    """Combine the rule risk with a model's probability of harm.

    Without a model probability, returns ``rule_risk`` clipped to ``[0, 1]``.  With one,
    the weighted average ``(1 - w) * rule_risk + w * model_probability`` (``w =
    model_weight``), both inputs clipped to ``[0, 1]`` first and the result clipped too.
    ``ValueError`` for NaN / non-numeric inputs or ``model_weight`` outside ``[0, 1]``.
    """
    r = min(1.0, max(0.0, _probability(rule_risk, "rule_risk")))
    w = _probability(model_weight, "model_weight")
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"model_weight must be in [0, 1], got {model_weight!r}")
    if model_probability is None:
        return r
    p = min(1.0, max(0.0, _probability(model_probability, "model_probability")))
    return min(1.0, max(0.0, (1.0 - w) * r + w * p))


def decide(
    risk: float, violations: Sequence[Violation], thresholds: Thresholds | None = None
) -> Decision:
    """The decision for a risk in ``[0, 1]`` and its findings.

    TERMINATE if any EMERGENCY finding has confidence ``>= thresholds.emergency_confidence``
    or ``risk >= terminate``; else BLOCK if ``risk >= block``; else RESTRICT if
    ``risk >= restrict``; else ALLOW.  ``ValueError`` if ``risk`` is NaN or outside
    ``[0, 1]``.
    """
    t = Thresholds() if thresholds is None else thresholds
    r = _probability(risk, "risk")
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"risk must be in [0, 1], got {risk!r}")
    if any(
        v.severity == Severity.EMERGENCY and v.confidence >= t.emergency_confidence
        for v in violations
    ):
        return Decision.TERMINATE
    if r >= t.terminate:
        return Decision.TERMINATE
    if r >= t.block:
        return Decision.BLOCK
    if r >= t.restrict:
        return Decision.RESTRICT
    return Decision.ALLOW


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def validate_action(action: Action) -> None:
    """Raise ``ValueError`` (with a clear message) unless ``action`` is acceptable.

    Rules: ``agent_id`` a non-blank string; ``action_text`` a non-blank string of at most
    :data:`MAX_ACTION_TEXT_BYTES` UTF-8 bytes; ``action_type`` and ``stated_intent``
    strings, the latter at most :data:`MAX_ACTION_TEXT_BYTES` bytes; ``context`` string
    keys and values, values at most :data:`MAX_ACTION_TEXT_BYTES` bytes in total.
    """
    if not isinstance(action, Action):
        raise ValueError(f"expected an Action, got {type(action).__name__}")
    if not isinstance(action.agent_id, str) or not action.agent_id.strip():
        raise ValueError("agent_id must be a non-empty string")
    if not isinstance(action.action_text, str) or not action.action_text.strip():
        raise ValueError("action_text must be a non-empty string")
    size = _utf8_len(action.action_text)
    if size > MAX_ACTION_TEXT_BYTES:
        raise ValueError(
            f"action_text is {size} bytes, more than the {MAX_ACTION_TEXT_BYTES}-byte limit"
        )
    if not isinstance(action.action_type, str):
        raise ValueError("action_type must be a string")
    if not isinstance(action.stated_intent, str):
        raise ValueError("stated_intent must be a string")
    size = _utf8_len(action.stated_intent)
    if size > MAX_ACTION_TEXT_BYTES:
        raise ValueError(
            f"stated_intent is {size} bytes, more than the {MAX_ACTION_TEXT_BYTES}-byte limit"
        )
    total = 0
    for key, value in action.context.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError("context keys and values must be strings")
        total += _utf8_len(value)
    if total > MAX_ACTION_TEXT_BYTES:
        raise ValueError(
            f"context values total {total} bytes, more than the {MAX_ACTION_TEXT_BYTES}-byte limit"
        )


def evaluate_action(
    action: Action,
    model_probability: float | None = None,
    thresholds: Thresholds | None = None,
    model_weight: float = DEFAULT_MODEL_WEIGHT,
) -> Evaluation:
    """Validate, detect, score, blend and decide (see the module docstring).

    ``thresholds`` defaults to ``Thresholds()``.  Raises ``ValueError`` for an invalid
    action (:func:`validate_action`) or an invalid model probability / weight
    (:func:`blend`).
    """
    validate_action(action)
    t = Thresholds() if thresholds is None else thresholds
    violations = tuple(detect(action))
    base = rule_risk(violations)
    risk = blend(base, model_probability, model_weight)
    decision = decide(risk, violations, t)
    confidence = max(v.confidence for v in violations) if violations else 1.0 - risk
    return Evaluation(
        decision=decision,
        risk_score=risk,
        confidence=confidence,
        violations=violations,
        rule_risk=base,
    )
