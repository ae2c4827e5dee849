"""Writing a node's agents' risk profiles to the region's shared cache (Redis), and
reading them back.

* **Merged, not replaced**: the node keeps, per agent, the evaluations it added since its
  last write (a delta, :class:`~nethical_grpc.governance.profiles.ProfileBook`); a write
  reads the cached profiles of those agents, merges the deltas in
  (:meth:`Profile.merge`: counts add, max of max, newest recent entries) and writes the
  results, which become the node's own profiles (plus what it added meanwhile). Each
  chunk of :data:`PROFILE_CHUNK` agents is one atomic update (``Cache.update_multiple``:
  ``WATCH``, ``MGET``, ``MULTI``/``SET``/``EXEC``): when another instance wrote one of
  them in between, Redis refuses it and the chunk is merged again with what that
  instance wrote. So a restarted node counts on from the cached profile, and the
  instances sharing a region's cache add up their evaluations, also when they write the
  same agents at once.
* **Each delta counted once, also when a write's outcome is unknown**: a write that
  failed may still have been applied (Redis ran the ``EXEC``, its answer was lost: a
  timeout or a broken connection after the request went out). Every write carries a
  token, this process's writer id and a sequence number that only grows, and stores it
  in the profiles it writes (:data:`WRITES_FIELD`: writer id → the last sequence number
  written, for the :data:`MAX_WRITERS` latest writers of the agent). The deltas of a
  failed write are kept *in doubt* with its sequence number; the next write of the agent
  merges them in only if the cached profile does not carry that number (or a later one)
  for this writer, inside the same atomic update. A chunk's update that the cache runs
  again after a broken connection (which redis-py reports as a conflict) finds its own
  number when the first run was applied, and adds nothing again. Limits: an agent's
  token is forgotten once :data:`MAX_WRITERS` other processes wrote the agent after it,
  and past :data:`MAX_IN_DOUBT` failed writes of one agent in a row the oldest two are
  kept as one (with the later number); in either case an applied write may count twice. Nodes of an
  earlier version drop the tokens when they write an agent (their writes are merged as
  before; ours after theirs may then count twice).
* **While Redis is away** the deltas wait (bounded: at most the book's ``max_agents``
  agents, the oldest dropped and logged) and are merged once it is back: merges read and
  write Redis itself (``Cache.on_primary``), never the cache's memory stand-in, whose
  write-back would overwrite.
* Nothing is written to a ``memory://`` cache, which no other instance sees.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Final

from nethical_grpc.governance.profiles import Profile, ProfileBook
from region_node.stores import NodeStores

log = logging.getLogger(__name__)

PROFILE_TTL_S: Final = 7 * 24 * 3600.0
PROFILE_PREFIX: Final = "profile:"
#: Agents whose profiles one atomic cache update merges (a conflict retries only these).
PROFILE_CHUNK: Final = 256
#: The field of a cached profile that holds its writers' tokens (writer id → sequence).
WRITES_FIELD: Final = "writes"
#: Writers' tokens a cached profile keeps (the latest, by sequence number).
MAX_WRITERS: Final = 8
#: Failed writes of one agent whose deltas are kept apart (see the module docstring).
MAX_IN_DOUBT: Final = 4

#: A delta whose write failed, with that write's sequence number.
InDoubt = tuple[int, Profile]


def writes_of(data: object) -> dict[str, int]:
    """The writers' tokens of a cached profile (empty when it has none or they are not
    well formed)."""
    if not isinstance(data, Mapping):
        return {}
    writes = data.get(WRITES_FIELD)
    if not isinstance(writes, Mapping):
        return {}
    return {
        k: v
        for k, v in writes.items()
        if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
    }


def latest_writes(writes: Mapping[str, int], most: int = MAX_WRITERS) -> dict[str, int]:
    """The ``most`` tokens with the highest sequence numbers."""
    if len(writes) <= most:
        return dict(writes)
    return dict(sorted(writes.items(), key=lambda kv: kv[1])[-most:])


def _log_dropped(dropped: int) -> None:
    if dropped:
        log.error("risk profile writes fall behind: dropped %d agents' deltas", dropped)


class ProfileWriter:
    """Writes one node's profile deltas to the region's cache (see the module docstring)."""

    def __init__(self, stores: NodeStores, profiles: ProfileBook) -> None:
        self.stores = stores
        self.profiles = profiles
        if stores.shared_cache:
            profiles.track_deltas()
        #: this process's writer id (random: a restarted node is another writer)
        self.writer_id = uuid.uuid4().hex[:12]
        self._seq = 0
        #: per agent, the deltas of its failed writes, oldest first
        self.in_doubt: dict[str, list[InDoubt]] = {}

    def _next_seq(self) -> int:
        # grows within the process whatever the clock does; from the clock, so that the
        # latest writers of an agent are the ones whose tokens a profile keeps
        self._seq = max(self._seq + 1, time.time_ns())
        return self._seq

    def pending(self) -> bool:
        """Whether a :meth:`write` has deltas to send (new ones, or ones in doubt)."""
        return self.stores.shared_cache and bool(self.profiles.deltas or self.in_doubt)

    async def write(self) -> None:
        """Merge the deltas (and those still in doubt) into the cached profiles."""
        if not self.pending():
            # nothing to send; or a memory:// cache, this process's alone, whose profiles
            # the book already holds
            return
        deltas = self.profiles.take_deltas()
        if self.stores.cache_choice.fallback:
            # Redis is away: merged into the memory copy, a profile would be written back
            # over what Redis holds (other instances' evaluations, this node's older ones)
            # when it returns; the deltas wait for Redis instead (bounded)
            self._keep(deltas)
            return
        agents = [*deltas, *(a for a in self.in_doubt if a not in deltas)]
        # on Redis itself: an outage starting now fails this write (the deltas are kept,
        # and the cache turns to memory mode), rather than merging into the stand-in
        done = 0
        try:
            for start in range(0, len(agents), PROFILE_CHUNK):
                chunk = agents[start : start + PROFILE_CHUNK]
                seq = self._next_seq()
                try:
                    merged = await self._merge(chunk, deltas, seq)
                except BaseException:
                    # it may have been applied: its deltas wait in doubt, with its number
                    self._doubt({a: deltas[a] for a in chunk if a in deltas}, seq)
                    done = start + len(chunk)
                    raise
                done = start + len(chunk)
                for agent in chunk:
                    self.in_doubt.pop(agent, None)
                self.profiles.install_merged(merged)
        except BaseException as exc:
            # what was not sent is kept for the next round (a stop that cut the write
            # short: for the stop's own)
            self._keep({a: deltas[a] for a in agents[done:] if a in deltas})
            if not isinstance(exc, Exception):
                raise
            log.warning("writing risk profiles to the cache failed (will retry): %s", exc)

    async def _merge(
        self, agents: list[str], deltas: Mapping[str, Profile], seq: int
    ) -> dict[str, Profile]:
        """Merge the agents' deltas (and those in doubt that their cached profiles do not
        hold yet) into their cached profiles on Redis, atomically; the merged profiles."""
        recent = self.profiles.recent
        writer, in_doubt = self.writer_id, self.in_doubt
        merged: dict[str, Profile] = {}

        def merge(cached: dict[str, object]) -> dict[str, object]:
            # called again when another instance wrote one of the agents meanwhile
            merged.clear()
            values: dict[str, object] = {}
            for agent in agents:
                found = cached.get(PROFILE_PREFIX + agent)
                profile = self._profile_from(found)
                if profile is None or profile.agent_id != agent:
                    profile, writes = Profile(agent, recent=deque(maxlen=recent)), {}
                else:
                    writes = writes_of(found)
                applied = writes.get(writer, 0)
                if applied < seq:
                    for doubt_seq, doubt in in_doubt.get(agent, ()):
                        if doubt_seq > applied:  # that write did not reach the cache
                            profile = profile.merge(doubt, recent)
                    delta = deltas.get(agent)
                    if delta is not None:
                        profile = profile.merge(delta, recent)
                # else this very write was applied: the transaction ran, its answer was
                # lost and the cache runs it again (redis-py reports the broken
                # connection of a watched transaction as a conflict); the cached
                # profile holds its deltas already
                writes[writer] = seq
                value = profile.to_dict()
                value[WRITES_FIELD] = latest_writes(writes)
                merged[agent] = profile
                values[PROFILE_PREFIX + agent] = value
            return values

        keys = [PROFILE_PREFIX + a for a in agents]
        await self.stores.cache.on_primary(
            lambda cache: cache.update_multiple(keys, merge, ttl=PROFILE_TTL_S)
        )
        return merged

    def _doubt(self, deltas: Mapping[str, Profile], seq: int) -> None:
        """Keep the deltas of a write that failed, which may have been applied."""
        recent = self.profiles.recent
        for agent, delta in deltas.items():
            kept = self.in_doubt.setdefault(agent, [])
            kept.append((seq, delta))
            if len(kept) > MAX_IN_DOUBT:
                (_, older), (later_seq, later) = kept[0], kept[1]
                kept[:2] = [(later_seq, older.merge(later, recent))]
        dropped = max(len(self.in_doubt) - self.profiles.max_agents, 0)
        for agent in list(itertools.islice(self.in_doubt, dropped)):  # the oldest
            del self.in_doubt[agent]
        _log_dropped(dropped)

    def _keep(self, deltas: dict[str, Profile]) -> None:
        """Back into the book for the next write (bounded: the oldest go past it)."""
        _log_dropped(self.profiles.return_deltas(deltas))

    def _profile_from(self, data: object) -> Profile | None:
        if not isinstance(data, dict):
            return None
        try:
            return Profile.from_dict(data, recent=self.profiles.recent)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            # AttributeError: a mapping field that is not one (``decision_counts`` a list)
            log.warning("ignoring a malformed cached profile: %s", exc)
            return None

    async def load(self, agent_id: str) -> Profile | None:
        """A profile from the cache (written by this or another instance), or None."""
        if not self.stores.shared_cache:
            return None  # profiles are never written to a memory:// cache
        try:
            data = await self.stores.cache.get(PROFILE_PREFIX + agent_id)
        except Exception as exc:
            log.warning("reading a risk profile from the cache failed: %s", exc)
            return None
        profile = self._profile_from(data)
        if profile is not None and profile.agent_id != agent_id:
            # not this agent's (a malformed entry): answered as its would be, it named
            # another agent, and merged with this node's it failed the call
            log.warning(
                "ignoring a cached profile of %r under %r's key", profile.agent_id, agent_id
            )
            return None
        return profile
