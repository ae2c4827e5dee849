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

:func:`evaluate_actions` does the same for a batch of actions, with the same results
(bit-identical floats) as :func:`evaluate_action` on each; it resolves and checks the
arguments shared by the batch (thresholds, model weight) once.

Confidence of an :class:`Evaluation`
------------------------------------
* With findings: the highest finding confidence (how sure the strongest evidence is).
* Without findings: ``1 - risk_score``; that is ``1.0`` when no model probability is given
  (nothing was found by deterministic rules), and falls as the model's probability of harm
  rises, since the ALLOW then rests on the rules' silence against the model's concern.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from nethical_grpc.governance.detectors import Action, Severity, Violation, detect
from nethical_grpc.jit_optimizations import calculate_risk_score_jit
from nethical_grpc.validation import utf8_length

__all__ = [
    "DECISION_VALUES",
    "DEFAULT_MODEL_WEIGHT",
    "MAX_ACTION_TEXT_BYTES",
    "Decision",
    "Evaluation",
    "Thresholds",
    "blend",
    "decide",
    "evaluate_action",
    "evaluate_actions",
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


#: Each decision's ``value`` (a plain ``str``), for hot paths: ``Enum.value`` is a
#: property, a Python call on every read, where this is a dictionary lookup.
DECISION_VALUES: Final[Mapping[Decision, str]] = MappingProxyType({d: d.value for d in Decision})


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
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{name} must be a number, got {value!r}")
            try:
                f = float(value)
            except OverflowError:  # an integer past the float range
                f = math.inf
            if not math.isfinite(f):
                raise ValueError(f"{name} must be finite, got {value!r}")
            object.__setattr__(self, name, f)
        if not 0.0 <= self.restrict < self.block < self.terminate <= 1.0:
            raise ValueError(
                "thresholds must satisfy 0 <= restrict < block < terminate <= 1, got "
                f"restrict={self.restrict}, block={self.block}, terminate={self.terminate}"
            )
        if not 0.0 <= self.emergency_confidence <= 1.0:
            raise ValueError(
                f"emergency_confidence must be in [0, 1], got {self.emergency_confidence}"
            )


_DEFAULT_THRESHOLDS: Final = Thresholds()


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
    if type(value) is float and value == value:  # fast path: a float, not NaN
        return value
    # a real number of any type (NumPy scalars such as a model's float32 too), not a bool
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        f = float(value)
    except OverflowError:  # an integer past the float range: as far out as a float goes
        f = math.inf if value > 0 else -math.inf
    if math.isnan(f):
        raise ValueError(f"{name} must not be NaN")
    return f


#: Kernel results by (severity, confidence) sequence (see :func:`rule_risk`); emptied
#: when it reaches :data:`_RISK_CACHE_SIZE` entries.
_RISK_CACHE: dict[tuple[tuple[float, float], ...], float] = {}
_RISK_CACHE_SIZE: Final = 4096


def rule_risk(violations: Sequence[Violation]) -> float:
    """Noisy-OR risk of ``violations`` via ``calculate_risk_score_jit`` (``0.0`` if none).

    Monotone: adding a finding, or raising a severity or confidence, never lowers it.
    The kernel is deterministic, so its result is memoised per sequence of (severity,
    confidence) pairs: few distinct sequences occur, and a repeat costs no kernel call.
    """
    if not violations:
        return 0.0
    key = tuple([(float(v.severity), v.confidence) for v in violations])
    risk = _RISK_CACHE.get(key)
    if risk is None:
        sev = [s for s, _ in key]
        conf = [c for _, c in key]
        risk = min(1.0, max(0.0, calculate_risk_score_jit(sev, conf)))
        if len(_RISK_CACHE) >= _RISK_CACHE_SIZE:
            _RISK_CACHE.clear()
        _RISK_CACHE[key] = risk
    return risk


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
    w = _weight(model_weight)
    if model_probability is None:
        return r
    return _blend_checked(r, model_probability, w)


def _weight(model_weight: float) -> float:
    w = _probability(model_weight, "model_weight")
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"model_weight must be in [0, 1], got {model_weight!r}")
    return w


def _blend_checked(r: float, model_probability: float, w: float) -> float:
    """:func:`blend` for ``r`` in ``[0, 1]``, a checked weight ``w`` and a probability."""
    p = min(1.0, max(0.0, _probability(model_probability, "model_probability")))
    # a weighted average lies between its inputs: kept there against rounding (else r and p
    # both at a threshold could blend to just below it)
    lo, hi = (r, p) if r <= p else (p, r)
    return min(hi, max(lo, (1.0 - w) * r + w * p))


def decide(
    risk: float, violations: Sequence[Violation], thresholds: Thresholds | None = None
) -> Decision:
    """The decision for a risk in ``[0, 1]`` and its findings.

    TERMINATE if any EMERGENCY finding has confidence ``>= thresholds.emergency_confidence``
    or ``risk >= terminate``; else BLOCK if ``risk >= block``; else RESTRICT if
    ``risk >= restrict``; else ALLOW.  ``ValueError`` if ``risk`` is NaN or outside
    ``[0, 1]``.
    """
    t = _DEFAULT_THRESHOLDS if thresholds is None else thresholds
    r = _probability(risk, "risk")
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"risk must be in [0, 1], got {risk!r}")
    return _decide_checked(r, violations, t)


def _decide_checked(r: float, violations: Sequence[Violation], t: Thresholds) -> Decision:
    """:func:`decide` for a risk ``r`` known to be in ``[0, 1]``."""
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
    size = utf8_length(action.action_text)
    if size > MAX_ACTION_TEXT_BYTES:
        raise ValueError(
            f"action_text is {size} bytes, more than the {MAX_ACTION_TEXT_BYTES}-byte limit"
        )
    if not isinstance(action.action_type, str):
        raise ValueError("action_type must be a string")
    if not isinstance(action.stated_intent, str):
        raise ValueError("stated_intent must be a string")
    size = utf8_length(action.stated_intent)
    if size > MAX_ACTION_TEXT_BYTES:
        raise ValueError(
            f"stated_intent is {size} bytes, more than the {MAX_ACTION_TEXT_BYTES}-byte limit"
        )
    total = 0
    for key, value in action.context.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError("context keys and values must be strings")
        total += utf8_length(value)
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
    t = _DEFAULT_THRESHOLDS if thresholds is None else thresholds
    return _scored(action, model_probability, _weight(model_weight), t)


def _scored(
    action: Action,
    p: float | None,
    w: float,
    t: Thresholds,
    found: Sequence[Violation] | None = None,
) -> Evaluation:
    """Detect (unless ``found`` holds :func:`detect`'s answer already), score, blend and
    decide for a validated action and a checked weight."""
    violations = tuple(detect(action) if found is None else found)
    base = rule_risk(violations)
    # blend (base is already in [0, 1]); decide needs no range check of its result
    risk = base if p is None else _blend_checked(base, p, w)
    return Evaluation(
        _decide_checked(risk, violations, t),
        risk,
        max([v.confidence for v in violations]) if violations else 1.0 - risk,
        violations,
        base,
    )


def evaluate_actions(
    actions: Sequence[Action],
    model_probabilities: Sequence[float | None] | npt.NDArray[Any] | None,
    thresholds: Thresholds | None = None,
    model_weight: float = DEFAULT_MODEL_WEIGHT,
    findings: Sequence[Sequence[Violation] | None] | None = None,
) -> list[Evaluation]:
    """:func:`evaluate_action` for a batch: element ``i`` of the result equals
    ``evaluate_action(actions[i], model_probabilities[i], thresholds, model_weight)``
    (``None`` for every action when ``model_probabilities`` is ``None``), same floats.

    ``model_probabilities`` is a sequence (an element may be ``None``: no probability for
    that action) or a 1-D array (read with ``tolist()``, so ``float32`` values are widened
    exactly) of the same length as ``actions``.  Raises ``ValueError``, naming the index,
    for the first invalid action (as :func:`validate_action`) or invalid probability (as
    :func:`blend`), and for a length mismatch or (in a non-empty batch) an invalid
    ``model_weight``.

    When every probability is a ``float`` (or the column a float array) and none is NaN,
    or there are none, the batch is scored in columns (:func:`_scored_batch`): each
    distinct findings object once, the blend and the thresholds over the whole column.
    """
    n = len(actions)
    probabilities: Sequence[float | None]
    if model_probabilities is None:
        probabilities = [None] * n
    else:
        if isinstance(model_probabilities, np.ndarray):
            if model_probabilities.ndim != 1:
                raise ValueError(
                    f"model_probabilities must be 1-D, got shape {model_probabilities.shape}"
                )
            probabilities = model_probabilities.tolist()
        else:
            probabilities = model_probabilities
        if len(probabilities) != n:
            raise ValueError(f"got {len(probabilities)} model probabilities for {n} actions")
    if findings is not None and len(findings) != n:
        raise ValueError(f"got {len(findings)} lists of findings for {n} actions")
    if n == 0:
        return []
    t = _DEFAULT_THRESHOLDS if thresholds is None else thresholds
    w = _weight(model_weight)
    column = _probability_column(model_probabilities, probabilities)
    if column is not None:
        return _scored_batch(actions, column, w, t, findings)
    # a probability that is not a plain finite-or-infinite float (None, NaN, another type
    # of number): action by action, so the first bad entry raises, naming its index
    out: list[Evaluation] = []
    for i in range(n):
        action = actions[i]
        try:
            validate_action(action)
            out.append(
                _scored(action, probabilities[i], w, t, None if findings is None else findings[i])
            )
        except ValueError as exc:
            raise ValueError(f"actions[{i}]: {exc}") from exc
    return out


#: Decisions by their index in :func:`_scored_batch`'s ``levels``, least severe first.
_DECISION_LEVELS: Final[tuple[Decision, ...]] = tuple(Decision)


def _probability_column(
    given: Sequence[float | None] | npt.NDArray[Any] | None,
    probabilities: Sequence[float | None],
) -> npt.NDArray[np.float64] | None:
    """The batch's probabilities as one float64 column when every one is a float and none
    is NaN (an empty column for ``given`` None: no model), else ``None``: the batch is
    then scored action by action, which accepts the other kinds of number and raises for
    the bad ones, naming them."""
    if given is None:
        return np.empty(0)
    if isinstance(given, np.ndarray):
        if given.dtype.kind != "f":
            return None
        column = given.astype(np.float64, copy=False)  # float32 is widened exactly
    else:
        if not set(map(type, probabilities)) <= {float}:
            return None
        column = np.array(probabilities, dtype=np.float64)
    return None if bool(np.isnan(column).any()) else column


def _scored_batch(
    actions: Sequence[Action],
    p: npt.NDArray[np.float64],
    w: float,
    t: Thresholds,
    findings: Sequence[Sequence[Violation] | None] | None,
) -> list[Evaluation]:
    """:func:`_scored` for a batch of actions whose probabilities ``p`` are a float64
    column without NaN (empty: no model probability), in columns: the same floats, bit
    for bit.

    Each distinct list of findings (the same object, as a node's detection workers answer
    for actions that found the same) is scored once: its rule risk, whether it holds an
    EMERGENCY finding sure enough to terminate, and its highest confidence.  The blend and
    the thresholds then run over the whole column, in the same operations as
    :func:`_blend_checked` and :func:`_decide_checked`: ``max(a, b)`` is ``b if b > a
    else a`` and ``min(a, b)`` is ``b if b < a else a``, so signed zeros and ties come out
    as they do there."""
    for i, action in enumerate(actions):
        try:
            validate_action(action)
        except ValueError as exc:
            raise ValueError(f"actions[{i}]: {exc}") from exc
    given = findings if findings is not None else [None] * len(actions)
    found: list[tuple[Violation, ...]] = [
        tuple(detect(a)) if f is None else f if type(f) is tuple else tuple(f)
        for a, f in zip(actions, given, strict=True)
    ]
    # per distinct findings object: rule risk, terminating EMERGENCY, highest confidence
    # (-1.0 for none: the confidence is then 1 - risk)
    scored: dict[int, tuple[float, bool, float]] = {}
    rows = []
    urgent = t.emergency_confidence
    for violations in found:
        row = scored.get(id(violations))
        if row is None:
            row = scored[id(violations)] = (
                rule_risk(violations),
                any(
                    v.severity == Severity.EMERGENCY and v.confidence >= urgent for v in violations
                ),
                max([v.confidence for v in violations]) if violations else -1.0,
            )
        rows.append(row)
    table = np.array(rows, dtype=np.float64).reshape(len(rows), 3)
    base = table[:, 0]
    if len(p):
        # _blend_checked: the probability clipped to [0, 1], the weighted average, kept
        # between its inputs
        p = np.where(p > 0.0, p, 0.0)
        p = np.where(p < 1.0, p, 1.0)
        average = (1.0 - w) * base + w * p
        low_first = base <= p
        lo = np.where(low_first, base, p)
        hi = np.where(low_first, p, base)
        risk = np.where(average > lo, average, lo)
        risk = np.where(risk < hi, risk, hi)
    else:
        risk = base
    levels = np.where(
        (table[:, 1] != 0.0) | (risk >= t.terminate),
        3,
        np.where(risk >= t.block, 2, np.where(risk >= t.restrict, 1, 0)),
    )
    confidence = np.where(table[:, 2] >= 0.0, table[:, 2], 1.0 - risk)
    decisions = _DECISION_LEVELS
    return [
        Evaluation(decisions[level], r, c, v, b)
        for level, r, c, v, b in zip(
            levels.tolist(), risk.tolist(), confidence.tolist(), found, base.tolist(), strict=True
        )
    ]
