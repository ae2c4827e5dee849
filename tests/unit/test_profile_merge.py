"""Merging agents' risk profiles, and the deltas a book keeps for a shared cache."""

from __future__ import annotations

import random
from collections import deque

import pytest

from nethical_grpc.governance.decision import Decision, Evaluation
from nethical_grpc.governance.detectors import Action
from nethical_grpc.governance.profiles import Profile, ProfileBook, ProfileEntry
from nethical_grpc.governance.requests import EvaluationRequest, Outcome

DECISIONS = list(Decision)


def outcome(agent: str, risk: float, time_ns: int, n: int = 0) -> Outcome:
    decision = DECISIONS[n % len(DECISIONS)]
    request = EvaluationRequest(Action(agent, "SELECT 1", "query"), f"req-{n}", "query")
    return Outcome(request, Evaluation(decision, risk, 0.9), 0.5, 1_000, time_ns)


def built(agent: str, seed: int, evaluations: int, recent: int = 5) -> Profile:
    """A profile of ``evaluations`` random evaluations at random times, in time order (as a
    node sees them), made by a book."""
    rng = random.Random(seed)
    times = sorted(rng.randrange(1, 10**6) for _ in range(evaluations))
    book = ProfileBook(recent=recent)
    book.update(
        outcome(agent, round(rng.random(), 3), t, seed * 1000 + i) for i, t in enumerate(times)
    )
    found = book.get(agent)
    assert found is not None
    return found


def same(a: Profile, b: Profile) -> None:
    assert a.agent_id == b.agent_id
    assert a.evaluations == b.evaluations
    assert a.risk_sum == pytest.approx(b.risk_sum, rel=1e-12)
    assert a.max_risk == b.max_risk
    assert a.decision_counts == b.decision_counts
    assert list(a.recent) == list(b.recent)
    assert a.recent.maxlen == b.recent.maxlen
    assert a.last_seen_ns == b.last_seen_ns


def test_merge_adds_counts_and_keeps_the_newest_recent_entries_in_time_order() -> None:
    a, b = built("x", 1, 7), built("x", 2, 4)
    m = a.merge(b)
    assert m.evaluations == 11
    assert m.risk_sum == pytest.approx(a.risk_sum + b.risk_sum)
    assert m.max_risk == max(a.max_risk, b.max_risk)
    for d in set(a.decision_counts) | set(b.decision_counts):
        assert m.decision_counts[d] == a.decision_counts.get(d, 0) + b.decision_counts.get(d, 0)
    assert m.last_seen_ns == max(a.last_seen_ns, b.last_seen_ns)
    assert m.recent.maxlen == 5 and len(m.recent) == 5
    times = [e.time_ns for e in m.recent]
    assert times == sorted(times)
    newest = sorted((*a.recent, *b.recent), key=lambda e: e.time_ns)[-5:]
    assert times == [e.time_ns for e in newest]
    # neither input changed
    assert a.evaluations == 7 and b.evaluations == 4


def test_merge_is_commutative_and_associative_with_the_empty_profile_as_identity() -> None:
    for seed in range(20):
        a, b, c = (built("x", seed * 3 + k, 1 + (seed + k) % 9) for k in range(3))
        same(a.merge(b), b.merge(a))
        same(a.merge(b).merge(c), a.merge(b.merge(c)))
        empty = Profile("x", recent=deque(maxlen=5))
        same(a.merge(empty), a)
        same(empty.merge(a), a)


def test_merge_orders_entries_of_the_same_time_the_same_way_whatever_the_order() -> None:
    def entry(request_id: str) -> ProfileEntry:
        return ProfileEntry(100, "ALLOW", 0.1, request_id, "query")

    a = Profile("x", 1, 0.1, 0.1, {"ALLOW": 1}, deque([entry("r2")], maxlen=2), 100)
    b = Profile("x", 2, 0.2, 0.1, {"ALLOW": 2}, deque([entry("r3"), entry("r1")], maxlen=2), 100)
    assert [e.request_id for e in a.merge(b).recent] == ["r2", "r3"]
    assert [e.request_id for e in b.merge(a).recent] == ["r2", "r3"]


def test_merge_bounds_recent_by_the_given_bound_or_the_larger_one() -> None:
    a, b = built("x", 1, 6, recent=3), built("x", 2, 6, recent=5)
    assert a.merge(b).recent.maxlen == 5 and len(a.merge(b).recent) == 5
    assert len(a.merge(b, recent=2).recent) == 2
    assert a.merge(b, recent=2).recent.maxlen == 2


def test_merge_refuses_another_agents_profile() -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        built("x", 1, 2).merge(built("y", 2, 2))


def test_merged_profiles_survive_the_cache_form() -> None:
    m = built("x", 1, 8).merge(built("x", 2, 3))
    same(Profile.from_dict(m.to_dict(), recent=5), m)


def test_a_book_keeps_no_deltas_unless_asked() -> None:
    book = ProfileBook()
    book.update([outcome("x", 0.5, 10)])
    assert book.deltas is None
    assert book.take_deltas() == {}
    assert not book.unmerged("x")


def test_a_tracking_book_keeps_what_each_agent_added_since_the_last_take() -> None:
    book = ProfileBook(recent=4)
    book.track_deltas()
    book.update([outcome("x", 0.2, 10, 0), outcome("x", 0.6, 20, 1), outcome("y", 0.1, 15, 2)])
    assert book.unmerged("x") and book.unmerged("y")
    first = book.take_deltas()
    assert {a: d.evaluations for a, d in first.items()} == {"x": 2, "y": 1}
    assert first["x"].max_risk == 0.6 and first["x"].last_seen_ns == 20
    book.update([outcome("x", 0.3, 30, 3)])
    second = book.take_deltas()
    assert {a: d.evaluations for a, d in second.items()} == {"x": 1}
    assert [e.time_ns for e in second["x"].recent] == [30]
    local = book.get("x")
    assert local is not None and local.evaluations == 3  # the node's own view: everything


def test_install_merged_adds_what_came_during_the_write() -> None:
    book = ProfileBook(recent=4)
    book.track_deltas()
    book.update([outcome("x", 0.2, 10, 0)])
    taken = book.take_deltas()
    cached = Profile("x", 20, 4.0, 0.9, {"ALLOW": 20}, deque(maxlen=4), 5)
    merged = {"x": cached.merge(taken["x"])}
    book.update([outcome("x", 0.3, 30, 1)])  # while the write awaited the cache
    book.install_merged(merged)
    local = book.get("x")
    assert local is not None and local.evaluations == 22 and local.max_risk == 0.9
    assert not book.unmerged("x")
    # the evaluation during the write is still to be written
    assert {a: d.evaluations for a, d in book.take_deltas().items()} == {"x": 1}


def test_returned_deltas_merge_with_newer_ones_and_stay_bounded() -> None:
    book = ProfileBook(max_agents=2, recent=4)
    book.track_deltas()
    book.update([outcome("x", 0.2, 10, 0), outcome("y", 0.2, 10, 1)])
    taken = book.take_deltas()
    book.update([outcome("x", 0.4, 20, 2)])
    assert book.return_deltas(taken) == 0
    kept = book.take_deltas()
    assert {a: d.evaluations for a, d in kept.items()} == {"x": 2, "y": 1}
    assert [e.time_ns for e in kept["x"].recent] == [10, 20]
    book.update([outcome("z", 0.1, 30, 3)])
    assert book.return_deltas(kept) == 1  # three agents' deltas, two kept: the oldest goes
    assert set(book.take_deltas()) == {"y", "z"}
