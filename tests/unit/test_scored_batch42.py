"""``evaluate_actions`` scores a batch of float probabilities in columns: each distinct
list of findings once, the blend and the thresholds over the whole column.  It must give
exactly what ``evaluate_action`` gives per action, bit for bit, and refuse what it
refuses, naming the same entry."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_governance_batch import _corpus, _one_by_one, _same

from nethical_grpc.governance import decision as dec
from nethical_grpc.governance import detect_pool
from nethical_grpc.governance.decision import (
    Decision,
    Evaluation,
    Thresholds,
    evaluate_action,
    evaluate_actions,
)
from nethical_grpc.governance.detectors import (
    Action,
    Severity,
    Violation,
    ViolationType,
    decode_findings,
    detect,
    detect_encoded,
)

# probabilities at and around the default thresholds, the ends, outside them, infinite
_EDGES = [0.0, -0.0, 1.0, -0.5, 1.5, math.inf, -math.inf, 0.3, 0.6, 0.85, 0.2999999999999999]


def _single(
    action: Action,
    p: float | None,
    found: tuple[Violation, ...],
    thresholds: Thresholds | None = None,
    weight: float = dec.DEFAULT_MODEL_WEIGHT,
) -> Evaluation:
    """``evaluate_action``'s steps on given findings (what a worker found)."""
    dec.validate_action(action)
    return dec._scored(action, p, dec._weight(weight), thresholds or dec._DEFAULT_THRESHOLDS, found)


def test_float_probabilities_in_a_column_equal_evaluate_action() -> None:
    actions = _corpus(800, seed=21)
    rng = random.Random(22)
    probabilities = [rng.choice([*_EDGES, rng.random(), rng.random()]) for _ in actions]
    found = _one_by_one(actions, list(probabilities))
    assert {e.decision for e in found} == set(Decision)  # every decision is reached
    _same(evaluate_actions(actions, probabilities), found)
    _same(evaluate_actions(actions, np.array(probabilities)), found)


def test_probabilities_on_the_thresholds_decide_as_evaluate_action() -> None:
    """With no findings the risk is the probability itself (weight 1): each threshold
    and its neighbours below decide as the scalar path does (inclusive cut-offs)."""
    t = Thresholds(0.25, 0.5, 0.75)
    values = [v for x in (0.25, 0.5, 0.75) for v in (math.nextafter(x, 0.0), x)]
    actions = [Action(f"a{i}", "list files in the workspace", "query") for i in values]
    batch = evaluate_actions(actions, values, t, 1.0)
    assert [e.decision for e in batch] == [
        Decision.ALLOW,
        Decision.RESTRICT,
        Decision.RESTRICT,
        Decision.BLOCK,
        Decision.BLOCK,
        Decision.TERMINATE,
    ]
    _same(batch, _one_by_one(actions, list(values), t, 1.0))


def test_float32_column_is_widened_exactly() -> None:
    actions = _corpus(200, seed=23)
    p32 = np.random.default_rng(24).random(len(actions)).astype(np.float32)
    _same(evaluate_actions(actions, p32), _one_by_one(actions, [float(p) for p in p32]))


def test_workers_shared_findings_score_as_their_own() -> None:
    """Findings as a node's detection workers hand them over (one shared tuple per
    distinct answer, :func:`detect_pool.decoded`), as lists, and left to detect here, in
    one batch: each action's evaluation is that of its own findings."""
    actions = _corpus(400, seed=25)
    rng = random.Random(26)
    probabilities: list[float | None] = [rng.random() for _ in actions]
    given_: list[tuple[Violation, ...] | list[Violation] | None] = []
    for i, a in enumerate(actions):
        kind = i % 3
        if kind == 0:
            given_.append(detect_pool.decoded(detect_encoded(a)))
        elif kind == 1:
            given_.append(detect(a))
        else:
            given_.append(None)
    batch = evaluate_actions(actions, probabilities, findings=given_)
    _same(batch, _one_by_one(actions, probabilities))


def test_nan_in_an_array_is_refused_naming_it() -> None:
    actions = _corpus(3, seed=27)
    with pytest.raises(ValueError, match=r"actions\[1\]: model_probability must not be NaN"):
        evaluate_actions(actions, np.array([0.1, math.nan, 0.2]))


def test_a_bad_action_before_a_nan_is_named_first() -> None:
    """Action by action, the first bad entry is named, action or probability."""
    actions = [*_corpus(2, seed=28), Action("agent", "", "x")]
    with pytest.raises(ValueError, match=r"actions\[1\]: model_probability must not be NaN"):
        evaluate_actions(actions, [0.1, math.nan, 0.2])
    with pytest.raises(ValueError, match=r"actions\[2\]: action_text"):
        evaluate_actions(actions, [0.1, 0.2, 0.3])


def test_decoded_findings_are_shared_and_equal_the_decoding() -> None:
    actions = _corpus(300, seed=29)
    shared: dict[object, tuple[Violation, ...]] = {}
    for a in actions:
        encoded = detect_encoded(a)
        found = detect_pool.decoded(encoded)
        assert type(found) is tuple
        assert list(found) == decode_findings(*encoded) == detect(a)
        if encoded in shared:
            assert found is shared[encoded]
        shared[encoded] = found
    assert detect_pool.decoded(((), None)) == ()
    assert len(detect_pool._DECODED) <= detect_pool._DECODED_SIZE


_SEVERITIES = list(Severity)
_violation = st.builds(
    Violation,
    st.sampled_from(list(ViolationType)),
    st.sampled_from(_SEVERITIES),
    st.sampled_from([0.0, 0.5, 0.89, 0.9, 0.95, 1.0]) | st.floats(0.0, 1.0),
    st.just("m"),
    st.sampled_from(["r1", "r2"]),
)
_probability = st.sampled_from(_EDGES) | st.floats(-2.0, 3.0, allow_nan=False)


@st.composite
def _thresholds(draw: st.DrawFn) -> Thresholds:
    cuts = sorted(draw(st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3, unique=True)))
    restrict, block, terminate = cuts
    return Thresholds(restrict, block, terminate, draw(st.floats(0.0, 1.0)))


@settings(max_examples=300, deadline=None)
@given(
    groups=st.lists(st.lists(_violation, max_size=4).map(tuple), min_size=1, max_size=4),
    picks=st.lists(st.tuples(st.integers(0, 3), _probability), min_size=1, max_size=24),
    thresholds=_thresholds(),
    weight=st.sampled_from([0.0, 1.0, dec.DEFAULT_MODEL_WEIGHT]) | st.floats(0.0, 1.0),
)
def test_columns_equal_the_scalar_path(
    groups: list[tuple[Violation, ...]],
    picks: list[tuple[int, float]],
    thresholds: Thresholds,
    weight: float,
) -> None:
    """Any findings (shared between actions or not), probabilities, thresholds and
    weight: the same evaluations as the scalar path, floats bit for bit."""
    actions = [Action(f"a{i}", "list files", "query") for i in range(len(picks))]
    found = [groups[k % len(groups)] for k, _ in picks]
    probabilities = [p for _, p in picks]
    expected = [
        _single(a, p, f, thresholds, weight)
        for a, p, f in zip(actions, probabilities, found, strict=True)
    ]
    _same(evaluate_actions(actions, probabilities, thresholds, weight, found), expected)
    _same(evaluate_actions(actions, np.array(probabilities), thresholds, weight, found), expected)
    assert [e.violations for e in expected] == found
    without_model = [
        _single(a, None, f, thresholds, weight) for a, f in zip(actions, found, strict=True)
    ]
    _same(evaluate_actions(actions, None, thresholds, weight, found), without_model)


def test_scalar_reference_is_evaluate_action() -> None:
    """The helper above is ``evaluate_action`` when the findings are detected."""
    for a in _corpus(50, seed=30):
        assert _single(a, 0.4, tuple(detect(a))) == evaluate_action(a, 0.4)
