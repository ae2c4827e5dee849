"""The detectors' literal prefilter only skips work: it never changes a finding."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_governance_detectors import NEGATIVES, POSITIVES

from nethical_grpc.governance import detectors
from nethical_grpc.governance.detectors import RULES, Action, detect


def _detect_without_prefilter(action: Action, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    with monkeypatch.context() as m:
        m.setattr(detectors._ActionView, "may_fire", lambda self, rule, name: True)
        m.setattr(detectors._ActionView, "may_fire_anywhere", lambda self, rule: True)
        return list(detect(action))


def _corpus() -> list[str]:
    return [text for text, *_ in POSITIVES] + [text for text, *_ in NEGATIVES]


def test_required_literals_occur_in_every_positive_match() -> None:
    # For each rule with literals, every text where one of its patterns matches contains
    # one of the literals (case-folded): the property the prefilter rests on.
    plan = detectors._Prefilter(RULES)
    checked = 0
    for rule in RULES:
        for pattern in rule.patterns:
            lits = plan.required_literals(pattern)
            if lits is None:
                continue
            for text in _corpus():
                m = pattern.search(text)
                if m is None:
                    continue
                checked += 1
                assert any(lit in m.group(0).casefold() for lit in lits), (rule.name, text)
    assert checked >= len(RULES) // 2


@pytest.mark.parametrize("text", _corpus())
def test_prefilter_keeps_every_finding_on_the_corpus(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    action = Action("agent", text, "command", stated_intent=text[:80], context={"note": text})
    assert detect(action) == _detect_without_prefilter(action, monkeypatch)


_FRAGMENTS = sorted(
    {frag for text, *_ in POSITIVES for frag in re.split(r"(\s+)", text) if frag}
    | {"ſ", "K", "İ", "ß", "ＤＲＯＰ", "\u200b", "--", "/**/", "$(", "|", ";", "://"}
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=24))
def test_prefilter_keeps_every_finding_on_mixed_fragments(parts: list[str]) -> None:
    text = "".join(parts)
    if not text.strip():
        return
    action = Action("agent", text, "command", stated_intent=text[::-1])
    with pytest.MonkeyPatch.context() as m:
        m.setattr(detectors._ActionView, "may_fire", lambda self, rule, name: True)
        m.setattr(detectors._ActionView, "may_fire_anywhere", lambda self, rule: True)
        expected = list(detect(action))
    assert detect(action) == expected
