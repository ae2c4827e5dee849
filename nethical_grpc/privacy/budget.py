"""Per-window privacy accounting: epsilon spent per (series, window), refusals when spent.

Composition rules applied (pure epsilon-DP, event level):

* sequential within a window: every release that covers a window adds its epsilon to that
  window's total;
* parallel across windows: an observation lies in exactly one window of one series, so a
  release covering many disjoint windows costs each of them its epsilon once (not the sum).

A charge is atomic: when any covered window would go past the budget, nothing is spent and
:class:`PrivacyBudgetExhausted` names the windows short of budget.

The accountant lives in memory. A node restarted with the same windows (restored from its
store) starts with fresh budgets; persist :meth:`PrivacyAccountant.snapshot` alongside the
windows and :meth:`PrivacyAccountant.restore` it on start to carry budgets across restarts.
Not thread-safe: call it from one thread (the server's event loop).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from nethical_grpc.errors import ResourceExhausted
from nethical_grpc.privacy.config import positive_finite
from nethical_grpc.series import SeriesKey

__all__ = ["AccountRow", "BudgetKey", "PrivacyAccountant", "PrivacyBudgetExhausted"]

#: A budget unit: a series (or, with metric granularity, ``SeriesKey(metric, ())``) and a
#: window id (``start_ns // window_ns``).
BudgetKey = tuple[SeriesKey, int]

#: An account as :meth:`PrivacyAccountant.snapshot` writes it: (metric, labels, window
#: id, spent epsilon).
AccountRow = tuple[str, list[tuple[str, str]], int, float]

#: Relative slack for rounding when spent epsilons are added up (0.1 * 10 == 1.0 passes).
_RTOL: Final = 1e-9
#: How many short windows an error message and its metadata list.
_LISTED: Final = 5


@dataclass
class PrivacyBudgetExhausted(ResourceExhausted):
    """A release would take some covered window past its privacy budget (nothing spent).

    ``exhausted`` lists ``(key, remaining epsilon)`` for every covered window short of
    budget; ``requested`` is the epsilon the release needed from each. Maps to
    RESOURCE_EXHAUSTED with reason ``PRIVACY_BUDGET_EXHAUSTED`` through ``rpc_errors``.
    """

    reason: str = "PRIVACY_BUDGET_EXHAUSTED"
    exhausted: tuple[tuple[BudgetKey, float], ...] = field(default=())
    requested: float = 0.0

    @classmethod
    def for_windows(
        cls, exhausted: list[tuple[BudgetKey, float]], requested: float, budget: float
    ) -> PrivacyBudgetExhausted:
        ordered = tuple(
            sorted(exhausted, key=lambda kr: (kr[0][0].metric, kr[0][0].labels, kr[0][1]))
        )
        listed = ", ".join(_describe(k, rem) for k, rem in ordered[:_LISTED])
        more = f" and {len(ordered) - _LISTED} more" if len(ordered) > _LISTED else ""
        least = min(rem for _, rem in ordered)
        return cls(
            message=(
                f"privacy budget exhausted: the release needs epsilon {requested:g} from each "
                f"covered window (budget {budget:g} per window), but {len(ordered)} window(s) "
                f"have less left: {listed}{more}"
            ),
            metadata={
                "requested_epsilon": f"{requested:g}",
                "window_budget": f"{budget:g}",
                "exhausted_windows": str(len(ordered)),
                "least_remaining_epsilon": f"{least:g}",
                "metrics": ",".join(sorted({k[0].metric for k, _ in ordered})),
                "window_ids": ",".join(str(k[1]) for k, _ in ordered[:_LISTED]),
            },
            exhausted=ordered,
            requested=requested,
        )


def _describe(key: BudgetKey, remaining: float) -> str:
    series, window_id = key
    labels = ",".join(f"{k}={v}" for k, v in series.labels)
    name = f"{series.metric}{{{labels}}}" if labels else series.metric
    return f"{name} window {window_id} ({remaining:g} left)"


class PrivacyAccountant:
    """Epsilon spent per budget key, against one budget per key.

    Args:
        window_budget: the most epsilon any one key may spend in total (finite, > 0).
    """

    def __init__(self, window_budget: float) -> None:
        self.window_budget = positive_finite("window_budget", window_budget)
        self._spent: dict[BudgetKey, float] = {}
        # accounts charged or refunded since clear_changes (what a save must write)
        self._changed: set[BudgetKey] = set()

    def spent(self, key: BudgetKey) -> float:
        """Epsilon spent so far by ``key`` (0 for a key never charged)."""
        return self._spent.get(key, 0.0)

    def remaining(self, key: BudgetKey) -> float:
        """Epsilon ``key`` may still spend (never negative)."""
        return max(0.0, self.window_budget - self.spent(key))

    def _fits(self, spent: float, epsilon: float) -> bool:
        return spent + epsilon <= self.window_budget * (1.0 + _RTOL)

    def shortfalls(
        self, keys: Iterable[BudgetKey], epsilon: float
    ) -> list[tuple[BudgetKey, float]]:
        """``(key, remaining)`` for each key that cannot spend ``epsilon`` more."""
        return [(k, self.remaining(k)) for k in set(keys) if not self._fits(self.spent(k), epsilon)]

    def charge(self, keys: Iterable[BudgetKey], epsilon: float) -> None:
        """Spend ``epsilon`` from every distinct key, or from none.

        Raises:
            ValueError: ``epsilon`` is not a finite number > 0.
            PrivacyBudgetExhausted: some key would exceed the budget; nothing was spent.
        """
        eps = positive_finite("epsilon", epsilon)
        unique = set(keys)
        short = self.shortfalls(unique, eps)
        if short:
            raise PrivacyBudgetExhausted.for_windows(short, eps, self.window_budget)
        for k in unique:
            self._spent[k] = self._spent.get(k, 0.0) + eps
        self._changed |= unique

    def refund(self, keys: Iterable[BudgetKey], epsilon: float) -> None:
        """Undo a :meth:`charge` of ``epsilon`` on ``keys`` whose release never left (its
        accounts could not be saved, say). Only for that: a refund of a release that was
        sent would let its windows be released past their budget. An account the refund
        empties is dropped, as if never charged.

        Raises:
            ValueError: ``epsilon`` is not a finite number > 0.
        """
        eps = positive_finite("epsilon", epsilon)
        unique = set(keys)
        self._changed |= unique
        for k in unique:
            left = self._spent.get(k, 0.0) - eps
            if left > eps * _RTOL:  # not just rounding left over
                self._spent[k] = left
            else:
                self._spent.pop(k, None)

    def forget_windows_before(self, window_id: int) -> int:
        """Drop the accounts of windows with id ``< window_id`` (evicted: their data is gone).

        Returns how many accounts were dropped. Only call it for windows whose data can no
        longer be released, or their budget would start afresh.
        """
        old = [k for k in self._spent if k[1] < window_id]
        for k in old:
            del self._spent[k]
        self._changed.difference_update(old)
        return len(old)

    def snapshot(self) -> list[AccountRow]:
        """The accounts as JSON-ready rows ``(metric, labels, window id, spent epsilon)``."""
        return [
            (key.metric, [(k, v) for k, v in key.labels], window_id, spent)
            for (key, window_id), spent in sorted(
                self._spent.items(), key=lambda kv: (kv[0][0].metric, kv[0][0].labels, kv[0][1])
            )
        ]

    def changed_rows(self) -> list[AccountRow]:
        """Rows (as :meth:`snapshot` writes them) of the accounts charged or refunded since
        :meth:`clear_changes`: what a save after a release must add to the saved ones
        (:meth:`restore` keeps the larger spend, so they may be replayed in any order)."""
        spent = self._spent
        return [
            (key.metric, [(k, v) for k, v in key.labels], window_id, spent[(key, window_id)])
            for key, window_id in self._changed
            if (key, window_id) in spent
        ]

    def clear_changes(self) -> None:
        """Mark every account saved (see :meth:`changed_rows`)."""
        self._changed.clear()

    def restore(self, rows: Iterable[tuple[str, Iterable[tuple[str, str]], int, float]]) -> None:
        """Load rows written by :meth:`snapshot`, keeping the larger spend per key (they
        do not count as changes: see :meth:`changed_rows`)."""
        for metric, labels, window_id, spent in rows:
            key = (
                SeriesKey(str(metric), tuple((str(k), str(v)) for k, v in labels)),
                int(window_id),
            )
            value = float(spent)
            if not (0.0 <= value < float("inf")):
                raise ValueError(f"spent epsilon must be a finite number >= 0, got {spent!r}")
            self._spent[key] = max(self._spent.get(key, 0.0), value)

    def __len__(self) -> int:
        return len(self._spent)
