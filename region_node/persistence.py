"""What a region node writes to its stores, and reads back.

* **Window summaries** are flushed to the time-series store every ``flush_interval``: each
  window changed since the last flush is upserted (idempotent, keyed by region, instance,
  series and window start). On start the node restores its own windows, so a restart keeps
  its aggregates; what a kill can cost is what changed since the last flush, at most one
  flush interval of data.
* **Region scope over a shared store**: when the node answers for the whole region
  (``--region-scope``) and its time-series store is a server the region's instances share
  (PostgreSQL), it also loads the other instances' flushed windows and merges them into
  its answers: all of them at the start, then on every flush those flushed since (by the
  store's change numbers). Their data is then at most one flush interval stale (plus the
  other instance's own flush delay). Windows an instance flushed with another width (its
  own ``--window``) cannot be merged: they are left out, and the answers name them (a
  PEERS_WINDOW_MISMATCH gap) while any is within the retention. So are this instance's
  own windows flushed with another width (an earlier ``--window``): not restored, and
  named (a STORED_WINDOWS_OTHER_WIDTH gap) while any is within the retention.
* **Evaluations**: each one becomes a ``risk_score`` row for its agent in the time-series
  store and a record in the audit store, written in batches a fraction of a second later
  (off the request path); agents' profiles are written to a shared (Redis) cache every
  ``PROFILE_INTERVAL_S`` (and on stop), so another instance of the region, or this one
  after a restart, can answer ``GetRiskProfile`` for them (not to a ``memory://`` cache,
  which no other instance sees).
* **Profiles** are merged into the cached ones, each evaluation counted once also when a
  write's outcome is unknown: see :mod:`region_node.profile_writes`.
* **Retention**: at the start and every ``RETENTION_INTERVAL_S`` the time-series store's
  own retention is applied (``--retention`` only bounds the windows a node holds in
  memory; older windows live in the store until this cutoff), and the audit store's
  (``--audit-retention-days``; Elasticsearch applies its own, by its lifecycle policy),
  :data:`AUDIT_RETENTION_STEP` records a round.

Store failures never fail a request: the write is kept and retried on the next round (up
to a bound, past which the oldest is dropped and counted). A write that failed may have
been stored all the same (the answer to its commit lost): its retry is stored once, audit
records by their ids, a batch of metric rows by its number where the store keeps them
(PostgreSQL; an embedded store has no such doubt). Stores that answer but fall
behind a sustained load hold new evaluations back instead (:meth:`Persister.room`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from operator import attrgetter, itemgetter
from typing import Any, Final, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from nethical_grpc import convert, telemetry
from nethical_grpc.event_wait import wait_until
from nethical_grpc.governance.decision import DECISION_VALUES
from nethical_grpc.governance.detectors import Violation
from nethical_grpc.governance.profiles import ProfileBook
from nethical_grpc.governance.requests import Outcome
from nethical_grpc.series import DataGap, SeriesKey, freeze_labels
from nethical_grpc.storage.audit import AuditRecord, AuditViolation
from nethical_grpc.storage.audit.model import MAX_VIOLATIONS, check_storable, to_utc_us
from nethical_grpc.storage.timeseries import WindowSummaryRow
from nethical_grpc.storage.timeseries.model import JSONValue, check_window_rows
from nethical_grpc.summary import Summary
from nethical_grpc.v1 import summary_pb2
from region_node.evaluation import RISK_METRIC, UNSPECIFIED_ACTION_TYPE
from region_node.node import RegionNode
from region_node.profile_writes import ProfileWriter
from region_node.stores import NodeStores, reportable_problem
from region_node.windows import WindowStore

log = logging.getLogger(__name__)

#: The store rounds' tick. Short, so that each round's burst of record writing is small:
#: the writer threads take the interpreter (and, on two cores, a core) from the event loop
#: while they index, and every unary call in flight was late together at each 0.25 s
#: round (Evaluate p99 16-20 ms against 12.5-17.5 ms at 0.05 s, in alternated runs).
WRITE_INTERVAL_S: Final = 0.05
#: Changed profiles go to the cache this often (a busy node changes every agent's profile
#: each round; writing them every round cost more CPU than the evaluations' records).
PROFILE_INTERVAL_S: Final = 1.0
MAX_PENDING: Final = 200_000
#: Records waiting for a store past which new evaluations wait for the stores (while
#: they answer, only slower than the node evaluates: a sustained stream), until no more
#: than BACKLOG_LOW wait, for at most BACKLOG_WAIT_S a batch. Without it a node under
#: sustained load filled its queues to MAX_PENDING and then dropped records.
BACKLOG_HIGH: Final = 150_000
BACKLOG_LOW: Final = 100_000
BACKLOG_WAIT_S: Final = 5.0
#: "writes fall behind" is logged at most this often (with the records dropped since).
_DROP_LOG_INTERVAL_S: Final = 10.0
_WRITE_BATCH: Final = 5_000
#: Distinct (decision, action type) metadata mappings kept for reuse.
_METADATA_KINDS: Final = 1_024
#: The row a flush writes with its windows, in the same transaction, when the node keeps
#: a write-ahead log: "this log's segments up to ``count`` are in the store" (labels: the
#: log's id). Its name is no metric's (a space), and it starts where no window does, past
#: any retention cutoff.
WAL_MARK_METRIC: Final = "wal checkpoint"
_WAL_MARK_START_NS: Final = 2**62
#: On a store that keeps nothing across a restart, the write-ahead log is rotated when its
#: current segment is this share of the windows' retention old (or a flush interval, if
#: longer), so that a segment past the retention can be deleted whole: about 64 segments.
LOG_SEGMENTS_PER_RETENTION: Final = 64
#: Stored windows are restored (and the peers' loaded) this much time at a time.
RESTORE_SLICE_NS: Final = 600 * 1_000_000_000
#: A restore (or a load of the peers' windows) says how far it got at most this often:
#: a day of windows takes a minute or more, and the node answers NOT_SERVING meanwhile.
PROGRESS_LOG_S: Final = 10.0
#: How often the time-series store's retention is applied (first at the loop's start):
#: rows older than the store's retention go, and window summaries with them.
RETENTION_INTERVAL_S: Final = 3600.0
#: Audit records past the retention one store round deletes at most (about 0.3-0.7 s of
#: the writer thread at 30-70 µs a record); a larger backlog takes further rounds,
#: AUDIT_RETENTION_CATCH_UP_S apart, so the evaluations' records are written in between.
AUDIT_RETENTION_STEP: Final = 10_000
AUDIT_RETENTION_CATCH_UP_S: Final = 1.0
#: The longest a stopping node waits for its stores to take what is still pending.
STOP_WRITE_LIMIT_S: Final = 5.0


#: Distinct findings whose stored form is kept for reuse (detectors report a few dozen).
_KNOWN_FINDINGS: Final = 4_096


def _merged(
    windows: list[tuple[SeriesKey, int, Summary, int]],
) -> list[tuple[SeriesKey, int, Summary, int]]:
    """Decoded windows with the copies of one series' window (several instances')
    merged into one."""
    by_window: dict[tuple[SeriesKey, int], tuple[SeriesKey, int, Summary, int]] = {}
    for key, window_id, summary, newest in windows:
        held = by_window.get((key, window_id))
        if held is None:
            by_window[key, window_id] = (key, window_id, summary, newest)
        else:
            held[2].merge_from(summary)
            by_window[key, window_id] = (key, window_id, held[2], max(held[3], newest))
    return list(by_window.values())


def _newest_versions(rows: list[WindowSummaryRow]) -> list[WindowSummaryRow]:
    """``rows`` with one row per window (series and start): the last of each."""
    by_window = {(r.metric, freeze_labels(r.labels), r.window_start_ns): r for r in rows}
    return list(by_window.values())


def _decoded(row: WindowSummaryRow) -> Summary | None:
    """A stored window's summary; None, logged, when it does not decode."""
    try:
        return convert.summary_from_proto(summary_pb2.Summary.FromString(row.payload))
    except Exception as exc:
        log.warning("skipping an unreadable stored window %s %s: %s", row.metric, row.labels, exc)
        return None


class _Progress:
    """How far a load of stored windows got, logged at most every :data:`PROGRESS_LOG_S`."""

    def __init__(self, what: str, start_ns: int, end_ns: int) -> None:
        self.what, self.start_ns, self.span_ns = what, start_ns, max(1, end_ns - start_ns)
        self.windows = 0
        self._next = time.monotonic() + PROGRESS_LOG_S

    def add(self, windows: int, until_ns: int) -> None:
        """``windows`` more were read, those of the stored windows starting before
        ``until_ns``."""
        self.windows += windows
        if time.monotonic() >= self._next:
            self._next = time.monotonic() + PROGRESS_LOG_S
            done = min(1.0, (until_ns - self.start_ns) / self.span_ns)
            log.info("%s: %.0f%% of the time read, %d windows", self.what, 100 * done, self.windows)


@runtime_checkable
class _NumberedMetrics(Protocol):
    """A time-series store whose writes can be numbered, so that a retried batch it
    stored already is not stored again (see
    :meth:`nethical_grpc.storage.timeseries.postgres.PostgresTimeSeriesStore.numbered`)."""

    def numbered(self, writer: str, batch: int) -> AbstractContextManager[None]: ...


#: Records of one batch a store refuses one by one, none taken, before the rest of the
#: batch is dropped unwritten (a store refusing everything would take two writes a record)
_REFUSED_BEFORE_GIVING_UP: Final = 32

#: An evaluation's record waiting for a store: its audit record id, and the outcome.
_Record = tuple[str, Outcome]

# what the time-series rows of a batch of records are made of (see Persister._points_of)
_OUTCOME = itemgetter(1)
_EVALUATION = attrgetter("evaluation")
_REQUEST = attrgetter("request")
_DECISION = attrgetter("decision")
_ACTION_TYPE = attrgetter("action_type")
_RISK = attrgetter("risk_score")
_TIME_NS = attrgetter("time_ns")
_AGENT_ID = attrgetter("action.agent_id")
# risk scores, times (ns), agent ids and metadata mappings
_PointColumns = tuple[
    npt.NDArray[np.float64], npt.NDArray[np.int64], list[str], list[dict[str, JSONValue]]
]


class _Split:
    """A batch's write, split where the store refuses records for good (``ValueError``):
    the parts not stored yet, in record order (the first is the one being written, each
    numbered by its own last record), and the records refused so far."""

    __slots__ = ("first_error", "parts", "refused")

    def __init__(self, batch: list[_Record]) -> None:
        self.parts = [batch]
        self.refused = 0
        self.first_error: tuple[str, ValueError] | None = None


class _RecordQueue:
    """Evaluations waiting for one store, and the batch whose write failed (retried first).

    The time-series and audit stores have a queue each, so an outage of one holds back
    only its own records."""

    def __init__(self, store: Literal["timeseries", "audit"]) -> None:
        self.store: Final = store
        self.pending: deque[tuple[str, Outcome]] = deque()
        self.retry: list[tuple[str, Outcome]] | None = None
        # the store's write of ``retry`` that a cancelled round left running (a write in
        # a store's thread goes on): its outcome is awaited before the batch is written
        # again, so a write that was in fact done is not done twice
        self.writing: asyncio.Future[None] | None = None
        # how far that write got (the parts it has yet to store, the records refused)
        self.split: _Split | None = None

    def __len__(self) -> int:
        return len(self.pending) + (len(self.retry) if self.retry is not None else 0)

    def next_batch(self) -> list[tuple[str, Outcome]] | None:
        if self.retry is not None:
            return self.retry
        if not self.pending:
            return None
        pending = self.pending
        return [pending.popleft() for _ in range(min(_WRITE_BATCH, len(pending)))]


#: The reasons of the gaps a node's answers may name (see ``DataGap`` in region_node.proto).
GAP_WINDOWS_NOT_LOADED: Final = "STORED_WINDOWS_NOT_LOADED"
GAP_STORE_FALLBACK: Final = "STORE_FALLBACK"
GAP_PEERS_NOT_LOADED: Final = "PEERS_NOT_LOADED"
GAP_PEERS_STALE: Final = "PEERS_STALE"
#: Region scope: windows other instances flushed with another width (their ``--window``)
#: are left out of the answers (not re-bucketed); the gap names those instances and their
#: widths, over the time their windows span, until none of them is within the retention.
GAP_PEERS_WINDOW_MISMATCH: Final = "PEERS_WINDOW_MISMATCH"
#: Windows this instance flushed with another width (it ran with another ``--window``
#: before a restart) are not restored (not re-bucketed); the gap names their widths and
#: the node's, over the time they span, until none of them is within the retention.
GAP_WINDOWS_OTHER_WIDTH: Final = "STORED_WINDOWS_OTHER_WIDTH"


class Persister:
    """Background writer and reader of one node's stores (see the module docstring)."""

    def __init__(
        self,
        node: RegionNode,
        stores: NodeStores,
        profiles: ProfileBook,
        flush_interval_s: float,
    ) -> None:
        self.node = node
        self.stores = stores
        self.profiles = profiles
        # agents' profiles: each delta merged into the cached profile
        self.profile_writer = ProfileWriter(stores, profiles)
        self.flush_interval_s = flush_interval_s
        # per store, (audit record id, outcome): the id is fixed here, so a retried write
        # of the same outcome is recognised by the audit store and not stored twice
        self._points = _RecordQueue("timeseries")
        self._audits = _RecordQueue("audit")
        # record ids: 80 random bits per process start, then a counter (32 hex digits, as
        # a uuid4's hex; unique across restarts, without a urandom call per evaluation)
        self._id_prefix = uuid.uuid4().hex[:20]
        # the next record's number, and its id's form (prefix, then 12 hex digits)
        self._next_id = 0
        self._id_format = f"{self._id_prefix}%012x"
        self.dropped = 0
        self.flushed_windows = 0
        self.last_flush_ns = 0
        self._task: asyncio.Task[None] | None = None
        # start() running in the background (start_soon)
        self._starting: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # profile writes take turns (the stop's may start while a round's still runs: two
        # at once would both merge the deltas in doubt)
        self._profile_lock = asyncio.Lock()
        # set by stop(): the loop ends at its next turn (also when a store's client turned
        # the loop's cancel into an error of its own), and no loop starts after it
        self._stopping = False
        self._retry_windows: list[WindowSummaryRow] = []
        # the last segment of the node's write-ahead log the store holds, from its mark
        # (read by restore)
        self.stored_wal_segment = -1
        # this log's marks under the region's other instance ids (earlier runs of this log
        # under other ids) are deleted once, after this instance's own mark is stored
        self._other_marks_dropped = False
        # where a restore that failed part-way goes on: the windows of the slices before
        # this time are in the node (a second install would count them twice)
        self._restored_until_ns: int | None = None
        # the store's last change the peers' windows hold (region scope; None: not loaded)
        self._peers_seen: int | None = None
        # region scope: the windows of other instances left out for their width, by
        # instance, then width: (oldest start, newest start) of those seen
        self._mismatched: dict[str, dict[int, tuple[int, int]]] = {}
        # those instances whose mismatch was logged (again once it cleared and came back)
        self._mismatch_logged: set[str] = set()
        # this instance's own stored windows a restore left out for their width (another
        # --window before the restart), by width: (oldest start, newest start)
        self._other_width: dict[int, tuple[int, int]] = {}
        self._other_width_logged = False
        # this instance's flushed windows are back in the node: until then no window is
        # flushed (a flush would replace the stored windows with what came since the start)
        self.restored = not self.durable_store
        # the windows this instance flushed before started_ns are restored, or missing
        # from its answers (a gap they name) until they are
        self.started_ns = node.clock()
        # when the write-ahead log's current segment began (node clock; see _trim_log)
        self._segment_began_ns = self.started_ns
        choice = stores.timeseries_choice
        if choice.fallback:
            node.set_gap(
                DataGap(
                    GAP_STORE_FALLBACK,
                    None,
                    self.started_ns,
                    f"the time-series store {choice.requested} was {choice.reason} when this "
                    f"instance started ({convert.utc_text(self.started_ns)}), so it keeps its "
                    f"windows in {choice.backend}: those it flushed there before are left out "
                    "until it starts again with that store",
                )
            )
        # one metadata mapping per (decision, action type), shared by the metric rows (the
        # store serialises each distinct mapping once per batch); never changed once made
        self._metadata: dict[tuple[str, str], dict[str, JSONValue]] = {}
        # the outcomes of one batch share their time: its datetime is made once
        self._last_time: tuple[int, tuple[datetime, int]] = (0, (convert.ns_to_datetime(0), 0))
        # each finding's stored form, made (and checked) once: rules report fixed findings
        self._findings: dict[Violation, AuditViolation] = {}
        # set after each write of records (evaluations waiting for room look again)
        self._written = asyncio.Event()
        # set when records are queued: an idle loop sleeps until then (or its next task)
        self._arrived = asyncio.Event()
        self.stopped = False
        self.backlog_waits = 0
        # per store: records dropped since the last "fall behind" warning, and its time
        self._unlogged_drops: dict[str, int] = {}
        self._drop_logged_at: dict[str, float] = {}

    # -- evaluations --------------------------------------------------------------

    def enqueue(self, outcomes: Sequence[Outcome]) -> None:
        """Queue outcomes for the stores (called on the request path: O(1) per outcome).
        After :meth:`stop` nothing writes them: they are counted as dropped."""
        if self.stopped:
            self._count_dropped(len(outcomes))
            log.warning(
                "%d evaluations finished after the stores were closed: records not written",
                len(outcomes),
            )
            return
        first = self._next_id
        self._next_id = first + len(outcomes)
        # ids made by C loops (map, zip), not a Python step per outcome
        numbers = range(first, self._next_id)
        records = list(zip(map(self._id_format.__mod__, numbers), outcomes, strict=True))
        self._arrived.set()
        for queue in (self._points, self._audits):
            queue.pending.extend(records)
            excess = len(queue.pending) - MAX_PENDING
            if excess > 0:
                for _ in range(excess):
                    queue.pending.popleft()
                self._count_dropped(excess)
                self._log_drops(queue.store, excess)

    def _log_drops(self, store: str, records: int, *, now: bool = False) -> None:
        """Warn of ``records`` dropped for ``store``, with those not yet told: at most every
        :data:`_DROP_LOG_INTERVAL_S` (``now``: at once, if any)."""
        dropped = self._unlogged_drops.get(store, 0) + records
        at = time.monotonic()
        recent = at - self._drop_logged_at.get(store, -_DROP_LOG_INTERVAL_S)
        if not dropped or (recent < _DROP_LOG_INTERVAL_S and not now):
            self._unlogged_drops[store] = dropped
            return
        self._unlogged_drops[store], self._drop_logged_at[store] = 0, at
        log.warning(
            "%s writes fall behind: dropped %d evaluations' records (logged at most every %.0f s)",
            store,
            dropped,
            _DROP_LOG_INTERVAL_S,
        )

    def backlog(self) -> int:
        """Evaluations whose records wait for a store (the longer of the two queues)."""
        return max(len(self._points), len(self._audits))

    async def room(self) -> None:
        """Wait while a store falls behind: past :data:`BACKLOG_HIGH` records waiting for
        a store whose last write succeeded, until no more than :data:`BACKLOG_LOW` wait
        for any such store, or :data:`BACKLOG_WAIT_S` has passed. A store in an outage
        does not hold evaluations (its records wait, bounded, as the module docstring
        says), but the other store still does: unthrottled, the event loop starved its
        writer thread of the interpreter lock, and that store fell behind for good.
        Streams wait here; unary Evaluate calls do not (the evaluator's choice), so their
        records may take the backlog past the mark, up to :data:`MAX_PENDING`."""
        if self._task is None or not self._behind(BACKLOG_HIGH):
            return
        self.backlog_waits += 1
        await wait_until(
            lambda: self._task is None or not self._behind(BACKLOG_LOW),
            self._written,
            asyncio.get_running_loop().time() + BACKLOG_WAIT_S,
        )

    def _behind(self, mark: int) -> bool:
        """Whether more than ``mark`` records wait for a store whose last write succeeded."""
        return any(len(q) > mark for q in (self._points, self._audits) if q.retry is None)

    def _count_dropped(self, records: int) -> None:
        """Records (evaluations', windows) dropped instead of stored: here and in the
        metrics."""
        self.dropped += records
        telemetry.get_recorder().record_dropped_records(records)

    async def _write_outcomes(self) -> None:
        # side by side: a store that fails or hangs holds back only its own records
        await asyncio.gather(
            self._write_queue(self._points, self._write_points),
            self._write_queue(self._audits, self._write_audits),
        )

    # A batch's rows are made on a worker thread, not on the event loop: a few µs per
    # evaluation, which under a sustained stream took a fifth of the loop's time from the
    # requests. (Each cache they use is touched by one of the two builders only: the
    # metadata mappings by the time-series one, the findings and times by the audit one.)

    async def _write_points(self, batch: list[tuple[str, Outcome]]) -> None:
        values, times_ns, agent_ids, metadata = await asyncio.to_thread(self._points_of, batch)
        store = self.stores.timeseries
        numbered: AbstractContextManager[None] = nullcontext()
        if isinstance(store, _NumberedMetrics):
            # numbered by its last record (this process's batches, and the parts of one
            # split around refused records, go in record order, a retried one first,
            # whole): a retry of one stored already is not stored again
            number = int(batch[-1][0][len(self._id_prefix) :], 16)
            numbered = store.numbered(self._id_prefix, number)
        with numbered:
            await store.insert_metric_columns(
                RISK_METRIC, values, times_ns, agent_ids=agent_ids, metadata=metadata
            )

    async def _write_audits(self, batch: list[tuple[str, Outcome]]) -> None:
        records = await asyncio.to_thread(lambda: [self._audit(i, o) for i, o in batch])
        await self.stores.audit.index_audit_logs(records)

    async def _write_queue(
        self,
        queue: _RecordQueue,
        write: Callable[[list[tuple[str, Outcome]]], Awaitable[object]],
    ) -> None:
        # what waits now, not what comes meanwhile: under a sustained load the loop would
        # never end, and a round would never come back to retry the other store
        budget = len(queue)
        while budget > 0 and (batch := queue.next_batch()) is not None:
            budget -= len(batch)
            writing, split = queue.writing, queue.split
            if writing is None or split is None:  # (both or neither)
                split = _Split(batch)
                writing = asyncio.ensure_future(self._write_parts(split, write))
            try:
                # shielded: a cancel ends this wait at once, but not the write, which may
                # go on in the store (in its thread) and whose outcome counts
                await asyncio.shield(writing)
            except asyncio.CancelledError:
                if writing.cancelled():  # the write itself was cancelled: not done
                    queue.writing = queue.split = None
                    self._keep_unstored(queue, split)
                else:
                    # a stop cut the wait short (the loop's task, or the stop's own
                    # bound): the batch is kept, and the next round learns how the
                    # write that runs on ended before it writes the batch again
                    queue.writing, queue.split = writing, split
                    queue.retry = batch
                raise
            except Exception as exc:
                # what was not stored is retried next round, the part that failed first
                # and as it is (audit records keep their ids, and metric batches their
                # numbers, so the store drops what it already has)
                queue.writing = queue.split = None
                self._keep_unstored(queue, split)
                self.stores.write_failed(queue.store, exc)
                self._written.set()  # evaluations waiting for room stop waiting
                log.warning(
                    "writing evaluations to the %s store failed (will retry): %s", queue.store, exc
                )
                return
            queue.retry = queue.writing = queue.split = None
            self._log_refused_records(queue, split)
            self.stores.write_succeeded(queue.store)
            self._written.set()

    @staticmethod
    async def _write_parts(
        split: _Split, write: Callable[[list[_Record]], Awaitable[object]]
    ) -> None:
        """Write ``split``'s parts in order, halving a part the store refuses
        (``ValueError``: nothing of it stored) down to the records it refuses, which are
        counted in ``split`` and left out. With no refusal, one write. A part is removed
        from ``split`` once stored: a failure leaves there what was not."""
        parts = split.parts
        stored = False
        while parts:
            part = parts[0]
            try:
                await write(part)
            except ValueError as exc:
                if split.first_error is None:
                    split.first_error = (part[0][0], exc)
                if not stored and split.refused >= _REFUSED_BEFORE_GIVING_UP:
                    # refused record after record, nothing taken: the store refuses this
                    # data whatever it holds; the rest is dropped without a write each
                    split.refused += sum(map(len, parts))
                    parts.clear()
                    return
                if len(part) > 1:
                    half = len(part) // 2
                    parts[0:1] = [part[:half], part[half:]]
                    continue
                split.refused += 1
            else:
                stored = True
            del parts[0]

    def _keep_unstored(self, queue: _RecordQueue, split: _Split) -> None:
        """After a write of ``split`` failed: the part it was writing is retried first, as
        it is (numbered by its last record: if it was stored all the same, the store
        drops it), and the parts after it go back to the front of the queue."""
        self._log_refused_records(queue, split)
        parts = split.parts
        queue.retry = parts[0] if parts else None
        for part in reversed(parts[1:]):
            queue.pending.extendleft(reversed(part))

    def _log_refused_records(self, queue: _RecordQueue, split: _Split) -> None:
        """Count the records the store refused in ``split`` (so far) as dropped, and log
        them: one line a batch."""
        if split.first_error is not None:
            record_id, exc = split.first_error
            self._count_dropped(split.refused)
            log.error(
                "%s store refused %d evaluations' records, dropped (the first: %s: %s)",
                queue.store,
                split.refused,
                record_id,
                exc,
            )
            split.refused, split.first_error = 0, None

    def _points_of(self, batch: Sequence[_Record]) -> _PointColumns:
        """The time-series rows of a batch's evaluations, in columns (risk scores, times
        in ns, agent ids, metadata: one mapping object per decision and action type,
        which the store serialises once), made by C loops over the batch."""
        n = len(batch)
        outcomes = list(map(_OUTCOME, batch))
        evaluations = list(map(_EVALUATION, outcomes))
        requests = list(map(_REQUEST, outcomes))
        kinds = zip(
            map(DECISION_VALUES.__getitem__, map(_DECISION, evaluations)),
            map(_ACTION_TYPE, requests),
            strict=True,
        )
        known = self._metadata
        if len(known) >= _METADATA_KINDS:
            known.clear()
        metadata = [known.get(kind) or self._metadata_of(kind) for kind in kinds]
        return (
            np.fromiter(map(_RISK, evaluations), np.float64, n),
            np.fromiter(map(_TIME_NS, outcomes), np.int64, n),
            list(map(_AGENT_ID, requests)),
            metadata,
        )

    def _metadata_of(self, kind: tuple[str, str]) -> dict[str, JSONValue]:
        decision, action_type = kind
        made = self._metadata[kind] = {
            "decision": decision,
            "action_type": action_type or UNSPECIFIED_ACTION_TYPE,
        }
        return made

    def _audit(self, audit_id: str, o: Outcome) -> AuditRecord:
        ev = o.evaluation
        action = o.request.action
        timestamp, timestamp_us = self._time_us(o.time_ns)
        check_storable(timestamp, timestamp_us)
        # every other value passes the record's checks: the action's were checked (as
        # strictly) at the RPC boundary, the node's region when it started, the rest is
        # the node's own
        return AuditRecord.from_checked(
            action_id=audit_id,
            # the store's region (it fills an empty one in, by building the record again)
            region_id=self.node.identity.region_id,
            agent_id=action.agent_id,
            decision=ev.decision,
            risk_score=ev.risk_score,
            action_text=action.action_text,
            stated_intent=action.stated_intent,
            action_type=o.request.action_type,
            violations=tuple(map(self._finding, ev.violations[:MAX_VIOLATIONS])),
            timestamp=timestamp,
            timestamp_us=timestamp_us,
        )

    def _time_us(self, ns: int) -> tuple[datetime, int]:
        """The aware UTC datetime of ``ns`` and its microseconds since the epoch (cached:
        a batch's evaluations share one time)."""
        last_ns, last = self._last_time
        if ns != last_ns:
            at = convert.ns_to_datetime(ns)  # to the microsecond below, as ingest
            last = (at, to_utc_us(at, "timestamp"))
            self._last_time = (ns, last)
        return last

    def _finding(self, v: Violation) -> AuditViolation:
        stored = self._findings.get(v)
        if stored is None:
            if len(self._findings) >= _KNOWN_FINDINGS:
                self._findings.clear()
            stored = self._findings[v] = AuditViolation(
                v.type.value.lower(), int(v.severity), v.confidence, v.message
            )
        return stored

    # -- windows ------------------------------------------------------------------

    def _window_rows(self) -> list[WindowSummaryRow]:
        ident = self.node.identity
        window_ns = self.node.store.config.window_ns
        return [
            WindowSummaryRow(
                region_id=ident.region_id,
                instance_id=ident.instance_id,
                metric=key.metric,
                labels=dict(key.labels),
                window_start_ns=window_id * window_ns,
                window_ns=window_ns,
                payload=convert.summary_to_proto(summary).SerializeToString(),
                count=summary.count,
            )
            for key, window_id, summary, _ in self.node.store.take_dirty()
        ]

    @property
    def durable_store(self) -> bool:
        """Flushed windows survive a restart (not an in-memory SQLite)."""
        return self.stores.keeps_windows

    async def flush_windows(self) -> int:
        """Upsert every window changed since the last flush; returns how many.

        With a write-ahead log and a durable store, the log is rotated first and, once the
        flush succeeded, checkpointed: the closed segments are then in the store."""
        self.node.apply_pending()
        if not self.durable_store:
            # an in-memory store would only hold a second copy of every window
            self.node.store.take_dirty()
            self._trim_log()
            return 0
        if not self.restored:
            try:
                await self.restore()
                self.restored = True
                # the problem its failures reported is gone, also with no window to write
                self.stores.write_succeeded("timeseries")
            except Exception as exc:
                self.stores.write_failed("timeseries", exc)
                log.warning("restoring flushed windows failed (windows wait): %s", exc)
                return 0
        # own windows of another width left out by the restore: named until past retention
        self._other_width_gap(self.node.clock())
        wal = self.node.wal
        closed = wal.rotate() if wal is not None else None
        rows = self._window_rows()
        if self._retry_windows:
            # a window is upserted whole: its newest version replaces those a failed flush
            # kept (kept all, a store down for hours held every flush's copy of each)
            rows = _newest_versions(self._retry_windows + rows)
        self._retry_windows = []
        # with a log, the mark of the segments these windows hold, in the same transaction
        marks = [self._wal_mark(wal.id, closed)] if wal is not None and closed is not None else []
        wrote_mark = False
        if rows:
            try:
                try:
                    await self.stores.timeseries.upsert_window_summaries(rows + marks)
                except ValueError:
                    # the store refuses some rows for good (labels it cannot keep, from an
                    # older version's log): the others must not wait behind them forever
                    rows = self._storable_windows(rows)
                    refused = await self._upsert_refusing(rows, marks)
                    # each part but a refused one was written with the marks
                    wrote_mark = bool(marks) and len(refused) < max(len(rows), 1)
                    if refused:
                        # refused again, though each passes the checks: retried, they
                        # held every later window back for good
                        dropped = {id(r) for r, _ in refused}
                        rows = [r for r in rows if id(r) not in dropped]
                        self._log_refused(refused)
                else:
                    wrote_mark = bool(marks)
            except Exception as exc:
                # newer versions of the same windows replace these on the next flush
                self.stores.write_failed("timeseries", exc)
                self._retry_windows = rows
                log.warning("flushing %d windows failed (will retry): %s", len(rows), exc)
                return 0
            except asyncio.CancelledError:
                # the stop cut the loop's flush short: its last round writes them (a store
                # that took them already takes them again, whole)
                self._retry_windows = rows + self._retry_windows
                raise
            self.flushed_windows += len(rows)
            self.stores.write_succeeded("timeseries")
        self.last_flush_ns = time.time_ns()
        if wal is not None and closed is not None:
            await asyncio.to_thread(wal.checkpoint, closed)
            if wrote_mark and not self._other_marks_dropped:
                await self._drop_other_marks(wal.id)
        return len(rows)

    async def _drop_other_marks(self, wal_id: str) -> None:
        """Delete this log's marks stored under the region's other instance ids: those an
        earlier run of the log wrote under another id (a pod restarted under a generated
        name, on the same volume). Each restart left one, kept forever (their start is
        past any retention), and every restore and peers' load read them again.

        Only once this instance's own mark is in the store (read back) and the log is
        checkpointed up to it: a mark it covers (a count no larger than its own) names
        segments the log no longer holds, so no later restore, under any id, replays
        fewer segments without it. A larger one (a log copied to another volume and run
        on) stays, and so does every other log's mark. Tried again after the next flush
        that writes a mark, if the store fails."""
        ident = self.node.identity
        store = self.stores.timeseries
        try:
            stored = await store.load_window_summaries(ident.region_id, since_ns=_WAL_MARK_START_NS)
            marks = [
                r for r in stored if r.metric == WAL_MARK_METRIC and r.labels.get("wal") == wal_id
            ]
            own = max((r.count for r in marks if r.instance_id == ident.instance_id), default=None)
            if own is None:
                return  # not stored (every window of the flush refused): nothing to rely on
            others = [r for r in marks if r.instance_id != ident.instance_id and r.count <= own]
            deleted = await store.delete_window_summaries(others) if others else 0
        except Exception as exc:
            log.warning(
                "deleting the write-ahead log's marks of earlier instance ids failed "
                "(tried again after the next flush): %s",
                exc,
            )
            return
        self._other_marks_dropped = True
        if deleted:
            log.info(
                "write-ahead log: deleted its marks of %d earlier instance ids (%s); this "
                "instance's mark covers them",
                deleted,
                ", ".join(sorted({r.instance_id for r in others})),
            )

    def _trim_log(self) -> None:
        """The write-ahead log on a store that keeps nothing across a restart: no flush
        checkpoints it (its batches are in no store), so it holds the windows' data for
        the retention. It is rotated every :data:`LOG_SEGMENTS_PER_RETENTION`-th of the
        retention (or flush interval, if longer), and a segment is deleted once every
        batch in it is past the retention, the newest window it can reach included."""
        wal, cfg = self.node.wal, self.node.store.config
        if wal is None or self.node.holds_log:  # its held batches are not applied yet
            return
        now = self.node.clock()
        span = max(cfg.retention_ns // LOG_SEGMENTS_PER_RETENTION, int(self.flush_interval_s * 1e9))
        if not wal.current_is_empty and now - self._segment_began_ns >= span:
            wal.rotate()
            self._segment_began_ns = now
        elif wal.current_is_empty:
            self._segment_began_ns = now
        # a batch of time t holds values up to t + max_future; the windows they land
        # in (rollup windows past the horizon) end within a window of them
        widest = cfg.rollup_window_ns if cfg.rollup_factor else cfg.window_ns
        reach = cfg.max_future_ns + widest
        dropped = wal.drop_older_than(now - cfg.retention_ns - reach)
        if dropped:
            log.info(
                "write-ahead log: deleted %d segments whose batches are all past the "
                "windows' retention",
                dropped,
            )

    def _wal_mark(self, wal_id: str, segment: int) -> WindowSummaryRow:
        ident = self.node.identity
        return WindowSummaryRow(
            ident.region_id,
            ident.instance_id,
            WAL_MARK_METRIC,
            {"wal": wal_id},
            _WAL_MARK_START_NS,
            1,
            b"",
            segment,
        )

    def _storable_windows(self, rows: list[WindowSummaryRow]) -> list[WindowSummaryRow]:
        """``rows`` without those the store refuses (each logged, and counted as dropped)."""
        kept = []
        refused: list[tuple[WindowSummaryRow, ValueError]] = []
        for row in rows:
            try:
                check_window_rows([row])
            except ValueError as exc:
                refused.append((row, exc))
            else:
                kept.append(row)
        self._log_refused(refused)
        return kept

    def _log_refused(self, refused: list[tuple[WindowSummaryRow, ValueError]]) -> None:
        """Count the windows the store refused as dropped, and log them: one line a
        flush, not one a window (an older log's series are refused at every flush)."""
        if refused:
            row, exc = refused[0]
            self._count_dropped(len(refused))
            log.error(
                "store refused %d windows, dropped (the first: %s %s: %s)",
                len(refused),
                row.metric,
                row.labels,
                exc,
            )

    async def _upsert_refusing(
        self, rows: list[WindowSummaryRow], marks: list[WindowSummaryRow]
    ) -> list[tuple[WindowSummaryRow, ValueError]]:
        """Upsert ``rows``, halving a part the store refuses (``ValueError``) down to the
        rows it refuses, which are returned, each with its error. Each part is written
        with ``marks``, in its transaction: a window in the store never holds a log
        segment its mark does not cover (a restart would count that segment twice)."""
        try:
            await self.stores.timeseries.upsert_window_summaries(rows + marks)
        except ValueError as exc:
            if len(rows) <= 1:
                return [(row, exc) for row in rows]
            half = len(rows) // 2
            first = await self._upsert_refusing(rows[:half], marks)
            return first + await self._upsert_refusing(rows[half:], marks)
        return []

    def _install(self, target: WindowStore, rows: Sequence[WindowSummaryRow], now_ns: int) -> int:
        windows = self._decode(rows, now_ns)
        target.restore_many(windows)
        return len(windows)

    @staticmethod
    def _decode(
        rows: Sequence[WindowSummaryRow], now_ns: int
    ) -> list[tuple[SeriesKey, int, Summary, int]]:
        """Stored windows as (series, window id, summary, newest time), those that do not
        decode left out (logged)."""
        summaries: Sequence[Summary | None] | None = convert.summaries_from_stored(
            [row.payload for row in rows]
        )
        if summaries is None:  # one is refused: each on its own, to say which
            summaries = [_decoded(row) for row in rows]
        windows = []
        for row, summary in zip(rows, summaries, strict=True):
            if summary is None:
                continue
            key = SeriesKey(row.metric, freeze_labels(row.labels))
            newest = min(row.window_start_ns + row.window_ns - 1, now_ns)
            windows.append((key, row.window_start_ns // row.window_ns, summary, newest))
        return windows

    def _since_ns(self, now_ns: int) -> int:
        return now_ns - self.node.store.config.retention_ns

    @property
    def wal_id(self) -> str | None:
        """The id of the node's write-ahead log (None: it keeps none)."""
        return self.node.wal.id if self.node.wal is not None else None

    async def restore(self) -> int:
        """Load this instance's own flushed windows into the node (at start, and again
        until it succeeds); returns how many.

        The batches the node's write-ahead log holds (:meth:`RegionNode.hold_wal`) are
        applied first, but those of the segments the store's mark says its windows hold:
        before the windows are installed, so that those past the rollup horizon can go
        straight into rollup windows (a stored window a replayed batch landed in joins it
        at full width instead, and the next flush writes it whole). A store that fails
        before its mark is read leaves them held: the node would count a batch twice that
        the store's windows hold already. One that fails part-way through the windows
        leaves those installed, and the next call goes on from there."""
        if not self.durable_store:
            self._replay_log()
            return 0
        try:
            restored = await self._restore_stored()
        except Exception as exc:
            # what is left for the next try: its answers say so meanwhile
            self._windows_gap(
                "are not back: reading them from its time-series store failed "
                f"({reportable_problem(exc)}); "
                "tried again at every flush"
            )
            raise
        self.node.clear_gap(GAP_WINDOWS_NOT_LOADED)
        return restored

    async def _restore_stored(self) -> int:
        """:meth:`restore` from a durable store."""
        reading = "are being read back from its time-series store"
        self._windows_gap(reading)  # seen when the node serves meanwhile
        now = time.time_ns()
        ident = self.node.identity
        # the log's marks under any instance id: a restart under a new id (after a kill
        # between a flush and its checkpoint) finds the segments an earlier run of this
        # log flushed under its old id. Those batches are that id's windows in the store
        # (a peer's in a region-scope answer, and read by every reader of the region):
        # replayed into this instance's as well, each would count twice. Left out of
        # this instance's own windows, they are what a clean stop leaves behind too (its
        # checkpoint drops the segments), whatever the scope.
        marks = await self.stores.timeseries.load_window_summaries(
            ident.region_id, since_ns=_WAL_MARK_START_NS
        )
        for r in marks:
            if r.metric == WAL_MARK_METRIC and r.labels.get("wal") == self.wal_id:
                self.stored_wal_segment = max(self.stored_wal_segment, r.count)
        self._replay_log()
        self.node.store.roll_up()  # sets the horizon: older windows go into rollups
        restored = 0
        start = max(self._since_ns(now), self._restored_until_ns or 0)
        progress = _Progress("restoring stored windows", start, now)
        width = self.node.store.config.window_ns
        async for rows, until in self._stored_windows(now, ident.instance_id, start):
            self._note_other_width(rows)
            rows = [r for r in rows if r.window_ns == width]
            restored += self._install(self.node.store, rows, now)
            self._restored_until_ns = until
            progress.add(len(rows), until)
            self._other_width_gap(self.node.clock())
            self._windows_gap(reading)
        if restored:
            log.info("restored %d windows flushed before the last stop", restored)
        if self._other_width and not self._other_width_logged:
            self._other_width_logged = True
            log.warning(
                "this instance flushed windows of %s before it started, it uses %s now "
                "(--window): they are not restored, and left out of its answers (a gap "
                "they name, %s, until they are past the retention)",
                ", ".join(_seconds(w) for w in sorted(self._other_width)),
                _seconds(width),
                GAP_WINDOWS_OTHER_WIDTH,
            )
        return restored

    def _note_other_width(self, rows: Sequence[WindowSummaryRow]) -> None:
        """Note this instance's windows of ``rows`` the restore leaves out for their width
        (flushed with another ``--window``), by width: oldest and newest start."""
        for r in _of_other_widths(rows, self.node.store.config.window_ns):
            _add_span(self._other_width, r)

    def _other_width_gap(self, now: int) -> None:
        """Answers name this instance's own windows the restore left out for their width,
        from the oldest one's start (no earlier than the retention) to the newest one's
        end, until all are past the retention."""
        since = self._since_ns(now)
        width = self.node.store.config.window_ns
        self._other_width = _live_spans(self._other_width, since)
        if not self._other_width:
            self.node.clear_gap(GAP_WINDOWS_OTHER_WIDTH)
            return
        start, end = _spans_range([self._other_width], since, width)
        self.node.set_gap(
            DataGap(
                GAP_WINDOWS_OTHER_WIDTH,
                start,
                end,
                "the windows this instance flushed with a width of "
                f"{', '.join(_seconds(w) for w in sorted(self._other_width))} before it "
                f"started ({convert.utc_text(self.started_ns)}) are left out: it uses "
                f"{_seconds(width)} now (--window), and they are not re-bucketed",
            )
        )

    def _windows_gap(self, state: str) -> None:
        """Answers name the windows flushed before the start that are not back yet (those
        from where a restore got to), ``state`` saying why."""
        since = self._restored_until_ns
        self.node.set_gap(
            DataGap(
                GAP_WINDOWS_NOT_LOADED,
                since,
                self.started_ns,
                f"the windows this instance flushed before it started "
                f"({convert.utc_text(self.started_ns)})"
                + (f" from {convert.utc_text(since)} on" if since is not None else "")
                + f" {state}",
            )
        )

    def _replay_log(self) -> None:
        if not self.node.holds_log:
            return
        replayed = self.node.replay_wal(self.stored_wal_segment)
        log.info(
            "write-ahead log: replayed %d batches (segments after %d; those up to it are "
            "in the stored windows)",
            replayed,
            self.stored_wal_segment,
        )

    async def refresh_peers(self) -> None:
        """Region scope on a shared store: the other instances' windows, up to date.

        Until they were loaded once, the node's answers name the gap (PEERS_NOT_LOADED);
        while refreshes fail after that, what the peers may have flushed since the last
        one that succeeded (PEERS_STALE). Windows an instance flushed with another width
        (``--window``) are left out, and named (PEERS_WINDOW_MISMATCH) while any of them
        is within the retention."""
        now = self.node.clock()
        if self.node.peers is None:
            self._peers_gap(GAP_PEERS_NOT_LOADED, None, "are being read from the shared store")
        try:
            await self._refresh_peers(now)
        except Exception as exc:
            failed = (
                f"reading the shared store failed ({reportable_problem(exc)}); tried again "
                "at every flush"
            )
            if self.node.peers is None:
                self._peers_gap(GAP_PEERS_NOT_LOADED, None, f"are not loaded yet: {failed}")
            elif self.node.peers_read_ns is not None:
                # what they held unflushed at the last read is in neither
                since = self.node.peers_read_ns - int(self.flush_interval_s * 1e9)
                self._peers_gap(
                    GAP_PEERS_STALE,
                    since,
                    f"are as of {convert.utc_text(self.node.peers_read_ns)}, less what they had "
                    f"not flushed by then: {failed}",
                )
            raise
        self.node.peers_read_ns = now
        self.node.clear_gap(GAP_PEERS_NOT_LOADED)
        self.node.clear_gap(GAP_PEERS_STALE)
        self._mismatch_gap(now)

    def _peers_pending(self) -> None:
        """From the start, answers name the other instances' windows as missing until they
        are read (after this instance's own restore, which may take long or fail)."""
        if self.answers_for_region and self.node.peers is None:
            self._peers_gap(
                GAP_PEERS_NOT_LOADED, None, "are read once this instance's own are back"
            )

    def _peers_gap(self, reason: str, since: int | None, state: str) -> None:
        self.node.set_gap(
            DataGap(
                reason,
                since,
                None,
                f"this instance answers for the whole region; the region's other instances' "
                f"windows {state}",
            )
        )

    async def _refresh_peers(self, now: int) -> None:
        """:meth:`refresh_peers`. The first call loads them all; later ones read only the
        windows flushed since (by the store's change numbers: a flush replaces a stored
        window whole, and so does this with the one held). One that changed past the
        rollup horizon, where the version it replaces may be merged into a rollup window
        already, makes it load them all again."""
        region = self.node.identity.region_id
        peers, seen = self.node.peers, self._peers_seen
        # every change up to this one is in what a load reads next
        last = await self.stores.timeseries.last_window_change(region)
        if peers is not None and seen is not None and last >= seen:
            changed = peers.roll_up(now) + peers.evict_expired(now)
            windows = []
            if last > seen:
                rows = await self.stores.timeseries.load_window_summaries(
                    region, changed_after=seen
                )
                self._mismatched = self._note_mismatched(rows, self._mismatched)
                whole = await self._every_copy(self._peer_rows(rows))
                windows = _merged(self._decode(whole, now))
                if not peers.replace_many(windows):
                    log.info("another instance's window changed past the rollup horizon")
                    return await self._load_peers(now, last)
                self._peers_seen = max([last, *(r.change_seq for r in rows)])
            if changed or windows:
                self.node.peers = peers  # a new version: cached answers are stale
            return
        if seen is not None and last < seen:
            log.warning("the store's window changes start again (its table was replaced?)")
        await self._load_peers(now, last)

    async def _load_peers(self, now: int, seen: int) -> None:
        """Load the other instances' windows whole; ``seen``: the store's last change
        before the load."""
        fresh = WindowStore(self.node.store.config, clock=self.node.clock)
        # nothing is ingested into the peers' windows: those past the rollup horizon go
        # straight into rollup windows as they are installed
        fresh.roll_up()
        start = self._since_ns(now)
        progress = _Progress("loading the other instances' windows", start, now)
        mismatched: dict[str, dict[int, tuple[int, int]]] = {}
        async for rows, until in self._stored_windows(now, None, start):
            mismatched = self._note_mismatched(rows, mismatched)
            progress.add(self._install(fresh, self._peer_rows(rows), now), until)
        self.node.peers = fresh
        self._peers_seen = seen
        self._mismatched = mismatched

    async def _every_copy(self, changed: list[WindowSummaryRow]) -> list[WindowSummaryRow]:
        """Every other instance's stored copy of the windows of ``changed``: a window held
        is the merge of all their copies, so one instance's new copy replaces it only
        merged with the others' (each instance flushes its own part of a window)."""
        if not changed:
            return []
        wanted = {(r.metric, freeze_labels(r.labels), r.window_start_ns) for r in changed}
        rows = await self.stores.timeseries.load_window_summaries(
            self.node.identity.region_id,
            since_ns=min(r.window_start_ns for r in changed),
            until_ns=max(r.window_start_ns for r in changed) + 1,
        )
        return [
            r
            for r in self._peer_rows(rows)
            if (r.metric, freeze_labels(r.labels), r.window_start_ns) in wanted
        ]

    def _peer_rows(self, rows: Sequence[WindowSummaryRow]) -> list[WindowSummaryRow]:
        """The other instances' windows of ``rows`` (no log mark)."""
        own, width = self.node.identity.instance_id, self.node.store.config.window_ns
        return [r for r in rows if r.instance_id != own and r.window_ns == width]

    def _note_mismatched(
        self,
        rows: Sequence[WindowSummaryRow],
        into: dict[str, dict[int, tuple[int, int]]],
    ) -> dict[str, dict[int, tuple[int, int]]]:
        """``into`` with the other instances' windows of ``rows`` that :meth:`_peer_rows`
        leaves out for their width (another ``--window``); each instance new to the
        mismatched ones is logged (once, while it stays one)."""
        own, width = self.node.identity.instance_id, self.node.store.config.window_ns
        for r in _of_other_widths(rows, width):
            if r.instance_id == own:
                continue
            _add_span(into.setdefault(r.instance_id, {}), r)
            if r.instance_id not in self._mismatch_logged:
                self._mismatch_logged.add(r.instance_id)
                log.warning(
                    "instance %s of the region flushed windows of %s, this instance uses "
                    "%s (--window): its windows are left out of this instance's answers "
                    "for the region (a gap they name, %s)",
                    r.instance_id,
                    _seconds(r.window_ns),
                    _seconds(width),
                    GAP_PEERS_WINDOW_MISMATCH,
                )
        return into

    def _mismatch_gap(self, now: int) -> None:
        """Answers name the other instances' windows left out for their width, from the
        oldest one's start to the newest one's end, until all are past the retention."""
        since = self._since_ns(now)
        width = self.node.store.config.window_ns
        kept = {i: live for i, w in self._mismatched.items() if (live := _live_spans(w, since))}
        self._mismatched = kept
        self._mismatch_logged &= kept.keys()
        if not kept:
            self.node.clear_gap(GAP_PEERS_WINDOW_MISMATCH)
            return
        start, end = _spans_range(kept.values(), since, width)
        named = ", ".join(
            f"{instance} ({', '.join(_seconds(w) for w in sorted(widths))})"
            for instance, widths in sorted(kept.items())
        )
        self.node.set_gap(
            DataGap(
                GAP_PEERS_WINDOW_MISMATCH,
                start,
                end,
                "this instance answers for the whole region; the windows of the region's "
                f"instances {named} are left out: they were flushed with another width "
                f"than this instance's {_seconds(width)} (--window), and are not re-bucketed",
            )
        )

    async def _stored_windows(
        self, now_ns: int, instance_id: str | None, start: int
    ) -> AsyncIterator[tuple[list[WindowSummaryRow], int]]:
        """The region's stored windows (of one instance, or all; of every width) that
        start at ``start`` or later, :data:`RESTORE_SLICE_NS` of them at a time (a day's
        rows at once would take far more memory than the rolled-up windows they become),
        each slice with the time it ends at."""
        cfg = self.node.store.config
        newest = now_ns + cfg.max_future_ns + cfg.window_ns
        while True:
            # the last slice runs up to the log marks (windows a clock ahead stamped)
            last = start + RESTORE_SLICE_NS >= newest
            until = _WAL_MARK_START_NS if last else start + RESTORE_SLICE_NS
            rows = await self.stores.timeseries.load_window_summaries(
                self.node.identity.region_id,
                since_ns=start,
                instance_id=instance_id,
                until_ns=until,
            )
            yield list(rows), until
            if last:
                return
            start = until

    @property
    def answers_for_region(self) -> bool:
        return self.node.identity.region_scope and self.stores.shared_timeseries

    # -- loop ---------------------------------------------------------------------

    async def apply_audit_retention(self) -> bool:
        """Delete up to :data:`AUDIT_RETENTION_STEP` of the audit store's records past its
        retention; whether more may be due (a failure is logged, and retried at the next
        interval)."""
        try:
            deleted = await self.stores.audit.apply_retention(limit=AUDIT_RETENTION_STEP)
        except Exception as exc:
            log.warning("applying the audit store's retention failed: %s", exc)
            return False
        if deleted:
            log.info("deleted %d audit records past the store's retention", deleted)
        return deleted >= AUDIT_RETENTION_STEP

    async def apply_retention(self) -> None:
        """Drop the time-series store's rows past its retention, and this region's window
        summaries that start before the same cutoff (failures are logged, and retried at
        the next interval)."""
        try:
            cutoff = await self.stores.timeseries.apply_retention()
            if cutoff is not None and self.durable_store:
                cutoff_ns = int(cutoff.timestamp()) * 1_000_000_000
                deleted = await self.stores.timeseries.delete_window_summaries_before(
                    self.node.identity.region_id, cutoff_ns
                )
                if deleted:
                    log.info("deleted %d stored windows past the store's retention", deleted)
        except Exception as exc:
            log.warning("applying the time-series store's retention failed: %s", exc)

    async def _write_profiles(self) -> None:
        async with self._profile_lock:
            await self.profile_writer.write()

    async def round(self, windows: bool, profiles: bool = True) -> None:
        async with self._lock:
            await self._write_outcomes()
            if profiles:
                await self._write_profiles()
            if windows:
                await self.flush_windows()
                if self.answers_for_region:
                    try:
                        await self.refresh_peers()
                    except Exception as exc:
                        log.warning("loading the region's other instances failed: %s", exc)

    async def run(self) -> None:
        next_flush = time.monotonic() + self.flush_interval_s
        next_profiles = time.monotonic() + PROFILE_INTERVAL_S
        next_retention = next_audit_retention = time.monotonic()
        while not self._stopping:
            if self._behind(_WRITE_BATCH):
                # at once while more than a batch waits for a store that answers (a round
                # writes only what waited at its start)
                await asyncio.sleep(0)
            else:
                arrived = True
                if not self.backlog():
                    # idle: no tick until records arrive, a flush or the retention is due,
                    # or a profile write while deltas wait for one (an idle node woke 20
                    # times a second, then twice a second to write no profiles)
                    due = min(next_flush, next_retention, next_audit_retention)
                    if self.profile_writer.pending():
                        due = min(due, next_profiles)
                    loop = asyncio.get_running_loop()
                    arrived = await wait_until(
                        self._arrived.is_set, self._arrived, loop.time() + due - time.monotonic()
                    )
                    self._arrived.clear()
                if arrived:
                    # records gather for a round's worth before they are written
                    await asyncio.sleep(WRITE_INTERVAL_S)
            now = time.monotonic()
            if now >= next_retention:
                next_retention = now + RETENTION_INTERVAL_S
                await self.apply_retention()
            if now >= next_audit_retention:
                more = await self.apply_audit_retention()
                # a backlog (a store opened after a long pause) goes a step per second,
                # with the evaluations' records written in between
                next_audit_retention = now + (
                    AUDIT_RETENTION_CATCH_UP_S if more else RETENTION_INTERVAL_S
                )
            due, profiles_due = now >= next_flush, now >= next_profiles
            if due:
                next_flush = now + self.flush_interval_s
            if profiles_due:
                next_profiles = now + PROFILE_INTERVAL_S
            try:
                await self.round(windows=due, profiles=profiles_due)
            except Exception:
                log.exception("store round failed")

    async def start(self) -> None:
        """Restore this instance's windows (and the region's other instances'), then start
        the loop. A store that fails now is retried by the loop: evaluations' records are
        written meanwhile, windows (and the log's held batches, see :meth:`restore`) once
        the restore succeeded."""
        self._peers_pending()
        try:
            await self.restore()
            self.restored = True
            if self.answers_for_region:
                await self.refresh_peers()
        finally:
            if self._task is None and not self._stopping:
                self._task = asyncio.get_running_loop().create_task(self.run())

    def start_soon(self) -> None:
        """:meth:`start` in the background (``--serve-while-restoring``): the node serves
        meanwhile, its answers naming what is not back yet (the gaps)."""
        self._peers_pending()

        async def starting() -> None:
            try:
                await self.start()
            except Exception as exc:  # the loop retries it, as for a start that failed
                log.warning(
                    "restoring persisted windows failed (retried in the background): %s", exc
                )

        self._starting = asyncio.get_running_loop().create_task(starting())

    async def stop(self) -> None:
        """Stop the loop and write everything still pending: a clean stop loses nothing
        while the stores answer. A store that does not answer within
        :data:`STOP_WRITE_LIMIT_S` (down: each write would wait for its connection pool)
        does not hold the stop past it, nor the other stores' writes (the records of each
        store, the windows and the profiles are written side by side); what was left
        unwritten is logged with its size (with ``--wal-dir`` the windows' batches stay
        in the log for the next start)."""
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_WRITE_LIMIT_S
        # a restore still running (start_soon), then the loop: cancelled. A store's client
        # may turn the cancel into an error of its own and go on (psycopg, while it waits
        # on a server that does not answer): the loop then ends at its next turn, and the
        # stop does not wait for it past its bound
        for attr in ("_starting", "_task"):
            task: asyncio.Task[None] | None = getattr(self, attr)
            if task is not None:
                task.cancel()
                await asyncio.wait([task], timeout=max(0.0, deadline - loop.time()))
                setattr(self, attr, None)
        self._written.set()  # evaluations waiting for room: no loop writes any more

        async def records() -> None:
            async with self._lock:  # a loop's round that is still running ends first
                for result in await asyncio.gather(
                    self._write_outcomes(), self.flush_windows(), return_exceptions=True
                ):
                    if isinstance(result, Exception):
                        log.warning("writing to the stores at the stop failed: %s", result)

        lanes = [loop.create_task(records()), loop.create_task(self._write_profiles())]
        _, late = await asyncio.wait(lanes, timeout=max(0.0, deadline - loop.time()))
        for lane in late:
            lane.cancel()
        for lane in lanes:
            lane.add_done_callback(_log_lane_error)
        for queue in (self._points, self._audits):
            # a write that did not end in time is given up (its batch counts as unwritten)
            if queue.writing is not None:
                queue.writing.cancel()
                queue.writing.add_done_callback(_log_lane_error)
                queue.writing = queue.split = None
        self.stopped = True  # records of later evaluations are counted as dropped
        for store in list(self._unlogged_drops):  # drops not told yet
            self._log_drops(store, 0, now=True)
        unwritten = self.backlog()
        lost = len(self._points) + len(self._audits)
        if lost:  # no one writes them now: dropped, like records refused or overflowing
            self._count_dropped(lost)
        windows = len(self._retry_windows)
        if self.durable_store:
            windows += len(self.node.store.take_dirty())
        if unwritten or windows:
            log.error(
                "stopping with %d evaluations' records and %d windows not written: the "
                "stores did not take them within %g s",
                unwritten,
                windows,
                STOP_WRITE_LIMIT_S,
            )


#: Windows of one width left out of the answers: width → (oldest start, newest start).
_Spans = dict[int, tuple[int, int]]


def _of_other_widths(rows: Sequence[WindowSummaryRow], width: int) -> Iterator[WindowSummaryRow]:
    """The windows of ``rows`` flushed with another width than ``width`` (the write-ahead
    log's marks left out)."""
    for r in rows:
        if not (
            r.window_ns == width
            or r.metric == WAL_MARK_METRIC
            or r.window_start_ns >= _WAL_MARK_START_NS
        ):
            yield r


def _add_span(spans: _Spans, r: WindowSummaryRow) -> None:
    oldest, newest = spans.get(r.window_ns, (r.window_start_ns, r.window_start_ns))
    spans[r.window_ns] = (min(oldest, r.window_start_ns), max(newest, r.window_start_ns))


def _live_spans(spans: _Spans, since: int) -> _Spans:
    """Those of ``spans`` with a window still within the retention (from ``since``)."""
    return {w: span for w, span in spans.items() if span[1] >= since}


def _spans_range(spans: Iterable[_Spans], since: int, width: int) -> tuple[int, int]:
    """A gap's time over ``spans``: from the oldest start (no earlier than ``since``),
    down to a window of ``width``, to the newest window's end."""
    pairs = [(w, span) for by_width in spans for w, span in by_width.items()]
    start = max(since, min(span[0] for _, span in pairs)) // width * width
    return start, max(span[1] + w for w, span in pairs)


def _seconds(ns: int) -> str:
    """A window's width, as ``--window`` takes it."""
    return f"{ns / 1e9:g} s"


def _log_lane_error(task: asyncio.Future[Any]) -> None:
    """Retrieve (and log) the error of a write the stop gave up on."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("a store write abandoned at the stop failed: %s", exc)
