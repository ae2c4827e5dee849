"""Per-window privacy accountant: accepts up to the budget, refuses past it, atomically."""

from __future__ import annotations

import json

import grpc
import pytest

from nethical_grpc.errors import ResourceExhausted, to_status
from nethical_grpc.privacy import PrivacyAccountant, PrivacyBudgetExhausted
from nethical_grpc.series import SeriesKey

RISK = SeriesKey("risk_score", ())
LATENCY = SeriesKey("latency", (("region", "eu"),))


def test_accepts_up_to_the_budget_and_refuses_the_release_past_it() -> None:
    acc = PrivacyAccountant(1.0)
    for _ in range(10):
        acc.charge([(RISK, 7)], 0.1)  # 0.1 * 10 rounds to 1.0: still accepted
    assert acc.spent((RISK, 7)) == pytest.approx(1.0)
    assert acc.remaining((RISK, 7)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(PrivacyBudgetExhausted) as info:
        acc.charge([(RISK, 7)], 0.1)
    assert acc.spent((RISK, 7)) == pytest.approx(1.0)  # the refusal spent nothing
    exc = info.value
    assert exc.exhausted[0][0] == (RISK, 7)
    assert exc.requested == pytest.approx(0.1)
    assert "risk_score window 7" in exc.message


def test_a_release_larger_than_what_is_left_is_refused() -> None:
    acc = PrivacyAccountant(1.0)
    acc.charge([(RISK, 1)], 0.6)
    with pytest.raises(PrivacyBudgetExhausted):
        acc.charge([(RISK, 1)], 0.5)
    acc.charge([(RISK, 1)], 0.4)  # exactly what is left
    assert acc.remaining((RISK, 1)) == pytest.approx(0.0, abs=1e-12)


def test_parallel_windows_and_series_have_independent_budgets() -> None:
    acc = PrivacyAccountant(1.0)
    acc.charge([(RISK, 1)], 1.0)
    acc.charge([(RISK, 2), (LATENCY, 1)], 1.0)  # other window, other series: both fine
    assert acc.spent((RISK, 2)) == pytest.approx(1.0)
    assert acc.spent((LATENCY, 1)) == pytest.approx(1.0)
    assert acc.spent((RISK, 3)) == 0.0


def test_charge_is_atomic_over_the_covered_windows() -> None:
    acc = PrivacyAccountant(1.0)
    acc.charge([(RISK, 2)], 0.8)
    with pytest.raises(PrivacyBudgetExhausted) as info:
        acc.charge([(RISK, 1), (RISK, 2), (RISK, 3)], 0.5)
    assert acc.spent((RISK, 1)) == 0.0
    assert acc.spent((RISK, 3)) == 0.0
    assert acc.spent((RISK, 2)) == pytest.approx(0.8)
    assert [k for k, _ in info.value.exhausted] == [(RISK, 2)]
    assert info.value.exhausted[0][1] == pytest.approx(0.2)


def test_a_window_covered_twice_in_one_release_is_charged_once() -> None:
    acc = PrivacyAccountant(1.0)
    acc.charge([(RISK, 1), (RISK, 1), (RISK, 1)], 0.5)
    assert acc.spent((RISK, 1)) == pytest.approx(0.5)


def test_exhaustion_maps_to_resource_exhausted_with_details() -> None:
    acc = PrivacyAccountant(0.5)
    keys = [(RISK, w) for w in range(8)]
    acc.charge(keys, 0.5)
    with pytest.raises(PrivacyBudgetExhausted) as info:
        acc.charge(keys, 0.25)
    exc = info.value
    assert isinstance(exc, ResourceExhausted)
    assert exc.reason == "PRIVACY_BUDGET_EXHAUSTED"
    assert exc.metadata["exhausted_windows"] == "8"
    assert exc.metadata["metrics"] == "risk_score"
    assert exc.metadata["least_remaining_epsilon"] == "0"
    assert "and 3 more" in exc.message  # lists five, counts the rest
    status = to_status(exc)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_forget_windows_before_drops_only_old_accounts() -> None:
    acc = PrivacyAccountant(1.0)
    acc.charge([(RISK, w) for w in range(5)], 1.0)
    assert acc.forget_windows_before(3) == 3
    assert len(acc) == 2
    acc.charge([(RISK, 1)], 1.0)  # a forgotten window starts afresh
    with pytest.raises(PrivacyBudgetExhausted):
        acc.charge([(RISK, 3)], 0.1)


def test_snapshot_restores_through_json() -> None:
    acc = PrivacyAccountant(2.0)
    acc.charge([(RISK, 1), (LATENCY, 4)], 1.5)
    rows = json.loads(json.dumps(acc.snapshot()))
    fresh = PrivacyAccountant(2.0)
    fresh.restore(rows)
    assert fresh.spent((LATENCY, 4)) == pytest.approx(1.5)
    with pytest.raises(PrivacyBudgetExhausted):
        fresh.charge([(RISK, 1)], 1.0)
    with pytest.raises(ValueError, match="spent epsilon"):
        fresh.restore([("m", [], 1, -1.0)])


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_budget_or_epsilon_is_a_value_error(bad: float) -> None:
    with pytest.raises(ValueError, match="window_budget"):
        PrivacyAccountant(bad)
    with pytest.raises(ValueError, match="epsilon"):
        PrivacyAccountant(1.0).charge([(RISK, 1)], bad)
