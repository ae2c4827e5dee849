"""Agents' risk profiles on a node: counts, mean and max risk, recent decisions.

Bounded: at most ``max_agents`` agents (least recently seen dropped first) and
``recent`` entries per agent. Profiles are in-region data: only the in-region
``GetRiskProfile`` RPC returns them.

Profiles merge (:meth:`Profile.merge`): the instances of a region that share a cache each
keep, per agent, the evaluations they added since their last write (a *delta*, see
:meth:`ProfileBook.track_deltas`) and merge it into the cached profile, so no instance's
evaluations replace another's.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Final

from nethical_grpc.governance.decision import DECISION_VALUES
from nethical_grpc.governance.requests import Outcome

DEFAULT_MAX_AGENTS: Final = 100_000
DEFAULT_RECENT: Final = 20


@dataclass(frozen=True, slots=True)
class ProfileEntry:
    time_ns: int
    decision: str
    risk_score: float
    request_id: str
    action_type: str


@dataclass(slots=True)
class Profile:
    """What a node knows of one agent."""

    agent_id: str
    evaluations: int = 0
    risk_sum: float = 0.0
    max_risk: float = 0.0
    decision_counts: dict[str, int] = field(default_factory=dict)
    recent: deque[ProfileEntry] = field(default_factory=lambda: deque(maxlen=DEFAULT_RECENT))
    last_seen_ns: int = 0

    @property
    def mean_risk(self) -> float:
        return self.risk_sum / self.evaluations if self.evaluations else 0.0

    def merge(self, other: Profile, recent: int | None = None) -> Profile:
        """A new profile holding the evaluations of both (neither is changed).

        Counts and risk sums add, ``max_risk`` and ``last_seen_ns`` are the larger, and
        ``recent`` is the newest ``recent`` entries of both (default: the larger of their
        bounds), oldest first, in one fixed order (by time, then the entry's fields), so
        merging is commutative and associative (up to float rounding of ``risk_sum``); an
        empty profile of the agent is its identity. ``ValueError`` for another agent's.
        """
        if other.agent_id != self.agent_id:
            raise ValueError(f"cannot merge {other.agent_id!r}'s profile into {self.agent_id!r}'s")
        if recent is None:
            recent = max(self.recent.maxlen or 0, other.recent.maxlen or 0) or DEFAULT_RECENT
        counts = dict(self.decision_counts)
        for decision, n in other.decision_counts.items():
            counts[decision] = counts.get(decision, 0) + n
        entries = sorted((*self.recent, *other.recent), key=_ENTRY_ORDER)
        return Profile(
            agent_id=self.agent_id,
            evaluations=self.evaluations + other.evaluations,
            risk_sum=self.risk_sum + other.risk_sum,
            max_risk=max(self.max_risk, other.max_risk),
            decision_counts=counts,
            recent=deque(entries[-recent:], maxlen=recent),
            last_seen_ns=max(self.last_seen_ns, other.last_seen_ns),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for a cache); :meth:`from_dict` reverses it."""
        return {
            "agent_id": self.agent_id,
            "evaluations": self.evaluations,
            "risk_sum": self.risk_sum,
            "max_risk": self.max_risk,
            "decision_counts": dict(self.decision_counts),
            "recent": [
                [e.time_ns, e.decision, e.risk_score, e.request_id, e.action_type]
                for e in self.recent
            ],
            "last_seen_ns": self.last_seen_ns,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], recent: int = DEFAULT_RECENT) -> Profile:
        entries = deque(
            (
                ProfileEntry(int(t), str(d), float(r), str(q), str(a))
                for t, d, r, q, a in data["recent"]
            ),
            maxlen=recent,
        )
        return cls(
            agent_id=str(data["agent_id"]),
            evaluations=int(data["evaluations"]),
            risk_sum=float(data["risk_sum"]),
            max_risk=float(data["max_risk"]),
            decision_counts={str(k): int(v) for k, v in data["decision_counts"].items()},
            recent=entries,
            last_seen_ns=int(data["last_seen_ns"]),
        )


#: The order of merged ``recent`` entries: by time, ties broken by the other fields.
_ENTRY_ORDER: Final = attrgetter("time_ns", "request_id", "decision", "risk_score", "action_type")


def _add(profile: Profile, entry: ProfileEntry) -> None:
    """Count one evaluation in ``profile``."""
    risk = entry.risk_score
    profile.evaluations += 1
    profile.risk_sum += risk
    if risk > profile.max_risk:
        profile.max_risk = risk
    counts = profile.decision_counts
    counts[entry.decision] = counts.get(entry.decision, 0) + 1
    profile.recent.append(entry)
    if entry.time_ns > profile.last_seen_ns:
        profile.last_seen_ns = entry.time_ns


class ProfileBook:
    """The node's profiles, least recently seen evicted first past ``max_agents``.

    With :meth:`track_deltas` (a cache other instances share) the book also keeps, per
    agent, a delta: the evaluations added since :meth:`take_deltas`. A writer merges the
    deltas into the cached profiles and gives the results back with :meth:`install_merged`
    (or the deltas, if the write failed, with :meth:`return_deltas`). Without it (the
    default) nothing but the profiles is kept.
    """

    def __init__(self, max_agents: int = DEFAULT_MAX_AGENTS, recent: int = DEFAULT_RECENT):
        if max_agents < 1 or recent < 1:
            raise ValueError("max_agents and recent must be at least 1")
        self.max_agents = max_agents
        self.recent = recent
        self._profiles: OrderedDict[str, Profile] = OrderedDict()
        # None unless track_deltas(): per agent, the evaluations added since take_deltas()
        self.deltas: dict[str, Profile] | None = None
        # agents whose profile was made here and not yet merged with the cached one
        self._unmerged: set[str] = set()

    def __len__(self) -> int:
        return len(self._profiles)

    def get(self, agent_id: str) -> Profile | None:
        return self._profiles.get(agent_id)

    def put(self, profile: Profile) -> None:
        """Install a profile (e.g. loaded from the cache) unless a newer one is held."""
        held = self._profiles.get(profile.agent_id)
        if held is None or held.last_seen_ns < profile.last_seen_ns:
            self._profiles[profile.agent_id] = profile
            self._profiles.move_to_end(profile.agent_id)
            self._trim()

    def update(self, outcomes: Iterable[Outcome]) -> None:
        profiles = self._profiles
        deltas = self.deltas
        values = DECISION_VALUES
        for o in outcomes:
            agent = o.request.action.agent_id
            profile = profiles.get(agent)
            if profile is None:
                profile = Profile(agent, recent=deque(maxlen=self.recent))
                profiles[agent] = profile
                if deltas is not None:
                    self._unmerged.add(agent)
            else:
                profiles.move_to_end(agent)
            ev = o.evaluation
            entry = ProfileEntry(
                o.time_ns,
                values[ev.decision],
                ev.risk_score,
                o.request.request_id,
                o.request.action_type,
            )
            _add(profile, entry)
            if deltas is not None:
                delta = deltas.get(agent)
                if delta is None:
                    delta = deltas[agent] = Profile(agent, recent=deque(maxlen=self.recent))
                _add(delta, entry)
        if len(profiles) > self.max_agents:
            self._trim()

    # -- deltas (a shared cache) ------------------------------------------------------

    def track_deltas(self) -> None:
        """Keep each agent's delta from now on (see the class docstring)."""
        if self.deltas is None:
            self.deltas = {}

    def unmerged(self, agent_id: str) -> bool:
        """Whether the agent's profile here was made on this node and has not been merged
        with the cached one yet (so it holds only this node's latest evaluations)."""
        return agent_id in self._unmerged

    def take_deltas(self) -> dict[str, Profile]:
        """The deltas kept since the last call (empty when deltas are not tracked)."""
        taken = self.deltas
        if not taken:
            return {}
        self.deltas = {}
        return taken

    def return_deltas(self, taken: Mapping[str, Profile]) -> int:
        """Give back deltas whose write failed: kept, merged with newer ones, for the next
        write. At most ``max_agents`` agents' deltas are kept (past that, the oldest taken
        are dropped); returns how many were dropped."""
        if self.deltas is None:
            return 0
        kept = dict(taken)
        for agent, delta in self.deltas.items():
            held = kept.get(agent)
            kept[agent] = delta if held is None else held.merge(delta, self.recent)
        dropped = len(kept) - self.max_agents
        for agent in list(itertools.islice(kept, max(dropped, 0))):
            del kept[agent]
        self.deltas = kept
        return max(dropped, 0)

    def install_merged(self, merged: Mapping[str, Profile]) -> None:
        """Replace the profiles of ``merged``'s agents (each merged with the cache) by the
        merged ones plus what their deltas added since (evaluations during the write);
        agents dropped from the book meanwhile stay out of it."""
        profiles = self._profiles
        deltas = self.deltas or {}
        for agent, profile in merged.items():
            if agent not in profiles:
                continue
            delta = deltas.get(agent)
            profiles[agent] = profile if delta is None else profile.merge(delta, self.recent)
            self._unmerged.discard(agent)

    def _trim(self) -> None:
        while len(self._profiles) > self.max_agents:
            agent, _ = self._profiles.popitem(last=False)
            self._unmerged.discard(agent)
