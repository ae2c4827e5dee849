"""The region node's domain object: identity, windows, ingest and summary queries."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Final

import numpy as np
import numpy.typing as npt

from nethical_grpc import convert
from nethical_grpc.privacy import PrivacyConfig, PrivateReleaser, clip_to_bound
from nethical_grpc.series import (
    DataGap,
    GroupSummary,
    IngestBatch,
    Labels,
    SeriesKey,
    SummaryQuery,
)
from nethical_grpc.summary import Summary
from nethical_grpc.v1 import region_node_pb2
from region_node.wal import BatchIds, WriteAheadLog
from region_node.windows import WindowConfig, WindowStore

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: The node's own observations (evaluations' metrics) reach the windows in bulk, at the
#: latest this long after the first waiting one, or once this many values wait (and
#: always before the windows are read).
INTERNAL_DELAY_S: Final = 0.05
INTERNAL_PENDING_VALUES: Final = 8192
# windows merged into rollup windows between turns of the event loop (about 25 us each)
ROLLUP_STEP: Final = 300
# distinct failures of the window maintenance logged until a turn succeeds (a bound on
# the texts kept, not on the log: past it, they are logged again)
_MAX_LOGGED_FAILURES: Final = 64


def merge_groups(parts: Sequence[Sequence[GroupSummary]]) -> list[GroupSummary]:
    """Merge group summaries of the same metric and labels from several sources."""
    merged: dict[tuple[str, Labels], list[GroupSummary]] = {}
    for groups in parts:
        for g in groups:
            merged.setdefault((g.metric, g.labels), []).append(g)
    out = []
    for (metric, labels), items in sorted(merged.items(), key=lambda kv: kv[0]):
        out.append(
            GroupSummary(
                metric=metric,
                labels=labels,
                summary=Summary.merge_all(g.summary for g in items),
                start_ns=min(g.start_ns for g in items),
                end_ns=max(g.end_ns for g in items),
                data_as_of_ns=max(g.data_as_of_ns for g in items),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    region_id: str
    instance_id: str
    # True when this node's store holds the whole region's data (shared store or a
    # replica fed the region's full stream); False when instances hold disjoint data.
    region_scope: bool = False


class RegionNode:
    """Holds a region node's state; the servicer calls it, nothing here knows gRPC."""

    def __init__(
        self,
        identity: NodeIdentity,
        windows: WindowConfig | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.identity = identity
        self.clock = clock
        self.store = WindowStore(windows, clock=clock)
        # the region's other instances' flushed windows, when this node answers for the
        # whole region from a shared store (see region_node.persistence)
        self._peers: WindowStore | None = None
        self.wal: WriteAheadLog | None = None
        # the last log segment whose batches wait for replay_wal (see hold_wal)
        self._held_through: int | None = None
        self.privacy: PrivacyConfig | None = None
        self.privacy_releaser: PrivateReleaser | None = None
        self.batch_ids = BatchIds()
        self._peers_loaded = 0
        #: region scope: when the region's other instances' windows were last read from
        #: the shared store (node clock), None before the first read that succeeded; they
        #: hold what those instances had flushed by then
        self.peers_read_ns: int | None = None
        # data this node keeps but cannot answer from for now, by reason (see gaps_for)
        self._gaps: dict[str, DataGap] = {}
        #: changes whenever the gaps do (a cached answer names them)
        self.gaps_version = 0
        self._evictor: asyncio.Task[None] | None = None
        self.data_as_of_ns = 0
        # the node's own observations (evaluations) not yet in the windows: per series and
        # window, the value arrays and the newest time (see record_internal)
        self._pending: dict[tuple[SeriesKey, int], tuple[list[FloatArray], int]] = {}
        self._pending_values = 0
        self._pending_timer: asyncio.TimerHandle | None = None

    def ingest(self, batch: IngestBatch, raw: bytes | None = None) -> bool:
        """Check and apply one batch atomically (raises before any change).

        Returns False, changing nothing, when the batch's id was applied before (a retry).
        With a write-ahead log, ``raw`` (the IngestRequest bytes) is logged before the
        batch is applied; :meth:`sync` makes it durable.
        """
        if batch.batch_id and batch.batch_id in self.batch_ids:
            return False
        if self.wal is not None and raw is None:
            raise ValueError("a node with a write-ahead log needs the batch's request bytes")
        self.store.check_times(batch, self.clock())
        self._check_capacity((batch.key,))
        if self.wal is not None and raw is not None:
            self.wal.append(raw, batch.time_ns)
        self.store.apply(self._bounded(batch))
        if batch.batch_id:
            self.batch_ids.add(batch.batch_id)
        return True

    def _bounded(self, batch: IngestBatch) -> IngestBatch:
        """With differential privacy, values are clipped to its public bound on the way in."""
        if self.privacy is None:
            return batch
        return replace(batch, values=clip_to_bound(batch.values, self.privacy))

    async def sync(self) -> None:
        """Make every ingested batch durable (no-op without a write-ahead log)."""
        if self.wal is not None:
            await asyncio.to_thread(self.wal.sync)

    def hold_wal(self, wal: WriteAheadLog, *, apply: bool = False) -> int:
        """Log to ``wal`` from now on, knowing the batch ids of the batches it holds (a
        retry of one is a duplicate); returns how many it holds. Call it before the node
        takes any batch: one taken before would be neither logged nor checked against
        the log.

        The held batches' data waits for :meth:`replay_wal`, which the restore calls once
        the store has said which of the log's segments its windows hold already; until
        then the log is not checkpointed (no flush runs before the restore), so those
        segments stay as they are. With ``apply`` (a store that keeps no windows, so none
        of the log is in it) they are applied as they are read instead, in one pass."""
        held = 0
        for _, batch in self._logged_batches(wal, -1, None, quiet=False):
            if batch.batch_id:
                wal.batch_ids.add(batch.batch_id)
            if apply:
                self.store.apply(self._bounded(batch))
            held += 1
        self.wal = wal
        self.batch_ids = wal.batch_ids
        # batches appended from now on go to the current segment: they are in the windows
        self._held_through = None if apply else wal.current_segment - 1
        return held

    def replay_wal(self, stored_through: int = -1) -> int:
        """Apply the batches :meth:`hold_wal` held, but those of segments up to
        ``stored_through``: those are in the windows restored from the store already (a
        flush committed, and the node stopped before its checkpoint). Returns how many were
        applied; later calls apply nothing.

        Each held batch is applied, whatever the ids known: the log holds a batch once,
        and the checkpoint's ids may name batches of the segments after it (taken while
        the flush that it ends ran)."""
        through, self._held_through = self._held_through, None
        if self.wal is None or through is None:
            return 0
        replayed = 0
        for _, batch in self._logged_batches(self.wal, stored_through, through, quiet=True):
            self.store.apply(self._bounded(batch))
            replayed += 1
        return replayed

    @property
    def holds_log(self) -> bool:
        """Batches of the write-ahead log wait for :meth:`replay_wal`."""
        return self._held_through is not None

    @staticmethod
    def _logged_batches(
        wal: WriteAheadLog, after: int, through: int | None, *, quiet: bool
    ) -> Iterator[tuple[int, IngestBatch]]:
        """(segment, batch) of the log's records in segments after ``after`` up to
        ``through``; a record that no longer parses is skipped (logged unless ``quiet``)."""
        for segment, time_ns, payload in wal.replay_segments(after, through):
            try:
                request = region_node_pb2.IngestRequest.FromString(payload)
                batch = convert.ingest_batch_from_proto(request, time_ns)
            except Exception as exc:  # intact but no longer acceptable (e.g. new limits)
                if not quiet:
                    log.warning("skipping a logged batch that no longer parses: %s", exc)
                continue
            yield segment, batch

    @property
    def version(self) -> tuple[int, int]:
        """Changes whenever an answer could: own windows, or a fresh load of the peers'."""
        self.apply_pending()
        return (self.store.version, self._peers_loaded)

    def version_for(self, query: SummaryQuery) -> tuple[object, int]:
        """:attr:`version` for the answers to ``query``: it changes when the data of the
        query's metrics does (or the peers'), not when another metric's does, so a
        cached answer (and a noised one, which would cost budget again) lasts longer."""
        self.apply_pending()
        return (self.store.version_of(query.metrics), self._peers_loaded)

    def windows_for(self, query: SummaryQuery) -> tuple[object, object]:
        """What says which windows an answer to ``query`` merges (the node's and the
        peers'), beyond their data: it changes with no new data when the rollup horizon
        passes the start or the end of the query's range, which from then on covers its
        rollup window whole (windows not rolled up yet, and the gaps there). Once per
        edge of the range, not at every step of the horizon; always the same for a range
        unbounded on both sides."""
        start, end = query.start_ns, query.end_ns
        peers = self._peers
        return (
            self.store.window_starts(start, end),
            None if peers is None else peers.window_starts(start, end),
        )

    def set_gap(self, gap: DataGap) -> None:
        """From now on answers name ``gap`` (replacing one of the same reason) where the
        query's range reaches into it."""
        if self._gaps.get(gap.reason) != gap:
            self._gaps[gap.reason] = gap
            self.gaps_version += 1

    def clear_gap(self, reason: str) -> None:
        """The data of the gap of ``reason`` is back (or was never missing)."""
        if self._gaps.pop(reason, None) is not None:
            self.gaps_version += 1

    def gap_reasons(self) -> list[str]:
        """The reasons of the gaps the node's answers may name now."""
        return list(self._gaps)

    def gaps_for(self, query: SummaryQuery) -> list[DataGap]:
        """The gaps an answer to ``query`` has: a gap holds the windows that start in it,
        and the answer merges every window its range overlaps whole (a rollup window
        whole), so those windows' starts are what must stay out of it."""
        if not self._gaps:
            return []
        start, end = self.store.window_starts(query.start_ns, query.end_ns)
        if self._peers is not None:
            peer_start, peer_end = self._peers.window_starts(query.start_ns, query.end_ns)
            start = None if start is None or peer_start is None else min(start, peer_start)
            end = None if end is None or peer_end is None else max(end, peer_end)
        return [g for g in self._gaps.values() if g.overlaps(start, end)]

    @property
    def peers(self) -> WindowStore | None:
        return self._peers

    @peers.setter
    def peers(self, store: WindowStore | None) -> None:
        self._peers = store
        self._peers_loaded += 1

    def record_internal(self, batches: Sequence[IngestBatch]) -> None:
        """Record observations the node made itself (already valid, no per-value times),
        all or none (capacity is checked here).

        They reach the windows in bulk: one update per series and window for many small
        batches, applied before anything reads the windows (:meth:`summaries`,
        :attr:`version`, :meth:`apply_pending`), once ``INTERNAL_PENDING_VALUES`` wait, and
        at most ``INTERNAL_DELAY_S`` after the first of them.
        """
        self._check_capacity(b.key for b in batches)
        window_ns = self.store.config.window_ns
        pending = self._pending
        for batch in batches:
            slot = (batch.key, batch.time_ns // window_ns)
            found = pending.get(slot)
            if found is None:
                pending[slot] = ([batch.values], batch.time_ns)
            else:
                found[0].append(batch.values)
                if batch.time_ns > found[1]:
                    pending[slot] = (found[0], batch.time_ns)
            self._pending_values += batch.values.size
        if self._pending_values >= INTERNAL_PENDING_VALUES:
            self.apply_pending()
        elif pending and self._pending_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop to wait on: apply now
                self.apply_pending()
            else:
                self._pending_timer = loop.call_later(INTERNAL_DELAY_S, self.apply_pending)

    def _check_capacity(self, keys: Iterable[SeriesKey]) -> None:
        """The windows' caps, counting the series recorded internally and not applied yet
        too (each call admitted one more new series while they waited)."""
        self.store.check_capacity(itertools.chain(keys, (key for key, _ in self._pending)))

    def apply_pending(self) -> None:
        """Put the recorded internal observations into the windows (see record_internal)."""
        if self._pending_timer is not None:
            self._pending_timer.cancel()
            self._pending_timer = None
        if not self._pending:
            return
        pending, self._pending, self._pending_values = self._pending, {}, 0
        for (key, _), (parts, newest_ns) in pending.items():
            values = parts[0] if len(parts) == 1 else np.concatenate(parts)
            self.store.apply(self._bounded(IngestBatch(key, values, None, newest_ns)))

    def summaries(self, query: SummaryQuery) -> list[GroupSummary]:
        self.apply_pending()
        own = self.store.summaries(query)
        if self.peers is None:
            return own
        return merge_groups([own, self.peers.summaries(query)])

    async def run_eviction(self, interval_s: float) -> None:
        """:meth:`maintain_windows` every ``interval_s``. A failure is logged (each distinct
        one once, until a turn succeeds) and the loop goes on: were it to end, windows
        would never roll up or expire again, and the node's memory would grow for good."""
        failures: set[str] = set()
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.maintain_windows()
            except Exception as exc:
                what = f"{type(exc).__name__}: {exc}"
                if what not in failures:
                    if len(failures) >= _MAX_LOGGED_FAILURES:
                        failures.clear()
                    failures.add(what)
                    log.exception("window maintenance failed (retried every %g s)", interval_s)
            else:
                if failures:
                    failures.clear()
                    log.info("window maintenance succeeds again")

    async def maintain_windows(self) -> None:
        """Roll windows past the rollup horizon up, drop those past retention, and forget
        the privacy budgets of windows whose data is gone.

        The rollup goes :data:`ROLLUP_STEP` windows at a time, letting the event loop
        serve calls in between: at a rollup window's edge every series has one due, and
        a restart restores a day of windows at full width."""
        self.apply_pending()
        now = self.clock()
        merged = 0
        while True:
            step = self.store.roll_up(now, limit=ROLLUP_STEP)
            merged += step
            if step < ROLLUP_STEP:
                break
            await asyncio.sleep(0)
        if merged:
            log.debug("rolled %d windows up", merged)
        dropped = self.store.evict_expired(now)
        if dropped:
            log.debug("dropped %d windows past retention", dropped)
        if self.privacy_releaser is not None:
            # a rollup window answers for all of its windows until it goes: their
            # budgets stay until then
            self.privacy_releaser.forget_windows_before(self.store.kept_from_id(now))

    def start_background(self, interval_s: float = 5.0) -> None:
        if self._evictor is None:
            self._evictor = asyncio.get_running_loop().create_task(self.run_eviction(interval_s))

    async def stop_background(self) -> None:
        if self._evictor is not None:
            self._evictor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._evictor
            self._evictor = None
        self.apply_pending()  # nothing waits on a timer of a loop that is going away
