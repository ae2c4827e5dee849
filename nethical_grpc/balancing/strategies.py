"""Pick policies over a precomputed pool of usable instances.

Each pool (all usable instances, and one per region) owns a picker. The balancer calls
:meth:`Picker.reset` when the pool's membership changes (health flip, add/remove,
ejection), so a pick never filters: round robin and random are O(1), smooth weighted
round robin replays a precomputed cycle, least connections keeps instances in buckets
by in-flight count and moves them as calls start and finish.

``pick`` is only called on a non-empty pool. ``pick_among`` serves the rare slow path
(retries excluding instances already tried) over an explicit candidate list.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from nethical_grpc.balancing.instance import Instance

# Smooth WRR cycles longer than this are generated in chunks instead of all at once.
WRR_CHUNK = 4096


class LoadBalancingStrategy(enum.Enum):
    ROUND_ROBIN = "round_robin"
    LEAST_CONNECTIONS = "least_connections"
    WEIGHTED_ROUND_ROBIN = "weighted_round_robin"
    RANDOM = "random"
    REGION_AWARE = "region_aware"


class Picker(Protocol):
    def reset(self, members: Sequence[Instance]) -> None: ...

    def pick(self) -> Instance: ...

    def pick_among(self, candidates: Sequence[Instance]) -> Instance: ...

    def load_changed(self, inst: Instance, old: int, new: int) -> None: ...


class RoundRobinPicker:
    """Strict rotation; the position survives membership changes."""

    __slots__ = ("_members", "_n", "_next")

    def __init__(self) -> None:
        self._members: tuple[Instance, ...] = ()
        self._n = 0
        self._next = 0

    def reset(self, members: Sequence[Instance]) -> None:
        self._members = tuple(members)
        self._n = len(self._members)
        self._next = self._next % self._n if self._n else 0

    def pick(self) -> Instance:
        i = self._next
        self._next = i + 1 if i + 1 < self._n else 0
        return self._members[i]

    def pick_among(self, candidates: Sequence[Instance]) -> Instance:
        i = self._next
        self._next = i + 1 if i + 1 < self._n else 0
        return candidates[i % len(candidates)]

    def load_changed(self, inst: Instance, old: int, new: int) -> None:
        pass


class RandomPicker:
    """Uniform choice from a (seedable) ``random.Random``."""

    __slots__ = ("_members", "_n", "_random")

    def __init__(self, rng: random.Random) -> None:
        self._members: tuple[Instance, ...] = ()
        self._n = 0
        self._random = rng.random

    def reset(self, members: Sequence[Instance]) -> None:
        self._members = tuple(members)
        self._n = len(self._members)

    def pick(self) -> Instance:
        return self._members[int(self._random() * self._n)]

    def pick_among(self, candidates: Sequence[Instance]) -> Instance:
        return candidates[int(self._random() * len(candidates))]

    def load_changed(self, inst: Instance, old: int, new: int) -> None:
        pass


def smooth_wrr_sequence(
    weights: Sequence[int], length: int, current: np.ndarray | None = None
) -> tuple[list[int], np.ndarray]:
    """The nginx smooth weighted round robin order, as indices into ``weights``.

    Each step adds every weight to its current value, picks the largest (first on a
    tie) and subtracts the total from it. Returns ``length`` picks and the final state
    (pass it back to continue the same sequence).
    """
    w = np.asarray(weights, dtype=np.int64)
    total = int(w.sum())
    cur = np.zeros_like(w) if current is None else current.copy()
    out: list[int] = []
    append = out.append
    argmax = cur.argmax
    for _ in range(length):
        cur += w
        i = int(argmax())
        cur[i] -= total
        append(i)
    return out, cur


class SmoothWeightedPicker:
    """nginx smooth weighted round robin, replayed from a precomputed cycle.

    The sequence repeats every ``sum(w) / gcd(w)`` picks; it is computed on the first
    pick after a membership change (once per change, not per pick). Cycles longer than
    :data:`WRR_CHUNK` are generated a chunk at a time from the carried state.
    """

    __slots__ = ("_among", "_cycle", "_members", "_pos", "_seq", "_state", "_weights")

    def __init__(self) -> None:
        self._members: tuple[Instance, ...] = ()
        self._weights: list[int] = []
        self._seq: list[Instance] = []
        self._pos = 0
        self._cycle = 0
        self._state: np.ndarray | None = None
        self._among: dict[Instance, int] = {}  # pick_among's current values

    def reset(self, members: Sequence[Instance]) -> None:
        self._members = tuple(members)
        self._among = {}
        self._weights = [max(1, int(m.weight)) for m in self._members]
        self._seq = []
        self._pos = 0
        self._state = None
        if self._weights:
            g = math.gcd(*self._weights)
            self._weights = [x // g for x in self._weights]
        self._cycle = sum(self._weights)

    def _refill(self) -> None:
        length = min(self._cycle, WRR_CHUNK)
        idx, state = smooth_wrr_sequence(self._weights, length, self._state)
        members = self._members
        self._seq = [members[i] for i in idx]
        self._pos = 0
        # A whole cycle returns the state to zero: replay it; otherwise carry the state.
        self._state = None if length == self._cycle else state

    def pick(self) -> Instance:
        pos = self._pos
        if pos >= len(self._seq):
            if self._state is not None or not self._seq:
                self._refill()
            pos = 0
        self._pos = pos + 1
        return self._seq[pos]

    def pick_among(self, candidates: Sequence[Instance]) -> Instance:
        """Smooth weighted round robin over ``candidates`` alone, O(len(candidates)),
        with a state of its own: the sequence first attempts follow is left as it is."""
        current = self._among
        total = 0
        best: Instance | None = None
        best_value = 0
        for c in candidates:
            w = max(1, int(c.weight))
            value = current.get(c, 0) + w
            current[c] = value
            total += w
            if best is None or value > best_value:
                best, best_value = c, value
        assert best is not None  # candidates is never empty
        current[best] = best_value - total
        return best

    def load_changed(self, inst: Instance, old: int, new: int) -> None:
        pass


class LeastConnectionsPicker:
    """Fewest in-flight calls; ties rotate. Buckets by in-flight count, O(1) updates.

    ``_buckets[k]`` holds (as an insertion-ordered dict) the members with ``k`` calls
    in flight; ``_low`` is a lower bound on the lowest non-empty bucket.
    """

    __slots__ = ("_buckets", "_low")

    def __init__(self) -> None:
        self._buckets: list[dict[Instance, bool]] = [{}]
        self._low = 0

    def reset(self, members: Sequence[Instance]) -> None:
        top = max((m.in_flight for m in members), default=0)
        self._buckets = [{} for _ in range(top + 1)]
        for m in members:
            self._buckets[m.in_flight][m] = True
        self._low = 0

    def pick(self) -> Instance:
        buckets = self._buckets
        low = self._low
        while not buckets[low]:
            low += 1
        self._low = low
        bucket = buckets[low]
        inst = next(iter(bucket))
        del bucket[inst]  # rotate ties: move to the back of its bucket
        bucket[inst] = True
        return inst

    def pick_among(self, candidates: Sequence[Instance]) -> Instance:
        return min(candidates, key=lambda c: c.in_flight)

    def load_changed(self, inst: Instance, old: int, new: int) -> None:
        buckets = self._buckets
        if old >= len(buckets) or buckets[old].pop(inst, None) is None:
            return  # not a member of this pool
        while new >= len(buckets):
            buckets.append({})
        buckets[new][inst] = True
        if new < self._low:
            self._low = new


def make_picker(strategy: LoadBalancingStrategy, rng: random.Random) -> Picker:
    if strategy is LoadBalancingStrategy.LEAST_CONNECTIONS:
        return LeastConnectionsPicker()
    if strategy is LoadBalancingStrategy.WEIGHTED_ROUND_ROBIN:
        return SmoothWeightedPicker()
    if strategy is LoadBalancingStrategy.RANDOM:
        return RandomPicker(rng)
    # ROUND_ROBIN, and REGION_AWARE within the region it routes to.
    return RoundRobinPicker()
