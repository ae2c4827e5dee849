"""Agents' risk profiles on a node: counts, mean and max risk, recent decisions.

Bounded: at most ``max_agents`` agents (least recently seen dropped first) and
``recent`` entries per agent. Profiles are in-region data: only the in-region
``GetRiskProfile`` RPC returns them.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

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


class ProfileBook:
    """The node's profiles, least recently seen evicted first past ``max_agents``."""

    def __init__(self, max_agents: int = DEFAULT_MAX_AGENTS, recent: int = DEFAULT_RECENT):
        if max_agents < 1 or recent < 1:
            raise ValueError("max_agents and recent must be at least 1")
        self.max_agents = max_agents
        self.recent = recent
        self._profiles: OrderedDict[str, Profile] = OrderedDict()
        self.changed: set[str] = set()

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
        for o in outcomes:
            agent = o.request.action.agent_id
            profile = self._profiles.get(agent)
            if profile is None:
                profile = Profile(agent, recent=deque(maxlen=self.recent))
                self._profiles[agent] = profile
            else:
                self._profiles.move_to_end(agent)
            ev = o.evaluation
            decision = ev.decision.value
            profile.evaluations += 1
            profile.risk_sum += ev.risk_score
            profile.max_risk = max(profile.max_risk, ev.risk_score)
            profile.decision_counts[decision] = profile.decision_counts.get(decision, 0) + 1
            profile.recent.append(
                ProfileEntry(
                    o.time_ns, decision, ev.risk_score, o.request.request_id, o.request.action_type
                )
            )
            profile.last_seen_ns = max(profile.last_seen_ns, o.time_ns)
            self.changed.add(agent)
        self._trim()

    def take_changed(self) -> list[Profile]:
        """Profiles changed since the last call (for writing through to a cache)."""
        out = [p for a in self.changed if (p := self._profiles.get(a)) is not None]
        self.changed.clear()
        return out

    def _trim(self) -> None:
        while len(self._profiles) > self.max_agents:
            agent, _ = self._profiles.popitem(last=False)
            self.changed.discard(agent)
