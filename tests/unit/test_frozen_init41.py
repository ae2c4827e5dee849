"""``quick_init``: the frozen dataclasses made per action build the same objects as their
generated ``__init__`` (kept as ``__wrapped__``), refuse the same calls, run their
``__post_init__``, stay frozen, hash, compare, replace and pickle as before."""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import FrozenInstanceError, dataclass, field
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nethical_grpc.frozen_init import quick_init
from nethical_grpc.governance.decision import Decision, Evaluation
from nethical_grpc.governance.detectors import Action, Severity, Violation, ViolationType
from nethical_grpc.governance.profiles import ProfileEntry
from nethical_grpc.governance.requests import EvaluationRequest, Outcome


def _generated(cls: type[Any], *args: Any, **kwargs: Any) -> Any:
    """An instance built by the dataclass's own generated ``__init__``."""
    made = object.__new__(cls)
    cls.__init__.__wrapped__(made, *args, **kwargs)
    return made


def _outcome_of(what: Any) -> tuple[str, Any]:
    try:
        return "ok", what()
    except Exception as exc:
        return type(exc).__name__, str(exc).split("(")[0][-40:]


VIOLATION = Violation(ViolationType.PROMPT_INJECTION, Severity.HIGH, 0.75, "an override", "r1")
ACTION = Action("agent-1", "DROP TABLE t", "query", "cleanup", {"k": "v"})
REQUEST = EvaluationRequest(ACTION, "req-1", "query")
EVALUATION = Evaluation(Decision.BLOCK, 0.9, 0.8, (VIOLATION,), 0.95)

CALLS: list[tuple[type[Any], tuple[Any, ...], dict[str, Any]]] = [
    (Action, ("a", "text", "query"), {}),
    (Action, ("a", "text", "query", "intent"), {"context": {"x": "y"}}),
    (Action, (), {"agent_id": "a", "action_text": "t", "action_type": "q"}),
    (Action, ("a",), {}),  # missing fields
    (Action, ("a", "t", "q", "i", {}, "extra"), {}),  # one too many
    (Action, ("a", "t", "q"), {"colour": "red"}),  # no such field
    (EvaluationRequest, (ACTION, "r", "query"), {}),
    (EvaluationRequest, (ACTION,), {"request_id": "r", "action_type": "query"}),
    (Outcome, (REQUEST, EVALUATION, 0.5, 1_000, 2_000), {}),
    (Evaluation, (Decision.ALLOW, 0.1, 0.9), {}),
    (Evaluation, (Decision.RESTRICT, 0.5, 0.6, (VIOLATION,)), {"rule_risk": 0.4}),
    (ProfileEntry, (1, "ALLOW", 0.1, "r", "query"), {}),
    (Violation, (ViolationType.PERSONAL_DATA, Severity.LOW, 0.5, "m", "d"), {}),
    (Violation, ("PERSONAL_DATA", 2, 1, "m", "d"), {}),  # normalised by __post_init__
    (Violation, (ViolationType.PERSONAL_DATA, Severity.LOW, 1.5, "m", "d"), {}),  # refused
]


@pytest.mark.parametrize(("cls", "args", "kwargs"), CALLS)
def test_the_same_object_or_the_same_refusal(
    cls: type[Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    quick = _outcome_of(lambda: cls(*args, **kwargs))
    generated = _outcome_of(lambda: _generated(cls, *args, **kwargs))
    assert quick == generated
    if quick[0] == "ok":
        made = quick[1]
        assert repr(made) == repr(generated[1])
        assert _outcome_of(lambda: hash(made)) == _outcome_of(lambda: hash(generated[1]))
        assert type(made) is cls


def test_post_init_still_runs() -> None:
    context = {"k": "v"}
    action = Action("a", "t", "q", "", context)
    assert isinstance(action.context, MappingProxyType)
    context["k"] = "changed"  # copied, not shared
    assert action.context["k"] == "v"
    assert Action("a", "t", "q").context is Action("b", "u", "r").context  # the shared empty one
    violation = Violation("PERSONAL_DATA", 3, 1, "m", "d")  # type: ignore[arg-type]
    assert violation.type is ViolationType.PERSONAL_DATA and violation.severity is Severity(3)
    assert type(violation.confidence) is float


@pytest.mark.parametrize("made", [ACTION, REQUEST, EVALUATION, VIOLATION])
def test_still_frozen_and_still_a_dataclass(made: Any) -> None:
    first = dataclasses.fields(made)[0].name
    with pytest.raises(FrozenInstanceError):
        setattr(made, first, None)
    assert dataclasses.replace(made) == made
    if not isinstance(made, Action | EvaluationRequest):  # (an action's context: a proxy)
        assert pickle.loads(pickle.dumps(made)) == made


def test_only_frozen_slotted_dataclasses_without_init_false_fields() -> None:
    class Plain:
        pass

    @dataclass(slots=True)
    class Unfrozen:
        a: int

    @dataclass(frozen=True)
    class Unslotted:
        a: int

    @dataclass(frozen=True, slots=True)
    class Derived:
        a: int
        b: int = field(init=False, default=0)

    for cls in (Plain, Unfrozen, Unslotted, Derived):
        with pytest.raises(TypeError, match="quick_init takes"):
            quick_init(cls)


@quick_init
@dataclass(frozen=True, slots=True)
class _Mixed:
    a: int
    b: str = "b"
    c: tuple[int, ...] = field(default_factory=tuple)
    d: list[int] = field(default_factory=list, kw_only=True)
    e: float = field(default=0.5, kw_only=True)


@given(
    a=st.integers(),
    rest=st.lists(st.sampled_from(["b", "c"]), unique=True),
    keywords=st.lists(st.sampled_from(["d", "e", "a"]), unique=True),
)
def test_defaults_factories_and_keyword_only_fields(
    a: int, rest: list[str], keywords: list[str]
) -> None:
    values: dict[str, Any] = {"a": a, "b": "given", "c": (1, 2), "d": [3], "e": 1.5}
    positional = [a, *(values[n] for n in ("b", "c") if n in rest)]
    named = {n: values[n] for n in keywords}
    quick = _outcome_of(lambda: _Mixed(*positional, **named))
    generated = _outcome_of(lambda: _generated(_Mixed, *positional, **named))
    assert quick == generated
    if quick[0] == "ok":
        # a factory's default is a fresh object each time, as the generated one makes it
        assert _Mixed(1).d is not _Mixed(1).d
